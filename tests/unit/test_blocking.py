"""The blocking client against ``tests/unit/test_client.py``'s scripted server, which runs
in a thread of its own here: the client blocks the test's (main) thread, as a script's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.unit.test_client import BOUND, RESTARTED, Server, echo, scripted_server
from ws_sandbox import frames as fr
from ws_sandbox.blocking import CalledFromCallback, connect
from ws_sandbox.client import SessionClosed, SessionRefused, UnknownFrame


@pytest.fixture
def server() -> Iterator[Server]:
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[tuple[Server, asyncio.Event]] = (
        concurrent.futures.Future())

    async def serve() -> None:
        stop = asyncio.Event()
        async with scripted_server() as running:
            started.set_result((running, stop))
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    running, stop = started.result(BOUND)
    try:
        yield running
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(BOUND)
        loop.close()


def client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ws-sandbox-client"]


def test_execute_stream_restart_and_close_block_and_answer(server: Server) -> None:
    seen: list[tuple[str, bool]] = []
    with connect(server.url) as session:
        assert session.ready.session_id == "s1"
        result = session.execute(
            "x", on_output=lambda f: seen.append((f.text, threading.current_thread()
                                                  is threading.main_thread())))
        assert (result.status, result.stdout, result.stderr) == ("success", "out x\nmore\n",
                                                                 "err\n")
        assert seen == [("out x\n", False), ("err\n", False), ("more\n", False)]
        frames = list(session.stream("y", program=True))
        assert [type(f).__name__ for f in frames] == ["Stream", "Stream", "Display", "Stream",
                                                      "Result"]
        assert session.restart() == RESTARTED
        assert session.events() == [RESTARTED]
        assert session.events() == []
        assert len(client_threads()) == 1
    assert client_threads() == []  # the session's thread is gone with it
    with pytest.raises(SessionClosed, match="closed"):
        session.execute("after the end")
    session.close()  # twice: nothing more to do
    sent = [fr.decode_client(m) for m in server.received]
    assert [type(f).__name__ for f in sent] == ["Execute", "Execute", "Restart"]
    assert isinstance(sent[1], fr.Execute) and sent[1].program


def test_refusals_and_a_closed_session_raise_as_the_async_client_does(
        server: Server) -> None:
    refusal = fr.Error(code="bad_request", message="no", id=None)
    server.script = lambda request: [fr.Error(code="queue_full", message="full",
                                              id=request.id)]
    with connect(server.url) as session:
        with pytest.raises(SessionRefused, match="queue_full"):
            session.execute("x")
        server.script = lambda request: ["close 1000"]
        with pytest.raises(SessionClosed):
            session.execute("y")
    server.opening = [refusal, "refuse"]  # then closes, as the service does
    with pytest.raises(SessionRefused, match="bad_request"):
        connect(server.url)
    assert client_threads() == []  # a refused open leaves no thread either
    with pytest.raises(ValueError, match="open_timeout"):
        connect(server.url, open_timeout=-1)


def test_leaving_a_stream_early_closes_it(server: Server) -> None:
    with connect(server.url) as session:
        with contextlib.closing(session.stream("x")) as frames:
            first = next(frames)
            assert isinstance(first, fr.Stream)
        assert session.execute("again").status == "success"  # the session reads on


CTRL_C_SCRIPT = """
import sys
from ws_sandbox.blocking import connect
with connect(sys.argv[1]) as session:
    try:
        print("waiting", flush=True)
        session.execute("hang")
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    print(session.execute("after").stdout, end="", flush=True)
"""


async def test_ctrl_c_interrupts_the_running_cell_and_the_session_goes_on() -> None:
    """As in a notebook: a Ctrl-C (SIGINT to the process, which the kernel may give any
    thread that does not block it) ends the wait with ``KeyboardInterrupt``, and the cell
    is interrupted on the server; the session goes on."""
    async with scripted_server() as server:
        server.script = lambda request: [] if request.code == "hang" else echo(request)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CTRL_C_SCRIPT, server.url, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        assert process.stdout is not None
        async with asyncio.timeout(BOUND):
            assert await process.stdout.readline() == b"waiting\n"
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGINT)
            out, err = await process.communicate()
    assert (process.returncode, out) == (0, b"interrupted\nout after\nmore\n"), err
    sent = [type(fr.decode_client(m)).__name__ for m in server.received]
    assert sent == ["Execute", "Interrupt", "Execute"], sent


def test_on_output_may_interrupt_and_take_events_but_not_wait(server: Server) -> None:
    """``on_output`` runs on the session's own thread: a method that waits for that thread
    would wait for ever (the process hung, and Ctrl-C could not free it). ``interrupt()``
    is sent without waiting, ``events()`` answers, and the others raise at once."""
    taken: list[list[fr.ServerFrame | UnknownFrame]] = []
    with connect(server.url) as session:
        def interrupt_on_first(frame: fr.Stream) -> None:
            if frame.text == "out x\n":
                session.interrupt()
                taken.append(session.events())

        assert session.execute("x", on_output=interrupt_on_first).status == "success"
        assert session.execute("y").status == "success"  # sent after the interrupt
        assert taken == [[]]
        for call in (lambda: session.execute("z"), session.restart, session.close,
                     lambda: list(session.stream("z"))):
            def waits(frame: fr.Stream, call: Callable[[], object] = call) -> None:
                call()

            with pytest.raises(CalledFromCallback, match="on_output"):
                session.execute("w", on_output=waits)
        assert session.execute("v").status == "success"  # the session goes on
    sent = [type(fr.decode_client(m)).__name__ for m in server.received]
    assert sent[:3] == ["Execute", "Interrupt", "Execute"], sent
    assert sent.count("Execute") == 7 and "Restart" not in sent, sent


def wait_for_close(server: Server) -> None:
    deadline = time.monotonic() + BOUND
    while not server.closes and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_session_nobody_closes_is_closed_when_collected(server: Server) -> None:
    """A notebook cell run again makes a new session and drops the old one: its thread,
    its connection and (on the service) its sandbox went on until the process ended."""
    session = connect(server.url)
    [thread] = client_threads()
    del session
    gc.collect()
    thread.join(BOUND)
    assert not thread.is_alive()
    wait_for_close(server)
    assert server.closes == [1000]  # closed as close() closes it: the sandbox goes at once


def test_a_session_collected_on_its_own_thread_closes_without_waiting(server: Server) -> None:
    session = connect(server.url)
    [thread] = client_threads()
    finalizer = session._finalizer
    session._runner.loop.call_soon_threadsafe(finalizer)  # as a collection there would run it
    thread.join(BOUND)
    assert not thread.is_alive() and session._runner.loop.is_closed()
    wait_for_close(server)
    assert server.closes == [1000]
    with pytest.raises(SessionClosed):
        session.execute("x")
    session.close()  # nothing more to do


LEFT_OPEN = """
import os, sys
from ws_sandbox.blocking import connect
session = connect(sys.argv[1])
print(session.execute("x").stdout, end="", flush=True)
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a child's normal exit: the parent's session is not its to close
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), flush=True)
# The parent exits without closing: its connection drops, the session waits for a resume.
"""


async def test_exit_and_fork_close_nothing_and_wait_for_nothing() -> None:
    """Closing an unclosed session at exit hung a forked child for ever (no loop thread
    there), waited on a loop a callback held, and ended a session another process was to
    resume (a review): at exit, and in a child, nothing is closed."""
    async with scripted_server() as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LEFT_OPEN, server.url, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        async with asyncio.timeout(BOUND):
            out, err = await process.communicate()
            await server.ended.wait()
    assert (process.returncode, out) == (0, b"out x\nmore\nchild 0\n"), err
    assert server.closes != [1000], server.closes  # dropped, not closed: resumable
