"""The Python worker's own behaviour (``runtime/agent/worker_python.py``), run by the agent.

Cells of every language through the agent are in ``test_agent_cells.py``; these are what the
Python worker adds: its ``print``, which writes once per call.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.test_agent_cells import AgentDriver, assert_success, start


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
