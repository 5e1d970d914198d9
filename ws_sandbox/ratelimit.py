"""Token-bucket rate limiting per API key or client address, and of wrong credentials.

Each caller has a bucket holding up to ``RATE_LIMIT_BURST`` tokens, refilled at
``RATE_LIMIT_PER_MINUTE / 60`` tokens per second. A REST execution, a session open and a
session cell each take one token; an empty bucket refuses with :class:`RateLimited`, whose
``retry_after`` says when the next token arrives (:class:`RateLimiter`).

Wrong credentials (an API key, the Jupyter token or password) take a token of the caller's
address in a second set of buckets, ``AUTH_FAILURES_PER_MINUTE`` of them; while that bucket
is empty, the address's credentials, right or wrong, are not checked at all
(:class:`GuessLimiter`), so a guess at a key cannot succeed faster than that rate.

The messages of one WebSocket connection are paced, ``CLIENT_MESSAGES_PER_SECOND`` of them
(:class:`Pace`): past that the connection is read no faster, and its client's sends wait. The
clock is injected for tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ws_sandbox.exceptions import RateLimited

Clock = Callable[[], float]
log = logging.getLogger(__name__)

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
        wait = self._bucket(key, now).take(now)
        if wait > 0:
            self._refuse(key, wait, f"rate limit of {self.per_minute} calls per minute"
                                    f" (burst {self.burst}) exceeded; retry in {wait:.1f} s")

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune(now)
            bucket = TokenBucket(self.per_minute / 60.0, float(self.burst),
                                 float(self.burst), now)
            self._buckets[key] = bucket
        return bucket

    def _refuse(self, key: str, wait: float, message: str) -> None:
        self.note_refused(key)
        raise RateLimited(message, retry_after=wait)

    def note_refused(self, key: str) -> None:
        """Count a call of ``key`` refused as ``rate_limited`` (by this limiter, or by a
        limit of the caller's own that answers as it does)."""
        self.refused += 1
        if self._on_refused is not None:
            self._on_refused(RateLimited.code, key)

    def _prune(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            bucket.refill(now)
            if bucket.tokens >= bucket.burst:
                del self._buckets[key]
        if len(self._buckets) >= MAX_BUCKETS:  # everyone is busy: forget the oldest
            for key in list(self._buckets)[: MAX_BUCKETS // 10]:
                del self._buckets[key]


class GuessLimiter(RateLimiter):
    """Wrong credentials per client address: ``per_minute`` of them a minute, as many at once.

    :meth:`check` comes before a credential is checked and takes nothing; :meth:`failed`
    takes a token once one was wrong. While an address has no token left, :meth:`check`
    refuses it, so its next guess is not even tried (a right key from that address waits
    too). Behind a reverse proxy every client has the proxy's address, and one client's
    wrong key holds the others back for as long as it keeps trying: 0 switches this off.
    An IPv6 address counts as its /64, which one client commonly holds whole.
    """

    def __init__(self, per_minute: int, clock: Clock = time.monotonic,
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        super().__init__(per_minute, per_minute, clock, on_refused)

    def check(self, key: str) -> None:
        """Refuse an address that has used up its wrong credentials; take nothing.

        Raises:
            RateLimited: naming the limit and when the next attempt is allowed.
        """
        key = client_network(key)
        bucket = self._buckets.get(key) if self.enabled else None
        if bucket is None:
            return
        now = self._clock()
        bucket.refill(now)
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / bucket.rate
            self._refuse(key, wait, f"too many wrong credentials from {key}: at most"
                                    f" {self.per_minute} a minute (AUTH_FAILURES_PER_MINUTE);"
                                    f" none are checked for {wait:.1f} s")

    def failed(self, key: str) -> None:
        """Count one wrong credential from ``key``."""
        if self.enabled:
            now = self._clock()
            self._bucket(client_network(key), now).take(now)


class Pace:
    """Paces one connection's messages: ``per_second`` of them a second, as many at once.

    Refusing a message would cost what reading it costs: a flood of small frames the session
    ignores (an ``interrupt`` with no cell running) took a core, about 100,000 a second, and
    every other session's cells waited on it (a review). :meth:`wait` is awaited before each
    message is read: while it waits the connection is not read, the server's read-ahead fills
    and stops reading the socket, and the client's sends wait on TCP. No client that waits
    for its cells comes near the default: a cell's round trip takes half a millisecond.

    Args:
        per_second: messages a second; 0 switches pacing off.
        who: the connection, for the log line its first wait writes.
        clock: monotonic time source (seconds).
    """

    def __init__(self, per_second: int, who: str, clock: Clock = time.monotonic) -> None:
        self.per_second = per_second
        self.who = who
        self._clock = clock
        self._bucket = (TokenBucket(float(per_second), float(per_second), float(per_second),
                                    clock()) if per_second > 0 else None)
        self.waits = 0
        """How many times a message had to wait for its turn."""

    async def wait(self) -> None:
        """Return once the next message may be read (at once within the pace)."""
        bucket = self._bucket
        if bucket is None or (delay := bucket.take(self._clock())) == 0.0:
            return
        if not self.waits:
            log.info("%s sends more than %d messages a second (CLIENT_MESSAGES_PER_SECOND):"
                     " it is read no faster", self.who, self.per_second)
        self.waits += 1
        await asyncio.sleep(delay)  # until the next token is earned
        # Take it, even a hair short (a float's rounding; a timer that fires up to the
        # loop's resolution early): the next wait is that much longer.
        bucket.refill(self._clock())
        bucket.tokens -= 1.0


def client_network(address: str) -> str:
    """An IPv6 address's /64 (what one client commonly holds); any other address as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return address
