"""``BatchingWebSocketProtocol`` over a real socket: uvicorn in-process, a ``websockets`` client.

The server runs on the test's event loop, so the test calls the application's ASGI ``send``
itself (handed over by a tiny raw ASGI app) and counts the protocol's ``transport.write``
calls. Every test runs on asyncio's loop and on uvloop's, whose transports the service uses.
Every wait is bounded with ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import uvicorn
import uvloop
import websockets
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from uvicorn.protocols.utils import ClientDisconnected
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import uvicorn_in_process
from ws_sandbox import frames as fr
from ws_sandbox.websocket import WebSocketSink, close_quietly
from ws_sandbox.ws_protocol import (
    ABORT,
    MAX_UNREAD_BYTES,
    READ_AHEAD_BYTES,
    READ_AHEAD_MESSAGES,
    SEND_MANY,
    BatchingWebSocketProtocol,
)

BOUND = 10.0
"""Generous bound on any single wait (seconds)."""

TEXTS = ['{"n":1}', "héllo wörld — ünïcødé €", "日本語 😀 last"]

pytestmark = pytest.mark.event_loops


class CountingTransport:
    """A transport that records every ``write`` and passes everything to the real one.

    A wrapper, not a patched method: uvloop's transports take no new attributes.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.wrapped = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self.wrapped.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class CountingProtocol(BatchingWebSocketProtocol):
    """The batching protocol, recording every ``transport.write`` of its connection."""

    instances: ClassVar[list[CountingProtocol]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        counting = CountingTransport(self.transport)
        self.transport = counting  # type: ignore[assignment]  # duck-typed on purpose
        self.writes = counting.writes
        self.queued = 0
        self.queued_changed = asyncio.Event()
        CountingProtocol.instances.append(self)

    def send_receive_event_to_app(self) -> None:
        super().send_receive_event_to_app()
        self.queued += 1
        self.queued_changed.set()

    async def wait_queued(self, n: int) -> None:
        """Until ``n`` client messages have been queued for the application in all."""
        async with asyncio.timeout(BOUND):
            while self.queued < n:
                self.queued_changed.clear()
                await self.queued_changed.wait()


@dataclass
class Connection:
    """One WebSocket connection as the application sees it."""

    scope: Scope
    receive: Receive
    send: Send
    websocket: WebSocket
    """Starlette's view of the connection, already accepted through it."""
    release: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Server:
    """A running uvicorn server and the connections its application accepted."""

    port: int
    connections: asyncio.Queue[Connection]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def next_connection(self) -> Connection:
        async with asyncio.timeout(BOUND):
            return await self.connections.get()


@contextlib.asynccontextmanager
async def running_server(ws: type[asyncio.Protocol] | str) -> AsyncIterator[Server]:
    """Run uvicorn with ``ws`` on a free loopback port; the app accepts and hands over."""
    connections: asyncio.Queue[Connection] = asyncio.Queue()
    handed: list[Connection] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "websocket"
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        conn = Connection(scope, receive, send, websocket)
        handed.append(conn)
        connections.put_nowait(conn)
        await conn.release.wait()

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, ws=ws, ws_per_message_deflate=False,
        lifespan="off", log_level="warning", timeout_graceful_shutdown=5,
    )
    async with uvicorn_in_process(config, BOUND) as port:
        try:
            yield Server(port, connections)
        finally:
            for conn in handed:
                conn.release.set()


@pytest.fixture
async def batching() -> AsyncIterator[Server]:
    CountingProtocol.instances.clear()
    async with running_server(CountingProtocol) as server:
        yield server
    CountingProtocol.instances.clear()


@pytest.fixture
async def plain() -> AsyncIterator[Server]:
    async with running_server("websockets-sansio") as server:
        yield server


def the_protocol() -> CountingProtocol:
    assert len(CountingProtocol.instances) == 1
    return CountingProtocol.instances[0]


async def recv_text(client: ClientConnection) -> str:
    async with asyncio.timeout(BOUND):
        message = await client.recv()
    assert isinstance(message, str), f"expected a text message, got {message!r}"
    return message


async def assert_no_message(client: ClientConnection, wait: float = 0.2) -> None:
    """Nothing more arrives within ``wait`` (a small grace, only to catch extra messages)."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(wait):
            await client.recv()


def frame_length(payload: bytes) -> int:
    """Bytes of one unmasked, uncompressed server frame carrying ``payload``."""
    n = len(payload)
    return n + (2 if n < 126 else 4 if n < 1 << 16 else 10)


async def test_each_run_is_on_the_loop_it_names(request: pytest.FixtureRequest) -> None:
    assert request.node.callspec.id in ("asyncio", "uvloop")
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert on_uvloop is (request.node.callspec.id == "uvloop")


# ----------------------------------------------------------------------------- extension


async def test_extension_is_advertised_in_the_scope(batching: Server) -> None:
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        assert SEND_MANY in conn.scope["extensions"]
        assert conn.scope["extensions"][SEND_MANY] == {}
        # uvicorn's own extension is still there: the scope was extended, not replaced.
        assert "websocket.http.response" in conn.scope["extensions"]
        await client.close()


async def test_plain_uvicorn_protocol_has_no_extension(plain: Server) -> None:
    async with connect(plain.url) as client:
        conn = await plain.next_connection()
        assert SEND_MANY not in conn.scope["extensions"]
        await client.close()


# ----------------------------------------------------------------------------- batches


async def test_batch_arrives_as_separate_text_messages_in_one_write(batching: Server) -> None:
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        protocol = the_protocol()
        payloads = [t.encode() for t in TEXTS]
        before = len(protocol.writes)
        await conn.send({"type": SEND_MANY, "texts": payloads})
        batch_writes = protocol.writes[before:]
        assert len(batch_writes) == 1, f"expected one transport.write, got {len(batch_writes)}"
        # That one write carries all three frames, nothing more, nothing less.
        assert len(batch_writes[0]) == sum(frame_length(p) for p in payloads)
        assert [await recv_text(client) for _ in TEXTS] == TEXTS
        await assert_no_message(client)
        await client.close()


async def test_separate_sends_cost_one_write_each(batching: Server) -> None:
    """The control for the counter: uvicorn's ``websocket.send`` writes per message."""
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        protocol = the_protocol()
        before = len(protocol.writes)
        for text in TEXTS:
            await conn.send({"type": "websocket.send", "text": text})
        assert len(protocol.writes) - before == len(TEXTS)
        assert [await recv_text(client) for _ in TEXTS] == TEXTS
        await client.close()


async def test_batch_accepts_bytearray_and_memoryview_items(batching: Server) -> None:
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        items: list[Any] = [bytearray(b"first"), memoryview("sécond".encode())]
        await conn.send({"type": SEND_MANY, "texts": items})
        assert [await recv_text(client) for _ in items] == ["first", "sécond"]
        await client.close()


async def test_large_batch_keeps_order_and_one_write(batching: Server) -> None:
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        protocol = the_protocol()
        texts = [f"message {i} " + "x" * (i * 997 % 70_000) for i in range(40)]
        before = len(protocol.writes)
        await conn.send({"type": SEND_MANY, "texts": [t.encode() for t in texts]})
        assert len(protocol.writes) - before == 1
        assert len(protocol.writes[-1]) == sum(frame_length(t.encode()) for t in texts)
        assert [await recv_text(client) for _ in texts] == texts
        await client.close()


async def test_send_and_close_still_work_after_a_batch(batching: Server) -> None:
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        await conn.send({"type": SEND_MANY, "texts": [b"one", b"two"]})
        await conn.send({"type": "websocket.send", "text": "three"})
        await conn.send({"type": "websocket.send", "bytes": b"\x00four"})
        await conn.send({"type": SEND_MANY, "texts": [b"five"]})
        assert await recv_text(client) == "one"
        assert await recv_text(client) == "two"
        assert await recv_text(client) == "three"
        async with asyncio.timeout(BOUND):
            assert await client.recv() == b"\x00four"
        assert await recv_text(client) == "five"

        await conn.send({"type": "websocket.close", "code": 4001, "reason": "bye"})
        async with asyncio.timeout(BOUND):
            await client.wait_closed()
        assert client.close_code == 4001
        assert client.close_reason == "bye"


# ----------------------------------------------------------------------------- read-ahead


def is_reading(protocol: CountingProtocol) -> bool:
    transport = protocol.transport
    assert isinstance(transport, CountingTransport)
    return transport.wrapped.is_reading()


async def receive_text(conn: Connection) -> str:
    async with asyncio.timeout(BOUND):
        message = await conn.receive()
    assert message["type"] == "websocket.receive", message
    text = message["text"]
    assert isinstance(text, str)
    return text


async def test_small_messages_taken_at_once_never_pause_reading(batching: Server) -> None:
    """uvicorn stops and restarts reading around every message; within the bounds we don't."""
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        protocol = the_protocol()
        for i in range(20):
            await client.send(f"cell {i}")
            await protocol.wait_queued(i + 1)
            assert is_reading(protocol), f"reading paused after message {i}"
            assert protocol.read_paused is False
            assert await receive_text(conn) == f"cell {i}"
        await client.close()


async def test_a_client_that_outruns_the_application_is_paused_at_the_bound(
        batching: Server) -> None:
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        protocol = the_protocol()
        texts = [f"m{i}" for i in range(READ_AHEAD_MESSAGES + 4)]
        for i, text in enumerate(texts[:READ_AHEAD_MESSAGES]):
            await client.send(text)
            await protocol.wait_queued(i + 1)
            # Reading goes on while fewer than READ_AHEAD_MESSAGES wait, and stops at that.
            assert is_reading(protocol) is (i + 1 < READ_AHEAD_MESSAGES), i
        assert protocol.read_paused is True
        for text in texts[READ_AHEAD_MESSAGES:]:
            await client.send(text)  # into the socket's buffers: nobody reads them yet
        # A grace in which a protocol that still read would queue them (only to catch that).
        await asyncio.sleep(0.2)
        assert protocol.queued == READ_AHEAD_MESSAGES
        assert protocol.queue.qsize() == READ_AHEAD_MESSAGES
        assert not is_reading(protocol)
        # The application catches up: reading resumes and every message arrives in order.
        assert [await receive_text(conn) for _ in texts] == texts
        assert is_reading(protocol)
        assert protocol.read_paused is False
        await client.close()


async def test_a_long_message_pauses_reading_at_once(batching: Server) -> None:
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        protocol = the_protocol()
        await client.send("x" * READ_AHEAD_BYTES)  # at the bound: still read ahead
        await protocol.wait_queued(1)
        assert is_reading(protocol)
        long = "y" * (READ_AHEAD_BYTES + 1)
        await client.send(long)
        await protocol.wait_queued(2)
        assert not is_reading(protocol)
        assert protocol.read_paused is True
        assert await receive_text(conn) == "x" * READ_AHEAD_BYTES
        assert not is_reading(protocol), "resumed with a message still waiting"
        assert await receive_text(conn) == long
        assert is_reading(protocol)
        await client.close()


# ----------------------------------------------------------------------------- failures


async def test_batch_after_client_closed_raises(batching: Server) -> None:
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        await client.close()
    async with asyncio.timeout(BOUND):
        message = await conn.receive()
    assert message["type"] == "websocket.disconnect"
    protocol = the_protocol()
    before = len(protocol.writes)
    with pytest.raises(ClientDisconnected):
        async with asyncio.timeout(BOUND):
            await conn.send({"type": SEND_MANY, "texts": [b"too late"]})
    assert len(protocol.writes) == before, "a batch for a gone client must write nothing"


async def test_batch_after_connection_dropped_raises(batching: Server) -> None:
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        client.transport.abort()  # no closing handshake: the TCP connection just ends
        async with asyncio.timeout(BOUND):
            message = await conn.receive()
        assert message["type"] == "websocket.disconnect"
        assert message["code"] in (1005, 1006)  # uvicorn: 1005 once the handshake completed
        with pytest.raises(ClientDisconnected):
            async with asyncio.timeout(BOUND):
                await conn.send({"type": SEND_MANY, "texts": [b"a", b"b"]})


async def test_batch_after_the_app_closed_raises(batching: Server) -> None:
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        await conn.send({"type": "websocket.close", "code": 1000})
        protocol = the_protocol()
        before = len(protocol.writes)
        with pytest.raises(ClientDisconnected):
            async with asyncio.timeout(BOUND):
                await conn.send({"type": SEND_MANY, "texts": [b"after close"]})
        assert len(protocol.writes) == before
        async with asyncio.timeout(BOUND):
            await client.wait_closed()
        assert client.close_code == 1000


async def test_a_batch_with_a_str_item_is_refused_whole(batching: Server) -> None:
    """Items must be bytes; a bad one is caught before any item is queued or written."""
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        protocol = the_protocol()
        before = len(protocol.writes)
        with pytest.raises(TypeError, match="UTF-8 bytes"):
            await conn.send({"type": SEND_MANY, "texts": [b"first", "second"]})
        assert protocol.writes[before:] == []
        await conn.send({"type": SEND_MANY, "texts": [b"next"]})
        assert await recv_text(client) == "next"  # nothing of the refused batch came along
        await client.close()


async def test_other_messages_still_go_to_uvicorn(batching: Server) -> None:
    """An unknown message type is uvicorn's error, not silently swallowed by the subclass."""
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        with pytest.raises(RuntimeError, match=r"websocket\.bogus"):
            await conn.send({"type": "websocket.bogus"})
        await conn.send({"type": "websocket.send", "text": "still open"})
        assert await recv_text(client) == "still open"
        await client.close()


# ----------------------------------------------------------------------------- WebSocketSink


def sample_frames() -> list[fr.ServerFrame]:
    return [
        fr.Stream(id="c1", name="stdout", text="héllo €\n"),
        fr.Stream(id="c1", name="stderr", text="warn 😀\n"),
        fr.Result(id="c1", status="success", exit_code=0, execution_time_ms=1.5,
                  memory_used_mb=2.0, error=None),
    ]


async def test_sink_fallback_sends_one_message_per_frame(plain: Server) -> None:
    async with connect(plain.url) as client:
        conn = await plain.next_connection()
        assert SEND_MANY not in conn.scope["extensions"]
        frames = sample_frames()
        await WebSocketSink(conn.websocket, None, close_timeout=BOUND).send_frames(frames)
        received = [await recv_text(client) for _ in frames]
        assert [fr.decode_server(r.encode()) for r in received] == frames
        await assert_no_message(client)
        await client.close()


async def test_sink_uses_the_extension_in_one_write(batching: Server) -> None:
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        protocol = the_protocol()
        frames = sample_frames()
        before = len(protocol.writes)
        await WebSocketSink(conn.websocket, conn.send, close_timeout=BOUND).send_frames(frames)
        assert len(protocol.writes) - before == 1
        received = [await recv_text(client) for _ in frames]
        assert [fr.decode_server(r.encode()) for r in received] == frames
        await assert_no_message(client)
        await client.close()


# ----------------------------------------------------------------- requests websockets refused


async def raw_exchange(server: Server, request: bytes) -> bytes:
    """Send ``request`` on a plain socket; everything the server sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        async with asyncio.timeout(BOUND):
            return await reader.read()  # to EOF: the server must close
    finally:
        writer.close()


UPGRADE = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nHost: x\r\n")


@pytest.mark.parametrize(("request_bytes", "status"), [  # too long a line, too many headers
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + UPGRADE + b"\r\n", b"414"),
    (b"GET / HTTP/1.1\r\n" + UPGRADE + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
    (b"GET / HTTP/1.1\r\n" + UPGRADE + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
     + b"\r\n", b"431"),
])
async def test_a_request_websockets_refused_is_answered_and_closed(
        batching: Server, request_bytes: bytes, status: bytes) -> None:
    """uvicorn's HTTP parser takes these and hands them over for the upgrade, where
    websockets' stricter one refuses them; uvicorn alone then never answered and never
    closed (the test would time out)."""
    answer = await raw_exchange(batching, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:100]
    # The server goes on serving.
    async with connect(batching.url) as client:
        conn = await batching.next_connection()
        await client.send("still here")
        assert await receive_text(conn) == "still here"


async def raw_upgrade(server: Server) -> socket.socket:
    """A non-blocking socket that asked for a WebSocket upgrade, with a small receive buffer
    (a peer that reads little soon fills it)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(sock, (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    except BaseException:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def deaf_peer(server: Server) -> AsyncIterator[Connection]:
    """A WebSocket whose peer never reads after the upgrade, once the server's send buffer
    and the peer's window are full: the application's view of it."""
    sock = await raw_upgrade(server)
    try:
        conn = await server.next_connection()  # and the peer never reads again
        async with asyncio.timeout(BOUND):
            with contextlib.suppress(TimeoutError):
                while True:  # until the peer's window and our buffer are full
                    async with asyncio.timeout(0.5):
                        await conn.websocket.send_text("x" * 60_000)
        yield conn
    finally:
        sock.close()


async def assert_cut(conn: Connection) -> None:
    async with asyncio.timeout(BOUND):
        gone = await conn.receive()
    assert gone["type"] == "websocket.disconnect"  # the connection is gone, not closing


async def test_a_peer_that_reads_nothing_is_cut_when_a_close_times_out(
        batching: Server) -> None:
    """uvicorn writes a close frame only once the peer took what came before, and closes a
    transport only once its buffer is written: for a peer that stopped reading, a close
    waited for good (and held the session that asked for it). ``close_quietly`` gives the
    close its timeout, then cuts the connection through :data:`ABORT`."""
    async with deaf_peer(batching) as conn:
        assert callable(conn.scope["extensions"][ABORT]["abort"])
        start = time.monotonic()
        async with asyncio.timeout(BOUND):
            await close_quietly(conn.websocket, 1008, "client too slow", timeout=0.5)
        assert time.monotonic() - start < BOUND / 2
        await assert_cut(conn)


async def test_a_close_with_no_time_cuts_a_peer_that_takes_nothing(batching: Server) -> None:
    """A Jupyter kernel's connection that took nothing for SEND_TIMEOUT is closed with no
    time (``close(..., at_once=True)``): cut at once, since it has no room for the frame."""
    async with deaf_peer(batching) as conn:
        start = time.monotonic()
        await close_quietly(conn.websocket, 1008, "too slow", timeout=0)
        assert time.monotonic() - start < BOUND / 4
        await assert_cut(conn)


@pytest.mark.event_loops
async def test_a_denied_upgrade_is_not_logged_as_an_error() -> None:
    """A refused upgrade (a missing key, a foreign origin) is answered with the denial
    response; uvicorn logged it as "ASGI callable returned without completing handshake.",
    an ERROR, so anyone without a key could fill the error log (found by a security
    review)."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": b"no"})

    config = uvicorn.Config(app, host="127.0.0.1", port=0, ws=BatchingWebSocketProtocol,
                            lifespan="off", log_level="info", timeout_graceful_shutdown=5)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.INFO)
    logger = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not propagate
    logger.addHandler(handler)
    try:
        async with uvicorn_in_process(config, BOUND) as port:
            for _ in range(3):
                with pytest.raises(websockets.InvalidStatus) as refused:
                    async with asyncio.timeout(BOUND):
                        await connect(f"ws://127.0.0.1:{port}/")
                assert refused.value.response.status_code == 403
                assert refused.value.response.body == b"no"
    finally:
        logger.removeHandler(handler)
    assert any("Uvicorn running" in r.getMessage() for r in records)  # the handler hears
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert errors == []


async def test_a_peer_that_pings_and_reads_nothing_is_cut(batching: Server) -> None:
    """uvicorn writes every pong at once, outside flow control, and keeps reading: a peer
    sending pings and reading nothing grew the service without bound (a review). Past
    MAX_UNREAD_BYTES waiting for it, the connection is cut."""
    loop = asyncio.get_running_loop()
    sock = await raw_upgrade(batching)
    try:
        conn = await batching.next_connection()
        ping = bytes([0x89, 0x80 | 125]) + bytes(4) + bytes(125)  # masked, a zero mask
        batch = ping * 1000
        sent = 0
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(BOUND):
                while sent < 4 * MAX_UNREAD_BYTES:
                    await loop.sock_sendall(sock, batch)
                    sent += len(batch)
        await assert_cut(conn)
        assert sent < 4 * MAX_UNREAD_BYTES  # cut long before the pings ran out
    finally:
        sock.close()


async def test_a_text_message_that_is_not_utf8_closes_with_1007_and_no_error_log(
        batching: Server) -> None:
    """A text message must be UTF-8 (RFC 6455 closes with 1007 otherwise). uvicorn did
    close, but logged an ERROR with a traceback each time: anyone could fill the error log
    (a review). The close stays; the record is one line at INFO, and the application is
    told the client went away with 1007."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not propagate
    handler, level = Keep(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for _ in range(2):
            async with asyncio.timeout(BOUND):
                async with connect(batching.url) as client:
                    conn = await batching.next_connection()
                    await client.send("fine ✓")
                    assert (await conn.receive())["text"] == "fine ✓"
                    await client.send(b'{"type":"execute","code":"\xff"}', text=True)
                    gone = await conn.receive()
                    with pytest.raises(websockets.ConnectionClosedError):
                        await client.recv()
            assert gone == {"type": "websocket.disconnect", "code": 1007,
                            "reason": "invalid UTF-8 in a text message"}
            assert client.close_code == 1007
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    said = [r for r in records if "UTF-8" in r.getMessage()]
    assert len(said) == 2 and all(r.levelno == logging.INFO and r.exc_info is None
                                  for r in said)


async def test_a_bad_text_message_with_the_peers_close_in_one_read_logs_no_error(
        batching: Server, caplog: pytest.LogCaptureFixture) -> None:
    """With the peer's close in the same read, websockets is closing already when the bad
    message comes to be refused: the 1007 close raised InvalidState, which uvloop logged as
    a fatal transport error with its traceback, and the peer's close went unanswered (a
    review). The message is dropped; the peer's close is answered."""
    caplog.set_level(logging.INFO)
    async with asyncio.timeout(BOUND):
        async with connect(batching.url) as client:
            conn = await batching.next_connection()
            protocol = client.protocol
            protocol.send_text(b'{"type":"execute\xff"}')
            protocol.send_close(1001, "bye")
            client.transport.write(b"".join(protocol.data_to_send()))
            gone = await conn.receive()
            await client.wait_closed()
    assert gone == {"type": "websocket.disconnect", "code": 1001, "reason": "bye"}
    assert protocol.close_rcvd is not None and protocol.close_rcvd.code == 1001
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
