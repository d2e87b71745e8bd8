"""Serve stage: a vLLM engine per variant behind an OpenAI-compatible gateway with keys, limits, a ledger."""

from __future__ import annotations
