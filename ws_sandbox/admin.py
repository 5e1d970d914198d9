"""The admin API (``ADMIN_API_KEY``): limits at run time, live sessions, ending a session.

Changed limits are validated by :meth:`Settings.validate` exactly as at start-up, apply to
sessions opened afterwards (a session keeps the limits it was opened with), and are written
to the audit log. Container resources (memory, CPUs, pids) are fixed when a sandbox is
created, so they are not among the limits changed here: restart the service for those.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ws_sandbox import frames as fr
from ws_sandbox.exceptions import (
    DECODE_ERRORS,
    BadRequest,
    NotFound,
    decode_error_text,
    quoted,
)
from ws_sandbox.manager import SessionManager
from ws_sandbox.rest import JSONBody, check_json_media, read_body
from ws_sandbox.surface import Surface

UNSET: Any = msgspec.UNSET


class LimitsUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PATCH /api/v1/admin/limits``: the limits to change, by setting name."""

    max_execution_time: float | msgspec.UnsetType = UNSET
    default_execution_time: float | msgspec.UnsetType = UNSET
    max_concurrent_executions: int | msgspec.UnsetType = UNSET
    max_sessions_per_key: int | msgspec.UnsetType = UNSET
    max_output_bytes: int | msgspec.UnsetType = UNSET
    max_code_bytes: int | msgspec.UnsetType = UNSET
    max_queued_cells: int | msgspec.UnsetType = UNSET
    idle_timeout: float | msgspec.UnsetType | None = UNSET
    max_lifetime: float | msgspec.UnsetType | None = UNSET
    rate_limit_per_minute: int | msgspec.UnsetType = UNSET
    rate_limit_burst: int | msgspec.UnsetType = UNSET


MUTABLE = tuple(LimitsUpdate.__struct_fields__)
_decoder = msgspec.json.Decoder(LimitsUpdate)


def _limits(manager: SessionManager) -> dict[str, Any]:
    return {name: getattr(manager.settings, name) for name in MUTABLE}


async def limits(request: Request) -> Response:
    """``/api/v1/admin/limits``: one route for both methods, so that another method's 405
    lists them both in ``Allow`` (Starlette names only the first matching route's)."""
    if request.method == "PATCH":
        return await update_limits(request)
    return await get_limits(request)


async def get_limits(request: Request) -> Response:
    """``GET /api/v1/admin/limits``: the limits that can be changed, and their values."""
    return JSONBody(_limits(request.app.state.manager))


async def update_limits(request: Request) -> Response:
    """``PATCH /api/v1/admin/limits``: change some limits; all or none are applied."""
    manager: SessionManager = request.app.state.manager
    surface: Surface = request.app.state.surface
    check_json_media(request)
    body = await read_body(request, fr.message_limit(1024))
    try:
        update = _decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise BadRequest(f"invalid limits: {decode_error_text(exc, body)}") from None
    changes = {name: getattr(update, name) for name in MUTABLE
               if getattr(update, name) is not msgspec.UNSET}
    if not changes:
        raise BadRequest(f"name at least one limit to change: {', '.join(MUTABLE)}")
    before = _limits(manager)
    new = dataclasses.replace(manager.settings, **changes)
    new.validate()  # ConfigError (400) names every problem; nothing is applied
    frame_limit: int = request.app.state.ws_max_size
    if fr.ws_message_limit(new.max_code_bytes) > frame_limit:
        most = (frame_limit - fr.message_limit(0)) // fr.JSON_BYTES_PER_CODE_BYTE
        raise BadRequest(
            f"max_code_bytes can be raised at run time to at most {most}: WebSocket messages"
            f" were limited to {frame_limit} bytes when the service started; restart it"
            f" with MAX_CODE_BYTES={new.max_code_bytes} for more")
    manager.settings = new
    surface.limiter.configure(new.rate_limit_per_minute, new.rate_limit_burst)
    if surface.audit is not None:
        surface.audit.event("admin_limits_changed", client=request.state.client_id,
                            address=request.state.client_address,
                            changes=changes,
                            before={k: before[k] for k in changes})
    return JSONBody(_limits(manager))


async def list_sessions(request: Request) -> Response:
    """``GET /api/v1/admin/sessions``: every live session."""
    manager: SessionManager = request.app.state.manager
    return JSONBody({"sessions": [dataclasses.asdict(info) for info in manager.list()]})


async def end_session(request: Request) -> Response:
    """``DELETE /api/v1/admin/sessions/{session_id}``: close it with ``closed_by_admin``."""
    manager: SessionManager = request.app.state.manager
    surface: Surface = request.app.state.surface
    session_id = request.path_params["session_id"]
    if not await manager.end(session_id, "closed_by_admin", "closed by an administrator"):
        raise NotFound(f"no session {quoted(session_id)}")
    if surface.audit is not None:
        surface.audit.event("admin_session_ended", client=request.state.client_id,
                            address=request.state.client_address,
                            session_id=session_id)
    return JSONBody({"session_id": session_id, "ending": True})
