"""Eval stage: load generation, metrics, cost, task quality and the report a person reads."""

from __future__ import annotations
