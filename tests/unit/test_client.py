"""``ws_sandbox.client`` against a scripted server: a real ``websockets`` server in-process.

The server greets with ``ready`` and answers each ``execute`` with the frames a script
returns for it, so every path of the client (collecting, routing by cell id, refusals,
closes, a dropped connection, a failing callback) is driven by real WebSocket traffic.
Every wait is bounded with ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from ws_sandbox import frames as fr
from ws_sandbox.client import ClientSession, SessionClosed, SessionRefused, connect

BOUND = 10.0
"""Generous bound on any single wait (seconds)."""

LIMITS = fr.Limits(max_execution_time=60, default_execution_time=30, max_memory_mb=512,
                   max_output_bytes=1 << 20, max_code_bytes=1 << 20, max_queued_cells=4,
                   idle_timeout=None, max_lifetime=None)

Item = fr.ServerFrame | str | tuple[str, ...]
Script = Callable[[fr.Execute], list[Item]]
"""The server's answer to one cell: frames, ``"drop"`` (abort the connection there), a
tuple of strings (sent as the fragments of one message), or any other string, sent as it
is."""

READY = fr.Ready(session_id="s1", language="python", token="t", limits=LIMITS)


def result(cell: str, status: str = "success") -> fr.Result:
    return fr.Result(id=cell, status=status, exit_code=0,  # type: ignore[arg-type]
                     execution_time_ms=1.0, memory_used_mb=None, error=None)


def echo(request: fr.Execute) -> list[Item]:
    """stdout, stderr, a display and the result, as a cell of ``request.code`` would."""
    return [fr.Stream(id=request.id, name="stdout", text=f"out {request.code}\n"),
            fr.Stream(id=request.id, name="stderr", text="err\n"),
            fr.Display(id=request.id, kind="display_data", data={"text/plain": "d"}),
            fr.Stream(id=request.id, name="stdout", text="more\n"),
            result(request.id)]


@dataclass
class Server:
    """The scripted server and what it received."""

    url: str
    script: Script = echo
    opening: list[Item] = field(default_factory=lambda: [READY])
    """Sent as soon as a client connects, without a pause between them; ``"refuse"`` closes
    the connection there with code 1008."""
    received: list[str | bytes] = field(default_factory=list)


async def send_item(ws: ServerConnection, item: Item) -> None:
    if isinstance(item, tuple):
        await ws.send(iter(item))  # one text message in len(item) frames
    else:
        await ws.send(item if isinstance(item, str) else fr.encode(item).decode())


@contextlib.asynccontextmanager
async def scripted_server() -> AsyncIterator[Server]:
    server = Server(url="")

    async def handler(ws: ServerConnection) -> None:
        for item in server.opening:
            if item == "refuse":
                await ws.close(1008, "refused")
                return
            await send_item(ws, item)
        async for message in ws:
            server.received.append(message)
            frame = fr.decode_client(message)
            if not isinstance(frame, fr.Execute):
                continue
            for item in server.script(frame):
                if item == "drop":
                    ws.transport.abort()
                    return
                await send_item(ws, item)

    async with serve(handler, "127.0.0.1", 0) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        server.url = f"ws://127.0.0.1:{port}"
        yield server


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with scripted_server() as running:
        yield running


@contextlib.asynccontextmanager
async def session(server: Server) -> AsyncIterator[ClientSession]:
    async with asyncio.timeout(BOUND):
        opened = await connect(server.url)
    try:
        yield opened
    finally:
        async with asyncio.timeout(BOUND):
            await opened.close()


async def frames_of(stream: AsyncIterator[fr.ServerFrame]) -> list[fr.ServerFrame]:
    async with asyncio.timeout(BOUND):
        return [frame async for frame in stream]


async def test_execute_collects_output_in_order_and_calls_back_live(server: Server) -> None:
    seen: list[str] = []
    async with session(server) as s:
        assert s.session_id == "s1"
        async with asyncio.timeout(BOUND):
            r = await s.execute("x", on_output=lambda frame: seen.append(frame.text))
    assert r.status == "success"
    assert r.stdout == "out x\nmore\n"
    assert r.stderr == "err\n"
    assert [d.data for d in r.displays] == [{"text/plain": "d"}]
    assert seen == ["out x\n", "err\n", "more\n"]


async def test_frames_leave_as_text_messages(server: Server) -> None:
    async with session(server) as s:
        async with asyncio.timeout(BOUND):
            await s.execute("print(1)", timeout=2.5)
            await s.interrupt()
            await s.execute("y")  # the interrupt is on the server before this cell's answer
    assert all(isinstance(m, str) for m in server.received), server.received
    first = fr.decode_client(server.received[0])
    assert isinstance(first, fr.Execute)
    assert (first.code, first.timeout) == ("print(1)", 2.5)
    assert isinstance(fr.decode_client(server.received[1]), fr.Interrupt)


async def test_frames_of_other_cells_and_without_a_cell_go_to_events(server: Server) -> None:
    stray = fr.Stream(id="someone-else", name="stdout", text="stray\n")
    restarted = fr.Restarted(reason="interpreter_restarted", message="m")
    server.script = lambda request: [stray, restarted, *echo(request)]
    async with session(server) as s:
        async with asyncio.timeout(BOUND):
            r = await s.execute("x")
            events = [await s.events.get(), await s.events.get()]
    assert r.stdout == "out x\nmore\n"
    assert events == [stray, restarted]


async def test_an_error_frame_refuses_the_cell_and_the_session_goes_on(server: Server) -> None:
    server.script = lambda request: [fr.Error(code="queue_full", message="full", id=request.id)]
    async with session(server) as s:
        with pytest.raises(SessionRefused, match="queue_full: full") as refused:
            async with asyncio.timeout(BOUND):
                await s.execute("x")
        assert refused.value.error.id is not None
        server.script = echo
        async with asyncio.timeout(BOUND):
            assert (await s.execute("again")).stdout == "out again\nmore\n"


async def test_a_closed_frame_ends_the_running_cell(server: Server) -> None:
    closed = fr.Closed(reason="idle_timeout", message="idle")
    server.script = lambda request: [fr.Stream(id=request.id, name="stdout", text="a"), closed]
    async with session(server) as s:
        with pytest.raises(SessionClosed, match="idle_timeout") as ended:
            async with asyncio.timeout(BOUND):
                await s.execute("x")
        assert ended.value.closed == closed
        assert s.closed == closed
        async with asyncio.timeout(BOUND):
            assert await s.events.get() == closed


async def test_a_dropped_connection_ends_the_running_cell(server: Server) -> None:
    server.script = lambda request: [fr.Stream(id=request.id, name="stdout", text="a"), "drop"]
    async with session(server) as s:
        with pytest.raises(SessionClosed) as ended:
            async with asyncio.timeout(BOUND):
                await s.execute("x")
        assert ended.value.closed is not None
        assert ended.value.closed.reason == "client_closed"
        # Nothing reads the connection any more: a new cell is refused at once, not hung.
        with pytest.raises(SessionClosed):
            async with asyncio.timeout(BOUND):
                await s.execute("y")


async def test_an_invalid_frame_ends_the_session_with_a_reason(server: Server) -> None:
    """A frame that is not of the protocol ends the session: the running cell fails with
    the reason, and later cells are refused at once although the socket was still open."""
    server.script = lambda request: [fr.Stream(id=request.id, name="stdout", text="a"),
                                     '{"type": "no such frame"}']
    async with session(server) as s:
        with pytest.raises(SessionClosed, match="session closed") as ended:
            async with asyncio.timeout(BOUND):
                await s.execute("x")
        assert ended.value.closed is not None
        assert "invalid frame" in ended.value.closed.message
        assert s.closed is ended.value.closed
        with pytest.raises(SessionClosed):
            async with asyncio.timeout(BOUND):
                await s.execute("y")
        async with asyncio.timeout(BOUND):
            assert await s.wait_closed() is s.closed


async def test_no_cell_is_sent_once_nothing_reads_the_connection(server: Server) -> None:
    """Whatever ended the reader, a new cell must fail at once, not wait forever for a
    result nobody would read (here the socket itself is still open)."""
    async with session(server) as s:
        s._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await s._reader
        with pytest.raises(SessionClosed):
            async with asyncio.timeout(BOUND):
                await s.execute("y")
        with pytest.raises(SessionClosed):
            await frames_of(s.stream("z"))
    assert len(server.received) == 0  # neither cell was sent


async def test_a_failing_callback_fails_only_its_cell(server: Server) -> None:
    def boom(frame: fr.Stream) -> None:
        raise ValueError(f"callback refused {frame.text!r}")

    async with session(server) as s:
        with pytest.raises(ValueError, match="callback refused 'out x"):
            async with asyncio.timeout(BOUND):
                await s.execute("x", on_output=boom)
        async with asyncio.timeout(BOUND):
            r = await s.execute("y")
    assert r.stdout == "out y\nmore\n"


async def test_concurrent_cells_each_get_their_own_frames(server: Server) -> None:
    gate = asyncio.Event()
    held: list[fr.Execute] = []

    def interleave(request: fr.Execute) -> list[Item]:
        held.append(request)
        if len(held) < 2:
            return []
        a, b = held
        gate.set()
        return [fr.Stream(id=b.id, name="stdout", text="b1"),
                fr.Stream(id=a.id, name="stdout", text="a1"),
                result(b.id),
                fr.Stream(id=a.id, name="stdout", text="a2"),
                result(a.id, "error")]

    server.script = interleave
    async with session(server) as s:
        async with asyncio.timeout(BOUND):
            first = asyncio.create_task(s.execute("a"))
            await asyncio.sleep(0)  # "a" is sent first
            second = asyncio.create_task(s.execute("b"))
            ra, rb = await asyncio.gather(first, second)
    assert gate.is_set()
    assert (ra.stdout, ra.status) == ("a1a2", "error")
    assert (rb.stdout, rb.status) == ("b1", "success")


async def test_stream_yields_every_frame_through_the_result(server: Server) -> None:
    async with session(server) as s:
        frames = await frames_of(s.stream("z", cell_id="mine"))
    assert [type(f).__name__ for f in frames] == ["Stream", "Stream", "Display", "Stream",
                                                  "Result"]
    assert all(getattr(f, "id", None) == "mine" for f in frames)


async def test_a_cancelled_execute_leaves_the_session_usable(server: Server) -> None:
    server.script = lambda request: [] if request.code == "hang" else echo(request)
    async with session(server) as s:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await s.execute("hang")
        async with asyncio.timeout(BOUND):
            assert (await s.execute("next")).status == "success"


async def test_a_message_in_fragments_arrives_whole(server: Server) -> None:
    text = fr.encode(fr.Stream(id="PLACE", name="stdout", text="héllo wörld " * 50)).decode()

    def fragmented(request: fr.Execute) -> list[Item]:
        whole = text.replace("PLACE", request.id)
        return [tuple(whole[i:i + 100] for i in range(0, len(whole), 100)), result(request.id)]

    server.script = fragmented
    async with session(server) as s, asyncio.timeout(BOUND):
        r = await s.execute("x")
    assert r.stdout == "héllo wörld " * 50


async def test_frames_right_behind_ready_are_not_lost(server: Server) -> None:
    """Frames that arrive with ``ready``, before the session exists, still reach it."""
    notice = fr.Error(code="notice", message="right behind ready")
    early = fr.Stream(id="c-early", name="stdout", text="early")
    server.opening = [READY, notice, early]
    async with session(server) as s, asyncio.timeout(BOUND):
        assert await s.events.get() == notice
        assert await s.events.get() == early
        assert (await s.execute("x")).stdout == "out x\nmore\n"


async def test_a_refusal_before_ready_raises_with_the_close_code(server: Server) -> None:
    server.opening = [fr.Error(code="no_capacity", message="full"), "refuse"]
    with pytest.raises(SessionRefused, match="no_capacity: full") as refused:
        async with asyncio.timeout(BOUND):
            await connect(server.url)
    assert refused.value.close_code == 1008


async def test_a_close_before_ready_raises_connection_closed(server: Server) -> None:
    server.opening = ["refuse"]
    with pytest.raises(websockets.ConnectionClosed):
        async with asyncio.timeout(BOUND):
            await connect(server.url)


async def test_json_nested_too_deep_is_an_invalid_frame(server: Server) -> None:
    """msgspec refuses it with RecursionError, not DecodeError: it must still end the session
    with its reason (1002 sent), not escape into the connection's callback and drop it."""
    deep = '{"x": ' + "[" * 5000 + "]" * 5000 + ', "type": "closed", "reason": "idle_timeout"}'
    server.script = lambda request: [fr.Stream(id=request.id, name="stdout", text="a"), deep]
    async with session(server) as s:
        with pytest.raises(SessionClosed) as ended:
            async with asyncio.timeout(BOUND):
                await s.execute("x")
        assert ended.value.closed is not None
        assert "invalid frame" in ended.value.closed.message
        async with asyncio.timeout(BOUND):
            await s.wait_closed()
        assert s.ws.close_code == 1002


async def test_a_refusal_without_a_close_is_still_a_refusal(server: Server) -> None:
    server.opening = [fr.Error(code="no_capacity", message="full")]  # and no close
    with pytest.raises(SessionRefused, match="no_capacity: full") as refused:
        async with asyncio.timeout(BOUND):
            await connect(server.url, open_timeout=0.5)
    assert refused.value.close_code is None
