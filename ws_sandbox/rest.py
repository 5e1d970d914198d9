"""The one-shot REST call, ``POST /api/v1/execute``: a shim over the session machinery.

It opens a session like any other adapter (a sandbox from the warm pool, the same sans-I/O
core, the same limits), feeds it one ``execute`` request, collects the frames in a
:class:`CollectingSink` until the ``result`` arrives, and closes the session. Requests are
checked with :func:`~ws_sandbox.session.validate_cell` *before* a sandbox is taken, so a bad
request costs no container and reads exactly as it would in a WebSocket session.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive

from ws_sandbox import frames as fr
from ws_sandbox.auth import is_key_identity
from ws_sandbox.driver import ClientRequest, CloseRequest
from ws_sandbox.exceptions import (
    DECODE_ERRORS,
    ERROR_TABLE,
    BadRequest,
    CapacityError,
    PayloadTooLarge,
    RateLimited,
    SandboxError,
    SandboxLost,
    UnsupportedMediaType,
    decode_error_text,
    quoted,
)
from ws_sandbox.manager import SessionManager
from ws_sandbox.ratelimit import RateLimiter
from ws_sandbox.session import validate_cell

#: Seconds allowed beyond a cell's own timeout before the call gives up on the session.
#: The core itself ends a runaway cell within interrupt_grace + restart_timeout.
RESULT_GRACE = 10.0
DISPLAY_LIMIT = 16


class ExecuteRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /api/v1/execute``. A field it does not know is refused: a misspelt
    ``timout`` or ``lang`` would otherwise run with the defaults, unnoticed."""

    code: str
    language: str = "python"
    timeout: float | None = None


class ExecuteResponse(msgspec.Struct, kw_only=True):
    """Result of ``POST /api/v1/execute``; ``status`` uses the words of the protocol."""

    execution_id: str
    status: fr.Status
    stdout: str
    stderr: str
    execution_time_ms: float
    memory_used_mb: float | None
    exit_code: int | None
    error: str | None
    language: str
    truncated: bool = False
    display: list[dict[str, str]] = msgspec.field(default_factory=list)
    #: Rust: how much of ``execution_time_ms`` compiling took (null for other languages).
    compile_time_ms: float | None = None


class ErrorDetail(msgspec.Struct, kw_only=True):
    """What went wrong: a machine ``code`` and a sentence for people."""

    code: str
    message: str


class ErrorBody(msgspec.Struct, kw_only=True):
    """Body of every error response."""

    error: ErrorDetail


_decoder = msgspec.json.Decoder(ExecuteRequest)
_encoder = msgspec.json.Encoder()


class JSONBody(Response):
    """A response whose content is encoded by msgspec (structs, dicts, lists)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encoder.encode(content)


def error_response(exc: SandboxError) -> JSONBody:
    """The JSON response of an error, with Retry-After when a retry makes sense."""
    headers = {}
    if exc.retry_after_header is not None:
        headers["Retry-After"] = exc.retry_after_header
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="ws-sandbox"'
    if exc.http_status == 426:
        headers["Upgrade"] = "websocket"
    return JSONBody(ErrorBody(error=ErrorDetail(code=exc.code, message=exc.message)),
                    status_code=exc.http_status, headers=headers)


class CollectingSink:
    """Collects one cell's frames; the core already caps its output at MAX_OUTPUT_BYTES."""

    whole_batches = True  # it never fails
    bounds_own_sends = True  # it never waits

    def __init__(self, cell_id: str) -> None:
        self.cell_id = cell_id
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.display: list[dict[str, str]] = []
        self.display_dropped = 0
        """Displays beyond :data:`DISPLAY_LIMIT`, not kept: the response says ``truncated``."""
        self.result: asyncio.Future[fr.Result] = asyncio.get_running_loop().create_future()

    async def send_frames(self, frames: Sequence[fr.ServerFrame]) -> None:
        """Keep output; resolve :attr:`result` at the end of the cell."""
        for frame in frames:
            self._take(frame)

    def _take(self, frame: fr.ServerFrame) -> None:
        match frame:
            case fr.Stream(name="stdout"):
                self.stdout.append(frame.text)
            case fr.Stream():
                self.stderr.append(frame.text)
            case fr.Display():
                if len(self.display) < DISPLAY_LIMIT:
                    self.display.append(frame.data)
                else:
                    self.display_dropped += 1
            case fr.Result():
                self._settle(frame)
            case fr.Error(id=cell_id) if cell_id in (self.cell_id, None):
                self._fail(_error_of(frame))
            case fr.Closed():
                self._fail(SandboxLost(f"the session closed before the result: "
                                       f"{frame.message or frame.reason}"))
            case _:
                pass

    async def close(self, code: int, reason: str) -> None:
        """Nothing to close: the HTTP response is written by the route."""
        self._fail(SandboxLost(f"the session closed before the result: {reason}"))

    def _settle(self, result: fr.Result) -> None:
        if not self.result.done():
            self.result.set_result(result)

    def _fail(self, exc: SandboxError) -> None:
        if not self.result.done():
            self.result.set_exception(exc)


async def client_disconnected(receive: Receive) -> None:
    """Return once the client has disconnected (its request body already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _error_of(frame: fr.Error) -> SandboxError:
    for cls in ERROR_TABLE:
        if cls.code == frame.code:
            return cls(frame.message)
    return SandboxLost(frame.message)


class BodyBudget:
    """The bytes of one-shot request bodies being received at once, service-wide, and per
    caller.

    A body may take ``REQUEST_TIMEOUT`` to arrive, and each is held whole until then: a
    client sending all but the last bytes of many large bodies held 850 MiB per API key
    for a minute (a review). Past ``limit`` in flight, a body's next bytes are refused
    (503, ``at_capacity``) instead of kept. One API key may hold ``share`` of it (then 429,
    ``rate_limited``: its own limit): one tenant's slow bodies took the whole budget, and
    every other tenant's one-shot calls were refused for as long as it kept them coming (a
    review). Callers without a key (``caller`` None) have no share: their identity is an
    address, which a proxy gives every client alike.
    """

    def __init__(self, limit: int, share: int | None = None) -> None:
        self.limit = limit
        self.share = limit if share is None else min(share, limit)
        self.in_flight = 0
        self._held: dict[str, int] = {}  # bytes in flight by caller (none held: no entry)

    def take(self, size: int, caller: str | None = None) -> None:
        """Count ``size`` more bytes received for ``caller``.

        Raises:
            RateLimited: they would pass the caller's share.
            CapacityError: they would pass the limit.
        """
        held = 0 if caller is None else self._held.get(caller, 0)
        if caller is not None and held + size > self.share:
            raise RateLimited(f"{held} bytes of this API key's request bodies are being"
                              " received already, the most one key may send at once; retry"
                              " once they have come", retry_after=1)
        if self.in_flight + size > self.limit:
            raise CapacityError(f"{self.in_flight} bytes of request bodies are being received"
                                f" already, the most the service holds at once; retry",
                                retry_after=1)
        self.in_flight += size
        if caller is not None:
            self._held[caller] = held + size

    def give_back(self, size: int, caller: str | None = None) -> None:
        self.in_flight -= size
        if size and caller is not None:
            if (held := self._held[caller] - size) > 0:
                self._held[caller] = held
            else:
                del self._held[caller]

    def held(self, caller: str) -> int:
        """Bytes of ``caller``'s bodies in flight."""
        return self._held.get(caller, 0)


async def read_body(request: Request, limit: int, budget: BodyBudget | None = None,
                    caller: str | None = None) -> bytes:
    """Read the body, refusing it as soon as it exceeds ``limit`` bytes (or ``budget``, of
    which ``caller`` has a share).

    Raises:
        PayloadTooLarge: the body (or its announced length) is above ``limit``.
        CapacityError: the bodies being received at once would pass ``budget``.
        RateLimited: ``caller``'s would pass its share of it.
        BadRequest: the client went away before the whole body came (nobody reads the
            answer; it keeps the error log for real errors).
    """
    announced = request.headers.get("content-length")
    too_large = PayloadTooLarge(f"request body exceeds {limit} bytes")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            if budget is not None:
                budget.take(len(chunk), caller)
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest(f"the client disconnected after {size} bytes of the body") from None
    finally:
        if budget is not None:
            budget.give_back(sum(map(len, chunks)), caller)
    return b"".join(chunks)


def check_json_media(request: Request) -> None:
    """A JSON body's Content-Type: ``application/json``, and its charset, if it names one,
    UTF-8 (JSON is UTF-8, RFC 8259: a body sent as Latin-1 was read as UTF-8).

    Raises:
        UnsupportedMediaType: naming what was sent.
    """
    media, *params = request.headers.get("content-type", "").split(";")
    media = media.strip().lower()
    if media != "application/json":
        sent = quoted(media) if media else "missing"
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {sent}")
    for param in params:
        name, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(
                f"JSON is UTF-8: send it as such, not as charset={quoted(charset)}")


async def execute(request: Request) -> Response:
    """``POST /api/v1/execute``: run one program in a fresh sandbox and return its result."""
    manager: SessionManager = request.app.state.manager
    limiter: RateLimiter = request.app.state.limiter
    client_id: str = getattr(request.state, "client_id", "unknown")
    limiter.check(client_id)
    check_json_media(request)
    try:
        body = await read_body(request, fr.message_limit(manager.settings.max_code_bytes),
                               request.app.state.bodies,
                               client_id if is_key_identity(client_id) else None)
    except RateLimited:  # (counted in stats and the refusals' summary, as the limiter's)
        limiter.note_refused(client_id)
        raise
    except CapacityError as exc:
        manager.note_refused(exc.code, client_id)
        raise
    if not body.strip():
        raise BadRequest('the request body is empty: send a JSON object such as'
                         ' {"code": "print(1)", "language": "python"}')
    try:
        req = _decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise BadRequest(f"invalid request body: {decode_error_text(exc, body)}") from None
    language = manager.check_language(req.language)
    timeout = validate_cell(manager.limits(), req.code, req.timeout)
    execution_id = uuid.uuid4().hex
    sink = CollectingSink(execution_id)
    runner = await manager.open(language, sink, client_id=client_id, origin="rest",
                                send_ready=False,
                                address=getattr(request.state, "client_address", client_id))
    ending = "the one-shot execution ended"
    try:
        # A whole program: its end waits for the threads and exit functions it left.
        await runner.feed(ClientRequest(fr.Execute(id=execution_id, code=req.code,
                                                   timeout=timeout, program=True)))
        gone = asyncio.ensure_future(client_disconnected(request.receive))
        try:
            async with asyncio.timeout(timeout + RESULT_GRACE + manager.settings.interrupt_grace
                                       + manager.settings.restart_timeout):
                waiting: list[asyncio.Future[Any]] = [sink.result, gone]
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise SandboxLost("the sandbox gave no result in time") from None
        finally:
            gone.cancel()
        if not sink.result.done():
            # Nobody waits for the result: the cell ends now, with its session (killed),
            # and gives its slot back, instead of running to its timeout for no one.
            ending = "the client of the one-shot call disconnected"
            raise BadRequest(f"{ending} before the result")
        result = sink.result.result()
    finally:
        runner.feed_nowait(CloseRequest("client_closed", ending))
        # Wait for the session's end (not its container's removal): by then every cell
        # observer (stats, audit, history) has seen this execution.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await runner.closed.wait()
    return JSONBody(ExecuteResponse(
        execution_id=execution_id, status=result.status, stdout="".join(sink.stdout),
        stderr="".join(sink.stderr), execution_time_ms=result.execution_time_ms,
        memory_used_mb=result.memory_used_mb, exit_code=result.exit_code,
        error=result.error, language=language,
        truncated=result.truncated or sink.display_dropped > 0, display=sink.display,
        compile_time_ms=result.compile_time_ms))
