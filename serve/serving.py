"""Forwarding a generation request to the engine that serves its model, streamed or not.

The request is read and checked (size, JSON, schema, model, key limits), admitted to an upstream slot, then
sent on one pooled httpx client. Streams are relayed event by event as they arrive; the slot, the upstream
connection and the accounting are released in one place however the stream ends (done, engine died, client
left).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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
from quantserve.serve.upstreams import ModelPool, Upstream

log = logging.getLogger("quantserve.serve.serving")

CLIENT_CLOSED = 499  # nginx's convention, for the ledger: the client left before the answer was complete
_UPSTREAM_HEADERS = {"content-type": "application/json", "accept-encoding": "identity"}


class ClientGone(Exception):
    pass


class _Refused(Exception):
    """The upstream refused the connection: the request never reached it."""

    def __init__(self, error: OpenAIError) -> None:
        super().__init__(error.message)
        self.error = error


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
    ) -> None:
        self.client = client
        self.pools = pools
        self.accounting = accounting
        self.authenticator = authenticator
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.log_prompts = log_prompts

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
            refused = self.limiter.admit(rec.key.id, rec.key.rpm, rec.key.tpm)
            if refused is not None:
                limit = rec.key.rpm if refused.limit == "requests" else rec.key.tpm
                raise OpenAIError(429, refused.message(limit or 0), code="rate_limit_exceeded",
                                  headers={"Retry-After": str(refused.retry_after_s)})
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
        return await self._forward(request, rec, pool, body, strip_usage)

    async def _forward(
        self, request: Request, rec: RequestRecord, pool: ModelPool, body: bytes, strip_usage: bool
    ) -> Response:
        # A refused connection means nothing reached that upstream, so another healthy one may take the
        # request; the refusing one is marked down on the way.
        tries = max(1, len(pool.upstreams))
        for attempt in range(tries):
            upstream = await pool.acquire()
            may_retry = attempt + 1 < tries
            if rec.stream:
                relay = _StreamRelay(self.client, pool, upstream, rec, self.accounting, strip_usage)
                try:
                    await relay.open(body)
                except BaseException as err:
                    rec.status = CLIENT_CLOSED if isinstance(err, asyncio.CancelledError) else 500
                    await relay.close()
                    raise
                if relay.error is None:
                    return _RelayResponse(relay.events(), on_close=relay.close, media_type="text/event-stream",
                                          headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
                await relay.close()  # frees the slot; the error is accounted where it is handled
                if relay.refused and may_retry and pool.ready():
                    continue
                raise relay.error
            try:
                return await self._unary(request, rec, pool, upstream, body)
            except _Refused as refused:
                if may_retry and pool.ready():
                    continue
                raise refused.error from None
            finally:
                pool.release(upstream)
        raise AssertionError("unreachable: the last try returns or raises")

    async def _unary(
        self, request: Request, rec: RequestRecord, pool: ModelPool, upstream: Upstream, body: bytes
    ) -> Response:
        try:
            reply = await _until_disconnect(request, self._post(upstream, rec.endpoint, body))
        except ClientGone:
            rec.status = CLIENT_CLOSED
            self.accounting.finish(rec)
            return Response(status_code=CLIENT_CLOSED)
        except httpx.ConnectError as err:
            raise _Refused(transport_failure(pool, upstream, err)) from None
        except httpx.TransportError as err:
            raise transport_failure(pool, upstream, err) from None
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
        self.accounting.finish(rec)
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")

    async def _post(self, upstream: Upstream, path: str, body: bytes) -> httpx.Response:
        return await self.client.post(f"{upstream.base_url}{path}", content=body, headers=_UPSTREAM_HEADERS)


def transport_failure(pool: ModelPool, upstream: Upstream, err: httpx.TransportError) -> OpenAIError:
    if isinstance(err, httpx.TimeoutException):
        return OpenAIError(504, "the model engine did not answer in time", code="upstream_timeout")
    pool.set_health(upstream, False)  # connection refused or reset: send nothing more until /health answers
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

    async def open(self, body: bytes) -> None:
        request = self.client.build_request(
            "POST", f"{self.upstream.base_url}{self.rec.endpoint}", content=body, headers=_UPSTREAM_HEADERS
        )
        try:
            self.response = await self.client.send(request, stream=True)
        except httpx.TransportError as err:
            self.error = transport_failure(self.pool, self.upstream, err)
            self.refused = isinstance(err, httpx.ConnectError)
            return
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


async def _until_disconnect(request: Request, work: Awaitable[httpx.Response]) -> httpx.Response:
    """Await `work`, cancelling it if the client disconnects first (the engine then aborts the request)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise ClientGone()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _status_of(error: dict[str, Any]) -> int:
    code = error.get("code")
    return code if isinstance(code, int) and 400 <= code < 600 else 500
