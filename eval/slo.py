"""Service-level objectives: parse `ttft_p99=200ms,itl_p99=50ms`, check requests and aggregates."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from quantserve.errors import UserError

DEFAULT_SLO_FILE = Path(__file__).resolve().parent / "slo.yaml"
METRICS = ("ttft", "tpot", "itl", "e2e")
STATS = ("mean", "p50", "p90", "p95", "p99")
_ALIASES = {"e2el": "e2e"}  # vLLM's name for end-to-end latency
_VALUE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Objective:
    metric: str  # ttft | tpot | itl | e2e
    stat: str  # mean | p50 | ... ; per request only the threshold matters
    threshold_ms: float

    @property
    def key(self) -> str:
        return f"{self.metric}_{self.stat}"


Slo = tuple[Objective, ...]


def parse_duration_ms(text: str, key: str = "value") -> float:
    match = _VALUE.match(str(text))
    if not match:
        raise UserError(f"SLO {key}={text!r} is not a duration; write e.g. 200ms, 0.5s or 200 (ms)")
    number = float(match.group(1))
    unit = (match.group(2) or "ms").lower()
    ms = number * 1000.0 if unit == "s" else number
    if ms <= 0:
        raise UserError(f"SLO {key}={text!r} must be greater than zero")
    return ms


def _objective(key: str, value: str) -> Objective:
    metric, _, stat = key.strip().lower().rpartition("_")
    metric = _ALIASES.get(metric, metric)
    if metric not in METRICS or stat not in STATS:
        raise UserError(f"unknown SLO key {key!r}; use <metric>_<stat> with metric in {', '.join(METRICS)} "
                        f"and stat in {', '.join(STATS)}, e.g. ttft_p99=200ms")
    return Objective(metric=metric, stat=stat, threshold_ms=parse_duration_ms(value, key))


def parse_slo(text: str | None) -> Slo:
    """`ttft_p99=200ms,itl_p99=50ms` -> objectives. Empty text means no objectives."""
    if not text or not text.strip():
        return ()
    objectives: dict[str, Objective] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"malformed SLO {part.strip()!r}; "
                            "write key=value pairs like ttft_p99=200ms,itl_p99=50ms")
        objective = _objective(key, value)
        objectives[objective.key] = objective
    return tuple(objectives.values())


def load_default_slo(path: Path | None = None) -> Slo:
    raw = yaml.safe_load((path or DEFAULT_SLO_FILE).read_text()) or {}
    return tuple(_objective(str(k), str(v)) for k, v in raw.items())


def slo_to_dict(slo: Slo) -> dict[str, float]:
    """{"ttft_p99_ms": 200.0, ...}: the form written into eval.json and report.json."""
    return {f"{o.key}_ms": o.threshold_ms for o in slo}


def slo_from_dict(data: dict[str, float]) -> Slo:
    return tuple(_objective(key.removesuffix("_ms"), f"{value}ms") for key, value in data.items())


def format_slo(slo: Slo) -> str:
    return ", ".join(f"{o.key} ≤ {o.threshold_ms:g} ms" for o in slo) or "none"
