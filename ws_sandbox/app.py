"""The Starlette application: routes and the lifespan that owns engine, pool and sessions."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from ws_sandbox import __version__, web
from ws_sandbox import frames as fr
from ws_sandbox.api import is_operator
from ws_sandbox.auth import (
    AuthMiddleware,
    check_request,
    guesses_of,
    is_operator_identity,
)
from ws_sandbox.backend import DockerBackend
from ws_sandbox.connections import ConnectionGate
from ws_sandbox.exceptions import ConfigError, EngineUnavailable, SandboxError, WrongCredential
from ws_sandbox.jupyter.routes import routes as jupyter_routes
from ws_sandbox.manager import SessionManager
from ws_sandbox.pool import WarmPool
from ws_sandbox.rest import BodyBudget
from ws_sandbox.routes import exception_handlers, service_routes
from ws_sandbox.settings import Settings
from ws_sandbox.surface import Surface
from ws_sandbox.websocket import session_endpoint

log = logging.getLogger(__name__)


async def health(request: Request) -> JSONResponse:
    """Engine reachable, image present, pool state, runtime in use; 503 when it cannot serve.

    Public, for monitors; but on a service with API keys only the operator's key gets more
    than the status: the engine's version, the runtimes, the problems that leave sandboxes
    weaker and the pool's errors describe the host (:func:`is_health_operator`).
    """
    manager: SessionManager = request.app.state.manager
    settings = manager.settings
    info = await manager.backend.info()
    pool = manager.pool.state()
    runtime = info.runtime_in_use(settings.container_runtime)
    surface: Surface = request.app.state.surface
    problems = info.problems(settings.container_runtime) + surface.problems()
    ok = info.reachable and info.image_present and not problems and (
        not settings.container_runtime or settings.container_runtime in info.runtimes)
    body = {
        "status": "ok" if ok else "unavailable",
        "version": __version__,
        "engine": {"reachable": info.reachable, "version": info.version,
                   "runtimes": list(info.runtimes), "error": info.error},
        "image": {"name": settings.container_image, "present": info.image_present},
        "runtime": runtime,
        "problems": problems,
        "pool": pool,
        "sessions": manager.active,
        "uptime_s": round(time.monotonic() - request.app.state.started, 3),
    }
    if not is_health_operator(request, settings):
        body = {"status": body["status"]}
    return JSONResponse(body, status_code=200 if ok else 503)


def is_health_operator(request: Request, settings: Settings) -> bool:
    """Whether health's caller gets its details: the operator (the admin key, or anyone
    where no key is needed), not a tenant's key, as a tenant's config leaves out what
    describes the host. Health is public, so the auth middleware checks no key here: a key
    it is given is checked as the middleware would, wrong ones counted against the address
    (``AUTH_FAILURES_PER_MINUTE``), and one from an address past that limit is not checked
    at all. Otherwise health answered every guess of the admin key, without limit (a
    review)."""
    authorization = request.headers.get("authorization")
    if not authorization:
        return not settings.api_key_list
    address = str(getattr(request.state, "client_address", "unknown"))
    guesses = guesses_of(request.app)
    try:
        if guesses is not None:
            guesses.check(address)
        caller = check_request(settings, authorization=authorization, address=address)
    except WrongCredential:
        if guesses is not None:
            guesses.failed(address)
        return False
    except SandboxError:
        return False
    return is_operator_identity(settings, caller)


async def config(request: Request) -> JSONResponse:
    """Effective limits and enabled languages; never a secret, and for a tenant's key
    nothing that describes the host (see ``Settings.public``)."""
    manager: SessionManager = request.app.state.manager
    body = manager.settings.public(operator=is_operator(request))
    body["enabled_languages"] = list(manager.settings.enabled_languages)
    return JSONResponse(body)


def create_app(settings: Settings) -> Starlette:
    """Build the application for ``settings``."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with _serving(app):
                yield
        except ConfigError as exc:  # said in one line by the server (server._StartupErrors)
            app.state.startup_error = exc
            raise

    @asynccontextmanager
    async def _serving(app: Starlette) -> AsyncIterator[None]:
        app.state.started = time.monotonic()
        app.state.started_at = time.time()  # wall clock, for Jupyter's /api/status
        async with DockerBackend(settings) as backend:
            try:
                try:
                    removed = await backend.remove_orphans()
                    if removed:
                        log.info("removed %d containers left by an earlier run", removed)
                except EngineUnavailable as exc:
                    log.error("Docker engine unavailable at start-up: %s", exc.message)
                problems = (await backend.info()).problems(settings.container_runtime)
                if problems:
                    raise ConfigError("refusing to start: " + "; ".join(problems))
                # The surface first: a bad AUDIT_LOG_PATH or HISTORY_DB_PATH stops the start
                # before a sandbox is made. It outlives the sessions: cells ending at
                # shutdown are recorded.
                async with Surface(settings) as surface:
                    app.state.surface = surface
                    app.state.limiter = surface.limiter
                    app.state.gate.on_refused = surface.refusals.refused
                    async with WarmPool(backend, settings.enabled_languages,
                                        settings.pool_size) as pool:
                        manager = SessionManager(settings, backend, pool)
                        app.state.manager = manager
                        manager.add_cell_observer(surface.observe)
                        manager.on_refused = surface.refusals.refused
                        try:
                            yield
                        finally:
                            await manager.shutdown(settings.shutdown_timeout)
            finally:
                # Whatever this process still owns goes now, at a failed start too (a
                # sandbox mid-replacement, one whose creation was cancelled).
                try:
                    for cid in await backend.list_ours(all_processes=False):
                        await backend.remove(cid)
                except EngineUnavailable as exc:
                    log.error("cannot sweep containers at shutdown: %s", exc.message)

    routes = [
        WebSocketRoute("/api/v1/sessions/ws", session_endpoint),
        Route("/api/v1/health", health),
        Route("/api/v1/config", config),
        *service_routes(),
        *jupyter_routes(),
    ]
    # The demo's mount at / matches every path: it must come last.
    app = Starlette(routes=[*routes, *web.routes()], lifespan=lifespan,
                    middleware=[Middleware(web.NoSniff), Middleware(AuthMiddleware)],
                    exception_handlers=exception_handlers())
    # No redirect from a path with a slash added or taken off: Starlette's names the
    # request's Host, which a client chooses, as the place to go (a review: GET /api/ with
    # Host: evil.example answered 307 to http://evil.example/api, without a key). An API's
    # paths are exact; such a path gets a 404.
    app.router.redirect_slashes = False
    # Connections per address, and in all (its total is set by server.serve, which knows the
    # open files limit).
    app.state.gate = ConnectionGate(settings.max_connections_per_address)
    # The server's WebSocket message limit: set once, at start (server.serve).
    app.state.ws_max_size = fr.ws_message_limit(settings.max_code_bytes)
    # One-shot bodies held at once: two of the largest, or 64 MiB; by one caller, one of the
    # largest, or a quarter.
    largest = fr.message_limit(settings.max_code_bytes)
    limit = max(2 * largest, 64 << 20)
    app.state.bodies = BodyBudget(limit, share=max(largest, limit // 4))
    return app
