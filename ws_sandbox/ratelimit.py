"""Token-bucket rate limiting per API key or client address.

Each caller has a bucket holding up to ``RATE_LIMIT_BURST`` tokens, refilled at
``RATE_LIMIT_PER_MINUTE / 60`` tokens per second. A REST execution, a session open and a
session cell each take one token; an empty bucket refuses with :class:`RateLimited`, whose
``retry_after`` says when the next token arrives. The clock is injected for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ws_sandbox.exceptions import RateLimited

Clock = Callable[[], float]

#: Buckets kept before full (idle) ones are forgotten; bounds memory under address churn.
MAX_BUCKETS = 10_000


@dataclass(slots=True)
class TokenBucket:
    """A bucket of ``burst`` tokens refilled at ``rate`` tokens per second."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last call."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> float:
        """Take one token; return 0.0, or the seconds to wait when the bucket is empty."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else float("inf")


class RateLimiter:
    """One bucket per caller.

    Args:
        per_minute: tokens earned per minute; 0 switches limiting off.
        burst: size of each bucket.
        clock: monotonic time source (seconds).
        on_refused: called with ``("rate_limited", key)`` for each refusal (the log's
            summary of refusals).
    """

    def __init__(self, per_minute: int, burst: int, clock: Clock = time.monotonic,
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self.refused = 0
        self._on_refused = on_refused
        self.configure(per_minute, burst)

    def configure(self, per_minute: int, burst: int) -> None:
        """Change the rate and burst (admin API); existing buckets keep their tokens."""
        self.per_minute = per_minute
        self.burst = burst
        for bucket in self._buckets.values():
            bucket.rate = per_minute / 60.0
            bucket.burst = float(burst)
            bucket.tokens = min(bucket.tokens, bucket.burst)

    @property
    def enabled(self) -> bool:
        """Whether calls are limited at all."""
        return self.per_minute > 0

    def check(self, key: str) -> None:
        """Take a token for ``key``.

        Raises:
            RateLimited: the bucket is empty; ``retry_after`` says for how long.
        """
        if not self.enabled:
            return
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune(now)
            bucket = TokenBucket(self.per_minute / 60.0, float(self.burst),
                                 float(self.burst), now)
            self._buckets[key] = bucket
        wait = bucket.take(now)
        if wait > 0:
            self.refused += 1
            if self._on_refused is not None:
                self._on_refused(RateLimited.code, key)
            raise RateLimited(
                f"rate limit of {self.per_minute} calls per minute (burst {self.burst})"
                f" exceeded; retry in {wait:.1f} s", retry_after=wait)

    def _prune(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            bucket.refill(now)
            if bucket.tokens >= bucket.burst:
                del self._buckets[key]
        if len(self._buckets) >= MAX_BUCKETS:  # everyone is busy: forget the oldest
            for key in list(self._buckets)[: MAX_BUCKETS // 10]:
                del self._buckets[key]
