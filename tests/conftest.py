from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 1800, env: dict | None = None) -> subprocess.CompletedProcess:
    """The `quantserve` command exactly as a user runs it, in this test's Python environment."""
    return subprocess.run([sys.executable, "-m", "quantserve.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


@pytest.fixture
def cli():
    return run_cli
