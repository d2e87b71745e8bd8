"""A line per step with its time, so long work shows where it is."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def say(message: str) -> None:
    print(f"[quantserve] {message}", file=sys.stderr, flush=True)


@contextmanager
def step(what: str) -> Iterator[None]:
    say(f"{what} ...")
    start = time.perf_counter()
    yield
    say(f"{what}: done in {time.perf_counter() - start:.1f}s")
