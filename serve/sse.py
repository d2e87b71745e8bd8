"""Server-sent events as they pass through: split the byte stream into whole events without waiting for more.

Only the events that carry usage are decoded; every other event is forwarded as the same bytes it arrived as.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_BOUNDARY = re.compile(rb"\r?\n\r?\n")
DONE = b"data: [DONE]"


class EventSplitter:
    """Feed raw chunks, get back complete events (each without its blank-line terminator)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        events: list[bytes] = []
        start = 0
        for match in _BOUNDARY.finditer(self._buffer):
            events.append(self._buffer[start:match.start()])
            start = match.end()
        self._buffer = self._buffer[start:]
        return events

    def rest(self) -> bytes:
        return self._buffer


@dataclass
class EventInfo:
    is_data: bool  # a data event other than [DONE]
    is_done: bool
    usage: dict[str, Any] | None  # the usage object, when the event carries one
    usage_only: bool  # the final usage chunk: no choices, just usage
    error: dict[str, Any] | None
    has_choices: bool


def inspect_event(event: bytes) -> EventInfo:
    if not event.startswith(b"data:"):
        return EventInfo(False, False, None, False, None, False)  # comment or keep-alive
    if event.strip() == DONE:
        return EventInfo(False, True, None, False, None, False)
    usage = error = None
    usage_only = False
    has_choices = b'"choices":[]' not in event and b'"choices": []' not in event and b'"choices"' in event
    # Cheap byte checks first: decoding every token's JSON would cost more than the proxying itself.
    if b'"usage":{' in event or b'"usage": {' in event or b'"error"' in event:
        try:
            payload = json.loads(event[5:])
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            if isinstance(payload.get("usage"), dict):
                usage = payload["usage"]
                usage_only = not payload.get("choices")
            if isinstance(payload.get("error"), dict):
                error = payload["error"]
            elif payload.get("object") == "error":  # vLLM's older flat form: {"object": "error", "code": 400, ...}
                error = payload
    return EventInfo(True, False, usage, usage_only, error, has_choices)
