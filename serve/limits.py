"""Per-key requests/min and tokens/min over a sliding 60 s window, kept in the gateway's memory.

Tokens are known only when a request ends, so admission reserves what the request may use (its prompt,
estimated from its size, plus `max_tokens`, or a configured default) and the finish settles the reservation to
what the engine reported. Concurrent requests therefore cannot overshoot the budget together: the reservations
of those in flight count against it. With N gateway replicas each enforces the limits on its own share of
traffic (see deploy/README.md).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_S = 60.0


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0
    reserved: int = 0  # tokens set aside by requests still in flight

    def expire(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= horizon:
            self.token_sum -= self.tokens.popleft()[1]


@dataclass(frozen=True)
class LimitExceeded:
    limit: str  # "requests" or "tokens"
    retry_after_s: int | None  # whole seconds, as the Retry-After header wants; None: waiting will not help
    reserve: int = 0

    def message(self, per_minute: int) -> str:
        if self.retry_after_s is None:
            return (f"request too large for this key's limit: it may use {self.reserve} tokens (prompt estimate "
                    f"plus max_tokens) and the key allows {per_minute} tokens per minute; lower max_tokens")
        return (f"rate limit reached: {per_minute} {self.limit} per minute for this key; "
                f"retry after {self.retry_after_s} s")


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def admit(self, key_id: str, rpm: int | None, tpm: int | None, reserve: int = 0) -> LimitExceeded | None:
        """Count one request against the key and set `reserve` tokens aside, or say how long to wait. A refused
        request is not counted. The caller settles an admitted request's reservation when it ends."""
        if rpm is None and tpm is None:
            return None
        now = self._clock()
        window = self._windows.setdefault(key_id, _Window())
        window.expire(now)
        if rpm is not None and len(window.requests) >= rpm:
            # the request that falls out of the window first frees the slot
            wait = window.requests[len(window.requests) - rpm] + WINDOW_S - now
            return LimitExceeded("requests", _whole_seconds(wait))
        if tpm is not None:
            if reserve > tpm:
                return LimitExceeded("tokens", None, reserve)
            excess = window.token_sum + window.reserved + reserve - tpm
            if excess > 0:
                return LimitExceeded("tokens", self._wait_for_tokens(window, excess, now), reserve)
            window.reserved += reserve
        window.requests.append(now)
        return None

    def settle(self, key_id: str, reserved: int, used: int, tpm: int | None) -> None:
        """Replace an admitted request's reservation by the tokens it used."""
        if tpm is None:
            return  # nothing to enforce: keeping a history would only grow memory
        now = self._clock()
        window = self._windows.setdefault(key_id, _Window())
        window.expire(now)
        window.reserved = max(0, window.reserved - reserved)
        if used > 0:
            window.tokens.append((now, used))
            window.token_sum += used

    @staticmethod
    def _wait_for_tokens(window: _Window, excess: int, now: float) -> int:
        freed = 0
        for ts, count in window.tokens:
            freed += count
            if freed >= excess:
                return _whole_seconds(ts + WINDOW_S - now)
        # what is left to free is held by requests in flight: they settle as they finish
        return _whole_seconds(1.0)


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


class KeySlots:
    """Requests in flight per key on this gateway process, against `max_in_flight_per_key`: a client that opens
    streams and stops reading cannot hold every engine slot."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def has_room(self, key_id: str, cap: int | None) -> bool:
        """Whether the key holds fewer than `cap` (None: no cap)."""
        return cap is None or self._held.get(key_id, 0) < cap

    def take(self, key_id: str) -> None:
        self._held[key_id] = self._held.get(key_id, 0) + 1

    def give_back(self, key_id: str) -> None:
        left = self._held.get(key_id, 1) - 1
        if left > 0:
            self._held[key_id] = left
        else:
            self._held.pop(key_id, None)
