"""Running the gateway app under uvicorn: in a background thread of this process, or in a process of its own.

The thread form is what `quantserve serve` and ServeStack use by default. The process form keeps a benchmark's
client work off the gateway's interpreter lock, so a measured overhead is the gateway's and not the client's.
`python -m quantserve.serve.gateway SPEC.json` is that process's entry point.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from quantserve.errors import UserError
from quantserve.serve.app import create_app
from quantserve.serve.config import ServeConfig
from quantserve.serve.processes import die_with_parent, port_is_free

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """For the processes quantserve owns (CLI, gateway process); library callers keep their own setup."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll otherwise


ModelInfo = dict[str, dict[str, str | None]]


def _uvicorn_config(config: ServeConfig, routes: dict[str, list[str]], model_info: ModelInfo | None) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(config, routes, model_info),
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=config.access_log,
        loop=config.loop,
        http=config.http,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )


def check_port(config: ServeConfig) -> None:
    if not port_is_free(config.host, config.port):
        raise UserError(f"gateway port {config.host}:{config.port} is taken; pass --port or change port")


class GatewayThread:
    def __init__(self, config: ServeConfig, routes: dict[str, list[str]], model_info: ModelInfo | None = None) -> None:
        self.config = config
        self.server = uvicorn.Server(_uvicorn_config(config, routes, model_info))
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)

    @property
    def app(self) -> object:
        return self.server.config.app

    def start(self, timeout: float = 60.0) -> None:
        check_port(self.config)
        self.thread.start()  # uvicorn installs no signal handlers off the main thread: the owner stops it
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                where = f"{self.config.host}:{self.config.port}"
                raise UserError(f"gateway failed to start on {where}; see the log above")
            if time.monotonic() > deadline:
                self.stop()
                raise UserError(f"gateway not started after {timeout:.0f} s")
            time.sleep(0.05)

    def engine_state(self, base_url: str, up: bool) -> None:
        """Tell the gateway what the engine supervisor saw; safe from any thread."""
        runtime = getattr(getattr(self.app, "state", None), "runtime", None)
        if runtime is not None:
            runtime.engine_state(base_url, up)

    def stop(self) -> None:
        # should_exit runs uvicorn's graceful shutdown: open streams get up to 10 s, then the app's shutdown
        # flushes the ledger.
        self.server.should_exit = True
        self.thread.join(timeout=60)


class GatewayProcess:
    def __init__(self, config: ServeConfig, routes: dict[str, list[str]], log_path: Path,
                 model_info: ModelInfo | None = None) -> None:
        self.config = config
        self.routes = routes
        self.model_info = model_info or {}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._spec: Path | None = None
        self._stdin_lock = threading.Lock()

    def start(self, timeout: float = 60.0) -> None:
        check_port(self.config)
        fd, name = tempfile.mkstemp(prefix="quantserve-gateway-", suffix=".json")
        with os.fdopen(fd, "w") as out:
            json.dump({"config": self.config.model_dump(mode="json"), "routes": self.routes,
                       "model_info": self.model_info}, out)
        self._spec = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "quantserve.serve.gateway", name],
                # stdin carries the engine supervisor's state changes, a JSON line each
                stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent,  # an owner killed with SIGKILL leaves no gateway behind
            )
        url = f"http://{client_host(self.config.host)}:{self.config.port}/health"
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    code = self.proc.returncode
                    raise UserError(f"gateway process exited with {code}; see {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return
                time.sleep(0.1)
        self.stop()
        raise UserError(f"gateway process not answering after {timeout:.0f} s; see {self.log_path}")

    def engine_state(self, base_url: str, up: bool) -> None:
        """Tell the gateway process what the engine supervisor saw; safe from any thread."""
        proc = self.proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return
        line = json.dumps({"upstream": base_url, "up": up}).encode() + b"\n"
        with self._stdin_lock, contextlib.suppress(OSError, ValueError):  # the process may be exiting
            proc.stdin.write(line)
            proc.stdin.flush()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self._spec is not None:
            self._spec.unlink(missing_ok=True)


def client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    spec_path = Path(args[0])
    spec = json.loads(spec_path.read_text())
    spec_path.unlink(missing_ok=True)  # read once; nothing left in /tmp however this process ends
    config = ServeConfig(**spec["config"])
    configure_logging(config.log_level)
    server = uvicorn.Server(_uvicorn_config(config, spec["routes"], spec.get("model_info")))
    threading.Thread(target=_follow_engine_states, args=(server,), name="engine-states", daemon=True).start()
    server.run()  # uvicorn handles SIGTERM/SIGINT itself


def _follow_engine_states(server: uvicorn.Server) -> None:
    """The parent's engine supervisor writes {"upstream", "up"} lines on our stdin; EOF: the parent is gone."""
    for line in sys.stdin.buffer:
        try:
            event = json.loads(line)
            server.config.app.state.runtime.engine_state(str(event["upstream"]), bool(event["up"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            logging.getLogger("quantserve.serve.gateway").warning("bad engine-state line: %r", line[:200])


if __name__ == "__main__":
    main()
