"""Answer quality on a small support task set, asked of each model through the endpoint.

prompts/tasks/support_tasks.jsonl, one `{"id", "kind", "messages", "answer", "match", "choices"?}` per
line; greedy decoding (temperature 0) with a short max_tokens, scored by exact rules so runs compare.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field, ValidationError, model_validator

from quantserve.errors import UserError
from quantserve.eval.endpoint import Endpoint

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
    tasks = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            tasks.append(Task.model_validate(json.loads(line)))
        except (ValueError, ValidationError) as err:
            raise UserError(f"{path}:{lineno}: not a task ({' '.join(str(err).split())[:200]})") from None
    if not tasks:
        raise UserError(f"task file is empty: {path}")
    return tasks


def _first_choice(output: str, choices: list[str]) -> str | None:
    """The choice whose earliest whole-word occurrence comes first in the output."""
    best: tuple[int, str] | None = None
    for choice in choices:
        pattern = re.escape(choice.strip())
        if choice[:1].isalnum():
            pattern = r"(?<!\w)" + pattern
        if choice[-1:].isalnum():
            pattern += r"(?!\w)"
        found = re.search(pattern, output, re.IGNORECASE)
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
        return expected.lower() in output.lower()
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
                    max_tokens: int = 16, parallel: int = 4, timeout_s: float = 120.0) -> TaskScores:
    gate = asyncio.Semaphore(parallel)

    async def one(task: Task) -> TaskResult:
        async with gate:
            return await _ask(client, endpoint, model, task, max_tokens, timeout_s)

    return summarize(model, list(await asyncio.gather(*(one(t) for t in tasks))))
