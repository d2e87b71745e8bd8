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


# A token chunk: a choice whose content or text is not empty (vLLM's first chat chunk carries only the role and
# its last may carry only finish_reason). Inside a JSON string a quote is escaped, so the pattern cannot match
# within generated text.
_TOKEN = re.compile(rb'"(?:content|text)":\s*"[^"]')
# The usage object vLLM adds to every chunk under continuous_usage_stats (flat, or with one nested details object).
USAGE_FIELD = re.compile(rb',\s*"usage":\s*(?:null|\{(?:[^{}]|\{[^{}]*\})*\})')
# llama.cpp's flat timings object (prompt_n, cache_n, predicted_n, ...), on chunks under timings_per_token.
TIMINGS_FIELD = re.compile(rb',\s*"timings":\s*\{[^{}]*\}')


@dataclass
class EventInfo:
    is_data: bool  # a data event other than [DONE]
    is_done: bool
    usage: dict[str, Any] | None  # the usage object of the final usage-only chunk
    usage_only: bool  # the final usage chunk: no choices, just usage
    error: dict[str, Any] | None
    has_choices: bool
    has_token: bool  # carries generated text
    carries_usage: bool  # a usage object is in it (every chunk, under continuous_usage_stats)
    carries_timings: bool = False  # llama.cpp's running timings (every token chunk, under timings_per_token)


def inspect_event(event: bytes) -> EventInfo:
    if not event.startswith(b"data:"):
        return EventInfo(False, False, None, False, None, False, False, False)  # comment or keep-alive
    if event.strip() == DONE:
        return EventInfo(False, True, None, False, None, False, False, False)
    usage = error = None
    usage_only = False
    no_choices = b'"choices":[]' in event or b'"choices": []' in event
    has_choices = not no_choices and b'"choices"' in event
    carries_usage = b'"usage":{' in event or b'"usage": {' in event
    # Cheap byte checks first: decoding every token's JSON would cost more than the proxying itself. Only the
    # final usage chunk and errors are decoded; a token chunk's usage is decoded when the stream ends (usage_of).
    if (carries_usage and not has_choices) or b'"error"' in event:
        try:
            payload = json.loads(event[5:])
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            if isinstance(payload.get("usage"), dict) and not payload.get("choices"):
                usage = payload["usage"]
                usage_only = True
            if isinstance(payload.get("error"), dict):
                error = payload["error"]
            elif payload.get("object") == "error":  # vLLM's older flat form: {"object": "error", "code": 400, ...}
                error = payload
    has_token = has_choices and _TOKEN.search(event) is not None
    return EventInfo(True, False, usage, usage_only, error, has_choices, has_token, carries_usage,
                     b'"timings":{' in event or b'"timings": {' in event)


_INDEX = re.compile(rb'"index":\s*(\d+)')


def choice_index(event: bytes) -> int:
    """The index of the (one) choice in a token chunk: its first "index" field, which precedes any tool call's."""
    found = _INDEX.search(event)
    return int(found[1]) if found else 0


def usage_of(event: bytes) -> dict[str, Any] | None:
    """The usage object of one event, decoded (for the last token chunk of a stream the client cut short); from
    llama.cpp's running timings where the event has no usage (prompt tokens are the evaluated plus the cached)."""
    try:
        payload = json.loads(event[5:])
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    found = payload.get("usage")
    if isinstance(found, dict):
        return found
    timings = payload.get("timings")
    if isinstance(timings, dict) and "predicted_n" in timings:
        return {"prompt_tokens": int(timings.get("prompt_n") or 0) + int(timings.get("cache_n") or 0),
                "completion_tokens": int(timings.get("predicted_n") or 0)}
    return None


def strip_usage_field(event: bytes) -> bytes:
    return USAGE_FIELD.sub(b"", event, count=1)


def strip_timings_field(event: bytes) -> bytes:
    return TIMINGS_FIELD.sub(b"", event, count=1)
