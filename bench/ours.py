"""Our numbers, measured against a running service through its public interfaces."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench.baselines import AttachEcho
from bench.stats import summary
from ws_sandbox import agent_wire as aw
from ws_sandbox import frames as fr
from ws_sandbox.backend import Sandbox
from ws_sandbox.client import ClientSession, connect

CELLS = {"python": "print(1)", "javascript": "console.log(1)", "shell": "echo 1",
         "rust": 'fn main() { println!("1"); }'}


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process (``VmHWM``: its peak since the last reset), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def reset_peak(pid: int) -> None:
    """Make a process's ``VmHWM`` its current resident memory (``clear_refs`` 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body


async def pool_ready(http: str, language: str, interval: float = 0.05) -> None:
    """Wait until the pool holds its target for ``language`` (asking every ``interval`` s)."""
    while True:
        pool = (await asyncio.to_thread(_get, f"{http}/api/v1/health"))["pool"][language]
        if pool["ready"] >= pool["target"]:
            return
        await asyncio.sleep(interval)


async def session_open(url: str, http: str, n: int, *, wait_for_pool: bool) -> dict[str, float]:
    """Connect to ``ready`` frame; with ``wait_for_pool`` every open takes a pooled sandbox."""
    samples = []
    for _ in range(n):
        if wait_for_pool:
            await pool_ready(http, "python")
        start = time.perf_counter()
        session = await connect(url, language="python")
        samples.append((time.perf_counter() - start) * 1000)
        await session.close()
    return summary(samples)


async def cell_round_trip(url: str, language: str, n: int) -> dict[str, float]:
    """``print(1)`` (or its equivalent) sent to result received, on a warm session."""
    async with await connect(url, language=language) as session:
        await _cells(session, language, 3)
        return summary(await _cells(session, language, n))


async def cell_round_trip_beside(url: str, floor: AttachEcho, n: int, rounds: int = 10, *,
                                 language: str = "python",
                                 sandbox: Sandbox | None = None) -> dict[str, Any]:
    """``language``'s cell round trips and attach-floor round trips, interleaved in
    ``rounds``.

    Both see the same moments of a noisy machine, so their ratio is not decided by which
    one happened to run while something else did. With ``sandbox``, a third leg in each
    round: the same cell sent straight to a sandbox's agent through the engine, without the
    service, the WebSocket or the client (what the sandbox and the engine cost on their own).
    Returns summaries (``cells``, ``floor``, ``direct``) and each round's ratios of the
    medians (``rounds``, ``direct_rounds``), which show how far a ratio moves in one run.
    """
    cells: list[float] = []
    floors: list[float] = []
    direct: list[float] = []
    ratios: list[float] = []
    direct_ratios: list[float] = []
    per_round = max(1, n // rounds)
    async with await connect(url, language=language) as session:
        await _cells(session, language, 3)
        if sandbox is not None:
            await sandbox_cells(sandbox, 3, language)
        for _ in range(rounds):
            floor_round = await floor.round_trips(per_round)
            cell_round = await _cells(session, language, per_round)
            floors += floor_round
            cells += cell_round
            ratios.append(round(statistics.median(cell_round)
                                / statistics.median(floor_round), 2))
            if sandbox is not None:
                direct_round = await sandbox_cells(sandbox, per_round, language)
                direct += direct_round
                direct_ratios.append(round(statistics.median(direct_round)
                                           / statistics.median(floor_round), 2))
    out: dict[str, Any] = {"cells": summary(cells), "floor": summary(floors), "rounds": ratios}
    if sandbox is not None:
        out |= {"direct": summary(direct), "direct_rounds": direct_ratios}
    return out


async def sandbox_cells(sandbox: Sandbox, n: int, language: str = "python") -> list[float]:
    """``print(1)`` cells (or ``language``'s equivalent) sent to a sandbox's agent, ``exec``
    written to ``done`` read."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await sandbox.send(aw.Exec(id=uuid.uuid4().hex[:12], code=CELLS[language],
                                   max_output_bytes=1 << 20))
        out: list[str] = []
        done = False
        while not done:
            for frame in await sandbox.receive_many():
                if isinstance(frame, aw.Out):
                    out.append(frame.text)
                done = done or isinstance(frame, aw.Done)
        samples.append((time.perf_counter() - start) * 1000)
        assert "".join(out) == "1\n", out
    return samples


async def _cells(session: ClientSession, language: str, n: int) -> list[float]:
    code = CELLS[language]
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        r = await session.execute(code)
        samples.append((time.perf_counter() - start) * 1000)
        assert r.stdout == "1\n", r
    return samples


async def streaming_latency(url: str, lines: int = 300) -> dict[str, float]:
    """From a line written inside the container (its timestamp) to its frame at the client.

    The container shares the host's clock, so both ends read the same ``time.time()``.
    """
    code = (f"import sys, time\nfor i in range({lines}):\n"
            "    sys.stdout.write(f'{time.time()!r}\\n'); sys.stdout.flush()\n"
            "    time.sleep(0.003)")
    samples: list[float] = []

    def on_output(frame: fr.Stream) -> None:
        now = time.time()
        for line in frame.text.splitlines():
            samples.append((now - float(line)) * 1000)

    async with await connect(url, language="python") as session:
        await session.execute("import sys, time")
        r = await session.execute(code, on_output=on_output)
        assert r.status == "success"
    return summary(samples)


def _post(http: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"{http}/api/v1/execute", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        result: dict[str, Any] = json.loads(r.read())
    return result


async def rest_one_shot(http: str, n: int) -> dict[str, float]:
    """Sequential ``POST /api/v1/execute`` of ``print(1)``, waiting for the pool each time."""
    samples = []
    for _ in range(n):
        await pool_ready(http, "python")
        start = time.perf_counter()
        r = await asyncio.to_thread(_post, http, {"code": "print(1)", "language": "python"})
        samples.append((time.perf_counter() - start) * 1000)
        assert r["stdout"] == "1\n", r
    return summary(samples)


async def rest_throughput(http: str, total: int, parallel: int, *,
                          refilled: bool = False) -> dict[str, float]:
    """One-shot calls per second at ``parallel`` concurrent clients.

    ``refilled``: the time runs until the warm pool is full again, so that every call pays
    for the sandbox that replaced the one it used (start with a full pool).
    """
    done = 0
    failed = 0

    async def client(count: int) -> None:
        nonlocal done, failed
        for _ in range(count):
            try:
                r = await asyncio.to_thread(_post, http, {"code": "print(1)",
                                                          "language": "python"})
                done += r["stdout"] == "1\n"
            except urllib.error.HTTPError:
                failed += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(total // parallel) for _ in range(parallel)))
    if refilled:
        await pool_ready(http, "python", interval=0.01)
    elapsed = time.perf_counter() - start
    return {"calls": done, "failed": failed, "parallel": parallel,
            "seconds": elapsed, "per_second": done / elapsed}


async def idle_sessions(url: str, pid: int, count: int) -> dict[str, float]:
    """Service resident memory with ``count`` open, idle sessions."""
    before = rss_mb(pid)
    sessions = []
    try:
        for _ in range(count):
            sessions.append(await connect(url, language="python"))
        await asyncio.sleep(1)
        during = rss_mb(pid)
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return {"sessions": count, "rss_before_mb": round(before, 1),
            "rss_mb": round(during, 1), "growth_mb": round(during - before, 1)}


async def flood(url: str, pid: int, gigabytes: float = 1.0) -> dict[str, float | str]:
    """A cell printing ``gigabytes`` GB: service memory growth and time to its result.

    The peak is the larger of resident memory sampled every 20 ms and the kernel's own
    high-water mark (``VmHWM``, reset just before the cell).
    """
    chunks = int(gigabytes * 1024)
    code = (f"import sys\nb = 'x' * (1 << 20)\nfor _ in range({chunks}):\n"
            "    sys.stdout.write(b)\nsys.stdout.flush()")
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.02):
            peak = max(peak, rss_mb(pid))

    async with await connect(url, language="python") as session:
        await session.execute("pass")
        before = rss_mb(pid)
        reset_peak(pid)
        sampler = threading.Thread(target=sample)
        sampler.start()
        start = time.perf_counter()
        r = await session.execute(code, timeout=120)
        elapsed = time.perf_counter() - start
        stop.set()
        sampler.join()
        # The kernel's own peak, which no spike between two samples escapes.
        peak = max(peak, rss_mb(pid, "VmHWM"))
    assert r.result.truncated
    return {"gigabytes": gigabytes, "seconds": round(elapsed, 2),
            "rss_before_mb": round(before, 1), "rss_peak_mb": round(peak, 1),
            "growth_mb": round(max(peak - before, 0.0), 1), "status": r.status}
