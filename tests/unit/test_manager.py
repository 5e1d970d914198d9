"""The session manager with a fake pool (the engine is not under test)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

import pytest

from tests.unit.test_driver import BOUND, LIMITS, FakeSandbox, Sink
from ws_sandbox.backend import DockerBackend, Sandbox
from ws_sandbox.driver import Event, SessionRunner
from ws_sandbox.exceptions import CapacityError, InvalidToken
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


class EndingRunner:
    """A session that ends while a resume waits for room in its inbox."""

    client_id = "127.0.0.1"
    session_id = "s1"

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.core = SimpleNamespace(language="python", limits=LIMITS)

    async def feed(self, event: Event) -> None:
        self.closed.set()  # the teardown emptied the inbox before this put landed

    def attached_to(self, sink: object) -> bool:
        return False


async def test_a_resume_that_waited_while_its_session_ended_is_refused() -> None:
    """Nothing would ever answer it: the client got neither ``ready`` nor an error."""
    manager = SessionManager(Settings(), cast(DockerBackend, None), cast(WarmPool, None))
    manager._runners["s1"] = cast(SessionRunner, EndingRunner())
    with pytest.raises(InvalidToken, match="has ended"):
        await manager.resume(manager.signer.sign("s1"), Sink())
