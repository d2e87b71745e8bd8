"""Text we wrote for calibration, held-out quality checks, load scenarios and task sets (plain files)."""

from __future__ import annotations

from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent


def prompt_path(relative: str) -> Path:
    """Absolute path of a file under prompts/, e.g. prompt_path("calibration/support_chat.jsonl")."""
    return PROMPTS_DIR / relative
