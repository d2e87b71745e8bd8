from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def machine_probe() -> dict:
    """This machine's `quantserve probe --json` (real vLLM engines; cached per machine after the first run).
    Integration tests take what should run here, and in which dtype, from it."""
    from tests.support.probe_fixtures import machine_probe as probe

    return probe()
