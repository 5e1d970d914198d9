"""The warm pool's logic, with a fake engine (the real one is covered by integration tests)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

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
    def __init__(self, fail: int = 0) -> None:
        self.started: list[FakeSandbox] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail = fail
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
                raise BackendError("engine says no")
            sandbox = FakeSandbox(len(self.started))
            self.started.append(sandbox)
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


async def test_failures_are_reported_and_retried() -> None:
    backend = FakeBackend(fail=2)
    async with make(backend, 1) as pool:
        await wait_ready(pool, 1)
        assert backend.fail == 0  # both failures happened, then a start succeeded
        assert pool.state()["python"]["last_error"] is None


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
