"""Helpers the serve unit tests share (a uniquely named module: `conftest` is a name every test folder has)."""

from __future__ import annotations

from typing import Any

from tests.helpers import free_port, wait_until

__all__ = ["FAKE_MODEL", "chat_body", "free_port", "wait_until"]

FAKE_MODEL = "fake-model"


def chat_body(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": text}], **extra}


