"""uvicorn's HTTP/1.1 protocol with a deadline for reading each request.

uvicorn's h11 protocol waits for a request for as long as the client likes. It closes a
connection that stays idle between requests (``timeout_keep_alive``), but any byte cancels
that, and a new connection has no timer at all. So a client that sends half a request line,
or a body a byte a minute, holds a socket and a file descriptor for good, without any
credentials; a few thousand such connections use up the service's descriptors, and then
nothing else can connect, nor can the service open a file or reach the engine.

:class:`RequestDeadlineProtocol` gives every request ``REQUEST_TIMEOUT`` seconds, counted
from the moment the connection may send it (the connection is made, or the previous
response is complete), to arrive whole: its head and its body, or for a WebSocket upgrade
its head (the session's own limits take over from there). Past the deadline the connection
is closed; a client that had sent part of a request head first gets a ``408``, and an
application still reading a body sees the client disconnect (``ClientDisconnect``). The
time the application takes to answer does not count.

Everything else is uvicorn's ``h11`` protocol unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["RequestDeadlineProtocol", "with_request_timeout"]

log = logging.getLogger(__name__)

#: The client's side of the connection while its request is still arriving: before its
#: head is whole, and while its body comes. Any other state: read, or the connection ends.
_ARRIVING = (h11.IDLE, h11.SEND_BODY)

_TIMEOUT_BODY = b"the request took too long to arrive\n"
#: Sent to a client whose request head was still incomplete at the deadline.
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                    % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


class RequestDeadlineProtocol(H11Protocol):
    """H11Protocol that closes a connection whose request does not arrive in time."""

    #: Seconds a request may take to arrive; ``None``: no deadline (uvicorn's behaviour).
    request_timeout: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of the awaited request have arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._partial = True
        super().data_received(data)
        self._disarm_once_read()

    def on_response_complete(self) -> None:
        self._arm()  # the next request's time starts now; a pipelined one may be read below
        super().on_response_complete()
        self._disarm_once_read()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The transport now belongs to the WebSocket protocol: this timer must not close it.
        self._disarm()
        super().handle_websocket_upgrade(event)

    def _arm(self) -> None:
        self._disarm()
        self._partial = bool(self.conn.trailing_data[0])
        if self.request_timeout is not None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _disarm_once_read(self) -> None:
        if self.conn.their_state not in _ARRIVING:
            self._disarm()

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        head_incomplete = self.conn.their_state is h11.IDLE
        log.debug("closing %s: no whole request within %s s", self.client, self.request_timeout)
        if head_incomplete and self._partial:
            self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()


def with_request_timeout(timeout: float | None) -> type[RequestDeadlineProtocol]:
    """The protocol class for uvicorn's ``http=``, with ``timeout`` seconds per request."""
    return type("RequestDeadlineProtocol", (RequestDeadlineProtocol,),
                {"request_timeout": timeout})
