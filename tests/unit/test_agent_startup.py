"""What the Python worker does to start cheaply, and that it loses nothing by it; and how the
agent starts its workers.

Every sandbox start pays for the worker's imports, so it imports only C modules and what
Python's own start has loaded: JSON goes through json's C core (``_json``), the worker loads
traceback (and linecache) only to format a traceback, and it does the part of ``site`` it
needs itself. These tests hold each replacement to the behaviour of what it replaces. The
agent (the C binary, ``tests.agent_binary``) starts each worker in a clean process, without
posix_spawn: a cell inspects its own worker to prove it. No Docker.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import py_compile
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.agent_binary import agent_binary
from tests.unit.test_agent_cells import AgentDriver, assert_success, start

AGENT_DIR = Path(__file__).resolve().parents[2] / "runtime" / "agent"
sys.path.insert(0, str(AGENT_DIR))

import worker_python  # noqa: E402

# Every JSON value, with strings that include lone surrogates (a hostile worker can send them
# as escapes) and floats of every finite kind.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_dumps_ascii_escapes_everything_json_escapes(value: Any) -> None:
    obj = {"code": value}
    text = worker_python.dumps_ascii(obj)
    assert text == json.dumps(obj, separators=(",", ":"), allow_nan=False)
    assert text.isascii()


@given(json_values, st.sampled_from(["", " ", "\n", " \t\r\n "]))
def test_loads_is_json_loads(value: Any, space: str) -> None:
    text = space + json.dumps(value, indent=1 if isinstance(value, dict) else None) + space
    assert worker_python.loads(text) == json.loads(text)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_dumps_refuses_non_finite_floats(value: float) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        worker_python.dumps_ascii({"t": "x", "v": value})


def test_dumps_refuses_what_json_has_no_type_for() -> None:
    with pytest.raises(TypeError, match="bytes is not JSON serializable"):
        worker_python.dumps_ascii({"t": "x", "v": b"raw"})


@pytest.mark.parametrize("text", ["", "   ", "NaN", "[Infinity]", '{"a": -Infinity}', "1 2",
                                  "{}x", '{"a":}', "[1,]", '"open', "{'a': 1}", "\x00"])
def test_loads_refuses_what_json_loads_refuses_and_non_finite_constants(text: str) -> None:
    with pytest.raises(ValueError, match=r"(?i)expecting|extra data|constant|unterminated"
                                          r"|invalid control"):
        worker_python.loads(text)


@pytest.mark.parametrize("text", ['{"t": "x"', "[1,]", "nul", '"\\ud800', "{}x"])
def test_loads_reports_errors_in_an_interpreter_without_json(text: str) -> None:
    """_json raises its error class through json.decoder, which neither process imports at
    start: the first error loads it instead of failing with SystemError."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import worker_python\n"
            "try:\n    worker_python.loads(sys.argv[2])\n"
            "except ValueError as exc:\n    print(type(exc).__name__)\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(AGENT_DIR), text],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.strip() in ("JSONDecodeError", "ValueError")


SLOW = {"json", "re", "enum", "functools", "collections", "contextlib", "subprocess",
        "selectors", "signal", "threading", "typing", "dataclasses", "pathlib", "tempfile",
        "shutil", "ctypes", "ast", "traceback", "linecache", "tokenize", "asyncio"}
"""Modules that cost a start milliseconds (most import re, enum or collections)."""


def test_worker_start_imports_none_of_the_slow_modules() -> None:
    # -S: the worker runs with site, which is the image's business (its .pth files), not the
    # worker's; this holds the worker's own imports.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import worker_python; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(AGENT_DIR)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    loaded = set(out.split())
    assert {"worker_python", "_json"} <= loaded
    assert "__future__" not in loaded
    assert loaded & SLOW == set()


def test_linecache_learns_every_cell_when_it_is_first_imported() -> None:
    """User code that imports traceback after some cells ran still sees their source."""
    worker_python._remember_source("<cell-test-1>", "a = 1\nb = 1/0\n")
    hook = worker_python._ImportHook()
    spec = hook.find_spec("linecache", None)
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)  # a new linecache, not sys.modules'
    spec.loader.exec_module(fresh)
    assert fresh.getline("<cell-test-1>", 2) == "b = 1/0\n"
    assert hook.find_spec("json", None) is None  # other modules load as usual
    worker_python._sources.pop("<cell-test-1>")


# ----------------------------------------------------------------------------- workers

DESCRIBE_PYTHON_WORKER = """\
import json, os
def _open_fds():
    listed = [int(fd) for fd in os.listdir('/proc/self/fd')]
    still = []
    for fd in listed:  # the listing's own descriptor is closed by now
        try:
            os.fstat(fd)
        except OSError:
            continue
        still.append(fd)
    return sorted(still)
_status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
_argv = open('/proc/self/cmdline', 'rb').read().split(b'\\0')[:-1]
print(json.dumps({
    'pid': os.getpid(), 'ppid': os.getppid(), 'sid': os.getsid(0), 'pgid': os.getpgid(0),
    'stdin': os.readlink('/proc/self/fd/0'), 'fds': _open_fds(),
    'targets': [os.readlink(f'/proc/self/fd/{fd}') for fd in _open_fds()],
    'control': [int(a) for a in _argv[-2:]],
    'sig_blk': int(_status['SigBlk'], 16),
    'env': sorted(k for k in os.environ if k.startswith('WS_SANDBOX')),
}))
"""


def describe(driver: AgentDriver) -> dict[str, Any]:
    result = driver.run(DESCRIBE_PYTHON_WORKER)
    assert_success(result)
    described: dict[str, Any] = json.loads(result.text())
    return described


def pipe_name(fd: int) -> str:
    """What /proc/PID/fd/N links to in any process that holds this pipe."""
    return f"pipe:[{os.fstat(fd).st_ino}]"


@pytest.fixture
def inherited_pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


def test_the_python_worker_is_a_clean_session_leader(inherited_pipe: tuple[int, int]) -> None:
    """Started with an extra inherited descriptor and WS_SANDBOX_AGENT* variables, the agent
    gives its worker neither: the worker has stdin from /dev/null, its stdout and stderr, its
    two control pipes and nothing else, in a session of its own (so killpg reaches all it
    starts), with no signal blocked."""
    passed, _ = inherited_pipe
    # The run's own WS_SANDBOX_* settings (CI sets WS_SANDBOX_REQUIRE_DOCKER) stay out.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WS_SANDBOX")},
           "WS_SANDBOX_AGENT_SECRET": "x", "WS_SANDBOX_AGENTX": "y", "WS_SANDBOX_OTHER": "kept"}
    driver = start("python", env=env, pass_fds=(passed,))
    try:
        me = describe(driver)
        assert me["ppid"] == driver.proc.pid
        assert me["sid"] == me["pid"] == me["pgid"]
        assert me["stdin"] == "/dev/null"
        control = me["control"]
        assert len(control) == 2 and min(control) > 2
        assert me["fds"] == sorted([0, 1, 2, *control]), me
        assert pipe_name(passed) not in me["targets"]
        assert me["sig_blk"] == 0
        assert me["env"] == ["WS_SANDBOX_OTHER"]
        # A fresh worker (after a restart) is started the same way.
        driver.send({"t": "restart"})
        assert driver.recv()[1] == {"t": "restarted"}
        again = describe(driver)
        assert again["pid"] != me["pid"]
        assert again["ppid"] == driver.proc.pid
        assert again["sid"] == again["pid"] == again["pgid"]
        assert again["stdin"] == "/dev/null"
        assert again["fds"] == sorted([0, 1, 2, *again["control"]]), again
        assert pipe_name(passed) not in again["targets"]
        assert (again["sig_blk"], again["env"]) == (0, ["WS_SANDBOX_OTHER"])
    finally:
        assert driver.close() == 0


SIGPIPE, SIGXFSZ = 13, 25


def test_the_shell_worker_has_default_sigpipe_and_sigxfsz(
    inherited_pipe: tuple[int, int],
) -> None:
    """The agent's own dispositions never reach a worker: SIGPIPE and SIGXFSZ are neither
    ignored nor blocked (else `yes | head` in a shell cell would never end), in the worker and
    in what it starts."""
    passed, _ = inherited_pipe
    env = {**os.environ, "WS_SANDBOX_AGENT_SECRET": "x"}
    driver = start("shell", env=env, pass_fds=(passed,))
    try:
        result = driver.run("echo worker $(grep -E '^Sig(Ign|Blk)' /proc/$$/status | cut -f2)\n"
                            "echo child $(grep -E '^Sig(Ign|Blk)' /proc/self/status | cut -f2)\n"
                            "echo session $(cut -d' ' -f6 /proc/$$/stat) $$\n"
                            "echo stdin $(readlink /proc/$$/fd/0)\n"
                            "echo targets $(for f in /proc/$$/fd/*; do readlink $f; done)\n"
                            "echo env $(env | grep -c '^WS_SANDBOX_AGENT')")
        assert_success(result)
        said = {line.split()[0]: line.split()[1:] for line in result.text().splitlines()}
        for mask in said["worker"] + said["child"]:  # SigIgn and SigBlk of each
            assert not int(mask, 16) & (1 << (SIGPIPE - 1) | 1 << (SIGXFSZ - 1)), said
        sid, pid = said["session"]
        assert sid == pid
        assert said["stdin"] == ["/dev/null"]
        assert pipe_name(passed) not in said["targets"]
        assert said["env"] == ["0"]
        yes = driver.run("yes | head -n 2; echo ${PIPESTATUS[0]}", timeout=10)
        assert yes.text() == "y\ny\n141\n"  # yes was ended by SIGPIPE (128 + 13)
    finally:
        assert driver.close() == 0


def test_what_a_shell_cell_starts_inherits_no_signal_state_of_the_agent() -> None:
    """The agent blocks SIGCHLD and SIGTERM, catches fifteen signals and ignores SIGPIPE; its
    spawn resets what exec would not (the mask, the ignored signals), so a program a cell
    starts has nothing blocked and nothing ignored."""
    driver = start("shell")
    try:
        result = driver.run("grep -E '^Sig(Blk|Ign)' /proc/self/status")
        assert_success(result)
        masks = dict(line.split(":") for line in result.text().splitlines())
        assert {k: int(v, 16) for k, v in masks.items()} == {"SigBlk": 0, "SigIgn": 0}, masks
    finally:
        assert driver.close() == 0


# ------------------------------------------------------------- how the Python worker starts

MARK_BYTECODE = '_LOADED_FROM = "bytecode"\n\n\ndef main() -> None:'


def agent_with_worker(directory: Path, *, bytecode: bool, stale: bool = False) -> Path:
    """A copy of the agent in ``directory`` with the Python worker's source beside it, and
    when ``bytecode``, a ``worker_python.pyc`` compiled from that source with one line more
    (``_LOADED_FROM``), so a cell can tell which of the two its worker runs; ``stale``
    gives that .pyc another Python version's magic number."""
    binary = directory / "agent"
    binary.write_bytes(agent_binary().read_bytes())
    binary.chmod(0o755)
    source = (AGENT_DIR / "worker_python.py").read_text(encoding="utf-8")
    (directory / "worker_python.py").write_text(source, encoding="utf-8")
    if bytecode:
        assert source.count("def main() -> None:") == 1
        marked = directory / "marked.py"
        marked.write_text(source.replace("def main() -> None:", MARK_BYTECODE), encoding="utf-8")
        pyc = directory / "worker_python.pyc"
        py_compile.compile(str(marked), cfile=str(pyc), dfile=str(directory / "worker_python.py"),
                           doraise=True)
        marked.unlink()
        if stale:
            data = pyc.read_bytes()
            pyc.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    return binary


# The worker's module (its print's globals: the cells' own __main__ is another module).
WHO_RUNS = ("import sys\nworker = print.__globals__\n"
            "print(worker.get('_LOADED_FROM', 'source'), worker['__file__'], sys.argv)")


@pytest.mark.parametrize(("bytecode", "stale"), [(True, False), (False, False), (True, True)])
def test_the_worker_runs_its_bytecode_or_else_its_source(tmp_path: Path, bytecode: bool,
                                                         stale: bool) -> None:
    """The agent runs the worker through a bootstrap (``python3 -c``) that loads
    ``worker_python.pyc`` when it is there and the source when not (or when the .pyc is
    another Python version's), as ``__main__`` with its ``__file__``; the cells' tracebacks
    show neither the bootstrap nor the worker."""
    binary = agent_with_worker(tmp_path, bytecode=bytecode, stale=stale)
    driver = AgentDriver([str(binary), "python"])
    try:
        assert driver.hello() == {"t": "ready", "language": "python", "version": 1}
        result = driver.run(WHO_RUNS)
        assert_success(result)
        runs_pyc = bytecode and not stale
        expected = tmp_path / ("worker_python.pyc" if runs_pyc else "worker_python.py")
        loaded = "bytecode" if runs_pyc else "source"
        assert result.text() == f"{loaded} {expected} ['']\n"
        failed = driver.run("def f():\n    return 1 / 0\nf()")
        assert failed.done["error"] == "ZeroDivisionError: division by zero"
        trace = failed.text("stderr")
        assert "return 1 / 0" in trace
        assert "<string>" not in trace and "worker_python" not in trace, trace
    finally:
        assert driver.close() == 0


SITE_REPORT = ("import builtins, json, sys\n"
               "print(json.dumps([sys.path, sys.flags.no_site, sys.flags.isolated,"
               " [callable(getattr(builtins, n, None)) for n in"
               " ('exit', 'quit', 'help', 'copyright', 'credits', 'license')]]))")


def test_the_worker_has_the_path_and_builtins_site_gives() -> None:
    """The worker runs with ``-S`` and does the part of ``site`` it needs itself: its
    ``sys.path`` is a normal isolated interpreter's (the same site-packages, in the same
    order) after the working directory, and ``exit``, ``help`` and the others exist."""
    python = shutil.which("python3")
    assert python is not None
    plain = json.loads(subprocess.run(
        [python, "-I", "-c", "import json, sys; print(json.dumps(sys.path))"],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    driver = start("python")
    try:
        result = driver.run(SITE_REPORT)
        assert_success(result)
        path, no_site, isolated, builtins_there = json.loads(result.text())
        assert path == ["", *plain]
        assert (no_site, isolated) == (1, 1)
        assert builtins_there == [True] * 6
    finally:
        assert driver.close() == 0


def test_the_workers_site_runs_pth_files(tmp_path: Path) -> None:
    """``.pth`` files in a site-packages directory still count: the lines that name a
    directory add it to ``sys.path``, the ``import`` lines run (site's own functions do it)."""
    site_dir, extra = tmp_path / "site-packages", tmp_path / "extra"
    site_dir.mkdir()
    extra.mkdir()
    (site_dir / "zz.pth").write_text(
        f"{extra}\nimport os; os.environ['PTH_RAN'] = 'yes'\n", encoding="utf-8")
    code = ("import os, site, sys\n"
            "site.getsitepackages = lambda prefixes=None: [sys.argv[2]]\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "import worker_python\n"
            "worker_python._site()\n"
            "print(sys.path[-2:] == [sys.argv[2], sys.argv[3]], os.environ.get('PTH_RAN'),"
            " type(exit).__name__, type(quit).__name__)\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(AGENT_DIR),
                          str(site_dir), str(extra)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["True", "yes", "_Quitter", "_Quitter"]


def test_the_workers_site_honours_a_virtual_environment(tmp_path: Path) -> None:
    """Run by a virtual environment's interpreter (a host's python3 may be one), the worker
    gets the environment's prefix and site-packages, as ``site`` would give them."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                   capture_output=True, timeout=120, check=True)
    code = ("import json, sys\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "import worker_python\n"
            "worker_python._site()\n"
            "print(json.dumps([sys.prefix, sys.path]))\n")
    with_site = json.loads(subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", "import json, sys\n"
         "print(json.dumps([sys.prefix, sys.path]))"],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    prefix, path = json.loads(subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-S", "-c", code, str(AGENT_DIR)],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    assert prefix == with_site[0] == str(venv)
    assert path[1:] == with_site[1]  # the worker's own directory first, then site's path


def agent_with_failing_worker(directory: Path, failing: str) -> Path:
    """A copy of the agent whose Python worker exits with code 3 before it is ready at the
    starts that ``failing`` (a Python expression of ``n``, the start's number) names; it
    counts its starts in ``directory/starts``."""
    binary = agent_with_worker(directory, bytecode=False)
    source = directory / "worker_python.py"
    counting = ("import os as _os\n"
                "_starts = _os.path.join(_os.path.dirname(__file__), 'starts')\n"
                "with open(_starts, 'a') as _f:\n"
                "    _f.write('x')\n"
                f"n = _os.path.getsize(_starts)\nif {failing}:\n"
                "    raise SystemExit(3)\n")
    source.write_text(counting + source.read_text(encoding="utf-8"), encoding="utf-8")
    return binary


def test_a_worker_that_exits_before_it_is_ready_is_started_again(tmp_path: Path) -> None:
    """Two in a row are started again; a worker that gets ready starts the count anew, so
    two more after it are too."""
    binary = agent_with_failing_worker(tmp_path, failing="n in (1, 2, 4, 5)")
    driver = AgentDriver([str(binary), "python"])
    try:
        assert driver.hello() == {"t": "ready", "language": "python", "version": 1}
        result = driver.run("print('up')")
        assert_success(result)
        assert result.text() == "up\n"
        assert (tmp_path / "starts").read_text() == "xxx"
        ended = driver.run("import os\nos._exit(0)")
        assert ended.done["restarted"] is True
        again = driver.run("print('again')")
        assert_success(again)
        assert again.text() == "again\n"
        assert (tmp_path / "starts").read_text() == "xxxxxx"
    finally:
        assert driver.close() == 0


def test_the_agent_gives_up_on_a_worker_that_never_gets_ready(tmp_path: Path) -> None:
    """Three workers in a row that exit before they are ready (a broken image, a preload
    that crashes) end the agent with status 1, and so the sandbox, at once: before, it
    started interpreters until the service's start timeout removed the sandbox."""
    binary = agent_with_failing_worker(tmp_path, failing="True")
    log = tmp_path / "stderr"
    with log.open("wb") as err:
        # stdin stays open (EOF would end the agent) until the agent exits on its own.
        proc = subprocess.Popen([str(binary), "python"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        status = proc.wait(timeout=60)
    finally:
        proc.kill()
        assert proc.stdin is not None
        proc.stdin.close()
    stderr = log.read_bytes()
    assert status == 1, stderr
    assert (tmp_path / "starts").read_text() == "xxx"
    assert b"before it was ready, 3 workers in a row; giving up" in stderr
