"""The gateway's HTTP client to its engines: aiohttp's connection pool behind three calls (a unary POST, a
streamed POST, a health GET), its failures sorted into the three kinds the gateway acts on.

Not httpx: its pool checks every idle connection for readability on each request (a syscall each) and its
request/response models cost about as much again; at a thousand requests a second that was most of the
gateway's CPU. The kinds: `refused` (nothing listens: try another upstream), `dropped` (a connection closed or
reset), `timeout` (the engine went silent while working on it: no retry).

A request that fails `dropped` on a pooled connection is sent once more, here and only here, on a fresh
connection: the engine may have closed the idle connection (vLLM does after an unhandled error) without being
down. What a caller sees is the outcome of the retry.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal, TypeVar

import aiohttp

log = logging.getLogger("quantserve.serve.upstream_client")
_R = TypeVar("_R")

FailureKind = Literal["refused", "dropped", "timeout"]
HealthAnswer = Literal["up", "down", "timeout"]  # down: refused, dropped or not 200; timeout: no answer in time


class UpstreamFailure(Exception):
    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _failure(err: BaseException) -> UpstreamFailure:
    detail = f"{type(err).__name__}: {err}"
    if isinstance(err, aiohttp.ClientConnectorError) and not isinstance(err, aiohttp.ClientSSLError):
        return UpstreamFailure("refused", detail)
    if isinstance(err, TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamFailure("timeout", detail)
    return UpstreamFailure("dropped", detail)


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
                 max_connections: int = 0, fresh: bool = False) -> None:
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
        self._session: aiohttp.ClientSession | None = None

    def fresh(self) -> UpstreamClient:
        return UpstreamClient(self._api_key, self._read_timeout_s, self._connect_timeout_s, fresh=True)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: a session binds to the running event loop
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0,
                                             force_close=self._fresh)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                                  timeout=self._timeout, skip_auto_headers=("User-Agent",))
        return self._session

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        """A unary POST: the status and the whole body."""
        async def send(client: UpstreamClient) -> tuple[int, bytes]:
            try:
                async with client._get_session().post(url, data=body, headers=client._headers) as response:
                    return response.status, await response.read()
            except _FAILURES as err:
                raise _failure(err) from None

        async def once_more(fresh: UpstreamClient) -> tuple[int, bytes]:
            try:
                return await send(fresh)
            finally:
                await fresh.close()

        return await self._with_retry(url, send, once_more)

    async def open_stream(self, url: str, body: bytes) -> UpstreamStream:
        """A streamed POST, open once its status line arrived; the caller reads and closes it."""
        async def send(client: UpstreamClient) -> UpstreamStream:
            try:
                response = await client._get_session().post(url, data=body, headers=client._headers)
            except _FAILURES as err:
                raise _failure(err) from None
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
            if failure.kind != "dropped" or self._fresh:
                raise
            log.info("%s: %s on a pooled connection; retrying on a fresh one", url, failure.detail)
        return await once_more(self.fresh())

    async def health(self, url: str, timeout_s: float) -> HealthAnswer:
        try:
            async with self._get_session().get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                await response.read()
                return "up" if response.status == 200 else "down"
        except _FAILURES as err:
            return "timeout" if _failure(err).kind == "timeout" else "down"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
