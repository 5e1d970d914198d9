"""Framing of the agent protocol: pure functions, and the agent process's reaction to bad input.

No Docker: the agent runs on the host as ``python3 runtime/agent/agent.py``.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

AGENT_DIR = Path(__file__).resolve().parents[2] / "runtime" / "agent"
sys.path.insert(0, str(AGENT_DIR))

import agent  # noqa: E402


def frame(obj: Any) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def test_encode_is_big_endian_length_then_compact_json() -> None:
    data = agent.encode_frame({"t": "ready", "language": "python", "version": 1})
    (size,) = struct.unpack(">I", data[:4])
    assert size == len(data) - 4
    assert json.loads(data[4:]) == {"t": "ready", "language": "python", "version": 1}
    assert b" " not in data[4:]


def test_decoder_roundtrip_byte_by_byte() -> None:
    frames = [{"t": "hello"}, {"t": "exec", "id": "c1", "code": "print('é€😀')"}]
    stream = b"".join(agent.encode_frame(f) for f in frames)
    decoder = agent.FrameDecoder()
    got: list[dict[str, Any]] = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == frames
    assert decoder.buffered == 0


def test_decoder_many_frames_in_one_chunk_keeps_the_tail() -> None:
    stream = frame({"t": "a"}) + frame({"t": "b"}) + frame({"t": "c"})[:5]
    decoder = agent.FrameDecoder()
    assert [f["t"] for f in decoder.feed(stream)] == ["a", "b"]
    assert decoder.buffered == 5


def test_decoder_rejects_oversized_header_before_the_body_arrives() -> None:
    decoder = agent.FrameDecoder(limit=100)
    with pytest.raises(agent.FrameError, match="exceeds"):
        decoder.feed(struct.pack(">I", 101))


def test_encode_rejects_oversized_frame() -> None:
    with pytest.raises(agent.FrameError):
        agent.encode_frame({"t": "out", "text": "x" * 200}, limit=100)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"no_tag": 1}',
        b'{"t": 5}',
        b'{"t": "hello", "x": NaN}',
        b'{"t": "\xff"}',
        b"[" * 100_000,
    ],
)
def test_decode_body_rejects_malformed(body: bytes) -> None:
    with pytest.raises(agent.FrameError):
        agent.decode_body(body)


def test_encode_replaces_lone_surrogates() -> None:
    data = agent.encode_frame({"t": "out", "text": "a\ud800b"})
    assert json.loads(data[4:].decode("utf-8"))["text"] == "a?b"


def test_parse_service_frames() -> None:
    assert isinstance(agent.parse_service_frame({"t": "hello"}), agent.Hello)
    assert isinstance(agent.parse_service_frame({"t": "interrupt"}), agent.Interrupt)
    assert isinstance(agent.parse_service_frame({"t": "restart"}), agent.Restart)
    assert agent.parse_service_frame({"t": "exec", "id": "c1", "code": "1"}) == agent.Exec(
        "c1", "1", agent.DEFAULT_MAX_OUTPUT
    )
    assert agent.parse_service_frame({"t": "future-frame"}) is None


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
    ],
)
def test_parse_service_frame_rejects_invalid_exec(obj: dict[str, Any]) -> None:
    with pytest.raises(agent.FrameError):
        agent.parse_service_frame(obj)


def test_signal_description() -> None:
    assert agent.signal_description(11).startswith("SIGSEGV (")
    assert "out-of-memory" in agent.signal_description(9)


def run_agent(stdin: bytes, language: str = "shell") -> tuple[int, bytes]:
    proc = subprocess.run(
        [sys.executable, str(AGENT_DIR / "agent.py"), language],
        input=stdin,
        capture_output=True,
        timeout=20,
        check=False,
    )
    return proc.returncode, proc.stdout


def read_frames(data: bytes) -> list[dict[str, Any]]:
    decoder = agent.FrameDecoder(agent.MAX_AGENT_FRAME)
    frames = decoder.feed(data)
    assert decoder.buffered == 0
    return frames


@pytest.mark.parametrize(
    "bad",
    [
        struct.pack(">I", (16 << 20) + 1),
        frame([1]),
        struct.pack(">I", 3) + b"{x}",
        frame({"t": "exec", "id": 7, "code": "echo"}),
    ],
)
def test_agent_exits_2_on_bad_frame(bad: bytes) -> None:
    code, out = run_agent(frame({"t": "hello"}) + bad)
    assert code == agent.EXIT_BAD_FRAME
    # Whatever came before the bad frame was still answered, and every frame is well-formed.
    assert all(f["t"] in ("ready",) for f in read_frames(out))


def test_agent_answers_hello_ignores_unknown_frames_and_exits_0_on_eof() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(AGENT_DIR / "agent.py"), "shell"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    # The reads below block; a watchdog kills the agent so a silent one fails, never hangs.
    watchdog = threading.Timer(20, proc.kill)
    watchdog.start()
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(frame({"t": "something-new"}) + frame({"t": "hello"}))
        proc.stdin.flush()
        (size,) = struct.unpack(">I", proc.stdout.read(4))
        assert json.loads(proc.stdout.read(size)) == {
            "t": "ready",
            "language": "shell",
            "version": 1,
        }
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == b""
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_agent_rejects_unknown_language() -> None:
    code, _ = run_agent(b"", language="cobol")
    assert code == agent.EXIT_BAD_FRAME
