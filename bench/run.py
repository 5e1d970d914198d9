"""Run the whole benchmark suite and write ``BENCHMARKS.md`` and ``bench/results.json``.

    .venv/bin/python -m bench.run                # runc and runsc, full repetitions
    .venv/bin/python -m bench.run --quick        # fewer repetitions
    .venv/bin/python -m bench.run --runtimes runc
    .venv/bin/python -m bench.run --render       # BENCHMARKS.md from results.json, NOTES.md

Every target is judged against numbers and baselines measured in this same invocation, so a
noisy machine moves both sides. Nothing here is a test: the suite never asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from bench import baselines, ours
from tests.integration.conftest import Service, start_service
from ws_sandbox.backend import DockerBackend
from ws_sandbox.settings import Language

ROOT = Path(__file__).resolve().parents[1]


def engine_version() -> str:
    out = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def machine() -> str:
    cpu = "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    return (f"{platform.system()} {platform.release()}, {cpu}, "
            f"{len(__import__('os').sched_getaffinity(0))} cores, {mem} GiB, "
            f"Python {platform.python_version()}")


async def attempt(results: dict[str, Any], name: str, measurement: Awaitable[Any]) -> None:
    """Run one measurement; a failure is recorded as such and the suite goes on."""
    try:
        results[name] = await measurement
    except Exception as exc:
        print(f"    {name} failed: {exc!r}"[:500], flush=True)
        results[name] = {"error": repr(exc)[:500]}


JUDGED_CELLS: tuple[Language, ...] = ("python", "javascript", "shell")
"""Languages whose cells are judged against the 1.5 ms and 4x targets, each measured beside
its own attach floor. A Rust cell compiles a program (rustc, about 185 ms under runc): it is
measured, and shown as not judged."""


async def cells_beside_floor(results: dict[str, Any], url: str, runtime: str, language: Language,
                             n: int) -> dict[str, float]:
    """``language``'s cells interleaved with the attach floor and with the same cell sent to a
    sandbox without the service; stores the floor (``floor_<language>``), that service-less
    cell (``cell_without_service_<language>``) and each round's ratios, returns the cells."""
    settings = baselines.sandbox_settings(runtime, instance_name="ws-sandbox-bench-direct")
    async with baselines.AttachEcho(runtime) as floor, DockerBackend(settings) as backend:
        sandbox = await backend.start_sandbox(language)
        try:
            got = await ours.cell_round_trip_beside(url, floor, n, language=language,
                                                    sandbox=sandbox)
        finally:
            await sandbox.destroy()
    results[f"floor_{language}"] = got["floor"]
    results[f"floor_rounds_{language}"] = got["rounds"]
    results[f"cell_without_service_{language}"] = got["direct"]
    results[f"cell_without_service_floor_rounds_{language}"] = got["direct_rounds"]
    cells: dict[str, float] = got["cells"]
    return cells


async def throughput_beside_churn(results: dict[str, Any], http: str, runtime: str,
                                  rounds: int, per_round: int) -> dict[str, Any]:
    """One-shot throughput and the churn ceiling, interleaved in ``rounds``; stores the
    ceiling as ``churn``, returns the throughput.

    Like the cells and the floor, both see the same moments of a noisy machine. Each round
    of calls starts with a full warm pool and its time runs until the pool is full again,
    so the calls pay for every sandbox they used; the churn rounds start once it is, so the
    service's refills never run beside them.
    """
    churns: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for _ in range(rounds):
        await ours.pool_ready(http, "python")
        churns.append(await baselines.churn(per_round, 6, runtime))
        calls.append(await ours.rest_throughput(http, per_round, 6, refilled=True))

    def combined(parts: list[dict[str, Any]], count: str) -> dict[str, Any]:
        summed = {k: sum(p[k] for p in parts) for k in (count, "failed", "seconds")
                  if k in parts[0]}
        return {**parts[0], **summed, "rounds": rounds,
                "per_second": summed[count] / summed["seconds"]}

    results["churn"] = combined(churns, "containers")
    return combined(calls, "calls")


async def measure_runtime(runtime: str, quick: bool, tmp: Path) -> dict[str, Any]:
    reps = 0.2 if quick else 1.0

    def n(x: int) -> int:
        return max(5, int(x * reps))

    rt = "" if runtime == "runc" else runtime
    results: dict[str, Any] = {}
    print(f"[{runtime}] baselines: docker run --rm, plain churn", flush=True)
    await attempt(results, "docker_run", asyncio.to_thread(baselines.docker_run, n(15), rt))
    await attempt(results, "churn_plain", baselines.churn(n(40), 6, rt, sandbox_like=False))
    env = {"POOL_SIZE": "2", "MAX_CONCURRENT_EXECUTIONS": "130", "CONTAINER_RUNTIME": rt,
           "MAX_OUTPUT_BYTES": "1048576", "IDLE_TIMEOUT": "600", "LOG_LEVEL": "warning",
           "MAX_EXECUTION_TIME": "120"}
    service: Service = await asyncio.to_thread(start_service, tmp, **env)
    try:
        await asyncio.to_thread(service.wait_pool_full, 180)
        url, http, pid = service.url, service.http, service.process.pid
        print(f"[{runtime}] ours: session open, cells beside the attach floor, streaming, REST,"
              " throughput beside the churn", flush=True)
        await attempt(results, "session_open_warm",
                      ours.session_open(url, http, n(40), wait_for_pool=True))
        for language in JUDGED_CELLS:
            count = n(500) if language == "python" else n(300)
            await attempt(results, f"cell_{language}",
                          cells_beside_floor(results, url, rt, language, count))
        await attempt(results, "cell_rust", ours.cell_round_trip(url, "rust", n(20)))
        await attempt(results, "streaming", ours.streaming_latency(url, n(300)))
        await attempt(results, "rest_one_shot", ours.rest_one_shot(http, n(40)))
        await attempt(results, "rest_throughput",
                      throughput_beside_churn(results, http, rt, 3, max(6, n(24))))
        print(f"[{runtime}] ours: 100 idle sessions, 1 GB flood", flush=True)
        await attempt(results, "idle_sessions", ours.idle_sessions(url, pid, 100))
        await attempt(results, "flood", ours.flood(url, pid, 1.0))
    finally:
        await asyncio.to_thread(service.stop)
    cold: Service = await asyncio.to_thread(start_service, tmp, **{**env, "POOL_SIZE": "0"})
    try:
        await attempt(results, "session_open_cold",
                      ours.session_open(cold.url, cold.http, n(15), wait_for_pool=False))
    finally:
        await asyncio.to_thread(cold.stop)
    return results


Verdict = tuple[str, str, bool | None]
"""(target, measured, met); ``None``: measured, not judged (said why)."""


def verdicts(r: dict[str, Any]) -> list[Verdict]:
    """(target, measured, met) for each target of the issue."""
    failed = [k for k, v in r.items() if isinstance(v, dict) and "error" in v]
    if failed:
        return [(f"measurement {k}", f"failed: {r[k]['error']}", False) for k in failed] + [
            row for row in _verdicts({k: v for k, v in r.items() if k not in failed})]
    return _verdicts(r)


def _verdicts(r: dict[str, Any]) -> list[Verdict]:
    out: list[Verdict] = []
    try:
        out = _all_verdicts(r)
    except KeyError as missing:
        out = [(f"targets needing {missing}", "not measured", False)]
    return out


def _cell_verdicts(r: dict[str, Any]) -> list[Verdict]:
    """The two cell targets for every judged language, each against its own floor."""
    out: list[Verdict] = []
    for language in JUDGED_CELLS:
        cell, floor = r[f"cell_{language}"]["p50_ms"], r[f"floor_{language}"]["p50_ms"]
        rounds = r[f"floor_rounds_{language}"]
        out += [
            (f"cell round trip <= 1.5 ms median ({language})", f"{cell:.3f} ms", cell <= 1.5),
            (f"cell round trip <= 4x raw attach floor ({language})",
             f"{cell / floor:.2f}x ({floor:.3f} ms floor; rounds {min(rounds):.2f} to"
             f" {max(rounds):.2f}x){_without_service(r, language)}", cell <= 4 * floor),
        ]
    if "cell_rust" in r:
        out.append(("cell round trip (rust)", f"{r['cell_rust']['p50_ms']:.0f} ms: each cell"
                    " compiles a program with rustc", None))
    return out


def _all_verdicts(r: dict[str, Any]) -> list[Verdict]:
    rest = r["rest_one_shot"]["p50_ms"]
    run = r["docker_run"]["p50_ms"]
    thr = r["rest_throughput"]["per_second"]
    ceiling = r["churn"]["per_second"]
    return [
        ("session open from a warm pool <= 15 ms median",
         f"{r['session_open_warm']['p50_ms']:.2f} ms", r["session_open_warm"]["p50_ms"] <= 15),
        *_cell_verdicts(r),
        ("REST one-shot <= 40 ms median", f"{rest:.1f} ms", rest <= 40),
        ("REST one-shot >= 8x faster than docker run --rm",
         f"{run / rest:.1f}x ({run:.0f} ms docker run)", run / rest >= 8),
        ("one-shot throughput >= 90% of engine churn ceiling",
         f"{thr:.2f}/s vs {ceiling:.2f}/s = {100 * thr / ceiling:.2f}%", thr >= 0.9 * ceiling),
        ("streaming latency <= 2 ms median", f"{r['streaming']['p50_ms']:.3f} ms",
         r["streaming"]["p50_ms"] <= 2),
        ("100 idle sessions in <= 150 MB service memory",
         f"{r['idle_sessions']['rss_mb']:.0f} MB", r["idle_sessions"]["rss_mb"] <= 150),
        ("1 GB flood grows service memory by <= 20 MB",
         f"{r['flood']['growth_mb']:.1f} MB in {r['flood']['seconds']} s",
         r["flood"]["growth_mb"] <= 20),
    ]


def _without_service(r: dict[str, Any], language: str) -> str:
    """The same cell sent to a sandbox without the service, beside the same floor."""
    direct = r[f"cell_without_service_{language}"]
    rounds = r[f"cell_without_service_floor_rounds_{language}"]
    floor = r[f"floor_{language}"]["p50_ms"]
    return (f"; without the service {direct['p50_ms']:.3f} ms ="
            f" {direct['p50_ms'] / floor:.2f}x, rounds {min(rounds):.2f} to"
            f" {max(rounds):.2f}x")


def _met(met: bool | None) -> str:
    return "not judged" if met is None else "yes" if met else "**no**"


def _p99(value: dict[str, Any]) -> str:
    """The 99th percentile, or the maximum where fewer than 100 samples cannot tell it."""
    return f"{value['p99_ms']}" if value["n"] >= 100 else f"{value['p99_ms']} (max)"


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def render(data: dict[str, Any]) -> str:
    lines = ["# Benchmarks", "",
             f"Written {data['date']} on {data['machine']}; Docker engine "
             f"{data['engine']}. Produced by `.venv/bin/python -m bench.run"
             f"{' --quick' if data['quick'] else ''}`; raw numbers in `bench/results.json`.",
             "Targets are judged against baselines measured in the same run. A p99 over fewer"
             " than 100 samples is their maximum, marked (max).", ""]
    jkg = data.get("jupyter_kernel_gateway")
    for runtime, r in data["runtimes"].items():
        lines += [f"## {runtime}", ""]
        if "measured" in r:
            lines += [f"Measured {r['measured']} (commit {r.get('commit', 'unknown')}).", ""]
        lines += ["| target | measured | met |", "|---|---|---|"]
        for target, measured, met in verdicts(r):
            lines.append(f"| {target} | {measured} | {_met(met)} |")
        lines += ["", "| measurement | n | median ms | p99 ms |", "|---|---|---|---|"]
        for key, value in r.items():
            if isinstance(value, dict) and "p50_ms" in value:
                lines.append(f"| {key} | {value['n']} | {value['p50_ms']} | {_p99(value)} |")
        for key in ("churn", "churn_plain", "rest_throughput", "idle_sessions", "flood"):
            lines.append(f"| {key} | {json.dumps(_rounded(r.get(key)))} | | |")
        lines.append("")
    if jkg:
        lines += ["## Jupyter Kernel Gateway (unsandboxed, from PyPI)", ""]
        if "measured" in jkg:
            lines += [f"Measured {jkg['measured']} (commit {jkg.get('commit', 'unknown')}).", ""]
        lines += [f"- kernel start: median {jkg['kernel_start']['p50_ms']} ms, "
                  f"p99 {_p99(jkg['kernel_start'])} ms",
                  f"- cell round trip: median {jkg['cell_round_trip']['p50_ms']} ms, "
                  f"p99 {_p99(jkg['cell_round_trip'])} ms"]
        if "kernel_direct" in jkg:
            lines.append(f"- its kernel driven directly over ZMQ (no gateway): median"
                         f" {jkg['kernel_direct']['p50_ms']} ms, p99"
                         f" {_p99(jkg['kernel_direct'])} ms")
        lines.append("")
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    return "\n".join(lines) + "\n"


def commit() -> str:
    """The code measured: the commit, ``-dirty`` when the tree had changes at the start
    (taken before the run writes its own results)."""
    described = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                               capture_output=True, text=True, check=False).stdout.strip()
    return described or "unknown"


def provenance(code: str) -> dict[str, str]:
    """When and from which commit a block of results was measured (``--merge`` keeps blocks
    of earlier runs: each says its own)."""
    return {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": code}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runtimes", default="runc,runsc")
    parser.add_argument("--no-jupyter", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="keep other runtimes' results from bench/results.json")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite BENCHMARKS.md from bench/results.json and NOTES.md")
    args = parser.parse_args()
    results_path = ROOT / "bench" / "results.json"
    if args.render:
        (ROOT / "BENCHMARKS.md").write_text(render(json.loads(results_path.read_text())))
        return
    code = commit()
    data: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                            "machine": machine(), "engine": engine_version(),
                            "quick": args.quick, "runtimes": {}}
    if args.merge and results_path.exists():
        previous = json.loads(results_path.read_text())
        data["runtimes"] = previous.get("runtimes", {})
        if "jupyter_kernel_gateway" in previous:
            data["jupyter_kernel_gateway"] = previous["jupyter_kernel_gateway"]
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in filter(None, args.runtimes.split(",")):
            stamp = provenance(code)
            data["runtimes"][runtime] = {**stamp, **await measure_runtime(runtime, args.quick,
                                                                          Path(tmp))}
            results_path.write_text(json.dumps(data, indent=2) + "\n")
    if not args.no_jupyter:
        print("baseline: Jupyter Kernel Gateway", flush=True)
        stamp = provenance(code)
        data["jupyter_kernel_gateway"] = {**stamp, **await baselines.jupyter_gateway(
            50 if args.quick else 200, 3 if args.quick else 10)}
    results_path.write_text(json.dumps(data, indent=2) + "\n")
    report = render(data)
    (ROOT / "BENCHMARKS.md").write_text(report)
    print(report)


if __name__ == "__main__":
    asyncio.run(main())
