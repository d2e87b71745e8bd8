"""Client mistakes and hostile bodies: a 400 naming the field, before anything reaches the engine; an engine 5xx
that the request's content caused is the client's 400; no stack trace, no 5xx, no UTF-8 crash."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from quantserve.serve.errors import from_upstream
from tests.support.serve_helpers import FAKE_MODEL, chat_body


def post_raw(client: httpx.Client, body: bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    return client.post(path, content=body, headers={"content-type": "application/json"})


def error_of(reply: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize(("field", "value", "param"), [
    ("temperature", 1e308, "temperature"),
    ("seed", 2**64, "seed"),
    ("max_tokens", 2**63, "max_tokens"),
    ("structured_outputs", "xyz", "structured_outputs"),  # vLLM 0.32 answers this one with a bare 500
    ("stop", [[1]], "stop.0"),
    ("logit_bias", {"1": 1e9}, "logit_bias.1"),
    ("n", 0, "n"),
    ("top_k", -5, "top_k"),
    ("stop_token_ids", [2**40], "stop_token_ids.0"),
    ("ignore_eos", {"a": 1}, "ignore_eos"),
    ("messages", [{"role": "user", "content": [7]}], "messages.0.content.0"),
    # llama.cpp's server answers these three with a 500 and a closed connection
    ("messages", [{"role": "user", "content": [{"type": "text", "text": 1e308}]}], "messages.0.content.0.text"),
    ("messages", [{"role": "assistant", "tool_calls": [{"id": "1"}]}], "messages.0.tool_calls.0.type"),
    ("tools", [{"type": "function"}], "tools.0.function"),
])
def test_a_wrong_type_or_range_is_400_naming_the_field(make_gateway, fake_upstream, field, value, param):
    _, state = fake_upstream
    gw = make_gateway()
    seen = len(state.requests)
    with gw.client() as client:
        error = error_of(client.post("/v1/chat/completions", json=chat_body(**{field: value})))
    assert error["param"] == param and error["message"].startswith(f"{param}:")
    assert error["type"] == "invalid_request_error"
    assert len(state.requests) == seen  # the engine never saw it


def test_unknown_fields_and_vllm_extensions_pass_through(make_gateway, fake_upstream):
    _, state = fake_upstream
    gw = make_gateway()
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json=chat_body(ignore_eos=True, min_tokens=1, top_k=20,
                                                                   some_future_field={"x": [1, 2]}))
    assert reply.status_code == 200, reply.text
    forwarded = state.requests[-1]
    assert forwarded["ignore_eos"] is True and forwarded["some_future_field"] == {"x": [1, 2]}


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,  # json.loads raised RecursionError: a gateway 500
    json.dumps(chat_body(extra=json.loads("[" * 100 + "]" * 100))).encode(),
    json.dumps(chat_body()).replace('"hi"', "NaN").encode(),
    json.dumps(chat_body(temperature=0)).replace('"temperature": 0', '"temperature": Infinity').encode(),
])
def test_bodies_python_json_accepts_but_json_does_not_are_400(make_gateway, body):
    gw = make_gateway()
    with gw.client() as client:
        error = error_of(post_raw(client, body))
    assert error["code"] == "invalid_json"


def test_a_lone_surrogate_is_400(make_gateway):
    # valid JSON, not encodable as UTF-8: it must not reach the engine nor break the error that names it
    gw = make_gateway()
    with gw.client() as client:
        reply = post_raw(client, b'{"model": "x\\ud800", "messages": [{"role": "user", "content": "hi"}]}')
    assert error_of(reply)["param"] == "model"


def test_an_engine_500_caused_by_the_content_is_400_and_other_5xx_are_502():
    content = from_upstream(500, json.dumps({"error": {"message": "'str' object has no attribute 'get'",
                                                       "type": "InternalServerError", "code": 500}}).encode())
    assert content.status == 400 and "has no attribute" in content.message
    unsupported = from_upstream(501, json.dumps({"error": {"message": "best_of is not supported",
                                                           "type": "NotImplementedError", "code": 501}}).encode())
    assert unsupported.status == 400 and unsupported.code == "unsupported_request"
    for message in ("Failed to parse messages: Missing tool call type: {\"id\":1}",
                    "Failed to parse messages: [json.exception.out_of_range.403] key 'text' not found",
                    "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"):
        llama_cpp = from_upstream(500, json.dumps({"error": {"code": 500, "message": message,
                                                             "type": "server_error"}}).encode())
        assert llama_cpp.status == 400 and llama_cpp.code == "invalid_request_content", message
    for status, body in ((500, b"Internal Server Error"), (503, b'{"error": {"message": "engine dead"}}'),
                         (500, b'{"error": {"message": "EngineCore encountered an issue"}}')):
        failure = from_upstream(status, body)
        assert failure.status == 502 and failure.code == "upstream_error"


def test_a_flat_error_event_mid_stream_is_recorded_as_an_error(make_gateway, fake_upstream):
    """vLLM's older error event is flat: {"object": "error", "code": 400, ...}; the ledger recorded it as 200."""
    from sqlalchemy import create_engine, text

    gw = make_gateway()
    with gw.client() as client, client.stream("POST", "/v1/chat/completions",
                                              json=chat_body("FLAT_ERROR_EVENT", stream=True)) as reply:
        body = reply.read().decode()
    assert '"object": "error"' in body or '"object":"error"' in body
    gw.thread.stop()  # flushes the ledger
    with create_engine(gw.db_url).connect() as conn:
        statuses = [row[0] for row in conn.execute(text("SELECT status FROM qs_usage WHERE model = :m"),
                                                    {"m": FAKE_MODEL})]
    assert statuses == [400]
