"""The agent's kernel-file reader (``ProcFile``, ``_field``) and its output "linger".

In-process and deterministic: an ``Agent`` is constructed but never run (its constructor starts
no worker), and its methods are called directly. Every descriptor a test opens is closed.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

AGENT_DIR = Path(__file__).resolve().parents[2] / "runtime" / "agent"
sys.path.insert(0, str(AGENT_DIR))

import agent  # noqa: E402

BOUND = 5.0
"""Generous bound (seconds) on anything that should be immediate."""


# ----------------------------------------------------------------------------- ProcFile


def test_procfile_rereads_fresh_content_with_pread(tmp_path: Path) -> None:
    path = tmp_path / "counter"
    path.write_bytes(b"first\n")
    pf = agent.ProcFile(str(path))
    try:
        assert pf.fd is not None
        assert pf.read() == b"first\n"
        assert pf.read() == b"first\n", "a second read must start at offset 0 again"
        with path.open("r+b") as f:  # rewrite the same inode in place
            f.truncate(0)
            f.write(b"second, longer\n")
        assert pf.read() == b"second, longer\n"
        assert os.lseek(pf.fd, 0, os.SEEK_CUR) == 0, "pread must not move the file offset"
    finally:
        pf.close()


def test_procfile_reads_proc_self_status_twice() -> None:
    pf = agent.ProcFile("/proc/self/status")
    try:
        first, second = pf.read(), pf.read()
        assert first is not None and second is not None
        assert agent._field(first, b"Pid:") == os.getpid()
        assert agent._field(second, b"Pid:") == os.getpid()
    finally:
        pf.close()


def test_procfile_missing_path_reads_as_none(tmp_path: Path) -> None:
    pf = agent.ProcFile(str(tmp_path / "does-not-exist"))
    assert pf.fd is None
    assert pf.read() is None
    pf.write(b"ignored")  # no error
    pf.close()
    pf.close()


def test_procfile_close_is_idempotent_and_reads_none_after(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    pf = agent.ProcFile(str(path))
    fd = pf.fd
    assert fd is not None
    pf.close()
    assert pf.fd is None
    with pytest.raises(OSError, match="Bad file descriptor") as exc:
        os.fstat(fd)  # really closed
    assert exc.value.errno == errno.EBADF
    pf.close()
    assert pf.read() is None


def test_procfile_is_close_on_exec(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    pf = agent.ProcFile(str(path))
    try:
        assert pf.fd is not None
        assert not os.get_inheritable(pf.fd)
    finally:
        pf.close()


def test_procfile_write_writes(tmp_path: Path) -> None:
    path = tmp_path / "clear_refs"
    path.write_bytes(b"")
    pf = agent.ProcFile(str(path), os.O_WRONLY)
    try:
        pf.write(b"5")
        assert path.read_bytes() == b"5"
        assert pf.read() is None, "a write-only file cannot be read: unknown, not an error"
    finally:
        pf.close()


def test_procfile_read_error_is_none(tmp_path: Path) -> None:
    pf = agent.ProcFile(str(tmp_path))  # a directory opens, but cannot be read
    try:
        assert pf.fd is not None
        assert pf.read() is None
    finally:
        pf.close()


# ----------------------------------------------------------------------------- _field


@pytest.mark.parametrize(
    ("content", "key", "expected"),
    [
        (b"Name:\tpython\nVmHWM:   123 kB\nVmRSS:\t  100 kB\n", b"VmHWM:", 123),
        (b"VmHWM:   123 kB", b"VmHWM:", 123),
        (b"low 0\nhigh 0\nmax 0\noom 3\noom_kill 2\n", b"oom_kill", 2),
        # cgroup v1: ``oom_kill_disable`` must not be mistaken for ``oom_kill``
        (b"oom_kill_disable 0\nunder_oom 0\noom_kill 7\n", b"oom_kill", 7),
        (b"oom_kill_disable 1\nunder_oom 0\n", b"oom_kill", None),
        (b"VmRSS:  100 kB\n", b"VmHWM:", None),
        (b"VmHWM:   abc kB\n", b"VmHWM:", None),
        (b"VmHWM:\n", b"VmHWM:", None),
        (b"", b"VmHWM:", None),
        (None, b"VmHWM:", None),
        (b"xVmHWM: 5 kB\n", b"VmHWM:", None),
    ],
)
def test_field(content: bytes | None, key: bytes, expected: int | None) -> None:
    assert agent._field(content, key) == expected


def test_worker_memory_of_this_process() -> None:
    memory = agent.WorkerMemory(os.getpid())
    try:
        peak = memory.peak_kb()
        assert peak > 0
    finally:
        memory.close()
        memory.close()


def test_worker_memory_of_missing_pid_is_zero() -> None:
    memory = agent.WorkerMemory(2**22 + 12345)  # above pid_max's ceiling: never a process
    try:
        assert memory.peak_kb() == 0
        memory.reset_peak()  # no error
    finally:
        memory.close()


def test_open_oom_counter_is_none_or_readable() -> None:
    counter = agent.open_oom_counter()
    if counter is None:
        return  # no memory cgroup file here: unknown is fine
    try:
        assert agent._field(counter.read(), b"oom_kill") is not None
    finally:
        counter.close()


# ----------------------------------------------------------------------------- linger


@pytest.fixture
def ag() -> Iterator[agent.Agent]:
    """An agent that is constructed but never run; its descriptors are closed afterwards."""
    a = agent.Agent("python", container=False)
    try:
        assert a.worker is None, "the constructor must not start a worker"
        assert a.children == {}
        assert a.linger_until is None
        yield a
    finally:
        a.sel.close()
        os.close(a.wake_r)
        os.close(a.wake_w)
        if a.oom_counter is not None:
            a.oom_counter.close()


def stdout_stream() -> agent.Stream:
    return agent.Stream("stdout", -1)  # _forward never touches the descriptor


def running_cell(a: agent.Agent, max_output: int = 1 << 20) -> agent.Cell:
    cell = agent.Cell("c1", max_output, time.monotonic())
    a.cell = cell
    return cell


def test_output_of_a_running_cell_lingers(ag: agent.Agent) -> None:
    running_cell(ag)
    before = time.monotonic()
    ag._forward(stdout_stream(), b"hi\n")
    assert ag.outbuf, "the output is queued"
    assert ag.linger_until is not None
    assert before < ag.linger_until <= time.monotonic() + agent.LINGER
    left = ag._linger_left()
    assert left is not None
    assert 0 < left <= agent.LINGER
    frames = agent.FrameDecoder().feed(bytes(ag.outbuf))
    assert frames == [{"t": "out", "id": "c1", "name": "stdout", "text": "hi\n"}]


def test_more_output_does_not_extend_the_linger(ag: agent.Agent) -> None:
    running_cell(ag)
    stream = stdout_stream()
    ag._forward(stream, b"one\n")
    until = ag.linger_until
    assert until is not None
    ag._forward(stream, b"two\n")
    assert ag.linger_until == until, "a stream of output must not be held indefinitely"


def test_done_frame_ends_the_linger(ag: agent.Agent) -> None:
    running_cell(ag)
    ag._forward(stdout_stream(), b"hi\n")
    assert ag._linger_left() is not None
    ag._send(ag._done_frame("c1", "success", 0, None, 1.0, 0))
    assert ag.linger_until is None
    assert ag._linger_left() is None
    tags = [f["t"] for f in agent.FrameDecoder().feed(bytes(ag.outbuf))]
    assert tags == ["out", "done"]


def test_finish_cell_ends_the_linger(ag: agent.Agent) -> None:
    cell = running_cell(ag)
    ag._forward(stdout_stream(), b"hi\n")
    assert ag.linger_until is not None
    ag._finish_cell("success", 0, None)
    assert ag.linger_until is None
    assert ag._linger_left() is None
    assert ag.cell is None and ag.last_cell is cell
    frames = agent.FrameDecoder().feed(bytes(ag.outbuf))
    assert [f["t"] for f in frames] == ["out", "done"]
    assert frames[1]["status"] == "success"


@pytest.mark.parametrize(
    "frame",
    [
        {"t": "display", "id": "c1", "kind": "display_data", "data": {"text/plain": "x"}},
        {"t": "ready", "language": "python", "version": 1},
        {"t": "restarted"},
    ],
)
def test_any_frame_but_out_ends_the_linger(ag: agent.Agent, frame: dict[str, object]) -> None:
    running_cell(ag)
    ag._forward(stdout_stream(), b"hi\n")
    assert ag.linger_until is not None
    ag._send(dict(frame))
    assert ag.linger_until is None


def test_out_frame_keeps_the_linger(ag: agent.Agent) -> None:
    running_cell(ag)
    ag._forward(stdout_stream(), b"hi\n")
    until = ag.linger_until
    ag._send({"t": "out", "id": "c1", "name": "stderr", "text": "more"})
    assert ag.linger_until == until is not None


def test_output_beyond_linger_bytes_is_not_held(ag: agent.Agent) -> None:
    running_cell(ag)
    ag._forward(stdout_stream(), b"x" * agent.LINGER_BYTES)
    assert len(ag.outbuf) >= agent.LINGER_BYTES
    assert ag._linger_left() is None
    assert ag.linger_until is None


def test_output_growing_past_linger_bytes_is_not_held(ag: agent.Agent) -> None:
    running_cell(ag)
    stream = stdout_stream()
    ag._forward(stream, b"small\n")
    assert ag._linger_left() is not None
    half = agent.LINGER_BYTES // 2
    ag._forward(stream, b"y" * half)
    ag._forward(stream, b"z" * half)
    assert len(ag.outbuf) >= agent.LINGER_BYTES
    assert ag._linger_left() is None


def test_output_into_a_non_empty_outbuf_does_not_start_a_linger(ag: agent.Agent) -> None:
    ag._send({"t": "ready", "language": "python", "version": 1})
    assert ag.outbuf
    running_cell(ag)
    ag._forward(stdout_stream(), b"hi\n")
    assert ag.linger_until is None
    assert ag._linger_left() is None


def test_late_output_of_the_last_cell_is_not_held(ag: agent.Agent) -> None:
    ag.last_cell = agent.Cell("c0", 1 << 20, time.monotonic())
    assert ag.cell is None
    ag._forward(stdout_stream(), b"late\n")
    frames = agent.FrameDecoder().feed(bytes(ag.outbuf))
    assert frames == [{"t": "out", "id": "c0", "name": "stdout", "text": "late\n"}]
    assert ag.linger_until is None
    assert ag._linger_left() is None


def test_output_before_any_cell_is_dropped_not_held(ag: agent.Agent) -> None:
    ag._forward(stdout_stream(), b"stray\n")
    assert not ag.outbuf
    assert ag.linger_until is None


def test_truncated_to_nothing_is_not_held(ag: agent.Agent) -> None:
    cell = running_cell(ag, max_output=0)
    ag._forward(stdout_stream(), b"over the limit\n")
    assert not ag.outbuf
    assert cell.truncated
    assert ag.linger_until is None


def test_linger_expires(ag: agent.Agent) -> None:
    running_cell(ag)
    ag._forward(stdout_stream(), b"hi\n")
    until = ag.linger_until
    assert until is not None
    deadline = time.monotonic() + BOUND
    while time.monotonic() <= until:  # a few hundred microseconds at most
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert ag._linger_left() is None
    assert ag.linger_until is None


# ----------------------------------------------------------------------------- _wait


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


def test_wait_short_timeout_returns_a_readable_pipe(
    ag: agent.Agent, pipe: tuple[int, int]
) -> None:
    r, w = pipe
    calls: list[int] = []
    ag._want(r, agent.READ, calls.append)
    assert ag.callbacks[r] == calls.append
    os.write(w, b"data")
    assert ag._wait(0.0002) == [r]
    ag._want(r, 0)


def test_wait_short_timeout_on_an_empty_pipe_returns_nothing(
    ag: agent.Agent, pipe: tuple[int, int]
) -> None:
    r, _w = pipe
    ag._want(r, agent.READ, lambda _fd: None)
    start = time.monotonic()
    assert ag._wait(0.0002) == []
    assert time.monotonic() - start < BOUND
    ag._want(r, 0)


def test_wait_short_timeout_reports_writable_and_readable_once(
    ag: agent.Agent, pipe: tuple[int, int]
) -> None:
    r, w = pipe
    ag._want(r, agent.READ, lambda _fd: None)
    ag._want(w, agent.WRITE, lambda _fd: None)
    assert ag._wait(0.0002) == [w]  # an empty pipe: writable, not readable
    os.write(w, b"x")
    assert sorted(ag._wait(0.0002)) == sorted([r, w])
    ag._want(r, 0)
    ag._want(w, 0)


def test_wait_long_timeout_uses_the_selector(ag: agent.Agent, pipe: tuple[int, int]) -> None:
    r, w = pipe
    ag._want(r, agent.READ, lambda _fd: None)
    os.write(w, b"x")
    assert ag._wait(0.5) == [r]  # ready: returns at once, not after 0.5 s
    os.read(r, 1)
    start = time.monotonic()
    assert ag._wait(0.002) == []
    assert time.monotonic() - start < BOUND
    ag._want(r, 0)


def test_wait_ignores_descriptors_without_interest(
    ag: agent.Agent, pipe: tuple[int, int]
) -> None:
    r, w = pipe
    os.write(w, b"x")
    ag._want(r, agent.READ, lambda _fd: None)
    ag._want(r, 0)  # interest withdrawn, e.g. backpressure
    assert r not in ag.interest
    assert ag._wait(0.0002) == []
    assert ag._wait(0.002) == []


# ----------------------------------------------------------------------------- oversleeping


def slow_select(sleep: float, ready: list[int] | None = None) -> Any:
    """A ``select.select`` that sleeps ``sleep`` seconds (as gVisor's timers do for 0.3 ms)."""

    def fake(r: list[int], w: list[int], x: list[int], timeout: float) -> Any:
        time.sleep(sleep)
        return (ready or [], [], [])

    return fake


def test_timers_that_oversleep_turn_lingering_off(
    ag: agent.Agent, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, _w = pipe
    ag._want(r, agent.READ, lambda _fd: None)
    monkeypatch.setattr(select, "select", slow_select(2 * agent.LINGER_OVERSLEEP))
    for _ in range(agent.LINGER_OVERSLEEPS - 1):
        assert ag._wait(agent.LINGER) == []
    assert ag.lingering  # not yet: one slow wait may be the machine, not the timers
    assert ag._wait(agent.LINGER) == []
    assert not ag.lingering
    running_cell(ag)
    ag._forward(stdout_stream(), b"hi\n")
    assert ag.linger_until is None  # output now leaves at once
    assert ag._linger_left() is None
    ag._want(r, 0)


def test_a_wait_that_keeps_time_resets_the_count(
    ag: agent.Agent, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, _w = pipe
    ag._want(r, agent.READ, lambda _fd: None)
    for _ in range(2):
        monkeypatch.setattr(select, "select", slow_select(2 * agent.LINGER_OVERSLEEP))
        for _ in range(agent.LINGER_OVERSLEEPS - 1):
            ag._wait(agent.LINGER)
        monkeypatch.setattr(select, "select", slow_select(0.0))
        ag._wait(agent.LINGER)
        assert ag.oversleeps == 0
    assert ag.lingering
    ag._want(r, 0)


def test_a_wait_ended_by_a_ready_descriptor_is_not_judged(
    ag: agent.Agent, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, _w = pipe
    ag._want(r, agent.READ, lambda _fd: None)
    monkeypatch.setattr(select, "select", slow_select(2 * agent.LINGER_OVERSLEEP, [r]))
    for _ in range(agent.LINGER_OVERSLEEPS + 1):
        assert ag._wait(agent.LINGER) == [r]
    assert ag.lingering and ag.oversleeps == 0
    ag._want(r, 0)
