"""Relaying and accounting through the gateway, against the fake upstream: streams, usage, disconnects, metrics,
and the ledger flushed on shutdown."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import httpx

from quantserve.serve.keys import KeyStore
from tests.support.serve_helpers import FAKE_MODEL, chat_body, free_port, ledger_rows, sse_payloads, wait_until


def test_stream_without_usage_hides_the_usage_chunk_but_meters_it(make_gateway, fake_upstream):
    gw = make_gateway()
    _, state = fake_upstream
    with gw.client() as client, client.stream("POST", "/v1/chat/completions",
                                              json=chat_body(stream=True)) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = sse_payloads(reply)
    assert events[-1] == "[DONE]"
    assert not any(isinstance(e, dict) and "usage" in e for e in events)
    text_out = "".join(e["choices"][0]["delta"]["content"] for e in events if isinstance(e, dict))
    assert text_out == "Hello from the fake upstream."
    # asked upstream on our own, on every chunk: a stream the client cuts short is still metered exactly
    assert state.requests[-1]["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    gw.thread.stop()
    (row,) = ledger_rows(gw.db_url)
    assert (row["prompt_tokens"], row["completion_tokens"], row["status"], row["stream"]) == (7, 6, 200, 1)
    assert row["ttft_ms"] is not None and row["latency_ms"] >= row["ttft_ms"]


def test_stream_with_usage_passes_the_usage_chunk(make_gateway):
    gw = make_gateway()
    body = chat_body(stream=True, stream_options={"include_usage": True})
    with gw.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as reply:
        events = sse_payloads(reply)
    usage = [e["usage"] for e in events if isinstance(e, dict) and e.get("usage")]
    assert usage == [{"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}]


def test_completions_stream_and_unary(make_gateway):
    gw = make_gateway()
    with gw.client() as client:
        reply = client.post("/v1/completions", json={"model": FAKE_MODEL, "prompt": "hi", "max_tokens": 3})
        assert reply.json()["choices"][0]["text"] == "Hello from the"
        with client.stream("POST", "/v1/completions",
                           json={"model": FAKE_MODEL, "prompt": "hi", "stream": True}) as streamed:
            events = sse_payloads(streamed)
    assert "".join(e["choices"][0]["text"] for e in events if isinstance(e, dict)) == "Hello from the fake upstream."


def test_events_are_relayed_as_they_come(make_gateway):
    gw = make_gateway()
    arrivals: list[float] = []
    start = time.perf_counter()
    with gw.client() as client, client.stream("POST", "/v1/chat/completions",
                                              json=chat_body("SLOW", stream=True)) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.perf_counter() - start)
    assert len(arrivals) == 6
    assert arrivals[0] < 0.6  # the first token is not held back until the end (6 x 0.2 s)
    assert arrivals[-1] - arrivals[0] > 0.8


def test_client_disconnect_cancels_upstream_stream(make_gateway, fake_upstream):
    gw = make_gateway()
    _, state = fake_upstream
    before = state.cancelled
    with gw.client() as client, client.stream("POST", "/v1/chat/completions",
                                              json=chat_body("SLOW", stream=True)) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                break  # leave after the first token
    assert wait_until(lambda: state.cancelled > before, 3.0), "upstream kept generating for a gone client"
    pool = gw.runtime.pools[FAKE_MODEL]
    assert wait_until(lambda: pool.in_flight() == 0)
    gw.thread.stop()
    assert ledger_rows(gw.db_url)[-1]["status"] == 499


def test_client_disconnect_cancels_upstream_unary(make_gateway, fake_upstream):
    gw = make_gateway()
    _, state = fake_upstream
    before = state.cancelled
    with gw.client(timeout=0.3) as client, contextlib.suppress(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=chat_body("SLOW"))
    assert wait_until(lambda: state.cancelled > before, 3.0)


def test_engine_dying_mid_stream_ends_with_error_event(make_gateway):
    gw = make_gateway()
    with gw.client() as client:
        with client.stream("POST", "/v1/chat/completions", json=chat_body("CRASH", stream=True)) as reply:
            assert reply.status_code == 200
            events = sse_payloads(reply)
        assert [e for e in events if isinstance(e, dict) and "choices" in e]  # the part that did arrive
        last = events[-1]
        assert isinstance(last, dict) and set(last) == {"error"}
        assert last["error"]["code"] == "upstream_error"
        assert client.get("/health").status_code == 200
        assert wait_until(lambda: client.get("/ready").status_code == 200)  # health poll brings it back
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    gw.thread.stop()
    assert [r["status"] for r in ledger_rows(gw.db_url)] == [502, 200]


def test_engine_error_event_mid_stream_is_reshaped(make_gateway):
    gw = make_gateway()
    with gw.client() as client, client.stream("POST", "/v1/chat/completions",
                                              json=chat_body("ERROR_EVENT", stream=True)) as reply:
        body = reply.read().decode()
    assert "secret internals" not in body
    errors = [e for e in sse_payloads_text(body) if isinstance(e, dict) and "error" in e]
    assert errors and errors[0]["error"]["code"] == "upstream_error"
    gw.thread.stop()
    assert ledger_rows(gw.db_url)[-1]["status"] == 500


def sse_payloads_text(body: str) -> list[Any]:
    return [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
            for line in body.splitlines() if line.startswith("data: ")]


def test_models_ready_and_metrics(make_gateway):
    gw = make_gateway()
    with gw.client() as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [FAKE_MODEL]
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.json()["models"][FAKE_MODEL]["ready"] is True
        client.post("/v1/chat/completions", json=chat_body())
        with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as reply:
            reply.read()
        client.post("/v1/chat/completions", json={**chat_body(), "model": "missing"})
        metrics = httpx.get(f"{gw.url}/metrics", trust_env=False).text  # no key needed
    assert f'quantserve_requests_total{{endpoint="/v1/chat/completions",model="{FAKE_MODEL}",status="200"}} 2.0' \
        in metrics
    assert 'quantserve_request_errors_total{model="unknown",status="404",type="invalid_request_error"} 1.0' \
        in metrics
    key_id = KeyStore(gw.db_url).list()[0].id
    assert "test-key" not in metrics  # a key's name is its creator's text: series carry its id
    assert f'quantserve_prompt_tokens_total{{key_id="{key_id}",model="{FAKE_MODEL}"}} 14.0' in metrics
    assert f'quantserve_completion_tokens_total{{key_id="{key_id}",model="{FAKE_MODEL}"}} 12.0' in metrics
    assert f'quantserve_time_to_first_token_seconds_count{{model="{FAKE_MODEL}"}} 1.0' in metrics
    assert "quantserve_request_duration_seconds_bucket" in metrics
    assert f'quantserve_engine_up{{model="{FAKE_MODEL}",upstream=' in metrics
    assert f'quantserve_in_flight_requests{{model="{FAKE_MODEL}"}} 0.0' in metrics


def test_ledger_has_every_request_after_shutdown(make_gateway):
    gw = make_gateway()
    sent = 0
    with gw.client() as client:
        for i in range(25):
            body = chat_body(stream=bool(i % 2))
            if i % 5 == 4:
                body["model"] = "missing"  # 404s are authenticated requests too: they get a row
            with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                reply.read()
            sent += 1
    gw.thread.stop()  # app shutdown drains the writer queue
    rows = ledger_rows(gw.db_url)
    assert len(rows) == sent
    assert sum(r["status"] == 404 for r in rows) == 5
    key_id = KeyStore(gw.db_url).list()[0].id
    assert {r["key_id"] for r in rows} == {key_id}


def test_no_auth_mode(make_gateway):
    gw = make_gateway(auth=False)
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    gw.thread.stop()
    assert ledger_rows(gw.db_url)[0]["key_id"] is None


def test_prompts_stay_out_of_logs_unless_asked(make_gateway, caplog):
    caplog.set_level("INFO", logger="quantserve.serve.requests")
    gw = make_gateway()
    with gw.client() as client:
        client.post("/v1/chat/completions", json=chat_body("a very private prompt"))
    assert any("status=200" in r.getMessage() for r in caplog.records)
    assert not any("very private" in r.getMessage() for r in caplog.records)
    caplog.clear()
    gw = make_gateway(log_prompts=True)
    with gw.client() as client:
        client.post("/v1/chat/completions", json=chat_body("a very private prompt"))
    assert any("very private" in r.getMessage() for r in caplog.records)


def test_refused_connection_moves_on_to_another_upstream(make_gateway, fake_upstream):
    server, _ = fake_upstream
    dead = f"http://127.0.0.1:{free_port()}"
    gw = make_gateway(routes={FAKE_MODEL: [dead, server.url]}, health_interval_s=3600)  # no poll to help
    pool = gw.runtime.pools[FAKE_MODEL]
    pool.upstreams[0].healthy = True  # as if it had just died after its last good health check
    with gw.client() as client:
        for stream in (False, True, False, True):
            with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=stream)) as reply:
                assert reply.status_code == 200
                reply.read()
    assert not pool.upstreams[0].healthy
    # the slot is released when the gateway's response generator finishes, just after the client's last read
    assert wait_until(lambda: pool.in_flight() == 0)


def test_a_stream_the_client_cuts_short_is_billed_its_prompt_and_the_tokens_it_got(make_gateway):
    """Before, a cancelled stream's ledger row had no prompt tokens (the usage chunk never came) and counted the
    role chunk as a token."""
    gw = make_gateway()
    with gw.client() as client, client.stream("POST", "/v1/chat/completions",
                                              json=chat_body("SLOW", stream=True)) as reply:
        seen = 0
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                assert '"usage"' not in line  # the client did not ask for it
                seen += 1
                if seen == 2:
                    break
    assert wait_until(lambda: gw.runtime.pools[FAKE_MODEL].in_flight() == 0)
    gw.thread.stop()
    (row,) = ledger_rows(gw.db_url)
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == (499, 7, 2)


def test_continuous_usage_reaches_a_client_that_asked_for_it(make_gateway):
    gw = make_gateway()
    body = chat_body(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
    with gw.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as reply:
        events = [e for e in sse_payloads(reply) if isinstance(e, dict)]
    assert [e["usage"]["completion_tokens"] for e in events if e["choices"]] == [1, 2, 3, 4, 5, 6]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 6
