"""Cells in every language, run by the agent (the C binary, ``tests.agent_binary``) as a host
subprocess (no Docker).

The driver reads frames on a thread into a queue, so every wait has a deadline and no test can
hang. Tests that need numpy or matplotlib on the host are skipped when those are absent; the
integration tests cover them inside the runtime image.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.agent_binary import agent_binary
from tests.conftest import require_program
from ws_sandbox import agent_wire as aw
from ws_sandbox.frames import AGENT_FRAME_CHARS, display_chars

DEADLINE = 20.0


def _oom_counter_readable() -> bool:
    """Whether the agent can read an OOM counter here (cgroup v2's memory.events, or v1's
    memory.oom_control), as it can in every container under runc."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        with contextlib.suppress(OSError):
            if "oom_kill " in Path(path).read_text():
                return True
    return False


#: A SIGKILL is the OOM killer's only where the agent cannot tell (no counter to read).
SIGKILL_DESCRIPTION = ("SIGKILL (killed)" if _oom_counter_readable()
                       else "SIGKILL (killed, possibly by the out-of-memory killer)")


@dataclass
class CellResult:
    """Every frame of one cell, up to and including its ``done``."""

    frames: list[dict[str, Any]]
    sent_at: float
    out_times: list[float] = field(default_factory=list)

    @property
    def done(self) -> dict[str, Any]:
        return self.frames[-1]

    def text(self, name: str = "stdout") -> str:
        return "".join(f["text"] for f in self.frames if f["t"] == "out" and f["name"] == name)

    @property
    def displays(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["t"] == "display"]


class AgentDriver:
    """Drive one agent process over its stdin/stdout with deadlines."""

    def __init__(self, argv: list[str], **popen: Any) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen
        )
        self.frames: queue.Queue[tuple[float, dict[str, Any] | None]] = queue.Queue()
        self.stderr = b""
        self._ids = 0
        self.reading = threading.Event()
        self.reading.set()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            self.reading.wait()
            header = out.read(4)
            if len(header) < 4:
                break
            (size,) = struct.unpack(">I", header)
            assert size <= 1 << 20, "agent frame over MAX_AGENT_FRAME"
            body = out.read(size)
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:  # a test looks for this stand-in; the agent never sends it
                self.frames.put((time.monotonic(), {"t": "not UTF-8", "body": repr(body)}))
                continue
            self.frames.put((time.monotonic(), json.loads(text)))
        self.frames.put((time.monotonic(), None))

    def _read_stderr(self) -> None:
        err = self.proc.stderr
        assert err is not None
        for line in err:
            self.stderr += line

    def send(self, obj: dict[str, Any]) -> float:
        body = json.dumps(obj).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(struct.pack(">I", len(body)) + body)
        self.proc.stdin.flush()
        return time.monotonic()

    def recv(self, timeout: float = DEADLINE) -> tuple[float, dict[str, Any]]:
        try:
            at, obj = self.frames.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no frame from the agent within {timeout} s; stderr: {self.stderr!r}")
        if obj is None:
            pytest.fail(f"the agent closed its stdout; stderr: {self.stderr!r}")
        return at, obj

    def hello(self) -> dict[str, Any]:
        self.send({"t": "hello"})
        return self.recv()[1]

    def exec(self, code: str, max_output_bytes: int = 1 << 20, program: bool = False) -> str:
        self._ids += 1
        cell_id = f"c{self._ids}"
        frame = {"t": "exec", "id": cell_id, "code": code, "max_output_bytes": max_output_bytes}
        if program:
            frame["program"] = True
        self.send(frame)
        return cell_id

    def collect(self, cell_id: str, sent_at: float, timeout: float = DEADLINE) -> CellResult:
        result = CellResult([], sent_at)
        deadline = time.monotonic() + timeout
        while True:
            at, obj = self.recv(max(deadline - time.monotonic(), 0.01))
            if obj.get("id") != cell_id:
                continue  # late output of an earlier cell
            result.frames.append(obj)
            if obj["t"] == "out":
                result.out_times.append(at)
            if obj["t"] == "done":
                return result

    def run(
        self, code: str, max_output_bytes: int = 1 << 20, timeout: float = DEADLINE,
        program: bool = False,
    ) -> CellResult:
        sent_at = time.monotonic()
        cell_id = self.exec(code, max_output_bytes, program)
        return self.collect(cell_id, sent_at, timeout)

    def run_interrupted(self, code: str, after: float = 0.5, max_output_bytes: int = 1 << 20,
                        timeout: float = DEADLINE, program: bool = False) -> CellResult:
        sent_at = time.monotonic()
        cell_id = self.exec(code, max_output_bytes, program)
        time.sleep(after)
        self.send({"t": "interrupt"})
        return self.collect(cell_id, sent_at, timeout)

    def close(self) -> int:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=10)
        finally:
            self.proc.kill()
            self.proc.wait()
            assert self.proc.stdout is not None
            assert self.proc.stderr is not None
            self.proc.stdout.close()
            self.proc.stderr.close()


def start(language: str, **popen: Any) -> AgentDriver:
    """An agent for ``language`` that has answered ``hello``; ``popen``: extra Popen options."""
    driver = AgentDriver([str(agent_binary()), language], **popen)
    ready = driver.hello()
    assert ready == {"t": "ready", "language": language, "version": 1}
    return driver


@pytest.fixture
def py() -> Iterator[AgentDriver]:
    driver = start("python")
    yield driver
    assert driver.close() == 0


@pytest.fixture
def js() -> Iterator[AgentDriver]:
    require_program("node")
    driver = start("javascript")
    yield driver
    assert driver.close() == 0


@pytest.fixture
def sh() -> Iterator[AgentDriver]:
    driver = start("shell")
    yield driver
    assert driver.close() == 0


@pytest.fixture
def rs() -> Iterator[AgentDriver]:
    require_program("rustc")
    driver = start("rust")
    yield driver
    assert driver.close() == 0


def assert_success(result: CellResult) -> None:
    assert result.done["status"] == "success", result.frames
    assert result.done["error"] is None


def assert_done_shape(done: dict[str, Any]) -> None:
    assert set(done) >= {
        "t",
        "id",
        "status",
        "exit_code",
        "execution_time_ms",
        "memory_used_mb",
        "error",
        "restarted",
        "truncated",
    }
    assert isinstance(done["execution_time_ms"], float)
    assert done["execution_time_ms"] >= 0
    assert done["memory_used_mb"] > 0


# ------------------------------------------------------------------------------- python


def test_python_state_and_final_expression(py: AgentDriver) -> None:
    assert_success(py.run("x = 40\ndef f(y):\n    return x + y"))
    result = py.run("print('hi')\nf(2)")
    assert_success(result)
    assert result.text() == "hi\n"
    assert result.displays == [
        {
            "t": "display",
            "id": result.done["id"],
            "kind": "execute_result",
            "data": {"text/plain": "42"},
        }
    ]
    assert_done_shape(result.done)
    assert py.run("None").displays == []
    assert py.run("x;").displays == []


def test_python_cells_run_in_the_main_module(py: AgentDriver) -> None:
    """What looks up ``__main__`` finds the cells' names (a review: the cells ran in a plain
    dict, so ``unittest.main()`` and ``doctest.testmod()`` ran no tests and said OK, and a
    cell's class could not be pickled nor a cell's function handed to a process pool)."""
    py.run("import unittest\nclass T(unittest.TestCase):\n    def test_ok(self):\n"
           "        pass\n    def test_bad(self):\n        self.assertEqual(1, 2)")
    tests = py.run("unittest.main(argv=[''], exit=False)")
    assert "Ran 2 tests" in tests.text("stderr") and "FAILED (failures=1)" in tests.text(
        "stderr"), tests.text("stderr")
    doc = py.run('def half(n):\n    """\n    >>> half(4)\n    3\n    """\n    return n // 2\n'
                 "import doctest\nprint(doctest.testmod())")
    assert "TestResults(failed=1, attempted=1)" in doc.text(), doc.text()
    pickled = py.run("import dataclasses, pickle\n@dataclasses.dataclass\nclass P:\n"
                     "    x: int\nprint(pickle.loads(pickle.dumps(P(3))))")
    assert pickled.text() == "P(x=3)\n", pickled.text("stderr")
    pool = py.run("import multiprocessing\ndef sq(n):\n    return n * n\n"
                  "with multiprocessing.Pool(2) as p:\n    print(p.map(sq, range(5)))",
                  timeout=60)
    assert pool.text() == "[0, 1, 4, 9, 16]\n", pool.text("stderr")
    main = py.run("import __main__, sys\nkept = 5\n"
                  "print(__main__.kept, sys.modules['__main__'] is __main__, __name__)")
    assert main.text() == "5 True __main__\n"


NO_PIP = "Packages cannot be installed here: there is no network and no pip."


@pytest.mark.parametrize(("code", "note"), [
    ("import no_such_package_xyz", NO_PIP),
    ("from no_such_package_xyz.linear_model import LinearRegression", NO_PIP),
    # What a library raises on a missing optional package, as pandas does (a review: the
    # model was told to pip install it).
    ("import importlib\n"
     "def import_optional(name):\n"
     "    try:\n        return importlib.import_module(name)\n"
     "    except ImportError:\n"
     "        raise ImportError(f\"Missing optional dependency '{name}'. Use pip.\")\n"
     "import_optional('no_such_package_xyz')", NO_PIP),
    ("name = input('Your name? ')", "There is no input here: stdin is at its end"),
    # Past the file size limit and the disk's size (a review: a bare OSError).
    ("import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
     "import tempfile\ntempfile.TemporaryFile().write(b'x' * (2 << 20))",
     "A file here may be no larger than the sandbox's file size limit (1 MB;"),
    ("import errno, os\nraise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))",
     "The sandbox's disk is full"),
    # (the module the cells share, broken: a review found the worker ended)
    ("import resource\nresource.getrlimit = None\nraise OSError(27, 'File too large')",
     "A file here may be no larger than the sandbox's file size limit"),
])
def test_python_a_missing_package_or_input_says_why(py: AgentDriver, code: str,
                                                    note: str) -> None:
    result = py.run(code)
    assert result.done["status"] == "error"
    assert note in result.done["error"] and note in result.text("stderr")


def test_python_a_missing_module_of_a_package_gets_no_note(py: AgentDriver) -> None:
    result = py.run("import json.nosuchthing")
    assert result.done["error"] == "ModuleNotFoundError: No module named 'json.nosuchthing'"
    # Nor does an error that only happened while handling a missing package.
    other = py.run("try:\n    import no_such_package_xyz\nexcept ImportError:\n"
                   "    raise ValueError('something else')")
    assert other.done["error"] == "ValueError: something else", other.done


def test_python_latex_and_svg_forms_are_shown(py: AgentDriver) -> None:
    """A sympy expression's ``_repr_latex_`` is a notebook's formula, and model-written code
    imports ``Math``, ``Latex`` and ``SVG`` from IPython.display (a review: text only, and
    an ImportError)."""
    result = py.run(
        "from IPython.display import Math, Latex, SVG\n"
        "class Formula:\n"
        "    def _repr_latex_(self):\n        return '$x^{2}$'\n"
        "    def __repr__(self):\n        return 'x**2'\n"
        "display(Math('x^2'), Latex('$y$'), SVG('<svg></svg>'))\nFormula()")
    assert_success(result)
    # (The text forms are IPython's where it is installed, as on a host.)
    math, latex, svg, formula = (d["data"] for d in result.displays)
    assert (math["text/latex"], latex["text/latex"]) == ("$\\displaystyle x^2$", "$y$")
    assert svg["image/svg+xml"].startswith("<svg"), svg  # IPython's own writes <svg/>
    assert formula == {"text/plain": "x**2", "text/latex": "$x^{2}$"}


def test_python_display_builtin_shows_each_object_as_display_data(py: AgentDriver) -> None:
    """``display`` is a builtin, as in a notebook (model-written code calls it without an
    import): each object in order, with its rich forms, beside printed output."""
    result = py.run(
        "class Table:\n"
        "    def __repr__(self):\n        return 'Table(2)'\n"
        "    def _repr_html_(self):\n        return '<table></table>'\n"
        "class Picture:\n"
        "    def _repr_png_(self):\n        return b'\\x89PNG fake'\n"
        "    def __repr__(self):\n        return 'Picture'\n"
        "class Broken:\n"
        "    def _repr_html_(self):\n        raise RuntimeError('no html')\n"
        "    def __repr__(self):\n        return 'Broken'\n"
        "print('before')\n"
        "display(Table(), 'text', Picture(), Broken(), raw=False)\n"
        "print('after')")
    assert_success(result)
    assert result.text() == "before\nafter\n"
    assert [d["kind"] for d in result.displays] == ["display_data"] * 4
    assert [d["data"] for d in result.displays] == [
        {"text/plain": "Table(2)", "text/html": "<table></table>"},
        {"text/plain": "'text'"},
        {"text/plain": "Picture", "image/png": base64.b64encode(b"\x89PNG fake").decode()},
        {"text/plain": "Broken"},
    ]


def test_python_a_display_too_large_for_a_control_line_loses_rich_forms_not_the_state(
        py: AgentDriver) -> None:
    """Each text form within its cap (100,000 characters), five of non-ASCII characters
    (six bytes each once escaped) made a 3.7 MB control line, past the agent's 2 MiB: the
    interpreter was restarted, its state lost; so did a ``str`` whose ``__len__`` said 1
    (a review). The largest rich forms go until the line fits; text/plain stays."""
    assert_success(py.run("kept = 1"))
    result = py.run(
        "class Snow:\n"
        "    def __repr__(self):\n        return '\\u2603' * 100_000\n"
        "    def _repr_html_(self):\n        return '<b>' + '\\u2603' * 99_990 + '</b>'\n"
        "    def _repr_markdown_(self):\n        return '\\u2603' * 100_000\n"
        "    def _repr_latex_(self):\n        return '$x$'\n"
        "    def _repr_svg_(self):\n        return '\\u2603' * 100_000\n"
        "class Short(str):\n"
        "    def __len__(self):\n        return 1\n"
        "class Liar:\n"
        "    def __repr__(self):\n        return Short('x' * 3_000_000)\n"
        "    def _repr_html_(self):\n        return Short('<i>' * 1_000_000)\n"
        "display(Snow())\n"
        "Liar()")
    assert_success(result)
    assert result.done["restarted"] is False
    snow, liar = (d["data"] for d in result.displays)
    text, _, note = snow["text/plain"].partition("\n")
    assert text == "\u2603" * 100_000
    assert snow["text/latex"] == "$x$"
    assert len(json.dumps(snow)) < 1_900_000 and len(snow) == 4, sorted(snow)  # one went
    (gone,) = {"text/html", "text/markdown", "image/svg+xml"} - set(snow)
    assert re.fullmatch(rf"\[{gone} of [\d,]+ bytes escaped not shown: a display carries"
                        r" 1,900,000 bytes of forms in all\]", note), note
    assert liar == {"text/plain": "x" * 100_000 + "\u2026\n[text/html of 3,000,000 characters"
                                  " not shown: a display carries 100,000 characters at most]"}
    assert_success(py.run("kept"))


@pytest.mark.parametrize("code", [
    # Notes the worker adds (a missing package, a full disk) on an exception whose class
    # raises while it reads or adds them.
    "class E(OSError):\n    @property\n    def __notes__(self):\n        raise SystemExit(0)\n"
    "import errno\nraise E(errno.EFBIG, 'x')",
    "class E(Exception):\n    @property\n    def __notes__(self):\n        raise SystemExit(0)\n"
    "raise E('x')",
    "class E(OSError):\n    def add_note(self, note):\n        raise KeyboardInterrupt\n"
    "import errno\nraise E(errno.ENOSPC, 'x')",
    "class E(Exception):\n    def __str__(self):\n        raise SystemExit(0)\n"
    "    @property\n    def __notes__(self):\n        raise SystemExit(0)\n"
    "raise E('x')",
])
def test_python_an_exception_whose_hooks_raise_is_still_the_cells_error(
        py: AgentDriver, code: str) -> None:
    """The worker reports an exception with the class's own hooks (``__notes__``,
    ``add_note``, ``__str__``), and caught only ``Exception`` around them: a ``SystemExit``
    there made the cell a success and restarted the interpreter, a ``KeyboardInterrupt``
    made it interrupted (a review)."""
    assert_success(py.run("kept = 1"))
    result = py.run(code)
    assert (result.done["status"], result.done["exit_code"]) == ("error", 1), result.done
    assert result.done["restarted"] is False, result.done
    assert result.done["error"].startswith("E"), result.done
    assert_success(py.run("kept"))


def test_python_an_interrupt_in_a_loop_of_displays_stops_it(py: AgentDriver) -> None:
    """The worker's flush before each display keeps what the user's streams raise, but not
    the agent's interrupt: it stops the cell wherever it lands."""
    assert_success(py.run("kept = 1"))
    result = py.run_interrupted("import sys\nwhile True:\n    print('x')\n    display(1)",
                                after=0.5)
    assert (result.done["status"], result.done["restarted"]) == ("interrupted", False)
    assert_success(py.run("kept"))


def test_python_a_stream_whose_flush_raises_does_not_end_the_interpreter(
        py: AgentDriver) -> None:
    """The worker flushes the user's streams before each display: a ``flush`` that raised
    ``SystemExit`` ended the interpreter, one that raised ``KeyboardInterrupt`` made the
    cell interrupted (a review)."""
    assert_success(py.run("kept = 1"))
    for raised in ("SystemExit(0)", "KeyboardInterrupt"):
        result = py.run(
            "import sys\n"
            "class Out:\n"
            "    def write(self, s):\n        return len(s)\n"
            f"    def flush(self):\n        raise {raised}\n"
            "saved, sys.stdout = sys.stdout, Out()\n"
            "try:\n    display(1)\nfinally:\n    sys.stdout = saved\n"
            "2")
        assert_success(result)
        assert [d["data"]["text/plain"] for d in result.displays] == ["1", "2"], raised
        assert result.done["restarted"] is False
    assert_success(py.run("kept"))


def test_python_display_from_threads_keeps_the_control_pipe_whole(py: AgentDriver) -> None:
    """Found by a review: displays of ~530 KB from four threads at once (each more than a pipe
    takes in one write) must not interleave on the control pipe, or the agent sees a broken
    protocol and restarts the worker."""
    result = py.run(
        "import threading\n"
        "class Big:\n    def _repr_png_(self):\n        return b'x' * 400_000\n"
        "def show():\n    for _ in range(5):\n        display(Big())\n"
        "threads = [threading.Thread(target=show) for _ in range(4)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print('joined')", max_output_bytes=1 << 30)
    assert_success(result)
    assert result.text() == "joined\n"
    assert len(result.displays) == 20
    assert {len(d["data"]["image/png"]) for d in result.displays} == {533_336}
    assert shown(py.run("len(threads)")) == "4"  # the same worker: no restart


def test_python_final_expression_carries_its_png_form(py: AgentDriver) -> None:
    result = py.run("class P:\n    def _repr_png_(self):\n        return b'png'\nP()")
    assert_success(result)
    (shown,) = result.displays
    assert shown["kind"] == "execute_result"
    assert shown["data"]["image/png"] == base64.b64encode(b"png").decode()
    assert shown["data"]["text/plain"].startswith("<__main__.P object")
    # A PNG form that is not bytes, or too large to send, is left out; the text stays.
    odd = py.run("class Q:\n    def _repr_png_(self):\n        return 'str'\nQ()")
    assert set(odd.displays[0]["data"]) == {"text/plain"}
    big = py.run("class R:\n    def _repr_png_(self):\n        return b'x' * 600_000\nR()",
                 max_output_bytes=1 << 30)
    # ...and says so (it was left out without a word: a review)
    assert set(big.displays[0]["data"]) == {"text/plain"}
    assert big.displays[0]["data"]["text/plain"].endswith(
        ">\n[image/png of 600,000 bytes not shown: a display carries 525,000 bytes at most]")
    both = py.run("class B:\n    def _repr_png_(self):\n        return b'x' * 600_000\n"
                  "    def _repr_jpeg_(self):\n        return b'y' * 530_000\nB()",
                  max_output_bytes=1 << 30)
    assert set(both.displays[0]["data"]) == {"text/plain"}
    assert both.displays[0]["data"]["text/plain"].endswith(  # each form (only PNG was named)
        ">\n[image/png of 600,000 bytes not shown: a display carries 525,000 bytes at most]"
        "\n[image/jpeg of 530,000 bytes not shown: a display carries 525,000 bytes at most]")
    fits = py.run("class S:\n    def _repr_png_(self):\n        return b'x' * 525_000\nS()",
                  max_output_bytes=1 << 30)
    assert len(fits.displays[0]["data"]["image/png"]) == 700_000
    assert "not shown" not in fits.displays[0]["data"]["text/plain"]
    html = py.run("class H:\n    def _repr_html_(self):\n        return '<p>' * 40_000\nH()")
    assert set(html.displays[0]["data"]) == {"text/plain"}
    assert html.displays[0]["data"]["text/plain"].endswith(
        "\n[text/html of 120,000 characters not shown: a display carries 100,000 characters"
        " at most]")


def test_python_exception_traceback_hides_worker(py: AgentDriver) -> None:
    result = py.run("a = 1\n1/0")
    assert result.done["status"] == "error"
    assert result.done["error"] == "ZeroDivisionError: division by zero"
    assert result.done["exit_code"] == 1
    stderr = result.text("stderr")
    assert stderr.startswith("Traceback (most recent call last):\n")
    assert "1/0" in stderr
    assert "worker_python" not in stderr
    # State survives an exception.
    assert py.run("a").displays[0]["data"]["text/plain"] == "1"


def test_python_traceback_in_user_code_shows_an_earlier_cells_source(py: AgentDriver) -> None:
    assert_success(py.run("def f():\n    return 1 / 0"))
    result = py.run("import traceback\ntry:\n    f()\nexcept ZeroDivisionError:\n"
                    "    traceback.print_exc()")
    assert_success(result)
    assert "return 1 / 0" in result.text("stderr"), result.text("stderr")


def test_python_traceback_is_not_shadowed_by_the_users_modules(py: AgentDriver) -> None:
    """The worker imports traceback when it first formats one (and traceback imports ast as it
    formats); a cell's files named like the modules it needs (in the working directory, first
    on sys.path) must not stand in."""
    shadow = ("import sys\n"
              "sys.stderr.write('the user module was imported\\n')\n"
              "raise RuntimeError('the user module was imported')\n")
    assert_success(py.run(
        f"import os, sys, tempfile\nos.chdir(tempfile.mkdtemp())\nshadow = {shadow!r}\n"
        "for name in ('traceback', 'linecache', 'tokenize', 'ast'):\n"
        "    with open(name + '.py', 'w') as f:\n"
        "        f.write(shadow)\n"
        "    sys.modules.pop(name, None)\n"))
    result = py.run("x = 1\ny = x / 0")  # part of a line: traceback places carets
    assert result.done["error"] == "ZeroDivisionError: division by zero"
    stderr = result.text("stderr")
    assert stderr.startswith("Traceback (most recent call last):\n"), stderr
    assert "y = x / 0" in stderr and "user module" not in stderr
    assert_success(py.run("import shutil, os\nd = os.getcwd()\nos.chdir('/')\n"
                          "shutil.rmtree(d)"))


def test_python_traceback_after_the_working_directory_was_removed(py: AgentDriver) -> None:
    assert_success(py.run("import os, sys, tempfile\nd = tempfile.mkdtemp()\nos.chdir(d)\n"
                          "os.rmdir(d)\nfor name in ('traceback', 'linecache'):\n"
                          "    sys.modules.pop(name, None)"))
    result = py.run("1/0")
    assert result.done["error"] == "ZeroDivisionError: division by zero"
    assert result.text("stderr").startswith("Traceback (most recent call last):\n")
    assert_success(py.run("async def f():\n    return 2\nawait f()"))  # asyncio loads too


def test_python_magics_fail_with_a_note_and_matplotlib_inline_is_ignored(
        py: AgentDriver) -> None:
    """Model-written code often starts with ``%matplotlib inline`` (the whole cell failed
    with a bare SyntaxError), and a ``%`` or ``!`` line said only "invalid syntax" (a
    review): the first is read as ``pass``, the others fail with a note saying why."""
    ok = py.run("%matplotlib inline\nx = 41\nif x:\n    %matplotlib agg\nx + 1")
    assert_success(ok)
    assert ok.text() == ""
    assert [f["data"]["text/plain"] for f in ok.frames if f["t"] == "display"] == ["42"]
    # Help and an assigned shell escape got a bare SyntaxError (a second review).
    for code in ("!pip install requests", "x = 1\n%timeit x + 1", "files = !ls -la",
                 "a, b.c = %sx ls", "x = 1\nx?", "len??", "?len"):
        failed = py.run(code)
        assert failed.done["status"] == "error", code
        assert failed.done["error"].startswith("SyntaxError: invalid syntax (IPython magics"), (
            code, failed.done)
        assert ("IPython magics (%...), shell escapes (!...) and help (x?) are not available"
                in failed.text("stderr")), code
    # Not IPython's: no note.
    for code in ("x = 1 +", "if x == !1: pass", "# what?\n)", 'print("Really?',
                 "x = (1 +  # why?", "x = 1 ?", "a.b()?"):
        failed = py.run(code)
        assert failed.done["status"] == "error", code
        assert "IPython" not in failed.text("stderr"), (code, failed.text("stderr"))


@pytest.mark.parametrize("code", [
    "import socket\nsocket.getaddrinfo('no-such-host.invalid', 80)",
    "import urllib.request\nurllib.request.urlopen('http://no-such-host.invalid/', timeout=5)",
    # Raised by a library from what failed, as requests and httpx do.
    "import socket\ntry:\n    socket.getaddrinfo('no-such-host.invalid', 80)\n"
    "except OSError as e:\n    raise RuntimeError('could not fetch') from e",
    "import errno\nraise OSError(errno.ENETUNREACH, 'Network is unreachable')",
])
def test_python_no_network_errors_say_there_is_no_network(py: AgentDriver, code: str) -> None:
    """A model's first fetch failed with 30 lines ending in "Temporary failure in name
    resolution" (a review of model-written cells)."""
    result = py.run(code)
    assert result.done["status"] == "error"
    assert "There is no network here" in result.text("stderr"), result.text("stderr")
    assert "There is no network here" in result.done["error"]


@pytest.mark.parametrize("code", [
    "import errno\nraise OSError(errno.EAFNOSUPPORT, 'Address family not supported by protocol')",
    "import errno, urllib.error\n"
    "raise urllib.error.URLError(OSError(errno.EAFNOSUPPORT, 'Address family not supported'))",
])
def test_python_refused_sockets_say_so(py: AgentDriver, code: str) -> None:
    """Under runc a sandbox opens no TCP or UDP socket by default: "Address family not
    supported by protocol" alone reads as an IPv6 problem (a review)."""
    result = py.run(code)
    assert result.done["status"] == "error"
    assert "TCP and UDP sockets are off in this sandbox" in result.text("stderr"), result
    assert "TCP and UDP sockets are off" in result.done["error"]


def test_js_refused_sockets_say_so(js: AgentDriver) -> None:
    result = js.run("throw Object.assign(new Error('listen EAFNOSUPPORT: address family not"
                    " supported 127.0.0.1'), { code: 'EAFNOSUPPORT' })")
    assert result.done["status"] == "error"
    assert "TCP and UDP sockets are off in this sandbox" in result.text("stderr"), result
    assert "TCP and UDP sockets are off" in result.done["error"]


def test_python_other_errors_get_no_network_note(py: AgentDriver) -> None:
    """Nor does an exception whose attributes raise, even SystemExit or KeyboardInterrupt
    (that ended the interpreter, or made the cell interrupted: a review)."""
    for code in ("raise ConnectionRefusedError(111, 'refused')", "open('/no/such/file')",
                 "class Odd(Exception):\n    @property\n    def __cause__(self):\n"
                 "        raise ValueError\nraise Odd('x')",
                 "class Odd(Exception):\n    @property\n    def reason(self):\n"
                 "        raise SystemExit(3)\nraise Odd('x')",
                 "class Odd(Exception):\n    @property\n    def reason(self):\n"
                 "        raise KeyboardInterrupt\nraise Odd('x')",
                 "class Odd(OSError):\n    @property\n    def errno(self):\n"
                 "        raise SystemExit(4)\nraise Odd('x')"):
        result = py.run(code)
        assert result.done["status"] == "error" and not result.done["restarted"], (
            code, result.done)
        assert "network" not in result.text("stderr"), (code, result.text("stderr"))


def test_output_a_cell_printed_comes_before_its_display(py: AgentDriver) -> None:
    """The agent read the control pipe before the output pipes within one wait, so a
    display overtook what the cell had printed before it (299 of 300 here; a review of
    model-written cells saw ``print('x'); 'value'`` arrive value first)."""
    for _ in range(3):
        result = py.run("import sys\nfor i in range(300):\n    print(i)\n"
                        "    sys.stderr.write(f'{i}\\n')\n    display(i)")
        assert_success(result)
        seen: dict[str, set[int]] = {"stdout": set(), "stderr": set()}
        displays = 0
        for frame in result.frames:
            if frame["t"] == "out":
                seen[frame["name"]].update(int(x) for x in frame["text"].split())
            elif frame["t"] == "display":
                i = int(frame["data"]["text/plain"])
                assert i in seen["stdout"] and i in seen["stderr"], (
                    f"display {i} came before the output printed before it")
                displays += 1
        assert displays == 300


def test_output_a_cell_prints_after_a_display_comes_after_it(py: AgentDriver) -> None:
    """The agent read a display when it woke, and by then the cell had often printed its
    next line: ``print("A"); display("B"); print("C")`` came out A, C, B in 8 of 12 runs (a
    review). A display the cell makes waits for the agent's answer, so each one sits exactly
    between the output printed before it and after it, on both streams."""
    result = py.run("import sys\nfor i in range(200):\n    print(f'A{i}')\n"
                    "    sys.stderr.write(f'E{i}\\n')\n    display(f'B{i}')\n"
                    "    print(f'C{i}')\nprint('end')")
    assert_success(result)
    order: list[str] = []
    for frame in result.frames:
        if frame["t"] == "out":
            order += frame["text"].split()
        elif frame["t"] == "display":
            order.append(frame["data"]["text/plain"].strip("'"))
    expected = [x for i in range(200) for x in (f"A{i}", f"E{i}", f"B{i}", f"C{i}")]
    # stderr is its own pipe: only its place against the displays is fixed
    assert [x for x in order if x[0] != "E"] == [x for x in expected if x[0] != "E"] + ["end"]
    assert [x for x in order if x[0] in "EB"] == [x for x in expected if x[0] in "EB"]


def test_python_an_interrupt_is_the_agents_under_a_users_sigint_handler(
        py: AgentDriver) -> None:
    """With ``signal.default_int_handler`` installed (as libraries do), the worker's handler
    does not see the agent's SIGINT, and the mark on the control pipe tells the interrupt
    from the user's own KeyboardInterrupt. In a loop of displays it was lost: read with an
    answer just as the SIGINT raised (the cell ended as an error), or swallowed as a
    stream's flush's (the cell ran on until the interpreter was restarted; a review)."""
    assert_success(py.run("kept = 1\nimport signal\n"
                          "signal.signal(signal.SIGINT, signal.default_int_handler)"))
    seen = []
    for n in range(30):
        result = py.run_interrupted("i = 0\nwhile True:\n    display(i); i += 1",
                                    after=(0.02, 0.05, 0.1)[n % 3], timeout=8)
        seen.append((result.done["status"], result.done["restarted"]))
    assert seen == [("interrupted", False)] * 30
    assert_success(py.run("kept"))


def test_python_a_display_that_waits_for_the_agent_can_be_interrupted(
        py: AgentDriver) -> None:
    """An interrupt that lands while a display waits for the agent's answer ends the cell;
    the late answer is dropped, not run as a cell, and later displays still wait for their
    own (each answer names its display)."""
    assert_success(py.run("kept = 1"))
    for _ in range(3):
        result = py.run_interrupted("while True:\n    display(1)", after=0.3)
        assert (result.done["status"], result.done["restarted"]) == ("interrupted", False)
        result = py.run("print('a'); display('b'); print('c')\nkept")
        assert_success(result)
        kinds = [f["t"] if f["t"] != "display" else f["data"]["text/plain"]
                 for f in result.frames if f["t"] in ("out", "display")]
        assert kinds == ["out", "'b'", "out", "1"], result.frames


def stderr_of_the_next_cell(agent: AgentDriver, setup: str) -> str:
    """Run ``setup`` (it sets ``kept = 1`` and leaves background work that fails soon), let
    the work fail between cells, and return the stderr of the next cell, ``kept + 1``, which
    succeeds all the same."""
    agent.run(setup)
    time.sleep(0.5)  # the background work fails between cells
    result = agent.run("kept + 1")
    assert_success(result)
    assert result.displays[0]["data"]["text/plain"] == "2"
    return result.text("stderr")


def test_python_a_threads_exception_between_cells_is_shown_at_the_next_cells_start(
        py: AgentDriver) -> None:
    """Python printed it between cells, where output reaches no one (a review of
    model-written cells). One raised while a cell runs is on that cell's stderr, as before."""
    stderr = stderr_of_the_next_cell(
        py, "import threading, time\nkept = 1\ndef late(i):\n    time.sleep(0.05)\n"
            "    raise ValueError(f'late {i}')\n"
            "for i in range(5):\n    threading.Thread(target=late, args=(i,)).start()")
    assert stderr.startswith("Exception in thread "), stderr
    assert stderr.count("(raised between cells, by a thread an earlier cell started)") == 3
    assert stderr.count("ValueError: late") == 3, stderr
    assert stderr.endswith("(and 2 more exceptions between cells)\n"), stderr
    assert py.run("kept").text("stderr") == ""  # shown once
    # formatted one at a time: their imports of traceback, and their changes to sys.path
    # while importing, came at once (one error "could not be shown" in a few runs)
    assert py.run("import sys\nprint(sys.path[0] == '')").text() == "True\n"
    during = py.run("t = threading.Thread(target=lambda: 1/0)\nt.start()\nt.join()")
    assert_success(during)
    assert "ZeroDivisionError" in during.text("stderr")
    assert "between cells" not in during.text("stderr")


def test_python_held_errors_survive_a_stderr_that_raises(py: AgentDriver) -> None:
    """Printing a held thread error through a ``sys.stderr`` whose ``write`` raises
    ``SystemExit`` ended the interpreter (a review)."""
    py.run("import sys, threading, time\nkept = 1\n"
           "def late():\n    time.sleep(0.1)\n    raise ValueError('late')\n"
           "threading.Thread(target=late).start()\n"
           "class Bad:\n    def write(self, text):\n        raise SystemExit(3)\n"
           "    def flush(self):\n        pass\nsys.stderr = Bad()")
    time.sleep(0.5)
    result = py.run("print(kept)")
    assert (result.done["status"], result.done["restarted"]) == ("success", False), result.done
    assert result.text() == "1\n"


def test_python_exception_notes_follow_the_message_in_the_error(py: AgentDriver) -> None:
    """The summary was the last note's last line, not ``Type: message``."""
    result = py.run("e = ValueError('bad')\ne.add_note('hint one')\n"
                    "e.add_note('two\\nlines')\nraise e")
    assert result.done["error"] == "ValueError: bad (hint one; two lines)"
    assert "hint one\ntwo\nlines\n" in result.text("stderr")


def test_python_syntax_error(py: AgentDriver) -> None:
    result = py.run("x = = 1")
    assert result.done["status"] == "error"
    assert result.done["error"].startswith("SyntaxError")


@pytest.mark.parametrize(
    ("code", "status", "exit_code", "error", "stderr"),
    [
        ("import sys; sys.exit(3)", "error", 3, "SystemExit: 3", ""),
        ("raise SystemExit(0)", "success", 0, None, ""),
        ("import sys; sys.exit()", "success", 0, None, ""),
        ("exit(2)", "error", 2, "SystemExit: 2", ""),
        ("import sys; sys.exit('no input file')", "error", 1, "SystemExit: no input file",
         "no input file\n"),
        ("import sys; sys.exit(256 + 4)", "error", 4, "SystemExit: 260", ""),
        ("import sys\ndef main():\n    print('ran')\n    return 5\nsys.exit(main())",
         "error", 5, "SystemExit: 5", ""),
        ("import asyncio, sys\nawait asyncio.sleep(0)\nsys.exit(6)", "error", 6,
         "SystemExit: 6", ""),
        # Past a C long, python3 -c exits 255 (a review found 0, a success, for 2**63).
        ("import sys; sys.exit(2**63)", "error", 255, "SystemExit: 9223372036854775808", ""),
        ("import sys; sys.exit(2**64 + 3)", "error", 255, "SystemExit: 18446744073709551619",
         ""),
        ("import sys; sys.exit(10**5000)", "error", 255, "SystemExit: an int of 16610 bits",
         ""),
        ("import sys; sys.exit(-1)", "error", 255, "SystemExit: -1", ""),
        ("import sys; sys.exit(True)", "error", 1, "SystemExit: 1", ""),
    ],
)
def test_python_sys_exit_ends_the_cell_and_keeps_the_state(
        py: AgentDriver, code: str, status: str, exit_code: int, error: str | None,
        stderr: str) -> None:
    """``sys.exit`` ends the cell, with the exit code ``python3 -c`` would give, and the
    interpreter stays, as in IPython. It restarted the interpreter, losing the session's
    state, for model-written code ending in ``sys.exit(main())``."""
    py.run("keep = 1")
    result = py.run(code)
    assert (result.done["status"], result.done["exit_code"]) == (status, exit_code)
    assert result.done["error"] == error
    assert result.done["restarted"] is False
    assert result.text("stderr") == stderr
    after = py.run("import asyncio\nawait asyncio.sleep(0)\nprint(keep)")
    assert after.text() == "1\n" and after.done["restarted"] is False, after.done


@pytest.mark.parametrize("code", [
    "class C:\n    __class__ = property(lambda self: int)\n",  # isinstance(C(), int) lies
    "class C:\n    def __str__(self):\n        raise SystemExit(7)\n",
    "class C:\n    def __str__(self):\n        raise KeyboardInterrupt\n",
])
def test_python_sys_exit_with_an_object_that_misbehaves_ends_only_the_cell(
        py: AgentDriver, code: str) -> None:
    """The exit code of an object that is no int is 1, as for python3 -c, whatever the
    object does: these ended the worker (state lost), or made the cell interrupted."""
    py.run("keep = 1")
    result = py.run(code + "import sys\nsys.exit(C())")
    assert (result.done["status"], result.done["exit_code"]) == ("error", 1), result.done
    assert result.done["error"].startswith("SystemExit: "), result.done
    assert result.done["restarted"] is False
    assert py.run("print(keep)").text() == "1\n"


def test_python_exit_and_quit_leave_stdin_open(py: AgentDriver) -> None:
    """site's exit() closes sys.stdin; the interpreter now stays, and input() then failed
    with ValueError for the rest of the session (a review)."""
    for builtin in ("exit", "quit"):
        assert py.run(f"{builtin}()").done["status"] == "success"
        after = py.run("import sys\nprint(sys.stdin.closed)\ninput()")
        assert after.text() == "False\n", after.text("stderr")
        assert after.done["error"].startswith("EOFError"), after.done
    assert "exit()" in py.run("exit").displays[0]["data"]["text/plain"]


def test_python_an_interrupt_through_the_users_own_sigint_handler_is_interrupted(
        py: AgentDriver) -> None:
    """The agent's interrupt is known by its mark, whichever handler raised the
    KeyboardInterrupt (with the user's, the cell was reported an error, exit code 1)."""
    py.run("import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)")
    for code in ("import time\ntime.sleep(30)", "while True:\n    pass"):
        result = py.run_interrupted(code)
        assert (result.done["status"], result.done["exit_code"]) == ("interrupted", 130), (
            code, result.done)
    assert py.run("raise KeyboardInterrupt").done["status"] == "error"


def test_python_sys_exit_in_a_forked_child_ends_the_child_with_its_code(
        py: AgentDriver) -> None:
    py.run("keep = 1")
    result = py.run("import os, sys\npid = os.fork()\nif not pid:\n    sys.exit(5)\n"
                    "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))")
    assert result.text() == "5\n"
    assert result.done["status"] == "success" and result.done["restarted"] is False
    assert py.run("print(keep)").text() == "1\n"


def test_python_keyboard_interrupt_raised_by_the_code_is_an_error(py: AgentDriver) -> None:
    """Only the agent's interrupt makes a cell ``interrupted``; a ``KeyboardInterrupt``
    the code raises is an exception like any other (it was reported as interrupted)."""
    py.run("keep = 1")
    result = py.run("def stop():\n    raise KeyboardInterrupt('by the code')\nstop()")
    assert (result.done["status"], result.done["exit_code"]) == ("error", 1)
    assert result.done["error"] == "KeyboardInterrupt: by the code"
    assert "in stop" in result.text("stderr")
    interrupted = py.run_interrupted("import time\nwhile True:\n    time.sleep(0.01)")
    assert interrupted.done["status"] == "interrupted"
    again = py.run("raise KeyboardInterrupt")
    assert again.done["status"] == "error", again.done
    assert py.run("print(keep)").text() == "1\n"


@pytest.mark.parametrize(("language", "code", "error"), [
    ("python", "import os, threading, time\n"
               "threading.Thread(target=lambda: (time.sleep(0.3), os._exit(5))).start()",
     "interpreter exited with code 5"),
    # Between cells no cell's memory-kill count tells a kill by the OOM killer apart.
    ("shell", "(sleep 0.3; kill -9 $$) &",
     "shell was killed by signal SIGKILL (killed, possibly by the out-of-memory killer)"),
    ("javascript", "setTimeout(() => process.exit(0), 300).unref()",
     "interpreter exited with code 0"),
])
def test_an_interpreter_that_ends_between_cells_is_told_at_once(
        language: str, code: str, error: str) -> None:
    """Work a cell left running ends the interpreter after the cell: its state is gone.
    The service was told only with the next cell's ``done`` (``restarted``), so a client
    waiting between cells believed its variables were still there. Now a ``lost`` frame
    comes at once; the next cell still says ``restarted``, and runs in a fresh one."""
    if language == "javascript":
        require_program("node")
    driver = start(language)
    try:
        first = driver.run(code)
        assert (first.done["status"], first.done["restarted"]) == ("success", False), first
        _, lost = driver.recv(10)
        assert lost == {"t": "lost", "error": error}
        after = driver.run({"python": "print(1)", "shell": "echo 1",
                            "javascript": "console.log(1)"}[language])
        assert after.text() == "1\n"
        assert (after.done["status"], after.done["restarted"]) == ("success", True), after
    finally:
        assert driver.close() == 0


@pytest.mark.parametrize(
    ("code", "signum", "description"),
    [
        ("import os; os.abort()", 6, "SIGABRT (aborted)"),
        ("import ctypes; ctypes.string_at(0)", 11, "SIGSEGV (segmentation fault)"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 9,
         SIGKILL_DESCRIPTION),
    ],
)
def test_python_crash_restarts(py: AgentDriver, code: str, signum: int,
                               description: str) -> None:
    result = py.run("print('before', flush=True)\n" + code)
    assert result.text() == "before\n"
    assert result.done["status"] == "error"
    assert result.done["restarted"] is True
    assert result.done["exit_code"] == 128 + signum
    assert result.done["error"] == (
        f"interpreter was killed by signal {description}; state was reset"
    )
    assert_success(py.run("1 + 1"))


@pytest.mark.parametrize(("language", "kept", "code", "raised"), [
    ("python", "kept = 1", "raise ValueError('\u00e9' * 400_000)", "ValueError: \u00e9\u00e9"),
    # Node's JSON keeps non-ASCII as UTF-8 (two bytes each) but escapes control characters.
    ("javascript", "var kept = 1", "throw new RangeError('\\u0001'.repeat(400000))",
     "RangeError: \u0001\u0001"),
])
def test_a_huge_error_message_ends_the_cell_not_the_interpreter(
        request: pytest.FixtureRequest, language: str, kept: str, code: str,
        raised: str) -> None:
    """An exception whose message is 400,000 non-ASCII characters made the worker's done line
    (each escaped to six bytes) pass the agent's 2 MiB bound for a control line: the cell
    ended as "broke the control protocol" and the interpreter was restarted, its state lost
    (an Open WebUI review). The worker cuts the summary; the agent keeps 2000 characters."""
    driver: AgentDriver = request.getfixturevalue({"python": "py", "javascript": "js"}[language])
    assert_success(driver.run(kept))
    result = driver.run(code)
    assert result.done["status"] == "error"
    assert result.done["restarted"] is False, result.done
    assert result.done["error"].startswith(raised), result.done["error"][:200]
    assert len(result.done["error"]) <= 2000
    assert_success(driver.run("kept"))


def test_lone_surrogates_from_the_worker_leave_as_question_marks(py: AgentDriver) -> None:
    """The worker writes its control lines as ASCII JSON, so a lone surrogate in a repr or an
    exception message reaches the agent as a ``\\ud800`` escape; frames are UTF-8, where it
    has no encoding: it is replaced by '?' (Python's ``encode("utf-8", "replace")``)."""
    shown = py.run("class Odd:\n    def __repr__(self):\n        return 'a\\ud800b\\udfffc'\n"
                   "Odd()")
    assert_success(shown)
    assert shown.displays[0]["data"] == {"text/plain": "a?b?c"}
    failed = py.run("raise ValueError('x\\udc80y')")
    assert failed.done["status"] == "error"
    assert failed.done["error"] == "ValueError: x?y"
    # A well-formed pair is one character, not two replacements.
    pair = py.run("class Pair:\n    def __repr__(self):\n        return '\\ud83d\\ude00'\n"
                  "Pair()")
    assert pair.displays[0]["data"] == {"text/plain": "\U0001f600"}


def test_python_os_exit_restarts(py: AgentDriver) -> None:
    result = py.run("import os; os._exit(7)")
    assert (result.done["status"], result.done["exit_code"]) == ("error", 7)
    assert result.done["restarted"] is True


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.parametrize(("fixture", "start", "die"), [
    ("py", "import subprocess\nprint(subprocess.Popen(['sleep', '60']).pid)",
     "import os; os._exit(3)"),
    ("sh", "sleep 60 &\necho $!", "exit 3"),
])
def test_what_a_dead_interpreter_started_ends_with_it(
        request: pytest.FixtureRequest, fixture: str, start: str, die: str) -> None:
    """An interpreter that died (the memory limit, a crash, an exit) left what its cells had
    started running: joblib's workers held the memory that had killed it, and every later
    cell was killed for it (a review). Its state is lost, and so is what it started."""
    driver: AgentDriver = request.getfixturevalue(fixture)
    started = driver.run(start)
    assert_success(started)
    pid = int(started.text())
    assert _running(pid)
    died = driver.run(die)
    assert (died.done["exit_code"], died.done["restarted"]) == (3, True), died.done
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)
    assert_success(driver.run("echo ok" if fixture == "sh" else "print('ok')"))


def test_python_interrupt_keeps_state(py: AgentDriver) -> None:
    py.run("state = 'kept'")
    result = py.run_interrupted("import time\nwhile True:\n    time.sleep(0.01)")
    assert result.done["status"] == "interrupted"
    assert result.done["restarted"] is False
    # where it stopped, as Python shows it: a bare "KeyboardInterrupt" did not say (a review)
    stderr = result.text("stderr")
    assert stderr.startswith("Traceback (most recent call last):\n"
                             '  File "<cell-2>", line 3, in <module>\n'), stderr
    assert stderr.endswith("\nKeyboardInterrupt\n"), stderr
    assert "worker_python" not in stderr
    assert py.run("state").displays[0]["data"]["text/plain"] == "'kept'"


def test_python_a_runaway_recursions_traceback_shows_its_last_frames(py: AgentDriver) -> None:
    """After ``sys.setrecursionlimit(10**6)`` (common in model-written searches) formatting
    the traceback took 14 s, past the cell's limit: no traceback, state lost (a review). It
    shows the last 1,000 frames, as Python's own printer does, and says how many it left."""
    py.run("kept = 1\nimport sys\nsys.setrecursionlimit(200_000)")
    result = py.run("def down(n):\n    return 1 + down(n + 1)\ndown(0)", timeout=60)
    assert result.done["status"] == "error"
    assert result.done["error"] == "RecursionError: maximum recursion depth exceeded"
    stderr = result.text("stderr")
    assert stderr.startswith("Traceback (most recent call last):\n  [the first "), stderr
    assert " frames are not shown]\n  File " in stderr
    assert stderr.endswith("  [Previous line repeated 997 more times]\n"
                           "RecursionError: maximum recursion depth exceeded\n"), stderr
    assert stderr.count('File "<cell-2>"') == 3  # the 1,000 shown: three, then repeats
    assert py.run("print(kept)").text() == "1\n"


def test_python_chained_exceptions_show_their_last_frames_too(py: AgentDriver) -> None:
    """Only the outer exception's traceback was cut: one raised ``from`` a runaway
    recursion took 17.7 s in the image, and an interrupt while such an error was handled
    as long, past the interrupt's grace: state lost (a review)."""
    py.run("kept = 1\nimport sys\nsys.setrecursionlimit(200_000)\n"
           "def down(n):\n    return 1 + up(n + 1)\n"  # no line repeats: nothing folded
           "def up(n):\n    return 1 + down(n + 1)")
    started = time.monotonic()
    chained = py.run("try:\n    down(0)\nexcept RecursionError as e:\n"
                     "    raise RuntimeError('search failed') from e", timeout=60)
    assert chained.done["error"] == "RuntimeError: search failed"
    assert chained.done["truncated"] is False  # 200,000 frames were megabytes of text
    stderr = chained.text("stderr")
    # the cause is cut too (with no line of its own); the outer error has one frame
    assert "frames are not shown]" not in stderr, stderr
    assert stderr.count('File "<cell-1>"') == 1000
    assert stderr.endswith("RuntimeError: search failed\n")
    handled = py.run_interrupted("try:\n    down(0)\nexcept RecursionError:\n"
                                 "    while True:\n        pass", after=3.0)
    assert handled.done["status"] == "interrupted", handled.done
    assert handled.done["restarted"] is False
    assert handled.text("stderr").endswith("\nKeyboardInterrupt\n")
    assert time.monotonic() - started < 40  # generous: the slow format took minutes here
    assert py.run("print(kept)").text() == "1\n"


def test_python_an_interrupt_shows_no_frame_of_the_worker(py: AgentDriver) -> None:
    """Where the worker ran the user's code (``print`` of an object whose ``__str__``
    spins) its frames showed, and a KeyboardInterrupt turned into another error kept the
    worker's SIGINT handler as its last frame (a review)."""
    spun = py.run_interrupted("class A:\n    def __str__(self):\n        while True:\n"
                              "            pass\nprint(A())")
    assert spun.done["status"] == "interrupted"
    assert "worker_python" not in spun.text("stderr")
    assert 'line 3, in __str__' in spun.text("stderr")
    turned = py.run_interrupted("import time\ntry:\n    time.sleep(30)\n"
                                "except KeyboardInterrupt as e:\n"
                                "    raise RuntimeError('cancelled') from e")
    assert "RuntimeError: cancelled" in turned.text("stderr")
    assert "worker_python" not in turned.text("stderr"), turned.text("stderr")


def test_python_an_interrupted_await_cell_does_not_run_on(py: AgentDriver) -> None:
    """Its task stayed pending in the worker's loop and resumed in every later cell that
    awaited, printing into it (a review); it is cancelled, as asyncio.run cancels its main
    task on Ctrl-C, and its clean-up runs."""
    result = py.run_interrupted(
        "import asyncio\nasync def tick():\n    try:\n        while True:\n"
        "            await asyncio.sleep(0.05)\n            print('tick')\n"
        "    finally:\n        print('cleaned up')\nawait tick()")
    assert result.done["status"] == "interrupted"
    assert result.text().endswith("cleaned up\n")
    later = py.run("await asyncio.sleep(0.5)\nprint('done')")
    assert later.text() == "done\n"
    # Where the cell stood, as for a cell without await (its traceback was the event
    # loop's, in selectors.py, with no line of the cell's).
    stderr = result.text("stderr")
    assert '  File "<cell-1>", line 9, in <module>\n    await tick()\n' in stderr, stderr
    assert '  File "<cell-1>", line 5, in tick\n' in stderr, stderr
    assert stderr.endswith("KeyboardInterrupt\n") and "selectors" not in stderr, stderr
    assert "CancelledError" not in stderr, stderr


def test_python_forked_children_never_speak_for_the_worker(py: AgentDriver) -> None:
    """Children a cell forked end with their copy of the cell; the worker's state survives."""
    py.run("state = 'kept'")
    forked = py.run("import os\npid = os.fork()\nif pid:\n    os.waitpid(pid, 0)\n"
                    "print('parent' if pid else 'child')")
    assert forked.done["status"] == "success"
    assert forked.done["restarted"] is False
    assert sorted(forked.text("stdout").split()) == ["child", "parent"]
    result = py.run_interrupted("import os, time\nfor _ in range(3):\n    os.fork()\n"
                                "while True:\n    time.sleep(0.01)")
    assert result.done["status"] == "interrupted"
    after = py.run("print(state)")
    assert after.done["restarted"] is False, after.done
    assert after.text("stdout") == "kept\n"


def test_interrupt_when_idle_is_ignored(py: AgentDriver) -> None:
    py.run("v = 5")
    py.send({"t": "interrupt"})
    time.sleep(0.2)
    assert py.run("v").displays[0]["data"]["text/plain"] == "5"


#: Cells that run until they are interrupted: one that waits, one that spins. The shell's
#: waits in a builtin without forking (a pty master nobody writes to): ``<(:)`` forks a
#: subshell first, and a SIGINT that lands as bash forks is lost (a known limit, see
#: ``test_interrupt_sent_with_the_cell_stops_it``), which failed a CI run once. It waits
#: 0.1 s at a time: bash also loses a SIGINT that lands after its last look at pending traps
#: and before its blocking read begins (protocol/agent.md), until the read ends. With
#: ``read -t 100`` that failed two CI runs (1 in 3,000 cells here with the agent, the worker
#: and a busy process on one CPU); these tests are about the interrupt's mark, not that race.
_WAITS = {"py": "import time\ntime.sleep(100)",
          "js": "await new Promise((resolve) => setTimeout(resolve, 100_000))",
          "sh": "while :; do read -t 0.1 <> /dev/ptmx; done"}
_SPINS = {"py": "while True:\n    pass", "sh": "while :; do :; done"}
_SET = {"py": "kept = 'yes'", "js": "var kept = 'yes'", "sh": "kept=yes"}
_GET = {"py": "print(kept)", "js": "console.log(kept)", "sh": "echo $kept"}


@pytest.mark.parametrize(("lang", "code"), [
    *(pytest.param(lang, code, id=f"{lang}-waits") for lang, code in _WAITS.items()),
    *(pytest.param(lang, code, id=f"{lang}-spins") for lang, code in _SPINS.items()),
])
def test_interrupt_sent_with_the_cell_stops_it(request: pytest.FixtureRequest, lang: str,
                                               code: str) -> None:
    """An interrupt right behind its cell reaches the worker before the cell has begun (the
    worker is still reading it): it must still stop that cell, and keep the interpreter. It
    was lost (a worker ignores a SIGINT between cells), so the cell ran on, and the service
    restarted the interpreter after its grace, losing the session's state.

    Not here, for they still lose it at times (the agent's notes on ``do_interrupt``): a
    JavaScript cell that spins from its first line (rarely: its own test, below), and a
    shell cell whose first command is a program (``sleep 100``), when the SIGINT lands as
    bash forks it."""
    assert_stopped_right_behind(request.getfixturevalue(lang), lang, code, times=8)


def assert_stopped_right_behind(agent: AgentDriver, lang: str, code: str, *, times: int,
                                timeout: float = 10) -> None:
    """Each of ``times`` runs of ``code`` with an interrupt sent right behind it ends as
    interrupted, in the same interpreter, whose state is kept."""
    agent.run(_SET[lang])
    for _ in range(times):
        sent_at = time.monotonic()
        cell_id = agent.exec(code)
        agent.send({"t": "interrupt"})
        result = agent.collect(cell_id, sent_at, timeout=timeout)
        assert result.done["status"] == "interrupted", result.done
        assert result.done["restarted"] is False, result.done
    kept = agent.run(_GET[lang])
    if lang == "js" and kept.done["status"] == "interrupted":
        # Node can carry a late SIGINT into the next cell (a known residual, agent.md and
        # the agent's notes on do_interrupt): that cell is interrupted, the state is kept.
        assert kept.done["restarted"] is False, kept.done
        kept = agent.run(_GET[lang])
    assert kept.text() == "yes\n", kept.done


def test_js_an_interrupt_right_behind_a_cell_that_spins_from_its_first_line_stops_it(
        js: AgentDriver) -> None:
    """A SIGINT that landed between the worker's reading of a cell and the start of its run
    was not seen by the run: ``while (true) {}`` ran on until the service restarted the
    worker, its state lost (13 of 100 interrupts sent right behind it). Just before the run
    the worker now looks for the cell's mark and for a SIGINT Node kept as pending. What is
    left is a SIGINT sent in the microseconds between that look and the run's start (4 in
    1,000 beside a busy process with the image's Node 18). The host's Node, which this test
    runs, reads more slowly there (a thrown EAGAIN), which widens the gap: 3 of 40 were
    missed in one CI run. So 80 are sent and at most 8 may be missed (the code before the
    fix missed 8 and 9 of 40), and a second interrupt must then stop each, with the state
    kept."""
    js.run(_SET["js"])
    missed = 0
    for i in range(80):
        sent_at = time.monotonic()
        cell_id = js.exec("while (true) {}")
        time.sleep((0, 0.0002, 0.0005, 0.001, 0.002)[i % 5])  # right behind, or as it starts
        js.send({"t": "interrupt"})
        try:
            result = js.collect(cell_id, sent_at, timeout=3)
        except pytest.fail.Exception:
            missed += 1
            js.send({"t": "interrupt"})
            result = js.collect(cell_id, sent_at)
        assert (result.done["status"], result.done["restarted"]) == ("interrupted", False)
    assert missed <= 8, f"{missed} of 80 interrupts missed"
    kept = js.run(_GET["js"])
    if kept.done["status"] == "interrupted":  # a late SIGINT Node kept for the next run
        kept = js.run(_GET["js"])
    assert kept.text() == "yes\n"


#: A comment line for each language, to make a cell long.
_COMMENT = {"py": "#", "js": "//", "sh": "#"}


@pytest.mark.parametrize("pad", [65_536 - 40, 70_000, 131_072 - 25, 200_000])
@pytest.mark.parametrize("lang", ["py", "js", "sh"])
def test_an_interrupt_right_behind_a_long_cell_stops_it(request: pytest.FixtureRequest,
                                                        lang: str, pad: int) -> None:
    """A cell longer than the pipe holds: the interrupt's mark waited in the agent behind the
    code while its SIGINT went at once, and the worker that began the cell found no mark,
    or part of one (a read of the code ended inside it), and ran the cell (found by a
    review). The SIGINT now waits until the whole mark is in the pipe, and a worker reads
    the rest of a mark begun."""
    code = _COMMENT[lang] + "x" * pad + "\n" + _WAITS[lang]
    assert_stopped_right_behind(request.getfixturevalue(lang), lang, code, times=3)


@pytest.mark.parametrize("lang", ["py", "sh"])
def test_a_late_interrupt_does_not_stop_the_next_cell(request: pytest.FixtureRequest,
                                                      lang: str) -> None:
    """An interrupt for a cell that is ending (or has ended) may reach the worker between
    cells; it is that cell's, and the next cell runs whole. (Node can keep such a SIGINT
    for the next cell's run: the agent's notes on ``deliver_interrupt``.)"""
    agent: AgentDriver = request.getfixturevalue(lang)
    agent.run(_SET[lang])
    for _ in range(20):
        sent_at = time.monotonic()
        cell_id = agent.exec(_SET[lang])
        agent.send({"t": "interrupt"})
        first = agent.collect(cell_id, sent_at, timeout=5)
        assert first.done["status"] in ("success", "interrupted"), first.done
        after = agent.run(_GET[lang], timeout=5)
        assert after.done["status"] == "success", after.done
        assert after.text() == "yes\n"


def test_python_stdin_is_eof(py: AgentDriver) -> None:
    start_at = time.monotonic()
    result = py.run("input()")
    assert result.done["error"].startswith("EOFError: EOF when reading a line (")
    assert time.monotonic() - start_at < 5
    assert py.run("import sys; sys.stdin.read()").displays[0]["data"]["text/plain"] == "''"


def test_frame_shaped_text_arrives_as_text(py: AgentDriver) -> None:
    fake = json.dumps({"t": "done", "id": "c1", "status": "success"})
    code = (
        "import sys, struct\n"
        f"body = {fake!r}.encode()\n"
        "sys.stdout.buffer.write(struct.pack('>I', len(body)) + body)\n"
        "sys.stdout.flush()"
    )
    result = py.run(code)
    assert_success(result)
    assert result.text() == struct.pack(">I", len(fake)).decode("latin-1") + fake


def test_big_output_arrives_complete_and_in_order(py: AgentDriver) -> None:
    result = py.run("for i in range(30000):\n    print(f'{i:09d}')")  # 300 000 bytes
    assert_success(result)
    out = [f for f in result.frames if f["t"] == "out"]
    assert len(out) > 1
    assert all(len(f["text"]) <= 64 * 1024 for f in out)
    assert result.text() == "".join(f"{i:09d}\n" for i in range(30000))
    assert result.done["truncated"] is False


def test_a_cell_larger_than_one_read_arrives_whole(py: AgentDriver) -> None:
    # The agent and the worker read 64 KiB at a time: a 600 KB cell takes many reads of
    # the service's frame and of the control pipe, and must still run as one cell.
    blob = "".join(f"{i:07d}" for i in range(80_000))  # 560 000 characters
    result = py.run(f"s = {blob!r}\nprint(len(s), s[:7], s[-7:])")
    assert_success(result)
    assert result.text() == "560000 0000000 0079999\n"
    assert_success(py.run("print(len(s))"))  # and the next frame is read cleanly after it


def test_frames_over_the_frame_limit_are_cut_down_not_sent(py: AgentDriver) -> None:
    """No frame the agent sends exceeds 1 MiB (the driver's reader checks every one): a display
    that would is replaced by a notice, and a worker's error text is cut to 2000 characters."""
    # The worker caps repr and HTML at 100 000 characters each; control characters take six
    # bytes each in JSON (\\u0001), so both together make a frame of ~1.2 MB.
    shown = py.run("class Huge:\n    def __repr__(self):\n        return '\\x01' * 100_000\n"
                   "    def _repr_html_(self):\n        return '\\x01' * 100_000\nHuge()",
                   max_output_bytes=1 << 30)
    assert_success(shown)
    assert shown.displays[0]["data"] == {"text/plain": "<output too large to display>"}
    failed = py.run("raise ValueError('e' * 1_500_000)", max_output_bytes=1 << 30)
    assert failed.done["status"] == "error"
    error = failed.done["error"]
    assert error.startswith("ValueError: eee") and set(error[12:]) == {"e"}
    assert len(error) == 2000  # the agent keeps at most 2000 characters of a worker's error
    assert_success(py.run("1"))


def test_stdout_and_stderr_are_separate_and_ordered(py: AgentDriver) -> None:
    result = py.run(
        "import sys\nfor i in range(200):\n    print(i)\n    print(-i, file=sys.stderr)"
    )
    assert result.text() == "".join(f"{i}\n" for i in range(200))
    assert result.text("stderr") == "".join(f"{-i}\n" for i in range(200))


def test_truncation(py: AgentDriver) -> None:
    result = py.run("print('x' * 100_000)\nprint('tail')", max_output_bytes=1000)
    assert result.done["truncated"] is True
    assert result.done["status"] == "success"
    assert len(result.text()) == 1000
    # The next cell has a fresh budget.
    again = py.run("print('ok')")
    assert again.text() == "ok\n"
    assert again.done["truncated"] is False


def test_invalid_utf8_and_split_multibyte(py: AgentDriver) -> None:
    code = (
        "import sys, time\n"
        "w = sys.stdout.buffer\n"
        "w.write(b'bad:\\xff\\xfe:'); w.flush()\n"
        "w.write('€'.encode()[:2]); w.flush(); time.sleep(0.2)\n"
        "w.write('€'.encode()[2:] + b'!'); w.flush()"
    )
    result = py.run(code)
    assert_success(result)
    assert result.text() == "bad:\ufffd\ufffd:€!"


def assert_live(result: CellResult) -> None:
    """The cell's first line came in a frame of its own, well before the line written a
    second after it: output streams while the cell runs. (A gap, not a time since the cell
    was sent: that would count the cell's start, which a busy machine can slow.)"""
    assert len(result.out_times) >= 2, result.out_times
    gap = result.out_times[-1] - result.out_times[0]
    assert gap > 0.5, f"the lines came {gap:.2f} s apart"


def test_live_streaming(py: AgentDriver) -> None:
    result = py.run("import time\nprint('first')\ntime.sleep(1.0)\nprint('second')")
    assert result.text() == "first\nsecond\n"
    assert_live(result)


def test_background_process_holding_pipes_does_not_block_done(py: AgentDriver) -> None:
    start_at = time.monotonic()
    result = py.run("import subprocess\nsubprocess.Popen(['sleep', '30'])\nprint('started')")
    assert_success(result)
    assert time.monotonic() - start_at < 5


def test_user_closing_its_fds(py: AgentDriver) -> None:
    result = py.run("import os\nos.close(0)\nos.close(1)\nos.close(2)")
    assert result.done["t"] == "done"
    assert py.run("41 + 1").displays[0]["data"]["text/plain"] == "42"


def test_busy_exec_is_refused(py: AgentDriver) -> None:
    sent_at = time.monotonic()
    first = py.exec("import time; time.sleep(1); print('done')")
    second = py.exec("print('never')")
    busy = py.collect(second, sent_at)
    assert busy.done["status"] == "error"
    assert busy.done["error"] == "busy"
    assert py.collect(first, sent_at).text() == "done\n"


def test_restart_during_a_cell(py: AgentDriver) -> None:
    py.run("lost = 1")
    sent_at = time.monotonic()
    cell = py.exec("import subprocess, time\nsubprocess.Popen(['sleep', '60'])\ntime.sleep(60)")
    time.sleep(0.5)
    py.send({"t": "restart"})
    result = py.collect(cell, sent_at)
    assert result.done["status"] == "interrupted"
    assert result.done["restarted"] is True
    # the interpreter's peak, read before it was killed (it said 0.0 MB; a review)
    assert result.done["memory_used_mb"] > 5, result.done
    assert py.recv()[1] == {"t": "restarted"}
    assert py.run("'lost' in globals()").displays[0]["data"]["text/plain"] == "False"


def test_backpressure_blocks_the_program_not_the_agent(py: AgentDriver) -> None:
    py.reading.clear()  # stop reading the agent's stdout, like a slow service
    time.sleep(0.1)
    sent_at = time.monotonic()
    cell = py.exec("import sys\nwhile True:\n    sys.stdout.write('x' * 100_000)", 1 << 30)
    time.sleep(1.5)
    status = Path(f"/proc/{py.proc.pid}/status").read_text()
    rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
    assert rss_kb < 100_000, "the agent buffered output without bound"
    py.send({"t": "interrupt"})  # still read while the output is backpressured
    py.reading.set()
    result = py.collect(cell, sent_at)
    assert result.done["status"] == "interrupted"
    assert len(result.text()) < 50 * 1024 * 1024


def test_output_held_back_by_backpressure_still_comes_before_done(py: AgentDriver) -> None:
    # The service reads slowly: the agent's buffer fills and output is still on its way
    # when the program ends. All of it must come, whole and before done.
    py.reading.clear()
    time.sleep(0.1)
    sent_at = time.monotonic()
    size = (1 << 20) + (1 << 16) + 30_000  # the agent's 1 MiB buffer, a pipe, and more
    cell = py.exec(f"import sys\nfor i in range({size} // 1000):\n"
                   "    sys.stdout.write(str(i % 10) * 999 + '\\n')", 1 << 30)
    time.sleep(1.0)  # the program fills the agent's buffer and the pipe, then finishes
    py.reading.set()
    result = py.collect(cell, sent_at)
    assert_success(result)
    expected = "".join(str(i % 10) * 999 + "\n" for i in range(size // 1000))
    assert len(result.text()) == len(expected)
    assert result.text() == expected


def test_memory_is_measured(py: AgentDriver) -> None:
    small = py.run("x = 1")
    big = py.run("b = bytearray(150 * 1024 * 1024)\nb[::4096] = b'x' * len(b[::4096])\ndel b")
    assert big.done["memory_used_mb"] >= 150
    assert small.done["memory_used_mb"] < 150
    # The peak is reset per cell.
    assert py.run("y = 2").done["memory_used_mb"] < 150


def io_calls(pid: int, kind: str) -> int:
    """How many ``kind`` ("read" or "write") system calls process ``pid`` has made (task I/O
    accounting)."""
    io = Path(f"/proc/{pid}/io")
    if not io.exists():
        pytest.skip("this kernel has no task I/O accounting (/proc/PID/io)")
    field = {"read": "syscr:", "write": "syscw:"}[kind]
    line = next(line for line in io.read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def write_calls(pid: int) -> int:
    return io_calls(pid, "write")


def test_a_long_shell_cell_is_read_in_a_few_system_calls_and_arrives_whole(
        sh: AgentDriver) -> None:
    """A cell reached the shell worker through `read -d ''`, which takes one system call per
    byte from a pipe: 100 KB of code took 28 ms under runc and 4.9 s under gVisor (a
    benchmark of long cells). The agent now sends the code's length and the worker reads it
    with `read -N`, in bytes even where a cell chose a locale whose characters are several
    bytes (-N counts characters)."""
    [worker] = (Path(f"/proc/{sh.proc.pid}/task/{sh.proc.pid}/children").read_text().split())
    assert_success(sh.run("export LANG=C.UTF-8 LC_ALL=C.UTF-8"))
    text = "é" * 50_000 + "z"  # 100,001 bytes, 50,001 characters
    before = io_calls(int(worker), "read")
    r = sh.run(f"x='{text}'; echo ${{#x}}; printf '%s\\n' \"${{x: -2}}\"")
    reads = io_calls(int(worker), "read") - before
    assert_success(r)
    assert r.text() == "50001\néz\n", r.text()[:200]
    assert reads < 100, reads  # about 100,000 before
    # Then in the C locale, where a byte is a character: the next cell arrives whole too.
    assert_success(sh.run("export LC_ALL=C"))
    r = sh.run(f"y='{text}'; echo ${{#y}}")
    assert_success(r)
    assert r.text() == "100001\n", r.text()


def test_a_short_cells_output_and_done_usually_leave_in_one_write(
    sh: AgentDriver, tmp_path: Path
) -> None:
    """Counted in the agent's write calls: a cell that prints a line costs no more writes than
    a silent one (its out frame waited for its done), while output that its cell outlives
    costs one write more. "Usually": one short cell in twenty is enough."""
    pid = sh.proc.pid

    def writes_of(code: str) -> int:
        before = write_calls(pid)
        assert_success(sh.run(code))
        return write_calls(pid) - before

    silent = min(writes_of("true") for _ in range(3))
    short = [writes_of("echo hi") for _ in range(20)]
    assert min(short) == silent, (silent, short)
    # The control: the cell goes on only once the service holds its output, so the output
    # and the done cannot leave together (no timing involved).
    flag = tmp_path / "received"
    before = write_calls(pid)
    sent_at = time.monotonic()
    cell = sh.exec(f"echo hi; until [ -e {flag} ]; do sleep 0.01; done")
    _at, out = sh.recv()
    assert out == {"t": "out", "id": cell, "name": "stdout", "text": "hi\n"}
    flag.touch()
    assert_success(sh.collect(cell, sent_at))
    assert write_calls(pid) - before == silent + 1


def test_memory_of_a_shell_cell_grows_with_what_it_holds(sh: AgentDriver) -> None:
    small = sh.run("x=1")
    big = sh.run("x=$(head -c 100000000 /dev/zero | tr '\\0' x); echo ${#x}")
    assert big.text() == "100000000\n"
    assert big.done["memory_used_mb"] >= small.done["memory_used_mb"] + 90, (small, big)


def test_max_output_bytes_zero_sends_no_output_and_marks_truncated(sh: AgentDriver) -> None:
    result = sh.run("echo hidden; echo also >&2", max_output_bytes=0)
    assert [f["t"] for f in result.frames] == ["done"]
    assert result.done["truncated"] is True
    assert result.done["status"] == "success"


def test_exec_without_max_output_bytes_has_a_budget_of_1_mib(sh: AgentDriver) -> None:
    sent_at = sh.send({"t": "exec", "id": "big", "code": "head -c 1048600 /dev/zero | tr '\\0' x"})
    result = sh.collect("big", sent_at)
    assert result.done["truncated"] is True
    assert result.text() == "x" * (1 << 20)


BETWEEN_NOTE = ("(the output above was written between cells, by work an earlier cell left"
                " running")


def test_output_written_between_cells_starts_the_next_cells_output(sh: AgentDriver) -> None:
    """What a cell's background job wrote after the cell's ``done`` went out under that
    cell's id, and the service dropped it (a result comes after all of its cell's frames):
    it was lost. It now waits for the next cell and starts that cell's output, in the order
    it was written, and a line on stderr says where it came from."""
    cell = sh.run("(sleep 0.2; echo late; sleep 0.1; echo oops >&2; sleep 0.1; echo later) &")
    assert_success(cell)
    time.sleep(1.0)
    assert sh.frames.empty()  # nothing more of the cell that ended
    after = sh.run("echo next")
    assert after.text() == "late\nlater\nnext\n"
    assert after.text("stderr") == f"oops\n{BETWEEN_NOTE})\n"
    assert [(f["name"], f["text"]) for f in after.frames[:3]] == [
        ("stdout", "late\n"), ("stderr", "oops\n"), ("stdout", "later\n")]
    again = sh.run("echo again")
    assert (again.text(), again.text("stderr")) == ("again\n", "")  # held once, not again


def test_a_threads_output_between_cells_is_in_the_next_cell(py: AgentDriver) -> None:
    assert_success(py.run(
        "import threading, time\n"
        "def work():\n"
        "    for i in range(3):\n"
        "        time.sleep(0.1); print('tick', i)\n"
        "threading.Thread(target=work).start()\n"))
    time.sleep(1.0)
    assert py.run("print('second')").text() == "tick 0\ntick 1\ntick 2\nsecond\n"


def test_a_display_made_between_cells_is_in_the_next_cell(py: AgentDriver) -> None:
    """A figure or ``display`` from a thread an earlier cell left went out under that cell's
    id once it had ended, and the service dropped it. It now waits for the next cell, with
    the text written between cells, in the order they were made."""
    assert_success(py.run(
        "import threading, time\n"
        "def work():\n"
        "    time.sleep(0.2); print('before'); display({'a': 1}); print('after')\n"
        "threading.Thread(target=work).start()\n"))
    time.sleep(1.0)
    assert py.frames.empty()  # nothing under the ended cell's id
    cell_id = py.exec("print('own')")
    result = py.collect(cell_id, time.monotonic())
    kinds = [(f["t"], f.get("text") or f.get("data")) for f in result.frames]
    # What was written before the display comes before it. (What comes after it may too:
    # a thread that is not the cell's own does not wait for its display to be sent.)
    assert kinds[0] == ("out", "before\n") or kinds[0] == ("out", "before\nafter\n"), kinds
    assert ("display", {"text/plain": "{'a': 1}"}) in kinds[1:3], kinds
    assert result.text() == "before\nafter\nown\n"
    assert result.text("stderr") == f"{BETWEEN_NOTE})\n"
    assert result.displays[0]["id"] == cell_id
    assert result.displays[0]["kind"] == "display_data"
    again = py.run("print('again')")
    assert (again.text(), again.displays) == ("again\n", [])  # held once, not again


def test_displays_held_between_cells_keep_within_the_next_cells_budget(
        py: AgentDriver) -> None:
    """At most half of the next cell's output budget goes to what waited, displays
    included; the rest is dropped, and the line says how many displays."""
    assert_success(py.run(
        "import threading, time\n"
        "def work():\n"
        "    time.sleep(0.2)\n"
        "    for i in range(5): display(str(i) * 200)\n"
        "threading.Thread(target=work).start()\n"))
    time.sleep(1.0)
    # Half of 1000, less room for the line: one display of 64 + 10 + 202 + 1 fits.
    after = py.run("print('own')", max_output_bytes=1000)
    assert [d["data"]["text/plain"] for d in after.displays] == [repr("0" * 200)]
    assert after.text("stderr") == f"{BETWEEN_NOTE}; 4 displays of it were dropped)\n"
    assert after.text() == "own\n" and after.done["truncated"] is False
    # What waits is bounded too: 2 MiB of displays (20 of about 100 kB here), whatever
    # the next cell's budget.
    assert_success(py.run(
        "def work():\n"
        "    time.sleep(0.2)\n"
        "    for i in range(25): display('x' * 99_990)\n"
        "threading.Thread(target=work).start()\n"))
    time.sleep(2.0)
    after = py.run("print('own')", max_output_bytes=64 << 20)
    assert len(after.displays) == 20
    assert after.text("stderr") == f"{BETWEEN_NOTE}; 5 displays of it were dropped)\n"


THREADS_LEFT = (
    "import threading, time\n"
    "def work(n):\n"
    "    time.sleep(0.2); print('thread', n)\n"
    "for n in range(3):\n"
    "    threading.Thread(target=work, args=(n,)).start()\n"
    "print('main')\n")


def test_a_program_waits_for_its_threads_as_python_does_at_exit(py: AgentDriver) -> None:
    """A one-shot call's cell (``program``) ends as ``python3 prog.py`` does: after the
    threads it left (not daemons), so what they print is its output; a notebook cell does
    not wait (the threads' output comes with the next cell)."""
    program = py.run(THREADS_LEFT, program=True)
    assert_success(program)
    assert sorted(program.text().splitlines()) == ["main", "thread 0", "thread 1", "thread 2"]
    assert program.text().startswith("main\n")
    assert program.done["execution_time_ms"] >= 200
    cell = py.run(THREADS_LEFT)
    assert_success(cell)
    assert cell.text() == "main\n"
    time.sleep(0.5)
    assert sorted(py.run("pass").text().splitlines()) == ["thread 0", "thread 1", "thread 2"]


def test_a_program_waits_for_an_executor_and_its_exit_functions(py: AgentDriver) -> None:
    """``threading``'s exit hooks first (an executor never shut down finishes its queue and
    ends: without them its idle threads were waited for until the time limit), then the
    ``atexit`` functions, also after an error (its traceback first, as Python prints it)."""
    pool = py.run("from concurrent.futures import ThreadPoolExecutor\n"
                  "import time\n"
                  "ex = ThreadPoolExecutor(2)\n"
                  "for i in range(4):\n"
                  "    ex.submit(lambda i=i: (time.sleep(0.1), print('task', i)))\n"
                  "print('submitted')\n", program=True, timeout=10)
    assert_success(pool)
    assert pool.text().splitlines()[0] == "submitted"
    assert sorted(pool.text().splitlines()[1:]) == [f"task {i}" for i in range(4)]
    failed = py.run("import atexit\natexit.register(print, 'bye')\nraise ValueError('boom')\n",
                    program=True)
    assert (failed.done["status"], failed.done["error"]) == ("error", "ValueError: boom")
    assert failed.text() == "bye\n"
    assert failed.text("stderr").endswith("ValueError: boom\n")
    kept = py.run("import atexit\natexit.register(print, 'not run')\nprint('cell')")
    assert kept.text() == "cell\n"  # a notebook cell runs no exit function


def test_the_interpreter_works_on_after_a_programs_end(py: AgentDriver) -> None:
    """A WebSocket session may send a program cell and then more cells to the same
    interpreter. A program's end shut every executor for good (the next ``submit``, and
    asyncio's ``run_in_executor``, raised "cannot schedule new futures after interpreter
    shutdown"), and ran the executors' exit hook once, so the next program's end waited for
    its executor's idle threads until the time limit; ``multiprocessing`` thought the
    process exiting, and its exit function was gone."""
    first = py.run("from concurrent.futures import ThreadPoolExecutor\n"
                   "import multiprocessing.util, time\n"
                   "ThreadPoolExecutor(2).submit(lambda: (time.sleep(0.1), print('one')))\n",
                   program=True, timeout=10)
    assert_success(first)
    assert first.text() == "one\n"
    second = py.run("import atexit\n"
                    "ThreadPoolExecutor(2).submit(lambda: (time.sleep(0.1), print('two')))\n"
                    # registered again: multiprocessing's exit function, only
                    "print(multiprocessing.util.is_exiting(), atexit._ncallbacks())\n",
                    program=True, timeout=5)
    assert_success(second)
    assert second.text() == "False 1\ntwo\n", second.text("stderr")
    notebook = py.run("import asyncio\n"
                      "async def f():\n"
                      "    return await asyncio.get_running_loop().run_in_executor(None, int)\n"
                      "print(asyncio.run(f()))\n", timeout=5)
    assert_success(notebook)
    assert notebook.text() == "0\n"


def test_an_interrupt_ends_a_programs_wait_and_names_the_threads(py: AgentDriver) -> None:
    """A thread that never ends holds the program, as it holds ``python3 prog.py``, until
    the interrupt (the time limit), which says what was waited for and what to do."""
    stuck = py.run_interrupted(
        "import threading\n"
        "threading.Thread(target=threading.Event().wait, name='server').start()\n"
        "print('started')\n", after=1.0, program=True)
    assert stuck.done["status"] == "interrupted"
    assert stuck.done["execution_time_ms"] >= 900
    assert stuck.text() == "started\n"
    assert stuck.text("stderr") == (
        "Interrupted while the program waited for 1 thread (server): Python waits at exit for"
        " every thread that is not a daemon; join them, or start them with daemon=True\n")
    assert_success(py.run("print('next')"))


def test_an_interrupt_in_a_programs_exit_functions_or_executor_is_told(
        py: AgentDriver) -> None:
    """``atexit`` swallows any error of an exit function, the interrupt's too: the program
    ended ``success`` (exit code 0), with a traceback of the worker's frames (the diff
    review). An executor's exit hook waits for its threads, and the line named none."""
    hanging = py.run_interrupted("import atexit, time\n"
                                 "atexit.register(time.sleep, 100)\n"
                                 "atexit.register(print, 'runs first')\n",
                                 after=1.0, program=True)
    assert (hanging.done["status"], hanging.done["exit_code"]) == ("interrupted", 130)
    assert hanging.text() == "runs first\n"
    assert hanging.text("stderr") == (
        "Interrupted while the program's exit functions (atexit) ran\n")
    failing = py.run("import atexit, sys\n"
                     "atexit.register(sys.exit, 3)\n"
                     "def boom():\n    raise ValueError('in exit')\n"
                     "atexit.register(boom)\n", program=True)
    assert_success(failing)  # as at a program's exit: printed, and nothing else
    err = failing.text("stderr")
    assert err.startswith("Exception ignored in atexit callback: <function boom at 0x")
    assert "ValueError: in exit\n" in err and "SystemExit: 3\n" in err
    assert "worker_python" not in err and "_end_program" not in err
    pool = py.run_interrupted("from concurrent.futures import ThreadPoolExecutor\n"
                              "import time\n"
                              "ex = ThreadPoolExecutor(thread_name_prefix='pool')\n"
                              "ex.submit(time.sleep, 100)\n", after=1.0, program=True)
    assert pool.done["status"] == "interrupted"
    assert pool.text("stderr").startswith(
        "Interrupted while the program waited for 1 thread (pool_0):")
    assert_success(py.run("print('next')"))


def test_a_trickle_of_output_is_read_in_batches_and_a_human_pace_is_not(
        py: AgentDriver) -> None:
    """Each read of a cell's output was a frame, whatever its size: one byte every 0.4 ms
    made 2,500 frames a second, which the engine and the service paid for one by one, and
    a few such cells slowed every other session 100 times (a review). Past 50 reads in
    0.1 s the agent reads the pipes every 10 ms; a line every 3 ms (the benchmark's) is
    still a frame each, at once."""
    trickle = py.run("import os, time\nt = time.time()\n"
                     "while time.time() - t < 1:\n    os.write(1, b'a'); time.sleep(0.0004)\n",
                     timeout=20)
    assert_success(trickle)
    frames = [f for f in trickle.frames if f["t"] == "out"]
    assert set(trickle.text()) == {"a"} and len(trickle.text()) > 1000  # nothing lost
    assert len(frames) < 800, len(frames)  # 2,000 and more before
    # A flood of full reads is not held: its frames are few for their bytes (counting them
    # cut 100 MB of output from about 0.3 s to 2.5 s).
    start = time.monotonic()
    flood = py.run("import os\nfor i in range(1600):\n    os.write(1, b'x' * 65536)\n",
                   max_output_bytes=1 << 30, timeout=60)
    assert len(flood.text()) == 1600 * 65536
    assert time.monotonic() - start < 1.5
    paced = py.run("import sys, time\nfor i in range(60):\n"
                   "    sys.stdout.write(f'{i}\\n'); sys.stdout.flush(); time.sleep(0.003)\n")
    assert_success(paced)
    texts = [f["text"] for f in paced.frames if f["t"] == "out"]
    assert "".join(texts) == "".join(f"{i}\n" for i in range(60))
    # a frame a line (a loaded machine may read two at once; batched, 3 or 4 a frame)
    assert len(texts) >= 50, texts


@pytest.mark.parametrize("code", ["2147483648", "-2147483649", "1" + "0" * 30])
def test_a_forged_exit_code_out_of_range_restarts_the_worker_alone(py: AgentDriver,
                                                                   code: str) -> None:
    """A done the cell wrote itself with an exit code past 32 bits went on to the service,
    which took the agent's frame for a broken one and replaced the whole sandbox (a
    review). It breaks the worker's protocol: the worker is restarted, as for any other."""
    forged = py.run(
        "import os\nfd = int(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2])\n"
        "os.write(fd, b'{\"t\":\"done\",\"status\":\"success\",\"exit_code\":"
        + code + ",\"error\":null}\\n')\nimport time; time.sleep(5)\n")
    assert (forged.done["status"], forged.done["restarted"]) == ("error", True)
    assert forged.done["error"] == ("interpreter broke the control protocol (worker sent an"
                                    " exit code out of range); state was reset")
    assert -(2**31) <= forged.done["exit_code"] < 2**31
    assert_success(py.run("print(1)"))


def test_a_protocol_broken_between_cells_is_told_in_a_bounded_lost_frame(
        py: AgentDriver) -> None:
    """A thread writes a line of its own to the control pipe between cells: the worker is
    restarted, and the ``lost`` frame says why, in at most 2000 characters (the service
    takes 4096 and would replace the whole sandbox for a longer one)."""
    assert_success(py.run(
        "import os, threading, time\n"
        "fd = int(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2])\n"
        "junk = b'{\"t\":\"' + b'x' * 100_000 + b'\"}\\n'\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), os.write(fd, junk))).start()\n"))
    _, lost = py.recv(10)
    assert lost["t"] == "lost", lost
    assert lost["error"].startswith("interpreter broke the control protocol ("), lost
    assert len(lost["error"]) <= 2000
    after = py.run("print(1)")
    assert (after.text(), after.done["restarted"]) == ("1\n", True)


def test_an_intervals_output_between_cells_is_in_the_next_cell(js: AgentDriver) -> None:
    assert_success(js.run(
        "let n = 0; const h = setInterval(() => { console.log('tick', n++);"
        " if (n === 3) clearInterval(h); }, 50)"))
    time.sleep(1.0)
    assert js.run("console.log('second')").text() == "tick 0\ntick 1\ntick 2\nsecond\n"


def test_output_between_cells_past_64_kib_is_counted_and_dropped(py: AgentDriver) -> None:
    """The first 64 KiB wait for the next cell (cut within a character: a replacement
    character), and the line on its stderr says how much more was dropped."""
    assert_success(py.run(
        "import sys, threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.2),"
        " sys.stdout.write('a' + 'é' * 40000), sys.stdout.flush())).start()\n"))
    time.sleep(1.0)
    after = py.run("print('second')")
    assert after.text() == "a" + "é" * 32767 + "\ufffd" + "second\n"
    assert after.text("stderr") == f"{BETWEEN_NOTE}; 14465 more bytes of it were dropped)\n"
    assert after.done["truncated"] is False
    assert py.run("print('third')").text() == "third\n"  # held once, not again


def test_a_character_begun_as_64_kib_are_reached_is_ended_there(py: AgentDriver) -> None:
    """A character's first byte as the 65,536th, its rest past the cut: the character is
    ended (a replacement character) with the output held, not left for the next cell's own
    output to complete (a review)."""
    assert_success(py.run(
        "import os, threading, time\n"
        "def work():\n"
        "    time.sleep(0.2); os.write(1, b'a' * 65535 + b'\\xc3'); os.write(1, b'\\xa9zz')\n"
        "threading.Thread(target=work).start()\n"))
    time.sleep(1.0)
    after = py.run("print('second')")
    stdout = [f["text"] for f in after.frames if f["t"] == "out" and f["name"] == "stdout"]
    assert "".join(stdout) == "a" * 65535 + "\ufffd" + "second\n"
    assert stdout[-1] == "second\n"
    assert after.text("stderr") == f"{BETWEEN_NOTE}; 3 more bytes of it were dropped)\n"


def test_many_small_writes_between_cells_come_as_few_frames(sh: AgentDriver) -> None:
    """Held as records of one stream each: 2,000 one-byte writes were 2,000 frames."""
    assert_success(sh.run("(sleep 0.2; for i in $(seq 2000); do printf x; done) &"))
    time.sleep(1.5)
    after = sh.run("echo next")
    assert after.text() == "x" * 2000 + "next\n"
    assert len([f for f in after.frames if f["t"] == "out" and f["name"] == "stdout"]) == 2


def test_output_between_cells_takes_at_most_half_the_next_cells_budget(
        sh: AgentDriver) -> None:
    """A writer's output between cells filled the next cell's whole budget: the cell's own
    output, and the line saying where the rest came from, were cut (a review). It takes half
    at most, less room for that line, whole records first; the rest is counted as dropped.
    Below the service's least budget (1024), the line still leaves the cell room."""
    for budget, kept in ((1024, 352), (400, 40), (60, 0)):
        assert_success(sh.run("(sleep 0.2; head -c 5000 /dev/zero | tr '\\0' x;"
                              " echo err >&2) &"))
        time.sleep(1.0)
        after = sh.run("echo mine", max_output_bytes=budget)
        note = f"{BETWEEN_NOTE}; {5004 - kept} more bytes of it were dropped)\n"
        if budget > 100:
            assert after.text() == "x" * kept + "mine\n", budget
            assert after.text("stderr") == note
            assert after.done["truncated"] is False
        else:  # the line alone is longer than the budget
            assert after.text() == ""
            assert after.text("stderr") == note[:budget]
            assert after.done["truncated"] is True


def test_a_restart_drops_the_output_held_between_cells(py: AgentDriver) -> None:
    """It came from the interpreter the restart ends: a fresh interpreter's first cell
    showed it (a review). Displays too."""
    assert_success(py.run(
        "import threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('old'), display('old'))"
        ").start()"))
    time.sleep(1.0)
    py.send({"t": "restart"})
    assert py.recv()[1] == {"t": "restarted"}
    after = py.run("print('fresh')")
    assert (after.text(), after.text("stderr"), after.displays) == ("fresh\n", "", [])


def test_top_level_await(py: AgentDriver) -> None:
    result = py.run("import asyncio\nawait asyncio.sleep(0.01)\n'awaited'")
    assert result.displays[0]["data"]["text/plain"] == "'awaited'"


@pytest.mark.parametrize(("code", "shown"), [
    # The await is the last line: the statements before it ran with no loop running.
    ("import asyncio\nasync def work():\n    await asyncio.sleep(0.01)\n    return 'done'\n"
     "task = asyncio.create_task(work())\nawait task", "'done'"),
    ("import asyncio\nfut = asyncio.get_running_loop().create_future()\n"
     "fut.get_loop().call_later(0.01, fut.set_result, 7)\nawait fut", "7"),
    ("import asyncio\nasync def tick():\n    return 1\nt = asyncio.create_task(tick())\n"
     "await asyncio.sleep(0.01)\nt.result()", "1"),
])
def test_a_cell_with_an_await_runs_whole_in_the_event_loop(py: AgentDriver, code: str,
                                                           shown: str) -> None:
    """As in IPython (a review of model-written cells: ``RuntimeError: no running event
    loop`` at ``create_task``, and ``task`` was left undefined for every later cell)."""
    result = py.run(code)
    assert_success(result)
    assert result.displays[0]["data"]["text/plain"] == shown
    assert result.text("stderr") == ""


def test_a_cell_with_an_await_shows_only_its_own_frames(py: AgentDriver) -> None:
    """Its traceback began with the event loop's and the worker's frames (a review)."""
    result = py.run("import asyncio\nawait asyncio.sleep(0)\n1/0")
    stderr = result.text("stderr")
    assert result.done["error"] == "ZeroDivisionError: division by zero"
    assert "base_events.py" not in stderr and "worker_python" not in stderr, stderr
    assert 'line 3' in stderr, stderr
    # Frames of asyncio that the cell called stay.
    called = py.run("import asyncio\nawait asyncio.wait_for(asyncio.sleep(1), 0.01)")
    assert "TimeoutError" in called.done["error"], called.done
    assert "tasks.py" in called.text("stderr"), called.text("stderr")


def test_a_cell_without_await_runs_with_no_loop_running(py: AgentDriver) -> None:
    """``asyncio.run()`` refuses to run inside a running loop: a cell with no top-level
    ``await`` runs outside it, even after cells that awaited."""
    assert_success(py.run("import asyncio\nawait asyncio.sleep(0)"))
    result = py.run("async def main():\n    return 'ran'\nasyncio.run(main())")
    assert_success(result)
    assert result.displays[0]["data"]["text/plain"] == "'ran'"


# ------------------------------------------------------------------------------- javascript


def test_js_let_const_function_persist_and_value(js: AgentDriver) -> None:
    assert_success(js.run("let a = 1; const b = 2; function add(x) { return a + b + x; }"))
    result = js.run("console.log('sum', add(3)); a = 10; add(0)")
    assert_success(result)
    assert result.text() == "sum 6\n"
    assert result.displays[0]["data"]["text/plain"] == "12"
    assert js.run("undefined").displays == []


def shown(result: CellResult) -> str:
    """The text of a cell's value, after checking that it succeeded."""
    assert_success(result)
    (display,) = result.displays
    return str(display["data"]["text/plain"])


def test_js_top_level_variables_are_as_fast_as_local_ones(js: AgentDriver) -> None:
    """A loop over top-level variables ran 100 to 200 times slower than the same loop in a
    function (a review: 1e7 iterations over a top-level ``var`` took 10 s): they were
    properties of the vm context's global object, reached through its interceptors. They
    are lexical bindings now. The ratio is measured in one cell, so a slow machine does not
    decide it; before, it was about 400."""
    result = js.run(
        "const t0 = process.hrtime.bigint();\n"
        "var total = 0;\nfor (var i = 0; i < 2e6; i++) total += i;\n"
        "let count = 0;\nfor (let k = 0; k < 2e6; k++) count++;\n"
        "const t1 = process.hrtime.bigint();\n"
        "(() => { let t = 0, c = 0;\n"
        "  for (let j = 0; j < 2e6; j++) { t += j; c++; }\n  return t; })();\n"
        "const t2 = process.hrtime.bigint();\n"
        "console.log(total, count, Number(t1 - t0) / Number(t2 - t1))")
    assert result.done["status"] == "success", result.text("stderr")
    total, count, ratio = result.text().split()
    assert (total, count) == ("1999999000000", "2000000")
    assert float(ratio) < 50, ratio


def test_js_declarations_stay_usable_whatever_came_before(js: AgentDriver) -> None:
    """A name declared by a cell that threw before reaching the declaration, a function
    declared where an earlier cell had a ``let``, and a ``let`` where one had a function."""
    assert js.run("throw new Error('first'); let late = 1").done["status"] == "error"
    assert js.run("late = 2; late").displays[0]["data"]["text/plain"] == "2"
    js.run("let f = 1")
    assert js.run("function f() { return 'fn' }\nf()").displays[0]["data"][
        "text/plain"] == "'fn'"
    js.run("function g() { return 1 }")
    assert js.run("const g = 5; g").displays[0]["data"]["text/plain"] == "5"
    assert js.run("await null; var late2 = 3; let f2 = () => late2; f2()").displays[0][
        "data"]["text/plain"] == "3"
    assert js.run("f2() + late").displays[0]["data"]["text/plain"] == "5"


def test_js_a_declaration_never_hides_what_the_global_object_has(js: AgentDriver) -> None:
    """A review of the lexical globals: a binding declared for a name the global object has
    hid it for good, and a cell that failed left it undefined (``const require = ...``
    in a cell V8 refused made ``require`` undefined in every later cell)."""
    bad = js.run("const require = createRequire(import.meta.url);")
    assert bad.done["status"] == "error"
    assert js.run("typeof require('fs').existsSync").displays[0]["data"][
        "text/plain"] == "'function'"
    assert js.run("const console = nope.console").done["status"] == "error"
    assert js.run("console.log('still')").text() == "still\n"
    js.run("implicit = 5")
    assert js.run("var implicit; implicit").displays[0]["data"]["text/plain"] == "5"
    js.run("globalThis.shared = 1")
    assert js.run("var shared = 2; [shared, globalThis.shared]").displays[0]["data"][
        "text/plain"] == "[ 2, 2 ]"


@pytest.mark.parametrize(("code", "shown"), [
    ("class A {}", None),  # a declaration has no value (it showed [class A])
    ("let z9 = 1", None),
    ("export default function () { return 1 }", "[Function (anonymous)]"),
    ("export default class {}", "[class (anonymous)]"),
    ("export default {a: 1}", "{ a: 1 }"),
])
def test_js_declarations_show_no_value_and_a_default_export_is_one(
        js: AgentDriver, code: str, shown: str | None) -> None:
    result = js.run(code)
    assert result.done["status"] == "success", result.text("stderr")
    assert [d["data"]["text/plain"] for d in result.displays] == ([shown] if shown else [])


def test_js_cells_can_be_run_again(js: AgentDriver) -> None:
    """A notebook re-runs cells: top-level let, const and class may be declared again, even
    after a cell threw before reaching its declaration."""
    assert_success(js.run("let x = 1; const y = 2; class A { f() { return 'a'; } }"))
    assert shown(js.run("let x = 5; const y = 6; class A { f() { return 'b'; } }; x + y")) == "11"
    assert shown(js.run("new A().f()")) == "'b'"
    assert js.run("null.boom; const late = 1").done["status"] == "error"
    assert shown(js.run("const late = 2; late")) == "2"
    assert shown(js.run("const {p, q: [r]} = {p: 1, q: [2]}; p + r")) == "3"
    assert shown(js.run("p + r")) == "3"
    # Block scopes keep their own bindings; only the top level becomes global.
    assert shown(js.run("for (let i = 0; i < 2; i++) {} { let inner = 1 } typeof i + typeof inner"
                        )) == "'undefinedundefined'"


def test_js_top_level_await_keeps_declarations_and_shows_the_value(js: AgentDriver) -> None:
    assert shown(js.run("const r = await Promise.resolve(41);\nr + 1")) == "42"
    assert shown(js.run("r")) == "41"
    assert shown(js.run(
        "async function twice(n) { return 2 * n; }\n"
        "class K { static of(v) { return v; } }\n"
        "let {a, b: [c]} = await Promise.resolve({a: 1, b: [2]});\n"
        "const total = await twice(a + c);\n"
        "total")) == "6"
    assert shown(js.run("[twice.name, K.of(3), a, c, total]")) == "[ 'twice', 3, 1, 2, 6 ]"
    # Run again, and with nothing to show: no value, state kept.
    assert shown(js.run("const r = await Promise.resolve(7); r")) == "7"
    quiet = js.run("const s = await Promise.resolve('kept')")
    assert_success(quiet)
    assert quiet.displays == []
    assert shown(js.run("s")) == "'kept'"
    assert shown(js.run("let n = 0; for await (const v of [1, 2]) n += v; n")) == "3"


def test_js_errors_keep_their_line_in_rewritten_cells(js: AgentDriver) -> None:
    failed = js.run("const v = 1;\nconst w = await Promise.resolve(2);\nnull.x")
    assert failed.done["status"] == "error"
    assert "cell-" in failed.text("stderr") and ":3:" in failed.text("stderr")
    plain = js.run("let v2 = 1;\n\nnull.y")
    assert ":3:" in plain.text("stderr")
    # What cannot be parsed still gets V8's own message.
    broken = js.run("const = 1")
    assert broken.done["error"].startswith("SyntaxError: ")


@pytest.mark.parametrize("code", [
    "await Promise.reject(new Error('x'))",
    "async function f() { throw new Error('x'); }\nawait null;\nawait f()",
])
def test_js_a_stack_shows_no_line_past_the_cells_own(js: AgentDriver, code: str) -> None:
    """A cell with top-level await runs in an async function whose call is on the line after
    the cell's last: its frame (``at cell-N:2:3`` for a one-line cell) named a line that the
    cell does not have."""
    result = js.run(code)
    assert result.done["status"] == "error"
    lines = len(code.split("\n"))
    frames = [line.strip() for line in result.text("stderr").splitlines()
              if line.strip().startswith("at ")]
    assert frames, result.text("stderr")
    for frame in frames:
        line = int(frame.rsplit(":", 2)[1])
        assert 1 <= line <= lines, (frame, result.text("stderr"))


def test_js_rewrites_keep_what_the_same_cell_means_without_await(js: AgentDriver) -> None:
    """Found by a review of the rewrite: each pair is the same cell with and without a top-level
    await, and must leave the same state and show the same value."""
    assert_success(js.run("let acc = 5"))
    assert shown(js.run("let acc; typeof acc")) == "'undefined'"  # a re-run `let x;` resets
    assert_success(js.run("let acc2 = 5"))
    assert shown(js.run("await 0; let acc2; typeof acc2")) == "'undefined'"
    # var and for-heads in blocks and loops are globals in both.
    assert_success(js.run("if (true) { var by = await 1 }\nfor (var bi = 0; bi < 2; bi++) await 0;"
                          "\nfor (var [bk] of [[3]]) {}\ntry { var bt = 4 } finally {}"))
    assert shown(js.run("[by, bi, bk, bt]")) == "[ 1, 2, 3, 4 ]"
    assert shown(js.run("class S { static { var inner = 1 } }; await 0; typeof inner")) == (
        "'undefined'")  # a static block is a scope of its own
    # Empty statements after the value do not hide it.
    assert shown(js.run("await 0; 42;;")) == "42"
    # A hashbang line is fine with top-level await too.
    assert shown(js.run("#!/usr/bin/env node\nawait 1")) == "1"
    # A class right before the value: its `;` closes it before the value's `return (`.
    assert shown(js.run("await 0; class K{}K.name")) == "'K'"
    assert shown(js.run("typeof K")) == "'function'"


@pytest.mark.parametrize(("cell", "value"), [
    ("let total\n[1, 2, 3].forEach(n => { total = (total || 0) + n })\ntotal", "6"),
    ("let t2\n(function () { t2 = 5 })()\nt2", "5"),
    ("let m\n+1", "1"),
])
def test_js_let_without_a_value_keeps_the_line_break_a_statement_end(
        js: AgentDriver, cell: str, value: str) -> None:
    """Found by a review: `let x` at a line's end, before a line starting with `[`, `(` or `+`,
    ends there (automatic semicolon insertion); the rewrite must not join the two lines."""
    assert shown(js.run(cell)) == value


@pytest.mark.parametrize("await_", ["", "await 0;\n"])
def test_js_error_lines_survive_multi_line_declarations(js: AgentDriver, await_: str) -> None:
    failed = js.run(f"{await_}const a =\n  1;\nlet b = 2,\n  c = 3;\nnull.x")
    assert failed.done["status"] == "error"
    line = 5 + await_.count("\n")
    assert "cell-" in failed.text("stderr")
    assert f":{line}:" in failed.text("stderr"), failed.text("stderr")


def test_js_static_imports_and_exports_work_in_a_cell(js: AgentDriver) -> None:
    """Model-written code uses ES module syntax (a review: "Cannot use import statement
    outside a module", "Unexpected token 'export'"). A cell is a script: its imports become
    dynamic ones, kept as globals like its declarations; its exports plain declarations."""
    result = js.run("import fs from 'fs'\nimport { join, sep as slash } from 'path'\n"
                    "import * as os from 'os'\nimport 'util'\nimport def, * as cp from "
                    "'child_process'\n"
                    "console.log(typeof fs.readFileSync, join('a', 'b'), slash,"
                    " typeof os.cpus, def === cp.default)")
    assert result.done["status"] == "success", result.text("stderr")
    assert result.text() == "function a/b / function true\n"
    later = js.run("console.log(typeof fs.existsSync, join('c', 'd'))")
    assert later.text() == "function c/d\n", later.text("stderr")
    exported = js.run("export const PI = 3\nexport function area(r) { return PI * r * r }\n"
                      "export class Shape {}\nexport { PI as pi }\nexport default area\n"
                      "area(2)")
    assert exported.done["status"] == "success", exported.text("stderr")
    assert exported.displays[0]["data"]["text/plain"] == "12"
    assert js.run("typeof Shape + ' ' + area(1)").displays[0]["data"]["text/plain"] == (
        "'function 3'")
    # Lines stay where they were.
    failed = js.run("import path from 'path'\n\nnull.x")
    assert ":3:" in failed.text("stderr"), failed.text("stderr")
    missing = js.run("import nope from 'no-such-package-xyz'")
    assert missing.done["status"] == "error"
    assert "no-such-package-xyz" in missing.done["error"]


def test_js_dynamic_import(js: AgentDriver, tmp_path: Path) -> None:
    assert shown(js.run("const os = await import('os'); os.platform()")) == "'linux'"
    assert shown(js.run("(await import('node:path')).sep")) == "'/'"
    (tmp_path / "mod.mjs").write_text("export const answer = 42;\n")
    assert shown(js.run(f"(await import({str(tmp_path / 'mod.mjs')!r})).answer")) == "42"
    missing = js.run("await import('no-such-package-xyz')")
    assert missing.done["status"] == "error"
    assert "no-such-package-xyz" in missing.done["error"]


def test_js_error(js: AgentDriver) -> None:
    result = js.run("null.x")
    assert result.done["status"] == "error"
    assert result.done["error"].startswith("TypeError: Cannot read properties of null")
    assert "worker_node" not in result.text("stderr")
    assert "TypeError" in result.text("stderr")


def test_js_promise_is_awaited(js: AgentDriver) -> None:
    result = js.run("new Promise(r => setTimeout(() => { console.log('later'); r(7); }, 100))")
    assert result.text() == "later\n"
    assert result.displays[0]["data"]["text/plain"] == "7"
    rejected = js.run("Promise.reject(new RangeError('nope'))")
    assert rejected.done["error"] == "RangeError: nope"


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("Promise.reject(new Error('boom')); 1", "Uncaught (in promise) Error: boom"),
        ("(async () => { throw new TypeError('inside'); })(); 1",
         "Uncaught (in promise) TypeError: inside"),
        ("Promise.reject(42); 1", "Uncaught (in promise) 42"),
        ("setTimeout(() => { throw new RangeError('in a timer'); }, 10);\n"
         "await new Promise((r) => setTimeout(r, 200)); 1", "Uncaught RangeError: in a timer"),
    ],
)
def test_js_an_error_nobody_handles_while_the_cell_runs_makes_it_an_error(
        js: AgentDriver, code: str, error: str) -> None:
    """A promise rejected with no handler, or an exception thrown in a callback, while the
    cell runs: the cell is an error and the message is its own, as the error would end a
    Node.js program. The cell was a success, and the message came after its done (dropped
    between cells)."""
    js.run("var kept = 'yes'")
    result = js.run(code)
    assert (result.done["status"], result.done["exit_code"]) == ("error", 1), result.done
    assert result.done["error"] == error
    assert result.done["restarted"] is False
    assert result.text("stderr").startswith(error), result.text("stderr")
    assert "worker_node" not in result.text("stderr")
    assert result.displays[0]["data"]["text/plain"] == "1"  # its value, as a REPL shows it
    after = js.run("kept")
    assert after.done["status"] == "success", after.done
    assert after.displays[0]["data"]["text/plain"] == "'yes'"


def test_js_a_rejection_whose_message_cannot_be_read_ends_only_the_cell(
        js: AgentDriver) -> None:
    """A reason whose ``message`` getter throws the reason again ended the worker (exit 7,
    state lost: a review); its summary says it cannot be read."""
    js.run("var kept = 'yes'")
    result = js.run("const e = new Error('x');\n"
                    "Object.defineProperty(e, 'message', { get() { throw e; } });\n"
                    "Promise.reject(e); 1")
    assert (result.done["status"], result.done["restarted"]) == ("error", False), result.done
    assert result.done["error"] == (
        "Uncaught (in promise) [an error whose message cannot be read]")
    assert js.run("kept").displays[0]["data"]["text/plain"] == "'yes'"


@pytest.mark.parametrize(("event", "code"), [
    ("unhandledRejection", "Promise.reject(new Error('mine')); 1"),
    ("uncaughtException", "setTimeout(() => { throw new Error('mine'); }, 10);\n"
                          "await new Promise((r) => setTimeout(r, 200)); 1"),
])
def test_js_a_listener_of_the_users_own_handles_the_error(js: AgentDriver, event: str,
                                                           code: str) -> None:
    """As in a Node.js program, which such a listener keeps alive."""
    js.run(f"process.on('{event}', (e) => console.log('handled', e.message))")
    result = js.run(code)
    assert result.done["status"] == "success", result.done
    assert result.text() == "handled mine\n"


def test_js_an_error_between_cells_is_shown_at_the_next_cells_start(js: AgentDriver) -> None:
    """It was printed between cells, where output reaches no one (a review of model-written
    cells: a timer's error after its cell ended left no trace). The next cell is not an
    error for it; five of them give three and a count."""
    stderr = stderr_of_the_next_cell(
        js, "var kept = 1;\nsetTimeout(() => { throw new RangeError('late'); }, 20).unref();\n"
            "for (let i = 0; i < 4; i++)\n"
            "  setTimeout(() => Promise.reject(new Error(`r${i}`)), 30).unref()")
    assert stderr.startswith("Uncaught RangeError: late\n"), stderr
    assert stderr.count("(thrown between cells, by work an earlier cell started)") == 3, stderr
    assert "Uncaught (in promise) Error: r0" in stderr and "r2" not in stderr, stderr
    assert stderr.endswith("(and 2 more errors between cells)\n"), stderr
    assert js.run("kept").text("stderr") == ""  # shown once


def test_js_held_errors_survive_a_cell_that_broke_builtins(js: AgentDriver) -> None:
    """A held error's print iterated with the cells' array iterator: once a cell broke it,
    every later cell failed (a review). ``process.listenerCount`` replaced hid errors."""
    js.run("var kept = 1;\nsetTimeout(() => { throw new Error('held'); }, 100).unref();\n"
           "Array.prototype[Symbol.iterator] = function* () { throw new Error('iter'); };\n"
           "process.listenerCount = () => 9;\nString.prototype.startsWith = () => { throw 1; }")
    time.sleep(0.5)
    first = js.run("kept + 1")
    assert_success(first)
    assert first.text("stderr").startswith("Uncaught Error: held"), first.text("stderr")
    for _ in range(2):
        assert_success(js.run("kept"))
    # (no `await`: the notebook rewrite of an await cell iterates, and this cell broke that)
    during = js.run("setTimeout(() => { throw new Error('during'); }, 10);\n"
                    "new Promise((r) => setTimeout(r, 200))")
    assert during.done["error"] == "Uncaught Error: during", during.done


def test_js_an_error_a_users_listener_handles_is_not_printed(js: AgentDriver) -> None:
    js.run("process.on('uncaughtException', (e) => console.log('mine:', e.message));\n"
           "setTimeout(() => { throw new Error('late'); }, 20)")
    time.sleep(0.3)
    result = js.run("throw_ = setTimeout(() => { throw new Error('now'); }, 10);\n"
                    "await new Promise((r) => setTimeout(r, 100))")
    assert_success(result)
    assert result.text("stderr") == "", result.text("stderr")
    assert result.text() == "mine: now\n"


def test_js_a_rejection_handled_in_the_same_cell_is_no_error(js: AgentDriver) -> None:
    result = js.run("const p = Promise.reject(new Error('caught'));\n"
                    "p.catch((e) => console.log('handled', e.message)); 2")
    assert result.done["status"] == "success", result.done
    assert result.text() == "handled caught\n" and result.text("stderr") == ""


@pytest.mark.parametrize(("code", "summary"), [
    ("await fetch('http://no-such-host.invalid/')",
     "TypeError: fetch failed (getaddrinfo ENOTFOUND no-such-host.invalid. There is no network"),
    ("await require('dns').promises.lookup('no-such-host.invalid')",
     "Error: getaddrinfo ENOTFOUND no-such-host.invalid (There is no network"),
    ("require('http').get('http://no-such-host.invalid/');\n"
     "await new Promise((r) => setTimeout(r, 2000))",
     "Uncaught Error: getaddrinfo ENOTFOUND no-such-host.invalid (There is no network"),
])
def test_js_no_network_errors_say_there_is_no_network(js: AgentDriver, code: str,
                                                      summary: str) -> None:
    """``fetch`` said only "TypeError: fetch failed": its reason is its cause (a review of
    model-written cells)."""
    result = js.run(code, timeout=20)
    assert result.done["status"] == "error"
    assert result.done["error"].startswith(summary), result.done["error"]
    assert "There is no network here" in result.text("stderr"), result.text("stderr")


def test_js_other_errors_get_no_network_note(js: AgentDriver) -> None:
    for code in ("throw new Error('plain')",
                 "const e = new Error('x');\n"
                 "Object.defineProperty(e, 'cause', { get() { throw e; } });\nthrow e",
                 "throw Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })"):
        result = js.run(code)
        assert result.done["status"] == "error" and not result.done["restarted"], code
        assert "network" not in result.text("stderr") + result.done["error"], code


@pytest.mark.parametrize("code", [
    "const path = require('path');\nconst file = path.join(__dirname, 'data.json')",
    "console.log(__filename)",
])
def test_js_a_cell_reaching_for_its_file_is_told_it_has_none(js: AgentDriver,
                                                             code: str) -> None:
    """Script code (``path.join(__dirname, ...)``) failed with a bare "__dirname is not
    defined"; the error now says why and what to use."""
    result = js.run(code)
    assert result.done["status"] == "error"
    assert result.done["error"].startswith("ReferenceError: __"), result.done["error"]
    assert "A cell is not a file" in result.done["error"]
    assert "use process.cwd()" in result.text("stderr"), result.text("stderr")


def test_js_other_reference_errors_get_no_file_note(js: AgentDriver) -> None:
    for code in ("console.log(dirname)", "throw new Error('__dirname is not defined')",
                 "let __dirname = 1; __dirname.x.y"):
        result = js.run(code)
        assert result.done["status"] == "error", code
        assert "not a file" not in result.text("stderr") + result.done["error"], code


def test_js_objects_node_makes_are_instances_of_the_cells_builtins(js: AgentDriver) -> None:
    """Cells ran in a vm context of their own, whose builtins are not Node's: an array from
    ``fs``, an error ``fs`` throws, a ``structuredClone`` failed ``instanceof`` (a review of
    model-written cells: ``catch (e) { if (e instanceof Error) ... }`` took the wrong
    branch). They run in Node's main context now, as in Node's REPL."""
    result = js.run(
        "const fs = require('fs');\n"
        "let thrown;\ntry { fs.readFileSync('/no/such/file'); } catch (e) { thrown = e; }\n"
        "[fs.readdirSync('/') instanceof Array, thrown instanceof Error,\n"
        " structuredClone(new Date(0)) instanceof Date,\n"
        " structuredClone({}).constructor === Object,\n"
        " fs.promises.stat('/') instanceof Promise, Buffer.alloc(1) instanceof Uint8Array,\n"
        " require('events').once(new (require('events'))(), 'x') instanceof Promise].join(' ')")
    assert_success(result)
    assert result.displays[0]["data"]["text/plain"] == "'" + " ".join(["true"] * 7) + "'"


@pytest.mark.parametrize("change", [
    "Array.prototype.push = function () { return 0; }",
    "Array.prototype.shift = () => undefined",
    "String.prototype.indexOf = () => -1",
    "JSON.parse = () => { throw 1; }",
    "JSON.stringify = () => 'x'",
    "Object.prototype.t = 'interrupt'",
    "Object.prototype.then = function () {}",
    "Object.prototype.toJSON = () => 'x'",
    "Object.assign = () => ({})",
    "Object.create = () => ({ then() {} })",
    "var Boolean = 5",
    "var Array = 5",
    "var setImmediate = 5",
])
def test_js_a_cell_that_changes_builtins_leaves_the_worker_working(
        js: AgentDriver, change: str) -> None:
    """Cells share the worker's realm: each of these hung the next cell until its time
    limit, failed every later cell, or broke the protocol (a review), because the worker
    ran on the same builtins. Its control channel, frames and statuses no longer do."""
    assert_success(js.run("var keep = 42"))
    assert_success(js.run(f"{change}; 1"))
    after = js.run("keep + 1", timeout=10)
    assert_success(after)
    assert after.displays[0]["data"]["text/plain"] == "43"
    assert after.done["restarted"] is False
    failed = js.run("Promise.reject(new Error('r')); 1", timeout=10)
    assert failed.done["error"] == "Uncaught (in promise) Error: r", failed.done
    assert js.run("keep").done["restarted"] is False


def test_js_globals_a_cell_assigns_do_not_break_the_worker(js: AgentDriver) -> None:
    """In the main context a cell's ``var JSON`` or ``var process`` is the global object's
    own: the worker keeps the builtins it had at its start."""
    for code in ("var JSON = 5; var Promise = 0; var process = 3; var Object = null",
                 "var Error = 1; var String = 2; var Set = 4"):
        assert_success(js.run(code))
    after = js.run("console.log('printed'); [JSON, process]")
    assert_success(after)
    assert after.text() == "printed\n"
    assert after.displays[0]["data"]["text/plain"] == "[ 5, 3 ]"
    failed = js.run("await 1; throw new TypeError('still reported')")
    assert failed.done["error"] == "TypeError: still reported", failed.done


@pytest.mark.parametrize("code", [
    "const rl = require('readline/promises').createInterface({ input: process.stdin });\n"
    "const answer = await rl.question('name? ');\nconsole.log('hello', answer)",
    "await new Promise(() => {})",
    # A promise only a later cell could settle: cells run one after the other.
    "await new Promise((resolve) => { globalThis.later = resolve; })",
])
def test_js_a_cell_that_awaits_what_nothing_can_settle_ends_at_once(
        js: AgentDriver, code: str) -> None:
    """Node exits there ("unsettled top-level await", exit code 13) when its loop has
    nothing left to do; the cell waited out its whole time limit (a review of model-written
    cells: `await rl.question(...)` with an empty stdin)."""
    js.run("var kept = 'yes'")
    result = js.run(code, timeout=10)
    assert (result.done["status"], result.done["exit_code"]) == ("error", 13), result.done
    assert result.done["error"].startswith(
        "Error: the cell awaits a promise that nothing can settle"), result.done
    assert "stdin is empty" in result.text("stderr")
    assert result.done["restarted"] is False
    assert js.run("kept").displays[0]["data"]["text/plain"] == "'yes'"


@pytest.mark.parametrize(("code", "shown"), [
    ("await new Promise((r) => setTimeout(() => r('timer'), 300))", "'timer'"),
    ("await new Promise((r) => require('child_process').exec('sleep 0.3; echo child',"
     " (e, out) => r(out)))", "'child\\n'"),
    ("(await require('fs').promises.readFile('/proc/self/stat', 'utf8')).length > 0",
     "true"),
    # An interval cleared by the timer the cell awaits.
    ("const tick = setInterval(() => {}, 20);\n"
     "await new Promise((r) => setTimeout(() => { clearInterval(tick); r(5); }, 200))", "5"),
])
def test_js_a_cell_that_awaits_a_timer_a_child_or_a_file_is_left_to_finish(
        js: AgentDriver, code: str, shown: str) -> None:
    result = js.run(code, timeout=10)
    assert result.done["status"] == "success", result.done
    assert result.displays[0]["data"]["text/plain"] == shown


@pytest.mark.parametrize(("code", "printed"), [
    # What a model writes to show the event loop: C was lost.
    ("console.log('A'); setTimeout(() => console.log('C'), 0);\n"
     "Promise.resolve().then(() => console.log('B'))", "A\nB\nC\n"),
    ("setTimeout(() => console.log('late'), 300); console.log('now')", "now\nlate\n"),
    ("require('fs').readFile('/proc/self/stat', 'utf8', (err, data) => "
     "console.log('read', err, data.length > 0))", "read null true\n"),
    ("require('child_process').exec('echo child', (err, out) => console.log(out.trim()))",
     "child\n"),
    ("require('child_process').spawn('sleep', ['0.2']).on('exit', (c) => console.log('exit', c))",
     "exit 0\n"),
    # Input read to its end (stdin is empty), printed on 'close'.
    ("const rl = require('readline').createInterface({ input: process.stdin });\n"
     "const lines = []; rl.on('line', (l) => lines.push(l));\n"
     "rl.on('close', () => console.log('lines', lines.length))", "lines 0\n"),
    ("require('fs').createReadStream('/proc/self/stat').on('data', () => console.log('data'))",
     "data\n"),
    ("let n = 0; function again() { console.log(n++); if (n < 3) setTimeout(again, 30); }\n"
     "again()", "0\n1\n2\n"),
    ("setImmediate(() => console.log('immediate'))", "immediate\n"),
    ("async function main() { await new Promise((r) => setTimeout(r, 50));"
     " console.log('main'); }\nmain(); console.log('started')", "started\nmain\n"),
    # An interval cleared by a timer: the timer holds the cell, the interval does not.
    ("const iv = setInterval(() => {}, 10);\n"
     "setTimeout(() => { clearInterval(iv); console.log('cleared'); }, 200)", "cleared\n"),
    # A server started in the cell does not hold it; the request to it does. Listening on a
    # host name starts it in a callback, during the wait.
    ("const http = require('http');\n"
     "const srv = http.createServer((q, s) => s.end('pong'));\n"
     "srv.listen(0, 'localhost', () => http.get({ host: 'localhost', port: srv.address().port },"
     " (r) => r.on('data', (d) => console.log(String(d)))))", "pong\n"),
])
def test_js_a_cell_ends_once_the_work_it_started_is_done(
        js: AgentDriver, code: str, printed: str) -> None:
    """As a Node.js program ends when its event loop is empty. The cell ended with its code,
    and what the callbacks printed came after its ``done``, where it reached no one: a
    callback's ``fs.readFile``, ``exec``, readline's 'close', a timer (the event-loop demo
    models write printed A and B, never C)."""
    result = js.run(f"{code};\nvar kept = 'yes'", timeout=10)
    assert_success(result)
    assert result.text() == printed
    assert result.done["execution_time_ms"] < 5000, result.done
    assert js.run("kept").displays[0]["data"]["text/plain"] == "'yes'"


@pytest.mark.parametrize("code", [
    "setInterval(() => {}, 50)",
    "require('net').createServer().listen(0)",
    "require('dgram').createSocket('udp4').bind(0)",
    "require('fs').watch('/proc/self')",
    "require('fs').watchFile('/proc/self/stat', () => {})",
    "setTimeout(() => {}, 60_000).unref()",
    # Started by a callback during the wait (a review: they held the cell to its limit).
    "setTimeout(() => { globalThis.late = require('net').createServer().listen(0); }, 10)",
    "setTimeout(() => { globalThis.late = setInterval(() => {}, 60_000); }, 10)",
    "setTimeout(() => { globalThis.late = require('fs').watch('/proc/self'); }, 10)",
    "require('child_process').spawn('true')\n"
    "  .on('close', () => { globalThis.late = setInterval(() => {}, 60_000); })",
])
def test_js_work_meant_to_run_on_does_not_hold_a_cell(js: AgentDriver, code: str) -> None:
    """An interval, a listening server, a watcher run until the user stops them: a cell that
    starts one ends with its code, and so do the cells after it."""
    for cell in (f"{code}; 1", "2"):
        result = js.run(cell, timeout=10)
        assert_success(result)
        assert result.done["execution_time_ms"] < 5000, result.done


def test_js_work_an_earlier_cell_left_does_not_hold_a_cell(js: AgentDriver) -> None:
    """A timer an interval of an earlier cell started (between cells) runs on its own, and
    so does an interval of the same period a later cell's callback starts."""
    assert_success(js.run(
        "let made = 0;\n"
        "setInterval(() => { if (!made++) globalThis.long = setTimeout(() => {}, 60_000); }, 10)"))
    time.sleep(0.3)
    result = js.run("typeof long", timeout=10)
    assert_success(result)
    assert result.displays[0]["data"]["text/plain"] == "'object'"
    assert result.done["execution_time_ms"] < 5000, result.done
    later = js.run("setTimeout(() => { globalThis.again = setInterval(() => {}, 60_000); }, 10)",
                   timeout=10)
    assert_success(later)
    assert later.done["execution_time_ms"] < 5000, later.done


@pytest.mark.parametrize("chain", [
    "let k = 0; (function chain() { if (++k < 2000) setImmediate(chain); })()",
    "let k = 0; (function chain() { if (++k < 500) require('fs').stat('/', chain); })()",
])
def test_js_many_timers_left_do_not_slow_the_wait(js: AgentDriver, chain: str) -> None:
    """After each callback the wait looks for timers the callback started: it read every
    timer list each time, so 20,000 lists an earlier cell left made a chain of 2,000
    immediates take 7 s, and one of 500 ``fs.stat`` callbacks 4 s (two reviews). It reads
    them only when the count of timers changed, or a timer of the cell's ended."""
    assert_success(js.run(
        "for (let i = 0; i < 20_000; i++) setTimeout(() => {}, 600_000 + i).unref()"))
    result = js.run(chain, timeout=10)
    assert_success(result)
    assert result.done["execution_time_ms"] < 2000, result.done


@pytest.mark.parametrize("loop", [
    "function poll() { globalThis.polled = setTimeout(poll, 50); }\npoll()",
    "(async () => { for (;;) await new Promise((r) => setTimeout(r, 50)); })()",
])
def test_js_a_loop_an_earlier_cell_left_does_not_hold_later_cells(
        js: AgentDriver, loop: str) -> None:
    """A loop that starts a new timer each turn, left running by an earlier cell (a review:
    each of its timers counted as the waiting cell's own, so every later cell that left or
    awaited a timer ran to its time limit). A timer knows what made it; one made after an
    ``await`` counts as background when a timer was pending as the cell started."""
    js.run_interrupted(loop, after=0.3)  # a loop as a program runs it: until stopped
    for cell in ("setTimeout(() => console.log('mine'), 100)",
                 "await new Promise((r) => setTimeout(r, 200)); console.log('mine')",
                 "async function main() { await new Promise((r) => setTimeout(r, 50));"
                 " console.log('mine'); }\nmain()"):
        result = js.run(cell, timeout=10)
        assert_success(result)
        assert result.text() == "mine\n", result.text()
        assert result.done["execution_time_ms"] < 5000, result.done


def test_js_the_cells_own_chains_are_known_beside_background_work(js: AgentDriver) -> None:
    """Ownership is noted as work is made, not only when the worker looks: a chain of
    immediates or timers, and a timer an I/O callback starts, were taken for background
    (and their output came in a later cell) when a timeout of an earlier cell was pending;
    an earlier cell's immediate loop was taken for the cell's own (it ran to its limit);
    a timer unref'd and then ref'd was never waited for (a review)."""
    js.run_interrupted("globalThis.sleep = (ms) => new Promise((r) => setTimeout(r, ms));\n"
                       "(async () => { for (;;) await sleep(100); })()", after=0.3)
    for cell, printed in [
        ("let k = 0; (function f() { if (++k < 2000) setImmediate(f);"
         " else console.log('immediates', k); })()", "immediates 2000\n"),
        ("let j = 0; (function g() { if (++j < 20) setTimeout(g, 0);"
         " else console.log('timers', j); })()", "timers 20\n"),
        ("require('fs').readFile('/proc/self/stat', () =>"
         " setTimeout(() => console.log('after the read'), 10))", "after the read\n"),
        ("require('child_process').exec('echo hi', (e, out) =>"
         " setTimeout(() => console.log('after', out.trim()), 10))", "after hi\n"),
        ("const t = setTimeout(() => console.log('fired'), 80); t.unref();"
         " setTimeout(() => t.ref(), 10)", "fired\n"),
    ]:
        result = js.run(cell, timeout=10)
        assert_success(result)
        assert result.text() == printed, (cell, result.text())
    js.run_interrupted("setImmediate(function spin() { setImmediate(spin); })", after=0.3)
    later = js.run("setTimeout(() => console.log('mine'), 30)", timeout=10)
    assert (later.done["status"], later.text()) == ("success", "mine\n"), later.done
    assert later.done["execution_time_ms"] < 5000, later.done


@pytest.mark.parametrize(("cell", "printed"), [
    ("process.nextTick(() => setTimeout(() => console.log('tick'), 30))", "tick\n"),
    ("const e = new (require('events'))();\n"
     "e.on('go', () => setTimeout(() => console.log('go'), 30));\n"
     "process.nextTick(() => e.emit('go'))", "go\n"),
    ("queueMicrotask(() => setTimeout(() => console.log('micro'), 30))", "micro\n"),
    ("const { Readable, Writable } = require('stream');\nconst got = [];\n"
     "Readable.from(['a', 'b', 'c']).pipe(new Writable({ objectMode: true,"
     " write(c, e, cb) { got.push(c); setTimeout(cb, 5); } }))"
     ".on('finish', () => console.log('finish', got.join('')));\n0", "finish abc\n"),
    ("async function main() { await new Promise((r) => setTimeout(r, 10));"
     " console.log('step1'); }\nmain();\nconsole.log('kicked off')", "kicked off\nstep1\n"),
])
def test_js_what_a_cell_made_before_its_wait_is_its_own_beside_a_pending_timeout(
        js: AgentDriver, cell: str, printed: str) -> None:
    """Beside an earlier cell's pending timeout, a timer that the cell's ticks or promises'
    callbacks made (an event emitted on the next tick, a piped stream) was taken for
    background work: the cell ended at once, its output in the next (a review). A cell that
    awaited nothing ran alone until its wait: what it made meanwhile is its own."""
    js.run_interrupted("setTimeout(() => {}, 600_000);\nawait new Promise(() => {})", after=0.3)
    result = js.run(cell, timeout=10)
    assert_success(result)
    assert result.text() == printed
    assert js.run("1").text() == ""


@pytest.mark.parametrize("cell", [
    "setTimeout(() => { const p = Promise.resolve();\n"
    "  setTimeout(() => p.then(() => setTimeout(() => console.log('late'), 100)), 30); }, 30)",
    "setTimeout(async () => { const p = Promise.resolve(1);\n"
    "  await new Promise((r) => setTimeout(r, 30)); await p;\n"
    "  setTimeout(() => console.log('late'), 100); }, 30)",
])
def test_js_a_settled_promise_still_makes_the_cells_work(js: AgentDriver, cell: str) -> None:
    """A promise the wait forgot once it settled was the maker, not known, of a ``then`` or an
    ``await`` of it: beside an earlier cell's timeouts its timer was background, and the cell
    ended without its output (a review). A promise is forgotten once collected."""
    assert_success(js.run("globalThis.iv = setInterval(() => setTimeout(() => {}, 900), 100)"))
    time.sleep(0.3)
    result = js.run(cell, timeout=10)
    assert_success(result)
    assert result.text() == "late\n"
    js.run("clearInterval(iv)")


def test_js_the_cells_are_the_main_module(js: AgentDriver) -> None:
    """``if (require.main === module) main();``, which models write often, ran nothing:
    ``require.main`` was the worker's module (and showed its path), for the cells and for the
    modules they load (two reviews)."""
    result = js.run("async function main() { await new Promise((r) => setTimeout(r, 10));"
                    " console.log('main ran'); }\n"
                    "if (require.main === module) { main(); }\n"
                    "const mod = require('path').join(require('os').tmpdir(),"
                    " `mainmod-${process.pid}.js`);\n"
                    "require('fs').writeFileSync(mod, 'module.exports = require.main.filename');\n"
                    "console.log(require(mod) === module.filename,"
                    " module.filename.includes('worker'), typeof __dirname)", timeout=10)
    assert_success(result)
    assert result.text() == "true false undefined\nmain ran\n"


@pytest.mark.parametrize("cell", [
    "globalThis.n = 0;\n"
    "(async () => { for (; n < 3000; n++) await new Promise((r) => setImmediate(r));"
    " console.log('done', n); })();\n1",
])
def test_js_a_look_between_the_interval_and_an_immediate_sees_the_batch(
        js: AgentDriver, cell: str) -> None:
    """The look every 10 ms, coming between, made the next look (an immediate) take itself for
    a stale one: it did not read its batch, and an un-awaited loop of ``await``ed immediates
    was dropped after a few hundred turns (a review)."""
    result = js.run(cell, timeout=10)
    assert_success(result)
    assert result.text() == "done 3000\n"


def test_js_a_child_the_cells_interval_spawned_holds_it(js: AgentDriver) -> None:
    """An interval runs on, but a child it spawned holds the cell, as it holds a program (a
    review: it was let go with what other work made). A timer of the cell's holds it until
    the interval has run."""
    result = js.run("setTimeout(() => console.log('guard'), 100);\n"
                    "const iv = setInterval(() => { clearInterval(iv);\n"
                    "  const p = require('child_process')\n"
                    "    .spawn('sh', ['-c', 'sleep 0.3; echo hi']);\n"
                    "  p.stdout.on('data', (d) => console.log('out', String(d).trim()));\n"
                    "  p.on('close', () => console.log('close')); }, 20)", timeout=10)
    assert_success(result)
    assert result.text() == "guard\nout hi\nclose\n"


def test_js_connections_to_the_cells_server_from_other_work_do_not_hold_it(
        js: AgentDriver) -> None:
    """A server runs on, and so does what it makes: requests an earlier cell's client made to
    it every 100 ms (each answered after 150 ms) held the cell that started the server until
    its time limit (a review)."""
    js.run("const http = require('http');\n"
           "globalThis.iv = setInterval(() => globalThis.port && http.get("
           "`http://127.0.0.1:${port}/`, (r) => r.resume()).on('error', () => {}), 100)")
    result = js.run("globalThis.srv = http.createServer((q, s) => setTimeout(() => s.end('ok'),"
                    " 150)).listen(0, '127.0.0.1',"
                    " () => { globalThis.port = srv.address().port; });\n"
                    "setTimeout(() => console.log('own'), 500)", timeout=10)
    assert_success(result)
    assert result.text() == "own\n"
    assert result.done["execution_time_ms"] < 5000, result.done
    js.run("clearInterval(iv); srv.close()")


@pytest.mark.parametrize("cell", [
    "setImmediate(async () => { await null; await null; setImmediate(() => console.log('done')) })",
    "(async () => { for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));"
    " console.log('done') })()",
    "async function main() { await new Promise((r) => setImmediate(r));"
    " await new Promise((r) => setTimeout(r, 5)); await new Promise((r) => setImmediate(r));"
    " console.log('done') }\nmain()",
])
def test_js_an_immediate_queued_behind_the_look_holds_the_cell(js: AgentDriver, cell: str) -> None:
    """The look after a callback is an immediate, and Node runs a turn's immediates out of its
    queue: one a promise's callback queued behind the look (after two ``await``s in an
    immediate's callback; an ``await`` of a promise an immediate resolves) was not seen, and
    the cell ended before it (its output came in the next cell)."""
    result = js.run(cell, timeout=10)
    assert_success(result)
    assert result.text() == "done\n"
    assert js.run("1").text() == ""


def test_js_a_long_wait_beside_an_immediate_loop_keeps_the_heap_small(js: AgentDriver) -> None:
    """The wait noted every resource made while it lasted, and forgot none: beside an
    immediate loop (a million a second) a later cell's 15 s timer filled the worker's heap
    in 11 s, and the interpreter died with the session's state (a review). What has ended
    is forgotten."""
    js.run_interrupted("setImmediate(function spin() { setImmediate(spin); })", after=0.3)
    heap = "Math.round(process.memoryUsage().heapUsed / 1e6)"
    result = js.run(f"const before = {heap};\n"
                    f"setTimeout(() => console.log({heap} - before), 3000)", timeout=20)
    assert result.done["status"] == "success", result.done
    assert int(result.text()) < 20, result.text()  # MB: it grew by 90 to 150 before


@pytest.mark.parametrize("unseen", [
    "new (require('worker_threads').Worker)('setInterval(() => {}, 1000)', { eval: true })",
    "require('zlib').gzip('abc', () => {})",
])
def test_js_work_node_does_not_list_holds_no_cell(js: AgentDriver, unseen: str) -> None:
    """A worker thread and work on Node's thread pool are in none of Node's lists: a cell
    that leaves them ends with its code, and a worker thread left running held every later
    cell to its time limit (a review)."""
    assert_success(js.run(f"{unseen}; 1", timeout=10))
    result = js.run("setTimeout(() => console.log('later'), 50)", timeout=10)
    assert_success(result)
    assert result.text() == "later\n"
    assert result.done["execution_time_ms"] < 5000, result.done


def test_js_the_wait_survives_a_cell_that_breaks_what_it_uses(js: AgentDriver) -> None:
    """The control pipe's ref and unref, an AsyncResource's id, the worker's own
    beforeExit listener and process.nextTick: a cell that broke one made later cells run to
    their time limit, or ended the worker (two reviews)."""
    js.run("var kept = 'yes'")
    assert_success(js.run(
        "require('net').Socket.prototype.unref = () => {};\n"
        "require('net').Socket.prototype.ref = () => { throw new Error('ref'); };\n"
        "require('async_hooks').AsyncResource.prototype.asyncId = () => { throw 1; };\n"
        "process.removeAllListeners('beforeExit'); process.nextTick = () => {}; 1"))
    timer = js.run("setTimeout(() => console.log('timer'), 20)", timeout=10)
    assert (timer.done["status"], timer.text()) == ("success", "timer\n"), timer.done
    stalled = js.run("await new Promise(() => {})", timeout=10)
    assert stalled.done["exit_code"] == 13, stalled.done
    assert js.run("kept").displays[0]["data"]["text/plain"] == "'yes'"


def test_js_an_error_in_the_work_a_cell_left_ends_the_cell(js: AgentDriver) -> None:
    """As it ends a Node.js program: the cell does not wait for its other timers."""
    result = js.run("setTimeout(() => console.log('never'), 30_000);\n"
                    "setTimeout(() => { throw new RangeError('in a timer'); }, 50)", timeout=10)
    assert result.done["status"] == "error", result.done
    assert result.done["error"] == "Uncaught RangeError: in a timer", result.done
    assert result.done["execution_time_ms"] < 5000, result.done
    assert js.run("1").done["restarted"] is False


def test_js_a_cell_waiting_for_its_work_can_be_interrupted(js: AgentDriver) -> None:
    js.run("var kept = 'yes'")
    result = js.run_interrupted("setTimeout(() => console.log('never'), 30_000); 1", after=0.5)
    assert result.done["status"] == "interrupted", result.done
    assert result.text() == ""
    after = js.run("kept", timeout=10)
    assert after.displays[0]["data"]["text/plain"] == "'yes'"
    assert after.done["execution_time_ms"] < 5000, after.done


def test_js_a_caught_error_printed_shows_the_cells_frames_alone(js: AgentDriver) -> None:
    """An error a cell catches and prints (``console.error(e)``, ``e.stack``,
    ``console.trace()``) showed the worker's ``runCell`` and ``pump`` and Node's stream
    frames below the cell's (a review); an uncaught one was already shown without them."""
    result = js.run("try { JSON.parse('{bad') } catch (e) { console.error(e) }\n"
                    "function f() { console.trace('here') }\nf()\n"
                    "try { require('fs').readFileSync('/nope') } catch (e) {"
                    " console.log(e.stack) }")
    assert_success(result)
    text = result.text() + result.text("stderr")
    assert "worker_node.js" not in text and "node:" not in text, text
    assert "    at cell-1:1:12" in text and "    at f (cell-1:2:24)" in text, text
    assert "Error: ENOENT: no such file or directory, open '/nope'\n    at cell-1:4:" in text


@pytest.mark.parametrize(("code", "said"), [
    ("require('lodash')", "Cannot find module 'lodash'"),
    ("import fetch from 'node-fetch'", "Cannot find package 'node-fetch' imported from a cell"),
    ("const m = await import('left-pad')", "Cannot find package 'left-pad' imported from a cell"),
])
def test_js_a_missing_package_says_nothing_can_be_installed(
        js: AgentDriver, code: str, said: str) -> None:
    """Python and bash say so; Node said only that the package was not found, and named the
    worker's file as the importer (a review: a model tries npm install next)."""
    result = js.run(code)
    assert result.done["status"] == "error"
    stderr = result.text("stderr")
    assert said in stderr and "Packages cannot be installed here" in stderr, stderr
    assert "worker_node.js" not in stderr + result.done["error"], result.done
    assert "Packages cannot be installed here" in result.done["error"]


def test_js_an_import_of_a_missing_file_names_the_working_directorys(js: AgentDriver) -> None:
    """A relative import() that found no file was resolved against the worker's own file,
    and the error named a path beside it. A file that is there loads, as before."""
    missing = js.run("import y from './nowhere.mjs'")
    assert "Cannot find module '" + os.getcwd() + "/nowhere.mjs' imported from a cell" in (
        missing.text("stderr")), missing.text("stderr")
    assert "Packages cannot" not in missing.text("stderr")
    written = js.run("require('fs').writeFileSync('here.mjs', 'export const v = 42;');"
                     "const { v } = await import('./here.mjs'); v")
    again = js.run("(await import('./here.mjs?v=2')).v")  # a query string: a module again
    try:
        assert written.displays[0]["data"]["text/plain"] == "42", written.frames
        assert again.displays[0]["data"]["text/plain"] == "42", again.frames
    finally:
        Path("here.mjs").unlink(missing_ok=True)


@pytest.mark.parametrize("listen", [
    "process.on('SIGINT', () => console.log('heard'))",
    "const f = () => {}; process.on('SIGINT', f); process.off('SIGINT', f)",
])
def test_js_a_cells_sigint_listener_does_not_make_an_interrupt_kill_the_interpreter(
        js: AgentDriver, listen: str) -> None:
    """Node's signal handling put its handler over the watchdog's when a cell listened for
    SIGINT, and the default action (death) back once no listener was left: the next
    interrupted loop killed the interpreter, its state lost (a review). The listener is
    kept; the agent's interrupts are the watchdog's alone."""
    js.run("var kept = 'yes'")
    assert_success(js.run(listen))
    for _ in range(2):
        result = js.run_interrupted("for (let i = 0; i < 1e13; i++);", after=0.4)
        assert (result.done["status"], result.done["restarted"]) == ("interrupted", False)
    # in the same cell as the loop (a later review)
    result = js.run_interrupted(listen + "; for (let i = 0; i < 1e13; i++);", after=0.4)
    assert (result.done["status"], result.done["restarted"]) == ("interrupted", False)
    after = js.run("await null; [kept, process.listenerCount('SIGINT')]")
    count = 2 if "off" not in listen else 0
    assert after.displays[0]["data"]["text/plain"] == f"[ 'yes', {count} ]"
    assert "heard" not in after.text()


@pytest.mark.parametrize(("code", "exit_code"), [
    ("process.exitCode = 1; console.error('3 tests failed')", 1),
    ("setTimeout(() => { process.exitCode = 3 }, 10)", 3),
    ("process.exitCode = '2'", 2),
    ("process.exitCode = 0", 0),
    ("process.exitCode = 300", 44),
])
def test_js_process_exit_code_ends_the_cell_with_it(
        js: AgentDriver, code: str, exit_code: int) -> None:
    """``process.exitCode = 1`` (how a script fails without cutting its output short, and
    what node:test sets) was ignored: the cell succeeded, and the code stayed set for later
    cells (a review). The cell ends with it, as ``node script.js`` does, and it is cleared."""
    result = js.run(code)
    assert result.done["exit_code"] == exit_code, result.done
    if exit_code == 44:
        assert result.done["error"] == "process.exitCode was set to 300 (exit status 44)"
    elif exit_code:
        assert result.done["status"] == "error"
        assert result.done["error"] == f"process.exitCode was set to {exit_code}"
    else:
        assert_success(result)
    assert js.run("process.exitCode").displays == []  # undefined: not shown


def test_js_an_interrupt_stops_the_cells_own_timers_not_earlier_work(js: AgentDriver) -> None:
    """An interrupt (or the time limit) ended an awaiting cell's wait, but its loop, in the
    cell or in an async function it called, went on and printed into later cells, as did a
    timeout it left (a review). The cell's own timeouts are cleared; an interval an earlier
    cell started runs on."""
    js.run("var kept = 'yes'; const sleep = (ms) => new Promise((r) => setTimeout(r, ms));"
           "globalThis.n = 0; globalThis.iv = setInterval(() => { n++ }, 50)")
    for code in ("for (let i = 0; i < 100; i++) { console.log('tick', i); await sleep(100) }",
                 "async function main() {\n  for (let i = 0; i < 100; i++) {"
                 " console.log('tick', i); await sleep(100) }\n}\nawait main()",
                 "setTimeout(() => console.log('tick late'), 800); 1"):
        result = js.run_interrupted(code, after=0.5)
        assert (result.done["status"], result.done["restarted"]) == ("interrupted", False)
        time.sleep(0.8)
        after = js.run("const a = n; await sleep(300); [kept, n > a]")
        assert "tick" not in after.text() + after.text("stderr"), (code, after.frames)
        assert after.displays[0]["data"]["text/plain"] == "[ 'yes', true ]"
    js.run("clearInterval(iv)")


def test_js_an_awaiting_cell_can_still_be_interrupted(js: AgentDriver) -> None:
    """While a cell awaits, the control pipe does not keep the worker's loop alive; the
    interrupt still reaches it."""
    result = js.run_interrupted("await new Promise((r) => setTimeout(r, 30000))", after=0.5)
    assert result.done["status"] == "interrupted", result.done
    assert js.run("1 + 1").displays[0]["data"]["text/plain"] == "2"


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("{a: 1}", "{ a: 1 }"),
        ("  {a: 1, b: [2]}\n", "{ a: 1, b: [ 2 ] }"),
        ("{a: 1};", "1"),  # a statement: a block whose label is a
        ("{ var inBlock = 2; inBlock * 2 }", "4"),
        ("{ }", "{}"),
        ('{ "}": 1, s: "}" }', "{ '}': 1, s: '}' }"),
        # A block, then a statement on a later line (a review: they were read as one
        # expression, `{}(1)`, a TypeError, and `{}[1, 2]`, undefined):
        ("{}\n(1)", "1"),
        ("{}\n[1, 2]", "[ 1, 2 ]"),
        ("{}\n+1", "1"),
        ("{ label: for (;;) break label }", None),
    ],
)
def test_js_a_cell_that_is_an_object_literal_shows_the_object(js: AgentDriver, code: str,
                                                               shown: str | None) -> None:
    """As Node's REPL reads it: ``{a: 1}`` was a block with a label, and showed 1."""
    result = js.run(code)
    assert result.done["status"] == "success", result.done
    assert [d["data"]["text/plain"] for d in result.displays] == ([shown] if shown else [])


def test_js_interrupt_keeps_state(js: AgentDriver) -> None:
    js.run("let kept = 'yes'")
    result = js.run_interrupted("while (true) {}")
    assert result.done["status"] == "interrupted"
    assert result.done["restarted"] is False
    assert js.run("kept").displays[0]["data"]["text/plain"] == "'yes'"
    pending = js.run_interrupted("new Promise((resolve) => setTimeout(resolve, 100_000))")
    assert pending.done["status"] == "interrupted"


def test_js_process_exit_restarts(js: AgentDriver) -> None:
    js.run("let gone = 1")
    result = js.run("process.exit(4)")
    assert (result.done["status"], result.done["exit_code"]) == ("error", 4)
    assert result.done["restarted"] is True
    assert js.run("typeof gone").displays[0]["data"]["text/plain"] == "'undefined'"


def test_js_stdin_eof_and_streaming(js: AgentDriver) -> None:
    result = js.run("require('fs').readFileSync(0, 'utf8').length")
    assert result.displays[0]["data"]["text/plain"] == "0"
    live = js.run(
        "console.log('first');"
        " new Promise(r => setTimeout(() => { console.log('second'); r(); }, 1000))"
    )
    assert live.text() == "first\nsecond\n"
    assert_live(live)


def test_js_big_output(js: AgentDriver) -> None:
    result = js.run("for (let i = 0; i < 30000; i++) console.log(String(i).padStart(9, '0'))")
    assert result.text() == "".join(f"{i:09d}\n" for i in range(30000))


# ------------------------------------------------------------------------------- shell


def test_shell_cd_and_variables_persist(sh: AgentDriver, tmp_path: Path) -> None:
    assert_success(sh.run(f"cd {tmp_path}\nX=5\ndeclare -A m=([k]=v)\nf() {{ echo f$1; }}"))
    result = sh.run("pwd; echo $X ${m[k]}; f 1")
    assert result.text() == f"{tmp_path}\n5 v\nf1\n"


def test_shell_aliases_work_in_later_cells(sh: AgentDriver) -> None:
    """As in a terminal's bash (a review: ``alias ll='ls -la'`` then ``ll`` was "command not
    found")."""
    assert_success(sh.run("alias greet='echo hello'"))
    assert sh.run("greet world").text() == "hello world\n"


def test_shell_dollar_question_is_the_last_cells_status(sh: AgentDriver) -> None:
    """As in a terminal: ``false``, then ``echo $?`` in the next cell, prints 1 (it printed
    0: a review of model-written cells)."""
    sh.run("kept=yes")
    for code, printed in (("false", None), ("echo $?", "1\n"), ("echo $?", "0\n"),
                          ("(exit 7)", None), ("echo $?; echo $kept", "7\nyes\n")):
        result = sh.run(code)
        assert result.done["restarted"] is False, (code, result.done)
        if printed is not None:
            assert result.text() == printed, (code, result.done)


def test_shell_code_with_windows_line_endings_runs_as_written(sh: AgentDriver) -> None:
    """Python and Node take CRLF line endings; bash saw ``fi\\r`` (a syntax error) and
    values ending in a CR (a review). A CR alone, or in a string, is kept."""
    result = sh.run("x=5\r\necho \"x=$x\"\r\nif [ $x -gt 3 ]; then\r\n  echo big\r\nfi\r\n"
                    "printf 'a\\rb' | od -c | head -1\r\n")
    assert_success(result)
    assert result.text().splitlines()[:2] == ["x=5", "big"]
    assert "a  \\r   b" in result.text(), result.text()


def test_shell_exit_code_of_last_command(sh: AgentDriver) -> None:
    result = sh.run("true; false")
    assert (result.done["status"], result.done["exit_code"]) == ("error", 1)
    missing = sh.run("no_such_command_xyz")
    assert missing.done["exit_code"] == 127
    assert "no_such_command_xyz" in missing.text("stderr")
    assert sh.run("false; true").done["status"] == "success"


@pytest.mark.parametrize(
    "code", ["while true; do :; done", "sleep 100", "echo x; sleep 100; echo no"]
)
def test_shell_interrupt_keeps_shell(sh: AgentDriver, code: str) -> None:
    sh.run("KEPT=yes")
    result = sh.run_interrupted(code)
    assert result.done["status"] == "interrupted"
    assert result.done["restarted"] is False
    assert "no" not in result.text()
    assert sh.run("echo $KEPT").text() == "yes\n"


def test_shell_interrupts_keep_the_shell_after_an_interrupted_program(sh: AgentDriver) -> None:
    """Once an interrupt had stopped a program (``sleep``), the next interrupt of a cell of
    builtins only (a ``while`` loop) was never acted on: the grace ran out and the shell was
    restarted, its state lost (a review; bash 5.2 leaves its INT trap unable to run again
    after the trap returned from a wait). Each cell now arms the trap afresh."""
    sh.run("KEPT=yes")
    for code in ("sleep 100", "while true; do :; done", "sleep 100",
                 "while true; do :; done"):
        result = sh.run_interrupted(code)
        assert result.done["status"] == "interrupted", (code, result.done)
        assert result.done["restarted"] is False, code
        assert sh.run("echo $KEPT").text() == "yes\n", code


@pytest.mark.parametrize("code", ["while true; do :; done", "sleep 100",
                                  "f() { for ((i = 0; ; i++)); do :; done; }; f"])
def test_shell_a_bare_return_gives_its_status_after_an_interrupt(
        sh: AgentDriver, code: str) -> None:
    """Once the INT trap had returned from a cell, bash 5.2 took itself to be in a trap for
    good, and a bare ``return`` gave the status from before it: ``f() { false; return; }``
    returned 130, ``if f`` took the wrong branch, and the worker's ``trap -p`` exited 130 (a
    review). A cell's own CHLD trap is kept."""
    probe = "ok() { true; return; }; bad() { false; return; }; ok; echo $?; bad; echo $?"
    assert sh.run(probe).text() == "0\n1\n"
    for step in range(3):
        if step == 2:
            sh.run("trap 'echo child >&2' CHLD")  # (which ended the stale state by itself)
        result = sh.run_interrupted(code)
        assert (result.done["status"], result.done["restarted"]) == ("interrupted", False)
        after = sh.run(probe + "; if bad; then echo wrong; fi; trap -p INT; echo $?")
        assert after.text() == "0\n1\n0\n", after.text()
        assert (after.done["status"], after.done["exit_code"]) == ("success", 0)
    assert "echo child" in sh.run("trap -p CHLD").text()


@pytest.mark.parametrize("code", [
    "f() { while :; do :; done; }; f; echo after-f",
    "g() { local i=0; while :; do i=$((i + 1)); done; }; f() { g; echo after-g; }; f; echo end",
    "tick() { :; }; while :; do tick; done; echo after-loop",
])
def test_shell_an_interrupt_in_a_function_stops_the_whole_cell(sh: AgentDriver,
                                                               code: str) -> None:
    """The INT trap's ``return`` ended only the function the interrupt landed in: the rest of
    the cell ran on (``after-f`` printed, or a loop that calls a function went on for ever,
    and the service restarted the shell, its state lost). The interrupt now unwinds every
    function and the cell; a cell's ERR action is not run for the 130 each one returns, and
    no trap of the worker's is left behind."""
    sh.run("KEPT=yes; trap 'echo err-action' ERR")
    for _ in range(3):
        result = sh.run_interrupted(code, after=0.3)
        assert (result.done["status"], result.done["restarted"]) == ("interrupted", False)
        assert (result.text(), result.text("stderr")) == ("", "")
    after = sh.run("trap -p DEBUG; echo $KEPT; false")
    assert after.text() == "yes\nerr-action\n"


@pytest.mark.parametrize("code", ["while :; do :; done", "f() { while :; do :; done; }; f",
                                  "sleep 100",
                                  "quiet() { local -; set +x; \"$@\"; }; quiet sleep 100"])
def test_shell_set_e_survives_an_interrupt(sh: AgentDriver, code: str) -> None:
    """Models start shell cells with ``set -euo pipefail``: after that, an interrupt of a
    loop of builtins ended the shell ("bash exits: set -e is on and a command failed") and
    lost its state, for the 130 the interrupt returned; so did one in a function with
    ``local -``, which gives ``-e`` back as it returns. An interrupt returns 0 from each
    level it ends, and the cell's status is 130; an interrupt right behind its cell too."""
    sh.run("set -euo pipefail; KEPT=yes")
    stopped = sh.run_interrupted(code, after=0.3)
    assert (stopped.done["status"], stopped.done["restarted"]) == ("interrupted", False)
    assert (stopped.done["exit_code"], stopped.text("stderr")) == (130, "")
    if "sleep" not in code:  # (a SIGINT as bash forks a program: do_interrupt)
        sent_at = time.monotonic()
        behind = sh.exec(code)
        sh.send({"t": "interrupt"})
        result = sh.collect(behind, sent_at)
        assert (result.done["status"], result.done["restarted"]) == ("interrupted", False)
    assert sh.run('echo "$? $KEPT $-"').text().startswith("130 yes e")
    ended = sh.run("false; echo not-reached")  # set -e still ends the shell
    assert ended.done["restarted"] is True
    assert ended.text("stderr") == "bash exits: set -e is on and a command failed\n"


def test_shell_an_interrupt_leaves_a_functions_options_and_clean_up_as_bash_would(
        sh: AgentDriver) -> None:
    """A review of the unwinding: a function's RETURN clean-up (``trap '...' RETURN``) was
    run again for each return out of it, for ever (no ``done``; the service restarted the
    shell); a function's ``local -; set -e`` left ``set -e`` on for later cells; a branch
    after the interrupted function (``while f; do``) ran, and the cell's status was 0."""
    sh.run("KEPT=yes")
    local = sh.run_interrupted("f() { local -; set -e; while :; do :; done; }; f", after=0.3)
    assert local.done["status"] == "interrupted"
    assert sh.run("false; echo $KEPT").text() == "yes\n"  # no set -e left on
    for code in ("f() { while :; do :; done; }; while f; do echo body; done",
                 "f() { while :; do :; done; }; if f; then echo then; fi; f && echo and"):
        branch = sh.run_interrupted(code, after=0.3)
        assert (branch.done["status"], branch.done["exit_code"]) == ("interrupted", 130)
        assert branch.text() == ""
        assert sh.run("echo $?").text() == "130\n"
    for body in ("sleep 100", "while :; do :; done"):
        clean_up = sh.run_interrupted("work() { trap 'echo cleaned' RETURN; " + body
                                      + "; echo after; }; work; echo end", after=0.3)
        assert (clean_up.done["status"], clean_up.done["restarted"]) == ("interrupted", False)
        assert clean_up.text() == "cleaned\n"
        assert sh.run("echo $KEPT").text() == "yes\n"


def test_shell_a_functions_return_trap_runs_as_it_returns(sh: AgentDriver) -> None:
    """``trap '...' RETURN`` in a function (a script's clean-up of its temporary file) ran at
    once, as the worker's ``trap`` function returned (the file was gone before its use),
    then at the end of that cell and of every later one; ``trap - RETURN`` and ``trap -
    DEBUG`` did not take a trap off (bash put it back as the function returned; a review)."""
    made = sh.run("work() { tmp=$(mktemp); trap 'echo \"clean $?\"; rm -f \"$tmp\"' RETURN\n"
                  "  [ -e \"$tmp\" ] && echo exists; false; }\nwork; echo \"end $?\"")
    assert (made.text(), made.text("stderr")) == ("exists\nclean 1\nend 1\n", "")
    kept = sh.run('[ -e "$tmp" ] || echo removed; trap -p RETURN; f() { :; }; f')
    assert kept.text() == "removed\ntrap -- 'echo \"clean $?\"; rm -f \"$tmp\"' RETURN\n"
    assert sh.run("trap - RETURN; trap -p; f; echo ok").text() == "ok\n"
    assert sh.run("trap 'n=$((n + 1))' DEBUG; n=0; :; :; echo $n").text() == "3\n"
    assert sh.run("trap - DEBUG; n=0; :; :; echo $n; trap -p").text() == "0\n"
    # In a subshell (a function's output taken with $(...)), and interrupted inside the action.
    sub = sh.run("g() { local d; d=$(mktemp -d); trap 'rm -rf \"$d\"' RETURN\n"
                 "  echo data > \"$d/a\"; cat \"$d/a\"; }\nx=$(g); echo \"x=[$x]\"")
    assert (sub.text(), sub.text("stderr")) == ("x=[data]\n", "")
    stuck = sh.run_interrupted("h() { trap 'echo in-return; while :; do :; done' RETURN; }\n"
                               "h; echo after", after=0.5)
    assert (stuck.done["status"], stuck.done["restarted"]) == ("interrupted", False)
    assert stuck.text() == "in-return\n"
    assert sh.run("trap - RETURN; echo alive").text() == "alive\n"


def test_shell_errors_name_the_cells_own_line(sh: AgentDriver) -> None:
    """The cell is run by an eval on the 11th line of cell.bash, so bash named line 13 for
    the cell's third (a review: a model fixing code by line number edits the wrong one)."""
    missing = sh.run("echo one\necho two\nno_such_command_xyz")
    assert "line 3: no_such_command_xyz: command not found" in missing.text("stderr")
    broken = sh.run("echo one\nif then fi")
    assert "line 2: syntax error" in broken.text("stderr"), broken.text("stderr")


def test_shell_exit_restarts(sh: AgentDriver) -> None:
    sh.run("GONE=1")
    result = sh.run("echo bye; exit 3")
    assert result.text() == "bye\n"
    assert (result.done["status"], result.done["exit_code"]) == ("error", 3)
    assert result.done["restarted"] is True
    assert sh.run('echo "[$GONE]"').text() == "[]\n"


def test_shell_ended_by_set_e_says_why(sh: AgentDriver) -> None:
    """bash says nothing when ``set -e`` ends it: the cell only said the shell exited (a
    review of model-written cells, which often start with ``set -euo pipefail``)."""
    result = sh.run("set -e\necho before\ngrep -q x /dev/null\necho after")
    assert result.text() == "before\n"
    assert result.done["restarted"] is True
    assert result.text("stderr") == "bash exits: set -e is on and a command failed\n"
    explicit = sh.run("set -e\nexit 4")
    assert explicit.done["exit_code"] == 4 and explicit.text("stderr") == ""
    assert sh.run("false").text("stderr") == ""  # a fresh shell: no set -e


def test_shell_a_cells_exit_trap_runs_when_the_cell_ends(sh: AgentDriver) -> None:
    """A script's clean-up (``trap 'rm -rf "$tmp"' EXIT``) ran only when the shell ended: its
    files stayed, and its output came in whichever later cell ended the shell, or never (a
    review of model-written shell cells). It runs at the end of the cell that set it, with
    the cell's status as ``$?``, and is gone after."""
    result = sh.run("tmp=$(mktemp -d); trap 'echo \"cleaned $?\"; rm -rf \"$tmp\"' EXIT\n"
                    "touch \"$tmp/f\"; echo work; false")
    assert (result.text(), result.done["status"]) == ("work\ncleaned 1\n", "error")
    assert not result.done["restarted"]
    after = sh.run('[ -e "$tmp" ] && echo kept || echo removed; trap -p EXIT; trap -p')
    assert (after.text(), after.text("stderr")) == ("removed\n", "")
    both = sh.run("trap 'echo bye' EXIT INT; trap -p EXIT INT; trap - INT; echo body")
    assert both.text() == ("trap -- 'echo bye' EXIT\ntrap -- 'echo bye' SIGINT\nbody\nbye\n")
    reset = sh.run("trap 'echo no' 0; trap 'echo yes' sigexit; trap EXIT; trap -p; echo end")
    assert reset.text() == "end\n"
    sub = sh.run("( trap 'echo sub-exit' EXIT; echo in-sub ); echo after")
    assert sub.text() == "in-sub\nsub-exit\nafter\n"


def test_shell_an_exit_trap_runs_when_set_e_or_an_interrupt_ends_the_cell(
        sh: AgentDriver) -> None:
    """The worker's own EXIT trap (its note on ``set -e``) stays: a cell's trap no longer
    replaces it."""
    failed = sh.run("set -e; trap 'echo cleanup >&2' EXIT; false; echo not-reached")
    assert failed.done["restarted"] is True
    assert failed.text("stderr") == ("cleanup\nbash exits: set -e is on and a command"
                                     " failed\n")
    stopped = sh.run_interrupted("trap 'echo cleaned up' EXIT; sleep 30", after=0.5)
    assert stopped.done["status"] == "interrupted" and not stopped.done["restarted"]
    assert stopped.text() == "cleaned up\n"
    assert sh.run("echo alive").text() == "alive\n"


def test_shell_a_cells_err_trap_runs_once_per_failure_and_keeps_the_set_e_note(
        sh: AgentDriver) -> None:
    """A cell's ERR trap replaced the worker's, so ``set -e`` ending the shell had no note;
    with ``set -E`` it ran three times for one failure (the worker's ``eval`` and ``.`` of
    the cell failed too), where a script's runs once per failing command."""
    first = sh.run("trap 'echo \"err $?\"' ERR; ls /nonexistent 2>/dev/null; echo next")
    assert (first.text(), first.done["status"]) == ("err 2\nnext\n", "success")
    traced = sh.run("set -E; f() { false; }; f")
    assert traced.text() == "err 1\nerr 1\n"  # `false`, then `f`: as `bash script.sh`
    assert sh.run("trap -p ERR; trap -p").text() == "trap -- 'echo \"err $?\"' ERR\n" * 2
    ended = sh.run("set -e; false; echo not-reached")
    assert ended.text() == "err 1\n" and ended.done["restarted"] is True
    assert ended.text("stderr") == "bash exits: set -e is on and a command failed\n"
    reset = sh.run("trap 'echo e3' ERR; trap - ERR; false; trap -p")
    assert reset.text() == ""


def test_shell_a_debug_trap_runs_before_the_cells_commands_as_in_a_script(
        sh: AgentDriver) -> None:
    """A cell's DEBUG action ran before about 22 of the worker's own commands between cells
    (their text in the cell's output), for none of a later cell's commands (the sourced cell
    hid it), and with ``extdebug`` an action that returned non-zero made bash skip the
    worker's commands: no ``done``. Now it runs as a script's would: before each of the
    cells' own commands, in this cell and the later ones."""
    def out(code: str) -> tuple[str, str, str]:
        result = sh.run(code, timeout=10)
        return result.text(), result.text("stderr"), result.done["status"]

    trace = "trap 'echo \"D:$BASH_COMMAND\"' DEBUG"
    assert out(f"{trace}; echo one") == ("D:echo one\none\n", "", "success")
    assert out("echo two") == ("D:echo two\ntwo\n", "", "success")
    assert out("f() { echo in; }; f; trap -p DEBUG") == (
        f"D:f\nin\nD:trap -p DEBUG\n{trace.replace('trap ', 'trap -- ')}\n", "", "success")
    # With `set -T` it runs in functions too, and on the way into one (as bash runs it).
    assert out("set -T; f") == ("D:set -T\nD:f\nD:f\nD:echo in\nin\n", "", "success")
    assert out("set +T; trap - DEBUG; echo three") == (
        "D:set +T\nD:trap - DEBUG\nthree\n", "", "success")
    assert out("echo none; trap -p") == ("none\n", "", "success")
    # extdebug: an action's non-zero status skips the command, the cell's and no other.
    skip = "shopt -s extdebug; trap '[[ $BASH_COMMAND != skip* ]]' DEBUG"
    assert out(f"{skip}; echo a; skipme; echo b") == ("a\nb\n", "", "success")
    assert out("echo c; skip-too") == ("c\n", "", "success")
    assert out("trap - DEBUG; shopt -u extdebug; skipped 2>/dev/null; echo $?") == (
        "127\n", "", "success")
    # `set -x` shows the cell's commands and the action's, none of the worker's.
    traced = sh.run("set -x; trap 'echo D' DEBUG; echo x")
    assert traced.text() == "D\nx\n"
    assert "__ws_" not in traced.text("stderr")
    assert sh.run("set +x; trap - DEBUG; echo y").text() == "D\nD\ny\n"
    # Under `set -u`, with an IFS of the letters of `eval`, and for a function's RETURN
    # action with `set -T` (once more for the RETURN action, as for the ERR trap after the
    # failure: the function returns 3; bash runs it before `echo R` instead).
    assert out(f"set -u; {trace}; echo one") == ("D:echo one\none\n", "", "success")
    assert out("IFS=vale; echo two; unset IFS") == (
        "D:IFS=vale\nD:echo two\ntwo\nD:unset IFS\n", "", "success")
    assert out("set -T; f() { trap 'echo R' RETURN; return 3; }; f; echo $?") == (
        "D:set -T\nD:f\nD:f\nD:trap 'echo R' RETURN\nD:return 3\nD:return 3\nR\n"
        "D:return 3\nD:echo $?\n3\n", "", "success")
    assert out("set +T +u; trap - DEBUG RETURN") == (
        "D:set +T +u\nD:trap - DEBUG RETURN\n", "", "success")
    # One set with `builtin trap` runs before a few of the worker's commands, then is gone.
    assert out("builtin trap 'echo B' DEBUG; echo a")[0].startswith("B\na\nB\n")
    assert out("echo b") == ("b\n", "", "success")
    # Taken off with the builtin, it stays off (it came back at the next cell; a review);
    # taken off in a function without `set -T`, the caller's is back as the function returns.
    assert out(f"{trace}; builtin trap - DEBUG") == ("D:builtin trap - DEBUG\n", "", "success")
    assert out("echo c; trap -p") == ("c\n", "", "success")
    assert out(f"{trace}; g() {{ trap - DEBUG; echo in; }}; g; echo x") == (
        "D:g\nin\nD:echo x\nx\n", "", "success")
    assert out("trap - DEBUG; echo y") == ("D:trap - DEBUG\ny\n", "", "success")
    # An interrupt leaves the action in place.
    sh.run("trap 'n=$((n + 1))' DEBUG; n=0")
    stopped = sh.run_interrupted("while :; do :; done", after=0.3)
    assert stopped.done["status"] == "interrupted"
    counted = sh.run("echo $n; trap -p DEBUG").text().split("\n")
    assert int(counted[0]) > 100 and counted[1] == "trap -- 'n=$((n + 1))' DEBUG"


def test_shell_an_err_trap_set_in_a_function_runs_there(sh: AgentDriver) -> None:
    """bash takes the ERR trap off on the way into a function (without ``set -E``), and the
    worker's was gone there: an ERR action a function set ran only once it had returned,
    not for its own failures, as a script's does (a review)."""
    result = sh.run('f() { trap "echo E rc=\\$?" ERR; false; echo f-end; }; f; echo top')
    assert result.text() == "E rc=1\nf-end\ntop\n"
    assert sh.run("false; echo after").text() == "E rc=1\nafter\n"
    assert sh.run("trap - ERR; false; echo none; trap -p").text() == "none\n"


def test_shell_set_x_traces_the_cells_own_commands_alone(sh: AgentDriver) -> None:
    """After ``set -x``, each later cell's stderr showed about 20 lines of the worker's own
    loop (its control pipe's read, the ``done`` line it wrote), and ``set -v`` showed its
    source (a review of model-written shell cells). One line is left, so that a cell that
    does not trace pays no redirection."""
    first = sh.run("set -x\necho first")
    # One line of the worker's at the end: the test of whether the cell left tracing on.
    assert (first.text(), first.text("stderr")) == ("first\n", "+++ echo first\n"
                                                   "+ case $- in\n")
    second = sh.run("echo second; false")
    assert second.text("stderr") == ("++ eval 'echo second; false'\n+++ echo second\n"
                                     "+++ false\n+ case $- in\n")
    assert sh.run("set +x; echo third").text("stderr") == (
        "++ eval 'set +x; echo third'\n+++ set +x\n")
    assert sh.run("echo quiet").text("stderr") == ""
    verbose = sh.run("set -v\necho verb")
    assert verbose.text("stderr") == "echo verb\n"
    assert sh.run("echo v2; set +v").text("stderr") == "echo v2; set +v\n"
    assert sh.run("echo plain").text("stderr") == ""


def test_shell_stdin_eof_and_background_job(sh: AgentDriver) -> None:
    start_at = time.monotonic()
    result = sh.run("cat; read line; echo rc=$?; sleep 30 & echo bg")
    assert result.text() == "rc=1\nbg\n"
    assert time.monotonic() - start_at < 5


def test_shell_streaming_and_big_output(sh: AgentDriver) -> None:
    live = sh.run("echo first; sleep 1; echo second")
    assert live.text() == "first\nsecond\n"
    assert_live(live)
    big = sh.run("seq -w 1 30000")
    assert big.text() == "".join(f"{i:05d}\n" for i in range(1, 30001))


@pytest.mark.parametrize(
    ("signal_name", "signum", "description"),
    [
        ("SEGV", 11, "SIGSEGV (segmentation fault)"),
        ("KILL", 9, SIGKILL_DESCRIPTION),
        ("TERM", 15, "SIGTERM (terminated)"),
    ],
)
def test_shell_killed_by_a_signal_is_described(sh: AgentDriver, signal_name: str, signum: int,
                                               description: str) -> None:
    sh.run("GONE=1")
    result = sh.run(f"echo before; kill -{signal_name} $$")
    assert result.text() == "before\n"
    assert (result.done["status"], result.done["exit_code"]) == ("error", 128 + signum)
    assert result.done["restarted"] is True
    assert result.done["error"] == f"shell was killed by signal {description}; state was reset"
    assert sh.run('echo "[$GONE]"').text() == "[]\n"


def test_a_node_a_cell_starts_gets_the_later_builtins(sh: AgentDriver) -> None:
    """Every node a sandbox runs loads node_preload.js (the agent's NODE_OPTIONS, after the
    service's): a `node` a shell cell starts has the later releases' builtins too, as the
    JavaScript worker's cells do (a review found them the cells' alone)."""
    result = sh.run('node -e "console.log(typeof Object.groupBy, typeof Promise.withResolvers,'
                    ' [3, 1, 2].toSorted().join())"', timeout=30)
    assert_success(result)
    assert result.text() == "function function 1,2,3\n"


def test_shell_binary_garbage(sh: AgentDriver) -> None:
    result = sh.run("printf 'a\\377\\000b'")
    assert result.text() == "a\ufffd\x00b"


# ------------------------------------------------------------------------------- rust


def test_rust_compile_and_run(rs: AgentDriver) -> None:
    result = rs.run('fn main() { println!("hello"); eprintln!("warn"); }', timeout=60)
    assert_success(result)
    assert result.text() == "hello\n"
    assert result.text("stderr") == "warn\n"
    assert result.done["compile_time_ms"] > 0


def test_rust_stopped_while_compiling_has_no_compile_time(rs: AgentDriver) -> None:
    """``compile_time_ms`` is rustc's share of a cell that compiled; a cell interrupted (or
    timed out) while rustc ran reported all its time as rustc's (a review)."""
    # Enough for rustc to take well over the 50 ms before the interrupt, even on a busy
    # machine (a program of one line once compiled and ran first in CI).
    slow = "".join(f"fn f{i}(x: u64) -> u64 {{ x.wrapping_mul({i}).rotate_left(3) }}\n"
                   for i in range(3000))
    result = rs.run_interrupted(slow + 'fn main() { println!("x"); }', after=0.05, timeout=60)
    assert result.done["status"] == "interrupted", result.done
    assert "compile_time_ms" not in result.done, result.done
    again = rs.run('fn main() { println!("y"); }', timeout=60)
    assert_success(again)
    assert 0 < again.done["compile_time_ms"] <= again.done["execution_time_ms"]


def test_rust_compile_error(rs: AgentDriver) -> None:
    result = rs.run('fn main() { let x: i32 = "a"; }', timeout=60)
    assert result.done["status"] == "error"
    assert result.done["error"] == "compilation failed"
    assert "E0308" in result.text("stderr")
    assert 0 < result.done["compile_time_ms"] <= result.done["execution_time_ms"]


def test_rust_statements_without_main_run_as_its_body(rs: AgentDriver) -> None:
    """What a model often sends: statements and items with no ``fn main``. They become its
    body, opened on the first line, so diagnostics keep their line numbers."""
    result = rs.run("use std::collections::HashMap;\n"
                    "struct P { x: i32 }\n"
                    "fn double(p: &P) -> i32 { 2 * p.x }\n"
                    "let mut m = HashMap::new();\n"
                    "m.insert(\"k\", double(&P { x: 21 }));\n"
                    'println!("{}", m["k"]);', timeout=60)
    assert_success(result)
    assert result.text() == "42\n"
    broken = rs.run('let a = 1;\nlet b: i32 = "no";', timeout=60)
    assert broken.done["error"] == "compilation failed"
    assert "main.rs:2:" in broken.text("stderr"), broken.text("stderr")
    # A program with its own main is left alone, however it spells the blanks.
    assert rs.run("fn\n  main() { println!(\"own\"); }", timeout=60).text() == "own\n"
    # `fn mainly` is not main.
    assert rs.run('fn mainly() {}\nmainly(); println!("ok");', timeout=60).text() == "ok\n"
    # `?` works (main returns a Result: an error ends it with code 1), a last expression
    # without `;` is fine, and an inner attribute still applies.
    parsed = rs.run('let n: i32 = "21".parse()?;\nprintln!("{}", 2 * n);\nn', timeout=60)
    assert_success(parsed)
    assert parsed.text() == "42\n"
    assert parsed.text("stderr") == ""  # no warning from the wrapping
    bad = rs.run('let n: i32 = "x".parse()?;\nprintln!("{n}");', timeout=60)
    assert (bad.done["status"], bad.done["exit_code"]) == ("error", 1)
    assert "Error: ParseIntError" in bad.text("stderr")
    attr = rs.run('#![allow(unused_variables)]\nlet quiet = 1;\nprintln!("attr");', timeout=60)
    assert (attr.text(), attr.text("stderr")) == ("attr\n", "")
    exits = rs.run("std::process::exit(3)", timeout=60)
    assert (exits.done["exit_code"], exits.text("stderr")) == (3, "")


@pytest.mark.parametrize("code", [
    '// no fn main here\nprintln!("x");',
    '/* outer /* fn main() {} */ still a comment, fn main */\nprintln!("x");',
    'let s = "fn main() {}";\nprint!("{}", &s[..0]);\nprintln!("x");',
    "let s = r#\"fn main \"quoted\" \"#;\nlet _ = s;\nprintln!(\"x\");",
    "let q = '\"'; let s = \"fn main\"; let _ = (q, s);\nprintln!(\"x\");",
    "let b = br\"fn main\"; let _ = b;\nprintln!(\"x\");",
    "fn helper<'a>(s: &'a str) -> &'a str { s } // fn main\nprintln!(\"{}\", helper(\"x\"));",
])
def test_rust_fn_main_in_a_comment_or_a_string_leaves_a_snippet_a_snippet(
        rs: AgentDriver, code: str) -> None:
    """A mention of ``fn main`` anywhere made the cell a program: rustc then said main was
    missing (a review of model-written cells)."""
    result = rs.run(code, timeout=60)
    assert_success(result)
    assert result.text() == "x\n"


@pytest.mark.parametrize("code", [
    '// a program\nfn main() { println!("x"); }',
    '/* fn helper */ fn main() { let c = \'"\'; let _ = c; println!("x"); }',
    'fn main() { println!("{}", "fn main() {}".len() * 0 + 0 == 0); }',
])
def test_rust_a_program_with_its_own_main_is_left_alone(rs: AgentDriver, code: str) -> None:
    result = rs.run(code, timeout=60)
    assert_success(result)
    assert result.text() in ("x\n", "true\n")


@pytest.mark.parametrize(("code", "stdout", "exit_code", "stderr"), [
    ('let n: i32 = "21".parse()?;\nprintln!("{}", 2 * n);\nOk(())', "42\n", 0, ""),
    ('for i in 0..2 {\n    println!("{i}");\n}\nOk ( () ) // done\n', "0\n1\n", 0, ""),
    ('let v = vec![1];\nif v.is_empty() { return Ok(()); }\nErr("not empty".into())', "", 1,
     'Error: "not empty"\n'),
    ('#![allow(unused_variables)]\nlet quiet = 1;\nlet n: u8 = "7".parse()?;\nOk(())', "", 0, ""),
    # Not a bare Ok or Err last: as before, the value is dropped.
    ('let r = Ok::<(), String>(());\nprintln!("{:?}", r);\nOk::<u8, String>(1)', "Ok(())\n", 0, ""),
    ('fn f() -> Result<(), String> {\n    Ok(())\n}\nf().unwrap();\nprintln!("f");', "f\n", 0, ""),
    ('let s = "Ok(())";\nprintln!("{s}")', "Ok(())\n", 0, ""),
    ('#!/usr/bin/env rust-script\nOk(())', "", 0, ""),
    ('println!("x");\nstd::process::exit(0);\nOk(())', "x\n", 0, ""),  # no warning of ours
])
def test_rust_snippet_ending_in_ok_or_err_is_mains_value(
        rs: AgentDriver, code: str, stdout: str, exit_code: int, stderr: str) -> None:
    """A snippet written as a main that returns a Result (``?`` above, ``Ok(())`` last) was
    refused: its block's value was dropped, so the error type of that ``Ok`` was unknown,
    and rustc's "type annotations needed" pointed into the wrapper. Such a block is now
    main's own value: ``Ok(())`` ends it, ``Err(...)`` is main's error."""
    result = rs.run(code, timeout=60)
    assert (result.text(), result.text("stderr"), result.done["exit_code"]) == (
        stdout, stderr, exit_code), result.done


def test_rust_snippet_ending_in_ok_keeps_its_diagnostics(rs: AgentDriver) -> None:
    broken = rs.run('let a = 1;\nlet b: i32 = "no";\nOk(())', timeout=60)
    stderr = broken.text("stderr")
    assert broken.done["error"] == "compilation failed"
    assert " --> main.rs:2:14\n" in stderr and "Box<dyn" not in stderr, stderr


def test_rust_snippet_diagnostics_show_the_cells_own_text(rs: AgentDriver) -> None:
    """A snippet's first line was shown after a wrapper of 90 characters, its columns moved
    as far (a review of model-written cells); only the block's ``{`` comes before it now,
    and the wrapper's main is in a file of its own."""
    broken = rs.run('let x: i32 = "a";\nprintln!("{}", x);', timeout=60)
    stderr = broken.text("stderr")
    assert broken.done["error"] == "compilation failed"
    assert " --> main.rs:1:15\n" in stderr, stderr
    assert '1 | {let x: i32 = "a";\n' in stderr, stderr
    assert "fn main" not in stderr and "Box<dyn" not in stderr, stderr
    # A later line, a panic's place, a warning: the cell's own lines and text.
    warned = rs.run("let a = 1;\nlet unused = 2;\nprintln!(\"{}\", a);", timeout=60)
    assert warned.text() == "1\n"
    assert " --> main.rs:2:5\n" in warned.text("stderr"), warned.text("stderr")
    assert "2 | let unused = 2;\n" in warned.text("stderr"), warned.text("stderr")
    panics = rs.run('let v: Vec<i32> = vec![1];\nprintln!("{}", v[5]);', timeout=60)
    assert panics.done["exit_code"] == 101, panics.done
    assert "main.rs:2:" in panics.text("stderr"), panics.text("stderr")
    # An error about main's return type: the wrapper, where rustc shows it, is in a file
    # of its own, not the cell's.
    # (`return;` fails only beside a `?`, which needs main to return a Result.)
    returned = rs.run('let n: i32 = "1".parse()?;\nreturn;', timeout=60).text("stderr")
    assert "2 | return;\n" in returned, returned
    assert "fn main" not in returned or " ws_snippet.rs:1:" in returned, returned


def test_rust_a_snippet_without_a_question_mark_may_return(rs: AgentDriver) -> None:
    """``return;`` ends a snippet's program as it ends a main of its own (a snippet's main
    returned a Result for ``?``, and rustc refused it with E0069). A ``?`` in a string, a
    char or a comment is no try operator."""
    result = rs.run('let x = 3;\nprintln!("{:?} {}", Some(x), \'?\'); // why?\n'
                    'if x > 2 { println!("big"); return; }\nprintln!("small");', timeout=60)
    assert (result.done["status"], result.text()) == ("success", "Some(3) ?\nbig\n"), (
        result.text("stderr"))


@pytest.mark.parametrize(("code", "stdout"), [
    # `?` and a dropped last value, after the attribute models often put first.
    ('#![allow(unused)]\nlet n: i32 = "42".parse()?;\nlet unused = 1;\nprintln!("{n}");\nn',
     "42\n"),
    ('#![allow(dead_code)]\n#![allow(unused_variables)]\n// two of them\nfn f() {}\n'
     'let total: i32 = [1, 2].iter().sum();\nprintln!("{total}");\ntotal', "3\n"),
    ('#![allow(unused)]\nlet n: u8 = "7".parse()?;\nprintln!("{n}");\nOk(())', "7\n"),
    # A mention in a comment or a string is no attribute: the cell stays a block.
    ('// Tip: add #![allow(unused)] at the top\nlet n: i32 = "42".parse()?;\nprintln!("{n}");',
     "42\n"),
    ('let s = "#![allow(unused)]";\nlet n: i32 = "1".parse()?;\nprintln!("{s} {n}");',
     "#![allow(unused)] 1\n"),
])
def test_rust_snippet_with_inner_attributes_keeps_question_mark_and_tail(
        rs: AgentDriver, code: str, stdout: str) -> None:
    """A ``#![...]`` anywhere, even in a comment, made the cell the plain body of a
    ``fn main() {}``: ``?`` failed (E0277) and so did a last value (E0308), both pointing at
    a main the user never wrote (a review of model-written Rust). The opening attributes now
    go to the crate root; the cell stays a block."""
    result = rs.run(code, timeout=60)
    assert (result.text(), result.text("stderr")) == (stdout, ""), result.done
    assert result.done["status"] == "success"


def test_rust_snippet_attributes_keep_the_cells_lines(rs: AgentDriver) -> None:
    broken = rs.run('#![allow(unused)]\nlet a = 1;\nlet b: i32 = "no";', timeout=60)
    stderr = broken.text("stderr")
    assert broken.done["error"] == "compilation failed"
    assert " --> main.rs:3:14\n" in stderr and "fn main" not in stderr, stderr
    bad_attr = rs.run("#![deny(unused_variables)]\nlet unused = 1;", timeout=60)
    assert bad_attr.done["error"] == "compilation failed"  # the crate's lint applies
    assert " --> main.rs:2:5\n" in bad_attr.text("stderr"), bad_attr.text("stderr")


RUST_FUNCTION_AND_TESTS = """/// Adds.
fn add(a: i32, b: i32) -> i32 {
    a + b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds() {
        assert_eq!(add(2, 2), 4);
    }

    #[test]
    fn fails() {
        assert_eq!(add(2, 2), 5, "math is hard");
    }
}
"""


def test_rust_a_function_and_its_tests_run_the_tests(rs: AgentDriver) -> None:
    """A function and its ``#[test]``s, no main (as a model writes them), passed running
    nothing (a review of model-written Rust): they are built with ``rustc --test`` and run,
    as the Rust playground does, a failing test failing the cell."""
    result = rs.run(RUST_FUNCTION_AND_TESTS, timeout=60)
    out = result.text()
    assert (result.done["status"], result.done["exit_code"]) == ("error", 101), result.done
    assert "running 2 tests\n" in out and "test tests::adds ... ok\n" in out, out
    assert "test tests::fails ... FAILED\n" in out and "math is hard" in out, out
    assert "test result: FAILED. 1 passed; 1 failed;" in out, out
    alone = rs.run("#![allow(unused)]\n#[test]\nfn t() {\n    assert!(1 + 1 == 2);\n}",
                   timeout=60)
    assert_success(alone)
    assert "test t ... ok\n" in alone.text() and "1 passed; 0 failed" in alone.text()


@pytest.mark.parametrize(("code", "stdout"), [
    # A statement makes the snippet a program's body, as before (the test is not run).
    ("fn add(a: i32) -> i32 { a }\n#[test]\nfn t() {}\nprintln!(\"{}\", add(1));", "1\n"),
    # Blocks that start as items do (a review of the change).
    ('#[test]\nfn t() {}\nunsafe { println!("{}", 2) }', "2\n"),
    ('fn union(a: i32) -> i32 { a }\n#[test]\nfn t() {}\nunion(3);\nprintln!("3")', "3\n"),
    ('// #[test] in a comment\nfn f() {}\nlet s = "#[test]";\nprintln!("{}", s.len());\nf()',
     "7\n"),
])
def test_rust_a_snippet_with_statements_is_no_test_run(rs: AgentDriver, code: str,
                                                        stdout: str) -> None:
    result = rs.run(code, timeout=60)
    assert_success(result)
    assert result.text() == stdout


@pytest.mark.parametrize("code", [
    "use rand::Rng;\nlet x = rand::thread_rng().gen_range(0..10);\nprintln!(\"{x}\");",
    "extern crate regex;\nfn main() {}",
    "fn main() {\n    let v: serde_json::Value = serde_json::from_str(\"1\").unwrap();\n}",
])
def test_rust_a_missing_crate_says_only_the_standard_library_is_here(rs: AgentDriver,
                                                                       code: str) -> None:
    """rustc says only that ``rand`` is undeclared: a model tried again with another crate
    (a review of model-written Rust)."""
    result = rs.run(code, timeout=60)
    assert result.done["error"].startswith("compilation failed: only Rust's standard library")
    assert result.text("stderr").endswith(
        "only Rust's standard library is here: crates (rand, serde, regex, tokio...) are not,"
        " and there is no Cargo or network to get them\n"), result.text("stderr")


def test_rust_other_compile_errors_get_no_crate_note(rs: AgentDriver) -> None:
    for code in ("let m = HashMap::new();\nlet _: &HashMap<i32, i32> = &m;",
                 'let x: i32 = "no";',
                 'fn main() { eprintln!("undeclared crate or module"); std::process::exit(2) }'):
        result = rs.run(code, timeout=60)
        assert result.done["status"] == "error", code
        assert "standard library is here" not in result.text("stderr"), code
        assert "standard library" not in (result.done["error"] or ""), code


def test_rust_snippet_keeps_its_shebang_line_first(rs: AgentDriver) -> None:
    """rustc takes a shebang only as the first line: the wrapper opens after it (it was a
    syntax error once wrapped), and the line numbers still hold. ``#![`` is an attribute."""
    result = rs.run('#!/usr/bin/env rust-script\nlet x = 21;\nprintln!("{}", 2 * x);',
                    timeout=60)
    assert_success(result)
    assert (result.text(), result.text("stderr")) == ("42\n", "")
    broken = rs.run('#! /bin/sh\nlet a = 1;\nlet b: i32 = "no";', timeout=60)
    assert broken.done["error"] == "compilation failed"
    assert "main.rs:3:" in broken.text("stderr"), broken.text("stderr")
    assert_success(rs.run("#!/bin/true", timeout=60))  # nothing but a shebang: an empty main
    attr = rs.run('#! [allow(unused_variables)]\nlet quiet = 1;\nprintln!("attr");', timeout=60)
    assert (attr.text(), attr.text("stderr")) == ("attr\n", "")


def test_rust_exit_code_panic_and_stdin(rs: AgentDriver) -> None:
    result = rs.run(
        "use std::io::Read;\n"
        "fn main() { let mut s = String::new();"
        " let n = std::io::stdin().read_to_string(&mut s).unwrap();"
        ' println!("read {}", n); std::process::exit(3); }',
        timeout=60,
    )
    assert result.text() == "read 0\n"
    assert (result.done["status"], result.done["exit_code"]) == ("error", 3)
    panic = rs.run('fn main() { panic!("boom"); }', timeout=60)
    assert panic.done["exit_code"] == 101
    assert "boom" in panic.text("stderr")


@pytest.mark.parametrize("code", [
    "use std::io;\nfn main() { let mut s = String::new(); io::stdin().read_line(&mut s)"
    ".unwrap();\n let n: i32 = s.trim().parse().unwrap(); println!(\"{}\", n * 2); }",
    "use std::io::{self, BufRead};\nlet stdin = io::stdin();\n"
    "let n: usize = stdin.lock().lines().next().unwrap().unwrap().parse().unwrap();",
    "use std::io::Read;\nlet mut s = String::new();\n"
    "std::io::stdin().read_to_string(&mut s).unwrap();\n"
    "let v: Vec<i64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();\n"
    "println!(\"{}\", v[0] + v[1]);",
    # `?` in the snippet's main (which returns a Result): "Error: ...", exit code 1
    "let mut s = String::new();\nstd::io::stdin().read_line(&mut s)?;\n"
    "let n: i32 = s.trim().parse()?;\nprintln!(\"{}\", n);",
])
def test_rust_a_program_that_reads_stdin_and_panics_is_told_stdin_is_empty(
        rs: AgentDriver, code: str) -> None:
    """A program written for input (a contest solution) fails on the empty stdin, each in
    its own way (a None, an empty parse, an index, `?`): a model read the panic, not the
    cause."""
    result = rs.run(code, timeout=60)
    note = ("the program reads stdin, which is empty here (a cell gets no input): put the"
            " values in the code")
    code_ = 1 if "?;" in code else 101
    assert (result.done["status"], result.done["exit_code"]) == ("error", code_)
    assert result.done["error"] == f"process exited with code {code_}; {note}"
    assert result.text("stderr").endswith(f"note: {note}\n"), result.text("stderr")


def test_rust_other_panics_and_exits_get_no_stdin_note(rs: AgentDriver) -> None:
    """Not for a program that only names stdin (in a comment, once the values are in the
    code), one that fails for another reason, or a test run (a review)."""
    for code in ('fn main() { panic!("boom"); }',
                 "use std::io::Read;\nlet mut s = String::new();\n"
                 "std::io::stdin().read_to_string(&mut s).unwrap();\nstd::process::exit(3);",
                 "// the values are in the code now, not read from stdin\n"
                 "let v: Vec<i32> = Vec::new();\nprintln!(\"{}\", v[0]);",
                 "let mut s = String::new();\nstd::io::stdin().read_line(&mut s).unwrap();\n"
                 "let v = vec![1, 2];\nprintln!(\"{}\", v[5]);",
                 "fn f() -> usize { let mut s = String::new();"
                 " std::io::stdin().read_line(&mut s).unwrap() }\n"
                 "#[test]\nfn reads() { let v: Vec<i32> = vec![];"
                 " assert_eq!(f(), v[0] as usize); }"):
        result = rs.run(code, timeout=60)
        assert result.done["status"] == "error", code
        assert "stdin" not in result.text("stderr") + (result.done["error"] or ""), code


def test_rust_interrupt(rs: AgentDriver) -> None:
    sent_at = time.monotonic()
    cell = rs.exec('fn main() { println!("start"); loop { std::hint::spin_loop(); } }')
    # Wait until the program runs (compilation takes a while), then interrupt it.
    at, first = rs.recv(60)
    assert first["t"] == "out"
    assert first["text"] == "start\n"
    rs.send({"t": "interrupt"})
    result = rs.collect(cell, sent_at)
    assert result.done["status"] == "interrupted"
    assert at > sent_at


# ------------------------------------------------------------------------------- security review

# User code can find the worker's control fd (its last argument) in /proc/self/cmdline and
# write its own lines to the agent.
FORGE_DISPLAYS = (
    "import json, os\n"
    "fd = int(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2])\n"
    "def forge(data, times):\n"
    "    line = (json.dumps({'t': 'display', 'kind': 'display_data', 'data': data})\n"
    "            + '\\n').encode()\n"
    "    for _ in range(times):\n"
    "        done = 0\n"
    "        while done < len(line):\n"
    "            done += os.write(fd, line[done:])\n"
)


def test_display_keys_and_empty_entries_count_against_max_output_bytes(py: AgentDriver) -> None:
    """Each display costs 64 for its frame (frames.AGENT_FRAME_CHARS), and each entry its
    key's and its value's characters, plus one. Empty displays cost only their frame: a
    million of them in one cell took the service seconds of CPU (a review)."""
    frame = AGENT_FRAME_CHARS
    keys = py.run(FORGE_DISPLAYS + "forge({'k' * 100: ''}, 5)", max_output_bytes=frame + 100)
    assert keys.displays == []
    assert keys.done["truncated"] is True
    empty = py.run(FORGE_DISPLAYS + "forge({'': ''}, 20)", max_output_bytes=10 * (frame + 1))
    assert [d["data"] for d in empty.displays] == [{"": ""}] * 10
    assert empty.done["truncated"] is True
    # 64 + "text/plain" (10) + "ab" (2) + 1 = 77 characters: fits 77, not 76.
    fits = py.run(FORGE_DISPLAYS + "forge({'text/plain': 'ab'}, 1)", max_output_bytes=77)
    assert [d["data"] for d in fits.displays] == [{"text/plain": "ab"}]
    assert fits.done["truncated"] is False
    over = py.run(FORGE_DISPLAYS + "forge({'text/plain': 'ab'}, 1)", max_output_bytes=76)
    assert (over.displays, over.done["truncated"]) == ([], True)
    # What the agent sends, the service counts alike.
    assert display_chars({"text/plain": "ab"}) == 77 and display_chars({"": ""}) == frame + 1


def test_python_a_display_made_by_a_signal_handler_during_another_does_not_wait(
        py: AgentDriver) -> None:
    """A signal handler of the user's that displays while a display waits for the agent's
    answer runs on the same thread, inside the wait's read of the pipe: if it waited too,
    its own read took the outer display's answer, and the outer one then waited on an empty
    pipe (here: handlers nested until a RecursionError). It does not wait.

    Nor does one made while the worker writes a line: the handler runs in the thread that
    holds the send lock, and waited for itself (the cell hung until its time limit); its
    line now follows the one it interrupted."""
    result = py.run(
        "import signal\n"
        "ticks = []\n"
        "def tick(*_):\n    ticks.append(1)\n    display('tick')\n"
        "signal.signal(signal.SIGALRM, tick)\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.003, 0.003)\n"
        "try:\n"
        "    for i in range(4000):\n        display(i)\n"
        "finally:\n    signal.setitimer(signal.ITIMER_REAL, 0)\n"
        "print(len(ticks))", timeout=20, max_output_bytes=1 << 24)
    assert_success(result)
    ticks = [d for d in result.displays if d["data"]["text/plain"] == "'tick'"]
    assert len(ticks) == int(result.text()) > 0
    numbers = [d["data"]["text/plain"] for d in result.displays
               if d["data"]["text/plain"] != "'tick'"]
    assert numbers == [str(i) for i in range(4000)]


def test_forged_displays_that_ask_for_answers_do_not_grow_the_agent(py: AgentDriver) -> None:
    """A display that carries ``seq`` gets the agent's answer on the worker's pipe. User code
    that writes such displays itself, and never reads the answers, would fill the agent's
    memory with them, 30 bytes per forged line; the agent answers only while the pipe holds
    less than 4 KiB (SHOWN_PIPE_MAX). The stray answers are dropped by the worker, not run
    as cells, and the next cell's displays wait for their own answers."""
    def peak_kb() -> int:
        status = Path(f"/proc/{py.proc.pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0])

    assert_success(py.run("kept = 1"))
    before = peak_kb()
    forged = py.run(
        "import os\n"
        "fd = int(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2])\n"
        "line = b'{\"t\":\"display\",\"kind\":\"display_data\",\"data\":{},"
        "\"seq\":1000000000}\\n' * 1000\n"
        "for _ in range(400):\n"
        "    done = 0\n"
        "    while done < len(line):\n"
        "        done += os.write(fd, line[done:])\n"
        "print('forged')", timeout=60)
    assert_success(forged)
    assert forged.text() == "forged\n"
    grown = peak_kb() - before
    assert grown < 4096, f"the agent's peak grew {grown} kB for 400,000 forged displays"
    result = py.run("print('a'); display('b'); print('c')\nkept")
    assert_success(result)
    assert [(f["t"], f.get("text") or f.get("data")) for f in result.frames[:-1]] == [
        ("out", "a\n"), ("display", {"text/plain": "'b'"}), ("out", "c\n"),
        ("display", {"text/plain": "1"})], result.frames


def test_forged_displays_that_ask_for_answers_do_not_hold_back_an_interrupt(
        py: AgentDriver) -> None:
    """Answers to a flood of forged displays filled the pipe to the worker, so an
    interrupt's mark, and the SIGINT the agent sends once the mark is written, never went:
    the interpreter was restarted and the state lost (a review).

    One forged line per write, under PIPE_BUF, so each is whole: a write of many lines cut
    by the interrupt left half a line in the pipe, which the worker's own next line made
    malformed, and the agent rightly restarted the interpreter (this test failed so, now
    and then, on a loaded machine)."""
    assert_success(py.run("kept = 1"))
    result = py.run_interrupted(
        "import os\n"
        "fd = int(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2])\n"
        "line = b'{\"t\":\"display\",\"kind\":\"display_data\",\"data\":{},"
        "\"seq\":7}\\n'\n"
        "while True:\n"
        "    os.write(fd, line)\n", after=1.5, max_output_bytes=1000)
    assert (result.done["status"], result.done["restarted"]) == ("interrupted", False)
    assert_success(py.run("kept"))


def test_a_child_flooding_the_control_pipe_does_not_stall_the_agent(py: AgentDriver) -> None:
    """When the worker exits, the agent reads what its control pipe held then, not until the
    pipe is empty: forked children that keep writing to it cannot hold the agent there."""
    # The service stops reading and a child writes output until the agent's queue passes its
    # high-water mark: the agent stops reading the worker's pipes and sleeps, so it sees the
    # worker's exit at once. Three writers have filled the control pipe (1 MiB) by then and
    # keep it full for up to 30 s; the cell's done must not wait for them.
    code = (
        "import fcntl, os, sys, time\n"
        "fd = int(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2])\n"
        "fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ\n"
        "if os.fork() == 0:\n"
        "    try:\n"
        "        os.write(1, b'x' * (3 << 20))\n"
        "    finally:\n"
        "        os._exit(0)\n"
        "time.sleep(1)\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        lines = b'{\"t\":\"ready\"}\\n' * 292  # under PIPE_BUF: atomic\n"
        "        end = time.monotonic() + 30\n"
        "        try:\n"
        "            while time.monotonic() < end:\n"
        "                os.write(fd, lines)\n"
        "        finally:\n"
        "            os._exit(0)\n"  # BrokenPipeError once the agent closed its end
        "time.sleep(0.5)\n"
        "os._exit(0)\n"
    )
    py.reading.clear()
    time.sleep(0.1)
    sent_at = time.monotonic()
    cell = py.exec(code, 1 << 30)
    time.sleep(3)
    py.reading.set()
    result = py.collect(cell, sent_at, timeout=10)
    assert (result.done["status"], result.done["restarted"]) == ("success", True)
    assert_success(py.run("1 + 1"))


def test_a_control_message_over_2_mib_ends_the_cell_and_restarts_the_worker(
        py: AgentDriver) -> None:
    """protocol/agent.md: worker messages are at most 2 MiB each (``MAX_CONTROL_LINE``). User
    code that writes 3 MiB without a newline to the control fd does not make the agent hold it
    all: the worker is killed at the limit, the cell ends with status ``error`` naming the
    oversized message, and the state is lost (a fresh interpreter serves the next cell)."""
    py.run("kept = 1")
    code = (
        "import os\n"
        "fd = int(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2])\n"
        "chunk, sent = b'x' * 65536, 0\n"
        "while sent < (3 << 20):\n"
        "    sent += os.write(fd, chunk)\n"
        "print('wrote', sent)\n"
    )
    result = py.run(code, timeout=10)
    assert result.done["status"] == "error", result.frames
    assert "oversized control message" in result.done["error"], result.done
    assert result.done["restarted"] is True, result.done
    assert "wrote" not in result.text(), result.frames  # killed before it finished writing
    after = py.run("'kept' in globals()")
    assert after.displays[0]["data"]["text/plain"] == "False", after.frames


def test_an_exec_held_across_a_restart_gets_exactly_one_done() -> None:
    """An exec that arrives during a restart waits for the new worker; a second restart ends
    it with a done like a running cell's. The `hello` that came first is answered as well."""
    driver = AgentDriver([str(agent_binary()), "python"])
    try:
        bodies = [{"t": "hello"}, {"t": "restart"},
                  {"t": "exec", "id": "held", "code": "print('never')"}, {"t": "restart"}]
        data = b"".join(struct.pack(">I", len(b)) + b for b in
                        (json.dumps(body).encode() for body in bodies))
        assert driver.proc.stdin is not None
        driver.proc.stdin.write(data)  # one write: the agent reads all four frames at once
        driver.proc.stdin.flush()
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1] != {"t": "restarted"}:
            frames.append(driver.recv()[1])
        # `ready` too, once the fresh worker is warm, before `restarted`.
        assert [f["t"] for f in frames] == ["done", "ready", "restarted"], frames
        done = frames[0]
        assert done["id"] == "held"
        assert (done["status"], done["exit_code"]) == ("interrupted", 137)
        assert done["error"] == "the interpreter was restarted"
        assert (done["restarted"], done["truncated"]) == (True, False)
        after = driver.run("print('after')")
        assert after.text() == "after\n"
        assert [f["id"] for f in after.frames if f["t"] == "done"] == ["c1"]
    finally:
        assert driver.close() == 0
    assert driver.frames.empty() or driver.frames.get()[1] is None  # no late done for "held"


def test_a_non_utf8_path_entry_leaves_every_frame_valid_utf8(tmp_path: Path) -> None:
    """Text from the environment (here a PATH directory, in the message about a rustc that
    cannot be started) reaches frames with its ill-formed bytes replaced."""
    bad = os.fsencode(tmp_path) + b"/bin\xff"
    os.mkdir(bad)
    with open(bad + b"/rustc", "wb") as f:
        f.write(b"#!/nonexistent/interpreter\n")  # executable, but cannot be started
    os.chmod(bad + b"/rustc", 0o755)
    env = dict(os.environb)
    env[b"PATH"] = bad + b":/usr/bin:/bin"
    driver = start("rust", env=env)
    try:
        sent_at = time.monotonic()
        cell = driver.exec("fn main() {}")
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["t"] != "done":
            frames.append(driver.recv()[1])
        assert [f for f in frames if f["t"] == "not UTF-8"] == []
        result = CellResult([f for f in frames if f.get("id") == cell], sent_at)
        assert (result.done["status"], result.done["exit_code"]) == ("error", 127)
        assert result.done["error"] == (
            f"could not start {tmp_path}/bin?/rustc: No such file or directory")
        assert result.text("stderr") == (
            f"[Errno 2] No such file or directory: '{tmp_path}/bin\\xff/rustc'\n")
    finally:
        assert driver.close() == 0


@pytest.mark.parametrize(("chosen", "level"), [
    (None, "0"), ("0", "0"), ("2", "2"), ("3", "3"), ("s", "s"), ("z", "z"),
    ("fast", "0"), ("3 -C link-arg=x", "0"), ("", "0")])
def test_rust_cells_compile_at_the_chosen_opt_level(tmp_path: Path, chosen: str | None,
                                                    level: str) -> None:
    """``RUST_OPT_LEVEL`` reaches rustc as ``-C opt-level``, only as one of its values, and
    overflow checks and debug assertions stay on (past level 0 rustc turns them off)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    rustc = bin_dir / "rustc"
    rustc.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\nexit 1\n',
                     encoding="utf-8")
    rustc.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    env.pop("WS_SANDBOX_RUST_OPT_LEVEL", None)
    if chosen is not None:
        env["WS_SANDBOX_RUST_OPT_LEVEL"] = chosen
    driver = start("rust", env=env)
    try:
        driver.run("fn main() {}")
    finally:
        assert driver.close() == 0
    args = (tmp_path / "args").read_text(encoding="utf-8").splitlines()
    flags = [args[i + 1] for i, arg in enumerate(args) if arg == "-C"]
    assert flags == [f"opt-level={level}", "overflow-checks=on", "debug-assertions=on"], args


def test_an_optimised_rust_cell_still_panics_on_overflow() -> None:
    require_program("rustc")
    driver = start("rust", env={**os.environ, "WS_SANDBOX_RUST_OPT_LEVEL": "3"})
    try:
        result = driver.run("fn main() {\n"
                            "    let n: u8 = std::env::args().count() as u8 + 254;\n"
                            "    println!(\"{}\", n + 1);\n"
                            "}\n", timeout=60)
    finally:
        assert driver.close() == 0
    assert result.done["status"] == "error", result.frames
    assert "attempt to add with overflow" in result.text("stderr"), result.frames


def test_a_program_without_a_shebang_is_not_run_by_the_shell(tmp_path: Path) -> None:
    """The agent starts programs with execve: an executable text file without a #! line
    fails with ENOEXEC (execvp would run it with /bin/sh instead)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "ran"
    rustc = bin_dir / "rustc"
    rustc.write_text(f"touch {marker}\n", encoding="utf-8")
    rustc.chmod(0o755)
    driver = start("rust", env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"})
    try:
        result = driver.run("fn main() {}")
        assert (result.done["status"], result.done["exit_code"]) == ("error", 127)
        assert result.done["error"] == f"could not start {rustc}: Exec format error"
        assert not marker.exists()
    finally:
        assert driver.close() == 0


# Starts the agent as a child subreaper, as it is as PID 1 of a container (and under
# --container, which tests never pass): orphaned processes of user code become its children.
AS_SUBREAPER = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER\n"
    "    raise OSError(ctypes.get_errno(), 'prctl(PR_SET_CHILD_SUBREAPER)')\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def children_of(pid: int) -> dict[int, str]:
    """The processes whose parent is pid, with their state (``Z``: a zombie)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if int(ppid) == pid:
            found[int(entry.name)] = state
    return found


def test_orphans_that_come_to_the_agent_are_reaped(tmp_path: Path) -> None:
    driver = AgentDriver([sys.executable, "-c", AS_SUBREAPER, str(agent_binary()), "shell"])
    try:
        assert driver.hello() == {"t": "ready", "language": "shell", "version": 1}
        pids = tmp_path / "pids"
        # A background job that forks three short sleeps and exits: they are orphans.
        result = driver.run(f"(for i in 1 2 3; do sleep 0.2 & echo $! >> {pids}; done) &\n"
                            "wait\necho started")
        assert_success(result)
        assert result.text() == "started\n"
        orphans = [int(line) for line in pids.read_text().split()]
        assert len(orphans) == 3
        deadline = time.monotonic() + 15
        while True:
            left = [pid for pid in orphans if Path(f"/proc/{pid}").exists()]
            zombies = {pid: s for pid, s in children_of(driver.proc.pid).items() if s == "Z"}
            if not left and not zombies:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"not reaped: orphans {left}, zombie children {zombies}")
            time.sleep(0.05)
        assert driver.run("echo next").text() == "next\n"
    finally:
        assert driver.close() == 0


@pytest.mark.parametrize("signal_name", ["SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM",
                                         "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGPWR"])
def test_signals_from_user_code_neither_end_nor_stop_the_agent(py: AgentDriver,
                                                               signal_name: str) -> None:
    """User code runs as the agent's uid and may signal it. Under runc the agent is PID 1
    and the kernel drops what it does not handle; gVisor does not protect init, and on this
    host the agent is not init: its handlers do. The worker has the default dispositions."""
    r = py.run(f"import os, signal, time\nos.kill(os.getppid(), signal.{signal_name})\n"
               "time.sleep(0.2)\nprint('alive')")
    assert_success(r)
    assert r.text() == "alive\n"
    r = py.run("import signal\n"
               f"print(signal.getsignal(signal.{signal_name}) is signal.SIG_DFL)")
    assert r.text() == "True\n"
    assert py.proc.poll() is None


def test_output_written_after_a_large_display_comes_before_done(py: AgentDriver) -> None:
    """A display larger than one read of the control pipe, then a print: the print comes
    before ``done``. (The race that lost such a print, between a wait's look at the output
    pipes and the read of ``done``, is too narrow to hit here; the integration test
    ``test_output_printed_after_a_figure_is_never_lost`` hits it through the service.)"""
    code = FORGE_DISPLAYS + "forge({'text/plain': 'x' * 600_000}, 1)\nprint('after', flush=True)"
    for _ in range(5):
        result = py.run(code)
        assert len(result.displays) == 1
        assert result.text() == "after\n", result.frames[-3:]


def test_a_display_is_cut_to_what_the_service_takes(py: AgentDriver) -> None:
    """At most 8 entries with keys of at most 100 characters (agent_wire.AgentDisplay): the
    agent drops the rest. It forwarded them, and the service refused the frame and replaced
    the whole sandbox (a helper's probe)."""
    nine = {f"k{n}": "v" for n in range(9)}
    long_key = {"k" * 101: "dropped", "k" * 100: "kept", "text/plain": "x"}
    for data, expected in ((nine, dict(list(nine.items())[:8])),
                           (long_key, {"k" * 100: "kept", "text/plain": "x"})):
        result = py.run(FORGE_DISPLAYS + f"forge({data!r}, 1)")
        (display,) = result.displays
        assert display["data"] == expected
        body = json.dumps(display).encode()
        (frame,) = aw.AgentDecoder().feed(struct.pack(">I", len(body)) + body)
        assert isinstance(frame, aw.AgentDisplay)
