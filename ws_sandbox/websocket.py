"""The WebSocket session endpoint, ``/api/v1/sessions/ws?language=python``.

A thin adapter: it accepts the connection, opens or resumes a session through the
:class:`~ws_sandbox.manager.SessionManager`, and feeds every message it receives into the
session's runner. The runner sends frames back through :class:`WebSocketSink`.
"""

from __future__ import annotations

import contextlib
import functools
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ws_sandbox import frames as fr
from ws_sandbox.driver import ClientGone, ClientMessage, CloseRequest
from ws_sandbox.exceptions import SandboxError
from ws_sandbox.manager import SessionManager
from ws_sandbox.ratelimit import RateLimiter

log = logging.getLogger(__name__)


async def close_quietly(websocket: WebSocket, code: int, reason: str) -> None:
    """Close a WebSocket unless it is closed already; a peer that is gone is no error.

    Starlette marks the socket disconnected before it awaits the close, so a second call,
    even a concurrent one, does nothing.
    """
    if websocket.application_state is WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code, reason[:120])  # a close reason fits in 123 bytes


class WebSocketSink:
    """Delivers frames to one Starlette WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket

    async def send_frame(self, frame: fr.ServerFrame) -> None:
        """Send one frame as a JSON text message."""
        await self._ws.send_text(fr.encode(frame).decode())

    async def close(self, code: int, reason: str) -> None:
        """Close the connection once."""
        await close_quietly(self._ws, code, reason)


def client_address(websocket: WebSocket) -> str:
    """The peer's address, as used for rate limits and audit."""
    return websocket.client.host if websocket.client else "unknown"


async def session_endpoint(websocket: WebSocket) -> None:
    """Serve one WebSocket session until the client leaves."""
    manager: SessionManager = websocket.app.state.manager
    await websocket.accept()
    sink = WebSocketSink(websocket)
    token = websocket.query_params.get("resume")
    try:
        if token:
            runner = await manager.resume(token, sink)
        else:
            language = websocket.query_params.get("language", "python")
            # The auth middleware names the caller (an API key or the peer's address).
            client_id = getattr(websocket.state, "client_id", client_address(websocket))
            limiter: RateLimiter | None = getattr(websocket.app.state, "limiter", None)
            admit = None
            if limiter is not None:
                limiter.check(client_id)  # opening a session takes a token, each cell one
                admit = functools.partial(limiter.check, client_id)
            runner = await manager.open(language, sink, client_id=client_id,
                                        admit_cell=admit)
    except SandboxError as exc:
        with contextlib.suppress(Exception):
            await sink.send_frame(fr.Error(code=exc.code, message=exc.message))
        await sink.close(exc.close_code, exc.code)
        return
    deliberate = False
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                # 1000 is a deliberate goodbye: end now. Anything else may be a dropped
                # connection, so the session waits RESUME_GRACE for its client.
                deliberate = message.get("code") == 1000
                break
            text = message.get("text")
            data = text if text is not None else message.get("bytes") or b""
            await runner.feed(ClientMessage(data))
    except WebSocketDisconnect as exc:
        deliberate = exc.code == 1000
    finally:
        if deliberate:
            runner.feed_nowait(CloseRequest("client_closed", "the client closed the session"))
        runner.feed_nowait(ClientGone(sink))
