"""A zero-latency OpenAI stand-in and a lean HTTP/1.1 load client, for measuring the gateway's own cost.

Both speak just enough HTTP/1.1 (keep-alive, content-length bodies) on asyncio protocols under uvloop, so at
thousands of requests per second on a small machine neither one is what is measured: the gateway in between is.

    python -m quantserve.app.bench.stub PORT     # the stand-in upstream: /health and the two generate paths
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")

ANSWER = json.dumps({
    "id": "stub-1", "object": "chat.completion", "created": 0, "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}).encode()
_OK = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(ANSWER)).encode()
       + b"\r\n\r\n" + ANSWER)
_HEALTH = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class _StubProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = _content_length(head)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            assert self.transport is not None
            self.transport.write(_HEALTH if head.startswith(b"GET") else _OK)


async def serve_stub(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_StubProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


@dataclass
class LoadResult:
    sent: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    overheads_ms: list[float] = field(default_factory=list)  # the gateway's own x-quantserve-overhead-ms
    wall_s: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0


class _Connection:
    """One kept-alive connection sending one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, raw: bytes) -> tuple[int, float | None]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        overhead = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"x-quantserve-overhead-ms":
                overhead = float(value)
        await self.reader.readexactly(_content_length(head))
        return status, overhead


def request_bytes(port: int, path: str, body: bytes, api_key: str | None) -> bytes:
    auth = f"authorization: Bearer {api_key}\r\n".encode() if api_key else b""
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n").encode() + auth + b"\r\n" + body


async def drive(port: int, raw: bytes, *, connections: int, seconds: float, rate: float | None = None
                ) -> LoadResult:
    """Closed loop (`rate` None): each connection sends back to back. Open loop: requests start `rate` per
    second in total, spread over the connections, each measured from its scheduled start (so a stalled
    server shows up as latency, not as fewer requests)."""
    result = LoadResult()
    conns = [_Connection(*await asyncio.open_connection("127.0.0.1", port)) for _ in range(connections)]
    start = time.perf_counter()
    deadline = start + seconds

    async def closed(conn: _Connection) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await _one(conn, t0)

    async def opened(index: int, conn: _Connection) -> None:
        assert rate is not None
        period = connections / rate
        scheduled = start + index * (1.0 / rate)
        while scheduled < deadline:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await _one(conn, scheduled)
            scheduled += period

    async def _one(conn: _Connection, t0: float) -> None:
        result.sent += 1
        try:
            status, overhead = await conn.request(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            return
        if status != 200:
            result.errors += 1
            return
        result.latencies_ms.append((time.perf_counter() - t0) * 1000)
        if overhead is not None:
            result.overheads_ms.append(overhead)

    if rate is None:
        await asyncio.gather(*(closed(c) for c in conns))
    else:
        await asyncio.gather(*(opened(i, c) for i, c in enumerate(conns)))
    result.wall_s = time.perf_counter() - start
    for conn in conns:
        conn.writer.close()
    return result


def run_fast(main: Coroutine[Any, Any, _T]) -> _T:
    """asyncio.run on uvloop when it is installed: the load client must not be the bottleneck."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


if __name__ == "__main__":
    run_fast(serve_stub(int(sys.argv[1])))
