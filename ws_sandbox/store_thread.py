"""The one thread a record store's disk work runs on, which may hang without holding anyone.

A write to a disk that hangs (a dead network mount, a device that stopped answering) never
returns, and nothing can end it. :class:`StoreThread` runs calls one at a time, in order, on
a daemon thread, so that such a call:

- holds no exit: a :class:`concurrent.futures.ThreadPoolExecutor`'s threads are joined when
  the interpreter exits, and a hung one kept the process from ending;
- can be seen (:meth:`StoreThread.busy_for`), so that callers are refused at once instead of
  queueing behind it;
- leaves the calls queued behind it cancellable: one whose caller gave up never runs.

Callers bound their waits with :func:`answer`, which raises
:class:`~ws_sandbox.exceptions.StoreUnavailable` when the thread has not answered in time.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from ws_sandbox.exceptions import StoreUnavailable

T = TypeVar("T")

_Call = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class StoreThread(Executor):
    """An executor of one daemon thread (``loop.run_in_executor`` takes it).

    Args:
        name: the thread's name.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._started_at: float | None = None  # written by the thread only
        self._shut = False
        self._thread, self._ended = daemon(self._serve, name)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)`` after every call queued before it."""
        if self._shut:
            raise RuntimeError("the store's thread is shut down")
        future: Future[T] = Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def busy_for(self) -> float:
        """Seconds the call now running has run (0.0 when none runs)."""
        started = self._started_at
        return 0.0 if started is None else time.monotonic() - started

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the thread once the calls queued before this one have run.

        Args:
            wait: wait for that (a thread that hangs makes this hang: the event loop's
                callers use :meth:`finished` with a deadline instead).
            cancel_futures: cancel the calls not yet started.
        """
        if not self._shut:
            self._shut = True
            if cancel_futures:
                for call in drain(self._calls):
                    if call is not None:
                        call[0].cancel()
            self._calls.put(None)
        if wait:
            self._thread.join()

    async def finished(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the thread to end after :meth:`shutdown`;
        whether it did (no: a call hangs)."""
        return await settled(self._ended, timeout)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args, kwargs = call
            if not future.set_running_or_notify_cancel():
                continue
            self._started_at = time.monotonic()
            error: BaseException | None = None
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the caller's to see, as an executor does
                error = exc
            # Idle before the caller hears: it may look at once (it saw a call "running" for
            # microseconds after its answer, in a CI run).
            self._started_at = None
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)


def daemon(target: Callable[[], None], name: str) -> tuple[threading.Thread, Future[None]]:
    """A daemon thread (not started) to run ``target``, and a future done once it returned
    (or raised), for the event loop to wait on with a deadline (:func:`settled`)."""
    ended: Future[None] = Future()

    def run() -> None:
        try:
            target()
        finally:
            ended.set_result(None)

    return threading.Thread(target=run, name=name, daemon=True), ended


def drain(items: queue.SimpleQueue[T]) -> list[T]:
    """Take everything ``items`` holds now, without waiting (from the thread that gives up
    on the one that should take it)."""
    taken = []
    while True:
        try:
            taken.append(items.get_nowait())
        except queue.Empty:
            return taken


async def settled(future: Future[Any], timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds for a thread's ``future``; whether it is done. Giving
    up leaves it as it is (``asyncio.timeout`` around ``asyncio.wrap_future`` would cancel
    it, and the thread's ``set_result`` would then raise)."""
    done, _ = await asyncio.wait([asyncio.wrap_future(future)], timeout=timeout)
    return bool(done)


async def answer(thread: StoreThread, fn: Callable[..., T], *args: Any, timeout: float | None,
                 what: str) -> T:
    """``fn(*args)`` on ``thread``, refused when the thread does not answer in time.

    Refused at once when the call running now has run ``timeout`` already (a write that
    hangs): a call queued behind it would wait as long again. A call that waited ``timeout``
    in the queue is taken out of it, never to run.

    Args:
        what: the store, for the error (``"the history's database"``).

    Raises:
        StoreUnavailable: naming how long the store has not answered.
    """
    if timeout is not None and (busy := thread.busy_for()) >= timeout:
        raise _unavailable(what, busy, timeout)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            return await loop.run_in_executor(thread, fn, *args)
    except TimeoutError:
        assert timeout is not None
        raise _unavailable(what, max(timeout, thread.busy_for()), timeout) from None


def _unavailable(what: str, waited: float, timeout: float) -> StoreUnavailable:
    return StoreUnavailable(f"{what} has not answered for {waited:.0f} s (a disk that hangs?);"
                            " try again later", retry_after=timeout)
