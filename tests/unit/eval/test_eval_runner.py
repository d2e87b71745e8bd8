"""`quantserve eval` end to end against the loopback server, and every bad input it must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantserve.errors import UserError
from quantserve.eval.report import build_report
from quantserve.eval.runner import EvalConfig, guess_source, run_eval_async
from tests.support.eval_fake_openai import API_KEY, CHUNKS
from tests.support.helpers import free_port

SCENARIO = [{"id": f"s{i}", "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 8} for i in range(3)]
TASKS = [
    {"id": "t1", "kind": "geo", "messages": [{"role": "user", "content": "Capital of France?"}], "answer": "Paris",
     "match": "contains"},
    {"id": "t2", "kind": "math", "messages": [{"role": "user", "content": "2+2?"}], "answer": "4", "match": "number"},
]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    scenario = tmp_path / "chat.jsonl"
    scenario.write_text("\n".join(json.dumps(x) for x in SCENARIO) + "\n")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps(x) for x in TASKS) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    return {"scenario": scenario, "tasks": tasks, "empty": empty, "out": tmp_path / "runs" / "r1"}


def config(url: str, files: dict[str, Path], **overrides: object) -> EvalConfig:
    base = {"base_url": url, "api_key": API_KEY, "scenario": str(files["scenario"]),
            "models": ["good", "good-gptq-w4a16"], "sweep": "concurrency=1,2", "num_requests": 3, "warmup": 1,
            "duration_s": 30, "gpu": "cpu-2core", "out": files["out"], "variants_dir": None,
            "source_model": "good", "tasks_file": files["tasks"]}
    return EvalConfig(**{**base, **overrides})


async def test_eval_writes_records_and_eval_json_then_a_report(fake_server, files, capsys):
    url, app = fake_server
    before = app.state.counts["good"]
    run_dir = await run_eval_async(config(url, files))
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 * 3  # models × points × requests; warm-ups are not recorded
    assert app.state.counts["good"] - before == 2 * (3 + 1) + len(TASKS)  # the server saw warm-ups too
    assert {(r["model"], r["point"]) for r in records} == {
        (m, p) for m in ("good", "good-gptq-w4a16") for p in ("concurrency=1", "concurrency=2")}
    assert all(r["error"] is None and r["completion_tokens"] == CHUNKS for r in records)
    doc = json.loads((run_dir / "eval.json").read_text())
    assert "api_key" not in doc["config"] and API_KEY not in (run_dir / "eval.json").read_text()
    assert doc["source_model"] == "good" and doc["gpu"] == "cpu-2core"
    point = doc["results"]["good"]["points"][1]
    assert point["point"] == "concurrency=2" and point["metrics"]["completed"] == 3
    tasks = doc["results"]["good"]["tasks"]
    assert tasks["accuracy"] == 0.5 and tasks["by_kind"] == {"geo": 1.0, "math": 0.0}  # the server says "Paris"
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()
    out = capsys.readouterr().out
    assert "good concurrency=2: 3/3 ok" in out  # a progress line per sweep point
    build_report(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    rows = {v["name"]: v for v in report["variants"]}
    assert rows["good-gptq-w4a16"]["quality"]["recovery"] == 1.0
    assert rows["good"]["cost"]["price_row"] == "cpu-2core"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"slo": "ttft_p99=abc"}, "ttft_p99='abc' is not a duration"),
    ({"gpu": "rtx-5090"}, "unknown GPU/hardware 'rtx-5090'; known: rtx-3090"),
    ({"scenario": "no-such-scenario"}, "scenario file not found: .*no-such-scenario.jsonl"),
    ({"scenario": "EMPTY"}, "scenario file is empty"),
    ({"models": ["good", "llama-9000"]}, r"model\(s\) llama-9000 not served"),
    ({"sweep": "users=4"}, "malformed --sweep"),
    ({"api_key": "sk-nope"}, "rejected the API key"),
    ({"source_model": "nope", "models": ["good"]}, "--source-model nope is not among the measured models"),
])
async def test_bad_input_is_one_clear_user_error(fake_server, files, overrides, message):
    url, _ = fake_server
    if overrides.get("scenario") == "EMPTY":
        overrides = {**overrides, "scenario": str(files["empty"])}
    with pytest.raises(UserError, match=message):
        await run_eval_async(config(url, files, **overrides))
    assert not (files["out"] / "eval.json").exists()


async def test_unreachable_endpoint(files):
    with pytest.raises(UserError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1/models: .*is the server running"):
        await run_eval_async(config(f"http://127.0.0.1:{free_port()}", files))


def test_cli_prints_one_line_and_exits_2(cli, files):
    result = cli("eval", "--base-url", f"http://127.0.0.1:{free_port()}", "--scenario", str(files["scenario"]),
                 "--out", str(files["out"]), timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot reach") and result.stderr.count("\n") == 1
    result = cli("report", str(files["out"].parent / "missing"), timeout=120)
    assert result.returncode == 2 and "not an eval run folder" in result.stderr


def test_source_guess_follows_serve_naming():
    variants = {"smollm2-135m-instruct-gptq-w4a16", "smollm2-135m-instruct-bnb-nf4"}
    sources = {"HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"}
    models = ["SmolLM2-135M-Instruct", *sorted(variants)]
    assert guess_source(models, variants, sources) == "SmolLM2-135M-Instruct"
    assert guess_source(["smollm2-135m-instruct", *sorted(variants)], variants, set()) == "smollm2-135m-instruct"
    assert guess_source(sorted(variants), variants, sources) is None
