"""The gateway's HTTP client to its engines: aiohttp's connection pool behind three calls (a unary POST, a
streamed POST, a health GET), its failures sorted into the three kinds the gateway acts on.

Not httpx: its pool checks every idle connection for readability on each request (a syscall each) and its
request/response models cost about as much again; at a thousand requests a second that was most of the
gateway's CPU. The kinds: `refused` (nothing listens: try another upstream), `dropped` (a connection closed or
reset), `timeout` (the engine went silent while working on it: no retry).

A generation request is not idempotent: one the engine may have started (its headers went out) is never sent
again, whatever broke. Only a request that provably did not reach the engine, failing `dropped` before its first
byte was written, is sent once more, here and only here, on a fresh connection. The pool closes idle connections
after `keepalive_s`, before an engine's own keep-alive (uvicorn's 5 s) can close one under a request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal, TypeVar

import aiohttp

log = logging.getLogger("quantserve.serve.upstream_client")
_R = TypeVar("_R")

FailureKind = Literal["refused", "dropped", "timeout", "too_large"]
HealthAnswer = Literal["up", "down", "timeout"]  # down: refused, dropped or not 200; timeout: no answer in time


class UpstreamFailure(Exception):
    def __init__(self, kind: FailureKind, detail: str, sent: bool = True) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.sent = sent  # the request's headers went out: the engine may have started it


class _Attempt:
    """What one request's trace saw: whether its headers were written to the connection."""

    def __init__(self) -> None:
        self.headers_sent = False


async def _on_headers_sent(_session: object, context: object, _params: object) -> None:
    attempt = getattr(context, "trace_request_ctx", None)
    if isinstance(attempt, _Attempt):
        attempt.headers_sent = True


def _failure(err: BaseException, sent: bool = True) -> UpstreamFailure:
    detail = f"{type(err).__name__}: {err}"
    if isinstance(err, aiohttp.ClientConnectorError) and not isinstance(err, aiohttp.ClientSSLError):
        return UpstreamFailure("refused", detail, sent=False)
    if isinstance(err, TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamFailure("timeout", detail, sent)
    return UpstreamFailure("dropped", detail, sent)


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int | None) -> bytes:
    if max_bytes is None:
        return await response.read()
    if response.content_length is not None and response.content_length > max_bytes:
        response.close()
        raise UpstreamFailure("too_large", f"{response.content_length} bytes, over {max_bytes}")
    parts: list[bytes] = []
    size = 0
    async for part in response.content.iter_any():
        size += len(part)
        if size > max_bytes:
            response.close()  # the rest is not read: the connection is dropped, the engine stops
            raise UpstreamFailure("too_large", f"over {max_bytes} bytes")
        parts.append(part)
    return b"".join(parts)


_FAILURES = (aiohttp.ClientError, TimeoutError, OSError)


class UpstreamStream:
    """A streamed answer: status and body chunks as they come; `close()` mid-body drops the connection, which
    makes vLLM abort the request."""

    def __init__(self, response: aiohttp.ClientResponse, owner: UpstreamClient | None = None) -> None:
        self._response = response
        self._owner = owner  # the fresh client of a retry: it lives as long as the stream
        self.status = response.status

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except _FAILURES as err:
            raise _failure(err) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except _FAILURES as err:
            raise _failure(err) from None

    async def close(self) -> None:
        try:
            if self._response.content.at_eof():
                self._response.release()  # read to the end: the connection goes back to the pool
            else:
                self._response.close()
        finally:
            if self._owner is not None:
                await self._owner.close()


class UpstreamClient:
    def __init__(self, api_key: str | None, read_timeout_s: float, connect_timeout_s: float = 5.0,
                 max_connections: int = 0, fresh: bool = False, keepalive_s: float = 2.0) -> None:
        """`read_timeout_s`: the longest silence between two bytes of an answer, not the answer's duration.
        `fresh`: one connection, never reused (the retry after a dropped one)."""
        self._headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self._read_timeout_s = read_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._fresh = fresh
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._one_shot: aiohttp.ClientSession | None = None  # connections used once (reuse=False)

    def fresh(self) -> UpstreamClient:
        return UpstreamClient(self._api_key, self._read_timeout_s, self._connect_timeout_s, fresh=True)

    def _get_session(self, reuse: bool = True) -> aiohttp.ClientSession:
        # created lazily: a session binds to the running event loop
        if not reuse and not self._fresh:
            if self._one_shot is None:
                # force_close: "Connection: close" on the request, and the connection closed after the answer
                self._one_shot = self._new_session(aiohttp.TCPConnector(limit=self._max_connections,
                                                                        limit_per_host=0, force_close=True))
            return self._one_shot
        if self._session is None:
            if self._fresh:
                connector = aiohttp.TCPConnector(limit=1, force_close=True)
            else:
                connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0,
                                                 keepalive_timeout=self._keepalive_s)
            self._session = self._new_session(connector)
        return self._session

    def _new_session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_on_headers_sent)
        return aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                     timeout=self._timeout, skip_auto_headers=("User-Agent",), trace_configs=[trace])

    async def post(self, url: str, body: bytes, max_bytes: int | None = None) -> tuple[int, bytes]:
        """A unary POST: the status and the whole body (`too_large` past max_bytes, read no further)."""
        async def send(client: UpstreamClient) -> tuple[int, bytes]:
            attempt = _Attempt()
            try:
                async with client._get_session().post(url, data=body, headers=client._headers,
                                                      trace_request_ctx=attempt) as response:
                    return response.status, await _read_capped(response, max_bytes)
            except _FAILURES as err:
                raise _failure(err, attempt.headers_sent) from None

        async def once_more(fresh: UpstreamClient) -> tuple[int, bytes]:
            try:
                return await send(fresh)
            finally:
                await fresh.close()

        return await self._with_retry(url, send, once_more)

    async def open_stream(self, url: str, body: bytes, reuse: bool = True) -> UpstreamStream:
        """A streamed POST, open once its status line arrived; the caller reads and closes it. `reuse`: False
        when the server closes the connection after a stream, so it is not put back in the pool."""
        async def send(client: UpstreamClient) -> UpstreamStream:
            attempt = _Attempt()
            try:
                response = await client._get_session(reuse).post(url, data=body, headers=client._headers,
                                                                 trace_request_ctx=attempt)
            except _FAILURES as err:
                raise _failure(err, attempt.headers_sent) from None
            return UpstreamStream(response, owner=client if client is not self else None)

        async def once_more(fresh: UpstreamClient) -> UpstreamStream:
            try:
                return await send(fresh)
            except BaseException:
                await fresh.close()
                raise

        return await self._with_retry(url, send, once_more)

    async def _with_retry(self, url: str, send: Callable[[UpstreamClient], Awaitable[_R]],
                          once_more: Callable[[UpstreamClient], Awaitable[_R]]) -> _R:
        try:
            return await send(self)
        except UpstreamFailure as failure:
            if failure.kind != "dropped" or failure.sent or self._fresh:
                raise
            log.info("%s: %s on a pooled connection before the request went out; sending it on a fresh one", url,
                     failure.detail)
        return await once_more(self.fresh())

    async def health(self, url: str, timeout_s: float) -> HealthAnswer:
        try:
            async with self._get_session().get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                await response.read()
                return "up" if response.status == 200 else "down"
        except _FAILURES as err:
            return "timeout" if _failure(err).kind == "timeout" else "down"

    async def close(self) -> None:
        for session in (self._session, self._one_shot):
            if session is not None:
                await session.close()
