"""The Python worker's own behaviour (``runtime/agent/worker_python.py``), run by the agent.

Cells of every language through the agent are in ``test_agent_cells.py``; these are what the
Python worker adds: its ``print``, which writes once per call, the cells' sources it keeps for
tracebacks, and its reading of the control pipe (``_Control``, over a real pipe): cells, and
the marks the agent writes just before an interrupt's SIGINT.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_agent_cells import AgentDriver, assert_success, start

AGENT_DIR = Path(__file__).resolve().parents[2] / "runtime" / "agent"
sys.path.insert(0, str(AGENT_DIR))

import worker_python  # noqa: E402


@pytest.fixture
def py() -> Iterator[AgentDriver]:
    driver = start("python")
    yield driver
    assert driver.close() == 0


WRITES = ("def writes():\n"
          "    with open('/proc/self/io') as f:\n"
          "        return int(next(l for l in f if l.startswith('syscw')).split()[1])\n")


@pytest.mark.parametrize(("call", "text"), [
    ("print(1)", "1\n"),
    ("print('a', 2, None, sep='-', end='!')", "a-2-None!"),
    ("print()", "\n"),
    ("print(*range(50))", " ".join(map(str, range(50))) + "\n"),
    ("print('x', sep=None, end=None)", "x\n"),
    ("print('é€😀', flush=True)", "é€😀\n"),
])
def test_print_writes_once_per_call(py: AgentDriver, call: str, text: str) -> None:
    """The builtin wrote each argument, separator and end on its own: an unbuffered stream
    made a system call of each (``print(1)`` two). Counted by the kernel's write calls."""
    if not __import__("os").path.exists("/proc/self/io"):
        pytest.skip("this kernel has no /proc/<pid>/io")
    r = py.run(WRITES + f"before = writes()\n{call}\nafter = writes()")
    assert_success(r)
    assert r.text() == text
    r = py.run("after - before")
    assert r.displays[0]["data"]["text/plain"] == "1", r.frames


def test_print_keeps_the_builtins_interface(py: AgentDriver) -> None:
    code = (
        "import builtins, io, sys, pickle\n"
        "buf = io.StringIO()\n"
        "print('to', 'buf', file=buf, sep='_')\n"
        "print('err', file=sys.stderr)\n"
        "class Loud:\n"
        "    def __str__(self): return 'loud'\n"
        "print(Loud(), [1], {'k': 2})\n"
        "errors = []\n"
        "for kwargs in ({'sep': 1}, {'end': b'x'}):\n"
        "    try:\n        print('x', **kwargs)\n"
        "    except TypeError as e:\n        errors.append(str(e))\n"
        "saved, sys.stdout = sys.stdout, None\n"
        "print('nowhere')\n"
        "sys.stdout = saved\n"
        "print(buf.getvalue(), errors, print is builtins.print, print.__name__,\n"
        "      print.__module__, pickle.loads(pickle.dumps(print)) is print,\n"
        "      'sep' in print.__doc__, sep='|')"
    )
    r = py.run(code)
    assert_success(r)
    assert r.text("stderr") == "err\n"
    lines = r.text().splitlines()
    assert lines[0] == "loud [1] {'k': 2}"
    assert lines[1:] == [
        "to_buf",
        "|['sep must be None or a string, not int', 'end must be None or a string, not bytes']"
        "|True|print|builtins|True|True",
    ]


COUNTING_CACHE = (
    "import linecache\n"
    "class Counting(dict):\n"
    "    written = 0\n"
    "    def __setitem__(self, key, value):\n"
    "        Counting.written += 1\n"
    "        super().__setitem__(key, value)\n"
    "    def update(self, *args, **kwargs):\n"
    "        other = dict(*args, **kwargs)\n"
    "        Counting.written += len(other)\n"
    "        super().update(other)\n"
    "linecache.cache = Counting(linecache.cache)\n"
)


def test_each_cell_adds_one_source_to_linecache(py: AgentDriver) -> None:
    """linecache learns each cell's source as it comes, not the whole history again: a
    session's cells would cost more and more (every source copied at every cell)."""
    for i in range(40):
        assert_success(py.run(f"x{i} = {i}"))
    assert_success(py.run(COUNTING_CACHE))
    for _ in range(5):
        assert_success(py.run("pass"))
    r = py.run("print(Counting.written)")
    assert_success(r)
    assert r.text() == "6\n"  # five cells and this one


def test_tracebacks_show_earlier_cells_even_after_linecache_is_cleared(
        py: AgentDriver) -> None:
    assert_success(py.run("def f():\n    raise ValueError('from the first cell')"))
    assert_success(py.run("import linecache\nlinecache.clearcache()"))
    r = py.run("f()")
    assert r.done["status"] == "error"
    trace = r.text("stderr")
    assert "raise ValueError('from the first cell')" in trace, trace
    assert "ValueError: from the first cell" in trace


def test_a_lone_expression_is_displayed_and_a_statement_before_it_runs(
        py: AgentDriver) -> None:
    r = py.run("40 + 2")
    assert_success(r)
    assert r.displays[0]["data"]["text/plain"] == "42"
    r = py.run("y = 5\ny * 2")
    assert_success(r)
    assert r.displays[0]["data"]["text/plain"] == "10"
    r = py.run("y")
    assert r.displays[0]["data"]["text/plain"] == "5"


# --- the control pipe ------------------------------------------------------------------

MARK = b'{"t":"interrupt"}\n'
CELL = b'{"code":"x = 1"}\n'


@pytest.fixture
def pipe() -> Iterator[tuple[worker_python._Control, int]]:
    read_end, write_end = os.pipe()
    try:
        yield worker_python._Control(read_end), write_end
    finally:
        os.close(read_end)
        os.close(write_end)


def test_marks_between_cells_are_dropped(pipe: tuple[worker_python._Control, int]) -> None:
    control, w = pipe
    os.write(w, MARK + CELL + MARK + MARK + b'{"code":"y"}\n')
    cells = control.cells()
    assert next(cells) == {"code": "x = 1"}
    assert control.interrupt_follows()  # the first mark behind it is this cell's
    assert next(cells) == {"code": "y"}  # the second was a late one's


def test_no_mark_is_no_interrupt_and_no_wait(pipe: tuple[worker_python._Control, int]) -> None:
    control, w = pipe
    os.write(w, CELL)
    assert next(control.cells()) == {"code": "x = 1"}
    started = time.monotonic()
    assert not control.interrupt_follows()  # a late SIGINT: the pipe is empty
    assert time.monotonic() - started < 1


def test_a_mark_read_in_part_is_read_whole(pipe: tuple[worker_python._Control, int]) -> None:
    """A read of a long cell's code can end inside the mark that follows it: the rest is
    read (the agent sends the SIGINT once the whole mark is in the pipe). The partial mark
    was taken for no mark, and the cell ran on (found by a review)."""
    control, w = pipe
    os.write(w, CELL + MARK[:8])
    assert next(control.cells()) == {"code": "x = 1"}
    late = threading.Timer(0.2, os.write, (w, MARK[8:]))
    late.start()
    try:
        assert control.interrupt_follows()
    finally:
        late.join()
    assert control.buf == b""


def test_interpreters_started_with_the_workers_flags_run_site(py: AgentDriver) -> None:
    """The worker runs with ``-S`` and does site's work itself: a child started with its
    flags (loky's resource tracker, which joblib starts for scikit-learn's ``n_jobs``) ran
    without site and could not import joblib (a review)."""
    result = py.run(
        "import subprocess, sys\n"
        "flags = subprocess._args_from_interpreter_flags()\n"
        "child = subprocess.run([sys.executable, *flags, '-c',"
        " 'import sys; print(sys.flags.no_site)'], capture_output=True, text=True)\n"
        "print('-S' in flags, sys.flags.no_site, child.stdout.strip())")
    assert result.done["status"] == "success", result.done
    assert result.text() == "False 1 0\n"
