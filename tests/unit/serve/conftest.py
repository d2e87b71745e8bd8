"""Fixtures for the serve unit tests: a state dir per test, the fake upstream, gateways on loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quantserve.serve.config import ServeConfig
from quantserve.serve.gateway import GatewayThread
from quantserve.serve.keys import KeyStore
from tests.support.serve_fake_upstream import FakeState, ThreadedServer, create_fake_app
from tests.support.serve_helpers import FAKE_MODEL, Gateway, free_port


@pytest.fixture(autouse=True)
def _state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("QUANTSERVE_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[tuple[ThreadedServer, FakeState]]:
    state = FakeState()
    server = ThreadedServer(create_fake_app(state), free_port()).start()
    yield server, state
    server.stop()


@pytest.fixture
def make_gateway(
    tmp_path: Path, fake_upstream: tuple[ThreadedServer, FakeState]
) -> Iterator[Callable[..., Gateway]]:
    started: list[GatewayThread] = []
    server, _ = fake_upstream

    def _make(
        routes: dict[str, list[str]] | None = None,
        auth: bool = True,
        key_kwargs: dict[str, Any] | None = None,
        model_info: dict[str, dict[str, str | None]] | None = None,
        **overrides: Any,
    ) -> Gateway:
        db_url = f"sqlite:///{tmp_path / f'gateway-{len(started)}.db'}"
        settings = {"health_interval_s": 0.2, **overrides}
        config = ServeConfig(port=free_port(), auth=auth, database_url=db_url, **settings)
        thread = GatewayThread(config, routes if routes is not None else {FAKE_MODEL: [server.url]}, model_info)
        thread.start()
        started.append(thread)
        key = KeyStore(db_url).create("test-key", **(key_kwargs or {}))[1] if auth else None
        return Gateway(f"http://127.0.0.1:{config.port}", config, thread, db_url, key)

    yield _make
    for thread in started:
        thread.stop()
