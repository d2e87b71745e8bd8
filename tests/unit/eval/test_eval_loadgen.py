"""The load generator against a real loopback SSE server: records, failures, warm-up, limits."""

from __future__ import annotations

import pytest

from quantserve.errors import UserError
from quantserve.eval.endpoint import Endpoint, check_models
from quantserve.eval.loadgen import (
    LoadLimits,
    LoadPoint,
    arrival_offsets,
    make_client,
    parse_sweep,
    run_point,
)
from quantserve.eval.metrics import compute_metrics
from quantserve.eval.scenarios import ScenarioItem
from tests.support.eval_fake_openai import API_KEY, CHUNKS, PROMPT_TOKENS
from tests.support.helpers import free_port

ITEMS = [ScenarioItem(id=f"q{i}", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=8)
         for i in range(3)]


async def measure(url: str, model: str, point: LoadPoint, limits: LoadLimits):
    async with make_client(limits) as client:
        return await run_point(client, Endpoint.of(url, API_KEY), model, "test", ITEMS, point, limits)


async def test_streamed_requests_are_recorded_and_warmup_excluded(fake_server):
    url, app = fake_server
    before = app.state.counts["good"]
    records = await measure(url, "good", LoadPoint("concurrency", 2), LoadLimits(num_requests=5, warmup=3))
    assert app.state.counts["good"] - before == 8  # the server saw warm-up + measured
    assert len(records) == 5
    for r in records:
        assert r.ok and r.error is None and r.status_code == 200
        assert r.model == "good" and r.point == "concurrency=2" and r.scenario == "test"
        assert len(r.chunk_times) == CHUNKS  # the empty role chunk is not a token
        assert r.first_token == r.chunk_times[0]
        assert r.start < r.first_token <= r.chunk_times[-1] <= r.end
        assert (r.prompt_tokens, r.completion_tokens) == (PROMPT_TOKENS, CHUNKS)
    assert [r.item_id for r in records] == ["q0", "q1", "q2", "q0", "q1"]  # items cycle in order
    m = compute_metrics(records)
    assert m.completed == 5 and m.failed == 0 and m.total_output_tokens == 5 * CHUNKS
    assert m.itl_ms is not None and m.itl_ms.p50 >= 5  # the server sleeps 10 ms between chunks


@pytest.mark.parametrize(("model", "error_part", "status"), [
    ("err500", "HTTP 500: engine exploded", 500),
    ("errevent", "stream error: engine overloaded", 200),
    ("broken", "RemoteProtocolError: peer closed connection", 200),
])
async def test_failed_requests_are_recorded_as_errors(fake_server, model, error_part, status):
    url, _ = fake_server
    records = await measure(url, model, LoadPoint("concurrency", 2), LoadLimits(num_requests=3, warmup=1))
    assert len(records) == 3
    for r in records:
        assert not r.ok and error_part in r.error and r.status_code == status and r.end is not None
    m = compute_metrics(records)
    assert (m.requests, m.failed, m.error_rate, m.request_throughput) == (3, 3, 1.0, 0.0)
    assert m.ttft_ms is None and sum(m.errors.values()) == 3


async def test_a_request_past_its_timeout_is_an_error(fake_server):
    url, _ = fake_server
    records = await measure(url, "slow", LoadPoint("concurrency", 1),
                            LoadLimits(num_requests=1, warmup=0, timeout_s=0.3))
    assert [r.error for r in records] == ["timeout after 0.3s"]
    assert records[0].end - records[0].start < 2


async def test_duration_bounds_a_point_before_the_request_count(fake_server):
    url, _ = fake_server
    records = await measure(url, "good", LoadPoint("concurrency", 1),
                            LoadLimits(num_requests=10_000, duration_s=0.4, warmup=0))
    assert 1 <= len(records) < 100
    assert all(r.ok for r in records)


async def test_constant_rate_spaces_request_starts(fake_server):
    url, _ = fake_server
    records = await measure(url, "good", LoadPoint("rate", 20), LoadLimits(num_requests=6, warmup=0))
    assert len(records) == 6 and all(r.ok for r in records)
    spread = records[-1].start - records[0].start
    assert 0.22 <= spread <= 0.6  # 5 gaps of 50 ms, plus scheduling slack


def test_arrival_schedules():
    assert arrival_offsets(LoadPoint("rate", 4), 3, seed=0) == [0.0, 0.25, 0.5]
    a = arrival_offsets(LoadPoint("poisson", 10), 2000, seed=7)
    assert a == arrival_offsets(LoadPoint("poisson", 10), 2000, seed=7)
    assert a != arrival_offsets(LoadPoint("poisson", 10), 2000, seed=8)
    mean_gap = a[-1] / (len(a) - 1)
    assert 0.09 < mean_gap < 0.11  # exponential gaps with mean 1/rate


def test_parse_sweep():
    assert [p.label for p in parse_sweep("concurrency=1,4,16")] == ["concurrency=1", "concurrency=4",
                                                                    "concurrency=16"]
    assert parse_sweep("poisson=0.5,2")[0] == LoadPoint("poisson", 0.5)
    for bad in ("concurrency", "users=1,2", "concurrency=1,x", "concurrency=1.5", "rate=0"):
        with pytest.raises(UserError):
            parse_sweep(bad)


async def test_unreachable_endpoint_is_a_user_error():
    async with make_client(LoadLimits()) as client:
        with pytest.raises(UserError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1/models"):
            await check_models(client, Endpoint.of(f"http://127.0.0.1:{free_port()}"), ["good"])


async def test_endpoint_model_and_key_checks(fake_server):
    url, _ = fake_server
    async with make_client(LoadLimits()) as client:
        cards = await check_models(client, Endpoint.of(url + "/v1/", API_KEY), ["good"])
        assert [c["id"] for c in cards] == ["good"]
        with pytest.raises(UserError, match=r"model\(s\) nope not served .* served: good, "):
            await check_models(client, Endpoint.of(url, API_KEY), ["good", "nope"])
        with pytest.raises(UserError, match="rejected the API key"):
            await check_models(client, Endpoint.of(url, "sk-wrong"), ["good"])
