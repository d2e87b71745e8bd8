"""Engine supervision with a stand-in process (a tiny HTTP server that forks a child, as vLLM forks workers):
readiness, crash restart with backoff, clean stop with no process left in the group."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from quantserve.errors import UserError
from quantserve.serve.config import EngineSettings
from quantserve.serve.engines import Engine, EngineGroup, EngineState
from quantserve.serve.vllm_command import EngineSpec
from tests.support.serve_helpers import free_port

STAND_IN = textwrap.dedent("""
    import http.server, os, subprocess, sys, time
    port, delay, mode = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    fail = mode == "fail"
    print("stand-in engine starting", flush=True)
    if fail:
        print("ValueError: cannot load model", flush=True)
        sys.exit(3)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a 'worker'
    time.sleep(delay)

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def do_POST(self):
            if mode == "crash-on-generate":  # loads fine, dies at the first forward pass (INT4 on AVX2)
                print("RuntimeError: illegal instruction in the 4-bit kernel", flush=True)
                os._exit(1)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"choices": [{"text": "x"}]}')

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def make_spec(tmp_path: Path, mode: str = "ok", delay: float = 0.3, name: str = "stand-in") -> EngineSpec:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    port = free_port()
    settings = EngineSettings(startup_timeout_s=20, stop_timeout_s=5, restart_backoff_s=0.2)
    return EngineSpec(name=name, model=str(tmp_path), port=port, device="cpu", settings=settings,
                      command_override=[sys.executable, str(script), str(port), str(delay), mode])


def make_engine(tmp_path: Path, mode: str = "ok", delay: float = 0.3) -> Engine:
    return Engine(make_spec(tmp_path, mode, delay), log_dir=tmp_path / "logs")


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_start_ready_crash_restart_stop(tmp_path):
    engine = make_engine(tmp_path)
    engine.start()
    try:
        engine.wait_ready()
        assert engine.state is EngineState.UP
        first_pid = engine.pid
        assert first_pid is not None and len(group_members(first_pid)) == 2  # leader and its worker

        os.killpg(first_pid, signal.SIGKILL)  # what the OOM killer or a segfault would do
        assert wait_for(lambda: engine.state is not EngineState.UP, 5)
        assert wait_for(lambda: engine.state is EngineState.UP and engine.pid != first_pid)
        assert engine.restarts == 1 and engine.last_exit_code == -signal.SIGKILL
        assert wait_for(lambda: not group_members(first_pid), 5), "the crashed engine left a worker behind"
        second_pid = engine.pid
    finally:
        engine.stop()
    assert engine.state is EngineState.STOPPED
    assert second_pid is not None and wait_for(lambda: not group_members(second_pid), 5)
    log = engine.log_path.read_text()
    assert log.count("stand-in engine starting") == 2 and log.count("==== ") == 2


def test_failed_first_start_is_a_user_error_with_the_cause(tmp_path):
    engine = make_engine(tmp_path, mode="fail")
    engine.start()
    with pytest.raises(UserError, match="cannot load model") as err:
        engine.wait_ready()
    assert "exit code 3" in str(err.value)
    assert engine.state is EngineState.FAILED
    engine.stop()


def test_stop_during_startup_leaves_nothing(tmp_path):
    engine = make_engine(tmp_path, delay=30)  # never gets to answer /health
    engine.start()
    assert wait_for(lambda: engine.pid is not None, 5)
    pid = engine.pid
    time.sleep(0.5)
    engine.stop()
    assert pid is not None and wait_for(lambda: not group_members(pid), 5)


def test_engine_that_crashes_at_first_generation_fails_its_startup(tmp_path):
    engine = make_engine(tmp_path, mode="crash-on-generate")
    engine.start()
    with pytest.raises(UserError, match="smoke test"):
        engine.wait_ready()
    assert engine.state is EngineState.FAILED and engine.restarts == 0  # not a crash loop
    engine.stop()


def test_group_drops_optional_engines_that_fail_and_keeps_the_rest(tmp_path):
    good = make_spec(tmp_path, name="good")
    bad = make_spec(tmp_path, mode="crash-on-generate", name="bad-int4")
    group = EngineGroup([good, bad], log_dir=tmp_path / "logs")
    try:
        dropped = group.start(optional=frozenset({"bad-int4"}))
        assert list(dropped) == ["bad-int4"] and "smoke test" in dropped["bad-int4"]
        assert [e.spec.name for e in group.engines] == ["good"]
        assert group.engines[0].state is EngineState.UP
    finally:
        group.stop()
    group = EngineGroup([make_spec(tmp_path, mode="crash-on-generate", name="named-int4")], tmp_path / "logs")
    with pytest.raises(UserError, match="named-int4"):
        group.start()  # named on purpose: not optional
