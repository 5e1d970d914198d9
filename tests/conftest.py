"""Shared test configuration.

Tests marked ``docker`` need a real Docker engine and the runtime image. Locally they skip
with a reason when either is missing; in CI (``CI`` or ``WS_SANDBOX_REQUIRE_DOCKER`` set)
a missing engine or image is a failure, never a silent skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import uvicorn
import uvloop

from ws_sandbox import image as image_build

RUNTIME_IMAGE = os.environ.get("CONTAINER_IMAGE", "ws-sandbox-runtime:latest")


def docker_required() -> bool:
    """Whether a missing engine must fail the run instead of skipping."""
    def set_(name: str) -> bool:
        return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")

    return set_("CI") or set_("WS_SANDBOX_REQUIRE_DOCKER")


@functools.cache
def docker_problem() -> str | None:
    """Why Docker tests cannot run here, or ``None`` when they can."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer within 20 s"
    if info.returncode != 0:
        return f"no Docker engine answers: {info.stderr.strip()[:300]}"
    image = subprocess.run(["docker", "image", "inspect", "--format",
                            f'{{{{index .Config.Labels "{image_build.CONTEXT_HASH_LABEL}"}}}}',
                            RUNTIME_IMAGE],
                           capture_output=True, text=True, timeout=20, check=False)
    if image.returncode != 0:
        return f"runtime image {RUNTIME_IMAGE} is missing (run `ws-sandbox build-image`)"
    # An image built from another runtime/ (the agent or a worker changed since) would test
    # the old code and pass or fail for it.
    built, tree = image.stdout.strip(), image_build.context_hash(image_build.find_context())
    if built != tree:
        return (f"runtime image {RUNTIME_IMAGE} was built from another runtime/ (context hash"
                f" {built[:16] or 'none'}, the tree's {tree[:16]}): run `ws-sandbox"
                " build-image`")
    return None


def require_docker() -> None:
    """Fail (in CI) or skip (locally) the calling test or fixture when Docker is unusable."""
    problem = docker_problem()
    if problem is None:
        return
    if docker_required():
        pytest.fail(f"Docker is required in CI: {problem}", pytrace=False)
    pytest.skip(f"needs Docker: {problem}")


def require_program(name: str) -> None:
    """Fail (in CI) or skip (locally) the calling test or fixture when the host lacks ``name``
    (the machines this project runs on come with it)."""
    if shutil.which(name) is not None:
        return
    if docker_required():
        pytest.fail(f"{name} is required in CI and is not installed on this host", pytrace=False)
    pytest.skip(f"{name} is not installed on this host")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("docker") is not None:
        require_docker()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Disruptive tests (they restart the Docker engine) run after all others."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    """Tests marked ``event_loops`` run twice: on asyncio's own loop and on uvloop's.

    The service runs on uvloop (``ws_sandbox/server.py``); code that leans on how a
    transport behaves is checked on both. Every other test runs on asyncio's loop, as it
    would without this hook (one factory adds nothing to the test's id).
    """
    if item.get_closest_marker("event_loops") is None:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds, for something a thread does (a test helper)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def uvicorn_in_process(config: uvicorn.Config, bound: float = 10.0
                             ) -> AsyncIterator[int]:
    """Serve ``config`` on this event loop (a test helper); yields the port it listens on.

    Give ``port=0``: the kernel picks a free one. ``bound`` bounds the start and the stop.
    """
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(bound):
            while not server.started:
                if task.done():
                    task.result()  # raises what made startup fail
                    pytest.fail("uvicorn stopped before it started")
                await asyncio.sleep(0.005)
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        async with asyncio.timeout(bound):
            await task
