"""Run Open WebUI's own Jupyter client code, unmodified, against a real ``ws-sandbox serve``.

Open WebUI's two code paths, the **Run** button on code blocks and the **code interpreter**,
call ``open_webui.utils.code_interpreter.execute_code_jupyter`` from three places: the Run
button's route, and the code interpreter with legacy function calling (the middleware) or as
the built-in tool ``execute_code`` (native function calling, 0.12's default). A full Open WebUI
install (torch and the rest) is too heavy for our machines and CI, so this:

1. downloads the pinned open-webui wheel from PyPI into ``.cache/openwebui/<version>/``
   (gitignored; later runs use the cache) and checks its SHA-256;
2. extracts, byte for byte, ``utils/code_interpreter.py`` and the two Open WebUI modules it
   and the code interpreter path use (``utils/json_codec.py``, ``utils/sanitize.py``), plus
   ``routers/utils.py``, ``utils/middleware.py`` and ``tools/builtin.py`` as text, to check
   their call sites and take
   the code interpreter's import-blocking prelude (never imported);
3. stands in only for ``open_webui/env.py``, which configures the whole application on
   import: the stub holds the two assignments the modules read (``AIOHTTP_CLIENT_ALLOW_REDIRECTS``
   and ``ENABLE_ORJSON``), copied as code from the wheel's own ``env.py``, so their defaults
   are Open WebUI's (orjson on, no redirects);
4. makes a separate venv with Open WebUI's pinned client dependencies (ours differs);
5. starts real services (token mode, password mode) with ``tests/integration/conftest.py``
   and runs :mod:`tests.openwebui.client` in that venv, which calls ``execute_code_jupyter``
   exactly as each path does; then checks what Open WebUI would show.

Licence: Open WebUI is under the "Open WebUI License" (BSD-3-Clause plus a branding clause).
None of its code is committed to this repository: it is fetched at run time into the
gitignored cache, used unmodified, and its licence files are kept beside the extracted files.

    .venv/bin/python -m tests.openwebui.check      # or scripts/openwebui-check.sh
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.12.4"
WHEEL = f"open_webui-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "02e9caba96234db3fa17a92e56163b3f7f2b8ca8227fa886b85c178d696483f6"
# open-webui 0.12.4's own pins (its METADATA); websockets comes to it through
# uvicorn[standard], unpinned, so the version pip resolves today is pinned here.
CLIENT_DEPS = ("aiohttp==3.14.5", "orjson==3.11.9", "pydantic==2.13.4",
               "python-socketio==5.16.2", "websockets==17.4")
EXTRACT = ("open_webui/utils/code_interpreter.py", "open_webui/utils/json_codec.py",
           "open_webui/utils/sanitize.py", "open_webui/routers/utils.py",
           "open_webui/utils/middleware.py", "open_webui/tools/builtin.py")
ENV_NAMES = ("AIOHTTP_CLIENT_ALLOW_REDIRECTS", "ENABLE_ORJSON")
# The Run button; the code interpreter with legacy function calling; the code interpreter
# as the built-in tool execute_code (native function calling, 0.12's default).
CALL_SITES = {"open_webui/routers/utils.py": "code_execution",
              "open_webui/utils/middleware.py": "code_interpreter",
              "open_webui/tools/builtin.py": "code_interpreter"}
CLIENT = Path(__file__).with_name("client.py")
TOKEN = "openwebui-check-token"
PASSWORD = "openwebui-check-password"
MAX_EXECUTION_TIME = 5
OPENWEBUI_TIMEOUT = 60  # Open WebUI's default CODE_*_JUPYTER_TIMEOUT
IMAGE_LINE = re.compile(r"data:image/\w+;base64")  # what middleware.py turns into an image


class PrepareError(Exception):
    """The Open WebUI client could not be fetched or set up."""


@dataclass(frozen=True)
class ClientEnv:
    python: Path
    src: Path


def cache_dir() -> Path:
    return Path(os.environ.get("OPENWEBUI_CACHE", ROOT / ".cache" / "openwebui")) / VERSION


def _run(cmd: list[str], what: str, timeout: float) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as e:
        raise PrepareError(f"{what}: no result within {timeout:.0f} s") from e
    if done.returncode != 0:
        raise PrepareError(f"{what} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def _env_stub(env_py: str) -> str:
    """``open_webui/env.py`` reduced to the assignments of ``ENV_NAMES``, as shipped."""
    found = {}
    for node in ast.parse(env_py).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id in ENV_NAMES):
            found[node.targets[0].id] = ast.get_source_segment(env_py, node)
    missing = set(ENV_NAMES) - found.keys()
    if missing:
        raise PrepareError(f"open_webui/env.py no longer defines {sorted(missing)}")
    lines = ["# Stand-in for open_webui/env.py (which sets up all of Open WebUI on import):",
             "# only the settings code_interpreter.py and json_codec.py read, copied from it.",
             "import os", ""]
    return "\n".join(lines + [found[name] or "" for name in ENV_NAMES]) + "\n"


def prepare(cache: Path | None = None) -> ClientEnv:
    """Fetch the wheel, extract the client, make its venv (all cached). Idempotent."""
    cache = cache or cache_dir()
    src, venv = cache / "src", cache / "venv"
    env = ClientEnv(venv / "bin" / "python", src)
    stamp = cache / "ready"
    want = json.dumps([WHEEL_SHA256, CLIENT_DEPS, EXTRACT, ENV_NAMES])
    if stamp.exists() and stamp.read_text() == want and env.python.exists():
        return env
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if not wheel.exists() or _sha256(wheel) != WHEEL_SHA256:
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                  "--only-binary=:all:", f"open-webui=={VERSION}", "-d", tmp],
                 f"pip download open-webui=={VERSION}", timeout=600)
            got = Path(tmp) / WHEEL
            if not got.exists():
                raise PrepareError(f"pip download did not produce {WHEEL}")
            if _sha256(got) != WHEEL_SHA256:
                raise PrepareError(f"{WHEEL} has SHA-256 {_sha256(got)}, not {WHEEL_SHA256}")
            got.replace(wheel)
    shutil.rmtree(src, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        for name in EXTRACT:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(z.read(name))
        (src / "open_webui/env.py").write_text(_env_stub(z.read("open_webui/env.py").decode()))
        licences = [n for n in z.namelist() if "/licenses/" in n and ".dist-info/" in n]
        for name in licences:
            (src / "LICENSES").mkdir(exist_ok=True)
            (src / "LICENSES" / Path(name).name).write_bytes(z.read(name))
    # open_webui and open_webui.utils stay namespace packages: the wheel's
    # open_webui/__init__.py (the CLI) is not needed, utils/ has none.
    if not env.python.exists():
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)], "making the client venv", 120)
    _run([str(env.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          *CLIENT_DEPS], "installing Open WebUI's client dependencies", 600)
    stamp.write_text(want)
    return env


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def call_site_problems(src: Path) -> list[str]:
    """Whether every path still calls ``execute_code_jupyter`` as client.py assumes.

    That is five positional arguments: url, code, ``auth_token if auth == 'token' else None``,
    ``auth_password if auth == 'password' else None``, timeout, all from the path's settings.
    """
    problems = []
    for name, prefix in CALL_SITES.items():
        text = (src / name).read_text()
        calls = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "execute_code_jupyter"]
        if len(calls) != 1:
            problems.append(f"{name}: {len(calls)} calls of execute_code_jupyter, expected 1")
            continue
        call = calls[0]
        seen = [ast.get_source_segment(text, a) or "" for a in call.args]
        if call.keywords or len(seen) != 5:
            problems.append(f"{name}: execute_code_jupyter called with another shape: {seen}")
            continue
        expect = [f"'{prefix}.jupyter.url'", None, f"'{prefix}.jupyter.auth_token'",
                  f"'{prefix}.jupyter.auth_password'", f"'{prefix}.jupyter.timeout'"]
        for i, (arg, want) in enumerate(zip(seen, expect, strict=True)):
            if want is not None and want not in arg:
                problems.append(f"{name}: argument {i + 1} is {arg!r}, expected {want} in it")
        if "== 'token'" not in seen[2] or "== 'password'" not in seen[3]:
            problems.append(f"{name}: token/password no longer chosen by the auth setting")
    return problems


@dataclass
class Report:
    """Every check made, and which failed."""

    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def check(self, label: str, ok: bool, detail: str = "") -> None:
        self.lines.append(f"  {'ok  ' if ok else 'FAIL'} {label}"
                          + ("" if ok or not detail else f": {detail}"))
        if not ok:
            self.failures.append(f"{label}: {detail}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "..."


def judge(report: Report, label: str, run: dict[str, Any]) -> None:
    """What Open WebUI gets from one call must be what a Jupyter server would give it."""
    out, case = run["output"], run["case"]
    stdout, stderr, result = out.get("stdout"), out.get("stderr"), out.get("result")
    where = f"{label} {run['path']} {case} ({run['seconds']} s)"
    if case == "plot":
        lines = (result or "").split("\n")
        image = lines[0] if lines else ""
        png = b""
        if image.startswith("data:image/png;base64,"):
            with contextlib.suppress(ValueError):
                png = base64.b64decode(image.split(",", 1)[1], validate=True)
        ok = (stdout == "hello from stdout" and stderr == "a warning" and len(lines) == 2
              and bool(IMAGE_LINE.match(image)) and png.startswith(b"\x89PNG\r\n\x1a\n")
              and lines[1] == "42")
        report.check(where + ": stdout, stderr, PNG image then 42", ok,
                     _short({"stdout": stdout, "stderr": stderr,
                             "result": [x[:40] for x in lines]}))
    elif case == "error":
        ok = (stdout == "before" and isinstance(stderr, str) and "ZeroDivisionError" in stderr
              and "division by zero" in stderr and "\x1b" not in stderr and result == ""
              and "never" not in (stdout or ""))
        report.check(where + ": traceback in stderr, no ANSI", ok, _short(out))
    elif case == "time_limit":
        # The service's MAX_EXECUTION_TIME must end the cell, well before Open WebUI gives up.
        # What Open WebUI shows says why the cell ended, not only KeyboardInterrupt.
        ok = (stdout == "sleeping" and isinstance(stderr, str)
              and f"TimeoutError: execution time limit of {MAX_EXECUTION_TIME} s exceeded"
              in stderr and "Execution timed out" not in stderr
              and run["seconds"] < OPENWEBUI_TIMEOUT / 2)
        report.check(where + f": ended by the {MAX_EXECUTION_TIME} s limit", ok, _short(out))
    elif case == "blocked":
        ok = stdout == ("blocked: Direct import of module subprocess is restricted.\njson 1")
        report.check(where + ": CODE_INTERPRETER_BLOCKED_MODULES prelude works", ok,
                     _short(out))
    else:
        report.check(where, False, "unknown case")


def run_client(env: ClientEnv, url: str, auth: str, secret: str,
               extra_env: dict[str, str] | None = None, cases: str | None = None
               ) -> list[dict[str, Any]]:
    cmd = [str(env.python), str(CLIENT), "--src", str(env.src), "--url", url, "--auth", auth,
           "--secret", secret, "--timeout", str(OPENWEBUI_TIMEOUT)]
    if cases:
        cmd += ["--cases", cases]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, **(extra_env or {})})
    if done.returncode != 0:
        raise AssertionError(f"Open WebUI client exited {done.returncode}:\n"
                             f"{done.stderr[-3000:]}")
    if done.stderr.strip():  # execute_code_jupyter logs (and swallows) its failures
        print(done.stderr[-3000:], file=sys.stderr)
    runs: list[dict[str, Any]] = json.loads(done.stdout)["runs"]
    return runs


def active_sessions(http: str, api_key: str | None) -> int:
    request = urllib.request.Request(http + "/api/v1/stats")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=10) as r:
        return int(json.loads(r.read())["active_sessions"])


ServiceFactory = Callable[..., contextlib.AbstractContextManager[Any]]
SERVICE_ENV = {"ENABLE_JAVASCRIPT": "false", "ENABLE_SHELL": "false", "ENABLE_RUST": "false",
               "MAX_EXECUTION_TIME": str(MAX_EXECUTION_TIME),
               "DEFAULT_EXECUTION_TIME": str(MAX_EXECUTION_TIME)}
# token: an API key as the Jupyter token; jupyter-token: a JUPYTER_TOKEN of its own beside
# the API keys, as docker-compose.openwebui.yml sets it up; password: a login.
MODES = {"token": {"API_KEYS": TOKEN},
         "jupyter-token": {"API_KEYS": "openwebui-check-api-key", "JUPYTER_TOKEN": TOKEN},
         "password": {"JUPYTER_PASSWORD": PASSWORD, "SESSION_SECRET": "openwebui-check-secret"}}


def run_checks(env: ClientEnv, make_service: ServiceFactory) -> Report:
    """Every path, in each of :data:`MODES`, each against a fresh service."""
    report = Report()
    problems = call_site_problems(env.src)
    report.check(f"open-webui {VERSION} call sites ({', '.join(CALL_SITES)})",
                 not problems, "; ".join(problems))
    for mode, settings in MODES.items():
        auth = "password" if mode == "password" else "token"
        secret = PASSWORD if auth == "password" else TOKEN
        with make_service(**SERVICE_ENV, **settings) as service:
            service.wait_pool_full()
            report.lines.append(f"{mode} mode ({service.http}):")
            for run in run_client(env, service.http, auth, secret):
                judge(report, mode, run)
            if mode == "password":
                # An Open WebUI deployment may follow redirects; then the 302 of
                # POST /login is followed, and what it leads to must answer 2xx. The login
                # cookie then reaches Open WebUI only through aiohttp's cookie jar, which
                # drops cookies of IP-address hosts, as with any Jupyter server: Open WebUI
                # reaches the service by name (http://ws-sandbox:8090), so use one here.
                by_name = service.http.replace("127.0.0.1", "localhost")
                for run in run_client(env, by_name, mode, secret,
                                      {"AIOHTTP_CLIENT_ALLOW_REDIRECTS": "true"}, "plot"):
                    judge(report, "password+AIOHTTP_CLIENT_ALLOW_REDIRECTS", run)
            deadline, key = time.monotonic() + 10, settings.get("API_KEYS")
            while (left := active_sessions(service.http, key)) and time.monotonic() < deadline:
                time.sleep(0.2)
            report.check(f"{mode}: every kernel Open WebUI made was deleted", left == 0,
                         f"{left} sessions still open")
    return report


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import docker_problem
    from tests.integration.conftest import running_service

    problem = docker_problem()
    if problem:
        print(f"openwebui-check: needs Docker: {problem}", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        env = prepare()
    except PrepareError as e:
        print(f"openwebui-check: {e}", file=sys.stderr)
        return 2
    print(f"openwebui-check: open-webui {VERSION} client ready in "
          f"{time.monotonic() - start:.1f} s ({env.src})")
    with tempfile.TemporaryDirectory(prefix="openwebui-check-") as tmp:

        @contextlib.contextmanager
        def factory(**settings: str) -> Iterator[Any]:
            with running_service(Path(tmp), **settings) as service:
                yield service

        report = run_checks(env, factory)
    print("\n".join(report.lines))
    if report.failures:
        print(f"openwebui-check: FAILED, {len(report.failures)} of "
              f"{sum(1 for x in report.lines if x.startswith('  '))} checks", file=sys.stderr)
        return 1
    print(f"openwebui-check: OK, Open WebUI {VERSION}'s own client passed every check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
