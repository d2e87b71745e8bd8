"""Each model measured alone: one eval run per model with only its engine up, merged into one run folder, and the
source measured again at the end so the drift between its two runs states this machine's noise.

With every engine up, neighbours share the cores: on a 2-core machine the source measured 8.9 output tok/s
among its neighbours against 14.8 alone, which skews exactly the comparison the report exists for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantserve.eval.records import RECORDS_NAME
from quantserve.eval.runner import EVAL_NAME, read_eval
from quantserve.eval.tasks import TaskScores, task_quality

# the per-point speed figures whose drift between the source's two runs is reported as noise
_DRIFT_FIGURES = {"output_throughput": ("output tok/s", None), "ttft_ms": ("TTFT p50", "p50"),
                  "tpot_ms": ("TPOT p50", "p50")}


def _figure(metrics: dict[str, Any], key: str, stat: str | None) -> float | None:
    value = metrics.get(key)
    if stat is not None:
        value = value.get(stat) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def drift(first: dict[str, Any], repeat: dict[str, Any]) -> list[dict[str, Any]]:
    """Per load point and figure: the source's two values and their relative difference."""
    rows = []
    repeats = {p["point"]: p["metrics"] for p in repeat.get("points", [])}
    for point in first.get("points", []):
        again = repeats.get(point["point"])
        if again is None:
            continue
        for key, (label, stat) in _DRIFT_FIGURES.items():
            a, b = _figure(point["metrics"], key, stat), _figure(again, key, stat)
            if a is None or b is None or a == 0:
                continue
            rows.append({"point": point["point"], "figure": label, "first": round(a, 3), "repeat": round(b, 3),
                         "drift": round((b - a) / a, 4)})
    return rows


def task_drift(first: dict[str, Any], repeat: dict[str, Any]) -> dict[str, Any] | None:
    """The source's task answers against its own repeat, item by item: what the quality floor cannot see
    through. Greedy answers still move between runs (batch composition changes the numerics)."""
    if not first.get("tasks") or not repeat.get("tasks"):
        return None
    source = TaskScores.from_dict(first["tasks"])
    tq = task_quality(TaskScores.from_dict(repeat["tasks"]), source)
    if tq is None or not tq.paired:
        return None
    return {"items": tq.paired, "disagreed": tq.only_source_right + tq.only_model_right,
            "accuracy_first": source.accuracy, "accuracy_repeat": tq.accuracy.value,
            "recovery": tq.recovery,
            "recovery_ci": [tq.recovery_ci.low, tq.recovery_ci.high] if tq.recovery_ci else None}


def merge_runs(parts: list[Path], out: Path, source: str | None, repeat: Path | None,
               not_served: dict[str, str]) -> Path:
    """One run folder (eval.json + records.jsonl) from per-model runs, as `quantserve report` reads it."""
    docs = [read_eval(p) for p in parts]
    merged = dict(docs[0])
    merged["models"] = list(dict.fromkeys(m for d in docs for m in d["models"]))
    merged["results"] = {m: r for d in docs for m, r in d["results"].items()}
    merged["serving"] = {m: s for d in docs for m, s in d.get("serving", {}).items()}
    merged["source_model"] = source
    merged["not_served"] = not_served
    merged["wall_time_s"] = sum(d.get("wall_time_s", 0.0) for d in docs)
    merged["isolation"] = "one model at a time, the other engines stopped"
    notes = [n for d in docs for n in d.get("notes", [])]
    notes.append("Each model was measured alone: only its engine ran, so no neighbour shared the cores.")
    if repeat is not None and source is not None and source in merged["results"]:
        again = read_eval(repeat)["results"].get(source, {})
        rows = drift(merged["results"][source], again)
        merged["noise"] = {"model": source, "rows": rows, "tasks": task_drift(merged["results"][source], again)}
        if rows:
            worst = max(rows, key=lambda r: abs(r["drift"]))
            notes.append(f"Noise: the source was measured again at the end; its figures moved by up to "
                         f"{abs(worst['drift']):.1%} ({worst['figure']} at {worst['point']}: {worst['first']:g} then "
                         f"{worst['repeat']:g}). Differences between variants smaller than that are not "
                         "measurements.")
    merged["notes"] = list(dict.fromkeys(notes))
    out.mkdir(parents=True, exist_ok=True)
    with (out / RECORDS_NAME).open("w") as records:
        for part in parts:
            path = part / RECORDS_NAME
            if path.is_file():
                records.write(path.read_text())
    (out / EVAL_NAME).write_text(json.dumps(merged, indent=2) + "\n")
    return out
