"""Security battery fixtures: the integration fixtures, plus one hardened service for the battery.

``WS_SANDBOX_TEST_RUNTIME=runsc`` runs every service of the battery under gVisor
(``CONTAINER_RUNTIME=runsc``); ``scripts/security-runsc.sh`` does that.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import (  # noqa: F401  (fixtures re-exported)
    Service,
    make_service,
    running_service,
    service,
    warm_service,
)

#: The engine runtime the battery runs under: "" (the engine default, runc) or "runsc".
RUNTIME = os.environ.get("WS_SANDBOX_TEST_RUNTIME", "")
RUNSC = RUNTIME == "runsc"
if RUNTIME:
    # start_service passes os.environ on, so every service of this run uses the runtime.
    os.environ["CONTAINER_RUNTIME"] = RUNTIME

#: Limits of the battery's service; tests assert against these numbers.
BATTERY_ENV = {
    "MAX_EXECUTION_TIME": "20",
    "MAX_OUTPUT_BYTES": "65536",
    "MAX_MEMORY_MB": "256",
    "PIDS_LIMIT": "128",
    "WORKSPACE_SIZE_MB": "64",
    "TMP_SIZE_MB": "64",
    "FSIZE_LIMIT_MB": "64",
    "MAX_CONCURRENT_EXECUTIONS": "30",
    "RATE_LIMIT_PER_MINUTE": "0",
    "RESUME_GRACE": "2",
    "SESSION_SECRET": "canary-session-secret-3f9a",
    "ADMIN_API_KEY": "canary-admin-key-3f9a",
    "AWS_SECRET_ACCESS_KEY": "canary-aws-3f9a",
    # Loopback TCP and UDP on (under runc the default refuses them, which
    # test_tcp_and_udp_sockets_are_refused_by_default checks): the network tests prove what
    # a sandbox that has them still cannot do (egress, raw sockets, CAP_NET_*).
    "ALLOW_LOOPBACK_SOCKETS": "true",
}


@pytest.fixture(scope="session")
def battery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service shared by the whole battery, with canary secrets in its environment."""
    with warm_service(tmp_path_factory.mktemp("battery"), **BATTERY_ENV) as svc:
        yield svc


@pytest.fixture(autouse=True)
def no_container_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every battery test the engine lists no container of ours beyond the warm pool."""
    yield
    if "battery" not in request.fixturenames:
        return
    svc: Service = request.getfixturevalue("battery")
    # Removing a fork-bombed sandbox can take gVisor well over 30 s; runc is quick.
    deadline = time.monotonic() + (120 if RUNSC else 30)
    while True:
        _, health = svc.get("/api/v1/health")
        pool = health.get("pool", {})
        allowed = sum(p["target"] for p in pool.values()) if isinstance(pool, dict) else 0
        ours = svc.containers()
        if health.get("sessions") == 0 and len(ours) <= allowed:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{len(ours)} containers of ours after the test, pool allows"
                        f" {allowed}; sessions still open: {health.get('sessions')}")
        time.sleep(0.2)
