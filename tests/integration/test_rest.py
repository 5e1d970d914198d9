"""The REST shim and the service surface, against a real service process and engine."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.conftest import RUNTIME_IMAGE, wait_for
from tests.integration.conftest import (
    LABEL_INSTANCE,
    Service,
    ServiceFactory,
    docker_ids,
    free_port,
    running_service,
)
from ws_sandbox import frames as fr
from ws_sandbox.client import SessionRefused, connect, execute_once

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
JSON = {"Content-Type": "application/json"}


def call(service: Service, path: str, body: bytes | dict[str, Any] | None = None, *,
         method: str | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, dict[str, str], Any]:
    """One HTTP call; returns status, headers and the decoded JSON body."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    hdrs = dict(JSON if data is not None else {})
    hdrs.update(headers or {})
    req = urllib.request.Request(service.http + path, data=data, headers=hdrs,
                                 method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status, got = r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, got = e.read(), e.code, dict(e.headers)
    ctype = got.get("content-type", "")
    return status, got, json.loads(raw) if "json" in ctype else raw.decode()


def run(service: Service, code: str, language: str = "python", **kw: Any) -> dict[str, Any]:
    status, _, body = call(service, "/api/v1/execute",
                           {"code": code, "language": language, **kw})
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def curl(service: Service, *args: str) -> dict[str, Any]:
    out = subprocess.run(["curl", "-s", "-X", "POST", f"{service.http}/api/v1/execute",
                          "-H", "Content-Type: application/json", *args],
                         capture_output=True, text=True, check=True, timeout=120, cwd=ROOT)
    body = json.loads(out.stdout)
    assert isinstance(body, dict)
    return body


# --- the original README's examples, verbatim ------------------------------------------


@pytest.mark.parametrize(("body", "expect"), [
    ('{"code": "print(\'Hello, World!\')", "language": "python"}', "Hello, World!\n"),
    ('{"code": "console.log(\'Hello from JavaScript\')", "language": "javascript"}',
     "Hello from JavaScript\n"),
    ('{"code": "echo Hello", "language": "shell"}', "Hello\n"),
    ('{"code": "date", "language": "shell"}', None),
    ('{"code": "ls -la", "language": "shell"}', "total"),
    ('{"code": "import pandas as pd\\nimport numpy as np\\n'
     'df = pd.DataFrame({\'a\': np.arange(3)})\\nprint(df[\'a\'].sum())",'
     ' "language": "python"}', "3\n"),
])
def test_readme_curl_examples(service: Service, body: str, expect: str | None) -> None:
    result = curl(service, "-d", body)
    assert result["status"] == "success", result
    assert result["exit_code"] == 0
    if expect is not None:
        assert result["stdout"].startswith(expect), result


@pytest.mark.parametrize(("example", "expect"), [
    ("python_example.json", "Hello from Python"),
    ("javascript_example.json", "Hello from JavaScript 2,4,6"),
    ("shell_example.json", "Hello from bash\n42\n"),
    ("rust_example.json", "Hello from Rust, total = 55"),
])
def test_examples_folder(service: Service, example: str, expect: str) -> None:
    result = curl(service, "-d", f"@examples/{example}")
    assert result["status"] == "success", result
    assert expect in result["stdout"]


# --- the response ----------------------------------------------------------------------


def test_execute_fields_and_statuses(service: Service) -> None:
    ok = run(service, "import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert set(ok) >= {"execution_id", "status", "stdout", "stderr", "execution_time_ms",
                       "memory_used_mb", "exit_code", "error"}
    assert (ok["status"], ok["stdout"], ok["stderr"], ok["exit_code"], ok["error"]) == (
        "success", "out\n", "err\n", 0, None)
    assert ok["execution_time_ms"] >= 0 and len(ok["execution_id"]) == 32
    assert ok["compile_time_ms"] is None
    rust = run(service, 'fn main() { println!("hi"); }', "rust")
    assert (rust["status"], rust["stdout"]) == ("success", "hi\n"), rust
    assert 0 < rust["compile_time_ms"] <= rust["execution_time_ms"], rust
    status, _, kept = call(service, f"/api/v1/executions/{rust['execution_id']}")
    assert status == 200 and kept["compile_time_ms"] == rust["compile_time_ms"], kept
    # Stopped while rustc ran: no compile time (all its time was reported as rustc's).
    stopped = run(service, 'fn main() { println!("hi"); }', "rust", timeout=0.05)
    assert (stopped["status"], stopped["compile_time_ms"]) == ("timeout", None), stopped
    failed = run(service, "raise ValueError('boom')")
    assert failed["status"] == "error" and "ValueError: boom" in failed["stderr"]
    slow = run(service, "while True:\n    pass", timeout=1)
    assert slow["status"] == "timeout"
    assert "time limit of 1 s" in slow["error"]
    shell = run(service, "exit 3", "shell")
    assert (shell["status"], shell["exit_code"]) == ("error", 3)
    no_stdin = run(service, "import sys; print(repr(sys.stdin.read()))", timeout=5)
    assert no_stdin["stdout"] == "''\n"


def test_a_python_program_s_threads_end_before_its_result(service: Service) -> None:
    """As ``python3 prog.py`` does, the call waits for the threads the program left (not
    daemons): what they print is in the result (it was lost with the sandbox)."""
    threads = run(service, "import threading, time\n"
                           "def work(n):\n"
                           "    time.sleep(0.3); print('thread', n)\n"
                           "for n in range(2):\n"
                           "    threading.Thread(target=work, args=(n,)).start()\n"
                           "print('main')\n")
    assert threads["status"] == "success"
    assert threads["stdout"].startswith("main\n")
    assert sorted(threads["stdout"].splitlines()) == ["main", "thread 0", "thread 1"]
    stuck = run(service, "import threading\n"
                         "threading.Thread(target=threading.Event().wait, name='w').start()\n",
                timeout=1)
    assert stuck["status"] == "timeout"
    assert "waited for 1 thread (w)" in stuck["stderr"]


def test_an_image_too_large_to_show_is_named_not_dropped(service: Service) -> None:
    """A PIL image of 1.4 MB (noise does not compress) was left out of the display without
    a word: the result said nothing was cut (a review)."""
    big = run(service, "from PIL import Image\nimport os\n"
                       "Image.frombytes('RGB', (700, 700), os.urandom(700 * 700 * 3))")
    assert big["status"] == "success", big
    [shown] = big["display"]
    assert set(shown) == {"text/plain"}, set(shown)
    assert re.search(r"\n\[image/(png|jpeg) of [\d,]+ bytes not shown: a display carries"
                     r" 525,000 bytes at most\]$", shown["text/plain"]), shown["text/plain"]
    small = run(service, "from PIL import Image\nImage.new('RGB', (64, 64), 'red')")
    assert "image/png" in small["display"][0]


def test_each_call_gets_a_fresh_sandbox(service: Service) -> None:
    run(service, "open('/workspace/mark', 'w').write('x')")
    again = run(service, "import os; print(os.path.exists('/workspace/mark'))")
    assert again["stdout"] == "False\n"


def test_a_language_alias_runs_its_language_and_is_recorded_by_its_name(
        service: Service) -> None:
    """``bash``, ``node`` and the other names clients of Piston or E2B send run their
    language; the result, the history and the stats name the language itself."""
    shell = run(service, 'echo "${BASH_VERSION%%.*}"', "bash")
    assert (shell["status"], shell["stdout"], shell["language"]) == ("success", "5\n", "shell")
    node = run(service, "console.log(typeof process.versions.node)", "Node")
    assert (node["stdout"], node["language"]) == ("string\n", "javascript")
    status, _, page = call(service, "/api/v1/executions?language=BASH&limit=1")
    assert status == 200
    assert [(i["execution_id"], i["language"]) for i in page["items"]] == [
        (shell["execution_id"], "shell")]


def test_output_is_capped_with_a_marker(service: Service) -> None:
    big = run(service, "print('x' * 200000)")
    assert big["truncated"] is True
    assert "[output truncated" in big["stdout"]
    assert len(big["stdout"]) < 70000  # the shared service caps output at 64 KiB


# --- refusals: a clear JSON error, never a 500, never a hang -----------------------------


@pytest.mark.parametrize(("body", "status", "code", "words"), [
    (b"{not json", 400, "bad_request", "JSON is malformed"),
    (b'{"code": 5}', 400, "bad_request", "Expected `str`, got `int` - at `$.code`"),
    (b'{"language": "python"}', 400, "bad_request", "missing required field `code`"),
    (b'{"code": "1", "timeout": "soon"}', 400, "bad_request", "$.timeout"),
    (b'{"code": "1", "language": "cobol"}', 400, "language_unavailable",
     "enabled: python, javascript, shell, rust"),
    (b'{"code": "   "}', 400, "bad_request", "code is empty"),
    (b'{"code": "1", "timeout": 0}', 400, "bad_request", "must be a positive number"),
    (b'{"code": "1", "timeout": -2}', 400, "bad_request", "must be a positive number"),
    (b'{"code": "1", "timeout": 21}', 400, "bad_request", "exceeds the maximum of 20 s"),
    # JSON nested this deep (msgspec raised RecursionError, not DecodeError, skipping it)
    (b'{"x": ' + b"[" * 2000 + b"]" * 2000 + b', "code": "1"}', 400, "bad_request",
     "unknown field `x`"),
    # A field the service does not know is refused: a misspelt timeout or language ran the
    # cell with the defaults, unnoticed (found by a new-user walkthrough).
    (b'{"code": "1", "timout": 1}', 400, "bad_request", "unknown field `timout`"),
    (b'{"code": "1", "lang": "javascript"}', 400, "bad_request", "unknown field `lang`"),
    (b"", 400, "bad_request", "the request body is empty"),
    # bad UTF-8 inside a string: msgspec raises UnicodeDecodeError (was a 500)
    (b'{"code": "print(1)#\xff"}', 400, "bad_request", "can't decode byte 0xff"),
    # a lone surrogate escape: valid JSON, not Unicode (was "Input data was truncated")
    (b'{"code": "s = \'\\ud800x\'"}', 400, "bad_request",
     "a \\u escape is half of a UTF-16 surrogate pair"),
])
def test_bad_requests(service: Service, body: bytes, status: int, code: str,
                      words: str) -> None:
    got, _, err = call(service, "/api/v1/execute", body)
    assert got == status, err
    assert err["error"]["code"] == code
    assert words in err["error"]["message"]


def test_code_above_max_code_bytes_is_413_with_the_websocket_message(service: Service) -> None:
    code = "#" * (1_048_576 + 1)
    status, _, err = call(service, "/api/v1/execute", {"code": code})
    assert status == 413
    assert err["error"] == {"code": "payload_too_large", "message":
                            "code of 1048577 bytes exceeds the limit of 1048576 bytes"}


def test_huge_body_is_refused_without_reading_it(service: Service) -> None:
    # Announce 10 MB and send none of it: the answer comes from the header alone.
    host, port = service.http.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/execute HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 10485760\r\n\r\n")
        raw = b""
        while b"payload_too_large" not in raw:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
        head = raw.decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert "payload_too_large" in head


def post_raw(service: Service, head: bytes, body: bytes = b"", timeout: float = 30) -> str:
    """POST ``head`` (header lines) and ``body`` to /api/v1/execute on a socket of our own
    (``Connection: close``); the answer, head and body, as text once the service closes."""
    host, port = service.http.removeprefix("http://").split(":")
    raw = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(b"POST /api/v1/execute HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n" + head
                     + b"\r\n" + body)
        try:
            while chunk := sock.recv(65536):
                raw += chunk
        except TimeoutError:
            pytest.fail(f"no whole answer within {timeout} s: {raw!r}")
    return raw.decode(errors="replace")


def test_the_body_bound_is_6_times_max_code_bytes_plus_64_kib(
        make_service: ServiceFactory) -> None:
    """docs/service.md: a REST body above 6 x MAX_CODE_BYTES + 64 KiB is refused (413) from
    its Content-Length, before any of it is sent, or as soon as a chunked body passes it;
    a body of exactly the bound (valid JSON padded with spaces, code under MAX_CODE_BYTES)
    runs. With MAX_CODE_BYTES=1000, the bound is 71,536 bytes."""
    limit = fr.message_limit(1000)
    assert limit == 6 * 1000 + 64 * 1024
    body = json.dumps({"code": "print(6 * 7)"}).encode()
    body += b" " * (limit - len(body))
    assert len(body) == limit

    def chunked(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"

    with make_service(MAX_CODE_BYTES="1000", ENABLE_JAVASCRIPT="false",
                      ENABLE_SHELL="false", ENABLE_RUST="false") as svc:
        # One byte over, announced: the answer comes from the header alone.
        over = post_raw(svc, f"Content-Length: {limit + 1}\r\n".encode(), timeout=10)
        assert over.startswith("HTTP/1.1 413"), over
        assert f"request body exceeds {limit} bytes" in over, over
        # One byte over, chunked (no length to go by): refused once read past the bound.
        over = post_raw(svc, b"Transfer-Encoding: chunked\r\n", chunked(body + b" "))
        assert over.startswith("HTTP/1.1 413"), over
        assert f"request body exceeds {limit} bytes" in over, over
        # Exactly the bound, both ways: run.
        for head, sent in ((f"Content-Length: {limit}\r\n".encode(), body),
                           (b"Transfer-Encoding: chunked\r\n", chunked(body))):
            answer = post_raw(svc, head, sent)
            assert answer.startswith("HTTP/1.1 200"), answer
            assert json.loads(answer.partition("\r\n\r\n")[2])["stdout"] == "42\n", answer


def test_huge_chunked_body_is_refused(service: Service, tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b'{"code": "' + b"a" * (10 * 1024 * 1024) + b'"}')
    out = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST",
         f"{service.http}/api/v1/execute", "-H", "Content-Type: application/json",
         "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{big}"],
        capture_output=True, text=True, timeout=60, check=False)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "413", out
    assert json.loads(body)["error"]["code"] == "payload_too_large"


async def test_a_call_whose_client_disconnects_ends_its_cell(service: Service) -> None:
    """A one-shot call whose client went away ran on to its end (up to the cell's timeout)
    for no one, holding a sandbox and a MAX_CONCURRENT_EXECUTIONS slot; a
    client could keep cutting calls to hold capacity (a soak review). Its cell now ends at
    once, recorded as killed."""
    code = f"import time  # {uuid.uuid4().hex}\ntime.sleep(60)"
    digest = hashlib.sha256(code.encode()).hexdigest()
    body = json.dumps({"code": code, "timeout": 20}).encode()
    host, port = service.http.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /api/v1/execute HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        await asyncio.sleep(1.0)  # the cell runs
    left = time.monotonic()

    def row() -> dict[str, Any] | None:
        status, _, page = call(service, "/api/v1/executions?limit=50")
        assert status == 200, page
        return next((x for x in page["items"] if x["code_sha256"] == digest), None)

    await wait_for(lambda: row() is not None, timeout=20)
    ended = time.monotonic() - left
    got = row()
    assert got is not None and got["status"] == "killed", got
    assert "the client of the one-shot call disconnected" in got["error"], got
    assert got["execution_time_ms"] < 10_000 and ended < 10, (got, ended)


def test_wrong_content_type_is_415(service: Service) -> None:
    status, _, err = call(service, "/api/v1/execute", b'{"code": "print(1)"}',
                          headers={"Content-Type": "text/plain"})
    assert status == 415 and err["error"]["code"] == "unsupported_media_type"
    assert err["error"]["message"] == "Content-Type must be application/json, not 'text/plain'"
    # JSON is UTF-8: a body sent as Latin-1 was read as UTF-8 (a review).
    status, _, err = call(service, "/api/v1/execute", '{"code": "print(\'é\')"}'.encode(
        "latin-1"), headers={"Content-Type": "application/json; charset=ISO-8859-1"})
    assert (status, err["error"]["message"]) == (
        415, "JSON is UTF-8: send it as such, not as charset='iso-8859-1'"), err
    for ctype in ("application/json; charset=utf-8", 'application/json;charset="UTF-8"'):
        status, _, ok = call(service, "/api/v1/execute", {"code": "print(1)"},
                             headers={"Content-Type": ctype})
        assert status == 200 and ok["stdout"] == "1\n", (ctype, ok)


def test_unknown_path_and_method_are_json(service: Service) -> None:
    status, _, err = call(service, "/api/v1/nothing")
    assert status == 404 and err["error"]["code"] == "not_found"
    assert err["error"]["message"] == ("no endpoint at '/api/v1/nothing'; the API's paths are"
                                       " listed at /api/v1/openapi.json")
    # A slash added is no redirect (the Host header would name where to go): the 404 says
    # which path was meant (it said "Not Found").
    for path, meant in (("/api/v1/health/", "/api/v1/health"),
                        ("/api/v1/executions/", "/api/v1/executions")):
        status, _, err = call(service, path)
        assert status == 404, err
        assert err["error"]["message"] == (f"no endpoint at {path!r}; did you mean"
                                           f" {meant!r}? (paths are exact)")
    # GET on the POST-only route: a 405 that says which method (the demo's mount at / used
    # to answer it with a 404).
    status, headers, err = call(service, "/api/v1/execute")
    assert status == 405 and err["error"]["code"] == "method_not_allowed"
    assert headers["allow"] == "POST"
    assert err["error"]["message"] == "GET is not allowed on '/api/v1/execute'; it takes POST"


# --- stats, metrics, config, history, docs ----------------------------------------------


def test_stats_metrics_config_and_history(service: Service) -> None:
    """The stats count this test's two REST executions: each counter goes up by exactly
    two, and the other origins' not at all. The service is shared, so counts of at least
    one held before the test ran (a review)."""
    status, _, before = call(service, "/api/v1/stats")
    assert status == 200
    run(service, "print('first')", "python")  # a second page, whatever ran before
    done = run(service, "print('kept')", "python")
    status, _, stats = call(service, "/api/v1/stats")
    assert status == 200
    for key in ("total", "by_status", "by_language", "by_origin", "active_sessions",
                "queued_cells", "latency_ms", "uptime_s", "pool"):
        assert key in stats

    def delta(*keys: str) -> int:
        old, new = before, stats
        for key in keys[:-1]:
            old, new = old.get(key, {}), new.get(key, {})
        return int(new.get(keys[-1], 0)) - int(old.get(keys[-1], 0))

    assert delta("total") == 2
    assert delta("by_language", "python") == 2
    assert delta("by_status", "success") == 2
    assert delta("by_origin", "rest") == 2
    assert (delta("by_origin", "session"), delta("by_origin", "jupyter")) == (0, 0)
    assert stats["latency_ms"]["p50"] is not None and stats["latency_ms"]["p99"] is not None
    status, headers, text = call(service, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'ws_sandbox_executions_total{status="success",language="python"}' in text
    assert 'ws_sandbox_execution_seconds_bucket{le="+Inf"}' in text
    assert "ws_sandbox_sessions_active" in text and "ws_sandbox_pool_ready" in text
    status, _, config = call(service, "/api/v1/config")
    assert status == 200 and "python" in config["enabled_languages"]
    assert "api_keys" not in config and "admin_api_key" not in config
    assert "session_secret" not in config
    status, _, item = call(service, f"/api/v1/executions/{done['execution_id']}")
    assert status == 200
    assert (item["stdout"], item["status"], item["origin"]) == ("kept\n", "success", "rest")
    status, _, page = call(service, "/api/v1/executions?language=python&status=success"
                                    "&limit=1")
    assert status == 200 and len(page["items"]) == 1 and page["next_offset"] == 1
    assert page["items"][0]["language"] == "python"
    status, _, err = call(service, "/api/v1/executions?limit=0")
    assert status == 400 and "limit" in err["error"]["message"]
    status, _, err = call(service, "/api/v1/executions?status=bogus")  # an empty page before
    assert status == 400 and err["error"]["message"] == (
        "status must be one of success, error, timeout, interrupted, killed, not 'bogus'")
    status, _, err = call(service, "/api/v1/executions?language=cobol")
    assert status == 400 and "language must be one of python, javascript" in \
        err["error"]["message"]
    # A misspelt filter listed every execution, and int() took other scripts' digits (a
    # review): refused, by name.
    status, _, err = call(service, "/api/v1/executions?stauts=error")
    assert status == 400 and err["error"]["message"] == (
        "unknown query parameter 'stauts'; this endpoint takes status, language, limit,"
        " offset"), err
    for query in ("limit=%EF%BC%91", "limit=3_0", "offset=+3", "limit=1&limit=2"):
        status, _, err = call(service, f"/api/v1/executions?{query}")
        message = err["error"]["message"]
        assert status == 400 and ("limit" in message or "offset" in message), (query, err)
    status, _, err = call(service, "/api/v1/executions/nope")
    assert status == 404
    # A value the client sent is quoted back cut short: 5,000 characters of it came back
    # whole in the message (a review).
    for path, code in ((f"/api/v1/executions?limit={'9' * 5000}", 400),
                       (f"/api/v1/executions?status={'x' * 5000}", 400),
                       (f"/api/v1/executions/{'a' * 5000}", 404)):
        status, _, err = call(service, path)
        message = err["error"]["message"]
        assert status == code and len(message) < 400 and "...'" in message, (path, message)


def test_openapi_and_docs(service: Service) -> None:
    status, _, doc = call(service, "/api/v1/openapi.json")
    assert status == 200 and "/api/v1/execute" in doc["paths"]
    status, headers, page = call(service, "/docs")
    assert status == 200 and "text/html" in headers["content-type"]
    assert "/api/v1/executions" in page


def test_plain_http_to_the_session_endpoint_is_told_it_is_a_websocket(
        service: Service) -> None:
    """A browser's address bar or a REST client on the WebSocket URL: 426 and what to do,
    not a 404 that says the endpoint does not exist."""
    status, headers, body = call(service, "/api/v1/sessions/ws?language=python")
    assert status == 426, body
    assert headers["upgrade"] == "websocket"
    assert body["error"]["code"] == "upgrade_required"
    assert "WebSocket endpoint" in body["error"]["message"]


# --- audit log and history: one line per execution, kept across a restart ----------------


async def test_audit_has_one_line_per_execution_and_history_survives_restart(
        make_service: ServiceFactory, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    db = tmp_path / "history.sqlite3"
    env = {"AUDIT_LOG_PATH": str(audit), "HISTORY_DB_PATH": str(db),
           "MAX_CONCURRENT_EXECUTIONS": "20"}
    with make_service(**env) as svc:
        svc.wait_pool_full()

        async def session_cells() -> None:
            async with await connect(svc.url, language="shell") as s:
                for n in range(6):
                    r = await s.execute(f"echo cell{n}")
                    assert r.status == "success"

        with ThreadPoolExecutor(14) as pool:
            calls = [asyncio.get_running_loop().run_in_executor(
                pool, run, svc, f"print({n})") for n in range(14)]
            results = await asyncio.gather(session_cells(), *calls)
        rest_ids = {r["execution_id"] for r in results[1:] if r}
        assert len(rest_ids) == 14
    # The service stopped: everything must be on disk by now.
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    executions = [x for x in lines if x["event"] == "execution"]
    assert len(executions) == 20
    assert len({x["execution_id"] for x in executions}) == 20
    assert rest_ids <= {x["execution_id"] for x in executions}
    assert sum(x["origin"] == "session" for x in executions) == 6
    sample = executions[0]
    assert len(sample["code_sha256"]) == 64 and sample["client"] == "127.0.0.1"
    with make_service(**env) as again:
        status, _, page = call(again, "/api/v1/executions?limit=100")
        assert status == 200 and page["total"] == 20
        some = next(iter(rest_ids))
        status, _, item = call(again, f"/api/v1/executions/{some}")
        assert status == 200 and item["status"] == "success"
        status, _, shell = call(again, "/api/v1/executions?language=shell")
        assert shell["total"] == 6


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_an_audit_log_that_cannot_be_written_is_reported_and_catches_up(
        make_service: ServiceFactory, tmp_path: Path) -> None:
    # The file is full, and a directory stands where its rotation must go: every write
    # fails, as on a full disk. The writer thread used to die on the first failure, and no
    # later execution was audited while health said "ok".
    audit = tmp_path / "audit.log"
    audit.write_text(json.dumps({"time": "2026-11-27T00:00:00.000Z", "event": "padding",
                                 "pad": "x" * 4000}, separators=(",", ":")) + "\n")
    blocker = tmp_path / "audit.log.1"
    (blocker / "x").mkdir(parents=True)
    with make_service(AUDIT_LOG_PATH=str(audit), AUDIT_LOG_MAX_BYTES="4096",
                      AUDIT_LOG_BACKUPS="1") as svc:
        ids = [run(svc, f"print({n})")["execution_id"] for n in range(3)]
        wait_until(lambda: svc.get("/api/v1/health")[0] == 503, "health to report it")
        _, health = svc.get("/api/v1/health")
        problems = health["problems"]
        assert isinstance(problems, list) and len(problems) == 1
        problem = str(problems[0])
        assert "the audit log cannot be written" in problem and "audit.log.1" in problem
        wait_until(lambda: 'ws_sandbox_records_waiting{store="audit"} 3' in
                   call(svc, "/metrics")[2], "the metrics to count three lines waiting")
        assert 'ws_sandbox_records_waiting{store="history"} 0' in call(svc, "/metrics")[2]
        shutil.rmtree(blocker)  # fixed: the waiting lines go out on the next try
        wait_until(lambda: svc.get("/api/v1/health")[0] == 200, "the audit to catch up")
        ids.append(run(svc, "print(3)")["execution_id"])
    lines = [json.loads(x) for p in (blocker, audit) for x in p.read_text().splitlines()]
    assert [x["execution_id"] for x in lines if x["event"] == "execution"] == ids


def refused_start(tmp_path: Path, **settings: str) -> tuple[subprocess.CompletedProcess[str],
                                                          str]:
    """``ws-sandbox serve`` with ``settings`` that must refuse to start; the process and its
    INSTANCE_NAME, after checking that it said why in one line and exited 2 (a refusal
    inside the start-up was a traceback and status 3: an operator review)."""
    instance = f"wsb-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SANDBOX_PORT": str(free_port()), "INSTANCE_NAME": instance,
           "POOL_SIZE": "2", "CONTAINER_IMAGE": RUNTIME_IMAGE,
           "AUDIT_LOG_PATH": str(tmp_path / "audit.log"),
           "HISTORY_DB_PATH": str(tmp_path / "history.sqlite3"), **settings}
    done = subprocess.run([sys.executable, "-m", "ws_sandbox", "serve"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert docker_ids(f"label={LABEL_INSTANCE}={instance}") == []  # no sandbox was made
    return done, instance


@pytest.mark.parametrize("setting", ["AUDIT_LOG_PATH", "HISTORY_DB_PATH"])
def test_a_store_that_cannot_be_opened_stops_the_start_and_makes_no_sandbox(
        tmp_path: Path, setting: str) -> None:
    # A directory where the file should be. The history used to fail after the warm pool
    # had started filling, and left its sandboxes behind in "Created".
    done, _ = refused_start(tmp_path, **{setting: str(tmp_path)})
    assert f"ws-sandbox: {setting}={tmp_path}: cannot open it" in done.stderr
    # A file where a directory should be is named as such ("File exists", before).
    (tmp_path / "afile").write_text("")
    done, _ = refused_start(tmp_path, **{setting: str(tmp_path / "afile" / "x")})
    assert f"({tmp_path / 'afile'} is not a directory)" in done.stderr


@pytest.mark.parametrize(("setting", "why"), [
    ("HISTORY_DB_PATH", "is not a SQLite database; it was left as it is"),
    ("AUDIT_LOG_PATH", "it is not an audit log (no audit line in its first 64 KiB); it was"
                       " left as it is"),
])
def test_a_store_path_naming_another_file_leaves_it_alone(tmp_path: Path, setting: str,
                                                          why: str) -> None:
    """A path naming a file that is not the store (a typo: /etc/passwd). HISTORY_DB_PATH was
    refused, but only after its mode had been made 0640 (an operator review). The audit log
    appended its lines to it, and once it passed AUDIT_LOG_MAX_BYTES renamed it to
    ``passwd.1``."""
    other = tmp_path / "passwd"
    other.write_text("root:x:0:0:root:/root:/bin/bash\n")
    other.chmod(0o644)
    done, _ = refused_start(tmp_path, **{setting: str(other)})
    assert f"ws-sandbox: {setting}={other}: " in done.stderr and why in done.stderr
    assert other.stat().st_mode & 0o777 == 0o644
    assert other.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("passwd")] == ["passwd"]


def test_a_port_in_use_is_refused_before_any_sandbox_is_made(tmp_path: Path) -> None:
    """uvicorn binds after the start-up: a busy port stopped it once the warm pool had begun
    creating containers, which stayed in "Created" (5 in 5 starts; an operator review)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done, _ = refused_start(tmp_path, SANDBOX_PORT=str(port))
    assert (f"cannot listen on 127.0.0.1 port {port} (SANDBOX_HOST, SANDBOX_PORT):"
            " Address already in use") in done.stderr


# --- keys, origins, rate limits, capacity, admin: one locked-down service ------------------


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from tests.conftest import require_docker

    require_docker()  # a failure in CI, never a silent skip
    tmp = tmp_path_factory.mktemp("locked")
    with running_service(
            tmp, API_KEYS=",".join(f"{name}-0123456789ab" for name in (
                "k-auth", "k-rate", "k-cells", "k-cap", "k-misc", "k-resume", "k-hist",
                "k-addr", "k-addr2", "k-sdk")),
            ADMIN_API_KEY="boss-0123456789ab",
            ALLOWED_ORIGINS="https://ok.example", RATE_LIMIT_PER_MINUTE="1",
            RATE_LIMIT_BURST="3", MAX_CONCURRENT_EXECUTIONS="1", ENABLE_RUST="false",
            AUDIT_LOG_PATH=str(tmp / "audit.log")) as svc:
        svc.env["AUDIT_LOG_PATH"] = str(tmp / "audit.log")
        yield svc


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_past_auth_failures_per_minute_no_credential_is_checked(
        make_service: ServiceFactory) -> None:
    """Wrong keys were refused at line rate, so a weak key could be guessed (a review):
    an address may send AUTH_FAILURES_PER_MINUTE wrong credentials a minute, API keys,
    Jupyter tokens and passwords together; past that its credentials, even a right one, get
    429 with Retry-After until it may try again. A call with no credential is not a guess."""
    with make_service(API_KEYS="right-key-1234-0123456789ab", JUPYTER_TOKEN="jupyter-token-1234",
                      ADMIN_API_KEY="admin-key-1234-0123456789ab",
                      AUTH_FAILURES_PER_MINUTE="4", ENABLE_JAVASCRIPT="false",
                      ENABLE_SHELL="false", ENABLE_RUST="false") as svc:
        assert call(svc, "/api/v1/stats", headers=bearer("right-key-1234-0123456789ab"))[0] == 200
        for _ in range(20):  # right keys are no guesses
            assert call(svc, "/api/v1/config",
                        headers=bearer("right-key-1234-0123456789ab"))[0] == 200
        # Health is public, but a key it is given is a guess too: it answered every guess
        # of the admin key (details or not) without limit (a review).
        status, _, health = call(svc, "/api/v1/health", headers=bearer("wrong-1"))
        assert (status, health) == (200, {"status": "ok"})
        assert call(svc, "/api/v1/admin/limits", headers=bearer("wrong-2"))[0] == 403
        assert call(svc, "/api/kernels?token=wrong-3")[0] == 403
        status, _, page = call(svc, "/login", b"password=wrong-4", headers={
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": "_xsrf=x",
            "X-XSRFToken": "x"})
        assert status == 403, page
        for path, headers in (("/api/v1/stats", bearer("right-key-1234-0123456789ab")),
                              ("/api/kernels?token=jupyter-token-1234", {})):
            status, got, err = call(svc, path, headers=headers)
            assert status == 429, (path, err)
            assert int({k.lower(): v for k, v in got.items()}["retry-after"]) >= 1
            assert "AUTH_FAILURES_PER_MINUTE" in json.dumps(err)
        assert call(svc, "/api/v1/stats")[0] == 401  # no credential: nothing to guess
        assert call(svc, "/api/v1/health")[0] == 200
        # Past the limit, health checks no key, the right admin key neither.
        status, _, health = call(svc, "/api/v1/health",
                                 headers=bearer("admin-key-1234-0123456789ab"))
        assert (status, health) == (200, {"status": "ok"})


def test_with_keys_and_no_admin_key_health_gives_everyone_the_status_alone(
        make_service: ServiceFactory) -> None:
    """Health's details are the operator's: where keys are needed and there is no admin key,
    nobody gets them, a tenant's key neither (docs/service.md)."""
    with make_service(API_KEYS="solo-key-0123456789ab", ADMIN_API_KEY="",
                      ENABLE_JAVASCRIPT="false", ENABLE_SHELL="false",
                      ENABLE_RUST="false") as svc:
        for headers in ({}, bearer("solo-key-0123456789ab"), bearer("wrong-key")):
            status, _, health = call(svc, "/api/v1/health", headers=headers)
            assert (status, health) == (200, {"status": "ok"}), (headers, health)
        status, _, stats = call(svc, "/api/v1/stats", headers=bearer("solo-key-0123456789ab"))
        assert status == 200 and "pool" in stats  # the key itself works


def test_the_sdk_s_execute_once_makes_the_call(locked: Service) -> None:
    """``ws_sandbox.client.execute_once``, the REST call for a caller that wants one result:
    the answer, and the service's refusals as SessionRefused with their status."""
    result = execute_once(locked.url, "import sys; print(sys.argv); sys.exit(3)",
                          api_key="k-sdk-0123456789ab", timeout=10)  # its own rate limit
    assert (result.status, result.stdout, result.exit_code) == ("error", "['']\n", 3)
    assert len(result.execution_id) == 32 and result.language == "python"
    with pytest.raises(SessionRefused) as refused:
        execute_once(locked.http, "print(1)")
    assert (refused.value.http_status, refused.value.error.code) == (401, "unauthorized")
    with pytest.raises(SessionRefused) as refused:
        execute_once(locked.http, "print(1)", language="cobol", api_key="k-sdk-0123456789ab")
    assert refused.value.http_status == 400 and "cobol" in refused.value.error.message


def test_keys_are_required(locked: Service) -> None:
    body = {"code": "print(1)"}
    status, headers, err = call(locked, "/api/v1/execute", body)
    assert status == 401 and err["error"]["code"] == "unauthorized"
    assert headers["www-authenticate"].startswith("Bearer")
    status, _, err = call(locked, "/api/v1/execute", body, headers=bearer("wrong"))
    assert status == 403 and err["error"]["code"] == "forbidden"
    for path in ("/api/v1/stats", "/metrics", "/api/v1/config", "/api/v1/executions"):
        assert call(locked, path)[0] == 401, path
    # Monitors need no key, and get the status alone: the engine's version, the runtimes,
    # the problems that weaken sandboxes and the pool's errors went to anyone (a review).
    status, _, health = call(locked, "/api/v1/health")
    assert (status, health) == (200, {"status": "ok"})
    status, _, health = call(locked, "/api/v1/health", headers=bearer("wrong"))
    assert (status, health) == (200, {"status": "ok"})
    # Nor does a tenant's key get more (it did: a review): the details are the operator's.
    status, _, health = call(locked, "/api/v1/health", headers=bearer("k-auth-0123456789ab"))
    assert (status, health) == (200, {"status": "ok"})
    status, _, health = call(locked, "/api/v1/health", headers=bearer("boss-0123456789ab"))
    assert status == 200 and health["status"] == "ok" and "engine" in health, health
    assert "pool" in health and "problems" in health
    status, _, ok = call(locked, "/api/v1/execute", body, headers=bearer("k-auth-0123456789ab"))
    assert status == 200 and ok["stdout"] == "1\n"


def test_a_key_reads_its_own_executions_alone(locked: Service) -> None:
    """The history holds each run's outputs: another key sees neither the row nor the
    item; the admin key and the key itself do."""
    status, _, run = call(locked, "/api/v1/execute", {"code": "print('mine')"},
                          headers=bearer("k-hist-0123456789ab"))
    assert status == 200, run
    own = f"/api/v1/executions/{run['execution_id']}"

    def listed(key: str) -> list[str]:
        status, _, page = call(locked, "/api/v1/executions?limit=500", headers=bearer(key))
        assert status == 200, page
        return [item["execution_id"] for item in page["items"]]

    assert run["execution_id"] in listed("k-hist-0123456789ab")
    assert run["execution_id"] in listed("boss-0123456789ab")
    assert run["execution_id"] not in listed("k-misc-0123456789ab")
    assert call(locked, own, headers=bearer("k-misc-0123456789ab"))[0] == 404
    status, _, item = call(locked, own, headers=bearer("k-hist-0123456789ab"))
    assert status == 200 and item["stdout"] == "mine\n"


async def test_a_keyed_caller_is_recorded_with_its_address(locked: Service) -> None:
    """A keyed caller's audit lines and history rows named the key alone: where a leaked
    key was used from could not be told (a review). The peer address is kept beside it,
    for WebSocket cells and one-shot calls alike."""
    async with await connect(locked.url, api_key="k-addr-0123456789ab") as session:
        assert (await session.execute("print(2)")).stdout == "2\n"
    status, _, run = call(locked, "/api/v1/execute", {"code": "print(3)"},
                          headers=bearer("k-addr-0123456789ab"))
    assert status == 200, run
    status, _, page = call(locked, "/api/v1/executions?limit=10",
                           headers=bearer("k-addr-0123456789ab"))
    assert status == 200 and page["total"] == 2, page
    (identity,) = {item["client"] for item in page["items"]}
    assert identity.startswith("key:") and "k-addr-0123456789ab" not in identity
    assert [item["address"] for item in page["items"]] == ["127.0.0.1", "127.0.0.1"]
    audit = Path(locked.env["AUDIT_LOG_PATH"])

    def lines() -> list[dict[str, Any]]:
        return [x for x in map(json.loads, audit.read_text().splitlines())
                if x.get("client") == identity]

    await wait_for(lambda: len(lines()) >= 2)  # the audit writer takes lines in batches
    assert sorted((x["origin"], x["address"]) for x in lines()) == [
        ("rest", "127.0.0.1"), ("session", "127.0.0.1")]


def test_refusals_are_counted_and_summed_up_in_the_log(make_service: ServiceFactory) -> None:
    """Wrong and missing keys left no trace an operator would look at: no counter, and at
    LOG_LEVEL=warning no line at all; nor did anything say who hit a limit (a review). They
    are counted now (stats, metrics), and the log sums every refusal up by caller, at most
    once a minute and at shutdown, never a line each (anyone could flood it)."""
    with make_service(API_KEYS="k-one-0123456789ab", ADMIN_API_KEY="boss-0123456789ab",
                      RATE_LIMIT_PER_MINUTE="1",
                      RATE_LIMIT_BURST="1", LOG_LEVEL="warning") as svc:
        for _ in range(5):
            assert call(svc, "/api/v1/executions", headers=bearer("wrong-key"))[0] == 403
        for _ in range(3):
            assert call(svc, "/api/v1/executions")[0] == 401
        body = {"code": "print(1)"}
        assert call(svc, "/api/v1/execute", body, headers=bearer("k-one-0123456789ab"))[0] == 200
        assert call(svc, "/api/v1/execute", body, headers=bearer("k-one-0123456789ab"))[0] == 429
        status, _, stats = call(svc, "/api/v1/stats", headers=bearer("boss-0123456789ab"))
        assert status == 200 and stats["auth_refused"] == {"unauthorized": 3, "forbidden": 5}
        status, _, text = call(svc, "/metrics", headers=bearer("boss-0123456789ab"))
        assert status == 200
        assert 'ws_sandbox_auth_refused_total{reason="forbidden"} 5' in text
        assert 'ws_sandbox_auth_refused_total{reason="unauthorized"} 3' in text
        assert "refused in the last" not in svc.log()  # summed up, not a line each
        svc.stop()  # SIGTERM: the summary of what is gathered is written as it stops
    summaries = [line for line in svc.log().splitlines() if "refused in the last" in line]
    assert len(summaries) == 1, svc.log()
    (line,) = summaries
    assert "5 forbidden (127.0.0.1 5); 3 unauthorized (127.0.0.1 3); 1 rate_limited (key:" in line
    assert "wrong-key" not in line and "k-one-0123456789ab" not in line


async def test_a_cell_is_recorded_with_the_address_that_sent_it(locked: Service) -> None:
    """The address was read when the cell finished: a cell sent from one address, whose
    session was then resumed from another, was recorded with the second (a review of the
    change that added it). Each cell now keeps the address of the connection that sent it."""
    url = f"{locked.url}/api/v1/sessions/ws"
    key = bearer("k-addr2-0123456789ab")
    first = await websockets.connect(f"{url}?language=python", additional_headers=key,
                                     local_addr=("127.0.0.1", 0))
    token = json.loads(await first.recv())["token"]
    await first.send(json.dumps({"type": "execute", "id": "from-a",
                                 "code": "import time; time.sleep(2)"}))
    await asyncio.sleep(0.5)
    first.transport.abort()  # dropped: the session waits for a resume
    async with websockets.connect(f"{url}?resume={token}", additional_headers=key,
                                  local_addr=("127.0.0.2", 0)) as second:
        frames = [json.loads(await second.recv())]
        while frames[-1]["type"] != "result":
            frames.append(json.loads(await asyncio.wait_for(second.recv(), 20)))
        await second.send(json.dumps({"type": "execute", "id": "from-b", "code": "1"}))
        while frames[-1].get("id") != "from-b" or frames[-1]["type"] != "result":
            frames.append(json.loads(await asyncio.wait_for(second.recv(), 20)))
    status, _, page = call(locked, "/api/v1/executions?limit=10", headers=key)
    assert status == 200, page
    sent = {item["cell_id"]: item["address"] for item in page["items"]}
    assert sent == {"from-a": "127.0.0.1", "from-b": "127.0.0.2"}, sent


async def test_websocket_keys_and_origins(locked: Service) -> None:
    # Refused before the upgrade, with the status and JSON body a REST call would get (an
    # empty 403 for every reason before).
    # The client library reports the refusal with the server's error (and the HTTP answer
    # behind it as the cause).
    with pytest.raises(SessionRefused) as refused:
        await connect(locked.url)
    assert (refused.value.http_status, refused.value.error.code) == (401, "unauthorized")
    cause = refused.value.__cause__
    assert isinstance(cause, websockets.InvalidStatus)
    assert cause.response.headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(cause.response.body)["error"]["code"] == "unauthorized"
    with pytest.raises(SessionRefused) as refused:
        await connect(locked.url, api_key="wrong")
    assert refused.value.http_status == 403
    assert refused.value.error.message == "the API key is not valid"
    url = f"{locked.url}/api/v1/sessions/ws?language=python&api_key=k-auth-0123456789ab"
    for bad in ("https://evil.example", "http://[", "http://[zz]"):  # the last two: not URLs
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(url, origin=websockets.Origin(bad))
        assert info.value.response.status_code == 403, bad
        assert "origin" in json.loads(info.value.response.body)["error"]["message"], bad
    for origin in ("https://ok.example", locked.http):
        async with websockets.connect(url, origin=websockets.Origin(origin)) as ws:
            ready = json.loads(await ws.recv())
            assert ready["type"] == "ready"
            await ws.close()
        await asyncio.sleep(0.3)  # the one slot frees when the session closes
    # uvicorn logs the upgrade's path with its query: the key must not reach the log.
    log = locked.log_path.read_text(errors="replace")
    assert "api_key=[redacted]" in log and "k-auth-0123456789ab" not in log
    # uvicorn's lines are in the service's one format, with the time ("INFO:     127.0.0.1
    # ..." before, without one).
    accepted = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO uvicorn\.error: \S+ -"
                          r' "WebSocket /api/v1/sessions/ws\?language=python&api_key=\[redacted\]"'
                          r" \[accepted\]$", re.MULTILINE)
    assert accepted.search(log), log[-3000:]
    assert not re.search(r"^(INFO|WARNING|ERROR):", log, re.MULTILINE), log[-3000:]


async def test_a_session_is_resumed_only_with_its_own_key(locked: Service) -> None:
    s = await connect(locked.url, api_key="k-resume-0123456789ab")
    await s.execute("kept = 1")
    token = s.token
    s.ws.transport.abort()  # dropped, not a goodbye: the session waits to be resumed
    await s.wait_closed()
    with pytest.raises(SessionRefused) as refused:  # a leaked token, another key's holder
        await connect(locked.url, api_key="k-auth-0123456789ab", resume=token)
    assert refused.value.error.code == "invalid_token"
    alive = refused.value.error.message
    assert "another API key" in alive
    async with await connect(locked.url, api_key="k-resume-0123456789ab", resume=token) as again:
        assert again.ready.resumed
        assert (await again.execute("print(kept)")).stdout == "1\n"
    await asyncio.sleep(0.3)  # the one slot frees when the session closes
    # Once it has ended, the other key's holder hears the same: a refusal that differed told
    # it whether the session still lived (a review).
    with pytest.raises(SessionRefused) as refused:
        await connect(locked.url, api_key="k-auth-0123456789ab", resume=token)
    assert (refused.value.error.code, refused.value.error.message) == ("invalid_token", alive)


def test_an_api_key_in_a_rest_url_is_refused_with_a_hint(locked: Service) -> None:
    # Taken on WebSocket upgrades only (a browser's WebSocket cannot send a header).
    status, _, err = call(locked, "/api/v1/config?api_key=k-auth-0123456789ab")
    assert status == 401
    assert "send Authorization: Bearer <key>" in err["error"]["message"]
    assert err["error"]["message"].count("Authorization") == 1  # said once, not twice
    assert call(locked, "/api/v1/config", headers=bearer("k-auth-0123456789ab"))[0] == 200


def test_a_tenant_s_config_does_not_describe_the_host(locked: Service) -> None:
    """Every key read the service's file paths, its address and its container label in
    /api/v1/config (a review). A tenant's key gets the limits and languages; the admin key
    (the operator) gets every setting but the secrets, as a service without keys does."""
    host_fields = {"audit_log_path", "history_db_path", "host", "port", "instance_name",
                   "container_image", "seccomp_profile", "allowed_origins", "allowed_hosts",
                   "secure_cookies"}
    status, _, tenant = call(locked, "/api/v1/config", headers=bearer("k-misc-0123456789ab"))
    assert status == 200 and not host_fields & set(tenant), tenant
    assert tenant["max_execution_time"] > 0 and "python" in tenant["enabled_languages"]
    status, _, operator = call(locked, "/api/v1/config", headers=bearer("boss-0123456789ab"))
    assert status == 200 and host_fields <= set(operator), operator
    assert set(tenant) | host_fields == set(operator)
    assert "api_keys" not in operator and "admin_api_key" not in operator


def test_disabled_language_lists_the_enabled_ones(locked: Service) -> None:
    status, _, err = call(locked, "/api/v1/execute", {"code": "fn main(){}",
                                                      "language": "rust"},
                          headers=bearer("k-misc-0123456789ab"))
    assert status == 400 and err["error"]["code"] == "language_unavailable"
    assert "enabled: python, javascript, shell" in err["error"]["message"]


def test_rate_limit_lets_the_burst_through_then_refuses(locked: Service) -> None:
    for _ in range(3):
        status, _, ok = call(locked, "/api/v1/execute", {"code": "print(1)"},
                             headers=bearer("k-rate-0123456789ab"))
        assert status == 200, ok
    status, headers, err = call(locked, "/api/v1/execute", {"code": "print(1)"},
                                headers=bearer("k-rate-0123456789ab"))
    assert status == 429 and err["error"]["code"] == "rate_limited"
    assert int(headers["retry-after"]) >= 1
    # Another key has its own bucket.
    assert call(locked, "/api/v1/execute", {"code": "print(1)"},
                headers=bearer("k-misc-0123456789ab"))[0] == 200


async def test_rate_limit_counts_session_opens_and_cells(locked: Service) -> None:
    async with await connect(locked.url, api_key="k-cells-0123456789ab") as s:  # token 1
        assert (await s.execute("print(1)")).status == "success"  # token 2
        assert (await s.execute("print(2)")).status == "success"  # token 3
        with pytest.raises(SessionRefused) as refused:
            await s.execute("print(3)")
        assert refused.value.error.code == "rate_limited"
        assert "retry in" in refused.value.error.message
        # A restart starts an interpreter: it takes a token too (it took none, and a client
        # restarted 47 interpreters a second past its limit: a review). Refused, it gets
        # an error with the restart's id (the client names each), and nothing restarts.
        with pytest.raises(SessionRefused) as restart:
            await s.restart()
        sent = restart.value.error.id
        assert restart.value.error.code == "rate_limited" and sent is not None
        assert sent.startswith(s._prefix), sent
        async with asyncio.timeout(30):
            while not isinstance(event := await s.events.get(), fr.Error):
                assert not isinstance(event, fr.Restarted), event
        assert event == restart.value.error
    await asyncio.sleep(0.3)
    with pytest.raises(SessionRefused) as again:
        await connect(locked.url, api_key="k-cells-0123456789ab")
    assert again.value.error.code == "rate_limited"


async def test_at_capacity_is_503_with_retry_after(locked: Service) -> None:
    def refusals() -> tuple[int, str]:
        stats = call(locked, "/api/v1/stats", headers=bearer("k-misc-0123456789ab"))[2]
        req = urllib.request.Request(locked.http + "/metrics",
                                     headers=bearer("k-misc-0123456789ab"))
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
        return stats["sessions_refused"]["at_capacity"], text

    before, _ = refusals()
    async with await connect(locked.url, api_key="k-cap-0123456789ab"):
        status, headers, err = call(locked, "/api/v1/execute", {"code": "print(1)"},
                                    headers=bearer("k-misc-0123456789ab"))
        assert status == 503 and err["error"]["code"] == "at_capacity"
        assert err["error"]["message"] == "at capacity: 1 sessions are open, the limit is 1"
        assert int(headers["retry-after"]) >= 1
    await asyncio.sleep(0.3)
    # Counted where an operator sizes the service by (refusals were counted nowhere).
    after, text = refusals()
    assert after == before + 1
    assert f'ws_sandbox_sessions_refused_total{{reason="at_capacity"}} {after}' in text


async def test_admin_api(locked: Service) -> None:
    admin = bearer("boss-0123456789ab")
    assert call(locked, "/api/v1/admin/limits", headers=bearer("k-misc-0123456789ab"))[0] == 403
    assert call(locked, "/api/v1/admin/limits")[0] == 401
    status, _, limits = call(locked, "/api/v1/admin/limits", headers=admin)
    assert status == 200 and limits["max_execution_time"] == 30.0
    # A method the route does not take is a 405 that names both it does (two routes named
    # only GET, and an undocumented PUT was taken).
    for method in ("POST", "PUT"):
        status, headers, _ = call(locked, "/api/v1/admin/limits", {}, method=method,
                                  headers=admin)
        assert status == 405 and set(headers["allow"].split(", ")) >= {"GET", "PATCH"}
        assert "PUT" not in headers["allow"]
    status, _, err = call(locked, "/api/v1/admin/limits", {"default_execution_time": 99},
                          method="PATCH", headers=admin)
    assert status == 400 and (
        "DEFAULT_EXECUTION_TIME=99 must be at most MAX_EXECUTION_TIME=30"
        in err["error"]["message"])
    status, _, err = call(locked, "/api/v1/admin/limits", {"max_memory_mb": 1},
                          method="PATCH", headers=admin)
    assert status == 400  # not changeable at run time
    status, _, err = call(locked, "/api/v1/admin/limits", b"max_code_bytes=10", method="PATCH",
                          headers={**admin, "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415, err  # as /execute answers (a form was taken: a review)
    status, _, err = call(locked, "/api/v1/admin/limits", b'{"\xff": 1}', method="PATCH",
                          headers=admin)  # bad UTF-8 in a key: UnicodeDecodeError (was a 500)
    assert status == 400 and "can't decode byte 0xff" in err["error"]["message"]
    # The WebSocket message limit is the server's, fixed at start: a larger max_code_bytes
    # would be taken by REST and refused on WebSockets (1009). Lowering is fine.
    status, _, err = call(locked, "/api/v1/admin/limits", {"max_code_bytes": 2_000_000},
                          method="PATCH", headers=admin)
    assert status == 400 and err["error"]["message"].startswith(
        "max_code_bytes can be raised at run time to at most 1048576")
    for size in (1000, 1_048_576):
        status, _, limits = call(locked, "/api/v1/admin/limits", {"max_code_bytes": size},
                                 method="PATCH", headers=admin)
        assert status == 200 and limits["max_code_bytes"] == size
    status, _, limits = call(locked, "/api/v1/admin/limits", {"max_execution_time": 12},
                             method="PATCH", headers=admin)
    assert status == 200 and limits["max_execution_time"] == 12.0
    status, _, err = call(locked, "/api/v1/execute", {"code": "1", "timeout": 13},
                          headers=admin)
    assert status == 400 and "maximum of 12 s" in err["error"]["message"]
    async with await connect(locked.url, api_key="boss-0123456789ab") as s:
        status, _, listed = call(locked, "/api/v1/admin/sessions", headers=admin)
        assert status == 200
        (info,) = listed["sessions"]
        assert info["session_id"] == s.ready.session_id and info["language"] == "python"
        # Three at once: the session ends, and is reported and audited, once.
        with ThreadPoolExecutor(3) as pool:
            ends = list(pool.map(lambda _: call(
                locked, f"/api/v1/admin/sessions/{s.ready.session_id}", method="DELETE",
                headers=admin)[0], range(3)))
        assert sorted(ends) == [200, 404, 404]
        async with asyncio.timeout(10):
            closed = await s.wait_closed()
        assert closed is not None and closed.reason == "closed_by_admin"
    assert call(locked, "/api/v1/admin/sessions/nope", method="DELETE",
                headers=admin)[0] == 404
    def events() -> list[str]:
        audit = Path(locked.env["AUDIT_LOG_PATH"]).read_text().splitlines()
        return [json.loads(x)["event"] for x in audit]

    # Admin lines are handed to the writer thread at once, and written a moment later.
    wait_until(lambda: "admin_session_ended" in events(), "the admin lines to be written")
    assert "admin_limits_changed" in events() and events().count("admin_session_ended") == 1


def test_a_client_gone_mid_body_is_not_an_error_in_the_log(service: Service) -> None:
    """A body cut short by the client's hang-up ends as a refused request, not as an
    "unhandled error" with a traceback (nobody reads the answer)."""
    host, port = service.http.removeprefix("http://").split(":")
    start = service.log_path.stat().st_size
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/execute HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                     b'{"code": "print(1)", "lang')
    # The service reads the hang-up at once; a later call goes through after it.
    assert call(service, "/api/v1/execute", {"code": "print(2)"})[2]["stdout"] == "2\n"
    with service.log_path.open("rb") as log:
        log.seek(start)
        written = log.read().decode(errors="replace")
    assert "ClientDisconnect" not in written and "unhandled error" not in written, written


async def test_a_request_that_never_ends_is_closed_at_request_timeout(
        make_service: ServiceFactory) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > 512, "this test needs a hard limit on open files above 512"
    with contextlib.ExitStack() as stack:
        # The service inherits a low soft limit, as under systemd (1024), and raises it.
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
        try:
            svc = stack.enter_context(make_service(REQUEST_TIMEOUT="0.5", POOL_SIZE="0"))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        host, port = svc.http.removeprefix("http://").split(":")
        held = []
        for _ in range(20):  # half a request each, as a slowloris client sends
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n")
            held.append((reader, writer))
        start = time.monotonic()
        async with asyncio.timeout(30):
            answers = [await reader.read() for reader, _ in held]
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers[0]
        assert time.monotonic() - start < 10
        for _, writer in held:
            writer.close()
        status, health = svc.get("/api/v1/health")  # whole requests are served as before
        assert status == 200, health
        # Each connection holds a descriptor: the service runs with its hard limit.
        limits = Path(f"/proc/{svc.process.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)], line


async def test_one_address_cannot_hold_every_connection(make_service: ServiceFactory) -> None:
    """A client reconnecting each half-sent request as its deadline closed it held 20,000
    connections from one address, the service's every descriptor, and nobody else could
    connect (a review). Past MAX_CONNECTIONS_PER_ADDRESS a connection is answered 503
    too_many_connections at once and closed; another address is served meanwhile, the
    refusals are counted, and the address is served again once it holds fewer."""
    with make_service(MAX_CONNECTIONS_PER_ADDRESS="30", POOL_SIZE="0",
                      ENABLE_JAVASCRIPT="false", ENABLE_RUST="false") as svc:
        host, port = svc.http.removeprefix("http://").split(":")
        held, refused = [], []
        for _ in range(45):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n")
            held.append((reader, writer))
        async with asyncio.timeout(30):
            for reader, writer in held[30:]:
                refused.append(await reader.read())
                writer.close()
        head, _, body = refused[0].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), refused[0]
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        assert "MAX_CONNECTIONS_PER_ADDRESS=30" in json.loads(body)["error"]["message"]
        assert all(r == refused[0] for r in refused)

        def from_elsewhere(method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
            conn = http.client.HTTPConnection(host, int(port), timeout=60,
                                              source_address=("127.0.0.2", 0))
            try:
                conn.request(method, path, body=body or None,
                             headers={"Content-Type": "application/json"} if body else {})
                response = conn.getresponse()
                return response.status, json.loads(response.read())
            finally:
                conn.close()

        status, health = await asyncio.to_thread(from_elsewhere, "GET", "/api/v1/health")
        assert status == 200, health
        status, result = await asyncio.to_thread(
            from_elsewhere, "POST", "/api/v1/execute", b'{"code": "print(6 * 7)"}')
        assert (status, result["stdout"]) == (200, "42\n"), result
        status, stats = await asyncio.to_thread(from_elsewhere, "GET", "/api/v1/stats")
        assert stats["connections"]["refused"] == 15, stats
        assert stats["connections"]["open"] >= 31, stats  # the 30 held, and this call
        for _, writer in held[:30]:
            writer.close()
        async with asyncio.timeout(30):
            while (status := (await asyncio.to_thread(svc.get, "/api/v1/health"))[0]) != 200:
                await asyncio.sleep(0.05)


def request_as(service: Service, method: str, path: str, host: str,
               headers: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, Any]:
    """One request naming the service by ``host`` (as a browser does whatever the address it
    connects to), and its status and JSON body."""
    address = service.http.removeprefix("http://")
    conn = http.client.HTTPConnection(address, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data
    finally:
        conn.close()


UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def test_no_redirect_names_a_host_the_client_chose(locked: Service) -> None:
    """Starlette answered a path with a slash added (GET /api/) with a 307 to the same path
    at the request's Host: with Host: evil.example, to http://evil.example/api, without a
    key (a review; a service with keys checks no Host). Paths are exact now: a 404."""
    for path in ("/api/", "/api/v1/health/", "/api/kernels/"):
        status, body = request_as(locked, "GET", path, "evil.example")
        assert status in (401, 404), (path, status, body)
        assert "evil.example" not in str(body), (path, body)


def test_an_open_service_answers_only_to_its_own_names(service: Service) -> None:
    """DNS rebinding: a page at evil.example, whose name the attacker then points at this
    service's address, is the service's own site to the browser (Origin and Host agree). A
    service without keys ran its code and showed it the history (found by a security review).
    It now answers only to localhost, IP addresses and ALLOWED_HOSTS."""
    port = service.http.rsplit(":", 1)[1]
    evil = f"evil.example:{port}"
    json_body = {"Content-Type": "application/json", "Origin": f"http://{evil}"}
    code = json.dumps({"code": "print(6 * 7)"}).encode()
    refused = [
        request_as(service, "POST", "/api/v1/execute", evil, json_body, code),
        request_as(service, "GET", "/api/v1/executions", evil),
        request_as(service, "GET", "/", evil),
        request_as(service, "GET", "/api/v1/sessions/ws?language=python", evil,
                   {**UPGRADE, "Origin": f"http://{evil}"}),
        request_as(service, "POST", "/api/kernels", evil, json_body, b"{}"),
        request_as(service, "GET", "/api/kernels", evil),
        # An open endpoint's login takes any password: not from such a page either.
        request_as(service, "GET", "/login", evil),
        request_as(service, "POST", "/login", evil,
                   {"Content-Type": "application/x-www-form-urlencoded",
                    "Cookie": "_xsrf=x"}, b"_xsrf=x&password=any"),
    ]
    for status, body in refused:
        assert status == 403, (status, body)
        # The Jupyter endpoint answers in Jupyter's shape, {"message", "reason"}.
        assert "ALLOWED_HOSTS" in body.get("error", body)["message"], body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST.:{port}"):
        status, body = request_as(service, "POST", "/api/v1/execute", host,
                                  {"Content-Type": "application/json"}, code)
        assert (status, body["stdout"]) == (200, "42\n"), (host, body)
    assert request_as(service, "GET", "/api/kernels", f"localhost:{port}")[0] == 200


def test_keys_protect_a_service_whatever_host_it_is_called(locked: Service) -> None:
    port = locked.http.rsplit(":", 1)[1]
    status, body = request_as(locked, "GET", "/api/v1/executions", f"sandbox.example:{port}",
                              {"Authorization": "Bearer k-misc-0123456789ab"})
    assert status == 200, body
    status, body = request_as(locked, "GET", "/api/v1/executions", f"sandbox.example:{port}")
    assert (status, body["error"]["code"]) == (401, "unauthorized")


def test_the_api_description_names_the_history_s_query_as_it_is_checked(
        service: Service) -> None:
    """The OpenAPI document listed no query parameters for the history (found by a new-user
    walkthrough); each documented one is taken up to its documented bounds, and refused past
    them."""
    status, doc = service.get("/api/v1/openapi.json")
    assert status == 200
    paths: Any = doc["paths"]
    params = {p["name"]: p["schema"] for p in paths["/api/v1/executions"]["get"]["parameters"]}
    assert set(params) == {"status", "language", "limit", "offset"}
    accepted = [f"status={v}" for v in params["status"]["enum"]]
    accepted += [f"language={v}" for v in params["language"]["enum"]]
    for name in ("limit", "offset"):
        accepted += [f"{name}={params[name]['minimum']}", f"{name}={params[name]['maximum']}"]
    for query in accepted:
        assert service.get(f"/api/v1/executions?{query}")[0] == 200, query
    refused = ["status=pending", "language=cobol", f"limit={params['limit']['maximum'] + 1}",
               f"limit={params['limit']['minimum'] - 1}", "offset=-1"]
    for query in refused:
        assert service.get(f"/api/v1/executions?{query}")[0] == 400, query
