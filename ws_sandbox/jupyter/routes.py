"""Starlette routes of the Jupyter Server kernel API.

``GET /api``, ``GET /api/status``, ``GET /api/kernelspecs[/{name}]``,
``GET|POST /api/kernels``,
``GET|DELETE /api/kernels/{id}``, ``POST /api/kernels/{id}/interrupt|restart``, the
WebSocket ``/api/kernels/{id}/channels`` and the login form ``GET|POST /login``. Errors are
JSON bodies ``{"message", "reason"}`` as Jupyter Server sends them.
"""

from __future__ import annotations

import asyncio
import functools
import html
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from ws_sandbox import __version__
from ws_sandbox.auth import DENIAL_RESPONSE, guesses_of, note_refusal
from ws_sandbox.exceptions import (
    BadRequest,
    CapacityError,
    Forbidden,
    SandboxError,
    WrongCredential,
)
from ws_sandbox.jupyter import auth
from ws_sandbox.jupyter import messages as jm
from ws_sandbox.jupyter.kernels import KernelRegistry
from ws_sandbox.jupyter.specs import find_spec, kernelspecs_model
from ws_sandbox.manager import SessionManager
from ws_sandbox.ratelimit import Pace, RateLimiter
from ws_sandbox.rest import client_disconnected, read_body
from ws_sandbox.web import PAGE_HEADERS
from ws_sandbox.websocket import close_quietly

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 65536
MAX_CONNECTIONS = 8
"""WebSockets one kernel takes at once (Open WebUI opens one per run). Every output message
goes to each of them: the bound keeps a kernel's broadcast, and its memory, small."""

Handler = Callable[[Request], Awaitable[Response]]


def registry(app: Starlette) -> KernelRegistry:
    """The app's kernel registry, made on first use for the app's session manager."""
    manager: SessionManager = app.state.manager
    current: KernelRegistry | None = getattr(app.state, "jupyter_kernels", None)
    if current is None or current.manager is not manager:
        current = KernelRegistry(manager)
        app.state.jupyter_kernels = current
    return current


def error_response(exc: SandboxError) -> JSONResponse:
    """A Jupyter Server style error body."""
    retry = exc.retry_after_header
    headers = {"Retry-After": retry} if retry is not None else None
    return JSONResponse({"message": exc.message, "reason": exc.code},
                        status_code=exc.http_status, headers=headers)


def _address(conn: HTTPConnection) -> str:
    """The caller's peer address (the identity may name a token or a login instead)."""
    return conn.client.host if conn.client else "unknown"


def _authenticate(conn: HTTPConnection, *, method: str, websocket: bool) -> str:
    settings = conn.app.state.manager.settings
    creds = auth.Credentials.from_parts(conn.query_params, conn.headers, conn.cookies)
    address = _address(conn)
    guesses = guesses_of(conn.app) if creds.token is not None else None
    if guesses is not None:
        guesses.check(address)
    try:
        return auth.authenticate(settings, creds, method=method, websocket=websocket,
                                 address=address)
    except WrongCredential:
        if guesses is not None:
            guesses.failed(address)
        raise


def guarded(handler: Handler) -> Handler:
    """Authenticate the request, then run ``handler``; errors become Jupyter bodies."""
    async def endpoint(request: Request) -> Response:
        try:
            request.state.jupyter_identity = _authenticate(
                request, method=request.method, websocket=False)
            return await handler(request)
        except SandboxError as exc:
            note_refusal(request.app, exc, _address(request))
            return error_response(exc)
    endpoint.__doc__ = handler.__doc__
    endpoint.__name__ = handler.__name__
    return endpoint


def _kernel_id(request: Request) -> str:
    return str(request.path_params["kernel_id"])


def _identity(request: Request) -> str:
    """Who called (set by :func:`guarded`)."""
    return str(request.state.jupyter_identity)


async def _json_body(request: Request) -> dict[str, Any]:
    body = await read_body(request, MAX_BODY_BYTES)
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise BadRequest("request body is not JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


# --- REST ----------------------------------------------------------------------------------


async def api_version(request: Request) -> Response:
    """``GET /api``: the version, which Jupyter clients probe; needs no credentials."""
    return JSONResponse({"version": __version__})


async def kernelspecs(request: Request) -> Response:
    """``GET /api/kernelspecs``: one kernelspec per enabled language."""
    manager: SessionManager = request.app.state.manager
    return JSONResponse(kernelspecs_model(manager.settings.enabled_languages))


async def kernelspec(request: Request) -> Response:
    """``GET /api/kernelspecs/{name}``: one kernelspec (404 when it is not enabled)."""
    manager: SessionManager = request.app.state.manager
    name = str(request.path_params["name"])
    spec = find_spec(name, manager.settings.enabled_languages, aliases=False)
    return JSONResponse(spec.model())


async def status(request: Request) -> Response:
    """``GET /api/status``: when the service started, its last activity, and the kernels
    and channels the caller can see, as Jupyter Server reports them."""
    started = jm.iso(request.app.state.started_at)
    visible = registry(request.app).list(_identity(request))
    return JSONResponse({
        "started": started,
        "last_activity": max((k.last_activity for k in visible), default=started),
        "kernels": len(visible), "connections": sum(k.connections for k in visible)})


async def list_kernels(request: Request) -> Response:
    """``GET /api/kernels``."""
    return JSONResponse([k.model() for k in registry(request.app).list(_identity(request))])


async def start_kernel(request: Request) -> Response:
    """``POST /api/kernels`` with an empty body or ``{"name": ...}``: 201 and the model."""
    body = await _json_body(request)
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise BadRequest("name must be a string")
    identity = _identity(request)
    limiter: RateLimiter = request.app.state.limiter
    limiter.check(identity)  # a kernel takes a token and each cell one, as a session does
    kernels = registry(request.app)
    gone = asyncio.ensure_future(client_disconnected(request.receive))
    try:
        kernel = await kernels.start(
            name, client_id=identity, admit_cell=functools.partial(limiter.check, identity),
            address=_address(request))
        hung_up = gone.done() and not gone.cancelled() and gone.exception() is None
    finally:
        gone.cancel()
    if hung_up:
        # Its client gave up waiting (under load, when slots are dear): nobody will learn
        # its id, and it would hold a slot until its idle timeout.
        log.info("kernel %s: its creator disconnected before the answer; deleting it",
                 kernel.id)
        await kernels.delete(kernel.id, identity)
    return JSONResponse(kernel.model(), status_code=201,
                        headers={"Location": f"/api/kernels/{kernel.id}"})


async def get_kernel(request: Request) -> Response:
    """``GET /api/kernels/{id}``."""
    return JSONResponse(registry(request.app).get(_kernel_id(request), _identity(request)).model())


async def delete_kernel(request: Request) -> Response:
    """``DELETE /api/kernels/{id}``: 204 once the kernel has ended (its container goes next)."""
    await registry(request.app).delete(_kernel_id(request), _identity(request))
    return Response(status_code=204)


async def interrupt_kernel(request: Request) -> Response:
    """``POST /api/kernels/{id}/interrupt``: 204."""
    registry(request.app).get(_kernel_id(request), _identity(request)).interrupt()
    return Response(status_code=204)


async def restart_kernel(request: Request) -> Response:
    """``POST /api/kernels/{id}/restart``: 200 and the model once the interpreter is fresh."""
    kernel = registry(request.app).get(_kernel_id(request), _identity(request))
    await kernel.restart()  # a restart that starts one takes a token, as a cell does
    return JSONResponse(kernel.model())


async def kernel_item(request: Request) -> Response:
    """``GET`` or ``DELETE /api/kernels/{id}``."""
    if request.method == "DELETE":
        return await delete_kernel(request)
    return await get_kernel(request)


async def kernels(request: Request) -> Response:
    """``GET`` or ``POST /api/kernels``."""
    if request.method == "POST":
        return await start_kernel(request)
    return await list_kernels(request)


# --- login ---------------------------------------------------------------------------------

_LOGIN_PAGE = """<!doctype html><title>ws_sandbox login</title>
<form method="post" action="/login"><input type="hidden" name="_xsrf" value="{xsrf}">
<input type="password" name="password" autofocus><button>Log in</button></form>"""


_LOGIN_HEADERS = {
    **PAGE_HEADERS,
    # No script, style or resource of any kind: the form posts to this service alone.
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; base-uri 'none';"
                               " frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


async def login(request: Request) -> Response:
    """``GET /login`` sets ``_xsrf``; ``POST /login`` checks the password, 302 with a cookie."""
    settings = request.app.state.manager.settings
    try:
        auth.check_open_host(settings, request.headers.get("host"))
    except SandboxError as exc:
        note_refusal(request.app, exc, _address(request))
        return error_response(exc)
    xsrf = request.cookies.get(auth.XSRF_COOKIE)
    if request.method != "POST":
        # Only a value of ours is kept: a cookie is the client's to set (another site of
        # the domain can set one), and this one is written into the page (a review found
        # '"><script>' there, run as the service's origin).
        if not (xsrf and auth.is_xsrf(xsrf)):
            xsrf = auth.new_xsrf()
        page = _LOGIN_PAGE.format(xsrf=html.escape(xsrf, quote=True))
        response: Response = HTMLResponse(page, headers=_LOGIN_HEADERS)
        response.set_cookie(auth.XSRF_COOKIE, xsrf, path="/", samesite="strict",
                            secure=settings.secure_cookies)
        return response
    try:
        body = await read_body(request, MAX_BODY_BYTES)
        form = parse_qs(body.decode("utf-8", "replace"))
        given_xsrf = (form.get("_xsrf") or [""])[0] or request.headers.get(auth.XSRF_HEADER)
        if not (xsrf and given_xsrf and given_xsrf == xsrf):
            raise Forbidden("'_xsrf' argument missing or not matching the _xsrf cookie")
        guesses = guesses_of(request.app)
        if guesses is not None:
            guesses.check(_address(request))
        identity = auth.check_password(settings, (form.get("password") or [""])[0])
        if identity is None:
            if guesses is not None:
                guesses.failed(_address(request))
            raise WrongCredential("invalid password")
    except SandboxError as exc:
        # Counted and summed up with the other refusals: the form takes the token and any
        # API key as a password, so failures here are guesses at keys too.
        note_refusal(request.app, exc, _address(request))
        return error_response(exc)
    target = request.query_params.get("next", "/api")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = "/api"
    response = RedirectResponse(target, status_code=302)
    response.set_cookie(auth.LOGIN_COOKIE, auth.LoginSigner(settings).sign(identity), path="/",
                        max_age=auth.LOGIN_MAX_AGE, httponly=True, samesite="lax",
                        secure=settings.secure_cookies)
    return response


async def logout(request: Request) -> Response:
    """``GET`` or ``POST /logout``: the login cookie is deleted, and the browser sent to the
    login form (Jupyter Server's ``/logout`` ends a login too; there was none, and a login
    lasted its 12 hours)."""
    response = RedirectResponse("/login", status_code=302)
    response.delete_cookie(auth.LOGIN_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=request.app.state.manager.settings.secure_cookies)
    return response


# --- WebSocket -----------------------------------------------------------------------------


class WebSocketConnection:
    """A kernel's view of one WebSocket."""

    def __init__(self, websocket: WebSocket, *, close_timeout: float | None) -> None:
        self._ws = websocket
        self._close_timeout = close_timeout
        self.address = _address(websocket)

    async def send_text(self, text: str) -> None:
        """Send one JSON message."""
        await self._ws.send_text(text)

    async def close(self, code: int, reason: str, *, at_once: bool = False) -> None:
        """Close once, within ``close_timeout`` (``SEND_TIMEOUT``), or at once."""
        await close_quietly(self._ws, code, reason, 0 if at_once else self._close_timeout)


async def channels(websocket: WebSocket) -> None:
    """``/api/kernels/{id}/channels``: Jupyter messages as JSON text, in both directions.

    No subprotocol is accepted: we speak Jupyter Server's default JSON protocol, which
    clients that offered ``v1.kernel.websocket.jupyter.org`` fall back to.
    """
    try:
        identity = _authenticate(websocket, method="GET", websocket=True)
        kernel = registry(websocket.app).get(str(websocket.path_params["kernel_id"]), identity)
        if kernel.connections >= MAX_CONNECTIONS:
            raise CapacityError(f"kernel {kernel.id} has {kernel.connections} connections,"
                                f" the most it takes", retry_after=5)
    except SandboxError as exc:
        note_refusal(websocket.app, exc, _address(websocket))
        if DENIAL_RESPONSE in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(error_response(exc))  # 401, 403, 404
        else:  # closing before accepting makes the server refuse the upgrade (HTTP 403)
            await websocket.close(exc.close_code, exc.code)
        return
    await websocket.accept()
    conn = WebSocketConnection(
        websocket, close_timeout=websocket.app.state.manager.settings.send_timeout)
    await kernel.connect(conn)
    pace = Pace(websocket.app.state.manager.settings.client_messages_per_second,
                f"kernel {kernel.id}'s channel ({_address(websocket)})")
    try:
        while True:
            await pace.wait()
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text, data = message.get("text"), message.get("bytes")
            try:
                msg = jm.decode(text) if text is not None else jm.decode_binary(data or b"")
            except SandboxError as exc:
                # No reply can name a message we cannot read: the client learns why from
                # the close, as Jupyter Server's clients learn it from a dropped connection.
                # The kernel goes on; the client may connect again.
                log.info("kernel %s: closing a channel: %s", kernel.id, exc.message)
                await conn.close(exc.close_code, exc.message)
                break
            if not kernel.connected(conn):  # dropped as too slow: it speaks for no one
                break
            try:
                await kernel.handle(msg, conn)
            except SandboxError as exc:  # a failed restart, say: the channel goes on
                log.info("kernel %s: %s failed: %s", kernel.id, msg.msg_type, exc.message)
    finally:
        kernel.disconnect(conn)


def routes() -> list[BaseRoute]:
    """Every route of the Jupyter endpoint, to add to the application."""
    return [
        Route("/api", api_version, methods=["GET"]),
        Route("/api/status", guarded(status), methods=["GET"]),
        Route("/api/kernelspecs", guarded(kernelspecs), methods=["GET"]),
        Route("/api/kernelspecs/{name}", guarded(kernelspec), methods=["GET"]),
        Route("/api/kernels", guarded(kernels), methods=["GET", "POST"]),
        Route("/api/kernels/{kernel_id}", guarded(kernel_item), methods=["GET", "DELETE"]),
        Route("/api/kernels/{kernel_id}/interrupt", guarded(interrupt_kernel),
              methods=["POST"]),
        Route("/api/kernels/{kernel_id}/restart", guarded(restart_kernel), methods=["POST"]),
        WebSocketRoute("/api/kernels/{kernel_id}/channels", channels),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["GET", "POST"]),
    ]
