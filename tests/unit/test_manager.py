"""The session manager with a fake pool (the engine is not under test)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from tests.unit.test_driver import BOUND, FakeSandbox, Sink
from ws_sandbox.backend import DockerBackend, Sandbox
from ws_sandbox.exceptions import CapacityError
from ws_sandbox.manager import SessionManager
from ws_sandbox.pool import WarmPool
from ws_sandbox.settings import Settings


class SlowPool:
    """Hands out a sandbox once :attr:`release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.asked = asyncio.Event()
        self.sandbox = FakeSandbox()

    async def acquire(self, language: str) -> Sandbox:
        self.asked.set()
        await self.release.wait()
        return cast(Sandbox, self.sandbox)


async def test_an_open_that_outlasts_the_start_of_shutdown_is_refused() -> None:
    """shutdown() ends the sessions it sees; one whose sandbox arrived after it began would
    run on unseen (and its container be left behind): it is refused and its sandbox removed."""
    pool = SlowPool()
    manager = SessionManager(Settings(), cast(DockerBackend, None), cast(WarmPool, pool))
    opening = asyncio.create_task(manager.open("python", Sink()))
    async with asyncio.timeout(BOUND):
        await pool.asked.wait()
    await manager.shutdown(grace=1.0)
    pool.release.set()
    with pytest.raises(CapacityError, match="shutting down"):
        async with asyncio.timeout(BOUND):
            await opening
    assert pool.sandbox.destroyed
    assert manager.active == 0
