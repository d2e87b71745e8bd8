"""`quantserve run` end to end on the real default model, scaled down: one calibrated variant, real vLLM
engines behind the real gateway, the eval load and tasks through it, and the report files."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.serve]

REPORT_VARIANT_KEYS = {"name", "method", "bits", "size_bytes", "size_ratio", "servable_here", "quality", "latency",
                       "throughput", "goodput_rps", "cost"}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    proc = run_cli("run", "--variants", "w8a8-int8,bnb-nf4", "--variants-dir", str(root / "variants"),
                   "--runs-dir", str(root / "runs"), "--samples", "8", "--seq-len", "128", "--requests", "3",
                   "--sweep", "concurrency=1,2", "--max-tokens", "24", timeout=2400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, proc


def test_run_prints_progress_and_where_the_report_is(small_run):
    root, proc = small_run
    assert all(f"[{n}/5]" in proc.stderr for n in range(1, 6))
    assert "report:" in proc.stderr
    latest = root / "runs" / "latest"
    assert latest.is_symlink() and (latest / "report.html").is_file()


def test_report_json_has_the_promised_shape(small_run):
    root, _ = small_run
    report = json.loads((root / "runs" / "latest" / "report.json").read_text())
    assert {"hardware", "slo", "recommendation", "variants"} <= set(report)
    rows = {v["name"]: v for v in report["variants"]}
    for row in rows.values():
        assert set(row) >= REPORT_VARIANT_KEYS
    served = rows["smollm2-135m-instruct-w8a8-int8"]
    assert served["servable_here"] and served["latency"]["ttft_ms"]["p50"] > 0
    assert served["throughput"]["output_tok_s"] > 0 and served["cost"]["usd_per_1m_output_tokens"] > 0
    assert 0 <= served["quality"]["kld_mean"] < 1
    nf4 = rows["smollm2-135m-instruct-bnb-nf4"]
    assert nf4["servable_here"] is False
    assert nf4["latency"] is None and nf4["throughput"] is None and nf4["cost"] is None  # nothing invented
    assert nf4["quality"]["ppl_ratio"] is not None


def test_report_html_and_md_are_readable(small_run):
    root, _ = small_run
    latest = root / "runs" / "latest"
    html = (latest / "report.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) >= 4
    md = (latest / "report.md").read_text()
    assert "smollm2-135m-instruct-w8a8-int8" in md and "4-bit grid" in md
