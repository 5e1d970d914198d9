"""What the agent and the Python worker do to start cheaply, and that they lose nothing by it.

Every sandbox start pays for both processes' imports, so they import only C modules and what
Python's own start has loaded: JSON goes through json's C core (``json_core``), workers are
started with ``posix_spawn`` (:func:`agent.spawn`) instead of subprocess,
``contextlib.suppress`` is :class:`agent._suppress`, and the worker loads traceback (and
linecache) only to format a traceback. These tests hold each replacement to the behaviour of
what it replaces. No Docker.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

AGENT_DIR = Path(__file__).resolve().parents[2] / "runtime" / "agent"
sys.path.insert(0, str(AGENT_DIR))

import agent  # noqa: E402
import json_core  # noqa: E402
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
def test_dumps_is_json_dumps_compact_unicode(value: Any) -> None:
    obj = {"t": "out", "v": value}
    assert json_core.dumps(obj) == json.dumps(obj, ensure_ascii=False, separators=(",", ":"),
                                          allow_nan=False)


@given(json_values)
def test_dumps_ascii_escapes_everything_json_escapes(value: Any) -> None:
    obj = {"code": value}
    text = json_core.dumps_ascii(obj)
    assert text == json.dumps(obj, separators=(",", ":"), allow_nan=False)
    assert text.isascii()


@given(json_values, st.sampled_from(["", " ", "\n", " \t\r\n "]))
def test_loads_is_json_loads(value: Any, space: str) -> None:
    text = space + json.dumps(value, indent=1 if isinstance(value, dict) else None) + space
    assert json_core.loads(text) == json.loads(text)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_dumps_refuses_non_finite_floats(value: float) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        json_core.dumps({"t": "x", "v": value})


def test_dumps_refuses_what_json_has_no_type_for() -> None:
    with pytest.raises(TypeError, match="bytes is not JSON serializable"):
        json_core.dumps({"t": "x", "v": b"raw"})


@pytest.mark.parametrize("text", ["", "   ", "NaN", "[Infinity]", '{"a": -Infinity}', "1 2",
                                  "{}x", '{"a":}', "[1,]", '"open', "{'a': 1}", "\x00"])
def test_loads_refuses_what_json_loads_refuses_and_non_finite_constants(text: str) -> None:
    with pytest.raises(ValueError, match=r"(?i)expecting|extra data|constant|unterminated"
                                          r"|invalid control"):
        json_core.loads(text)


@pytest.mark.parametrize("text", ['{"t": "x"', "[1,]", "nul", '"\\ud800', "{}x"])
def test_loads_reports_errors_in_an_interpreter_without_json(text: str) -> None:
    """_json raises its error class through json.decoder, which neither process imports at
    start: the first error loads it instead of failing with SystemError."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import json_core\n"
            "try:\n    json_core.loads(sys.argv[2])\n"
            "except ValueError as exc:\n    print(type(exc).__name__)\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(AGENT_DIR), text],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.strip() in ("JSONDecodeError", "ValueError")


SLOW = {"json", "re", "enum", "functools", "collections", "contextlib", "subprocess",
        "selectors", "signal", "threading", "typing", "dataclasses", "pathlib", "tempfile",
        "shutil", "ctypes", "ast", "traceback", "linecache", "tokenize", "asyncio"}
"""Modules that cost a start milliseconds (most import re, enum or collections)."""


@pytest.mark.parametrize("module", ["agent", "worker_python"])
def test_start_imports_none_of_the_slow_modules(module: str) -> None:
    # -S: the worker runs with site, which is the image's business (its .pth files), not the
    # worker's; this holds the worker's own imports.
    code = (f"import sys; sys.path.insert(0, sys.argv[1]); import {module}; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(AGENT_DIR)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    loaded = set(out.split())
    assert {module, "json_core", "_json"} <= loaded
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


def test_suppress_swallows_the_named_kinds_only() -> None:
    with agent._suppress(OSError):
        raise FileNotFoundError("subclass of OSError")
    with pytest.raises(KeyError), agent._suppress(OSError, ValueError):
        raise KeyError("not suppressed")
    with agent._suppress(OSError):
        pass


def _spawned(pass_fds: tuple[int, ...] = ()) -> tuple[int, str]:
    """Spawn a shell that describes itself; return its exit code and what it printed."""
    script = ("echo sid=$(cut -d' ' -f6 /proc/self/stat) pid=$$; "
              "echo stdin=$(readlink /proc/self/fd/0); "
              "echo fds=$(ls /proc/self/fd | sort -n | tr '\\n' ' '); "
              "grep SigIgn /proc/self/status; echo oops >&2")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        child = agent.spawn(["sh", "-c", script], dict(os.environ), stdout=out_w, stderr=err_w,
                            pass_fds=pass_fds)
    finally:
        os.close(out_w)
        os.close(err_w)
    with os.fdopen(out_r) as out, os.fdopen(err_r) as err:
        text = out.read()
        assert err.read() == "oops\n"
    _pid, status = os.waitpid(child.pid, 0)
    assert child.returncode is None  # the agent reaps and records it itself
    return os.waitstatus_to_exitcode(status), text


def test_spawn_starts_a_new_session_with_dev_null_as_stdin() -> None:
    code, text = _spawned()
    assert code == 0
    fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
    assert fields["sid"] == fields["pid"]  # its own session: killpg reaches all it starts
    assert fields["stdin"] == "/dev/null"


def test_spawn_restores_the_signals_python_ignores() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; a child must not inherit that (subprocess's
    ``restore_signals``), or `yes | head` in a shell cell would never end."""
    _code, text = _spawned()
    sig_ign = int(text.split("SigIgn:")[1].split()[0], 16)
    for signum in (13, 25):  # SIGPIPE, SIGXFSZ
        assert not sig_ign & (1 << (signum - 1)), text


def test_spawn_passes_exactly_the_named_descriptors() -> None:
    passed_r, passed_w = os.pipe()
    kept_r, kept_w = os.pipe()  # non-inheritable, as Python opens everything
    try:
        _code, text = _spawned(pass_fds=(passed_r,))
        fds = {int(fd) for fd in text.split("fds=")[1].split("\n")[0].split()}
        assert passed_r in fds
        assert kept_r not in fds and kept_w not in fds and passed_w not in fds
        # The parent's copy is close-on-exec again afterwards.
        assert not os.get_inheritable(passed_r)
    finally:
        for fd in (passed_r, passed_w, kept_r, kept_w):
            os.close(fd)


def test_spawn_of_a_missing_program_raises() -> None:
    with pytest.raises(FileNotFoundError):
        agent.spawn(["/nonexistent/program"], {}, stdout=1, stderr=2, pass_fds=())


def test_inherited_descriptors_are_made_close_on_exec() -> None:
    r, w = os.pipe()
    standard = [os.get_inheritable(fd) for fd in (0, 1, 2)]
    try:
        os.set_inheritable(r, True)
        agent._close_on_exec_inherited()
        assert not os.get_inheritable(r)
        assert [os.get_inheritable(fd) for fd in (0, 1, 2)] == standard  # left as they were
    finally:
        os.close(r)
        os.close(w)
