"""The report from a synthetic run folder and manifests: schema, tables, plots, honesty, recommendation."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pytest

from quantserve.errors import UserError
from quantserve.eval.report import ReportConstraints, build_report, make_report
from quantserve.manifest import GRID_NOTE
from tests.support.eval_fixtures import (
    AWQ,
    GPTQ,
    NF4,
    NF4_NOT_SERVED,
    NF4_REASON,
    SOURCE,
    SOURCE_BYTES,
    write_big_run,
    write_manifests,
    write_run,
)

VARIANT_KEYS = {"name", "method", "bits", "size_bytes", "size_ratio", "servable_here", "servable_reason",
                "quality", "latency", "throughput", "goodput_rps", "cost", "by_concurrency",
                "unavailable_reason"}
QUALITY_KEYS = {"ppl", "ppl_ratio", "kld_mean", "top1_agreement", "task_accuracy", "task_accuracy_ci", "task_items",
                "paired_p_value", "only_source_right", "only_variant_right", "recovery", "recovery_ci"}
DIST_KEYS = {"mean", "p50", "p90", "p95", "p99", "n", "p50_ci", "p99_ci"}
PLOT_COUNT = 6  # latency, throughput, frontier, size frontier, memory, vram


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_run(tmp_path / "runs" / "r1", write_manifests(tmp_path / "variants"))


def test_report_json_follows_the_schema(run: Path):
    build_report(run)
    doc = json.loads((run / "report.json").read_text())
    assert {"hardware", "slo", "recommendation", "notes", "variants", "vram_plan"} <= set(doc)
    assert {"variant", "reasoning"} <= set(doc["recommendation"])
    assert doc["hardware"]["name"] == "cpu-2core" and doc["slo"] == {"ttft_p99_ms": 500.0}
    names = [v["name"] for v in doc["variants"]]
    assert names == [SOURCE, AWQ, NF4, GPTQ]  # source first, then the manifests by name
    for v in doc["variants"]:
        assert set(v) >= VARIANT_KEYS
        assert set(v["quality"]) >= QUALITY_KEYS
        if v["latency"] is not None:
            for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
                assert set(v["latency"][metric]) == DIST_KEYS
            assert set(v["throughput"]) >= {"output_tok_s", "request_s", "output_tok_s_ci"}
            assert set(v["cost"]) >= {"usd_per_1m_output_tokens", "tokens_per_usd", "price_row"}
    floor = doc["recommendation"]["quality_floor"]
    assert set(floor) == set(names) and set(floor[GPTQ]) == {"passed", "basis", "reason"}
    assert doc["recommendation"]["constraints"]["min_recovery"] == 0.95  # the default floor


def test_numbers_come_from_the_records_and_manifests(run: Path):
    report = make_report(run)
    gptq, source = report.variant(GPTQ), report.variant(SOURCE)
    assert report.reference_point == "concurrency=4"
    assert gptq.throughput.output_tok_s == pytest.approx(40.0)  # 4 × 10 tokens in 1 s
    assert source.throughput.output_tok_s == pytest.approx(20.0)
    assert gptq.latency.ttft_ms.p50 == pytest.approx(100) and gptq.latency.tpot_ms.p50 == pytest.approx(100)
    # 4 requests back a p50 but not a p90 or p99, and are too few for an interval
    ttft = gptq.latency.ttft_ms
    assert (ttft.n, ttft.p90, ttft.p99, ttft.p50_ci, gptq.throughput.output_tok_s_ci) == (4, None, None, None, None)
    assert gptq.cost.usd_per_1m_output_tokens == pytest.approx(0.05 / (40 * 3600) * 1e6)  # cpu-2core $0.05/h
    assert [p.point for p in gptq.by_concurrency] == ["concurrency=1", "concurrency=4"]
    assert gptq.by_concurrency[0].throughput.output_tok_s == pytest.approx(10.0)
    assert (gptq.quality.ppl_ratio, gptq.quality.top1_agreement) == (pytest.approx(12.5 / 12), 0.9)
    assert gptq.quality.recovery == pytest.approx(0.6 / 0.8)
    # 8 items only the source got right, none the other way: exact McNemar p = 2 × 0.5^8
    assert (gptq.quality.only_source_right, gptq.quality.only_variant_right) == (8, 0)
    assert gptq.quality.paired_p_value == pytest.approx(2 / 256)
    acc, rec = gptq.quality.task_accuracy_ci, gptq.quality.recovery_ci
    assert acc.low < 0.6 < acc.high and 0.1 < acc.half_width < 0.2  # Wilson, 24 of 40
    assert rec.low < 0.75 < rec.high <= 1.0 and rec.high < 0.95
    # the source is a row too: baseline quality by definition, size from the manifests' source info
    q = source.quality
    assert (q.ppl, q.ppl_ratio, q.kld_mean, q.top1_agreement, q.recovery) == (12.0, 1.0, 0.0, 1.0, 1.0)
    assert (q.recovery_ci.low, q.recovery_ci.high) == (1.0, 1.0)
    assert source.is_source and source.size_bytes == SOURCE_BYTES and source.size_ratio == 1.0


def test_unmeasured_variants_have_null_speed_with_the_reason(run: Path):
    report = make_report(run)
    nf4 = report.variant(NF4)
    # what serving on this machine said, not the manifest's verdict from where it was quantized
    assert not nf4.servable_here and nf4.servable_reason == NF4_NOT_SERVED != NF4_REASON
    assert (nf4.latency, nf4.throughput, nf4.cost, nf4.goodput_rps) == (None, None, None, None)
    assert nf4.unavailable_reason == NF4_NOT_SERVED
    assert nf4.quality.ppl == 12.6  # quality from the manifest still shows
    awq = report.variant(AWQ)  # served, but every request failed: nothing invented
    assert awq.latency is None and awq.cost is None
    assert awq.unavailable_reason == "all 4 requests failed at concurrency=4: HTTP 500: boom"
    assert awq.by_concurrency[1].error_rate == 1.0


def test_markdown_starts_with_the_answer_then_the_summary_table_and_carries_the_grid_note(run: Path):
    build_report(run)
    md = (run / "report.md").read_text()
    card, first_section = md.split("\n## ")[1:3]
    rec = make_report(run).recommendation
    assert card.startswith(f"Recommended: {rec.variant}\n")
    assert f"- **Why:** {rec.why}" in card and f"- **Cost:** {rec.cost}" in card and "- **Under 100 ms?:**" in card
    assert "already sits on a 4-bit grid" in card
    assert first_section.startswith("Summary")
    header = ("| variant | runtime / format | bits | size MB | size ratio | PPL ratio | KLD | top-1 | task acc | "
              "recovery | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | output tok/s | $/1M tok | servable here |")
    assert header in first_section
    gptq_line = next(line for line in first_section.splitlines() if line.startswith(f"| {GPTQ} |"))
    q = make_report(run).variant(GPTQ).quality
    acc, rec = f"0.60 ± {q.task_accuracy_ci.half_width:.2f}", f"0.75 ± {q.recovery_ci.half_width:.2f}"
    # bits, MB, size ratio, PPL ratio, KLD, top-1, task acc, recovery, TTFT p50/p99, TPOT p50, tok/s: 4 requests
    # back a p50 but not a p99, and are too few for a ± interval
    assert (f"| 4 | 100.0 | 0.370 | 1.042 | 0.0500 | 0.900 | {acc} | {rec} | 100 | n too small | 100.0 | 40.0 |"
            in gptq_line)
    assert gptq_line.endswith("| yes (bfloat16) |")  # the dtype its engine ran in
    nf4_line = next(line for line in first_section.splitlines() if line.startswith(f"| {NF4} |"))
    assert nf4_line.endswith(f"| – | – | – | – | – | no: {NF4_NOT_SERVED} |")
    assert "gptq" in md and "ran in the dtype `quantserve probe` measured fastest" in md
    assert "bfloat16 (set in the serve config)" in md  # awq's dtype was the user's choice
    # wherever quality numbers are shown, the source-grid caveat is beside them
    for section in ("Summary", "Recommendation", "Quality"):
        body = next(s for s in md.split("\n## ") if s.startswith(section))
        assert GRID_NOTE in body, section


def test_html_is_self_contained_with_every_plot(run: Path):
    path = build_report(run)
    assert path == run / "report.html"
    page = path.read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == PLOT_COUNT
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert not re.search(r"<(script|link)\b|src=\"http", page)
    assert page.count(html.escape(GRID_NOTE)) == 3  # summary, recommendation, quality
    assert "VRAM plan for llama-3.1-8b-instruct" in page


def test_recommendation_follows_constraints(run: Path):
    off = ReportConstraints(min_recovery=0)  # no quality floor: both pass the run's SLO, gptq is cheaper
    rec = make_report(run, constraints=off).recommendation
    assert rec.variant == GPTQ and rec.quality_floor[GPTQ].passed is None
    assert "at concurrency=4" in rec.reasoning and "0.50× the source" in rec.reasoning
    rec = make_report(run, constraints=ReportConstraints(min_recovery=0, slo="ttft_p99=150ms")).recommendation
    assert rec.variant == GPTQ and "misses the SLO" in rec.rejected[SOURCE]
    # 16 GB: an 8B model in bf16 needs ~18.5 GiB, so the source is out, and gptq is below the quality floor
    rec = make_report(run, constraints=ReportConstraints(max_memory_gb=16)).recommendation
    assert rec.variant is None and "No variant meets every constraint" in rec.reasoning
    assert "llama-3.1-8b-instruct at this precision needs ~18.5 GiB" in rec.rejected[SOURCE]
    assert "below the quality floor" in rec.rejected[GPTQ]


def test_default_quality_floor_rejects_a_variant_whose_recovery_interval_reaches_below_095(run: Path):
    report = make_report(run)  # gptq: recovery 0.75 over 40 paired items, its whole interval below 0.95
    rec = report.recommendation
    low = report.variant(GPTQ).quality.recovery_ci.low
    assert rec.variant == SOURCE
    assert rec.quality_floor[GPTQ].passed is False and rec.quality_floor[GPTQ].basis == "recovery"
    assert rec.rejected[GPTQ].startswith(f"below the quality floor: task recovery 0.75 (95% CI {low:.2f}–")
    assert f"lower bound {low:.2f} < 0.95" in rec.rejected[GPTQ]
    # the paragraph names it as rejected on quality, says why, and says it once
    assert f"{GPTQ}: below the quality floor: task recovery 0.75 (95% CI {low:.2f}" in rec.reasoning
    assert rec.reasoning.count(f"{GPTQ} (task recovery") + rec.reasoning.count(f"{GPTQ}: below") == 1
    # NF4 was not served here (its rejection) and has no task scores: its KLD (0.06 > 0.05) fails the floor too
    assert rec.quality_floor[NF4].basis == "kld" and rec.quality_floor[NF4].passed is False
    also = rec.reasoning.split("Also below the quality floor: ")[1]
    assert also.startswith(f"{NF4} (tasks not run; mean KLD 0.0600 > 0.05)")
    assert rec.quality_floor[SOURCE].passed is True
    # a looser floor the interval clears lets gptq through
    loose = make_report(run, constraints=ReportConstraints(min_recovery=low - 0.01)).recommendation
    assert loose.variant == GPTQ and loose.quality_floor[GPTQ].passed is True
    build_report(run)
    md = (run / "report.md").read_text()
    quality = next(s for s in md.split("\n## ") if s.startswith("Quality"))
    gptq_line = next(line for line in quality.splitlines() if line.startswith(f"| {GPTQ} |"))
    assert "| 8 / 0, p = 0.0078 (McNemar, 40 items) |" in gptq_line
    assert f"fail: task recovery 0.75 (95% CI {low:.2f}" in gptq_line


def test_small_samples_are_shown_as_such(run: Path):
    build_report(run)
    md = (run / "report.md").read_text()
    by_point = next(s for s in md.split("\n## ") if s.startswith("Latency and throughput by load point"))
    gptq_rows = by_point.split(f"**{GPTQ}**")[1].split("**")[0]
    c4 = next(line for line in gptq_rows.splitlines() if line.startswith("| concurrency=4 |"))
    # n = 4: p50 shown without ± (too few to resample), p99 not shown at all
    assert c4.startswith("| concurrency=4 | 4 / 4 | 0% | 100 / n too small | 100.0 / n too small |")
    assert "±" not in c4
    assert any("completed fewer than 100 requests (fewest: 1 at concurrency=1" in n for n in make_report(run).notes)


def test_a_full_sample_shows_p99_and_intervals(tmp_path: Path):
    run = write_big_run(tmp_path / "big", n=120)
    report = make_report(run)
    source = report.variant(SOURCE)
    ttft, tput = source.latency.ttft_ms, source.throughput
    # TTFT 100, 101, ..., 219 ms: p50 159.5, p99 100 + 0.99 × 119
    assert ttft.n == 120 and ttft.p50 == pytest.approx(159.5) and ttft.p99 == pytest.approx(217.81)
    assert ttft.p50_ci.low < 159.5 < ttft.p50_ci.high and 5 < ttft.p50_ci.half_width < 25
    assert 205 < ttft.p99_ci.low <= ttft.p99_ci.high <= 219
    assert tput.output_tok_s == pytest.approx(1200 / (119 + 0.219 + 0.45))
    assert tput.output_tok_s_ci.low < tput.output_tok_s < tput.output_tok_s_ci.high
    assert tput.output_tok_s_ci.half_width < 0.02 * tput.output_tok_s  # every answer is 10 tokens
    build_report(run)
    md = (run / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| concurrency=1 | 120 / 120 |"))
    assert f"| {ttft.p50:.0f} ± {ttft.p50_ci.half_width:.0f} / {ttft.p99:.0f} ± {ttft.p99_ci.half_width:.0f} |" in row
    assert "n too small" not in row
    assert not any("fewer than 100 requests" in n for n in report.notes)


def test_report_time_slo_recomputes_goodput(run: Path):
    at_run = make_report(run)
    assert at_run.variant(SOURCE).goodput_rps == pytest.approx(2.0)  # 4 requests in 2 s, all within 500 ms
    strict = make_report(run, constraints=ReportConstraints(slo="ttft_p99=150ms"))
    assert strict.variant(SOURCE).goodput_rps == 0.0
    assert strict.variant(GPTQ).goodput_rps == pytest.approx(4.0)
    assert strict.variant(SOURCE).by_concurrency[1].slo_violations == [
        "ttft_p99 200 ms > 150 ms (n=4: too few to back it)"]


def test_report_without_manifests_or_gpu(tmp_path: Path):
    run = write_run(tmp_path / "r", variants_dir=None, gpu=None)
    report = make_report(run)
    assert [v.name for v in report.variants] == [SOURCE, GPTQ, AWQ]
    assert report.variant(GPTQ).cost is None and report.variant(GPTQ).size_bytes is None
    assert any("No --gpu price row" in n for n in report.notes)
    assert any("No manifests found" in n for n in report.notes)
    assert report.quality_note is None
    build_report(run)  # still renders every plot, with "no data" figures where needed
    assert (run / "report.html").read_text().count("data:image/png;base64,") == PLOT_COUNT


def test_bad_report_inputs(tmp_path: Path, run: Path):
    with pytest.raises(UserError, match="not an eval run folder"):
        build_report(tmp_path)
    with pytest.raises(UserError, match="unknown GPU/hardware 'gtx-480'"):
        make_report(run, constraints=ReportConstraints(gpu="gtx-480"))
    with pytest.raises(UserError, match=r"unknown plan model 'llama-70b'; known: llama-3\.1-8b-instruct"):
        make_report(run, constraints=ReportConstraints(plan_model="llama-70b"))
    with pytest.raises(UserError, match="malformed SLO"):
        make_report(run, constraints=ReportConstraints(slo="ttft"))


def test_report_says_where_the_time_goes_and_whether_the_100ms_target_holds(tmp_path):
    run = write_big_run(tmp_path / "run")
    doc = json.loads((run / "eval.json").read_text())
    # vLLM's histograms over the point: 120 requests, 5 ms queued, 20 ms prefill, 450 ms decode each
    doc["results"][SOURCE]["points"][0]["engine_phases"] = {
        "queue": [0.6, 120], "prefill": [2.4, 120], "decode": [54.0, 120], "gateway_ms_mean": 0.8}
    doc["memory_bandwidth"] = {"bytes_per_s": 13e9}
    doc["isolation"] = "one model at a time, the other engines stopped"
    (run / "eval.json").write_text(json.dumps(doc))
    report = make_report(run)
    row = report.variant(SOURCE)
    time = row.by_concurrency[0].time
    assert time is not None and time.requests == 120
    assert (round(time.queue_ms), round(time.prefill_ms), round(time.decode_ms)) == (5, 20, 450)
    assert time.gateway_ms == pytest.approx(0.8) and time.bottleneck == "compute" and time.advice
    # TTFT p99 of 100 + i ms over 120 requests is past 100 ms: the target is missed at the lightest load
    assert row.target_100ms.startswith("missed at the lightest load measured (concurrency=1: TTFT p99 2")
    md = build_report(run).with_name("report.md").read_text()
    assert "## Where the time goes" in md and "Each model was measured alone" in md and "13.0 GB/s" in md
    assert "## The 100 ms target" in md


def test_a_mixed_variant_is_in_the_frontier_and_the_notes_say_which_layers_stay_at_8_bits(run: Path):
    from quantserve.manifest import MixedPrecision, PromotedLayers
    from tests.support.eval_fixtures import manifest

    mixed = manifest("smol-mixed-w4a16-w8a8", "mixed-w4a16-w8a8", "mixed", "W4A16_ASYM+W8A8", 4, 121_000_000,
                     12.45, 0.03, 0.92, servable=False, reason="built elsewhere")
    down = PromotedLayers(layers=["model.layers.11.mlp.down_proj"], kld=0.049, extra_bytes=408_944)
    qkv = PromotedLayers(layers=[f"model.layers.12.self_attn.{p}_proj" for p in "qkv"], kld=0.012,
                         extra_bytes=500_000)
    mixed.mixed_precision = MixedPrecision(
        promoted_to="W8A8", probe="RTN int4 asym group 64, one Linear at a time", sensitivity_tokens=1024,
        sensitivity_seconds=100.0, budget_ratio=0.45, int4_ratio=0.4238, predicted_ratio=0.4495,
        promoted=[down, qkv], most_sensitive=[down])
    variants = run.parents[1] / "variants"
    (variants / mixed.name).mkdir()
    mixed.write(variants / mixed.name)
    report = make_report(run)
    row = report.variant(mixed.name)
    assert row.quality.kld_mean == 0.03 and row.size_ratio == pytest.approx(121 / 270)
    note = next(n for n in report.notes if n.startswith(mixed.name))
    assert "keeps 4 Linear layers at W8A8" in note and "layers.11.mlp.down_proj (0.049)" in note


def _point(value: int, n: int, ttft: tuple[float, float | None], tpot: tuple[float, float | None]):
    from quantserve.eval.report_schema import Dist, Latency, PointRow

    def dist(p50: float, p99: float | None) -> Dist:
        return Dist(mean=p50, p50=p50, p90=None, p95=None, p99=p99, n=n)

    return PointRow(point=f"concurrency={value}", mode="concurrency", value=value, requests=n, completed=n,
                    failed=0, error_rate=0.0, latency=Latency(ttft_ms=dist(*ttft), tpot_ms=dist(*tpot), itl_ms=None,
                                                              e2e_ms=None), throughput=None, goodput_rps=None,
                    cost=None, slo_violations=[], errors={})


def test_the_100ms_target_is_judged_from_the_median_when_a_small_sample_cannot_back_p99():
    from quantserve.eval.report_rows import target_sentence

    # n = 10: no p99; a TTFT median of 226 ms is over 100 ms, so p99 (>= p50) is too
    assert target_sentence([_point(1, 10, (226, None), (31, None))]) == (
        "missed at the lightest load measured, concurrency=1: TTFT p50 226 ms, so p99 is over 100 ms too "
        "(n = 10 cannot back p99 itself)")
    # medians under 100 ms say nothing about p99
    assert "cannot be judged" in target_sentence([_point(1, 10, (60, None), (31, None))])
    # backed and met at c=1, then the median misses at c=4
    assert target_sentence([_point(1, 150, (60, 90), (31, 40)), _point(4, 10, (80, None), (120, None))]) == (
        "under 100 ms up to concurrency=1; missed at concurrency=4: TPOT p50 120 ms, so p99 is over 100 ms too "
        "(n = 10 cannot back p99 itself)")


def _with_speed_noise(run: Path, drift: float) -> Path:
    doc = json.loads((run / "eval.json").read_text())
    doc["noise"] = {"model": SOURCE, "rows": [
        {"point": "concurrency=4", "figure": "output tok/s", "first": 20.0, "repeat": 20.0 * (1 + drift),
         "drift": drift},
        {"point": "concurrency=4", "figure": "TTFT p50", "first": 100.0, "repeat": 300.0, "drift": 2.0}],
        "tasks": None}
    (run / "eval.json").write_text(json.dumps(doc))
    return run


def test_a_runner_up_within_the_machines_speed_noise_is_a_tie_resolved_by_the_smaller_weights(run: Path):
    off = ReportConstraints(min_recovery=0)  # both qualify; gptq (40 tok/s) is half the source's (20) cost
    rec = make_report(run, constraints=off).recommendation
    assert rec.variant == GPTQ and rec.tied_with == [] and "tied on cost" not in rec.reasoning
    # the source's own tok/s moved 10% between its runs: a 2× cost gap is a ranking
    rec = make_report(_with_speed_noise(run, -0.10), constraints=off).recommendation
    assert rec.variant == GPTQ and rec.tied_with == []
    assert rec.summary[0].endswith("by more than this machine's speed noise (10%).")
    # it moved 120% (TTFT's larger move does not count: cost follows tok/s): the gap is inside the noise
    rec = make_report(_with_speed_noise(run, 1.20), constraints=off).recommendation
    assert rec.variant == GPTQ and rec.tied_with == [SOURCE]
    assert rec.summary[0] == (f"{GPTQ} (on vllm) is recommended: tied on cost with {SOURCE} 2.00× per token, "
                              "inside this machine's speed noise (120%: the source's output tok/s moved that much "
                              "between its two runs), and the smallest weights of them.")
