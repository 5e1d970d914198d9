"""uvicorn's WebSocket protocol with one ASGI extension: several messages in one write.

A short cell ends with two frames, ``stream`` and ``result``, produced together. Sent as two
ASGI ``websocket.send`` messages they cost two socket writes and wake the client twice; the
write to a loopback or LAN socket is the most expensive step the service takes per frame.
This protocol advertises the extension :data:`SEND_MANY` in the connection's scope and
accepts ``{"type": SEND_MANY, "texts": [b"...", ...]}``: every item becomes one text message
(UTF-8 bytes, already encoded) and all of them leave in one ``transport.write``.

It also reads ahead a little. uvicorn stops reading the socket after every message it queues
for the application and starts again once the application took it: two ``epoll_ctl`` system
calls per client frame, on every cell's path. This protocol keeps reading while fewer than
:data:`READ_AHEAD_MESSAGES` messages wait and the message is at most
:data:`READ_AHEAD_BYTES`; past either bound it stops reading as uvicorn does, so a client that
outruns the application still meets backpressure with a bounded buffer.

It cuts a peer that sends pings and reads no pongs (:data:`MAX_UNREAD_BYTES`). It closes a
text message that is not UTF-8 with 1007, as uvicorn does, but logs it in one line at INFO
(uvicorn logs an ERROR with a traceback, which any client could repeat). And it
answers an upgrade request that websockets could not parse (see
:meth:`BatchingWebSocketProtocol.data_received`), which uvicorn leaves hanging; and it offers
:data:`ABORT`, so that the application can cut a connection whose peer takes nothing (a
close frame would wait for that peer for good).

Everything else is uvicorn's ``websockets-sansio`` protocol unchanged. An application that
does not see the extension in ``scope["extensions"]`` (another server, a test client) sends
message by message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request
from websockets.protocol import State

from ws_sandbox.asgi_extensions import ABORT, SEND_MANY

__all__ = ["ABORT", "MAX_UNREAD_BYTES", "READ_AHEAD_BYTES", "READ_AHEAD_MESSAGES", "SEND_MANY",
           "BatchingWebSocketProtocol"]

READ_AHEAD_MESSAGES = 8
"""Messages that may wait for the application while the socket is still read."""
READ_AHEAD_BYTES = 64 * 1024
"""A longer message stops the reading at once, as in uvicorn."""
MAX_UNREAD_BYTES = 8 * 1024 * 1024
"""What may wait in the write buffer for a peer that pings: past it, the connection is cut.
uvicorn writes each pong at once, outside flow control, and keeps reading: a peer that sent
pings and read nothing grew the service by 40 MiB a second, for as long as the connection
lived (a review). The application's own sends wait for room, so they never come near it."""


class BatchingWebSocketProtocol(WebSocketsSansIOProtocol):
    """``websockets-sansio`` plus :data:`SEND_MANY`."""

    #: Called once when the connection is gone: the HTTP protocol hands over its place at
    #: the connection gate (:mod:`ws_sandbox.connections`) at the upgrade.
    on_lost: Callable[[], None] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        """uvicorn's, then :attr:`on_lost`."""
        try:
            super().connection_lost(exc)
        finally:
            if (on_lost := self.on_lost) is not None:
                self.on_lost = None
                on_lost()

    def handle_connect(self, event: Request) -> None:
        """Accept as uvicorn does, then advertise the extension to the application."""
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # None: the handshake was refused
            scope["extensions"][SEND_MANY] = {}
            scope["extensions"][ABORT] = {"abort": self.abort}

    def abort(self) -> None:
        """Cut the connection now (:data:`ABORT`); uvicorn then tells the application it is
        gone (``websocket.disconnect``, code 1006) and wakes a send waiting for it."""
        if not self.disconnected:
            self.transport.abort()

    def handle_ping(self) -> None:
        """uvicorn's pong, and a cut for a peer that pings without reading."""
        super().handle_ping()
        if self.transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
            self.abort()

    def data_received(self, data: bytes) -> None:
        """uvicorn's, plus an answer to an upgrade request that websockets refused.

        A request line or header line that is too long (websockets queues a 414 or 431), or
        bytes that are not HTTP at all (it queues nothing), never become a request event,
        and uvicorn waits for one: the connection stayed open, unanswered, for good (and a
        shutdown then failed on it). Here whatever websockets queued is sent and the
        connection closed, marked as closed so that a shutdown leaves it alone.
        """
        super().data_received(data)
        if self.conn.handshake_exc is not None and not self.close_sent:
            self.handshake_complete = self.close_sent = True
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()

    def send_receive_event_to_app(self) -> None:
        """Queue a complete message for the application; pause reading only past the bounds.

        uvicorn pauses after every message unless ``read_paused`` is set, and its
        ``receive`` resumes a paused transport once the queue is empty (asyncio's
        ``resume_reading`` of a transport that reads is a no-op). A text message is queued
        here, decoded once, and reading pauses only past the bounds; a binary one goes to
        uvicorn with the flag raised around its call within the bounds (and restored after
        it), so the flag still tells whether reading is paused.
        """
        within = (self.queue.qsize() < READ_AHEAD_MESSAGES - 1
                  and sum(len(part) for part in self.frames) <= READ_AHEAD_BYTES)
        if self.curr_msg_data_type == "text" and not self.close_sent:
            parts, self.frames = self.frames, []
            try:
                text = (parts[0] if len(parts) == 1 else b"".join(parts)).decode()
            except UnicodeDecodeError:
                self._not_utf8()
                return
            self.queue.put_nowait({"type": "websocket.receive", "text": text})
            if not within and not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
        elif within:
            paused, self.read_paused = self.read_paused, True
            try:
                super().send_receive_event_to_app()
            finally:
                self.read_paused = paused
        else:
            super().send_receive_event_to_app()

    def _not_utf8(self) -> None:
        """A text message that is not UTF-8: closed with 1007, as uvicorn does, but logged in
        one INFO line (uvicorn logs an ERROR with a traceback, each time a client likes)."""
        if self.conn.state is not State.OPEN:
            return  # the peer's close came in the same read: it ends the connection
        peer = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
        self.logger.info("%sa text message that is not UTF-8: closing with 1007", peer)
        self.conn.send_close(1007, "invalid UTF-8 in a text message")
        self.handle_parser_exception()

    async def send(self, message: ASGISendEvent) -> None:
        """Send a batch in one write; any other message goes to uvicorn."""
        raw = cast(Mapping[str, Any], message)
        if raw["type"] != SEND_MANY:
            await super().send(message)
            if (raw["type"] == "websocket.http.response.body" and not raw.get("more_body")
                    and self.close_sent):
                # A denial response answers the handshake as a close does; uvicorn counts
                # only accept and close, and logged "ASGI callable returned without
                # completing handshake." (an ERROR) for every refused upgrade.
                self.handshake_complete = True
            return
        texts = raw["texts"]
        if not all(isinstance(text, (bytes, bytearray, memoryview)) for text in texts):
            # Checked before anything is queued: a batch goes out whole or not at all.
            raise TypeError(f"{SEND_MANY}: every item of 'texts' must be UTF-8 bytes")
        await self.writable.wait()
        if (self.disconnected or self.close_sent or not self.handshake_complete
                or self.initial_response is not None):
            raise ClientDisconnected()
        try:
            for text in texts:
                self.conn.send_text(bytes(text))
        except InvalidState:
            raise ClientDisconnected() from None
        self.transport.write(b"".join(self.conn.data_to_send()))
