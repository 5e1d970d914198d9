"""An async client for ws_sandbox sessions, on the ``websockets`` library.

.. code-block:: python

    from ws_sandbox.client import connect

    async with connect("ws://127.0.0.1:8090", language="python") as session:
        result = await session.execute("print('hi')", on_output=print)
        print(result.status, result.stdout)

:meth:`ClientSession.execute` collects a cell's output (calling ``on_output`` live);
:meth:`ClientSession.stream` yields each frame of a cell as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.frames import DATA_OPCODES, Frame
from websockets.protocol import Event

from ws_sandbox import frames as fr
from ws_sandbox.exceptions import DECODE_ERRORS

_ids = itertools.count(1)


class _Connection(ClientConnection):
    """websockets' client connection, handing each complete message over as it arrives.

    websockets queues a message for ``recv()``: a reading task wakes to take it, and then
    the caller wakes for its result, two hops between tasks per cell (about 40 us of a
    0.8 ms cell). Here every message goes to :attr:`deliver` straight from the protocol's
    ``data_received``, reassembled when it came in fragments; until a session takes the
    connection over, :attr:`pending` holds them. Nothing is ever left for ``recv()``.
    Control frames, the closing handshake and every check of the frames stay websockets'.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.pending: list[bytes] = []
        self.deliver: Callable[[bytes], None] = self._hold
        self._fragments: list[bytes] = []
        self._arrived = self.loop.create_future()

    def _hold(self, data: bytes) -> None:
        self.pending.append(data)
        if not self._arrived.done():
            self._arrived.set_result(None)

    async def wait_pending(self) -> None:
        """Until a message is pending or the connection is closed."""
        if not self.pending:
            await asyncio.wait([self._arrived, self.connection_lost_waiter],
                               return_when=asyncio.FIRST_COMPLETED)

    def process_event(self, event: Event) -> None:
        if (self.response is None or not isinstance(event, Frame)
                or event.opcode not in DATA_OPCODES):
            super().process_event(event)  # the handshake's response; control frames
            return
        # The protocol already checked the order of fragments, their size and the masking.
        if not event.fin:
            self._fragments.append(bytes(event.data))
            return
        if self._fragments:
            self._fragments.append(bytes(event.data))
            data = b"".join(self._fragments)
            self._fragments.clear()
        else:
            data = bytes(event.data)
        self.deliver(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._arrived.done():
            self._arrived.set_result(None)


class SessionClosed(Exception):
    """The server closed the session; ``closed`` holds its ``closed`` frame, if it sent one."""

    def __init__(self, message: str, closed: fr.Closed | None = None) -> None:
        super().__init__(message)
        self.closed = closed


class SessionRefused(Exception):
    """The server refused to open (or resume) the session."""

    def __init__(self, error: fr.Error, close_code: int | None) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error
        self.close_code = close_code


@dataclass(slots=True)
class CellResult:
    """Everything one cell produced."""

    result: fr.Result
    stdout: str = ""
    stderr: str = ""
    displays: list[fr.Display] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The cell's status word."""
        return self.result.status


class _Collector:
    """Gathers one cell's frames for :meth:`ClientSession.execute`, as they arrive.

    The connection hands each frame straight to it, so a cell costs its caller one wake-up
    (the result), not one per frame.
    """

    __slots__ = ("displays", "done", "on_output", "stderr", "stdout")

    def __init__(self, on_output: Callable[[fr.Stream], object] | None) -> None:
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.displays: list[fr.Display] = []
        self.on_output = on_output
        self.done: asyncio.Future[CellResult] = asyncio.get_running_loop().create_future()

    def __call__(self, frame: fr.ServerFrame) -> None:
        if self.done.done():
            return
        match frame:
            case fr.Stream():
                (self.stdout if frame.name == "stdout" else self.stderr).append(frame.text)
                if self.on_output is not None:
                    try:
                        self.on_output(frame)
                    except Exception as exc:  # the caller's callback: its error is theirs
                        self.done.set_exception(exc)
            case fr.Display():
                self.displays.append(frame)
            case fr.Result():
                self.done.set_result(CellResult(frame, "".join(self.stdout),
                                                "".join(self.stderr), self.displays))
            case fr.Error():
                self.done.set_exception(SessionRefused(frame, None))
            case fr.Closed():
                self.done.set_exception(SessionClosed(f"session closed: {frame.reason}", frame))


class ClientSession:
    """One open session. Make it with :func:`connect`.

    The session reads the connection itself (``ws.recv()`` never returns a message).
    """

    def __init__(self, ws: _Connection, ready: fr.Ready) -> None:
        self.ws = ws
        self.ready = ready
        # Where each running cell's frames go: a collector (execute) or a queue (stream).
        self._cells: dict[str, Callable[[fr.ServerFrame], None]] = {}
        self.events: asyncio.Queue[fr.ServerFrame] = asyncio.Queue()
        self.closed: fr.Closed | None = None
        self._gave_up: asyncio.Future[None] | None = None  # closing after an invalid frame
        for data in ws.pending:  # what came right behind ``ready``
            self._receive(data)
        ws.pending.clear()
        ws.deliver = self._receive
        self._reader = asyncio.create_task(self._watch())

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self.ready.session_id

    @property
    def token(self) -> str:
        """The resume token of the last ``ready`` frame."""
        return self.ready.token

    def _check_open(self) -> None:
        """Refuse a new cell once nothing reads the connection (its result would never come)."""
        if self._reader.done():
            raise SessionClosed("session closed", self.closed)

    async def send(self, frame: fr.Frame) -> None:
        """Send any client frame.

        Raises:
            SessionClosed: the connection is closed.
        """
        try:
            await self.ws.send(fr.encode(frame), text=True)  # JSON is UTF-8 already
        except websockets.ConnectionClosed as exc:
            raise SessionClosed(f"session closed: {exc}", self.closed) from exc

    async def stream(self, code: str, *, timeout: float | None = None,
                     cell_id: str | None = None) -> AsyncIterator[fr.ServerFrame]:
        """Run a cell and yield its frames, ending with its ``result`` (or ``error``).

        Raises:
            SessionClosed: the session ended before the cell did.
        """
        self._check_open()
        cell_id = cell_id or f"c{next(_ids)}"
        queue: asyncio.Queue[fr.ServerFrame] = asyncio.Queue()
        self._cells[cell_id] = queue.put_nowait
        try:
            await self.send(fr.Execute(id=cell_id, code=code, timeout=timeout))
            while True:
                frame = await queue.get()
                if isinstance(frame, fr.Closed):
                    raise SessionClosed(f"session closed: {frame.reason}", frame)
                yield frame
                if isinstance(frame, (fr.Result, fr.Error)):
                    return
        finally:
            self._cells.pop(cell_id, None)

    async def execute(self, code: str, *, timeout: float | None = None,
                      on_output: Callable[[fr.Stream], object] | None = None) -> CellResult:
        """Run a cell and collect its output.

        ``on_output`` is called with each ``stream`` frame as it arrives, from the event
        loop's callback that reads the connection: it must return quickly and must not
        block (nothing else is read meanwhile). An exception it raises fails this cell's
        ``execute`` (the cell itself runs on).

        Raises:
            SessionRefused: the server refused the cell (``error`` frame).
            SessionClosed: the session ended before the cell did.
        """
        self._check_open()
        cell_id = f"c{next(_ids)}"
        collector = _Collector(on_output)
        self._cells[cell_id] = collector
        try:
            await self.send(fr.Execute(id=cell_id, code=code, timeout=timeout))
            return await collector.done
        finally:
            self._cells.pop(cell_id, None)

    async def interrupt(self) -> None:
        """Interrupt the running cell."""
        await self.send(fr.Interrupt())

    async def restart(self) -> None:
        """Restart the interpreter (the session's state is lost)."""
        await self.send(fr.Restart())

    async def close(self) -> None:
        """Close the connection (the server removes the sandbox)."""
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def wait_closed(self) -> fr.Closed | None:
        """Wait until the server ends the session; return its ``closed`` frame."""
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        return self.closed

    async def __aenter__(self) -> ClientSession:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def _receive(self, data: bytes) -> None:
        """One message from the server, handed over by the connection as it arrives."""
        if self._gave_up is not None:
            return  # an invalid frame came before: nothing after it counts
        try:
            frame = fr.decode_server(data)  # bytes: msgspec checks the UTF-8 as it parses
        # Not a frame of this protocol: give up (nothing may escape into data_received).
        except DECODE_ERRORS as exc:
            self.closed = fr.Closed(reason="client_closed",
                                    message=f"the server sent an invalid frame: {exc}")
            self._end_cells(self.closed)
            self._gave_up = asyncio.ensure_future(self.ws.close(1002, "invalid frame"))
            return
        if isinstance(frame, fr.Closed):
            self.closed = frame
            self._end_cells(frame)
            self.events.put_nowait(frame)
            return
        cell = getattr(frame, "id", None)
        deliver = self._cells.get(cell) if isinstance(cell, str) else None
        if deliver is not None:
            deliver(frame)
        else:
            self.events.put_nowait(frame)

    def _end_cells(self, closed: fr.Closed) -> None:
        for each in list(self._cells.values()):
            each(closed)

    async def _watch(self) -> None:
        """Until the connection is gone; then every running cell ends."""
        try:
            await self.ws.wait_closed()
        finally:
            self._end_cells(self.closed or fr.Closed(reason="client_closed",
                                                     message="connection lost"))


async def connect(url: str, *, language: str = "python", resume: str | None = None,
                  api_key: str | None = None, open_timeout: float | None = 60.0,
                  max_size: int | None = 16 * 1024 * 1024) -> ClientSession:
    """Open (or resume) a session.

    Args:
        url: the service's base URL, ``ws://host:port`` (a path is ignored).
        language: language of the session.
        resume: a token from an earlier ``ready`` frame, to resume that session.
        api_key: sent as ``Authorization: Bearer``.
        open_timeout: seconds to wait for the handshake, then as long for the ``ready``
            frame (after a refusal, as long again for the server to close).
        max_size: largest frame accepted from the server.

    Raises:
        SessionRefused: the server answered with an ``error`` frame.
    """
    base = url.rstrip("/")
    if "/api/" in base:
        base = base.split("/api/")[0]
    query = {"resume": resume} if resume else {"language": language}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    ws = await websockets.connect(f"{base}/api/v1/sessions/ws?{urlencode(query)}",
                                  additional_headers=headers, max_size=max_size,
                                  open_timeout=open_timeout, create_connection=_Connection)
    assert isinstance(ws, _Connection)
    try:
        async with asyncio.timeout(open_timeout):
            await ws.wait_pending()
            if not ws.pending:
                assert ws.protocol.close_exc is not None
                raise ws.protocol.close_exc
            first = fr.decode_server(ws.pending.pop(0))
        if isinstance(first, fr.Error):
            # The server closes after a refusal, and its close code says more; one that does
            # not close is waited for up to open_timeout again, and refused all the same.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(open_timeout):
                    await ws.wait_closed()
            raise SessionRefused(first, ws.close_code)
        if not isinstance(first, fr.Ready):
            raise SessionRefused(fr.Error(code="protocol", message=f"got {first!r}"), None)
    except BaseException:
        await ws.close()
        raise
    return ClientSession(ws, first)
