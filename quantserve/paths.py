"""Where things live on disk: one place for the state, cache and repo locations."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """Keys database, usage ledger, engine logs, converted models. `QUANTSERVE_HOME` overrides."""
    env = os.environ.get("QUANTSERVE_HOME")
    path = Path(env) if env else Path.home() / ".cache" / "quantserve"
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    path = state_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
