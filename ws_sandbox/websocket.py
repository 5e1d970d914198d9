"""The WebSocket session endpoint, ``/api/v1/sessions/ws?language=python``.

A thin adapter: it accepts the connection, opens or resumes a session through the
:class:`~ws_sandbox.manager.SessionManager`, and feeds every message it receives into the
session's runner. The runner sends frames back through :class:`WebSocketSink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ws_sandbox import frames as fr
from ws_sandbox.asgi_extensions import ABORT, SEND_MANY
from ws_sandbox.driver import ClientGone, ClientMessage, CloseRequest
from ws_sandbox.exceptions import SandboxError
from ws_sandbox.manager import SessionManager
from ws_sandbox.query import check_params
from ws_sandbox.ratelimit import Pace, RateLimiter

log = logging.getLogger(__name__)

#: The query parameters of the session endpoint (``api_key`` is the auth middleware's).
SESSION_PARAMS = ("language", "resume", "api_key")


def close_reason(reason: str) -> str:
    """``reason`` cut to the 123 bytes of UTF-8 a close frame has room for, whole characters."""
    return reason.encode("utf-8", "replace")[:123].decode("utf-8", "ignore")


async def close_quietly(websocket: WebSocket, code: int, reason: str,
                        timeout: float | None) -> None:
    """Close a WebSocket unless it is closed already; a peer that is gone is no error.

    A peer that takes nothing cannot take the close frame either: after ``timeout`` seconds
    (``SEND_TIMEOUT``) the connection is cut (:func:`abort`), so a caller never waits on it
    for good. Starlette marks the socket disconnected before it awaits the close, so a
    second call, even a concurrent one, does nothing.
    """
    if websocket.application_state is not WebSocketState.CONNECTED:
        return
    try:
        async with asyncio.timeout(timeout):
            await websocket.close(code, close_reason(reason))
    except TimeoutError:
        if not abort(websocket):
            log.warning("cannot cut a WebSocket that takes nothing: the server offers no %s",
                        ABORT)
    except Exception:  # the peer is gone
        pass


def abort(websocket: WebSocket) -> bool:
    """Cut the connection at once where the server offers :data:`ABORT` (ours does);
    whether it could."""
    extension = websocket.scope.get("extensions", {}).get(ABORT)
    if extension is None:
        return False
    with contextlib.suppress(Exception):
        extension["abort"]()
    return True


class WebSocketSink:
    """Delivers frames to one Starlette WebSocket.

    Args:
        websocket: the connection.
        send_many: the raw ASGI ``send`` when the server offers :data:`SEND_MANY` (then a
            batch of frames leaves in one write), else None (one message at a time).
        close_timeout: seconds a close may wait for the peer before the connection is cut
            (``SEND_TIMEOUT``).
    """

    #: The runner bounds each send with ``SEND_TIMEOUT``.
    bounds_own_sends = False

    def __init__(self, websocket: WebSocket, send_many: Send | None = None, *,
                 close_timeout: float | None) -> None:
        self._ws = websocket
        self._send_many = send_many
        self._close_timeout = close_timeout
        self.whole_batches = send_many is not None

    async def send_frames(self, frames: Sequence[fr.ServerFrame]) -> None:
        """Send frames as JSON text messages, in one write where the server allows."""
        if self._send_many is not None:
            await self._send_many({"type": SEND_MANY, "texts": [fr.encode(f) for f in frames]})
            return
        for frame in frames:
            await self._ws.send_text(fr.encode(frame).decode())

    async def close(self, code: int, reason: str) -> None:
        """Close the connection once, within ``close_timeout`` (then it is cut)."""
        await close_quietly(self._ws, code, reason, self._close_timeout)


def client_address(websocket: WebSocket) -> str:
    """The peer's address, as used for rate limits and audit."""
    return websocket.client.host if websocket.client else "unknown"


class SessionEndpoint:
    """The ASGI application of the session endpoint.

    An object, not a function, so that Starlette hands it the raw ASGI ``send`` (which
    :data:`SEND_MANY` needs) instead of wrapping it in a WebSocket.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one connection."""
        batching = SEND_MANY in scope.get("extensions", {})
        websocket = WebSocket(scope, receive, send)
        manager: SessionManager = websocket.app.state.manager
        await serve_session(websocket, WebSocketSink(
            websocket, send if batching else None,
            close_timeout=manager.settings.send_timeout))


session_endpoint = SessionEndpoint()


async def serve_session(websocket: WebSocket, sink: WebSocketSink) -> None:
    """Serve one WebSocket session until the client leaves."""
    manager: SessionManager = websocket.app.state.manager
    await websocket.accept()
    params = websocket.query_params
    token = params.get("resume")
    # The auth middleware names the caller (an API key or the peer's address).
    address = getattr(websocket.state, "client_address", client_address(websocket))
    client_id = getattr(websocket.state, "client_id", address)
    try:
        check_params(params.multi_items(), SESSION_PARAMS)
        # A resume, an empty token's too (it resumes nothing: invalid_token); a language
        # beside it is ignored, the session's own kept.
        if token is not None:
            runner = await manager.resume(token, sink, client_id=client_id, address=address)
        else:
            language = websocket.query_params.get("language", "python")
            limiter: RateLimiter | None = getattr(websocket.app.state, "limiter", None)
            admit = None
            if limiter is not None:
                limiter.check(client_id)  # opening a session takes a token, each cell one
                admit = functools.partial(limiter.check, client_id)
            runner = await manager.open(language, sink, client_id=client_id,
                                        admit_cell=admit, address=address)
    except SandboxError as exc:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(manager.settings.send_timeout):
                await sink.send_frames([fr.Error(code=exc.code, message=exc.message)])
        await sink.close(exc.close_code, exc.code)
        return
    deliberate = False
    pace = Pace(manager.settings.client_messages_per_second,
                f"session {runner.session_id} ({address})")
    try:
        while True:
            await pace.wait()
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                # 1000 is a deliberate goodbye: end now. Anything else may be a dropped
                # connection, so the session waits RESUME_GRACE for its client.
                deliberate = message.get("code") == 1000
                break
            text = message.get("text")
            data = text if text is not None else message.get("bytes") or b""
            await runner.feed(ClientMessage(data, sink, address))
    except WebSocketDisconnect as exc:
        deliberate = exc.code == 1000
    finally:
        if deliberate:
            runner.feed_nowait(CloseRequest("client_closed", "the client closed the session",
                                            sink))
        runner.feed_nowait(ClientGone(sink))
