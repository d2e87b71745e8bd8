"""`quantserve eval` + `quantserve report` against a real running endpoint (the gateway or vLLM).

Start the stack first (`quantserve serve ...`), then:
    QUANTSERVE_EVAL_BASE_URL=http://127.0.0.1:8000 QUANTSERVE_API_KEY=sk-... pytest -m serve tests/integration
Skipped when no endpoint is given: this file never starts vLLM itself.
"""

from __future__ import annotations

import json
import os
import re

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.serve]

BASE_URL = os.environ.get("QUANTSERVE_EVAL_BASE_URL")


@pytest.mark.skipif(not BASE_URL, reason="set QUANTSERVE_EVAL_BASE_URL to a running OpenAI-compatible endpoint")
def test_eval_and_report_against_a_live_endpoint(cli, tmp_path):
    from quantserve.prompts import prompt_path

    if not prompt_path("scenarios/short-questions.jsonl").is_file():
        pytest.skip("prompts/scenarios/short-questions.jsonl not written yet")
    run_dir = tmp_path / "runs" / "live"
    args = ["eval", "--base-url", BASE_URL, "--scenario", "short-questions", "--sweep", "concurrency=1,2",
            "--requests", "4", "--warmup", "1", "--max-tokens", "16", "--gpu", "cpu-2core", "--out", str(run_dir)]
    if os.environ.get("QUANTSERVE_VARIANTS"):
        args += ["--variants", os.environ["QUANTSERVE_VARIANTS"]]
    result = cli(*args, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    doc = json.loads((run_dir / "eval.json").read_text())
    assert len(records) == len(doc["models"]) * 2 * 4
    failed = [r for r in records if r["error"]]
    assert not failed, failed[:3]
    # real servers report usage in the final chunk; the token counts must come from it
    assert all(r["completion_tokens"] and r["prompt_tokens"] for r in records)
    assert all(r["chunk_times"] and r["first_token"] <= r["end"] for r in records)

    result = cli("report", str(run_dir), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (run_dir / "report.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 5
    report = json.loads((run_dir / "report.json").read_text())
    measured = [v for v in report["variants"] if v["name"] in doc["models"]]
    assert measured and all(v["latency"]["ttft_ms"]["p50"] > 0 for v in measured)
