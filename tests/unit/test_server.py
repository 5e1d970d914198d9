"""Serving: no listening beyond loopback with nobody checking keys; the open files limit."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from ws_sandbox import server
from ws_sandbox.exceptions import ConfigError
from ws_sandbox.server import serve
from ws_sandbox.settings import Settings


def test_non_loopback_bind_without_keys_is_refused() -> None:
    with pytest.raises(ConfigError, match="without API keys"):
        serve(Settings.from_env({"SANDBOX_HOST": "0.0.0.0"}))


class _Listened(Exception):
    """Raised by the stand-in for listen(): serve() got past its checks."""


@pytest.mark.parametrize("env", [
    {"SANDBOX_HOST": "0.0.0.0", "API_KEYS": "k-0123456789abcdef"},
    {"SANDBOX_HOST": "0.0.0.0", "ALLOW_UNAUTHENTICATED": "true"},
])
def test_non_loopback_bind_with_keys_or_allowed_unauthenticated_starts(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """With API keys, or ALLOW_UNAUTHENTICATED=true, a non-loopback bind gets past the
    refusal to listen; only the refusal was tested, so refusing every such start passed (a
    review). listen() is replaced: it records its address and stops serve() there."""
    calls: list[tuple[str, int]] = []

    def listen(host: str, port: int) -> object:
        calls.append((host, port))
        raise _Listened

    monkeypatch.setattr(server, "listen", listen)
    settings = Settings.from_env(env)
    with pytest.raises(_Listened):
        serve(settings)
    assert calls == [("0.0.0.0", settings.port)]


def test_advice_on_the_settings_is_logged_at_start(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    def listen(host: str, port: int) -> object:
        raise _Listened

    monkeypatch.setattr(server, "listen", listen)
    settings = Settings.from_env({"API_KEYS": "tenant-a-0123456789,tenant-b-0123456789"})
    with pytest.raises(_Listened):
        serve(settings)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == settings.advice() and len(warned) == 1


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    code = ("import resource\nfrom ws_sandbox.server import raise_open_files_limit\n"
            "print(*raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)))
    assert out.stdout.split() == [str(low), str(hard), str(hard), str(hard)], out.stderr


def test_sighup_drains_unless_it_was_ignored() -> None:
    """SIGHUP's default action killed the service with no drain (an operator review): it is
    now taken as SIGTERM is, but left ignored under nohup, which ignores it on purpose (a
    review of that change)."""
    import signal

    import uvicorn

    from ws_sandbox.app import create_app
    from ws_sandbox.server import _DrainingServer

    settings = Settings.from_env({})
    app = create_app(settings)
    server = _DrainingServer(uvicorn.Config(app), settings, app)
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        with server.capture_signals():
            assert signal.getsignal(signal.SIGHUP) == server.handle_exit
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with server.capture_signals():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_listening_skips_an_address_family_the_kernel_lacks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio (uvicorn's binding) skips a family whose socket cannot be made, as IPv6 on a
    kernel without it; binding ourselves refused to start there (a review)."""
    import errno
    import socket

    from ws_sandbox import server as server_module  # its listen() reads socket.socket

    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object, **kw: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "socket", no_ipv6)
    sockets = server_module.listen("", 0)
    try:
        assert [s.family for s in sockets] == [socket.AF_INET]
    finally:
        for sock in sockets:
            sock.close()
    with pytest.raises(ConfigError, match="cannot listen on ::1 port 0"):
        server_module.listen("::1", 0)
