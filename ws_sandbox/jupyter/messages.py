"""Jupyter messaging protocol 5.3 over the JSON WebSocket of Jupyter Server.

Each message is one JSON object with ``header``, ``parent_header``, ``metadata``,
``content``, ``channel`` and ``buffers``; like Jupyter Server we also put ``msg_id`` and
``msg_type`` at the top level. Incoming messages are decoded leniently, because real clients
send ``date`` as an empty string, leave out ``buffers`` or ``channel``, or add fields of their
own; outgoing ones are built here so that every reply carries its request's header as
``parent_header``.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from ws_sandbox.exceptions import (
    DECODE_ERRORS,
    BadRequest,
    PayloadTooLarge,
    decode_error_text,
)
from ws_sandbox.frames import MAX_WS_MESSAGE

PROTOCOL_VERSION = "5.3"
#: Largest message decoded: the WebSocket ceiling. The server's own message limit, fixed at
#: start from ``MAX_CODE_BYTES`` (:func:`ws_sandbox.frames.ws_message_limit`), is lower.
MAX_INCOMING_CHARS = MAX_WS_MESSAGE
#: Longest header field (``msg_id``, ``msg_type``, ``session``, ...): each is echoed in every
#: message answering the request, to every connection of the kernel.
MAX_HEADER_CHARS = 256

HeaderField = Annotated[str, msgspec.Meta(max_length=MAX_HEADER_CHARS)]
CLIENT_CHANNELS = frozenset({"shell", "control", "stdin"})
"""The channels a client sends on."""
#: Stream text is cut into pieces of at most this many characters: at worst 6 bytes each
#: in JSON (a control character as ``\u0001``), so one message stays under 1 MiB.
STREAM_CHUNK_CHARS = 128 * 1024

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


class Header(msgspec.Struct, kw_only=True, omit_defaults=False):
    """A message header. Unknown fields are ignored; missing ones get harmless defaults."""

    msg_id: HeaderField = ""
    msg_type: HeaderField = ""
    username: HeaderField = ""
    session: HeaderField = ""
    date: HeaderField = ""
    version: HeaderField = PROTOCOL_VERSION


class Incoming(msgspec.Struct, kw_only=True):
    """A message from the client, as tolerant as real clients need. Its ``parent_header`` is
    not kept: nothing reads it, and replies carry the request's own header."""

    header: Header
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    content: dict[str, Any] = msgspec.field(default_factory=dict)
    channel: HeaderField | None = None
    buffers: list[Any] = msgspec.field(default_factory=list)

    @property
    def msg_type(self) -> str:
        """The message's type, from its header."""
        return self.header.msg_type

    @property
    def channel_name(self) -> str:
        """The channel it came on; no channel means shell, as Jupyter Server assumes."""
        return self.channel or "shell"

    @property
    def on_known_channel(self) -> bool:
        """Whether it came on a channel a client sends on (Jupyter Server drops the rest:
        a reply must not go out on ``iopub`` or on a channel named by the client)."""
        return self.channel_name in CLIENT_CHANNELS


class _WireHeader(msgspec.Struct, kw_only=True):
    """A header as clients send it: any field may be ``null`` (taken as missing)."""

    msg_id: HeaderField | None = None
    msg_type: HeaderField | None = None
    username: HeaderField | None = None
    session: HeaderField | None = None
    date: HeaderField | None = None
    version: HeaderField | None = None


class _WireIncoming(msgspec.Struct, kw_only=True):
    """A client message as sent: ``null`` where :class:`Incoming` has a default is the
    default (a review's client sent ``"date": null`` and ``"metadata": null``)."""

    header: _WireHeader
    metadata: dict[str, Any] | None = None
    content: dict[str, Any] | None = None
    channel: HeaderField | None = None
    buffers: list[Any] | None = None

    def incoming(self) -> Incoming:
        header = Header(**{name: value for name, value
                           in msgspec.structs.asdict(self.header).items() if value is not None})
        return Incoming(header=header, metadata=self.metadata or {},
                        content=self.content or {}, channel=self.channel,
                        buffers=self.buffers or [])


class Outgoing(msgspec.Struct, kw_only=True):
    """A message to the client."""

    header: Header
    msg_id: str
    msg_type: str
    parent_header: dict[str, Any]
    metadata: dict[str, Any]
    content: dict[str, Any]
    channel: str
    buffers: list[Any] = msgspec.field(default_factory=list)


_decoder = msgspec.json.Decoder(_WireIncoming)
_encoder = msgspec.json.Encoder()


def decode(data: str | bytes) -> Incoming:
    """Parse one client message.

    Raises:
        PayloadTooLarge: above :data:`MAX_INCOMING_CHARS`.
        BadRequest: not JSON, not an object, a field of the wrong type, or no ``msg_type``.
    """
    if len(data) > MAX_INCOMING_CHARS:
        raise PayloadTooLarge(f"message of {len(data)} characters exceeds the limit of"
                              f" {MAX_INCOMING_CHARS}")
    try:
        message = _decoder.decode(data).incoming()
    except DECODE_ERRORS as exc:
        raise BadRequest(f"invalid Jupyter message: {decode_error_text(exc, data)}") from None
    if not message.header.msg_type:
        raise BadRequest("invalid Jupyter message: its header has no msg_type")
    return message


def decode_binary(data: bytes) -> Incoming:
    """Parse one message in Jupyter Server's binary form (how its default protocol carries
    a message with buffers): a big-endian 32-bit count of parts, one 32-bit offset per part
    from the start of the data, then the parts; the first is the message as JSON. The
    buffers are dropped: nothing we serve (no comms) reads them.

    Raises:
        PayloadTooLarge: above :data:`MAX_INCOMING_CHARS` bytes.
        BadRequest: a layout that does not fit the data, or a first part :func:`decode`
            refuses.
    """
    if len(data) > MAX_INCOMING_CHARS:
        raise PayloadTooLarge(f"message of {len(data)} bytes exceeds the limit of"
                              f" {MAX_INCOMING_CHARS}")
    if len(data) < 8:
        raise BadRequest(f"invalid binary Jupyter message: {len(data)} bytes")
    parts = int.from_bytes(data[:4], "big")
    if not 1 <= parts <= (len(data) - 4) // 4:
        raise BadRequest(f"invalid binary Jupyter message: {parts} parts in {len(data)} bytes")
    # Only the first part is read, so only its bounds are checked: a message claiming a
    # million parts costs no more than one claiming two.
    start = int.from_bytes(data[4:8], "big")
    end = int.from_bytes(data[8:12], "big") if parts > 1 else len(data)
    if not start == 4 * (parts + 1) <= end <= len(data):
        raise BadRequest("invalid binary Jupyter message: its offsets do not fit the data")
    return decode(data[start:end])


def encode(message: Outgoing) -> str:
    """Serialise a message to JSON text."""
    return _encoder.encode(message).decode()


def now_iso() -> str:
    """The current time as ISO 8601 with a time zone, as the protocol asks."""
    return iso(None)


def iso(timestamp: float | None) -> str:
    """A Unix time (now when None) as ISO 8601 in UTC, ending in ``Z``."""
    when = datetime.now(UTC) if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
    return when.isoformat().replace("+00:00", "Z")


def header_dict(header: Header) -> dict[str, Any]:
    """A header as a plain dict (for ``parent_header``)."""
    return msgspec.structs.asdict(header)


def build(msg_type: str, content: dict[str, Any], *, channel: str,
          parent: Header | None, session: str, metadata: dict[str, Any] | None = None
          ) -> Outgoing:
    """Build one outgoing message.

    Args:
        msg_type: e.g. ``"status"`` or ``"execute_reply"``.
        content: the message content.
        channel: ``"shell"``, ``"iopub"``, ``"control"`` or ``"stdin"``.
        parent: the request this message answers (copied into ``parent_header``).
        session: the kernel's session id.
        metadata: message metadata.
    """
    msg_id = uuid.uuid4().hex
    header = Header(msg_id=msg_id, msg_type=msg_type, username="kernel", session=session,
                    date=now_iso(), version=PROTOCOL_VERSION)
    return Outgoing(header=header, msg_id=msg_id, msg_type=msg_type,
                    parent_header=header_dict(parent) if parent is not None else {},
                    metadata=metadata or {}, content=content, channel=channel)


def strip_ansi(text: str) -> str:
    """Remove ANSI escape sequences (colours, cursor moves) from ``text``."""
    return _ANSI.sub("", text)


def split_text(text: str, size: int = STREAM_CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most ``size`` characters (at least one piece)."""
    if len(text) <= size:
        return [text]
    return [text[i:i + size] for i in range(0, len(text), size)]


def split_error(error: str | None, fallback: str) -> tuple[str, str]:
    """``"ZeroDivisionError: division by zero"`` -> ``("ZeroDivisionError", "division by zero")``.

    A qualified name (Python prints ``json.decoder.JSONDecodeError``) is the class's own
    name, as ipykernel's ``ename`` is (``type(exc).__name__``).

    Args:
        error: our result's error sentence.
        fallback: the ``ename`` when the sentence does not start with an exception name.
    """
    text = strip_ansi(error or "").strip()
    name, sep, value = text.partition(": ")
    if sep and re.fullmatch(r"[A-Za-z_][\w.]*", name):
        return name.rpartition(".")[2] or name, value
    return fallback, text
