"""Faults the service must survive: a sandbox killed from outside, the engine restarted.

The engine-restart test stops and starts the real ``dockerd``; it is marked ``disruptive``
and runs after every other test (see ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import ServiceFactory, container_exists
from ws_sandbox.client import SessionClosed, connect

pytestmark = pytest.mark.docker


async def test_sandbox_killed_from_outside_is_replaced(make_service: ServiceFactory) -> None:
    with make_service(ENABLE_JAVASCRIPT="false", ENABLE_RUST="false",
                      ENABLE_SHELL="false") as svc:
        async with await connect(svc.url) as s:
            await s.execute("x = 1")
            short = (await s.execute("import socket; print(socket.gethostname())")).stdout
            cell = asyncio.create_task(s.execute("import time; time.sleep(20)"))
            await asyncio.sleep(0.5)
            subprocess.run(["docker", "kill", short.strip()], check=True, capture_output=True)
            r = await asyncio.wait_for(cell, 20)
            assert r.status == "killed"
            assert r.result.state_lost
            after = await s.execute("print('x' in globals())")
            assert after.status == "success"
            assert after.stdout == "False\n"  # a fresh sandbox, and the client was told
        deadline = time.monotonic() + 10
        while container_exists(short.strip()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not container_exists(short.strip())


async def test_a_session_whose_cells_keep_killing_the_sandbox_is_closed(
        make_service: ServiceFactory) -> None:
    """Each lost sandbox is replaced, up to ``MAX_SANDBOX_REPLACEMENTS`` a minute: the next
    loss closes the session (``sandbox_lost``, saying why), and no container is left."""
    with make_service(ENABLE_JAVASCRIPT="false", ENABLE_RUST="false", ENABLE_SHELL="false",
                      POOL_SIZE="1", MAX_SANDBOX_REPLACEMENTS="2") as svc:
        svc.wait_pool_full()
        kill = "import os, time; os.kill(1, 15); time.sleep(20)"
        async with await connect(svc.url) as s:
            for _ in range(2):
                r = await asyncio.wait_for(s.execute(kill), 30)
                assert r.status == "killed" and r.result.state_lost, r.result
                assert (await s.execute("print(2 + 2)")).stdout == "4\n"  # replaced
            r = await asyncio.wait_for(s.execute(kill), 30)  # its cell still gets a result
            assert r.status == "killed", r.result
            with pytest.raises(SessionClosed) as closed:
                await asyncio.wait_for(s.execute("print(1)"), 30)
            assert closed.value.reason == "sandbox_lost"
            assert "lost 3 times within 60 s" in closed.value.message
        deadline = time.monotonic() + 15
        while len(svc.containers()) > 1 and time.monotonic() < deadline:  # the pool's one
            await asyncio.sleep(0.2)
        assert len(svc.containers()) == 1, svc.containers()
        status, body = svc.get("/api/v1/health")
        assert status == 200 and body["status"] == "ok", body


def _dockerd() -> tuple[int, list[str]]:
    pid = int(subprocess.run(["pidof", "dockerd"], capture_output=True, text=True,
                             check=True).stdout.split()[0])
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return pid, [part.decode() for part in cmdline if part]


def _start_dockerd(cmdline: list[str]) -> None:
    """Start dockerd again, detached (``setsid -f``), logging where scripts/setup.sh does."""
    with open("/var/log/ws-sandbox-dockerd.log", "ab") as log:
        subprocess.run(["setsid", "-f", *cmdline], stdout=log, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, check=True, timeout=30)


def _engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False,
                          timeout=30).returncode == 0


@pytest.mark.disruptive
async def test_engine_restart_mid_session(make_service: ServiceFactory) -> None:
    with make_service(ENABLE_JAVASCRIPT="false", ENABLE_RUST="false", ENABLE_SHELL="false",
                      SANDBOX_START_TIMEOUT="20") as svc:
        s = await connect(svc.url)
        await s.execute("x = 1")
        cell = asyncio.create_task(s.execute("import time; time.sleep(25)", timeout=29))
        await asyncio.sleep(0.5)

        pid, cmdline = _dockerd()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists(), "dockerd did not stop"
        try:
            # The session hears of it: a result for the running cell, then `closed`.
            try:
                r = await asyncio.wait_for(cell, 30)
                assert r.status == "killed"
            except SessionClosed:
                pass
            closed = await asyncio.wait_for(s.wait_closed(), 30)
            assert closed is not None
            assert closed.reason == "sandbox_lost"
            status, body = svc.get("/api/v1/health")
            assert status == 503
            assert body["engine"]["reachable"] is False  # type: ignore[index]
        finally:
            _start_dockerd(cmdline)
            deadline = time.monotonic() + 60
            while not _engine_answers() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        assert _engine_answers(), "dockerd did not come back"
        deadline = time.monotonic() + 60
        while svc.get("/api/v1/health")[0] != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert svc.get("/api/v1/health")[0] == 200
        # It serves again without a restart of the service.
        async with await connect(svc.url) as again:
            r = await again.execute("print('back')")
            assert r.stdout == "back\n"
    # running_service checked on exit that no container of this service is left.
