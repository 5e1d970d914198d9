"""The asyncio driver with a scripted fake sandbox and sink (the engine is not under test)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, cast

import pytest

from ws_sandbox import agent_wire as aw
from ws_sandbox import driver as driver_module
from ws_sandbox import frames as fr
from ws_sandbox.backend import Sandbox
from ws_sandbox.driver import (
    ClientBack,
    ClientGone,
    ClientMessage,
    CloseRequest,
    SessionRunner,
)
from ws_sandbox.exceptions import SandboxLost
from ws_sandbox.session import Session, SessionLimits

BOUND = 10.0
"""Generous bound on any single wait (seconds)."""

LIMITS = SessionLimits(
    max_execution_time=5.0, default_execution_time=2.0, max_memory_mb=64,
    max_output_bytes=1000, max_code_bytes=1000, max_queued_cells=4, idle_timeout=30.0,
    max_lifetime=60.0, resume_grace=0.5, interrupt_grace=0.1, restart_timeout=0.2,
    max_sandbox_replacements=3)


class FakeSandbox:
    """Answers every exec with one stdout chunk (the code itself) and a done."""

    def __init__(self, name: str = "fake") -> None:
        self.short_id = name
        self.frames: asyncio.Queue[aw.FromAgent | None] = asyncio.Queue()
        self.sent: list[aw.ToAgent] = []
        self.destroyed = False
        self.graceful: bool | None = None

    async def send(self, frame: aw.ToAgent) -> None:
        self.sent.append(frame)
        if isinstance(frame, aw.Exec):
            self.frames.put_nowait(aw.Out(id=frame.id, name="stdout", text=frame.code))
            self.frames.put_nowait(aw.Done(id=frame.id, status="success", exit_code=0))

    async def receive_many(self) -> list[aw.FromAgent]:
        """Like the real one: everything queued now (what one read would carry)."""
        frame = await self.frames.get()
        if frame is None:
            raise SandboxLost("exited")
        frames = [frame]
        while not self.frames.empty() and (more := self.frames.get_nowait()) is not None:
            frames.append(more)
        return frames

    async def oom_killed(self) -> bool:
        return False

    async def destroy(self, *, graceful: bool = True) -> None:
        self.destroyed = True
        self.graceful = graceful


class Sink:
    whole_batches = True
    bounds_own_sends = False

    def __init__(self) -> None:
        self.frames: asyncio.Queue[fr.ServerFrame] = asyncio.Queue()
        self.batches: list[list[str]] = []
        self.closed: tuple[int, str] | None = None

    async def send_frames(self, frames: Sequence[fr.ServerFrame]) -> None:
        self.batches.append([type(f).__name__ for f in frames])
        for frame in frames:
            self.frames.put_nowait(frame)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    async def next(self, kind: type[Any]) -> Any:
        async with asyncio.timeout(5):
            while True:
                frame = await self.frames.get()
                if isinstance(frame, kind):
                    return frame


def start(sandbox: FakeSandbox, sink: Sink, acquire: Any = None,
          send_timeout: float | None = 1.0, on_cell: Any = None,
          ) -> tuple[SessionRunner, asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    core = Session(session_id="s", language="python", limits=LIMITS, now=loop.time())

    async def no_sandbox() -> Sandbox:
        raise SandboxLost("no engine")

    runner = SessionRunner(core, cast(Sandbox, sandbox), acquire=acquire or no_sandbox,
                           send_timeout=send_timeout, on_cell=on_cell)
    runner.attach(sink)
    return runner, asyncio.create_task(runner.run())


def execute(cell_id: str, code: str) -> ClientMessage:
    return ClientMessage(fr.encode(fr.Execute(id=cell_id, code=code)).decode())


async def test_cell_flows_through_and_close_removes_the_sandbox() -> None:
    sandbox, sink = FakeSandbox(), Sink()
    runner, task = start(sandbox, sink)
    await runner.feed(execute("c1", "hello"))
    stream = await sink.next(fr.Stream)
    assert stream.text == "hello"
    result = await sink.next(fr.Result)
    assert result.status == "success"
    await runner.feed(CloseRequest("client_closed", "bye"))
    await asyncio.wait_for(task, 5)
    assert sandbox.destroyed
    assert sandbox.graceful is True  # a healthy sandbox gets STOP_TIMEOUT to stop
    assert sink.closed == (1000, "client_closed")


async def test_frames_of_one_agent_read_reach_the_client_as_one_batch() -> None:
    # The agent sends a short cell's output and its done in one write; the client gets
    # the stream and result frames in one send (one WebSocket write, one wake-up).
    sandbox, sink = FakeSandbox(), Sink()
    runner, task = start(sandbox, sink)
    await runner.feed(execute("c1", "hello"))
    await sink.next(fr.Result)
    assert sink.batches[-1] == ["Stream", "Result"]
    await runner.feed(CloseRequest("client_closed", "bye"))
    await asyncio.wait_for(task, 5)


def back(sink: Sink, token: str = "t") -> ClientBack:
    """A resume through ``sink``, with the ready frame the manager would make."""
    return ClientBack(sink, fr.Ready(session_id="s", language="python", token=token,
                                     limits=LIMITS.public(), resumed=True))


async def test_frames_made_while_detached_are_replayed_on_resume() -> None:
    sandbox, first = FakeSandbox(), Sink()
    runner, task = start(sandbox, first)
    await runner.feed(ClientGone(first))
    await runner.feed(execute("c1", "while away"))
    await asyncio.sleep(0.05)
    second = Sink()
    await runner.feed(back(second))
    assert (await second.next(fr.Ready)).resumed
    assert (await second.next(fr.Stream)).text == "while away"
    assert (await second.next(fr.Result)).id == "c1"
    await runner.feed(CloseRequest("client_closed", ""))
    await asyncio.wait_for(task, 5)


class StuckSink(Sink):
    """A client that stops reading: every send blocks until the runner gives up."""

    async def send_frames(self, frames: Sequence[fr.ServerFrame]) -> None:
        await asyncio.Event().wait()


class FailingSink(Sink):
    """A client that does not take frames one at a time and drops after ``ok`` of them."""

    whole_batches = False

    def __init__(self, ok: int) -> None:
        super().__init__()
        self.ok = ok

    async def send_frames(self, frames: Sequence[fr.ServerFrame]) -> None:
        assert len(frames) == 1, "a sink without whole batches gets one frame per send"
        if self.ok == 0:
            raise ConnectionResetError("gone")
        self.ok -= 1
        await super().send_frames(frames)


async def resume(runner: SessionRunner) -> Sink:
    sink = Sink()
    await runner.feed(back(sink))
    assert (await sink.next(fr.Ready)).resumed
    return sink


async def test_a_batch_that_times_out_is_held_for_the_resume() -> None:
    sandbox, stuck = FakeSandbox(), StuckSink()
    runner, task = start(sandbox, stuck, send_timeout=0.2)
    await runner.feed(execute("c1", "unread"))
    async with asyncio.timeout(5):
        while stuck.closed is None:
            await asyncio.sleep(0.01)
    assert stuck.closed == (1008, "client too slow")
    second = await resume(runner)
    assert (await second.next(fr.Stream)).text == "unread"
    assert (await second.next(fr.Result)).id == "c1"
    await runner.feed(CloseRequest("client_closed", ""))
    await asyncio.wait_for(task, 5)


async def test_a_frame_by_frame_sink_that_fails_midway_replays_only_the_rest() -> None:
    sandbox, flaky = FakeSandbox(), FailingSink(ok=1)
    runner, task = start(sandbox, flaky)
    await runner.feed(execute("c1", "seen once"))
    assert (await flaky.next(fr.Stream)).text == "seen once"
    await asyncio.sleep(0.05)
    second = await resume(runner)
    assert (await second.next(fr.Result)).id == "c1"
    assert [b for b in second.batches if "Stream" in b] == []  # not sent twice
    await runner.feed(CloseRequest("client_closed", ""))
    await asyncio.wait_for(task, 5)


class NeverEnds(FakeSandbox):
    """Takes every frame and answers none: a cell that runs forever (``while True: pass``)."""

    async def send(self, frame: aw.ToAgent) -> None:
        self.sent.append(frame)


class SlowReader(Sink):
    """A client that takes each send after a moment (well within SEND_TIMEOUT)."""

    async def send_frames(self, frames: Sequence[fr.ServerFrame]) -> None:
        await asyncio.sleep(0)
        await super().send_frames(frames)


async def test_a_busy_inbox_does_not_starve_the_deadlines() -> None:
    """A client that sends without pause keeps the inbox from ever being empty, and a get()
    that need not wait never times out: the cell's deadline must still be acted on."""
    sandbox, sink = NeverEnds(), SlowReader()
    runner, task = start(sandbox, sink, send_timeout=5.0)
    await runner.feed(execute("c1", "while True: pass"))  # the default timeout: 2 s
    stop = asyncio.Event()

    async def flood() -> None:
        while not stop.is_set():
            await runner.feed(ClientMessage("not json"))  # each answered with an error

    flooding = asyncio.create_task(flood())
    try:
        async with asyncio.timeout(BOUND):
            while aw.RestartWorker() not in sandbox.sent:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await flooding
    assert sandbox.sent[:3] == [sandbox.sent[0], aw.Signal(), aw.RestartWorker()]
    await runner.feed(CloseRequest("client_closed", ""))
    await asyncio.wait_for(task, BOUND)


class OwnBoundsSink(Sink):
    """Like a Jupyter kernel: bounds each of its connections' sends itself, and may take
    longer than SEND_TIMEOUT over all of them."""

    bounds_own_sends = True

    async def send_frames(self, frames: Sequence[fr.ServerFrame]) -> None:
        await asyncio.sleep(0.3)
        await super().send_frames(frames)


async def test_a_sink_that_bounds_its_own_sends_is_not_timed_out() -> None:
    """Two slow but acceptable connections of a kernel together took more than the
    runner's SEND_TIMEOUT, and the runner then closed the kernel for every connection."""
    sandbox, sink = FakeSandbox(), OwnBoundsSink()
    runner, task = start(sandbox, sink, send_timeout=0.1)
    await runner.feed(execute("c1", "slow"))
    result = await sink.next(fr.Result)
    assert result.status == "success"
    assert sink.closed is None and runner.attached
    await runner.feed(CloseRequest("client_closed", ""))
    await asyncio.wait_for(task, BOUND)


async def test_no_resume_within_grace_ends_the_session() -> None:
    sandbox, sink = FakeSandbox(), Sink()
    runner, task = start(sandbox, sink)
    await runner.feed(ClientGone(sink))
    await asyncio.wait_for(task, 5)
    assert runner.core.close_reason == "resume_expired"
    assert sandbox.destroyed


async def test_lost_sandbox_is_replaced_and_the_client_told() -> None:
    old, new, sink = FakeSandbox("old"), FakeSandbox("new"), Sink()

    async def acquire() -> Sandbox:
        return cast(Sandbox, new)

    runner, task = start(old, sink, acquire)
    old.frames.put_nowait(None)  # the container died
    restarted = await sink.next(fr.Restarted)
    assert restarted.reason == "sandbox_replaced"
    assert old.destroyed
    assert old.graceful is False  # a replaced sandbox is killed at once
    await runner.feed(execute("c2", "on the new one"))
    assert (await sink.next(fr.Stream)).text == "on the new one"
    assert any(isinstance(f, aw.Exec) for f in new.sent)
    await runner.feed(CloseRequest("client_closed", ""))
    await asyncio.wait_for(task, 5)
    assert new.destroyed


async def test_a_write_the_sandbox_refuses_ends_the_cell_and_replaces_it() -> None:
    """``Sandbox.send`` raises ``SandboxLost`` when the agent takes nothing for
    ``SEND_TIMEOUT`` (tests/integration/test_backend.py): the cell ends, the sandbox is
    replaced and the session goes on."""
    old, new, sink = FakeSandbox("old"), FakeSandbox("new"), Sink()

    async def refuse(frame: aw.ToAgent) -> None:
        raise SandboxLost("sandbox old accepted nothing for 1 s")

    async def acquire() -> Sandbox:
        return cast(Sandbox, new)

    old.send = refuse  # type: ignore[method-assign]
    runner, task = start(old, sink, acquire)
    await runner.feed(execute("c1", "never taken"))
    result = await sink.next(fr.Result)
    assert (result.id, result.status, result.state_lost) == ("c1", "killed", True)
    assert "accepted nothing for 1 s" in (result.error or "")
    assert (await sink.next(fr.Restarted)).reason == "sandbox_replaced"
    assert old.destroyed and old.graceful is False
    await runner.feed(execute("c2", "on the new one"))
    assert (await sink.next(fr.Stream)).text == "on the new one"
    await runner.feed(CloseRequest("client_closed", ""))
    await asyncio.wait_for(task, 5)


async def test_the_replacement_is_asked_for_before_the_old_sandbox_is_gone() -> None:
    """Removing the old sandbox may take up to STOP_TIMEOUT: the new one does not wait."""
    old, new, sink = FakeSandbox("old"), FakeSandbox("new"), Sink()
    release = asyncio.Event()
    asked = asyncio.Event()

    async def slow_destroy(*, graceful: bool = True) -> None:
        async with asyncio.timeout(5):
            await asked.wait()  # fails the test (timeout) if acquire waits for this
        old.destroyed = True
        await release.wait()

    async def acquire() -> Sandbox:
        asked.set()
        return cast(Sandbox, new)

    old.destroy = slow_destroy  # type: ignore[method-assign]
    runner, task = start(old, sink, acquire)
    old.frames.put_nowait(None)  # the container died
    async with asyncio.timeout(5):
        await asked.wait()
    release.set()
    assert (await sink.next(fr.Restarted)).reason == "sandbox_replaced"
    assert old.destroyed
    await runner.feed(CloseRequest("client_closed", ""))
    await asyncio.wait_for(task, 5)
    assert new.destroyed


async def test_no_replacement_closes_with_sandbox_lost() -> None:
    sandbox, sink = FakeSandbox(), Sink()
    _, task = start(sandbox, sink)
    sandbox.frames.put_nowait(None)
    closed = await sink.next(fr.Closed)
    assert closed.reason == "sandbox_lost"
    await asyncio.wait_for(task, 5)


async def test_cancellation_sends_server_shutdown() -> None:
    sandbox, sink = FakeSandbox(), Sink()
    runner, task = start(sandbox, sink)
    await asyncio.sleep(0.01)
    task.cancel()
    closed = await sink.next(fr.Closed)
    assert closed.reason == "server_shutdown"
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sandbox.destroyed
    assert runner.closed.is_set()


async def test_an_interrupt_asked_with_a_full_inbox_is_acted_on_first() -> None:
    """A cell printing faster than its client reads keeps the inbox full: that is when users
    interrupt. ``interrupt_soon`` neither waits, nor keeps a task per call, nor drops the
    request: the loop acts on it before its next event, and requests made meanwhile are
    one."""
    sandbox, sink = NeverEnds(), Sink()
    runner, task = start(sandbox, sink)
    await runner.feed(execute("c1", "while True: print(1)"))
    async with asyncio.timeout(BOUND):
        while not sandbox.sent:
            await asyncio.sleep(0.01)
    while True:  # fill the inbox (no await: the loop takes nothing meanwhile)
        try:
            runner._inbox.put_nowait(ClientMessage("{}"))
        except asyncio.QueueFull:
            break
    tasks = len(asyncio.all_tasks())
    for _ in range(5):
        runner.interrupt_soon()
    assert len(asyncio.all_tasks()) == tasks
    async with asyncio.timeout(BOUND):
        while aw.Signal() not in sandbox.sent:
            await asyncio.sleep(0.01)
    assert sandbox.sent.count(aw.Signal()) == 1
    await runner.feed(CloseRequest("client_closed", ""))
    await asyncio.wait_for(task, BOUND)


class Talks(NeverEnds):
    """Prints once for a cell and never ends it."""

    async def send(self, frame: aw.ToAgent) -> None:
        await super().send(frame)
        if isinstance(frame, aw.Exec):
            self.frames.put_nowait(aw.Out(id=frame.id, name="stdout", text="x"))


class Deaf(Sink):
    """A client that takes nothing: sends and the close wait for good."""

    async def send_frames(self, frames: Sequence[fr.ServerFrame]) -> None:
        await asyncio.Event().wait()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        await asyncio.Event().wait()  # WebSocketSink's is bounded; the session need not wait


async def test_a_client_too_slow_is_closed_aside_and_the_session_goes_on() -> None:
    """The close of a client that took nothing waits for it (up to SEND_TIMEOUT more): done
    in the session's loop, that wait held every deadline. Here the resume grace (0.5 s)
    ends the session, and its sandbox goes, while the close still waits."""
    sandbox, sink = Talks(), Deaf()
    runner, task = start(sandbox, sink, send_timeout=0.2)
    await runner.feed(execute("c1", "print('x'); while True: pass"))
    async with asyncio.timeout(BOUND):
        await runner.closed.wait()
        while not sandbox.destroyed:
            await asyncio.sleep(0.02)
    assert runner.core.close_reason == "resume_expired"
    assert sink.closed == (1008, "client too slow")
    # The teardown waits for the close SEND_TIMEOUT at most (this one never ends).
    await asyncio.wait_for(task, BOUND)


async def test_a_connection_let_go_speaks_for_the_session_no_more() -> None:
    """A client let go (too slow, or resumed from elsewhere) stays open while its close
    waits: what it sends, its goodbye (a close with 1000) included, must not reach the
    session its successor now holds."""
    sandbox, old = FakeSandbox(), Sink()
    runner, task = start(sandbox, old)
    new = Sink()
    await runner.feed(back(new))
    await new.next(fr.Ready)
    stale = fr.encode(fr.Execute(id="old", code="from the old one")).decode()
    await runner.feed(ClientMessage(stale, old))
    await runner.feed(CloseRequest("client_closed", "the client closed the session", old))
    await runner.feed(ClientMessage(
        fr.encode(fr.Execute(id="c2", code="from the new one")).decode(), new))
    assert (await new.next(fr.Stream)).text == "from the new one"
    assert not runner.closed.is_set()
    assert [f.id for f in sandbox.sent if isinstance(f, aw.Exec)] == ["c2"]
    await runner.feed(CloseRequest("client_closed", "", new))
    await asyncio.wait_for(task, BOUND)


REPLAYED = [("Result", "c1"), ("Stream", "c2"), ("Result", "c2")]
"""What a buffer of 3 keeps of :func:`three_cells_while_away`'s frames."""


async def three_cells_while_away(monkeypatch: pytest.MonkeyPatch
                                 ) -> tuple[SessionRunner, asyncio.Task[None]]:
    """A session whose client left before three cells ran: 6 frames made, a buffer of 3."""
    monkeypatch.setattr(driver_module, "DETACHED_BUFFER_FRAMES", 3)
    sandbox, first = FakeSandbox(), Sink()
    runner, task = start(sandbox, first)
    await runner.feed(ClientGone(first))
    for n in range(3):
        await runner.feed(execute(f"c{n}", f"out{n}"))
    async with asyncio.timeout(5):
        while runner._held_dropped < 3:  # every cell ran: 6 frames made, 3 kept
            await asyncio.sleep(0.01)
    return runner, task


async def test_a_resume_says_how_many_frames_the_buffer_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames made while the client was away past the buffer were dropped without a word:
    the replayed result even said nothing was cut (a review). The resumed ready frame
    now counts them (here the buffer keeps 3 of 6)."""
    runner, task = await three_cells_while_away(monkeypatch)

    async def resumed() -> list[fr.ServerFrame]:
        sink = Sink()
        await runner.feed(back(sink))
        async with asyncio.timeout(5):
            while sink.frames.empty():
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        return [sink.frames.get_nowait() for _ in range(sink.frames.qsize())]

    ready, *replay = await resumed()
    assert isinstance(ready, fr.Ready) and ready.frames_dropped == 3
    assert [(type(f).__name__, getattr(f, "id", "")) for f in replay] == REPLAYED
    again, *rest = await resumed()  # nothing made, nothing dropped since
    assert isinstance(again, fr.Ready) and again.frames_dropped == 0 and rest == []
    await runner.feed(CloseRequest("client_closed", ""))
    await asyncio.wait_for(task, 5)


class GoneSink(Sink):
    """A resuming client that vanished before its first frame: every send fails."""

    async def send_frames(self, frames: Sequence[fr.ServerFrame]) -> None:
        raise ConnectionResetError("gone")


@pytest.mark.parametrize("vanishing", [GoneSink, lambda: FailingSink(ok=0)],
                         ids=["whole-batches", "frame-by-frame"])
async def test_a_resume_that_fails_leaves_no_stale_ready_for_the_next(
        monkeypatch: pytest.MonkeyPatch, vanishing: Any) -> None:
    """A resuming connection that died before the replay was held again whole, its ready
    frame too: the next resume got two ready frames, the stale one first in the buffer,
    where it pushed out a real frame (a review). The next resume gets one ready, which
    still counts the frames dropped before the failed one."""
    runner, task = await three_cells_while_away(monkeypatch)
    gone = vanishing()
    await runner.feed(back(gone))
    async with asyncio.timeout(5):
        while runner._sink is gone:
            await asyncio.sleep(0.01)
    await runner.feed(ClientGone(gone))
    sink = Sink()
    await runner.feed(back(sink, "t2"))
    async with asyncio.timeout(5):
        while sink.frames.qsize() < 4:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    ready, *replay = [sink.frames.get_nowait() for _ in range(sink.frames.qsize())]
    assert isinstance(ready, fr.Ready) and ready.token == "t2"
    assert ready.frames_dropped == 3
    assert [(type(f).__name__, getattr(f, "id", "")) for f in replay] == REPLAYED
    await runner.feed(CloseRequest("client_closed", ""))
    await asyncio.wait_for(task, 5)


async def test_a_replacement_waiting_for_a_full_inbox_is_destroyed_at_the_teardown() -> None:
    """The replacer acquires a sandbox, then waits for room in the inbox; a session that
    ended meanwhile (its lifetime ran out while it was stuck sending to a slow client)
    cancelled that wait and lost the sandbox: a container left stopped for good (a review,
    5 in 5 runs)."""
    loop = asyncio.get_running_loop()
    core = Session(session_id="s", language="python", limits=LIMITS, now=loop.time())
    new = FakeSandbox("new")

    async def acquire() -> Sandbox:
        return cast(Sandbox, new)

    runner = SessionRunner(core, cast(Sandbox, FakeSandbox("old")), acquire=acquire,
                           send_timeout=1.0)
    for _ in range(driver_module.INBOX_SIZE):  # the loop is stuck: nothing takes these
        runner.feed_nowait(ClientGone(Sink()))
    replacer = asyncio.create_task(runner._bring_sandbox())
    runner._replacer = replacer
    for _ in range(5):
        await asyncio.sleep(0)  # it has the sandbox and waits for room
    assert not replacer.done()
    await runner._teardown()
    assert replacer.cancelled()
    assert new.destroyed


async def test_a_cell_is_recorded_even_when_the_session_is_cancelled_delivering_it() -> None:
    """The cell's observers (stats, audit, history) ran after its result was delivered; a
    session cancelled during that send (the shutdown's cancel after SHUTDOWN_TIMEOUT, a
    client that reads nothing) lost the cell's record (a review's reading of the code)."""
    recorded: list[str] = []
    sending = asyncio.Event()

    class Stuck(Sink):
        async def send_frames(self, frames: Sequence[fr.ServerFrame]) -> None:
            if any(isinstance(f, fr.Result) for f in frames):
                sending.set()
                await asyncio.Event().wait()  # a client that takes nothing
            await super().send_frames(frames)

    runner, task = start(FakeSandbox(), Stuck(), send_timeout=None,
                         on_cell=lambda _, finished: recorded.append(finished.result.id))
    await runner.feed(execute("c1", "hello"))
    async with asyncio.timeout(BOUND):
        await sending.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        async with asyncio.timeout(BOUND):
            await task
    assert recorded == ["c1"]


async def test_the_client_s_waiting_messages_are_bounded_in_bytes() -> None:
    """The inbox counted 64 events whatever their size: a client sending the largest
    messages while the session was busy made it hold 1.5 GiB (a review). A client's message
    now waits while those already waiting hold CLIENT_BYTES (one always fits)."""
    loop = asyncio.get_running_loop()
    core = Session(session_id="s", language="python", limits=LIMITS, now=loop.time())

    async def acquire() -> Sandbox:
        raise SandboxLost("none")

    runner = SessionRunner(core, cast(Sandbox, FakeSandbox()), acquire=acquire,
                           send_timeout=1.0)  # its loop is not running: nothing is taken
    big = "x" * (driver_module.CLIENT_BYTES * 3 // 4)
    async with asyncio.timeout(BOUND):
        await runner.feed(ClientMessage(big))  # one always fits, whatever its size
        await runner.feed(ClientMessage("small"))
    second = asyncio.create_task(runner.feed(ClientMessage(big)))
    await asyncio.sleep(0.05)
    assert not second.done()  # 1.5 x CLIENT_BYTES would be waiting
    runner._taken(runner._inbox.get_nowait())  # the loop takes the first
    async with asyncio.timeout(BOUND):
        await second
    third = asyncio.create_task(runner.feed(ClientMessage(big)))
    await asyncio.sleep(0.05)
    assert not third.done()
    runner.closed.set()  # the session ends: a message waiting for room is dropped
    runner._client_room.set()
    async with asyncio.timeout(BOUND):
        await third
    assert runner._inbox.qsize() == 2
