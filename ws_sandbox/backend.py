"""The narrow backend: aiodocker behind a small typed interface.

Only this module talks to the Docker engine. It starts hardened sandboxes, carries agent
frames over their attached stdin/stdout, and removes them. Docker errors become our own
exceptions (:class:`~ws_sandbox.exceptions.EngineUnavailable`,
:class:`~ws_sandbox.exceptions.ImageMissing`, :class:`~ws_sandbox.exceptions.SandboxLost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer
from aiodocker.stream import Stream
from yarl import URL

from ws_sandbox import agent_wire as aw
from ws_sandbox.exceptions import (
    BackendError,
    EngineUnavailable,
    ImageMissing,
    SandboxLost,
)
from ws_sandbox.settings import Language, Settings, load_seccomp_profile

log = logging.getLogger(__name__)

_NO_CONNECTION = 900
"""The status aiodocker gives a ``DockerError`` for a connection the engine did not take."""

ENGINE_RETRY_AFTER = 5.0
"""Seconds a caller is told to wait when the engine does not answer (a restart, say)."""


def _engine_unavailable(exc: BaseException) -> EngineUnavailable:
    """The error a caller sees when the engine does not answer: what failed goes to the
    operator's log, not to the caller. aiodocker reports a connection the engine did not take
    as a ``DockerError`` (status 900), and that went to callers as ``backend_error``, with
    the engine socket's path and no ``Retry-After`` (a soak test across engine restarts)."""
    log.warning("the Docker engine does not answer: %s", exc)
    return EngineUnavailable("the container engine does not answer; retry in a few seconds",
                             retry_after=ENGINE_RETRY_AFTER)

LABEL_APP = "org.ws_sandbox.app"
LABEL_INSTANCE = "org.ws_sandbox.instance"
LABEL_PROCESS = "org.ws_sandbox.process"
LABEL_LANGUAGE = "org.ws_sandbox.language"

SANDBOX_UID = 65534
"""The image's user (nobody), for a container made without a uid of its own."""
SANDBOX_UIDS = range(1_000_000, 2_000_000)
"""Each sandbox of a service runs as a uid of its own from here, taken in turn from a random
start: no host account has one, and two live sandboxes do not share one, so that the
kernel's per-user limits (inotify instances, message-queue bytes, pending signals, pipe
buffer pages, RLIMIT_NPROC) are not shared between sessions under runc."""
_AGENT_STDERR_KEEP = 4096
_EXIT_SIGKILL = 128 + 9  # a container's exit code when its init was killed by SIGKILL


RUNSC_MIN_PIDS = 1024
"""Under gVisor the pids cgroup counts the sandbox kernel's own host threads, not the user's
processes (those live inside gVisor, where `user_task_limit` bounds them). The sentry's
threads grow with work (a few Rust compiles pass 128), so it gets this floor. A fork bomb
held at 128 tasks inside still drives them past it (2,154 host pids at its peak, measured
with Debian 12's runsc), and the whole sandbox then exits (code 2): the bomb ends its own
sandbox, and the session goes on in a new one. Not raised further on purpose: the floor is
also what keeps a few bombs from taking the host's pids (``kernel.pid_max`` is 32768 on
these machines) from every other sandbox and the service."""


def pids_limit(settings: Settings) -> int:
    """The engine's pids limit for one sandbox under the configured runtime."""
    if settings.container_runtime == "runsc":
        return max(settings.pids_limit, RUNSC_MIN_PIDS)
    return settings.pids_limit


def user_task_limit(settings: Settings) -> list[dict[str, Any]]:
    """The ulimit that bounds the user's processes and threads where the pids cgroup cannot.

    Under gVisor the sandbox has a kernel of its own, and RLIMIT_NPROC counts the tasks of
    the sandbox user inside it: a fork or thread bomb fails with EAGAIN at PIDS_LIMIT, as the
    pids cgroup makes it under runc. Under runc the limit is not set: the pids cgroup bounds
    the sandbox there.
    """
    if settings.container_runtime != "runsc":
        return []
    return [{"Name": "nproc", "Soft": settings.pids_limit, "Hard": settings.pids_limit}]


def blas_threads(settings: Settings) -> int:
    """The threads a numeric library may start in a sandbox: its CPU limit, rounded up."""
    return max(1, math.ceil(settings.cpu_limit))


def node_heap_mb(settings: Settings) -> int:
    """Node's heap limit in a sandbox: three quarters of its memory. Node sized it at half
    (259 MB of 512), so a JavaScript cell failed with "heap out of memory" while a quarter
    of the sandbox's memory was free (a review); the rest is for Node itself, the agent and
    the tmpfs mounts, and past it the memory limit ends the cell, with a message that says
    so."""
    return max(16, settings.max_memory_mb * 3 // 4)


def container_config(settings: Settings, language: Language, process_id: str,
                     uid: int = SANDBOX_UID) -> dict[str, Any]:
    """The create-container body for one sandbox, with every hardening default applied.

    Everything here comes from the operator's settings, never from a request. ``uid`` is
    the sandbox's user and group (:class:`DockerBackend` gives each sandbox its own).
    """
    mib = 1024 * 1024
    memory = settings.max_memory_mb * mib
    tmpfs_opts = "rw,nosuid,nodev,exec,uid={uid},gid={uid},mode={mode},size={size}m"
    # The profile is read once per path (cached), never per container.
    security_opt = ["no-new-privileges:true",
                    "seccomp=" + load_seccomp_profile(settings.seccomp_profile_path,
                                                      settings.container_runtime,
                                                      settings.loopback_sockets)]
    host_config: dict[str, Any] = {
        "NetworkMode": settings.network_mode,
        "ReadonlyRootfs": settings.read_only_root,
        "Tmpfs": {
            "/workspace": tmpfs_opts.format(uid=uid, mode="0700",
                                            size=settings.workspace_size_mb),
            "/tmp": tmpfs_opts.format(uid=uid, mode="1777", size=settings.tmp_size_mb),
            # No pseudo-terminals: the kernel has 3,072 for every container of the host
            # together (kernel.pty.max less its reserve), and one sandbox's processes held
            # them all (a review). An empty, read-only /dev/pts in place of Docker's devpts:
            # /dev/ptmx then leads nowhere (ENOENT).
            "/dev/pts": "ro,nosuid,nodev,noexec,size=4k",
        },
        "CapDrop": ["ALL"] if settings.drop_all_capabilities else [],
        "SecurityOpt": security_opt,
        "PidsLimit": pids_limit(settings),
        "Memory": memory,
        "MemorySwap": memory,
        "NanoCpus": int(settings.cpu_limit * 1e9),
        "Ulimits": [
            {"Name": "nofile", "Soft": settings.nofile_limit, "Hard": settings.nofile_limit},
            {"Name": "fsize", "Soft": settings.fsize_limit_mb * mib,
             "Hard": settings.fsize_limit_mb * mib},
            {"Name": "core", "Soft": 0, "Hard": 0},
            *user_task_limit(settings),
        ],
        "IpcMode": "private",
        "Privileged": False,
        "LogConfig": {"Type": "none", "Config": {}},
        "OomScoreAdj": 500,
        "AutoRemove": False,
    }
    if settings.container_runtime:
        host_config["Runtime"] = settings.container_runtime
    return {
        "Image": settings.container_image,
        "User": f"{uid}:{uid}",
        "WorkingDir": "/workspace",
        "Env": [
            f"WS_SANDBOX_LANGUAGE={language}",
            "HOME=/workspace",
            # The agent names the sandbox's uid in a passwd file of the sandbox's own, and
            # libraries that ask the environment first (getpass.getuser()) find it here.
            "USER=sandbox",
            "LOGNAME=sandbox",
            "LANG=C.UTF-8",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            f"WS_SANDBOX_PRELOAD={settings.python_preload}",
            # (a Rust sandbox's alone: the others have no use for it)
            *([f"WS_SANDBOX_RUST_OPT_LEVEL={settings.rust_opt_level}"]
              if language == "rust" else []),
            # OpenBLAS (numpy, scipy) and OpenMP start a thread per host CPU when loaded:
            # on a large host, more tasks than PIDS_LIMIT allows, for CPUs the sandbox may
            # not use. As many as its CPU limit.
            *(f"{name}={blas_threads(settings)}" for name in ("OPENBLAS_NUM_THREADS",
                                                                "OMP_NUM_THREADS")),
            # every node the sandbox runs (the JavaScript worker, `node` from a shell cell)
            f"NODE_OPTIONS=--max-old-space-size={node_heap_mb(settings)}",
        ],
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "OpenStdin": True,
        # The agent's stdin closes when its one attached stream does: on destroy(), and
        # when the service dies. The agent then ends every process and exits, so a
        # sandbox never outlives its service's connection to it.
        "StdinOnce": True,
        "Tty": False,
        "NetworkDisabled": settings.network_mode == "none",
        "Labels": {
            LABEL_APP: "ws_sandbox",
            LABEL_INSTANCE: settings.instance_name,
            LABEL_PROCESS: process_id,
            LABEL_LANGUAGE: language,
        },
        "HostConfig": host_config,
    }


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What health reports about the engine."""

    reachable: bool
    version: str | None
    runtimes: tuple[str, ...]
    default_runtime: str | None
    image_present: bool
    error: str | None = None
    runtime_args: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Each registered runtime's arguments, as the engine reports them."""

    def runtime_in_use(self, configured: str) -> str:
        """The runtime sandboxes run under: the configured one, else the engine's default."""
        return configured or self.default_runtime or "runc"

    def problems(self, configured: str) -> list[str]:
        """What would leave sandboxes on this engine weaker than SECURITY.md says.

        The service refuses to start with any, and health reports them (503). Under runsc
        the task limit is RLIMIT_NPROC inside gVisor (:func:`user_task_limit`), and only the
        seccomp profile keeps user code from escaping it through a user namespace of
        gVisor's own: so runsc must run with ``--oci-seccomp``, and the service must know
        it runs sandboxes under runsc.
        """
        if not self.reachable:
            # Reported as such; under runsc, what the engine would run cannot be checked.
            return [f"the Docker engine does not answer ({self.error or 'no reason given'}),"
                    " so runsc's flags cannot be checked"] if configured == "runsc" else []
        runtime = self.runtime_in_use(configured)
        if runtime != "runsc":
            return []
        if "runsc" not in self.runtimes:
            return [f"the engine has no runtime named runsc (it has: "
                    f"{', '.join(self.runtimes) or 'none'}); scripts/setup.sh registers it"]
        found = []
        if configured != "runsc":
            found.append("the engine's default runtime is runsc: set CONTAINER_RUNTIME=runsc,"
                         " which gives sandboxes gVisor's task limit and seccomp profile")
        if not _flag_enabled(self.runtime_args.get("runsc", ()), "--oci-seccomp"):
            found.append("runsc runs without --oci-seccomp: the seccomp profile would not"
                         " apply inside gVisor, and a user namespace would escape the task"
                         " limit (scripts/setup.sh registers runsc with the flag)")
        return found


def _flag_enabled(args: tuple[str, ...], flag: str) -> bool:
    """Whether a Go-style boolean flag is on in ``args`` (the last of ``--f``, ``--f=v``)."""
    enabled = False
    for arg in args:
        if arg == flag:
            enabled = True
        elif arg.startswith(flag + "="):
            enabled = arg.removeprefix(flag + "=").lower() in ("true", "1", "t")
    return enabled


class Sandbox:
    """One started container with its agent greeted and its streams attached.

    Use :meth:`send` and :meth:`receive` to talk to the agent; :meth:`destroy` removes it.
    """

    def __init__(self, backend: DockerBackend, container: DockerContainer, stream: Stream,
                 language: Language) -> None:
        self._backend = backend
        self._container = container
        self._stream = stream
        self.language = language
        self.id: str = container.id
        self.created_at = time.monotonic()
        self._created_wall = time.time()  # the engine's events are stamped with wall time
        self._decoder = aw.AgentDecoder()
        self._pending: deque[aw.FromAgent] = deque()
        self._stderr = bytearray()
        self._destroyed = False
        self._ended = False  # the engine closed the stream: the container is stopping
        self._attached = False  # a write has connected the stream
        self._broken: str | None = None  # why the stream was cut (a write never taken)

    @property
    def short_id(self) -> str:
        """The first 12 characters of the container id."""
        return self.id[:12]

    async def send(self, frame: aw.ToAgent) -> None:
        """Write one frame to the agent's stdin.

        The write must be taken within ``send_timeout`` seconds: an agent that stops reading
        (a hostile one, or one stuck) would otherwise hold the session's task in the write,
        where no deadline, close or removal reaches it.

        Raises:
            SandboxLost: the container's stdin is gone, or took nothing for
                ``send_timeout`` seconds.
        """
        if self._broken is not None:
            raise SandboxLost(self._broken)
        limit = self._backend.settings.send_timeout
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                await self._stream.write_in(aw.encode(frame))
        except TimeoutError as exc:
            if not deadline.expired():  # aiohttp's own (a TimeoutError too), not ours
                raise SandboxLost(f"cannot write to sandbox {self.short_id}: {exc!r}") from exc
            self._broken = f"sandbox {self.short_id} accepted nothing for {limit:g} s"
            self._abort_stream()  # what it did not take is dropped, not kept for a flush
            raise SandboxLost(self._broken) from None
        except (OSError, RuntimeError, aiohttp.ClientError) as exc:
            raise SandboxLost(f"cannot write to sandbox {self.short_id}: {exc}") from exc
        self._attached = True

    def _abort_stream(self) -> None:
        """Cut the attached stream at once. Closing it would first wait to write out what
        the agent did not read: for one that reads nothing, for as long as the connection
        lives."""
        try:  # aiodocker keeps the upgraded connection there (a private attribute)
            response = getattr(self._stream, "_resp", None)
            connection = response.connection if response is not None else None
            if connection is not None and connection.transport is not None:
                connection.transport.abort()
        except Exception:  # the stream is abandoned either way; destroy() closes it
            log.exception("sandbox %s: cannot cut its stream", self.short_id)

    async def receive(self) -> aw.FromAgent:
        """Read the next frame from the agent.

        Raises:
            SandboxLost: the stream ended or carried anything but valid frames.
        """
        while not self._pending:
            await self._read_more()
        return self._pending.popleft()

    async def receive_many(self) -> list[aw.FromAgent]:
        """Read the frames that one read of the stream completes (at least one), to be
        handled as one batch.

        Raises:
            SandboxLost: the stream ended or carried anything but valid frames.
        """
        while not self._pending:
            await self._read_more()
        frames = list(self._pending)
        self._pending.clear()
        return frames

    async def _read_more(self) -> None:
        """Read one message of the attached stream and decode the frames it completes."""
        if self._broken is not None:
            raise SandboxLost(self._broken)
        try:
            message = await self._stream.read_out()
        except (OSError, aiohttp.ClientError) as exc:
            raise SandboxLost(f"sandbox {self.short_id} stream failed: {exc}") from exc
        if message is None:
            self._ended = True
            raise SandboxLost(f"sandbox {self.short_id} exited")
        if message.stream == 1:
            self._pending.extend(self._decoder.feed(message.data))
        else:
            # The agent's stderr is diagnostics only: keep a bounded tail for logs.
            self._stderr += message.data
            del self._stderr[:-_AGENT_STDERR_KEEP]

    @property
    def stderr_tail(self) -> str:
        """The last few KiB the agent wrote to its stderr, for logs only."""
        return self._stderr.decode("utf-8", "replace")

    async def oom_killed(self) -> bool:
        """Whether the engine saw this container run out of memory.

        Asked when the sandbox was lost. The engine records ``OOMKilled`` when it handles the
        container's ``oom`` event, and under gVisor (where running out of memory kills the
        whole sandbox) that can come after the stream's end and even after the exit. So when
        the stream ended: wait for the container to stop, and if it was killed (exit code
        137) under runsc with no ``OOMKilled`` yet, wait for the engine's ``oom`` event; each
        wait at most ``exit_wait_timeout``. A sandbox lost for another reason (bad frames,
        say) is still running: only its recorded state counts, at once.
        """
        grace = self._backend.settings.exit_wait_timeout
        if self._ended:
            try:
                async with asyncio.timeout(grace):
                    await self._container.wait()
            except (TimeoutError, aiodocker.DockerError, aiohttp.ClientError, OSError):
                pass  # still running, or the engine is gone: judge by what it says now
        try:
            state = (await self._container.show()).get("State") or {}
        except (aiodocker.DockerError, aiohttp.ClientError, OSError):
            return False
        if state.get("OOMKilled"):
            return True
        if (self._ended and state.get("ExitCode") == _EXIT_SIGKILL
                and self._backend.settings.container_runtime == "runsc"):
            try:
                async with asyncio.timeout(grace):
                    return await self._oom_event(grace)
            except (TimeoutError, aiodocker.DockerError, aiohttp.ClientError, OSError,
                    ValueError):  # ValueError: aiohttp refuses an event line over 64 KiB
                pass
        if self._ended:
            # The agent says why it exited on its stderr (a hostile one may say anything:
            # a bounded tail, quoted).
            log.info("sandbox %s stopped: exit code %s, not out of memory; agent said: %r",
                     self.short_id, state.get("ExitCode", "unknown"), self.stderr_tail[-300:])
        return False

    async def _oom_event(self, within: float | None) -> bool:
        """Whether the engine reports an ``oom`` event for this container: past events
        replay at once, and the engine ends the stream ``within`` seconds from now."""
        now = time.time()
        params = {"since": str(int(self._created_wall) - 1),
                  "filters": json.dumps({"container": [self.id], "event": ["oom"]})}
        if within is not None:
            params["until"] = str(int(now + within) + 1)
        async with self._backend.docker._query(
                "events", params=params,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
            try:
                async for line in response.content:  # one JSON event per line, filtered
                    if line.strip():
                        return True
                return False
            finally:
                response.close()  # aiodocker's _query leaves a streamed response open

    async def destroy(self, *, graceful: bool = True) -> None:
        """End the sandbox and remove its container (idempotent, never raises).

        Closing the attached stream closes the agent's stdin (``StdinOnce``); the agent then
        ends every user process and exits. The container gets ``stop_timeout`` seconds to
        stop so, and the forced removal kills only one that has not. A container that
        stopped on its own is the engine's cheaper removal: no ``runc kill`` and no kill
        handling in dockerd, about 7 ms less machine CPU per sandbox under runc
        (BENCHMARKS.md).

        Args:
            graceful: False for a sandbox that is known not to answer (it missed a deadline
                or broke the protocol): it is killed at once, without the wait.
        """
        if self._destroyed:
            return
        self._destroyed = True
        with contextlib.suppress(Exception):
            await self._stream.close()
        grace = self._backend.settings.stop_timeout if graceful else 0.0
        try:
            if grace > 0 and (self._attached or self._ended):  # else no EOF reached it
                async with asyncio.timeout(grace):
                    await self._container.wait()
        except (TimeoutError, aiodocker.DockerError, aiohttp.ClientError, OSError):
            pass  # still running (killed now), or gone already
        finally:
            # Shielded: a cancellation (a shutdown, say) must not leave the container.
            await asyncio.shield(self._backend.remove(self.id))


def attach(docker: aiodocker.Docker, container_id: str) -> Stream:
    """Attach to a sandbox's stdin, stdout and stderr (connected at the first write or read).

    aiodocker's ``DockerContainer.attach`` inspects the container first, to learn whether it
    has a TTY: one more engine request per sandbox, and the biggest reply the engine sends.
    A sandbox never has one (``container_config``), so the stream is made here without it.
    """
    query: dict[str, str | int] = {"detachKeys": "", "logs": 0, "stdin": 1, "stdout": 1,
                                   "stderr": 1, "stream": 1}
    url = URL(f"containers/{container_id}/attach").with_query(query)

    async def setup() -> tuple[URL, bytes | None, bool]:
        return url, None, False  # no request body; no TTY

    return Stream(docker, setup, aiohttp.ClientTimeout(total=None, sock_read=None))


def _summary_field(container: DockerContainer, key: str) -> Any:
    try:
        return container[key]
    except KeyError:
        return None


ORPHAN_SETTLE = 2.0
"""Seconds beyond ``STOP_TIMEOUT`` that start-up waits for the running sandboxes of an
earlier run to stop on their own before it takes them for another live service's."""


class DockerBackend:
    """Owns the aiodocker client; makes and removes sandboxes.

    Use as ``async with DockerBackend(settings) as backend:``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process_id = uuid.uuid4().hex
        self._docker: aiodocker.Docker | None = None
        self._connector: aiohttp.BaseConnector | None = None
        self._unremoved: set[str] = set()
        self._late_removals: set[asyncio.Task[None]] = set()
        self._start_watches: set[asyncio.Task[None]] = set()  # young created orphans
        self._uids = itertools.count(secrets.randbelow(len(SANDBOX_UIDS)))

    def next_uid(self) -> int:
        """The uid of the next sandbox: the next of ``SANDBOX_UIDS`` in turn."""
        return SANDBOX_UIDS[next(self._uids) % len(SANDBOX_UIDS)]

    async def __aenter__(self) -> DockerBackend:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if host.startswith("unix://"):
            # One attached stream per sandbox: lift aiohttp's 100-connection default.
            self._connector = aiohttp.UnixConnector(path=host[len("unix://"):], limit=0)
            self._docker = aiodocker.Docker(url="unix://localhost", connector=self._connector)
        else:
            self._docker = aiodocker.Docker(url=host)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for watch in self._start_watches:
            watch.cancel()  # what they would remove, the next start looks at again
        await asyncio.gather(*self._late_removals, *self._start_watches,
                             return_exceptions=True)
        if self._docker is not None:
            await self._docker.close()
        if self._connector is not None:
            await self._connector.close()

    @property
    def docker(self) -> aiodocker.Docker:
        """The aiodocker client (only inside ``async with``)."""
        assert self._docker is not None, "use DockerBackend in async with"
        return self._docker

    async def info(self) -> EngineInfo:
        """Probe the engine and the runtime image; never raises."""
        try:
            version = await self.docker.version()
            info = await self.docker.system.info()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
            return EngineInfo(False, None, (), None, False, error=str(exc))
        try:
            await self.docker.images.inspect(self.settings.container_image)
            present = True
        except aiodocker.DockerError:
            present = False
        return EngineInfo(
            reachable=True,
            version=str(version.get("Version")),
            runtimes=tuple(sorted(info.get("Runtimes", {}))),
            default_runtime=info.get("DefaultRuntime"),
            image_present=present,
            runtime_args={name: tuple(str(a) for a in entry.get("runtimeArgs") or ())
                          for name, entry in (info.get("Runtimes") or {}).items()
                          if isinstance(entry, dict)},
        )

    async def start_sandbox(self, language: Language) -> Sandbox:
        """Create, attach and start one hardened container, and greet its agent.

        Raises:
            EngineUnavailable: the engine does not answer.
            ImageMissing: the runtime image is not present.
            SandboxLost: the container started but its agent did not greet in time.
        """
        config = container_config(self.settings, language, self.process_id, self.next_uid())
        try:
            container = await self._create(config)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                image = self.settings.container_image
                raise ImageMissing(
                    f"runtime image {image} is missing (CONTAINER_IMAGE); run"
                    f" `ws-sandbox build-image --tag {image}`") from exc
            if exc.status == _NO_CONNECTION:
                raise _engine_unavailable(exc) from exc
            raise BackendError(f"cannot create a sandbox: {exc.message}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _engine_unavailable(exc) from exc
        stream = attach(self.docker, container.id)
        sandbox = Sandbox(self, container, stream, language)
        try:
            async with asyncio.timeout(self.settings.sandbox_start_timeout):
                # Attached (by the greeting's write) before it starts, as `docker run -i`
                # does: from its first instruction the agent's stdin is the service's
                # stream, so a service that dies at any moment after this leaves no
                # sandbox running (StdinOnce). The greeting waits in the stdin pipe.
                await sandbox.send(aw.Hello())
                await container.start()
                frame = await sandbox.receive()
            if not isinstance(frame, aw.AgentReady) or frame.language != language:
                raise SandboxLost(f"agent greeted with {frame!r}")
        except BaseException as exc:
            await sandbox.destroy()
            if isinstance(exc, TimeoutError):
                raise SandboxLost(
                    f"sandbox did not start within {self.settings.sandbox_start_timeout:g} s"
                    f"; agent said: {sandbox.stderr_tail[-300:]!r}") from exc
            if isinstance(exc, aiodocker.DockerError) and exc.status != _NO_CONNECTION:
                raise BackendError(f"cannot start a sandbox: {exc.message}") from exc
            if isinstance(exc, (aiodocker.DockerError, aiohttp.ClientError, OSError)):
                raise _engine_unavailable(exc) from exc
            raise
        if self._unremoved:  # the engine answers again: finish what it could not do before
            await self.retry_removals()
        return sandbox

    async def _create(self, config: dict[str, Any]) -> DockerContainer:
        """Create a container, seeing the engine's answer through even when the caller is
        cancelled (an acquire timeout, a shutdown): a container the engine makes after the
        caller gave up is removed, where it was left, never started, until this process
        ended."""
        creating = asyncio.ensure_future(self.docker.containers.create(config))
        try:
            return await asyncio.shield(creating)
        except asyncio.CancelledError:
            creating.add_done_callback(self._remove_created)
            raise

    def _remove_created(self, creating: asyncio.Future[DockerContainer]) -> None:
        if creating.cancelled() or creating.exception() is not None:
            return
        task = asyncio.create_task(self.remove(creating.result().id))
        self._late_removals.add(task)
        task.add_done_callback(self._late_removals.discard)

    async def remove(self, container_id: str) -> None:
        """Force-remove a container; a missing one is fine. Never raises.

        A container the engine could not remove (it was restarting, say) is remembered and
        removed by :meth:`retry_removals` once the engine answers again.
        """
        try:
            await self.docker.containers.container(container_id).delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status in (404, 409):  # gone, or its removal is already under way
                self._unremoved.discard(container_id)
                return
            log.warning("cannot remove container %s: %s", container_id[:12], exc.message)
            self._unremoved.add(container_id)
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("cannot remove container %s: %s", container_id[:12], exc)
            self._unremoved.add(container_id)
        else:
            self._unremoved.discard(container_id)

    async def retry_removals(self) -> None:
        """Try again to remove every container an earlier :meth:`remove` could not."""
        pending, self._unremoved = self._unremoved, set()
        await asyncio.gather(*(self.remove(cid) for cid in pending))

    async def list_ours(self, *, all_processes: bool = True) -> list[str]:
        """Ids of containers labelled with this service's instance name.

        Args:
            all_processes: include containers of earlier runs of this instance.
        """
        return [c["Id"] for c in await self._list_instance(all_processes=all_processes)]

    async def _list_instance(self, *, all_processes: bool) -> list[dict[str, Any]]:
        """The engine's summaries (``Id``, ``State``, ``Created``, ``Labels``) of the
        containers labelled with this service's instance name."""
        labels = [f"{LABEL_APP}=ws_sandbox", f"{LABEL_INSTANCE}={self.settings.instance_name}"]
        if not all_processes:
            labels.append(f"{LABEL_PROCESS}={self.process_id}")
        try:
            containers = await self.docker.containers.list(
                all=True, filters=json.dumps({"label": labels}))
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
            raise EngineUnavailable(f"cannot list containers: {exc}") from exc
        return [{key: _summary_field(c, key) for key in ("Id", "State", "Created", "Labels")}
                for c in containers]

    async def remove_orphans(self) -> int:
        """Remove the containers earlier runs of this instance left; return how many.

        Only what no live service uses. The sandboxes of a service that died stop on their
        own (their agents see their stdin close), so a running one is waited for, up to
        ``STOP_TIMEOUT`` and :data:`ORPHAN_SETTLE` seconds more; one still running after
        that belongs to another service running with the same ``INSTANCE_NAME``: it is left
        alone, and the log says so (its sessions would be killed otherwise). One created and
        not yet started may be another service's, about to start it, or a dead one's, killed
        between the two: it is looked at again, in the background, once it is older than
        ``SANDBOX_START_TIMEOUT``, and removed if it has still not started.
        """
        others = [c for c in await self._list_instance(all_processes=True)
                  if (c["Labels"] or {}).get(LABEL_PROCESS) != self.process_id]
        now = time.time()
        stopped = [c["Id"] for c in others if c["State"] in ("exited", "dead")
                   or (c["State"] == "created"
                       and now - (c["Created"] or now) > self.settings.sandbox_start_timeout)]
        # Waited for: running ones. Not a young created one (the engine's wait answers at
        # once for a container that is not running, and another service may be about to
        # start it), nor one being removed or paused (it would not stop by itself).
        busy = [c["Id"] for c in others if c["State"] in ("running", "restarting")]
        young = [c for c in others if c["State"] == "created" and c["Id"] not in stopped]
        for c in young:
            age = now - (c["Created"] or now)
            self._watch_start(c["Id"], self.settings.sandbox_start_timeout - age + ORPHAN_SETTLE)
        settle = self.settings.stop_timeout + ORPHAN_SETTLE
        ended = await asyncio.gather(*(self._exits_within(cid, settle) for cid in busy))
        orphans = stopped + [cid for cid, done in zip(busy, ended, strict=True) if done]
        left = len(others) - len(orphans) - len(young)
        if young:
            log.info("%d containers of INSTANCE_NAME=%s are created and not started: removed"
                     " if they are still not started once SANDBOX_START_TIMEOUT has passed",
                     len(young), self.settings.instance_name)
        if left:
            log.warning("%d containers of INSTANCE_NAME=%s are in use by another process:"
                        " left alone; give each service on this engine its own INSTANCE_NAME",
                        left, self.settings.instance_name)
        await asyncio.gather(*(self.remove(cid) for cid in orphans))
        return len(orphans)

    def _watch_start(self, container_id: str, delay: float) -> None:
        task = asyncio.create_task(self._remove_if_never_started(container_id, delay))
        self._start_watches.add(task)
        task.add_done_callback(self._start_watches.discard)

    async def _remove_if_never_started(self, container_id: str, delay: float) -> None:
        """Remove a container that is still only created ``delay`` seconds from now: no live
        service takes that long to start one (``SANDBOX_START_TIMEOUT``)."""
        await asyncio.sleep(delay)
        try:
            shown = await self.docker.containers.container(container_id).show()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError):
            return  # gone, or the engine does not answer: the next start looks again
        if shown["State"]["Status"] != "created":
            return
        try:  # not forced: one another service has just started is refused (409), and kept
            await self.docker.containers.container(container_id).delete(v=True)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError):
            return
        log.info("removed container %s: created by an earlier run and never started",
                 container_id[:12])

    async def _exits_within(self, container_id: str, seconds: float) -> bool:
        """Whether a container has stopped, or stops within ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                await self.docker.containers.container(container_id).wait()
            return True
        except TimeoutError:
            return False
        except aiodocker.DockerError as exc:
            return exc.status == 404  # already gone
        except (aiohttp.ClientError, OSError):
            return False
