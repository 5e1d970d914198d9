"""Framing of the agent protocol, and the agent process's reaction to bad input.

Black-box: the agent is the C binary (``tests.agent_binary``), run on the host with the shell
worker (the cheapest to start); no Docker. Every wait on it is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.agent_binary import agent_binary
from ws_sandbox import frames as fr

EXIT_BAD_FRAME = 2
MAX_SERVICE_FRAME = fr.MAX_WS_MESSAGE  # an exec of 16 MiB of code escaped six to one fits
MAX_AGENT_FRAME = 1 << 20
TIMEOUT = 20.0


def frame(obj: Any) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def run_agent(stdin: bytes, language: str = "shell") -> subprocess.CompletedProcess[bytes]:
    """Feed ``stdin`` (then EOF) to an agent; its exit code, stdout and stderr."""
    return subprocess.run([str(agent_binary()), language], input=stdin, capture_output=True,
                          timeout=TIMEOUT, check=False)


def read_frames(data: bytes) -> list[dict[str, Any]]:
    """Split the agent's output into frames, holding each to the framing rules."""
    frames = []
    while data:
        assert len(data) >= 4, f"a truncated header: {data!r}"
        (size,) = struct.unpack(">I", data[:4])
        assert size <= MAX_AGENT_FRAME
        assert len(data) >= 4 + size, "a truncated frame"
        obj = json.loads(data[4 : 4 + size].decode("utf-8"))
        assert isinstance(obj, dict) and isinstance(obj["t"], str)
        frames.append(obj)
        data = data[4 + size :]
    return frames


class Agent:
    """An agent process whose stdout is read with deadlines, frame by frame or raw."""

    def __init__(self, language: str = "shell") -> None:
        self.proc = subprocess.Popen([str(agent_binary()), language], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pending = b""

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_some(self, timeout: float = TIMEOUT) -> bytes:
        """What the agent has written (at least one byte), or b'' at its EOF."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            pytest.fail(f"the agent wrote nothing within {timeout} s")
        return os.read(fd, 1 << 20)  # raw: what the agent wrote, past Python's buffer

    def read_raw_frame(self) -> bytes:
        """One whole frame, header included, exactly as the agent wrote it."""
        while True:
            if len(self.pending) >= 4:
                (size,) = struct.unpack(">I", self.pending[:4])
                assert size <= MAX_AGENT_FRAME
                if len(self.pending) >= 4 + size:
                    raw, self.pending = self.pending[: 4 + size], self.pending[4 + size :]
                    return raw
            chunk = self.read_some()
            if not chunk:
                pytest.fail(f"the agent closed its stdout; pending {self.pending!r}")
            self.pending += chunk

    def read_frame(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.read_raw_frame()[4:])
        return obj

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        finally:
            self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdout, self.proc.stderr):
                assert stream is not None
                stream.close()


@pytest.fixture
def agent() -> Iterator[Agent]:
    a = Agent()
    try:
        yield a
    finally:
        a.close()


def cell_frames(a: Agent, cell_id: str) -> list[dict[str, Any]]:
    """The frames of cell ``cell_id`` up to and including its done."""
    frames = []
    while True:
        obj = a.read_frame()
        if obj.get("id") == cell_id:
            frames.append(obj)
            if obj["t"] == "done":
                return frames


def compact(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ----------------------------------------------------------------------------- framing


def test_output_frames_are_big_endian_length_then_compact_json(agent: Agent) -> None:
    agent.write(frame({"t": "hello"}))
    raw = agent.read_raw_frame()
    (size,) = struct.unpack(">I", raw[:4])
    assert size == len(raw) - 4
    assert raw[4:] == b'{"t":"ready","language":"shell","version":1}'
    agent.write(frame({"t": "exec", "id": "c1", "code": "printf 'a b\\t\"\\\\ é€😀\\n'"}))
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["t"] != "done":
        raw = agent.read_raw_frame()
        obj = json.loads(raw[4:].decode("utf-8"))
        # compact, non-ASCII as UTF-8 (not escaped), as json.dumps(ensure_ascii=False) writes
        assert raw[4:] == compact(obj), raw
        frames.append(obj)
    text = "".join(f["text"] for f in frames if f["t"] == "out")
    assert text == 'a b\t"\\ é€😀\n'
    assert "é€😀".encode() in b"".join(compact(f) for f in frames)


def test_frames_split_anywhere_are_decoded(agent: Agent) -> None:
    stream = frame({"t": "hello"}) + frame({"t": "exec", "id": "c1", "code": "echo 'é€😀'"})
    for i in range(len(stream)):  # one byte per write, each given time to be read alone
        agent.write(stream[i : i + 1])
        time.sleep(0.002)
    assert agent.read_frame() == {"t": "ready", "language": "shell", "version": 1}
    frames = cell_frames(agent, "c1")
    assert frames[0] == {"t": "out", "id": "c1", "name": "stdout", "text": "é€😀\n"}
    assert frames[-1]["status"] == "success"


def test_several_frames_in_one_write_are_decoded_and_the_tail_kept(agent: Agent) -> None:
    third = frame({"t": "exec", "id": "c2", "code": "echo two"})
    agent.write(frame({"t": "hello"}) + frame({"t": "exec", "id": "c1", "code": "echo one"})
                + third[:5])
    assert agent.read_frame()["t"] == "ready"
    first = cell_frames(agent, "c1")
    assert first[0]["text"] == "one\n" and first[-1]["status"] == "success"
    agent.write(third[5:])  # the tail of the write was kept: the frame completes
    second = cell_frames(agent, "c2")
    assert second[0]["text"] == "two\n" and second[-1]["status"] == "success"


def test_a_header_over_the_limit_ends_the_agent_before_the_body_arrives(agent: Agent) -> None:
    agent.write(frame({"t": "hello"}) + struct.pack(">I", MAX_SERVICE_FRAME + 1))
    # stdin stays open and no body follows: the header alone decides.
    assert agent.proc.wait(timeout=TIMEOUT) == EXIT_BAD_FRAME
    assert agent.proc.stderr is not None
    assert b"exceeds" in agent.proc.stderr.read()


def test_a_frame_of_exactly_the_limit_is_accepted(agent: Agent) -> None:
    filler = b'{"t":"future","pad":"' + b"x" * MAX_SERVICE_FRAME
    body = filler[: MAX_SERVICE_FRAME - 2] + b'"}'
    assert len(body) == MAX_SERVICE_FRAME
    agent.write(framed(body) + frame({"t": "hello"}))
    assert agent.read_frame() == {"t": "ready", "language": "shell", "version": 1}


def test_an_exec_of_code_rich_in_control_characters_runs(agent: Agent) -> None:
    """3 MB of control characters are 18 MB of JSON: over the 16 MiB the agent once took, so
    a cell within MAX_CODE_BYTES (up to 16 MiB) ended its sandbox (a review)."""
    agent.write(frame({"t": "hello"}))
    assert agent.read_frame()["t"] == "ready"
    code = "#" + "\x01" * 3_000_000 + "\necho ok"
    body = frame({"t": "exec", "id": "c1", "code": code})
    assert len(body) > 18_000_000
    agent.write(body)
    frames = cell_frames(agent, "c1")
    assert frames[-1]["status"] == "success", frames[-1]
    assert "".join(f.get("text", "") for f in frames) == "ok\n"


def test_service_frames_hello_interrupt_restart_and_unknown(agent: Agent) -> None:
    agent.write(frame({"t": "future-frame", "x": [1]}) + frame({"t": "interrupt"})
                + frame({"t": "hello"}))
    assert agent.read_frame() == {"t": "ready", "language": "shell", "version": 1}
    agent.write(frame({"t": "exec", "id": "c1", "code": "X=1"}))
    assert cell_frames(agent, "c1")[-1]["status"] == "success"
    agent.write(frame({"t": "restart"}))
    assert agent.read_frame() == {"t": "restarted"}
    agent.write(frame({"t": "exec", "id": "x" * 256, "code": 'echo "[$X]"'}))
    assert cell_frames(agent, "x" * 256)[0]["text"] == "[]\n"


# ----------------------------------------------------------------------------- bad input


def assert_bad_frame_exit(stdin: bytes) -> None:
    proc = run_agent(frame({"t": "hello"}) + stdin)
    assert proc.returncode == EXIT_BAD_FRAME, proc
    lines = proc.stderr.decode("utf-8", "replace").splitlines()
    assert any("malformed frame" in line for line in lines), proc.stderr
    # Every frame is well-formed; the only one possible is the answer to hello (sent only if
    # the worker was warm before the bad frame was read).
    assert [f["t"] for f in read_frames(proc.stdout)] in ([], ["ready"])


@pytest.mark.parametrize(
    "bad",
    [
        struct.pack(">I", MAX_SERVICE_FRAME + 1),
        struct.pack(">I", 0xFFFFFFFF),
        frame([1]),
        struct.pack(">I", 3) + b"{x}",
        frame({"t": "exec", "id": 7, "code": "echo"}),
    ],
)
def test_agent_exits_2_on_bad_frame(bad: bytes) -> None:
    assert_bad_frame_exit(bad)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"no_tag": 1}',
        b'{"t": 5}',
        b'{"t": "hello", "x": NaN}',
        b'{"t": "hello", "x": Infinity}',
        b'{"t": "\xff"}',
        b'{"t": "hello"} trailing',
        b"[" * 100_000,
    ],
)
def test_agent_exits_2_on_a_malformed_body(body: bytes) -> None:
    assert_bad_frame_exit(framed(body))


@pytest.mark.parametrize(
    "obj",
    [
        {"t": "exec", "code": "1"},
        {"t": "exec", "id": "", "code": "1"},
        {"t": "exec", "id": "x" * 257, "code": "1"},
        {"t": "exec", "id": "c1"},
        {"t": "exec", "id": "c1", "code": 5},
        {"t": "exec", "id": "c1", "code": "1", "max_output_bytes": -1},
        {"t": "exec", "id": "c1", "code": "1", "max_output_bytes": True},
        {"t": "exec", "id": "c1", "code": "1", "max_output_bytes": "10"},
        {"t": "exec", "id": "c1", "code": "1", "program": 1},
        {"t": "exec", "id": "c1", "code": "1", "program": "true"},
    ],
)
def test_agent_exits_2_on_an_invalid_exec(obj: dict[str, Any]) -> None:
    assert_bad_frame_exit(frame(obj))


def test_agent_answers_hello_ignores_unknown_frames_and_exits_0_on_eof(agent: Agent) -> None:
    agent.write(frame({"t": "something-new"}) + frame({"t": "hello"}))
    assert agent.read_frame() == {"t": "ready", "language": "shell", "version": 1}
    assert agent.proc.stdin is not None
    agent.proc.stdin.close()
    assert agent.proc.wait(timeout=10) == 0
    assert agent.read_some() == b""


def test_agent_rejects_unknown_language() -> None:
    proc = run_agent(b"", language="cobol")
    assert proc.returncode == EXIT_BAD_FRAME
    assert b"unknown language 'cobol'" in proc.stderr


# ----------------------------------------------------------------------------- robustness


def ends_cleanly(stdin: bytes) -> None:
    """The agent, fed ``stdin`` then EOF, exits 0 or 2 in time, never by a signal."""
    try:
        proc = run_agent(stdin)
    except subprocess.TimeoutExpired:  # run() has killed it
        pytest.fail(f"the agent did not exit within {TIMEOUT} s on {stdin[:200]!r}")
    assert proc.returncode in (0, EXIT_BAD_FRAME), (proc.returncode, stdin[:200], proc.stderr)
    read_frames(proc.stdout)


FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_end_the_agent_cleanly(data: bytes, after_hello: bool) -> None:
    ends_cleanly((frame({"t": "hello"}) if after_hello else b"") + data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15,
)
TAGS = st.sampled_from(["hello", "exec", "interrupt", "restart", "ready", "out", ""]) | st.text()


@st.composite
def service_frames(draw: st.DrawFn) -> bytes:
    """A well-framed body: arbitrary JSON, or an object with a (likely known) tag and
    arbitrary fields. An exec that the agent would run gets harmless code."""
    if draw(st.booleans()):
        value = draw(json_values)
    else:
        value = draw(st.dictionaries(st.sampled_from(["id", "code", "max_output_bytes"])
                                     | st.text(max_size=8), json_values, max_size=4))
        value["t"] = draw(TAGS | json_values)
        if "code" in value:
            value["code"] = draw(st.sampled_from([":", "echo hi", "true; false", 5, None]))
    return framed(json.dumps(value, ensure_ascii=draw(st.booleans())).encode("utf-8",
                                                                              "surrogatepass"))


@FUZZ
@given(st.lists(service_frames(), max_size=6), st.booleans())
def test_arbitrary_well_framed_json_ends_the_agent_cleanly(frames: list[bytes],
                                                           after_hello: bool) -> None:
    ends_cleanly((frame({"t": "hello"}) if after_hello else b"") + b"".join(frames))
