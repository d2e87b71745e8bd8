"""Helpers the serve unit tests share: the fake model's name, a chat body, the gateway `make_gateway` starts,
the events of an SSE reply and the ledger's rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from quantserve.serve.config import ServeConfig
from quantserve.serve.gateway import GatewayThread
from tests.support.helpers import free_port, wait_until

__all__ = ["FAKE_MODEL", "Gateway", "chat_body", "free_port", "ledger_rows", "sse_payloads", "wait_until"]

FAKE_MODEL = "fake-model"


def chat_body(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": text}], **extra}


def sse_payloads(reply: httpx.Response) -> list[Any]:
    out: list[Any] = []
    for line in reply.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def ledger_rows(db_url: str) -> list[dict[str, Any]]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM qs_usage ORDER BY id")).mappings().all()
    engine.dispose()
    return [dict(r) for r in rows]


@dataclass
class Gateway:
    url: str
    config: ServeConfig
    thread: GatewayThread
    db_url: str
    key: str | None

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        token = key if key is not None else self.key
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, headers=headers, trust_env=False, **kwargs)

    @property
    def runtime(self) -> Any:
        return self.thread.app.state.runtime  # type: ignore[attr-defined]
