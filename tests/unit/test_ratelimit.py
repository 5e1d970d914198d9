"""The token bucket, with an injected clock."""

from __future__ import annotations

import pytest

from ws_sandbox.exceptions import RateLimited
from ws_sandbox.ratelimit import RateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_passes_then_the_next_call_is_refused_with_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=5, clock=clock)
    for _ in range(5):
        limiter.check("a")
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after == pytest.approx(1.0)
    assert info.value.http_status == 429
    assert "60 calls per minute" in info.value.message
    assert limiter.refused == 1


def test_tokens_come_back_at_the_configured_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=30, burst=1, clock=clock)
    limiter.check("a")
    clock.now += 1.9
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after == pytest.approx(0.1)
    clock.now += 0.1
    limiter.check("a")


def test_callers_have_separate_buckets() -> None:
    limiter = RateLimiter(per_minute=60, burst=1, clock=Clock())
    limiter.check("a")
    limiter.check("b")
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_zero_per_minute_switches_limiting_off() -> None:
    limiter = RateLimiter(per_minute=0, burst=1, clock=Clock())
    assert not limiter.enabled
    for _ in range(100):
        limiter.check("a")  # would raise at the second call with limiting on (next line)
    limiter.configure(60, 1)
    assert limiter.enabled
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0, tokens=3.0, stamp=0.0)
    bucket.refill(1000.0)
    assert bucket.tokens == 3.0


def test_configure_applies_to_existing_buckets() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=10, clock=clock)
    limiter.check("a")
    limiter.configure(60, 2)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
