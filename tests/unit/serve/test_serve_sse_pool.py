"""SSE splitting as bytes arrive, and admission to upstreams: round-robin, health, queue, 429/503."""

from __future__ import annotations

import asyncio
import json

import pytest

from quantserve.serve.errors import OpenAIError
from quantserve.serve.sse import EventSplitter, inspect_event
from quantserve.serve.upstreams import ModelPool, Upstream


def test_splitter_handles_any_chunking_and_crlf():
    stream = b'data: {"a": 1}\n\ndata: {"b": 2}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n'
    for size in (1, 2, 3, 7, len(stream)):
        splitter = EventSplitter()
        events = []
        for i in range(0, len(stream), size):
            events += splitter.feed(stream[i:i + size])
        assert events == [b'data: {"a": 1}', b'data: {"b": 2}', b": keep-alive", b"data: [DONE]"]
        assert splitter.rest() == b""


def test_inspect_event():
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    final = inspect_event(b"data: " + json.dumps({"choices": [], "usage": usage}).encode())
    assert final.usage == usage and final.usage_only and not final.has_choices
    token = inspect_event(b'data: {"choices":[{"delta":{"content":"\\"usage\\":{ \\"error\\""}}]}')
    assert token.usage is None and token.error is None and token.has_choices  # quoted text is not structure
    assert inspect_event(b"data: [DONE]").is_done
    assert not inspect_event(b": ping").is_data
    err = inspect_event(b'data: {"error": {"message": "x", "code": 500}}')
    assert err.error == {"message": "x", "code": 500}


def pool(*healthy: bool, max_in_flight: int = 1, max_queue: int = 2, timeout: float = 1.0) -> ModelPool:
    ups = [Upstream("m", f"http://u{i}", max_in_flight) for i in range(len(healthy))]
    for up, ok in zip(ups, healthy, strict=True):
        up.healthy = ok
    return ModelPool("m", ups, max_queue=max_queue, queue_timeout_s=timeout)


async def test_round_robin_over_healthy_upstreams():
    p = pool(True, False, True, max_in_flight=10)
    picks = []
    for _ in range(4):
        up = await p.acquire()
        picks.append(up.base_url)
        p.release(up)
    assert picks == ["http://u0", "http://u2", "http://u0", "http://u2"]


async def test_no_healthy_upstream_is_503():
    with pytest.raises(OpenAIError) as err:
        await pool(False, False).acquire()
    assert err.value.status == 503


async def test_full_then_queue_then_429():
    p = pool(True, max_in_flight=1, max_queue=1)
    first = await p.acquire()
    waiter = asyncio.create_task(p.acquire())
    await asyncio.sleep(0.01)
    with pytest.raises(OpenAIError) as err:
        await p.acquire()  # slot taken, queue full
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "1"
    p.release(first)
    second = await asyncio.wait_for(waiter, 1)
    assert second is first and first.in_flight == 1


async def test_queue_timeout_and_fifo_order():
    p = pool(True, max_in_flight=1, max_queue=5, timeout=0.1)
    held = await p.acquire()
    with pytest.raises(OpenAIError) as err:
        await p.acquire()
    assert err.value.status == 429
    p.queue_timeout_s = 5
    order: list[int] = []

    async def take(i: int) -> None:
        up = await p.acquire()
        order.append(i)
        await asyncio.sleep(0.01)
        p.release(up)

    tasks = [asyncio.create_task(take(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    p.release(held)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and p.in_flight() == 0


async def test_waiters_fail_fast_when_the_last_upstream_goes_down():
    p = pool(True, max_in_flight=1, max_queue=5, timeout=5)
    held = await p.acquire()
    waiter = asyncio.create_task(p.acquire())
    await asyncio.sleep(0.01)
    p.set_health(p.upstreams[0], False)
    with pytest.raises(OpenAIError) as err:
        await asyncio.wait_for(waiter, 1)
    assert err.value.status == 503
    p.release(held)


async def test_cancelled_waiter_passes_its_wakeup_on():
    p = pool(True, max_in_flight=1, max_queue=5, timeout=5)
    held = await p.acquire()
    doomed = asyncio.create_task(p.acquire())
    patient = asyncio.create_task(p.acquire())
    await asyncio.sleep(0.01)
    p.release(held)  # wakes `doomed` ...
    doomed.cancel()  # ... which leaves before running
    up = await asyncio.wait_for(patient, 1)
    assert up.in_flight == 1
