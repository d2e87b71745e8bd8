"""What happens when a request ends, whichever way it ends: metrics, the ledger row, the key's token charge
and one log line. Prompt text reaches the log only with `log_prompts: true`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from quantserve.serve.errors import error_type_for
from quantserve.serve.keys import ApiKey
from quantserve.serve.ledger import Ledger, UsageRecord
from quantserve.serve.limits import RateLimiter
from quantserve.serve.metrics import GatewayMetrics

log = logging.getLogger("quantserve.serve.requests")

UNKNOWN_MODEL = "unknown"  # metric label for models the gateway does not serve: user text is no label value


@dataclass
class MeteredRequest:
    """One request through the gateway as it is metered: who sent it, for which model, what it used, how it
    ended. Not eval's RequestRecord (a client-side timing of one measured request)."""

    endpoint: str
    arrived: float  # unix time, for the ledger
    started: float  # perf_counter, for durations
    stream: bool = False
    model: str | None = None  # set once the model is known to be served here
    key: ApiKey | None = None
    authenticated: bool = False  # passed the key check (or auth is off): the request belongs in the ledger
    status: int = 200
    error_type: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    prompt_text: str | None = None
    reserved_tokens: int = 0  # set aside by the key's tokens/min limit at admission, settled at finish
    queue_s: float = 0.0  # waiting for an engine slot
    overhead_s: float | None = None  # time in the gateway itself: not queued for a slot, not awaiting the engine
    # (prompt, answers) tokens set aside at admission: what a request is billed when its client left a
    # non-streamed answer the engine had started (the engine stops and reports nothing)
    estimate: tuple[int, int] = (0, 0)
    holds_key_slot: bool = False  # counts against its key's in-flight cap until it ends
    finished: bool = False

    @classmethod
    def begin(cls, endpoint: str) -> MeteredRequest:
        return cls(endpoint=endpoint, arrived=time.time(), started=time.perf_counter())


class Accounting:
    def __init__(
        self,
        metrics: GatewayMetrics,
        ledger: Ledger | None,
        limiter: RateLimiter,
        gateway_id: str,
        log_prompts: bool = False,
    ) -> None:
        self.metrics = metrics
        self.ledger = ledger
        self.limiter = limiter
        self.gateway_id = gateway_id
        self.log_prompts = log_prompts

    def finish(self, rec: MeteredRequest) -> None:
        if rec.finished:  # one owner finishes a record once; a second call is a bug, not a second row
            log.error("request record finished twice: %s %s status=%d", rec.endpoint, rec.model, rec.status)
            return
        rec.finished = True
        latency = time.perf_counter() - rec.started
        model = rec.model or UNKNOWN_MODEL
        status = str(rec.status)
        m = self.metrics
        m.requests.labels(model, rec.endpoint, status).inc()
        if rec.status >= 400:
            m.errors.labels(model, status, rec.error_type or error_type_for(rec.status)).inc()
        m.latency.labels(model, rec.endpoint).observe(latency)
        if rec.ttft_s is not None:
            m.ttft.labels(model).observe(rec.ttft_s)
        # by id: a key's name is whatever its creator typed, and /metrics may be scraped by more eyes than the DB
        key_id = rec.key.id if rec.key is not None else "none"
        if rec.prompt_tokens:
            m.prompt_tokens.labels(model, key_id).inc(rec.prompt_tokens)
        if rec.completion_tokens:
            m.completion_tokens.labels(model, key_id).inc(rec.completion_tokens)
        if rec.overhead_s is not None:
            m.overhead.labels(model).observe(rec.overhead_s)
        if rec.key is not None:
            self.limiter.settle(rec.key.id, rec.reserved_tokens, rec.prompt_tokens + rec.completion_tokens,
                                rec.key.tpm)
            rec.reserved_tokens = 0
        if self.ledger is not None and rec.authenticated:
            self.ledger.record(UsageRecord(
                ts=rec.arrived,
                key_id=rec.key.id if rec.key is not None else None,
                model=model,
                endpoint=rec.endpoint,
                stream=rec.stream,
                status=rec.status,
                prompt_tokens=rec.prompt_tokens,
                completion_tokens=rec.completion_tokens,
                ttft_ms=rec.ttft_s * 1000 if rec.ttft_s is not None else None,
                latency_ms=latency * 1000,
                gateway=self.gateway_id,
            ))
        ttft = f"{rec.ttft_s * 1000:.1f}" if rec.ttft_s is not None else "-"
        prompt = f" prompt={rec.prompt_text!r}" if self.log_prompts and rec.prompt_text else ""
        key_label = rec.key.name if rec.key is not None else "none"
        log.info("%s model=%s key=%s status=%d stream=%s tokens=%d+%d ttft_ms=%s latency_ms=%.1f%s",
                 rec.endpoint, model, key_label, rec.status, rec.stream, rec.prompt_tokens,
                 rec.completion_tokens, ttft, latency * 1000, prompt)
