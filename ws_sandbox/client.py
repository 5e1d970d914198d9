"""An async client for ws_sandbox sessions, on the ``websockets`` library.

.. code-block:: python

    from ws_sandbox.client import connect

    async with connect("ws://127.0.0.1:8090", language="python") as session:
        result = await session.execute("print('hi')", on_output=lambda s: print(s.text, end=""))
        print(result.status)

``connect`` works like ``websockets.connect``: ``async with connect(...)`` closes the
session at the end; ``session = await connect(...)`` (then ``async with session`` or
``await session.close()``) works too.

:func:`execute_once` makes the one-shot REST call (``POST /api/v1/execute``), blocking.

:meth:`ClientSession.execute` collects a cell's output (calling ``on_output`` live);
:meth:`ClientSession.stream` yields each frame of a cell as it arrives. Every wait for a
cell is bounded: its timeout (or the session's default), the cells queued before it, and
``result_grace`` (:class:`ClientSession`); past that the client closes the session and
raises :class:`ResultTimeout`. Errors: :class:`ClientError` and its subclasses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import http.client
import inspect
import itertools
import math
import operator
import secrets
import types
import urllib.error
import urllib.request
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlencode, urlsplit, urlunsplit

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.frames import DATA_OPCODES, Frame
from websockets.protocol import Event, State

from ws_sandbox import frames as fr
from ws_sandbox.exceptions import DECODE_ERRORS, PayloadTooLarge
from ws_sandbox.session import check_code_size


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


class ClientError(Exception):
    """Base class of every error of this client.

    .. code-block:: text

        ClientError
        ├── ConnectFailed     no session opened: a bad URL, a failed handshake, no answer
        ├── SessionRefused    the server refused the session, or one cell (``error`` frame)
        ├── SessionClosed     the session ended; ``reason`` says how
        │   └── ResultTimeout a cell's result did not come in time (the session is closed)
        └── CellIdInUse       ``stream(cell_id=...)`` with an id this client still uses
    """


class ConnectFailed(ClientError):
    """No session could be opened: a bad URL, a failed handshake or no answer in time.

    Attributes:
        http_status: the HTTP status of an answer that was neither an upgrade nor the
            service's refusal (a plain web server's 200, a proxy's 502), if that is how.
    """

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class SessionClosed(ClientError):
    """The session ended before the cell (or the call) did.

    Attributes:
        reason: the server's close reason (``protocol/spec.md``; a later version's may be
            a word this client does not know) when it sent a ``closed`` frame; else one of
            the client's own: ``client_closed`` (this client closed),
            ``connection_lost`` (the connection dropped; the message has the close code),
            ``resumed_elsewhere`` (another connection resumed the session, which goes on
            there: close code 4000),
            ``protocol_error`` (the server sent something that is not a frame of the
            protocol, even read as :func:`decode_server_frame` reads it) or
            ``result_timeout`` (see :class:`ResultTimeout`).
        message: what happened, in words.
        closed: the server's ``closed`` frame, if it sent one.
    """

    def __init__(self, reason: str, message: str = "", closed: fr.Closed | None = None) -> None:
        super().__init__(f"session closed: {reason}" + (f": {message}" if message else ""))
        self.reason = reason
        self.message = message
        self.closed = closed


class ResultTimeout(SessionClosed):
    """A cell's result did not come within its bound: the server broke its promise, and
    the client closed the session. Other cells of the session fail with
    :class:`SessionClosed` (reason ``result_timeout``).

    Attributes:
        cell_id: the cell whose result never came.
        waited: seconds waited for it, since it became the first unfinished cell.
    """

    def __init__(self, cell_id: str, waited: float) -> None:
        super().__init__("result_timeout", f"no result for cell {cell_id!r} after waiting "
                                           f"{waited:.1f} s (its timeout and the grace)")
        self.cell_id = cell_id
        self.waited = waited


class SessionRefused(ClientError):
    """The server refused to open (or resume) the session, or refused one cell.

    Attributes:
        error: the server's ``error`` frame (for a refused upgrade, its JSON error body).
        close_code: the WebSocket close code that followed, if any.
        http_status: the HTTP status of a refused upgrade (401, 403, ...), if that is how.
    """

    def __init__(self, error: fr.Error, close_code: int | None,
                 http_status: int | None = None) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error
        self.close_code = close_code
        self.http_status = http_status


class CellIdInUse(ClientError, ValueError):
    """``stream(cell_id=...)`` was given an id of a cell of this client still unfinished."""


@dataclass(slots=True)
class CellResult:
    """Everything one cell produced."""

    result: fr.Result
    stdout: str = ""
    stderr: str = ""
    displays: list[fr.Display] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The cell's status word (from a later version of the service, perhaps one this
        client does not know: then it is neither ``success`` nor a failure it knows)."""
        return self.result.status


class UnknownFrame(msgspec.Struct, frozen=True):
    """A server frame of a ``type`` this client does not know: a later version of the
    protocol may add frames (``protocol/spec.md``). It goes to :attr:`ClientSession.events`
    whole, even when it names a cell of this client; the cell goes on."""

    type: str
    data: dict[str, Any]
    """The whole frame, as JSON decodes it."""


def _open_words(annotation: Any) -> Any:
    """``annotation`` with each closed set of words (a ``Literal``) opened to any ``str``."""
    if get_origin(annotation) is Literal:
        return str
    if isinstance(annotation, types.UnionType):
        return functools.reduce(operator.or_, map(_open_words, get_args(annotation)))
    return annotation


def _opened(cls: type[fr.Frame]) -> msgspec.json.Decoder[Any]:
    """A decoder of frame ``cls`` that keeps a word it does not know (a ``status``, a
    ``reason``...) as it is; every other check stays."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for info in msgspec.structs.fields(cls):
        if info.default is not msgspec.NODEFAULT:
            fields.append((info.name, _open_words(info.type), info.default))
        elif info.default_factory is not msgspec.NODEFAULT:
            fields.append((info.name, _open_words(info.type),
                           msgspec.field(default_factory=info.default_factory)))
        else:
            fields.append((info.name, _open_words(info.type)))
    config = cls.__struct_config__
    return msgspec.json.Decoder(msgspec.defstruct(
        f"Open{cls.__name__}", fields, kw_only=True, tag_field=config.tag_field,
        tag=config.tag))


_OPENED = {cls.__struct_config__.tag: (cls, _opened(cls)) for cls in get_args(fr.ServerFrame)}


class _Type(msgspec.Struct):
    type: str


_type_decoder = msgspec.json.Decoder(_Type)
_object_decoder = msgspec.json.Decoder(dict[str, Any])


def decode_server_frame(data: bytes) -> fr.ServerFrame | UnknownFrame:
    """A server frame, read as a client of protocol v1 must read it for later versions.

    Fields it does not know are ignored; a word it does not know in a field that names one
    of a few (a ``result``'s ``status``, a ``stream``'s ``name``, a ``display``'s ``kind``,
    a ``restarted`` or ``closed`` frame's ``reason``) is kept as the string it is; a frame
    of a ``type`` it does not know is an :class:`UnknownFrame`. Everything else must be as
    the protocol says.

    Raises:
        msgspec.DecodeError, RecursionError, UnicodeDecodeError (see
        :data:`ws_sandbox.exceptions.DECODE_ERRORS`): not a frame, even so.
    """
    try:
        return fr.decode_server(data)  # what this version knows: the common, fast path
    except msgspec.ValidationError:
        pass
    kind = _type_decoder.decode(data).type
    known = _OPENED.get(kind)
    if known is None:
        return UnknownFrame(kind, _object_decoder.decode(data))
    cls, decoder = known
    frame: fr.ServerFrame = cls(**msgspec.structs.asdict(decoder.decode(data)))
    return frame


Route = Callable[[fr.ServerFrame | SessionClosed], None]
"""Where a cell's frames go, and finally the error that ended the session, if one did."""


class _Collector:
    """Gathers one cell's frames for :meth:`ClientSession.execute`, as they arrive.

    The connection hands each frame straight to it, so a cell costs its caller one wake-up
    (the result), not one per frame.
    """

    __slots__ = ("allowance", "displays", "done", "on_output", "over", "stderr", "stdout")

    def __init__(self, on_output: Callable[[fr.Stream], object] | None, allowance: int,
                 over: Callable[[], None]) -> None:
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.displays: list[fr.Display] = []
        self.on_output = on_output
        self.allowance = allowance
        """Characters of output still accepted (:func:`ws_sandbox.frames.output_allowance`)."""
        self.over = over
        """Called once the server sent more: it broke its promise, the session ends."""
        self.done: asyncio.Future[CellResult] = asyncio.get_running_loop().create_future()

    def __call__(self, frame: fr.ServerFrame | SessionClosed) -> None:
        if self.done.done():
            return
        match frame:
            case fr.Stream():
                self.allowance -= len(frame.text)
                if self.allowance < 0:
                    self.over()
                    return
                if frame.name == "stdout":
                    self.stdout.append(frame.text)
                elif frame.name == "stderr":
                    self.stderr.append(frame.text)
                # (a stream this client does not know only goes to on_output)
                if self.on_output is not None:
                    try:
                        returned = self.on_output(frame)
                        if inspect.iscoroutine(returned):
                            raise _awaitable_callback(returned)
                    # The caller's callback: its error is theirs, raised where they wait.
                    # Even SystemExit: out of the connection's data_received it would stop
                    # the loop with websockets halfway through a read.
                    except BaseException as exc:
                        self.done.set_exception(exc)
            case fr.Display():
                self.allowance -= fr.display_chars(frame.data)
                if self.allowance < 0:
                    self.over()
                    return
                self.displays.append(frame)
            case fr.Result():
                self.done.set_result(CellResult(frame, "".join(self.stdout),
                                                "".join(self.stderr), self.displays))
            case fr.Error():
                self.done.set_exception(SessionRefused(frame, None))
            case SessionClosed():
                self.done.set_exception(frame)


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    """Take a done future's error, if any, as seen: a session that ended while a cell or a
    restart was being sent failed its future and the send alike, and the caller got the
    send's error; asyncio then printed "Future exception was never retrieved" for the
    other (a soak test)."""
    if future.done() and not future.cancelled():
        future.exception()


def _awaitable_callback(returned: object) -> TypeError:
    """The error of an ``on_output`` that is an ``async def`` (or returned a coroutine):
    nothing would run it, and its output was lost without a word (a review). A task or a
    future it returns runs on its own, and is let be."""
    if inspect.iscoroutine(returned):
        returned.close()  # never awaited, on purpose: no "never awaited" warning
    return TypeError("on_output must be a plain function: it is called as each frame is"
                     " read, and a coroutine it returns is not awaited (start a task from"
                     " it, or use stream() to await something for each frame)")


class _StreamQueue:
    """One :meth:`ClientSession.stream` cell's frames, waiting for its consumer.

    Bounded by back-pressure: at :data:`STREAM_QUEUE_HIGH` frames the session stops reading
    the connection (``pause_reading``) until the consumer takes it down to half; what was
    already read when it paused still comes in (at most one read's worth). The server then
    stops too (``protocol/spec.md``, "Backpressure"), so nothing piles up anywhere.
    """

    __slots__ = ("frames", "pause", "waiter")

    def __init__(self, pause: Callable[[bool], None]) -> None:
        self.frames: collections.deque[fr.ServerFrame | SessionClosed] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.pause = pause

    def __call__(self, frame: fr.ServerFrame | SessionClosed) -> None:
        self.frames.append(frame)
        if len(self.frames) >= STREAM_QUEUE_HIGH:
            self.pause(True)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self) -> fr.ServerFrame | SessionClosed:
        while not self.frames:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        frame = self.frames.popleft()
        if len(self.frames) <= STREAM_QUEUE_HIGH // 2:
            self.pause(False)
        return frame


STREAM_QUEUE_HIGH = 256
"""Frames a :meth:`ClientSession.stream` cell may have waiting before reading pauses."""


RESULT_GRACE = 60.0
"""Default seconds a cell's result may come after its timeout: the service's own interrupt
grace and restart (6 s by default), or a new sandbox (``ACQUIRE_TIMEOUT``, 30 s), and some."""


@dataclass(slots=True)
class _Pending:
    """A cell sent and not finished (no ``result`` or ``error`` yet), in sending order."""

    timeout: float
    """Its effective timeout: the one it was sent with, else the session's default, capped
    by the session's maximum."""
    since: float | None = None
    """When it became the first unfinished cell (loop time): its bound starts there."""
    restarted: bool = False
    """Whether its bound started again on a ``restarted`` frame (once at most)."""


class ClientSession:
    """One open session. Make it with :func:`connect`.

    The session reads the connection itself (``ws.recv()`` never returns a message).

    Every cell is bounded on this side too. The server runs a session's cells in order,
    each within its timeout (plus an interrupt and a restart): so the client expects the
    result of its first unfinished cell within that cell's timeout plus ``result_grace``
    seconds from when it became first (sent, or the previous cell finished). The bound
    starts again, once, at a ``restarted`` frame (the cell waited for a restart or a new
    sandbox before it could run); in a resumed session it also allows for the cells the
    earlier connection may still have running and queued, until one of its own ends. If the
    result does not come, the server broke its promise: the client closes the session, the
    cell fails with :class:`ResultTimeout` and the others with :class:`SessionClosed`.

    Frames without a cell id (``restarted``, ``closed``, an ``error`` without ``id``), frames
    of a cell whose caller stopped waiting, frames of cells this session did not send
    (after a resume, those of the cells the earlier connection sent) and frames of a type
    this client does not know (:class:`UnknownFrame`, :func:`decode_server_frame`) go to
    :attr:`events`,
    which keeps the latest ``max_events``: older ones are dropped and counted in
    :attr:`events_dropped`, so a server that floods them cannot fill the client's memory.
    """

    def __init__(self, ws: _Connection, ready: fr.Ready, *,
                 result_grace: float | None = RESULT_GRACE, max_events: int = 1024) -> None:
        self.ws = ws
        self.ready = ready
        self.result_grace = _check_seconds("result_grace", result_grace)
        _check_max_events(max_events)
        # Resumed, the session may still run and queue cells the earlier connection sent,
        # ahead of this one's: until one of this connection's cells ends, the first one's
        # bound allows for each of them (a running one and the most that may wait).
        limits = ready.limits
        self._earlier = ((limits.max_queued_cells + 1) * limits.max_execution_time
                         if ready.resumed else 0.0)
        # Where each waited-for cell's frames go: a collector (execute) or a queue (stream).
        self._cells: dict[str, Route] = {}
        self._pending: dict[str, _Pending] = {}  # insertion order is sending order
        self._prefix = secrets.token_hex(6)  # ids unique across processes (resume)
        self._ids = itertools.count(1)
        self._deadline: asyncio.TimerHandle | None = None
        self._paused: set[int] = set()  # the stream queues that paused reading
        self._paused_at = 0.0  # when reading paused (loop time)
        self._paused_total = 0.0  # seconds paused before that
        # restart() calls waiting for their answer, by request id, in sending order.
        self._restarts: dict[str, asyncio.Future[fr.Restarted]] = {}
        self.events: asyncio.Queue[fr.ServerFrame | UnknownFrame] = asyncio.Queue(
            maxsize=max_events)
        self.events_dropped = 0
        self.closed: fr.Closed | None = None
        """The server's ``closed`` frame, if it sent one."""
        self.ended: SessionClosed | None = None
        """Why the session ended, once it did (the error its cells failed with)."""
        self._gave_up: asyncio.Future[None] | None = None  # closing on the client's side
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
        if self.ended is not None:
            raise self._closed_error()
        if self._reader.done() or self._gave_up is not None:
            raise SessionClosed("client_closed", "the session is closed", self.closed)

    def _closed_error(self) -> SessionClosed:
        ended = self.ended or SessionClosed("client_closed", "the session is closed")
        if isinstance(ended, ResultTimeout):  # that cell's error; the others' is this
            return SessionClosed(ended.reason, ended.message)
        return SessionClosed(ended.reason, ended.message, ended.closed)

    async def send(self, frame: fr.Frame) -> None:
        """Send any client frame.

        Raises:
            SessionClosed: the connection is closed.
        """
        await self._send_data(fr.encode(frame))

    async def _send_data(self, data: bytes) -> None:
        try:
            await self.ws.send(data, text=True)  # JSON is UTF-8 already
        except websockets.ConnectionClosed as exc:
            if self.ended is not None:
                raise self._closed_error() from exc
            raise self._lost() from exc

    def _lost(self) -> SessionClosed:
        """Why the connection ended, as this client tells it: ``resumed_elsewhere`` when
        another connection resumed the session (close code 4000: it lives on there, and
        resuming it here would take it back; it read as a lost connection), else
        ``connection_lost``."""
        closed = self.ws.protocol.state is State.CLOSED
        # close_exc asserts the connection is CLOSED (it is not yet when cancelled).
        exc = self.ws.protocol.close_exc if closed else None
        received = self.ws.protocol.close_rcvd if closed else None
        reason = ("resumed_elsewhere" if received is not None and received.code == 4000
                  else "connection_lost")
        return SessionClosed(reason, str(exc) if exc else "connection lost", self.closed)

    def _start(self, cell_id: str, code: str, timeout: float | None, route: Route, *,
               program: bool = False) -> bytes:
        """Check and encode a cell, then register it (its route, its place in the order);
        return the frame to send. A cell that cannot be sent, or that the server could only
        refuse without its id (which would leave its caller waiting), is refused here and
        registers nothing."""
        self._check_open()
        timeout = _check_seconds("timeout", timeout)
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        if not 1 <= len(cell_id) <= fr.MAX_CELL_ID:
            raise ValueError(f"a cell id has 1 to {fr.MAX_CELL_ID} characters, not"
                             f" {len(cell_id)}")
        try:
            data = fr.encode(fr.Execute(id=cell_id, code=code, timeout=timeout,
                                        program=program))
        except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8, so no frame
            what = "cell id" if _is_utf8(code) else "code"
            raise SessionRefused(fr.Error(
                code="bad_request", message=f"invalid frame: the {what} cannot be encoded as"
                f" UTF-8 (character {exc.start}: {exc.reason})", id=cell_id), None) from None
        limits = self.ready.limits
        try:  # refused as the server would, in its words, before sending it
            check_code_size(code, limits.max_code_bytes)
        except PayloadTooLarge as exc:
            raise SessionRefused(fr.Error(code=exc.code, message=exc.message, id=cell_id),
                                 None) from None
        effective = min(limits.default_execution_time if timeout is None else timeout,
                        limits.max_execution_time)
        self._cells[cell_id] = route
        self._pending[cell_id] = _Pending(effective)
        if len(self._pending) == 1:
            self._arm()
        return data

    def _new_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    async def stream(self, code: str, *, timeout: float | None = None,
                     cell_id: str | None = None,
                     program: bool = False) -> AsyncGenerator[fr.ServerFrame, None]:
        """Run a cell and yield its frames, ending with its ``result`` (or ``error``).

        A consumer that stops taking frames holds the whole session up: past a few hundred
        waiting frames the client stops reading the connection (the server then stops the
        sandbox, and disconnects a client that takes nothing for its ``SEND_TIMEOUT``; the
        session waits for a resume). The time reading is paused is the consumer's: the
        result bound (``result_grace``) does not run meanwhile. A loop that may leave early
        (``break``, an exception) should close the generator, so that the session reads on
        at once rather than when the generator is collected (``cell_id`` and ``program``:
        as for :meth:`execute`):

        .. code-block:: python

            async with contextlib.aclosing(session.stream(code)) as frames:
                async for frame in frames:
                    ...

        Raises:
            SessionClosed: the session ended before the cell did (:class:`ResultTimeout`
                when its result did not come in time).
            SessionRefused: as for :meth:`execute`.
            CellIdInUse: ``cell_id`` is the id of an unfinished cell of this client.
            ValueError: ``timeout`` is not a positive number of seconds.
        """
        cell_id = self._cell_id(cell_id)
        queue = _StreamQueue(lambda pause: self._pause(id(queue), pause))
        request = self._start(cell_id, code, timeout, queue, program=program)
        try:
            await self._send_data(request)
            while True:
                frame = await queue.get()
                if isinstance(frame, SessionClosed):
                    raise frame
                yield frame
                if isinstance(frame, (fr.Result, fr.Error)):
                    return
        finally:
            self._cells.pop(cell_id, None)
            # Frames that came and were not taken (the consumer left early) go where a cell
            # nobody waits for sends its frames.
            for left in queue.frames:
                if not isinstance(left, SessionClosed):
                    self._event(left)
            queue.frames.clear()
            self._pause(id(queue), False)

    def _cell_id(self, chosen: str | None) -> str:
        """The id for a new cell: ``chosen``, unless an unfinished cell has it, or a new one."""
        if chosen is not None and (chosen in self._pending or chosen in self._cells):
            raise CellIdInUse(f"cell id {chosen!r} is already in use by an unfinished cell "
                              "of this session")
        return self._new_id() if chosen is None else chosen

    async def execute(self, code: str, *, timeout: float | None = None,
                      on_output: Callable[[fr.Stream], object] | None = None,
                      cell_id: str | None = None, program: bool = False) -> CellResult:
        """Run a cell and collect its output.

        ``timeout`` (seconds, positive and finite) is the cell's bound on the server; None
        means the session's default. The client waits for the result at most that long
        (plus the cells queued before it, and ``result_grace``): see :class:`ClientSession`.

        ``on_output`` is called with each ``stream`` frame as it arrives, from the event
        loop's callback that reads the connection: it must return quickly and must not
        block (nothing else is read meanwhile). An exception it raises (even ``SystemExit``)
        is raised by this cell's ``execute`` (the cell itself runs on). It is not awaited:
        an ``async def`` is refused (``TypeError``) before the cell is sent, and a callback
        that returns a coroutine fails the cell the same way (one that starts a task, with
        ``asyncio.ensure_future``, is fine); :meth:`stream` suits a consumer that awaits.

        ``cell_id`` names the cell (its frames carry it; by default the client makes one
        up): a caller whose connection dropped finds the cell's frames by it among
        :attr:`events` of the resumed session (all of them, unless the service made more
        while the connection was down than it keeps: the ``ready`` frame's
        ``frames_dropped`` says how many it did not keep, the oldest first).

        ``program=True`` runs the cell as a whole program: its end waits for the work it
        left, as the program's exit would (Python: threads that are not daemons, an
        executor's queue, ``atexit`` functions), as a one-shot call does; a notebook cell's
        end does not. (A service older than the flag refuses such a cell: ``bad_request``.)

        Cancelling ``execute`` (or a timeout around it) only stops waiting: the cell keeps
        running, or stays queued, on the server, and its later frames go to :attr:`events`.
        The protocol's ``interrupt`` names no cell, so the client cannot safely stop just
        this one; call :meth:`interrupt` (it stops whichever cell runs) or close the session.

        Raises:
            SessionRefused: the server refused the cell (``error`` frame), or the client
                did as the server would, before sending it: code over ``max_code_bytes``
                (``payload_too_large``), or code that is not Unicode text UTF-8 can encode,
                with a lone surrogate (``bad_request``).
            SessionClosed: the session ended before the cell did (:class:`ResultTimeout`
                when its result did not come in time; ``protocol_error`` when the server
                sent more output for it than :func:`~ws_sandbox.frames.output_allowance`
                of its own limit, and the client closed the session).
            ValueError: ``timeout`` is not a positive number of seconds.
            TypeError: ``on_output`` is a coroutine function, or returned a coroutine.
            CellIdInUse: ``cell_id`` is the id of an unfinished cell of this client.
        """
        if on_output is not None and inspect.iscoroutinefunction(on_output):
            raise _awaitable_callback(None)
        cell_id = self._cell_id(cell_id)
        collector = _Collector(on_output, fr.output_allowance(self.ready.limits.max_output_bytes),
                               functools.partial(self._too_much_output, cell_id))
        request = self._start(cell_id, code, timeout, collector, program=program)
        try:
            await self._send_data(request)
            return await collector.done
        finally:
            self._cells.pop(cell_id, None)
            _mark_retrieved(collector.done)

    async def interrupt(self) -> None:
        """Interrupt the running cell. It returns once the frame is sent: the cell's own
        result says what the interrupt did (``interrupted``, with ``state_lost`` and exit
        code 137 when the code ignored it for the interrupt grace and the interpreter was
        restarted)."""
        await self.send(fr.Interrupt())

    async def restart(self) -> fr.Restarted:
        """Restart the interpreter (the session's state is lost); return once it has, with
        the server's ``restarted`` frame (which also goes to :attr:`events`).

        A running cell ends first (``interrupted``, exit code 137, with ``state_lost``),
        and queued cells run in the fresh interpreter. The server answers within
        ``result_grace`` seconds (an interrupt's grace, a restart, perhaps a new sandbox;
        time a :meth:`stream` consumer held reading up is not counted), or the client gives
        up on the session, as for a late result. Cancelling the call only stops waiting.

        A restart asked while one is under way is answered by that one's frame (the server
        joins them). Each request carries an id, which the server's answer names, so a
        restart sent just as an earlier one's answer is on its way waits for its own. (A
        service that does not name them is answered in order: there, such a restart
        returns with the earlier one's answer.)

        Raises:
            SessionRefused: the server refused it (``rate_limited``): nothing restarted.
            SessionClosed: the session ended first (reason ``result_timeout``: no answer
                within ``result_grace``).
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[fr.Restarted] = loop.create_future()
        request_id = self._new_id()
        # There until answered: a cancelled one takes its answer.
        self._restarts[request_id] = waiter
        try:
            await self.send(fr.Restart(id=request_id))
            grace = self.result_grace
            if grace is None:
                return await asyncio.shield(waiter)
            started, paused = loop.time(), self._paused_seconds()
            while True:
                due = started + grace + self._paused_seconds() - paused
                if loop.time() >= due and not self._paused:
                    break
                # While paused, look again a grace later (the bound moves with the pause).
                wait = grace if self._paused else due - loop.time()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        return await asyncio.shield(waiter)
            late = SessionClosed("result_timeout", f"no answer to a restart after waiting"
                                                   f" {grace} s")
            waiter.cancel()  # not failed again by the give-up
            self._give_up(late, 1000, "")
            raise late
        finally:
            if not waiter.done():
                waiter.cancel()
            _mark_retrieved(waiter)

    def _paused_seconds(self) -> float:
        """Seconds reading has been paused for :meth:`stream` consumers, all told."""
        if self._paused:
            return self._paused_total + asyncio.get_running_loop().time() - self._paused_at
        return self._paused_total

    async def close(self) -> None:
        """Close the connection (the server removes the sandbox)."""
        if self.ended is None:
            self._end(SessionClosed("client_closed", "the client closed the session"))
        try:
            if self._gave_up is not None:
                # The close that gave up (its code says why) goes first.
                await asyncio.wait([self._gave_up])
            else:
                await self._close_now()
        except asyncio.CancelledError:
            self.ws.transport.abort()  # cancelled halfway: the connection still ends
            raise
        self._reader.cancel()
        # asyncio.wait: the reader's end is not the caller's, and a cancellation of the
        # caller (which `await self._reader` would hand to the reader, and suppress()
        # swallow) still reaches the caller.
        await asyncio.wait([self._reader])

    async def _close_now(self, code: int = 1000, reason: str = "") -> None:
        await _close_now(self.ws, code, reason)

    async def wait_closed(self) -> fr.Closed | None:
        """Wait until the connection is closed; return the server's ``closed`` frame, if it
        sent one.

        A timeout or a cancellation around it only stops waiting (the caller gets its
        ``TimeoutError`` or ``CancelledError``): the session goes on.
        """
        # asyncio.wait shields the reader, which reads for every caller of the session:
        # cancelling the caller must not cancel it.
        await asyncio.wait([self._reader])
        return self.closed

    async def __aenter__(self) -> ClientSession:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def _receive(self, data: bytes) -> None:
        """One message from the server, handed over by the connection as it arrives."""
        if self._gave_up is not None:
            return  # the client gave up on the session: nothing after that counts
        try:
            frame = decode_server_frame(data)  # bytes: msgspec checks the UTF-8 as it parses
        # Not a frame of this protocol: give up (nothing may escape into data_received).
        except DECODE_ERRORS as exc:
            self._give_up(SessionClosed("protocol_error",
                                        f"the server sent an invalid frame: {exc}"),
                          1002, "invalid frame")
            return
        if isinstance(frame, UnknownFrame):
            self._event(frame)
            return
        if isinstance(frame, fr.Closed):
            self.closed = frame
            self._end(SessionClosed(frame.reason, frame.message, frame))
            self._event(frame)
            return
        cell = getattr(frame, "id", None)
        if isinstance(frame, fr.Error) and isinstance(cell, str) and cell in self._restarts:
            if not (waiter := self._restarts.pop(cell)).done():  # a refused restart
                waiter.set_exception(SessionRefused(frame, None))
            self._event(frame)
            return
        if not isinstance(cell, str):
            if isinstance(frame, fr.Restarted):
                self._restart_bound()
                # Those it names (a restart asked while one is under way joins it), or,
                # from a service that names none, every one waiting.
                answered = list(self._restarts) if frame.ids is None else frame.ids
                for request_id in answered:
                    if request_id in self._restarts and not (
                            waiter := self._restarts.pop(request_id)).done():
                        waiter.set_result(frame)
            elif isinstance(frame, fr.Error) and self._restarts:
                # From a service that names no restart: an error without a cell id answers
                # the oldest restart, refused (rate_limited); a cancelled restart's answer
                # is taken by its place.
                oldest = next(iter(self._restarts))
                if not (waiter := self._restarts.pop(oldest)).done():
                    waiter.set_exception(SessionRefused(frame, None))
            self._event(frame)
            return
        deliver = self._cells.get(cell)
        if deliver is not None:
            deliver(frame)
        else:
            # A cell nobody waits for any more, or one this session did not send: after a
            # resume, the frames of the cells the earlier connection sent (spec: Resume).
            self._event(frame)
        if isinstance(frame, (fr.Result, fr.Error)):
            self._finish(cell)

    def _event(self, frame: fr.ServerFrame | UnknownFrame) -> None:
        if self.events.full():
            self.events.get_nowait()
            self.events_dropped += 1
        self.events.put_nowait(frame)

    def _finish(self, cell: str) -> None:
        """A cell's result (or refusal) came: the next one's bound starts."""
        was_first = next(iter(self._pending), None) == cell
        if self._pending.pop(cell, None) is not None:
            self._earlier = 0.0  # cells run in order: the earlier connection's have ended
        if was_first:
            self._arm()

    def _arm(self) -> None:
        """Start the bound of the first unfinished cell, now.

        One timer looks after the bounds, and it is moved only when a bound would end before
        it fires (a cell with a shorter timeout than the one before it). Otherwise it fires
        at the earlier bound and looks again (:meth:`_expire`): on the hot path of a cell
        there is no timer to make and cancel."""
        first = next(iter(self._pending.values()), None)
        if first is None or self.result_grace is None or self.ended is not None:
            return
        loop = asyncio.get_running_loop()
        first.since = loop.time()
        due = first.since + first.timeout + self.result_grace + self._earlier
        timer = self._deadline
        if timer is not None:
            if timer.when() <= due:
                return
            timer.cancel()
        self._deadline = loop.call_at(due, self._expire)

    def _restart_bound(self) -> None:
        """A ``restarted`` frame: the first unfinished cell waited for an interpreter
        restart or a new sandbox (``ACQUIRE_TIMEOUT`` at most) before it could start, so its
        bound starts again, once (a server that keeps restarting still meets a bound)."""
        first = next(iter(self._pending.values()), None)
        if first is not None and not first.restarted:
            first.restarted = True
            self._arm()

    def _expire(self) -> None:
        """The timer fired: give up on the first unfinished cell if its bound has passed,
        else wait for the bound."""
        self._deadline = None
        first = next(iter(self._pending.items()), None)
        if first is None or self.result_grace is None or self.ended is not None:
            return
        cell, pending = first
        if pending.since is None:  # pragma: no cover - the first cell's bound has started
            return
        if self._paused:
            return  # the client's own consumer holds the frames: _pause re-arms on resuming
        loop = asyncio.get_running_loop()
        due = pending.since + pending.timeout + self.result_grace + self._earlier
        if loop.time() < due:
            self._deadline = loop.call_at(due, self._expire)
            return
        self._give_up(ResultTimeout(cell, loop.time() - pending.since), 1000, "")

    def _too_much_output(self, cell: str) -> None:
        limit = self.ready.limits.max_output_bytes
        self._give_up(SessionClosed(
            "protocol_error", f"the server sent more output for cell {cell!r} than its"
            f" max_output_bytes of {limit} allows"), 1002, "too much output")

    def _give_up(self, error: SessionClosed, code: int, reason: str) -> None:
        """The client ends the session: every cell fails, and the connection closes."""
        self._end(error)
        self._gave_up = asyncio.ensure_future(self._close_now(code, reason))

    def _pause(self, queue: int, pause: bool) -> None:
        """Pause reading while any stream queue is full; resume once none is.

        The time paused is the client's own consumer's, not the server's: it does not count
        against the first unfinished cell's bound (a consumer slower than the cell's output
        made the client give up on a server that had done nothing wrong, and drop the rest
        of the frames), and keepalive pings stop meanwhile (their pongs cannot be read: the
        connection was failed after 40 s of a stalled consumer)."""
        was = bool(self._paused)
        if pause and self.ended is not None:
            return  # the session ended: what is left to read is its close
        if pause:
            self._paused.add(queue)
        else:
            self._paused.discard(queue)
        if was == bool(self._paused) or self.ws.transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        ws = self.ws
        if self._paused:
            ws.transport.pause_reading()
            self._paused_at = loop.time()
            if ws.keepalive_task is not None:
                ws.keepalive_task.cancel()
                ws.keepalive_task = None
            return
        ws.transport.resume_reading()
        paused_for = loop.time() - self._paused_at
        self._paused_total += paused_for
        first = next(iter(self._pending.values()), None)
        if first is not None and first.since is not None:
            first.since += paused_for
        if self._deadline is None and first is not None:
            self._expire()  # it fired while paused, or is yet to: either way, look again
        if ws.keepalive_task is None:
            ws.start_keepalive()

    def _end(self, error: SessionClosed) -> None:
        """The session ended: each waiting cell fails (the cell that timed out with
        ``error``, the others with a plain :class:`SessionClosed` of the same reason)."""
        if self.ended is not None:
            return
        self.ended = error
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        restarts, self._restarts = self._restarts, {}
        for waiter in restarts.values():
            if not waiter.done():
                waiter.set_exception(self._closed_error())
        if self._paused:  # a stalled stream() consumer: the close must still be read
            self._paused.clear()
            if not self.ws.transport.is_closing():
                self.ws.transport.resume_reading()
        for cell, route in list(self._cells.items()):
            timed_out = isinstance(error, ResultTimeout) and error.cell_id == cell
            route(error if timed_out else self._closed_error())

    async def _watch(self) -> None:
        """Until the connection is gone; then every running cell ends.

        Cancelled (by :meth:`close`, or by ``asyncio.run`` ending with the session still
        open), it cuts a connection still open: nothing would watch it any more."""
        try:
            await self.ws.wait_closed()
        except asyncio.CancelledError:
            if self.ws.protocol.state is not State.CLOSED:
                self.ws.transport.abort()
            raise
        finally:
            self._end(self._lost())


CLOSE_TIMEOUT = 5.0
"""Seconds a close the client starts may take before the connection is cut."""


async def _close_now(ws: ClientConnection, code: int = 1000, reason: str = "") -> None:
    """Close, and cut the connection if the close does not complete promptly (websockets'
    own bound, ``close_timeout``, is 10 s)."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await ws.close(code, reason)
    except TimeoutError:
        ws.transport.abort()


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_max_events(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_events must be a positive whole number, got {value!r}")


def _check_seconds(name: str, value: float | None) -> float | None:
    """``value`` if it is None or a positive, finite number of seconds."""
    if value is not None and not (isinstance(value, int | float)
                                  and not isinstance(value, bool)
                                  and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive, finite number of seconds or None, "
                         f"got {value!r}")
    return value


def _authorization(api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header that carries ``api_key`` (none without one).

    Raises:
        ValueError: ``api_key`` has a character no key of the service has (printable ASCII
            without spaces: a key read from a file with its newline, say); the message
            says where, and does not repeat the key.
    """
    if not api_key:
        return {}
    if not isinstance(api_key, str):
        raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
    for at, char in enumerate(api_key):
        if not "!" <= char <= "~":
            what = f"{char!a}" if char <= " " or char == "\x7f" else "a non-ASCII character"
            raise ValueError(f"api_key has {what} at character {at}: a key is printable ASCII"
                             " without spaces (strip what reading it left)")
    return {"Authorization": f"Bearer {api_key}"}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib's handler sends the request's headers, the API key
    among them, to wherever the answer points (another host too)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then raised as an HTTPError


_OPEN_URL = urllib.request.build_opener(_NoRedirects).open


class _ConnectHere(ws_connect):
    """The WebSocket client's ``connect``, following no redirect: it dropped the API key on
    a redirect to another host, but opened the session there all the same, and the user's
    code went to it (a review). A 3xx is a failed connection, as ``execute_once`` has it."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


def _refusal(url: str, status: int, body: bytes | None,
             what: str = "the WebSocket upgrade") -> SessionRefused | ConnectFailed:
    """An HTTP refusal: the service's, with its JSON error (``{"error": {"code",
    "message"}}``); any other answer (a plain web server's 200, a proxy's 502) is no
    refusal of the service's but a failed connection (it was taken for one, a review)."""
    with contextlib.suppress(*DECODE_ERRORS, AttributeError, TypeError, KeyError):
        detail = msgspec.json.decode(body or b"")["error"]
        code, message = detail["code"], detail["message"]
        if isinstance(code, str) and isinstance(message, str):
            return SessionRefused(fr.Error(code=code, message=message), None, status)
    return ConnectFailed(f"{url} answered {what} with HTTP {status}, and not as a ws_sandbox"
                         " service refuses one: is it the service's URL?", status)


class OneShotResult(msgspec.Struct, kw_only=True):
    """The answer of ``POST /api/v1/execute`` (:func:`execute_once`). Read as the protocol
    asks: a field this client does not know is ignored, and ``status`` (``success``,
    ``error``, ``timeout``, ``interrupted``, ``killed``) is kept as the server says it."""

    execution_id: str
    status: str
    stdout: str = ""
    stderr: str = ""
    execution_time_ms: float | None = None
    memory_used_mb: float | None = None
    exit_code: int | None = None
    error: str | None = None
    language: str = ""
    truncated: bool = False
    display: list[dict[str, str]] = msgspec.field(default_factory=list)
    compile_time_ms: float | None = None


ONE_SHOT_WAIT = 300.0
"""Seconds :func:`execute_once` allows a call that names no ``timeout`` (the service's
default applies, at most its ``MAX_EXECUTION_TIME``), before ``result_grace``."""


def execute_once(url: str, code: str, *, language: str = "python",
                 timeout: float | None = None, api_key: str | None = None,
                 result_grace: float = RESULT_GRACE) -> OneShotResult:
    """Run ``code`` once in a fresh sandbox (``POST /api/v1/execute``) and return its result:
    the REST call, for a caller that wants one result and no session. Blocking (from async
    code: ``await asyncio.to_thread(execute_once, ...)``).

    Args:
        url: the service's base URL (``http://host:port``; ``ws://`` is taken as ``http://``
            and ``wss://`` as ``https://``); a path is kept as a prefix, as :class:`connect`
            keeps it.
        code: the program.
        language: its language (or an alias: ``bash``, ``node``, ``py``...).
        timeout: the program's time limit on the server (seconds); None: the service's
            default.
        api_key: sent as ``Authorization: Bearer`` (to ``url`` alone: a redirect is not
            followed).
        result_grace: seconds the answer may take beyond ``timeout`` (or, without one,
            ``ONE_SHOT_WAIT``), as each network wait's bound.

    Raises:
        SessionRefused: the service refused the call (400, 401, 403, 413, 429, 503...:
            ``http_status``, and the code and message of its JSON error).
        ConnectFailed: the URL is invalid, the service could not be reached or did not
            answer in time, or the answer was not the service's (``http_status``; a
            redirect's 3xx too), or was cut short.
        ValueError: ``timeout`` or ``result_grace`` is not a positive number of seconds, or
            ``api_key`` has a character no key has.
    """
    _check_seconds("timeout", timeout)
    if _check_seconds("result_grace", result_grace) is None:
        raise ValueError("result_grace must be a positive, finite number of seconds")
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, not {type(code).__name__}")
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               **_authorization(api_key)}
    endpoint = _endpoint(url, "", "/api/v1/execute", http=True)
    request: dict[str, Any] = {"code": code, "language": language}
    if timeout is not None:
        request["timeout"] = timeout
    try:
        body = msgspec.json.encode(request)
    except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8, so no request
        raise SessionRefused(fr.Error(
            code="bad_request", message=f"the code cannot be encoded as UTF-8 (character"
            f" {exc.start}: {exc.reason})"), None) from None
    wait = (ONE_SHOT_WAIT if timeout is None else timeout) + result_grace
    try:
        with _OPEN_URL(urllib.request.Request(
                endpoint, data=body, headers=headers, method="POST"), timeout=wait) as answer:
            data = answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            raise _refusal(url, exc.code, exc.read(), "the call") from exc
    except TimeoutError as exc:
        raise ConnectFailed(f"no answer from {url} within {wait} s") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectFailed(f"cannot reach {url}: {reason}") from exc
    except http.client.HTTPException as exc:  # not HTTP, or cut short
        raise ConnectFailed(f"{url} did not answer the call as an HTTP server does: "
                            f"{type(exc).__name__}: {exc}") from exc
    except ValueError as exc:  # a host name that cannot be encoded, a NUL in it
        raise ConnectFailed(f"cannot call {url!r}: {exc}") from exc
    try:
        return msgspec.json.decode(data, type=OneShotResult)
    except DECODE_ERRORS as exc:
        raise ConnectFailed(f"{url} answered the call with something that is not a"
                            f" ws_sandbox result: {exc}") from exc


class connect:
    """Open (or resume) a session: ``await connect(...)``, or ``async with connect(...)``
    (which closes the session at the end).

    Args:
        url: the service's base URL, ``ws://host:port`` (``wss://`` for TLS). A path is
            kept as a prefix (a reverse proxy's: ``ws://host/sandbox`` connects to
            ``/sandbox/api/v1/sessions/ws``), up to an ``/api/`` in it (so the session
            endpoint's own URL works too); a query and a fragment are dropped.
        language: language of the session.
        resume: a token from an earlier ``ready`` frame, to resume that session.
        api_key: sent as ``Authorization: Bearer`` (to ``url`` alone: a redirect is not
            followed).
        open_timeout: seconds to wait for the handshake, then as long for the ``ready``
            frame (after a refusal, as long again for the server to close); positive and
            finite, or None to wait for ever.
        max_size: largest frame accepted from the server.
        result_grace: seconds a cell's result may be late after its timeout before the
            client gives up on the session (:class:`ResultTimeout`); None waits for ever.
        max_events: the most frames :attr:`ClientSession.events` keeps.

    Raises:
        SessionRefused: the server answered with an ``error`` frame, or refused the upgrade
            (HTTP 401, 403, ...: ``http_status``, and the code and message of its JSON body;
            an answer without the service's JSON error is a :class:`ConnectFailed`).
        SessionClosed: the connection closed before ``ready`` (``connection_lost``), or the
            first frame was not ``ready`` or ``error`` (``protocol_error``).
        ValueError: ``open_timeout``, ``result_grace`` or ``max_events`` is not a positive
            number, or ``api_key`` has a character no key has (this one at once, not
            awaited).
        ConnectFailed: the URL is invalid (not ``ws://`` or ``wss://``, a bad port), the
            service could not be reached (the ``OSError`` is its cause), the handshake
            failed (an HTTP answer that is not the service's: ``http_status``), or no
            ``ready`` within ``open_timeout``.
    """

    def __init__(self, url: str, *, language: str = "python", resume: str | None = None,
                 api_key: str | None = None, open_timeout: float | None = 60.0,
                 max_size: int | None = 16 * 1024 * 1024, result_grace: float | None = RESULT_GRACE,
                 max_events: int = 1024) -> None:
        _check_seconds("open_timeout", open_timeout)
        _check_seconds("result_grace", result_grace)
        _check_max_events(max_events)
        _authorization(api_key)
        self._open = functools.partial(
            _open, url, language=language, resume=resume, api_key=api_key,
            open_timeout=open_timeout, max_size=max_size, result_grace=result_grace,
            max_events=max_events)
        self._session: ClientSession | None = None

    def __await__(self) -> Generator[Any, None, ClientSession]:
        return self._open().__await__()

    async def __aenter__(self) -> ClientSession:
        self._session = await self._open()
        return self._session

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._session is not None
        await self._session.close()


_HTTP_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def _endpoint(url: str, query: str, path: str = "/api/v1/sessions/ws",
              http: bool = False) -> str:
    """The endpoint ``path`` (the session endpoint) of the service at ``url``, with
    ``query``: its scheme and host kept, its path kept as a prefix (a reverse proxy's) up to
    an ``/api/`` in it, its query and fragment dropped. ``http``: for an HTTP call, where
    ``ws://`` is ``http://`` and ``wss://`` is ``https://``.

    Raises:
        ConnectFailed: ``url`` cannot be parsed (a port out of range, a broken IPv6
            address), or, for ``http``, is not ``http(s)://`` or ``ws(s)://``.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed on access: a port out of range raises ValueError
    except ValueError as exc:
        raise ConnectFailed(f"invalid URL {url!r}: {exc}") from exc
    scheme = parts.scheme
    if http:
        scheme = _HTTP_SCHEMES.get(scheme.lower(), "")
        if not scheme or not parts.netloc:
            raise ConnectFailed(f"invalid URL {url!r}: give http://host:port (or https://)")
    prefix = (parts.path + "/").split("/api/")[0].rstrip("/")
    return urlunsplit((scheme, parts.netloc, f"{prefix}{path}", query, ""))


async def _open(url: str, *, language: str, resume: str | None, api_key: str | None,
                open_timeout: float | None, max_size: int | None,
                result_grace: float | None, max_events: int) -> ClientSession:
    query = {"resume": resume} if resume else {"language": language}
    endpoint = _endpoint(url, urlencode(query))
    headers = _authorization(api_key)
    try:
        ws = await _ConnectHere(endpoint, additional_headers=headers, max_size=max_size,
                                open_timeout=open_timeout, create_connection=_Connection)
    except InvalidStatus as exc:
        raise _refusal(url, exc.response.status_code, bytes(exc.response.body)) from exc
    except InvalidURI as exc:
        raise ConnectFailed(f"invalid URL {url!r}: {exc}") from exc
    except websockets.InvalidHandshake as exc:
        raise ConnectFailed(f"the WebSocket handshake with {url} failed: {exc}") from exc
    except TimeoutError as exc:
        raise ConnectFailed(f"no WebSocket handshake with {url} within {open_timeout} s") \
            from exc
    except OSError as exc:
        raise ConnectFailed(f"cannot reach {url}: {exc}") from exc
    except ValueError as exc:  # a host name that cannot be encoded, a NUL in it
        raise ConnectFailed(f"cannot connect to {url!r}: {exc}") from exc
    assert isinstance(ws, _Connection)
    try:
        try:
            async with asyncio.timeout(open_timeout):
                await ws.wait_pending()
        except TimeoutError as exc:
            raise ConnectFailed(f"no ready frame from {url} within {open_timeout} s") from exc
        if not ws.pending:
            raise SessionClosed("connection_lost", f"the connection closed before the ready "
                                f"frame: {ws.protocol.close_exc or 'no close frame'}")
        try:
            first = decode_server_frame(ws.pending.pop(0))
        except DECODE_ERRORS as exc:
            raise SessionClosed("protocol_error", f"the server's first frame is invalid: "
                                f"{exc}") from exc
        if isinstance(first, fr.Error):
            # The server closes after a refusal, and its close code says more; one that does
            # not close is waited for up to open_timeout again, and refused all the same.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(open_timeout):
                    await ws.wait_closed()
            raise SessionRefused(first, ws.close_code)
        if not isinstance(first, fr.Ready):
            raise SessionClosed("protocol_error", f"the server's first frame is not ready: "
                                f"{first!r}")
    except asyncio.CancelledError:
        ws.transport.abort()  # the caller stopped waiting: a close handshake would overrun
        raise
    except BaseException:
        await _close_now(ws)
        raise
    return ClientSession(ws, first, result_grace=result_grace, max_events=max_events)
