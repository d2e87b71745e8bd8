"""The usage ledger: one row per request, written off the request path in batches and flushed on shutdown.

Requests only put a record on an asyncio queue. A background task waits flush_interval_s after the first
record, takes whatever has piled up (up to a batch) and inserts it in a worker thread: one commit and one
thread hop per interval rather than per request, which keeps the writes off the latency of the next request.
A row the database refuses after retries goes to a JSON-lines file next to the engine logs rather than away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from quantserve.paths import state_dir
from quantserve.serve.db import get_engine, usage

log = logging.getLogger("quantserve.serve.ledger")

_STOP = object()


@dataclass
class UsageRecord:
    ts: float
    key_id: str | None
    model: str
    endpoint: str
    status: int
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    stream: bool = False
    gateway: str = ""


class Ledger:
    def __init__(self, database_url: str, batch_size: int = 200, flush_interval_s: float = 0.25,
                 fallback_path: Path | None = None) -> None:
        self.engine = get_engine(database_url)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.fallback_path = fallback_path or state_dir() / "logs" / "ledger-fallback.jsonl"
        self.written = 0
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    def record(self, record: UsageRecord) -> None:
        if self._closed or self._task is None:
            self.write_batch([record])  # late arrival during shutdown: slower, still kept
            return
        self._queue.put_nowait(record)

    async def close(self) -> None:
        """Write everything queued so far, then stop. Called from the app's shutdown."""
        if self._task is None:
            return
        self._closed = True
        self._queue.put_nowait(_STOP)
        await self._task
        self._task = None

    def pending(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            stop = item is _STOP
            if not stop and self.flush_interval_s > 0 and self._queue.qsize() < self.batch_size:
                await asyncio.sleep(self.flush_interval_s)
            batch: list[UsageRecord] = [] if stop else [item]  # type: ignore[list-item]
            while len(batch) < self.batch_size and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is _STOP:
                    stop = True
                    continue
                batch.append(nxt)  # type: ignore[arg-type]
            if batch:
                # a cancelled to_thread still finishes its write in the worker thread
                await asyncio.to_thread(self.write_batch, batch)
            if stop and self._queue.empty():
                return

    def write_batch(self, batch: list[UsageRecord]) -> None:
        rows = [asdict(r) for r in batch]
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    conn.execute(usage.insert(), rows)
                self.written += len(rows)
                return
            except Exception as err:  # any driver error: retry, then keep the rows on disk
                log.warning("ledger write of %d rows failed (attempt %d): %s", len(rows), attempt + 1, err)
                time.sleep(0.2 * (attempt + 1))
        self.fallback_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.fallback_path, "a") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")
        log.error("ledger: %d rows kept in %s; load them when the database is back", len(rows),
                  self.fallback_path)

