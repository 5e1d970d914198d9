"""The session manager: opens, finds, resumes and ends sessions; enforces the session limits
(``MAX_CONCURRENT_EXECUTIONS`` for the service, ``MAX_SESSIONS_PER_KEY`` for one caller).

It is the one place that knows every live session, so the admin API, stats and shutdown go
through it. Adapters call :meth:`SessionManager.open` and :meth:`SessionManager.resume`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ws_sandbox import frames as fr
from ws_sandbox.auth import is_key_identity
from ws_sandbox.backend import DockerBackend, Sandbox
from ws_sandbox.driver import (
    TOKEN_ENDED,
    CellObserver,
    ClientBack,
    CloseRequest,
    FrameSink,
    SessionRunner,
)
from ws_sandbox.exceptions import (
    BackendError,
    CapacityError,
    InvalidToken,
    LanguageUnavailable,
    TooManySessions,
)
from ws_sandbox.pool import WarmPool
from ws_sandbox.records import Origin
from ws_sandbox.session import CellFinished, Session, SessionLimits
from ws_sandbox.settings import LANGUAGES, Language, Settings, language_named
from ws_sandbox.tokens import TokenSigner

log = logging.getLogger(__name__)

CANCEL_GRACE = 2.0
"""Seconds sessions still open after the shutdown's drain get to end once cancelled."""


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the admin API shows about a session."""

    session_id: str
    language: str
    state: str
    attached: bool
    cells_run: int
    queued: int
    client_id: str
    address: str
    sandbox: str | None


class SessionManager:
    """Registry of live sessions.

    Args:
        settings: effective settings (limits are read when a session opens).
        backend: the Docker backend.
        pool: the warm pool sandboxes come from.
    """

    def __init__(self, settings: Settings, backend: DockerBackend, pool: WarmPool) -> None:
        self.settings = settings
        self.backend = backend
        self.pool = pool
        self.signer = TokenSigner(settings.session_secret)
        self._runners: dict[str, SessionRunner] = {}
        self._ending: set[str] = set()  # asked to end by end(), not finished yet
        self._tasks: set[asyncio.Task[None]] = set()
        self._reserved = 0
        self._reserved_by: Counter[str] = Counter()  # opens under way, by caller
        #: Session opens refused at a limit, by error code (``at_capacity`` for
        #: ``MAX_CONCURRENT_EXECUTIONS``, ``too_many_sessions`` for ``MAX_SESSIONS_PER_KEY``):
        #: what an operator sizes the service by.
        self.refused: Counter[str] = Counter()
        #: Called with ``(reason, client_id)`` for each refusal (the log's summary of them).
        self.on_refused: Callable[[str, str], None] | None = None
        self._observers: list[CellObserver] = []
        self._closing = False

    # --- configuration ---------------------------------------------------------------------

    def add_cell_observer(self, observer: CellObserver) -> None:
        """Call ``observer`` with every finished cell of every session."""
        self._observers.append(observer)

    def limits(self) -> SessionLimits:
        """The limits a session opened now gets."""
        s = self.settings
        return SessionLimits(
            max_execution_time=s.max_execution_time,
            default_execution_time=s.default_execution_time,
            max_memory_mb=s.max_memory_mb,
            max_output_bytes=s.max_output_bytes,
            max_code_bytes=s.max_code_bytes,
            max_queued_cells=s.max_queued_cells,
            idle_timeout=s.idle_timeout,
            max_lifetime=s.max_lifetime,
            resume_grace=s.resume_grace,
            interrupt_grace=s.interrupt_grace,
            restart_timeout=s.restart_timeout,
            max_sandbox_replacements=s.max_sandbox_replacements,
        )

    # --- sessions --------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Sessions open or opening (a closed one frees its slot while its container goes)."""
        live = sum(1 for r in self._runners.values() if not r.closed.is_set())
        return live + self._reserved

    def held_by(self, client_id: str) -> int:
        """Sessions open or opening for the caller ``client_id``, what ``MAX_SESSIONS_PER_KEY``
        caps: counted as :attr:`active` counts them, so a session waiting out
        ``RESUME_GRACE`` for its client counts (it holds a sandbox) and a closed one does not.
        """
        live = sum(1 for r in self._runners.values()
                   if r.client_id == client_id and not r.closed.is_set())
        return live + self._reserved_by[client_id]

    def check_language(self, language: str) -> Language:
        """Return the language ``language`` names (an alias such as ``bash`` or ``node`` names
        its language, :data:`~ws_sandbox.settings.LANGUAGE_ALIASES`) if it is enabled.

        Raises:
            LanguageUnavailable: naming the enabled languages.
        """
        wanted = language_named(language)
        enabled = self.settings.enabled_languages
        for lang in enabled:
            if lang == wanted:
                return lang
        named = repr(language) + (f" ({wanted})" if wanted != language and wanted in LANGUAGES
                                  else "")
        raise LanguageUnavailable(
            f"language {named} is not available; enabled: {', '.join(enabled)}")

    async def open(self, language: str, sink: FrameSink, *, client_id: str = "",
                   origin: Origin = "session", send_ready: bool = True,
                   admit_cell: Callable[[], None] | None = None,
                   address: str = "") -> SessionRunner:
        """Open a session with a sandbox from the pool and start running it.

        ``origin`` names the adapter in the session's execution records (stats, audit,
        history). ``admit_cell`` is asked before each client cell is queued (a rate limit,
        say); it refuses by raising a :class:`~ws_sandbox.exceptions.SandboxError`.
        ``client_id`` is the caller's identity (``key:...`` or an address): at most
        ``MAX_SESSIONS_PER_KEY`` sessions are open for one. ``address`` is its peer
        address, recorded with each cell.

        Raises:
            LanguageUnavailable: unknown or disabled language.
            TooManySessions: ``client_id`` holds ``MAX_SESSIONS_PER_KEY`` sessions.
            CapacityError: ``MAX_CONCURRENT_EXECUTIONS`` sessions are open.
            BackendError: no sandbox could be had.
        """
        lang = self.check_language(language)
        if self._closing:
            raise CapacityError("the server is shutting down", retry_after=5)
        # The caller's own cap first: when it is what stands in the way, waiting for other
        # callers' sessions to end would not help, closing one of its own would.
        per_key = self.settings.max_sessions_per_key
        if per_key and (held := self.held_by(client_id)) >= per_key:
            self.note_refused(TooManySessions.code, client_id)
            raise TooManySessions(
                f"too many sessions: this caller ({client_id}) has {held} open, the limit is"
                f" {per_key} per API key or client address (MAX_SESSIONS_PER_KEY); end one"
                " of them first", retry_after=5)
        if self.active >= self.settings.max_concurrent_executions:
            self.note_refused(CapacityError.code, client_id)
            raise CapacityError(
                f"at capacity: {self.active} sessions are open, the limit is"
                f" {self.settings.max_concurrent_executions}", retry_after=5)
        # Reserved until the session is registered (no await between the two), so that
        # opens waiting for a sandbox at once are all counted against both limits.
        self._reserved += 1
        self._reserved_by[client_id] += 1
        try:
            sandbox = await self._acquire(lang)
        finally:
            self._reserved -= 1
            self._reserved_by[client_id] -= 1
            if not self._reserved_by[client_id]:  # not one entry per caller ever seen
                del self._reserved_by[client_id]
        if self._closing:  # the shutdown began while this open waited: it would not see it
            await sandbox.destroy()
            raise CapacityError("the server is shutting down", retry_after=5)
        loop = asyncio.get_running_loop()
        session_id = secrets.token_hex(12)
        core = Session(session_id=session_id, language=lang, limits=self.limits(),
                       now=loop.time(), admit_cell=admit_cell)
        runner = SessionRunner(core, sandbox, acquire=lambda: self._acquire(lang),
                               send_timeout=self.settings.send_timeout,
                               on_cell=self._cell_finished, client_id=client_id,
                               origin=origin, address=address)
        self._runners[session_id] = runner
        runner.attach(sink)
        try:
            if send_ready:
                await sink.send_frames([self.ready_frame(runner)])
        except BaseException:
            del self._runners[session_id]
            await sandbox.destroy()
            raise
        task = asyncio.create_task(runner.run(), name=f"session-{session_id}")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(session_id, t))
        return runner

    def ready_frame(self, runner: SessionRunner, *, resumed: bool = False) -> fr.Ready:
        """The ``ready`` frame for ``runner``, with a fresh resume token."""
        return fr.Ready(session_id=runner.session_id, language=runner.core.language,
                        token=self.signer.sign(runner.session_id),
                        limits=runner.core.limits.public(), resumed=resumed)

    def note_refused(self, reason: str, client_id: str) -> None:
        """Count a session open (a one-shot call's too) refused at a limit for ``reason``."""
        self.refused[reason] += 1
        if self.on_refused is not None:
            self.on_refused(reason, client_id)

    async def resume(self, token: str, sink: FrameSink, *, client_id: str = "",
                     address: str = "") -> SessionRunner:
        """Reattach a client to its session.

        A session opened with an API key is resumed only with the same key (``client_id``
        is the caller's identity): a token that leaks does not hand the session to another
        key's holder. Without keys the identity is an address, which may change on a
        reconnect, so the token alone decides.

        Raises:
            InvalidToken: the token is bad, its session is gone, or it is another key's.
        """
        session_id = self.signer.verify(token)
        runner = self._runners.get(session_id)
        # One answer for both: "another key's" told another key's holder, with a leaked
        # token, whether the session still lived (a review).
        if runner is None or runner.closed.is_set() or (
                is_key_identity(runner.client_id) and client_id != runner.client_id):
            raise InvalidToken(TOKEN_ENDED)
        runner.address = address or runner.address
        await runner.feed(ClientBack(sink, self.ready_frame(runner, resumed=True)))
        if runner.closed.is_set() and not runner.attached_to(sink):
            # It ended while the resume waited for room in its inbox: nothing will answer.
            raise InvalidToken(TOKEN_ENDED)
        return runner

    def get(self, session_id: str) -> SessionRunner | None:
        """The live session with this id."""
        return self._runners.get(session_id)

    def list(self) -> list[SessionInfo]:
        """Every live session."""
        return [SessionInfo(
            session_id=r.session_id, language=r.core.language, state=r.core.state.value,
            attached=r.attached, cells_run=r.core.cells_run, queued=len(r.core.queue),
            client_id=r.client_id, address=r.address,
            sandbox=r.sandbox.short_id if r.sandbox else None)
            for r in self._runners.values()]

    async def end(self, session_id: str, reason: fr.CloseReason, message: str) -> bool:
        """Ask a session to close; returns whether this call ended it.

        ``False`` for no such session, for one already closed (it is listed until its
        container is gone), and for one already asked to end by an earlier call: concurrent
        requests to end one session end it, and are reported (audited), once.
        """
        runner = self._runners.get(session_id)
        if runner is None or runner.closed.is_set() or session_id in self._ending:
            return False
        self._ending.add(session_id)  # until the session's task ends (_finished)
        await runner.feed(CloseRequest(reason, message))
        return True

    async def shutdown(self, grace: float) -> None:
        """Close every session with ``server_shutdown``; cancel the rest after ``grace`` s,
        and give them :data:`CANCEL_GRACE` s more to end."""
        self._closing = True
        for runner in list(self._runners.values()):
            runner.feed_nowait(CloseRequest("server_shutdown", "the server is stopping"))
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=CANCEL_GRACE)

    # --- internals -------------------------------------------------------------------------

    async def _acquire(self, language: Language) -> Sandbox:
        try:
            async with asyncio.timeout(self.settings.acquire_timeout):
                return await self.pool.acquire(language)
        except TimeoutError:
            raise BackendError(
                f"no {language} sandbox within {self.settings.acquire_timeout:g} s") from None

    def _cell_finished(self, runner: SessionRunner, finished: CellFinished) -> None:
        for observer in self._observers:
            try:
                observer(runner, finished)
            except Exception:
                log.exception("cell observer failed")

    def _finished(self, session_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._runners.pop(session_id, None)
        self._ending.discard(session_id)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s crashed", session_id, exc_info=task.exception())

