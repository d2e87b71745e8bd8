"""One record per measured request: the raw facts every metric is computed from (records.jsonl)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantserve.jsonl import read_jsonl

RECORDS_NAME = "records.jsonl"


@dataclass
class RequestRecord:
    """Times are epoch seconds on one monotonic clock (see RunClock), so differences are exact."""

    model: str
    scenario: str
    item_id: str
    point: str  # the sweep point it belongs to, e.g. "concurrency=4"
    start: float
    first_token: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # arrival of every content chunk
    end: float | None = None
    prompt_tokens: int | None = None  # from the usage chunk; None when the server sent none
    completion_tokens: int | None = None
    status_code: int | None = None
    error: str | None = None
    gateway_ms: float | None = None  # quantserve's x-quantserve-overhead-ms: time spent in the gateway itself

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None and self.first_token is not None

    @property
    def output_tokens(self) -> int:
        """Usage count when reported, else the content chunks seen (one token per chunk in vLLM)."""
        return self.completion_tokens if self.completion_tokens is not None else len(self.chunk_times)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> RequestRecord:
        return cls(**data)


class RunClock:
    """perf_counter anchored to the wall clock once: monotonic, yet readable as a timestamp."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.perf_counter()

    def __call__(self) -> float:
        return self._wall0 + (time.perf_counter() - self._mono0)


def append_records(path: Path, records: Iterable[RequestRecord]) -> None:
    with path.open("a") as fh:
        for record in records:
            fh.write(record.to_json() + "\n")


def read_records(path: Path) -> list[RequestRecord]:
    if not path.is_file():
        return []
    return read_jsonl(path, RequestRecord.from_dict, "a request record")
