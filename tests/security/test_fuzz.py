"""Fuzzing the live service: random and malformed WebSocket frames and REST bodies, and
schemathesis against the OpenAPI document. No 5xx, no hang, the service stays healthy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import Service, warm_service

pytestmark = pytest.mark.docker

ADMIN_KEY = "fuzz-admin-key-0d3e"
FUZZ_SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
frame_types = st.sampled_from(["execute", "interrupt", "restart", "ready", "result", "",
                               "EXECUTE", "closed"]) | st.text(max_size=12)
frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"type": frame_types},
        optional={"id": st.one_of(st.text(max_size=200), json_values),
                  "code": st.one_of(st.sampled_from(["", " ", "1+1", "print(1)"]),
                                    st.text(max_size=60), json_values),
                  "timeout": st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                       st.integers(), st.text(max_size=5), st.none()),
                  "network": st.just("host"), "privileged": st.booleans()},
    ).map(json.dumps),
)


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The fuzzed service. Once every test of this module that used it is done, whichever
    ran and in whatever order, it must still answer its health check, be running and have
    logged no traceback; a failure there is an error of the last test (a test of its own
    ran before schemathesis, and by the order of the file, not after the fuzzing: a
    review)."""
    with warm_service(tmp_path_factory.mktemp("fuzz"), POOL_SIZE="2",
                         ENABLE_JAVASCRIPT="false", ENABLE_RUST="false",
                         MAX_EXECUTION_TIME="5", DEFAULT_EXECUTION_TIME="2",
                         RATE_LIMIT_PER_MINUTE="0", MAX_CODE_BYTES="4096",
                         MAX_CONCURRENT_EXECUTIONS="20", ADMIN_API_KEY=ADMIN_KEY) as svc:
        yield svc
        assert svc.process.poll() is None, svc.log()
        status, body = svc.get("/api/v1/health")
        assert status == 200, body
        log = svc.log_path.read_text(errors="replace")  # all of it, not the last 5000
        assert "Traceback" not in log, log[log.index("Traceback"):][:5000]


@pytest.fixture(scope="module")
def ws(fuzz_service: Service) -> Iterator[ClientConnection]:
    with connect(f"{fuzz_service.url}/api/v1/sessions/ws?language=python",
                 max_size=None, open_timeout=30) as conn:
        ready = json.loads(conn.recv(timeout=30))
        assert ready["type"] == "ready"
        yield conn


def still_alive(conn: ClientConnection) -> list[dict[str, Any]]:
    """Run a sentinel cell; return every frame received until its result."""
    sentinel = f"alive-{uuid.uuid4().hex[:8]}"
    conn.send(json.dumps({"type": "execute", "id": sentinel, "code": "print('ok')"}))
    seen: list[dict[str, Any]] = []
    while True:
        frame = json.loads(conn.recv(timeout=30))
        seen.append(frame)
        assert frame["type"] != "closed", f"the session closed: {frame}"
        if frame.get("id") == sentinel and frame["type"] in ("result", "error"):
            assert frame["type"] == "result", frame
            return seen


@FUZZ_SETTINGS
@given(message=frames)
def test_random_frames_never_break_a_session(ws: ClientConnection,
                                             message: str | bytes) -> None:
    ws.send(message)
    seen = still_alive(ws)
    for frame in seen:
        assert frame["type"] in ("stream", "display", "result", "error", "restarted"), frame
        if frame["type"] == "error":
            assert frame["code"] and frame["message"]
            assert frame["code"] != "internal_error"


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={"code": st.one_of(st.sampled_from(["", "print(1)", "1/0"]),
                                    st.text(max_size=40), json_values),
                  "language": st.one_of(st.sampled_from(["python", "shell", "rust",
                                                         "cobol", ""]), json_values),
                  "timeout": st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                       st.integers(), st.text(max_size=5), st.none())},
    ).map(lambda v: json.dumps(v).encode()),
)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8",
                                 "text/plain", "application/x-www-form-urlencoded", ""])


@FUZZ_SETTINGS
@given(body=bodies, content_type=content_types)
def test_random_rest_bodies_get_clear_answers(fuzz_service: Service, body: bytes,
                                              content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(f"{fuzz_service.http}/api/v1/execute", data=body,
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload = response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, json.loads(exc.read())
    # 503 is allowed only as a clean "at capacity" refusal, never as a failure.
    assert status < 500 or (status == 503 and payload["error"]["code"] == "at_capacity"), (
        status, payload)
    if status >= 400:
        assert payload["error"]["code"]
        assert payload["error"]["message"]
    else:
        assert payload["status"] in ("success", "error", "timeout", "interrupted", "killed")


def test_schemathesis_finds_no_server_error(fuzz_service: Service, tmp_path: Path) -> None:
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    done = subprocess.run(
        [cli, "run", f"{fuzz_service.http}/api/v1/openapi.json",
         "--checks", "not_a_server_error,status_code_conformance", "--max-examples", "25",
         "--header", f"Authorization: Bearer {ADMIN_KEY}",  # the admin API is fuzzed too
         "--request-timeout", "60", "--generation-deterministic",
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_COLOR": "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    status, _ = fuzz_service.get("/api/v1/health")
    assert status == 200
