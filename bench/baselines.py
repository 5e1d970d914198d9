"""Baselines measured in the same run as our numbers.

* ``docker run --rm`` of the same one-line program;
* a raw ``docker attach`` round trip into a warm container: the physical floor for a cell;
* the engine's container churn (create, start, wait, remove, in parallel): the ceiling for
  single-use containers;
* Jupyter Kernel Gateway from PyPI (kernel start, cell round trip): the unsandboxed system we
  replace, and its kernel driven directly over ZMQ (no gateway, no WebSocket). It is
  installed into ``bench/.venv-jkg`` on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import websockets

from bench.stats import summary
from tests.conftest import RUNTIME_IMAGE
from ws_sandbox.backend import container_config
from ws_sandbox.settings import Settings

IMAGE = RUNTIME_IMAGE
"""The image the service under test runs (``$CONTAINER_IMAGE``, as the tests read it)."""
HARDENING = ["--network", "none", "--read-only", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges", "--user", "65534:65534"]
ROOT = Path(__file__).resolve().parents[1]


def docker_run(n: int, runtime: str) -> dict[str, float]:
    """``docker run --rm`` of ``print(1)``, sequentially."""
    samples = []
    extra = ["--runtime", runtime] if runtime else []
    for _ in range(n):
        start = time.perf_counter()
        out = subprocess.run(["docker", "run", "--rm", *HARDENING, *extra, "--entrypoint",
                              "python3", IMAGE, "-c", "print(1)"],
                             capture_output=True, text=True, check=True)
        samples.append((time.perf_counter() - start) * 1000)
        assert out.stdout == "1\n"
    return summary(samples)


def _config(cmd: list[str], runtime: str) -> dict[str, Any]:
    """A plain hardened container (what ``docker run`` with :data:`HARDENING` makes)."""
    host: dict[str, Any] = {"NetworkMode": "none", "ReadonlyRootfs": True, "CapDrop": ["ALL"],
                            "SecurityOpt": ["no-new-privileges:true"]}
    if runtime:
        host["Runtime"] = runtime
    return {"Image": IMAGE, "Entrypoint": cmd[:1], "Cmd": cmd[1:], "User": "65534:65534",
            "HostConfig": host, "Labels": {"org.ws_sandbox.bench": "1"}}


def sandbox_settings(runtime: str, **overrides: Any) -> Settings:
    """The settings the service under test gets: this process's environment (which
    ``start_service`` passes on), its image, and ``runtime``."""
    return Settings.from_env({**os.environ, "CONTAINER_IMAGE": IMAGE},
                             container_runtime=runtime, **overrides)


def _sandbox_config(cmd: list[str], runtime: str) -> dict[str, Any]:
    """A sandbox's own create body (hardening, limits, seccomp, no logging) running ``cmd``."""
    config = container_config(sandbox_settings(runtime), "python", "bench")
    config["Entrypoint"], config["Cmd"] = cmd[:1], cmd[1:]
    config["Labels"] = {"org.ws_sandbox.bench": "1"}
    return config


class AttachEcho:
    """A warm container configured exactly like a sandbox, running a Python echo loop
    behind ``docker attach``: one line in, the same line out. Its round trip is the floor
    for a cell (client, engine, container process, engine, client)."""

    def __init__(self, runtime: str) -> None:
        self.runtime = runtime
        self._stack = contextlib.AsyncExitStack()
        self._stream: Any = None
        self._count = 0

    async def __aenter__(self) -> AttachEcho:
        echo = ("import sys\nfor line in sys.stdin:\n    sys.stdout.write(line)\n"
                "    sys.stdout.flush()")
        async with contextlib.AsyncExitStack() as stack:
            docker = await stack.enter_async_context(aiodocker.Docker())
            container = await docker.containers.create(
                _sandbox_config(["python3", "-u", "-c", echo], self.runtime))
            stack.push_async_callback(container.delete, force=True)
            await container.start()
            self._stream = container.attach(stdin=True, stdout=True, stderr=True)
            stack.push_async_callback(self._stream.close)
            await self.round_trips(20)  # warm-up
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def round_trips(self, n: int) -> list[float]:
        """``n`` round trips of one line, in milliseconds."""
        samples = []
        for _ in range(n):
            self._count += 1
            line = f"{self._count}\n".encode()
            start = time.perf_counter()
            await self._stream.write_in(line)
            got = b""
            while not got.endswith(b"\n"):
                msg = await self._stream.read_out()
                assert msg is not None
                got += msg.data
            samples.append((time.perf_counter() - start) * 1000)
            assert got == line
        return samples


async def churn(total: int, parallel: int, runtime: str, *,
                sandbox_like: bool = True) -> dict[str, float]:
    """Containers per second through create, start, wait, remove at ``parallel`` at once.

    With ``sandbox_like`` each container has a sandbox's own configuration (the containers
    our one-shot calls go through: tmpfs mounts, seccomp profile, limits); without it, a
    plain hardened ``python3 -c`` container.
    """
    cmd = ["python3", "-c", "print(1)"]
    config = _sandbox_config(cmd, runtime) if sandbox_like else _config(cmd, runtime)
    async with aiodocker.Docker() as docker:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                c = await docker.containers.create(
                    config, name=f"wsb-bench-{uuid.uuid4().hex[:10]}")
                await c.start()
                await c.wait()
                await c.delete(force=True)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(parallel)))
        elapsed = time.perf_counter() - start
    return {"containers": total, "parallel": parallel, "seconds": elapsed,
            "per_second": total / elapsed}


# --- Jupyter Kernel Gateway ------------------------------------------------------------------


def _jkg_python() -> Path:
    venv = ROOT / "bench" / ".venv-jkg"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "jupyter_kernel_gateway",
                        "ipykernel"], check=True)
    return python


def _message(msg_type: str, content: dict[str, Any], msg_id: str = "") -> str:
    return json.dumps({"header": {"msg_id": msg_id or uuid.uuid4().hex, "msg_type": msg_type,
                                  "username": "bench", "session": "bench", "date": "",
                                  "version": "5.3"},
                       "parent_header": {}, "metadata": {}, "content": content,
                       "channel": "shell", "buffers": []})


_KERNEL_DIRECT = """
import json, sys, tempfile, time, os
os.environ["JUPYTER_RUNTIME_DIR"] = tempfile.mkdtemp()
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="python3")
try:
    samples = []
    for i in range(int(sys.argv[1]) + 10):
        start = time.perf_counter()
        msg_id = kc.execute("print(1)")
        while True:  # until *this* request's kernel goes idle
            m = kc.get_iopub_msg(timeout=30)
            if (m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "status"
                    and m["content"]["execution_state"] == "idle"):
                break
        if i >= 10:
            samples.append((time.perf_counter() - start) * 1000)
    print(json.dumps(samples))
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
"""


async def kernel_direct(n: int) -> dict[str, float]:
    """The gateway's kernel (ipykernel) driven directly over ZMQ with jupyter_client:
    ``print(1)`` to its idle status, with no gateway and no WebSocket in the path."""
    python = await asyncio.to_thread(_jkg_python)
    done = await asyncio.to_thread(subprocess.run, [str(python), "-c", _KERNEL_DIRECT, str(n)],
                                   capture_output=True, text=True, timeout=600, check=True)
    return summary(json.loads(done.stdout.strip().splitlines()[-1]))


async def jupyter_gateway(n: int, starts: int, port: int = 8899) -> dict[str, Any]:
    """Kernel start (create to first reply) and ``print(1)`` round trip on Kernel Gateway."""
    import urllib.request

    python = await asyncio.to_thread(_jkg_python)
    proc = await asyncio.create_subprocess_exec(
        str(python), "-m", "jupyter", "kernelgateway", f"--KernelGatewayApp.port={port}",
        "--KernelGatewayApp.ip=127.0.0.1",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"127.0.0.1:{port}"

    def http(method: str, path: str) -> dict[str, Any]:
        req = urllib.request.Request(f"http://{base}{path}", method=method,
                                     data=b"{}" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else {}

    try:
        for _ in range(100):
            try:
                await asyncio.to_thread(http, "GET", "/api")
                break
            except OSError:
                await asyncio.sleep(0.2)
        start_samples: list[float] = []
        trips: list[float] = []
        for k in range(starts):
            start = time.perf_counter()
            kernel = await asyncio.to_thread(http, "POST", "/api/kernels")
            async with websockets.connect(
                    f"ws://{base}/api/kernels/{kernel['id']}/channels") as ws:
                await ws.send(_message("kernel_info_request", {}))
                while json.loads(await ws.recv())["msg_type"] != "kernel_info_reply":
                    pass
                start_samples.append((time.perf_counter() - start) * 1000)
                if k == 0:
                    for i in range(n + 10):
                        msg_id = uuid.uuid4().hex
                        t0 = time.perf_counter()
                        await ws.send(_message("execute_request", {
                            "code": "print(1)", "silent": False, "store_history": True,
                            "user_expressions": {}, "allow_stdin": False,
                            "stop_on_error": True}, msg_id))
                        while True:  # until *this* request's kernel goes idle
                            msg = json.loads(await ws.recv())
                            if (msg["msg_type"] == "status"
                                    and msg["content"]["execution_state"] == "idle"
                                    and msg["parent_header"].get("msg_id") == msg_id):
                                break
                        if i >= 10:
                            trips.append((time.perf_counter() - t0) * 1000)
            await asyncio.to_thread(http, "DELETE", f"/api/kernels/{kernel['id']}")
    finally:
        proc.terminate()
        await proc.wait()
    return {"kernel_start": summary(start_samples), "cell_round_trip": summary(trips),
            "kernel_direct": await kernel_direct(n)}
