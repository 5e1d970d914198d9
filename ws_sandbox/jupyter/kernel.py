"""One Jupyter kernel: a session of ours, seen through the Jupyter messaging protocol.

A :class:`Kernel` is the :class:`~ws_sandbox.driver.FrameSink` of its session: the session's
frames come in through :meth:`Kernel.send_frames` and go out as Jupyter messages to every
WebSocket connected to the kernel (iopub) or to the one that asked (shell, control). A kernel
lives without any WebSocket (it is created over REST). A reply whose WebSocket is gone goes
where iopub goes (its client may have reconnected, as Jupyter Server keeps replies for a
client that comes back); messages for nobody are kept in a bounded buffer
(:data:`HELD_MESSAGES`, :data:`HELD_CHARS`) and replayed to the next connection, before
anything sent after it connected.

A state loss nobody asked for (the sandbox died and was replaced, or the interpreter was
restarted because a cell would not stop) while no WebSocket is connected is held too: its
``status`` ``restarting`` and ``idle`` (which have no parent) are replayed to the next
connection, and the next cell that runs, if earlier cells had run, starts with a ``stream``
on stderr that says the state is lost. Clients that read only the messages of their own
request (Open WebUI) see only that one.

Execute requests wait in the kernel's own queue and go to the session one at a time, so that
``stop_on_error`` can abort the ones behind a failed cell, as Jupyter kernels do. The queue
holds at most ``MAX_QUEUED_CELLS`` requests behind the running one, as a session's does; a
request beyond it gets an error reply at once.

Python tracebacks and JavaScript stacks: our workers print them on stderr. Jupyter clients
expect them in an ``error`` message instead (Open WebUI adds that message's traceback to stderr
itself: sent as both, it showed twice), so a stderr chunk that starts one is held back until
the cell ends: when the cell failed it becomes the ``error`` message's traceback, otherwise it
is sent as the stream it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from ws_sandbox import __version__
from ws_sandbox import frames as fr
from ws_sandbox.driver import ClientRequest, CloseRequest, SessionRunner
from ws_sandbox.exceptions import BackendError, PayloadTooLarge, RateLimited
from ws_sandbox.jupyter import messages as jm
from ws_sandbox.jupyter.specs import KernelSpec
from ws_sandbox.session import check_code_size

log = logging.getLogger(__name__)

#: Messages kept for a kernel with no WebSocket, and their characters at most; older ones
#: are dropped.
HELD_MESSAGES = 256
HELD_CHARS = 4 * 1024 * 1024
#: Characters of a held-back Python traceback; past it, it is sent as a stream after all.
TRACEBACK_HOLD_CHARS = 32 * 1024
#: Largest ``data`` of a display message as JSON bytes (above it, a note instead).
MAX_DISPLAY_BYTES = 900 * 1024
#: Code echoed in ``execute_input`` and text of an error's ``evalue``, at most (characters);
#: with the limits above, every message stays under 1 MiB.
MAX_ECHO_CHARS = 32 * 1024
_TRACEBACK_STARTS: dict[str, re.Pattern[str]] = {
    "python": re.compile(r'^(Traceback \(most recent call last\):|  File "<cell-\d+>")',
                         re.MULTILINE),
    # The JavaScript worker prints an error as its stack ("TypeError: x" then "    at ..."),
    # a syntax error as V8 shows it ("cell-1:1", the line, a caret), and what no code caught
    # after "Uncaught". The text is the cell's: the name is bounded and has no dots, so a
    # search costs one pass over it (a line of "Error." repeated took quadratic time).
    # "Interrupted" is what the worker prints when a cell is stopped (an interrupt, its time
    # limit): the error message says it, not a stream before it.
    "javascript": re.compile(r"^(Uncaught |Interrupted\n|cell-\d+:\d+\n|[\w$]{0,64}"
                             r"(Error|Exception)\b[^\n]*\n[ \t]+at )", re.MULTILINE),
}
_json = msgspec.json.Encoder()
_ENAMES: dict[str, str] = {"timeout": "TimeoutError", "interrupted": "KeyboardInterrupt",
                           "killed": "KernelKilled", "error": "Error"}


class Connection(Protocol):
    """One WebSocket connected to a kernel."""

    #: The peer address it comes from (recorded with the cells it sends).
    address: str

    async def send_text(self, text: str) -> None:
        """Send one message; raises when the connection is gone or too slow."""

    async def close(self, code: int, reason: str, *, at_once: bool = False) -> None:
        """Close the connection (idempotent), within the send timeout; ``at_once``: no
        wait (for one that took nothing: the close frame only if it has room, else cut)."""


@dataclass(slots=True)
class _Replay:
    """The messages a new connection has still to take: those held for it, then those that
    arrived since it connected (``arrived``, bounded as the held buffer is)."""

    messages: deque[str]
    arrived: int = 0
    arrived_chars: int = 0


@dataclass(slots=True)
class _Execution:
    """One ``execute_request`` from its arrival to its ``execute_reply``."""

    parent: jm.Header
    origin: Connection | None
    code: str
    silent: bool
    store_history: bool
    stop_on_error: bool
    cell_id: str = ""
    count: int = 0
    held_stderr: str | None = None
    refused: str | None = None
    """Why the request cannot run (``code`` not a string): it gets an error reply."""


class Kernel:
    """A Jupyter kernel backed by one session.

    Args:
        spec: the kernelspec it was started with.
        owner: the identity that started it (``kernels.visible`` decides who else may use it).
        send_timeout: seconds one WebSocket may take to accept a message before it is
            dropped (so a slow client never stalls the session for the others).
        execution_timeout: the time limit of each cell, seconds.
        restart_timeout: seconds a restart may take before it is reported failed.
        max_queued: execute requests that may wait behind the running one.
        max_code_bytes: the largest code a request may carry (UTF-8 bytes); larger code is
            refused on arrival, so the queue holds no more than ``max_queued`` cells of it.
        admit: asked before a restart that starts one (a rate limit; one under way is
            joined without it); raises to refuse it.
    """

    #: One frame per call: each becomes messages on every connection of the kernel.
    whole_batches = False
    #: Each connection gets ``send_timeout`` per message and is dropped when it misses it;
    #: the kernel (every connection's session) never is for one slow connection.
    bounds_own_sends = True

    def __init__(self, spec: KernelSpec, *, owner: str, send_timeout: float | None,
                 execution_timeout: float, restart_timeout: float, max_queued: int,
                 max_code_bytes: int, admit: Callable[[], None] | None = None) -> None:
        self.id = str(uuid.uuid4())
        self.spec = spec
        self.owner = owner
        self.session = uuid.uuid4().hex
        self.runner: SessionRunner | None = None
        self.execution_count = 0
        self.last_activity = jm.now_iso()
        self.dead = False
        self._send_timeout = send_timeout
        self._execution_timeout = execution_timeout
        self._restart_timeout = restart_timeout
        self._max_queued = max_queued
        self._max_code_bytes = max_code_bytes
        self._admit = admit
        self._connections: list[Connection] = []
        self._held: deque[str] = deque()
        self._held_chars = 0
        self._replaying: dict[Connection, _Replay] = {}
        """Connections still taking the held messages: what comes meanwhile waits here."""
        self._current: _Execution | None = None
        self._pending: deque[_Execution] = deque()
        self._aborted_by_restart: deque[_Execution] = deque()
        """Cells that were queued when a restart came during a cell: aborted once that cell
        has its reply, so that replies go out in the order the requests came."""
        self._restarting = False
        self._restart_waiters: list[asyncio.Future[None]] = []
        self._restart_id: str | None = None
        """The id of the restart the waiters wait for (the session's ``restarted`` frame
        names the restarts it answers)."""
        self._asked_restarts: set[str] = set()
        """Ids of restarts asked for and not answered yet, those given up on included: a
        ``restarted`` frame that answers none was nobody's request."""
        self._restarts = 0
        self._held_notices: list[str] = []
        """The held ``status`` messages of a state loss nobody saw."""
        self._cells = 0
        self._has_state = False
        """A cell reached the interpreter since it was last fresh."""
        self._lost_note: str | None = None
        """Why the state was lost while nobody was connected: told to the next cell."""

    # --- model -----------------------------------------------------------------------------

    @property
    def execution_state(self) -> str:
        """``idle``, ``busy``, ``restarting`` or ``dead``, as Jupyter Server reports it."""
        if self.dead:
            return "dead"
        if self._restarting:
            return "restarting"
        return "busy" if self._current is not None else "idle"

    def model(self) -> dict[str, Any]:
        """The kernel as the REST API shows it."""
        return {"id": self.id, "name": self.spec.name, "last_activity": self.last_activity,
                "execution_state": self.execution_state,
                "connections": len(self._connections)}

    @property
    def connections(self) -> int:
        """WebSockets connected now."""
        return len(self._connections)

    def bind(self, runner: SessionRunner) -> None:
        """Attach the session that backs this kernel (right after it opened)."""
        self.runner = runner

    # --- connections -----------------------------------------------------------------------

    async def connect(self, conn: Connection) -> None:
        """Add a WebSocket; it first gets what was held while nobody listened, then what
        was sent to it meanwhile, in order."""
        replay = _Replay(self._held)
        self._held, self._held_chars, self._held_notices = deque(), 0, []
        self._replaying[conn] = replay
        self._connections.append(conn)
        self._touch()
        try:
            while replay.messages and conn in self._connections:
                await self._send_to(conn, replay.messages.popleft())
        finally:
            del self._replaying[conn]
            if replay.messages:  # it left before taking them: held again, oldest first
                newer, self._held, self._held_chars = self._held, deque(), 0
                for text in (*replay.messages, *newer):
                    self._hold(text)

    def connected(self, conn: Connection) -> bool:
        """Whether ``conn`` is one of the kernel's connections (not dropped as too slow)."""
        return conn in self._connections

    def disconnect(self, conn: Connection) -> None:
        """Remove a WebSocket (the kernel lives on)."""
        with contextlib.suppress(ValueError):
            self._connections.remove(conn)

    # --- client messages -------------------------------------------------------------------

    async def handle(self, msg: jm.Incoming, origin: Connection | None) -> None:
        """Act on one message from a client."""
        self._touch()
        if not msg.on_known_channel:
            log.debug("kernel %s: ignoring %s on channel %r", self.id, msg.msg_type,
                      msg.channel_name)
            return
        match msg.msg_type:
            case "execute_request":
                await self._execute_request(msg, origin)
            case "kernel_info_request":
                await self._reply(msg, origin, "kernel_info_reply", self.kernel_info())
            case "interrupt_request":
                self.interrupt()
                await self._reply(msg, origin, "interrupt_reply", {"status": "ok"})
            case "shutdown_request":
                restart = bool(msg.content.get("restart", False))
                if restart:
                    try:
                        self._admit_restart()
                    except RateLimited as exc:  # the client hears why; nothing restarts
                        await self._reply(msg, origin, "shutdown_reply", {
                            "status": "error", "restart": True, "ename": "RateLimited",
                            "evalue": exc.message, "traceback": []})
                        return
                await self._reply(msg, origin, "shutdown_reply",
                                  {"status": "ok", "restart": restart})
                if restart:
                    await self.restart(admitted=True)
                else:
                    await self.shutdown("the client shut the kernel down")
            case "comm_info_request":
                await self._reply(msg, origin, "comm_info_reply", {"status": "ok", "comms": {}})
            case "is_complete_request":
                await self._reply(msg, origin, "is_complete_reply", {"status": "unknown"})
            case "complete_request":
                # Echoed back: only a position within the code, never what the client sent.
                code, cursor = msg.content.get("code"), msg.content.get("cursor_pos")
                size = len(code) if isinstance(code, str) else 0
                if type(cursor) is not int or not 0 <= cursor <= size:
                    cursor = size
                await self._reply(msg, origin, "complete_reply", {
                    "status": "ok", "matches": [], "cursor_start": cursor,
                    "cursor_end": cursor, "metadata": {}})
            case "inspect_request":
                await self._reply(msg, origin, "inspect_reply",
                                  {"status": "ok", "found": False, "data": {}, "metadata": {}})
            case "history_request":
                await self._reply(msg, origin, "history_reply", {"status": "ok", "history": []})
            case "comm_open":
                # No comm target exists here: the protocol asks for an immediate comm_close.
                comm_id = msg.content.get("comm_id")
                if not isinstance(comm_id, str) or len(comm_id) > jm.MAX_HEADER_CHARS:
                    log.debug("kernel %s: comm_open without a usable comm_id", self.id)
                    return
                await self._publish("status", {"execution_state": "busy"}, msg.header)
                await self._publish("comm_close", {"comm_id": comm_id, "data": {}}, msg.header)
                await self._publish("status", {"execution_state": "idle"}, msg.header)
            case str(other) if other.endswith("_request"):
                # A client waiting for the reply learns why instead of waiting forever.
                await self._reply(msg, origin, other.removesuffix("_request") + "_reply", {
                    "status": "error", "ename": "NotImplementedError",
                    "evalue": f"ws_sandbox does not serve {other}", "traceback": []})
            case _:  # comm_msg, comm_close, input_reply: nothing waits for an answer
                log.debug("kernel %s: ignoring %s", self.id, msg.msg_type)

    def kernel_info(self) -> dict[str, Any]:
        """The content of ``kernel_info_reply``."""
        return {"status": "ok", "protocol_version": jm.PROTOCOL_VERSION,
                "implementation": "ws_sandbox", "implementation_version": __version__,
                "language_info": self.spec.language_info,
                "banner": f"{self.spec.display_name}, run by ws_sandbox {__version__}",
                "help_links": []}

    async def _reply(self, msg: jm.Incoming, origin: Connection | None, msg_type: str,
                     content: dict[str, Any]) -> None:
        """busy, the reply on the request's channel, idle: how kernels answer a request."""
        await self._publish("status", {"execution_state": "busy"}, msg.header)
        await self._send(self._build(msg_type, content, msg.channel_name, msg.header), origin)
        await self._publish("status", {"execution_state": "idle"}, msg.header)

    async def _execute_request(self, msg: jm.Incoming, origin: Connection | None) -> None:
        content = msg.content
        code = content.get("code", "")
        refused = None
        if not isinstance(code, str):
            refused = f"TypeError: 'code' must be a string, not {type(code).__name__}"
            code = ""
        # Flags are read for their truth, as ipykernel reads them ("false" is true there too).
        execution = _Execution(parent=msg.header, origin=origin, code=code,
                               silent=bool(content.get("silent", False)),
                               store_history=bool(content.get("store_history", True)),
                               stop_on_error=bool(content.get("stop_on_error", True)),
                               refused=refused)
        if self.dead:
            await self._abort(execution)
            return
        try:
            check_code_size(code, self._max_code_bytes)
        except PayloadTooLarge as exc:
            await self._refuse(execution, "PayloadTooLarge", exc.message)
            return
        if ((self._current is not None or self._restarting)
                and len(self._pending) >= self._max_queued):
            await self._refuse(execution, "QueueFull",
                               f"{len(self._pending)} cells are already waiting; the limit is"
                               f" {self._max_queued}")
            return
        self._pending.append(execution)
        if self._current is None and not self._restarting:
            await self._start_next()

    async def _start_next(self) -> None:
        while self._current is None and self._pending and not self.dead:
            execution = self._pending.popleft()
            if execution.refused is None and execution.code.strip() and self._admit:
                # The rate limit is asked here, before the cell counts, so that a refused
                # cell takes no execution count and is told why in Jupyter's terms; the
                # session is then told the cell was admitted.
                try:
                    self._admit()
                except RateLimited as exc:
                    await self._refuse(execution, "RateLimited", exc.message)
                    continue
            self._current = execution
            if not execution.silent and execution.store_history:  # as ipykernel counts
                self.execution_count += 1
            execution.count = self.execution_count
            await self._publish("status", {"execution_state": "busy"}, execution.parent)
            if not execution.silent:
                await self._publish("execute_input", {"code": _cut(execution.code),
                                                      "execution_count": execution.count},
                                    execution.parent)
            if execution.refused is not None:
                await self._end_current(fr.Result(
                    id="", status="error", exit_code=None, execution_time_ms=0.0,
                    memory_used_mb=None, error=execution.refused))
                continue
            if not execution.code.strip():
                # Jupyter runs empty code as a no-op; our sessions refuse it.
                await self._end_current(None)
                continue
            self._cells += 1
            execution.cell_id = f"k{self._cells}"
            if self._lost_note is not None and not execution.silent:
                note, self._lost_note = self._lost_note, None
                await self._publish_stream(execution, "stderr", note)
            if self._restarting:
                # A restart came while this cell's first messages went out (a slow client):
                # it was sent before the restart, so it is aborted with the cells behind it,
                # in order, as a cell queued when the restart came is.
                self._current = None
                await self._abort(execution)
                await self._abort_all(self._aborted_by_restart)
                return
            self._has_state = True
            if self.runner is not None:
                self.runner.feed_nowait(ClientRequest(fr.Execute(
                    id=execution.cell_id, code=execution.code,
                    timeout=self._execution_timeout),
                    address=execution.origin.address if execution.origin else "",
                    admitted=self._admit is not None))

    # --- REST operations -------------------------------------------------------------------

    def interrupt(self) -> None:
        """Interrupt the running cell."""
        self._touch()
        if self.runner is not None:
            self.runner.interrupt_soon()

    def _admit_restart(self) -> None:
        """Take a restart's rate-limit token when it would start one: a restart under way
        is joined without one.

        Raises:
            RateLimited: refused; nothing was changed.
        """
        if not self._restarting and self._admit is not None:
            self._admit()

    async def restart(self, *, admitted: bool = False) -> None:
        """Restart the interpreter and wait until it is fresh (join a restart under way);
        ``admitted``: the caller asked :meth:`_admit_restart` already.

        Raises:
            BackendError: the kernel died or did not come back in time.
            RateLimited: the restart was refused for the caller's rate limit, before
                anything changed (the queued cells are kept).
        """
        self._touch()
        if self.dead or self.runner is None:
            raise BackendError("the kernel is dead")
        if not admitted:
            self._admit_restart()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._restart_waiters.append(waiter)
        if not self._restarting:
            self._restarting = True
            doomed, self._pending = self._pending, deque()
            if self._current is None:
                await self._abort_all(doomed)
            else:  # after the running cell's reply, which the restart brings
                self._aborted_by_restart.extend(doomed)
            self._restarts += 1
            self._restart_id = f"jupyter-restart-{self._restarts}"
            self._asked_restarts.add(self._restart_id)
            # Taken here or joined: the session does not ask again.
            self.runner.feed_nowait(ClientRequest(fr.Restart(id=self._restart_id),
                                                  admitted=True))
        try:
            async with asyncio.timeout(self._restart_timeout):
                await asyncio.shield(waiter)
        except TimeoutError:
            # Once no caller waits for it, the next restart asks the session again. This
            # one is still asked for: when it comes, it is not told as a restart nobody
            # asked for. A caller that joined it later waits on (its own timeout runs): it
            # was released by no answer, once the first caller gave up (a review).
            if all(other is waiter for other in self._restart_waiters):
                self._restarting = False
                self._restart_id = None
            raise BackendError("the kernel did not restart in time") from None
        finally:
            with contextlib.suppress(ValueError):
                self._restart_waiters.remove(waiter)

    async def shutdown(self, message: str) -> None:
        """Close the session; :attr:`runner` ``.finished`` is set once the container is gone."""
        if self.runner is not None:
            await self.runner.feed(CloseRequest("client_closed", message))

    # --- FrameSink: frames of the session --------------------------------------------------

    async def send_frames(self, frames: Sequence[fr.ServerFrame]) -> None:
        """Translate session frames into Jupyter messages; never raises."""
        for frame in frames:
            try:
                await self._on_frame(frame)
            except Exception:
                log.exception("kernel %s: cannot translate %s", self.id, type(frame).__name__)

    async def close(self, code: int, reason: str) -> None:
        """The session ended: close every WebSocket of the kernel."""
        self._mark_dead()
        conns, self._connections = self._connections, []
        # Together: the session's end (and a DELETE, which waits for it) waits for the
        # slowest connection once, not for each in turn.
        await asyncio.gather(*(conn.close(code, reason) for conn in conns),
                             return_exceptions=True)

    async def _on_frame(self, frame: fr.ServerFrame) -> None:
        current = self._current
        match frame:
            case fr.Stream(id=cell_id, name=name, text=text):
                if current is not None and cell_id == current.cell_id:
                    await self._stream(current, name, text)
            case fr.Display(id=cell_id):
                if current is not None and cell_id == current.cell_id:
                    await self._flush_stderr(current)
                    await self._display(current, frame)
            case fr.Result(id=cell_id):
                if current is not None and cell_id == current.cell_id:
                    await self._end_current(frame)
            case fr.Error(id=cell_id, code=code, message=message):
                # A cell the session refused (too large, say) gets no result: end it here.
                if current is not None and cell_id is not None and cell_id == current.cell_id:
                    await self._end_current(fr.Result(
                        id=cell_id, status="error", exit_code=None, execution_time_ms=0.0,
                        memory_used_mb=None, error=f"{_class_name(code)}: {message}"))
                elif cell_id is not None and cell_id == self._restart_id:
                    # The session refused the restart: its callers hear why now, not at
                    # their timeout, and the cells sent meanwhile run.
                    self._asked_restarts.discard(cell_id)
                    self._restarting, self._restart_id = False, None
                    self._settle_waiters(BackendError(f"the restart was refused: {message}"))
                    await self._start_next()
                else:
                    log.info("kernel %s: session error %s: %s", self.id, code, message)
            case fr.Restarted(message=message, ids=ids):
                answered = set(ids or ())
                # Asked for, or a loss that came while a restart asked for was on its way
                # (the interpreter died between cells, its news still queued): either way
                # the client is restarting it, and hears of it as of its own restart.
                asked = bool(answered & self._asked_restarts) or self._restart_id is not None
                self._asked_restarts -= answered
                ours = self._restart_id in answered
                if ours:
                    self._restarting = False
                    self._restart_id = None
                await self._abort_all(self._aborted_by_restart)
                # A fresh interpreter counts from 1 again, as a restarted ipykernel does (and
                # as our workers name the cells in tracebacks: "<cell-1>"). A cell already
                # sent (it waited in the session for the fresh interpreter) is its first.
                current = self._current
                self.execution_count = 1 if current is not None and current.count else 0
                # Nobody asked for it and nobody sees it: the next connection gets the
                # notice, the next cell the news that the state is gone.
                unseen = not self._connections and not asked
                if asked:
                    # The client restarted it: it knows, and a loss before it that nobody
                    # saw is no news any more.
                    self._lost_note = None
                    self._unhold(self._held_notices)
                    self._held_notices = []
                elif unseen and self._has_state:
                    self._lost_note = (f"{message or 'the kernel restarted; state is lost'}"
                                       f" (variables, imports and files of earlier cells are"
                                       f" gone)\n")
                self._has_state = False
                # "restarting" is what Jupyter Server sends for a restart nobody asked for;
                # JupyterLab takes it for one (it shows "the kernel appears to have died"
                # and reconnects). An asked restart's fresh kernel says "starting" instead.
                # A loss during an asked restart whose answer is still to come says nothing:
                # that answer does.
                states = () if self._restart_id is not None else (
                    "starting" if asked else "restarting", "idle")
                for state in states:
                    notice = self._build("status", {"execution_state": state}, "iopub", None)
                    if unseen:
                        self._held_notices.append(jm.encode(notice))
                        self._hold(self._held_notices[-1])
                    else:
                        await self._send(notice, None)
                if ours:
                    self._settle_waiters(None)
                if not self._restarting:
                    await self._start_next()
            case fr.Closed():
                self._mark_dead()
                await self._abort_all(self._aborted_by_restart)
                await self._abort_all(self._pending)
            case fr.Ready():
                pass
            case _:  # pragma: no cover - exhaustiveness
                raise AssertionError(frame)

    async def _stream(self, current: _Execution, name: fr.StreamName, text: str) -> None:
        if name == "stdout":
            await self._flush_stderr(current)
            await self._publish_stream(current, name, text)
            return
        if current.held_stderr is not None:
            current.held_stderr += text
            if len(current.held_stderr) > TRACEBACK_HOLD_CHARS:
                await self._flush_stderr(current)
            return
        start = _TRACEBACK_STARTS.get(self.spec.language)
        match = start.search(text) if start is not None else None
        if match is None:
            await self._publish_stream(current, name, text)
            return
        before, current.held_stderr = text[:match.start()], text[match.start():]
        if before:
            await self._publish_stream(current, name, before)

    async def _flush_stderr(self, current: _Execution) -> None:
        held, current.held_stderr = current.held_stderr, None
        if held:
            await self._publish_stream(current, "stderr", held)

    async def _publish_stream(self, current: _Execution, name: str, text: str) -> None:
        for piece in jm.split_text(text):
            await self._publish("stream", {"name": name, "text": piece}, current.parent)

    async def _display(self, current: _Execution, frame: fr.Display) -> None:
        data: dict[str, str] = dict(frame.data)
        if len(_json.encode(data)) > MAX_DISPLAY_BYTES:
            data = {"text/plain": "[output too large to display]"}
        if frame.kind == "execute_result":
            if current.silent:
                return
            await self._publish("execute_result", {"execution_count": current.count,
                                                   "data": data, "metadata": {}},
                                current.parent)
        else:
            await self._publish("display_data", {"data": data, "metadata": {},
                                                 "transient": {}}, current.parent)

    async def _end_current(self, result: fr.Result | None) -> None:
        """Publish the error (if any), the reply and ``idle``; then start the next request."""
        current = self._current
        if current is None:
            return
        held, current.held_stderr = current.held_stderr, None
        failed = result is not None and result.status != "success"
        reply: dict[str, Any] = {"status": "ok", "execution_count": current.count,
                                 "user_expressions": {}, "payload": []}
        if result is not None and failed:
            ename, evalue = jm.split_error(result.error, _ENAMES.get(result.status, "Error"))
            if result.status in ("timeout", "interrupted", "killed"):
                ename, evalue = _ENAMES[result.status], result.error or result.status
            traceback = jm.strip_ansi(held).splitlines() if held else []
            # A cell stopped by its time limit, or killed, was interrupted where it was:
            # its traceback ends in KeyboardInterrupt (Python) or "Interrupted" (Node). One
            # whose interpreter ended held perhaps an unrelated traceback it printed. Clients
            # that show only the traceback (Open WebUI) must still see why.
            if not traceback or ((result.status in ("timeout", "killed") or result.state_lost)
                                 and traceback[-1] != f"{ename}: {evalue}"):
                traceback.append(f"{ename}: {evalue}")
            error = {"ename": _cut(ename), "evalue": _cut(evalue),
                     "traceback": [_cut(line) for line in traceback]}
            await self._publish("error", error, current.parent)
            reply = {"status": "error", "execution_count": current.count, **error}
        elif held:
            await self._publish_stream(current, "stderr", held)
        await self._send(self._build("execute_reply", reply, "shell", current.parent,
                                     metadata={"status": reply["status"]}), current.origin)
        # stop_on_error aborts what arrived before the failed cell's reply went out, as
        # ipykernel does. Taken now, before ``idle`` is sent: a request that arrives once
        # the client saw it (its next cell) is not part of them, and runs.
        # A cell a restart stopped does not abort the cells sent after the restart: they
        # are for the fresh interpreter.
        doomed, self._aborted_by_restart = self._aborted_by_restart, deque()
        if failed and current.stop_on_error and not current.silent and not self._restarting:
            doomed.extend(self._pending)  # as ipykernel
            self._pending = deque()
        await self._publish("status", {"execution_state": "idle"}, current.parent)
        self._current = None
        await self._abort_all(doomed)
        if result is not None and result.state_lost:
            # The interpreter is fresh (restarted after the cell, or it died in it): the
            # next cell is its first, as the worker names it ("<cell-1>").
            self.execution_count = 0
        if not self._restarting:
            await self._start_next()

    async def _refuse(self, execution: _Execution, ename: str, evalue: str) -> None:
        """An error reply to a request that never ran (nor counted)."""
        error = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        await self._publish("status", {"execution_state": "busy"}, execution.parent)
        await self._publish("error", error, execution.parent)
        await self._send(self._build("execute_reply", {
            "status": "error", "execution_count": self.execution_count, **error},
            "shell", execution.parent, metadata={"status": "error"}), execution.origin)
        await self._publish("status", {"execution_state": "idle"}, execution.parent)

    async def _abort(self, execution: _Execution) -> None:
        await self._publish("status", {"execution_state": "busy"}, execution.parent)
        await self._send(self._build("execute_reply", {
            "status": "aborted", "execution_count": self.execution_count,
            "user_expressions": {}, "payload": []}, "shell", execution.parent,
            metadata={"status": "aborted"}), execution.origin)
        await self._publish("status", {"execution_state": "idle"}, execution.parent)

    async def _abort_all(self, executions: deque[_Execution]) -> None:
        """Abort ``executions`` in order, emptying the queue."""
        while executions:
            await self._abort(executions.popleft())

    def _mark_dead(self) -> None:
        self.dead = True
        self._restarting = False
        self._settle_waiters(BackendError("the kernel died"))

    def _settle_waiters(self, error: BackendError | None) -> None:
        """Tell the callers waiting for the restart under way it is done, or ``error``."""
        for waiter in self._restart_waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
                waiter.exception()  # retrieved: a waiter that timed out must not warn

    # --- sending ---------------------------------------------------------------------------

    def _build(self, msg_type: str, content: dict[str, Any], channel: str,
               parent: jm.Header | None, metadata: dict[str, Any] | None = None
               ) -> jm.Outgoing:
        return jm.build(msg_type, content, channel=channel, parent=parent,
                        session=self.session, metadata=metadata)

    async def _publish(self, msg_type: str, content: dict[str, Any],
                       parent: jm.Header | None) -> None:
        await self._send(self._build(msg_type, content, "iopub", parent), None)

    async def _send(self, message: jm.Outgoing, target: Connection | None) -> None:
        """iopub (``target`` None) goes to every connection, a reply to the one that asked
        (to every one if that one is gone)."""
        self._touch()
        text = jm.encode(message)
        if target is not None and target in self._connections:
            if target in self._replaying:
                await self._behind_replay(target, text)
            else:
                await self._send_to(target, text)
            return
        # iopub, or a reply whose connection is gone (its client may be back on another:
        # clients match replies to their requests by the parent's msg_id).
        if not self._connections:
            if message.parent_header:
                self._hold(text)
            return
        for conn in list(self._replaying):
            await self._behind_replay(conn, text)
        conns = [conn for conn in self._connections if conn not in self._replaying]
        if not conns:
            return
        if len(conns) == 1:  # the usual case (Open WebUI): no task per message
            await self._send_to(conns[0], text)
            return
        # All at once: the message waits at most ``send_timeout`` however many connections
        # are slow, and the session's loop, which sends it, with it.
        await asyncio.gather(*(self._send_to(conn, text) for conn in conns))

    def _unhold(self, texts: Sequence[str]) -> None:
        """Drop held messages (those still held: the next connection may have taken them)."""
        for text in texts:
            with contextlib.suppress(ValueError):
                self._held.remove(text)
                self._held_chars -= len(text)

    def _hold(self, text: str) -> None:
        """Keep a message for the next connection, within the buffer's bounds."""
        self._held.append(text)
        self._held_chars += len(text)
        while len(self._held) > HELD_MESSAGES or self._held_chars > HELD_CHARS:
            self._held_chars -= len(self._held.popleft())

    async def _behind_replay(self, conn: Connection, text: str) -> None:
        """Queue a message for a connection still taking the held ones. One to which more
        arrives meanwhile than the held buffer's bounds is too slow, as one whose send timed
        out: it is cut, and what it did not take is held again (:meth:`connect`)."""
        replay = self._replaying.get(conn)
        if replay is None or conn not in self._connections:
            return
        replay.messages.append(text)
        replay.arrived += 1
        replay.arrived_chars += len(text)
        if replay.arrived > HELD_MESSAGES or replay.arrived_chars > HELD_CHARS:
            log.info("kernel %s: cutting a connection that cannot take its replay", self.id)
            self.disconnect(conn)
            with contextlib.suppress(Exception):
                await conn.close(1008, "too slow", at_once=True)

    async def _send_to(self, conn: Connection, text: str) -> None:
        try:
            async with asyncio.timeout(self._send_timeout):
                await conn.send_text(text)
        except TimeoutError:  # too slow: it cannot take a close frame either
            log.info("kernel %s: cutting a connection that took nothing for %s s", self.id,
                     self._send_timeout)
            self.disconnect(conn)
            with contextlib.suppress(Exception):
                await conn.close(1008, "too slow", at_once=True)
        except Exception as exc:  # gone: drop it, the kernel goes on
            log.info("kernel %s: dropping a connection: %r", self.id, exc)
            self.disconnect(conn)
            with contextlib.suppress(Exception):
                await conn.close(1008, "too slow")

    def _touch(self) -> None:
        self.last_activity = jm.now_iso()


def _class_name(code: str) -> str:
    """An error code of ours as an exception's name: ``rate_limited`` -> ``RateLimited``
    (Jupyter clients show ``ename`` as a class name)."""
    return "".join(part[:1].upper() + part[1:] for part in code.split("_")) or "Error"


def _cut(text: str) -> str:
    """``text``, cut to :data:`MAX_ECHO_CHARS` characters with a visible mark."""
    if len(text) <= MAX_ECHO_CHARS:
        return text
    return text[:MAX_ECHO_CHARS] + "\n[... cut: too long to echo]"
