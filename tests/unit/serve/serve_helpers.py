"""Helpers the serve unit tests share (a uniquely named module: `conftest` is a name every test folder has)."""

from __future__ import annotations

import socket
import time
from typing import Any

FAKE_MODEL = "fake-model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chat_body(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": text}], **extra}


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
