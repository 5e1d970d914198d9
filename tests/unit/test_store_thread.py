"""``ws_sandbox.store_thread``: a store's thread that hangs holds no caller and no exit."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ws_sandbox.exceptions import StoreUnavailable
from ws_sandbox.store_thread import StoreThread, answer

BOUND = 10.0


async def test_calls_run_in_order_and_give_back_results_and_errors() -> None:
    thread = StoreThread("t")
    ran: list[int] = []

    def fail() -> None:
        raise ValueError("no")

    futures = [thread.submit(ran.append, n) for n in range(50)]
    async with asyncio.timeout(BOUND):
        assert await answer(thread, lambda: len(ran), timeout=1.0, what="w") == 50
        with pytest.raises(ValueError, match="no"):
            await answer(thread, fail, timeout=1.0, what="w")
    assert ran == list(range(50)) and all(f.done() for f in futures)
    thread.shutdown(wait=False)
    assert await thread.finished(BOUND)


async def test_a_call_that_hangs_refuses_the_next_at_once_and_drops_what_gave_up() -> None:
    """Behind a call that never returns (a write to a disk that hangs), a caller is refused
    after the timeout, the next one at once (not after as long again), and a call whose
    caller gave up never runs, even once the thread answers again."""
    thread = StoreThread("t")
    release = threading.Event()
    ran: list[str] = []
    hung = thread.submit(release.wait, 60)
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable) as first:
            await answer(thread, ran.append, "late", timeout=0.5, what="the store")
        assert time.monotonic() - start < BOUND
        assert first.value.http_status == 503 and first.value.code == "store_unavailable"
        assert first.value.message.startswith("the store has not answered for")
        assert "a disk that hangs?" in first.value.message
        assert first.value.retry_after == 0.5
        await asyncio.sleep(0.1)  # the hung call has now run longer than the timeout
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await answer(thread, ran.append, "later", timeout=0.5, what="the store")
        assert time.monotonic() - start < 0.5  # refused without waiting the timeout again
        assert thread.busy_for() >= 0.5
        assert not await thread.finished(0.2)
    finally:
        release.set()
    async with asyncio.timeout(BOUND):
        assert await asyncio.wrap_future(hung) is True
        await answer(thread, ran.append, "now", timeout=1.0, what="w")
    assert ran == ["now"]  # the calls given up on never ran
    assert thread.busy_for() == 0.0
    thread.shutdown(wait=False)
    assert await thread.finished(BOUND)


async def test_shutdown_cancels_what_has_not_started() -> None:
    thread = StoreThread("t")
    release = threading.Event()
    thread.submit(release.wait, 60)
    queued = thread.submit(lambda: None)
    thread.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="shut down"):
        thread.submit(lambda: None)
    release.set()
    assert await thread.finished(BOUND)


def test_the_thread_is_a_daemon() -> None:
    """A ThreadPoolExecutor's threads are joined at the interpreter's exit: one that hangs
    kept the service from exiting (test_surface proves the exit itself)."""
    thread = StoreThread("t")
    assert thread._thread.daemon
    thread.shutdown()
