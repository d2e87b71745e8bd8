"""Issue 21 against the fake upstream: billing of n > 1 and cut streams, reservations that cover what can be
generated, bounded fan-out and answer size, slow readers, a per-key in-flight cap, a total time limit, no replay
of a request the engine may have started, and a per-key prefix-cache salt."""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time

import httpx
import pytest

from quantserve.serve.keys import KeyStore
from tests.support.serve_fake_upstream import PROMPT_TOKENS
from tests.support.serve_helpers import FAKE_MODEL, chat_body, ledger_rows, sse_payloads, wait_until


def _last_row(gw):
    gw.thread.stop()
    return ledger_rows(gw.db_url)[-1]


# --- billing ----------------------------------------------------------------------------------------------------


def test_a_cut_stream_with_n_answers_is_billed_every_answers_tokens(make_gateway):
    gw = make_gateway()
    seen = 0
    with gw.client() as client, client.stream("POST", "/v1/chat/completions",
                                              json=chat_body("SLOW", stream=True, n=3)) as reply:
        for line in reply.iter_lines():
            if line.startswith('data: {"id"'):
                seen += 1
            if seen == 6:  # two tokens of each of the three answers
                break
    row = _last_row(gw)
    assert row["status"] == 499 and row["prompt_tokens"] == PROMPT_TOKENS
    # before: the last chunk's running usage, one answer's count (2 or 3); the gateway may have read a round more
    assert row["completion_tokens"] in (6, 9), row


def test_a_cut_stream_over_a_list_of_prompts_bills_each_prompt_once(make_gateway):
    gw = make_gateway()
    seen = 0
    body = {"model": FAKE_MODEL, "prompt": ["SLOW one", "SLOW two"], "n": 2, "stream": True}
    with gw.client() as client, client.stream("POST", "/v1/completions", json=body) as reply:
        for line in reply.iter_lines():
            if line.startswith('data: {"id"'):
                seen += 1
            if seen == 8:  # two tokens of each of the four answers (2 prompts x n=2)
                break
    row = _last_row(gw)
    assert row["status"] == 499 and row["prompt_tokens"] == 2 * PROMPT_TOKENS
    assert row["completion_tokens"] in (8, 12), row


def test_a_client_that_leaves_a_started_unary_answer_pays_its_reservation(make_gateway, fake_upstream):
    gw = make_gateway()
    _, state = fake_upstream
    body = chat_body("SLOW", max_tokens=5)
    with gw.client(timeout=0.5) as client, contextlib.suppress(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=body)
    assert wait_until(lambda: gw.runtime.pools[FAKE_MODEL].in_flight() == 0)
    row = _last_row(gw)
    # before: 0 + 0, a free request. The engine stops with the connection and reports nothing: the prompt as
    # estimated at admission (4 bytes a token) plus the max_tokens the client asked for
    sent = len(httpx.Request("POST", "http://x", json=body).content)
    assert row["status"] == 499 and (row["prompt_tokens"], row["completion_tokens"]) == (math.ceil(sent / 4), 5)
    assert state.cancelled >= 1


def test_the_tokens_per_minute_reservation_covers_what_can_be_generated(make_gateway):
    gw = make_gateway(key_kwargs={"tpm": 1500})
    with gw.client() as client:
        # no max_tokens: the engine may write up to its context (2048) less the prompt; before: 256 reserved
        reply = client.post("/v1/chat/completions", json=chat_body())
        assert reply.status_code == 429 and reply.json()["error"]["code"] == "rate_limit_exceeded"
        assert client.post("/v1/chat/completions", json=chat_body(max_tokens=200)).status_code == 200
        # a list of 8 prompts with best_of 2 generates 16 answers: 16 x 100 is over the limit too
        body = {"model": FAKE_MODEL, "prompt": ["p"] * 8, "best_of": 2, "max_tokens": 100}
        assert client.post("/v1/completions", json=body).status_code == 429
        assert client.post("/v1/completions", json={**body, "best_of": 1, "max_tokens": 50}).status_code == 200


# --- fan-out and size -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "param", "code"), [
    ("/v1/chat/completions", chat_body(n=17, max_tokens=1), "n", "too_many_choices"),
    ("/v1/completions", {"model": FAKE_MODEL, "prompt": ["p"] * 9, "n": 2, "max_tokens": 1}, "n", "too_many_choices"),
    ("/v1/chat/completions", chat_body(n=5, logprobs=True, top_logprobs=20, max_tokens=1), "top_logprobs",
     "too_many_logprobs"),
    ("/v1/completions", {"model": FAKE_MODEL, "prompt": "p", "best_of": 9, "n": 1, "logprobs": 10, "max_tokens": 1},
     "logprobs", "too_many_logprobs"),
])
def test_fan_out_past_the_limits_is_a_clear_400(make_gateway, fake_upstream, path, body, param, code):
    gw = make_gateway()
    _, state = fake_upstream
    before = len(state.requests)
    with gw.client() as client:
        reply = client.post(path, json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == (param, code) and "limit" in error["message"]
    assert len(state.requests) == before  # refused before the engine saw it


def test_an_answer_larger_than_the_gateway_buffers_is_a_502_and_the_engine_stays_in(make_gateway):
    gw = make_gateway(max_answer_bytes=16384)
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json=chat_body("BIG"))
        assert reply.status_code == 502 and reply.json()["error"]["code"] == "answer_too_large"
        assert "stream" in reply.json()["error"]["message"]
        with client.stream("POST", "/v1/chat/completions", json=chat_body("BIG", stream=True)) as streamed:
            assert streamed.status_code == 200 and len(streamed.read()) > 65536  # streams are not buffered
        assert client.get("/ready").json()["models"][FAKE_MODEL]["healthy_upstreams"] == 1


# --- slow readers, caps, time limits ----------------------------------------------------------------------------


def test_a_client_that_stops_reading_frees_its_engine_slot(make_gateway):
    gw = make_gateway(stall_timeout_s=1.0)
    pool = gw.runtime.pools[FAKE_MODEL]
    body = httpx.Request("POST", "http://x", json=chat_body("FLOOD", stream=True)).content
    port = int(gw.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {gw.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    try:
        assert wait_until(lambda: pool.in_flight() == 1, 5.0)
        # 26 MB on its way and nobody reading: before, the slot was held for as long as the socket stayed open
        assert wait_until(lambda: pool.in_flight() == 0, 20.0), "the stalled stream still holds its slot"
    finally:
        sock.close()
    row = _last_row(gw)
    assert row["status"] == 499


def test_a_key_may_hold_only_so_many_requests_in_flight(make_gateway):
    gw = make_gateway(max_in_flight_per_key=2)
    other = KeyStore(gw.db_url).create("other-key")[1]
    held: list[threading.Thread] = []
    started = threading.Barrier(3)

    def slow_stream() -> None:
        with gw.client() as client, client.stream("POST", "/v1/chat/completions",
                                                  json=chat_body("SLOW", stream=True)) as reply:
            started.wait()
            reply.read()

    for _ in range(2):
        held.append(threading.Thread(target=slow_stream))
        held[-1].start()
    started.wait(timeout=10)
    with gw.client() as client:
        refused = client.post("/v1/chat/completions", json=chat_body())
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_requests_in_flight"
        assert refused.headers["retry-after"] == "1"
    with gw.client(key=other) as client:  # another key is not held back
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    for thread in held:
        thread.join(timeout=10)
    with gw.client() as client:  # the slots came back with the streams' end
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200


def test_a_request_past_the_total_time_limit_ends(make_gateway):
    gw = make_gateway(request_timeout_s=0.5)
    with gw.client() as client:
        started = time.perf_counter()
        reply = client.post("/v1/chat/completions", json=chat_body("SLOW"))  # 6 tokens x 0.2 s
        assert reply.status_code == 504 and reply.json()["error"]["code"] == "request_timeout"
        assert time.perf_counter() - started < 1.1
        with client.stream("POST", "/v1/chat/completions", json=chat_body("SLOW", stream=True)) as streamed:
            events = sse_payloads(streamed)
        assert events[-1]["error"]["code"] == "request_timeout"
    assert wait_until(lambda: gw.runtime.pools[FAKE_MODEL].in_flight() == 0)
    gw.thread.stop()
    assert [r["status"] for r in ledger_rows(gw.db_url)] == [504, 504]


# --- prefix-cache salt ------------------------------------------------------------------------------------------


def test_each_key_gets_its_own_prefix_cache_namespace(make_gateway, fake_upstream):
    _, state = fake_upstream
    gw = make_gateway()
    other = KeyStore(gw.db_url).create("tenant-b")[1]
    salts = []
    for key in (gw.key, other, gw.key):
        with gw.client(key=key) as client:
            assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
        salts.append(state.requests[-1]["cache_salt"])
    assert salts[0] == salts[2] != salts[1]
    with gw.client(key=other) as client:  # a client's own salt cannot name another key's namespace
        client.post("/v1/chat/completions", json=chat_body(cache_salt=salts[0]))
    assert state.requests[-1]["cache_salt"] not in (salts[0], salts[1])
    shared = make_gateway(cache_salt_per_key=False)
    with shared.client() as client:
        client.post("/v1/chat/completions", json=chat_body(cache_salt="mine"))
        assert state.requests[-1]["cache_salt"] == "mine"
        client.post("/v1/chat/completions", json=chat_body())
        assert "cache_salt" not in state.requests[-1]
