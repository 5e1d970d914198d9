"""The backend's pieces that need no engine: the attach request a sandbox is read through,
and when the question "did it run out of memory?" waits for the container's exit.

Everything else in ``ws_sandbox/backend.py`` talks to the engine and is tested against it
(tests/integration, tests/security).
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import aiodocker
import pytest

from ws_sandbox.backend import Sandbox, attach, container_config
from ws_sandbox.exceptions import SandboxLost
from ws_sandbox.settings import Settings


async def test_attach_asks_for_all_three_streams_without_inspecting() -> None:
    """aiodocker's own attach inspects the container first (for its TTY flag): one engine
    request more per sandbox. Ours knows a sandbox has no TTY."""
    docker = aiodocker.Docker(url="unix:///nonexistent/docker.sock")
    try:
        stream = attach(docker, "abc123")
        url, body, tty = await stream._setup()  # what the stream sends when it connects
    finally:
        await docker.close()
    assert url.path == "containers/abc123/attach"
    assert dict(url.query) == {"detachKeys": "", "logs": "0", "stdin": "1", "stdout": "1",
                               "stderr": "1", "stream": "1"}
    assert body is None
    assert tty is False
    config = container_config(Settings(), "python", "test")
    assert config["Tty"] is False and config["OpenStdin"] is True


class _Container:
    """Stands in for aiodocker's container: ``wait`` never returns (it is still running)."""

    id = "f" * 64

    def __init__(self, oom_killed: bool) -> None:
        self.oom = oom_killed
        self.waited = 0

    async def wait(self) -> dict[str, Any]:
        self.waited += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def show(self) -> dict[str, Any]:
        return {"State": {"OOMKilled": self.oom}}


class _EndedStream:
    async def read_out(self) -> None:
        return None  # the engine closed the stream


async def test_oom_check_waits_for_the_exit_only_when_the_stream_ended() -> None:
    """A sandbox lost because its stream ended may not have been marked OOMKilled yet: wait
    (bounded) for the exit. One lost for another reason is still running: do not wait."""
    backend = SimpleNamespace(settings=Settings(exit_wait_timeout=0.2))
    running = _Container(oom_killed=False)
    sandbox = Sandbox(backend, running, _EndedStream(), "python")  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        assert await sandbox.oom_killed() is False
    assert running.waited == 0

    stopped = _Container(oom_killed=True)
    sandbox = Sandbox(backend, stopped, _EndedStream(), "python")  # type: ignore[arg-type]
    with pytest.raises(SandboxLost, match="exited"):
        await sandbox.receive()
    start = time.monotonic()
    async with asyncio.timeout(5):
        assert await sandbox.oom_killed() is True
    assert stopped.waited == 1
    assert 0.15 <= time.monotonic() - start < 2  # waited, and no longer than the setting
