"""The routes and error handlers of the service surface, in one list for ``app.py``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ws_sandbox import admin, api, openapi, rest
from ws_sandbox.exceptions import SandboxError

Handler = Callable[[Request, Exception], Awaitable[Response]]


def service_routes() -> list[BaseRoute]:
    """REST execute, stats, metrics, history, admin, OpenAPI and docs."""
    return [
        Route("/api/v1/execute", rest.execute, methods=["POST"]),
        Route("/api/v1/stats", api.stats),
        Route("/metrics", api.prometheus),
        Route("/api/v1/executions", api.executions),
        Route("/api/v1/executions/{execution_id}", api.execution),
        Route("/api/v1/admin/limits", admin.limits, methods=["GET", "PATCH"]),
        Route("/api/v1/admin/sessions", admin.list_sessions),
        Route("/api/v1/admin/sessions/{session_id}", admin.end_session,
              methods=["DELETE"]),
        Route("/api/v1/sessions/ws", api.websocket_only),  # the WebSocket route is app.py's
        Route("/api/v1/openapi.json", openapi.openapi_json),
        Route("/docs", openapi.docs),
    ]


def exception_handlers() -> dict[type[Exception] | int, Handler]:
    """JSON errors: deliberate ones with their status, bugs as a logged 500."""
    return {SandboxError: api.on_sandbox_error, HTTPException: api.on_http_error,
            Exception: api.on_bug}
