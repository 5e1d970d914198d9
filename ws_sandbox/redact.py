"""Keep credentials that travel in URLs out of the logs.

A browser's WebSocket cannot send headers, so an API key may come as ``?api_key=``, a
Jupyter client puts ``?token=`` on every call, and a session is resumed with ``?resume=``.
uvicorn logs each request's path with its query string (the access log, and the WebSocket
handshake's ``[accepted]`` line): :class:`RedactSecrets` rewrites those values to
``[redacted]`` in every record of the loggers it is installed on. At ``LOG_LEVEL=debug`` the
WebSocket library also logs every upgrade's headers (``< authorization: Bearer ...``): the
values of the headers that carry credentials are redacted too.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

SECRET_PARAMS = ("api_key", "token", "resume")
"""Query parameters that carry a credential."""

_PARAM = re.compile(r"([?&;]([^=&;#\s\"']*)=)[^&;#\s\"']*")
SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie",
                  "x-xsrftoken")
"""Headers that carry a credential."""

_HEADER_LINE = re.compile(rf"^([<>] (?:{'|'.join(SECRET_HEADERS)}):).*$",
                          re.IGNORECASE | re.MULTILINE)
LOGGERS = ("uvicorn.access", "uvicorn.error")
"""uvicorn's loggers that write request paths."""


def _redact(match: re.Match[str]) -> str:
    # The name as a query parser reads it (``api%5Fkey`` is ``api_key`` to the service).
    if unquote_plus(match[2]).lower() in SECRET_PARAMS:
        return match[1] + "[redacted]"
    return match[0]


def redact_url(text: str) -> str:
    """``text`` with the value of every secret query parameter replaced."""
    return _PARAM.sub(_redact, text)


def redact_headers(text: str) -> str:
    """``text`` with the value of every logged header line (``< name: value``) that carries
    a credential replaced."""
    return _HEADER_LINE.sub(r"\1 [redacted]", text)


class RedactSecrets(logging.Filter):
    """A filter that redacts secret query parameters in a record's message and arguments,
    and logged header lines that carry credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(("< ", "> ")):
            try:
                message = record.getMessage()
            except (TypeError, ValueError):  # not a format with these arguments: leave it
                message = None
            if message is not None:
                record.msg, record.args = redact_url(redact_headers(message)), ()
                return True
        if isinstance(record.msg, str):
            record.msg = redact_url(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_url(a) if isinstance(a, str) else a
                                for a in record.args)
        return True


def install(loggers: tuple[str, ...] = LOGGERS) -> None:
    """Add one :class:`RedactSecrets` to each of ``loggers`` (once)."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
