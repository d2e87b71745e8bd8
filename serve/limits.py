"""Per-key requests/min and tokens/min over a sliding 60 s window, kept in the gateway's memory.

Tokens are known only when a request ends, so the token limit admits a request while the key's last-minute
total is under its budget and charges the tokens afterwards; one request can overshoot, the next one waits.
With N gateway replicas each enforces the limits on its own share of traffic (see deploy/README.md).
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

    def expire(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= horizon:
            self.token_sum -= self.tokens.popleft()[1]


@dataclass(frozen=True)
class LimitExceeded:
    limit: str  # "requests" or "tokens"
    retry_after_s: int  # whole seconds, as the Retry-After header wants

    def message(self, per_minute: int) -> str:
        return (f"rate limit reached: {per_minute} {self.limit} per minute for this key; "
                f"retry after {self.retry_after_s} s")


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def admit(self, key_id: str, rpm: int | None, tpm: int | None) -> LimitExceeded | None:
        """Count one request against the key, or say how long to wait. A refused request is not counted."""
        if rpm is None and tpm is None:
            return None
        now = self._clock()
        window = self._windows.setdefault(key_id, _Window())
        window.expire(now)
        if rpm is not None and len(window.requests) >= rpm:
            # the request that falls out of the window first frees the slot
            wait = window.requests[len(window.requests) - rpm] + WINDOW_S - now
            return LimitExceeded("requests", _whole_seconds(wait))
        if tpm is not None and window.token_sum >= tpm:
            excess = window.token_sum - tpm + 1
            freed = 0
            wait = WINDOW_S
            for ts, count in window.tokens:
                freed += count
                if freed >= excess:
                    wait = ts + WINDOW_S - now
                    break
            return LimitExceeded("tokens", _whole_seconds(wait))
        window.requests.append(now)
        return None

    def charge_tokens(self, key_id: str, tokens: int, tpm: int | None) -> None:
        if tokens <= 0 or tpm is None:
            return  # nothing to enforce: keeping a history would only grow memory
        now = self._clock()
        window = self._windows.setdefault(key_id, _Window())
        window.expire(now)
        window.tokens.append((now, tokens))
        window.token_sum += tokens


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))
