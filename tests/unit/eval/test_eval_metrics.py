"""Metric math on synthetic records, against answers computed by hand."""

from __future__ import annotations

import pytest

from quantserve.eval.metrics import compute_metrics, slo_violations
from quantserve.eval.records import RequestRecord
from quantserve.eval.slo import parse_slo


def rec(start: float, chunks: list[float], end: float, tokens: int | None, error: str | None = None,
        prompt: int = 10) -> RequestRecord:
    return RequestRecord(model="m", scenario="s", item_id="i", point="concurrency=1", start=start,
                         first_token=chunks[0] if chunks else None, chunk_times=chunks, end=end,
                         prompt_tokens=prompt, completion_tokens=tokens, status_code=200, error=error)


# A: TTFT 100 ms, E2E 400 ms, 4 tokens -> TPOT 300/3 = 100 ms, ITL 100,100,100
# B: TTFT 200 ms, E2E 300 ms, 3 tokens -> TPOT 100/2 = 50 ms,  ITL 50,50
# C: TTFT 50 ms,  E2E 50 ms,  1 token  -> no TPOT, no ITL
# D: failed after 1.0 s
RECORDS = [
    rec(0.0, [0.1, 0.2, 0.3, 0.4], 0.4, 4),
    rec(1.0, [1.2, 1.25, 1.3], 1.3, 3),
    rec(1.5, [1.55], 1.55, 1),
    rec(1.0, [], 2.0, None, error="HTTP 500: boom"),
]


def test_latencies_follow_vllm_definitions():
    m = compute_metrics(RECORDS)
    assert m.ttft_ms.mean == pytest.approx((100 + 200 + 50) / 3)
    assert m.ttft_ms.p50 == pytest.approx(100)
    assert m.ttft_ms.p90 == pytest.approx(180)  # sorted 50,100,200; rank 1.8 -> 100 + 0.8*100
    # TPOT only over requests with >1 output token: A=100, B=50
    assert m.tpot_ms.mean == pytest.approx(75)
    assert m.tpot_ms.p99 == pytest.approx(50 + 0.99 * 50)
    # ITL pooled over requests: 100,100,100,50,50
    assert m.itl_ms.mean == pytest.approx(80)
    assert m.itl_ms.p50 == pytest.approx(100)
    assert m.itl_ms.p90 == pytest.approx(100)
    assert m.e2e_ms.p50 == pytest.approx(300)
    assert m.e2e_ms.mean == pytest.approx((400 + 300 + 50) / 3)


def test_throughput_errors_and_goodput():
    slo = parse_slo("ttft_p99=150ms,tpot_p99=80ms")
    m = compute_metrics(RECORDS, slo)
    assert (m.requests, m.completed, m.failed) == (4, 3, 1)
    assert m.error_rate == pytest.approx(0.25)
    assert m.duration_s == pytest.approx(2.0)  # first start 0.0 to last end 2.0 (the failed one)
    assert m.request_throughput == pytest.approx(1.5)
    assert m.output_throughput == pytest.approx((4 + 3 + 1) / 2.0)
    assert m.total_input_tokens == 30
    # A fails TPOT (100 > 80), B fails TTFT (200 > 150), C passes (1 token: TPOT counts as 0)
    assert m.slo_met == 1 and m.goodput_rps == pytest.approx(0.5)
    assert m.errors == {"HTTP 500: boom": 1}
    assert compute_metrics(RECORDS).goodput_rps is None  # no SLO, no goodput


def test_itl_slo_uses_each_requests_own_gaps():
    m = compute_metrics(RECORDS, parse_slo("itl_p99=60ms"))
    assert m.slo_met == 2  # A's gaps are 100 ms; B's 50 ms and C (no gaps) pass


def test_missing_usage_falls_back_to_chunks_and_is_flagged():
    m = compute_metrics([rec(0.0, [0.1, 0.2, 0.3], 0.3, None)])
    assert m.total_output_tokens == 3 and m.usage_missing == 1
    assert m.tpot_ms.mean == pytest.approx(100)


def test_aggregate_slo_check():
    m = compute_metrics(RECORDS)
    assert slo_violations(m, parse_slo("ttft_p99=1s,e2e_p50=310ms")) == []
    # three requests cannot back a p99: the miss stands, and says what it rests on; a median can be backed
    assert slo_violations(m, parse_slo("ttft_p99=150ms")) == ["ttft_p99 198 ms > 150 ms (n=3: too few to back it)"]
    assert slo_violations(m, parse_slo("ttft_p50=50ms")) == [f"ttft_p50 {m.ttft_ms.p50:.0f} ms > 50 ms"]
    assert slo_violations(compute_metrics(RECORDS[3:]), parse_slo("ttft_p99=1s")) == [
        "ttft_p99: no completed requests"]


def test_empty_and_all_failed_runs():
    m = compute_metrics([])
    assert (m.requests, m.error_rate, m.output_throughput, m.ttft_ms) == (0, 0.0, 0.0, None)


def test_small_samples_get_no_p99_and_no_intervals():
    m = compute_metrics(RECORDS)  # 3 completed requests
    assert m.ttft_ms.n == 3 and m.ttft_ms.backed("p50") and not m.ttft_ms.backed("p90")
    assert not m.ttft_ms.backed("p99") and m.ttft_ms.backed("mean")
    assert (m.ttft_ms.p50_ci, m.ttft_ms.p99_ci, m.output_throughput_ci) == (None, None, None)


def test_intervals_from_a_hundred_requests():
    # request i starts at i s, TTFT 100 + i ms, then 4 tokens 10 ms apart (TPOT 10 ms), back to back
    records = [rec(float(i), [i + 0.1 + i / 1000 + k * 0.01 for k in range(4)], i + 0.13 + i / 1000, 4)
               for i in range(100)]
    m = compute_metrics(records)
    ttft = m.ttft_ms
    assert ttft.n == 100 and ttft.backed("p99")
    assert ttft.p50 == pytest.approx(149.5) and ttft.p50_ci.low < ttft.p50 < ttft.p50_ci.high
    assert 190 < ttft.p99_ci.low <= ttft.p99_ci.high <= 199 + 1e-9  # p99 198.01; resamples stay in the sample
    assert m.tpot_ms.p50_ci.half_width == pytest.approx(0, abs=1e-6)  # every TPOT is 10 ms
    tput = m.output_throughput_ci
    assert tput.value == pytest.approx(m.output_throughput) == pytest.approx(400 / (99 + 0.13 + 0.099))
    assert tput.low < tput.value < tput.high and tput.half_width < 0.05 * tput.value
