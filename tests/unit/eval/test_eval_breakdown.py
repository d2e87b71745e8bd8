"""The time breakdown from vLLM's histograms and the bottleneck it names."""

from __future__ import annotations

import pytest

from quantserve.eval.breakdown import breakdown, parse_histograms

EXPOSITION = """# HELP vllm:request_queue_time_seconds Histogram of time spent in WAITING phase for request.
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_bucket{{engine="0",le="0.3",model_name="m"}} 4.0
vllm:request_queue_time_seconds_sum{{engine="0",model_name="m"}} {queue}
vllm:request_queue_time_seconds_count{{engine="0",model_name="m"}} {n}
vllm:request_prefill_time_seconds_sum{{engine="0",model_name="m"}} {prefill}
vllm:request_prefill_time_seconds_count{{engine="0",model_name="m"}} {n}
vllm:request_decode_time_seconds_sum{{engine="0",model_name="m"}} {decode}
vllm:request_decode_time_seconds_count{{engine="0",model_name="m"}} {n}
vllm:request_decode_time_seconds_created{{engine="0",model_name="m"}} 1.7e9
"""


def scrape(queue: float, prefill: float, decode: float, n: int) -> dict:
    return parse_histograms(EXPOSITION.format(queue=queue, prefill=prefill, decode=decode, n=n))


def test_phase_means_are_the_points_own():
    before, after = scrape(1.0, 2.0, 10.0, 10), scrape(1.4, 2.2, 18.0, 14)
    result = breakdown(before, after, output_tok_s=30.0, weight_bytes=None, bandwidth_bytes_s=None,
                       gateway_ms=[1.0, 3.0])
    assert result is not None and result.requests == 4
    assert result.queue_s == pytest.approx(0.1) and result.prefill_s == pytest.approx(0.05)
    assert result.decode_s == pytest.approx(2.0) and result.gateway_s == pytest.approx(0.002)
    assert result.bottleneck == "compute" and result.decode_efficiency is None


@pytest.mark.parametrize(("queue", "prefill", "decode", "tok_s", "expected"), [
    (3.0, 0.5, 4.0, 30.0, "queueing"),
    (0.0, 3.0, 2.0, 30.0, "prefill"),
    (0.0, 0.2, 4.0, 40.0, "memory bandwidth"),  # 270 MB x 40 tok/s = 10.8 GB/s of 13 GB/s
    (0.0, 0.2, 4.0, 10.0, "compute"),
])
def test_bottleneck(queue, prefill, decode, tok_s, expected):
    result = breakdown(scrape(0, 0, 0, 0), scrape(queue, prefill, decode, 1), output_tok_s=tok_s,
                       weight_bytes=270_000_000, bandwidth_bytes_s=13e9)
    assert result is not None and result.bottleneck == expected and result.advice


def test_no_requests_in_the_window_gives_no_breakdown():
    assert breakdown(scrape(1, 1, 1, 5), scrape(1, 1, 1, 5), 10.0, None, None) is None
