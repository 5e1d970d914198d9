"""``RequestDeadlineProtocol`` over a real socket: uvicorn in-process, raw clients.

Each request must arrive whole within the deadline; what the application does afterwards is
not timed, and a WebSocket is left alone once upgraded. A client that reads nothing of a
response for the send deadline is disconnected. Every test runs on asyncio's loop
and on uvloop's. Every wait is bounded with ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from tests.conftest import uvicorn_in_process, wait_for
from ws_sandbox.connections import ConnectionGate
from ws_sandbox.http_protocol import TIMEOUT_RESPONSE, with_timeouts
from ws_sandbox.ws_protocol import BatchingWebSocketProtocol

DEADLINE = 0.4
"""The request deadline under test (seconds)."""
BOUND = 10.0
"""Generous bound on any single wait (seconds)."""

pytestmark = pytest.mark.event_loops


CHUNK = 512 << 10
BIG = 64 * CHUNK
"""``/big``'s response, in 64 pieces: more than the kernel's buffers hold."""


class App:
    """``/echo`` answers with the body it read, ``/slow`` after 2 deadlines, ``/big`` with
    :data:`BIG` bytes, ``/reject`` with a 413 before reading the body; ``/ws`` echoes."""

    def __init__(self) -> None:
        self.disconnects = 0
        self.big_sent = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            websocket = WebSocket(scope, receive, send)
            await websocket.accept()
            while True:
                await websocket.send_text(await websocket.receive_text())
        request = Request(scope, receive)
        if scope["path"] == "/big":
            # Piece by piece: uvicorn waits for the buffer to drain before each next one.
            pieces = (b"x" * CHUNK for _ in range(BIG // CHUNK))
            await StreamingResponse(pieces)(scope, receive, send)
            self.big_sent.set()
            return
        if scope["path"] == "/reject":
            await PlainTextResponse("too large", status_code=413)(scope, receive, send)
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(2 * DEADLINE)
            body = b"slow"
        else:
            try:
                body = await request.body()
            except ClientDisconnect:
                self.disconnects += 1
                return
        await PlainTextResponse(body)(scope, receive, send)


@contextlib.asynccontextmanager
async def running_server(timeout: float | None, send_timeout: float | None = DEADLINE,
                         gate: ConnectionGate | None = None
                         ) -> AsyncIterator[tuple[int, App]]:
    app = App()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=with_timeouts(timeout, send_timeout, gate),
        ws=BatchingWebSocketProtocol, lifespan="off", log_level="warning",
        timeout_graceful_shutdown=1)
    async with uvicorn_in_process(config, BOUND) as port:
        yield port, app


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, App]]:
    async with running_server(DEADLINE) as running:
        yield running


async def read_until_closed(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (monotonic).

    A reset counts as the close: a byte the client wrote as the server closed makes the
    server's kernel answer with one."""
    data = b""
    async with asyncio.timeout(BOUND):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                data += chunk
    return data, time.monotonic()


async def test_a_request_head_that_never_ends_gets_a_408(server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head goes on
    data, closed = await read_until_closed(reader)
    assert data == TIMEOUT_RESPONSE
    assert DEADLINE * 0.9 <= closed - start < BOUND
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed(server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    data, closed = await read_until_closed(reader)
    assert data == b""
    assert DEADLINE * 0.9 <= closed - start < BOUND
    writer.close()


async def test_a_trickling_body_is_cut_off(server: tuple[int, App]) -> None:
    port, app = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    for _ in range(3):  # bytes keep coming, but the body is never whole in time
        await asyncio.sleep(DEADLINE / 4)  # the last byte comes before the deadline
        writer.write(b"d")
    data, _ = await read_until_closed(reader)
    assert data == b""  # the application was still reading: nothing was answered
    async with asyncio.timeout(BOUND):
        while app.disconnects != 1:  # the application saw the client go
            await asyncio.sleep(0.01)
    writer.close()


async def test_the_application_s_own_time_is_not_counted(server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data, _ = await read_until_closed(reader)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nslow")
    writer.close()


async def test_each_request_on_a_kept_connection_gets_its_own_deadline(
        server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in range(3):  # whole requests, each in time, together longer than one deadline
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n%02d" % n)
        async with asyncio.timeout(BOUND):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert await reader.readexactly(2) == b"%02d" % n
        await asyncio.sleep(DEADLINE / 2)
    start = time.monotonic()
    writer.write(b"GET /echo HTTP/1.1\r\n")  # then a request that never ends
    data, closed = await read_until_closed(reader)
    assert data == TIMEOUT_RESPONSE
    assert DEADLINE * 0.4 <= closed - start < BOUND  # the deadline began at the last response
    writer.close()


async def test_an_upgraded_websocket_outlives_the_deadline(server: tuple[int, App]) -> None:
    port, _ = server
    async with asyncio.timeout(BOUND):
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await asyncio.sleep(3 * DEADLINE)
            await ws.send("still here")
            assert await ws.recv() == "still here"


async def test_no_deadline_when_the_timeout_is_none() -> None:
    async with running_server(None) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3 * DEADLINE):
                await reader.read(1)
        writer.write(b"\r\n")  # the head ends late, and is still answered
        async with asyncio.timeout(BOUND):
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200 ")
        writer.close()


async def test_a_client_that_reads_nothing_is_disconnected(server: tuple[int, App]) -> None:
    port, app = server
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(BOUND):  # the application's write gave up: it is not stuck
        await app.big_sent.wait()  # while the client has read nothing
    received = 0
    with contextlib.suppress(ConnectionResetError):  # the server aborted the connection
        async with asyncio.timeout(BOUND):
            while chunk := await reader.read(1 << 20):
                received += len(chunk)
    assert received < BIG  # cut off
    writer.close()


async def test_a_body_that_ends_after_an_early_answer_starts_the_next_deadline(
        server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /reject HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    async with asyncio.timeout(BOUND):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    await asyncio.sleep(DEADLINE / 2)
    start = time.monotonic()
    writer.write(b"cd")  # the rest of that body; no byte of another request follows
    data, closed = await read_until_closed(reader)
    assert data == b"too large"  # closed without a 408: no request had begun
    assert DEADLINE * 0.9 <= closed - start < BOUND  # counted from the body's end
    writer.close()


@pytest.mark.parametrize("encoding", [b"chunked", b"Chunked", b"gzip, chunked"])
async def test_a_body_whose_length_is_told_twice_is_refused_and_the_connection_closed(
        server: tuple[int, App], encoding: bytes) -> None:
    """Content-Length and Transfer-Encoding together (RFC 9112, 6.1: reject, or close after
    answering). h11 framed the body by its chunks and kept the connection, so the bytes
    after the chunks (here a whole GET) were answered as a second request; a front end that
    frames by the length would pass them on as the first one's body (request smuggling)."""
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hidden = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + hidden
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                 b"Transfer-Encoding: %s\r\n\r\n%s" % (len(body), encoding, body))
    data, _ = await read_until_closed(reader)
    assert data.startswith(b"HTTP/1.1 400 "), data
    assert data.count(b"HTTP/1.1 ") == 1, data  # nothing answered the hidden request
    error = json.loads(data.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "bad_request"
    assert error["message"] in (
        "the HTTP request is malformed: both Content-Length and Transfer-Encoding",
        "the HTTP request is malformed: Only Transfer-Encoding: chunked is supported"), error
    writer.close()


@pytest.mark.parametrize(("head", "why"), [
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", "Content-Length"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     "Content-Length"),
    (b"GET /echo HTTP/1.1\r\n\r\n", "Host"),
    (b"GET /echo HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n", "malformed"),
])
async def test_a_request_h11_cannot_read_gets_a_json_error_saying_why(
        server: tuple[int, App], head: bytes, why: str) -> None:
    """uvicorn answered these with plain text, "Invalid HTTP request received.", where every
    other error is the service's JSON body (a README walkthrough): h11's reason, in JSON."""
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    data, _ = await read_until_closed(reader)
    status, _, body = data.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 ") and b"application/json" in status, data
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request"
    assert error["message"].startswith("the HTTP request is malformed: "), error
    assert why.lower() in error["message"].lower(), error
    writer.close()


async def test_a_body_with_one_length_is_still_read(server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Connection: close\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    data, _ = await read_until_closed(reader)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nok"), data
    writer.close()


async def refused_at_once(port: int, source: str = "127.0.0.1") -> dict[str, object]:
    """Connect from ``source`` and read until closed: the refusal's JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=(source, 0))
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    data, _ = await read_until_closed(reader)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), data
    assert b"retry-after: 1" in head and b"connection: close" in head, data
    error = json.loads(body)["error"]
    assert isinstance(error, dict)
    return error


async def test_connections_past_an_address_s_cap_are_refused_at_once_and_closed() -> None:
    """One address held as many connections as it liked, each half-sent request reconnected
    as its deadline closed it, until the service's descriptors ran out and nobody could
    connect (a review: 20,000 from one address). Past MAX_CONNECTIONS_PER_ADDRESS a
    connection is answered 503 and closed at once; other addresses are not touched; a
    closed connection, and a WebSocket once closed, give their place back."""
    gate = ConnectionGate(per_address=3)
    refusals: list[tuple[str, str]] = []
    gate.on_refused = lambda reason, address: refusals.append((reason, address))
    async with running_server(BOUND, gate=gate) as (port, _):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:  # a WebSocket keeps its place
            await wait_for(lambda: gate.held_by("127.0.0.1") == 3)
            error = await refused_at_once(port)
            assert error["code"] == "too_many_connections"
            assert error["message"] == (
                "your address holds 3 connections to the service, the most one address may"
                " (MAX_CONNECTIONS_PER_ADDRESS=3); close some first")
            assert refusals == [("too_many_connections", "127.0.0.1")]
            # Another address is served meanwhile.
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=("127.0.0.2", 0))
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                         b"Connection: close\r\n\r\nok")
            data, _ = await read_until_closed(reader)
            assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"ok"), data
            writer.close()
            await ws.send("still served")
            assert await ws.recv() == "still served"
        await wait_for(lambda: gate.held_by("127.0.0.1") == 2)  # the WebSocket's place
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data, _ = await read_until_closed(reader)
        assert data.startswith(b"HTTP/1.1 200 "), data
        writer.close()
        for _, held_writer in held:
            held_writer.close()
        await wait_for(lambda: gate.open == 0)
    assert gate.refused == 1


async def test_a_connection_closed_by_its_deadline_gives_its_place_back() -> None:
    gate = ConnectionGate(per_address=1)
    async with running_server(DEADLINE, gate=gate) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # never finished
        await wait_for(lambda: gate.open == 1)
        error = await refused_at_once(port)
        assert error["code"] == "too_many_connections"
        data, _ = await read_until_closed(reader)
        assert data == TIMEOUT_RESPONSE
        writer.close()
        await wait_for(lambda: gate.open == 0)
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send("in")
            assert await ws.recv() == "in"


async def test_the_service_s_total_is_a_cap_for_every_address() -> None:
    gate = ConnectionGate(per_address=0, total=2)
    async with running_server(BOUND, gate=gate) as (port, _):
        held = [await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{n}", 0))
                for n in (2, 3)]
        await wait_for(lambda: gate.open == 2)
        error = await refused_at_once(port, source="127.0.0.4")
        assert error["message"] == ("the service holds 2 connections, as many as its open"
                                    " files allow; try again later")
        for _, writer in held:
            writer.close()
        await wait_for(lambda: gate.open == 0)
