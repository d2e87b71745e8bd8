"""What one gateway process holds while it runs: pools, the pooled client, keys, limits, ledger, metrics."""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from quantserve.serve.accounting import Accounting, MeteredRequest
from quantserve.serve.auth import Authenticator
from quantserve.serve.config import ServeConfig
from quantserve.serve.errors import OpenAIError
from quantserve.serve.keys import KeyStore
from quantserve.serve.ledger import Ledger
from quantserve.serve.limits import RateLimiter
from quantserve.serve.metrics import GatewayMetrics
from quantserve.serve.serving import ProxyService
from quantserve.serve.upstream_client import UpstreamClient
from quantserve.serve.upstreams import HealthMonitor, ModelPool, Upstream

_KNOWN_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready",
                              "/metrics"})


class GatewayRuntime:
    def __init__(self, config: ServeConfig, routes: dict[str, list[str]],
                 model_info: dict[str, dict[str, str | None]] | None = None) -> None:
        """`routes`: served model name -> base URLs of the OpenAI servers that serve it."""
        self.config = config
        self.model_info = model_info or {}
        self.created = int(time.time())
        self.metrics = GatewayMetrics()
        overload = config.overload
        self.pools = {
            name: ModelPool(
                name,
                [Upstream(name, url, overload.max_in_flight_per_upstream) for url in urls],
                max_queue=overload.max_queue_per_upstream * max(1, len(urls)),
                queue_timeout_s=overload.queue_timeout_s,
                metrics=self.metrics,
                runtime=self.model_info.get(name, {}).get("runtime"),
            )
            for name, urls in routes.items()
        }
        database_url = config.resolved_database_url()
        db = config.database
        self.authenticator = Authenticator(KeyStore(database_url, db) if config.auth else None, config.auth,
                                           config.key_cache_ttl_s, outage_grace_s=db.outage_key_grace_s,
                                           retry_after_s=db.outage_retry_after_s)
        self.limiter = RateLimiter()
        self.ledger = Ledger(database_url, batch_size=config.ledger.batch_size,
                             flush_interval_s=config.ledger.flush_interval_s, max_queue=config.ledger.max_queue,
                             retry_interval_s=config.ledger.retry_interval_s, database=db)
        self.accounting = Accounting(self.metrics, self.ledger, self.limiter, config.gateway_id,
                                     config.log_prompts)
        self.client: UpstreamClient | None = None
        self.proxy: ProxyService
        self.health: HealthMonitor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        capacity = sum(u.max_in_flight for pool in self.pools.values() for u in pool.upstreams)
        self.client = UpstreamClient(self.config.upstream_api_key, read_timeout_s=self.config.upstream_timeout_s,
                                     max_connections=capacity + 16, keepalive_s=self.config.upstream_keepalive_s)
        self.proxy = ProxyService(self.client, self.pools, self.accounting, self.authenticator, self.limiter,
                                  self.config)
        await self.ledger.start()
        self.health = HealthMonitor(self.pools, self.client, self.config.health_interval_s,
                                    self.config.health_timeout_s, self.config.health_timeouts_down)
        await self.health.start()
        self._loop = asyncio.get_running_loop()

    def engine_state(self, base_url: str, up: bool) -> None:
        """The engine supervisor's word on one upstream (a crash, a restart), from any thread."""
        loop, health = self._loop, self.health
        if loop is None or health is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(health.engine_state, base_url, up)

    async def stop(self) -> None:
        if self.health is not None:
            await self.health.stop()
        await self.ledger.close()  # every queued usage row is written before the process ends
        if self.client is not None:
            await self.client.close()

    def on_error(self, request: Request, err: OpenAIError) -> None:
        """Counts an error answered outside a generation request's handler (which accounts for its own): a bad
        key on /v1/models, an unknown path, a method not allowed."""
        path = request.url.path
        rec = MeteredRequest.begin(path if path in _KNOWN_ENDPOINTS else "other")
        rec.status = err.status
        rec.error_type = err.type
        self.accounting.finish(rec)
