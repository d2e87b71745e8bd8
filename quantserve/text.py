"""Text cut to fit one line: a reason in a table cell or inside a one-line error message."""

from __future__ import annotations


def shorten(text: str, limit: int) -> str:
    """`text` on one line (each run of whitespace becomes one space), cut to `limit` characters with "…"."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"
