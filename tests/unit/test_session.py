"""The sans-I/O session core, driven by hand: no loop, no Docker, no clock."""

from __future__ import annotations

import dataclasses
import json

import hypothesis
import pytest
from hypothesis import strategies as st

from ws_sandbox import agent_wire as aw
from ws_sandbox import frames as fr
from ws_sandbox.exceptions import BadRequest, RateLimited, SandboxLost
from ws_sandbox.frames import AGENT_FRAME_CHARS as AGENT_FRAME
from ws_sandbox.frames import OUTPUT_ALLOWANCE_SLACK
from ws_sandbox.frames import display_chars as agent_display_chars
from ws_sandbox.session import (
    CLOCK_RESOLUTION_MS,
    DISPLAY_FRAME_BYTES,
    TRUNCATION_MARKER,
    CellFinished,
    CloseSession,
    Phase,
    ReplaceSandbox,
    SendToAgent,
    Session,
    SessionLimits,
    State,
    display_size,
    validate_cell,
)

LIMITS = SessionLimits(
    max_execution_time=30.0, default_execution_time=10.0, max_memory_mb=512,
    max_output_bytes=100, max_code_bytes=1000, max_queued_cells=2, idle_timeout=60.0,
    max_lifetime=600.0, resume_grace=5.0, interrupt_grace=1.0, restart_timeout=2.0,
    max_sandbox_replacements=3)


def new(limits: SessionLimits = LIMITS) -> Session:
    return Session(session_id="s1", language="python", limits=limits, now=0.0)


def execute(session: Session, cell_id: str = "c1", code: str = "print(1)",
            timeout: float | None = None, now: float = 0.0) -> None:
    frame: dict[str, object] = {"type": "execute", "id": cell_id, "code": code}
    if timeout is not None:
        frame["timeout"] = timeout
    session.receive_client(json.dumps(frame), now)


def sent_to_agent(session: Session) -> list[aw.ToAgent]:
    return [a.frame for a in session.actions_to_run() if isinstance(a, SendToAgent)]


def done(cell_id: str = "c1", **fields: object) -> aw.Done:
    values: dict[str, object] = {"status": "success", "exit_code": 0,
                                 "execution_time_ms": 2.0, "memory_used_mb": 10.0}
    values.update(fields)
    return aw.Done(id=cell_id, **values)  # type: ignore[arg-type]


def only(frames: list[fr.ServerFrame], kind: type[fr.Frame]) -> list[fr.ServerFrame]:
    return [f for f in frames if isinstance(f, kind)]


def test_a_program_cell_asks_the_agent_to_wait_for_what_it_left() -> None:
    """A cell sent as a whole program (a one-shot call's, ``ws-sandbox exec``'s) asks the
    agent to wait, at its end, for the work the program left; a notebook cell never does,
    and the next cell of the session is a notebook cell again unless it says otherwise."""
    s = new()
    s.receive_client('{"type": "execute", "id": "c1", "code": "print(1)", "program": true}',
                     0.0)
    assert sent_to_agent(s) == [aw.Exec(id="c1", code="print(1)", max_output_bytes=100,
                                        program=True)]
    s.receive_agent(done(), 0.1)
    execute(s, "c2", now=0.2)
    [frame] = sent_to_agent(s)
    assert isinstance(frame, aw.Exec) and frame.program is False
    assert b"program" not in aw.encode(frame)  # as the agent was always sent it


@pytest.mark.parametrize("value", ['"yes"', "1", "null", "[]"])
def test_program_must_be_a_boolean(value: str) -> None:
    s = new()
    s.receive_client(f'{{"type": "execute", "id": "c1", "code": "1", "program": {value}}}',
                     0.0)
    [error] = s.frames_to_send()
    assert isinstance(error, fr.Error) and error.code == "bad_request" and error.id == "c1"
    assert "Expected `bool`" in error.message and "$.program" in error.message, error
    assert not sent_to_agent(s)


def test_execute_sends_exec_and_result_follows_output() -> None:
    s = new()
    execute(s)
    [frame] = sent_to_agent(s)
    assert frame == aw.Exec(id="c1", code="print(1)", max_output_bytes=100)
    assert s.state is State.RUNNING
    s.receive_agent(aw.Out(id="c1", name="stdout", text="1\n"), 0.1)
    s.receive_agent(done(), 0.2)
    frames = s.frames_to_send()
    assert frames[0] == fr.Stream(id="c1", name="stdout", text="1\n")
    result = frames[1]
    assert isinstance(result, fr.Result)
    assert (result.status, result.exit_code, result.memory_used_mb) == ("success", 0, 10.0)
    assert s.state is State.IDLE
    assert any(isinstance(a, CellFinished) for a in s.actions_to_run())


def test_agent_time_can_only_shrink_the_measured_time() -> None:
    s = new()
    execute(s)
    s.receive_agent(done(execution_time_ms=99999.0), 0.5)
    [result] = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result)
    assert result.execution_time_ms == pytest.approx(500.0 + CLOCK_RESOLUTION_MS)


def test_a_cell_quicker_than_the_loop_s_clock_keeps_the_agent_s_time() -> None:
    """uvloop's clock (libuv's) counts whole milliseconds: a cell begun and ended within one
    tick was seen to take 0 ms, and the agent's 0.4 ms was cut to 0.0 (38% of the history
    rows of trivial cells: an operator review). The agent may still not add more than a
    tick."""
    s = new()
    execute(s, now=10.0)
    s.receive_agent(done(execution_time_ms=0.4), 10.0)
    [result] = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result)
    assert result.execution_time_ms == pytest.approx(0.4)


@pytest.mark.parametrize(("claimed", "shown"), [(None, None), (180.1234, 180.123),
                                                (5000.0, 250.0)])
def test_a_rust_cells_compile_time_is_passed_on_no_longer_than_the_cell(
        claimed: float | None, shown: float | None) -> None:
    """The agent reports rustc's time (``compile_time_ms``); it is passed on in the result,
    and, being the agent's word, never as more than the whole cell took."""
    s = new()
    execute(s)
    s.receive_agent(done(execution_time_ms=250.0, compile_time_ms=claimed), 0.5)
    [result] = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result)
    assert result.execution_time_ms == 250.0 and result.compile_time_ms == shown
    assert (b'"compile_time_ms":null' in fr.encode(result)) is (shown is None)


def test_a_negative_compile_time_is_refused() -> None:
    body = b'{"t": "done", "id": "c1", "status": "success", "compile_time_ms": -1}'
    with pytest.raises(SandboxLost, match="compile_time_ms"):
        aw.AgentDecoder().feed(len(body).to_bytes(4, "big") + body)


def test_memory_claim_is_capped_at_the_limit() -> None:
    s = new()
    execute(s)
    s.receive_agent(done(memory_used_mb=1e9), 0.1)
    [result] = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result)
    assert result.memory_used_mb == 512


def test_cells_queue_in_fifo_order_and_queue_is_bounded() -> None:
    s = new()
    execute(s, "a")
    execute(s, "b")
    execute(s, "c")
    execute(s, "d")
    [error] = only(s.frames_to_send(), fr.Error)
    assert isinstance(error, fr.Error)
    assert (error.code, error.id) == ("queue_full", "d")
    assert [f.id for f in sent_to_agent(s) if isinstance(f, aw.Exec)] == ["a"]
    s.receive_agent(done("a"), 1.0)
    assert [f.id for f in sent_to_agent(s) if isinstance(f, aw.Exec)] == ["b"]
    s.receive_agent(done("b"), 2.0)
    assert [f.id for f in sent_to_agent(s) if isinstance(f, aw.Exec)] == ["c"]


def test_duplicate_cell_id_is_refused() -> None:
    """A second cell with a running cell's id is refused and never runs: one Exec for "a"
    reaches the agent, and after "a" is done nothing else is sent, the session is idle and
    the client has one Result for "a" (a refusal that still queued the cell ran it twice:
    a review)."""
    s = new()
    execute(s, "a")
    execute(s, "a")
    frames = s.frames_to_send()
    [error] = only(frames, fr.Error)
    assert isinstance(error, fr.Error)
    assert error.code == "bad_request" and "already" in error.message
    assert [f.id for f in sent_to_agent(s) if isinstance(f, aw.Exec)] == ["a"]
    assert not s.queue
    s.receive_agent(done("a"), 1.0)
    assert not [f for f in sent_to_agent(s) if isinstance(f, aw.Exec)]
    assert s.state is State.IDLE and s.running is None and not s.queue
    frames += s.frames_to_send()
    assert [f.id for f in frames if isinstance(f, fr.Result)] == ["a"]


@pytest.mark.parametrize(
    ("message", "code", "words"),
    [
        ("not json", "bad_request", "malformed"),
        ('{"type": "nope"}', "bad_request", "Invalid value 'nope'"),
        ('{"type": "execute", "id": "c1"}', "bad_request", "missing required field `code`"),
        ('{"type": "execute", "id": 5, "code": "x"}', "bad_request", "Expected `str`"),
        ('{"type": "execute", "id": "c1", "code": "   "}', "bad_request", "empty"),
        ('{"type": "execute", "id": "c1", "code": "x", "timeout": 0}', "bad_request",
         "positive"),
        ('{"type": "execute", "id": "c1", "code": "x", "timeout": 1e-300}', "bad_request",
         "at least 0.001, not 1e-300"),
        ('{"type": "execute", "id": "c1", "code": "x", "timeout": -5}', "bad_request",
         "positive"),
        ('{"type": "execute", "id": "c1", "code": "x", "timeout": 31}', "bad_request",
         "maximum of 30 s"),
        ('{"type": "execute", "id": "c1", "code": "' + "x" * 1001 + '"}',
         "payload_too_large", "limit of 1000 bytes"),
        ("[]", "bad_request", "Expected `object`"),
    ],
)
def test_bad_frames_get_error_frames_and_session_goes_on(message: str, code: str,
                                                         words: str) -> None:
    s = new()
    s.receive_client(message, 0.0)
    [error] = s.frames_to_send()
    assert isinstance(error, fr.Error)
    assert error.code == code
    assert words in error.message
    assert s.state is State.IDLE
    execute(s, "ok")
    assert s.state is State.RUNNING


@pytest.mark.parametrize(("message", "cell_id"), [
    ('{"type": "execute", "id": "c9", "code": 5}', "c9"),
    ('{"type": "execute", "id": "c9", "code": "x", "timeout": true}', "c9"),
    ('{"type": "execute", "id": "' + "x" * 129 + '", "code": "x"}', None),
    ('{"type": "execute", "id": 7, "code": "x"}', None),
    ("not json", None),
    ("[1, 2]", None),
    # JSON with a lone surrogate escape is valid JSON that msgspec refuses whole: the id
    # is still read (a review found it refused with no id), unless it is the bad string.
    ('{"type": "execute", "id": "c9", "code": "x = \\ud800"}', "c9"),
    ('{"type": "execute", "id": "c9\\udc00", "code": "x"}', None),
])
def test_an_invalid_frame_is_refused_under_its_cell_id_when_it_has_one(
        message: str, cell_id: str | None) -> None:
    # Refused without its id, a cell's caller waited for a result that could never come.
    s = new()
    s.receive_client(message, 0.0)
    [error] = s.frames_to_send()
    assert isinstance(error, fr.Error) and error.code == "bad_request", error
    assert error.id == cell_id


def test_binary_and_oversized_frames_are_refused() -> None:
    s = new()
    s.receive_client(b"\x00\x01", 0.0)
    s.receive_client("x" * (fr.message_limit(1000) + 1), 0.0)
    errors = s.frames_to_send()
    assert [e.code for e in errors if isinstance(e, fr.Error)] == ["bad_request",
                                                                    "payload_too_large"]


def test_code_within_the_limit_is_accepted_however_json_escapes_it() -> None:
    """100,000 bytes of control characters are 600,000 characters of JSON (``\\u001b``):
    the frame's limit leaves room for that, as the REST body's does."""
    s = new(dataclasses.replace(LIMITS, max_code_bytes=100_000))
    frame = json.dumps({"type": "execute", "id": "c1", "code": "\x1b" * 100_000})
    assert len(frame) > 600_000
    s.receive_client(frame, 0.0)
    assert not [f for f in s.frames_to_send() if isinstance(f, fr.Error)]
    assert s.state is State.RUNNING


def test_output_is_capped_with_a_visible_marker() -> None:
    s = new()
    execute(s)
    s.receive_agent(aw.Out(id="c1", name="stdout", text="a" * 60), 0.1)
    s.receive_agent(aw.Out(id="c1", name="stdout", text="b" * 60), 0.1)
    s.receive_agent(aw.Out(id="c1", name="stderr", text="c" * 60), 0.1)
    s.receive_agent(done(), 0.2)
    frames = s.frames_to_send()
    streams = [f for f in frames if isinstance(f, fr.Stream)]
    text = "".join(f.text for f in streams)
    assert text.startswith("a" * 60 + "b" * 40)
    assert TRUNCATION_MARKER.format(limit=100) in text
    assert "ccc" not in text
    result = frames[-1]
    assert isinstance(result, fr.Result) and result.truncated
    # The record counts what was sent, the cap's worth: it counted the whole chunk that
    # went past the cap (196,608 bytes recorded where 65,536 were sent: a review).
    [finished] = [a for a in s.actions_to_run() if isinstance(a, CellFinished)]
    assert finished.cell.output_bytes == 100


def test_cap_never_splits_a_multibyte_character() -> None:
    s = new()
    execute(s)
    s.receive_agent(aw.Out(id="c1", name="stdout", text="é" * 60), 0.1)  # 120 bytes
    [stream] = only(s.frames_to_send(), fr.Stream)
    assert isinstance(stream, fr.Stream)
    assert stream.text.startswith("é" * 50 + "\n[output truncated")


def test_output_of_another_cell_is_dropped() -> None:
    s = new()
    execute(s, "c2")
    s.receive_agent(aw.Out(id="c1", name="stdout", text="late"), 0.1)
    s.receive_agent(done("c1"), 0.1)
    assert s.frames_to_send() == []
    assert s.state is State.RUNNING


# What a sandbox may send between one cell's start and the next's: the cell's budget and the
# rest of the cell before it, still on the way.
ALLOWANCE = 2 * LIMITS.max_output_bytes + OUTPUT_ALLOWANCE_SLACK


def replaced(session: Session) -> bool:
    return any(isinstance(a, ReplaceSandbox) for a in session.actions_to_run())


def test_output_after_a_cell_ended_past_the_allowance_replaces_the_sandbox() -> None:
    # A background process's output after its cell ended comes under the cell's id and is
    # dropped; the agent stops at the cell's budget, so a sandbox that goes on streaming is
    # broken (or hostile) and costs the service and the engine CPU for nothing.
    s = new()
    execute(s)
    s.receive_agent(aw.Out(id="c1", name="stdout", text="1\n"), 0.1)
    s.receive_agent(done(), 0.2)
    s.frames_to_send()
    # The done counted too: no frame is free.
    s.receive_agent(aw.Out(id="c1", name="stdout", text="x" * (ALLOWANCE - 2 - AGENT_FRAME)),
                    0.3)
    assert (s.state, replaced(s), s.frames_to_send()) == (State.IDLE, False, [])
    s.receive_agent(aw.Out(id="c1", name="stdout", text="x"), 0.4)
    assert s.state is State.RECOVERING and replaced(s)
    s.sandbox_replaced(0.5)
    execute(s, "c2", now=0.6)
    s.receive_agent(aw.Out(id="c2", name="stdout", text="ok"), 0.7)
    s.receive_agent(done("c2"), 0.8)
    assert only(s.frames_to_send(), fr.Stream)[-1] == fr.Stream(id="c2", name="stdout",
                                                                 text="ok")


@pytest.mark.parametrize(("forged", "cost"), [
    (done("zz"), AGENT_FRAME),
    (aw.AgentReady(language="python"), AGENT_FRAME),
    (aw.Restarted(), AGENT_FRAME),
    (aw.Out(id="c1", name="stdout", text=""), 1),
    (aw.AgentDisplay(id="zz", kind="display_data", data={}), AGENT_FRAME),
], ids=["done-for-no-cell", "greeting", "unasked-restarted", "empty-stream", "empty-display"])
def test_no_frame_is_free_and_a_flood_of_forged_ones_replaces_the_sandbox(
        forged: aw.FromAgent, cost: int) -> None:
    """Under gVisor a cell can write to its agent's channel itself (the agent's /proc entries
    are open to it there). A done for no cell, a greeting, a restart's answer nobody asked
    for and an empty stream were dropped uncounted: a flood of them took a service core for
    as long as the session lived (a review). Each counts against what the agent may send."""
    s = new()
    execute(s)
    for _ in range(ALLOWANCE // cost):
        s.receive_agent(forged, 0.1)
    assert s.state is State.RUNNING and not replaced(s)
    s.receive_agent(forged, 0.2)
    [result] = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result) and result.status == "killed", result
    assert "more output than its cells may produce" in (result.error or ""), result
    assert s.state is State.RECOVERING and replaced(s)


def test_a_running_cells_flood_past_the_allowance_ends_it_as_killed() -> None:
    s = new()
    execute(s)
    for _ in range(ALLOWANCE // 1000):
        s.receive_agent(aw.Out(id="c1", name="stdout", text="x" * 1000), 0.1)
    assert s.state is State.RUNNING
    s.receive_agent(aw.AgentDisplay(id="c1", kind="display_data",
                                    data={"text/plain": "y" * 1000}), 0.2)
    [result] = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result)
    assert result.status == "killed" and "more output than its cells may produce" in (
        result.error or ""), result
    assert s.state is State.RECOVERING and replaced(s)


def test_the_allowance_starts_again_with_each_cell() -> None:
    s = new()
    for n in range(3):
        execute(s, f"c{n}", now=float(n))
        # The cell's budget, the rest of the cell before it, and the slack (less what the
        # display frame and the done cost themselves): all allowed.
        s.receive_agent(aw.Out(id=f"c{n - 1}", name="stdout", text="o" * 100), n + 0.1)
        s.receive_agent(aw.Out(id=f"c{n}", name="stdout", text="n" * 100), n + 0.2)
        s.receive_agent(aw.AgentDisplay(id=f"c{n}", kind="display_data", data={
            "t": "d" * (OUTPUT_ALLOWANCE_SLACK - 2 - 2 * AGENT_FRAME)}), n + 0.3)
        s.receive_agent(done(f"c{n}"), n + 0.4)
        assert s.state is State.IDLE and not replaced(s)


def test_a_display_counts_as_the_agent_counts_it() -> None:
    assert agent_display_chars({"text/plain": "42", "image/png": "é" * 3}) == (
        AGENT_FRAME + 10 + 2 + 1 + 9 + 3 + 1)
    assert agent_display_chars({}) == AGENT_FRAME == 64


def test_timeout_escalates_interrupt_restart_replace() -> None:
    s = new()
    execute(s, timeout=5)
    s.actions_to_run()
    assert s.next_deadline() == 5.0
    s.advance(5.0)
    assert sent_to_agent(s) == [aw.Signal()]
    assert s.phase is Phase.INTERRUPTING and s.next_deadline() == 6.0
    s.advance(6.0)
    assert sent_to_agent(s) == [aw.RestartWorker()]
    assert s.next_deadline() == 8.0
    s.advance(8.0)
    actions = s.actions_to_run()
    assert any(isinstance(a, ReplaceSandbox) for a in actions)
    [result] = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result)
    assert result.status == "timeout" and result.state_lost
    assert "execution time limit of 5 s exceeded" in (result.error or "")
    assert s.state is State.RECOVERING
    execute(s, "next", now=8.5)
    assert sent_to_agent(s) == []  # waits for the new sandbox
    s.sandbox_replaced(9.0)
    frames = s.frames_to_send()
    assert isinstance(frames[-1], fr.Restarted)
    assert [f.id for f in sent_to_agent(s) if isinstance(f, aw.Exec)] == ["next"]


def test_timeout_that_stops_on_interrupt_keeps_state() -> None:
    s = new()
    execute(s, timeout=5)
    s.advance(5.0)
    s.actions_to_run()
    s.receive_agent(done(status="interrupted", exit_code=None), 5.1)
    [result] = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result)
    assert result.status == "timeout" and not result.state_lost
    assert s.state is State.IDLE


def test_restart_after_timeout_reports_lost_state_then_runs_next() -> None:
    s = new()
    execute(s, "a", timeout=1)
    execute(s, "b")
    s.advance(1.0)
    s.advance(2.0)
    assert aw.RestartWorker() in sent_to_agent(s)
    s.receive_agent(done("a", status="interrupted", restarted=True), 2.5)
    assert s.state is State.RECOVERING
    assert sent_to_agent(s) == []
    s.receive_agent(aw.Restarted(), 2.6)
    frames = s.frames_to_send()
    result = next(f for f in frames if isinstance(f, fr.Result))
    assert result.status == "timeout" and result.state_lost
    assert isinstance(frames[-1], fr.Restarted)
    assert [f.id for f in sent_to_agent(s) if isinstance(f, aw.Exec)] == ["b"]


def test_client_interrupt() -> None:
    s = new()
    execute(s)
    s.actions_to_run()
    s.receive_client('{"type": "interrupt"}', 1.0)
    assert sent_to_agent(s) == [aw.Signal()]
    s.receive_agent(done(status="interrupted", exit_code=None,
                         error="KeyboardInterrupt"), 1.1)
    [result] = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result) and result.status == "interrupted"


def test_interrupt_when_idle_does_nothing() -> None:
    s = new()
    s.receive_client('{"type": "interrupt"}', 1.0)
    assert s.actions_to_run() == [] and s.frames_to_send() == []


def test_oom_reported_by_agent_is_killed_with_the_limit_named() -> None:
    s = new()
    execute(s)
    s.receive_agent(done(status="error", exit_code=-9, oom_killed=True, restarted=True), 1)
    [result] = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result)
    assert result.status == "killed"
    assert "memory limit of 512 MB exceeded" in (result.error or "")


def test_a_cell_that_succeeds_beside_an_oom_kill_is_not_made_killed() -> None:
    """A process an earlier cell left running was killed at the memory limit during a cell
    that printed "ok" and exited 0: the cell was reported killed, "memory limit exceeded"
    (a review). It stays a success, with the kill said on stderr."""
    s = new()
    execute(s)
    s.receive_agent(done(oom_killed=True), 1)
    frames = s.frames_to_send()
    [result] = only(frames, fr.Result)
    assert isinstance(result, fr.Result)
    assert (result.status, result.exit_code, result.error) == ("success", 0, None)
    [note] = only(frames, fr.Stream)
    assert isinstance(note, fr.Stream) and note.name == "stderr"
    assert note.text == "[a process was killed: memory limit of 512 MB exceeded]\n"


def test_sandbox_lost_mid_cell() -> None:
    s = new()
    execute(s)
    s.sandbox_failed("sandbox exited", 1.0, oom_killed=True)
    [result] = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result)
    assert result.status == "killed" and result.state_lost
    # (as under gVisor: not the interpreter alone, the sandbox and its files are gone)
    assert result.error == ("memory limit of 512 MB exceeded; the sandbox was replaced;"
                            " state and files are lost")
    assert any(isinstance(a, ReplaceSandbox) for a in s.actions_to_run())


def lose_sandbox(s: Session, now: float, cell_id: str) -> list[ReplaceSandbox]:
    """Run a cell whose sandbox dies; return the replacements asked for."""
    execute(s, cell_id, now=now)
    s.sandbox_failed("the agent exited", now)
    return [a for a in s.actions_to_run() if isinstance(a, ReplaceSandbox)]


def test_a_session_that_keeps_losing_its_sandbox_is_closed() -> None:
    """Each replacement makes the engine create and start a container: a cell that kills
    its sandbox (``os.kill(1, 15)``) in a loop had 32 replaced in 3 s (a review). Past
    ``max_sandbox_replacements`` within a minute the session closes, and says why."""
    s = new()  # max_sandbox_replacements=3
    for i in range(3):
        assert lose_sandbox(s, float(i), f"c{i}") == [ReplaceSandbox("the agent exited")]
        s.sandbox_replaced(i + 0.5)
        s.frames_to_send()
    execute(s, "c3", now=3.0)
    execute(s, "queued", now=3.0)
    s.sandbox_failed("the agent exited", 3.0)
    frames = s.frames_to_send()
    [result] = only(frames, fr.Result)
    assert isinstance(result, fr.Result) and result.id == "c3" and result.status == "killed"
    [cancelled] = only(frames, fr.Error)
    assert isinstance(cancelled, fr.Error) and cancelled.id == "queued"
    assert frames[-1] == fr.Closed(
        reason="sandbox_lost",
        message="the sandbox was lost 4 times within 60 s (the last time: the agent"
                " exited); a session may have 3 replaced in that time")
    actions = s.actions_to_run()
    assert not [a for a in actions if isinstance(a, ReplaceSandbox)]
    assert actions[-1] == CloseSession("sandbox_lost")
    assert s.state is State.CLOSED


def test_sandbox_replacements_are_counted_over_the_last_minute_only() -> None:
    s = new()
    for i, now in enumerate((0.0, 1.0, 2.0, 60.0, 61.0, 62.0)):
        # at 60 s the loss at 0 s is a minute old: three within the window, never four
        assert lose_sandbox(s, now, f"c{i}"), now
        s.sandbox_replaced(now + 0.5)
    assert not lose_sandbox(s, 62.5, "c6")  # the fourth within a minute
    assert s.close_reason == "sandbox_lost"


def test_no_cap_on_sandbox_replacements_with_zero() -> None:
    s = new(dataclasses.replace(LIMITS, max_sandbox_replacements=0))
    for i in range(50):
        assert lose_sandbox(s, i * 0.01, f"c{i}")
        s.sandbox_replaced(i * 0.01 + 0.005)
    assert s.state is State.IDLE


def test_idle_timeout_closes_with_reason() -> None:
    s = new()
    assert s.next_deadline() == 60.0
    s.advance(59.9)
    assert s.state is State.IDLE
    s.advance(60.0)
    closed = s.frames_to_send()[-1]
    assert closed == fr.Closed(reason="idle_timeout", message="no activity for 60 s")
    assert s.actions_to_run() == [CloseSession("idle_timeout")]
    assert s.next_deadline() is None


def test_idle_timeout_waits_for_a_running_cell() -> None:
    s = new()
    execute(s, timeout=30, now=50.0)
    s.advance(110.0)
    assert s.state is State.RUNNING


def test_max_lifetime_kills_running_cell_then_closes() -> None:
    s = new()
    execute(s, timeout=30, now=590.0)
    s.advance(600.0)
    frames = s.frames_to_send()
    result, closed = frames[-2], frames[-1]
    assert isinstance(result, fr.Result) and result.status == "killed"
    assert isinstance(closed, fr.Closed) and closed.reason == "max_lifetime"


def test_detached_session_expires_after_grace_unless_resumed() -> None:
    s = new()
    s.client_detached(10.0)
    assert s.next_deadline() == 15.0
    s.client_attached(12.0)
    s.advance(15.0)
    assert s.state is State.IDLE
    s.client_detached(20.0)
    s.advance(25.0)
    assert s.close_reason == "resume_expired"


def test_close_cancels_queued_cells() -> None:
    s = new()
    execute(s, "a")
    execute(s, "b")
    s.close("server_shutdown", 1.0, "stopping")
    frames = s.frames_to_send()
    assert [type(f).__name__ for f in frames] == ["Result", "Error", "Closed"]
    s.receive_client('{"type": "interrupt"}', 2.0)
    execute(s, "c")
    assert s.frames_to_send() == []


def test_an_interpreter_lost_between_cells_is_told_at_once() -> None:
    """The agent's ``lost`` (the interpreter ended between cells) becomes a ``restarted``
    frame at once, answering no restart; the session goes on, and cells run."""
    s = new()
    s.receive_agent(aw.Lost(error="interpreter exited with code 5"), 1.0)
    [frame] = s.frames_to_send()
    assert frame == fr.Restarted(
        reason="interpreter_restarted",
        message="interpreter exited with code 5 between cells (work an earlier cell left"
                " running ended it, or it was killed); state is lost", ids=[])
    assert s.state is State.IDLE
    execute(s, "a", now=1.1)
    assert [f.id for f in sent_to_agent(s) if isinstance(f, aw.Exec)] == ["a"]
    # While a cell runs (its exec waits in the agent for the fresh interpreter): told too.
    s.receive_agent(aw.Lost(error=""), 1.2)
    [frame] = s.frames_to_send()
    assert isinstance(frame, fr.Restarted) and frame.message.startswith(
        "the interpreter ended between cells")
    assert s.state is State.RUNNING


def test_a_lost_interpreter_during_a_restart_is_the_restarts_news() -> None:
    s = new()
    s.receive_client('{"type": "restart", "id": "r1"}', 1.0)
    s.receive_agent(aw.Lost(error="interpreter exited with code 5"), 1.1)
    assert s.frames_to_send() == []
    s.receive_agent(aw.Restarted(), 1.2)
    [frame] = s.frames_to_send()
    assert isinstance(frame, fr.Restarted) and frame.ids == ["r1"]


def test_client_restart_when_idle() -> None:
    s = new()
    s.receive_client('{"type": "restart"}', 1.0)
    assert sent_to_agent(s) == [aw.RestartWorker()]
    assert s.state is State.RECOVERING
    execute(s, "a", now=1.1)
    assert sent_to_agent(s) == []
    s.receive_agent(aw.Restarted(), 1.2)
    assert [f.id for f in sent_to_agent(s) if isinstance(f, aw.Exec)] == ["a"]


@pytest.mark.parametrize(("agent_error", "error"), [
    ("the interpreter was restarted", "the interpreter was restarted; state is lost"),
    (None, "the interpreter was restarted; state is lost"),
    ("MemoryError", "MemoryError; the interpreter was restarted; state is lost"),
    # The agent's words for a worker that exited (a review: said twice, in two ways).
    ("interpreter exited with code 3; state was reset",
     "interpreter exited with code 3; the interpreter was restarted; state is lost"),
])
def test_a_restart_is_said_once_in_the_error(agent_error: str | None, error: str) -> None:
    s = new()
    execute(s)
    s.receive_agent(done(status="interrupted", exit_code=137, error=agent_error,
                         restarted=True), 0.5)
    (result,) = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result)
    assert result.error == error
    assert result.state_lost is True


def test_restarts_while_one_is_in_progress_are_part_of_it() -> None:
    """protocol/spec.md: one ``restarted`` frame answers every restart sent before it."""
    s = new()
    s.receive_client('{"type": "restart"}', 1.0)
    s.receive_client('{"type": "restart"}', 1.1)
    s.receive_client('{"type": "restart"}', 1.2)
    assert sent_to_agent(s) == [aw.RestartWorker()]  # one restart of the worker
    s.receive_agent(aw.Restarted(), 1.3)
    assert [type(f).__name__ for f in s.frames_to_send()] == ["Restarted"]
    s.receive_client('{"type": "restart"}', 2.0)  # after it: a restart of its own
    assert sent_to_agent(s) == [aw.RestartWorker()]


def test_restarted_names_the_restarts_it_answers() -> None:
    """A restart may carry an id: the ``restarted`` frame that answers it names it, with
    every other one that joined (without an id: not named); the next restart's answer names
    only the next. (Matched in order, a client took one restart's answer for a later one's.)"""
    s = new()
    s.receive_client('{"type": "restart", "id": "r1"}', 1.0)
    s.receive_client('{"type": "restart"}', 1.1)
    s.receive_client('{"type": "restart", "id": "r2"}', 1.2)
    s.receive_agent(aw.Restarted(), 1.3)
    assert s.frames_to_send() == [fr.Restarted(
        reason="interpreter_restarted", message="the interpreter was restarted; state is lost",
        ids=["r1", "r2"])]
    s.receive_client('{"type": "restart", "id": "r3"}', 2.0)
    s.receive_agent(aw.Restarted(), 2.1)
    [answer] = s.frames_to_send()
    assert isinstance(answer, fr.Restarted) and answer.ids == ["r3"]
    # a sandbox replaced while a restart waits answers it too; one that nobody asked for
    # names none
    s.receive_client('{"type": "restart", "id": "r4"}', 3.0)
    s.sandbox_failed("gone", 3.1)
    s.sandbox_replaced(3.2)
    [answer] = only(s.frames_to_send(), fr.Restarted)
    assert isinstance(answer, fr.Restarted) and answer.reason == "sandbox_replaced"
    assert answer.ids == ["r4"]
    s.sandbox_failed("gone", 4.0)
    s.sandbox_replaced(4.1)
    [answer] = only(s.frames_to_send(), fr.Restarted)
    assert isinstance(answer, fr.Restarted) and answer.ids == []


def test_a_refused_restart_is_named_and_ids_are_bounded() -> None:
    session = admitting(False, True)
    session.receive_client('{"type": "restart", "id": "r1"}', 1.0)
    [error] = session.frames_to_send()
    assert isinstance(error, fr.Error) and (error.code, error.id) == ("rate_limited", "r1")
    session.receive_client('{"type": "restart", "id": "r2"}', 1.1)
    for n in range(200):  # each joins the one under way, free; at most 64 are named
        session.receive_client(f'{{"type": "restart", "id": "j{n}"}}', 1.2)
    refused = only(session.frames_to_send(), fr.Error)
    assert len(refused) == 200 - 63 and all(
        isinstance(e, fr.Error) and e.code == "queue_full" for e in refused)
    session.receive_agent(aw.Restarted(), 2.0)
    [answer] = session.frames_to_send()
    assert isinstance(answer, fr.Restarted)
    assert answer.ids == ["r2"] + [f"j{n}" for n in range(63)]
    assert sent_to_agent(session) == [aw.RestartWorker()]  # r2's, once
    for bad in ('""', "7", '"' + "x" * 129 + '"'):
        session.receive_client(f'{{"type": "restart", "id": {bad}}}', 3.0)
        [error] = session.frames_to_send()
        assert isinstance(error, fr.Error) and error.code == "bad_request", bad
    assert not sent_to_agent(session)


def test_restart_that_never_completes_replaces_the_sandbox() -> None:
    s = new()
    s.receive_client('{"type": "restart"}', 1.0)
    s.actions_to_run()
    s.advance(3.0)
    assert any(isinstance(a, ReplaceSandbox) for a in s.actions_to_run())


def test_a_restart_while_a_cell_restarts_is_part_of_it() -> None:
    """A client's restart sent while a cell's restart is under way neither asks the agent
    again nor moves the restart's deadline (it would keep the cell past its timeout)."""
    s = new()
    execute(s, timeout=5)
    s.advance(5.0)
    s.advance(6.0)
    assert sent_to_agent(s) == [aw.Exec(id="c1", code="print(1)", max_output_bytes=100),
                                aw.Signal(), aw.RestartWorker()]
    for at in (6.5, 7.0, 7.9):
        s.receive_client('{"type": "restart"}', at)
    assert sent_to_agent(s) == []
    assert s.next_deadline() == 8.0
    s.advance(8.0)
    assert any(isinstance(a, ReplaceSandbox) for a in s.actions_to_run())


@pytest.mark.parametrize("how", ["timeout", "client restart"])
def test_restarted_before_the_running_cells_done_replaces_the_sandbox(how: str) -> None:
    """The agent ends a running cell (its ``done``) before it answers a restart. An agent
    that answers first breaks the protocol; taking its word left the cell running with no
    deadline at all (and the session's loop spinning on a passed idle timer)."""
    s = new()
    execute(s, timeout=5)
    if how == "timeout":
        s.advance(5.0)
        s.advance(6.0)
    else:
        s.receive_client('{"type": "restart"}', 6.0)
    s.frames_to_send()
    s.actions_to_run()
    s.receive_agent(aw.Restarted(), 6.1)
    [result] = only(s.frames_to_send(), fr.Result)
    assert isinstance(result, fr.Result)
    assert result.status == ("timeout" if how == "timeout" else "interrupted")
    assert result.state_lost
    assert any(isinstance(a, ReplaceSandbox) for a in s.actions_to_run())
    assert s.state is State.RECOVERING and s.running is None


def test_the_idle_timer_is_no_deadline_while_a_cell_runs() -> None:
    """advance() leaves a busy session open at its idle time, so next_deadline() must not
    name that time: the driver would wake at it again and again (a busy loop for the rest of
    any cell longer than IDLE_TIMEOUT)."""
    s = new(dataclasses.replace(LIMITS, idle_timeout=10.0))
    execute(s, timeout=30, now=0.0)
    assert s.next_deadline() == 30.0
    s.advance(11.0)
    assert s.next_deadline() == 30.0
    s.receive_agent(done(), 20.0)
    assert s.next_deadline() == 30.0  # idle again: its timer counts from the cell's end
    s.advance(30.0)
    assert s.close_reason == "idle_timeout"


def test_displays_use_the_output_budget_in_bytes_with_their_types_and_frame() -> None:
    """A display costs the UTF-8 bytes of its MIME types and contents, one per entry, and
    DISPLAY_FRAME_BYTES: empty displays, or long types with empty contents, used none and
    could flood the client; four-byte characters counted one each."""
    s = new(dataclasses.replace(LIMITS, max_output_bytes=1000))
    execute(s)
    for i in range(100):
        s.receive_agent(aw.AgentDisplay(id="c1", kind="display_data", data={}), 0.1 + i / 1000)
    frames = s.frames_to_send()
    displays = only(frames, fr.Display)
    assert len(displays) == 1000 // DISPLAY_FRAME_BYTES
    assert isinstance(frames[-1], fr.Stream)
    assert frames[-1].text == TRUNCATION_MARKER.format(limit=1000)
    assert display_size({"text/plain": "\U0001f600" * 10}) == DISPLAY_FRAME_BYTES + 10 + 40 + 1
    s2 = new(dataclasses.replace(LIMITS, max_output_bytes=1000))
    execute(s2)
    s2.receive_agent(aw.AgentDisplay(id="c1", kind="display_data",
                                     data={"text/plain": "\U0001f600" * 300}), 0.1)
    assert not only(s2.frames_to_send(), fr.Display)  # 1200 bytes: over the budget


def test_agent_side_truncation_still_shows_the_marker() -> None:
    s = new()
    execute(s)
    s.receive_agent(aw.Out(id="c1", name="stdout", text="a" * 100), 0.1)
    s.receive_agent(done(truncated=True), 0.2)
    frames = s.frames_to_send()
    assert frames[1] == fr.Stream(id="c1", name="stdout",
                                  text=TRUNCATION_MARKER.format(limit=100))
    assert isinstance(frames[2], fr.Result)
    assert frames[2].truncated


def test_validate_cell_is_what_submit_uses() -> None:
    assert validate_cell(LIMITS, "x", None) == LIMITS.default_execution_time
    assert validate_cell(LIMITS, "x", 2.5) == 2.5
    too_long = LIMITS.max_execution_time + 1
    with pytest.raises(BadRequest) as direct:
        validate_cell(LIMITS, "x", too_long)
    assert f"maximum of {LIMITS.max_execution_time:g} s" in direct.value.message
    session = new()
    session.receive_frame(fr.Execute(id="c1", code="x", timeout=too_long), now=1.0)
    (error,) = session.frames_to_send()
    assert isinstance(error, fr.Error) and error.message == direct.value.message


def admitting(*answers: bool) -> Session:
    """A session whose ``admit_cell`` admits or refuses (a rate limit) in this order."""
    allowed = iter(answers)

    def admit() -> None:
        if not next(allowed):
            raise RateLimited("slow down", retry_after=1.0)

    session = new()
    session.admit_cell = admit
    return session


def test_admit_cell_can_refuse_a_cell_and_the_session_goes_on() -> None:
    """A cell admit_cell refuses gets its error and is never queued, sent or run, not even
    after the running cell ends (a review); the session goes on with the cell it admitted."""
    session = admitting(True, False, True)
    session.receive_frame(fr.Execute(id="a", code="1"), now=1.0)
    session.receive_frame(fr.Execute(id="b", code="2"), now=1.0)
    frames = session.frames_to_send()
    assert [(f.code, f.id) for f in frames if isinstance(f, fr.Error)] == [
        ("rate_limited", "b")]
    assert session.running is not None and session.running.id == "a"
    # The refused cell was neither queued nor sent, and does not run after "a" (a review):
    assert not session.queue
    assert [f.id for f in sent_to_agent(session) if isinstance(f, aw.Exec)] == ["a"]
    session.receive_agent(done("a"), 2.0)
    assert not [f for f in sent_to_agent(session) if isinstance(f, aw.Exec)]
    assert session.state is State.IDLE and session.running is None and not session.queue
    frames += session.frames_to_send()
    assert [f.id for f in frames if isinstance(f, fr.Result)] == ["a"]


def test_admit_cell_can_refuse_a_restart_and_nothing_restarts() -> None:
    """Restarts took no token: a client restarted 47 interpreters a second past its rate
    limit (a review). A restart costs what a cell does; refused, it gets an error without
    a cell id, and the interpreter and the running cell go on."""
    session = admitting(True, True, False)
    session.receive_frame(fr.Execute(id="a", code="1"), now=1.0)
    session.receive_agent(done("a"), 2.0)
    sent_to_agent(session)
    session.receive_frame(fr.Restart(), now=3.0)  # admitted
    assert any(isinstance(f, aw.RestartWorker) for f in sent_to_agent(session))
    session.receive_agent(aw.Restarted(), 4.0)
    session.receive_frame(fr.Restart(), now=5.0)  # refused
    assert not any(isinstance(f, aw.RestartWorker) for f in sent_to_agent(session))
    frames = session.frames_to_send()
    assert [(f.code, f.id) for f in frames if isinstance(f, fr.Error)] == [
        ("rate_limited", None)]
    assert sum(isinstance(f, fr.Restarted) for f in frames) == 1
    assert session.state is State.IDLE


def test_a_restart_under_way_is_joined_without_a_token() -> None:
    """Restarts sent while one was under way each took a token though they start nothing:
    30 in one burst spent 18 tokens on one restart and got 12 refusals saying nothing
    restarts, while one did (a review)."""
    session = admitting(True, False)
    session.receive_frame(fr.Restart(), now=1.0)  # takes the one token
    session.receive_frame(fr.Restart(), now=1.1)  # joins: admit is not asked (it would refuse)
    session.receive_frame(fr.Restart(), now=1.2)
    assert sum(isinstance(f, aw.RestartWorker) for f in sent_to_agent(session)) == 1
    session.receive_agent(aw.Restarted(), 2.0)
    frames = session.frames_to_send()
    assert not [f for f in frames if isinstance(f, fr.Error)]
    assert sum(isinstance(f, fr.Restarted) for f in frames) == 1


# --- invariants over random event sequences ------------------------------------------------

EVENT_KINDS = ("exec_short", "exec_long", "interrupt", "restart", "out", "display", "done",
               "done_restarted", "restarted", "lost", "stray_done", "flood", "sandbox_failed",
               "sandbox_replaced", "detach", "attach")


@hypothesis.settings(max_examples=2000, deadline=None)
@hypothesis.given(st.lists(st.tuples(st.sampled_from(EVENT_KINDS),
                                     st.floats(min_value=0.0, max_value=3.0)), max_size=40))
def test_every_deadline_is_acted_on_and_every_cell_ends_once(
        events: list[tuple[str, float]]) -> None:
    """Whatever the client and a (possibly lying) agent do, in any order:

    * advancing to ``next_deadline()`` moves it on (a deadline that ``advance`` does not act
      on makes the driver's loop spin);
    * a running cell always has a deadline within its timeout, the interrupt grace and the
      restart timeout (nothing the agent sends can keep it past that);
    * every cell the client sent ends exactly once: one ``result`` or one ``error`` (once the
      session closed it is told so, and nothing it sends later is taken).
    """
    limits = dataclasses.replace(LIMITS, idle_timeout=4.0, max_lifetime=None)
    s = new(limits)
    now = 0.0
    ids: list[str] = []
    ends: dict[str, int] = {}

    def collect() -> None:
        for frame in s.frames_to_send():
            if isinstance(frame, (fr.Result, fr.Error)) and frame.id is not None:
                ends[frame.id] = ends.get(frame.id, 0) + 1
        s.actions_to_run()

    for kind, step in events:
        now += step
        while (deadline := s.next_deadline()) is not None and deadline <= now:
            s.advance(deadline)
            collect()
            later = s.next_deadline()
            assert later is None or later > deadline, (deadline, later, s.state, s.phase)
        cell = s.running
        match kind:
            case "exec_short" | "exec_long" if s.state is not State.CLOSED:
                ids.append(f"c{len(ids)}")
                execute(s, ids[-1], timeout=1.0 if kind == "exec_short" else 10.0, now=now)
            case "interrupt" | "restart":
                s.receive_client(json.dumps({"type": kind}), now)
            case "out" if cell is not None:
                s.receive_agent(aw.Out(id=cell.id, name="stdout", text="x" * 30), now)
            case "display" if cell is not None:
                s.receive_agent(aw.AgentDisplay(id=cell.id, kind="display_data", data={}), now)
            case "done" | "done_restarted" if cell is not None:
                s.receive_agent(done(cell.id, restarted=kind == "done_restarted"), now)
            case "restarted":
                s.receive_agent(aw.Restarted(), now)
            case "lost":
                s.receive_agent(aw.Lost(error="interpreter exited with code 5"), now)
            case "stray_done":
                s.receive_agent(done("nobody"), now)
            case "flood":  # output past what the agent may send: a protocol breach
                s.receive_agent(aw.Out(id=cell.id if cell else "gone", name="stdout",
                                       text="f" * (ALLOWANCE // 2 + 1)), now)
            case "sandbox_failed":
                s.sandbox_failed("gone", now)
            case "sandbox_replaced":
                s.sandbox_replaced(now)
            case "detach":
                s.client_detached(now)
            case "attach":
                s.client_attached(now)
        collect()
        running = s.running
        if running is not None:
            assert running.deadline is not None
            bound = running.deadline + limits.interrupt_grace + limits.restart_timeout
            deadline = s.next_deadline()
            assert deadline is not None and deadline <= bound, (deadline, bound, s.phase)
    s.close("server_shutdown", now + 1, "stopping")
    collect()
    assert ends == dict.fromkeys(ids, 1)
