"""Answer quality on a small support task set, asked of each model through the endpoint.

prompts/tasks/support_tasks.jsonl, one `{"id", "kind", "messages", "answer", "match", "choices"?}` per
line; greedy decoding (temperature 0) with a short max_tokens, scored by exact rules so runs compare.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field, model_validator

from quantserve.errors import UserError
from quantserve.eval.endpoint import Endpoint
from quantserve.eval.stats import Interval, bootstrap_ratio, mcnemar_exact, wilson_interval
from quantserve.jsonl import read_jsonl

DEFAULT_TASKS = "tasks/support_tasks.jsonl"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


class Task(BaseModel):
    id: str
    kind: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    answer: str | int | float
    match: Literal["choice", "contains", "number"]
    choices: list[str] | None = None

    @model_validator(mode="after")
    def _choices_for_choice(self) -> Task:
        if self.match == "choice" and not self.choices:
            raise ValueError("match 'choice' needs a non-empty 'choices' list")
        return self


def default_tasks_path() -> Path:
    from quantserve.prompts import prompt_path

    return prompt_path(DEFAULT_TASKS)


def load_tasks(path: Path) -> list[Task]:
    if not path.is_file():
        raise UserError(f"task file not found: {path}")
    tasks = read_jsonl(path, Task.model_validate, "a task")
    if not tasks:
        raise UserError(f"task file is empty: {path}")
    return tasks


def _whole_word(text: str) -> str:
    """A pattern for text not glued to other word characters: "ice" is not found in "price"."""
    text = text.strip()
    pattern = re.escape(text)
    if text[:1].isalnum():
        pattern = r"(?<!\w)" + pattern
    if text[-1:].isalnum():
        pattern += r"(?!\w)"
    return pattern


def _first_choice(output: str, choices: list[str]) -> str | None:
    """The choice whose earliest whole-word occurrence comes first in the output."""
    best: tuple[int, str] | None = None
    for choice in choices:
        found = re.search(_whole_word(choice), output, re.IGNORECASE)
        if found and (best is None or found.start() < best[0]):
            best = (found.start(), choice)
    return best[1] if best else None


def _first_number(text: str) -> float | None:
    found = _NUMBER.search(text)
    if not found:
        return None
    try:
        return float(found.group().replace(",", ""))
    except ValueError:
        return None


def score(task: Task, output: str) -> bool:
    expected = str(task.answer).strip()
    if task.match == "choice":
        picked = _first_choice(output, task.choices or [])
        return picked is not None and picked.strip().lower() == expected.lower()
    if task.match == "contains":
        return re.search(_whole_word(expected), output, re.IGNORECASE) is not None
    got, want = _first_number(output), _first_number(expected)
    return got is not None and want is not None and abs(got - want) <= 1e-9 * max(1.0, abs(want))


@dataclass
class TaskResult:
    id: str
    kind: str
    output: str
    correct: bool
    error: str | None = None


@dataclass
class TaskScores:
    model: str
    total: int
    correct: int
    errors: int
    accuracy: float
    by_kind: dict[str, float]
    results: list[TaskResult]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskScores:
        results = [TaskResult(**r) for r in data.get("results", [])]
        return cls(**{**data, "results": results})


def summarize(model: str, results: list[TaskResult]) -> TaskScores:
    kinds: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        kinds[r.kind].append(r.correct)
    correct = sum(r.correct for r in results)
    return TaskScores(
        model=model, total=len(results), correct=correct, errors=sum(r.error is not None for r in results),
        accuracy=correct / len(results) if results else 0.0,
        by_kind={k: sum(v) / len(v) for k, v in sorted(kinds.items())}, results=results,
    )


def recovery(variant_accuracy: float | None, source_accuracy: float | None) -> float | None:
    """Variant accuracy / source accuracy; None when either is unknown or the source scored 0."""
    if variant_accuracy is None or not source_accuracy:
        return None
    return variant_accuracy / source_accuracy


@dataclass(frozen=True)
class TaskQuality:
    """One model's task accuracy with its uncertainty, and how it compares with the source item by item."""

    n: int  # items scored
    accuracy: Interval  # Wilson 95%
    paired: int  # items both this model and the source answered (matched by id); 0 without per-item results
    only_source_right: int  # McNemar's discordant pairs
    only_model_right: int
    p_value: float | None  # exact McNemar, two-sided; None without paired items
    recovery: float | None  # Σ model right / Σ source right over the paired items (else accuracy ratio)
    recovery_ci: Interval | None  # paired bootstrap 95% over items; None without paired items


def task_quality(scores: TaskScores, source: TaskScores | None) -> TaskQuality | None:
    """None when nothing was scored. Item by item when both carry per-item results; a run without them
    (older eval.json) still gets the accuracy interval and a recovery figure without an interval."""
    if scores.total == 0:
        return None
    accuracy = wilson_interval(scores.correct, scores.total)
    if source is None:
        return TaskQuality(scores.total, accuracy, 0, 0, 0, None, None, None)
    theirs = {r.id: r.correct for r in source.results}
    pairs = [(theirs[r.id], r.correct) for r in scores.results if r.id in theirs]
    if not pairs:
        return TaskQuality(scores.total, accuracy, 0, 0, 0, None, recovery(scores.accuracy, source.accuracy),
                           None)
    b = sum(s and not m for s, m in pairs)
    c = sum(m and not s for s, m in pairs)
    # Resampling items keeps each item's two answers together: what makes an item hard for both cancels.
    rec = bootstrap_ratio([float(m) for _, m in pairs], [float(s) for s, _ in pairs])
    return TaskQuality(scores.total, accuracy, len(pairs), b, c, mcnemar_exact(b, c),
                       rec.value if rec else None, rec)


async def _ask(client: httpx.AsyncClient, endpoint: Endpoint, model: str, task: Task, max_tokens: int,
               timeout_s: float) -> TaskResult:
    body = {"model": model, "messages": task.messages, "temperature": 0, "max_tokens": max_tokens}
    try:
        resp = await client.post(endpoint.url("chat/completions"), json=body, headers=endpoint.headers,
                                 timeout=timeout_s)
        if resp.status_code != 200:
            return TaskResult(task.id, task.kind, "", False, f"HTTP {resp.status_code}: {resp.text[:200]}")
        output = resp.json()["choices"][0]["message"].get("content") or ""
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as err:
        return TaskResult(task.id, task.kind, "", False, f"{type(err).__name__}: {err}")
    return TaskResult(task.id, task.kind, output, score(task, output))


async def run_tasks(client: httpx.AsyncClient, endpoint: Endpoint, model: str, tasks: list[Task],
                    max_tokens: int = 16, parallel: int = 8, timeout_s: float = 120.0) -> TaskScores:
    gate = asyncio.Semaphore(parallel)

    async def one(task: Task) -> TaskResult:
        async with gate:
            return await _ask(client, endpoint, model, task, max_tokens, timeout_s)

    return summarize(model, list(await asyncio.gather(*(one(t) for t in tasks))))
