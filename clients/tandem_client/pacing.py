"""Client-side pacing: a token bucket sized from the server's announced rate limit.

The server answers frames over `max_messages_per_s` / `max_message_burst` with `rate_limited`
(docs/protocol.md section 7). Pacing below that rate means a busy agent's edits are merged
(see document.py) instead of refused. Pure: the clock is a parameter.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved. `reserve()` takes one token and
    returns how long to wait before using it (0.0 when one was available); the balance may go
    negative, so concurrent callers queue up in order."""

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def reserve(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s

    @classmethod
    def from_limits(cls, limits: dict[str, object], fraction: float) -> TokenBucket | None:
        """A bucket at `fraction` of the server's limits, or None when it announced none."""
        rate, burst = limits.get("max_messages_per_s"), limits.get("max_message_burst")
        if not isinstance(rate, int | float) or not isinstance(burst, int | float) or rate <= 0:
            return None
        return cls(rate * fraction, max(1.0, burst * fraction))
