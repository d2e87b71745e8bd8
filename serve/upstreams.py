"""Where a model's requests go: its upstream vLLM servers, their health, and admission (slots, queue, 429).

Each model has one or more upstreams (local engines or external servers). A request takes a slot on a healthy
upstream with room, picked round-robin; when all are full it waits in a bounded FIFO queue for a bounded time;
past that it gets 429 at once. With no healthy upstream it gets 503 at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable

from quantserve.serve.errors import OpenAIError
from quantserve.serve.metrics import GatewayMetrics
from quantserve.serve.upstream_client import UpstreamClient

log = logging.getLogger("quantserve.serve.upstreams")


class Upstream:
    def __init__(self, model: str, base_url: str, max_in_flight: int) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.healthy = False
        self.health_timeouts = 0  # /health timeouts in a row

    def has_room(self) -> bool:
        return self.healthy and self.in_flight < self.max_in_flight

    def __repr__(self) -> str:
        return f"Upstream({self.model} @ {self.base_url}, healthy={self.healthy}, in_flight={self.in_flight})"


class ModelPool:
    def __init__(
        self,
        name: str,
        upstreams: list[Upstream],
        max_queue: int,
        queue_timeout_s: float,
        metrics: GatewayMetrics | None = None,
        runtime: str | None = None,
    ) -> None:
        self.name = name
        self.runtime = runtime  # what its local engines run (vllm, llama.cpp, openvino); None: external servers
        self.upstreams = upstreams
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.metrics = metrics
        self._next = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # set by HealthMonitor: a request that saw a transport failure asks for a /health check now
        self.on_suspect: Callable[[ModelPool, Upstream], None] | None = None
        if metrics is not None:
            for upstream in upstreams:
                metrics.engine_up.labels(name, upstream.base_url).set(0)

    def ready(self) -> bool:
        return any(u.healthy for u in self.upstreams)

    def in_flight(self) -> int:
        return sum(u.in_flight for u in self.upstreams)

    async def acquire(self) -> Upstream:
        if not self._waiters:  # no overtaking: a free slot goes to whoever waited longest
            picked = self._pick()
            if picked is not None:
                return self._take(picked)
        if not self.ready():
            raise self._unavailable()
        if len(self._waiters) >= self.max_queue:
            raise self._overloaded()
        return await self._wait_for_slot()

    def release(self, upstream: Upstream) -> None:
        upstream.in_flight -= 1
        self._gauges()
        self._wake(1)

    def set_health(self, upstream: Upstream, healthy: bool) -> None:
        if upstream.healthy == healthy:
            return
        upstream.healthy = healthy
        log.log(logging.INFO if healthy else logging.WARNING, "%s upstream %s is %s", self.name,
                upstream.base_url, "up" if healthy else "DOWN")
        if self.metrics is not None:
            self.metrics.engine_up.labels(self.name, upstream.base_url).set(1 if healthy else 0)
        # up: waiters can take the new room; down: waiters re-check and fail fast if nothing is left
        self._wake(len(self._waiters))

    def suspect(self, upstream: Upstream) -> None:
        """A request's connection failed. One failure does not say the engine is down (vLLM closes a connection
        after some errors; a pooled connection can go stale): only a failed /health marks it down."""
        if self.on_suspect is not None:
            self.on_suspect(self, upstream)

    def _pick(self) -> Upstream | None:
        count = len(self.upstreams)
        for offset in range(count):
            candidate = self.upstreams[(self._next + offset) % count]
            if candidate.has_room():
                self._next = (self._next + offset + 1) % count
                return candidate
        return None

    def _take(self, upstream: Upstream) -> Upstream:
        upstream.in_flight += 1
        self._gauges()
        return upstream

    async def _wait_for_slot(self) -> Upstream:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        self._gauges()
        taken: Upstream | None = None
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                while True:
                    await waiter
                    picked = self._pick()
                    if picked is not None:
                        taken = self._take(picked)
                        return taken
                    if not self.ready():
                        raise self._unavailable()
                    waiter = loop.create_future()
                    self._waiters.appendleft(waiter)  # keep its place at the head of the queue
        except TimeoutError:
            raise self._overloaded() from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif taken is None and waiter.done() and not waiter.cancelled():
                self._wake(1)  # we were woken but leave without the slot: pass the wake-up on
            self._gauges()

    def _wake(self, count: int) -> None:
        while count > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.in_flight.labels(self.name).set(self.in_flight())
            self.metrics.queued.labels(self.name).set(len(self._waiters))

    def _unavailable(self) -> OpenAIError:
        return OpenAIError(503, f"model '{self.name}' has no running engine right now; retry shortly",
                           code="engine_unavailable", headers={"Retry-After": "5"})

    def _overloaded(self) -> OpenAIError:
        return OpenAIError(429, f"model '{self.name}' is overloaded: all engine slots and the wait queue are "
                           "full; retry shortly", code="server_overloaded", headers={"Retry-After": "1"})


class HealthMonitor:
    """Polls each upstream's /health. Requests also report failures at once through ModelPool.set_health.

    A refused connection or a non-200 answer takes an upstream out at once; a timeout only when `timeouts_down`
    come in a row, because an engine busy with a full batch can answer /health late (on a slow CPU, OpenVINO's
    batched step held the GIL past a 1.5 s timeout with 48 requests in flight) and taking it out would turn a busy
    engine into 503s for every client. A hung engine still goes out, after about timeouts_down x timeout_s."""

    def __init__(self, pools: dict[str, ModelPool], client: UpstreamClient, interval_s: float,
                 timeout_s: float = 5.0, timeouts_down: int = 3) -> None:
        self.pools = pools
        self.client = client
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.timeouts_down = timeouts_down
        self._task: asyncio.Task[None] | None = None
        self._checks: dict[str, asyncio.Task[None]] = {}  # on-demand checks in flight, by upstream URL
        for pool in pools.values():
            pool.on_suspect = self.check_soon

    def check_soon(self, pool: ModelPool, upstream: Upstream) -> None:
        """Check one upstream now rather than at the next poll; one check at a time per upstream."""
        running = self._checks.get(upstream.base_url)
        if running is not None and not running.done():
            return
        self._checks[upstream.base_url] = asyncio.create_task(self._check(pool, upstream),
                                                              name=f"health-{upstream.base_url}")

    def engine_state(self, base_url: str, up: bool) -> None:
        """The engine supervisor's word: a crashed engine is down at once, without waiting for a poll; one
        that came back is checked now."""
        for pool in self.pools.values():
            for upstream in pool.upstreams:
                if upstream.base_url == base_url.rstrip("/"):
                    if up:
                        self.check_soon(pool, upstream)
                    else:
                        pool.set_health(upstream, False)

    async def poll_once(self) -> None:
        checks = [self._check(pool, up) for pool in self.pools.values() for up in pool.upstreams]
        await asyncio.gather(*checks)

    async def _check(self, pool: ModelPool, upstream: Upstream) -> None:
        answer = await self.client.health(f"{upstream.base_url}/health", timeout_s=self.timeout_s)
        if answer == "timeout":
            upstream.health_timeouts += 1
            if upstream.health_timeouts < self.timeouts_down:
                log.info("%s upstream %s: /health timed out (%d in a row); kept in while it may be busy",
                         pool.name, upstream.base_url, upstream.health_timeouts)
                return
        else:
            upstream.health_timeouts = 0
        pool.set_health(upstream, answer == "up")

    async def start(self) -> None:
        await self.poll_once()
        self._task = asyncio.create_task(self._run(), name="upstream-health")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._checks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll_once()
            except Exception:  # a bug in one poll must not end health checking for good
                log.exception("health poll failed")
