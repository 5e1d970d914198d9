"""Read-only service routes: stats, metrics, execution history; JSON error handlers."""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Mount

from ws_sandbox import frames as fr
from ws_sandbox import metrics
from ws_sandbox.auth import is_operator_identity
from ws_sandbox.connections import ConnectionGate
from ws_sandbox.exceptions import BadRequest, NotFound, SandboxError, UpgradeRequired, quoted
from ws_sandbox.manager import SessionManager
from ws_sandbox.query import check_params, whole_number
from ws_sandbox.refusals import AUTH_REASONS
from ws_sandbox.rest import ErrorBody, ErrorDetail, JSONBody, error_response
from ws_sandbox.settings import LANGUAGES, language_named
from ws_sandbox.surface import Surface

log = logging.getLogger(__name__)

MAX_PAGE = 500


def _queued(manager: SessionManager) -> int:
    return sum(info.queued for info in manager.list())


def pool_view(pool: dict[str, dict[str, int | str | None]], *, operator: bool
              ) -> dict[str, dict[str, int | str | None]]:
    """The warm pool's state as a caller sees it: a start's error (``last_error``) names
    the engine's and the host's things (images, paths), so it is the operator's, as
    health's details are; a tenant sees ``None`` (a review)."""
    if operator:
        return pool
    return {language: {**state, "last_error": None} for language, state in pool.items()}


async def stats(request: Request) -> Response:
    """``GET /api/v1/stats``: totals, active sessions, queue depth, latency, uptime."""
    manager: SessionManager = request.app.state.manager
    surface: Surface = request.app.state.surface
    body = surface.stats.snapshot()
    body["active_sessions"] = manager.active
    body["queued_cells"] = _queued(manager)
    body["pool"] = pool_view(manager.pool.state(), operator=is_operator(request))
    body["rate_limited"] = surface.limiter.refused
    body["sessions_refused"] = {r: manager.refused[r] for r in metrics.REFUSAL_REASONS}
    body["auth_refused"] = {r: surface.refusals.auth[r] for r in AUTH_REASONS}
    gate: ConnectionGate = request.app.state.gate
    body["connections"] = {"open": gate.open, "refused": gate.refused}
    return JSONBody(body)


async def prometheus(request: Request) -> Response:
    """``GET /metrics``: Prometheus text format."""
    manager: SessionManager = request.app.state.manager
    surface: Surface = request.app.state.surface
    gate: ConnectionGate = request.app.state.gate
    text = metrics.render(surface.stats, sessions=manager.active,
                          queued_cells=_queued(manager), pool=manager.pool.state(),
                          rate_limited=surface.limiter.refused, stores=surface.stores(),
                          refused=manager.refused, auth_refused=surface.refusals.auth,
                          connections=(gate.open, gate.refused))
    return PlainTextResponse(text, media_type=metrics.CONTENT_TYPE)


def _history(request: Request) -> Surface:
    surface: Surface = request.app.state.surface
    if surface.history is None:
        raise NotFound("execution history is switched off (ENABLE_HISTORY=false)")
    return surface


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = whole_number(name, raw)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


def _choice(request: Request, name: str, allowed: tuple[str, ...],
            named: Callable[[str], str] = str) -> str | None:
    """A filter's value (as ``named`` reads it: a language's alias names its language), or
    ``None`` when absent; one that can match nothing is refused."""
    raw = request.query_params.get(name) or None
    if raw is None:
        return None
    if (value := named(raw)) not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}, not {quoted(raw)}")
    return value


def is_operator(request: Request) -> bool:
    """Whether the caller is the service's operator: the admin key, or anyone where no key
    is needed (one tenant). A key of API_KEYS is a tenant."""
    return _own_only(request) is None


def _own_only(request: Request) -> str | None:
    """The identity whose executions alone the caller may read: an API key's own; None (all)
    for the admin key, and where no key is needed (one tenant)."""
    caller = str(getattr(request.state, "client_id", ""))
    settings = request.app.state.manager.settings
    return None if is_operator_identity(settings, caller) else caller


async def executions(request: Request) -> Response:
    """``GET /api/v1/executions?status=&language=&limit=&offset=``: newest first."""
    check_params(request.query_params.multi_items(), ("status", "language", "limit", "offset"))
    history = _history(request).history
    assert history is not None
    page = await history.list(
        status=_choice(request, "status", typing.get_args(fr.Status)),
        language=_choice(request, "language", LANGUAGES, named=language_named),
        client=_own_only(request),
        limit=_int(request, "limit", 50, 1, MAX_PAGE),
        offset=_int(request, "offset", 0, 0, 2**31))
    return JSONBody(page)


async def execution(request: Request) -> Response:
    """``GET /api/v1/executions/{id}``: one execution with its (cut) outputs."""
    history = _history(request).history
    assert history is not None
    execution_id = request.path_params["execution_id"]
    item = await history.get(execution_id, client=_own_only(request))
    if item is None:
        raise NotFound(f"no execution {quoted(execution_id)} in the history")
    return JSONBody(item)


async def websocket_only(request: Request) -> Response:
    """A plain HTTP request to the session endpoint (a browser's address bar, a REST client):
    426 saying what the endpoint is, where a bare 404 said it did not exist."""
    raise UpgradeRequired(
        f"{request.url.path} is a WebSocket endpoint: open it with a WebSocket client"
        " (protocol/spec.md), or use POST /api/v1/execute for one result")


# --- error handlers ------------------------------------------------------------------------


async def on_sandbox_error(request: Request, exc: Exception) -> Response:
    """Every deliberate error becomes ``{"error": {"code", "message"}}`` with its status."""
    assert isinstance(exc, SandboxError)
    return error_response(exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (404, 405) in the same JSON shape, saying what was wrong."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = str(exc.detail)
    path = request.url.path
    if exc.status_code == 404:
        message = f"no endpoint at {quoted(path)}"
        if (other := _other_slash(request)) is not None:
            message += f"; did you mean {quoted(other)}? (paths are exact)"
        elif _jupyter_path(path):
            message += ("; the Jupyter endpoint serves /api, /api/status, /api/kernelspecs and"
                        " /api/kernels")
        elif path.startswith("/api/"):
            message += "; the API's paths are listed at /api/v1/openapi.json"
    elif exc.status_code == 405 and (allow := {k.lower(): v for k, v in (
            exc.headers or {}).items()}.get("allow")):
        message = f"{request.method} is not allowed on {quoted(path)}; it takes {allow}"
    if _jupyter_path(path):  # Jupyter Server's shape, which Jupyter clients read
        return JSONResponse({"message": message, "reason": code},
                            status_code=exc.status_code, headers=exc.headers)
    return JSONBody(ErrorBody(error=ErrorDetail(code=code, message=message)),
                    status_code=exc.status_code, headers=exc.headers)


def _jupyter_path(path: str) -> bool:
    """Whether ``path`` is under the Jupyter endpoint's ``/api`` (not ours, ``/api/v1``)."""
    return (path == "/api" or path.startswith("/api/")) and not (
        path == "/api/v1" or path.startswith("/api/v1/"))


def _other_slash(request: Request) -> str | None:
    """The request's path with its trailing slash taken off, or one added, if that is an
    endpoint of the service (never a redirect: see ``app.py``)."""
    path = request.url.path
    other = path.rstrip("/") if path.endswith("/") else path + "/"
    if not other or other == path:
        return None
    scope = {**request.scope, "path": other, "type": "http"}
    for route in request.app.router.routes:
        if isinstance(route, BaseRoute) and not isinstance(route, Mount):
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return other
    return None


async def on_bug(request: Request, exc: Exception) -> Response:
    """A true bug: log it, answer a JSON 500 without details."""
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONBody(ErrorBody(error=ErrorDetail(
        code="internal_error", message="internal error; it has been logged")),
        status_code=500)
