"""Forwarding a generation request to the engine that serves its model, streamed or not.

The request is read and checked (size, JSON, schema, model, key limits), admitted to an upstream slot, then
sent on one pooled httpx client. Streams are relayed event by event as they arrive; the slot, the upstream
connection and the accounting are released in one place however the stream ends (done, engine died, client
left). A client that leaves while its request waits for a slot or for a unary answer is let go at once.

A connection that fails before anything was relayed is tried once more on a fresh connection: a pooled one
may have been closed by the engine (vLLM closes it after an unhandled error) without the engine being down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from quantserve.serve.accounting import Accounting, RequestRecord
from quantserve.serve.auth import Authenticator
from quantserve.serve.errors import OpenAIError, from_upstream
from quantserve.serve.limits import RateLimiter
from quantserve.serve.protocol import T, parse_body
from quantserve.serve.sse import EventSplitter, inspect_event
from quantserve.serve.timing import OVERHEAD_HEADER, ms
from quantserve.serve.upstreams import ModelPool, Upstream

log = logging.getLogger("quantserve.serve.serving")

CLIENT_CLOSED = 499  # nginx's convention, for the ledger: the client left before the answer was complete
_UPSTREAM_HEADERS = {"content-type": "application/json", "accept-encoding": "identity"}
_R = TypeVar("_R")


class ClientGone(Exception):
    pass


def _retryable(err: httpx.TransportError) -> bool:
    """A dropped or reset connection: the engine may never have seen the request. Not a refusal (the engine is
    not listening) and not a timeout (the engine was working on it)."""
    return isinstance(err, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OpenAIError(413, f"request body is {declared} bytes; the limit is {limit}",
                          code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked uploads declare no length: count as it comes
            raise OpenAIError(413, f"request body exceeds the {limit}-byte limit", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


class ProxyService:
    def __init__(
        self,
        client: httpx.AsyncClient,
        pools: dict[str, ModelPool],
        accounting: Accounting,
        authenticator: Authenticator,
        limiter: RateLimiter,
        max_body_bytes: int,
        log_prompts: bool = False,
        default_reserved_tokens: int = 256,
    ) -> None:
        self.client = client
        self.pools = pools
        self.accounting = accounting
        self.authenticator = authenticator
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.log_prompts = log_prompts
        self.default_reserved_tokens = default_reserved_tokens

    async def handle(self, request: Request, rec: RequestRecord, schema: type[T]) -> Response:
        rec.key = await self.authenticator.authenticate(request.headers.get("authorization"))
        rec.authenticated = True
        raw = await read_body(request, self.max_body_bytes)
        parsed, payload = parse_body(raw, schema)
        pool = self.pools.get(parsed.model)
        if pool is None:
            raise OpenAIError(404, f"The model '{parsed.model[:200]}' does not exist here; GET /v1/models "
                              "lists the served ones", type="invalid_request_error", param="model",
                              code="model_not_found")
        rec.model = parsed.model
        rec.stream = bool(parsed.stream)
        if self.log_prompts:
            rec.prompt_text = parsed.prompt_text()
        if rec.key is not None:
            # the prompt's tokens are not known before the engine counts them: ~4 bytes a token over-reserves
            reserve = math.ceil(len(raw) / 4) + parsed.reserved_tokens(self.default_reserved_tokens)
            refused = self.limiter.admit(rec.key.id, rec.key.rpm, rec.key.tpm, reserve)
            if refused is not None:
                limit = rec.key.rpm if refused.limit == "requests" else rec.key.tpm
                headers = {"Retry-After": str(refused.retry_after_s)} if refused.retry_after_s else {}
                raise OpenAIError(429, refused.message(limit or 0), code="rate_limit_exceeded", headers=headers)
            rec.reserved_tokens = reserve if rec.key.tpm is not None else 0
        strip_usage = False
        body = raw
        if rec.stream:
            options = parsed.stream_options
            if not (options is not None and options.include_usage):
                # Ask the engine for the usage chunk so the ledger gets exact counts; the client did not
                # ask for it, so it is removed from what the client sees.
                payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
                body = json.dumps(payload).encode()
                strip_usage = True
        watcher = _DisconnectWatcher(request)
        try:
            return await self._forward(rec, pool, body, strip_usage, watcher)
        finally:
            watcher.stop()

    async def _forward(self, rec: RequestRecord, pool: ModelPool, body: bytes, strip_usage: bool,
                       watcher: _DisconnectWatcher) -> Response:
        # A refused connection means nothing reached that upstream, so another healthy one may take the
        # request.
        tries = max(1, len(pool.upstreams))
        for attempt in range(tries):
            may_try_another = attempt + 1 < tries
            queued_from = time.perf_counter()
            try:
                upstream = await watcher.race(pool.acquire(), on_late_result=pool.release)
            except ClientGone:
                return self._client_gone(rec)
            rec.queue_s += time.perf_counter() - queued_from
            if rec.stream:
                relay = _StreamRelay(self.client, pool, upstream, rec, self.accounting, strip_usage)
                try:
                    await relay.open(body)
                except BaseException as err:
                    rec.status = CLIENT_CLOSED if isinstance(err, asyncio.CancelledError) else 500
                    await relay.close()
                    raise
                if relay.error is None:
                    watcher.stop()  # from here the streaming response listens for the client leaving
                    rec.overhead_s = relay.overhead_s()
                    return _RelayResponse(relay.events(), on_close=relay.close, media_type="text/event-stream",
                                          headers={"cache-control": "no-cache", "x-accel-buffering": "no",
                                                   OVERHEAD_HEADER: ms(rec.overhead_s)})
                await relay.close()  # frees the slot; the error is accounted where it is handled
                if relay.refused and may_try_another and pool.ready():
                    continue
                raise relay.error
            try:
                return await self._unary(rec, pool, upstream, body, watcher)
            except _Refused as refused:
                if may_try_another and pool.ready():
                    continue
                raise refused.error from None
            finally:
                pool.release(upstream)
        raise AssertionError("unreachable: the last try returns or raises")

    def _client_gone(self, rec: RequestRecord) -> Response:
        rec.status = CLIENT_CLOSED
        self.accounting.finish(rec)
        return Response(status_code=CLIENT_CLOSED)

    async def _unary(self, rec: RequestRecord, pool: ModelPool, upstream: Upstream, body: bytes,
                     watcher: _DisconnectWatcher) -> Response:
        url = f"{upstream.base_url}{rec.endpoint}"
        sent = time.perf_counter()
        try:
            try:
                reply = await watcher.race(self.client.post(url, content=body, headers=_UPSTREAM_HEADERS))
            except httpx.TransportError as err:
                if not _retryable(err):
                    raise
                log.info("%s: %s on a pooled connection; retrying on a fresh one", url, type(err).__name__)
                async with fresh_client(self.client) as client:
                    reply = await watcher.race(client.post(url, content=body, headers=_UPSTREAM_HEADERS))
        except ClientGone:
            return self._client_gone(rec)
        except httpx.ConnectError as err:
            raise _Refused(transport_failure(pool, upstream, err)) from None
        except httpx.TransportError as err:
            raise transport_failure(pool, upstream, err) from None
        received = time.perf_counter()
        if reply.status_code >= 400:
            raise from_upstream(reply.status_code, reply.content)
        try:
            data = reply.json()
        except ValueError:
            data = None
        usage = (data.get("usage") if isinstance(data, dict) else None) or {}
        rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        rec.completion_tokens = int(usage.get("completion_tokens") or 0)
        rec.status = reply.status_code
        rec.overhead_s = (sent - rec.started - rec.queue_s) + (time.perf_counter() - received)
        self.accounting.finish(rec)
        return Response(reply.content, status_code=reply.status_code, media_type="application/json",
                        headers={OVERHEAD_HEADER: ms(rec.overhead_s)})


def fresh_client(pooled: httpx.AsyncClient) -> httpx.AsyncClient:
    """A one-connection client with the pooled one's settings, for the single retry."""
    return httpx.AsyncClient(timeout=pooled.timeout, headers=pooled.headers, trust_env=False,
                             limits=httpx.Limits(max_connections=1, max_keepalive_connections=0))


class _Refused(Exception):
    """The upstream refused the connection: the request never reached it."""

    def __init__(self, error: OpenAIError) -> None:
        super().__init__(error.message)
        self.error = error


def transport_failure(pool: ModelPool, upstream: Upstream, err: httpx.TransportError) -> OpenAIError:
    if isinstance(err, httpx.TimeoutException):
        return OpenAIError(504, "the model engine did not answer in time", code="upstream_timeout")
    pool.suspect(upstream)  # marked down only if its /health agrees
    if isinstance(err, httpx.ConnectError):
        return OpenAIError(503, f"model '{pool.name}' engine is not reachable; retry shortly",
                           code="engine_unavailable", headers={"Retry-After": "5"})
    return OpenAIError(502, "the model engine dropped the connection", code="upstream_error")


class _StreamRelay:
    """One streamed request's upstream response and bookkeeping; `close()` is idempotent, does all cleanup."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        pool: ModelPool,
        upstream: Upstream,
        rec: RequestRecord,
        accounting: Accounting,
        strip_usage: bool,
    ) -> None:
        self.client = client
        self.pool = pool
        self.upstream = upstream
        self.rec = rec
        self.accounting = accounting
        self.strip_usage = strip_usage
        self.response: httpx.Response | None = None
        self.error: OpenAIError | None = None
        self.refused = False  # the connection was refused: safe to try another upstream
        self.saw_usage = False
        self.done = False  # [DONE] went out
        self.chunks_with_choices = 0
        self._closed = False
        self._own_client: httpx.AsyncClient | None = None  # the fresh connection of a retry, closed with us
        self._sent = self._received = 0.0

    def overhead_s(self) -> float:
        """Gateway time up to the response headers, less the slot queue and the engine's own time."""
        return (self._sent - self.rec.started - self.rec.queue_s) + (time.perf_counter() - self._received)

    async def open(self, body: bytes) -> None:
        url = f"{self.upstream.base_url}{self.rec.endpoint}"
        self._sent = time.perf_counter()
        try:
            try:
                request = self.client.build_request("POST", url, content=body, headers=_UPSTREAM_HEADERS)
                self.response = await self.client.send(request, stream=True)
            except httpx.TransportError as err:
                if not _retryable(err):
                    raise
                log.info("%s: %s on a pooled connection; retrying on a fresh one", url, type(err).__name__)
                self._own_client = fresh_client(self.client)
                request = self._own_client.build_request("POST", url, content=body, headers=_UPSTREAM_HEADERS)
                self.response = await self._own_client.send(request, stream=True)
        except httpx.TransportError as err:
            self.error = transport_failure(self.pool, self.upstream, err)
            self.refused = isinstance(err, httpx.ConnectError)
            return
        self._received = time.perf_counter()
        if self.response.status_code >= 400:
            # An error before the first event is a plain JSON error, as from OpenAI: e.g. vLLM's 400 for a
            # prompt over the context length.
            payload = await self.response.aread()
            self.error = from_upstream(self.response.status_code, payload)

    async def events(self) -> AsyncIterator[bytes]:
        assert self.response is not None
        rec = self.rec
        splitter = EventSplitter()
        try:
            async for chunk in self.response.aiter_raw():
                for event in splitter.feed(chunk):
                    info = inspect_event(event)
                    if info.usage is not None:
                        self.saw_usage = True
                        rec.prompt_tokens = int(info.usage.get("prompt_tokens") or 0)
                        rec.completion_tokens = int(info.usage.get("completion_tokens") or 0)
                    if info.error is not None:
                        rec.status = _status_of(info.error)
                        if rec.status >= 500:  # the engine's own words may carry internals: say it plainly
                            rec.error_type = "server_error"
                            yield OpenAIError(502, "the model engine failed mid-response",
                                              code="upstream_error").sse_event()
                            continue
                    if info.has_choices:
                        self.chunks_with_choices += 1
                    if info.is_done:
                        self.done = True
                    if info.usage_only and self.strip_usage:
                        continue
                    if info.is_data and rec.ttft_s is None:
                        rec.ttft_s = time.perf_counter() - rec.started
                    yield event + b"\n\n"
            tail = splitter.rest()
            if tail.strip():
                yield tail
        except httpx.TransportError as err:
            # Headers are out, so the status cannot change: the client learns from an error event instead.
            failure = transport_failure(self.pool, self.upstream, err)
            failure.message = f"{failure.message}; the response above is incomplete"
            rec.status = failure.status
            rec.error_type = failure.type
            log.warning("stream from %s broke: %s: %s", self.upstream.base_url, type(err).__name__, err)
            yield failure.sse_event()
        except (asyncio.CancelledError, GeneratorExit):
            if not self.done:  # clients (openai's among them) may hang up right after [DONE]: that is complete
                rec.status = CLIENT_CLOSED
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded: this runs while the request task is being cancelled (client gone) and must still finish.
        with anyio.CancelScope(shield=True):
            try:
                if self.response is not None:
                    # closing mid-body drops the connection, which makes vLLM abort the request
                    await self.response.aclose()
                if self._own_client is not None:
                    await self._own_client.aclose()
            finally:
                self.pool.release(self.upstream)
                rec = self.rec
                if self.error is None:  # an error raised before the stream is accounted by the handler
                    if not self.saw_usage and self.chunks_with_choices:
                        rec.completion_tokens = self.chunks_with_choices  # no usage chunk: a token per chunk
                    self.accounting.finish(rec)


class _RelayResponse(StreamingResponse):
    """A StreamingResponse whose cleanup runs however the response ends, even if its body was never read."""

    def __init__(
        self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


class _DisconnectWatcher:
    """Notices the client leaving while the gateway waits (for a slot, for a unary answer), so the wait ends
    at once: the slot queue moves on and the engine aborts the request when its connection closes."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._task: asyncio.Task[None] | None = None

    async def race(self, work: Awaitable[_R], on_late_result: Callable[[_R], None] | None = None) -> _R:
        if self._task is None:
            self._task = asyncio.ensure_future(self._disconnected())
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task, self._task}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        if task in done:
            return task.result()
        task.cancel()
        try:
            result = await task
        except (asyncio.CancelledError, Exception):
            pass
        else:  # it finished as it was being cancelled: give back what it took
            if on_late_result is not None:
                on_late_result(result)
        raise ClientGone()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _disconnected(self) -> None:
        while True:
            message = await self._request.receive()
            if message["type"] == "http.disconnect":
                return


def _status_of(error: dict[str, Any]) -> int:
    code = error.get("code")
    return code if isinstance(code, int) and 400 <= code < 600 else 500
