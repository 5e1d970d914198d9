"""One kernel translating session frames into Jupyter messages, with a fake session."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, cast

import msgspec
import pytest

from ws_sandbox import frames as fr
from ws_sandbox.driver import ClientRequest, CloseRequest, Event, SessionRunner
from ws_sandbox.exceptions import BackendError, BadRequest, RateLimited
from ws_sandbox.jupyter import messages as jm
from ws_sandbox.jupyter.kernel import HELD_CHARS, HELD_MESSAGES, TRACEBACK_HOLD_CHARS, Kernel
from ws_sandbox.jupyter.specs import find_spec


class FakeRunner:
    """Records what the kernel asks of its session."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def feed_nowait(self, event: Event) -> None:
        self.events.append(event)

    def interrupt_soon(self) -> None:
        self.events.append(ClientRequest(fr.Interrupt()))

    async def feed(self, event: Event) -> None:
        self.events.append(event)

    def restarts(self) -> list[ClientRequest]:
        return [e for e in self.events
                if isinstance(e, ClientRequest) and isinstance(e.frame, fr.Restart)]

    def answer(self, message: str = "") -> fr.Restarted:
        """The session's ``restarted`` frame that answers the restarts asked for."""
        ids = [e.frame.id for e in self.restarts()
               if isinstance(e.frame, fr.Restart) and e.frame.id is not None]
        return fr.Restarted(reason="interpreter_restarted", message=message, ids=ids)

    def executes(self) -> list[fr.Execute]:
        return [e.frame for e in self.events
                if isinstance(e, ClientRequest) and isinstance(e.frame, fr.Execute)]


class FakeConnection:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.at_once = False
        self.address = "192.0.2.1"

    async def send_text(self, text: str) -> None:
        assert len(text.encode()) < 1024 * 1024
        self.sent.append(json.loads(text))

    async def close(self, code: int, reason: str, *, at_once: bool = False) -> None:
        self.closed = (code, reason)
        self.at_once = at_once

    def types(self) -> list[str]:
        return [m["msg_type"] for m in self.sent]

    def of(self, msg_type: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["msg_type"] == msg_type]


async def make_kernel(language: str = "python3", max_queued: int = 16,
                      max_code_bytes: int = 4 * 1024 * 1024, send_timeout: float = 5.0,
                      admit: Callable[[], None] | None = None,
                      ) -> tuple[Kernel, FakeRunner, FakeConnection]:
    kernel = Kernel(find_spec(language, ("python", "shell", "javascript")), owner="jupyter",
                    send_timeout=send_timeout, execution_timeout=30.0, restart_timeout=1.0,
                    max_queued=max_queued, max_code_bytes=max_code_bytes, admit=admit)
    runner = FakeRunner()
    kernel.bind(cast(SessionRunner, runner))
    conn = FakeConnection()
    await kernel.connect(conn)
    return kernel, runner, conn


async def send(kernel: Kernel, frame: fr.ServerFrame) -> None:
    await kernel.send_frames([frame])


def request(code: str, msg_id: str = "m1", **content: Any) -> jm.Incoming:
    return jm.decode(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "date": ""},
        "content": {"code": code, **content}}))


def result(cell_id: str, status: fr.Status = "success", error: str | None = None
           ) -> fr.Result:
    return fr.Result(id=cell_id, status=status, exit_code=0 if status == "success" else 1,
                     execution_time_ms=1.0, memory_used_mb=None, error=error)


async def test_execute_success_sequence() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("print(1)\n2"), conn)
    (execute,) = runner.executes()
    assert execute.code == "print(1)\n2" and execute.timeout == 30.0
    assert kernel.execution_state == "busy"
    await send(kernel, fr.Stream(id=execute.id, name="stdout", text="1\n"))
    await send(kernel, fr.Display(id=execute.id, kind="execute_result",
                                       data={"text/plain": "2"}))
    await send(kernel, fr.Display(id=execute.id, kind="display_data",
                                       data={"image/png": "iVBOR", "text/plain": "<Fig>"}))
    await send(kernel, result(execute.id))
    assert conn.types() == ["status", "execute_input", "stream", "execute_result",
                            "display_data", "execute_reply", "status"]
    assert all(m["parent_header"]["msg_id"] == "m1" for m in conn.sent)
    assert conn.sent[0]["content"] == {"execution_state": "busy"}
    assert conn.sent[-1]["content"] == {"execution_state": "idle"}
    assert conn.of("execute_input")[0]["content"]["execution_count"] == 1
    assert conn.of("execute_result")[0]["content"]["execution_count"] == 1
    assert conn.of("display_data")[0]["content"]["data"]["image/png"] == "iVBOR"
    reply = conn.of("execute_reply")[0]
    assert reply["channel"] == "shell" and reply["content"]["status"] == "ok"
    assert {m["channel"] for m in conn.sent if m["msg_type"] != "execute_reply"} == {"iopub"}
    assert kernel.execution_state == "idle"


async def test_python_traceback_becomes_the_error_message() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("1/0"), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Stream(id=cell, name="stderr", text="warn\n"))
    await send(kernel, fr.Stream(
        id=cell, name="stderr",
        text='Traceback (most recent call last):\n  File "<cell-1>", line 1\n'))
    await send(kernel, fr.Stream(id=cell, name="stderr",
                                      text="\x1b[31mZeroDivisionError\x1b[0m: division by zero\n"))
    await send(kernel, result(cell, "error", "ZeroDivisionError: division by zero"))
    streams = "".join(m["content"]["text"] for m in conn.of("stream"))
    assert streams == "warn\n"
    (error,) = conn.of("error")
    assert error["content"]["ename"] == "ZeroDivisionError"
    assert error["content"]["evalue"] == "division by zero"
    assert error["content"]["traceback"] == [
        "Traceback (most recent call last):", '  File "<cell-1>", line 1',
        "ZeroDivisionError: division by zero"]
    reply = conn.of("execute_reply")[0]["content"]
    assert reply["status"] == "error" and reply["ename"] == "ZeroDivisionError"
    assert conn.types()[-1] == "status"


@pytest.mark.parametrize(("stack", "error"), [
    ("TypeError: Cannot read properties of null (reading 'x')\n    at cell-1:1:6\n",
     "TypeError: Cannot read properties of null (reading 'x')"),
    ("cell-1:1\nfunction broken( {\n                 ^\n\nSyntaxError: Unexpected token '{'\n",
     "SyntaxError: Unexpected token '{'"),
    ("Uncaught (in promise) Error: boom\n    at cell-1:1:16\n",
     "Uncaught (in promise) Error: boom"),
    ("Uncaught 42\n", "Uncaught 42"),
])
async def test_a_javascript_stack_becomes_the_error_message(stack: str, error: str) -> None:
    """As a Python traceback does: sent as a stream too, a client that adds the error's
    traceback to stderr (Open WebUI) showed it twice (a review)."""
    kernel, runner, conn = await make_kernel("javascript")
    await kernel.handle(request("x"), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Stream(id=cell, name="stderr", text="a warning\n"))
    await send(kernel, fr.Stream(id=cell, name="stderr", text=stack))
    await send(kernel, result(cell, "error", error))
    assert [m["content"]["text"] for m in conn.of("stream")] == ["a warning\n"]
    (sent,) = conn.of("error")
    assert sent["content"]["traceback"] == stack.splitlines()


async def test_looking_for_a_javascript_stack_in_hostile_output_is_one_pass() -> None:
    """The output is the cell's: a line of "Error." repeated made the search quadratic
    (3 s of the event loop for 256 KB, in a review of the change)."""
    kernel, runner, conn = await make_kernel("javascript")
    await kernel.handle(request("x"), conn)
    cell = runner.executes()[0].id
    started = time.monotonic()
    await send(kernel, fr.Stream(id=cell, name="stderr", text="Error." * 43_000))
    assert time.monotonic() - started < 1.0
    assert "".join(m["content"]["text"] for m in conn.of("stream")) == "Error." * 43_000


async def test_a_javascript_error_printed_by_a_cell_that_succeeds_is_a_stream() -> None:
    kernel, runner, conn = await make_kernel("javascript")
    await kernel.handle(request("console.error(e)"), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Stream(id=cell, name="stderr", text="Error: x\n    at f (cell-1:1)\n"))
    await send(kernel, fr.Stream(id=cell, name="stdout", text="after\n"))
    await send(kernel, result(cell))
    texts = [(m["content"]["name"], m["content"]["text"]) for m in conn.of("stream")]
    assert texts == [("stderr", "Error: x\n    at f (cell-1:1)\n"), ("stdout", "after\n")]
    assert not conn.of("error")


async def test_held_traceback_is_a_stream_when_the_cell_succeeds() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("import traceback"), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Stream(id=cell, name="stderr",
                                      text="Traceback (most recent call last):\n  x\n"))
    await send(kernel, fr.Stream(id=cell, name="stdout", text="after\n"))
    await send(kernel, result(cell))
    texts = [(m["content"]["name"], m["content"]["text"]) for m in conn.of("stream")]
    assert texts == [("stderr", "Traceback (most recent call last):\n  x\n"),
                     ("stdout", "after\n")]
    assert not conn.of("error")


async def test_huge_held_stderr_is_flushed() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("x"), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Stream(id=cell, name="stderr",
                                      text="Traceback (most recent call last):\n"))
    await send(kernel, fr.Stream(id=cell, name="stderr",
                                      text="y" * (TRACEBACK_HOLD_CHARS + 1)))
    assert len(conn.of("stream")) == 1


async def test_long_stream_is_split() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("x"), conn)
    cell = runner.executes()[0].id
    text = "€" * (jm.STREAM_CHUNK_CHARS * 2)
    await send(kernel, fr.Stream(id=cell, name="stdout", text=text))
    assert "".join(m["content"]["text"] for m in conn.of("stream")) == text
    assert len(conn.of("stream")) == 2


async def test_huge_display_is_replaced() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("x"), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Display(id=cell, kind="display_data",
                                       data={"image/png": "A" * 2_000_000}))
    assert conn.of("display_data")[0]["content"]["data"] == {
        "text/plain": "[output too large to display]"}


@pytest.mark.parametrize(("status", "ename"), [("timeout", "TimeoutError"),
                                               ("interrupted", "KeyboardInterrupt"),
                                               ("killed", "KernelKilled")])
async def test_statuses_become_errors(status: fr.Status, ename: str) -> None:
    kernel, runner, conn = await make_kernel("bash")
    await kernel.handle(request("sleep 9"), conn)
    cell = runner.executes()[0].id
    await send(kernel, result(cell, status, f"why: {status}"))
    (error,) = conn.of("error")
    assert error["content"]["ename"] == ename
    assert error["content"]["traceback"] == [f"{ename}: why: {status}"]


PY_INTERRUPTED = ('Traceback (most recent call last):\n  File "<cell-1>", line 1, in'
                  ' <module>\n    time.sleep(9)\nKeyboardInterrupt\n')


@pytest.mark.parametrize(("language", "stderr", "status", "stopped_at"), [
    ("python3", PY_INTERRUPTED, "timeout", "KeyboardInterrupt"),
    ("python3", PY_INTERRUPTED, "killed", "KeyboardInterrupt"),
    ("javascript", "Interrupted\n", "timeout", "Interrupted"),
    ("javascript", "Interrupted\n", "killed", "Interrupted"),
])
async def test_a_stopped_cells_traceback_ends_saying_why(
        language: str, stderr: str, status: fr.Status, stopped_at: str) -> None:
    """A review: a Python cell stopped by its time limit showed only ``KeyboardInterrupt``
    in Open WebUI, which shows the traceback alone; a JavaScript one printed "Interrupted"
    as a stream before its error. Where the cell stopped stays; why ends the traceback."""
    kernel, runner, conn = await make_kernel(language)
    await kernel.handle(request("time.sleep(9)"), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Stream(id=cell, name="stderr", text=stderr))
    await send(kernel, result(cell, status, "execution time limit of 3 s exceeded"))
    assert not conn.of("stream")
    (error,) = conn.of("error")
    ename = {"timeout": "TimeoutError", "killed": "KernelKilled"}[status]
    assert error["content"]["ename"] == ename
    assert error["content"]["traceback"][-2:] == [
        stopped_at, f"{ename}: execution time limit of 3 s exceeded"]
    assert error["content"]["traceback"] == [
        *stderr.splitlines(), f"{ename}: execution time limit of 3 s exceeded"]


@pytest.mark.parametrize(("language", "stderr"), [("python3", PY_INTERRUPTED),
                                                   ("javascript", "Interrupted\n")])
async def test_an_interrupted_cells_traceback_is_where_it_stopped(language: str,
                                                                   stderr: str) -> None:
    kernel, runner, conn = await make_kernel(language)
    await kernel.handle(request("time.sleep(9)"), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Stream(id=cell, name="stderr", text=stderr))
    await send(kernel, result(cell, "interrupted", "interrupted by the client"))
    (error,) = conn.of("error")
    assert error["content"]["ename"] == "KeyboardInterrupt"
    assert error["content"]["traceback"] == stderr.splitlines()


async def test_interrupted_printed_by_a_javascript_cell_that_succeeds_is_a_stream() -> None:
    kernel, runner, conn = await make_kernel("javascript")
    await kernel.handle(request("console.error('Interrupted')"), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Stream(id=cell, name="stderr", text="Interrupted\n"))
    await send(kernel, result(cell))
    assert [m["content"]["text"] for m in conn.of("stream")] == ["Interrupted\n"]
    assert not conn.of("error")


async def test_queue_and_stop_on_error_abort() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("a", "m1"), conn)
    await kernel.handle(request("b", "m2"), conn)
    await kernel.handle(request("c", "m3", stop_on_error=False), conn)
    assert len(runner.executes()) == 1  # one at a time
    await send(kernel, result(runner.executes()[0].id, "error", "E: x"))
    replies = {m["parent_header"]["msg_id"]: m["content"]["status"]
               for m in conn.of("execute_reply")}
    assert replies == {"m1": "error", "m2": "aborted", "m3": "aborted"}
    assert len(runner.executes()) == 1


async def test_queue_is_bounded_and_a_request_beyond_it_is_refused() -> None:
    kernel, runner, conn = await make_kernel(max_queued=2)
    for n in range(1, 5):  # one runs, two wait, the fourth finds the queue full
        await kernel.handle(request(f"print({n})", f"m{n}"), conn)
    refused = [m for m in conn.sent if m["parent_header"]["msg_id"] == "m4"]
    assert [m["msg_type"] for m in refused] == ["status", "error", "execute_reply", "status"]
    reply = refused[2]["content"]
    assert reply["status"] == "error"
    assert reply["ename"] == "QueueFull"
    assert reply["evalue"] == "2 cells are already waiting; the limit is 2"
    assert refused[1]["content"]["ename"] == "QueueFull"
    assert len(runner.executes()) == 1
    for n in (1, 2):  # the queued ones still run, in order; then there is room again
        await send(kernel, result(runner.executes()[-1].id))
        assert runner.executes()[-1].code == f"print({n + 1})"
    await kernel.handle(request("print(5)", "m5"), conn)
    await send(kernel, result(runner.executes()[-1].id))  # the third
    await send(kernel, result(runner.executes()[-1].id))  # the fifth
    assert [e.code for e in runner.executes()] == [f"print({n})" for n in (1, 2, 3, 5)]
    statuses = {m["parent_header"]["msg_id"]: m["content"]["status"]
                for m in conn.of("execute_reply")}
    assert statuses == {"m1": "ok", "m2": "ok", "m3": "ok", "m4": "error", "m5": "ok"}
    # Refused requests are not counted: the fifth request ran as the fourth cell.
    assert conn.of("execute_reply")[-1]["content"]["execution_count"] == 4


async def test_code_above_max_code_bytes_is_refused_on_arrival() -> None:
    kernel, runner, conn = await make_kernel(max_code_bytes=30)
    await kernel.handle(request("import time; time.sleep(9)", "m1"), conn)  # running
    await kernel.handle(request("é" * 16, "m2"), conn)  # 32 bytes: never queued
    (reply,) = conn.of("execute_reply")
    assert reply["parent_header"]["msg_id"] == "m2"
    assert reply["content"]["ename"] == "PayloadTooLarge"
    assert reply["content"]["evalue"] == "code of 32 bytes exceeds the limit of 30 bytes"
    await kernel.handle(request("x" * 30, "m3"), conn)  # at the limit: queued
    assert len(conn.of("execute_reply")) == 1
    await send(kernel, result(runner.executes()[0].id))
    assert [e.code for e in runner.executes()] == ["import time; time.sleep(9)", "x" * 30]


async def test_comm_open_without_a_usable_comm_id_gets_nothing() -> None:
    kernel, _, conn = await make_kernel()
    for comm_id in (None, 7, {"x": 1}, "c" * 257):
        await kernel.handle(jm.decode(json.dumps(
            {"header": {"msg_id": "c", "msg_type": "comm_open"},
             "content": {"comm_id": comm_id}})), conn)
    assert conn.sent == []


async def test_no_queue_at_all() -> None:
    kernel, runner, conn = await make_kernel(max_queued=0)
    await kernel.handle(request("a", "m1"), conn)
    await kernel.handle(request("b", "m2"), conn)
    assert [m["content"]["status"] for m in conn.of("execute_reply")] == ["error"]
    assert len(runner.executes()) == 1


async def test_next_request_starts_after_success() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("a", "m1"), conn)
    await kernel.handle(request("b", "m2"), conn)
    await send(kernel, result(runner.executes()[0].id))
    assert [e.code for e in runner.executes()] == ["a", "b"]
    inputs = conn.of("execute_input")
    assert [m["content"]["execution_count"] for m in inputs] == [1, 2]


async def test_empty_code_is_a_no_op_and_silent_hides_input() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("   ", "m1"), conn)
    assert runner.executes() == []
    assert conn.types() == ["status", "execute_input", "execute_reply", "status"]
    conn.sent.clear()
    await kernel.handle(request("x", "m2", silent=True), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Display(id=cell, kind="execute_result", data={"text/plain": "1"}))
    await send(kernel, result(cell))
    assert conn.types() == ["status", "execute_reply", "status"]


async def test_a_silent_failure_aborts_nothing_and_store_history_false_counts_nothing(
        ) -> None:
    """As ipykernel: stop_on_error applies to cells that are not silent, and a cell run with
    store_history false (or silent) does not take an execution count (a review)."""
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("a", "m1", silent=True), conn)
    await kernel.handle(request("b", "m2"), conn)
    await send(kernel, result(runner.executes()[0].id, "error", "E: x"))
    replies = {m["parent_header"]["msg_id"]: m["content"]["status"]
               for m in conn.of("execute_reply")}
    assert replies == {"m1": "error"}  # m2 was not aborted: it runs
    assert len(runner.executes()) == 2
    await send(kernel, result(runner.executes()[1].id))
    await kernel.handle(request("c", "m3", store_history=False), conn)
    await send(kernel, result(runner.executes()[2].id))
    await kernel.handle(request("d", "m4"), conn)
    await send(kernel, result(runner.executes()[3].id))
    counts = {m["parent_header"]["msg_id"]: m["content"]["execution_count"]
              for m in conn.of("execute_reply")}
    assert counts["m2"] == 1 and counts["m3"] == 1 and counts["m4"] == 2, counts


async def test_a_reply_echoes_nothing_the_client_chose() -> None:
    """complete_reply copied ``cursor_pos`` whatever it was (5 MB of it made an 11 MB
    reply), and a reply went out on whatever channel the request named, ``iopub`` included
    (a review). The cursor is now a position in the code; other channels are ignored, as
    Jupyter Server ignores them."""
    kernel, _, conn = await make_kernel()
    for cursor, expected in ((3, 3), ("9" * 1000, 5), (-1, 5), (True, 5), (99, 5),
                             (None, 5)):
        conn.sent.clear()
        await kernel.handle(jm.decode(json.dumps({
            "header": {"msg_id": "c", "msg_type": "complete_request"},
            "content": {"code": "impor", "cursor_pos": cursor}})), conn)
        content = conn.of("complete_reply")[0]["content"]
        assert (content["cursor_start"], content["cursor_end"]) == (expected, expected), cursor
    for channel in ("iopub", "bogus"):
        conn.sent.clear()
        await kernel.handle(jm.decode(json.dumps({
            "header": {"msg_id": "k", "msg_type": "kernel_info_request"},
            "channel": channel})), conn)
        assert conn.sent == [], channel
    with pytest.raises(BadRequest):
        jm.decode(json.dumps({"header": {"msg_id": "k", "msg_type": "kernel_info_request"},
                              "channel": "x" * 100_000}))


async def test_refused_cell_ends_with_error() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("x"), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Error(code="payload_too_large", message="too big", id=cell))
    assert conn.of("execute_reply")[0]["content"]["status"] == "error"
    assert kernel.execution_state == "idle"
    # Our error code reads as an exception's name, as ``ename`` is in Jupyter.
    assert conn.of("error")[0]["content"]["ename"] == "PayloadTooLarge"
    assert conn.of("error")[0]["content"]["evalue"] == "too big"


async def test_a_rate_limited_cell_is_refused_before_it_counts() -> None:
    """A review: a rate-limited cell's ``ename`` was ``rate_limited`` and it used up an
    execution count. The kernel asks the limit before counting; the session is told the
    cell was admitted, so that it takes one token, not two."""
    kernel, runner, conn = await make_kernel(admit=refusing(True, False, True))
    await kernel.handle(request("a", "m1"), conn)
    await send(kernel, result(runner.executes()[0].id))
    await kernel.handle(request("b", "m2"), conn)
    await kernel.handle(request("c", "m3"), conn)
    assert [e.code for e in runner.executes()] == ["a", "c"]
    assert all(isinstance(e, ClientRequest) and e.admitted for e in runner.events
               if isinstance(e, ClientRequest) and isinstance(e.frame, fr.Execute))
    refused = [m for m in conn.sent if m["parent_header"]["msg_id"] == "m2"]
    assert [m["msg_type"] for m in refused] == ["status", "error", "execute_reply", "status"]
    assert refused[1]["content"]["ename"] == "RateLimited"
    assert refused[1]["content"]["evalue"] == "slow down"
    assert refused[2]["content"]["execution_count"] == 1
    assert [m["content"]["execution_count"] for m in conn.of("execute_input")] == [1, 2]


@pytest.mark.parametrize("code", [5, ["x = 1"], None])
async def test_code_that_is_not_a_string_is_an_error_reply(code: Any) -> None:
    """Run as empty code and answered ``ok`` before; ipykernel fails such a request too."""
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request(code), conn)
    assert runner.executes() == []
    reply = conn.of("execute_reply")[0]["content"]
    assert reply["status"] == "error"
    assert reply["ename"] == "TypeError"
    assert reply["evalue"] == f"'code' must be a string, not {type(code).__name__}"
    assert conn.of("error")[0]["content"]["ename"] == "TypeError"
    assert kernel.execution_state == "idle"


async def test_kernel_info_and_other_requests() -> None:
    kernel, _, conn = await make_kernel()
    await kernel.handle(jm.decode('{"header": {"msg_id": "k", "msg_type":'
                                  ' "kernel_info_request"}}'), conn)
    assert conn.types() == ["status", "kernel_info_reply", "status"]
    info = conn.of("kernel_info_reply")[0]
    assert info["channel"] == "shell"
    assert info["content"]["language_info"]["name"] == "python"
    for req in ("comm_info_request", "is_complete_request", "complete_request",
                "inspect_request", "history_request"):
        conn.sent.clear()
        await kernel.handle(jm.decode(json.dumps(
            {"header": {"msg_id": "r", "msg_type": req}})), conn)
        assert conn.types()[1] == req.replace("_request", "_reply")


async def test_unknown_request_gets_an_error_reply() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(jm.decode(json.dumps(
        {"header": {"msg_id": "d", "msg_type": "debug_request"}, "channel": "control"})),
        conn)
    assert conn.types() == ["status", "debug_reply", "status"]
    reply = conn.of("debug_reply")[0]
    assert reply["channel"] == "control"
    assert reply["parent_header"]["msg_id"] == "d"
    assert reply["content"] == {"status": "error", "ename": "NotImplementedError",
                                "evalue": "ws_sandbox does not serve debug_request",
                                "traceback": []}
    assert runner.events == []


async def test_comm_open_is_answered_with_comm_close() -> None:
    kernel, _, conn = await make_kernel()
    await kernel.handle(jm.decode(json.dumps(
        {"header": {"msg_id": "c", "msg_type": "comm_open"},
         "content": {"comm_id": "w1", "target_name": "jupyter.widget", "data": {}}})), conn)
    assert conn.types() == ["status", "comm_close", "status"]
    close = conn.of("comm_close")[0]
    assert close["channel"] == "iopub"
    assert close["content"] == {"comm_id": "w1", "data": {}}
    assert close["parent_header"]["msg_id"] == "c"


@pytest.mark.parametrize("msg_type", ["comm_msg", "comm_close", "input_reply", "custom"])
async def test_messages_that_want_no_answer_get_none(msg_type: str) -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(jm.decode(json.dumps({"header": {"msg_type": msg_type}})), conn)
    assert conn.sent == []
    assert runner.events == []


async def test_interrupt_and_shutdown_requests() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(jm.decode('{"header": {"msg_id": "i", "msg_type":'
                                  ' "interrupt_request"}, "channel": "control"}'), conn)
    assert isinstance(runner.events[-1], ClientRequest)
    assert isinstance(runner.events[-1].frame, fr.Interrupt)
    assert conn.of("interrupt_reply")[0]["channel"] == "control"
    await kernel.handle(jm.decode('{"header": {"msg_id": "s", "msg_type":'
                                  ' "shutdown_request"}, "channel": "control"}'), conn)
    assert isinstance(runner.events[-1], CloseRequest)


async def test_restart_waits_for_restarted() -> None:
    """The fresh kernel says ``starting``: ``restarting`` on iopub means a restart nobody
    asked for to JupyterLab, which then tells its user the kernel died (a review)."""
    kernel, runner, conn = await make_kernel()

    async def restarted() -> None:
        await send(kernel, runner.answer())

    task = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    assert kernel.execution_state == "restarting"
    assert isinstance(runner.events[-1], ClientRequest)
    assert isinstance(runner.events[-1].frame, fr.Restart)
    await restarted()
    await task
    assert kernel.execution_state == "idle"
    states = [m["content"]["execution_state"] for m in conn.of("status")]
    assert states == ["starting", "idle"]


def unparented_states(conn: FakeConnection) -> list[str]:
    return [m["content"]["execution_state"] for m in conn.of("status") if not m["parent_header"]]


async def test_a_loss_on_its_way_as_a_restart_is_asked_is_not_taken_for_its_answer() -> None:
    """A review: the kernel took whichever ``restarted`` frame came next for its restart's.
    An interpreter lost between cells, its news still queued as the client asked for a
    restart, released the restart at once (as ``starting``), and the asked restart's own
    answer then said ``restarting``: JupyterLab's "the kernel appears to have died". The
    session names the restarts a ``restarted`` frame answers; the loss says nothing (the
    client is restarting it anyway), the answer says ``starting``."""
    kernel, runner, conn = await make_kernel()
    task = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    (asked,) = runner.restarts()
    assert isinstance(asked.frame, fr.Restart) and asked.frame.id
    await send(kernel, fr.Restarted(reason="interpreter_restarted", message="it ended", ids=[]))
    await asyncio.sleep(0.05)
    assert not task.done() and kernel.execution_state == "restarting"
    assert unparented_states(conn) == []
    await send(kernel, runner.answer())
    await task
    assert unparented_states(conn) == ["starting", "idle"]
    assert kernel.execution_state == "idle"


async def test_a_restart_the_session_refuses_fails_at_once() -> None:
    """The session refuses a restart with an ``error`` frame carrying its id (too many wait
    for one under way): the caller hears why at once, not at its timeout, and a cell sent
    meanwhile runs."""
    kernel, runner, conn = await make_kernel()
    task = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    (asked,) = runner.restarts()
    assert isinstance(asked.frame, fr.Restart)
    await kernel.handle(request("after()", "m1"), conn)
    await send(kernel, fr.Error(id=asked.frame.id, code="queue_full", message="too many"))
    with pytest.raises(BackendError, match="the restart was refused: too many"):
        await asyncio.wait_for(task, 0.5)
    assert kernel.execution_state == "busy"
    assert [e.code for e in runner.executes()] == ["after()"]


async def test_a_restart_given_up_on_is_still_asked_for_when_it_comes() -> None:
    """A review: a restart that timed out (the client was told it failed) came later as
    one nobody asked for: ``restarting``, and with nobody connected, a "state is lost" note
    for the next cell. It is the client's own restart: ``starting``, no note."""
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("x = 1"), conn)
    await send(kernel, result(runner.executes()[-1].id))
    with pytest.raises(BackendError, match="did not restart in time"):
        await kernel.restart()  # make_kernel's restart_timeout: 1 s
    await send(kernel, runner.answer("restarted"))
    assert unparented_states(conn) == ["starting", "idle"]
    kernel.disconnect(conn)
    with pytest.raises(BackendError):
        await kernel.restart()
    await send(kernel, runner.answer("restarted"))
    later = FakeConnection()
    await kernel.connect(later)
    assert later.sent == []  # nothing held: not a loss nobody saw
    await kernel.handle(request("print(x)", "m2"), later)
    assert "stream" not in later.types()


async def test_a_caller_that_joined_a_restart_is_released_by_its_answer() -> None:
    """A review: the first caller's timeout forgot the restart's id, so its answer, coming
    later, released no one, and a caller that had joined it was told it failed."""
    kernel, runner, _ = await make_kernel()  # restart_timeout: 1 s
    first = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0.5)
    joined = asyncio.create_task(kernel.restart())
    with pytest.raises(BackendError, match="did not restart in time"):
        await first
    assert len(runner.restarts()) == 1 and kernel.execution_state == "restarting"
    await send(kernel, runner.answer())
    await asyncio.wait_for(joined, 0.3)
    assert kernel.execution_state == "idle"


async def test_an_asked_restart_takes_back_the_held_news_of_an_earlier_loss() -> None:
    """A review: a loss nobody saw holds ``restarting`` for the next client; a restart asked
    for after it (over REST, nobody connected) left it held, so the next client was told of
    a crash after the restart it asked for. The asked restart drops it, as it drops the
    note for the next cell."""
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("x = 1"), conn)
    await send(kernel, result(runner.executes()[-1].id))
    kernel.disconnect(conn)
    await send(kernel, fr.Restarted(reason="sandbox_replaced", message="replaced", ids=[]))
    assert [m for m in kernel._held if '"restarting"' in m]
    task = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    await send(kernel, runner.answer())
    await task
    later = FakeConnection()
    await kernel.connect(later)
    assert unparented_states(later) == []
    assert [m["msg_type"] for m in later.sent].count("status") == [
        m["msg_type"] for m in later.sent if m["parent_header"]].count("status")
    await kernel.handle(request("print(x)", "m3"), later)
    assert "stream" not in later.types()


async def test_a_restart_counts_from_one_again() -> None:
    """A review: the execution count went on after a restart; a restarted ipykernel, and
    our worker's ``<cell-N>`` in tracebacks, start again at 1."""
    kernel, runner, conn = await make_kernel()
    for msg_id in ("m1", "m2"):
        await kernel.handle(request("x", msg_id), conn)
        await send(kernel, result(runner.executes()[-1].id))
    task = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    await send(kernel, runner.answer())
    await task
    await kernel.handle(request("y", "m3"), conn)
    assert [m["content"]["execution_count"] for m in conn.of("execute_input")] == [1, 2, 1]
    # So does a sandbox replaced without being asked.
    await send(kernel, result(runner.executes()[-1].id))
    await send(kernel, fr.Restarted(reason="sandbox_replaced", message="it died"))
    await kernel.handle(request("z", "m4"), conn)
    assert conn.of("execute_input")[-1]["content"]["execution_count"] == 1


async def test_a_restart_during_a_cell_answers_the_requests_in_order() -> None:
    """A review: the queued cells' ``aborted`` replies went out before the running cell's
    reply. Now: the running cell's reply, then the aborted ones; a cell sent after the
    restart is not aborted by the stopped cell's failure, and runs once it is fresh."""
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("running()", "m1"), conn)
    await kernel.handle(request("queued()", "m2"), conn)
    await kernel.handle(request("queued()", "m3"), conn)
    task = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    await kernel.handle(request("after()", "m4"), conn)
    assert not conn.of("execute_reply")
    await send(kernel, result(runner.executes()[0].id, "killed", "restarted"))
    await send(kernel, runner.answer())
    await task
    replies = [(m["parent_header"]["msg_id"], m["content"]["status"])
               for m in conn.of("execute_reply")]
    assert replies == [("m1", "error"), ("m2", "aborted"), ("m3", "aborted")]
    assert [e.code for e in runner.executes()] == ["running()", "after()"]
    await send(kernel, result(runner.executes()[-1].id))
    assert conn.of("execute_reply")[-1]["parent_header"]["msg_id"] == "m4"


def lost(cell_id: str, status: fr.Status = "timeout") -> fr.Result:
    """A cell's result whose interpreter was restarted after it (or died in it)."""
    return msgspec.structs.replace(result(cell_id, status, "why"), state_lost=True)


async def test_counts_start_again_with_the_first_cell_of_a_fresh_interpreter() -> None:
    """A review: after a restart nobody asked for, the cell already queued kept the old
    count, and the restart's reset then made later counts go backwards (3, then 1, 2 for
    ``<cell-1>``, ``<cell-2>``...); an interpreter that died in a cell (no ``restarted``)
    never reset the count. The first cell the fresh interpreter runs is 1."""
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("x = 1", "m1"), conn)
    await send(kernel, result(runner.executes()[-1].id))
    await kernel.handle(request("stuck()", "m2", stop_on_error=False), conn)
    await kernel.handle(request("queued()", "m3"), conn)
    await send(kernel, lost(runner.executes()[-1].id))  # the time limit restarted it
    await send(kernel, fr.Restarted(reason="interpreter_restarted", message="", ids=[]))
    await send(kernel, result(runner.executes()[-1].id))
    await kernel.handle(request("after()", "m4"), conn)
    await send(kernel, lost(runner.executes()[-1].id, "error"))  # os._exit: no restarted
    await kernel.handle(request("again()", "m5"), conn)
    counts = [m["content"]["execution_count"] for m in conn.of("execute_input")]
    assert counts == [1, 2, 1, 2, 1]


async def test_a_cell_whose_interpreter_ended_says_so_last_in_its_traceback() -> None:
    """A review: a cell that printed a caught ValueError's traceback and then ended its
    interpreter showed that traceback alone, ending in ValueError, in Open WebUI."""
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("crash()"), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Stream(id=cell, name="stderr", text=(
        'Traceback (most recent call last):\n  File "<cell-1>", line 2\nValueError: bad\n')))
    await send(kernel, msgspec.structs.replace(result(
        cell, "error", "interpreter exited with code 3; state is lost"), state_lost=True))
    (error,) = conn.of("error")
    assert error["content"]["traceback"][-2:] == [
        "ValueError: bad", "Error: interpreter exited with code 3; state is lost"]


async def test_a_restart_while_a_cell_starts_aborts_it_with_those_behind_it() -> None:
    """A review: a restart that came while the next cell's first messages went out (a slow
    client) let that cell run in the fresh interpreter after the cells behind it had their
    ``aborted`` replies. It was sent before the restart: it is aborted first, in order."""
    gate = asyncio.Event()

    class SlowOnM2(FakeConnection):
        async def send_text(self, text: str) -> None:
            if '"execute_input"' in text and '"m2"' in text:
                await gate.wait()  # m2's execute_input waits, as m1 ends
            await super().send_text(text)

    kernel = Kernel(find_spec("python3", ("python",)), owner="jupyter", send_timeout=5.0,
                    execution_timeout=30.0, restart_timeout=1.0, max_queued=16,
                    max_code_bytes=1 << 20)
    runner = FakeRunner()
    kernel.bind(cast(SessionRunner, runner))
    slow = SlowOnM2()
    await kernel.connect(slow)
    for msg_id in ("m1", "m2", "m3"):
        await kernel.handle(request("x", msg_id), slow)
    ending = asyncio.create_task(send(kernel, result(runner.executes()[0].id)))
    await asyncio.sleep(0.05)
    restarting = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0.05)
    gate.set()
    await ending
    assert len(runner.executes()) == 1  # m2 never went to the session
    await send(kernel, runner.answer())
    await restarting
    replies = [(m["parent_header"]["msg_id"], m["content"]["status"])
               for m in slow.of("execute_reply")]
    assert replies == [("m1", "ok"), ("m2", "aborted"), ("m3", "aborted")]


async def test_queued_cells_a_restart_took_are_aborted_if_the_session_closes() -> None:
    kernel, _, conn = await make_kernel()
    await kernel.handle(request("running()", "m1"), conn)
    await kernel.handle(request("queued()", "m2"), conn)
    task = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    await send(kernel, fr.Closed(reason="sandbox_lost", message="gone"))
    with pytest.raises(BackendError):
        await task
    assert [(m["parent_header"]["msg_id"], m["content"]["status"])
            for m in conn.of("execute_reply")] == [("m2", "aborted")]


def refusing(*answers: bool) -> Callable[[], None]:
    """An ``admit`` that admits or refuses (a rate limit) in this order."""
    allowed = iter(answers)

    def admit() -> None:
        if not next(allowed):
            raise RateLimited("slow down", retry_after=1.0)

    return admit


async def test_a_refused_restart_changes_nothing_and_one_under_way_is_joined_free() -> None:
    """A refused restart fails at once, before the queued cells are dropped, and feeds the
    session nothing. A restart asked for while one is under way joins it without a token
    (each took one, and a review spent 18 tokens on one restart), and the session is fed
    one restart, which it does not admit again."""
    kernel, runner, conn = await make_kernel(admit=refusing(True, False, True))
    await kernel.handle(request("running()", "m1"), conn)  # admitted
    await kernel.handle(request("queued()", "m2"), conn)
    with pytest.raises(RateLimited, match="slow down"):
        await kernel.restart()
    assert kernel.execution_state == "busy" and len(kernel._pending) == 1
    assert not runner.restarts()
    first = asyncio.create_task(kernel.restart())  # admitted
    await asyncio.sleep(0)
    joined = asyncio.create_task(kernel.restart())  # would be refused: the iterator is spent
    await asyncio.sleep(0)
    restarts = runner.restarts()
    assert len(restarts) == 1 and restarts[0].admitted is True
    await send(kernel, runner.answer())
    await asyncio.wait_for(asyncio.gather(first, joined), 5)
    assert not kernel._pending  # the admitted restart dropped the queued cell


async def test_a_restart_refused_over_the_channel_says_so_in_its_reply() -> None:
    """A refused shutdown_request with restart answered status ok (and lost the queued
    cells) while nothing restarted (a review). The reply is an error naming the limit."""
    kernel, runner, conn = await make_kernel(admit=refusing(False))
    await kernel.handle(jm.decode(json.dumps({
        "header": {"msg_id": "s", "msg_type": "shutdown_request"}, "channel": "control",
        "content": {"restart": True}})), conn)
    (reply,) = conn.of("shutdown_reply")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "RateLimited"
    assert reply["content"]["evalue"] == "slow down"
    assert not runner.restarts()
    assert kernel.execution_state == "idle"


async def test_restart_times_out() -> None:
    kernel, _, _ = await make_kernel()
    with pytest.raises(BackendError, match="in time"):
        await kernel.restart()


async def test_messages_held_without_connection_and_replayed() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("x"), conn)
    kernel.disconnect(conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Stream(id=cell, name="stdout", text="late\n"))
    await send(kernel, result(cell))
    later = FakeConnection()
    await kernel.connect(later)
    # iopub was held and is replayed, and so is the reply whose connection left: its client
    # may be the one coming back (a review: a client reconnecting after a blip waited for a
    # reply that was thrown away; Jupyter Server keeps replies too).
    assert later.types() == ["stream", "execute_reply", "status"]
    assert later.of("execute_reply")[0]["parent_header"]["msg_id"] == "m1"
    assert kernel.model()["connections"] == 1


class Gated(FakeConnection):
    """A connection that takes nothing until :attr:`gate` is set (with ``first_only``, only
    its first message waits)."""

    def __init__(self, first_only: bool = False) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.first_only = first_only

    async def send_text(self, text: str) -> None:
        if not (self.first_only and self.sent):
            await self.gate.wait()
        await super().send_text(text)


async def left_with(lines: int) -> tuple[Kernel, str]:
    """A kernel whose only connection left while its cell printed ``lines`` lines (held)."""
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("x"), conn)
    kernel.disconnect(conn)
    cell = runner.executes()[0].id
    for n in range(lines):
        await send(kernel, fr.Stream(id=cell, name="stdout", text=f"{n}\n"))
    return kernel, cell


def texts(conn: FakeConnection) -> list[str]:
    return [m["content"]["text"] for m in conn.of("stream")]


async def test_the_replay_comes_before_what_is_sent_meanwhile() -> None:
    """A message published while the held ones were still being replayed reached the new
    connection before older held ones (a review's reading of the code): now it waits."""
    kernel, cell = await left_with(2)
    later = Gated(first_only=True)  # the first held message takes its time
    replay = asyncio.create_task(kernel.connect(later))
    await asyncio.sleep(0)
    await send(kernel, fr.Stream(id=cell, name="stdout", text="live\n"))  # meanwhile
    await send(kernel, result(cell))
    later.gate.set()
    await replay
    assert texts(later) == ["0\n", "1\n", "live\n"]
    assert later.types()[-2:] == ["execute_reply", "status"]
    # Once replayed, messages go straight out again.
    await kernel.handle(request("y", "m2"), later)
    assert later.types()[-2:] == ["status", "execute_input"]


async def test_a_full_held_buffer_is_replayed_whole_to_a_slow_client() -> None:
    """The bound on a replay counted the held messages too, so a client coming back to a
    full buffer (a chatty cell during a blip) was cut at the next message, and everything
    held was lost (a review of this change): only what arrives during the replay counts."""
    kernel, cell = await left_with(400)
    later = Gated()
    replay = asyncio.create_task(kernel.connect(later))
    await asyncio.sleep(0)
    for n in range(2):
        await send(kernel, fr.Stream(id=cell, name="stdout", text=f"live {n}\n"))
    later.gate.set()
    await replay
    assert later.closed is None
    assert texts(later)[-2:] == ["live 0\n", "live 1\n"]
    assert len(texts(later)) == HELD_MESSAGES + 2


async def test_what_a_connection_left_during_its_replay_is_held_again() -> None:
    """The held messages moved to the new connection's replay, and were lost with it when
    it dropped midway (a review of this change): the rest is held for the next one."""
    kernel, _ = await left_with(10)

    class Dropping(FakeConnection):
        async def send_text(self, text: str) -> None:
            if len(self.sent) == 2:
                raise ConnectionResetError("gone")
            await super().send_text(text)

    first = Dropping()
    await kernel.connect(first)
    assert texts(first) == ["0\n", "1\n"]
    second = FakeConnection()
    await kernel.connect(second)
    # The one being sent when it dropped is gone with it; the rest come, in order.
    assert texts(second) == [f"{n}\n" for n in range(3, 10)]


async def test_a_connection_that_cannot_take_its_replay_is_cut() -> None:
    """What waits behind a replay is bounded as the held buffer is."""
    kernel, cell = await left_with(1)
    later = Gated()
    replay = asyncio.create_task(kernel.connect(later))
    await asyncio.sleep(0)
    for n in range(HELD_MESSAGES + 1):
        await send(kernel, fr.Stream(id=cell, name="stdout", text=f"{n}\n"))
    assert later.closed == (1008, "too slow") and later.at_once
    assert kernel.model()["connections"] == 0
    later.gate.set()
    await replay


async def test_a_state_loss_nobody_saw_is_told_to_the_next_client() -> None:
    """The sandbox is replaced between two connections (Open WebUI connects per run): the
    next connection gets the restart notice, and its next cell's output says the state is
    gone, once."""
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("x = 1"), conn)
    await send(kernel, result(runner.executes()[0].id))
    kernel.disconnect(conn)
    await send(kernel, fr.Restarted(reason="sandbox_replaced",
                                    message="the sandbox was replaced; state is lost"))
    later = FakeConnection()
    await kernel.connect(later)
    assert [(m["msg_type"], m["content"], m["parent_header"]) for m in later.sent] == [
        ("status", {"execution_state": "restarting"}, {}),
        ("status", {"execution_state": "idle"}, {})]
    await kernel.handle(request("print(x)", "m2"), later)
    assert later.types()[2:] == ["status", "execute_input", "stream"]
    note = later.sent[-1]
    assert note["parent_header"]["msg_id"] == "m2"  # Open WebUI reads only these
    assert note["content"]["name"] == "stderr"
    assert note["content"]["text"].startswith("the sandbox was replaced; state is lost")
    await send(kernel, result(runner.executes()[-1].id))
    await kernel.handle(request("print(2)", "m3"), later)
    assert not [m for m in later.sent
                if m["parent_header"].get("msg_id") == "m3" and m["msg_type"] == "stream"]


async def test_a_state_loss_is_not_news_when_there_was_no_state_or_it_was_asked_for() -> None:
    kernel, runner, conn = await make_kernel()
    kernel.disconnect(conn)
    # Lost before any cell ran: the notice is held, but no cell is told of lost state.
    await send(kernel, fr.Restarted(reason="sandbox_replaced", message="replaced"))
    later = FakeConnection()
    await kernel.connect(later)
    assert [m["content"]["execution_state"] for m in later.sent] == ["restarting", "idle"]
    await kernel.handle(request("x = 1"), later)
    assert "stream" not in later.types()
    await send(kernel, result(runner.executes()[-1].id))
    kernel.disconnect(later)
    # A restart the client asked for (over REST, with nobody connected) is no news either.
    task = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    await send(kernel, runner.answer("restarted"))
    await task
    last = FakeConnection()
    await kernel.connect(last)
    await kernel.handle(request("print(x)", "m2"), last)
    assert "stream" not in last.types()
    # A loss seen live by a connected client is published to it, not held.
    await send(kernel, result(runner.executes()[-1].id))
    await send(kernel, fr.Restarted(reason="sandbox_replaced", message="replaced"))
    assert [m["content"]["execution_state"] for m in last.of("status")][-2:] == [
        "restarting", "idle"]
    kernel.disconnect(last)
    again = FakeConnection()
    await kernel.connect(again)
    assert again.sent == []


async def test_held_messages_are_bounded_by_count_and_size() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("x"), conn)
    kernel.disconnect(conn)
    cell = runner.executes()[0].id
    big = "y" * (100 * 1024)
    for n in range(100):  # 10 MB of output for nobody
        await send(kernel, fr.Stream(id=cell, name="stdout", text=f"{n:03d}{big}"))
    for n in range(300):  # many small messages
        await send(kernel, fr.Stream(id=cell, name="stdout", text=f"small {n}\n"))
    later = FakeConnection()
    await kernel.connect(later)
    texts = [m["content"]["text"] for m in later.sent]
    assert len(texts) == HELD_MESSAGES
    assert texts[-1] == "small 299\n"  # the newest are kept
    assert texts[0] == "small 44\n"
    kernel.disconnect(later)
    for n in range(100):
        await send(kernel, fr.Stream(id=cell, name="stdout", text=f"{n:03d}{big}"))
    last = FakeConnection()
    await kernel.connect(last)
    held = sum(len(json.dumps(m)) for m in last.sent)
    assert HELD_CHARS * 0.9 < held <= HELD_CHARS
    assert last.sent[-1]["content"]["text"].startswith("099")


async def test_closed_session_kills_kernel() -> None:
    kernel, runner, conn = await make_kernel()
    await kernel.handle(request("a", "m1"), conn)
    await kernel.handle(request("b", "m2"), conn)
    await send(kernel, result(runner.executes()[0].id, "killed", "the session closed"))
    await send(kernel, fr.Closed(reason="idle_timeout"))
    await kernel.close(1000, "idle_timeout")
    assert kernel.dead and kernel.execution_state == "dead"
    assert conn.closed == (1000, "idle_timeout")
    statuses = {m["parent_header"]["msg_id"]: m["content"]["status"]
                for m in conn.of("execute_reply")}
    assert statuses == {"m1": "error", "m2": "aborted"}


async def test_slow_connection_is_dropped() -> None:
    kernel, _, conn = await make_kernel()

    class Broken(FakeConnection):
        async def send_text(self, text: str) -> None:
            raise ConnectionError("gone")

    broken = Broken()
    await kernel.connect(broken)
    await kernel.handle(request("x"), conn)
    assert broken.closed is not None
    assert kernel.model()["connections"] == 1
    assert conn.types()[:2] == ["status", "execute_input"]


async def test_connections_that_take_nothing_cost_one_send_timeout_and_are_cut() -> None:
    """Each output message goes to every connection. One after the other, each slow one
    waited SEND_TIMEOUT and then a close that waited as long: 40 connections that read
    nothing held one frame (and the session's loop, which sends it) for 80 timeouts."""
    kernel, runner, conn = await make_kernel(send_timeout=0.2)

    class Silent(FakeConnection):
        async def send_text(self, text: str) -> None:
            await asyncio.Event().wait()

    silent = [Silent() for _ in range(40)]
    for each in silent:
        await kernel.connect(each)
    start = time.monotonic()
    await kernel.handle(request("print(1)"), conn)  # status and execute_input go to all
    await send(kernel, fr.Stream(id=runner.executes()[0].id, name="stdout", text="1\n"))
    took = time.monotonic() - start
    assert took < 2.0, took  # 0.2 s for all of them (generous: scheduling); 8 s in turn
    assert all(s.closed == (1008, "too slow") and s.at_once for s in silent)
    assert kernel.connections == 1
    assert conn.of("stream")[-1]["content"]["text"] == "1\n"


async def test_a_request_sent_once_the_failed_cell_went_idle_is_not_aborted() -> None:
    """stop_on_error aborts the requests that waited when a cell failed. The kernel took
    them only after publishing the failure, so a client's next cell, sent as soon as it saw
    ``idle``, could land among them and be aborted (CI saw it: a cell after an interrupt
    printed nothing)."""
    kernel, runner, _ = await make_kernel()

    class Eager(FakeConnection):
        """Sends its next request the moment it sees the first cell's ``idle``."""

        async def send_text(self, text: str) -> None:
            await super().send_text(text)
            message = self.sent[-1]
            if (message["msg_type"] == "status" and message["parent_header"]["msg_id"] == "m1"
                    and message["content"]["execution_state"] == "idle"):
                next_cell.append(asyncio.create_task(kernel.handle(request("2", "m2"), self)))
            await asyncio.sleep(0)  # a real send may yield

    eager = Eager()
    next_cell: list[asyncio.Task[None]] = []
    await kernel.connect(eager)
    await kernel.handle(request("1", "m1"), eager)
    await kernel.handle(request("queued", "m0"), eager)  # waits: aborted when m1 fails
    await send(kernel, result(runner.executes()[0].id, "interrupted", "interrupted"))
    await asyncio.gather(*next_cell)
    statuses = {m["parent_header"]["msg_id"]: m["content"]["status"]
                for m in eager.of("execute_reply")}
    assert statuses == {"m1": "error", "m0": "aborted"}  # m2 has not ended: it runs
    assert [e.code for e in runner.executes()] == ["1", "2"]


async def test_a_kernel_closes_its_connections_together() -> None:
    """The session's end (and a DELETE, which Open WebUI awaits) waited for each connection's
    close in turn: up to eight times SEND_TIMEOUT."""
    kernel, _, conn = await make_kernel()

    class SlowClose(FakeConnection):
        async def close(self, code: int, reason: str, *, at_once: bool = False) -> None:
            await asyncio.sleep(1.0)
            await super().close(code, reason, at_once=at_once)

    slow = [SlowClose() for _ in range(7)]
    for each in slow:
        await kernel.connect(each)
    start = time.monotonic()
    await kernel.close(1000, "idle_timeout")
    assert time.monotonic() - start < 4.0  # 1 s together (generous: scheduling); 7 s in turn
    assert all(c.closed == (1000, "idle_timeout") for c in [conn, *slow])


async def test_every_message_under_one_mebibyte_at_worst() -> None:
    """Control characters cost 6 bytes in JSON; huge errors and code are cut."""
    kernel, runner, conn = await make_kernel()  # FakeConnection asserts < 1 MiB per message
    nasty = "\x01" * 2_000_000
    await kernel.handle(request(nasty), conn)
    cell = runner.executes()[0].id
    await send(kernel, fr.Stream(id=cell, name="stdout", text=nasty))
    await send(kernel, fr.Stream(id=cell, name="stderr",
                                      text="Traceback (most recent call last):\n"))
    for _ in range(3):
        await send(kernel, fr.Stream(id=cell, name="stderr", text="\x02" * 65536))
    await send(kernel, fr.Display(id=cell, kind="display_data",
                                       data={"text/html": '"' * 600_000}))
    await send(kernel, result(cell, "error", "E: " + nasty))
    assert conn.types()[-1] == "status"
    assert "text/html" not in conn.of("display_data")[0]["content"]["data"]
