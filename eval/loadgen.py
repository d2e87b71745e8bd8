"""Async load generator: streams chat completions from any OpenAI-compatible endpoint.

Modes: a fixed number of concurrent users, a constant request rate, or a seeded Poisson rate.
Each point sends warm-up requests first (discarded) and then stops issuing at `num_requests` or
`duration_s` (when set), whichever comes first. Every measured request becomes a RequestRecord, failures included.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from quantserve.errors import UserError
from quantserve.eval.endpoint import Endpoint
from quantserve.eval.records import RequestRecord, RunClock
from quantserve.eval.scenarios import ScenarioItem
from quantserve.eval.stats import min_samples

Mode = Literal["concurrency", "rate", "poisson"]
MODES: tuple[str, ...] = ("concurrency", "rate", "poisson")
DEFAULT_REQUESTS = min_samples(99)  # per point: the fewest for which a p99 is more than the sample maximum


@dataclass(frozen=True)
class LoadPoint:
    mode: Mode
    value: float  # users for concurrency, requests/s for rate and poisson

    @property
    def label(self) -> str:
        return f"{self.mode}={self.value:g}"


@dataclass(frozen=True)
class LoadLimits:
    num_requests: int = DEFAULT_REQUESTS
    duration_s: float | None = None  # a cap per point; None runs to num_requests
    warmup: int = 2
    timeout_s: float = 120.0  # per request, whole stream
    seed: int = 0
    temperature: float | None = 0.0  # None leaves the server default
    max_tokens: int | None = None  # None uses each scenario item's own max_tokens
    ignore_eos: bool = False  # vLLM's extension: every answer runs to max_tokens (like-for-like benchmarks)


def parse_sweep(text: str) -> list[LoadPoint]:
    """`concurrency=1,4,16`, `rate=2,8` or `poisson=2,8` -> load points."""
    mode, sep, values = (text or "").partition("=")
    mode = mode.strip().lower()
    if not sep or mode not in MODES:
        raise UserError(f"malformed --sweep {text!r}; write concurrency=1,4,16 or rate=1,2 or poisson=1,2")
    points = []
    for part in values.split(","):
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"--sweep value {part.strip()!r} is not a number") from None
        if value <= 0 or (mode == "concurrency" and value != int(value)):
            kind = "positive integers" if mode == "concurrency" else "positive"
            raise UserError(f"--sweep {mode} values must be {kind}, got {part.strip()!r}")
        points.append(LoadPoint(mode=mode, value=value))  # type: ignore[arg-type]
    return points


def request_body(model: str, item: ScenarioItem, limits: LoadLimits) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": item.messages,
        "max_tokens": limits.max_tokens or item.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if limits.temperature is not None:
        body["temperature"] = limits.temperature
    if limits.ignore_eos:
        body["ignore_eos"] = True
    return body


def _error_text(body: bytes) -> str:
    text = body.decode(errors="replace").strip()
    try:
        data = json.loads(text)
        err = data.get("error", data) if isinstance(data, dict) else data
        text = err.get("message", text) if isinstance(err, dict) else str(err)
    except ValueError:
        pass
    return " ".join(str(text).split())[:300]


async def send_one(client: httpx.AsyncClient, endpoint: Endpoint, model: str, scenario: str,
                   item: ScenarioItem, point: str, limits: LoadLimits,
                   clock: Callable[[], float]) -> RequestRecord:
    record = RequestRecord(model=model, scenario=scenario, item_id=item.id, point=point, start=clock())
    try:
        async with asyncio.timeout(limits.timeout_s):
            await _stream(client, endpoint, request_body(model, item, limits), record, clock)
    except TimeoutError:
        record.error = f"timeout after {limits.timeout_s:g}s"
    except httpx.TimeoutException as err:
        record.error = f"timeout: {type(err).__name__}"
    except httpx.HTTPError as err:  # connection refused/reset, peer closed mid-stream, protocol errors
        record.error = f"{type(err).__name__}: {err}"
    except Exception as err:  # anything else is still a failed request: recorded, never dropped
        record.error = f"{type(err).__name__}: {err}"
    record.end = clock()
    if record.error is None and record.first_token is None:
        record.error = "no content received"  # as vLLM: without a first token there is no TTFT
    return record


async def _stream(client: httpx.AsyncClient, endpoint: Endpoint, body: dict[str, Any], record: RequestRecord,
                  clock: Callable[[], float]) -> None:
    async with client.stream("POST", endpoint.url("chat/completions"), json=body,
                             headers=endpoint.headers) as resp:
        record.status_code = resp.status_code
        overhead = resp.headers.get("x-quantserve-overhead-ms")
        if overhead is not None:
            record.gateway_ms = float(overhead)
        if resp.status_code != 200:
            record.error = f"HTTP {resp.status_code}: {_error_text(await resp.aread())}"
            return
        finished = False
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                finished = True
                break
            now = clock()
            try:
                event = json.loads(data)
            except ValueError:
                record.error = f"malformed stream event: {data[:100]!r}"
                return
            if not isinstance(event, dict):
                record.error = f"malformed stream event: {data[:100]!r}"
                return
            if event.get("error") or event.get("object") == "error":
                record.error = f"stream error: {_error_text(json.dumps(event).encode())}"
                return
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                    if record.first_token is None:
                        record.first_token = now
                    record.chunk_times.append(now)
                    break
            for choice in event.get("choices") or []:
                finished = finished or bool(choice.get("finish_reason"))
            if usage := event.get("usage"):
                record.prompt_tokens = usage.get("prompt_tokens")
                record.completion_tokens = usage.get("completion_tokens")
        if not finished:
            record.error = "stream ended without a finish_reason or [DONE]"


async def run_point(client: httpx.AsyncClient, endpoint: Endpoint, model: str, scenario: str,
                    items: Sequence[ScenarioItem], point: LoadPoint, limits: LoadLimits,
                    clock: Callable[[], float] | None = None,
                    after_warmup: Callable[[], Awaitable[None]] | None = None) -> list[RequestRecord]:
    """Warm up, then measure one load point. Returns the measured records (warm-up excluded), by start.
    `after_warmup` runs between the two (a scrape of the engine's counters, so they cover the point alone)."""
    clock = clock or RunClock()

    def send(i: int) -> Any:
        return send_one(client, endpoint, model, scenario, items[i % len(items)], point.label, limits, clock)

    if limits.warmup:
        width = max(1, min(limits.warmup, int(point.value) if point.mode == "concurrency" else 1))
        await _closed_loop(send, limits.warmup, width, float("inf"), clock)
    if after_warmup is not None:
        await after_warmup()
    deadline = clock() + limits.duration_s if limits.duration_s is not None else float("inf")
    if point.mode == "concurrency":
        records = await _closed_loop(send, limits.num_requests, int(point.value), deadline, clock)
    else:
        records = await _open_loop(send, limits.num_requests, point, limits.seed, deadline, clock)
    return sorted(records, key=lambda r: r.start)


async def _closed_loop(send: Callable[[int], Any], n: int, users: int, deadline: float,
                       clock: Callable[[], float]) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    issued = 0

    async def user() -> None:
        nonlocal issued
        while issued < n and clock() < deadline:
            i = issued
            issued += 1
            records.append(await send(i))

    await asyncio.gather(*(user() for _ in range(users)))
    return records


def arrival_offsets(point: LoadPoint, n: int, seed: int) -> list[float]:
    """Send times in seconds from the first request: evenly spaced, or exponential gaps (seeded)."""
    rng = random.Random(seed)
    offsets, at = [], 0.0
    for _ in range(n):
        offsets.append(at)
        at += rng.expovariate(point.value) if point.mode == "poisson" else 1.0 / point.value
    return offsets


async def _open_loop(send: Callable[[int], Any], n: int, point: LoadPoint, seed: int, deadline: float,
                     clock: Callable[[], float]) -> list[RequestRecord]:
    tasks: list[asyncio.Task[RequestRecord]] = []
    t0 = clock()
    for i, offset in enumerate(arrival_offsets(point, n, seed)):
        await asyncio.sleep(max(0.0, t0 + offset - clock()))
        if clock() >= deadline:
            break
        tasks.append(asyncio.create_task(send(i)))
    return list(await asyncio.gather(*tasks))


def make_client(limits: LoadLimits) -> httpx.AsyncClient:
    # The per-request budget is enforced by asyncio.timeout; httpx's read timeout guards a stalled stream.
    return httpx.AsyncClient(timeout=httpx.Timeout(limits.timeout_s, connect=10.0),
                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
