"""Fixtures every test folder may use, and the markers, set by folder here and nowhere else.

`-m integration` selects every test under tests/integration (real model, engines, services); `-m quant` those under
tests/integration/quantize, which run in the quantization environment (.venv-quant); `-m serve` the rest of
tests/integration, which run in the serving environment (.venv). Unit tests carry none of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import run_cli

TESTS = Path(__file__).resolve().parent


def _markers_of(path: Path) -> tuple[str, ...]:
    try:
        parts = path.resolve().relative_to(TESTS).parts
    except ValueError:
        return ()
    if parts[:1] != ("integration",):
        return ()
    return ("integration", "quant") if parts[1:2] == ("quantize",) else ("integration", "serve")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in _markers_of(item.path):
            item.add_marker(name)


@pytest.fixture
def cli():
    return run_cli
