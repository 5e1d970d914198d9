"""``GET /api/v1/openapi.json`` and ``GET /docs``, generated from the msgspec structs.

The same structs that decode requests and encode responses produce the schemas, so the
document cannot drift from the code. The docs page is plain HTML rendered from that
document: no script, no CDN.
"""

from __future__ import annotations

import html
import typing
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from ws_sandbox import __version__
from ws_sandbox import frames as fr
from ws_sandbox.admin import LimitsUpdate
from ws_sandbox.api import MAX_PAGE
from ws_sandbox.auth import PUBLIC_PATHS
from ws_sandbox.history import ExecutionPage
from ws_sandbox.records import ExecutionRecord
from ws_sandbox.rest import ErrorBody, ExecuteRequest, ExecuteResponse
from ws_sandbox.settings import LANGUAGE_ALIASES, LANGUAGES
from ws_sandbox.web import PAGE_HEADERS

_REF = "#/components/schemas/{name}"
_ERRORS = {"400": "Bad request: invalid JSON, wrong types, unknown or disabled language,"
                  " empty code, bad timeout",
           "401": "API key missing", "403": "API key or origin refused",
           "404": "No such execution or session (history: also when it is off)",
           "413": "Code or body too large",
           "415": "Body is not application/json, or not UTF-8",
           "426": "A plain HTTP request to a WebSocket endpoint (Upgrade: websocket)",
           "429": "Rate limited, or the caller holds MAX_SESSIONS_PER_KEY sessions"
                  " (Retry-After)",
           "503": "At capacity or engine unavailable; history: its database does not"
                  " answer (store_unavailable); Retry-After when known"}
_OTHER_RESPONSES: dict[str, dict[str, Any]] = {
    "/api/v1/health": {"503": {"description": "Cannot serve: the same body, its problems"
                                              " listed"}}}
"""Responses whose body is not an ``ErrorBody``."""
_UPGRADES = {"/api/v1/sessions/ws"}
"""Paths whose success is an upgrade to a WebSocket (101), never a 200."""


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_LANGUAGE_NAMES = [*LANGUAGES, *LANGUAGE_ALIASES]
_ALIASES_NOTE = ("; or an alias of one, in any letter case: "
                 + ", ".join(f"{a} ({lang})" for a, lang in LANGUAGE_ALIASES.items()))

_QUERY: dict[str, list[dict[str, Any]]] = {
    "/api/v1/executions": [
        _query("status", {"type": "string", "enum": list(typing.get_args(fr.Status))},
               "only executions that ended so"),
        _query("language", {"type": "string", "enum": _LANGUAGE_NAMES},
               f"only executions in this language{_ALIASES_NOTE}"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                         "default": 50}, "executions per page"),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": 2**31, "default": 0},
               "executions to skip"),
    ],
    "/api/v1/sessions/ws": [
        _query("language", {"type": "string", "enum": _LANGUAGE_NAMES, "default": "python"},
               f"the session's language{_ALIASES_NOTE}"),
        _query("resume", {"type": "string"}, "a resume token (instead of language)"),
        _query("api_key", {"type": "string"},
               "the API key, for browsers (a WebSocket cannot send headers)"),
    ],
}
"""Query parameters, as the handlers read and check them."""

#: (method, path, summary, request struct, response struct, error statuses)
ENDPOINTS: list[tuple[str, str, str, str | None, str | None, tuple[str, ...]]] = [
    ("post", "/api/v1/execute", "Run one program in a fresh sandbox", "ExecuteRequest",
     "ExecuteResponse", ("400", "401", "403", "413", "415", "429", "503")),
    ("get", "/api/v1/health", "Engine, image, pool and runtime state (503 when it cannot"
     " serve)", None, None, ()),
    ("get", "/api/v1/config", "Effective limits and enabled languages", None, None,
     ("401", "403")),
    ("get", "/api/v1/stats", "Totals by status and language, sessions, queue, latency,"
     " uptime", None, None, ("401", "403")),
    ("get", "/metrics", "Prometheus text format", None, None, ("401", "403")),
    ("get", "/api/v1/executions", "Execution history, newest first; filters status,"
     " language; pages by limit and offset", None, "ExecutionPage",
     ("400", "401", "403", "404", "503")),
    ("get", "/api/v1/executions/{execution_id}", "One execution with its outputs", None,
     "ExecutionRecord", ("401", "403", "404", "503")),
    ("get", "/api/v1/sessions/ws", "WebSocket session (protocol v1; see"
     " protocol/schema.json): ?language=, ?resume=, ?api_key=", None, None,
     ("401", "403", "426")),
    ("get", "/api/v1/admin/limits", "Limits changeable at run time (admin key)", None, None,
     ("401", "403")),
    ("patch", "/api/v1/admin/limits", "Change limits (admin key; validated, audited)",
     "LimitsUpdate", None, ("400", "401", "403", "413", "415")),
    ("get", "/api/v1/admin/sessions", "Live sessions (admin key)", None, None,
     ("401", "403")),
    ("delete", "/api/v1/admin/sessions/{session_id}", "End a session (admin key)", None,
     None, ("401", "403", "404")),
]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API."""
    structs = [ExecuteRequest, ExecuteResponse, ErrorBody, ExecutionPage, ExecutionRecord,
               LimitsUpdate]
    _, components = msgspec.json.schema_components(structs, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, req, resp, errors in ENDPOINTS:
        op: dict[str, Any] = {"summary": summary, "responses": {}}
        if req is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": {"$ref": _REF.format(name=req)}}}}
        ok: dict[str, Any] = {"description": "OK"}
        if resp is not None:
            ok["content"] = {"application/json": {"schema": {"$ref": _REF.format(name=resp)}}}
        if path in _UPGRADES:
            op["responses"]["101"] = {"description": "Switching Protocols: the WebSocket"
                                                     " session begins"}
        else:
            op["responses"]["200"] = ok
        for status in errors:
            op["responses"][status] = {"description": _ERRORS[status], "content": {
                "application/json": {"schema": {"$ref": _REF.format(name="ErrorBody")}}}}
        op["responses"].update(_OTHER_RESPONSES.get(path, {}))
        if path in PUBLIC_PATHS:
            op["security"] = []  # no key needed, whatever API_KEYS holds
        for name in ("execution_id", "session_id"):
            if "{" + name + "}" in path:
                op["parameters"] = [{"name": name, "in": "path", "required": True,
                                     "schema": {"type": "string"}}]
        if path in _QUERY:
            op["parameters"] = _QUERY[path]
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "ws_sandbox", "version": __version__,
                 "description": "Secure code execution: WebSocket sessions and one-shot"
                                " REST over hardened Docker sandboxes."},
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }


def docs_page() -> str:
    """A human-readable page listing every endpoint and the request/response fields."""
    doc = openapi_document()
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>"
                        f"{html.escape(path)}</code></td><td>{html.escape(op['summary'])}"
                        f"</td></tr>")
    schemas = []
    for name, schema in doc["components"]["schemas"].items():
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        items = "".join(
            f"<li><code>{html.escape(p)}</code>{' (required)' if p in required else ''}"
            f"</li>" for p in props)
        schemas.append(f"<h3>{html.escape(name)}</h3><ul>{items}</ul>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>ws_sandbox API</title>"
            "<style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto}"
            "td{padding:.2rem .8rem;border-bottom:1px solid #ddd}</style></head><body>"
            f"<h1>ws_sandbox API {html.escape(doc['info']['version'])}</h1>"
            "<p>Machine-readable: <a href='/api/v1/openapi.json'>/api/v1/openapi.json</a>."
            " Send <code>Authorization: Bearer &lt;key&gt;</code> when API keys are set.</p>"
            f"<table>{''.join(rows)}</table><h2>Bodies</h2>{''.join(schemas)}"
            "</body></html>")


async def openapi_json(request: Request) -> Response:
    """``GET /api/v1/openapi.json``."""
    return JSONResponse(openapi_document())


async def docs(request: Request) -> Response:
    """``GET /docs``."""
    return HTMLResponse(docs_page(), headers=PAGE_HEADERS)
