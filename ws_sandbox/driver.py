"""The asyncio driver of one session: feeds the sans-I/O core and runs what it asks.

A :class:`SessionRunner` owns one sandbox and one :class:`~ws_sandbox.session.Session`. One
task, :meth:`SessionRunner.run`, takes events from a bounded inbox (client frames, agent
frames, a lost sandbox, a deadline) one at a time, so the core never sees two at once. The
agent reader blocks on the inbox and the main loop blocks on the client, so a slow client
slows the sandbox's output instead of growing a buffer: backpressure reaches the container.

Clients reach a runner through a :class:`FrameSink`; the WebSocket endpoint, the REST shim
and the Jupyter adapter each provide one. The sink may go away and come back (resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from ws_sandbox import agent_wire as aw
from ws_sandbox import frames as fr
from ws_sandbox.backend import Sandbox
from ws_sandbox.exceptions import BackendError, SandboxError
from ws_sandbox.records import Origin
from ws_sandbox.session import (
    CellFinished,
    CloseSession,
    ReplaceSandbox,
    SendToAgent,
    Session,
    State,
)

log = logging.getLogger(__name__)

TOKEN_ENDED = ("the session of this token has ended (or was opened with another API key:"
               " a session is resumed with the key that opened it)")
"""Why a resume is refused, whether its session ended or is another key's: one answer, so
that a leaked token does not tell another key's holder whether the session still lives."""

INBOX_SIZE = 64
CLIENT_BYTES = 16 * 1024 * 1024
"""Memory the client's messages waiting in the inbox may take, as Python holds them, beyond
one message whatever its size: 64 of the largest a client may send (6 MiB, at up to four
bytes a character) held 1.5 GiB while the session was busy sending (a review)."""
DETACHED_BUFFER_FRAMES = 1024
CLOSE_WAIT = 30.0
"""Seconds a session's end waits for the closes of clients it let go, when ``SEND_TIMEOUT``
is unset (a close then has no bound of its own)."""


class FrameSink(Protocol):
    """Where a session's frames go: a WebSocket, a REST collector, a Jupyter channel."""

    #: True when :meth:`send_frames` delivers a batch whole or not at all (one write); the
    #: runner then hands it several frames at once. False: one frame per call, so that a
    #: failed send tells exactly which frames the client has not seen.
    whole_batches: bool
    #: True when :meth:`send_frames` bounds its own waits (a Jupyter kernel gives each of its
    #: connections ``SEND_TIMEOUT`` and drops a slow one, not the kernel); False: the runner
    #: gives each send ``SEND_TIMEOUT`` and detaches a client that misses it.
    bounds_own_sends: bool

    async def send_frames(self, frames: Sequence[fr.ServerFrame]) -> None:
        """Deliver frames in order; may block (backpressure)."""

    async def close(self, code: int, reason: str) -> None:
        """Close the client connection (idempotent), within a bounded time: a connection
        that cannot take the close is cut."""


# --- inbox events ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientMessage:
    data: str | bytes
    #: The connection it came from: ignored while another is the session's client (one let
    #: go as too slow, or resumed from elsewhere, stays open while its close waits).
    sink: FrameSink | None = None
    #: Its peer address, recorded with the cell it sends (empty: the session's own).
    address: str = ""


@dataclass(frozen=True, slots=True)
class ClientRequest:
    frame: fr.ClientFrame
    #: The peer address of the client that asked, recorded with the cell (empty: the
    #: session's own).
    address: str = ""
    #: Already admitted (its rate-limit token taken by the caller, who could answer a
    #: refusal better): the session does not ask ``admit_cell`` again.
    admitted: bool = False


@dataclass(frozen=True, slots=True)
class ClientGone:
    sink: FrameSink


@dataclass(frozen=True, slots=True)
class ClientBack:
    sink: FrameSink
    ready: fr.Ready


@dataclass(frozen=True, slots=True)
class AgentMessages:
    """Every frame decoded from one read of the agent's stream, handled as one event."""

    sandbox: Sandbox
    frames: list[aw.FromAgent]


@dataclass(frozen=True, slots=True)
class AgentLost:
    sandbox: Sandbox
    reason: str


@dataclass(frozen=True, slots=True)
class NewSandbox:
    sandbox: Sandbox | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CloseRequest:
    reason: fr.CloseReason
    message: str
    #: A client's own goodbye: ignored, as its messages are, while another is the client.
    sink: FrameSink | None = None


Event = (ClientMessage | ClientRequest | ClientGone | ClientBack | AgentMessages | AgentLost
         | NewSandbox | CloseRequest)

CellObserver = Callable[["SessionRunner", CellFinished], None]


class SessionRunner:
    """Runs one session until it closes, then removes its sandbox.

    Args:
        core: the session state machine.
        sandbox: the sandbox it owns.
        acquire: how to get a replacement sandbox (the warm pool).
        send_timeout: seconds a client may take to accept one send, a frame or a batch
            written at once (``None``: forever).
        on_cell: called with every finished cell (stats, audit, history).
    """

    def __init__(self, core: Session, sandbox: Sandbox, *,
                 acquire: Callable[[], Awaitable[Sandbox]],
                 send_timeout: float | None,
                 on_cell: CellObserver | None = None,
                 client_id: str = "", origin: Origin = "session", address: str = "") -> None:
        self.core = core
        self.sandbox: Sandbox | None = sandbox
        self.client_id = client_id
        #: The peer address of the session's client (a resumed session's may change): a
        #: cell is recorded with the address of the connection that sent it, this one when
        #: its event names none.
        self.address = address
        #: Which adapter drives the session (see :data:`~ws_sandbox.records.Origin`).
        self.origin: Origin = origin
        self._acquire = acquire
        self._send_timeout = send_timeout
        self._on_cell = on_cell
        self._inbox: asyncio.Queue[Event] = asyncio.Queue(INBOX_SIZE)
        self._client_bytes = 0  # what the client's messages in the inbox hold
        self._client_room = asyncio.Event()  # set when they may hold more
        self._sink: FrameSink | None = None
        self._held: deque[fr.ServerFrame] = deque(maxlen=DETACHED_BUFFER_FRAMES)
        self._held_dropped = 0  # frames the held ones pushed out
        self._reader: asyncio.Task[None] | None = None
        self._replacer: asyncio.Task[None] | None = None
        self._late: set[asyncio.Task[None]] = set()
        self._interrupt_asked = False  # by interrupt_soon, while the inbox was full
        self._closing: set[asyncio.Task[None]] = set()  # closes of detached clients
        self.closed = asyncio.Event()
        #: Set once the session's sandbox is gone too (``closed`` is set before teardown).
        self.finished = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    @property
    def session_id(self) -> str:
        """The session's public id."""
        return self.core.session_id

    @property
    def attached(self) -> bool:
        """Whether a client is connected."""
        return self._sink is not None

    # --- called by adapters ----------------------------------------------------------------

    def attach(self, sink: FrameSink) -> None:
        """Connect the first client (before :meth:`run`)."""
        self._sink = sink

    async def feed(self, event: Event) -> None:
        """Queue an event for the main loop (blocks when the inbox is full, and a client's
        message while those waiting hold :data:`CLIENT_BYTES`)."""
        if isinstance(event, ClientMessage):
            size = sys.getsizeof(event.data)
            while (self._client_bytes and self._client_bytes + size > CLIENT_BYTES
                   and not self.closed.is_set()):
                self._client_room.clear()
                await self._client_room.wait()
            if self.closed.is_set():
                return
            self._client_bytes += size
        if not self.closed.is_set():
            await self._inbox.put(event)

    def _taken(self, event: Event) -> None:
        """An event left the inbox: a client's message gives its room back."""
        if isinstance(event, ClientMessage):
            self._client_bytes -= sys.getsizeof(event.data)
            self._client_room.set()

    def interrupt_soon(self) -> None:
        """Ask for the running cell to be interrupted, without waiting and without a task.

        Queued like any event when the inbox has room. When it is full (a cell printing
        faster than its client reads keeps it so, and that is when users interrupt) the
        request is remembered instead, and the loop acts on it before its next event;
        requests made meanwhile are one. A client cannot make the service keep one waiting
        task per call, as :meth:`feed_nowait` would.
        """
        if self.closed.is_set():
            return
        try:
            self._inbox.put_nowait(ClientRequest(fr.Interrupt()))
        except asyncio.QueueFull:
            self._interrupt_asked = True

    def attached_to(self, sink: FrameSink) -> bool:
        """Whether ``sink`` is the session's client now."""
        return self._sink is sink

    def feed_nowait(self, event: Event) -> None:
        """Queue an event without waiting (later, if the inbox is full); never lost."""
        if self.closed.is_set():
            return
        try:
            self._inbox.put_nowait(event)
        except asyncio.QueueFull:
            task = asyncio.create_task(self.feed(event))
            self._late.add(task)
            task.add_done_callback(self._late.discard)

    # --- the main loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Process events until the session closes; always removes the sandbox."""
        try:
            self._start_reader()
            await self._flush()
            while self.core.state is not State.CLOSED:
                deadline = self.core.next_deadline()
                if self._interrupt_asked:
                    self._interrupt_asked = False
                    self.core.receive_frame(fr.Interrupt(), self._loop.time())
                elif deadline is not None and deadline <= self._loop.time():
                    # Before the next event: a get() that need not wait never times out, so
                    # an inbox kept busy (a client sending without pause) would starve every
                    # deadline.
                    self.core.advance(self._loop.time())
                    if self.core.next_deadline() == deadline:  # never (a property test
                        await asyncio.sleep(0)  # says so); a bug spins one session only
                else:
                    try:
                        async with asyncio.timeout_at(deadline):
                            event = await self._inbox.get()
                        self._taken(event)
                    except TimeoutError:
                        self.core.advance(self._loop.time())
                    else:
                        await self._dispatch(event)
                await self._flush()
        except asyncio.CancelledError:
            self.core.close("server_shutdown", self._loop.time(), "the server is stopping")
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(1.0):
                    await self._flush()
            raise
        finally:
            self.closed.set()
            self._client_room.set()  # a client's message waiting for room is dropped
            try:
                await self._teardown()
            finally:
                self.finished.set()

    async def _dispatch(self, event: Event) -> None:
        now = self._loop.time()
        core = self.core
        match event:
            case ClientMessage(data, sink, address):
                if self._from_client(sink):
                    core.receive_client(data, now, address=address or self.address)
            case ClientRequest(frame, address, admitted):
                core.receive_frame(frame, now, address=address or self.address,
                                   admitted=admitted)
            case ClientGone(sink):
                if sink is self._sink:
                    self._sink = None
                    core.client_detached(now)
            case ClientBack(sink, ready):
                old, self._sink = self._sink, sink
                if old is not None and old is not sink:
                    self._close_aside(old, 4000, "session resumed elsewhere")
                core.client_attached(now)
                ready = msgspec.structs.replace(ready, frames_dropped=self._held_dropped)
                held, self._held = [ready, *self._held], deque(maxlen=DETACHED_BUFFER_FRAMES)
                self._held_dropped = 0
                await self._deliver(held)
            case AgentMessages(sandbox, frames):
                if sandbox is self.sandbox:
                    for agent_frame in frames:
                        core.receive_agent(agent_frame, now)
            case AgentLost(sandbox, reason):
                if sandbox is self.sandbox:
                    oom = await sandbox.oom_killed()
                    core.sandbox_failed(reason, now, oom_killed=oom)
            case NewSandbox(sandbox, reason):
                if sandbox is None:
                    core.close("sandbox_lost", now, f"no sandbox could be started: {reason}")
                else:
                    self.sandbox = sandbox
                    self._start_reader()
                    core.sandbox_replaced(now)
            case CloseRequest(reason, message, sink):
                if self._from_client(sink):
                    core.close(reason, now, message)
            case _:  # pragma: no cover - exhaustiveness
                raise AssertionError(event)

    def _from_client(self, sink: FrameSink | None) -> bool:
        """Whether an event from connection ``sink`` speaks for the session: not when
        another connection is its client now."""
        return sink is None or self._sink is None or sink is self._sink

    async def _flush(self) -> None:
        """Deliver the core's frames, then run its actions, until it has nothing left."""
        core = self.core
        while True:
            frames = core.frames_to_send()
            actions = core.actions_to_run()
            if not frames and not actions:
                return
            if frames:
                try:
                    await self._deliver(frames)
                except BaseException:  # cancelled mid-send: the cells are still recorded
                    for action in actions:
                        if isinstance(action, CellFinished):
                            self._observe(action)
                    raise
            for action in actions:
                match action:
                    case SendToAgent(to_agent):
                        await self._to_agent(to_agent)
                    case ReplaceSandbox(reason):
                        await self._replace(reason)
                    case CellFinished():
                        self._observe(action)
                    case CloseSession(reason):
                        await self._close_client(reason)
                    case _:  # pragma: no cover - exhaustiveness
                        raise AssertionError(action)

    def _observe(self, finished: CellFinished) -> None:
        """Tell the cell observer (stats, audit, history) that a cell ended."""
        if self._on_cell is not None:
            try:
                self._on_cell(self, finished)
            except Exception:
                log.exception("cell observer failed")

    async def _deliver(self, frames: Sequence[fr.ServerFrame]) -> None:
        """Send frames to the client, or hold them for a resume while it is away.

        A send that fails or times out detaches the client; what it did not deliver is held,
        so a resumed client sees every frame once.
        """
        sink = self._sink
        if sink is None or sink.whole_batches or len(frames) == 1:
            await self._send(frames)
            return
        for i, frame in enumerate(frames):
            if not await self._send([frame]):
                self._hold(frames[i + 1:])
                return

    def _hold(self, frames: Sequence[fr.ServerFrame]) -> None:
        """Keep frames for a resumed client: the latest :data:`DETACHED_BUFFER_FRAMES`;
        those pushed out are counted, and the resumed ``ready`` frame says how many.

        A ``ready`` frame is never held: a resume sends a fresh one. One that a failed
        resume did not deliver gives its count of dropped frames back to the next.
        """
        if any(isinstance(frame, fr.Ready) for frame in frames):
            self._held_dropped += sum(frame.frames_dropped for frame in frames
                                      if isinstance(frame, fr.Ready))
            frames = [frame for frame in frames if not isinstance(frame, fr.Ready)]
        kept = self._held.maxlen or 0
        self._held_dropped += max(0, len(self._held) + len(frames) - kept)
        self._held.extend(frames)

    async def _send(self, frames: Sequence[fr.ServerFrame]) -> bool:
        """One send to the client; False (and the frames held) when it did not happen."""
        sink = self._sink
        if sink is None:
            self._hold(frames)
            return False
        try:
            async with asyncio.timeout(None if sink.bounds_own_sends else self._send_timeout):
                await sink.send_frames(frames)
            return True
        except TimeoutError:
            log.info("session %s: client too slow, disconnecting", self.session_id)
            self._sink = None
            self.core.client_detached(self._loop.time())
            self._close_aside(sink, 1008, "client too slow")
        except Exception as exc:  # the client went away mid-send
            log.debug("session %s: send failed: %r", self.session_id, exc)
            if self._sink is sink:
                self._sink = None
                self.core.client_detached(self._loop.time())
        self._hold(frames)
        return False

    async def _to_agent(self, frame: aw.ToAgent) -> None:
        sandbox = self.sandbox
        if sandbox is None:
            return
        try:
            await sandbox.send(frame)
        except SandboxError as exc:
            self.core.sandbox_failed(exc.message, self._loop.time())

    def _start_reader(self) -> None:
        sandbox = self.sandbox
        assert sandbox is not None
        self._reader = asyncio.create_task(self._read_agent(sandbox),
                                           name=f"agent-{sandbox.short_id}")

    async def _read_agent(self, sandbox: Sandbox) -> None:
        try:
            while True:
                frames = await sandbox.receive_many()
                await self._inbox.put(AgentMessages(sandbox, frames))
        except BackendError as exc:
            await self._inbox.put(AgentLost(sandbox, exc.message))

    async def _replace(self, reason: str) -> None:
        old, self.sandbox = self.sandbox, None
        await self._stop_reader()
        self._replacer = asyncio.create_task(self._bring_sandbox())
        if old is not None:
            log.info("session %s: replacing sandbox %s: %s", self.session_id, old.short_id,
                     reason)
            # Dead, unresponsive or in breach of the protocol: no wait for it to stop.
            await old.destroy(graceful=False)

    async def _bring_sandbox(self) -> None:
        try:
            sandbox = await self._acquire()
        except SandboxError as exc:
            await self._inbox.put(NewSandbox(None, exc.message))
            return
        except Exception as exc:  # a bug must not leave the session waiting for good
            log.exception("session %s: bringing a sandbox failed", self.session_id)
            await self._inbox.put(NewSandbox(None, f"internal error: {exc!r}"))
            return
        if self.closed.is_set():
            await sandbox.destroy()
            return
        try:
            await self._inbox.put(NewSandbox(sandbox))
        except BaseException:  # the teardown cancelled a wait for room: nobody has it
            await asyncio.shield(sandbox.destroy())
            raise

    async def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _close_client(self, reason: fr.CloseReason) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            return
        code = 1001 if reason == "server_shutdown" else 1000
        with contextlib.suppress(Exception):
            await sink.close(code, reason)

    def _close_aside(self, sink: FrameSink, code: int, reason: str) -> None:
        """Close a detached client in a task of its own: a close waits for the client (up to
        ``SEND_TIMEOUT``, then the connection is cut; with none, as long as it takes), and
        the session goes on meanwhile, its deadlines with it. The teardown waits for these
        closes as long again at most (:data:`CLOSE_WAIT` with no ``SEND_TIMEOUT``)."""
        async def close() -> None:
            with contextlib.suppress(Exception):
                await sink.close(code, reason)

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _teardown(self) -> None:
        for task in list(self._late):
            task.cancel()
        await self._stop_reader()
        replacer, self._replacer = self._replacer, None
        if replacer is not None:
            replacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replacer
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None:
            await sandbox.destroy()
        # A replacement that arrived after the end must not leak, and a client that tried
        # to resume just as the session ended must hear that it did.
        while not self._inbox.empty():
            event = self._inbox.get_nowait()
            if isinstance(event, NewSandbox) and event.sandbox is not None:
                await event.sandbox.destroy()
            elif isinstance(event, ClientBack):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self._send_timeout):
                        await event.sink.send_frames([fr.Error(
                            code="invalid_token",
                            message=TOKEN_ENDED)])
                with contextlib.suppress(Exception):
                    await event.sink.close(1008, "invalid_token")
        if self._closing:
            wait = self._send_timeout if self._send_timeout is not None else CLOSE_WAIT
            _, late = await asyncio.wait(self._closing, timeout=wait)
            for task in late:  # left to the server, which closes it when it stops
                task.cancel()
