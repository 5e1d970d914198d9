"""The warm pool's logic, with a fake engine (the real one is covered by integration tests)."""

from __future__ import annotations

import asyncio
import logging
from itertools import pairwise
from typing import Any, cast

import pytest

from ws_sandbox import pool as pool_module
from ws_sandbox.backend import DockerBackend, Sandbox
from ws_sandbox.exceptions import BackendError, SandboxLost
from ws_sandbox.pool import FILL_PARALLEL, WarmPool


class FakeSandbox:
    def __init__(self, n: int) -> None:
        self.n = n
        self.short_id = f"fake{n}"
        self.destroyed = False
        self.dead = asyncio.Event()

    async def receive(self) -> Any:
        await self.dead.wait()
        raise SandboxLost("exited")

    async def destroy(self) -> None:
        self.destroyed = True


class FakeBackend:
    def __init__(self, fail: int = 0, die_young: int = 0,
                 fail_with: tuple[str, ...] = ()) -> None:
        self.fail_with = list(fail_with)  # the message of each failure, if not the default
        self.started: list[FakeSandbox] = []
        self.started_at: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail = fail
        self.die_young = die_young  # how many of the next sandboxes die 1 ms after starting
        self.gate = asyncio.Event()
        self.gate.set()

    async def start_sandbox(self, language: str) -> FakeSandbox:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            await asyncio.sleep(0.01)
            if self.fail:
                self.fail -= 1
                raise BackendError(self.fail_with.pop(0) if self.fail_with else "engine says no")
            sandbox = FakeSandbox(len(self.started))
            self.started.append(sandbox)
            loop = asyncio.get_running_loop()
            self.started_at.append(loop.time())
            if self.die_young:
                self.die_young -= 1
                loop.call_later(0.001, sandbox.dead.set)
            return sandbox
        finally:
            self.in_flight -= 1


def make(backend: FakeBackend, size: int) -> WarmPool:
    return WarmPool(cast(DockerBackend, backend), ("python",), size)


async def wait_ready(pool: WarmPool, count: int) -> None:
    async with asyncio.timeout(5):
        while pool.state()["python"]["ready"] != count:
            await asyncio.sleep(0.005)


async def test_fills_to_size_in_parallel_and_refills_after_acquire() -> None:
    backend = FakeBackend()
    async with make(backend, 5) as pool:
        await wait_ready(pool, 5)
        assert backend.max_in_flight == FILL_PARALLEL
        sandbox = cast(FakeSandbox, await pool.acquire("python"))
        assert not sandbox.destroyed
        await wait_ready(pool, 5)
        assert len(backend.started) == 6
    # Leaving the block removes what is still pooled, never what was handed out.
    assert sum(s.destroyed for s in backend.started) == 5
    assert not sandbox.destroyed


async def test_acquire_starts_one_directly_when_empty() -> None:
    backend = FakeBackend()
    async with make(backend, 0) as pool:
        sandbox = await pool.acquire("python")
        assert isinstance(sandbox, FakeSandbox)


async def test_a_pooled_sandbox_that_dies_is_discarded_never_handed_out() -> None:
    backend = FakeBackend()
    async with make(backend, 1) as pool:
        await wait_ready(pool, 1)
        first = backend.started[0]
        first.dead.set()
        async with asyncio.timeout(5):
            while not first.destroyed:
                await asyncio.sleep(0.005)
        got = await pool.acquire("python")
        assert got is not cast(Sandbox, first)


async def test_failures_are_reported_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    """A failed start is reported: the pool's state names the engine's error and a warning
    is logged with it (neither was checked: a review); it clears once a start succeeds."""
    caplog.set_level(logging.WARNING, logger=pool_module.__name__)
    backend = FakeBackend(fail=2)
    async with make(backend, 1) as pool:
        async with asyncio.timeout(5):
            while pool.state()["python"]["last_error"] is None:
                await asyncio.sleep(0.005)
        assert pool.state()["python"]["last_error"] == "engine says no"
        await wait_ready(pool, 1)
        assert backend.fail == 0  # both failures happened, then a start succeeded
        assert pool.state()["python"]["last_error"] is None
    warnings = [r.getMessage() for r in caplog.records
                if r.name == pool_module.__name__ and r.levelno == logging.WARNING]
    assert warnings == ["pool: cannot start a python sandbox: engine says no; trying again"]


async def test_a_failure_is_logged_once_per_cause_and_the_recovery_once(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each retry of an engine that stays down logged the same warning again."""
    monkeypatch.setattr(pool_module, "_RETRY_MIN", 0.01)  # five retries back off to 0.16 s
    caplog.set_level(logging.INFO, logger=pool_module.__name__)
    causes = ("engine says no", "engine says no", "image missing", "image missing",
              "engine says no")
    backend = FakeBackend(fail=len(causes), fail_with=causes)
    async with make(backend, 1) as pool:
        await wait_ready(pool, 1)
    logged = [(r.levelno, r.getMessage()) for r in caplog.records
              if r.name == pool_module.__name__]
    assert backend.fail == 0
    assert logged == [
        (logging.WARNING, "pool: cannot start a python sandbox: engine says no; trying again"),
        (logging.WARNING, "pool: cannot start a python sandbox: image missing; trying again"),
        (logging.WARNING, "pool: cannot start a python sandbox: engine says no; trying again"),
        (logging.INFO, "pool: python sandboxes start again"),
    ]


async def test_close_cancels_starts_in_flight() -> None:
    backend = FakeBackend()
    backend.gate.clear()
    pool = make(backend, 2)
    async with pool:
        await asyncio.sleep(0.02)
        assert backend.in_flight == 2
    assert backend.in_flight == 0
    with pytest.raises(KeyError):
        await pool.acquire("javascript")


async def test_a_cancelled_acquire_gets_no_sandbox_and_leaves_none_behind() -> None:
    """Cancelled while it waited for the pooled sandbox's watcher to stop, acquire swallowed
    the cancellation and handed the sandbox out anyway (to a caller that was gone)."""
    backend = FakeBackend()
    async with make(backend, 1) as pool:
        await wait_ready(pool, 1)
        taking = asyncio.create_task(pool.acquire("python"))
        await asyncio.sleep(0)  # it now waits for the watcher it cancelled
        taking.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await taking
        first = backend.started[0]
        async with asyncio.timeout(5):
            while not first.destroyed:
                await asyncio.sleep(0.005)


async def test_pooled_sandboxes_that_die_young_are_replaced_after_a_growing_wait() -> None:
    """A sandbox that greeted and then died (an image or a setting that lets it start, then
    kills it) was replaced at once, so the pool started containers as fast as the engine
    could for as long as it lasted. Each one that dies young now counts as a failed start:
    0.5 s before the next, then 1 s, doubling to 15 s."""
    backend = FakeBackend(die_young=1000)
    async with make(backend, 1) as pool:
        await asyncio.sleep(1.8)
        starts = backend.started_at
        assert 2 <= len(starts) <= 4, f"{len(starts)} sandboxes started in 1.8 s"
        gaps = [b - a for a, b in pairwise(starts)]
        assert gaps[0] >= 0.45 and (len(gaps) < 2 or gaps[1] >= 0.95), gaps
        assert "s after it started: exited" in str(pool.state()["python"]["last_error"])
    assert all(s.destroyed for s in backend.started)


async def test_the_wait_ends_once_sandboxes_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sandbox that lives past the young age, or one taken by a session, resets the wait:
    a pool that recovered does not keep a long wait for the next death."""
    monkeypatch.setattr(pool_module, "_RETRY_MIN", 0.02)
    monkeypatch.setattr(pool_module, "_DIED_YOUNG", 0.3)
    backend = FakeBackend(die_young=3)
    async with make(backend, 1) as pool:
        state = pool._pools["python"]
        async with asyncio.timeout(5):
            while len(backend.started) < 4:
                await asyncio.sleep(0.005)
        assert state.died_young_delay == pytest.approx(0.08)  # 0.02, 0.04, 0.08
        await asyncio.sleep(0.4)  # the fourth lives past the young age
        assert state.died_young_delay == 0.0
        assert pool.state()["python"]["ready"] == 1
        assert pool.state()["python"]["last_error"] is None
        backend.die_young = 1
        await pool.acquire("python")  # the pool refills with one that dies young
        async with asyncio.timeout(5):
            while state.died_young_delay == 0.0:
                await asyncio.sleep(0.005)
        assert state.died_young_delay == pytest.approx(0.02)
        await wait_ready(pool, 1)
        await pool.acquire("python")  # taken by a session: the wait resets too
        assert state.died_young_delay == 0.0
