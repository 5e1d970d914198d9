"""The abuse battery: hostile programs in all four languages, each with its specific containment.

Every test is one attack (parametrized tests: one attack per case). The battery shares one
service (``battery`` in ``conftest.py``: 256 MB, 128 pids, 64 MB tmpfs, 64 KiB output per
cell, canary secrets in its environment). Set ``WS_SANDBOX_TEST_RUNTIME=runsc`` to run it
under gVisor; the few expectations that differ there are marked ``RUNSC``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import websockets

from tests.integration.conftest import Service, ServiceFactory, container_exists
from tests.security.conftest import BATTERY_ENV, RUNSC
from ws_sandbox import frames as fr
from ws_sandbox.backend import SANDBOX_UIDS
from ws_sandbox.client import CellResult, ClientSession, SessionClosed, UnknownFrame, connect
from ws_sandbox.frames import ws_message_limit
from ws_sandbox.settings import SHIPPED_SECCOMP_PROFILE, Settings, load_seccomp_profile

pytestmark = pytest.mark.docker


OUTPUT_CAP = int(BATTERY_ENV["MAX_OUTPUT_BYTES"])
MARKER = f"[output truncated: more than {OUTPUT_CAP} bytes]"
# A cell killed at its timeout ends within: timeout + interrupt grace + restart + slack.
END_SLACK = 15.0


async def run(svc: Service, language: str, code: str, timeout: float | None = None
              ) -> CellResult:
    async with await connect(svc.url, language=language) as s:
        return await s.execute(code, timeout=timeout)


async def still_works(s: ClientSession, language: str = "python") -> None:
    """The session serves a normal cell after the attack."""
    code = {"python": "print(6 * 7)", "javascript": "console.log(6 * 7)",
            "shell": "echo $((6 * 7))",
            "rust": 'fn main() { println!("{}", 6 * 7); }'}[language]
    r = await s.execute(code, timeout=20)
    assert (r.status, r.stdout) == ("success", "42\n"), r


async def container_id(s: ClientSession) -> str:
    r = await s.execute("import socket; print(socket.gethostname())")
    return r.stdout.strip()


async def wait_gone(short_id: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while container_exists(short_id):
        assert time.monotonic() < deadline, f"container {short_id} still exists"
        await asyncio.sleep(0.3)


def healthy(svc: Service) -> None:
    status, body = svc.get("/api/v1/health")
    assert status == 200, body


# --------------------------------------------------------------------------- resources

# The shell bomb's complaints about refused forks go to a file, read after the bomb is gone:
# written once its cell has ended, they would not be the cell's output, which the service drops.
# The file is the subshell's stderr, kept to 8 KiB by `ulimit -f` (writes past it fail, and
# SIGXFSZ is ignored so that nobody dies of it).
BOMB_LOG = "/workspace/bomb.log"


@pytest.mark.parametrize(("language", "bomb"), [
    ("shell", f"( exec 2>{BOMB_LOG}; ulimit -f 8; trap '' XFSZ; :(){{ :|:& }};: )"),
    ("python", "import os\nwhile True:\n    try:\n        os.fork()\n"
               "    except OSError:\n        pass"),
    ("javascript", "const cp = require('child_process');\n"
                   "for (;;) { try { cp.spawn('sleep', ['600']); } catch (e) {} }"),
])
async def test_fork_bomb_is_held_by_the_pids_limit(battery: Service, language: str,
                                                   bomb: str) -> None:
    async with await connect(battery.url, language=language) as s:
        start = time.monotonic()
        r = await s.execute(bomb, timeout=4)
        assert time.monotonic() - start < 4 + END_SLACK
        if language == "shell":
            # `:|:&` returns at once: the bomb goes on in the background, held by the limit
            # (read with builtins: a fork would fail now); a restart ends it. Under runc the
            # count is the pids cgroup's own: a glob of /proc can count a pid that exits and
            # a new one in the same pass, so it may run past the limit for an instant. Under
            # gVisor the limit is RLIMIT_NPROC inside the sandbox kernel (no cgroupfs there).
            count = ("p=(/proc/[0-9]*); echo ${#p[@]}; ulimit -u" if RUNSC else
                     "d=/sys/fs/cgroup; [ -e $d/pids.max ] || d=$d/pids;"  # v2, or v1
                     " read c < $d/pids.current; read m < $d/pids.max; echo $c $m")
            peak, refused = 0, "Resource temporarily unavailable" in r.stderr
            seen = [r]
            for _ in range(20):
                n = await s.execute(count)
                seen.append(n)
                refused = refused or "Resource temporarily unavailable" in n.stderr
                fields = n.stdout.split()
                if len(fields) == 2:  # empty when bash itself could not fork
                    assert fields[1] == BATTERY_ENV["PIDS_LIMIT"], n
                    peak = max(peak, int(fields[0]))
                assert peak <= int(BATTERY_ENV["PIDS_LIMIT"]), n
                await asyncio.sleep(0.2)
            # The bomb did go off (asserted below, once its log can be read): it was seen near
            # the limit, or its forks were refused (it can burn out between two counts when
            # every fork fails at once). RUNSC: the bomb's retried forks drive gVisor's own
            # host threads past their floor (`backend.RUNSC_MIN_PIDS`) and the whole sandbox
            # exits, often before the first count: a count cell then ends `killed` ("the
            # sandbox stopped") and the session goes on in a new sandbox, its log gone. The
            # next test proves the pids limit there.
            await s.restart()
            async with asyncio.timeout(30):
                while not isinstance(await s.events.get(), fr.Restarted):
                    pass
            # Killed bomb processes vanish once the agent (PID 1) has reaped them.
            for _ in range(20):
                n = await s.execute("p=(/proc/[0-9]*); echo ${#p[@]}")
                if n.stdout.strip().isdigit() and int(n.stdout) < 10:
                    break
                await asyncio.sleep(0.5)
            assert int(n.stdout) < 10, n
            log = await s.execute(f"cat {BOMB_LOG}")
            refused = refused or "Resource temporarily unavailable" in log.stdout
            lost = any(x.status == "killed" and "sandbox stopped" in (x.result.error or "")
                       for x in seen)
            assert peak > 20 or refused or (RUNSC and (peak > 5 or lost)), (peak, seen, log)
        else:
            assert r.status in ("timeout", "error", "killed"), r
        await still_works(s, language)
    async with await connect(battery.url, language="python") as other:
        await still_works(other)


async def test_processes_stop_at_the_pids_limit_with_eagain(battery: Service) -> None:
    # Children that wait rather than fork on, so the count at which a new process fails is
    # exact; spawned, not forked, so that a hundred copies of the interpreter do not reach
    # the memory limit first (gVisor counts their pages).
    code = ("import os\nn = 0\nwhile True:\n    try:\n"
            "        os.posix_spawn('/bin/sleep', ['sleep', '600'], {})\n"
            "    except OSError as e:\n        print(n, e.errno)\n        break\n    n += 1")
    async with await connect(battery.url, language="python") as s:
        r = await s.execute(code, timeout=20)
        assert r.status == "success", r
        forked, err = (int(x) for x in r.stdout.split())
        assert err == errno.EAGAIN, r.stdout
        assert 20 < forked < int(BATTERY_ENV["PIDS_LIMIT"]), r.stdout
        await s.restart()  # ends the sleepers
        async with asyncio.timeout(30):
            while not isinstance(await s.events.get(), fr.Restarted):
                pass
        if RUNSC:
            # Ending a hundred sleepers and starting a new interpreter can drive gVisor's own
            # host threads past their floor (`backend.RUNSC_MIN_PIDS`): the whole sandbox
            # exits (1 run in about 6), and the session goes on in a new one.
            r = await s.execute("print(6 * 7)", timeout=20)
            if r.status == "killed":
                assert "sandbox stopped" in (r.result.error or ""), r
        await still_works(s)


async def test_rust_thread_bomb_fails_at_the_pids_limit(battery: Service) -> None:
    code = ("fn main() { let mut n = 0u32; loop { match std::thread::Builder::new()"
            ".spawn(|| std::thread::sleep(std::time::Duration::from_secs(600))) {"
            " Ok(_) => n += 1, Err(e) => { println!(\"stopped at {} threads: {}\", n, e);"
            " return; } } } }")
    # (The battery's longest: rustc took 3 s under gVisor here, and 15 s once under load.)
    r = await run(battery, "rust", code, timeout=int(BATTERY_ENV["MAX_EXECUTION_TIME"]))
    assert r.status == "success", r
    threads = int(r.stdout.split()[2])
    assert threads < int(BATTERY_ENV["PIDS_LIMIT"]), r.stdout


@pytest.mark.parametrize(("language", "bomb"), [
    ("python", "b = []\nwhile True:\n    b.append(bytearray(b'x' * 10_000_000))"),
    ("javascript", "const a = []; for (;;) a.push(Buffer.alloc(1e7, 1));"),
    ("rust", "fn main() { let mut v: Vec<Vec<u8>> = Vec::new();"
             " loop { v.push(vec![1u8; 10_000_000]); } }"),
])
async def test_memory_bomb_is_killed_at_the_memory_limit(battery: Service, language: str,
                                                         bomb: str) -> None:
    async with await connect(battery.url, language=language) as s:
        r = await s.execute(bomb, timeout=20)
        assert r.status == "killed", r
        assert f"memory limit of {BATTERY_ENV['MAX_MEMORY_MB']} MB" in (r.result.error or "")
        await still_works(s, language)


async def test_what_an_interpreter_the_memory_limit_killed_started_ends_with_it(
        battery: Service) -> None:
    """Processes a cell started (joblib's workers) outlived an interpreter the memory limit
    killed: they held that memory, and every later cell was killed for it (a review)."""
    holders = ("import subprocess, sys\n"
               "code = 'b = b\"x\" * 40_000_000\\nimport time\\ntime.sleep(600)'\n"
               "for _ in range(3):\n"
               "    subprocess.Popen([sys.executable, '-c', code])\n"
               "print('started')")
    count = ("import os\n"
             "def cmdline(p):\n"
             "    try:\n"
             "        return open(f'/proc/{p}/cmdline', 'rb').read()\n"
             "    except OSError:\n"
             "        return b''\n"
             "print(sum(b'sleep(600)' in cmdline(p) for p in os.listdir('/proc') if p.isdigit()))")
    async with await connect(battery.url, language="python") as s:
        assert (await s.execute(holders, timeout=20)).stdout == "started\n"
        assert (await s.execute("import time; time.sleep(1)\n" + count, timeout=20)).stdout == "3\n"
        bomb = await s.execute("b = []\nwhile True:\n    b.append(bytearray(b'x' * 10_000_000))",
                               timeout=20)
        assert bomb.status == "killed", bomb
        left = await s.execute(count, timeout=20)
        assert (left.status, left.stdout) == ("success", "0\n"), left


async def test_a_cell_that_handles_its_child_s_oom_kill_is_no_failure(
        battery: Service) -> None:
    """A cell whose child the memory limit killed, and which went on (``echo rc=$?``), was
    reported killed with exit code 0 (a review): it succeeds, and stderr says what the
    kernel did. RUNSC: the memory limit ends the whole sandbox (its Sentry), not a process
    in it: the cell is killed, as a memory bomb is."""
    limit = BATTERY_ENV["MAX_MEMORY_MB"]
    async with await connect(battery.url, language="shell") as s:
        r = await s.execute("head -c 600M /dev/zero | python3 -c 'import sys;"
                            " b = sys.stdin.buffer.read()'; echo rc=$?", timeout=20)
        if RUNSC:
            assert r.status == "killed", r
            assert f"memory limit of {limit} MB" in (r.result.error or ""), r
        else:
            assert (r.status, r.result.exit_code, r.stdout) == ("success", 0, "rc=137\n"), r
            assert f"[a process was killed: memory limit of {limit} MB exceeded]" in r.stderr, r
        await still_works(s, "shell")


def docker_disk_used() -> int:
    path = "/var/lib/docker" if os.path.isdir("/var/lib/docker") else "/"
    return shutil.disk_usage(path).used


async def test_filling_workspace_and_tmp_is_bounded_in_memory(battery: Service) -> None:
    code = """
import os
for d in ("/workspace", "/tmp", "/dev/shm"):
    written, err = 0, None
    try:
        for i in range(40):
            with open(f"{d}/fill{i}", "wb") as f:
                for _ in range(4):
                    f.write(b"z" * (1 << 20))
                    written += 1
    except OSError as e:
        err = e.errno
    st = os.statvfs(d)
    print(d, written, err, st.f_blocks * st.f_frsize >> 20)
"""
    async with await connect(battery.url) as s:
        cid = await container_id(s)
        before = docker_disk_used()
        r = await s.execute(code, timeout=20)
        # /dev/shm: the engine's 64 MB default
        dirs: tuple[str, ...] = ("/workspace", "/tmp", "/dev/shm")
        if RUNSC and r.status == "killed":
            # RUNSC: gVisor keeps tmpfs in the sandbox's memory: 192 MB of files plus the
            # interpreter pass the 256 MB limit, and the sandbox is killed for it.
            assert "memory limit" in (r.result.error or ""), r
            cid = await container_id(s)  # the whole sandbox was replaced
            r = await s.execute(code.replace('"/dev/shm"', ""), timeout=20)
            assert r.status == "success", r
            dirs = dirs[:2]
        else:
            assert r.status == "success", r
        # A line per directory, or the checks below would check fewer (a review).
        lines = r.stdout.splitlines()
        assert len(lines) == len(dirs), r
        for line, d in zip(lines, dirs, strict=True):
            name, written, err, size = line.split()
            assert name == d
            assert err == str(errno.ENOSPC), line
            assert int(written) <= 64 and int(size) == 64, line
        # Nothing reached the container's writable layer on the host disk.
        size_rw = subprocess.run(["docker", "container", "inspect", "--size", "-f",
                                  "{{.SizeRw}}", cid], capture_output=True, text=True,
                                 check=True).stdout.strip()
        assert int(size_rw) < 1 << 20, size_rw
        after = docker_disk_used()
        # 192 MB were written; the host disk grew by far less (others may share the disk).
        assert after - before < 100 << 20, (before, after)
        await still_works(s)


async def test_single_file_beyond_fsize_is_refused(battery: Service) -> None:
    r = await run(battery, "shell",
                  "dd if=/dev/zero of=/tmp/big bs=1M count=100 2>&1; echo rc=$?;"
                  " du -m /tmp/big | cut -f1")
    assert r.status == "success", r
    lines = r.stdout.split()
    # SIGXFSZ (rc 153) at the 64 MB fsize limit, or ENOSPC at the 64 MB tmpfs.
    assert "rc=153" in lines or "No space left" in r.stdout, r.stdout
    assert int(lines[-1]) <= 64


@pytest.mark.parametrize(("language", "code"), [
    ("python", "import sys\nfor _ in range(100_000):\n    sys.stdout.write('x' * 99 + '\\n')"),
    ("shell", "head -c 30000000 /dev/zero | tr '\\0' y"),
    ("javascript", "for (let i = 0; i < 30; i++) process.stdout.write('z'.repeat(1e6));"),
    ("rust", "use std::io::Write; fn main() { let s = vec![b'r'; 1 << 20];"
             " let mut o = std::io::stdout(); for _ in 0..30 { o.write_all(&s).unwrap(); } }"),
])
async def test_output_flood_is_capped_with_a_marker(battery: Service, language: str,
                                                    code: str) -> None:
    start = time.monotonic()
    async with await connect(battery.url, language=language) as s:
        r = await s.execute(code, timeout=20)
        assert r.status == "success", r
        assert r.result.truncated
        assert MARKER in r.stdout
        assert len(r.stdout.encode()) <= OUTPUT_CAP + len(MARKER) + 8
        # RUNSC: gVisor's pipes are slower; the bound is the cell's timeout plus the restart.
        assert time.monotonic() - start < (20 + END_SLACK if RUNSC else 20)
        await still_works(s, language)


async def test_endless_output_after_its_cell_ended_costs_the_session_nothing(
        battery: Service) -> None:
    # A background process floods on after its cell ended. The agent forwards it under the
    # cell's id (the service drops it) up to the cell's budget, then under the next running
    # cell's: the service's allowance for what a sandbox may send (twice the budget per cell,
    # and some) is never exceeded, so the sandbox and its state stay.
    async with await connect(battery.url, language="shell") as s:
        # "started" before the flood: written after it, it could come past the cell's
        # budget (under gVisor the flood fills the budget first, at times).
        r = await s.execute("kept=42; echo started;"
                            " (yes stale-output-flood & echo $! > flood.pid)")
        assert r.status == "success" and "started\n" in r.stdout, r
        flooded = 0
        for _ in range(8):  # a cell's output is the flood (cut at its budget)...
            await asyncio.sleep(0.3)
            n = await s.execute("true")
            assert n.status == "success", n
            flooded += "stale-output-flood" in n.stdout
        # ...when `yes` got the CPU during it: a cell of 0.3 ms on a busy machine may see
        # none (one CI run). The flood went on through them all, whatever each one saw.
        assert flooded >= 2, flooded
        await s.execute("kill $(< flood.pid)")
        await asyncio.sleep(0.5)
        await s.execute("true")  # takes what the pipe still held
        n = await s.execute("echo kept=$kept")
        assert (n.status, n.stdout) == ("success", "kept=42\n"), n
        assert all(not isinstance(e, fr.Restarted) for e in drain(s.events)), "replaced"


def drain(events: asyncio.Queue[fr.ServerFrame | UnknownFrame]
          ) -> list[fr.ServerFrame | UnknownFrame]:
    """Everything queued now."""
    out = []
    while not events.empty():
        out.append(events.get_nowait())
    return out


async def test_endless_stderr_flood_ends_at_the_timeout(battery: Service) -> None:
    start = time.monotonic()
    r = await run(battery, "python", "import sys\nwhile True:\n    sys.stderr.write('e' * 4096)",
                  timeout=3)
    assert r.status == "timeout", r
    assert r.result.truncated
    assert len(r.stderr.encode()) <= OUTPUT_CAP + len(MARKER) + 8
    assert time.monotonic() - start < 3 + END_SLACK


@pytest.mark.parametrize(("language", "spin"), [
    ("python", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass"),
    ("shell", "trap '' INT TERM; while :; do :; done"),
    ("javascript", "process.on('SIGINT', () => {}); process.on('SIGTERM', () => {});"
                   " for (;;) {}"),
    ("rust", "fn main() { let mut x = 0u64; loop { x = x.wrapping_add(1);"
             " if x == 0 { println!(\"{}\", x); } } }"),
])
async def test_cpu_spin_ignoring_signals_ends_at_the_timeout(battery: Service, language: str,
                                                             spin: str) -> None:
    async with await connect(battery.url, language=language) as s:
        start = time.monotonic()
        r = await s.execute(spin, timeout=2)
        elapsed = time.monotonic() - start
        assert r.status == "timeout", r
        assert "time limit of 2 s" in (r.result.error or "")
        assert 1.5 < elapsed < 2 + END_SLACK
        if language == "javascript":
            # Node's watchdog, not a listener, takes the interrupt: the state is kept (a
            # listener once made the interrupt kill the interpreter)
            assert not r.result.state_lost, r
        elif language != "rust":  # a rust cell is a fresh process: there is no state to lose
            assert r.result.state_lost, r
        await still_works(s, language)


# --------------------------------------------------------------------------- persistence

COUNT_SLEEPERS = ("import os\nn = 0\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n"
                  "        try:\n            c = open(f'/proc/{p}/cmdline', 'rb').read()\n"
                  "        except OSError:\n            continue\n"
                  "        n += c.startswith(b'sleep\\x0077')\nprint(n)")


async def test_background_and_double_forked_processes_die_with_the_interpreter(
        battery: Service) -> None:
    spawn = """
import os, subprocess
subprocess.Popen(["sleep", "771"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "772"])
    os._exit(0)
os.wait()
"""
    async with await connect(battery.url) as s:
        r = await s.execute(spawn)
        assert r.status == "success", r
        for _ in range(25):  # the grandchild execs `sleep` a moment after the cell ends
            alive = await s.execute(COUNT_SLEEPERS)
            if alive.stdout.strip() == "2":
                break
            await asyncio.sleep(0.2)
        assert alive.stdout.strip() == "2", alive  # they did outlive the cell...
        await s.restart()
        async with asyncio.timeout(20):
            while not isinstance(await s.events.get(), fr.Restarted):
                pass
        gone = await s.execute(COUNT_SLEEPERS)
        assert gone.stdout.strip() == "0", gone  # ...but not the restart


async def test_processes_do_not_outlive_the_session(battery: Service) -> None:
    async with await connect(battery.url, language="shell") as s:
        cid = (await s.execute("hostname")).stdout.strip()
        assert container_exists(cid)
        r = await s.execute("nohup setsid sleep 10000 >/dev/null 2>&1 &"
                            " (trap '' HUP TERM; sleep 10000) >/dev/null 2>&1 & disown -a;"
                            " echo started")
        assert r.stdout == "started\n", r
    await wait_gone(cid)


# --------------------------------------------------------------------------- network

def connect_code(host: str, port: int) -> str:
    return (f"import socket, time\nt = time.monotonic()\ns = socket.socket()\n"
            f"s.settimeout(5)\ntry:\n    s.connect(({host!r}, {port}))\n    print('connected')\n"
            f"except OSError as e:\n    print(e.errno, round(time.monotonic() - t, 2))")


@pytest.mark.parametrize(("target", "expected"), [
    (("1.1.1.1", 53), errno.ENETUNREACH),          # a public address
    (("172.17.0.1", 2375), errno.ENETUNREACH),     # the Docker bridge gateway
    (("169.254.169.254", 80), errno.ENETUNREACH),  # cloud metadata
    (("8.8.8.8", 443), errno.ENETUNREACH),
])
async def test_egress_fails_immediately(battery: Service, target: tuple[str, int],
                                        expected: int) -> None:
    r = await run(battery, "python", connect_code(*target))
    code, seconds = r.stdout.split()
    # RUNSC: gVisor's netstack answers EHOSTUNREACH where Linux says ENETUNREACH.
    assert int(code) in ((expected, errno.EHOSTUNREACH) if RUNSC else (expected,)), r.stdout
    assert float(seconds) < 1.0


async def test_service_port_on_loopback_is_the_containers_own(battery: Service) -> None:
    port = int(battery.url.rsplit(":", 1)[1])
    r = await run(battery, "python", connect_code("127.0.0.1", port))
    assert int(r.stdout.split()[0]) == errno.ECONNREFUSED, r.stdout


async def test_dns_lookup_fails(battery: Service) -> None:
    r = await run(battery, "python",
                  "import socket\ntry:\n    print(socket.getaddrinfo('example.com', 443))\n"
                  "except socket.gaierror as e:\n    print('gaierror', e.errno)")
    assert r.stdout.startswith("gaierror"), r.stdout


async def test_only_loopback_interface_exists(battery: Service) -> None:
    r = await run(battery, "python",
                  "import socket; print(sorted(n for _, n in socket.if_nameindex()))")
    assert r.stdout.strip() == "['lo']", r


@pytest.mark.parametrize(("language", "code", "needle"), [
    ("javascript", "await new Promise((ok) => require('net').connect(53, '1.1.1.1')"
                   ".on('error', (e) => { console.log(e.code); ok(); })"
                   ".on('connect', () => { console.log('connected'); ok(); }));", "ENETUNREACH"),
    ("shell", "exec 3<>/dev/tcp/1.1.1.1/53", "nreachable"),
    ("rust", "fn main() { match std::net::TcpStream::connect(\"1.1.1.1:53\") {"
             " Ok(_) => println!(\"connected\"),"
             " Err(e) => println!(\"{:?}\", e.raw_os_error()) } }", "Some(101)"),
])
async def test_egress_fails_in_every_language(battery: Service, language: str, code: str,
                                              needle: str) -> None:
    r = await run(battery, language, code, timeout=10)
    if RUNSC:  # RUNSC: EHOSTUNREACH (113, "No route to host") instead of ENETUNREACH
        needle = {"ENETUNREACH": "EHOSTUNREACH", "nreachable": "No route to host",
                  "Some(101)": "Some(113)"}[needle]
    assert needle in (r.stdout + r.stderr), r
    assert "connected" not in r.stdout


NO_INET = {
    "python": "import errno, socket\n"
              "for family, kind in ((socket.AF_INET, socket.SOCK_STREAM),"
              " (socket.AF_INET6, socket.SOCK_STREAM), (socket.AF_INET, socket.SOCK_DGRAM)):\n"
              "    try:\n"
              "        socket.socket(family, kind).close()\n"
              "        print('opened')\n"
              "    except OSError as e:\n"
              "        print(errno.errorcode[e.errno])\n"
              "a, b = socket.socketpair()\n"
              "a.send(b'unix'); print(b.recv(4).decode())",
    "javascript": "const srv = require('net').createServer();\n"
                  "await new Promise((ok) => srv"
                  ".on('error', (e) => { console.log(e.code); ok(); })"
                  ".listen(0, '127.0.0.1',"
                  " () => { console.log('listening'); srv.close(); ok(); }));",
    "shell": "exec 3<>/dev/tcp/127.0.0.1/80",
}


@pytest.mark.parametrize("language", sorted(NO_INET))
async def test_tcp_and_udp_sockets_are_refused_by_default(make_service: ServiceFactory,
                                                         language: str) -> None:
    """Under runc a sandbox opens no TCP or UDP socket by default: the kernel memory of a
    connection nobody accepts, and of loopback buffers, is the host's, outside the
    sandbox's memory limit. One cell's background process queued 1.7 million connections in
    60 s (5.3 GB of host memory, its cgroup at 7 MB): a review. Unix sockets still work.
    RUNSC: gVisor's network stack lives in the sandbox's memory, and they work."""
    env = {k: v for k, v in BATTERY_ENV.items() if k != "ALLOW_LOOPBACK_SOCKETS"}
    with make_service(**env, POOL_SIZE="0") as svc:
        r = await run(svc, language, NO_INET[language], timeout=10)
        # What a model's cell would meet: the error says why ("Address family not
        # supported" alone reads as an IPv6 problem: a review).
        fetch = {"python": "import urllib.request\n"
                           "urllib.request.urlopen('http://127.0.0.1:8000/', timeout=5)",
                 "javascript": "await fetch('http://127.0.0.1:8000/')"}.get(language)
        local = await run(svc, language, fetch, timeout=10) if fetch else None
    if local is not None and not RUNSC:
        assert "TCP and UDP sockets are off in this sandbox" in local.stderr, local
    out = r.stdout + r.stderr
    if language == "python":
        expected = ["opened"] * 3 if RUNSC else ["EAFNOSUPPORT"] * 3
        assert r.stdout.splitlines() == [*expected, "unix"], r
    elif language == "javascript":
        assert ("listening" if RUNSC else "EAFNOSUPPORT") in out, r
    else:
        # (RUNSC: nothing listens there, and the socket was made.)
        assert ("Connection refused" if RUNSC else "Address family not supported") in out, r


SOCKETCALL = r"""
import ctypes, mmap, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
page = libc.mmap(None, 4096, 7, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40, -1, 0)  # 32-bit
# push rbx; mov eax, 102 (socketcall); mov ebx, 1 (SYS_SOCKET); mov ecx, args; int 0x80;
# pop rbx; ret: the i386 ABI's socket multiplexer, whose arguments seccomp cannot see.
args = page + 2048
code = (bytes.fromhex("53b8") + struct.pack("<I", 102) + bytes.fromhex("bb")
        + struct.pack("<I", 1) + bytes.fromhex("b9") + struct.pack("<I", args)
        + bytes.fromhex("cd805bc3"))
ctypes.memmove(page, code, len(code))
call = ctypes.CFUNCTYPE(ctypes.c_int)(page)
for family in (2, 10, 40):  # AF_INET, AF_INET6, AF_VSOCK
    ctypes.memmove(args, struct.pack("<III", family, 1, 0), 12)
    call()
import os
links = []
for fd in os.listdir("/proc/self/fd"):
    try:
        links.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # (the listing's own descriptor, closed by now)
        pass
print(sum(link.startswith("socket:") for link in links), "sockets")
"""


async def test_the_32_bit_abi_is_killed(battery: Service) -> None:
    """On x86, libseccomp turns socket()'s rules into rules of ``socketcall`` (i386's socket
    multiplexer, through ``int 0x80``), whose first argument is the call's number: it gave a
    cell IPv4, IPv6 and VSOCK sockets past the profile's family rules (a review). The
    profile lists the native ABI alone: such a call kills its process (SIGSYS)."""
    code = ("import subprocess, sys\n"
            f"r = subprocess.run([sys.executable, '-c', {SOCKETCALL!r}], capture_output=True,"
            " text=True)\nprint(r.stdout, end='')\nprint('exit', r.returncode)")
    r = await run(battery, "python", code, timeout=20)
    # RUNSC: gVisor reads int 0x80 as a native call (102 is getuid there): no socket either.
    expected = ["0 sockets", "exit 0"] if RUNSC else [f"exit -{signal.SIGSYS}"]
    assert r.stdout.splitlines() == expected, r


# --------------------------------------------------------------------------- secrets

#: Every variable of a Python cell's environment (SECURITY.md, "minimal environment"): the
#: service's, the image's defaults (runtime/Dockerfile) and the engine's HOSTNAME.
SANDBOX_ENVIRONMENT = ["WS_SANDBOX_LANGUAGE", "WS_SANDBOX_PRELOAD", "HOME", "USER", "LOGNAME",
                       "LANG", "PATH", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                       "TMPDIR", "MPLBACKEND", "MPLCONFIGDIR", "WS_SANDBOX_MPL_CACHE",
                       "PYTHONDONTWRITEBYTECODE", "TERM", "HOSTNAME", "NODE_OPTIONS"]


async def test_service_secrets_are_not_in_the_sandbox(battery: Service) -> None:
    r = await run(battery, "shell",
                  "env; cat /proc/1/environ; for f in /proc/[0-9]*/environ;"
                  " do tr '\\0' '\\n' < $f; done 2>/dev/null; echo END")
    assert r.stdout.endswith("END\n"), r
    assert "canary" not in r.stdout
    assert "WS_SANDBOX_LANGUAGE=shell" in r.stdout  # the environment was actually read
    for name in ("SESSION_SECRET", "ADMIN_API_KEY", "AWS_SECRET_ACCESS_KEY", "DOCKER_HOST"):
        assert name not in r.stdout
    # Nothing else is there: the environment is what SECURITY.md lists.
    first = await run(battery, "python", "import os\nprint(*sorted(os.environ))")
    assert sorted(first.stdout.split()) == sorted(SANDBOX_ENVIRONMENT), first
    # SECURITY.md: HOME is /workspace, and the sandbox's own uid is named `sandbox` by the
    # entry the agent wrote on its /tmp (whoami failed before), which names no other uid.
    who = await run(battery, "shell", 'echo "HOME=$HOME"; whoami; id -un 0 65534;'
                    ' getent passwd "$(id -u)" | cut -d: -f1,6,7;'
                    ' getent passwd sandbox | cut -d: -f3 | grep -cx "$(id -u)"')
    assert who.stdout.splitlines() == ["HOME=/workspace", "sandbox", "root", "nobody",
                                       "sandbox:/workspace:/bin/bash", "1"], who
    assert who.stderr == "", who
    # What asks the environment first has a name (getpass raised KeyError: a review).
    user = await run(battery, "python", "import getpass\nprint(getpass.getuser())")
    assert user.stdout == "sandbox\n", user


async def test_docker_socket_is_absent(battery: Service) -> None:
    code = """
import os, stat
print([os.path.lexists(p) for p in ("/var/run/docker.sock", "/run/docker.sock")])
socks = []
for top in ("/run", "/var/run", "/tmp", "/workspace", "/var", "/opt", "/etc"):
    for root, dirs, files in os.walk(top):
        for f in files:
            try:
                if stat.S_ISSOCK(os.lstat(os.path.join(root, f)).st_mode):
                    socks.append(os.path.join(root, f))
            except OSError:
                pass
print(socks)
"""
    r = await run(battery, "python", code)
    assert r.stdout == "[False, False]\n[]\n", r


# --------------------------------------------------------------------------- other sessions

INOTIFY_HOG = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
try:
    limit = int(open('/proc/sys/fs/inotify/max_user_instances').read())
except OSError:  # not in every kernel's /proc (gVisor's)
    limit = 128
held = []
while len(held) < limit + 10:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    held.append(fd)
print(len(held) >= min(limit, 100))
"""
INOTIFY_CHECK = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
print(fd >= 0, os.strerror(ctypes.get_errno()) if fd < 0 else "")
if fd >= 0:
    os.close(fd)
"""


async def test_a_session_cannot_use_up_another_s_per_user_kernel_limits(
        battery: Service) -> None:
    """Each sandbox runs as a uid of its own: one holding every inotify instance its user
    may have (the kernel counts them per uid, host-wide) leaves another's untouched. With
    one uid for all sandboxes, the second failed with EMFILE (a helper's probe; message
    queues, pending signals and pipe buffers are counted per uid the same way)."""
    async with await connect(battery.url) as hog, await connect(battery.url) as other:
        held = await hog.execute(INOTIFY_HOG)  # kept open: the session keeps its state
        assert held.stdout == "True\n", held
        check = await other.execute(INOTIFY_CHECK)
        assert check.stdout == "True \n", check
        uids = [(await s.execute("import os; print(os.getuid())")).stdout for s in (hog, other)]
        assert uids[0] != uids[1]


PTY_HOG = """
import os
try:
    master, slave = os.openpty()
    print("opened a pty")
except OSError as exc:
    print(type(exc).__name__, exc.errno)
print(os.listdir("/dev/pts"))
try:
    open("/dev/pts/ptmx", "w")
except OSError as exc:
    print(type(exc).__name__, exc.errno)
"""


async def test_no_sandbox_can_take_the_host_s_pseudo_terminals(battery: Service) -> None:
    """The kernel's pseudo-terminals (3,072 for all containers) are one pool for the host:
    one sandbox's processes held every one, and another session's openpty() and the
    engine's `docker exec -t` failed (a review). A sandbox has none. RUNSC: gVisor's own
    devpts stays (its terminals are its own, not the host's), read-only: EROFS."""
    r = await run(battery, "python", PTY_HOG)
    lines = r.stdout.splitlines()
    if RUNSC:
        assert lines[0] == f"OSError {errno.EROFS}", r
    else:
        assert lines == [f"FileNotFoundError {errno.ENOENT}", "[]", f"OSError {errno.EROFS}"], r


# --------------------------------------------------------------------------- privilege

async def test_no_privilege(battery: Service) -> None:
    r = await run(battery, "python", "print(open('/proc/self/status').read())")
    status = dict(line.split(":\t", 1) for line in r.stdout.splitlines() if ":\t" in line)
    uid = status["Uid"].split()[0]
    assert int(uid) in SANDBOX_UIDS  # a uid of its own, not root, not a host account's
    assert status["Uid"].split()[:2] == [uid, uid]
    assert status["Gid"].split()[:2] == [uid, uid]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        if RUNSC and cap not in status:  # RUNSC: gVisor's /proc has no CapAmb line
            continue
        assert int(status[cap], 16) == 0, (cap, status[cap])
    # RUNSC: gVisor's /proc has no NoNewPrivs line. Its Seccomp line is 2 because runsc runs
    # with --oci-seccomp, which applies the profile inside gVisor's own kernel.
    assert status.get("NoNewPrivs", "1" if RUNSC else "").strip() == "1"
    assert status["Seccomp"].strip() == "2"


EVERYDAY = """
import os, select, signal, socket, subprocess, threading
r, w = os.pipe()
print("select", select.select([r], [w], [], 0.001)[1] == [w])
print("poll", select.poll().poll(1))
ep = select.epoll()
ep.register(w, select.EPOLLOUT)
print("epoll", len(ep.poll(0.01)))
t = threading.Thread(target=print, args=("thread",))
t.start()
t.join()
a, b = socket.socketpair()
a.send(b"x")
print("socketpair", b.recv(1))
print(subprocess.run(["bash", "-c", "sleep 0.05 & wait; echo waited"],
                     capture_output=True, text=True).stdout.strip())
signal.signal(signal.SIGALRM, lambda *_: None)
signal.setitimer(signal.ITIMER_REAL, 0.05)
signal.pause()
pid = os.fork()
if pid == 0:
    os._exit(3)
print("waitid", os.waitid(os.P_PID, pid, os.WEXITED).si_status)
"""


async def test_the_profile_lets_everyday_calls_through(battery: Service) -> None:
    # The other side of the seccomp profile: what ordinary programs need still works. Under
    # runsc the profile is applied inside gVisor, whose converter spells and answers some
    # calls its own way (settings.RUNSC_PASS_THROUGH, RUNSC_ALIASES): select() and threads
    # failed there until the service's runsc variant of the profile.
    r = await run(battery, "python", EVERYDAY, timeout=20)
    assert r.status == "success", r
    assert r.stdout.split("\n") == [
        "select True", "poll []", "epoll 1", "thread", "socketpair b'x'", "waited",
        "waitid 3", ""], r.stdout
    # Node starts threads of its own at start (the V8 platform's): it runs at all only if
    # thread creation works.
    r = await run(battery, "javascript",
                  "console.log(require('child_process').execSync('echo child').toString())",
                  timeout=20)
    assert r.status == "success" and r.stdout == "child\n\n", r


async def test_no_setuid_or_setgid_binaries(battery: Service) -> None:
    r = await run(battery, "shell", "find / -xdev -perm /6000 -type f 2>/dev/null; echo END",
                  timeout=20)
    assert r.stdout == "END\n", r.stdout


SYSCALL = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return r, ctypes.get_errno()
"""

# x86_64 numbers. Each would succeed, or fail with another errno, without the hardening.
SYSCALLS = {
    "mount": (165, 0, 0, 0, 0, 0),
    "umount2": (166, 0, 0),
    "unshare_newuser": (272, 0x10000000),
    "unshare_newns": (272, 0x00020000),
    "setns": (308, 0, 0),
    "ptrace_attach_pid1": (101, 16, 1, 0, 0),
    "keyctl_session_keyring": (250, 0, -3, 0),
    "add_key": (248, 0, 0, 0, 0, 0),
    "bpf": (321, 0, 0, 0),
    "perf_event_open": (298, 0, 0, -1, -1, 0),
    "userfaultfd": (323, 0),
    "io_uring_setup": (425, 1, 0),
    # Linux AIO: contexts count against one limit for the whole host (fs.aio-max-nr).
    "io_setup": (206, 1, 0),
    "init_module": (175, 0, 0, 0),
    "reboot": (169, 0xFEE1DEAD, 672274793, 0x4321FEDC, 0),
    "chroot": (161, 0),
    "clock_settime": (227, 0, 0),
    "personality_no_aslr": (135, 0x0040000),
}


@pytest.mark.parametrize("name", sorted(SYSCALLS))
async def test_dangerous_syscall_is_denied(battery: Service, name: str) -> None:
    # RUNSC: the same profile is applied inside gVisor (runsc --oci-seccomp): each call is
    # denied there before gVisor's own kernel sees it.
    nr, *args = SYSCALLS[name]
    r = await run(battery, "python", SYSCALL + f"print(*call({nr}, *{args!r}))")
    ret, err = map(int, r.stdout.split())
    assert ret == -1, r.stdout
    assert err in {errno.EPERM, errno.ENOSYS}, (name, r.stdout)


async def test_clone_with_new_user_namespace_is_denied(battery: Service) -> None:
    # SIGCHLD | CLONE_NEWUSER through the raw clone: it must never create a child.
    code = SYSCALL + ("r = call(56, 17 | 0x10000000, 0, 0, 0, 0)\n"
                      "if r[0] == 0:\n    os._exit(0)\nprint(*r)")
    r = await run(battery, "python", code)
    ret, err = map(int, r.stdout.split())
    assert ret == -1 and err in (errno.EPERM, errno.ENOSYS, errno.EINVAL), r.stdout


async def test_clone3_with_a_new_user_namespace_is_denied(battery: Service) -> None:
    # clone3 passes its flags in memory, out of seccomp's sight: the profile answers every
    # clone3 with ENOSYS so that glibc falls back to the clone it can check. RUNSC: the
    # runsc variant lets clone3 through to gVisor's kernel (settings.RUNSC_PASS_THROUGH),
    # which gVisor 20240729 implements: there only the agent's own filter answers ENOSYS
    # (next test), and without it a user namespace escapes the task limit (RLIMIT_NPROC).
    code = SYSCALL + (
        "import struct\n"
        "args = ctypes.create_string_buffer(struct.pack('<QQQQQQQQ', 0x10000000, 0, 0, 0,"
        " 17, 0, 0, 0))\n"  # flags = CLONE_NEWUSER, exit_signal = SIGCHLD
        "r = call(435, ctypes.addressof(args), 64)\n"
        "if r[0] == 0:\n    os._exit(0)\nprint(*r)")
    r = await run(battery, "python", code)
    ret, err = map(int, r.stdout.split())
    assert (ret, err) == (-1, errno.ENOSYS), r.stdout



async def test_the_agent_answers_clone3_itself(make_service: ServiceFactory,
                                               tmp_path: Path) -> None:
    # The agent installs a filter of its own (agent.c: deny_clone3) so that clone3 fails
    # with ENOSYS whatever the engine's profile and runtime do with it: gVisor 20240729
    # implements clone3, and the runsc profile lets it through. Here the engine's profile
    # allows clone3 outright; a plain clone3 (no flags but SIGCHLD: a fork) would succeed.
    # RUNSC: gVisor 20221219 answers ENOSYS itself, so there this shows less; under runc
    # the kernel implements clone3, and the sandbox's processes carry the agent's filter
    # besides the engine's.
    profile = json.loads(SHIPPED_SECCOMP_PROFILE.read_text(encoding="utf-8"))
    rules = [r for r in profile["syscalls"] if "clone3" in r["names"]]
    assert [r["names"] for r in rules] == [["clone3"]]
    rules[0]["action"] = "SCMP_ACT_ALLOW"
    rules[0].pop("errnoRet", None)
    custom = tmp_path / "clone3-allowed.json"
    custom.write_text(json.dumps(profile), encoding="utf-8")
    code = SYSCALL + (
        "import struct\n"
        "args = ctypes.create_string_buffer(struct.pack('<QQQQQQQQ', 0, 0, 0, 0, 17, 0, 0, 0))\n"
        "r = call(435, ctypes.addressof(args), 64)\n"
        "if r[0] == 0:\n    os._exit(0)\nprint(*r)\n"
        "import threading\nt = threading.Thread(target=print, args=('thread',))\n"
        "t.start()\nt.join()\n"
        "print([x.split()[1] for x in open('/proc/self/status') if x.startswith('Seccomp_f')])")
    with make_service(**BATTERY_ENV, POOL_SIZE="0", ENABLE_JAVASCRIPT="false",
                      ENABLE_SHELL="false", ENABLE_RUST="false",
                      SECCOMP_PROFILE=str(custom)) as svc:
        r = await run(svc, "python", code)
    assert r.stdout.split("\n")[:2] == [f"-1 {errno.ENOSYS}", "thread"], r
    if not RUNSC:
        assert r.stdout.split("\n")[2] == "['2']", r  # the engine's filter and the agent's

# --------------------------------------------------------------------------- file system

async def test_read_only_root(battery: Service) -> None:
    code = """
import os
# /var/tmp is world-writable in the image: only the read-only root stops this one.
for path, mode in (("/usr/evil", "w"), ("/var/tmp/evil", "w"), ("/etc/passwd", "a"),
                   ("/opt/ws_sandbox/agent/agent", "r+b"),
                   ("/opt/ws_sandbox/agent/agent.c", "a"),
                   ("/opt/ws_sandbox/agent/worker_python.pyc", "r+b"), ("/bin/sh", "r+b")):
    try:
        open(path, mode).close()
        print(path, "WRITABLE")
    except OSError as e:
        print(path, e.errno)
try:
    os.mkdir("/etc/evil")
except OSError as e:
    print("mkdir", e.errno)
"""
    r = await run(battery, "python", code)
    result = dict(line.split() for line in r.stdout.splitlines())
    assert len(result) == 8, r.stdout
    # Creating anything is EROFS; existing root-owned files fail their permission check first.
    for created in ("/usr/evil", "/var/tmp/evil", "mkdir"):
        # RUNSC: gVisor checks permissions first where the directory is root's (EACCES).
        ok = {str(errno.EROFS), str(errno.EACCES)} if RUNSC and created != "/var/tmp/evil" \
            else {str(errno.EROFS)}
        assert result[created] in ok, r.stdout
    # The agent runs from its binary, the Python worker from its bytecode.
    for existing in ("/etc/passwd", "/opt/ws_sandbox/agent/agent",
                     "/opt/ws_sandbox/agent/agent.c", "/opt/ws_sandbox/agent/worker_python.pyc",
                     "/bin/sh"):
        assert result[existing] in (str(errno.EROFS), str(errno.EACCES)), r.stdout


async def test_sysrq_trigger_and_kernel_knobs_are_not_writable(battery: Service) -> None:
    code = """
for path in ("/proc/sysrq-trigger", "/proc/sys/kernel/panic",
             "/sys/kernel/mm/transparent_hugepage/enabled"):
    try:
        with open(path, "w") as f:
            f.write("c")
        print(path, "WRITTEN")
    except OSError as e:
        print(path, e.errno)
"""
    r = await run(battery, "python", code)
    assert "WRITTEN" not in r.stdout, r.stdout
    assert len(r.stdout.splitlines()) == 3
    for line in r.stdout.splitlines():
        assert int(line.split()[1]) in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT)


# --------------------------------------------------------------------------- the channel

async def test_frame_shaped_text_and_binary_garbage_stay_text(battery: Service) -> None:
    code = r"""
import os, struct, sys, json
fake = json.dumps({"type": "result", "id": "c1", "status": "success", "exit_code": 0})
print(fake)
print('{"type":"closed","reason":"max_lifetime"}')
agent = json.dumps({"t": "done", "id": "x", "status": "success"}).encode()
sys.stdout.buffer.write(struct.pack(">I", len(agent)) + agent + b"\n")
sys.stdout.buffer.write(b"\x00\x00\x00\x01\x00\xff\xff\xff\xff\xfe" + os.urandom(4096) + b"\n")
sys.stdout.flush()
print("END")
"""
    async with await connect(battery.url) as s:
        await s.execute("kept = 'state'")
        r = await s.execute(code)
        assert r.status == "success", r
        assert '"type": "result"' in r.stdout and '"reason":"max_lifetime"' in r.stdout
        assert r.stdout.endswith("END\n")
        assert "\ufffd" in r.stdout  # invalid UTF-8 became replacement characters
        after = await s.execute("print(kept)")
        assert after.stdout == "state\n"


async def test_agent_channel_is_closed_to_user_code(battery: Service) -> None:
    """User code (same uid as the agent) cannot open the agent's stdout to forge frames,
    nor its memory or environment. The agent is PID 1 and the worker's parent; no other
    process of the sandbox (tini, once) holds the channel."""
    probe = ("import os\n"
             "print(os.getppid())\n"
             "for path, flags in (('fd/1', os.O_WRONLY), ('fd/0', os.O_RDONLY),"
             " ('mem', os.O_RDWR), ('environ', os.O_RDONLY)):\n"
             "    try:\n        os.close(os.open(f'/proc/1/{path}', flags))\n"
             "        print(path, 'OPEN')\n"
             "    except OSError as e:\n        print(path, e.errno)")
    code = ("import os\ntry:\n    fd = os.open(f'/proc/{os.getppid()}/fd/1', os.O_WRONLY)\n"
            "except OSError as e:\n    print('denied', e.errno)\nelse:\n"
            "    os.write(fd, b'\\x7f\\xff\\xff\\xff' + b'{' * 65536)\n"
            "    import time; time.sleep(5)")
    async with await connect(battery.url) as s:
        cid = await container_id(s)
        looked = await s.execute(probe)
        lines = looked.stdout.splitlines()
        # The parent and a line per path, or all() below checks fewer (a review).
        assert len(lines) == 5, looked
        assert lines[0] == "1", looked  # the worker's parent is the agent, PID 1
        if not RUNSC:  # RUNSC: gVisor may let these opens through; the bound below holds
            denied = {str(errno.EACCES), str(errno.EPERM)}
            assert all(line.split()[1] in denied for line in lines[1:]), looked
        try:
            r = await s.execute(code, timeout=15)
        except SessionClosed:
            r = None
        if r is not None and r.status == "success":
            # The agent is non-dumpable: its /proc/<pid>/fd belongs to root.
            assert r.stdout in (f"denied {errno.EACCES}\n", f"denied {errno.EPERM}\n"), r
            await still_works(s)
            return
        assert RUNSC, r  # RUNSC: gVisor may let the open through; then the bound holds:
        if r is not None:  # the oversized frame ended only this sandbox
            assert r.status in ("error", "killed") and r.result.state_lost, r
    await wait_gone(cid)
    healthy(battery)
    async with await connect(battery.url) as other:
        await still_works(other)


# Opens the agent's channel to the service (under runc the open is denied) and writes
# frames of its own there: each write under 4 KiB, so it never splits one of the agent's.
FORGE_ON_THE_CHANNEL = (
    "import json, os, struct\n"
    "def frame(obj):\n"
    "    body = json.dumps(obj).encode()\n"
    "    return struct.pack('>I', len(body)) + body\n"
    "try:\n"
    "    fd = os.open('/proc/1/fd/1', os.O_WRONLY)\n"
    "except OSError as e:\n"
    "    print('denied', e.errno)\n"
    "    raise SystemExit\n")
FORGED_LINE = "2026-11-27 17:59:59,000 CRITICAL ws_sandbox.auth: FORGED admin key accepted"


@pytest.mark.parametrize("attack", ["flood", "made-up-tag"])
async def test_frames_a_cell_writes_on_the_agents_channel_end_only_its_sandbox(
        battery: Service, attack: str) -> None:
    """Under gVisor a cell can open the agent's channel (RUNSC: the agent's /proc entries
    are open to it there; under runc the open is denied). Two attacks a review found:
    - a flood of done frames for no cell, which the service dropped uncounted while it
      took a core, for as long as the session lived; each frame counts now, and the flood
      ends the sandbox at once;
    - a frame with a made-up tag, which msgspec's error repeated into the service's log
      (a line of the cell's choosing) and the cell's error; it is quoted now."""
    code = FORGE_ON_THE_CHANNEL + {
        "flood": "one = frame({'t': 'done', 'id': 'zz', 'status': 'success'})\n"
                 "while True:\n    os.write(fd, one * 60)\n",
        "made-up-tag": f"os.write(fd, frame({{'t': \"x'\\n{FORGED_LINE}\\n\" + 'A' * 3000}}))\n"
                       "import time; time.sleep(8)\n",
    }[attack]
    async with await connect(battery.url) as s:
        cid = await container_id(s)
        start = time.monotonic()
        r = await s.execute(code, timeout=15)
        if not RUNSC:
            assert r.status == "success" and r.stdout in (
                f"denied {errno.EACCES}\n", f"denied {errno.EPERM}\n"), r
            return
        assert r.status == "killed" and r.result.state_lost, r
        if attack == "flood":  # at the allowance, long before the cell's timeout
            assert "it sent more output than its cells may produce" in (r.result.error or ""), r
            assert time.monotonic() - start < 10, r
        else:
            error = r.result.error or ""
            assert "invalid agent frame" in error and error.isprintable(), r
            assert len(error) < 400, r
        await still_works(s)
    await wait_gone(cid)
    assert not any(line.startswith(FORGED_LINE) for line in battery.log().splitlines())
    healthy(battery)


async def test_user_code_cannot_kill_or_stop_the_agent(battery: Service) -> None:
    """The agent is the sandbox's init: the kernel drops the signals it has no handler for
    (SIGKILL and SIGSTOP included) when they come from inside, so a cell cannot take the
    channel down or freeze it. SIGTERM, which it handles, ends that sandbox only."""
    async with await connect(battery.url) as s:
        cid = await container_id(s)
        # RUNSC: gVisor does not protect a namespace's init from its own processes' signals:
        # the agent's handlers keep the others harmless, but SIGKILL ends the agent, and
        # with it only that sandbox, as SIGTERM does here (SIGSTOP would freeze it until the
        # service's cell timeout).
        uncatchable = () if RUNSC else ("SIGKILL", "SIGSTOP")
        for sig in (*uncatchable, "SIGTSTP", "SIGUSR1", "SIGHUP", "SIGQUIT", "SIGALRM"):
            r = await s.execute(f"import os, signal\nos.kill(1, signal.{sig})\n"
                                "import time; time.sleep(0.2)\nprint('alive')", timeout=15)
            assert r.status == "success" and r.stdout == "alive\n", (sig, r)
        await still_works(s)
        ender = "SIGKILL" if RUNSC else "SIGTERM"
        try:
            r = await s.execute(f"import os, signal\nos.kill(1, signal.{ender})\n"
                                "import time; time.sleep(5)", timeout=15)
        except SessionClosed:
            pass
        else:
            assert r.status in ("error", "killed"), r
            assert r.result.state_lost, r
    await wait_gone(cid)
    healthy(battery)
    async with await connect(battery.url) as other:
        await still_works(other)


# --------------------------------------------------------------------------- links

async def test_links_at_the_agents_paths_are_never_followed_by_the_host(
        battery: Service, tmp_path: Path) -> None:
    canary = f"host-canary-{uuid.uuid4().hex}"
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text(canary)
    plant = f"""
import os, shutil, glob
os.makedirs("/workspace/keep", exist_ok=True)
open("/workspace/keep/precious", "w").write("precious")
# MPLCONFIGDIR, later written by matplotlib and seeded by the worker
shutil.rmtree("/tmp/.matplotlib", ignore_errors=True)
os.symlink("{host_file}", "/tmp/.matplotlib")
for name, target in (("/tmp/main.rs", "/etc/shadow"), ("/tmp/main", "{host_file}"),
                     ("/workspace/main.rs", "/proc/1/environ"), ("/tmp/ws-rust-x", "/"),
                     ("/workspace/out", "/var/run/docker.sock"), ("/tmp/host", "{tmp_path}")):
    os.symlink(target, name)
open("/tmp/precious", "w").write("precious")
os.link("/tmp/precious", "/tmp/hardlink")
print(open("/tmp/hardlink").read())
"""
    async with await connect(battery.url) as py:
        r = await py.execute(plant)
        assert r.status == "success", r
        plot = await py.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
        assert plot.status in ("success", "error"), plot
        look = await py.execute("import os\nfor p in ('/tmp/main', '/tmp/host'):\n"
                                "    try:\n        print(open(p).read())\n"
                                "    except OSError as e:\n        print(p, e.errno)")
        assert canary not in look.stdout + look.stderr
        # Inside the container those host paths do not exist (matplotlib may have made the
        # MPLCONFIGDIR target a directory of the container's own /tmp: EISDIR).
        words = look.stdout.split()
        assert words[0::2] == ["/tmp/main", "/tmp/host"], look.stdout
        assert {int(w) for w in words[1::2]} <= {errno.ENOENT, errno.EISDIR}, look.stdout
        assert host_file.read_text() == canary
        assert canary not in plot.stdout + plot.stderr
    async with await connect(battery.url, language="rust") as rs:
        # A program that swaps its own build dir for links to the user's files before the
        # agent removes that dir: rmtree must unlink the links, not what they point at.
        hostile = (
            "use std::os::unix::fs::symlink; fn main() {"
            " let d = std::env::current_dir().unwrap();"
            " std::fs::create_dir_all(\"/workspace/keep\").unwrap();"
            " std::fs::write(\"/workspace/keep/precious\", \"precious\").unwrap();"
            " let _ = std::fs::remove_file(d.join(\"main.rs\"));"
            " println!(\"{:?}\", symlink(\"/workspace/keep\", d.join(\"main.rs\")));"
            " println!(\"{:?}\", symlink(\"/workspace/keep\", d.join(\"sub\")));"
            " let _ = std::fs::write(d.join(\"own\"), \"x\");"
            " println!(\"{:?}\", std::fs::hard_link(d.join(\"own\"), d.join(\"hard\")));"
            " println!(\"{}\", d.display()); }")
        r = await rs.execute(hostile, timeout=20)
        assert r.status == "success", r
        check = await rs.execute(
            "fn main() { println!(\"{}\","
            " std::fs::read_to_string(\"/workspace/keep/precious\").unwrap()); }", timeout=20)
        assert check.stdout == "precious\n", check
        assert canary not in r.stdout + check.stdout


# --------------------------------------------------------------------------- requests

async def test_request_cannot_switch_the_network_on(battery: Service) -> None:
    base = battery.url
    # Parameters the endpoint does not take are refused (they were ignored).
    query = "language=python&network_mode=host&network=host&privileged=true&cap_add=ALL"
    async with websockets.connect(f"{base}/api/v1/sessions/ws?{query}") as ws:
        refused = fr.decode_server(await ws.recv())
        assert isinstance(refused, fr.Error) and refused.code == "bad_request", refused
        assert "network_mode" in refused.message
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    async with websockets.connect(f"{base}/api/v1/sessions/ws?language=python") as ws:
        ready = fr.decode_server(await ws.recv())
        assert isinstance(ready, fr.Ready), ready
        await ws.send(json.dumps({
            "type": "execute", "id": "n1", "network": "host", "network_mode": "host",
            "privileged": True, "HostConfig": {"NetworkMode": "host", "Privileged": True},
            # No interface but loopback (gVisor 20240729 under --network=none has no
            # /sys/class/net at all).
            "code": "import os, socket\nnet = '/sys/class/net'\n"
                    "print([n for n in (os.listdir(net) if os.path.isdir(net) else [])"
                    " if n != 'lo'])\n"
                    "s = socket.socket()\ntry:\n    s.connect(('1.1.1.1', 53))\n"
                    "    print('connected')\nexcept OSError as e:\n    print(e.errno)\n"
                    "print(open('/proc/self/status').read().count('CapEff:\\t0000000000000000'))",
        }))
        frames = []
        async with asyncio.timeout(20):
            while True:
                frame = fr.decode_server(await ws.recv())
                frames.append(frame)
                if isinstance(frame, (fr.Result, fr.Error)):
                    break
    if isinstance(frames[-1], fr.Result):
        out = "".join(f.text for f in frames if isinstance(f, fr.Stream))
        unreachable = str(errno.EHOSTUNREACH if RUNSC else errno.ENETUNREACH)
        cap_lines = "1"
        assert out.split("\n")[:3] == ["[]", unreachable, cap_lines], out
    else:  # refusing the frame outright is containment too
        assert isinstance(frames[-1], fr.Error)


@pytest.mark.parametrize(("env", "needle"), [
    ({"NETWORK_MODE": "host"}, "ALLOW_UNSAFE_NETWORK"),
    ({"NETWORK_MODE": "bridge"}, "ALLOW_UNSAFE_NETWORK"),
    ({"SECCOMP_PROFILE": "unconfined"}, "unconfined"),
])
def test_unsafe_settings_make_the_service_refuse_to_start(env: dict[str, str],
                                                          needle: str) -> None:
    full = {k: v for k, v in os.environ.items() if k not in ("ALLOW_UNSAFE_NETWORK",)}
    full.update(env, SANDBOX_PORT="1")
    p = subprocess.run([sys.executable, "-m", "ws_sandbox", "serve"], env=full,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert needle in p.stdout + p.stderr


@pytest.mark.parametrize(("language", "code", "expect"), [
    ("python", "import sys\nprint(repr(sys.stdin.read()))\ninput()", "''\n"),
    ("javascript", "console.log(JSON.stringify(require('fs').readFileSync(0, 'utf8')))", '""\n'),
    ("shell", "read -r line; echo \"rc=$?\"; cat; echo end", "rc=1\nend\n"),
    ("rust", "fn main() { let mut s = String::new();"
             " println!(\"{:?}\", std::io::stdin().read_line(&mut s).map_err(|e| e.kind())); }",
     "Ok(0)\n"),
])
async def test_reading_stdin_gets_end_of_file(battery: Service, language: str, code: str,
                                              expect: str) -> None:
    start = time.monotonic()
    r = await run(battery, language, code, timeout=15)
    assert r.status != "timeout", r
    assert r.stdout == expect, r
    if language == "python":
        assert "EOFError" in r.stderr
    assert time.monotonic() - start < 10


async def send_code_frame(svc: Service, frame: bytes) -> tuple[fr.Error | None, int | None]:
    """Send one text frame to a new session: the error frame it earned, or its close code.

    The session goes on after an error frame: a cell after it must run."""
    async with websockets.connect(f"{svc.url}/api/v1/sessions/ws?language=python",
                                  max_size=None) as ws:
        assert isinstance(fr.decode_server(await ws.recv()), fr.Ready)
        try:
            # The server may refuse (1009) while the frame is still being sent.
            await ws.send(frame.decode())
            async with asyncio.timeout(20):
                while not isinstance(error := fr.decode_server(await ws.recv()), fr.Error):
                    pass
        except websockets.ConnectionClosed as exc:
            return None, exc.rcvd.code if exc.rcvd else None
        await ws.send(json.dumps({"type": "execute", "id": "after", "code": "print(42)"}))
        async with asyncio.timeout(20):
            while not isinstance(after := fr.decode_server(await ws.recv()), fr.Result):
                pass
        assert after.status == "success", after
        return error, None


def execute_frame(code: str, size: int | None = None) -> bytes:
    """An ``execute`` frame for ``code``, padded with spaces to ``size`` bytes."""
    body = json.dumps({"type": "execute", "id": "big", "code": code}).encode()
    return body if size is None else body[:-1] + b" " * (size - len(body)) + b"}"


CODE_LIMIT = Settings().max_code_bytes  # the battery keeps the default


@pytest.mark.parametrize("case", ["ten_megabytes", "one_byte_over_the_frame_limit"])
async def test_a_frame_over_the_websocket_limit_is_closed_with_1009(battery: Service,
                                                                    case: str) -> None:
    # The WebSocket layer refuses it before reading it all (the limit is the largest frame
    # that code of MAX_CODE_BYTES can need, however escaped); the session's own check of the
    # code's size would answer `payload_too_large` only after reading all of it.
    size = {"ten_megabytes": 10 << 20,
            "one_byte_over_the_frame_limit": ws_message_limit(CODE_LIMIT) + 1}[case]
    error, code = await send_code_frame(battery, execute_frame("#", size))
    assert (error, code) == (None, 1009)
    healthy(battery)


async def test_code_over_max_code_bytes_in_a_frame_under_the_limit_is_refused(
        battery: Service) -> None:
    frame = execute_frame("#" * (CODE_LIMIT + 1))
    assert len(frame) < ws_message_limit(CODE_LIMIT)
    error, code = await send_code_frame(battery, frame)
    assert code is None and error is not None, (error, code)
    assert (error.code, error.id) == ("payload_too_large", "big"), error
    # A frame of exactly the limit is read (and its code, too large, refused in words).
    error, code = await send_code_frame(
        battery, execute_frame("#" * (CODE_LIMIT + 1), ws_message_limit(CODE_LIMIT)))
    assert code is None and error is not None and error.code == "payload_too_large", error


def rest_status(svc: Service, body: bytes, send_body: bool) -> int:
    """POST ``body`` (or only announce its length) and return the HTTP status."""
    host, port = svc.http.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", "/api/v1/execute")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if send_body:
            # The server may answer and close before reading it all: that is fine.
            with contextlib.suppress(ConnectionError):
                for i in range(0, len(body), 1 << 16):
                    conn.sock.sendall(body[i:i + (1 << 16)])
        return conn.getresponse().status
    finally:
        conn.close()


def test_ten_megabyte_rest_body_is_refused_with_413(battery: Service) -> None:
    body = json.dumps({"language": "python", "code": "#" * (10 << 20)}).encode()
    assert rest_status(battery, body, send_body=False) == 413
    # The server may close first; then the announced-length case above saw the 413.
    with contextlib.suppress(ConnectionError):
        assert rest_status(battery, body, send_body=True) == 413
    healthy(battery)


async def test_sandbox_runs_under_the_configured_runtime_and_profile(battery: Service) -> None:
    async with await connect(battery.url) as s:
        cid = await container_id(s)
        out = subprocess.run(
            ["docker", "container", "inspect", "-f",
             "{{.HostConfig.Runtime}} {{json .HostConfig.SecurityOpt}}", cid],
            capture_output=True, text=True, check=True).stdout
    runtime, opts = out.split(" ", 1)
    assert runtime == ("runsc" if RUNSC else "runc")
    security = json.loads(opts)
    assert "no-new-privileges:true" in security
    (seccomp,) = [o for o in security if o.startswith("seccomp=")]
    profile = json.loads(seccomp.removeprefix("seccomp="))
    shipped = Path(__file__).parents[2] / "runtime" / "seccomp.json"
    # RUNSC: the runsc variant of it (tests/unit/test_seccomp.py checks what differs)
    assert profile == json.loads(load_seccomp_profile(shipped, runtime))
    _, health = battery.get("/api/v1/health")
    assert health["runtime"] == runtime
    assert health["problems"] == []  # RUNSC: the engine's runsc has --oci-seccomp
