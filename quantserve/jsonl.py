"""JSON-lines files we read (prompts, scenarios, tasks, eval records): a bad line is an error naming its line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from quantserve.errors import UserError, first_validation_error

T = TypeVar("T")


def read_jsonl(path: Path, parse: Callable[[Any], T], what: str) -> list[T]:
    """`parse` applied to each line's JSON value, in file order; blank lines are skipped.

    A line that is not JSON, or that `parse` rejects (ValidationError, ValueError, KeyError, TypeError), ends
    the read with a UserError `PATH:LINE: not WHAT (why)`, so the user can go straight to the line.
    """
    items: list[T] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(parse(json.loads(line)))
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path}:{lineno}: not {what} ({_why(err)})") from None
    return items


def _why(err: Exception) -> str:
    if isinstance(err, ValidationError):
        return first_validation_error(err)
    if isinstance(err, json.JSONDecodeError):
        return f"not JSON: {err.msg} at column {err.colno}"
    if isinstance(err, KeyError):
        return f"no {err} field"
    return " ".join(str(err).split())[:200]
