"""Run the service under uvicorn, with a graceful drain on SIGTERM and SIGINT.

On the first signal every session gets a ``closed`` frame with reason ``server_shutdown``
*before* uvicorn closes the connections; the lifespan then removes every container.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

from ws_sandbox import redact
from ws_sandbox.app import create_app
from ws_sandbox.connections import total_for
from ws_sandbox.exceptions import ConfigError
from ws_sandbox.http_protocol import with_timeouts
from ws_sandbox.manager import SessionManager
from ws_sandbox.settings import Settings
from ws_sandbox.ws_protocol import BatchingWebSocketProtocol

log = logging.getLogger(__name__)


MAX_OPEN_FILES = 1 << 20
"""The most open files the service raises its soft limit to."""
GRACEFUL_CLOSE = 3
"""Seconds uvicorn waits for connections to finish after the drain (whole seconds: its
setting is an int). The whole shutdown is SHUTDOWN_TIMEOUT, CANCEL_GRACE for sessions that
did not end in it, this, and the removal of the containers."""


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit (at most a million).

    Every connection and every sandbox's stream holds a descriptor; the usual soft limit
    (1024 under systemd) would refuse connections long before memory runs short, and the
    event loop (epoll) has no use for the lower limit. Returns (before, after).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Some container set-ups allow about 1e9: enough is a million.
    target = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
        return soft, soft
    return soft, target


BACKLOG = 2048
"""Connections waiting to be accepted (uvicorn's default)."""


def listen(host: str, port: int) -> list[socket.socket]:
    """Sockets listening on ``host``:``port`` (every address the name has), made before the
    application starts: a port in use or an address not ours is refused at once, in words
    naming the setting, before a sandbox is created (uvicorn binds after the start-up,
    and a failed bind left the containers the pool had begun to create).

    Raises:
        ConfigError: the name does not resolve, or an address cannot be bound.
    """
    where = f"{host or 'every interface'} port {port} (SANDBOX_HOST, SANDBOX_PORT)"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT and len(infos) > 1:
                    continue  # a kernel without IPv6: its other addresses serve, as asyncio's
                raise
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    if not sockets:
        raise ConfigError(f"cannot listen on {where}: no address family of it is supported")
    return sockets


class _StartupErrors:
    """The application, with a refusal to start said in one line, not a traceback.

    Starlette answers a lifespan that raised with the traceback, which uvicorn logs as an
    ERROR and then exits with status 3. A :class:`ConfigError` (a path that cannot be
    opened, an engine that would run sandboxes weaker) is a message for the operator:
    the lifespan keeps it in ``app.state.startup_error``, this drops the traceback, and
    :func:`serve` raises it for the command line, which prints it and exits with status 2.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def quiet(message: Message) -> None:
            if (message["type"] == "lifespan.startup.failed"
                    and getattr(self.app.state, "startup_error", None) is not None):
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, quiet)


class _DrainingServer(uvicorn.Server):
    """A uvicorn server that drains our sessions before it stops."""

    def __init__(self, config: uvicorn.Config, settings: Settings, app: Starlette) -> None:
        super().__init__(config)
        self._settings = settings
        self._app = app
        self._draining = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's SIGINT and SIGTERM, and SIGHUP (a closed terminal, some supervisors),
        whose default action killed the service without a drain: answered calls missing from
        the records, containers left behind."""
        with super().capture_signals():
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:  # nohup: keep it so
                yield
                return
            previous = signal.signal(signal.SIGHUP, self.handle_exit)
            try:
                yield
            finally:
                signal.signal(signal.SIGHUP, previous)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up; then where it listens, which uvicorn does not say for sockets
        given to it (:func:`listen`)."""
        await super().startup(sockets=sockets)
        if self.started:
            for sock in sockets or ():
                log.info("listening on %s", _url(sock))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.started:
            super().handle_exit(sig, frame)
            return
        if self._draining:
            if not self.should_exit:
                # A second signal while draining: uvicorn stops now, without waiting for
                # the drain; its lifespan still removes every container.
                super().handle_exit(sig, frame)
            else:
                # Not uvicorn's forced exit (its answer to a second SIGINT), which skips the
                # lifespan's shutdown and logs its cancellation as an ERROR: the shutdown is
                # bounded anyway (SIGKILL still ends the process; the sandboxes then stop on
                # their own).
                log.warning("already shutting down (within SHUTDOWN_TIMEOUT=%gs and the"
                            " containers' removal); signal %d ignored",
                            self._settings.shutdown_timeout, sig)
            return
        self._draining = True
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain(sig, frame)))

    async def _drain(self, sig: int, frame: FrameType | None) -> None:
        manager: SessionManager | None = getattr(self._app.state, "manager", None)
        if manager is not None:
            await manager.shutdown(self._settings.shutdown_timeout)
        if not self.should_exit:  # a second signal may have made uvicorn stop already
            super().handle_exit(sig, frame)


def serve(settings: Settings) -> int:
    """Run the service until it is told to stop; returns the exit status."""
    if (not settings.is_loopback and not settings.api_key_list
            and not settings.allow_unauthenticated):
        raise ConfigError(
            f"refusing to bind to {settings.host or 'every interface'} without API keys;"
            " set API_KEYS, or ALLOW_UNAUTHENTICATED=true if something in front of us"
            " authenticates")
    for advice in settings.advice():
        log.warning("%s", advice)
    sockets = listen(settings.host, settings.port)
    app = create_app(settings)
    config = uvicorn.Config(
        _StartupErrors(app), host=settings.host, port=settings.port,
        # permessage-deflate would compress every small frame on the hot path (and lets a
        # client make us inflate): off. The websockets library still carries every byte.
        # uvicorn's sans-I/O protocol, plus sending a batch of frames in one write.
        ws=BatchingWebSocketProtocol, ws_per_message_deflate=False,
        # A deadline for each request to arrive whole (REQUEST_TIMEOUT), and for a client to
        # read on (SEND_TIMEOUT): uvicorn has neither.
        http=with_timeouts(settings.request_timeout, settings.send_timeout,
                           app.state.gate),
        # uvloop, named rather than "auto" so that a missing install fails at start instead
        # of falling back in silence. It takes about 50 us off a cell's round trip, which
        # wakes the service's loop twice (bench/NOTES.md).
        loop="uvloop",
        ws_max_size=app.state.ws_max_size,  # fixed here: admin changes stay under it
        log_level=settings.log_level, lifespan="on", proxy_headers=False,
        # No logging configuration of uvicorn's own: its records (the start, each request,
        # each WebSocket) go to the root logger, in the service's one format, with the time
        # (uvicorn's format has none: "INFO:     connection open").
        log_config=None,
        # Once our drain has closed every session (SHUTDOWN_TIMEOUT), what uvicorn waits for
        # is a connection's last bytes: a few seconds, not the drain's time again.
        timeout_graceful_shutdown=GRACEFUL_CLOSE,
    )
    redact.install()  # after uvicorn.Config has configured its loggers
    before, after = raise_open_files_limit()
    if after != before:
        log.info("open files limit raised from %d to %d", before, after)
    app.state.gate.total = total_for(after)
    server = _DrainingServer(config, settings, app)
    try:
        server.run(sockets=sockets)
    except SystemExit:  # uvicorn's exit at a failed start
        error = getattr(app.state, "startup_error", None)
        if isinstance(error, ConfigError):
            raise error from None
        raise
    finally:
        for sock in sockets:
            sock.close()
    return 0 if server.started else 1


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"

