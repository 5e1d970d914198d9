"""The backend against the real engine: how a sandbox ends.

A sandbox's agent reads its stdin through the one stream the service attaches, and the
container is made with ``StdinOnce``: when that stream closes (``Sandbox.destroy``, or the
service dying) the agent sees EOF, ends every user process and exits, and the container
stops on its own. Only a container that does not stop within ``STOP_TIMEOUT`` is killed.
What happened is read from the engine's own event log for the container.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import RUNTIME_IMAGE
from tests.integration.conftest import ServiceFactory
from ws_sandbox import agent_wire as aw
from ws_sandbox.backend import DockerBackend, Sandbox, attach, container_config
from ws_sandbox.client import connect
from ws_sandbox.exceptions import SandboxLost
from ws_sandbox.settings import Settings

pytestmark = pytest.mark.docker

BOUND = 30.0
"""Generous bound on any single wait (seconds)."""


def settings(**overrides: Any) -> Settings:
    return Settings.from_env(os.environ, container_image=RUNTIME_IMAGE, **overrides)


def engine_events(container_id: str, since: float) -> list[dict[str, Any]]:
    """Every event the engine logged for the container from ``since`` until now."""
    out = subprocess.run(
        ["docker", "events", "--since", f"{since - 1:.0f}", "--until", f"{time.time() + 1:.0f}",
         "--filter", f"container={container_id}", "--format", "{{json .}}"],
        capture_output=True, text=True, timeout=BOUND, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def actions(events: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Action to attributes (the last of each action)."""
    return {e["Action"]: e["Actor"]["Attributes"] for e in events}


def exists(container_id: str) -> bool:
    return subprocess.run(["docker", "inspect", container_id], capture_output=True,
                          check=False).returncode == 0


async def sleeping_sandbox(backend: DockerBackend) -> Sandbox:
    """A started sandbox whose process never reads its stdin (so it ignores EOF)."""
    config = container_config(backend.settings, "python", backend.process_id)
    config["Entrypoint"] = ["sleep", "600"]
    container = await backend.docker.containers.create(config)
    sandbox = Sandbox(backend, container, attach(backend.docker, container.id), "python")
    try:
        await sandbox.send(aw.Hello())  # connects the stream; sleep never reads it
        await container.start()
    except BaseException:
        await sandbox.destroy()
        raise
    return sandbox


async def test_a_destroyed_sandbox_stops_on_its_own_before_removal() -> None:
    since = time.time()
    async with DockerBackend(settings(stop_timeout=BOUND)) as backend:
        sandbox = await backend.start_sandbox("python")
        # A cell still running: the agent must end its process too, not wait for it.
        await sandbox.send(aw.Exec(id="c1", code="import time; time.sleep(600)",
                                   max_output_bytes=1000))
        start = time.monotonic()
        await sandbox.destroy()
        took = time.monotonic() - start
    assert took < BOUND / 2, f"destroy took {took:.1f} s: the sandbox did not stop by itself"
    assert not exists(sandbox.id)
    seen = actions(engine_events(sandbox.id, since))
    assert "kill" not in seen, f"the engine killed the sandbox: {seen}"
    assert seen["die"]["exitCode"] == "0", seen
    assert "destroy" in seen


@pytest.mark.parametrize("grace", [0.5, 0.0])
async def test_a_sandbox_that_ignores_eof_is_killed_after_stop_timeout(grace: float) -> None:
    """The bound holds for a container whose process never reads its stdin; with a
    ``STOP_TIMEOUT`` of 0 the removal does not wait at all."""
    since = time.time()
    async with DockerBackend(settings(stop_timeout=grace)) as backend:
        sandbox = await sleeping_sandbox(backend)
        start = time.monotonic()
        async with asyncio.timeout(BOUND):
            await sandbox.destroy()
        took = time.monotonic() - start
    assert grace <= took < BOUND / 3, took
    assert not exists(sandbox.id)
    seen = actions(engine_events(sandbox.id, since))
    assert seen.get("kill", {}).get("signal") == "9", seen
    assert seen["die"]["exitCode"] == "137", seen


async def send_until_refused(sandbox: Sandbox, frame: aw.ToAgent) -> None:
    """Write ``frame`` again and again (the pipe and the engine take the first ones)."""
    async with asyncio.timeout(BOUND):
        for _ in range(64):
            await sandbox.send(frame)


async def test_a_sandbox_that_takes_no_frame_is_lost_after_send_timeout() -> None:
    """An agent that stops reading its stdin (a hostile one) must not hold the writer: the
    session's one task would wait in the write, out of reach of every deadline, close and
    removal. After ``SEND_TIMEOUT`` the write gives up with ``SandboxLost``."""
    async with DockerBackend(settings(stop_timeout=0.0, send_timeout=1.0)) as backend:
        sandbox = await sleeping_sandbox(backend)
        try:
            frame = aw.Exec(id="c1", code="x" * 1_000_000, max_output_bytes=1)
            start = time.monotonic()
            with pytest.raises(SandboxLost, match="accepted nothing for 1 s"):
                await send_until_refused(sandbox, frame)
            assert time.monotonic() - start < BOUND / 2
        finally:
            await sandbox.destroy(graceful=False)
    assert not exists(sandbox.id)


async def test_a_cancelled_destroy_still_removes_the_container() -> None:
    """Shutdown cancels sessions, sometimes twice: the removal must happen all the same."""
    async with DockerBackend(settings(stop_timeout=BOUND)) as backend:
        sandbox = await sleeping_sandbox(backend)
        destroying = asyncio.create_task(sandbox.destroy())
        await asyncio.sleep(0.3)  # waiting for a stop that does not come
        destroying.cancel()
        await asyncio.sleep(0)  # the task takes the first cancellation and starts the removal
        destroying.cancel()
        await asyncio.gather(destroying, return_exceptions=True)
        async with asyncio.timeout(BOUND):
            while exists(sandbox.id):
                await asyncio.sleep(0.05)
    assert not exists(sandbox.id)


async def test_a_graceless_destroy_does_not_wait() -> None:
    async with DockerBackend(settings(stop_timeout=BOUND)) as backend:
        sandbox = await sleeping_sandbox(backend)
        start = time.monotonic()
        async with asyncio.timeout(BOUND):
            await sandbox.destroy(graceful=False)
        assert time.monotonic() - start < BOUND / 3
    assert not exists(sandbox.id)


async def test_sandboxes_of_a_killed_service_stop_on_their_own(
        make_service: ServiceFactory) -> None:
    """A service that dies (SIGKILL: no cleanup at all) leaves no sandbox running: its
    streams close with it, so every agent sees EOF, ends its processes and exits."""
    with make_service(ENABLE_JAVASCRIPT="false", ENABLE_RUST="false",
                      ENABLE_SHELL="false") as svc:
        svc.wait_pool_full()
        session = await connect(svc.url)
        await session.execute("import time")
        cell = asyncio.create_task(session.execute("time.sleep(600)"))
        # The session took the warm sandbox; wait for its replacement to be ready too, or
        # the listing below can race the refill and miss it (seen once in CI).
        await asyncio.to_thread(svc.wait_pool_full)
        ids = svc.containers()
        assert len(ids) >= 2, ids  # the session's sandbox and a warm one
        svc.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(svc.process.wait, BOUND)
        try:
            waited = await asyncio.to_thread(
                subprocess.run, ["docker", "wait", *ids], capture_output=True, text=True,
                timeout=BOUND, check=True)
            assert waited.stdout.split() == ["0"] * len(ids), waited.stdout
        finally:
            cell.cancel()
            await asyncio.gather(cell, return_exceptions=True)
            await session.close()
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
