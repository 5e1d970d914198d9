"""The token bucket, with an injected clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ws_sandbox import ratelimit
from ws_sandbox.exceptions import RateLimited
from ws_sandbox.ratelimit import GuessLimiter, Pace, RateLimiter, TokenBucket


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


def test_wrong_credentials_are_counted_and_past_the_limit_nothing_is_checked() -> None:
    """AUTH_FAILURES_PER_MINUTE: an address may be wrong that many times a minute; past it
    ``check`` refuses before its next credential is even tried, and a token comes back at
    the same rate. ``check`` alone takes nothing; other addresses are not held back."""
    clock = Clock()
    seen: list[tuple[str, str]] = []
    guesses = GuessLimiter(per_minute=3, clock=clock,
                           on_refused=lambda code, key: seen.append((code, key)))
    for _ in range(10):
        guesses.check("203.0.113.5")  # right credentials cost nothing
    for _ in range(3):
        guesses.check("203.0.113.5")
        guesses.failed("203.0.113.5")
    with pytest.raises(RateLimited) as info:
        guesses.check("203.0.113.5")
    assert info.value.retry_after == pytest.approx(20.0)
    assert info.value.http_status == 429
    assert "AUTH_FAILURES_PER_MINUTE" in info.value.message
    assert seen == [("rate_limited", "203.0.113.5")]
    guesses.check("198.51.100.7")  # another address
    clock.now += 20.0
    guesses.check("203.0.113.5")  # one more attempt has been earned
    guesses.failed("203.0.113.5")
    with pytest.raises(RateLimited):
        guesses.check("203.0.113.5")


def test_no_limit_on_wrong_credentials_when_switched_off() -> None:
    guesses = GuessLimiter(per_minute=0, clock=Clock())
    for _ in range(1000):
        guesses.failed("a")
    guesses.check("a")


def test_an_ipv6_address_counts_as_its_64() -> None:
    """A client holding a /64 would otherwise get a fresh allowance per address (a review)."""
    guesses = GuessLimiter(per_minute=2, clock=Clock())
    guesses.failed("2001:db8:1:2::1")
    guesses.failed("2001:db8:1:2:ffff::9")
    with pytest.raises(RateLimited, match="2001:db8:1:2::/64"):
        guesses.check("2001:db8:1:2::77")
    guesses.check("2001:db8:1:3::1")  # another /64


def test_an_ipv4_address_shown_as_ipv6_counts_alone() -> None:
    """An IPv4-mapped address (how a dual-stack socket shows an IPv4 client) is that one
    client, not ::/64 with every other IPv4 client in it. The check used to ask about an
    address that had no bucket, so it passed whatever _network did (a review)."""
    guesses = GuessLimiter(per_minute=2, clock=Clock())
    guesses.failed("::ffff:192.0.2.1")
    guesses.failed("::ffff:192.0.2.1")
    guesses.check("::ffff:198.51.100.9")  # another IPv4 client: not held back
    with pytest.raises(RateLimited, match=r"from ::ffff:192\.0\.2\.1:"):
        guesses.check("::ffff:192.0.2.1")


def test_buckets_are_bounded_by_max_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Address churn cannot grow the buckets past MAX_BUCKETS, even when every bucket is in
    use (the oldest are forgotten then); the bound had no test (a review)."""
    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 10)
    limiter = RateLimiter(per_minute=60, burst=5, clock=Clock())
    for i in range(50):
        limiter.check(f"198.51.100.{i}")
        assert len(limiter._buckets) <= 10
    assert "198.51.100.49" in limiter._buckets


def test_a_prune_forgets_idle_buckets_and_keeps_a_busy_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At MAX_BUCKETS the full (idle) buckets are forgotten, which costs their callers
    nothing; one that is not full keeps its tokens, or a caller could refill its allowance
    by making the service see many addresses (a review)."""
    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 10)
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=5, clock=clock)
    for _ in range(3):
        limiter.check("busy")  # 2 tokens left; full again in 3 s
    for i in range(9):
        limiter.check(f"idle-{i}")  # 4 tokens left; full again in 1 s
    clock.now += 1.5
    limiter.check("new")  # the 11th caller: the idle ones are pruned
    assert sorted(limiter._buckets) == ["busy", "new"]
    assert limiter._buckets["busy"].tokens == pytest.approx(3.5)
    for _ in range(3):
        limiter.check("busy")
    with pytest.raises(RateLimited):
        limiter.check("busy")


async def test_a_connection_is_paced_past_its_burst_by_waiting_not_refusing(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Ten messages a second, ten at once: the eleventh waits a tenth of a second, the clock
    moving only by the waits; the first wait is logged once, naming the setting."""
    clock = Clock()
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)
        clock.now += delay

    monkeypatch.setattr(asyncio, "sleep", sleep)
    pace = Pace(10, "session s (192.0.2.1)", clock=clock)
    with caplog.at_level(logging.INFO, logger="ws_sandbox.ratelimit"):
        for _ in range(10):
            await pace.wait()
        assert slept == [] and pace.waits == 0
        for _ in range(5):
            await pace.wait()
    assert slept == pytest.approx([0.1] * 5) and pace.waits == 5
    assert clock.now == pytest.approx(1000.5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["session s (192.0.2.1) sends more than 10 messages a second"
                     " (CLIENT_MESSAGES_PER_SECOND): it is read no faster"]
    clock.now += 10  # idle: the burst is back, and no more than it
    for _ in range(10):
        await pace.wait()
    assert len(slept) == 5
    await pace.wait()
    assert len(slept) == 6


async def test_pacing_switched_off_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    async def sleep(delay: float) -> None:
        raise AssertionError(f"slept {delay}")

    monkeypatch.setattr(asyncio, "sleep", sleep)
    pace = Pace(0, "session s", clock=Clock())
    for _ in range(100_000):
        await pace.wait()
    assert pace.waits == 0
