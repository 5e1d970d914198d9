"""A blocking client for ws_sandbox sessions, for scripts and notebooks without an event
loop of their own.

.. code-block:: python

    from ws_sandbox.blocking import connect

    with connect("ws://127.0.0.1:8090", language="python") as session:
        session.execute("x = 6")
        result = session.execute("print(x * 7)", on_output=lambda s: print(s.text, end=""))
        print(result.status, result.stdout == "42\n")

It wraps the async client (:mod:`ws_sandbox.client`): each session has an event loop of
its own, in a thread of its own, and every method blocks until the async one it calls has
returned, with the same arguments, results, bounds and errors. ``on_output`` is called from
that thread: there, :meth:`BlockingSession.interrupt` is sent without waiting,
:meth:`~BlockingSession.events` works, and the other methods, which would wait for the
thread that is calling them, raise :class:`CalledFromCallback`. A Ctrl-C
(``KeyboardInterrupt``) while a cell runs interrupts the cell on the server too, then
raises: the session goes on, as a notebook's does. A session nobody closes is closed when it
is collected (not at exit: its connection drops with the process, and the service keeps the
session for a resume until its ``RESUME_GRACE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, TypeVar

from ws_sandbox import frames as fr
from ws_sandbox.client import (
    RESULT_GRACE,
    CellResult,
    ClientError,
    ClientSession,
    SessionClosed,
    UnknownFrame,
)
from ws_sandbox.client import connect as connect_async

__all__ = ["BlockingSession", "CalledFromCallback", "connect"]

T = TypeVar("T")


class CalledFromCallback(ClientError, RuntimeError):
    """A blocking session's method was called from the session's own thread (an
    ``on_output`` callback), where waiting for it would wait for itself for ever. Only
    :meth:`BlockingSession.interrupt` (sent without waiting) and
    :meth:`~BlockingSession.events` may be called there; call the others after ``execute``
    returns, or from another thread."""


_FROM_CALLBACK = ("a session method was called from the session's own thread (an on_output"
                  " callback), where it would wait for itself: only interrupt() and events()"
                  " may be called there; call the others after execute() returns, or from"
                  " another thread")


class _LoopThread:
    """An event loop running in a daemon thread until :meth:`stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._started: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._run, name="ws-sandbox-client",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # A Ctrl-C's SIGINT may go to any thread that does not block it (Linux prefers the
        # main thread): taken by this one, the caller's wait would not end until the call
        # did.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()  # (stopped by stop(), or by a collected session's close)

    def on_loop(self) -> bool:
        """Whether the caller is the loop's own thread (an ``on_output`` callback)."""
        return threading.get_ident() == self._thread.ident

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop; block until it ends. A ``KeyboardInterrupt`` of
        the waiting thread cancels it, then is raised.

        Raises:
            SessionClosed: the session was closed (its loop is gone).
            CalledFromCallback: the caller is the loop's own thread.
        """
        if self.loop.is_closed() or self.on_loop():
            coroutine.close()  # never to run: no "never awaited" warning
            if self.loop.is_closed():
                raise SessionClosed("client_closed", "the session is closed")
            raise CalledFromCallback(_FROM_CALLBACK)
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def start_soon(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Start ``coroutine`` on the loop from the loop's own thread, without waiting for
        it; what it raises is dropped (the session ended: the callback's cell ends too)."""
        task = self.loop.create_task(coroutine)
        self._started.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._started.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning

    def stop(self) -> None:
        """Cancel what still runs on the loop (a call given up by a Ctrl-C), then stop it."""
        if self.loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self.loop).result(5.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()


async def _cancel_the_rest() -> None:
    rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


class BlockingSession:
    """One open session, blocking. Make it with :func:`connect`; see
    :class:`~ws_sandbox.client.ClientSession` for each method's bounds and errors."""

    def __init__(self, session: ClientSession, runner: _LoopThread) -> None:
        self.session = session
        """The async session it wraps (use it on :attr:`loop` only)."""
        self._runner = runner
        # A session nobody closed (a notebook cell run again makes a new one) is closed when
        # it is collected: its thread, socket and sandbox are not left behind. Not at exit,
        # where a close could wait on a loop thread a callback holds, and a process may
        # leave a session for another to resume (a review); nor in a forked child, which has
        # no loop thread and shares the parent's socket.
        self._finalizer = weakref.finalize(self, _close_unused, session, runner, os.getpid())
        self._finalizer.atexit = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The session's event loop (in a thread of its own)."""
        return self._runner.loop

    @property
    def ready(self) -> fr.Ready:
        """The ``ready`` frame the session opened (or resumed) with."""
        return self.session.ready

    @property
    def session_id(self) -> str:
        return self.session.session_id

    @property
    def token(self) -> str:
        """The resume token: ``connect(url, resume=token)`` resumes the session."""
        return self.session.token

    def execute(self, code: str, *, timeout: float | None = None,
                on_output: Callable[[fr.Stream], object] | None = None,
                cell_id: str | None = None, program: bool = False) -> CellResult:
        """Run a cell and collect its output (``on_output`` is called from the session's
        thread); a ``KeyboardInterrupt`` while it runs interrupts it on the server too."""
        return self._cell(self.session.execute(code, timeout=timeout, on_output=on_output,
                                               cell_id=cell_id, program=program))

    def stream(self, code: str, *, timeout: float | None = None, cell_id: str | None = None,
               program: bool = False) -> Generator[fr.ServerFrame, None, None]:
        """Run a cell and yield its frames, ending with its ``result`` (or ``error``). Leave
        the loop early only through ``with contextlib.closing(session.stream(...))``, or
        the session waits for the generator to be collected before it reads on."""
        frames = self.session.stream(code, timeout=timeout, cell_id=cell_id, program=program)
        try:
            while True:
                try:
                    frame = self._cell(anext(frames))
                except StopAsyncIteration:
                    return
                yield frame
        finally:
            # (a generator outliving its session, or run by ``on_output``: never started)
            if not self._runner.loop.is_closed() and not self._runner.on_loop():
                self._runner.call(frames.aclose())

    def interrupt(self) -> None:
        """Interrupt the running cell. From ``on_output`` (the session's own thread), the
        interrupt is sent without waiting."""
        if self._runner.on_loop():
            self._runner.start_soon(self.session.interrupt())
            return
        self._runner.call(self.session.interrupt())

    def restart(self) -> fr.Restarted:
        """Restart the interpreter; return the ``restarted`` frame that answers it."""
        return self._runner.call(self.session.restart())

    def events(self) -> list[fr.ServerFrame | UnknownFrame]:
        """Take the frames waiting in the session's :attr:`~.ClientSession.events` (from
        ``on_output`` too: it does not wait)."""
        def take() -> list[fr.ServerFrame | UnknownFrame]:
            queue = self.session.events
            return [queue.get_nowait() for _ in range(queue.qsize())]

        async def taken() -> list[fr.ServerFrame | UnknownFrame]:
            return take()

        return take() if self._runner.on_loop() else self._runner.call(taken())

    def close(self) -> None:
        """Close the session (the server removes the sandbox) and stop its thread.

        Raises:
            CalledFromCallback: called from ``on_output``.
        """
        if self._runner.on_loop():
            raise CalledFromCallback(_FROM_CALLBACK)
        self._finalizer.detach()
        _close(self.session, self._runner)

    def _cell(self, awaitable: Awaitable[T]) -> T:
        """Wait for a cell's call; on Ctrl-C, interrupt the cell on the server too."""
        if (self._runner.loop.is_closed() or self._runner.on_loop()) and (
                inspect.iscoroutine(awaitable)):
            awaitable.close()  # (``call`` refuses it: no "never awaited" warning)
        try:
            return self._runner.call(_awaited(awaitable))
        except KeyboardInterrupt:
            if self.session.ended is None:
                with contextlib.suppress(Exception):  # the Ctrl-C is what the caller gets
                    self._runner.call(self.session.interrupt())
            raise

    def __enter__(self) -> BlockingSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _close(session: ClientSession, runner: _LoopThread) -> None:
    try:
        if not runner.loop.is_closed():
            runner.call(session.close())
    finally:
        runner.stop()


def _close_unused(session: ClientSession, runner: _LoopThread, pid: int) -> None:
    """Close a session its caller let go of without closing it (in the process that opened
    it). Collected in its own thread (the last reference dropped by a callback), it closes
    there without waiting, and the loop stops once it has."""
    if os.getpid() != pid:
        return
    if runner.on_loop():
        async def close_and_stop() -> None:
            try:
                await session.close()
            finally:
                runner.loop.stop()

        runner.start_soon(close_and_stop())
        return
    with contextlib.suppress(ClientError):  # nobody is there to be told
        _close(session, runner)


def connect(url: str, *, language: str = "python", resume: str | None = None,
            api_key: str | None = None, open_timeout: float | None = 60.0,
            max_size: int | None = 16 * 1024 * 1024,
            result_grace: float | None = RESULT_GRACE,
            max_events: int = 1024) -> BlockingSession:
    """Open (or resume) a session, blocking; the arguments, and the errors, are those of
    :func:`ws_sandbox.client.connect`. Use it as a context manager, or call
    :meth:`BlockingSession.close`."""
    # The arguments are checked here, in the caller's thread, before a thread starts.
    opening = connect_async(url, language=language, resume=resume, api_key=api_key,
                            open_timeout=open_timeout, max_size=max_size,
                            result_grace=result_grace, max_events=max_events)
    runner = _LoopThread()
    try:
        session = runner.call(_awaited(opening))
    except BaseException:
        runner.stop()
        raise
    return BlockingSession(session, runner)

