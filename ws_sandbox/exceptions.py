"""The one exception tree of ws_sandbox.

.. code-block:: text

    SandboxError
    ├── ConfigError                 bad settings at start-up or from the admin API
    ├── RequestError                a client asked for something we refuse
    │   ├── BadRequest              malformed frame or body, wrong field type, empty code
    │   ├── LanguageUnavailable     unknown or disabled language
    │   ├── PayloadTooLarge         code or frame above its size limit
    │   ├── UnsupportedMediaType    a REST body that is not JSON
    │   ├── UpgradeRequired         plain HTTP to a WebSocket endpoint
    │   ├── Unauthorized            missing credentials
    │   ├── Forbidden               wrong credentials or origin
    │   │   └── WrongCredential     a key, token or password given and not accepted
    │   ├── NotFound                unknown session, execution or token target
    │   ├── InvalidToken            tampered or foreign resume token, or its session ended
    │   └── QueueFull               too many cells waiting in one session
    ├── CapacityError               service at its concurrency limit; retry later
    │   ├── TooManySessions         the caller holds MAX_SESSIONS_PER_KEY sessions already
    │   └── TooManyConnections      the address holds MAX_CONNECTIONS_PER_ADDRESS connections
    ├── RateLimited                 token bucket empty; retry later
    ├── StoreUnavailable            the history's database does not answer; retry later
    └── BackendError                the container engine or a sandbox failed us
        ├── EngineUnavailable       the Docker engine does not answer
        ├── ImageMissing            the runtime image is not present
        └── SandboxLost             a sandbox died, broke protocol or stopped answering

Every error carries a machine ``code`` (used in ``error`` frames and JSON bodies), an HTTP
status and a WebSocket close code, taken from one table: :data:`ERROR_TABLE`.
"""

from __future__ import annotations

import math
import re

import msgspec


class SandboxError(Exception):
    """Base class of every error ws_sandbox raises on purpose.

    Attributes:
        code: short machine-readable name, e.g. ``"bad_request"``.
        message: what went wrong, in words a person understands.
        retry_after: seconds after which a retry may succeed, if that is known.
    """

    code = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    @property
    def http_status(self) -> int:
        """HTTP status for this error (see :data:`ERROR_TABLE`)."""
        return ERROR_TABLE[type(self)][0]

    @property
    def close_code(self) -> int:
        """WebSocket close code for this error (see :data:`ERROR_TABLE`)."""
        return ERROR_TABLE[type(self)][1]

    @property
    def retry_after_header(self) -> str | None:
        """``retry_after`` as a ``Retry-After`` value: whole seconds, rounded up, at least 1
        (a 0 invites an immediate retry); None when unknown."""
        if self.retry_after is None:
            return None
        return str(max(1, math.ceil(self.retry_after)))


class ConfigError(SandboxError):
    """A setting is missing, malformed or unsafe."""

    code = "config_error"


class RequestError(SandboxError):
    """A client asked for something that is refused."""

    code = "bad_request"


class BadRequest(RequestError):
    """Malformed frame or body, a field of the wrong type, empty code."""

    code = "bad_request"


class LanguageUnavailable(RequestError):
    """The language is unknown or switched off by configuration."""

    code = "language_unavailable"


class PayloadTooLarge(RequestError):
    """Code, body or frame above its size limit."""

    code = "payload_too_large"


class UnsupportedMediaType(RequestError):
    """A request body in a content type other than JSON."""

    code = "unsupported_media_type"


class UpgradeRequired(RequestError):
    """A plain HTTP request to a WebSocket endpoint."""

    code = "upgrade_required"


class Unauthorized(RequestError):
    """Credentials are required and none were given."""

    code = "unauthorized"


class Forbidden(RequestError):
    """Credentials or origin were given and are not accepted."""

    code = "forbidden"


class WrongCredential(Forbidden):
    """A key, token or password was given and is not one we accept: a guess, for
    ``AUTH_FAILURES_PER_MINUTE`` (an origin, a host or the admin API switched off is not)."""


class NotFound(RequestError):
    """The session, execution or kernel does not exist (any more)."""

    code = "not_found"


class InvalidToken(RequestError):
    """A resume token is tampered with, expired or names no live session."""

    code = "invalid_token"


class QueueFull(RequestError):
    """The session's cell queue is full."""

    code = "queue_full"


class CapacityError(SandboxError):
    """The service runs as many sessions as it is allowed to."""

    code = "at_capacity"


class TooManySessions(CapacityError):
    """The caller (an API key, or an address without keys) holds as many sessions as one
    caller may (``MAX_SESSIONS_PER_KEY``): a 429, as it is this caller's own doing, where
    the service's own limit is a 503."""

    code = "too_many_sessions"


class TooManyConnections(CapacityError):
    """A client address holds ``MAX_CONNECTIONS_PER_ADDRESS`` open connections, or the
    service as many as its open files allow: a new one is answered and closed at once."""

    code = "too_many_connections"


class RateLimited(SandboxError):
    """The caller's token bucket is empty."""

    code = "rate_limited"


class StoreUnavailable(SandboxError):
    """A record store (the history's database) has not answered within STORE_TIMEOUT: its
    disk hangs, or a write before the request does."""

    code = "store_unavailable"


class BackendError(SandboxError):
    """The container engine or a sandbox failed."""

    code = "backend_error"


class EngineUnavailable(BackendError):
    """The Docker engine does not answer."""

    code = "engine_unavailable"


class ImageMissing(BackendError):
    """The runtime image is not present on the engine."""

    code = "image_missing"


class SandboxLost(BackendError):
    """A sandbox died, broke the agent protocol or stopped answering."""

    code = "sandbox_lost"


#: error class -> (HTTP status, WebSocket close code)
ERROR_TABLE: dict[type[SandboxError], tuple[int, int]] = {
    SandboxError: (500, 1011),
    ConfigError: (400, 1008),
    RequestError: (400, 1008),
    BadRequest: (400, 1008),
    LanguageUnavailable: (400, 1008),
    PayloadTooLarge: (413, 1009),
    UnsupportedMediaType: (415, 1003),
    UpgradeRequired: (426, 1008),
    Unauthorized: (401, 1008),
    Forbidden: (403, 1008),
    WrongCredential: (403, 1008),
    NotFound: (404, 1008),
    InvalidToken: (403, 1008),
    QueueFull: (429, 1013),
    CapacityError: (503, 1013),
    TooManySessions: (429, 1013),
    TooManyConnections: (503, 1013),
    RateLimited: (429, 1013),
    StoreUnavailable: (503, 1011),
    BackendError: (503, 1011),
    EngineUnavailable: (503, 1011),
    ImageMissing: (503, 1011),
    SandboxLost: (503, 1011),
}


QUOTED_CHARS = 200
"""The most of a client's or a sandbox's words :func:`quoted` keeps."""


def quoted(text: str) -> str:
    """``text`` that came from a client or a sandbox, fit for an error message, the log and
    a record: cut to :data:`QUOTED_CHARS` characters and quoted, every control character
    escaped.

    msgspec's description of a frame it refused repeats the bad value as it came. Under
    gVisor a cell can write frames to its agent's channel itself: one with a made-up tag
    wrote lines of its choosing into the service's log, and a megabyte into a result's
    error, the audit log and the history (a review). A client's query value or path came
    back whole in a 400 or 404 too (5,000 characters of ``?limit=``: a review).
    """
    return repr(text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS] + "...")


DECODE_ERRORS: tuple[type[Exception], ...] = (
    msgspec.DecodeError, RecursionError, UnicodeDecodeError)
"""What msgspec raises for JSON that is not what we expect: ``DecodeError`` (malformed, a
wrong type, bad UTF-8 outside a string), ``RecursionError`` (nested deeper than about 1,000
levels, even in a field that would be ignored) and ``UnicodeDecodeError`` (bad UTF-8 inside a
string or a key). Every decoder of input from a client or a sandbox catches all three, so
that none becomes a 500, a dropped session or a hang."""

LONE_SURROGATE = ("JSON is malformed: a \\u escape is half of a UTF-16 surrogate pair, without"
                  " the other half (such as \\ud800 alone); text must be valid Unicode")

BYTE_ORDER_MARK = ("JSON is malformed: it starts with a byte order mark (EF BB BF), which JSON"
                   " text has none of: send the UTF-8 without it (byte 0)")

_HIGH_HALF_THEN_QUOTE = re.compile(r'\\u[dD][89abAB][0-9a-fA-F]{2}[^\\]{0,6}"')


def _is_lone_surrogate(exc: Exception, data: str | bytes) -> bool:
    """Whether msgspec refused ``data`` for a ``\\u`` escape of half a UTF-16 surrogate pair
    (valid JSON, but not Unicode text).

    Told from msgspec's own words, and at most the input's last bytes: never by parsing
    again, so that a refused message costs no more than msgspec's parse (a 6 MiB frame
    parsed again by Python's json stalled the service's loop for most of a second; a
    review). A client's field names, quoted by a ``ValidationError``, do not count.
    """
    if not isinstance(exc, msgspec.DecodeError) or isinstance(exc, msgspec.ValidationError):
        return False
    text = str(exc)
    if text.startswith("JSON is malformed:") and "utf-16 surrogate" in text:
        return True
    # A lone high half within six characters of the input's end: msgspec reads on for
    # its partner and says the input was truncated, although the string was closed.
    tail = data[-16:]
    return text == "Input data was truncated" and _HIGH_HALF_THEN_QUOTE.search(
        tail if isinstance(tail, str) else tail.decode("utf-8", "replace")) is not None


def decode_error_text(exc: Exception, data: str | bytes) -> str:
    """What was wrong with JSON that a decoder refused (one of :data:`DECODE_ERRORS`):
    msgspec's own words, but for a lone surrogate escape (:func:`_is_lone_surrogate`)."""
    text = str(exc)
    if _is_lone_surrogate(exc, data):
        at = re.search(r" \(byte [0-9]+\)$", text)
        return LONE_SURROGATE + (at.group() if at else "")
    bom = b"\xef\xbb\xbf" if isinstance(data, bytes) else "\ufeff"
    if data[:len(bom)] == bom and text.endswith("(byte 0)"):
        return BYTE_ORDER_MARK
    return text
