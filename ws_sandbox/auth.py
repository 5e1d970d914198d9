"""API keys, admin key and WebSocket origins.

With ``API_KEYS`` set, every call but the public ones (health, the API description, the web
demo's static files) must carry a key: ``Authorization: Bearer <key>``, or for a WebSocket
from a browser (which cannot set headers) ``?api_key=<key>``. Admin endpoints need
``ADMIN_API_KEY``; with none set the admin API is off. Keys are compared in constant time.

A WebSocket upgrade whose ``Origin`` names another site is refused (cross-site WebSocket
hijacking): the service's own host is allowed, and so is every entry of ``ALLOWED_ORIGINS``.

Without ``API_KEYS`` anyone who reaches the service may use it, and so may a web page whose
own name an attacker points at the service's address (DNS rebinding): the browser then
treats the service as that page's own site, ``Origin`` and ``Host`` agree, and the page can
run code and read the history. So such a service answers only requests that name it as
``localhost`` (or a ``*.localhost`` name), by an IP address (a page cannot be served from an
address of ours by anyone else), or by a name in ``ALLOWED_HOSTS`` (:func:`check_host`).

:func:`check_request` and :func:`check_origin` are plain functions, so every adapter (the
REST routes, the session endpoint, the Jupyter endpoint) applies the same rules;
:class:`AuthMiddleware` applies them to this application's routes.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from ws_sandbox.exceptions import (
    CapacityError,
    Forbidden,
    SandboxError,
    Unauthorized,
    WrongCredential,
    quoted,
)
from ws_sandbox.ratelimit import GuessLimiter
from ws_sandbox.refusals import AUTH_REASONS
from ws_sandbox.settings import Settings

#: The ASGI extension that lets a WebSocket upgrade be refused with any HTTP response.
DENIAL_RESPONSE = "websocket.http.response"

#: Paths anyone may read: nothing secret, and monitors must reach health without a key.
PUBLIC_PATHS = frozenset({"/api/v1/health", "/api/v1/openapi.json", "/docs"})
ADMIN_PREFIX = "/api/v1/admin"
#: Paths whose adapter checks credentials itself: the Jupyter endpoint takes Jupyter's
#: token forms (``?token=``, ``Authorization: token``), its login cookie and API keys.
DELEGATED_PREFIXES = ("/api/kernels", "/api/kernelspecs")
#: The Jupyter endpoint's pages that need no credential (its version, its login form, its
#: logout): they follow its rules, not API_KEYS', for the host check too.
JUPYTER_OPEN_PATHS = frozenset({"/api", "/login", "/logout"})


def _matches(given: str, keys: tuple[str, ...]) -> bool:
    # compare_digest against every key, without an early exit, so timing says nothing.
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def key_identity(key: str) -> str:
    """A stable, non-secret name for an API key (for rate limits and the audit log)."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def is_key_identity(identity: str) -> bool:
    """Whether ``identity`` names an API key (rather than a peer's address)."""
    return identity.startswith("key:")


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header value."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def check_request(settings: Settings, *, authorization: str | None = None,
                  api_key: str | None = None, address: str = "unknown",
                  admin: bool = False) -> str:
    """Check a call's credentials; return the caller's identity.

    Args:
        settings: effective settings (``API_KEYS``, ``ADMIN_API_KEY``).
        authorization: the ``Authorization`` header, if any.
        api_key: the ``api_key`` query parameter, if any.
        address: the peer's address, the identity when no key is needed.
        admin: whether the call is to the admin API.

    Returns:
        ``key:<hash>`` for a keyed caller, otherwise ``address``.

    Raises:
        Unauthorized: a key is needed and none was given.
        Forbidden: the key given is not accepted (or the admin API is off).
    """
    given = bearer(authorization) or api_key or None
    if admin:
        if not settings.admin_api_key:
            raise Forbidden("the admin API is switched off; set ADMIN_API_KEY")
        if given is None:
            raise Unauthorized("the admin API needs ADMIN_API_KEY as a Bearer token")
        if not _matches(given, (settings.admin_api_key,)):
            raise WrongCredential("this key is not the admin key")
        return key_identity(given)
    keys = settings.api_key_list
    if not keys:
        return key_identity(given) if given and _matches(
            given, (settings.admin_api_key,)) else address
    if given is None:
        raise Unauthorized("an API key is required: send Authorization: Bearer <key>")
    accepted = keys + ((settings.admin_api_key,) if settings.admin_api_key else ())
    if not _matches(given, accepted):
        raise WrongCredential("the API key is not valid")
    return key_identity(given)


def is_operator_identity(settings: Settings, caller: str) -> bool:
    """Whether ``caller`` (an identity :func:`check_request` gave) is the service's operator:
    the admin key, or anyone where no key is needed (one tenant). A key of API_KEYS is a
    tenant."""
    if not is_key_identity(caller):
        return True
    return bool(settings.admin_api_key) and caller == key_identity(settings.admin_api_key)


def check_origin(settings: Settings, origin: str | None, host: str | None) -> None:
    """Refuse a browser WebSocket from another site.

    Raises:
        Forbidden: ``origin`` is neither this host nor in ``ALLOWED_ORIGINS``.
    """
    if origin is None:
        return  # not a browser: keys, not origins, protect against those
    allowed = settings.allowed_origin_list
    if "*" in allowed or origin.rstrip("/") in (o.rstrip("/") for o in allowed):
        return
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # "http://[", say: not a URL, so not this host either
        netloc = ""
    if host and netloc and netloc.lower() == host.lower():
        return
    raise Forbidden(f"origin {origin} is not allowed; add it to ALLOWED_ORIGINS")


def host_name(host: str) -> str:
    """The name in a ``Host`` header: without its port, brackets or trailing dot, lower-case."""
    name = host.strip()
    if name.startswith("["):  # [v6]:port
        return name[1:].partition("]")[0].lower()
    if name.count(":") == 1:
        name = name.partition(":")[0]
    return name.rstrip(".").lower()


def check_host(settings: Settings, host: str | None) -> None:
    """Refuse a request that names the service by a host it does not answer to; for a
    service that takes requests without credentials (DNS rebinding, above).

    Raises:
        Forbidden: ``host`` is a name other than ``localhost`` and those in ``ALLOWED_HOSTS``.
    """
    allowed = settings.allowed_host_list
    if host is None or "*" in allowed:
        return  # no Host: not a browser (every browser sends one)
    name = host_name(host)
    if name == "localhost" or name.endswith(".localhost") or name in allowed:
        return
    try:
        ipaddress.ip_address(name)
        return
    except ValueError:
        pass
    raise Forbidden(f"host {quoted(name)} is not allowed: a service without API keys answers only"
                    " to localhost, IP addresses and the names in ALLOWED_HOSTS (a page"
                    f" whose name points here could use it otherwise); add {name} to"
                    " ALLOWED_HOSTS, or set API_KEYS")


def _headers(scope: Scope) -> Mapping[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope.get("headers", [])}


class AuthMiddleware:
    """Applies :func:`check_request` (and for WebSockets :func:`check_origin`) to each call.

    The caller's identity is put in ``scope["state"]["client_id"]``, so routes read it as
    ``request.state.client_id``. Settings are read per call, so admin changes apply at once.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        manager = getattr(scope.get("app"), "state", None)
        settings: Settings | None = getattr(getattr(manager, "manager", None), "settings",
                                            None)
        client = scope.get("client")
        address = client[0] if client else "unknown"
        state = scope.setdefault("state", {})
        state["client_id"] = address
        state["client_address"] = address  # kept beside a key's identity, for the records
        headers = _headers(scope)
        # Only our own API: the Jupyter-compatible endpoint (/api/kernels...) speaks
        # Jupyter's credentials and checks them itself, with the same functions.
        jupyter = path.startswith(DELEGATED_PREFIXES) or path in JUPYTER_OPEN_PATHS
        if settings is not None and not settings.api_key_list and not jupyter:
            try:
                check_host(settings, headers.get("host"))
            except SandboxError as exc:
                await _refuse(scope, receive, send, exc)
                return
        protected = path.startswith("/api/v1/") or path == "/metrics"
        if settings is None and protected and path not in PUBLIC_PATHS:
            # No settings, no keys to check against (the service is not started): closed,
            # not open. Unreachable through uvicorn, which serves after the start-up.
            await _refuse(scope, receive, send,
                          CapacityError("the service is not started", retry_after=5))
            return
        if settings is None or not protected or path in PUBLIC_PATHS or jupyter:
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        websocket = scope["type"] == "websocket"
        in_query = (query.get("api_key") or [None])[0]
        # ?api_key= only where no header can be sent: a browser's WebSocket. A URL ends up
        # in proxies' and browsers' logs.
        given = headers.get("authorization") or (in_query if websocket else None)
        guesses = guesses_of(scope.get("app")) if given else None
        try:
            if websocket:
                check_origin(settings, headers.get("origin"), headers.get("host"))
            if guesses is not None:
                guesses.check(address)
            try:
                state["client_id"] = check_request(
                    settings, authorization=headers.get("authorization"),
                    api_key=in_query if websocket else None, address=address,
                    admin=path.startswith(ADMIN_PREFIX))
            except WrongCredential:
                if guesses is not None:
                    guesses.failed(address)
                raise
            except Unauthorized:
                if in_query is None or websocket:
                    raise
                raise Unauthorized("an API key is required, and ?api_key= is taken on"
                                   " WebSocket upgrades only: send Authorization: Bearer"
                                   " <key>") from None
        except SandboxError as exc:
            await _refuse(scope, receive, send, exc)
            return
        await self.app(scope, receive, send)


def guesses_of(app: object) -> GuessLimiter | None:
    """The service's limiter of wrong credentials (none before it started)."""
    surface = getattr(getattr(app, "state", None), "surface", None)
    return surface.guesses if surface is not None else None


def note_refusal(app: object, exc: SandboxError, address: str) -> None:
    """Count a refusal for credentials, host or origin, for the log's summary and stats."""
    surface = getattr(getattr(app, "state", None), "surface", None)
    if surface is not None and exc.code in AUTH_REASONS:
        surface.refusals.refused(exc.code, address)


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: SandboxError) -> None:
    client = scope.get("client")
    note_refusal(scope.get("app"), exc, client[0] if client else "unknown")
    prefix = ""
    if scope["type"] == "websocket":
        if DENIAL_RESPONSE not in scope.get("extensions", {}):
            # Closing before accepting makes the server answer the upgrade with HTTP 403.
            await send({"type": "websocket.close", "code": exc.close_code, "reason": exc.code})
            return
        prefix = "websocket."  # the upgrade is answered as any call is: status and body
    body = json.dumps({"error": {"code": exc.code, "message": exc.message}}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if exc.retry_after_header is not None:
        headers.append((b"retry-after", exc.retry_after_header.encode()))
    if exc.http_status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="ws-sandbox"'))
    await send({"type": f"{prefix}http.response.start", "status": exc.http_status,
                "headers": headers})
    await send({"type": f"{prefix}http.response.body", "body": body})
