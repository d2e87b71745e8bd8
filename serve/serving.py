"""Forwarding a generation request to the engine that serves its model, streamed or not.

The request is read and checked (size, JSON, schema, model, key limits), admitted to an upstream slot, then
sent on one pooled upstream client. Streams are relayed event by event as they arrive; the slot and the upstream
connection are released in one place however the stream ends (done, engine died, client left). A client that
leaves while its request waits for a slot or for a unary answer is let go at once.

`ProxyService.handle` owns the request's usage record: it is finished once, in its `finally` (or, for a relayed
stream, when the streamed response closes), whatever ended the request: an answer, an OpenAI error, the client
leaving or a bug.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from quantserve.serve.accounting import Accounting, MeteredRequest
from quantserve.serve.auth import Authenticator
from quantserve.serve.config import ServeConfig
from quantserve.serve.errors import OpenAIError, from_upstream
from quantserve.serve.limits import KeySlots, RateLimiter
from quantserve.serve.protocol import ChatCompletionRequest, CompletionRequest, T, parse_body
from quantserve.serve.sse import (
    EventSplitter,
    choice_index,
    inspect_event,
    strip_timings_field,
    strip_usage_field,
    usage_of,
)
from quantserve.serve.timing import OVERHEAD_HEADER, ms
from quantserve.serve.upstream_client import UpstreamClient, UpstreamFailure, UpstreamStream
from quantserve.serve.upstreams import ModelPool, Upstream

log = logging.getLogger("quantserve.serve.serving")

CLIENT_CLOSED = 499  # nginx's convention, for the ledger: the client left before the answer was complete
_PARSE_OFF_LOOP_BYTES = 256 * 1024  # JSON bodies larger than this are decoded in a worker thread
# Runtimes whose usage counts one answer per request (llama.cpp's server; our OpenVINO server generates one).
ONE_CHOICE_RUNTIMES = frozenset({"llama.cpp", "openvino"})
# Engines started here without a vision or audio encoder (llama.cpp without an mmproj file, OpenVINO's LLM
# pipeline): llama.cpp answers an image part with a 500, so the gateway says 400 first.
TEXT_ONLY_RUNTIMES = frozenset({"llama.cpp", "openvino"})
# Runtimes whose server closes the connection after every streamed answer while its headers say keep-alive
# (llama.cpp's cpp-httplib, measured: xllamacpp 2026.10). A request sent on that connection in the instant before
# the close arrives is lost after it went out, and a started request is never sent twice: so such a stream gets a
# connection of its own, not one from the pool.
CLOSES_AFTER_STREAM = frozenset({"llama.cpp"})
_R = TypeVar("_R")


class ClientGone(Exception):
    pass


def _check_fanout(parsed: ChatCompletionRequest | CompletionRequest, config: ServeConfig) -> None:
    """A request's answers are generated and held whole (and a non-streamed body read whole): bound how many."""
    choices = parsed.choices()
    if choices > config.max_choices:
        raise OpenAIError(400, f"this request asks for {choices} answers (n x best_of x prompts); the limit here is "
                          f"{config.max_choices}", param="n", code="too_many_choices")
    fanout = choices * parsed.logprob_fanout()
    if fanout > config.max_logprob_fanout:
        param = "top_logprobs" if isinstance(parsed, ChatCompletionRequest) else "logprobs"
        raise OpenAIError(400, f"{choices} answers x {parsed.logprob_fanout()} logprobs per token is {fanout}; the "
                          f"limit here is {config.max_logprob_fanout}: ask for fewer of either", param=param,
                          code="too_many_logprobs")


def _cache_salt(key_id: str, asked: object) -> str:
    """The key's own prefix-cache namespace; a salt the client sent still separates its own requests, but can
    never name another key's namespace."""
    seed = f"{key_id}\0{asked}" if isinstance(asked, str) and asked else key_id
    return "qs-" + hashlib.sha256(seed.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _UsageShown:
    """What usage the client asked to see in its stream (the engine is always asked for all of it)."""

    final: bool = False  # stream_options.include_usage: the last chunk carries the usage
    continuous: bool = False  # stream_options.continuous_usage_stats: every chunk carries the running usage
    strip_timings: bool = False  # llama.cpp's per-token timings were asked for by the gateway, not the client
    answers_per_prompt: int = 1  # n (best_of): choice i of a stream answers prompt i // answers_per_prompt


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
        client: UpstreamClient,
        pools: dict[str, ModelPool],
        accounting: Accounting,
        authenticator: Authenticator,
        limiter: RateLimiter,
        config: ServeConfig,
    ) -> None:
        self.client = client
        self.pools = pools
        self.accounting = accounting
        self.authenticator = authenticator
        self.limiter = limiter
        self.config = config
        self.key_slots = KeySlots()

    def _settle(self, rec: MeteredRequest) -> None:
        """The end of a request: its key's in-flight slot back, its usage accounted (once)."""
        if rec.holds_key_slot and rec.key is not None:
            rec.holds_key_slot = False
            self.key_slots.give_back(rec.key.id)
        self.accounting.finish(rec)

    async def handle(self, request: Request, endpoint: str, schema: type[T]) -> Response:
        """Answers one generation request and accounts for it exactly once."""
        rec = MeteredRequest.begin(endpoint)
        relayed = False
        try:
            response = await self._handle(request, rec, schema)
            if isinstance(response, _RelayResponse):
                relayed = True  # the stream is still to be relayed: it is finished when the response closes
                response.after_close(lambda: self._settle(rec))
            return response
        except OpenAIError as err:
            rec.status, rec.error_type = err.status, err.type
            return err.response()
        except asyncio.CancelledError:
            rec.status = CLIENT_CLOSED
            raise
        except Exception as err:  # a bug: the client gets a plain 500, the log the details
            log.error("unhandled error on %s: %s", endpoint, err, exc_info=err)
            failure = OpenAIError(500, "internal error in the gateway; see its log", code="internal_error")
            rec.status, rec.error_type = failure.status, failure.type
            return failure.response()
        finally:
            if not relayed:
                self._settle(rec)

    async def _handle(self, request: Request, rec: MeteredRequest, schema: type[T]) -> Response:
        rec.key = await self.authenticator.authenticate(request.headers.get("authorization"))
        rec.authenticated = True
        config = self.config
        raw = await read_body(request, config.max_body_bytes)
        if len(raw) > _PARSE_OFF_LOOP_BYTES:  # a big body would stall every other request while it is decoded
            parsed, payload = await asyncio.to_thread(parse_body, raw, schema)
        else:
            parsed, payload = parse_body(raw, schema)
        pool = self.pools.get(parsed.model)
        if pool is None:
            raise OpenAIError(404, f"The model '{parsed.model[:200]}' does not exist here; GET /v1/models "
                              "lists the served ones", type="invalid_request_error", param="model",
                              code="model_not_found")
        rec.model = parsed.model
        rec.stream = bool(parsed.stream)
        if pool.runtime in ONE_CHOICE_RUNTIMES and parsed.choices() > 1:
            raise OpenAIError(400, f"model '{parsed.model}' runs on {pool.runtime}, which generates one answer per "
                              "request here (n, best_of and a list of prompts must ask for one): its usage "
                              "counts one answer only, so the ledger could not bill the others",
                              param="n", code="unsupported_parameter")
        if pool.runtime in TEXT_ONLY_RUNTIMES and isinstance(parsed, ChatCompletionRequest):
            other = parsed.non_text_parts()
            if other:
                raise OpenAIError(400, f"model '{parsed.model}' runs on {pool.runtime} and reads text only here: "
                                  f"content parts of type {', '.join(repr(t[:40]) for t in sorted(other))} are not "
                                  "supported", param="messages", code="unsupported_content")
        _check_fanout(parsed, config)
        if config.log_prompts:
            rec.prompt_text = parsed.prompt_text()
        # the prompt's tokens are not known before the engine counts them: ~4 bytes a token over-reserves
        prompt_estimate = math.ceil(len(raw) / 4)
        # without max_tokens an engine may generate up to its context length, less the prompt (a list of prompts
        # shares the body's bytes, so the estimate is for the longest one, at most)
        per_answer = config.reserve_tokens_default or max(1, config.engine.max_model_len - prompt_estimate)
        reserve = prompt_estimate + parsed.reserved_tokens(per_answer)
        rec.estimate = (prompt_estimate, reserve - prompt_estimate)
        if rec.key is not None:
            key = rec.key
            cap = config.max_in_flight_per_key
            if not self.key_slots.has_room(key.id, cap):
                raise OpenAIError(429, f"this key has {cap} requests in flight on this gateway, its limit; wait "
                                  "for one to finish", code="too_many_requests_in_flight",
                                  headers={"Retry-After": "1"})
            refused = self.limiter.admit(key.id, key.rpm, key.tpm, reserve)
            if refused is not None:
                limit = key.rpm if refused.limit == "requests" else key.tpm
                headers = {"Retry-After": str(refused.retry_after_s)} if refused.retry_after_s else {}
                raise OpenAIError(429, refused.message(limit or 0), code="rate_limit_exceeded", headers=headers)
            rec.reserved_tokens = reserve if key.tpm is not None else 0
            self.key_slots.take(key.id)
            rec.holds_key_slot = True
            if config.cache_salt_per_key and pool.runtime in (None, "vllm"):
                payload["cache_salt"] = _cache_salt(key.id, payload.get("cache_salt"))
                raw = json.dumps(payload).encode()
        shown = _UsageShown(answers_per_prompt=parsed.answers_per_prompt())
        body = raw
        if rec.stream:
            # Ask the engine for usage on every chunk, so the ledger is exact even for a stream the client cuts
            # short; what the client did not ask for is removed from what it sees.
            asked = parsed.stream_options
            shown = _UsageShown(final=bool(asked and asked.include_usage),
                                continuous=bool(asked and asked.continuous_usage_stats),
                                answers_per_prompt=parsed.answers_per_prompt())
            options = payload.get("stream_options") or {}
            if not (shown.final and shown.continuous):
                payload["stream_options"] = {**options, "include_usage": True, "continuous_usage_stats": True}
                body = json.dumps(payload).encode()
            if pool.runtime == "llama.cpp" and not payload.get("timings_per_token"):
                # llama.cpp has no continuous usage; its running timings (prompt_n + cache_n, predicted_n) on every
                # token chunk bill a stream the client cuts short, and are removed from what the client sees
                shown = _UsageShown(shown.final, shown.continuous, strip_timings=True)  # one answer: checked above
                payload["timings_per_token"] = True
                body = json.dumps(payload).encode()
        watcher = _DisconnectWatcher(request)
        try:
            return await self._forward(rec, pool, body, shown, watcher)
        finally:
            watcher.stop()

    async def _forward(self, rec: MeteredRequest, pool: ModelPool, body: bytes, shown: _UsageShown,
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
                return self._client_gone(rec, engine_started=False)
            rec.queue_s += time.perf_counter() - queued_from
            if rec.stream:
                relay = _StreamRelay(self.client, pool, upstream, rec, shown,
                                     deadline=rec.started + self.config.request_timeout_s)
                try:
                    await relay.open(body)
                except BaseException:
                    await relay.close()
                    raise
                if relay.error is None:
                    watcher.stop()  # from here the streaming response listens for the client leaving
                    rec.overhead_s = relay.overhead_s()
                    return _RelayResponse(relay.events(), on_close=relay.close, on_stall=relay.stalled,
                                          stall_timeout_s=self.config.stall_timeout_s,
                                          media_type="text/event-stream",
                                          headers={"cache-control": "no-cache", "x-accel-buffering": "no",
                                                   OVERHEAD_HEADER: ms(rec.overhead_s)})
                await relay.close()  # frees the slot
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

    @staticmethod
    def _client_gone(rec: MeteredRequest, engine_started: bool) -> Response:
        rec.status = CLIENT_CLOSED
        if engine_started:
            # the engine stops when its connection closes and reports no usage: the client pays what it set aside
            rec.prompt_tokens, rec.completion_tokens = rec.estimate
        return Response(status_code=CLIENT_CLOSED)

    async def _unary(self, rec: MeteredRequest, pool: ModelPool, upstream: Upstream, body: bytes,
                     watcher: _DisconnectWatcher) -> Response:
        url = f"{upstream.base_url}{rec.endpoint}"
        sent = time.perf_counter()
        limit_s = rec.started + self.config.request_timeout_s - sent
        try:
            async with asyncio.timeout(limit_s):
                status, content = await watcher.race(
                    self.client.post(url, body, max_bytes=self.config.max_answer_bytes))
        except TimeoutError:
            rec.prompt_tokens, rec.completion_tokens = rec.estimate  # the engine worked until now: see _client_gone
            raise OpenAIError(504, f"the request ran past the gateway's {self.config.request_timeout_s:g} s limit",
                              code="request_timeout") from None
        except ClientGone:
            return self._client_gone(rec, engine_started=True)
        except UpstreamFailure as failure:
            error = transport_failure(pool, upstream, failure)
            if failure.kind == "refused":
                raise _Refused(error) from None
            raise error from None
        received = time.perf_counter()
        if status >= 400:
            raise from_upstream(status, content)
        try:
            # hundreds of logprobs per token make bodies of many MB: decoded off the event loop
            data = await asyncio.to_thread(json.loads, content) if len(content) > _PARSE_OFF_LOOP_BYTES \
                else json.loads(content)
        except ValueError:
            data = None
        usage = (data.get("usage") if isinstance(data, dict) else None) or {}
        rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        rec.completion_tokens = int(usage.get("completion_tokens") or 0)
        rec.status = status
        rec.overhead_s = (sent - rec.started - rec.queue_s) + (time.perf_counter() - received)
        return Response(content, status_code=status, media_type="application/json",
                        headers={OVERHEAD_HEADER: ms(rec.overhead_s)})


class _Refused(Exception):
    """The upstream refused the connection: the request never reached it."""

    def __init__(self, error: OpenAIError) -> None:
        super().__init__(error.message)
        self.error = error


def transport_failure(pool: ModelPool, upstream: Upstream, failure: UpstreamFailure) -> OpenAIError:
    if failure.kind == "timeout":
        return OpenAIError(504, "the model engine did not answer in time", code="upstream_timeout")
    if failure.kind == "too_large":
        return OpenAIError(502, f"the answer is larger than the gateway buffers ({failure.detail}); ask for it with "
                           "stream: true, or for fewer tokens, answers or logprobs", code="answer_too_large")
    pool.suspect(upstream)  # marked down only if its /health agrees
    log.warning("%s on %s: %s", failure.kind, upstream.base_url, failure.detail)
    if failure.kind == "refused":
        return OpenAIError(503, f"model '{pool.name}' engine is not reachable; retry shortly",
                           code="engine_unavailable", headers={"Retry-After": "5"})
    return OpenAIError(502, "the model engine dropped the connection", code="upstream_error")


class _StreamRelay:
    """One streamed request's upstream response and bookkeeping; `close()` is idempotent, does all cleanup."""

    def __init__(
        self,
        client: UpstreamClient,
        pool: ModelPool,
        upstream: Upstream,
        rec: MeteredRequest,
        shown: _UsageShown,
        deadline: float,
    ) -> None:
        self.client = client
        self.deadline = deadline  # perf_counter time by which the stream ends (request_timeout_s)
        self.pool = pool
        self.upstream = upstream
        self.rec = rec
        self.shown = shown
        self.response: UpstreamStream | None = None
        self.error: OpenAIError | None = None
        self.refused = False  # the connection was refused: safe to try another upstream
        self.saw_usage = False  # the final usage chunk arrived
        # per choice index, the latest token chunk carrying its running (continuous) usage: vLLM counts each
        # choice's tokens on its own chunks
        self.last_usage_events: dict[int, bytes] = {}
        self.done = False  # [DONE] went out
        self.token_chunks = 0
        self._closed = False
        self._sent = self._received = 0.0

    def overhead_s(self) -> float:
        """Gateway time up to the response headers, less the slot queue and the engine's own time."""
        return (self._sent - self.rec.started - self.rec.queue_s) + (time.perf_counter() - self._received)

    async def open(self, body: bytes) -> None:
        url = f"{self.upstream.base_url}{self.rec.endpoint}"
        self._sent = time.perf_counter()
        try:
            self.response = await self.client.open_stream(url, body, reuse=self.pool.runtime not in CLOSES_AFTER_STREAM)
            self._received = time.perf_counter()
            if self.response.status >= 400:
                # An error before the first event is a plain JSON error, as from OpenAI: e.g. vLLM's 400 for a
                # prompt over the context length.
                self.error = from_upstream(self.response.status, await self.response.read())
        except UpstreamFailure as failure:
            self.error = transport_failure(self.pool, self.upstream, failure)
            self.refused = failure.kind == "refused"

    async def events(self) -> AsyncIterator[bytes]:
        assert self.response is not None
        rec = self.rec
        splitter = EventSplitter()
        try:
            async for chunk in self.response.chunks():
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
                    if info.has_token:
                        self.token_chunks += 1
                    if info.is_done:
                        self.done = True
                    if info.usage_only and not self.shown.final:
                        continue
                    if info.carries_usage and info.has_choices:
                        self.last_usage_events[choice_index(event)] = event
                        if not self.shown.continuous:
                            event = strip_usage_field(event)
                    if self.shown.strip_timings and info.carries_timings:
                        if info.has_choices:
                            self.last_usage_events[choice_index(event)] = event
                        event = strip_timings_field(event)
                    if info.is_data and rec.ttft_s is None:
                        rec.ttft_s = time.perf_counter() - rec.started
                    yield event + b"\n\n"
                if time.perf_counter() > self.deadline and not self.done:
                    rec.status, rec.error_type = 504, "timeout_error"
                    yield OpenAIError(504, "the request ran past the gateway's time limit (request_timeout_s); "
                                      "the response above is incomplete", code="request_timeout").sse_event()
                    return
            tail = splitter.rest()
            if tail.strip():
                yield tail
        except UpstreamFailure as failure:
            # Headers are out, so the status cannot change: the client learns from an error event instead.
            error = transport_failure(self.pool, self.upstream, failure)
            error.message = f"{error.message}; the response above is incomplete"
            rec.status = error.status
            rec.error_type = error.type
            log.warning("stream from %s broke: %s", self.upstream.base_url, failure.detail)
            yield error.sse_event()
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
                    await self.response.close()
            finally:
                self.pool.release(self.upstream)
                if self.error is None and not self.saw_usage:
                    self._usage_without_final_chunk()

    def stalled(self) -> None:
        """The client read nothing for stall_timeout_s: the stream ends, its slot goes back (close)."""
        log.warning("%s for %s: the client stopped reading; stream ended", self.rec.endpoint, self.rec.model)
        self.rec.status, self.rec.error_type = CLIENT_CLOSED, "client_stalled"

    def _usage_without_final_chunk(self) -> None:
        """The stream ended before the engine's usage chunk (the client left, the engine died): each choice's last
        running usage, summed (the prompt counted once per prompt), or, from an upstream that sends none, one
        token per token chunk."""
        per_choice = {index: usage_of(event) for index, event in self.last_usage_events.items()}
        known = {index: usage for index, usage in per_choice.items() if usage is not None}
        if known:
            prompts = {index // self.shown.answers_per_prompt: int(usage.get("prompt_tokens") or 0)
                       for index, usage in sorted(known.items())}
            self.rec.prompt_tokens = sum(prompts.values())
            self.rec.completion_tokens = sum(int(usage.get("completion_tokens") or 0) for usage in known.values())
        elif self.token_chunks:
            self.rec.completion_tokens = self.token_chunks


class _Stalled(Exception):
    pass


class _RelayResponse(StreamingResponse):
    """A StreamingResponse whose cleanup runs however the response ends, even if its body was never read."""

    def __init__(
        self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], on_stall: Callable[[], None],
        stall_timeout_s: float, **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close
        self._on_stall = on_stall
        self._stall_timeout_s = stall_timeout_s
        self._after_close: Callable[[], None] | None = None

    def after_close(self, hook: Callable[[], None]) -> None:
        self._after_close = hook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_or_give_up(message: Message) -> None:
            # a client that stops reading fills the socket buffers, and then this send waits: not forever
            try:
                async with asyncio.timeout(self._stall_timeout_s):
                    await send(message)
            except TimeoutError:
                raise _Stalled() from None

        try:
            await super().__call__(scope, receive, send_or_give_up)
        except _Stalled:
            self._on_stall()  # the connection is dropped when this returns with the response incomplete
        except BaseExceptionGroup as group:  # anyio's task group may wrap it
            if group.subgroup(_Stalled) is None:
                raise
            self._on_stall()
        finally:
            try:
                await self._on_close()
            finally:
                if self._after_close is not None:
                    self._after_close()


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
