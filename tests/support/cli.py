"""The repository root and the `quantserve` command, for tests that run it as a user does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 1800, env: dict | None = None) -> subprocess.CompletedProcess:
    """The `quantserve` command exactly as a user runs it, in this test's Python environment."""
    return subprocess.run([sys.executable, "-m", "quantserve.app.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)
