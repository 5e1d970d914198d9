"""``ws_sandbox.client`` against a scripted server: a real ``websockets`` server in-process.

The server greets with ``ready`` and answers each ``execute`` with the frames a script
returns for it, so every path of the client (collecting, routing by cell id, refusals,
closes, a dropped connection, a failing callback) is driven by real WebSocket traffic.
Every wait is bounded with ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.server
import json
import math
import re
import secrets
import socket
import sys
import threading
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request, Response
from websockets.utils import accept_key

from ws_sandbox import client
from ws_sandbox import frames as fr
from ws_sandbox.client import (
    CellIdInUse,
    ClientSession,
    ConnectFailed,
    ResultTimeout,
    SessionClosed,
    SessionRefused,
    UnknownFrame,
    connect,
    decode_server_frame,
)
from ws_sandbox.frames import output_allowance

BOUND = 10.0
"""Generous bound on any single wait (seconds)."""

LIMITS = fr.Limits(max_execution_time=60, default_execution_time=30, max_memory_mb=512,
                   max_output_bytes=1 << 20, max_code_bytes=1 << 20, max_queued_cells=4,
                   idle_timeout=None, max_lifetime=None)

Item = fr.ServerFrame | str | tuple[str, ...] | float | list[fr.ServerFrame | str]
Script = Callable[[fr.Execute], list[Item]]
"""The server's answer to one cell: frames, ``"drop"`` (abort the connection there),
``"close N"`` (close it there with code N), a
tuple of strings (sent as the fragments of one message), a float (a pause of that many
seconds before the next item), a list of frames and strings (sent as messages in one write
to the socket, so that the client reads them together however loaded the machine is), or
any other string, sent as it is."""

READY = fr.Ready(session_id="s1", language="python", token="t", limits=LIMITS)
RESTARTED = fr.Restarted(reason="interpreter_restarted", message="the interpreter restarted")


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
    reject: tuple[int, bytes] | None = None
    """Refuse the upgrade with this HTTP status and JSON body."""
    closes: list[int | None] = field(default_factory=list)
    """The close code of each connection that ended, as the server saw it."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a connection ends (``closes`` has its code)."""
    paths: list[str] = field(default_factory=list)
    """The path (and query) each upgrade asked for."""
    authorizations: list[str | None] = field(default_factory=list)
    """The ``Authorization`` header of each upgrade."""
    restart: list[Item] = field(default_factory=lambda: [RESTARTED])
    """The server's answer to a ``restart`` frame..."""
    restarts: list[list[Item]] = field(default_factory=list)
    """...unless this has answers left: each restart takes the next."""
    names_restarts: bool = False
    """Name the restart each answer is for, as the service does (``restarted``'s ``ids``
    where the item has none, a refusal's ``id``); by default, as an older service, not."""


async def send_item(ws: ServerConnection, item: Item) -> None:
    if isinstance(item, float):
        await asyncio.sleep(item)
    elif isinstance(item, tuple):
        await ws.send(iter(item))  # one text message in len(item) frames
    elif isinstance(item, list):
        for message in item:
            text = message if isinstance(message, str) else fr.encode(message).decode()
            ws.protocol.send_text(text.encode())
        ws.transport.write(b"".join(ws.protocol.data_to_send()))
    else:
        await ws.send(item if isinstance(item, str) else fr.encode(item).decode())


@contextlib.asynccontextmanager
async def scripted_server() -> AsyncIterator[Server]:
    server = Server(url="")

    async def handler(ws: ServerConnection) -> None:
        try:
            await serve_one(ws)
        finally:
            server.closes.append(ws.close_code)
            server.ended.set()

    async def serve_one(ws: ServerConnection) -> None:
        for item in server.opening:
            if item == "refuse":
                await ws.close(1008, "refused")
                return
            await send_item(ws, item)
        async for message in ws:
            server.received.append(message)
            frame = fr.decode_client(message)
            if isinstance(frame, fr.Restart):
                for item in server.restarts.pop(0) if server.restarts else server.restart:
                    if item == "drop":
                        ws.transport.abort()
                        return
                    if server.names_restarts and isinstance(item, fr.Restarted) and (
                            item.ids is None):
                        item = msgspec.structs.replace(item, ids=[frame.id] if frame.id else [])
                    elif server.names_restarts and isinstance(item, fr.Error):
                        item = msgspec.structs.replace(item, id=frame.id)
                    await send_item(ws, item)
            if not isinstance(frame, fr.Execute):
                continue
            for item in server.script(frame):
                if item == "drop":
                    ws.transport.abort()
                    return
                if isinstance(item, str) and item.startswith("close "):
                    await ws.close(int(item.split()[1]), "closed by the script")
                    return
                await send_item(ws, item)

    def process_request(ws: ServerConnection, request: Request) -> Response | None:
        server.paths.append(request.path)
        server.authorizations.append(request.headers.get("Authorization"))
        if server.reject is None:
            return None
        status, body = server.reject
        return Response(status, "Refused", Headers({"Content-Type": "application/json"}),
                        body)

    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as ws_server:
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


async def test_a_program_cell_says_so_and_a_notebook_cell_sends_only_what_it_sets(
        server: Server) -> None:
    async with session(server) as s:
        async with asyncio.timeout(BOUND):
            await s.execute("a", program=True)
            await frames_of(s.stream("b", program=True))
            await s.execute("c")
    sent = [json.loads(m) for m in server.received]
    assert [m.get("program") for m in sent] == [True, True, None]
    # the defaults are left out: a service older than ``program`` reads the frame
    assert set(sent[2]) == {"type", "id", "code"}, sent[2]


async def test_frames_without_a_cell_or_of_another_cell_go_to_events(
        server: Server) -> None:
    stray = fr.Stream(id="someone-else", name="stdout", text="stray\n")
    restarted = fr.Restarted(reason="interpreter_restarted", message="m")
    server.script = lambda request: [stray, restarted, *echo(request)]
    async with session(server) as s:
        async with asyncio.timeout(BOUND):
            r = await s.execute("x")
            events = [await s.events.get(), await s.events.get()]
        assert s.events.empty()
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
        with pytest.raises(SessionClosed, match="session closed: idle_timeout: idle") as ended:
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
        assert ended.value.closed is None  # the server sent no closed frame
        assert ended.value.reason == "connection_lost"
        assert "no close frame" in str(ended.value)
        # Nothing reads the connection any more: a new cell is refused at once, not hung.
        with pytest.raises(SessionClosed):
            async with asyncio.timeout(BOUND):
                await s.execute("y")


@pytest.mark.parametrize("call", ["execute", "restart"])
async def test_a_session_that_ends_while_a_call_is_sent_raises_once(server: Server,
                                                                    call: str) -> None:
    """A session that ended while a cell (or a restart) was being sent failed the call's
    future and the send alike: the caller got the send's error, and asyncio then printed
    "Future exception was never retrieved" for the other (a soak test: a session resumed
    elsewhere)."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        async with session(server) as s:
            connection_send = s.ws.send

            async def send_as_the_session_ends(*args: Any, **kwargs: Any) -> None:
                s._end(SessionClosed("resumed_elsewhere", "another connection resumed it"))
                await connection_send(*args, **kwargs)
                raise websockets.ConnectionClosed(None, None)

            s.ws.send = send_as_the_session_ends  # type: ignore[method-assign]
            with pytest.raises(SessionClosed, match="resumed_elsewhere"):
                async with asyncio.timeout(BOUND):
                    await (s.execute("x") if call == "execute" else s.restart())
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert not [c for c in unhandled if "never retrieved" in c.get("message", "")], unhandled


async def test_an_invalid_frame_ends_the_session_with_a_reason(server: Server) -> None:
    """A frame that is not of the protocol ends the session: the running cell fails with
    the reason, and later cells are refused at once although the socket was still open."""
    server.script = lambda request: [fr.Stream(id=request.id, name="stdout", text="a"),
                                     '{"type": "stream", "name": "stdout", "text": 5}']
    async with session(server) as s:
        with pytest.raises(SessionClosed, match="session closed: protocol_error: the server "
                                                "sent an invalid frame") as ended:
            async with asyncio.timeout(BOUND):
                await s.execute("x")
        assert ended.value.reason == "protocol_error"
        assert ended.value.closed is None
        assert s.ended is not None and s.ended.reason == "protocol_error"
        with pytest.raises(SessionClosed, match="protocol_error"):
            async with asyncio.timeout(BOUND):
                await s.execute("y")
        async with asyncio.timeout(BOUND):
            assert await s.wait_closed() is None


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
        assert await s.events.get() == early  # a cell this session did not send
        assert s.events.empty()
        assert (await s.execute("x")).stdout == "out x\nmore\n"


async def test_a_refusal_before_ready_raises_with_the_close_code(server: Server) -> None:
    server.opening = [fr.Error(code="no_capacity", message="full"), "refuse"]
    with pytest.raises(SessionRefused, match="no_capacity: full") as refused:
        async with asyncio.timeout(BOUND):
            await connect(server.url)
    assert refused.value.close_code == 1008


async def test_a_close_before_ready_raises_session_closed(server: Server) -> None:
    server.opening = ["refuse"]
    with pytest.raises(SessionClosed, match=r"connection_lost: .*1008") as ended:
        async with asyncio.timeout(BOUND):
            await connect(server.url)
    assert ended.value.reason == "connection_lost"


async def test_json_nested_too_deep_is_an_invalid_frame(server: Server) -> None:
    """msgspec refuses it with RecursionError, not DecodeError: it must still end the session
    with its reason (1002 sent), not escape into the connection's callback and drop it."""
    deep = '{"x": ' + "[" * 5000 + "]" * 5000 + ', "type": "closed", "reason": "idle_timeout"}'
    server.script = lambda request: [fr.Stream(id=request.id, name="stdout", text="a"), deep]
    async with session(server) as s:
        with pytest.raises(SessionClosed) as ended:
            async with asyncio.timeout(BOUND):
                await s.execute("x")
        assert ended.value.reason == "protocol_error"
        assert "invalid frame" in str(ended.value)
        async with asyncio.timeout(BOUND):
            await s.wait_closed()
        assert s.ws.close_code == 1002


async def test_a_refusal_without_a_close_is_still_a_refusal(server: Server) -> None:
    server.opening = [fr.Error(code="no_capacity", message="full")]  # and no close
    with pytest.raises(SessionRefused, match="no_capacity: full") as refused:
        async with asyncio.timeout(BOUND):
            await connect(server.url, open_timeout=0.5)
    assert refused.value.close_code is None


# --- a result that never comes -------------------------------------------------------------


async def test_a_result_that_never_comes_fails_the_cell_and_closes_the_session(
        server: Server) -> None:
    """The cell's timeout (0.2 s) and the grace (0.3 s) pass without a result: the cell
    fails with ResultTimeout, the cell queued behind it with SessionClosed, and the client
    closes the session (the server sees the close)."""
    server.script = lambda request: [] if request.code == "hang" else echo(request)
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, result_grace=0.3)
    async with s:
        async with asyncio.timeout(BOUND):
            first = asyncio.create_task(s.execute("hang", timeout=0.2))
            await asyncio.sleep(0)  # "hang" is sent first
            second = asyncio.create_task(s.execute("hang"))
            done = await asyncio.gather(first, second, return_exceptions=True)
            await s.wait_closed()
        timed_out, closed = done
        assert isinstance(timed_out, ResultTimeout), timed_out
        assert timed_out.cell_id == fr.decode_client(server.received[0]).id  # type: ignore[union-attr]
        assert timed_out.waited >= 0.5
        assert "no result for cell" in str(timed_out)
        assert type(closed) is SessionClosed and closed.reason == "result_timeout"
        with pytest.raises(SessionClosed, match="result_timeout"):
            await s.execute("x")
    async with asyncio.timeout(BOUND):
        await server.ended.wait()
    assert server.closes == [1000]


async def test_stream_gives_up_on_a_result_that_never_comes(server: Server) -> None:
    server.script = lambda request: [fr.Stream(id=request.id, name="stdout", text="a")]
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, result_grace=0.2)
    async with s:
        seen: list[fr.ServerFrame] = []
        async def consume() -> None:
            async for frame in s.stream("x", timeout=0.1):
                seen.append(frame)

        with pytest.raises(ResultTimeout):
            async with asyncio.timeout(BOUND):
                await consume()
        assert [type(f).__name__ for f in seen] == ["Stream"]


async def test_a_cells_bound_starts_when_the_cells_before_it_finish(server: Server) -> None:
    """The server runs cells in order: a cell queued behind a slow one is not late until
    its own timeout and the grace passed since the one before finished. Each cell here
    takes 1.6 s of its 0.5 s + 1.9 s, 0.8 s to spare; the second finishes 3.2 s after it was
    sent, 0.8 s past a bound counted from its sending (margins of 0.3 s were too thin for a
    loaded machine: a review)."""
    server.script = lambda request: [1.6, result(request.id)]
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, result_grace=1.9)
    async with s, asyncio.timeout(BOUND):
        results = await asyncio.gather(s.execute("a", timeout=0.5),
                                       s.execute("b", timeout=0.5))
    assert [r.status for r in results] == ["success", "success"]


async def seconds_to_give_up(s: ClientSession, code: str, timeout: float) -> float:
    """How long ``execute`` waited for a result before it raised :class:`ResultTimeout`."""
    start = asyncio.get_running_loop().time()
    with pytest.raises(ResultTimeout):
        await s.execute(code, timeout=timeout)
    return asyncio.get_running_loop().time() - start


async def test_one_timer_keeps_every_cells_own_bound(server: Server) -> None:
    """The bounds share one timer that is moved only when a bound would end before it: a
    cell with a longer bound than the one before it is not given up at the earlier bound
    (the timer looks again), and one with a shorter bound is given up at its own. Each
    time is 0.8 s or more from the bound that tells the two apart (0.4 s were too thin for a
    loaded machine: a review)."""
    def script(request: fr.Execute) -> list[Item]:
        scripts: dict[str, list[Item]] = {"quick": [result(request.id)],
                                          "slow": [1.3, result(request.id)], "silent": []}
        return scripts[request.code]

    server.script = script
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, result_grace=0.3)
    async with s, asyncio.timeout(BOUND):
        # The timer is set for the first cell's bound (0.5 s) and fires while the second
        # cell, bound at 2.1 s, still waits for its result, due at 1.3 s.
        assert (await s.execute("quick", timeout=0.2)).status == "success"
        assert (await s.execute("slow", timeout=1.8)).status == "success"
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, result_grace=0.3)
    async with s, asyncio.timeout(BOUND):
        # The timer is set for a bound 5.3 s away; a cell bound at 0.5 s moves it.
        assert (await s.execute("quick", timeout=5.0)).status == "success"
        assert await seconds_to_give_up(s, "silent", 0.2) < 3.0


async def test_no_grace_waits_for_ever_and_bad_graces_are_refused(server: Server) -> None:
    server.script = lambda request: [0.3, result(request.id)]
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, result_grace=None)
    async with s, asyncio.timeout(BOUND):
        assert (await s.execute("a", timeout=0.01)).status == "success"
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="result_grace must be a positive, finite"):
            connect(server.url, result_grace=bad)


# --- bounded memory ------------------------------------------------------------------------


async def test_a_flood_of_frames_of_cells_never_sent_keeps_only_the_latest(
        server: Server) -> None:
    """A hostile server floods frames for a cell id the client never used: the client
    keeps the latest ``max_events`` of them (1024 by default), not all 3000."""
    text = "x" * 1000
    server.script = lambda request: [
        *[fr.Stream(id="never-sent", name="stdout", text=text)] * 3000, result(request.id)]
    async with session(server) as s, asyncio.timeout(BOUND):
        assert (await s.execute("x")).status == "success"
        assert (s.events.qsize(), s.events_dropped) == (1024, 3000 - 1024)


@pytest.mark.parametrize("kind", ["stream", "display"])
async def test_a_cells_output_past_the_servers_own_limit_ends_the_session(
        server: Server, kind: str) -> None:
    """The ready frame's max_output_bytes is the server's promise for one cell; execute()
    keeps twice that and 64 KiB, then gives up: a hostile server cannot fill the client's
    memory with a real cell's output. Just under the allowance is taken."""
    chunk = "x" * 60_000
    allowance = output_allowance(LIMITS.max_output_bytes)
    frames = allowance // len(chunk)

    def make(cell: str) -> fr.ServerFrame:
        if kind == "stream":
            return fr.Stream(id=cell, name="stdout", text=chunk)
        return fr.Display(id=cell, kind="display_data", data={"t": chunk[:-2]})

    def script(request: fr.Execute) -> list[Item]:
        extra = 1 if request.code == "over" else 0
        return [*(make(request.id) for _ in range(frames + extra)), result(request.id)]

    server.script = script
    async with session(server) as s, asyncio.timeout(BOUND):
        assert (await s.execute("under")).status == "success"
        with pytest.raises(SessionClosed, match="more output for cell") as info:
            await s.execute("over")
        assert info.value.reason == "protocol_error"
    await asyncio.wait_for(server.ended.wait(), BOUND)
    assert server.closes[-1] == 1002


async def test_events_keep_the_latest_and_count_what_was_dropped(server: Server) -> None:
    server.script = lambda request: [
        *[fr.Restarted(reason="interpreter_restarted", message=str(n)) for n in range(300)],
        result(request.id)]
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, max_events=100)
    async with s, asyncio.timeout(BOUND):
        await s.execute("x")
        assert s.events.qsize() == 100
        assert s.events_dropped == 200
        first = s.events.get_nowait()
        assert isinstance(first, fr.Restarted) and first.message == "200"


async def test_a_slow_stream_consumer_pauses_reading(server: Server) -> None:
    """A stream() consumer that takes nothing: the client stops reading the connection
    after a bounded number of frames (the rest wait at the server), and every frame still
    arrives, in order, once it reads on."""
    count = 4000  # 8 MB, of text that does not compress
    server.script = lambda request: [
        *[fr.Stream(id=request.id, name="stdout", text=f"{n:05d}" + secrets.token_hex(1000))
          for n in range(count)], result(request.id)]
    async with session(server) as s:
        received: list[bytes] = []
        deliver = s.ws.deliver

        def counting(data: bytes) -> None:
            received.append(data)
            deliver(data)

        s.ws.deliver = counting
        frames = s.stream("x")
        async with asyncio.timeout(BOUND):
            first = await anext(frames)
        assert isinstance(first, fr.Stream) and first.text.startswith("00000")
        await asyncio.sleep(0.5)  # time to read everything, were reading not paused
        assert len(received) < count / 2, len(received)
        async with asyncio.timeout(BOUND):
            rest = [frame async for frame in frames]
    texts = [f.text[:5] for f in rest if isinstance(f, fr.Stream)]
    assert texts == [f"{n:05d}" for n in range(1, count)]
    assert isinstance(rest[-1], fr.Result)


# --- errors that say what happened ---------------------------------------------------------


async def test_a_message_too_big_says_so(server: Server) -> None:
    server.script = lambda request: [fr.Stream(id=request.id, name="stdout", text="x" * 5000)]
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, max_size=4096)
    async with s:
        with pytest.raises(SessionClosed, match=r"connection_lost: .*1009") as ended:
            async with asyncio.timeout(BOUND):
                await s.execute("x")
        assert ended.value.reason == "connection_lost"


async def test_a_refused_upgrade_is_a_refusal_with_the_servers_error(server: Server) -> None:
    server.reject = (401, b'{"error": {"code": "unauthorized", "message": "no key"}}')
    with pytest.raises(SessionRefused, match="unauthorized: no key") as refused:
        async with asyncio.timeout(BOUND):
            await connect(server.url)
    assert refused.value.http_status == 401



@pytest.mark.parametrize(("status", "body"), [
    (200, b"<html>a web page</html>"), (502, b"Bad Gateway"), (403, b"<html>nope</html>"),
    (404, b'{"detail": "Not Found"}'), (400, b'{"error": {"code": 5, "message": "m"}}')])
async def test_an_answer_that_is_not_the_services_refusal_is_a_failed_connection(
        server: Server, status: int, body: bytes) -> None:
    """A plain web server, a proxy's 502, another service's 404: no refusal of the
    service's (it was a SessionRefused ``http_200``, a review), but the wrong place."""
    server.reject = (status, body)
    with pytest.raises(ConnectFailed, match=rf"with HTTP {status}, and not as a ws_sandbox"
                                            " service refuses one") as failed:
        async with asyncio.timeout(BOUND):
            await connect(server.url)
    assert failed.value.http_status == status
    assert isinstance(failed.value.__cause__, InvalidStatus)


@pytest.mark.parametrize(("code", "reason"), [(4000, "resumed_elsewhere"),
                                              (1011, "connection_lost")])
async def test_a_session_resumed_elsewhere_is_named(server: Server, code: int,
                                                    reason: str) -> None:
    """Close code 4000: another connection took the session over, and it goes on there.
    It read as ``connection_lost``, which invites a resume that would take it back."""
    server.script = lambda request: [f"close {code}"]
    async with session(server) as s:
        with pytest.raises(SessionClosed) as ended:
            async with asyncio.timeout(BOUND):
                await s.execute("x")
        assert ended.value.reason == reason
        assert str(code) in ended.value.message


async def test_a_malformed_first_frame_is_a_protocol_error(server: Server) -> None:
    server.opening = ["this is not json"]
    with pytest.raises(SessionClosed, match="protocol_error: the server's first frame"):
        async with asyncio.timeout(BOUND):
            await connect(server.url)
    server.opening = [fr.Restarted(reason="interpreter_restarted", message="m")]
    with pytest.raises(SessionClosed, match="protocol_error: the server's first frame is not"):
        async with asyncio.timeout(BOUND):
            await connect(server.url)


async def test_a_bad_url_is_a_connect_failure() -> None:
    with pytest.raises(ConnectFailed, match="invalid URL 'http://x'"):
        async with asyncio.timeout(BOUND):
            await connect("http://x")


async def test_a_service_that_cannot_be_reached_is_a_connect_failure() -> None:
    """Every error of the client is a ClientError (the README says so): a refused connection
    escaped as a bare ConnectionRefusedError (found by a new-user walkthrough)."""
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectFailed, match=f"cannot reach ws://127.0.0.1:{port}") as info:
        async with asyncio.timeout(BOUND):
            await connect(f"ws://127.0.0.1:{port}")
    assert isinstance(info.value.__cause__, OSError)


async def test_connect_is_also_an_async_context_manager(server: Server) -> None:
    async with asyncio.timeout(BOUND), connect(server.url) as s:
        assert (await s.execute("x")).status == "success"
    assert s.ended is not None and s.ended.reason == "client_closed"
    async with asyncio.timeout(BOUND):
        await server.ended.wait()
    assert server.closes == [1000]


# --- cell ids and timeouts ------------------------------------------------------------------


async def test_cell_ids_differ_between_processes(server: Server) -> None:
    """A client resuming a session from a new process must not reuse its cell ids."""
    program = ("import asyncio, sys\n"
               "from ws_sandbox.client import connect\n"
               "async def main():\n"
               "    async with connect(sys.argv[1]) as s:\n"
               "        await s.execute('x')\n"
               "asyncio.run(main())\n")
    for _ in range(2):
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", program,
                                                       server.url)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    ids = [fr.decode_client(m).id for m in server.received]  # type: ignore[union-attr]
    assert len(ids) == 2 and ids[0] != ids[1], ids


async def test_a_stream_cell_id_in_use_is_refused(server: Server) -> None:
    server.script = lambda request: [] if request.code == "hang" else echo(request)
    async with session(server) as s:
        hanging = s.stream("hang", cell_id="mine")
        assert isinstance(hanging, AsyncGenerator)
        waiting = asyncio.ensure_future(anext(hanging))
        async with asyncio.timeout(BOUND):
            while not server.received:
                await asyncio.sleep(0.01)
        with pytest.raises(CellIdInUse, match="cell id 'mine' is already in use"):
            await frames_of(s.stream("again", cell_id="mine"))
        with pytest.raises(CellIdInUse, match="cell id 'mine' is already in use"):
            await s.execute("again", cell_id="mine")
        with pytest.raises(ValueError, match="a cell id has 1 to"):  # not one made up
            await s.execute("empty", cell_id="")
        async with asyncio.timeout(BOUND):
            named = await s.execute("named", cell_id="theirs")  # execute names its cell too
        assert named.result.id == "theirs"
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await hanging.aclose()
    assert len(server.received) == 2


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0, -1.0])
async def test_a_timeout_that_is_not_a_positive_number_is_refused(server: Server,
                                                                  bad: float) -> None:
    async with session(server) as s:
        with pytest.raises(ValueError, match="timeout must be a positive, finite number"):
            await s.execute("x", timeout=bad)
        with pytest.raises(ValueError, match="timeout must be a positive, finite number"):
            await frames_of(s.stream("x", timeout=bad))
    assert server.received == []


# --- what the second review found ------------------------------------------------------------


async def test_a_cell_that_cannot_be_sent_is_not_left_waiting(server: Server) -> None:
    """Code that does not encode (a lone surrogate) raised, but its cell stayed first in
    line, and its bound later ended a healthy session. It is refused as the server refuses
    a frame that is not UTF-8 (it raised UnicodeEncodeError, which is no ClientError)."""
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, result_grace=0.3)
    async with s, asyncio.timeout(BOUND):
        words = "bad_request: invalid frame: the code cannot be encoded as UTF-8 (character 7"
        with pytest.raises(SessionRefused, match=re.escape(words)):
            await s.execute("print('\ud800')", timeout=0.2)
        with pytest.raises(SessionRefused, match="the cell id cannot be encoded"):
            await frames_of(s.stream("1", cell_id="\udcff"))
        assert (await s.execute("ok")).status == "success"
        await asyncio.sleep(0.7)  # past the bound the unsent cell would have had
        assert (await s.execute("ok2")).status == "success"
    assert server.received and all("\\ud800" not in str(m) for m in server.received)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"cell_id": "x" * 129}, ValueError), ({"timeout": True}, ValueError),
    ({"code": None}, TypeError), ({"code": "#" * (LIMITS.max_code_bytes + 1)}, SessionRefused),
])
async def test_a_cell_the_server_could_only_refuse_without_its_id_is_refused_here(
        server: Server, kwargs: dict[str, object], error: type[Exception]) -> None:
    """Sent, the server refused such a cell with an error frame it could not tie to the
    cell: its caller waited for the bound, then lost the session."""
    async with session(server) as s, asyncio.timeout(BOUND):
        code = kwargs.pop("code", "x")
        with pytest.raises(error):
            async for _ in s.stream(code, **kwargs):  # type: ignore[arg-type]
                pass
        assert s._pending == {} and s._cells == {}
        assert (await s.execute("ok")).status == "success"
    assert len(server.received) == 1


async def test_a_resumed_sessions_first_cell_allows_for_the_earlier_connections(
        server: Server) -> None:
    """Resumed, the cells the earlier connection sent still run ahead of this one's: the
    first cell's bound allows for them until one of this connection's cells ends."""
    server.opening = [fr.Ready(session_id="s1", language="python", token="t", limits=LIMITS,
                               resumed=True)]
    server.script = lambda request: [1.0, result("earlier"), result(request.id)]
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, resume="t", result_grace=0.3)
    async with s, asyncio.timeout(BOUND):
        assert (await s.execute("x", timeout=0.2)).status == "success"
        assert isinstance(await s.events.get(), fr.Result)  # the earlier cell's result
        # From now on the bound is the cell's own again.
        server.script = lambda request: []
        assert await seconds_to_give_up(s, "y", 0.2) < 3.0


async def test_an_on_output_that_must_be_awaited_is_refused(server: Server) -> None:
    """Nothing awaits what on_output returns: an ``async def`` ran none of its body and the
    cell's output reached it never, without a word but a RuntimeWarning (a review)."""
    async def consume(frame: fr.Stream) -> None:
        pass

    async with session(server) as s:
        with pytest.raises(TypeError, match="on_output must be a plain function"):
            await s.execute("x", on_output=consume)
        assert server.received == []  # refused before it was sent
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "coroutine ... was never awaited"
            with pytest.raises(TypeError, match="on_output must be a plain function"):
                async with asyncio.timeout(BOUND):
                    await s.execute("y", on_output=lambda frame: consume(frame))
            gc.collect()
        assert (await s.execute("z", on_output=lambda frame: None)).stdout == "out z\nmore\n"
        # One that starts a task is fine: the task runs (it was refused too: the diff review).
        forwarded: list[str] = []

        async def forward(frame: fr.Stream) -> None:
            forwarded.append(frame.text)

        started = await s.execute(
            "t", on_output=lambda frame: asyncio.ensure_future(forward(frame)))
        await asyncio.sleep(0)  # the tasks' turn
        assert forwarded == ["out t\n", "err\n", "more\n"] and started.status == "success"


async def test_restart_returns_once_the_interpreter_is_restarted(server: Server) -> None:
    """It returned as the frame was sent: the caller could not know when the fresh
    interpreter was there, nor that a rate limit refused it (a review)."""
    server.restart = [0.3, RESTARTED]
    async with session(server) as s:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(BOUND):
            assert await s.restart() == RESTARTED
        assert loop.time() - start >= 0.25
        assert s.events.get_nowait() == RESTARTED  # still an event, as before
        # Two at once: the first frame answers both (the service joins a restart asked
        # while one is under way: it sends one frame); this server sends one for each.
        async with asyncio.timeout(BOUND):
            assert await asyncio.gather(s.restart(), s.restart()) == [RESTARTED, RESTARTED]
            assert [await s.events.get(), await s.events.get()] == [RESTARTED, RESTARTED]
        refusal = fr.Error(code="rate_limited", message="too many requests; retry in 1 s")
        server.restart = [refusal]
        with pytest.raises(SessionRefused, match="rate_limited") as refused:
            async with asyncio.timeout(BOUND):
                await s.restart()
        assert refused.value.error == refusal
        server.restart = [RESTARTED]
        assert await s.execute("still") is not None


async def test_a_restart_waits_for_the_answer_that_names_it(server: Server) -> None:
    """Answers were matched in order, so a restart sent just as another's answer was on its
    way returned with that answer, before its own restart happened. The service names the
    requests each ``restarted`` answers, and the refusal's: each waits for its own."""
    server.names_restarts = True
    replaced = fr.Restarted(reason="sandbox_replaced", message="lost", ids=[])
    async with session(server) as s:
        async with asyncio.timeout(BOUND):
            first, second = await asyncio.gather(s.restart(), s.restart())
        assert first.ids and second.ids and first.ids != second.ids
        sent = [fr.decode_client(m) for m in server.received]
        assert [f.id for f in sent if isinstance(f, fr.Restart)] == first.ids + second.ids
        # a sandbox replaced for another reason answers no restart of this client's
        server.restart = [replaced, 0.3, RESTARTED]
        async with asyncio.timeout(BOUND):
            answer = await s.restart()
        assert answer.reason == "interpreter_restarted" and answer.ids, answer
        refusal = fr.Error(code="rate_limited", message="too many requests; retry in 1 s")
        server.restart = [refusal]
        with pytest.raises(SessionRefused, match="rate_limited") as refused:
            async with asyncio.timeout(BOUND):
                await s.restart()
        assert refused.value.error.id is not None
        assert not s._restarts


async def test_restart_does_not_count_the_time_a_stream_consumer_paused_reading(
        server: Server) -> None:
    """Its answer waited behind the frames a stalled consumer had not taken: the restart's
    bound ran out meanwhile, and the client closed the session (the diff review)."""
    server.script = lambda request: [
        *[fr.Stream(id=request.id, name="stdout", text=f"{n}") for n in range(300)],
        result(request.id)]
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, result_grace=0.5)
    async with s:
        stream = s.stream("x")
        async with asyncio.timeout(BOUND):
            await anext(stream)  # reading pauses at 256 waiting frames
            restart = asyncio.ensure_future(s.restart())
            await asyncio.sleep(1.5)  # three times the bound
            assert not restart.done()
            rest = [frame async for frame in stream]
            assert await restart == RESTARTED
        assert isinstance(rest[-1], fr.Result) and s.ended is None


async def test_a_cancelled_restart_s_answer_is_not_taken_for_the_next_one(
        server: Server) -> None:
    """A cancelled restart left the queue of waiting ones, so its refusal was taken as the
    answer of the restart after it (the diff review)."""
    refusal = fr.Error(code="rate_limited", message="too many requests; retry in 1 s")
    server.restarts = [[0.3, refusal], [RESTARTED]]
    async with session(server) as s:
        first = asyncio.ensure_future(s.restart())
        await asyncio.sleep(0.05)
        first.cancel()
        async with asyncio.timeout(BOUND):
            assert await s.restart() == RESTARTED
        assert first.cancelled()


async def test_a_restart_without_an_answer_gives_up_on_the_session(server: Server) -> None:
    server.restart = []
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, result_grace=0.3)
    async with s:
        with pytest.raises(SessionClosed, match="no answer to a restart") as ended:
            async with asyncio.timeout(BOUND):
                await s.restart()
        assert ended.value.reason == "result_timeout"
        with pytest.raises(SessionClosed):
            await s.restart()


async def test_a_restart_waiting_when_the_session_ends_fails_and_cancelling_one_is_clean(
        server: Server) -> None:
    server.restart = [0.5, "drop"]
    async with session(server) as s:
        waiting = asyncio.ensure_future(s.restart())
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        with pytest.raises(SessionClosed, match="connection_lost"):
            async with asyncio.timeout(BOUND):
                await s.restart()


async def test_a_restart_starts_the_waiting_cells_bound_again_once(server: Server) -> None:
    """A cell that waited for a new sandbox (or a restart) before it could run: its bound
    starts again at the ``restarted`` frame, once."""
    restarted = fr.Restarted(reason="sandbox_replaced", message="new sandbox")

    def script(request: fr.Execute) -> list[Item]:
        if request.code == "waits":  # a new sandbox came after 0.4 s, then the cell ran
            return [0.4, restarted, 0.5, result(request.id)]
        return [0.3, restarted, 0.5, restarted, 2.0]  # restarts again and again: no result

    server.script = script
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, result_grace=0.5)
    async with s, asyncio.timeout(BOUND):
        assert (await s.execute("waits", timeout=0.1)).status == "success"
        assert await seconds_to_give_up(s, "again", 0.1) < 1.25  # 0.3 + 0.6, not 0.8 + 0.6


async def test_giving_up_while_a_stalled_consumer_paused_reading_still_closes_cleanly(
        server: Server) -> None:
    """The close after giving up could not be read while reading was paused: it waited
    CLOSE_TIMEOUT and then cut the connection (1006, which the service takes for a drop).
    Here the client gives up on an invalid frame that came in the same read as the frame
    that paused reading: all of them are one write (sent one by one, a loaded machine's
    client read the frames that paused it before the invalid one had come, and waited for
    its consumer for ever: a CI run)."""
    server.script = lambda request: [[
        *[fr.Stream(id=request.id, name="stdout", text="x") for _ in range(300)],
        "not a frame"]]
    async with asyncio.timeout(BOUND):
        s = await connect(server.url)
    stream = aiter(s.stream("x"))
    assert isinstance(stream, AsyncGenerator)
    async with asyncio.timeout(BOUND):
        await anext(stream)  # then it takes nothing more
        while s.ended is None:
            await asyncio.sleep(0.01)
        assert s.ended.reason == "protocol_error"
        start = asyncio.get_running_loop().time()
        await s.close()
        assert asyncio.get_running_loop().time() - start < 2.0
        await stream.aclose()
        await server.ended.wait()
    assert server.closes == [1002]


async def test_a_slow_stream_consumer_is_not_taken_for_a_late_server(server: Server) -> None:
    """While reading is paused for a stream() consumer, the time is the consumer's: the
    result's bound does not run. A consumer slower than the cell's output made the client
    give up with ResultTimeout (blaming a server that had sent everything) and lose the
    rest of the frames (a review)."""
    count = 300  # pauses reading at 256; the result comes once reading has paused
    server.script = lambda request: [
        *[fr.Stream(id=request.id, name="stdout", text=f"{n:05d}") for n in range(count)],
        0.3, result(request.id)]
    async with asyncio.timeout(BOUND):
        s = await connect(server.url, result_grace=1.0)
    try:
        texts: list[str] = []
        async with asyncio.timeout(BOUND):
            async for frame in s.stream("x", timeout=0.1):
                if isinstance(frame, fr.Stream):
                    texts.append(frame.text[:5])
                    if len(texts) == 1:
                        await asyncio.sleep(2.0)  # past the bound of 1.1 s
                else:
                    assert isinstance(frame, fr.Result)
        assert texts == [f"{n:05d}" for n in range(count)]
        assert s.ended is None
        assert await s.execute("again", timeout=0.1) is not None  # the bound still works
    finally:
        async with asyncio.timeout(BOUND):
            await s.close()


async def test_keepalive_pings_stop_while_a_stalled_consumer_paused_reading(
        server: Server) -> None:
    """Their pongs cannot be read while reading is paused: the connection was failed
    ("keepalive ping timeout") after ping_interval plus ping_timeout (40 s) of a stalled
    consumer. Pings start again once it reads on."""
    server.script = lambda request: [
        *[fr.Stream(id=request.id, name="stdout", text=f"{n}\n") for n in range(300)],
        result(request.id)]
    async with session(server) as s:
        assert s.ws.keepalive_task is not None  # websockets' default keepalive runs
        s.ws.ping_interval = s.ws.ping_timeout = 0.1
        s.ws.keepalive_task.cancel()
        s.ws.start_keepalive()
        stream = s.stream("x")
        async with asyncio.timeout(BOUND):
            first = await anext(stream)
            assert isinstance(first, fr.Stream)
            await asyncio.sleep(1.0)  # a stalled consumer: ten pings' worth
            rest = [frame async for frame in stream]
        assert len(rest) == 300 and isinstance(rest[-1], fr.Result)
        assert s.ended is None and s.ws.keepalive_task is not None
        pong = await s.ws.ping()
        async with asyncio.timeout(BOUND):
            await pong


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "5"])
def test_an_open_timeout_that_is_not_a_positive_number_is_refused(bad: float) -> None:
    """0 or -1 gave a confusing ConnectFailed ("no WebSocket handshake within 0 s")."""
    with pytest.raises(ValueError, match="open_timeout must be a positive, finite number"):
        connect("ws://127.0.0.1:1", open_timeout=bad)


@pytest.mark.parametrize("bad", [0, -1, True])
def test_max_events_must_be_a_positive_number(bad: int) -> None:
    with pytest.raises(ValueError, match="max_events"):
        connect("ws://127.0.0.1:1", max_events=bad)


# --- what the SDK review found ---------------------------------------------------------------


async def test_a_timeout_around_wait_closed_only_stops_waiting(server: Server) -> None:
    """It cancelled the session's reader, which raised AssertionError (websockets'
    ``close_exc`` read before the connection was closed); the session was then broken."""
    async with session(server) as s:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await s.wait_closed()
        waiting = asyncio.create_task(s.wait_closed())
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert s.ended is None
        async with asyncio.timeout(BOUND):
            assert (await s.execute("x")).status == "success"
    assert s.ended is not None and s.ended.reason == "client_closed"


async def test_close_lets_its_callers_cancellation_through(server: Server) -> None:
    """close() swallowed a cancellation that reached its caller while it waited for the
    reader (here it comes right after the closing handshake)."""
    async with asyncio.timeout(BOUND):
        s = await connect(server.url)
    closing = s._close_now

    async def close_then_be_cancelled(code: int = 1000, reason: str = "") -> None:
        await closing(code, reason)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()

    s._close_now = close_then_be_cancelled  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(BOUND):
            await s.close()
    async with asyncio.timeout(BOUND):
        assert await s.wait_closed() is None
    assert s.ws.close_code == 1000


async def test_a_session_never_closed_ends_quietly_with_the_program(server: Server) -> None:
    """``asyncio.run`` cancels the reader of a session still open as it ends: it printed
    an AssertionError ("connection isn't closed yet")."""
    program = ("import asyncio, sys\n"
               "from ws_sandbox.client import connect\n"
               "async def main():\n"
               "    s = await connect(sys.argv[1])\n"
               "    print((await s.execute('x')).stdout, end='')\n"
               "asyncio.run(main())\n")
    assert await run_program(program, server.url) == (0, "out x\nmore\n", "")


async def run_program(program: str, *args: str) -> tuple[int | None, str, str]:
    """Run ``program`` in a Python of its own: its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def deaf_server() -> AsyncIterator[str]:
    """A server that accepts the upgrade and then says and answers nothing, not even a close."""

    handlers: set[asyncio.Task[None]] = set()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                     + accept_key(key.decode()).encode() + b"\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):  # until the client cuts the connection
                pass
            writer.close()
            await writer.wait_closed()

    listening = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with listening:
        yield f"ws://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
        async with asyncio.timeout(BOUND):
            await asyncio.gather(*handlers)


async def test_a_timeout_around_connect_is_kept_when_no_ready_comes() -> None:
    """Cancelled while waiting for ``ready``, connect closed the connection politely with
    websockets' 10 s close timeout: asyncio.timeout(0.5) raised after 10.5 s."""
    loop = asyncio.get_running_loop()
    async with deaf_server() as url:
        start = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await connect(url)
        assert loop.time() - start < 4.0


async def test_no_ready_within_open_timeout_closes_within_the_clients_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "CLOSE_TIMEOUT", 0.5)
    loop = asyncio.get_running_loop()
    async with deaf_server() as url:
        start = loop.time()
        with pytest.raises(ConnectFailed, match="no ready frame"):
            async with asyncio.timeout(BOUND + 5):
                await connect(url, open_timeout=0.5)
        assert loop.time() - start < 5.0  # websockets' own close timeout is 10 s


def later_version(request: fr.Execute) -> list[Item]:
    """A cell as a later version of the service might answer it: a frame type and words
    protocol v1 does not know, and fields it does not know."""
    cell = request.id
    return [
        f'{{"type": "progress", "id": "{cell}", "percent": 50}}',
        f'{{"type": "stream", "id": "{cell}", "name": "stdout", "text": "out\\n", "seq": 1}}',
        f'{{"type": "stream", "id": "{cell}", "name": "stdlog", "text": "log\\n"}}',
        f'{{"type": "display", "id": "{cell}", "kind": "widget", "data": {{"text/plain": "w"}}}}',
        '{"type": "restarted", "reason": "kernel_swapped", "message": "m"}',
        f'{{"type": "result", "id": "{cell}", "status": "paused", "exit_code": null, '
        '"execution_time_ms": 1.0, "memory_used_mb": null, "error": null, "resumable": true}']


async def test_frames_and_words_of_a_later_version_do_not_end_the_session(
        server: Server) -> None:
    """protocol/spec.md: later versions add fields and frames. A frame type or a status,
    stream name, display kind or reason the client did not know ended the session as a
    protocol error (1002)."""
    server.script = later_version
    seen: list[str] = []
    async with session(server) as s, asyncio.timeout(BOUND):
        r = await s.execute("x", on_output=lambda frame: seen.append(frame.name))
        assert (r.status, r.stdout, r.stderr) == ("paused", "out\n", "")
        assert seen == ["stdout", "stdlog"]
        assert [(d.kind, d.data) for d in r.displays] == [("widget", {"text/plain": "w"})]
        progress = await s.events.get()
        assert isinstance(progress, UnknownFrame) and progress.type == "progress"
        assert progress.data == {"type": "progress", "id": r.result.id, "percent": 50}
        restarted = await s.events.get()
        assert isinstance(restarted, fr.Restarted) and restarted.reason == "kernel_swapped"
        streamed = await frames_of(s.stream("y"))
        assert [type(f).__name__ for f in streamed] == ["Stream", "Stream", "Display",
                                                        "Result"]
        assert isinstance(streamed[-1], fr.Result) and streamed[-1].status == "paused"
        assert s.ended is None
        server.script = lambda request: ['{"type": "closed", "reason": "maintenance"}']
        with pytest.raises(SessionClosed, match="session closed: maintenance") as ended:
            await s.execute("z")
        assert ended.value.reason == "maintenance"
        assert ended.value.closed == fr.Closed(reason="maintenance")


async def test_a_first_frame_of_a_type_the_client_does_not_know_is_not_ready(
        server: Server) -> None:
    server.opening = ['{"type": "hello", "version": 2}']
    with pytest.raises(SessionClosed, match="protocol_error: the server's first frame is not"):
        async with asyncio.timeout(BOUND):
            await connect(server.url)


@pytest.mark.parametrize("data", [
    '{"type": "result", "id": "c1", "status": 5}',  # a word must still be a string
    '{"type": "stream", "id": "c1", "name": "stdout"}',  # missing text
    '{"kind": "stream"}', '[1]', 'null'])
def test_what_is_not_a_frame_even_so_is_still_refused(data: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_server_frame(data.encode())


@pytest.mark.parametrize(("suffix", "path"), [
    ("", "/api/v1/sessions/ws?language=python"),
    ("/", "/api/v1/sessions/ws?language=python"),
    ("?x=1", "/api/v1/sessions/ws?language=python"),
    ("/#top", "/api/v1/sessions/ws?language=python"),
    ("/sandbox", "/sandbox/api/v1/sessions/ws?language=python"),
    ("/sandbox/?x=1", "/sandbox/api/v1/sessions/ws?language=python"),
    ("/sandbox/api/v1/sessions/ws?language=rust", "/sandbox/api/v1/sessions/ws?language=python"),
])
async def test_a_urls_path_is_a_prefix_and_its_query_is_dropped(
        server: Server, suffix: str, path: str) -> None:
    """A query went into the path (``ws://host?x=1/api/v1/...``): the service refused the
    upgrade with a misleading HTTP 403."""
    async with asyncio.timeout(BOUND):
        s = await connect(server.url + suffix)
        await s.close()
    assert server.paths == [path]


@pytest.mark.parametrize("url", ["ws://127.0.0.1:99999", "ws://127.0.0.1:8x", "ws://[::1"])
async def test_a_url_that_cannot_be_parsed_is_a_connect_failure(url: str) -> None:
    """A port out of range escaped as a bare ValueError."""
    with pytest.raises(ConnectFailed, match="invalid URL"):
        async with asyncio.timeout(BOUND):
            await connect(url)


async def test_a_callback_that_exits_raises_where_its_caller_waits(server: Server) -> None:
    """SystemExit from on_output escaped into the connection's data_received and stopped
    the event loop from there, with the session half read."""
    program = ("import asyncio, sys\n"
               "from ws_sandbox.client import connect\n"
               "async def main():\n"
               "    s = await connect(sys.argv[1])\n"
               "    try:\n"
               "        await s.execute('x', on_output=lambda frame: sys.exit(3))\n"
               "    except SystemExit as exc:\n"
               "        print('raised by execute', exc.code)\n"
               "    print((await s.execute('y')).stdout, end='')\n"
               "    await s.close()\n"
               "asyncio.run(main())\n")
    assert await run_program(program, server.url) == (
        0, "raised by execute 3\nout y\nmore\n", "")


# --- execute_once: the REST call ------------------------------------------------------------


@dataclass
class HttpServer:
    url: str
    requests: list[tuple[str, str | None, Any]] = field(default_factory=list)
    """Each request's path, ``Authorization`` header and JSON body."""


@contextlib.contextmanager
def http_server(status: int, body: bytes, delay: float = 0.0) -> Iterator[HttpServer]:
    """An HTTP server that answers every POST with ``status`` and ``body`` after ``delay``
    seconds (and a GET with 404)."""
    seen = HttpServer("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            seen.requests.append((self.path, self.headers.get("Authorization"),
                                  json.loads(self.rfile.read(length))))
            time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # (where a redirected POST goes)
            seen.requests.append((self.path, self.headers.get("Authorization"), None))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seen.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


ANSWER = {"execution_id": "e1", "status": "success", "stdout": "1\n", "stderr": "",
          "execution_time_ms": 1.5, "memory_used_mb": 3.0, "exit_code": 0, "error": None,
          "language": "python", "truncated": False, "display": [], "added_later": 1}


def test_execute_once_posts_the_call_and_reads_its_answer() -> None:
    with http_server(200, json.dumps(ANSWER).encode()) as server:
        result = client.execute_once(
            server.url.replace("http", "ws") + "/prefix/api/v1/sessions/ws", "print(1)",
            language="py", timeout=5, api_key="k-0123456789abcdef")
    [(path, authorization, request)] = server.requests
    assert path == "/prefix/api/v1/execute"
    assert authorization == "Bearer k-0123456789abcdef"
    assert request == {"code": "print(1)", "language": "py", "timeout": 5}
    assert (result.status, result.stdout, result.exit_code, result.execution_id) == (
        "success", "1\n", 0, "e1")  # and a field it does not know is ignored


@pytest.mark.parametrize(("status", "body", "error"), [
    (429, b'{"error": {"code": "rate_limited", "message": "retry in 2 s"}}', SessionRefused),
    (400, b'{"error": {"code": "bad_request", "message": "code is empty"}}', SessionRefused),
    (502, b"Bad Gateway", ConnectFailed),
    (200, b"<html>a web page</html>", ConnectFailed),
    (200, b'{"status": "success"}', ConnectFailed),  # no execution id: not a result
])
def test_execute_once_tells_a_refusal_from_the_wrong_place(status: int, body: bytes,
                                                           error: type[Exception]) -> None:
    with http_server(status, body) as server, pytest.raises(error) as raised:
        client.execute_once(server.url, "print(1)")
    if isinstance(raised.value, SessionRefused):
        assert raised.value.http_status == status
        assert raised.value.error.message in body.decode()
    else:
        assert "not" in str(raised.value)


def test_execute_once_bounds_its_wait_and_says_what_failed() -> None:
    with (http_server(200, json.dumps(ANSWER).encode(), delay=1.0) as server,
          pytest.raises(ConnectFailed, match=r"no answer from .* within 0\.5 s")):
        client.execute_once(server.url, "x", timeout=0.25, result_grace=0.25)
    port = server.url.rsplit(":", 1)[1]
    with pytest.raises(ConnectFailed, match=f"cannot reach http://127.0.0.1:{port}"):
        client.execute_once(server.url, "x")  # nothing listens there any more
    with pytest.raises(ConnectFailed, match="invalid URL 'ftp://x'"):
        client.execute_once("ftp://x", "x")
    with pytest.raises(SessionRefused, match="cannot be encoded as UTF-8"):
        client.execute_once(server.url, "\udcff")
    with pytest.raises(ValueError, match="timeout"):
        client.execute_once(server.url, "x", timeout=-1)


@contextlib.contextmanager
def raw_http_server(answer: bytes) -> Iterator[str]:
    """A server that reads a request's head, writes ``answer`` (bytes as they are: not HTTP,
    or cut short) and closes the connection; yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                with connection:
                    connection.settimeout(BOUND)
                    head = b""
                    while b"\r\n\r\n" not in head and (chunk := connection.recv(65536)):
                        head += chunk
                    connection.sendall(answer)
                    connection.shutdown(socket.SHUT_WR)
                    while connection.recv(65536):  # the body: unread, close would reset
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # (close alone does not end a blocked accept)
        listener.close()
        thread.join(BOUND)


def test_execute_once_follows_no_redirect_and_sends_the_key_nowhere_else() -> None:
    """urllib's redirect handler sent every header, the API key among them, to the host the
    answer named (a review)."""
    with http_server(200, json.dumps(ANSWER).encode()) as elsewhere:
        redirect = (f"HTTP/1.1 302 Found\r\nLocation: {elsewhere.url}/x\r\n"
                    "Content-Length: 0\r\n\r\n").encode()
        with raw_http_server(redirect) as url, pytest.raises(ConnectFailed) as raised:
            client.execute_once(url, "print(1)", api_key="k-0123456789abcdef")
    assert elsewhere.requests == []
    assert raised.value.http_status == 302 and "HTTP 302" in str(raised.value)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n{\"execution_id\"",  # cut short
    b"SSH-2.0-OpenSSH_9.2\r\n",  # not HTTP
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",  # a header line too long
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",  # too many headers
])
def test_execute_once_turns_a_broken_answer_into_connect_failed(answer: bytes) -> None:
    with raw_http_server(answer) as url, pytest.raises(ConnectFailed, match="HTTP server"):
        client.execute_once(url, "print(1)")


async def test_a_url_that_cannot_be_used_is_connect_failed() -> None:
    """A host name that IDNA cannot encode (a label over 63 characters) or a NUL raised
    ``UnicodeError`` and ``ValueError``, outside the client's exceptions (a review)."""
    for url in ("http://" + "a" * 70 + ".example:8090", "http://127.0.0.\x001:8090",
                "http://127.0.0.1:8090/a b"):
        with pytest.raises(ConnectFailed):
            client.execute_once(url, "print(1)", result_grace=1)
        with pytest.raises(ConnectFailed):
            async with asyncio.timeout(BOUND):
                await connect(url.replace("http", "ws"), open_timeout=1)


@pytest.mark.parametrize(("key", "what"), [
    ("s3cret-key-0123456789\n", r"'\\n' at character 21"),
    (" s3cret-key-0123456789", "' ' at character 0"),
    ("s3cret-kéy-0123456789", "a non-ASCII character at character 8"),
])
def test_an_api_key_no_service_has_is_refused_without_being_repeated(key: str,
                                                                      what: str) -> None:
    """A key read from a file with its newline went into a ValueError (and a traceback, a
    log) whole, or became a ``UnicodeEncodeError`` (a review)."""
    for call in (lambda: client.execute_once("http://127.0.0.1:1", "x", api_key=key),
                 lambda: connect("ws://127.0.0.1:1", api_key=key)):
        with pytest.raises(ValueError, match=what) as raised:
            call()
        assert "0123456789" not in str(raised.value)


async def test_frames_a_stream_left_behind_go_to_events(server: Server) -> None:
    """A consumer that left a stream early lost the frames already read for it, the result
    among them; they go to ``events``, as a cell's nobody waits for do."""
    async with session(server) as s:
        async with asyncio.timeout(BOUND):
            stream = s.stream("x")
            first = await anext(stream)
            await s.execute("y")  # its result comes after x's: x's frames are all read
            await stream.aclose()
        left = [s.events.get_nowait() for _ in range(s.events.qsize())]
    assert isinstance(first, fr.Stream) and first.text == "out x\n"
    assert [type(f).__name__ for f in left] == ["Stream", "Display", "Stream", "Result"]
    assert isinstance(left[-1], fr.Result) and left[-1].id == first.id


async def test_connect_follows_no_redirect(server: Server) -> None:
    """The WebSocket client dropped the key on a redirect to another host but opened the
    session there all the same, and the user's code went to it (a review)."""
    redirect = (f"HTTP/1.1 302 Found\r\nLocation: {server.url}/api/v1/sessions/ws\r\n"
                "Content-Length: 0\r\n\r\n").encode()
    with raw_http_server(redirect) as url, pytest.raises(ConnectFailed) as raised:
        async with asyncio.timeout(BOUND):
            await connect(url.replace("http", "ws"), api_key="k-0123456789abcdef")
    assert raised.value.http_status == 302, raised.value
    assert server.paths == []  # the server it pointed to was never asked
