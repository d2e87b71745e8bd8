"""Per-model runs merged into one run folder, and the source's two runs turned into a noise figure."""

from __future__ import annotations

import json
from pathlib import Path

from quantserve.eval.isolation import drift, merge_runs
from quantserve.eval.render import task_noise_sentence
from quantserve.eval.tasks import TaskResult, summarize


def _part(root: Path, name: str, model: str, tok_s: float, ttft_p50: float) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    metrics = {"output_throughput": tok_s, "ttft_ms": {"p50": ttft_p50, "p99": ttft_p50 * 2}, "tpot_ms": None}
    doc = {"schema_version": 1, "models": [model], "serving": {model: {"dtype": "bfloat16"}},
           "results": {model: {"points": [{"point": "concurrency=1", "metrics": metrics}], "tasks": None}},
           "notes": [], "wall_time_s": 10.0, "isolation": "all models up together: they share the machine"}
    (folder / "eval.json").write_text(json.dumps(doc))
    (folder / "records.jsonl").write_text(json.dumps({"model": model}) + "\n")
    return folder


def test_merged_run_holds_every_model_and_says_each_ran_alone(tmp_path):
    parts = [_part(tmp_path, "01", "src", 30.0, 80.0), _part(tmp_path, "02", "src-w8a8", 40.0, 70.0)]
    repeat = _part(tmp_path, "repeat", "src", 27.0, 88.0)
    out = merge_runs(parts, tmp_path / "run", "src", repeat, {"src-gptq": "does not run here"})
    doc = json.loads((out / "eval.json").read_text())
    assert doc["models"] == ["src", "src-w8a8"] and set(doc["results"]) == {"src", "src-w8a8"}
    assert doc["isolation"].startswith("one model at a time")
    assert doc["not_served"] == {"src-gptq": "does not run here"} and doc["wall_time_s"] == 20.0
    assert len((out / "records.jsonl").read_text().splitlines()) == 2  # the repeat's records stay out
    rows = {r["figure"]: r for r in doc["noise"]["rows"]}
    assert rows["output tok/s"]["drift"] == -0.1 and rows["TTFT p50"]["drift"] == 0.1
    assert any("moved by up to 10.0%" in note for note in doc["notes"])


def test_drift_skips_figures_a_run_does_not_have():
    first = {"points": [{"point": "concurrency=1", "metrics": {"output_throughput": 10.0, "ttft_ms": None}}]}
    again = {"points": [{"point": "concurrency=1", "metrics": {"output_throughput": 12.0, "ttft_ms": None}}]}
    assert drift(first, again) == [{"point": "concurrency=1", "figure": "output tok/s", "first": 10.0,
                                    "repeat": 12.0, "drift": 0.2}]


def _with_tasks(part: Path, model: str, correct: list[bool]) -> Path:
    doc = json.loads((part / "eval.json").read_text())
    results = [TaskResult(f"t{i}", "intent", "x", ok) for i, ok in enumerate(correct)]
    doc["results"][model]["tasks"] = summarize(model, results).to_dict()
    (part / "eval.json").write_text(json.dumps(doc))
    return part


def test_the_sources_task_answers_against_its_repeat_are_the_task_noise(tmp_path):
    first = [True] * 60 + [False] * 40
    again = list(first)
    again[0], again[1], again[60] = False, False, True  # 3 items moved between the two runs: 2 lost, 1 gained
    parts = [_with_tasks(_part(tmp_path, "01", "src", 30.0, 80.0), "src", first)]
    repeat = _with_tasks(_part(tmp_path, "repeat", "src", 30.0, 80.0), "src", again)
    doc = json.loads((merge_runs(parts, tmp_path / "run", "src", repeat, {}) / "eval.json").read_text())
    tasks = doc["noise"]["tasks"]
    assert tasks["items"] == 100 and tasks["disagreed"] == 3
    assert tasks["accuracy_first"] == 0.60 and tasks["accuracy_repeat"] == 0.59
    assert abs(tasks["recovery"] - 59 / 60) < 1e-9
    low, high = tasks["recovery_ci"]
    assert low < 59 / 60 < high and high - low < 0.2
    sentence = task_noise_sentence(tasks)
    assert "differed on 3 of 100 items (accuracy 0.600 then 0.590; recovery against itself 0.983" in sentence
    assert "are noise" in sentence
    same = {**tasks, "disagreed": 0, "accuracy_repeat": 0.6, "recovery": 1.0, "recovery_ci": [1.0, 1.0]}
    assert "Greedy answers repeat exactly on this machine" in task_noise_sentence(same)


def test_no_task_noise_without_tasks_in_both_runs(tmp_path):
    parts = [_with_tasks(_part(tmp_path, "01", "src", 30.0, 80.0), "src", [True, False])]
    repeat = _part(tmp_path, "repeat", "src", 30.0, 80.0)
    doc = json.loads((merge_runs(parts, tmp_path / "run", "src", repeat, {}) / "eval.json").read_text())
    assert doc["noise"]["tasks"] is None and task_noise_sentence(None) is None
