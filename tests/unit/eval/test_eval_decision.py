"""The decision rule on recorded data: two `make run`s of one machine (2026-12-01, README) ranked the source and
w8a8-int8 the other way round on point values; the rule must make the same pick from both."""

from __future__ import annotations

from quantserve.eval.recommend import pick
from quantserve.eval.report_schema import CI, Cost, PointRow, QualityRow, Throughput, VariantRow

USD_PER_HOUR = 0.0336  # cpu-2core's row; any constant ranks the same


def _row(name: str, size_mb: float, tok_s: float, recovery: float, ci: float | None = None,
         source: bool = False) -> tuple[VariantRow, PointRow]:
    per_1m = USD_PER_HOUR / (tok_s * 3600) * 1e6
    point = PointRow(point="concurrency=4", mode="concurrency", value=4, requests=100, completed=100, failed=0,
                     error_rate=0.0, latency=None,
                     throughput=Throughput(output_tok_s=tok_s, request_s=tok_s / 16, output_tok_s_ci=None if ci is None
                                           else CI(value=tok_s, low=tok_s - ci, high=tok_s + ci, half_width=ci)),
                     goodput_rps=None, cost=Cost(usd_per_1m_output_tokens=per_1m, tokens_per_usd=1e6 / per_1m,
                                                 price_row="cpu-2core", usd_per_hour=USD_PER_HOUR),
                     slo_violations=[], errors={})
    row = VariantRow(name=name, is_source=source, size_bytes=int(size_mb * 1e6),
                     quality=QualityRow(recovery=recovery))
    return row, point


def _names(tied: list[tuple[VariantRow, PointRow]]) -> list[str]:
    return [r.name for r, _ in tied]


def test_the_two_recorded_runs_that_flipped_on_point_values_make_the_same_pick():
    # the fresh run: source 89.5 tok/s against w8a8's 82.7 at concurrency 4, the source's repeat moved 28.2%
    (first, _), tied_first = pick([_row("source", 268.9, 89.5, 1.0, source=True),
                                   _row("w8a8-int8", 163.2, 82.7, 1.01)], speed_noise=0.282)
    # the probed run: 79.0 against 109.4, moved 28.7%
    (second, _), tied_second = pick([_row("source", 268.9, 79.0, 1.0, source=True),
                                     _row("w8a8-int8", 163.2, 109.4, 1.01)], speed_noise=0.287)
    assert first.name == second.name == "w8a8-int8"
    assert _names(tied_first) == ["source", "w8a8-int8"]  # cheapest first: a tie the run could not order
    assert _names(tied_second) == ["w8a8-int8"]  # 109.4 / 79.0 = 1.38: past the noise, a ranking on cost


def test_a_gap_past_the_noise_is_a_ranking_even_for_the_larger_weights():
    (winner, _), tied = pick([_row("source", 268.9, 140.0, 1.0, source=True),
                              _row("w8a8-int8", 163.2, 82.7, 1.01)], speed_noise=0.20)
    assert winner.name == "source" and _names(tied) == ["source"]


def test_without_a_repeat_the_throughputs_own_intervals_decide_a_tie():
    rows = [_row("source", 268.9, 100.0, 1.0, ci=8.0, source=True), _row("w8a8-int8", 163.2, 90.0, 1.0, ci=8.0)]
    (winner, _), tied = pick(rows, speed_noise=None)  # 100/90 = 1.11 < 1 + 0.08 + 0.089
    assert winner.name == "w8a8-int8" and len(tied) == 2
    rows = [_row("source", 268.9, 100.0, 1.0, ci=1.0, source=True), _row("w8a8-int8", 163.2, 90.0, 1.0, ci=1.0)]
    (winner, _), tied = pick(rows, speed_noise=None)
    assert winner.name == "source" and len(tied) == 1


def test_a_tie_of_equal_weights_goes_to_the_better_recovery():
    (winner, _), _ = pick([_row("a", 163.2, 100.0, 0.97), _row("b", 163.2, 98.0, 1.02)], speed_noise=0.1)
    assert winner.name == "b"
