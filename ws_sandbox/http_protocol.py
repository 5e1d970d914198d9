"""uvicorn's HTTP/1.1 protocol with deadlines for reading each request and for writing.

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
time the application takes to answer does not count, with two exceptions: a client that
sent ``Expect: 100-continue`` waits for the application to start reading before it sends
the body, and a body that outruns the application (64 KiB buffered) stops being read until
the application reads on; the service's handlers read their bodies first, so neither waits
long there.

The other way round, a client that does not read what it asked for would hold the
connection, and the application's task waiting to write, for good: once the transport's
buffer is full, uvicorn waits for it to drain without a limit. Writing that stays paused
for ``SEND_TIMEOUT`` seconds closes the connection (as a WebSocket that accepts no frame for
that long is closed).

A request that gives both ``Content-Length`` and ``Transfer-Encoding`` is refused with a
``400`` and its connection closed, as RFC 9112 (section 6.1) asks. h11 frames such a body by
its chunks and keeps the connection, so behind a front end that frames it by its length the
bytes after the chunks would be read here as a second request (request smuggling).

With a :class:`~ws_sandbox.connections.ConnectionGate`, a connection past its address's cap
or the service's is answered with a 503 at once and closed; an admitted one leaves the gate
when it closes, after an upgrade as a WebSocket.

Everything else is uvicorn's ``h11`` protocol unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ws_sandbox.connections import (
    LINGER,
    ConnectionGate,
    raw_error_response,
    refusal_response,
)
from ws_sandbox.ws_protocol import BatchingWebSocketProtocol

__all__ = ["RequestDeadlineProtocol", "with_timeouts"]

log = logging.getLogger(__name__)

#: The client's side of the connection while its request is still arriving: before its
#: head is whole, and while its body comes. Any other state: read, or the connection ends.
_ARRIVING = (h11.IDLE, h11.SEND_BODY)

#: Characters of h11's reason for refusing a request that a 400 quotes.
REASON_CHARS = 200


#: Sent to a client whose request head was still incomplete at the deadline.
TIMEOUT_RESPONSE = raw_error_response(408, "Request Timeout", "request_timeout",
                                  "the request took too long to arrive")


class _UnambiguousLength(h11.Connection):
    """h11's server connection, refusing a request whose body's length is told twice, and
    keeping why it refused the last one (:attr:`refused_because`)."""

    refused_because = ""

    def next_event(self) -> Any:
        try:
            event = super().next_event()
            if isinstance(event, h11.Request):
                names = {name.lower() for name, _ in event.headers}
                if b"content-length" in names and b"transfer-encoding" in names:
                    raise h11.RemoteProtocolError(
                        "both Content-Length and Transfer-Encoding", error_status_hint=400)
        except h11.RemoteProtocolError as exc:
            self.refused_because = str(exc)
            raise
        return event


class RequestDeadlineProtocol(H11Protocol):
    """H11Protocol that closes a connection whose request does not arrive in time, or
    that accepts nothing of a response in time."""

    #: Seconds a request may take to arrive; ``None``: no deadline (uvicorn's behaviour).
    request_timeout: float | None = None
    #: Seconds writing may stay paused; ``None``: no limit (uvicorn's behaviour).
    send_timeout: float | None = None
    #: Admits connections; ``None``: every one (uvicorn's behaviour).
    gate: ConnectionGate | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = self.config.h11_max_incomplete_event_size
        self.conn = (_UnambiguousLength(h11.SERVER) if limit is None
                     else _UnambiguousLength(h11.SERVER, limit))
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of the awaited request have arrived
        self._stalled: asyncio.TimerHandle | None = None
        self._admitted: str | None = None  # the address the gate counts this connection for
        self._refused = False  # by the gate: what the client sends is dropped
        self._lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.gate is not None:
            address = self.client[0] if self.client else ""
            if (refusal := self.gate.admit(address)) is not None:
                self._refuse(refusal_response(refusal))
                return
            self._admitted = address
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._writable()
        self._leave_gate()
        if self._lingering and self.gate is not None:
            self._lingering = False
            self.gate.stop_lingering()
        super().connection_lost(exc)

    def _refuse(self, answer: bytes) -> None:
        """Answer and close a connection the gate refused, reading what its client sends
        until it takes the answer (:data:`~ws_sandbox.connections.LINGER`)."""
        assert self.gate is not None
        self._refused = True
        self.transport.write(answer)
        if not self.gate.linger():
            self.transport.close()
            return
        self._lingering = True
        self.transport.write_eof()
        self._deadline = self.loop.call_later(LINGER, self.transport.abort)

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot read: the service's JSON error, saying why (uvicorn's is
        plain text, "Invalid HTTP request received.", which a client's JSON parse of the
        error then failed on)."""
        why = getattr(self.conn, "refused_because", "") or "it could not be read"
        if len(why) > REASON_CHARS:
            why = why[:REASON_CHARS] + "..."
        self.transport.write(raw_error_response(400, "Bad Request", "bad_request",
                                                f"the HTTP request is malformed: {why}"))
        self.transport.close()

    def _leave_gate(self) -> None:
        if self._admitted is not None and self.gate is not None:
            address, self._admitted = self._admitted, None
            self.gate.leave(address)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        waiting_for_head = self.conn.their_state is h11.IDLE
        self._partial = True
        super().data_received(data)
        if not waiting_for_head and self.conn.their_state is h11.IDLE:
            # The end of a body answered early (a 413, say) began the next request here.
            self._arm()
        self._disarm_once_read()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.send_timeout is not None and self._stalled is None:
            self._stalled = self.loop.call_later(self.send_timeout, self._stalled_too_long)

    def resume_writing(self) -> None:
        self._writable()
        super().resume_writing()

    def on_response_complete(self) -> None:
        self._arm()  # the next request's time starts now; a pipelined one may be read below
        super().on_response_complete()
        self._disarm_once_read()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The transport now belongs to the WebSocket protocol: this timer must not close it.
        self._disarm()
        super().handle_websocket_upgrade(event)
        # Its place at the gate too: the WebSocket protocol leaves it once closed.
        successor = self.transport.get_protocol()
        if isinstance(successor, BatchingWebSocketProtocol) and successor.on_lost is None:
            successor.on_lost = self._leave_gate
        else:
            self._leave_gate()  # another server's protocol: it cannot tell us

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

    def _writable(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _stalled_too_long(self) -> None:
        self._stalled = None
        log.debug("closing %s: it read nothing for %s s", self.client, self.send_timeout)
        # Not close(), which would still wait for the buffer to drain. connection_lost
        # follows, which releases the application's wait to write.
        self.transport.abort()

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        head_incomplete = self.conn.their_state is h11.IDLE
        log.debug("closing %s: no whole request within %s s", self.client, self.request_timeout)
        if head_incomplete and self._partial:
            self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()


def with_timeouts(request_timeout: float | None, send_timeout: float | None,
                  gate: ConnectionGate | None = None) -> type[RequestDeadlineProtocol]:
    """The protocol class for uvicorn's ``http=``, with these deadlines (seconds) and this
    gate."""
    return type("RequestDeadlineProtocol", (RequestDeadlineProtocol,),
                {"request_timeout": request_timeout, "send_timeout": send_timeout,
                 "gate": gate})
