"""The session state machine, sans I/O.

A :class:`Session` holds everything one client session knows: its cells (one running, a
bounded FIFO queue behind it), its deadlines and its output counters. It performs no I/O and
reads no clock: callers feed it events with the current monotonic time (``now``) and then
collect what it wants done:

* :meth:`Session.frames_to_send` -- protocol frames for the client;
* :meth:`Session.actions_to_run` -- :class:`SendToAgent`, :class:`ReplaceSandbox`,
  :class:`CellFinished` and :class:`CloseSession` for the I/O layer;
* :meth:`Session.next_deadline` -- when to call :meth:`Session.advance` next.

Every adapter (the WebSocket endpoint, the one-shot REST call, the Jupyter kernel endpoint)
drives this one core, so their behaviour cannot drift apart.

States::

    IDLE --exec--> RUNNING --done--> IDLE
      |               | deadline: interrupt -> grace: restart -> timeout: replace sandbox
      |               v
      +-----------> RECOVERING (waiting for a restarted interpreter or a new sandbox)
    any --close--> CLOSED
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ws_sandbox import agent_wire as aw
from ws_sandbox import frames as fr
from ws_sandbox.exceptions import BadRequest, PayloadTooLarge, QueueFull, SandboxError

TRUNCATION_MARKER = "\n[output truncated: more than {limit} bytes]\n"


class State(enum.Enum):
    """Where a session is in its life."""

    IDLE = "idle"
    RUNNING = "running"
    RECOVERING = "recovering"
    CLOSED = "closed"


class Phase(enum.Enum):
    """How far the stopping of a running cell has escalated."""

    NORMAL = "normal"
    INTERRUPTING = "interrupting"
    RESTARTING = "restarting"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Limits of one session, taken from the settings when it opens."""

    max_execution_time: float
    default_execution_time: float
    max_memory_mb: int
    max_output_bytes: int
    max_code_bytes: int
    max_queued_cells: int
    idle_timeout: float | None
    max_lifetime: float | None
    resume_grace: float
    interrupt_grace: float
    restart_timeout: float
    #: Sandboxes the session may have replaced within :data:`REPLACEMENT_WINDOW`; 0: any.
    max_sandbox_replacements: int

    def public(self) -> fr.Limits:
        """The limits as announced in the ``ready`` frame."""
        return fr.Limits(
            max_execution_time=self.max_execution_time,
            default_execution_time=self.default_execution_time,
            max_memory_mb=self.max_memory_mb,
            max_output_bytes=self.max_output_bytes,
            max_code_bytes=self.max_code_bytes,
            max_queued_cells=self.max_queued_cells,
            idle_timeout=self.idle_timeout,
            max_lifetime=self.max_lifetime,
        )


def check_code_size(code: str, max_code_bytes: int) -> None:
    """Refuse code above ``max_code_bytes`` bytes of UTF-8.

    Raises:
        PayloadTooLarge: naming the size and the limit.
    """
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > max_code_bytes:
        raise PayloadTooLarge(f"code of {size} bytes exceeds the limit of {max_code_bytes} bytes")


MAX_RESTART_IDS = 64
"""Restart requests with ids that may wait for one ``restarted`` frame (each joins the
restart under way, free): more are refused, so that the frame stays small."""

REPLACEMENT_WINDOW = 60.0
"""Seconds over which a session's sandbox replacements are counted (see
``SessionLimits.max_sandbox_replacements``)."""

CLOCK_RESOLUTION_MS = 1.0
"""How coarse the ``now`` the driver gives may be: uvloop's ``loop.time()`` is libuv's, which
counts whole milliseconds. A cell begun and ended within one tick is seen to take 0 ms; the
agent's own measure of it (finer) is kept up to a tick beyond what was seen."""

MIN_CELL_TIMEOUT = 0.001
"""The shortest timeout a cell may ask for: a shorter one has passed before its code reaches
the sandbox (``1e-300`` was taken, and ended as a ``timeout`` with the program's exit code 0)."""


def validate_cell(limits: SessionLimits, code: str, timeout: float | None) -> float:
    """Check a cell's code and timeout; return the timeout in force.

    Shared by every adapter (WebSocket cells, the one-shot REST call) so that a refused
    request reads the same everywhere. A timeout is never silently clamped.

    Raises:
        PayloadTooLarge: code above ``max_code_bytes``.
        BadRequest: empty code, or a timeout that is not positive or above the maximum.
    """
    check_code_size(code, limits.max_code_bytes)
    if not code.strip():
        raise BadRequest("code is empty")
    if timeout is None:
        return limits.default_execution_time
    if not timeout >= MIN_CELL_TIMEOUT:
        raise BadRequest(f"timeout must be a positive number of seconds, at least"
                         f" {MIN_CELL_TIMEOUT:g}, not {timeout:g}")
    if timeout > limits.max_execution_time:
        raise BadRequest(f"timeout of {timeout:g} s exceeds the maximum of"
                         f" {limits.max_execution_time:g} s")
    return timeout


DISPLAY_FRAME_BYTES = fr.AGENT_FRAME_CHARS
"""What one display frame costs of a cell's output budget beyond its data: about its JSON
envelope, so that a flood of empty displays is bounded by the budget too."""


def display_size(data: Mapping[str, str]) -> int:
    """The output budget a display with ``data`` uses: the UTF-8 bytes of every MIME type
    and content, one per entry, and :data:`DISPLAY_FRAME_BYTES`."""
    return DISPLAY_FRAME_BYTES + sum(
        len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass")) + 1
        for k, v in data.items())


def _cost(frame: aw.FromAgent) -> int:
    """What a frame from the agent counts against what its agent may send: a stream's
    characters (one at least), a display as the agent counts it, and any other frame
    :data:`~ws_sandbox.frames.AGENT_FRAME_CHARS`. None is free."""
    match frame:
        case aw.Out():
            return max(len(frame.text), 1)
        case aw.AgentDisplay():
            return fr.display_chars(frame.data)
        case _:
            return fr.AGENT_FRAME_CHARS


@dataclass(slots=True)
class Cell:
    """One code cell, from request to result."""

    id: str
    code: str
    timeout: float
    submitted_at: float
    #: A whole program: its end waits for the work it left (see :class:`~.frames.Execute`).
    program: bool = False
    #: The peer address of the connection that sent it (for the records).
    address: str = ""
    started_at: float | None = None
    deadline: float | None = None
    output_bytes: int = 0
    truncated: bool = False
    timed_out: bool = False
    interrupted: bool = False
    # What the client was sent (capped at max_output_bytes): kept for history and REST.
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


# --- actions for the I/O layer -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendToAgent:
    """Write this frame to the agent."""

    frame: aw.ToAgent


@dataclass(frozen=True, slots=True)
class ReplaceSandbox:
    """Destroy the sandbox and bring a fresh one; call :meth:`Session.sandbox_replaced`."""

    reason: str


@dataclass(frozen=True, slots=True)
class CellFinished:
    """A cell ended; its record is for stats, audit and history."""

    cell: Cell
    result: fr.Result


@dataclass(frozen=True, slots=True)
class CloseSession:
    """End the session: send nothing more, close the client, remove the sandbox."""

    reason: fr.CloseReason


Action = SendToAgent | ReplaceSandbox | CellFinished | CloseSession


@dataclass(slots=True)
class _Timers:
    lifetime: float | None = None
    idle: float | None = None
    phase: float | None = None
    resume: float | None = None


@dataclass(slots=True)
class Session:
    """The state machine of one session. See the module docstring.

    Args:
        session_id: the session's public id.
        language: language of its sandbox.
        limits: limits in force.
        now: monotonic time at which the session opens (its sandbox is ready).
    """

    session_id: str
    language: str
    limits: SessionLimits
    now: float
    state: State = State.IDLE
    phase: Phase = Phase.NORMAL
    running: Cell | None = None
    queue: deque[Cell] = field(default_factory=deque)
    cells_run: int = 0
    close_reason: fr.CloseReason | None = None
    #: Decides whether a client's cell may be queued at all (raises SandboxError if not).
    admit_cell: Callable[[], None] | None = None
    _frames: list[fr.ServerFrame] = field(default_factory=list)
    _actions: list[Action] = field(default_factory=list)
    _timers: _Timers = field(default_factory=_Timers)
    _restart_pending: bool = False
    #: Output characters the sandbox sent since the running (or last) cell started.
    _received: int = 0
    #: The ids of the restart requests the next ``restarted`` frame answers.
    _restart_ids: list[str] = field(default_factory=list)
    #: When each sandbox replacement of the last :data:`REPLACEMENT_WINDOW` was asked for.
    _replacements: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.limits.max_lifetime is not None:
            self._timers.lifetime = self.now + self.limits.max_lifetime
        self._touch(self.now)

    # --- outputs ---------------------------------------------------------------------------

    def frames_to_send(self) -> list[fr.ServerFrame]:
        """Frames for the client, in order; each is returned once."""
        frames, self._frames = self._frames, []
        return frames

    def actions_to_run(self) -> list[Action]:
        """Actions for the I/O layer, in order; each is returned once."""
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`advance` has something to do."""
        if self.state is State.CLOSED:
            return None
        t = self._timers
        # The idle timer counts only while no cell runs or waits (advance ignores it then,
        # and a deadline advance would not act on is a busy loop for the caller).
        idle = None if self.busy else t.idle
        candidates = [d for d in (t.lifetime, idle, t.phase, t.resume) if d is not None]
        if self.state is State.RUNNING and self.phase is Phase.NORMAL and self.running:
            candidates.append(self._cell_deadline(self.running))
        return min(candidates, default=None)

    @property
    def busy(self) -> bool:
        """Whether a cell runs or waits."""
        return self.running is not None or bool(self.queue)

    # --- inputs from the client ------------------------------------------------------------

    def receive_client(self, data: str | bytes, now: float, *, address: str = "") -> None:
        """Handle one WebSocket message from the client (text or binary); ``address`` is
        the peer address of the connection it came over."""
        if self.state is State.CLOSED:
            return
        self._touch(now)
        if isinstance(data, bytes):
            self._error(BadRequest("binary frames are not accepted; send JSON text frames"))
            return
        limit = fr.message_limit(self.limits.max_code_bytes)
        if len(data) > limit:
            self._error(PayloadTooLarge(
                f"frame of {len(data)} characters exceeds the limit of {limit} for code of"
                f" {self.limits.max_code_bytes} bytes"))
            return
        try:
            frame = fr.decode_client(data)
        except SandboxError as exc:
            self._error(exc, cell_id=fr.cell_id_of(data))
            return
        self.receive_frame(frame, now, address=address)

    def receive_frame(self, frame: fr.ClientFrame, now: float, *, address: str = "",
                      admitted: bool = False) -> None:
        """Handle one decoded client frame (from a connection at ``address``); ``admitted``:
        the caller asked ``admit_cell`` already."""
        if self.state is State.CLOSED:
            return
        self._touch(now)
        match frame:
            case fr.Execute():
                try:
                    if self.admit_cell is not None and not admitted:
                        self.admit_cell()  # e.g. a rate limit; raises to refuse the cell
                    self.submit(frame, now, address=address)
                except SandboxError as exc:
                    self._error(exc, cell_id=frame.id)
            case fr.Interrupt():
                self.interrupt(now)
            case fr.Restart():
                try:
                    if frame.id is not None and len(self._restart_ids) >= MAX_RESTART_IDS:
                        raise QueueFull(f"{len(self._restart_ids)} restarts already wait for"
                                        f" the one under way; the limit is {MAX_RESTART_IDS}")
                    if self.admit_cell is not None and not admitted and self._restart_starts():
                        # A restart starts an interpreter: it costs what a cell does (free,
                        # a client restarted 47 interpreters a second past its rate limit:
                        # a review). One under way is joined without a token.
                        self.admit_cell()
                except SandboxError as exc:
                    self._error(exc, cell_id=frame.id)
                    return
                self.restart(now, request_id=frame.id)
            case _:  # pragma: no cover - exhaustiveness
                raise AssertionError(frame)

    def submit(self, request: fr.Execute, now: float, *, address: str = "") -> Cell:
        """Queue a cell, or start it at once when the session is idle.

        Raises:
            BadRequest: empty code, a bad timeout, or an id already in use.
            PayloadTooLarge: code above ``max_code_bytes``.
            QueueFull: too many cells waiting.
        """
        limits = self.limits
        timeout = validate_cell(limits, request.code, request.timeout)
        if (self.running and self.running.id == request.id) or any(
                c.id == request.id for c in self.queue):
            raise BadRequest(f"cell id {request.id!r} is already running or queued")
        if self.busy and len(self.queue) >= limits.max_queued_cells:
            raise QueueFull(f"{len(self.queue)} cells are already waiting; the limit is"
                            f" {limits.max_queued_cells}")
        cell = Cell(id=request.id, code=request.code, timeout=timeout, submitted_at=now,
                    program=request.program, address=address)
        self.queue.append(cell)
        self._start_next(now)
        return cell

    def interrupt(self, now: float) -> None:
        """Interrupt the running cell; escalate to a restart if it does not stop."""
        cell = self.running
        if self.state is not State.RUNNING or cell is None or self.phase is not Phase.NORMAL:
            return
        cell.interrupted = True
        self._send(aw.Signal())
        self.phase = Phase.INTERRUPTING
        self._timers.phase = now + self.limits.interrupt_grace

    def _restart_starts(self) -> bool:
        """Whether a restart asked for now would start one (not join one under way, or a
        recovery, nor come after the end)."""
        return not (self.state in (State.CLOSED, State.RECOVERING) or self._restart_pending)

    def restart(self, now: float, *, request_id: str | None = None) -> None:
        """Restart the interpreter (state is lost); a running cell ends as interrupted.
        ``request_id``: the client's id of the request, named in the ``restarted`` frame
        that answers it."""
        if self.state is State.CLOSED:
            return
        if request_id is not None:
            self._restart_ids.append(request_id)
        if not self._restart_starts():
            return  # a restart under way answers this one too (its deadline stands)
        if self.running is not None:
            self.running.interrupted = True
        self._begin_restart(now)

    # --- inputs from the sandbox -----------------------------------------------------------

    def receive_agent(self, frame: aw.FromAgent, now: float) -> None:
        """Handle one validated frame from the agent."""
        if self.state is State.CLOSED:
            return
        if self._over_allowance(_cost(frame), now):
            return
        cell = self.running
        match frame:
            case aw.Out():
                if cell is not None and frame.id == cell.id:
                    self._output(cell, frame.name, frame.text)
            case aw.AgentDisplay():
                if cell is not None and frame.id == cell.id:
                    self._display(cell, frame)
            case aw.Done():
                if cell is not None and frame.id == cell.id:
                    self._finish_from_agent(cell, frame, now)
            case aw.Restarted():
                if self._restart_pending and cell is not None:
                    # The agent ends the running cell (its done) before it answers a
                    # restart: an answer first would leave the cell with no deadline.
                    self.sandbox_failed("it answered a restart before ending the running"
                                        " cell", now)
                elif self._restart_pending:
                    self._restart_pending = False
                    self._timers.phase = None
                    self._frames.append(fr.Restarted(
                        reason="interpreter_restarted",
                        message="the interpreter was restarted; state is lost",
                        ids=self._answered_restarts()))
                    if self.state is State.RECOVERING:
                        self.state = State.IDLE
                        self.phase = Phase.NORMAL
                        self._start_next(now)
            case aw.Lost(error=error):
                # Told at once (the next cell's result says state_lost too). A restart under
                # way, or a sandbox being replaced, brings its own ``restarted``.
                if self.state is not State.RECOVERING and not self._restart_pending:
                    self._frames.append(fr.Restarted(
                        reason="interpreter_restarted",
                        message=f"{error or 'the interpreter ended'} between cells (work an"
                                f" earlier cell left running ended it, or it was killed);"
                                f" state is lost", ids=[]))
            case aw.AgentReady():
                pass  # a stray greeting changes nothing
            case _:  # pragma: no cover - exhaustiveness
                raise AssertionError(frame)

    def sandbox_failed(self, reason: str, now: float, *, oom_killed: bool = False) -> None:
        """The sandbox died or broke protocol: end the running cell, ask for a new one."""
        if self.state is State.CLOSED:
            return
        cell = self.running
        if cell is not None:
            if cell.timed_out:
                status: fr.Status = "timeout"
                error = self._timeout_error(cell) + "; the sandbox was replaced"
            elif oom_killed:
                # The sandbox itself died of it (under gVisor, one process to the memory
                # cgroup): its files go with it, where an agent that lives restarts only
                # the interpreter (a review: the error did not say).
                status, error = "killed", self._oom_error() + (
                    "; the sandbox was replaced; state and files are lost")
            elif cell.interrupted:
                status, error = "interrupted", f"the sandbox was replaced: {reason}"
            else:
                status, error = "killed", f"the sandbox stopped: {reason}"
            self._finish(cell, now, status=status, error=error, exit_code=None,
                         state_lost=True)
        self._restart_pending = False
        self.phase = Phase.NORMAL
        self._timers.phase = None
        if self._replacements_exhausted(now):
            cap = self.limits.max_sandbox_replacements
            self.close("sandbox_lost", now, f"the sandbox was lost {cap + 1} times within"
                       f" {REPLACEMENT_WINDOW:g} s (the last time: {reason}); a session may"
                       f" have {cap} replaced in that time")
            return
        self.state = State.RECOVERING
        self._actions.append(ReplaceSandbox(reason))

    def _answered_restarts(self) -> list[str]:
        """The ids of the restart requests a ``restarted`` frame sent now answers."""
        ids, self._restart_ids = self._restart_ids, []
        return ids

    def _replacements_exhausted(self, now: float) -> bool:
        """Count a sandbox lost at ``now``; whether that is one more than the session may
        have replaced within :data:`REPLACEMENT_WINDOW` (each replacement makes the engine
        create and start a container: a cell that kills its sandbox in a loop would keep it
        doing so, at every other session's cost)."""
        cap = self.limits.max_sandbox_replacements
        if cap <= 0:
            return False
        times = self._replacements
        times.append(now)
        while times and times[0] <= now - REPLACEMENT_WINDOW:
            times.popleft()
        return len(times) > cap

    def _over_allowance(self, chars: int, now: float) -> bool:
        """Count ``chars`` of output from the sandbox (:func:`_cost`); past what its agent may
        send, the sandbox broke protocol (it is replaced) and the frame is dropped.

        The agent counts a cell's output as it forwards it (raw bytes of the streams, the
        characters of display data and one per entry) and stops at ``max_output_bytes``,
        including the output written between cells that it kept for the cell (and a
        display made between cells, which it sends under the last cell's id and the
        service drops). So between the start of one cell and the start of the next, the
        agent sends at most that cell's budget and, still on the way, the rest of the cell
        before it: twice the budget. Without this bound a hostile
        sandbox could stream dropped output for ever, at the cost of the service's and the
        engine's CPU."""
        self._received += chars
        if self._received <= fr.output_allowance(self.limits.max_output_bytes):
            return False
        if self.state is not State.RECOVERING:
            self.sandbox_failed("it sent more output than its cells may produce", now)
        return True

    def sandbox_replaced(self, now: float) -> None:
        """A fresh sandbox took the place of the lost one."""
        if self.state is not State.RECOVERING:
            return
        self._received = 0
        self.state = State.IDLE
        self._restart_pending = False  # a fresh sandbox answers a restart under way too
        self._timers.phase = None
        self._frames.append(fr.Restarted(
            reason="sandbox_replaced", message="the sandbox was replaced; state is lost",
            ids=self._answered_restarts()))
        self._start_next(now)

    # --- connection and time ---------------------------------------------------------------

    def client_detached(self, now: float) -> None:
        """The client's connection dropped; wait ``resume_grace`` for it to come back."""
        if self.state is not State.CLOSED:
            self._timers.resume = now + self.limits.resume_grace

    def client_attached(self, now: float) -> None:
        """The client came back in time."""
        self._timers.resume = None
        self._touch(now)

    def advance(self, now: float) -> None:
        """Act on every deadline that has passed at ``now``."""
        if self.state is State.CLOSED:
            return
        t = self._timers
        if t.lifetime is not None and now >= t.lifetime:
            self.close("max_lifetime", now, f"the session reached its maximum lifetime of"
                       f" {self.limits.max_lifetime:g} s")
            return
        if t.resume is not None and now >= t.resume:
            self.close("resume_expired", now, "the client did not come back in time")
            return
        if t.idle is not None and now >= t.idle and not self.busy:
            self.close("idle_timeout", now, f"no activity for {self.limits.idle_timeout:g} s")
            return
        cell = self.running
        if self.state is State.RUNNING and cell is not None:
            if self.phase is Phase.NORMAL and now >= self._cell_deadline(cell):
                cell.timed_out = True
                self._send(aw.Signal())
                self.phase = Phase.INTERRUPTING
                t.phase = now + self.limits.interrupt_grace
            elif self.phase is Phase.INTERRUPTING and t.phase is not None and now >= t.phase:
                self._begin_restart(now)
            elif self.phase is Phase.RESTARTING and t.phase is not None and now >= t.phase:
                self.sandbox_failed("it did not restart in time", now)
        elif self.state is State.RECOVERING and t.phase is not None and now >= t.phase:
            self.sandbox_failed("it did not restart in time", now)

    def close(self, reason: fr.CloseReason, now: float, message: str = "") -> None:
        """End the session; a running cell ends as ``killed``."""
        if self.state is State.CLOSED:
            return
        cell = self.running
        if cell is not None:
            self._finish(cell, now, status="killed", exit_code=None, state_lost=True,
                         error=f"the session closed: {message or reason}")
        for queued in self.queue:
            self._frames.append(fr.Error(code="cancelled", id=queued.id,
                                         message="the session closed before this cell ran"))
        self.queue.clear()
        self.state = State.CLOSED
        self.close_reason = reason
        self._frames.append(fr.Closed(reason=reason, message=message))
        self._actions.append(CloseSession(reason))

    # --- internals -------------------------------------------------------------------------

    def _touch(self, now: float) -> None:
        if self.limits.idle_timeout is not None:
            self._timers.idle = now + self.limits.idle_timeout

    def _send(self, frame: aw.ToAgent) -> None:
        self._actions.append(SendToAgent(frame))

    def _error(self, exc: SandboxError, cell_id: str | None = None) -> None:
        self._frames.append(fr.Error(code=exc.code, message=exc.message, id=cell_id))

    def _cell_deadline(self, cell: Cell) -> float:
        assert cell.deadline is not None
        return cell.deadline

    def _begin_restart(self, now: float) -> None:
        self._send(aw.RestartWorker())
        self._restart_pending = True
        self._timers.phase = now + self.limits.restart_timeout
        if self.running is not None:
            self.phase = Phase.RESTARTING
        else:
            self.state = State.RECOVERING

    def _start_next(self, now: float) -> None:
        if self.state is not State.IDLE or not self.queue:
            return
        cell = self.queue.popleft()
        cell.started_at = now
        cell.deadline = now + cell.timeout
        self._received = 0
        self.running = cell
        self.state = State.RUNNING
        self.phase = Phase.NORMAL
        self._send(aw.Exec(id=cell.id, code=cell.code,
                           max_output_bytes=self.limits.max_output_bytes, program=cell.program))

    def _room(self, cell: Cell) -> int:
        """Bytes of output ``cell`` may still send (its ``output_bytes`` are those sent)."""
        return max(self.limits.max_output_bytes - cell.output_bytes, 0)

    def _output(self, cell: Cell, name: fr.StreamName, text: str) -> None:
        if cell.truncated:
            return
        raw = text.encode("utf-8", "surrogatepass")
        allowed = min(self._room(cell), len(raw))
        cell.output_bytes += allowed
        if allowed < len(raw):
            text = raw[:allowed].decode("utf-8", "ignore")
            cell.truncated = True
            text += TRUNCATION_MARKER.format(limit=self.limits.max_output_bytes)
        if text:
            (cell.stdout if name == "stdout" else cell.stderr).append(text)
            self._frames.append(fr.Stream(id=cell.id, name=name, text=text))

    def _display(self, cell: Cell, frame: aw.AgentDisplay) -> None:
        if cell.truncated:
            return
        size = display_size(frame.data)
        if size > self._room(cell):
            cell.truncated = True
            self._frames.append(fr.Stream(
                id=cell.id, name="stderr",
                text=TRUNCATION_MARKER.format(limit=self.limits.max_output_bytes)))
            return
        cell.output_bytes += size
        self._frames.append(fr.Display(id=cell.id, kind=frame.kind, data=dict(frame.data)))

    def _oom_error(self) -> str:
        return f"memory limit of {self.limits.max_memory_mb} MB exceeded"

    def _timeout_error(self, cell: Cell) -> str:
        return f"execution time limit of {cell.timeout:g} s exceeded"

    def _finish_from_agent(self, cell: Cell, done: aw.Done, now: float) -> None:
        status: fr.Status
        error = done.error
        if cell.timed_out:
            status, error = "timeout", self._timeout_error(cell)
        elif done.oom_killed and done.status == "success":
            # The kernel killed a process at the memory limit, and the cell did not fail
            # for it: a child whose end it handled, or what an earlier cell left running (it
            # was reported killed with exit code 0). Said on stderr, not made its failure.
            status = "success"
            note = f"[a process was killed: {self._oom_error()}]\n"
            cell.stderr.append(note)
            self._frames.append(fr.Stream(id=cell.id, name="stderr", text=note))
        elif done.oom_killed:
            status, error = "killed", self._oom_error()
        elif cell.interrupted and done.status in ("interrupted", "error", "killed"):
            status = "interrupted"
        else:
            status = done.status
        if done.restarted:
            # Said once, in the service's words: the agent's own error for a restart may say
            # that it was restarted, or that "state was reset".
            said = "the interpreter was restarted"
            error = (error or "").removesuffix("; state was reset")
            if not error:
                error = said
            elif said not in error:
                error = f"{error}; {said}"
            error = f"{error}; state is lost"
        if done.truncated and not cell.truncated:
            # The agent stopped forwarding at the cap: the marker is still ours to show.
            cell.truncated = True
            marker = TRUNCATION_MARKER.format(limit=self.limits.max_output_bytes)
            cell.stdout.append(marker)
            self._frames.append(fr.Stream(id=cell.id, name="stdout", text=marker))
        # The agent's clock is hostile; it may only make the cell look faster than we saw,
        # give or take a tick of our own clock.
        assert cell.started_at is not None
        seen_ms = (now - cell.started_at) * 1000.0 + CLOCK_RESOLUTION_MS
        elapsed = min(done.execution_time_ms, seen_ms)
        compile_ms = None if done.compile_time_ms is None else min(done.compile_time_ms,
                                                                   elapsed)
        memory = done.memory_used_mb
        if memory is not None:
            memory = min(memory, float(self.limits.max_memory_mb))
        self._finish(cell, now, status=status, error=error, exit_code=done.exit_code,
                     state_lost=done.restarted, elapsed_ms=elapsed, memory_mb=memory,
                     compile_ms=compile_ms)
        if self._restart_pending:
            # The restart's own ``restarted`` frame ends the recovery.
            self.state = State.RECOVERING
        else:
            self._start_next(now)

    def _finish(self, cell: Cell, now: float, *, status: fr.Status, error: str | None,
                exit_code: int | None, state_lost: bool, elapsed_ms: float | None = None,
                memory_mb: float | None = None, compile_ms: float | None = None) -> None:
        assert cell.started_at is not None
        if elapsed_ms is None:
            elapsed_ms = (now - cell.started_at) * 1000.0
        result = fr.Result(
            id=cell.id, status=status, exit_code=exit_code,
            execution_time_ms=round(elapsed_ms, 3),
            memory_used_mb=None if memory_mb is None else round(memory_mb, 2),
            error=error, truncated=cell.truncated, state_lost=state_lost,
            compile_time_ms=None if compile_ms is None else round(compile_ms, 3))
        self._frames.append(result)
        self._actions.append(CellFinished(cell, result))
        self.cells_run += 1
        self.running = None
        self.state = State.IDLE
        self.phase = Phase.NORMAL
        self._timers.phase = None if not self._restart_pending else self._timers.phase
        self._touch(now)
