"""The session manager with a fake pool (the engine is not under test)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.unit.test_driver import BOUND, LIMITS, FakeSandbox, Sink
from ws_sandbox.backend import DockerBackend, Sandbox
from ws_sandbox.driver import ClientGone, CloseRequest, Event, SessionRunner
from ws_sandbox.exceptions import (
    CapacityError,
    InvalidToken,
    LanguageUnavailable,
    TooManySessions,
)
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
    address = "127.0.0.1"
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


async def test_ending_a_session_that_already_closed_ends_nothing() -> None:
    """A closed session stays listed until its container is gone; an admin DELETE then was
    answered 200 and audited as ending it, though nothing happened (a review, 10 in 10)."""
    manager = SessionManager(Settings(), cast(DockerBackend, None), cast(WarmPool, QuickPool()))
    runner = await manager.open("python", Sink())
    gate = asyncio.Event()
    sandbox = cast(FakeSandbox, runner.sandbox)

    async def slow_destroy(*, graceful: bool = True) -> None:
        await gate.wait()  # the container's removal takes its time
        sandbox.destroyed = True

    sandbox.destroy = slow_destroy  # type: ignore[method-assign]
    await runner.feed(CloseRequest("client_closed", "bye"))
    async with asyncio.timeout(BOUND):
        await runner.closed.wait()
    assert manager.get(runner.session_id) is runner  # still listed, as closed
    assert not await manager.end(runner.session_id, "closed_by_admin", "by an admin")
    gate.set()
    await manager.shutdown(grace=BOUND)


# --- MAX_SESSIONS_PER_KEY: what one caller holds at once ------------------------------------


class QuickPool:
    """Hands out a fresh sandbox at once."""

    def __init__(self) -> None:
        self.handed: list[FakeSandbox] = []

    async def acquire(self, language: str) -> Sandbox:
        self.handed.append(FakeSandbox(f"sb{len(self.handed)}"))
        return cast(Sandbox, self.handed[-1])


def capped(pool: object, per_key: int, **settings: Any) -> SessionManager:
    return SessionManager(Settings(max_sessions_per_key=per_key, **settings),
                          cast(DockerBackend, None), cast(WarmPool, pool))


async def test_a_caller_over_its_cap_is_refused_and_others_are_not() -> None:
    """One key cannot take every slot: its third open is refused (promptly, no sandbox
    taken) with an error naming the count, the limit and the setting, while another key and
    an address still open; ending one of its sessions frees its place at once."""
    pool = QuickPool()
    manager = capped(pool, 2)
    a1 = await manager.open("python", Sink(), client_id="key:a")
    await manager.open("python", Sink(), client_id="key:a", origin="rest", send_ready=False)
    assert manager.held_by("key:a") == 2
    with pytest.raises(TooManySessions) as info:
        await manager.open("python", Sink(), client_id="key:a", origin="jupyter")
    error = info.value
    assert isinstance(error, CapacityError)  # the at_capacity family: retry later
    assert (error.code, error.http_status, error.close_code) == ("too_many_sessions", 429, 1013)
    assert error.retry_after_header is not None
    assert error.message == (
        "too many sessions: this caller (key:a) has 2 open, the limit is 2 per API key or"
        " client address (MAX_SESSIONS_PER_KEY); end one of them first")
    assert len(pool.handed) == 2  # refused before a sandbox was taken
    assert manager.active == 2
    # Other callers are not held back by key:a's sessions: another key, an address.
    await manager.open("python", Sink(), client_id="key:b")
    await manager.open("python", Sink(), client_id="192.0.2.7")
    assert (manager.held_by("key:b"), manager.held_by("192.0.2.7")) == (1, 1)
    # A closed session frees its place, before its task (container removal) is over.
    await a1.feed(CloseRequest("client_closed", "bye"))
    async with asyncio.timeout(BOUND):
        await a1.closed.wait()
    assert manager.held_by("key:a") == 1
    await manager.open("python", Sink(), client_id="key:a")
    assert manager.held_by("key:a") == 2
    await manager.shutdown(grace=BOUND)


async def test_addresses_are_capped_too_and_zero_means_no_cap() -> None:
    pool = QuickPool()
    manager = capped(pool, 1)
    await manager.open("python", Sink(), client_id="127.0.0.1")
    with pytest.raises(TooManySessions, match=r"\(127\.0\.0\.1\) has 1 open"):
        await manager.open("python", Sink(), client_id="127.0.0.1")
    assert manager.refused == {"too_many_sessions": 1}  # counted for stats and metrics
    await manager.shutdown(grace=BOUND)

    unlimited = capped(QuickPool(), 0, max_concurrent_executions=5)
    for _ in range(5):
        await unlimited.open("python", Sink(), client_id="key:a")
    for _ in range(2):
        with pytest.raises(CapacityError) as info:  # only the service's own limit
            await unlimited.open("python", Sink(), client_id="key:a")
        assert info.value.code == "at_capacity"
    assert unlimited.refused == {"at_capacity": 2}
    await unlimited.shutdown(grace=BOUND)
    with pytest.raises(CapacityError, match="shutting down"):
        await unlimited.open("python", Sink(), client_id="key:a")
    assert unlimited.refused == {"at_capacity": 2}  # a stop is not a limit


async def test_a_dropped_session_waiting_for_its_client_keeps_its_place() -> None:
    """It still holds its sandbox for RESUME_GRACE, so it counts until it ends."""
    manager = capped(QuickPool(), 1, resume_grace=0.3)
    sink = Sink()
    runner = await manager.open("python", sink, client_id="key:a")
    await runner.feed(ClientGone(sink))
    async with asyncio.timeout(BOUND):
        while runner.attached:
            await asyncio.sleep(0.01)
    assert not runner.closed.is_set()
    with pytest.raises(TooManySessions):
        await manager.open("python", Sink(), client_id="key:a")
    async with asyncio.timeout(BOUND):
        await runner.closed.wait()  # resume_expired
    assert runner.core.close_reason == "resume_expired"
    assert manager.held_by("key:a") == 0
    await manager.open("python", Sink(), client_id="key:a")
    await manager.shutdown(grace=BOUND)


async def test_opens_waiting_for_a_sandbox_count_against_the_cap() -> None:
    """Opens at once, each waiting for the pool, must not all pass the check."""
    pool = SlowPool()
    manager = capped(pool, 1)
    first = asyncio.create_task(manager.open("python", Sink(), client_id="key:a"))
    async with asyncio.timeout(BOUND):
        await pool.asked.wait()
    assert manager.held_by("key:a") == 1
    with pytest.raises(TooManySessions):
        await manager.open("python", Sink(), client_id="key:a")
    pool.release.set()
    async with asyncio.timeout(BOUND):
        await first
    assert manager.held_by("key:a") == 1
    assert manager._reserved_by == {}  # no entry left behind per caller
    await manager.shutdown(grace=BOUND)


async def test_a_failed_open_gives_its_place_back() -> None:
    class NoPool:
        async def acquire(self, language: str) -> Sandbox:
            raise CapacityError("no sandbox")

    manager = capped(NoPool(), 1)
    for _ in range(2):
        with pytest.raises(CapacityError, match="no sandbox"):
            await manager.open("python", Sink(), client_id="key:a")
    assert manager.held_by("key:a") == 0 and manager._reserved_by == {}


@pytest.mark.parametrize(("name", "language"), [
    ("python", "python"), ("py", "python"), ("python3", "python"), ("Python", "python"),
    ("javascript", "javascript"), ("js", "javascript"), ("node", "javascript"),
    ("NodeJS", "javascript"), ("shell", "shell"), ("bash", "shell"), ("sh", "shell"),
    ("rust", "rust"), ("rs", "rust"),
])
def test_a_language_is_known_by_its_aliases_too(name: str, language: str) -> None:
    """Clients written for Piston, E2B or a Jupyter kernel send ``bash``, ``node`` or
    ``python3``; each alias, in any letter case, opens its language."""
    manager = SessionManager(Settings(), cast(DockerBackend, None), cast(WarmPool, None))
    assert manager.check_language(name) == language


@pytest.mark.parametrize(("name", "said"), [
    ("cobol", "language 'cobol' is not available; enabled: python, javascript"),
    ("bash", "language 'bash' (shell) is not available; enabled: python, javascript"),
    ("", "language '' is not available"),
    ("python ", "language 'python ' is not available"),
])
def test_a_name_of_no_enabled_language_is_refused_saying_which_are(name: str,
                                                                    said: str) -> None:
    settings = Settings(enable_shell=False, enable_rust=False)
    manager = SessionManager(settings, cast(DockerBackend, None), cast(WarmPool, None))
    with pytest.raises(LanguageUnavailable) as refused:
        manager.check_language(name)
    assert str(refused.value).startswith(said)
