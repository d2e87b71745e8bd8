"""One real stack for the whole session: a vLLM engine on the default model behind the gateway, auth on.

Only one vLLM engine runs at a time on a 2-core machine, so every test shares this one; the engine-crash test,
which takes the engine down, waits until the supervisor has it back before the next test, so it may run in any
order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantserve.serve.config import build_config
from quantserve.serve.keys import KeyStore
from quantserve.serve.stack import ServeStack
from tests.support.live_stack import LiveStack, vllm_processes


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, machine_probe: dict) -> Iterator[LiveStack]:
    from quantserve.model_fetch import ensure_default_model

    model_dir = ensure_default_model()
    tmp: Path = tmp_path_factory.mktemp("serve-live")
    db_url = f"sqlite:///{tmp / 'serve.db'}"
    before = vllm_processes()
    config = build_config(model_path=model_dir, port=0, database_url=db_url, health_interval_s=0.5,
                          engine={"port_base": 18100, "restart_backoff_s": 1.0})
    key = KeyStore(db_url).create("integration")[1]
    started = time.monotonic()
    with ServeStack(config, log_dir=tmp / "logs") as stack:
        print(f"\nstack up in {time.monotonic() - started:.0f} s: {stack.base_url} {stack.models}")
        yield LiveStack(stack, key, db_url, stack.models[0])
    deadline = time.monotonic() + 15
    while vllm_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = vllm_processes() - before
    assert not leftover, f"vLLM processes left after the stack stopped: {leftover}"


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(os.environ, "NO_PROXY", "127.0.0.1,localhost")
