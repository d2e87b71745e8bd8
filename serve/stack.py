"""ServeStack: engines plus gateway as one context manager, for `quantserve serve`, `quantserve run`, tests.

    config = build_config(variants_dir=Path("variants"), no_auth=True, port=8000)
    with ServeStack(config) as stack:
        stack.base_url            # http://127.0.0.1:8000, the gateway (append /v1 for an OpenAI client)
        stack.models              # served names
        stack.engine_url(name)    # the vLLM server itself, bypassing the gateway (send stack.engine_headers)

The gateway runs in a process of its own by default, so a caller that generates load in this process (eval,
bench) measures the gateway and not its own share of one interpreter lock. `gateway_mode="thread"` keeps it in
this process (what `quantserve serve` does; tests use it to reach the app's runtime).
"""

from __future__ import annotations

import logging
import secrets
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Literal

from quantserve.device import resolve_device
from quantserve.errors import UserError
from quantserve.paths import state_dir
from quantserve.probe import ProbeProvider
from quantserve.serve.catalog import Catalog, resolve_catalog
from quantserve.serve.config import ServeConfig
from quantserve.serve.engines import Engine, EngineGroup, EngineState
from quantserve.serve.gateway import GatewayProcess, GatewayThread, check_port, client_host
from quantserve.serve.processes import allocate_ports
from quantserve.serve.vllm_command import build_engine_specs

log = logging.getLogger("quantserve.serve.stack")


class ServeStack:
    def __init__(
        self,
        config: ServeConfig,
        *,
        gateway_mode: Literal["thread", "process"] = "process",
        log_dir: Path | None = None,
        probe: ProbeProvider | None = None,
        best_effort: bool = False,
    ) -> None:
        """`best_effort`: a model whose engine fails to start is left out with its reason (`skipped`) and the
        others go on, named or not; otherwise only variants found by scanning a folder may be left out."""
        self.config = config
        self.probe = probe
        self.best_effort = best_effort
        self.gateway_mode = gateway_mode
        self.log_dir = log_dir or state_dir() / "logs"
        self.catalog: Catalog | None = None
        self.engines: EngineGroup | None = None
        self.gateway: GatewayThread | GatewayProcess | None = None
        self.routes: dict[str, list[str]] = {}
        self.model_info: dict[str, dict[str, str | None]] = {}

    # --- lifecycle ----------------------------------------------------------------------------------------

    def __enter__(self) -> ServeStack:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if self.config.port == 0:  # "any free port", for tests and parallel runs
            self.config = self.config.model_copy(
                update={"port": allocate_ports(self.config.host, 18000, 1)[0]})
        check_port(self.config)  # before a minute of engine start-up, not after
        self.catalog = resolve_catalog(self.config, self.probe)
        for warning in self.catalog.warnings:
            log.warning("%s", warning)
        device = resolve_device(self.config.engine.device)
        if self.config.upstream_api_key is None and any(m.path is not None for m in self.catalog.models):
            # engines answer /v1 only to this key, which only the gateway holds: a local user who finds the
            # port cannot skip keys, limits and the ledger
            self.config = self.config.model_copy(update={"upstream_api_key": secrets.token_urlsafe(32)})
        specs = build_engine_specs(self.catalog.models, self.catalog.engine_settings(self.config.engine), device,
                                   avoid_ports=[self.config.port], api_key=self.config.upstream_api_key)
        self.engines = EngineGroup(specs, self.log_dir, on_state=self._engine_state)
        log.info("starting %d engine(s) on %s: %s", len(specs), device,
                 ", ".join(f"{s.label}@{s.port} ({s.vllm_dtype})" for s in specs)
                 or "none (external upstreams only)")
        for m in self.catalog.models:
            if m.path is not None:
                log.info("%s runs in %s: %s", m.name, m.dtype or "auto", m.dtype_reason)
        if self.catalog.placement and specs:
            log.info("%s", self.catalog.placement)
        optional = frozenset(m.name for m in self.catalog.models if self.best_effort or not m.required)
        dropped = self.engines.start(optional=optional)
        for name, why in dropped.items():
            message = f"skipping {name}: its engine failed to start on this machine ({why})"
            log.warning("%s", message)
            self.catalog.warnings.append(message)
            self.catalog.skipped[name] = f"its engine failed to start on this machine: {why}"
        self.catalog.models = [m for m in self.catalog.models if m.name not in dropped]
        if not self.catalog.models:
            self.engines.stop()
            raise UserError(f"nothing to serve: every engine failed to start ({'; '.join(dropped.values())})")
        self.routes = {
            m.name: [e.url for e in self.engines.for_model(m.name)] + list(m.upstreams)
            for m in self.catalog.models
        }
        self.model_info = {m.name: {"runtime": m.runtime, "format": m.format, "dtype": m.dtype,
                                    "dtype_from": m.dtype_from}
                           for m in self.catalog.models if m.path is not None}
        try:
            if self.gateway_mode == "process":
                self.gateway = GatewayProcess(self.config, self.routes, self.log_dir / "gateway.log",
                                              self.model_info)
            else:
                self.gateway = GatewayThread(self.config, self.routes, self.model_info)
            self.gateway.start()
        except BaseException:
            self.engines.stop()
            raise
        log.info("gateway on %s serving %s", self.base_url, ", ".join(self.models))

    def _engine_state(self, engine: Engine, state: EngineState) -> None:
        # from a supervisor thread: a crash reaches the gateway at once, not at its next health poll
        gateway = self.gateway
        if gateway is not None and state in (EngineState.UP, EngineState.DOWN):
            gateway.engine_state(engine.url, state is EngineState.UP)

    def stop(self) -> None:
        """Gateway first (it drains streams and flushes the ledger), then the engines. Safe to call twice."""
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        if self.engines is not None:
            self.engines.stop()
            self.engines = None

    def serve_forever(self) -> None:
        """Block until SIGINT or SIGTERM (main thread only); the caller's `with` then stops everything."""
        stop = threading.Event()

        def _on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(1.0):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # --- what callers read ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{client_host(self.config.host)}:{self.config.port}"

    @property
    def models(self) -> list[str]:
        return list(self.routes)

    @property
    def skipped(self) -> dict[str, str]:
        """Variants found but not served here, with the reason (the probe's verdict or a failed start)."""
        return dict(self.catalog.skipped) if self.catalog is not None else {}

    def engine_url(self, name: str) -> str:
        """The first upstream serving `name` directly (a local vLLM server when there is one)."""
        if name not in self.routes or not self.routes[name]:
            raise KeyError(f"no upstream serves {name}; served: {', '.join(self.routes)}")
        return self.routes[name][0]

    @property
    def engine_headers(self) -> dict[str, str]:
        """What a caller that bypasses the gateway (a benchmark of vLLM alone) must send to an engine."""
        key = self.config.upstream_api_key
        return {"authorization": f"Bearer {key}"} if key else {}

    def engine(self, name: str) -> Engine:
        """The first local engine of `name`: its pid is the process-group id, its state the supervisor's."""
        engines = self.engines.for_model(name) if self.engines is not None else []
        if not engines:
            raise KeyError(f"no local engine serves {name}")
        return engines[0]
