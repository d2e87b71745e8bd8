"""Every error the gateway itself produces: OpenAI body shape and the status a client expects."""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from quantserve.serve.keys import KeyStore
from tests.support.serve_helpers import FAKE_MODEL, chat_body, free_port, wait_until


def assert_openai_error(reply: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    assert "Traceback" not in reply.text
    return body["error"]


def test_missing_key_is_401(make_gateway):
    gw = make_gateway()
    with gw.client(key="") as client:
        err = assert_openai_error(client.post("/v1/chat/completions", json=chat_body()), 401, "invalid_api_key")
        assert err["type"] == "authentication_error"
        assert_openai_error(client.get("/v1/models"), 401)


def test_wrong_and_revoked_keys_are_401(make_gateway):
    gw = make_gateway()
    with gw.client(key="sk-qs-not-a-real-key-at-all") as client:
        assert_openai_error(client.post("/v1/chat/completions", json=chat_body()), 401)
    store = KeyStore(gw.db_url)
    _, second = store.create("to-revoke")
    store.revoke("to-revoke")
    with gw.client(key=second) as client:
        assert_openai_error(client.post("/v1/chat/completions", json=chat_body()), 401)
    with gw.client() as client:  # the fixture's valid key still works
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200


def test_malformed_json_is_400(make_gateway):
    gw = make_gateway()
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", content=b'{"model": "fake-model", "messages": [',
                            headers={"content-type": "application/json"})
        assert_openai_error(reply, 400, "invalid_json")
        assert_openai_error(client.post("/v1/completions", content=b"[1, 2]"), 400, "invalid_json")
        assert_openai_error(client.post("/v1/completions", content=b"\xff\xfe"), 400)


def test_schema_errors_are_400_not_422(make_gateway):
    gw = make_gateway()
    with gw.client() as client:
        err = assert_openai_error(client.post("/v1/chat/completions", json={"model": FAKE_MODEL}), 400)
        assert err["param"] == "messages"
        err = assert_openai_error(client.post("/v1/chat/completions", json=chat_body(max_tokens=-3)), 400)
        assert err["param"] == "max_tokens"
        assert_openai_error(client.post("/v1/chat/completions", json={"model": FAKE_MODEL, "messages": "hi"}), 400)
        assert_openai_error(client.post("/v1/completions", json={"model": FAKE_MODEL}), 400)
        assert_openai_error(client.post("/v1/chat/completions", json=chat_body(stream="yes please")), 400)


def test_unknown_model_is_404(make_gateway):
    gw = make_gateway()
    with gw.client() as client:
        err = assert_openai_error(client.post("/v1/chat/completions", json={**chat_body(), "model": "nope"}), 404,
                                  "model_not_found")
        assert err["param"] == "model"
        assert_openai_error(client.get("/v1/models/nope"), 404, "model_not_found")
        assert client.get(f"/v1/models/{FAKE_MODEL}").json()["id"] == FAKE_MODEL


def test_unknown_path_and_method_are_openai_shaped(make_gateway):
    gw = make_gateway()
    with gw.client() as client:
        assert_openai_error(client.get("/v1/nothing-here"), 404)
        assert_openai_error(client.get("/v1/chat/completions"), 405)


def test_over_context_prompt_is_400_with_engine_message(make_gateway):
    gw = make_gateway()
    with gw.client() as client:
        for stream in (False, True):
            reply = client.post("/v1/chat/completions", json=chat_body("TOO_LONG", stream=stream))
            err = assert_openai_error(reply, 400, "context_length_exceeded")
            assert "maximum context length" in err["message"]
            assert err["type"] == "invalid_request_error"


def test_body_over_limit_is_413(make_gateway):
    gw = make_gateway(max_body_bytes=2000)
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json=chat_body("x" * 5000))
        assert_openai_error(reply, 413, "request_too_large")

        def chunked():  # no Content-Length: the limit must hold while reading
            for _ in range(10):
                yield b"x" * 500

        assert_openai_error(client.post("/v1/chat/completions", content=chunked()), 413)


def test_engine_down_is_503(make_gateway):
    gw = make_gateway(routes={FAKE_MODEL: [f"http://127.0.0.1:{free_port()}"]})
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json=chat_body())
        assert_openai_error(reply, 503, "engine_unavailable")
        assert reply.headers["retry-after"]
        assert client.get("/ready").status_code == 503
        assert client.get("/health").status_code == 200


def test_ready_is_200_while_any_model_is_ready_and_answers_per_model(make_gateway, fake_upstream):
    server, _ = fake_upstream
    gw = make_gateway(routes={FAKE_MODEL: [server.url], "down": [f"http://127.0.0.1:{free_port()}"]})
    with gw.client() as client:
        assert wait_until(lambda: not client.get("/ready").json()["models"]["down"]["ready"])
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"  # one engine down: still in service
        assert ready.json()["models"][FAKE_MODEL]["ready"] is True
        one = client.get("/ready", params={"model": "down"})
        assert one.status_code == 503 and list(one.json()["models"]) == ["down"]
        assert client.get("/ready", params={"model": FAKE_MODEL}).status_code == 200
        assert_openai_error(client.get("/ready", params={"model": "nope"}), 404, "model_not_found")


def test_engine_500_becomes_502_without_internals(make_gateway):
    gw = make_gateway()
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json=chat_body("BOOM"))
        assert_openai_error(reply, 502, "upstream_error")
        assert "secret internals" not in reply.text


def test_unexpected_exception_is_generic_500(make_gateway, monkeypatch):
    gw = make_gateway()

    async def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret stack detail")

    monkeypatch.setattr(gw.runtime.proxy, "handle", explode)
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json=chat_body())
        assert_openai_error(reply, 500, "internal_error")
        assert "secret stack detail" not in reply.text
        assert client.get("/health").status_code == 200


def test_overload_is_429_with_retry_after(make_gateway):
    gw = make_gateway(overload={"max_in_flight_per_upstream": 1, "max_queue_per_upstream": 1,
                                "queue_timeout_s": 30})
    statuses: list[int] = []

    def slow_request() -> None:
        with gw.client() as client:
            statuses.append(client.post("/v1/chat/completions", json=chat_body("SLOW")).status_code)

    threads = [threading.Thread(target=slow_request) for _ in range(2)]  # one runs, one waits in the queue
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    pool = gw.runtime.pools[FAKE_MODEL]
    while (pool.in_flight() < 1 or len(pool._waiters) < 1) and time.monotonic() < deadline:
        time.sleep(0.01)
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json=chat_body())
        assert_openai_error(reply, 429, "server_overloaded")
        assert int(reply.headers["retry-after"]) >= 1
    for thread in threads:
        thread.join()
    assert statuses == [200, 200]  # the queued one got its turn


def test_queue_timeout_is_429(make_gateway):
    gw = make_gateway(overload={"max_in_flight_per_upstream": 1, "max_queue_per_upstream": 4,
                                "queue_timeout_s": 0.2})
    holder = threading.Thread(target=lambda: gw.client().post("/v1/chat/completions", json=chat_body("SLOW")))
    holder.start()
    pool = gw.runtime.pools[FAKE_MODEL]
    deadline = time.monotonic() + 5
    while pool.in_flight() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with gw.client() as client:
        assert_openai_error(client.post("/v1/chat/completions", json=chat_body()), 429, "server_overloaded")
    holder.join()


def test_rate_limit_rpm_is_429_with_retry_after(make_gateway):
    gw = make_gateway(key_kwargs={"rpm": 2})
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
        assert client.post("/v1/completions", json={"model": FAKE_MODEL, "prompt": "hi"}).status_code == 200
        reply = client.post("/v1/chat/completions", json=chat_body())
        err = assert_openai_error(reply, 429, "rate_limit_exceeded")
        assert "2 requests per minute" in err["message"]
        assert 1 <= int(reply.headers["retry-after"]) <= 60


def test_rate_limit_tpm_is_429(make_gateway):
    gw = make_gateway(key_kwargs={"tpm": 100})
    body = json.dumps(chat_body(max_tokens=6)).encode()
    reserve = math.ceil(len(body) / 4) + 6  # the prompt estimate plus max_tokens
    used = 7 + 6  # what one fake answer reports
    with gw.client() as client:
        for n in range(100):
            if n * used + reserve > 100:
                break
            assert client.post("/v1/chat/completions", content=body).status_code == 200
        reply = client.post("/v1/chat/completions", content=body)
        assert_openai_error(reply, 429, "rate_limit_exceeded")
        assert "tokens per minute" in reply.json()["error"]["message"]
        assert int(reply.headers["retry-after"]) >= 1
        too_large = client.post("/v1/chat/completions", json=chat_body(max_tokens=500))
        assert_openai_error(too_large, 429, "rate_limit_exceeded")
        assert "lower max_tokens" in too_large.json()["error"]["message"]
        assert "retry-after" not in too_large.headers


def test_concurrent_requests_cannot_overshoot_the_tpm_limit(make_gateway):
    # Before reservations, every request admitted while the key's finished total was under its budget: eight
    # concurrent slow requests all ran. Now what is in flight counts.
    gw = make_gateway(key_kwargs={"tpm": 200})
    body = json.dumps(chat_body("SLOW", max_tokens=6)).encode()  # each answer takes 1.2 s
    reserve = math.ceil(len(body) / 4) + 6
    with ThreadPoolExecutor(8) as pool, gw.client() as client:
        codes = list(pool.map(lambda _: client.post("/v1/chat/completions", content=body).status_code, range(8)))
    assert codes.count(200) == 200 // reserve, codes
    assert set(codes) == {200, 429}
