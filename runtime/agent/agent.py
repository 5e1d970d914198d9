#!/usr/bin/env python3
"""ws_sandbox in-container agent (protocol ``protocol/agent.md``, version 1).

The agent is PID 2 of a sandbox container (PID 1 is ``tini``). It speaks length-prefixed JSON
frames with the service over its stdin/stdout and runs the user's cells in one language:

- python, javascript, shell: a persistent *worker* process (``worker_python.py``,
  ``worker_node.js``, ``worker_shell.bash``) that keeps state between cells. Code goes to the
  worker over a private control pipe; the worker answers over a second control pipe with
  newline-delimited JSON (``ready``, ``display``, ``done``). The user's stdout and stderr are
  separate pipes that the agent forwards as ``out`` frames as soon as it reads them.
- rust: no worker; each cell is compiled with ``rustc`` and the binary is run, both as direct
  children of the agent.

Everything runs in one ``selectors`` loop without threads. Output is backpressured: when the
service stops reading, the outgoing buffer fills up to ``HIGH_WATER`` and the agent stops reading
the user's pipes, so the user's program blocks in ``write``. Child exits arrive as ``SIGCHLD``
through ``signal.set_wakeup_fd``.

Only the Python standard library is used; the file runs on Debian bookworm's python3.11.
"""

from __future__ import annotations

import codecs
import fcntl
import os
import select
import struct
import sys
import termios
import time

# Every sandbox start pays for the agent's imports (a pool refill, a one-shot call), so the
# agent imports only C modules and what Python's own start has loaded: no typing, dataclasses
# or pathlib; no json (it imports re, enum, functools and collections; JSON goes through
# json's C core in json_core, shared with the Python worker), no selectors (epoll directly),
# no subprocess (posix_spawn), no contextlib, and signal's C core `_signal` (signal.py builds
# an enum). That saves about 12 ms of CPU per start; shutil, tempfile and subprocess are
# imported where Rust needs them. An isolated interpreter (`-I`) does not put a script's
# directory on sys.path: json_core is found through the agent's own.
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from json_core import dumps, dumps_ascii, loads

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    import subprocess
    from collections.abc import Callable
    from types import TracebackType
    from typing import Any, Final, Protocol

    class ChildProcess(Protocol):
        """A direct child of the agent: a spawned worker or a Rust ``Popen``."""

        pid: int
        returncode: int | None

    Callback = Callable[[int], None]
    ChildExit = Callable[[int, int, Any], None]
else:
    import _signal as signal

PROTOCOL_VERSION: Final = 1
MAX_AGENT_FRAME: Final = 1 << 20
READ_SIZE: Final = 1 << 16
"""Bytes asked for per read of the service's frames. A frame larger than this takes more
than one read; a read of 1 MiB made glibc map, shrink and unmap a fresh 1 MiB buffer at
every read (three memory-map calls per frame, which gVisor serves slowly)."""
"""Largest frame body the agent sends (agent -> service)."""
MAX_SERVICE_FRAME: Final = 16 << 20
"""Largest frame body the agent accepts (service -> agent)."""
MAX_TEXT_CHUNK: Final = 64 * 1024
"""Largest ``text`` of one ``out`` frame, and the size of one read from a user pipe."""
DEFAULT_MAX_OUTPUT: Final = 1 << 20
HIGH_WATER: Final = 1 << 20
"""Outgoing bytes buffered before the agent stops reading the user's pipes."""
HARD_WATER: Final = 4 << 20
"""Outgoing bytes buffered before the agent also stops reading its stdin."""
LINGER: Final = 0.0003
"""Seconds a running cell's output may wait for what follows it (often the cell's ``done``)
so that both leave in one write: one wake-up of the engine and the service instead of two.
Streaming latency grows by this much, or by what the platform's timers oversleep until the
agent stops lingering (see :data:`LINGER_OVERSLEEP`)."""
LINGER_BYTES: Final = 64 * 1024
"""Output queued beyond this is written at once, lingering or not."""
LINGER_OVERSLEEP: Final = 0.001
"""A linger that sleeps longer than this (gVisor's timers sleep 1.3 ms for 0.3) costs more
than it saves; after :data:`LINGER_OVERSLEEPS` in a row the agent stops lingering."""
LINGER_OVERSLEEPS: Final = 3
PROC_READ: Final = 16 * 1024
"""Bytes read from a ``/proc`` or cgroup file (``status`` is about 1.5 KiB) per ``pread``."""
MAX_CONTROL_LINE: Final = 2 << 20
"""Largest message a worker may send over its control pipe."""
MAX_ID_LEN: Final = 256
MAX_ERROR_LEN: Final = 2000
LANGUAGES: Final = ("python", "javascript", "shell", "rust")
STATUSES: Final = ("success", "error", "interrupted")
DISPLAY_KINDS: Final = ("execute_result", "display_data")
EXIT_BAD_FRAME: Final = 2

HEADER: Final = struct.Struct(">I")
AGENT_DIR: Final = os.path.dirname(os.path.realpath(__file__))
READ: Final = select.EPOLLIN
WRITE: Final = select.EPOLLOUT


class FrameError(Exception):
    """A frame is malformed, too large, or not valid for the protocol."""


class _suppress:
    """``contextlib.suppress`` without importing contextlib at every start."""

    __slots__ = ("_kinds",)

    def __init__(self, *kinds: type[BaseException]) -> None:
        self._kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> bool:
        return kind is not None and issubclass(kind, self._kinds)


def encode_frame(obj: dict[str, Any], limit: int = MAX_AGENT_FRAME) -> bytes:
    """Encode one frame: 4-byte big-endian length, then compact UTF-8 JSON.

    Lone surrogates (which a hostile worker can smuggle in through JSON escapes) are replaced
    so that the body is always valid UTF-8.

    Args:
        obj: The JSON object; it must have a string field ``t``.
        limit: The largest body allowed.

    Returns:
        The frame bytes, header included.

    Raises:
        FrameError: If the body would be larger than ``limit``.
    """
    body = dumps(obj)
    data = body.encode("utf-8", "replace")
    if len(data) > limit:
        raise FrameError(f"frame of {len(data)} bytes exceeds the limit of {limit}")
    return HEADER.pack(len(data)) + data


def decode_body(body: bytes) -> dict[str, Any]:
    """Decode and minimally validate one frame body.

    Args:
        body: The bytes after the length header.

    Returns:
        The JSON object, which has a string field ``t``.

    Raises:
        FrameError: If the body is not strict UTF-8 JSON, not an object, or has no string ``t``.
    """
    try:
        obj = loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FrameError(f"invalid JSON frame: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise FrameError("a frame must be a JSON object with a string field 't'")
    return obj


class FrameDecoder:
    """Incremental decoder for a stream of length-prefixed JSON frames."""

    def __init__(self, limit: int = MAX_SERVICE_FRAME) -> None:
        """Create a decoder.

        Args:
            limit: The largest body accepted; a larger length header is an error at once,
                before the body arrives.
        """
        self._limit = limit
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes and return every frame they complete.

        Args:
            data: The next bytes of the stream.

        Returns:
            Complete frames, in order.

        Raises:
            FrameError: On an oversized or malformed frame; the decoder is unusable afterwards.
        """
        self._buf += data
        frames: list[dict[str, Any]] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > self._limit:
                raise FrameError(f"frame of {size} bytes exceeds the limit of {self._limit}")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            body = bytes(self._buf[HEADER.size : end])
            del self._buf[:end]
            frames.append(decode_body(body))
        return frames


class _Value:
    """A small value class: equal when of the same type with equal fields (``__slots__``)."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __hash__(self) -> int:
        return hash((type(self), *(getattr(self, name) for name in self.__slots__)))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Hello(_Value):
    """``{"t": "hello"}``."""

    __slots__ = ()


class Exec(_Value):
    """``{"t": "exec", "id": ..., "code": ..., "max_output_bytes": ...}``."""

    __slots__ = ("code", "id", "max_output_bytes")

    def __init__(self, id: str, code: str, max_output_bytes: int = DEFAULT_MAX_OUTPUT) -> None:
        self.id = id
        self.code = code
        self.max_output_bytes = max_output_bytes


class Interrupt(_Value):
    """``{"t": "interrupt"}``."""

    __slots__ = ()


class Restart(_Value):
    """``{"t": "restart"}``."""

    __slots__ = ()


ServiceFrame = Hello | Exec | Interrupt | Restart


def parse_service_frame(obj: dict[str, Any]) -> ServiceFrame | None:
    """Validate a decoded service frame.

    Args:
        obj: A frame from :func:`decode_body`.

    Returns:
        The typed frame, or None for an unknown ``t`` (ignored for forward compatibility).

    Raises:
        FrameError: If a known frame has missing or invalid fields.
    """
    tag = obj["t"]
    if tag == "hello":
        return Hello()
    if tag == "interrupt":
        return Interrupt()
    if tag == "restart":
        return Restart()
    if tag != "exec":
        return None
    cell_id, code = obj.get("id"), obj.get("code")
    limit = obj.get("max_output_bytes", DEFAULT_MAX_OUTPUT)
    if not isinstance(cell_id, str) or not 0 < len(cell_id) <= MAX_ID_LEN:
        raise FrameError("exec: 'id' must be a non-empty string of at most 256 characters")
    if not isinstance(code, str):
        raise FrameError("exec: 'code' must be a string")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise FrameError("exec: 'max_output_bytes' must be a non-negative integer")
    return Exec(cell_id, code, limit)


def _signal_names() -> dict[int, str]:
    """Signal numbers to names, as ``signal.Signals`` names them (aliases resolve to the
    alphabetically first name, as the enum's members are made)."""
    names: dict[int, str] = {}
    for name in sorted(dir(signal)):
        if name.startswith("SIG") and not name.startswith("SIG_") and name.isupper():
            names.setdefault(getattr(signal, name), name)
    return names


def signal_description(signum: int) -> str:
    """Describe a signal for a person, e.g. ``"SIGSEGV (segmentation fault)"``.

    Args:
        signum: The signal number.

    Returns:
        The signal's name, with its description where the platform knows one.
    """
    name = _signal_names().get(signum, f"signal {signum}")
    desc = signal.strsignal(signum)
    if signum == signal.SIGKILL:
        desc = "killed, possibly by the out-of-memory killer"
    return f"{name} ({desc.lower()})" if desc else name


def _which(name: str) -> str | None:
    """The first executable ``name`` on ``PATH`` (what ``shutil.which`` does, without
    importing shutil at every start)."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not os.path.isabs(directory):
            continue  # never a program relative to wherever the agent happens to be
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def _remove_tree(path: str) -> None:
    """Remove a directory tree, ignoring errors."""
    import shutil  # only Rust cells make trees to remove

    shutil.rmtree(path, ignore_errors=True)


def _log(message: str) -> None:
    """Write a diagnostic line to the agent's stderr (never parsed by the service)."""
    with _suppress(OSError):
        os.write(2, f"ws_sandbox agent: {message}\n".encode("utf-8", "replace"))


def _set_nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def _pending_bytes(fd: int) -> int:
    """Bytes that can be read from a pipe right now (FIONREAD)."""
    try:
        buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", buf)[0])


class Child:
    """A process started by :func:`spawn`; the agent reaps it (``os.wait4``) itself."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


def spawn(argv: list[str], env: dict[str, str], *, stdout: int, stderr: int,
          pass_fds: tuple[int, ...]) -> Child:
    """Start ``argv`` in a new session, as ``subprocess.Popen`` would with ``stdin=DEVNULL``,
    ``start_new_session=True`` and the default ``close_fds`` and ``restore_signals``.

    ``posix_spawn`` (a vfork and an exec) instead of subprocess, whose import costs every
    start milliseconds. Only ``pass_fds`` and the three standard streams are inherited: every
    other descriptor of the agent is close-on-exec (Python opens them so, and :func:`main`
    marks the ones it inherited), and SIGPIPE and SIGXFSZ, which Python ignores, are default
    again in the child. One difference from subprocess: glibc's posix_spawn leaves its two
    internal signals (32 and 33, below SIGRTMIN) ignored in the child; glibc sets its own
    handlers before it uses them, and programs cannot use them.

    Raises:
        OSError: If the program cannot be started.
    """
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    try:
        pid = os.posix_spawnp(
            argv[0], argv, env,
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                          (os.POSIX_SPAWN_DUP2, stdout, 1),
                          (os.POSIX_SPAWN_DUP2, stderr, 2)],
            setsid=True,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    finally:
        for fd in pass_fds:
            os.set_inheritable(fd, False)
    return Child(pid)


def _close_on_exec_inherited() -> None:
    """Mark every descriptor above 2 that the agent inherited close-on-exec, so that no
    worker inherits it (what ``close_fds`` did for subprocess)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            with _suppress(OSError):
                os.set_inheritable(fd, False)


class ProcFile:
    """A kernel file (``/proc``, cgroupfs) opened once and re-read with ``pread``.

    Opening, reading and closing such a file on every cell costs three system calls and a
    Python file object; under gVisor each system call is expensive. One ``pread`` at offset 0
    regenerates the file's content, so the descriptor is kept for the agent's (or worker's)
    life. Every failure reads as "unknown" (``None``).
    """

    def __init__(self, path: str, flags: int = os.O_RDONLY) -> None:
        """Open ``path``; a file that cannot be opened reads as unknown."""
        self.path = path
        try:
            self.fd: int | None = os.open(path, flags | os.O_CLOEXEC)
        except OSError:
            self.fd = None

    def read(self) -> bytes | None:
        """The file's current content, or None."""
        if self.fd is None:
            return None
        try:
            return os.pread(self.fd, PROC_READ, 0)
        except OSError:
            return None

    def write(self, data: bytes) -> None:
        """Write ``data`` (e.g. to ``clear_refs``); failures are ignored."""
        if self.fd is not None:
            with _suppress(OSError):
                os.write(self.fd, data)

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd is not None:
            with _suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _field(content: bytes | None, key: bytes) -> int | None:
    """The integer after ``key`` on its line (``VmHWM:  123 kB``, ``oom_kill 2``), or None."""
    if not content:
        return None
    for line in content.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == key:
            try:
                return int(parts[1])
            except ValueError:
                return None
    return None


class WorkerMemory:
    """Peak memory of a live worker: ``VmHWM`` from its ``status``, reset per cell."""

    def __init__(self, pid: int) -> None:
        """Open the worker's ``/proc`` files (same uid: the worker is dumpable)."""
        self._status = ProcFile(f"/proc/{pid}/status")
        self._clear_refs = ProcFile(f"/proc/{pid}/clear_refs", os.O_WRONLY)

    def reset_peak(self) -> None:
        """Reset VmHWM to the current RSS (``clear_refs`` value 5)."""
        self._clear_refs.write(b"5")

    def peak_kb(self) -> int:
        """Peak resident set size since the last reset, KiB; 0 if unknown."""
        return _field(self._status.read(), b"VmHWM:") or 0

    def close(self) -> None:
        """Close both files."""
        self._status.close()
        self._clear_refs.close()


def open_oom_counter() -> ProcFile | None:
    """The memory cgroup's OOM-kill counter file (cgroup v2 or v1), None if neither exists."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        counter = ProcFile(path)
        if _field(counter.read(), b"oom_kill") is not None:
            return counter
        counter.close()
    return None


class Batch:
    """What one wait of the loop saw: the descriptors it reported ready, and which ones it
    watched for reading."""

    __slots__ = ("interest", "ready")

    def __init__(self, ready: list[int], interest: dict[int, int]) -> None:
        self.ready = frozenset(ready)
        self.interest = dict(interest)

    def was_empty(self, fd: int) -> bool:
        """Whether ``fd`` was watched for reading and had nothing to read at the wait."""
        return fd not in self.ready and bool(self.interest.get(fd, 0) & READ)


class Stream:
    """One output pipe of user programs (stdout or stderr), read end owned by the agent."""

    __slots__ = ("decoder", "eof", "fd", "name")

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.fd = fd
        self.eof = False
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")


class Cell:
    """Book-keeping for the cell being run (or the last one, for late output)."""

    __slots__ = (
        "compile_ms",
        "forwarded",
        "id",
        "interrupted",
        "max_output",
        "oom_before",
        "peak_kb",
        "started",
        "truncated",
        "workdir",
    )

    def __init__(self, id: str, max_output: int, started: float) -> None:
        self.id = id
        self.max_output = max_output
        self.started = started
        self.forwarded = 0
        self.truncated = False
        self.interrupted = False
        self.peak_kb = 0
        self.oom_before: int | None = None
        self.workdir: str | None = None
        self.compile_ms: float | None = None


class Worker:
    """A persistent interpreter process and the agent's ends of its pipes."""

    __slots__ = (
        "broken",
        "ctl_buf",
        "ctl_eof",
        "ctl_out",
        "ctl_r",
        "ctl_w",
        "memory",
        "proc",
        "ready",
        "streams",
    )

    def __init__(self, proc: ChildProcess, ctl_w: int, ctl_r: int,
                 streams: list[Stream], memory: WorkerMemory) -> None:
        self.proc = proc
        self.ctl_w = ctl_w
        self.ctl_r = ctl_r
        self.streams = streams
        self.memory = memory
        self.ready = False
        self.ctl_buf = bytearray()
        self.ctl_out = bytearray()
        self.ctl_eof = False
        self.broken: str | None = None

    @property
    def pid(self) -> int:
        """The worker's pid, which is also its process group and session id."""
        return self.proc.pid




class Agent:
    """The agent's state and its single event loop."""

    def __init__(self, language: str, *, container: bool) -> None:
        """Create an agent; nothing runs until :meth:`run`.

        Args:
            language: One of ``LANGUAGES``.
            container: True inside a sandbox container: restart may then kill every process
                except PID 1 and the agent. Outside one (tests on a host) only the sessions
                the agent started are killed.
        """
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}")
        self.language = language
        self.container = container
        self.sel = select.epoll()
        self.interest: dict[int, int] = {}
        self.callbacks: dict[int, Callback] = {}
        self.outbuf = bytearray()
        self.decoder = FrameDecoder(MAX_SERVICE_FRAME)
        self.exit_code: int | None = None
        self.stdin_open = True
        self.hello = False
        self.ready_sent = False
        self.restart_pending = False
        self.state_lost = False
        self.cell: Cell | None = None
        self.last_cell: Cell | None = None
        self.pending_exec: Exec | None = None
        self.worker: Worker | None = None
        self.children: dict[int, tuple[ChildProcess, ChildExit]] = {}
        self.sessions: set[int] = set()
        self.cell_count = 0
        self.rust_child: subprocess.Popen[bytes] | None = None
        self.rust_streams: list[Stream] = []
        self.rust_write_fds: list[int] = []
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.terminate = False
        self.oom_counter = open_oom_counter()
        self.linger_until: float | None = None
        self.lingering = True  # off once the platform's timers prove too coarse
        self.oversleeps = 0
        self.batch: Batch | None = None  # the wait whose descriptors are being handled

    def _oom_kills(self) -> int | None:
        """The memory cgroup's OOM-kill count now, None if unknown."""
        return _field(self.oom_counter.read(), b"oom_kill") if self.oom_counter else None

    # ----------------------------------------------------------------- event loop plumbing

    def _want(self, fd: int, events: int, callback: Callback | None = None) -> None:
        """Set the selector interest of ``fd`` (0 = none)."""
        if callback is not None:
            self.callbacks[fd] = callback
        old = self.interest.get(fd, 0)
        if events == old:
            return
        if old == 0:
            self.sel.register(fd, events)
        elif events == 0:
            self.sel.unregister(fd)
        else:
            self.sel.modify(fd, events)
        if events:
            self.interest[fd] = events
        else:
            self.interest.pop(fd, None)

    def _forget(self, fd: int) -> None:
        """Unregister and close ``fd``."""
        self._want(fd, 0)
        self.callbacks.pop(fd, None)
        with _suppress(OSError):
            os.close(fd)

    def _user_fds(self) -> list[int]:
        fds = [s.fd for s in self._streams() if not s.eof]
        if self.worker is not None and not self.worker.ctl_eof:
            fds.append(self.worker.ctl_r)
        return fds

    def _streams(self) -> list[Stream]:
        if self.language == "rust":
            return self.rust_streams
        return self.worker.streams if self.worker is not None else []

    def _update_interest(self) -> None:
        """Apply backpressure: read user pipes only while the outgoing buffer is small."""
        read = READ
        writing = self.outbuf and self.linger_until is None
        self._want(1, WRITE if writing else 0, self._on_stdout)
        if self.stdin_open:
            self._want(0, read if len(self.outbuf) < HARD_WATER else 0, self._on_stdin)
        user_events = read if len(self.outbuf) < HIGH_WATER else 0
        for fd in self._user_fds():
            self._want(fd, user_events)
        if self.worker is not None:
            self._want(self.worker.ctl_w, WRITE if self.worker.ctl_out else 0)

    def run(self) -> int:
        """Run until stdin closes, SIGTERM arrives, or a bad frame is read.

        Returns:
            The process exit code: 0 on a clean end, 2 after a malformed frame.
        """
        _set_nonblocking(0)
        _set_nonblocking(1)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        # A no-op handler, not SIG_IGN: an ignored SIGINT would be inherited by the workers,
        # and bash cannot trap a signal that was ignored when it started.
        signal.signal(signal.SIGINT, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self._want(self.wake_r, READ, self._on_wakeup)
        if self.language == "rust":
            for name in ("stdout", "stderr"):
                r, w = os.pipe2(os.O_CLOEXEC)
                _set_nonblocking(r)
                self.rust_streams.append(Stream(name, r))
                self.rust_write_fds.append(w)
                self.callbacks[r] = self._stream_callback(self.rust_streams[-1])
        else:
            self._start_worker()
        while self.exit_code is None:
            linger = self._linger_left() if self.outbuf else None
            if self.outbuf and linger is None:
                # Write what this iteration produced at once, in one write: waiting for
                # EVENT_WRITE would cost a poll round trip per frame on the hot path.
                self._on_stdout(1)
            self._update_interest()
            ready = self._wait(linger)
            self.batch = Batch(ready, self.interest)
            for fd in ready:
                callback = self.callbacks.get(fd)
                if callback is not None and self.exit_code is None:
                    callback(fd)
            self.batch = None
            if self.terminate and self.exit_code is None:
                self._shutdown(0)
        self._flush_stdout_blocking()
        return self.exit_code

    def _linger_left(self) -> float | None:
        """Seconds the queued output may still wait, None to write it now."""
        until = self.linger_until
        if until is not None and len(self.outbuf) < LINGER_BYTES:
            left = until - time.monotonic()
            if left > 0:
                return left
        self.linger_until = None
        return None

    def _wait(self, timeout: float | None) -> list[int]:
        """The descriptors ready now, waiting at most ``timeout`` seconds (None: forever).

        epoll counts timeouts in whole milliseconds, too coarse for :data:`LINGER`; a short
        wait uses ``select``, whose timeout has microseconds (the agent's descriptors are
        all small numbers).
        """
        if timeout is None or timeout >= 0.001 or max(self.interest, default=0) >= 1024:
            return [fd for fd, _events in self.sel.poll(timeout)]
        readers = [fd for fd, ev in self.interest.items() if ev & READ]
        writers = [fd for fd, ev in self.interest.items() if ev & WRITE]
        start = time.monotonic()
        readable, writable, _ = select.select(readers, writers, [], timeout)
        if not readable and not writable:
            self._judge_linger(time.monotonic() - start)
        return list(dict.fromkeys(readable + writable))

    def _judge_linger(self, slept: float) -> None:
        """A linger ran out after ``slept`` seconds: stop lingering if timers oversleep."""
        if slept <= LINGER_OVERSLEEP:
            self.oversleeps = 0
            return
        self.oversleeps += 1
        if self.oversleeps >= LINGER_OVERSLEEPS and self.lingering:
            self.lingering = False
            _log(f"a {LINGER * 1e6:.0f} us wait slept {slept * 1e6:.0f} us: output is sent"
                 " at once from now on")

    def _on_sigterm(self, _signum: int, _frame: object) -> None:
        self.terminate = True

    def _on_wakeup(self, _fd: int) -> None:
        with _suppress(OSError):
            while os.read(self.wake_r, 4096):
                pass
        self._reap()

    def _reap(self) -> None:
        """Collect every exited direct child and run its exit handler."""
        for pid in list(self.children):
            try:
                wpid, status, rusage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                wpid, status, rusage = pid, 0, None
            if wpid == 0:
                continue
            proc, handler = self.children.pop(pid)
            proc.returncode = os.waitstatus_to_exitcode(status) if rusage is not None else -9
            handler(pid, status, rusage)

    def _send(self, obj: dict[str, Any]) -> None:
        """Queue one frame for the service; anything but a running cell's output goes now."""
        if obj.get("t") != "out":
            self.linger_until = None
        try:
            frame = encode_frame(obj)
        except FrameError:
            if obj.get("t") == "display":
                obj = {**obj, "data": {"text/plain": "<output too large to display>"}}
            elif obj.get("t") == "done":
                obj = {**obj, "error": str(obj.get("error"))[:MAX_ERROR_LEN]}
            frame = encode_frame(obj)
        self.outbuf += frame

    def _on_stdout(self, _fd: int) -> None:
        try:
            n = os.write(1, self.outbuf[: 1 << 20])
        except BlockingIOError:
            return
        except OSError as exc:  # the service went away
            _log(f"stdout closed ({exc}); exiting")
            self.outbuf.clear()
            self._shutdown(0)
            return
        del self.outbuf[:n]

    def _flush_stdout_blocking(self) -> None:
        """Write whatever is still queued before the process exits."""
        with _suppress(OSError):
            fcntl.fcntl(1, fcntl.F_SETFL, fcntl.fcntl(1, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            while self.outbuf:
                n = os.write(1, self.outbuf)
                del self.outbuf[:n]

    # ----------------------------------------------------------------- service frames

    def _on_stdin(self, _fd: int) -> None:
        try:
            data = os.read(0, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            _log(f"stdin error ({exc}); exiting")
            data = b""
        if not data:
            self.stdin_open = False
            self._want(0, 0)
            self._shutdown(0)
            return
        try:
            for obj in self.decoder.feed(data):
                frame = parse_service_frame(obj)
                if frame is None:
                    _log(f"ignoring unknown frame type {obj['t']!r}")
                else:
                    self._handle(frame)
                if self.exit_code is not None:
                    return
        except FrameError as exc:
            _log(f"malformed frame from the service: {exc}")
            self._shutdown(EXIT_BAD_FRAME)

    def _handle(self, frame: ServiceFrame) -> None:
        match frame:
            case Hello():
                self.hello = True
                self._maybe_ready()
            case Exec():
                if self.cell is not None or self.pending_exec is not None:
                    self._send(self._done_frame(frame.id, "error", None, "busy", 0.0, 0))
                elif self._can_start():
                    self._start_cell(frame)
                else:
                    self.pending_exec = frame
            case Interrupt():
                self._interrupt()
            case Restart():
                self._restart()

    def _can_start(self) -> bool:
        if self.language == "rust":
            return True
        return self.worker is not None and self.worker.ready and not self.restart_pending

    def _maybe_ready(self) -> None:
        if self.hello and not self.ready_sent and self._can_start():
            self.ready_sent = True
            self._send({"t": "ready", "language": self.language, "version": PROTOCOL_VERSION})
        if self.restart_pending and (self.language == "rust" or self._worker_ready()):
            self.restart_pending = False
            self._send({"t": "restarted"})
        if self.pending_exec is not None and self.cell is None and self._can_start():
            frame, self.pending_exec = self.pending_exec, None
            self._start_cell(frame)

    def _worker_ready(self) -> bool:
        return self.worker is not None and self.worker.ready

    def _shutdown(self, code: int) -> None:
        """Kill every user process and end the loop with ``code``."""
        self._kill_user_processes()
        if self.cell is not None and self.cell.workdir:
            _remove_tree(self.cell.workdir)
        self.exit_code = code

    # ----------------------------------------------------------------- output forwarding

    def _stream_callback(self, stream: Stream) -> Callback:
        def on_readable(_fd: int) -> None:
            self._read_stream(stream, MAX_TEXT_CHUNK)

        return on_readable

    def _read_stream(self, stream: Stream, size: int) -> int:
        """Read up to ``size`` bytes from a user pipe and forward them; returns bytes read."""
        try:
            data = os.read(stream.fd, size)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        if not data:
            # Every writer closed the pipe. Stop watching it (a new worker gets new pipes).
            stream.eof = True
            self._want(stream.fd, 0)
            return 0
        self._forward(stream, data)
        return len(data)

    def _forward(self, stream: Stream, data: bytes) -> None:
        cell = self.cell or self.last_cell
        if cell is None:
            _log(f"{stream.name} before the first cell: {data[:1000]!r}")
            return
        room = cell.max_output - cell.forwarded
        if len(data) > room:
            data = data[: max(room, 0)]
            cell.truncated = True
        if not data:
            return
        cell.forwarded += len(data)
        if self.lingering and self.cell is cell and not self.outbuf:
            self.linger_until = time.monotonic() + LINGER
        self._send_text(cell.id, stream.name, stream.decoder.decode(data))

    def _send_text(self, cell_id: str, name: str, text: str) -> None:
        for i in range(0, len(text), MAX_TEXT_CHUNK):
            chunk = text[i : i + MAX_TEXT_CHUNK]
            self._send({"t": "out", "id": cell_id, "name": name, "text": chunk})

    def _drain_streams(self, cell: Cell, after: Batch | None = None) -> None:
        """Forward what is already in the pipes (not more: a background job may never stop).

        ``after``: the wait that delivered the worker's ``done``. The worker wrote its output
        before it wrote ``done``, so a pipe that wait watched and did not report readable
        was empty: no need to ask it (one system call per pipe, about 80 us under gVisor).
        """
        for stream in self._streams():
            if after is not None and after.was_empty(stream.fd):
                pending = 0
            else:
                pending = _pending_bytes(stream.fd)
            while pending > 0:
                n = self._read_stream(stream, min(pending, MAX_TEXT_CHUNK))
                if n <= 0:
                    break
                pending -= n
            tail = stream.decoder.decode(b"", final=True)
            stream.decoder.reset()
            if tail and not cell.truncated:
                self._send_text(cell.id, stream.name, tail)

    # ----------------------------------------------------------------- cells

    def _start_cell(self, frame: Exec) -> None:
        self.cell_count += 1
        cell = Cell(frame.id, frame.max_output_bytes, time.monotonic())
        cell.oom_before = self._oom_kills()
        self.cell = cell
        if self.language == "rust":
            self._start_rust(cell, frame.code)
            return
        worker = self.worker
        assert worker is not None
        worker.memory.reset_peak()
        if self.language == "shell":
            message = frame.code.replace("\0", "").encode("utf-8", "replace") + b"\0"
        else:
            message = dumps_ascii({"code": frame.code}).encode() + b"\n"
        worker.ctl_out += message
        self._on_ctl_writable(worker.ctl_w)

    def _done_frame(
        self,
        cell_id: str,
        status: str,
        exit_code: int | None,
        error: str | None,
        elapsed_ms: float,
        peak_kb: int,
        *,
        restarted: bool = False,
        truncated: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "t": "done",
            "id": cell_id,
            "status": status,
            "exit_code": exit_code,
            "execution_time_ms": round(elapsed_ms, 3),
            "memory_used_mb": round(peak_kb / 1024, 2),
            "error": error,
            "restarted": restarted,
            "truncated": truncated,
        }
        if extra:
            frame.update(extra)
        return frame

    def _finish_cell(
        self,
        status: str,
        exit_code: int | None,
        error: str | None,
        *,
        restarted: bool = False,
        peak_kb: int = 0,
        after: Batch | None = None,
    ) -> None:
        """Drain the pipes, then send the cell's one ``done``."""
        cell = self.cell
        if cell is None:
            return
        elapsed_ms = (time.monotonic() - cell.started) * 1000
        self._drain_streams(cell, after)
        worker = self.worker
        if worker is not None and worker.proc.returncode is None and not restarted:
            peak_kb = max(peak_kb, worker.memory.peak_kb())
        peak_kb = max(peak_kb, cell.peak_kb)
        extra: dict[str, Any] = {}
        oom_after = self._oom_kills()
        if cell.oom_before is not None and oom_after is not None and oom_after > cell.oom_before:
            extra["oom_killed"] = True
            if status != "success":
                error = f"memory limit exceeded (the kernel killed a process); {error or ''}"
                error = error.rstrip("; ")
        if cell.compile_ms is not None:
            extra["compile_time_ms"] = round(cell.compile_ms, 3)
        if self.state_lost:
            restarted, self.state_lost = True, False
        self._send(
            self._done_frame(
                cell.id,
                status,
                exit_code,
                error,
                elapsed_ms,
                peak_kb,
                restarted=restarted,
                truncated=cell.truncated,
                extra=extra,
            )
        )
        if cell.workdir:
            _remove_tree(cell.workdir)
        self.last_cell, self.cell = cell, None

    def _interrupt(self) -> None:
        cell = self.cell
        if cell is None:
            return
        cell.interrupted = True
        if self.language == "rust":
            if self.rust_child is not None:
                with _suppress(OSError):
                    os.killpg(self.rust_child.pid, signal.SIGINT)
        elif self.worker is not None:
            with _suppress(OSError):
                os.killpg(self.worker.pid, signal.SIGINT)

    def _restart(self) -> None:
        """Kill every user process, finish a running cell, start a fresh interpreter."""
        if self.cell is not None:
            self._drain_streams(self.cell)
        self._kill_user_processes()
        if self.cell is not None:
            self._finish_cell("interrupted", 137, "the interpreter was restarted", restarted=True)
        self.pending_exec = None
        self.state_lost = False
        self.restart_pending = True
        if self.language != "rust":
            self._start_worker()
        self._maybe_ready()

    def _kill_user_processes(self) -> None:
        """SIGKILL user processes and reap the agent's own children synchronously."""
        if self.container:
            # kill(-1) reaches every process we may signal except PID 1 and ourselves, in one
            # step, so even a fork bomb cannot outrun it.
            for _ in range(3):
                with _suppress(OSError):
                    os.kill(-1, signal.SIGKILL)
        else:
            self._kill_sessions()
        for pid, (proc, _handler) in list(self.children.items()):
            with _suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with _suppress(ChildProcessError):
                os.wait4(pid, 0)
            proc.returncode = -signal.SIGKILL
            del self.children[pid]
        if self.worker is not None:
            self._close_worker(self.worker)
            self.worker = None
        self.rust_child = None
        self.sessions.clear()

    def _kill_sessions(self) -> None:
        """Outside a container: kill every process in a session the agent created."""
        for sid in self.sessions:
            with _suppress(OSError):
                os.killpg(sid, signal.SIGKILL)
        if not self.sessions:
            return
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
                fields = stat[stat.rindex(b")") + 2 :].split()
                if int(fields[3]) in self.sessions:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                continue

    # ----------------------------------------------------------------- workers

    def _worker_argv(self, ctl_in: int, ctl_out: int) -> list[str]:
        fds = [str(ctl_in), str(ctl_out)]
        if self.language == "python":
            # An agent run from bytecode (the image) runs the worker's bytecode too.
            script = os.path.join(AGENT_DIR, "worker_python" + os.path.splitext(__file__)[1])
            return [sys.executable or "python3", "-I", "-u", "-X", "utf8", script, *fds]
        if self.language == "javascript":
            node = _which("node") or _which("nodejs") or "node"
            return [node, os.path.join(AGENT_DIR, "worker_node.js"), *fds]
        bash = _which("bash") or "/bin/bash"
        return [bash, "--norc", "--noprofile", os.path.join(AGENT_DIR, "worker_shell.bash"),
                *fds]

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WS_SANDBOX_AGENT")}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.setdefault("LANG", "C.UTF-8")
        env.setdefault("MPLBACKEND", "Agg")
        return env

    def _start_worker(self) -> None:
        code_r, code_w = os.pipe2(os.O_CLOEXEC)
        res_r, res_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = spawn(self._worker_argv(code_r, res_w), self._child_env(), stdout=out_w,
                         stderr=err_w, pass_fds=(code_r, res_w))
        finally:
            for fd in (code_r, res_w, out_w, err_w):
                os.close(fd)
        for fd in (code_w, res_r, out_r, err_r):
            _set_nonblocking(fd)
        worker = Worker(proc, code_w, res_r, [Stream("stdout", out_r), Stream("stderr", err_r)],
                        WorkerMemory(proc.pid))
        self.worker = worker
        self.sessions.add(proc.pid)
        self.children[proc.pid] = (proc, self._on_worker_exit)
        self.callbacks[res_r] = self._on_ctl_readable
        self.callbacks[code_w] = self._on_ctl_writable
        for stream in worker.streams:
            self.callbacks[stream.fd] = self._stream_callback(stream)

    def _close_worker(self, worker: Worker) -> None:
        worker.memory.close()
        for fd in (worker.ctl_w, worker.ctl_r, *(s.fd for s in worker.streams)):
            self._forget(fd)

    def _on_ctl_writable(self, _fd: int) -> None:
        worker = self.worker
        if worker is None or not worker.ctl_out:
            return
        try:
            n = os.write(worker.ctl_w, worker.ctl_out)
        except BlockingIOError:
            return
        except OSError:  # the worker closed its end; its exit is handled on SIGCHLD
            worker.ctl_out.clear()
            return
        del worker.ctl_out[:n]

    def _on_ctl_readable(self, _fd: int) -> None:
        worker = self.worker
        if worker is None:
            return
        try:
            data = os.read(worker.ctl_r, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            worker.ctl_eof = True
            self._want(worker.ctl_r, 0)
            return
        worker.ctl_buf += data
        while self.worker is worker:
            end = worker.ctl_buf.find(b"\n")
            if end < 0:
                if len(worker.ctl_buf) > MAX_CONTROL_LINE:
                    self._worker_broken("oversized control message")
                return
            line = bytes(worker.ctl_buf[:end])
            del worker.ctl_buf[: end + 1]
            try:
                self._on_worker_message(decode_body(line))
            except FrameError as exc:
                self._worker_broken(str(exc))
                return

    def _on_worker_message(self, msg: dict[str, Any]) -> None:
        worker = self.worker
        assert worker is not None
        tag = msg["t"]
        if tag == "ready":
            worker.ready = True
            self._maybe_ready()
        elif tag == "display":
            self._on_display(msg)
        elif tag == "done":
            if self.cell is None:
                raise FrameError("worker sent done outside a cell")
            status = msg.get("status")
            exit_code = msg.get("exit_code")
            error = msg.get("error")
            if status not in STATUSES:
                raise FrameError(f"worker sent an invalid status {status!r}")
            if isinstance(exit_code, bool) or not isinstance(exit_code, int):
                exit_code = None
            if error is not None and not isinstance(error, str):
                error = str(error)
            if isinstance(error, str):
                error = error[:MAX_ERROR_LEN]
            if status == "error" and not error:
                error = f"exited with code {exit_code}"
            if status == "interrupted" and not error:
                error = "interrupted"
            children_kb = msg.get("children_maxrss_kb")
            peak = children_kb if isinstance(children_kb, int) and children_kb > 0 else 0
            self._finish_cell(str(status), exit_code, error, peak_kb=peak, after=self.batch)
        else:
            raise FrameError(f"unknown worker message {tag!r}")

    def _on_display(self, msg: dict[str, Any]) -> None:
        cell = self.cell or self.last_cell
        kind, data = msg.get("kind"), msg.get("data")
        if kind not in DISPLAY_KINDS or not isinstance(data, dict):
            raise FrameError("invalid display message")
        clean = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
        if cell is None or not clean:
            return
        size = sum(len(v) for v in clean.values())
        if cell.forwarded + size > cell.max_output:
            cell.truncated = True
            return
        cell.forwarded += size
        self._send({"t": "display", "id": cell.id, "kind": kind, "data": clean})

    def _worker_broken(self, why: str) -> None:
        """The worker broke the control protocol: kill it like a crash."""
        _log(f"worker broke the control protocol: {why}")
        worker = self.worker
        if worker is None:
            return
        worker.broken = why
        with _suppress(OSError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.ctl_eof = True
        self._want(worker.ctl_r, 0)

    def _noun(self) -> str:
        return "shell" if self.language == "shell" else "interpreter"

    def _on_worker_exit(self, pid: int, status: int, rusage: Any) -> None:
        worker = self.worker
        if worker is None or worker.pid != pid:
            return
        # A message the worker sent just before exiting (e.g. its last `done`) comes first,
        # read outside the wait that saw the exit: its pipes are drained in full.
        self.batch = None
        while not worker.ctl_eof and _pending_bytes(worker.ctl_r) > 0 and self.worker is worker:
            self._on_ctl_readable(worker.ctl_r)
        if self.worker is not worker:
            return
        code = os.waitstatus_to_exitcode(status)
        peak_kb = int(rusage.ru_maxrss) if rusage is not None else 0
        cell = self.cell
        if cell is not None:
            self._drain_streams(cell)
            if code >= 0:
                st = "success" if code == 0 else "error"
                err = None if code == 0 else f"{self._noun()} exited with code {code}"
                exit_code = code
            else:
                sig = -code
                st = "interrupted" if cell.interrupted and sig == signal.SIGINT else "error"
                err = f"{self._noun()} was killed by signal {signal_description(sig)}"
                exit_code = 128 + sig
            if worker.broken is not None:
                err = f"{self._noun()} broke the control protocol ({worker.broken})"
            if err is not None:
                err += "; state was reset"
            self._finish_cell(st, exit_code, err, restarted=True, peak_kb=peak_kb)
        else:
            _log(f"worker {pid} exited with {code} while idle; restarting it")
            self.state_lost = True
        self._close_worker(worker)
        self.worker = None
        self.sessions.discard(pid)
        self._start_worker()

    # ----------------------------------------------------------------- rust

    def _spawn_rust(self, argv: list[str], cwd: str, handler: ChildExit) -> bool:
        import subprocess  # posix_spawn has no working directory before Python 3.13

        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self.rust_write_fds[0],
                stderr=self.rust_write_fds[1],
                start_new_session=True,
                cwd=cwd,
                env=self._child_env(),
            )
        except OSError as exc:
            self._send_text(self.cell.id if self.cell else "", "stderr", f"{exc}\n")
            self._finish_cell("error", 127, f"could not start {argv[0]}: {exc.strerror}")
            return False
        self.rust_child = proc
        self.sessions.add(proc.pid)
        self.children[proc.pid] = (proc, handler)
        return True

    def _start_rust(self, cell: Cell, code: str) -> None:
        try:
            import tempfile  # only Rust needs it: not paid at every start

            workdir = tempfile.mkdtemp(prefix="ws-rust-")
            with open(os.path.join(workdir, "main.rs"), "w", encoding="utf-8",
                      errors="replace") as source:
                source.write(code)
        except OSError as exc:
            self._finish_cell("error", 1, f"could not write the program: {exc}")
            return
        cell.workdir = workdir
        rustc = _which("rustc") or "rustc"
        argv = [rustc, "--edition", "2021", "--crate-name", "main", "-o", "main", "main.rs"]
        self._spawn_rust(argv, workdir, self._on_rustc_exit)

    def _on_rustc_exit(self, pid: int, status: int, rusage: Any) -> None:
        self.rust_child = None
        self.sessions.discard(pid)
        cell = self.cell
        if cell is None:
            return
        cell.compile_ms = (time.monotonic() - cell.started) * 1000
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            peak = int(rusage.ru_maxrss) if rusage is not None else 0
            if cell.interrupted:
                self._finish_cell("interrupted", 128 + signal.SIGINT, "interrupted", peak_kb=peak)
            elif code < 0:
                err = f"rustc was killed by signal {signal_description(-code)}"
                self._finish_cell("error", 128 - code, err, peak_kb=peak)
            else:
                self._finish_cell("error", code, "compilation failed", peak_kb=peak)
            return
        assert cell.workdir is not None
        self._spawn_rust([os.path.join(cell.workdir, "main")], os.getcwd(), self._on_program_exit)

    def _on_program_exit(self, pid: int, status: int, rusage: Any) -> None:
        self.rust_child = None
        self.sessions.discard(pid)
        if self.cell is None:
            return
        code = os.waitstatus_to_exitcode(status)
        peak = int(rusage.ru_maxrss) if rusage is not None else 0
        if code == 0:
            self._finish_cell("success", 0, None, peak_kb=peak)
        elif code > 0:
            self._finish_cell("error", code, f"process exited with code {code}", peak_kb=peak)
        else:
            sig = -code
            if self.cell.interrupted and sig == signal.SIGINT:
                self._finish_cell("interrupted", 128 + sig, "interrupted", peak_kb=peak)
            else:
                err = f"process was killed by signal {signal_description(sig)}"
                self._finish_cell("error", 128 + sig, err, peak_kb=peak)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``agent.py [--container] [LANGUAGE]``.

    The language comes from the argument or from ``WS_SANDBOX_LANGUAGE`` (default python).

    Args:
        argv: Command-line arguments without the program name.

    Returns:
        The exit code.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    container = "--container" in args
    rest = [a for a in args if a != "--container"]
    language = rest[0] if rest else os.environ.get("WS_SANDBOX_LANGUAGE", "python")
    if language not in LANGUAGES:
        _log(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
        return EXIT_BAD_FRAME
    _close_on_exec_inherited()
    if container:
        _make_undumpable()
    return Agent(language, container=container).run()


def _make_undumpable() -> None:
    """Hide the agent's ``/proc/<pid>/fd`` from user code, which runs as the same uid.

    Without this a cell could open ``/proc/<agent>/fd/1`` (the attached stdout) and write
    frames straight to the service. Non-dumpable makes those files root's; the workers the
    agent execs are dumpable again (execve resets it), so their ``clear_refs`` still works.
    """
    import ctypes

    pr_set_dumpable = 4
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
            _log(f"prctl(PR_SET_DUMPABLE, 0) failed: errno {ctypes.get_errno()}")
    except OSError as exc:
        _log(f"cannot make the agent undumpable: {exc}")


if __name__ == "__main__":
    sys.exit(main())
