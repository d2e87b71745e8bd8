"""quantserve: quantize a chat model, serve the variants behind an OpenAI gateway, measure them."""

from __future__ import annotations

__version__ = "0.1.0"
