"""Session-open and cell round-trip latency against a running service.

    .venv/bin/python bench/sessions.py --url ws://127.0.0.1:8090 [--n 200]

Prints median and 99th percentile (ms) and writes the raw numbers as JSON to stdout's last
line. Session open is measured from a warm pool: the benchmark waits between opens until the
pool has refilled (GET /api/v1/health), so every open takes a pooled sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.request

from ws_sandbox.client import connect

CELLS = {"python": "print(1)", "javascript": "console.log(1)", "shell": "echo 1",
         "rust": 'fn main() { println!("1"); }'}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": round(statistics.median(values), 3),
            "p99_ms": round(pct(values, 0.99), 3), "min_ms": round(min(values), 3)}


def pool_state(http: str, language: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{http}/api/v1/health", timeout=10) as r:
        pool: dict[str, int] = json.loads(r.read())["pool"][language]
    return pool


async def pool_ready(http: str, language: str) -> None:
    while True:
        pool = await asyncio.to_thread(pool_state, http, language)
        if pool["ready"] >= pool["target"]:
            return
        await asyncio.sleep(0.05)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="ws://127.0.0.1:8090")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--opens", type=int, default=30)
    args = parser.parse_args()
    http = args.url.replace("ws://", "http://")
    results: dict[str, dict[str, float]] = {}
    opens: list[float] = []
    for _ in range(args.opens):
        await pool_ready(http, "python")
        start = time.perf_counter()
        session = await connect(args.url, language="python")
        opens.append((time.perf_counter() - start) * 1000)
        await session.close()
    results["session_open_warm"] = summary(opens)
    for language, code in CELLS.items():
        n = args.n if language != "rust" else max(10, args.n // 20)
        async with await connect(args.url, language=language) as session:
            await session.execute(code)  # warm-up
            trips: list[float] = []
            for _ in range(n):
                start = time.perf_counter()
                r = await session.execute(code)
                trips.append((time.perf_counter() - start) * 1000)
                assert r.stdout == "1\n", r
        results[f"cell_round_trip_{language}"] = summary(trips)
    for name, s in results.items():
        print(f"{name:32s} p50 {s['p50_ms']:8.3f} ms  p99 {s['p99_ms']:8.3f} ms  (n={s['n']})")
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
