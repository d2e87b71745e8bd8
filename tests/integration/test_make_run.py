"""`quantserve run` end to end on the real default model, scaled down: a calibrated variant and a bitsandbytes
one, real vLLM engines behind the real gateway, the eval load and tasks through it, and the report files.
What is served, and in which dtype, is expected as this machine's probe measured it."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.cli import run_cli

REPORT_VARIANT_KEYS = {"name", "method", "bits", "size_bytes", "size_ratio", "servable_here", "quality", "latency",
                       "throughput", "goodput_rps", "cost", "dtype", "dtype_from"}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, machine_probe):
    root = tmp_path_factory.mktemp("run")
    proc = run_cli("run", "--variants", "w8a8-int8,bnb-nf4", "--variants-dir", str(root / "variants"),
                   "--runs-dir", str(root / "runs"), "--samples", "8", "--seq-len", "128", "--requests", "3",
                   "--sweep", "concurrency=1,2", "--max-tokens", "24", timeout=2400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, proc


def test_run_prints_progress_and_where_the_report_is(small_run):
    root, proc = small_run
    assert all(f"[{n}/6]" in proc.stderr for n in range(1, 7))
    assert "report:" in proc.stderr
    latest = root / "runs" / "latest"
    assert latest.is_symlink() and (latest / "report.html").is_file()


def test_the_terminal_shows_the_stages_and_the_answer_and_the_log_holds_the_libraries(small_run):
    root, proc = small_run
    latest = (root / "runs" / "latest").resolve()
    log = latest / "run.log"
    assert f"log:    {log}" in proc.stderr
    # what llm-compressor, transformers, torch, tqdm and vLLM print went to the log, not the terminal
    for noise in ("Warning", "warn(", "it/s]", "%|", "INFO", "Dispatching", "No accelerator", "Traceback"):
        assert noise not in proc.stderr, noise
    assert log.stat().st_size > 0
    # the answer: the recommendation and a row per model with its p99s at concurrency 1 and the 100 ms verdict
    assert "Recommended:" in proc.stderr or "No variant is recommended" in proc.stderr
    assert "TTFT p99 c=1" in proc.stderr and "< 100 ms" in proc.stderr
    for name in ("source", "w8a8-int8", "bnb-nf4"):
        assert re.search(rf"^[│|] {name} ", proc.stderr, re.MULTILINE), name


def test_report_serves_what_the_probe_runs_in_its_dtype(small_run, machine_probe):
    root, _ = small_run
    report = json.loads((root / "runs" / "latest" / "report.json").read_text())
    assert {"hardware", "slo", "recommendation", "variants"} <= set(report)
    rows = {v["name"]: v for v in report["variants"]}
    assert set(rows) == {"smollm2-135m-instruct", "smollm2-135m-instruct-w8a8-int8", "smollm2-135m-instruct-bnb-nf4"}
    for row in rows.values():
        assert set(row) >= REPORT_VARIANT_KEYS
    verdicts = machine_probe["verdicts"]
    for name, fmt in (("smollm2-135m-instruct", "full"), ("smollm2-135m-instruct-w8a8-int8", "w8a8-int8"),
                      ("smollm2-135m-instruct-bnb-nf4", "bnb-nf4")):
        row = rows[name]
        if verdicts[fmt]["runs"]:
            assert row["servable_here"] and (row["dtype"], row["dtype_from"]) == (verdicts[fmt]["dtype"], "probe")
            assert row["latency"]["ttft_ms"]["p50"] > 0 and row["throughput"]["output_tok_s"] > 0
            assert row["cost"]["usd_per_1m_output_tokens"] > 0
        else:  # left out with the probe's reason; nothing invented
            assert row["servable_here"] is False and row["servable_reason"] == verdicts[fmt]["reason"]
            assert row["latency"] is None and row["throughput"] is None and row["cost"] is None
    assert 0 <= rows["smollm2-135m-instruct-w8a8-int8"]["quality"]["kld_mean"] < 1
    assert rows["smollm2-135m-instruct-bnb-nf4"]["quality"]["ppl_ratio"] is not None
    # the source measured again at the heaviest load point: its speed drift, which decides what is a tie
    noise = report["noise"]
    assert noise["model"] == "smollm2-135m-instruct" and noise["rows"]
    assert {r["point"] for r in noise["rows"]} == {"concurrency=2"} and noise["tasks"] is None
    rec = report["recommendation"]
    assert rec["summary"] and (rec["variant"] is None or (rec["why"] and rec["variant"] in rows))


def test_report_html_and_md_are_readable(small_run):
    root, _ = small_run
    latest = root / "runs" / "latest"
    html = (latest / "report.html").read_text()
    # the answer card comes first, above the detail
    assert html.index('id="answer"') < html.index('id="summary"')
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) >= 4
    md = (latest / "report.md").read_text()
    assert "smollm2-135m-instruct-w8a8-int8" in md and "4-bit grid" in md
