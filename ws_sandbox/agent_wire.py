"""The service's side of the agent wire protocol (``protocol/agent.md``), sans I/O.

Frames are a 4-byte big-endian length and a JSON object tagged by ``t``. Everything read here
comes from inside a sandbox and is hostile: :class:`AgentDecoder` bounds every frame before
buffering it and validates it against the structs below; anything else raises
:class:`~ws_sandbox.exceptions.SandboxLost`, and the caller destroys the sandbox.
"""

from __future__ import annotations

import struct
from typing import Annotated, Literal

import msgspec

from ws_sandbox.exceptions import DECODE_ERRORS, SandboxLost, quoted

MAX_AGENT_FRAME = 1024 * 1024
"""Largest frame the service accepts from an agent."""

_HEADER = struct.Struct(">I")
_Text = Annotated[str, msgspec.Meta(max_length=MAX_AGENT_FRAME)]
_Id = Annotated[str, msgspec.Meta(max_length=128)]


class AgentFrame(msgspec.Struct, kw_only=True, tag_field="t"):
    """Base of every agent frame."""


# --- service to agent ----------------------------------------------------------------------


class Hello(AgentFrame, tag="hello"):
    """Greeting; the agent answers :class:`AgentReady`."""


class Exec(AgentFrame, tag="exec", omit_defaults=True):
    """Run one cell. ``program``: the cell is a whole program (a one-shot call), so its end
    waits for the work it left, as a program's exit does (Python: its non-daemon threads, and
    the exit functions)."""

    id: str
    code: str
    max_output_bytes: int
    program: bool = False


class Signal(AgentFrame, tag="interrupt"):
    """Interrupt the running cell."""


class RestartWorker(AgentFrame, tag="restart"):
    """Kill every user process and start a fresh interpreter."""


ToAgent = Hello | Exec | Signal | RestartWorker


# --- agent to service ----------------------------------------------------------------------


class AgentReady(AgentFrame, tag="ready"):
    """The agent's interpreter is warm."""

    language: Annotated[str, msgspec.Meta(max_length=32)]
    version: int = 1


class Out(AgentFrame, tag="out"):
    """A chunk of a cell's stdout or stderr."""

    id: _Id
    name: Literal["stdout", "stderr"]
    text: _Text


class AgentDisplay(AgentFrame, tag="display"):
    """Rich output (value of a final expression, an image)."""

    id: _Id
    kind: Literal["execute_result", "display_data"]
    data: Annotated[dict[Annotated[str, msgspec.Meta(max_length=100)], _Text],
                    msgspec.Meta(max_length=8)]


class Done(AgentFrame, tag="done"):
    """End of a cell, as the agent saw it (re-checked by the session core)."""

    id: _Id
    status: Literal["success", "error", "interrupted", "killed"]
    # A process's exit status fits in 32 bits; a larger number (forged by user code on the
    # worker's control pipe, which the agent copies as written) would not fit the history's
    # INTEGER column and failed the insert of every row in its batch.
    exit_code: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] | None = None
    execution_time_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    memory_used_mb: Annotated[float, msgspec.Meta(ge=0)] | None = None
    error: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    restarted: bool = False
    truncated: bool = False
    oom_killed: bool = False
    compile_time_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None


class Restarted(AgentFrame, tag="restarted"):
    """The interpreter was restarted on request."""


class Lost(AgentFrame, tag="lost"):
    """The interpreter ended between cells (work an earlier cell left running ended it, or
    it was killed) and a fresh one is starting: its state is gone. ``error`` says how it
    ended. Not an answer to a restart."""

    error: Annotated[str, msgspec.Meta(max_length=4096)] = ""


FromAgent = AgentReady | Out | AgentDisplay | Done | Restarted | Lost

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[FromAgent] = msgspec.json.Decoder(FromAgent)


def encode(frame: ToAgent) -> bytes:
    """Frame one message for the agent's stdin."""
    body = _encoder.encode(frame)
    return _HEADER.pack(len(body)) + body


class AgentDecoder:
    """Incremental, bounded parser of the agent's stdout.

    Feed it bytes with :meth:`feed`; it returns the complete frames found so far.
    """

    def __init__(self, max_frame: int = MAX_AGENT_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def feed(self, data: bytes) -> list[FromAgent]:
        """Consume ``data`` and return every complete frame.

        Raises:
            SandboxLost: on an oversized, malformed or invalid frame.
        """
        self._buffer += data
        frames: list[FromAgent] = []
        buf = self._buffer
        start = 0
        while len(buf) - start >= 4:
            (size,) = _HEADER.unpack_from(buf, start)
            if size > self._max_frame:
                raise SandboxLost(f"agent frame of {size} bytes exceeds {self._max_frame}")
            end = start + 4 + size
            if len(buf) < end:
                break
            try:
                frames.append(_decoder.decode(bytes(buf[start + 4:end])))
            except DECODE_ERRORS as exc:
                raise SandboxLost(f"invalid agent frame: {quoted(str(exc))}") from None
            start = end
        if start:
            del buf[:start]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buffer)
