"""The report from a synthetic run folder and manifests: schema, tables, plots, honesty, recommendation."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pytest
from eval_fixtures import AWQ, GPTQ, NF4, NF4_NOT_SERVED, NF4_REASON, SOURCE, SOURCE_BYTES, write_manifests, write_run

from quantserve.errors import UserError
from quantserve.eval.report import ReportConstraints, build_report, make_report
from quantserve.quantize.manifest import GRID_NOTE

VARIANT_KEYS = {"name", "method", "bits", "size_bytes", "size_ratio", "servable_here", "servable_reason",
                "quality", "latency", "throughput", "goodput_rps", "cost", "by_concurrency",
                "unavailable_reason"}
QUALITY_KEYS = {"ppl", "ppl_ratio", "kld_mean", "top1_agreement", "task_accuracy", "recovery"}
DIST_KEYS = {"mean", "p50", "p90", "p95", "p99"}
PLOT_COUNT = 5  # latency, throughput, frontier, memory, vram


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
            assert set(v["throughput"]) >= {"output_tok_s", "request_s"}
            assert set(v["cost"]) >= {"usd_per_1m_output_tokens", "tokens_per_usd", "price_row"}


def test_numbers_come_from_the_records_and_manifests(run: Path):
    report = make_report(run)
    gptq, source = report.variant(GPTQ), report.variant(SOURCE)
    assert report.reference_point == "concurrency=4"
    assert gptq.throughput.output_tok_s == pytest.approx(40.0)  # 4 × 10 tokens in 1 s
    assert source.throughput.output_tok_s == pytest.approx(20.0)
    assert gptq.latency.ttft_ms.p99 == pytest.approx(100) and gptq.latency.tpot_ms.p50 == pytest.approx(100)
    assert gptq.cost.usd_per_1m_output_tokens == pytest.approx(0.05 / (40 * 3600) * 1e6)  # cpu-2core $0.05/h
    assert [p.point for p in gptq.by_concurrency] == ["concurrency=1", "concurrency=4"]
    assert gptq.by_concurrency[0].throughput.output_tok_s == pytest.approx(10.0)
    assert (gptq.quality.ppl_ratio, gptq.quality.top1_agreement) == (pytest.approx(12.5 / 12), 0.9)
    assert gptq.quality.recovery == pytest.approx(0.6 / 0.8)
    # the source is a row too: baseline quality by definition, size from the manifests' source info
    q = source.quality
    assert (q.ppl, q.ppl_ratio, q.kld_mean, q.top1_agreement, q.recovery) == (12.0, 1.0, 0.0, 1.0, 1.0)
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


def test_markdown_starts_with_the_summary_table_and_carries_the_grid_note(run: Path):
    build_report(run)
    md = (run / "report.md").read_text()
    first_section = md.split("\n## ")[1]
    assert first_section.startswith("Summary")
    header = ("| variant | bits | size MB | size ratio | PPL ratio | KLD | top-1 | task acc | recovery | "
              "TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | output tok/s | $/1M tok | servable here |")
    assert header in first_section
    gptq_line = next(line for line in first_section.splitlines() if line.startswith(f"| {GPTQ} |"))
    # bits, MB, size ratio, PPL ratio, KLD, top-1, task acc, recovery, TTFT p50/p99, TPOT p50, tok/s
    assert "| 4 | 100.0 | 0.370 | 1.042 | 0.0500 | 0.900 | 0.60 | 0.75 | 100 | 100 | 100.0 | 40.0 |" \
        in gptq_line
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
    rec = make_report(run).recommendation  # run SLO ttft_p99 500 ms: both pass, gptq is cheaper
    assert rec.variant == GPTQ
    assert "at concurrency=4" in rec.reasoning and "0.50× the source" in rec.reasoning
    rec = make_report(run, constraints=ReportConstraints(min_recovery=0.9)).recommendation
    assert rec.variant == SOURCE and "task recovery 0.75 < 0.9" in rec.rejected[GPTQ]
    rec = make_report(run, constraints=ReportConstraints(slo="ttft_p99=150ms")).recommendation
    assert rec.variant == GPTQ and "misses the SLO" in rec.rejected[SOURCE]
    # 16 GB: an 8B model in bf16 needs ~18.5 GiB, so the source is out, and gptq is below the quality floor
    rec = make_report(run, constraints=ReportConstraints(max_memory_gb=16, min_recovery=0.9)).recommendation
    assert rec.variant is None and "No variant meets every constraint" in rec.reasoning
    assert "llama-3.1-8b-instruct at this precision needs ~18.5 GiB" in rec.rejected[SOURCE]


def test_report_time_slo_recomputes_goodput(run: Path):
    at_run = make_report(run)
    assert at_run.variant(SOURCE).goodput_rps == pytest.approx(2.0)  # 4 requests in 2 s, all within 500 ms
    strict = make_report(run, constraints=ReportConstraints(slo="ttft_p99=150ms"))
    assert strict.variant(SOURCE).goodput_rps == 0.0
    assert strict.variant(GPTQ).goodput_rps == pytest.approx(4.0)
    assert strict.variant(SOURCE).by_concurrency[1].slo_violations == ["ttft_p99 200 ms > 150 ms"]


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
