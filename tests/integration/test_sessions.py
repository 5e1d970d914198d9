"""WebSocket sessions over a real WebSocket, a real service process and a real engine."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import socket
import subprocess
import time
import uuid
from typing import Any

import pytest
import websockets

from tests.conftest import RUNTIME_IMAGE, wait_for
from tests.integration.conftest import Service, ServiceFactory, container_exists
from ws_sandbox import blocking
from ws_sandbox import frames as fr
from ws_sandbox.client import ClientSession, SessionClosed, SessionRefused, connect

pytestmark = pytest.mark.docker

STATE_CELLS = {
    "python": ("x = 20\ndef f(v):\n    return v * 2", "print(f(x) + 2)", "42\n"),
    "javascript": ("let x = 20; const f = (v) => v * 2;", "console.log(f(x) + 2)", "42\n"),
    "shell": ("cd /tmp && X=42", 'echo "$X $PWD"', "42 /tmp\n"),
}


async def hostname(session: ClientSession) -> str:
    r = await session.execute("import socket; print(socket.gethostname())")
    return r.stdout.strip()


@pytest.mark.parametrize("language", sorted(STATE_CELLS))
async def test_state_persists_across_cells(service: Service, language: str) -> None:
    first, second, expected = STATE_CELLS[language]
    async with await connect(service.url, language=language) as s:
        assert s.ready.language == language
        r1 = await s.execute(first)
        assert r1.status == "success", r1
        r2 = await s.execute(second)
        assert r2.status == "success", r2
        assert r2.stdout == expected


async def test_a_program_cell_ends_as_its_program_would(service: Service) -> None:
    """``program=True``: the cell's end waits for the thread it left (its output is in the
    cell's result) and runs its exit functions; the next cell is a notebook cell again."""
    code = ("import atexit, threading, time\n"
            "threading.Thread(target=lambda: (time.sleep(0.3), print('thread'))).start()\n"
            "atexit.register(print, 'exit function')\n")
    async with await connect(service.url) as s:
        r = await s.execute(code, program=True)
        assert (r.status, r.stdout) == ("success", "thread\nexit function\n"), r
        notebook = await s.execute(code)
        assert (notebook.status, notebook.stdout) == ("success", ""), notebook
        # the notebook cell left its thread running: its line comes with a later cell
        later = await s.execute("import time; time.sleep(1)")
        assert "thread" in later.stdout, later


async def test_a_restart_is_answered_by_name(service: Service) -> None:
    """The ``restarted`` frame names the restart requests it answers; the state is gone."""
    async with websockets.connect(service.url + "/api/v1/sessions/ws?language=python") as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "execute", "id": "c1", "code": "x = 1"}))
        assert json.loads(await ws.recv())["type"] == "result"
        await ws.send(json.dumps({"type": "restart", "id": "first"}))
        await ws.send(json.dumps({"type": "restart", "id": "second"}))
        # The second joins the first, or (the first done already) has an answer of its own:
        # each is named once, in order.
        named: list[str] = []
        while len(named) < 2:
            answer = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert answer["type"] == "restarted" and answer["ids"], answer
            named += answer["ids"]
        assert named == ["first", "second"], named
        await ws.send(json.dumps({"type": "execute", "id": "c2", "code": "print('x' in dir())"}))
        frames = [json.loads(await asyncio.wait_for(ws.recv(), 20)) for _ in range(2)]
        assert frames[0]["text"] == "False\n", frames


def test_the_blocking_client_keeps_state_and_restarts(service: Service) -> None:
    """``ws_sandbox.blocking``: the same session, without an event loop of the caller's."""
    with blocking.connect(service.url) as s:
        assert s.execute("x = 6").status == "success"
        shown: list[str] = []
        r = s.execute("print(x * 7)", on_output=lambda f: shown.append(f.text))
        assert (r.status, r.stdout, shown) == ("success", "42\n", ["42\n"])
        assert s.restart().reason == "interpreter_restarted"
        assert s.execute("print('x' in dir())").stdout == "False\n"


async def test_rust_cell_compiles_and_runs(service: Service) -> None:
    async with await connect(service.url, language="rust") as s:
        r = await s.execute('fn main() { let v: Vec<u32> = (1..=4).collect();'
                            ' println!("sum={}", v.iter().sum::<u32>()); }')
        assert r.status == "success", r
        assert r.stdout == "sum=10\n"
        # rustc's share of the cell's time is passed on.
        compiled = r.result.compile_time_ms
        assert compiled is not None and 0 < compiled <= r.result.execution_time_ms, r.result
        bad = await s.execute("fn main() { let x: u32 = \"no\"; }")
        assert bad.status == "error"
        assert "mismatched types" in bad.stderr


@pytest.mark.parametrize(("language", "code"), [
    ("python", "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')"),
    ("javascript", "console.log('first'); const t = Date.now();"
                   " while (Date.now() - t < 1500) {} console.log('second');"),
    ("shell", "echo first; sleep 1.5; echo second"),
])
async def test_output_streams_live(service: Service, language: str, code: str) -> None:
    async with await connect(service.url, language=language) as s:
        start = time.monotonic()
        arrivals: list[tuple[float, fr.ServerFrame]] = []
        async for frame in s.stream(code):
            arrivals.append((time.monotonic() - start, frame))
        first = next(t for t, f in arrivals if isinstance(f, fr.Stream) and "first" in f.text)
        end = arrivals[-1][0]
        assert isinstance(arrivals[-1][1], fr.Result)
        assert end - first >= 1.0, f"first chunk came at {first:.2f}s, result at {end:.2f}s"


BETWEEN_CELLS = {
    "python": ("import threading, time\n"
               "threading.Thread(target=lambda: (time.sleep(0.3), print('late'))).start()",
               "print('next')"),
    "javascript": ("const h = setInterval(() => { console.log('late'); clearInterval(h); }, 300)",
                   "console.log('next')"),
    "shell": ("(sleep 0.3; echo late) &", "echo next"),
}


@pytest.mark.parametrize("language", sorted(BETWEEN_CELLS))
async def test_output_written_between_cells_starts_the_next_cells_output(
        service: Service, language: str) -> None:
    """A thread's, an interval's or a background job's output after its cell's result was
    lost (a result comes after all of its cell's frames); it is now the next cell's."""
    first, second = BETWEEN_CELLS[language]
    async with await connect(service.url, language=language) as s:
        r1 = await s.execute(first)
        assert r1.status == "success" and r1.stdout == "", r1
        await asyncio.sleep(1.5)
        r2 = await s.execute(second)
        assert r2.status == "success", r2
        assert r2.stdout == "late\nnext\n"


async def test_timeout_ends_cell_and_session_stays_usable(service: Service) -> None:
    async with await connect(service.url) as s:
        await s.execute("kept = 'yes'")
        r = await s.execute("while True:\n    pass", timeout=1)
        assert r.status == "timeout"
        assert "time limit of 1 s" in (r.result.error or "")
        after = await s.execute("print(kept)")
        assert after.status == "success"
        assert after.stdout == "yes\n"


async def test_timeout_on_signal_ignoring_code_restarts_and_says_state_lost(
        service: Service) -> None:
    code = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "while True:\n    time.sleep(0.01)")
    async with await connect(service.url) as s:
        await s.execute("kept = 1")
        start = time.monotonic()
        r = await s.execute(code, timeout=1)
        assert time.monotonic() - start < 15
        assert r.status == "timeout"
        assert r.result.state_lost
        after = await s.execute("print('kept' in globals())")
        assert after.stdout == "False\n"


async def test_an_interpreter_ended_between_cells_is_told_at_once(service: Service) -> None:
    """A thread an earlier cell left calls ``os._exit``: a ``restarted`` frame comes when it
    happens (it came only with the next cell's result, as ``state_lost``)."""
    async with await connect(service.url) as s:
        await s.execute("import os, threading, time\nkept = 1\n"
                        "threading.Thread(target=lambda: (time.sleep(0.5), os._exit(5))).start()")
        async with asyncio.timeout(15):
            while not isinstance(event := await s.events.get(), fr.Restarted):
                pass
        assert event.reason == "interpreter_restarted" and event.ids == []
        assert event.message.startswith("interpreter exited with code 5 between cells"), event
        after = await s.execute("print('kept' in globals())")
        assert after.stdout == "False\n" and after.result.state_lost


async def test_a_figure_a_thread_draws_between_cells_is_in_the_next_cell(
        service: Service) -> None:
    """It went out under the ended cell's id, and the service dropped it."""
    async with await connect(service.url) as s:
        await s.execute("import threading, time\nimport matplotlib.pyplot as plt\n"
                        "def draw():\n    time.sleep(0.5)\n    plt.plot([1, 2, 3])\n"
                        "    plt.show()\n"
                        "threading.Thread(target=draw).start()")
        await asyncio.sleep(3)
        after = await s.execute("print('own')")
        assert after.stdout == "own\n"
        [figure] = after.displays
        assert figure.kind == "display_data"
        assert base64.b64decode(figure.data["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
        assert "written between cells" in after.stderr


async def test_interrupt_keeps_python_state(service: Service) -> None:
    async with await connect(service.url) as s:
        await s.execute("kept = 7")
        cell = asyncio.create_task(s.execute("import time\nwhile True:\n    time.sleep(0.05)"))
        await asyncio.sleep(0.5)
        await s.interrupt()
        r = await asyncio.wait_for(cell, 10)
        assert r.status == "interrupted"
        assert "KeyboardInterrupt" in r.stderr
        assert (await s.execute("print(kept)")).stdout == "7\n"


@pytest.mark.parametrize(("language", "setup", "cell", "check"), [
    ("python", "kept = 7", "import time\ntime.sleep(100)", "print(kept)"),
    ("shell", "kept=7", "while :; do :; done", "echo $kept"),
])
async def test_interrupt_right_after_execute_keeps_state(service: Service, language: str,
                                                         setup: str, cell: str,
                                                         check: str) -> None:
    """An interrupt sent right behind its cell (a user who runs and stops at once, a client
    that cancels) stops the cell and keeps the session's state. It reached the worker before
    the cell began and was lost (every time in shell, about one time in three in Python): the
    cell ran on until the interrupt grace, and the interpreter was restarted."""
    async with await connect(service.url, language=language) as s:
        await s.execute(setup)
        for _ in range(10):
            running = asyncio.create_task(s.execute(cell, timeout=20))
            await asyncio.sleep(0)  # the execute frame is written; the interrupt follows it
            await s.interrupt()
            r = await asyncio.wait_for(running, 10)
            assert r.status == "interrupted", r
            assert not r.result.state_lost, r
        assert (await s.execute(check)).stdout == "7\n"


async def test_output_cap_with_marker(service: Service) -> None:
    async with await connect(service.url) as s:
        r = await s.execute("import sys\nfor i in range(100000):\n    print('x' * 99)",
                            timeout=20)
        assert r.status == "success"
        assert r.result.truncated
        assert "[output truncated: more than 65536 bytes]" in r.stdout
        assert len(r.stdout.encode()) < 65536 + 200


async def test_resume_with_token_finds_state(service: Service) -> None:
    s = await connect(service.url)
    await s.execute("kept = 'resumed'")
    token, session_id = s.token, s.session_id
    s.ws.transport.abort()  # a dropped connection, not a goodbye
    await s.wait_closed()
    again = await connect(service.url, resume=token)
    try:
        assert again.ready.resumed
        assert again.session_id == session_id
        assert (await again.execute("print(kept)")).stdout == "resumed\n"
    finally:
        await again.close()


async def test_a_connection_whose_session_is_resumed_elsewhere_is_told_so(
        service: Service) -> None:
    """spec.md: a second connection resuming a live session takes it over, and the first is
    closed with code 4000; the client names it (``connection_lost`` invited a resume that
    would take the session back)."""
    first = await connect(service.url)
    await first.execute("kept = 1")
    second = await connect(service.url, resume=first.token)
    try:
        async with asyncio.timeout(30):
            await first.wait_closed()
        assert first.ended is not None and first.ended.reason == "resumed_elsewhere"
        with pytest.raises(SessionClosed, match="resumed_elsewhere"):
            await first.execute("print(kept)")
        assert (await second.execute("print(kept)")).stdout == "1\n"
    finally:
        await second.close()
        await first.close()


DETACHED_LINES = 2500


async def test_frames_held_for_a_resume_are_the_newest_1024(
        make_service: ServiceFactory) -> None:
    """protocol/spec.md: a resumed client gets the frames produced while it was away, up to
    1024 (driver.DETACHED_BUFFER_FRAMES): a cell that prints 2,500 flushed lines (a frame
    each, about) after the client dropped is replayed as its newest 1024 frames, a
    contiguous tail of its output ending with the result, not all of it."""
    code = (f"import time\nfor i in range({DETACHED_LINES}):\n"
            "    print(i, flush=True)\n    time.sleep(0.001)\nprint('end')")
    with make_service(RESUME_GRACE="60", ENABLE_JAVASCRIPT="false", ENABLE_SHELL="false",
                      ENABLE_RUST="false") as svc:
        url = f"{svc.url}/api/v1/sessions/ws"
        ws = await websockets.connect(f"{url}?language=python")
        ready = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "execute", "id": "c1", "code": code,
                                  "timeout": 30}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 20))
        assert first["type"] == "stream", first
        ws.transport.abort()  # a dropped connection: the rest of the cell is held
        await ws.wait_closed()

        async with asyncio.timeout(60):  # the cell ends (the history has it): no live frames
            while not svc.get("/api/v1/executions")[1].get("items"):
                await asyncio.sleep(0.2)
        async with websockets.connect(f"{url}?resume={ready['token']}",
                                      max_size=None) as again:
            frames: list[dict[str, Any]] = []
            async with asyncio.timeout(30):
                while not frames or frames[-1]["type"] not in ("result", "closed"):
                    frames.append(json.loads(await again.recv()))
        assert frames[0]["type"] == "ready" and frames[0]["resumed"] is True, frames[0]
        replayed = frames[1:]
        assert (replayed[-1]["type"], replayed[-1]["id"]) == ("result", "c1"), replayed[-1]
        assert replayed[-1]["status"] == "success", replayed[-1]
        streams = [f for f in replayed[:-1] if f["type"] == "stream"]
        assert len(streams) == len(replayed) - 1, {f["type"] for f in replayed}
        lines = "".join(f["text"] for f in streams).splitlines()
        assert lines[-1] == "end", lines[-3:]
        # About 2,500 frames were produced while away (all of them are replayed when the
        # buffer has no bound): the newest 1024 come, the output's tail, whole and in order.
        assert len(replayed) == 1024, len(replayed)
        # And the resumed ready frame says that older ones were dropped (it said nothing).
        assert frames[0]["frames_dropped"] > 0, frames[0]
        oldest = int(lines[0])
        assert lines == [str(i) for i in range(oldest, DETACHED_LINES)] + ["end"], lines[:3]


async def test_tampered_token_is_refused(service: Service) -> None:
    async with await connect(service.url) as s:
        token = s.token
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(SessionRefused) as info:
        await connect(service.url, resume=forged)
    assert info.value.error.code == "invalid_token"
    with pytest.raises(SessionRefused):
        await connect(service.url, resume="not-a-token")


async def test_output_printed_after_a_figure_is_never_lost(service: Service) -> None:
    """Every byte a cell writes comes before its result. The agent used to take an output
    pipe that its last wait had seen empty as still empty when the worker's ``done`` was
    read, though the worker could print and send ``done`` between that look and the read:
    a helper's probe lost the line after ``plt.show()`` in 4% of cells (4 of 100 here)."""
    code = 'import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show(); print("py ok")'
    async with await connect(service.url) as s:
        lost = []
        for n in range(150):
            result = await s.execute(code)
            assert result.status == "success", result
            if result.stdout != "py ok\n":
                lost.append((n, result.stdout))
    assert lost == []


async def test_sessions_cannot_see_each_other(service: Service) -> None:
    async with await connect(service.url) as a, await connect(service.url) as b:
        await a.execute("open('/workspace/secret.txt', 'w').write('mine')\n"
                        "import subprocess\nsubprocess.Popen(['sleep', '300'])")
        r = await b.execute(
            "import os\nprint(os.path.exists('/workspace/secret.txt'))\n"
            "print(sum(1 for p in os.listdir('/proc') if p.isdigit() and"
            " b'sleep' in open(f'/proc/{p}/cmdline','rb').read()))")
        assert r.stdout == "False\n0\n"
        assert await hostname(a) != await hostname(b)


@pytest.mark.parametrize(("message", "code"), [
    ("not json", "bad_request"),
    ('{"type": "launch"}', "bad_request"),
    ('{"type": "execute", "id": "c1"}', "bad_request"),
    ('{"type": "execute", "id": "c1", "code": 3}', "bad_request"),
    ('{"type": "execute", "id": "c1", "code": "1", "timeout": "soon"}', "bad_request"),
    (b"\x00\xffbinary", "bad_request"),
    ('{"type": "execute", "id": "c1", "code": "1", "x": ' + "[" * 2000 + "]" * 2000 + "}",
     "bad_request"),  # nested too deep: msgspec raises RecursionError, not DecodeError
    ('{"type": "execute", "id": "c1", "code": "' + "x" * 1_200_000 + '"}',
     "payload_too_large"),
])
async def test_bad_frames_get_error_frames(service: Service, message: str | bytes,
                                           code: str) -> None:
    async with websockets.connect(f"{service.url}/api/v1/sessions/ws?language=python",
                                  max_size=None) as ws:
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready"
        await ws.send(message)
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert error["type"] == "error"
        assert error["code"] == code
        assert error["message"]
        await ws.send(json.dumps({"type": "execute", "id": "ok", "code": "print('alive')"}))
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] != "result":
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        assert "".join(f["text"] for f in frames if f["type"] == "stream") == "alive\n"
        assert frames[-1]["status"] == "success"
        assert frames[-1]["id"] == "ok"


async def test_unknown_language_is_refused(service: Service) -> None:
    with pytest.raises(SessionRefused) as info:
        await connect(service.url, language="cobol")
    assert info.value.error.code == "language_unavailable"
    assert "python" in info.value.error.message


@pytest.mark.parametrize(("query", "code", "says"), [
    ("lang=javascript", "bad_request", "unknown query parameter 'lang'; this endpoint takes"
                                       " language, resume, api_key"),
    ("language=js&language=rust", "bad_request", "query parameter 'language' is given twice"),
    ("language=js&resume=x", "invalid_token", ""),  # a resume, its language the session's
    ("resume=", "invalid_token", ""),
])
async def test_a_misspelt_or_conflicting_query_is_refused_by_name(
        service: Service, query: str, code: str, says: str) -> None:
    """``?lang=javascript`` opened a Python session and ``?resume=`` a fresh one (a
    review): the session endpoint takes the parameters it names, once each."""
    async with websockets.connect(f"{service.url}/api/v1/sessions/ws?{query}") as ws:
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert (error["type"], error["code"]) == ("error", code), error
    assert error["message"].startswith(says), error
    assert ws.close_code == 1008


async def test_a_session_opened_by_an_alias_is_ready_in_its_language(service: Service) -> None:
    async with await connect(service.url, language="node") as session:
        assert session.ready.language == "javascript"
        result = await session.execute("console.log([1, 2].map(x => x * 2).join(' '))")
        assert (result.status, result.stdout) == ("success", "2 4\n")


async def test_limits_idle_lifetime_concurrency_and_disconnect(
        make_service: ServiceFactory) -> None:
    with make_service(IDLE_TIMEOUT="1.5", MAX_LIFETIME="6", MAX_CONCURRENT_EXECUTIONS="1",
                      RESUME_GRACE="1", ENABLE_JAVASCRIPT="false", ENABLE_SHELL="false",
                      ENABLE_RUST="false") as svc:
        # idle timeout
        s = await connect(svc.url)
        closed = await asyncio.wait_for(s.wait_closed(), 10)
        assert closed is not None
        assert closed.reason == "idle_timeout"
        await s.close()
        # concurrency: the second client is refused with close code 1013
        first = await connect(svc.url)
        await asyncio.sleep(0.3)
        with pytest.raises(SessionRefused) as info:
            await connect(svc.url)
        assert info.value.error.code == "at_capacity"
        assert info.value.close_code == 1013
        # a dropped client's container is removed after the resume grace
        short = await hostname(first)
        first.ws.transport.abort()  # dropped: the session waits RESUME_GRACE, then ends
        deadline = time.monotonic() + 10
        while container_exists(short) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not container_exists(short)
        while svc.get("/api/v1/health")[1]["sessions"] != 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # max lifetime, kept busy so the idle timeout cannot fire first
        s = await connect(svc.url)
        opened = time.monotonic()

        async def keep_busy() -> None:
            for _ in range(20):
                await s.execute("import time; time.sleep(0.9)")

        with pytest.raises(SessionClosed):
            await keep_busy()
        closed = await asyncio.wait_for(s.wait_closed(), 15)
        assert closed is not None
        assert closed.reason == "max_lifetime"
        assert 5 < time.monotonic() - opened < 12


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
async def test_sigterm_sends_closed_and_removes_containers(
        make_service: ServiceFactory, sig: signal.Signals) -> None:
    """SIGHUP (a closed terminal, some supervisors) killed the service at once: answered
    calls missing from the audit log and history, containers left (an operator review).
    It drains as SIGTERM does."""
    with make_service(ENABLE_JAVASCRIPT="false", ENABLE_RUST="false") as svc:
        s = await connect(svc.url)
        await s.execute("x = 1")
        assert svc.containers()
        svc.process.send_signal(sig)
        closed = await asyncio.wait_for(s.wait_closed(), 30)
        assert closed is not None
        assert closed.reason == "server_shutdown"
        await asyncio.to_thread(svc.process.wait, 60)
        assert svc.containers() == []


async def test_a_second_sigint_while_draining_still_shuts_down_cleanly(
        make_service: ServiceFactory) -> None:
    """Ctrl-C again while stopping: uvicorn took a SIGINT after its stop had begun (the
    drain's own, or the user's) for a forced exit, which skipped the lifespan's shutdown and
    logged its cancellation as an ERROR with a traceback (found by a fault review). The
    shutdown is bounded; further signals are ignored, and said so."""
    with make_service(ENABLE_JAVASCRIPT="false", ENABLE_RUST="false",
                      ENABLE_SHELL="false") as svc:
        stubborn = ("import signal, time\nfor s in (signal.SIGINT, signal.SIGTERM):\n"
                    "    signal.signal(s, signal.SIG_IGN)\ntime.sleep(30)")
        sessions = [await connect(svc.url) for _ in range(2)]
        running = [asyncio.create_task(s.execute(stubborn)) for s in sessions]
        await asyncio.sleep(0.5)
        svc.process.send_signal(signal.SIGINT)
        # Again once uvicorn stops (the drain is over): its lifespan still removes three
        # containers, which keeps the process alive well beyond the two signals.
        await wait_for(lambda: "Shutting down" in svc.log(), 30)
        for _ in range(2):
            svc.process.send_signal(signal.SIGINT)
            await asyncio.sleep(0.02)
        await asyncio.to_thread(svc.process.wait, 60)
        for cell in running:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(cell, 10)
        log = svc.log()
        assert "Waiting for application shutdown" in log, log
        assert "Traceback" not in log and "ERROR" not in log, log
        assert "already shutting down" in log, log
        assert svc.containers() == []


async def test_startup_removes_only_its_own_orphans(make_service: ServiceFactory) -> None:
    with make_service(ENABLE_JAVASCRIPT="false", ENABLE_RUST="false",
                      ENABLE_SHELL="false") as svc:
        s = await connect(svc.url)
        short = await hostname(s)
        svc.process.send_signal(signal.SIGKILL)
        svc.process.wait(10)
        stranger = subprocess.run(
            ["docker", "create", "--label", "org.ws_sandbox.app=ws_sandbox", "--label",
             "org.ws_sandbox.instance=someone-else", "--network", "none",
             "ws-sandbox-runtime:latest"], capture_output=True, text=True, check=True,
        ).stdout.strip()
        try:
            assert container_exists(short)
            from tests.integration.conftest import start_service
            # The pool may have been creating one as the service died: created, never
            # started. It is removed once older than SANDBOX_START_TIMEOUT (the next start
            # took it for another service's and left it: one run under load).
            first = set(svc.containers())
            again = start_service(svc.log_path.parent, INSTANCE_NAME=svc.instance,
                                  ENABLE_JAVASCRIPT="false", ENABLE_RUST="false",
                                  ENABLE_SHELL="false", SANDBOX_START_TIMEOUT="2")
            try:
                assert not container_exists(short)
                assert container_exists(stranger[:12])
                await wait_for(lambda: not first & set(svc.containers()), timeout=15)
            finally:
                again.stop()
        finally:
            subprocess.run(["docker", "rm", "-f", stranger], capture_output=True, check=False)


async def test_a_container_created_and_never_started_is_removed_after_the_start_timeout(
        make_service: ServiceFactory) -> None:
    """A service killed between creating a container and starting it left it created for
    good: the next start took it for another live service's, about to start it, and left
    it (one run under load). Such a container is looked at again once it is older than
    SANDBOX_START_TIMEOUT and removed if still not started; one started meanwhile (by the
    live service it was) is left."""
    instance = f"wsb-test-{uuid.uuid4().hex[:8]}"

    def create() -> str:
        return subprocess.run(
            ["docker", "create", "--label", "org.ws_sandbox.app=ws_sandbox", "--label",
             f"org.ws_sandbox.instance={instance}", "--label", "org.ws_sandbox.process=other",
             "--network", "none", RUNTIME_IMAGE],
            capture_output=True, text=True, check=True).stdout.strip()

    dead, live = create(), create()
    try:
        with make_service(INSTANCE_NAME=instance, SANDBOX_START_TIMEOUT="3",
                          ENABLE_JAVASCRIPT="false", ENABLE_RUST="false",
                          ENABLE_SHELL="false") as svc:
            # Young: either may be a live service's, about to start it.
            assert container_exists(dead[:12]) and container_exists(live[:12])
            subprocess.run(["docker", "start", live], capture_output=True, check=True)
            await wait_for(lambda: not container_exists(dead[:12]), timeout=20)
            assert container_exists(live[:12])
            assert f"removed container {dead[:12]}: created by an earlier run and never" \
                " started" in svc.log()
    finally:
        subprocess.run(["docker", "rm", "-f", dead, live], capture_output=True, check=False)


async def test_a_second_service_with_the_same_name_leaves_the_first_one_s_sandboxes(
        make_service: ServiceFactory) -> None:
    """Start-up took every container of its INSTANCE_NAME from another process for an
    orphan, running or not: a second service with the same name (the default, say) killed
    the first one's sessions and pool as it started (found by a fault review). Running ones
    are now waited for (a dead service's stop on their own) and then left alone."""
    languages = {"ENABLE_JAVASCRIPT": "false", "ENABLE_RUST": "false", "ENABLE_SHELL": "false"}
    with make_service(**languages) as first:
        s = await connect(first.url)
        try:
            await s.execute("kept = 'alive'")
            short = await hostname(s)
            from tests.integration.conftest import start_service
            # One being started by the first service right now: created, not yet running
            # (the engine's wait answers at once for it, and it was taken for ended).
            starting = subprocess.run(
                ["docker", "create", "--label", "org.ws_sandbox.app=ws_sandbox", "--label",
                 f"org.ws_sandbox.instance={first.instance}", "--label",
                 "org.ws_sandbox.process=another", "--network", "none",
                 "ws-sandbox-runtime:latest"], capture_output=True, text=True, check=True,
            ).stdout.strip()
            second = start_service(first.log_path.parent, INSTANCE_NAME=first.instance,
                                   **languages)
            try:
                assert container_exists(short)
                assert container_exists(starting[:12])
                subprocess.run(["docker", "rm", "-f", starting], capture_output=True,
                               check=False)
                r = await s.execute("print(kept)")
                assert (r.status, r.stdout) == ("success", "alive\n"), r
                assert "in use by another process" in second.log()
            finally:
                second.stop()
            assert (await s.execute("print(kept)")).stdout == "alive\n"
        finally:
            await s.close()


async def drain(ws: websockets.ClientConnection) -> None:
    """Read until the connection closes (then ``ConnectionClosed``)."""
    while True:
        await ws.recv()


async def test_a_client_that_reads_nothing_is_dropped_at_send_timeout(
        make_service: ServiceFactory) -> None:
    """SEND_TIMEOUT: a client that stops reading while a cell floods it is disconnected with
    1008 "client too slow" (the cell runs on), and the session waits for it to resume."""
    mib = 1 << 20
    with make_service(SEND_TIMEOUT="1", MAX_OUTPUT_BYTES=str(40 * mib), RESUME_GRACE="60",
                      ENABLE_JAVASCRIPT="false", ENABLE_SHELL="false",
                      ENABLE_RUST="false") as svc:
        host, port = svc.http.removeprefix("http://").split(":")
        sock = socket.socket()
        # A small receive buffer, fixed (no autotuning): the kernel holds little for us.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.setblocking(False)
        ws = await websockets.connect(f"{svc.url}/api/v1/sessions/ws?language=python",
                                      sock=sock, max_queue=1, max_size=None)
        try:
            ready = json.loads(await ws.recv())
            code = ("import sys\nfor _ in range(32):\n    sys.stdout.write('x' * (1 << 20))\n"
                    "print('end')")
            await ws.send(json.dumps({"type": "execute", "id": "flood", "code": code}))
            sent = time.monotonic()
            async with asyncio.timeout(30):  # read nothing until the service gives up on us
                while "client too slow" not in svc.log_path.read_text(errors="replace"):
                    await asyncio.sleep(0.1)
            assert time.monotonic() - sent < 15
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(drain(ws), 30)
        finally:
            ws.transport.abort()
        assert ws.close_code == 1008, (ws.close_code, ws.close_reason)
        assert ws.close_reason == "client too slow"
        # The session was kept for the client: the rest of the cell arrives on resume.
        async with websockets.connect(
                f"{svc.url}/api/v1/sessions/ws?resume={ready['token']}",
                max_size=None) as again:
            frames: list[dict[str, Any]] = []
            async with asyncio.timeout(60):
                while not frames or frames[-1]["type"] != "result":
                    frames.append(json.loads(await again.recv()))
            assert frames[0]["type"] == "ready"
            assert frames[0]["resumed"] is True
            assert frames[-1]["id"] == "flood"
            assert frames[-1]["status"] == "success"
            assert "".join(f["text"] for f in frames if f["type"] == "stream").endswith("end\n")
