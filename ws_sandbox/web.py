"""The web demo: ``web-demo/`` served at ``/`` as static files with strict security headers.

The page is a plain client of the public protocol; the service only hands out its files. Put
:func:`routes` last in the route list: its mount at ``/`` matches every path, so anything
listed after it would be shadowed.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

log = logging.getLogger(__name__)

#: ``web-demo/`` at the repository root (the package is installed editable).
DEMO_DIR = Path(__file__).resolve().parent.parent / "web-demo"

#: The page runs only its own script and style, talks only to its own origin, shows images
#: from itself or ``data:`` URLs (plots), and may not be framed. ``{connect}`` is filled per
#: request by :func:`content_security_policy`.
_CSP_TEMPLATE = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src {connect}",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])

#: A ``Host`` header that can stand in a CSP host-source as it is: a DNS name or IPv4
#: address and an optional port (CSP has no syntax for an IPv6 literal).
_CSP_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9.])?(?::[0-9]{1,5})?")


def content_security_policy(host: str | None) -> str:
    """The demo page's policy for a request to ``host`` (its ``Host`` header).

    The page opens its WebSocket to its own host only. ``'self'`` covers ``ws:`` and
    ``wss:`` to the page's host in current browsers (CSP Level 3) but not in older ones, so
    the two are also named for the host the request was made to; a ``Host`` that is not a
    plain host and port (absent, an IPv6 literal, anything that could add to the policy)
    gets ``'self'`` alone. The WebSocket schemes are never allowed to every host: a script
    injected into the page could send a user's key and output anywhere.
    """
    connect = "'self'"
    if host is not None and _CSP_HOST.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    return _CSP_TEMPLATE.format(connect=connect)


#: The policy without a usable ``Host``.
CONTENT_SECURITY_POLICY = content_security_policy(None)

#: Every demo response's headers but the policy, which depends on the request's host.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    # Small files that change with the code, and a page that may have been asked for with
    # ?api_key=: never stored (no-cache kept it, key and all, in the browser's cache).
    (b"cache-control", b"no-store"),
)

#: For the pages the service renders itself (``/docs``, the Jupyter login form): they may not
#: be framed by another site (a login form in a frame is clickjacking), nor sniffed, nor leak
#: their URL to links.
PAGE_HEADERS: dict[str, str] = {
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SecureStatic:
    """ASGI wrapper: adds :data:`SECURITY_HEADERS` and the request's
    :func:`content_security_policy` to every HTTP response of ``app``.

    A WebSocket that reaches it asked for a path no route serves; it is closed, as Starlette's
    router does, instead of reaching :class:`StaticFiles` (which handles HTTP only).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await WebSocketClose()(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        host = next((value.decode("latin-1") for name, value in scope.get("headers", ())
                     if name == b"host"), None)
        policy = (b"content-security-policy", content_security_policy(host).encode())

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS} | {policy[0]}
                headers = [(k, v) for k, v in message.get("headers", []) if k not in names]
                message = {**message, "headers": [*headers, policy, *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


NOSNIFF = (b"x-content-type-options", b"nosniff")


class NoSniff:
    """ASGI middleware: every HTTP response of ``app`` says ``X-Content-Type-Options:
    nosniff``, so no browser reads an API's JSON (which may quote what a client sent) or an
    error as a page. The demo's own files have it from :class:`SecureStatic`; the API's
    answers, and the 404 of a path under ``/`` (answered outside the demo's wrapper), had it
    not (a review)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if all(name.lower() != NOSNIFF[0] for name, _ in headers):
                    message = {**message, "headers": [*headers, NOSNIFF]}
            await send(message)

        await self.app(scope, receive, send_nosniff)


def missing_demo(directory: Path) -> ASGIApp:
    """An app that explains, on every request, why there is no demo page."""
    text = (f"The web demo is not available: {directory} does not exist. It is served from"
            " the repository's web-demo/ directory; install ws_sandbox from a checkout"
            " (pip install -e .) to get it.\n")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse(text, status_code=404)(scope, receive, send)

    return app


def routes(directory: Path | None = None) -> list[BaseRoute]:
    """The route serving the demo at ``/``; add it after every other route.

    Args:
        directory: the demo's files; default :data:`DEMO_DIR`.
    """
    directory = DEMO_DIR if directory is None else directory
    if (directory / "index.html").is_file():
        app: ASGIApp = StaticFiles(directory=directory, html=True)
    else:
        log.error("web demo not served: %s has no index.html", directory)
        app = missing_demo(directory)
    return [DemoMount("/", app=SecureStatic(app), name="web-demo")]


API_PREFIXES = ("/api/",)
"""Paths the API owns (``/api/v1/...`` and Jupyter's ``/api/...``), never the demo's."""


class DemoMount(Mount):
    """The demo's mount at ``/``, which leaves the API's paths alone: a path there that no
    route serves fully gets the router's own answer, so a wrong method on an API route is a
    405 with ``Allow`` (not the demo's 404) and an unknown API path a 404."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path: str = scope.get("path", "")
        if path.startswith(API_PREFIXES) or path in ("/api", "/metrics"):
            return Match.NONE, {}
        return super().matches(scope)
