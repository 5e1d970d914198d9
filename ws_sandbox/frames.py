"""The public protocol v1: every WebSocket frame as a msgspec Struct.

Client and server frames are tagged unions on ``type``. Decoders and encoders are built once
here and reused. The JSON Schema in ``protocol/schema.json`` is generated from these structs
(``ws-sandbox schema``); a test fails when the two drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from ws_sandbox.exceptions import DECODE_ERRORS, BadRequest, decode_error_text

MAX_CELL_ID = 128
"""The longest cell id (characters)."""
CellId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CELL_ID,
                                     description="Chosen by the client, echoed on every frame")]
Status = Literal["success", "error", "timeout", "interrupted", "killed"]
StreamName = Literal["stdout", "stderr"]
CloseReason = Literal["idle_timeout", "max_lifetime", "server_shutdown", "client_closed",
                      "sandbox_lost", "closed_by_admin", "resume_expired"]


class Frame(msgspec.Struct, kw_only=True, tag_field="type"):
    """Base of every frame; ``type`` is the tag."""


# --- client to server ----------------------------------------------------------------------
# A field the service does not know is refused (``bad_request``), not ignored: a misspelt
# ``timout`` would otherwise run the cell with the default timeout, unnoticed. (Clients stay
# lenient the other way: a newer service may add fields to its frames.)


class Execute(Frame, tag="execute", forbid_unknown_fields=True, omit_defaults=True):
    """Run one cell. ``timeout`` (seconds) is at most ``MAX_EXECUTION_TIME``: a larger one is
    refused, never clamped; none means ``DEFAULT_EXECUTION_TIME``. ``program``: the cell is a
    whole program, whose end waits for the work it left as a program's exit does (Python:
    its threads that are not daemons, and its exit functions); a notebook cell's does not.
    (Defaults are left out when encoded: a service without ``program`` reads the frame.)"""

    id: CellId
    code: str
    timeout: float | None = None
    program: bool = False


class Interrupt(Frame, tag="interrupt", forbid_unknown_fields=True):
    """Interrupt the running cell (Python gets KeyboardInterrupt)."""


class Restart(Frame, tag="restart", forbid_unknown_fields=True, omit_defaults=True):
    """Restart the interpreter: the session's state is lost, the container kept. ``id``
    (optional, chosen by the client) comes back in the ``restarted`` frame's ``ids`` that
    answers it, or on the ``error`` frame that refuses it."""

    id: CellId | None = None


ClientFrame = Execute | Interrupt | Restart


# --- server to client ----------------------------------------------------------------------


class Limits(msgspec.Struct, kw_only=True):
    """The limits a session runs under."""

    max_execution_time: float
    default_execution_time: float
    max_memory_mb: int
    max_output_bytes: int
    max_code_bytes: int
    max_queued_cells: int
    idle_timeout: float | None
    max_lifetime: float | None


class Ready(Frame, tag="ready"):
    """The session is open. ``token`` resumes it after a dropped connection."""

    session_id: str
    language: str
    token: str
    limits: Limits
    resumed: bool = False
    #: On a resume: frames made while the client was away beyond the 1024 kept (the oldest
    #: go first), so the replay that follows misses them.
    frames_dropped: int = 0


class Stream(Frame, tag="stream"):
    """Output of a cell, live and in order per stream."""

    id: str
    name: StreamName
    text: str


class Display(Frame, tag="display"):
    """Rich output: a final expression's value or an image (MIME type to content)."""

    id: str
    kind: Literal["execute_result", "display_data"]
    data: dict[str, str]


class Result(Frame, tag="result"):
    """End of a cell: exactly one per cell, after all its output."""

    id: str
    status: Status
    exit_code: int | None
    execution_time_ms: float
    memory_used_mb: float | None
    error: str | None
    truncated: bool = False
    state_lost: bool = False
    #: Rust: how much of ``execution_time_ms`` rustc took (None for the other languages).
    compile_time_ms: float | None = None


class Error(Frame, tag="error"):
    """A refused frame or request; the session goes on where it can."""

    code: str
    message: str
    id: str | None = None


class Restarted(Frame, tag="restarted"):
    """The interpreter or the whole sandbox is fresh: the session's state is lost. ``ids``:
    the ids of the ``restart`` requests it answers (it answers every restart sent since the
    last one, with an id or without); empty when none gave one. (None: from a service that
    does not send ``ids``.)"""

    reason: Literal["interpreter_restarted", "sandbox_replaced"]
    message: str
    ids: list[str] | None = None


class Closed(Frame, tag="closed"):
    """Sent before the server closes the session."""

    reason: CloseReason
    message: str = ""


ServerFrame = Ready | Stream | Display | Result | Error | Restarted | Closed

_client_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)
_server_decoder: msgspec.json.Decoder[ServerFrame] = msgspec.json.Decoder(ServerFrame)
_encoder = msgspec.json.Encoder()


JSON_BYTES_PER_CODE_BYTE = 6
"""The most bytes of JSON one byte of code can take: a control character is ``\\u001b``
(an ASCII-only encoder, Python's ``json.dumps`` by default, also writes two-byte characters
as six bytes and four-byte ones as twelve: three per byte)."""


def message_limit(max_code_bytes: int) -> int:
    """The largest JSON message (a REST body, a frame) read for code of ``max_code_bytes``:
    room for the code however it is escaped, and for the other fields."""
    return JSON_BYTES_PER_CODE_BYTE * max_code_bytes + 65536


MAX_WS_MESSAGE = message_limit(16 * 1024 * 1024)
"""The largest WebSocket message the server accepts, whatever ``max_code_bytes`` is (its
ceiling, ``Settings.validate``, is 16 MiB)."""


def ws_message_limit(max_code_bytes: int) -> int:
    """The WebSocket message limit for ``max_code_bytes``: fixed when the server starts."""
    return min(message_limit(max_code_bytes), MAX_WS_MESSAGE)


def decode_client(data: str | bytes) -> ClientFrame:
    """Parse one client frame.

    Raises:
        BadRequest: with msgspec's description of what was wrong and where.
    """
    try:
        return _client_decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise BadRequest(f"invalid frame: {decode_error_text(exc, data)}") from None


OUTPUT_ALLOWANCE_SLACK = 65536
"""Characters of a cell's output accepted beyond :func:`output_allowance`'s twice the budget."""


AGENT_FRAME_CHARS = 64
"""What a frame from the agent costs of a cell's output budget beyond its text or data: a
display frame, as the agent counts it, and, in the service's count of what the agent may
send, a frame that carries no output (``done``, ``ready``, ``restarted``). Frames the budget
did not count cost the service their handling for nothing: under gVisor a cell can write to
the agent's channel itself, and a flood of forged ``done`` frames took a service core for
as long as it ran (a review)."""


def display_chars(data: Mapping[str, str]) -> int:
    """A display's size as the agent counts it against a cell's output budget:
    :data:`AGENT_FRAME_CHARS`, and the characters of every key and value and one per
    entry."""
    return AGENT_FRAME_CHARS + sum(len(key) + len(value) + 1 for key, value in data.items())


def output_allowance(max_output_bytes: int) -> int:
    """The most output characters (stream text, and display data as :func:`display_chars`
    counts it) one side accepts for a cell before it decides the other broke the budget of
    ``max_output_bytes``: twice the budget and some. The service holds a sandbox to it
    between two cells' starts (its agent may still be sending the cell before's rest), the
    client library holds the service to it per cell (counted there in UTF-8 bytes, plus
    the truncation marker)."""
    return 2 * max_output_bytes + OUTPUT_ALLOWANCE_SLACK


class _AnyId(msgspec.Struct):
    """What :func:`cell_id_of` reads of a frame that did not decode: its ``id`` alone."""

    id: object = None


_any_id_decoder = msgspec.json.Decoder(_AnyId)


LENIENT_ID_CHARS = 64 * 1024
"""The longest frame whose id is still looked for beside a lone surrogate escape (with
Python's own, slower, JSON parser, which takes such an escape)."""


def _lenient_id(data: str | bytes) -> object:
    """A frame's ``id`` when msgspec refused the frame whole for a lone surrogate escape in
    another field (skipping a field, msgspec words it as a bad hex escape); None for a frame
    above :data:`LENIENT_ID_CHARS`, or one that Python's parser refuses too."""
    if len(data) > LENIENT_ID_CHARS:
        return None
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        return None
    return parsed.get("id") if isinstance(parsed, dict) else None


def cell_id_of(data: str | bytes) -> str | None:
    """The cell id of a client frame that failed to decode, when one can be read (a JSON
    object whose ``id`` is a valid cell id), so that its refusal reaches the cell's caller
    instead of leaving it waiting for a result."""
    try:
        found = _any_id_decoder.decode(data).id
    except DECODE_ERRORS:
        found = _lenient_id(data)
    if not (isinstance(found, str) and 1 <= len(found) <= MAX_CELL_ID):
        return None
    try:
        found.encode()
    except UnicodeEncodeError:  # an id with a lone surrogate could not be sent back
        return None
    return found


def decode_server(data: str | bytes) -> ServerFrame:
    """Parse one server frame (used by the client SDK and the tests)."""
    return _server_decoder.decode(data)


def encode(frame: Frame) -> bytes:
    """Serialise a frame to JSON bytes."""
    return _encoder.encode(frame)
