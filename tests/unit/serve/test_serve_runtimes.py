"""What the gateway does differently for llama.cpp and OpenVINO engines, against the fake upstream in that
runtime's role: one answer per request, and llama.cpp's running timings as the usage of a cut stream."""

from __future__ import annotations

import json

from quantserve.serve.sse import strip_timings_field, usage_of
from tests.support.serve_helpers import FAKE_MODEL, chat_body, ledger_rows, sse_payloads, wait_until


def _gateway(make_gateway, runtime: str):
    return make_gateway(model_info={FAKE_MODEL: {"runtime": runtime, "format": "gguf-q4_k_m", "dtype": None,
                                                 "dtype_from": "probe"}})


def test_more_than_one_answer_is_refused_for_one_answer_runtimes(make_gateway, fake_upstream):
    _, state = fake_upstream
    for runtime in ("llama.cpp", "openvino"):
        gw = _gateway(make_gateway, runtime)
        sent = len(state.requests)
        with gw.client() as client:
            for path, body in (("/v1/chat/completions", chat_body(n=2)),
                               ("/v1/completions", {"model": FAKE_MODEL, "prompt": ["a", "b"]}),
                               ("/v1/completions", {"model": FAKE_MODEL, "prompt": "a", "best_of": 3})):
                reply = client.post(path, json=body)
                assert reply.status_code == 400, (runtime, body, reply.text)
                error = reply.json()["error"]
                assert error["param"] == "n" and runtime in error["message"]
            assert client.post("/v1/chat/completions", json=chat_body(n=1)).status_code == 200
            assert client.post("/v1/completions", json={"model": FAKE_MODEL, "prompt": [1, 2, 3]}).status_code == 200
        assert len(state.requests) == sent + 2  # the refused ones never reached the engine
    vllm = _gateway(make_gateway, "vllm")
    with vllm.client() as client:
        assert client.post("/v1/chat/completions", json=chat_body(n=2)).status_code == 200


def test_text_only_runtimes_refuse_image_and_audio_parts_before_the_engine(make_gateway, fake_upstream):
    # llama.cpp without a vision encoder answered an image part with a 500 (a 502 to the client)
    _, state = fake_upstream
    image = chat_body(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}])
    for runtime in ("llama.cpp", "openvino"):
        gw = _gateway(make_gateway, runtime)
        sent = len(state.requests)
        with gw.client() as client:
            reply = client.post("/v1/chat/completions", json=image)
            assert reply.status_code == 400, reply.text
            error = reply.json()["error"]
            assert error["code"] == "unsupported_content" and "'image_url'" in error["message"]
            assert error["param"] == "messages" and runtime in error["message"]
            text_parts = chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
            assert client.post("/v1/chat/completions", json=text_parts).status_code == 200
        assert len(state.requests) == sent + 1  # only the text request reached the engine
    with _gateway(make_gateway, "vllm").client() as client:  # vLLM decides for itself
        assert client.post("/v1/chat/completions", json=image).status_code == 200


def test_llama_cpp_streams_ask_for_timings_and_the_client_sees_none(make_gateway, fake_upstream):
    _, state = fake_upstream
    gw = _gateway(make_gateway, "llama.cpp")
    with gw.client() as client, client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as reply:
        events = [e for e in sse_payloads(reply) if isinstance(e, dict)]
    assert state.requests[-1]["timings_per_token"] is True
    assert events and all("timings" not in e and "usage" not in e for e in events)
    assert "".join(e["choices"][0]["delta"]["content"] for e in events) == "Hello from the fake upstream."


def test_a_llama_cpp_stream_cut_short_is_billed_from_its_running_timings(make_gateway):
    gw = _gateway(make_gateway, "llama.cpp")
    with gw.client() as client, client.stream("POST", "/v1/chat/completions",
                                              json=chat_body("SLOW", stream=True)) as reply:
        seen = 0
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                assert '"timings"' not in line
                seen += 1
                if seen == 3:
                    break
    assert wait_until(lambda: gw.runtime.pools[FAKE_MODEL].in_flight() == 0)
    gw.thread.stop()
    (row,) = ledger_rows(gw.db_url)
    # prompt: 4 evaluated + 3 cached = 7; completion: the predicted count on the last chunk relayed
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == (499, 7, 3)


def test_a_client_that_asked_for_timings_keeps_them(make_gateway):
    gw = _gateway(make_gateway, "llama.cpp")
    body = chat_body(stream=True, timings_per_token=True)
    with gw.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as reply:
        events = [e for e in sse_payloads(reply) if isinstance(e, dict)]
    assert [e["timings"]["predicted_n"] for e in events] == [1, 2, 3, 4, 5, 6]


def test_usage_of_reads_llama_cpp_timings_and_stripping_keeps_valid_json():
    event = (b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}],"model":"m",'
             b'"timings":{"cache_n":2,"prompt_n":30,"prompt_ms":4.1,"predicted_n":5,"predicted_ms":9.0}}')
    assert usage_of(event) == {"prompt_tokens": 32, "completion_tokens": 5}
    stripped = strip_timings_field(event)
    assert json.loads(stripped[5:]) == {"choices": [{"index": 0, "delta": {"content": "Hi"}}], "model": "m"}
    vllm = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}'
    assert usage_of(vllm)["completion_tokens"] == 2  # usage wins where both could be read
