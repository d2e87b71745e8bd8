"""Load scenarios: prompts/scenarios/<name>.jsonl, one `{"id", "messages", "max_tokens"}` per line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from quantserve.errors import UserError
from quantserve.jsonl import read_jsonl


class ScenarioItem(BaseModel):
    id: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int = Field(gt=0)


def scenario_path(name_or_path: str) -> Path:
    """A name (support-chat) resolves under prompts/scenarios/; anything with a suffix is a path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".jsonl":
        return candidate
    from quantserve.prompts import prompt_path

    return prompt_path(f"scenarios/{name_or_path}.jsonl")


def available_scenarios() -> list[str]:
    folder = scenario_path("x").parent
    return sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []


def load_scenario(name_or_path: str) -> list[ScenarioItem]:
    path = scenario_path(name_or_path)
    if not path.is_file():
        known = ", ".join(available_scenarios()) or "none found"
        raise UserError(f"scenario file not found: {path} (available scenarios: {known})")
    items = read_jsonl(path, ScenarioItem.model_validate, "a scenario item")
    if not items:
        raise UserError(f"scenario file is empty: {path}")
    return items
