"""Integration fixtures: a real ``ws-sandbox serve`` process on a real Docker engine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import RUNTIME_IMAGE

LABEL_INSTANCE = "org.ws_sandbox.instance"
#: The admin key of a test service that has API keys and was given none.
HARNESS_ADMIN_KEY = "harness-admin-0123456789ab"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker_ids(*filters: str, all_states: bool = True) -> list[str]:
    """Ids of containers matching ``docker ps`` filters."""
    cmd = ["docker", "ps", "-q", "--no-trunc"] + (["-a"] if all_states else [])
    for f in filters:
        cmd += ["--filter", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.split()


def container_exists(short_id: str) -> bool:
    """Whether the engine still knows a container whose id starts with ``short_id``."""
    return any(cid.startswith(short_id) for cid in docker_ids())


@dataclass
class Service:
    """A running service process."""

    url: str
    http: str
    instance: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def containers(self) -> list[str]:
        return docker_ids(f"label={LABEL_INSTANCE}={self.instance}")

    def get(self, path: str) -> tuple[int, dict[str, object]]:
        """GET ``path``, with the service's admin key, or else its first API key, if it has
        either."""
        request = urllib.request.Request(self.http + path)
        key = self.env.get("ADMIN_API_KEY") or self.env.get("API_KEYS", "").split(",")[0]
        if key := key.strip():
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def wait_pool_full(self, timeout: float = 90.0) -> None:
        """Wait until every language has its warm sandboxes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.get("/api/v1/health")
            pool = body.get("pool")
            if status == 200 and not isinstance(pool, dict):  # not all of health: a tenant
                raise AssertionError(f"health gives no pool to this caller: {body}")
            if status == 200 and isinstance(pool, dict) and all(
                    p["ready"] >= p["target"] for p in pool.values()):
                return
            time.sleep(0.2)
        raise AssertionError(f"pool never filled: {self.get('/api/v1/health')}\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def start_service(tmp: Path, **env: str) -> Service:
    """Start ``ws-sandbox serve`` with settings ``env`` and wait until it is healthy."""
    if env.get("API_KEYS") and "ADMIN_API_KEY" not in env:
        # The harness reads health's details (the warm pool), which only the operator's key
        # gets where keys are needed: one of its own (a test that wants none passes "").
        env = {**env, "ADMIN_API_KEY": HARNESS_ADMIN_KEY}
    port = free_port()
    instance = f"wsb-test-{uuid.uuid4().hex[:8]}"
    full_env = {**os.environ, "SANDBOX_PORT": str(port), "INSTANCE_NAME": instance,
                "POOL_SIZE": "1", "CONTAINER_IMAGE": RUNTIME_IMAGE, "LOG_LEVEL": "info",
                # Tests open sessions and run cells fast, and send wrong keys on purpose;
                # only the tests of these limits want them.
                "RATE_LIMIT_PER_MINUTE": "100000", "RATE_LIMIT_BURST": "10000",
                "AUTH_FAILURES_PER_MINUTE": "0",
                # The audit log and history of a test service stay in its directory.
                "AUDIT_LOG_PATH": str(tmp / f"audit-{port}.log"),
                "HISTORY_DB_PATH": str(tmp / f"history-{port}.sqlite3")}
    # Keys come from the test alone: ones exported in the developer's shell would change
    # every service, and the harness's calls would send the wrong key.
    for name in ("API_KEYS", "ADMIN_API_KEY", "JUPYTER_TOKEN", "JUPYTER_PASSWORD"):
        full_env.pop(name, None)
    full_env.update(env)
    log_path = tmp / f"service-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "ws_sandbox", "serve"],
                                   env=full_env, stdout=log, stderr=subprocess.STDOUT)
    service = Service(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", instance,
                      process, log_path, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"service exited with {process.returncode}:\n{service.log()}")
        with contextlib.suppress(OSError, ValueError):
            status, _ = service.get("/api/v1/health")
            if status == 200:
                return service
        time.sleep(0.1)
    service.stop(signal.SIGKILL)
    raise AssertionError(f"service never became healthy:\n{service.log()}")


@contextlib.contextmanager
def running_service(tmp: Path, **env: str) -> Iterator[Service]:
    """A service for the duration of the block; on exit it must leave no container."""
    service = start_service(tmp, **env)
    try:
        yield service
    finally:
        service.stop()
        leftover = service.containers()
        for cid in leftover:
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)
        assert not leftover, f"service left containers behind: {leftover}\n{service.log()}"


@contextlib.contextmanager
def warm_service(tmp: Path, **env: str) -> Iterator[Service]:
    """A service for a shared fixture: Docker is required (a failure in CI, not a skip),
    and every warm pool is full before the first test uses it."""
    from tests.conftest import require_docker

    require_docker()
    with running_service(tmp, **env) as svc:
        svc.wait_pool_full()
        yield svc


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One shared service with default limits, pool of one per language."""
    with warm_service(tmp_path_factory.mktemp("svc"), MAX_CONCURRENT_EXECUTIONS="30",
                      MAX_EXECUTION_TIME="20", MAX_OUTPUT_BYTES="65536",
                      RESUME_GRACE="5") as svc:
        yield svc


ServiceFactory = Callable[..., contextlib.AbstractContextManager[Service]]


@pytest.fixture
def make_service(tmp_path: Path) -> ServiceFactory:
    """Start a dedicated service with special settings: ``with make_service(X="1") as s``."""
    def factory(**env: str) -> contextlib.AbstractContextManager[Service]:
        return running_service(tmp_path, **env)
    return factory
