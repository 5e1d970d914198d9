"""The backend's pieces that need no engine: the attach request a sandbox is read through,
and when the question "did it run out of memory?" waits for the container's exit.

Everything else in ``ws_sandbox/backend.py`` talks to the engine and is tested against it
(tests/integration, tests/security).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from types import SimpleNamespace
from typing import Any

import aiodocker
import aiohttp
import pytest

from ws_sandbox import agent_wire as aw
from ws_sandbox.backend import (
    SANDBOX_UIDS,
    DockerBackend,
    Sandbox,
    attach,
    container_config,
)
from ws_sandbox.exceptions import EngineUnavailable, SandboxLost
from ws_sandbox.settings import Settings


async def test_attach_asks_for_all_three_streams_without_inspecting() -> None:
    """aiodocker's own attach inspects the container first (for its TTY flag): one engine
    request more per sandbox. Ours knows a sandbox has no TTY."""
    docker = aiodocker.Docker(url="unix:///nonexistent/docker.sock")
    try:
        stream = attach(docker, "abc123")
        url, body, tty = await stream._setup()  # what the stream sends when it connects
    finally:
        await docker.close()
    assert url.path == "containers/abc123/attach"
    assert dict(url.query) == {"detachKeys": "", "logs": "0", "stdin": "1", "stdout": "1",
                               "stderr": "1", "stream": "1"}
    assert body is None
    assert tty is False
    config = container_config(Settings(), "python", "test")
    assert config["Tty"] is False and config["OpenStdin"] is True


@pytest.mark.parametrize(("cpus", "threads"), [(0.5, 1), (1.0, 1), (1.5, 2), (4.0, 4)])
def test_numeric_libraries_start_as_many_threads_as_the_cpu_limit(cpus: float,
                                                                    threads: int) -> None:
    """OpenBLAS starts a thread per host CPU when numpy loads: on a 64-CPU host, 63 tasks of
    the 128 PIDS_LIMIT allows, in each Python process."""
    env = container_config(Settings(cpu_limit=cpus), "python", "test")["Env"]
    assert f"OPENBLAS_NUM_THREADS={threads}" in env
    assert f"OMP_NUM_THREADS={threads}" in env


@pytest.mark.parametrize(("memory", "heap"), [(512, 384), (2048, 1536), (32, 24)])
def test_node_may_use_three_quarters_of_the_sandboxs_memory(memory: int, heap: int) -> None:
    """Node sized its heap at half the memory limit (259 MB of 512)."""
    env = container_config(Settings(max_memory_mb=memory), "javascript", "test")["Env"]
    assert f"NODE_OPTIONS=--max-old-space-size={heap}" in env


def test_a_rust_sandbox_alone_is_told_the_opt_level() -> None:
    settings = Settings(rust_opt_level="2")
    assert "WS_SANDBOX_RUST_OPT_LEVEL=2" in container_config(settings, "rust", "test")["Env"]
    for language in ("python", "javascript", "shell"):
        env = container_config(settings, language, "test")["Env"]
        assert not [e for e in env if e.startswith("WS_SANDBOX_RUST_OPT_LEVEL")], language


class _Container:
    """Stands in for aiodocker's container: ``wait`` never returns unless it has an exit
    code (it is still running)."""

    id = "f" * 64

    def __init__(self, oom_killed: bool, exit_code: int | None = None) -> None:
        self.oom = oom_killed
        self.exit_code = exit_code
        self.waited = 0

    async def wait(self) -> dict[str, Any]:
        self.waited += 1
        if self.exit_code is None:
            await asyncio.Event().wait()
        return {"StatusCode": self.exit_code}

    async def show(self) -> dict[str, Any]:
        return {"State": {"OOMKilled": self.oom, "ExitCode": self.exit_code or 0}}


class _Events:
    """Stands in for the engine's events endpoint: the lines it streams, then silence."""

    def __init__(self, lines: list[bytes], error: Exception | None = None,
                 broken: Exception | None = None) -> None:
        self.lines = lines
        self.error = error
        self.broken = broken  # raised by the stream after its lines
        self.params: dict[str, str] = {}
        self.closed = False

    def _query(self, path: str, **kwargs: Any) -> Any:
        assert path == "events"
        self.params = kwargs["params"]
        if self.error is not None:
            raise self.error
        events = self

        async def content() -> Any:
            for line in events.lines:
                yield line
            if events.broken is not None:
                raise events.broken
            await asyncio.Event().wait()  # the stream stays open: no more events
            yield b""

        class _Response:
            def __init__(self) -> None:
                self.content = content()

            async def __aenter__(self) -> Any:
                return self

            async def __aexit__(self, *exc: object) -> None:
                return None  # as aiodocker's _query: the response stays open

            def close(self) -> None:
                events.closed = True

        response = _Response()
        return response


class _EndedStream:
    async def read_out(self) -> None:
        return None  # the engine closed the stream


async def _lost(container: _Container, runtime: str = "", docker: Any = None) -> Sandbox:
    """A sandbox whose stream the engine has just ended."""
    settings = Settings(exit_wait_timeout=0.2, container_runtime=runtime)
    backend = SimpleNamespace(settings=settings, docker=docker)
    sandbox = Sandbox(backend, container, _EndedStream(), "python")  # type: ignore[arg-type]
    with pytest.raises(SandboxLost, match="exited"):
        await sandbox.receive()
    return sandbox


async def test_oom_check_waits_for_the_exit_only_when_the_stream_ended() -> None:
    """A sandbox lost because its stream ended may not have been marked OOMKilled yet: wait
    (bounded) for the exit. One lost for another reason is still running: do not wait."""
    backend = SimpleNamespace(settings=Settings(exit_wait_timeout=0.2))
    running = _Container(oom_killed=False)
    sandbox = Sandbox(backend, running, _EndedStream(), "python")  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        assert await sandbox.oom_killed() is False
    assert running.waited == 0

    stopped = _Container(oom_killed=True)
    sandbox = await _lost(stopped)
    start = time.monotonic()
    async with asyncio.timeout(5):
        assert await sandbox.oom_killed() is True
    assert stopped.waited == 1
    assert 0.15 <= time.monotonic() - start < 2  # waited, and no longer than the setting


def _info(runsc_args: tuple[str, ...], default: str = "runc") -> Any:
    from ws_sandbox.backend import EngineInfo

    return EngineInfo(True, "24", ("runc", "runsc"), default, True,
                      runtime_args={"runc": (), "runsc": runsc_args})


def test_runsc_without_oci_seccomp_is_a_problem() -> None:
    """Without the profile inside gVisor a user namespace escapes the task limit: the
    service refuses to start, and health answers 503 with the reason."""
    bare = _info(("--network=none",))
    assert bare.runtime_in_use("runsc") == "runsc"
    (problem,) = bare.problems("runsc")
    assert "--oci-seccomp" in problem
    assert bare.problems("") == bare.problems("runc") == []
    for args in (("--oci-seccomp",), ("--oci-seccomp=true",), ("--oci-seccomp=false",
                                                               "--oci-seccomp")):
        assert _info(args).problems("runsc") == [], args
    for args in (("--oci-seccomp=false",), ("--oci-seccomp", "--oci-seccomp=false"),
                 ("--oci-seccomp-x",)):
        assert len(_info(args).problems("runsc")) == 1, args


def test_runsc_as_the_engines_default_must_be_configured() -> None:
    """The service applies gVisor's task limit and profile variant only when it knows it
    runs under runsc: an engine defaulting to runsc needs CONTAINER_RUNTIME=runsc."""
    info = _info(("--oci-seccomp",), default="runsc")
    assert info.runtime_in_use("") == "runsc"
    (problem,) = info.problems("")
    assert "CONTAINER_RUNTIME=runsc" in problem
    assert info.problems("runsc") == []
    assert info.problems("runc") == []


@pytest.mark.parametrize(("lines", "expected"), [
    ([b'{"status":"oom","id":"ffff","Action":"oom"}\n'], True),
    ([], False),
])
async def test_a_killed_sandbox_waits_for_the_engines_oom_event(lines: list[bytes],
                                                                  expected: bool) -> None:
    """Under gVisor the engine can record the exit (137, SIGKILL) before it handles the oom
    event: the check then waits, bounded, for that event (past events replay), and closes
    the event stream whatever happens."""
    events = _Events(lines)
    killed = _Container(oom_killed=False, exit_code=137)
    sandbox = await _lost(killed, "runsc", events)
    start = time.monotonic()
    async with asyncio.timeout(5):
        assert await sandbox.oom_killed() is expected
    assert time.monotonic() - start < (0.1 if expected else 0.6)
    assert events.closed
    assert json.loads(events.params["filters"]) == {"container": [killed.id],
                                                    "event": ["oom"]}
    assert time.time() - 5 < int(events.params["since"]) <= time.time()
    assert time.time() < int(events.params["until"]) <= time.time() + 2


async def test_an_engine_error_on_the_event_stream_is_no_oom() -> None:
    events = _Events([], error=aiodocker.DockerError(500, "boom"))
    sandbox = await _lost(_Container(False, 137), "runsc", events)
    async with asyncio.timeout(5):
        assert await sandbox.oom_killed() is False
    assert events.params  # it did ask


@pytest.mark.parametrize("broken", [ValueError("Chunk too big"),
                                    aiohttp.ClientPayloadError("connection reset")])
async def test_a_broken_event_stream_is_no_oom_and_is_closed(broken: Exception) -> None:
    """aiohttp refuses a line over 64 KiB with ValueError; an engine that breaks the stream
    off gives a payload error. Either is "no oom event seen", never an exception."""
    events = _Events([], broken=broken)
    sandbox = await _lost(_Container(False, 137), "runsc", events)
    async with asyncio.timeout(5):
        assert await sandbox.oom_killed() is False
    assert events.closed


@pytest.mark.parametrize(("runtime", "exit_code"), [("runsc", 1), ("runc", 137)])
async def test_no_event_is_asked_for_otherwise(runtime: str, exit_code: int) -> None:
    """Only a SIGKILLed gVisor sandbox can have been ended by memory without OOMKilled
    recorded yet (under runc the kernel kills a process inside and the agent reports it)."""
    sandbox = await _lost(_Container(False, exit_code), runtime)  # docker=None: no events
    async with asyncio.timeout(5):
        assert await sandbox.oom_killed() is False


def test_each_sandbox_gets_a_uid_of_its_own() -> None:
    backend = DockerBackend(Settings())
    uids = [backend.next_uid() for _ in range(1000)]
    assert len(set(uids)) == 1000  # in turn: no two live sandboxes share one
    assert all(uid in SANDBOX_UIDS for uid in uids)
    assert all(b - a in (1, 1 - len(SANDBOX_UIDS)) for a, b in itertools.pairwise(uids))
    config = container_config(Settings(), "python", "test", uids[0])
    assert config["User"] == f"{uids[0]}:{uids[0]}"
    for path in ("/workspace", "/tmp"):
        assert f"uid={uids[0]},gid={uids[0]}," in config["HostConfig"]["Tmpfs"][path]


def test_no_pseudo_terminals() -> None:
    """The kernel's pseudo-terminals are one pool for every container of the host: an empty,
    read-only /dev/pts stands in place of Docker's devpts."""
    tmpfs = container_config(Settings(), "python", "test")["HostConfig"]["Tmpfs"]
    assert tmpfs["/dev/pts"].split(",")[0] == "ro"


class _StuckStream:
    """An attached stream whose writes the agent never takes, or that fail as ``error``."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.aborted = False
        self._resp = SimpleNamespace(connection=SimpleNamespace(
            transport=SimpleNamespace(abort=self._abort)))

    def _abort(self) -> None:
        self.aborted = True

    async def write_in(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        await asyncio.Event().wait()

    async def read_out(self) -> None:
        raise AssertionError("a cut stream is not read again")


def _writer(stream: _StuckStream, send_timeout: float | None) -> Sandbox:
    backend = SimpleNamespace(settings=Settings(send_timeout=send_timeout))
    return Sandbox(backend, _Container(False), stream, "python")  # type: ignore[arg-type]


async def test_a_write_not_taken_within_send_timeout_cuts_the_stream() -> None:
    stream = _StuckStream()
    sandbox = _writer(stream, 0.05)
    with pytest.raises(SandboxLost, match=r"accepted nothing for 0\.05 s"):
        await sandbox.send(aw.Signal())
    assert stream.aborted
    # The sandbox stays lost: no second write, and no read of the cut stream.
    with pytest.raises(SandboxLost, match="accepted nothing"):
        await sandbox.send(aw.Signal())
    with pytest.raises(SandboxLost, match="accepted nothing"):
        await sandbox.receive()


@pytest.mark.parametrize("send_timeout", [None, 30.0])
async def test_the_engines_own_timeout_is_not_taken_for_ours(send_timeout: float | None) -> None:
    """aiohttp's timeouts are TimeoutErrors too: one is reported as what it is, and with
    SEND_TIMEOUT unset the report does not fail on formatting None (a TypeError, which
    would have ended the session's task)."""
    stream = _StuckStream(aiohttp.ServerTimeoutError("connection timeout"))
    with pytest.raises(SandboxLost, match=r"cannot write to sandbox .*ServerTimeoutError"):
        await _writer(stream, send_timeout).send(aw.Signal())
    assert not stream.aborted


class _SlowEngine:
    """aiodocker's client, as far as creating and removing containers: a create answers
    once :attr:`answer` is set."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.asked = asyncio.Event()
        self.deleted: list[str] = []
        self.containers = self

    async def create(self, config: dict[str, Any]) -> Any:
        self.asked.set()
        await self.answer.wait()
        return SimpleNamespace(id="c" * 64)

    def container(self, container_id: str) -> Any:
        async def delete(**_: object) -> None:
            self.deleted.append(container_id)
        return SimpleNamespace(delete=delete)


async def test_a_container_created_after_its_caller_gave_up_is_removed() -> None:
    """An acquire that times out (or a shutdown) cancels the start while the engine is still
    creating: the container it makes then was left, never started, until the process
    ended."""
    engine = _SlowEngine()
    backend = DockerBackend(Settings())
    backend._docker = engine  # type: ignore[assignment]
    starting = asyncio.create_task(backend.start_sandbox("python"))
    async with asyncio.timeout(5):
        await engine.asked.wait()
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert engine.deleted == []
    engine.answer.set()
    async with asyncio.timeout(5):
        while not engine.deleted:
            await asyncio.sleep(0.005)
    assert engine.deleted == ["c" * 64]
    backend._docker = None
    await backend.__aexit__(None, None, None)


def test_runsc_problems_name_what_is_wrong_with_the_engine() -> None:
    """An engine that does not answer, or has no runsc, was reported as a runsc without
    --oci-seccomp (an operator review): editing daemon.json's flags would not have helped."""
    from ws_sandbox.backend import EngineInfo

    down = EngineInfo(False, None, (), None, False, error="Cannot connect to Docker Engine")
    (problem,) = down.problems("runsc")
    assert "does not answer (Cannot connect to Docker Engine)" in problem
    assert "--oci-seccomp" not in problem
    assert down.problems("runc") == down.problems("") == []  # reported as unreachable alone
    bare = EngineInfo(True, "24", ("runc",), "runc", True, runtime_args={"runc": ()})
    (problem,) = bare.problems("runsc")
    assert problem.startswith("the engine has no runtime named runsc (it has: runc)")


async def test_an_engine_that_does_not_answer_is_engine_unavailable_with_a_retry(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """aiodocker reports a connection the engine did not take as a ``DockerError`` (status
    900), and callers got ``backend_error``, with the engine socket's path and no
    ``Retry-After``, while the engine restarted (a soak test). They get the documented
    ``engine_unavailable`` and a retry; the detail goes to the operator's log."""
    socket = tmp_path / "no-engine" / "docker.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket}")
    async with DockerBackend(Settings()) as backend:
        with pytest.raises(EngineUnavailable) as refused:
            await backend.start_sandbox("python")
    assert refused.value.code == "engine_unavailable"
    assert refused.value.retry_after == 5.0 and refused.value.retry_after_header == "5"
    assert str(socket) not in refused.value.message
    assert refused.value.message == ("the container engine does not answer; retry in a few"
                                     " seconds")
    assert str(socket) in caplog.text  # the operator's log has what failed
