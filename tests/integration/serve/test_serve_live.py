"""The real stack (vLLM + gateway) through the real openai client: every endpoint, errors, concurrency, ledger."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from tests.support.helpers import wait_until

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def test_models_lists_the_served_model_with_the_probes_dtype(live, machine_probe):
    cards = live.client().models.list().data
    assert [m.id for m in cards] == live.stack.models == [live.model]
    full = machine_probe["verdicts"]["full"]
    assert cards[0].model_extra == {"runtime": "vllm", "format": "full", "dtype": full["dtype"],
                                    "dtype_from": "probe"}


def test_chat(live):
    reply = live.client().chat.completions.create(model=live.model, messages=MESSAGES, max_tokens=16,
                                                  temperature=0)
    assert reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 16


def test_stream_with_usage(live):
    stream = live.client().chat.completions.create(model=live.model, messages=MESSAGES, max_tokens=12,
                                                   stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text_out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text_out
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and not chunks[-1].choices  # the last chunk carries usage and no choices
    assert 0 < usage[0].completion_tokens <= 12 and usage[0].prompt_tokens > 0


def test_stream_without_usage_gets_none(live):
    stream = live.client().chat.completions.create(model=live.model, messages=MESSAGES, max_tokens=8,
                                                   stream=True)
    chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_completions(live):
    reply = live.client().completions.create(model=live.model, prompt="The capital of France is",
                                             max_tokens=8, temperature=0)
    assert reply.choices[0].text and reply.usage.completion_tokens > 0
    stream = live.client().completions.create(model=live.model, prompt="One, two,", max_tokens=6, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices)


def test_wrong_key_is_401(live):
    with pytest.raises(openai.AuthenticationError) as err:
        live.client(key="sk-qs-wrong-wrong-wrong").chat.completions.create(model=live.model, messages=MESSAGES)
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"


def test_unknown_model_is_404(live):
    with pytest.raises(openai.NotFoundError) as err:
        live.client().chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert err.value.code == "model_not_found"


def test_malformed_bodies_are_400(live):
    with live.http() as http:
        for body in (b"{not json", b"[]", b'{"model": "x"}', b'{"messages": []}'):
            reply = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
            assert reply.status_code == 400, (body, reply.text)
            assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError):  # vLLM's own validation, passed through reshaped
        live.client().chat.completions.create(model=live.model, messages=MESSAGES, temperature=-1)


def test_prompt_over_context_is_400(live):
    long_prompt = "hello " * 3000  # > 2048 tokens
    with pytest.raises(openai.BadRequestError) as err:
        live.client().chat.completions.create(model=live.model, max_tokens=4,
                                              messages=[{"role": "user", "content": long_prompt}])
    assert err.value.code == "context_length_exceeded"
    assert "maximum context length" in err.value.message
    with pytest.raises(openai.BadRequestError):
        live.client().chat.completions.create(model=live.model, max_tokens=4, stream=True,
                                              messages=[{"role": "user", "content": long_prompt}])


def test_eight_concurrent_requests_and_usage_rows(live):
    key = live.new_key("concurrency")
    client = live.client(key=key)

    def ask(i: int) -> int:
        if i % 2:
            stream = client.chat.completions.create(model=live.model, max_tokens=16, stream=True,
                                                    messages=[{"role": "user", "content": f"Count to {i}."}])
            return sum(1 for _ in stream)
        reply = client.chat.completions.create(model=live.model, max_tokens=16,
                                               messages=[{"role": "user", "content": f"Count to {i}."}])
        return reply.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    assert all(r > 0 for r in results)

    engine = create_engine(live.db_url)
    deadline = time.monotonic() + 10
    rows: list = []
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT u.status, u.prompt_tokens, u.completion_tokens, u.ttft_ms, u.stream FROM qs_usage u "
                "JOIN qs_api_keys k ON k.id = u.key_id WHERE k.name = 'concurrency'")).all()
        if len(rows) >= 8:
            break
        time.sleep(0.2)
    engine.dispose()
    assert len(rows) == 8  # one row per completed request
    assert all(r.status == 200 and r.prompt_tokens > 0 and r.completion_tokens > 0 for r in rows), rows
    assert all(r.ttft_ms is not None for r in rows if r.stream), rows


def _engine_metric(live, prefix: str) -> float:
    metrics = httpx.get(f"{live.stack.engine_url(live.model)}/metrics", trust_env=False).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))


def test_client_disconnect_aborts_the_engine_request(live):
    generated = "vllm:generation_tokens_total"
    before = _engine_metric(live, generated)
    with live.http() as http, http.stream("POST", "/v1/chat/completions", json={
        "model": live.model, "messages": [{"role": "user", "content": "Tell a very long story."}],
        "max_tokens": 1500, "ignore_eos": True, "stream": True,
    }) as reply:
        for n, _line in enumerate(reply.iter_lines()):
            if n > 6:
                break
    assert wait_until(lambda: _engine_metric(live, "vllm:num_requests_running") == 0, timeout=30)
    # The request stopped early: a request that ran to its end (1500 tokens, ignore_eos) would also leave the
    # running gauge at 0, on a fast machine within any timeout, so the test counts the tokens vLLM generated.
    assert _engine_metric(live, generated) - before < 1500, "the engine kept generating for a client that left"


def test_engines_answer_only_the_gateway(live):
    """Each engine gets a generated key that only the gateway sends: the port alone skips no key or limit."""
    engine_url = live.stack.engine_url(live.model)
    body = {"model": live.model, "prompt": "Hi", "max_tokens": 1}
    assert httpx.post(f"{engine_url}/v1/completions", json=body, trust_env=False, timeout=60).status_code == 401
    direct = httpx.post(f"{engine_url}/v1/completions", json=body, headers=live.stack.engine_headers,
                        trust_env=False, timeout=60)
    assert direct.status_code == 200, direct.text
    assert httpx.get(f"{engine_url}/health", trust_env=False).status_code == 200  # probes need no key
    # vLLM's own key check covers /v1 only: /invocations runs chat and completions, /tokenize and the rest answer
    # anyone who reaches the port unless the engine guard (serve/engine_guard.py) closes them
    for method, path in (("POST", "/invocations"), ("POST", "/tokenize"), ("POST", "/detokenize"),
                         ("GET", "/metrics"), ("POST", "/pooling"), ("GET", "/load"), ("GET", "/version"),
                         ("GET", "/ping"), ("GET", "/server_info"), ("GET", "/v1/models"), ("GET", "/nope")):
        reply = httpx.request(method, f"{engine_url}{path}", json={"model": live.model, "prompt": "Hi",
                                                                    "max_tokens": 1}, trust_env=False, timeout=60)
        assert reply.status_code == 401, (path, reply.status_code, reply.text[:200])
    tokenized = httpx.post(f"{engine_url}/tokenize", json={"model": live.model, "prompt": "Hi"},
                           headers=live.stack.engine_headers, trust_env=False, timeout=60)
    assert tokenized.status_code == 200 and tokenized.json()["tokens"], tokenized.text  # the gateway's key opens it


def test_health_ready_metrics(live):
    base = live.stack.base_url
    assert httpx.get(f"{base}/health", trust_env=False).status_code == 200
    ready = httpx.get(f"{base}/ready", trust_env=False)
    assert ready.status_code == 200 and ready.json()["models"][live.model]["ready"]
    metrics = httpx.get(f"{base}/metrics", trust_env=False).text
    for series in ("quantserve_requests_total", "quantserve_time_to_first_token_seconds_bucket",
                   "quantserve_completion_tokens_total", "quantserve_engine_up", "quantserve_in_flight_requests"):
        assert series in metrics
    assert f'quantserve_engine_up{{model="{live.model}"' in metrics
