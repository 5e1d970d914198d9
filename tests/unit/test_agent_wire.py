"""The service's parser of agent output: everything in it comes from a hostile sandbox."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ws_sandbox import agent_wire as aw
from ws_sandbox.exceptions import SandboxLost


def frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def test_frames_split_anywhere_are_reassembled() -> None:
    data = frame({"t": "out", "id": "c1", "name": "stdout", "text": "hé"}) + frame(
        {"t": "done", "id": "c1", "status": "success", "exit_code": 0})
    for cut in range(len(data) + 1):
        decoder = aw.AgentDecoder()
        got = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert [type(f) for f in got] == [aw.Out, aw.Done]
        assert decoder.buffered == 0


def test_oversized_frame_is_refused_before_it_is_buffered() -> None:
    decoder = aw.AgentDecoder(max_frame=100)
    with pytest.raises(SandboxLost, match="exceeds"):
        decoder.feed(struct.pack(">I", 101))


@pytest.mark.parametrize("body", [
    b"not json",
    b"[]",
    b'{"t": "launch-missiles"}',
    b'{"t": "out", "id": "c1", "name": "stdin", "text": "x"}',
    b'{"t": "out", "id": 1, "name": "stdout", "text": "x"}',
    b'{"t": "done", "id": "c1", "status": "pwned"}',
    b'{"t": "done", "id": "c1", "status": "success", "execution_time_ms": -1}',
    b'{"t": "out", "id": "' + b"x" * 200 + b'", "name": "stdout", "text": "x"}',
    b'{"t": "display", "id": "c1", "kind": "display_data", "data": {"a": 1}}',
    b'{"t": "out", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}",  # RecursionError in msgspec
    b'{"t": "out", "id": "c1", "name": "stdout", "text": "\xff"}',  # UnicodeDecodeError
    b'{"t": "done", "id": "c1", "status": "error", "exit_code": 99999999999999999999999}',
    b'{"t": "done", "id": "c1", "status": "error", "exit_code": -2147483649}',
])
def test_invalid_frames_are_refused(body: bytes) -> None:
    with pytest.raises(SandboxLost):
        aw.AgentDecoder().feed(struct.pack(">I", len(body)) + body)


@pytest.mark.parametrize("tag", [
    "x'\n2026-11-27 17:59:59,000 CRITICAL ws_sandbox.auth: FORGED admin key accepted",
    "A" * 1_040_000,
    "\u202e\x1b[31m\r",
])
def test_what_a_refused_frame_said_is_quoted_and_bounded(tag: str) -> None:
    """msgspec's description repeats a bad tag as it came: under gVisor a cell can write to
    its agent's channel, and a made-up tag wrote a line of its choosing into the service's
    log, and a megabyte into the cell's error, the audit log and the history (a review)."""
    with pytest.raises(SandboxLost) as lost:
        aw.AgentDecoder(max_frame=2 << 20).feed(frame({"t": tag}))
    message = lost.value.message
    assert message.startswith(("invalid agent frame: 'Invalid value",
                               "invalid agent frame: \"Invalid value")), message
    assert message.isprintable() and len(message) <= 300, message


def test_encode_is_length_prefixed_json() -> None:
    data = aw.encode(aw.Exec(id="c1", code="print(1)", max_output_bytes=10))
    (size,) = struct.unpack(">I", data[:4])
    assert json.loads(data[4:4 + size]) == {"t": "exec", "id": "c1", "code": "print(1)",
                                            "max_output_bytes": 10}


@given(st.binary(max_size=2000))
def test_garbage_never_escapes_as_anything_but_sandbox_lost(garbage: bytes) -> None:
    decoder = aw.AgentDecoder(max_frame=4096)
    try:
        frames = decoder.feed(garbage)
    except SandboxLost:
        return
    assert all(isinstance(f, aw.AgentFrame) for f in frames)
    assert decoder.buffered <= 4 + 4096


@pytest.mark.parametrize("code", [-(2**31), -9, 0, 137, 2**31 - 1])
def test_exit_codes_that_fit_32_bits_pass(code: int) -> None:
    (done,) = aw.AgentDecoder().feed(frame({"t": "done", "id": "c1", "status": "error",
                                            "exit_code": code}))
    assert isinstance(done, aw.Done) and done.exit_code == code
