"""Local vLLM OpenAI servers supervised: readiness wait, smoke test, restart with backoff, clean stop.

Each engine runs in its own session (process group) because vLLM forks workers; stopping or killing the group
is the only way to leave no orphan holding gigabytes of RAM and a port. The command line comes from
vllm_command.py, the process plumbing from processes.py.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import httpx

from quantserve.errors import UserError
from quantserve.paths import state_dir
from quantserve.serve.processes import die_with_parent, kill_group, terminate_group
from quantserve.serve.vllm_command import EngineSpec

log = logging.getLogger("quantserve.serve.engines")


class EngineState(StrEnum):
    STARTING = "starting"
    UP = "up"
    DOWN = "down"  # crashed; a restart is pending
    FAILED = "failed"  # never came up: a configuration problem, not retried
    STOPPED = "stopped"


class Engine:
    """One supervised vLLM server. `start()` returns at once; `wait_ready()` blocks until /health answers."""

    def __init__(self, spec: EngineSpec, log_dir: Path | None = None,
                 on_state: Callable[[Engine, EngineState], None] | None = None) -> None:
        self.spec = spec
        self.log_path = (log_dir or state_dir() / "logs") / f"engine-{spec.name}-{spec.port}.log"
        self.state = EngineState.STOPPED
        self.restarts = 0
        self.last_exit_code: int | None = None
        self._on_state = on_state
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._first_outcome = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def pid(self) -> int | None:
        """Leader pid, which is also the process-group id (each engine starts its own session)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, name=f"engine-{self.spec.label}", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = timeout if timeout is not None else self.spec.settings.startup_timeout_s
        if not self._first_outcome.wait(timeout):
            raise UserError(f"engine {self.spec.label} not ready after {timeout:.0f} s; see {self.log_path}")
        if self.state is EngineState.FAILED:
            raise UserError(f"engine {self.spec.label} failed to start: {self.failure_summary()} "
                            f"(full log: {self.log_path})")

    def stop(self) -> None:
        self._stop.set()
        self._terminate_group()
        if self._thread is not None:
            self._thread.join(timeout=self.spec.settings.stop_timeout_s + 10)
        self._set_state(EngineState.STOPPED)

    def failure_summary(self) -> str:
        """One line on why the first start failed, for warnings and errors."""
        tail = self.log_tail(200).splitlines()
        notes = [ln.removeprefix("==== quantserve: ") for ln in tail if ln.startswith("==== quantserve: ")]
        errors = [ln.strip() for ln in tail if "Error" in ln or "error:" in ln.lower()]
        if notes:
            return notes[-1][:400]
        code = f"exit code {self.last_exit_code}" if self.last_exit_code is not None else "did not come up"
        return f"{code}; {errors[-1][:300]}" if errors else code

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # --- supervision thread -------------------------------------------------------------------------------

    def _supervise(self) -> None:
        s = self.spec.settings
        backoff = s.restart_backoff_s
        first = True
        while not self._stop.is_set():
            started = time.monotonic()
            self._spawn()
            ready = self._await_ready(s.startup_timeout_s)
            if self._stop.is_set():
                break
            if not ready:
                self._terminate_group()
                if first:
                    self._set_state(EngineState.FAILED)
                    self._first_outcome.set()
                    return
                self._set_state(EngineState.DOWN)
            else:
                log.info("engine %s up in %.0f s (%s)", self.spec.label, time.monotonic() - started,
                         self.spec.vllm_dtype)
                self._set_state(EngineState.UP)
                first = False
                self._first_outcome.set()
                up_since = time.monotonic()
                assert self._proc is not None
                code = self._proc.wait()
                if self._stop.is_set():
                    break
                self.last_exit_code = code
                self._set_state(EngineState.DOWN)
                kill_group(self._proc, signal.SIGKILL)  # workers outliving their leader would hold the port and RAM
                if time.monotonic() - up_since > s.healthy_reset_s:
                    backoff = s.restart_backoff_s
                log.warning("engine %s exited with code %s; restarting in %.1f s",
                            self.spec.label, code, backoff)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, s.restart_backoff_max_s)
            self.restarts += 1
        self._first_outcome.set()

    def _spawn(self) -> None:
        self._set_state(EngineState.STARTING)
        cmd = self.spec.command()
        with open(self.log_path, "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(cmd)}\n".encode())
            out.flush()
            with self._lock:
                if self._stop.is_set():
                    return
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env=self.spec.environment(), start_new_session=True, preexec_fn=die_with_parent,
                )
        log.info("engine %s starting on %s (pid %s, log %s)", self.spec.label, self.url, self._proc.pid,
                 self.log_path)

    def _await_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline and not self._stop.is_set():
                proc = self._proc
                if proc is None or proc.poll() is not None:
                    self.last_exit_code = proc.returncode if proc is not None else None
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return self._smoke_test(client, deadline)
                self._stop.wait(0.5)
        return False

    def _smoke_test(self, client: httpx.Client, deadline: float) -> bool:
        """One generated token before the engine counts as up.

        /health only says the server started. Some checkpoints load fine and then crash the engine at the first
        forward pass (INT4 kernels on a CPU without them): that must show at startup, not at a user's request.
        """
        if not self.spec.settings.smoke_test:
            return True
        body = {"model": self.spec.name, "prompt": "Hello", "max_tokens": 1, "temperature": 0.0}
        try:
            reply = client.post(f"{self.url}/v1/completions", json=body, headers=self.spec.auth_headers(),
                                timeout=max(5.0, deadline - time.monotonic()))
        except httpx.HTTPError as err:
            self._note(f"smoke test: no answer to a 1-token completion ({type(err).__name__})")
            return False
        if reply.status_code != 200:
            self._note(f"smoke test: a 1-token completion got HTTP {reply.status_code}: {reply.text[:300]}")
            return False
        return True

    def _note(self, line: str) -> None:
        with open(self.log_path, "a") as out:
            out.write(f"==== quantserve: {line}\n")

    def _set_state(self, state: EngineState) -> None:
        if state is self.state:
            return
        self.state = state
        if self._on_state is not None:
            self._on_state(self, state)

    def _terminate_group(self) -> None:
        with self._lock:
            proc = self._proc
        terminate_group(proc, self.spec.settings.stop_timeout_s, f"engine {self.spec.label}")


class EngineGroup:
    """All local engines of one stack: started together, stopped together."""

    def __init__(self, specs: list[EngineSpec], log_dir: Path | None = None,
                 on_state: Callable[[Engine, EngineState], None] | None = None) -> None:
        """`on_state` is called from each engine's supervisor thread on every state change."""
        self.engines = [Engine(spec, log_dir, on_state) for spec in specs]

    def start(self, timeout: float | None = None, optional: frozenset[str] = frozenset()) -> dict[str, str]:
        """Start all and wait for all. An engine of a model in `optional` that fails to start is dropped and
        reported in the returned {model: reason}; any other failure stops everything and raises."""
        for engine in self.engines:
            engine.start()
        dropped: dict[str, str] = {}
        try:
            for engine in list(self.engines):
                try:
                    engine.wait_ready(timeout)
                except UserError:
                    if engine.spec.name not in optional or engine.state is not EngineState.FAILED:
                        raise
                    dropped[engine.spec.name] = engine.failure_summary()
                    engine.stop()
                    self.engines.remove(engine)
        except BaseException:
            self.stop()
            raise
        return dropped

    def stop(self) -> None:
        # SIGTERM to all first so they shut down in parallel, then wait for each.
        threads = [threading.Thread(target=engine.stop) for engine in self.engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def for_model(self, name: str) -> list[Engine]:
        return [e for e in self.engines if e.spec.name == name]
