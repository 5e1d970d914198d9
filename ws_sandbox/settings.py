"""Settings: every knob of the service in one object, read from the environment.

The names are those of the original service (``SANDBOX_PORT``, ``MAX_EXECUTION_TIME``...),
plus ours. ``env.example`` at the repository root lists every one with its default; a test
keeps the two in step. Timeouts are ``float | None`` seconds (``None``: no limit).
Requests never change a setting; operators do, at start or through the admin API.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints
from urllib.parse import urlsplit

from ws_sandbox.exceptions import ConfigError

Language = Literal["python", "javascript", "shell", "rust"]
LANGUAGES: tuple[Language, ...] = get_args(Language)

#: Other names clients send for a language, as Piston, E2B and Jupyter's kernels spell them.
LANGUAGE_ALIASES: dict[str, Language] = {
    "py": "python", "python3": "python",
    "js": "javascript", "node": "javascript", "nodejs": "javascript",
    "bash": "shell", "sh": "shell",
    "rs": "rust",
}


def language_named(name: str) -> str:
    """The language ``name`` means: itself or the language it is an alias of, in any case.

    The result is a :data:`Language` only when ``name`` names one; the caller refuses others.
    """
    lowered = name.lower()
    return LANGUAGE_ALIASES.get(lowered, lowered)

#: The seccomp profile shipped with the service (``runtime/seccomp.md`` explains it).
SHIPPED_SECCOMP_PROFILE = Path(__file__).resolve().parent.parent / "runtime" / "seccomp.json"


#: Calls that gVisor's kernel must answer itself. runsc's converter of the OCI profile (with
#: ``--oci-seccomp``) turns every ``SCMP_ACT_ERRNO`` rule into EPERM whatever its
#: ``errnoRet`` says (google/gvisor#14688). A denied ``clone3`` must fail with ENOSYS, or
#: glibc does not fall back to ``clone`` and no thread starts (Node.js, rustc, Python
#: threads). So under runsc a rule answering ``clone3`` with ENOSYS lets it through to the
#: Sentry instead. gVisor 20221219 (Debian 12's) does not implement it and answers ENOSYS;
#: gVisor 20240729 (Debian 13's) implements it, and ``clone3(CLONE_NEWUSER)`` made a user
#: namespace there. The agent's own seccomp filter (``agent.c``: ``deny_clone3``) answers
#: ENOSYS before any runtime sees the call; the security battery checks both.
RUNSC_PASS_THROUGH = frozenset({"clone3"})

#: runsc's converter looks each name up in gVisor's own system call table, which spells some
#: differently from Linux and libseccomp: a rule naming only the Linux name would not allow
#: the call inside gVisor. ``pselect6`` (270) is ``pselect`` there, and glibc implements
#: ``select()`` with it. Under runsc a rule naming the Linux name names gVisor's too.
RUNSC_ALIASES = {"pselect6": "pselect"}


#: ``socket()``'s families whose rules :func:`load_seccomp_profile` turns into refusals
#: without loopback sockets: AF_INET and AF_INET6, answered EAFNOSUPPORT.
INET_FAMILIES = frozenset({2, 10})


@functools.cache
def load_seccomp_profile(path: Path, runtime: str = "", inet: bool = True) -> str:
    """Read a seccomp JSON profile once and return it compact, ready for ``seccomp=``.

    With ``runtime="runsc"``, a rule answering only calls of :data:`RUNSC_PASS_THROUGH` with
    ENOSYS allows them instead (no other rule is loosened), and rules also name gVisor's
    spelling of the calls in :data:`RUNSC_ALIASES`. With ``inet=False``, a rule allowing
    ``socket()`` for one of :data:`INET_FAMILIES` answers EAFNOSUPPORT instead
    (:meth:`Settings.loopback_sockets` says when).

    Raises:
        ConfigError: the file is missing, unreadable, or not a JSON object with a
            ``defaultAction``.
    """
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"SECCOMP_PROFILE {path}: cannot load: {exc}") from exc
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise ConfigError(f"SECCOMP_PROFILE {path}: not a seccomp profile (no defaultAction)")
    if not inet:
        for rule in profile.get("syscalls") or []:
            if (isinstance(rule, dict) and rule.get("names") == ["socket"]
                    and rule.get("action") == "SCMP_ACT_ALLOW"
                    and [(a.get("index"), a.get("op")) for a in rule.get("args") or ()
                         if isinstance(a, dict)] == [(0, "SCMP_CMP_EQ")]
                    and rule["args"][0].get("value") in INET_FAMILIES):
                rule["action"] = "SCMP_ACT_ERRNO"
                rule["errnoRet"] = errno.EAFNOSUPPORT
    if runtime == "runsc":
        for rule in profile.get("syscalls") or []:
            names = set(rule.get("names") or ()) if isinstance(rule, dict) else set()
            if (names and names <= RUNSC_PASS_THROUGH and rule.get("action") == "SCMP_ACT_ERRNO"
                    and rule.get("errnoRet") == errno.ENOSYS):
                rule["action"] = "SCMP_ACT_ALLOW"
                rule.pop("errnoRet", None)
            aliases = [RUNSC_ALIASES[n] for n in sorted(names & RUNSC_ALIASES.keys())]
            if aliases:
                rule["names"] = [*rule["names"], *aliases]
    return json.dumps(profile, separators=(",", ":"))

#: Timeouts: at least a millisecond (a shorter one expires before anything it guards could
#: happen), at most 30 days. ``STOP_TIMEOUT`` alone may be 0 (kill at once).
TIMEOUT_RANGE = (0.001, 2_592_000.0)
_MIB_1TIB = 1024 * 1024  # 1 TiB, in MiB

#: Every numeric setting's allowed range, inclusive, and its unit: field -> (min, max, unit).
#: The maxima are far beyond any real machine but keep every value within what Docker
#: (int64 bytes), the kernel and SQLite (INTEGER below 2**63) accept, so a typo fails at
#: start-up naming the variable, never at the first container or insert.
BOUNDS: dict[str, tuple[float, float, str]] = {
    "port": (1, 65535, ""),
    "max_execution_time": (*TIMEOUT_RANGE, "seconds"),
    "default_execution_time": (*TIMEOUT_RANGE, "seconds"),
    "max_memory_mb": (32, _MIB_1TIB, "MiB"),
    "max_concurrent_executions": (1, 10_000, ""),
    "max_sessions_per_key": (0, 10_000, ""),
    "max_connections_per_address": (0, 1_000_000, ""),
    "max_output_bytes": (1024, 2**30, "bytes"),
    "max_code_bytes": (1, 16 * 1024 * 1024, "bytes"),
    "max_queued_cells": (0, 10_000, ""),
    "cpu_limit": (0.01, 1024, "CPUs"),
    "pids_limit": (16, 2**22, ""),
    "workspace_size_mb": (1, _MIB_1TIB, "MiB"),
    "tmp_size_mb": (1, _MIB_1TIB, "MiB"),
    "nofile_limit": (64, 2**22, ""),
    "fsize_limit_mb": (1, _MIB_1TIB, "MiB"),
    "idle_timeout": (*TIMEOUT_RANGE, "seconds"),
    "max_lifetime": (*TIMEOUT_RANGE, "seconds"),
    "resume_grace": (*TIMEOUT_RANGE, "seconds"),
    "interrupt_grace": (*TIMEOUT_RANGE, "seconds"),
    "restart_timeout": (*TIMEOUT_RANGE, "seconds"),
    "max_sandbox_replacements": (0, 10_000, ""),
    "sandbox_start_timeout": (*TIMEOUT_RANGE, "seconds"),
    "exit_wait_timeout": (*TIMEOUT_RANGE, "seconds"),
    "stop_timeout": (0.0, TIMEOUT_RANGE[1], "seconds"),
    "acquire_timeout": (*TIMEOUT_RANGE, "seconds"),
    "send_timeout": (*TIMEOUT_RANGE, "seconds"),
    "request_timeout": (*TIMEOUT_RANGE, "seconds"),
    "shutdown_timeout": (*TIMEOUT_RANGE, "seconds"),
    "store_timeout": (*TIMEOUT_RANGE, "seconds"),
    "pool_size": (0, 64, ""),
    "rate_limit_per_minute": (0, 1_000_000, ""),
    "rate_limit_burst": (1, 1_000_000, ""),
    "auth_failures_per_minute": (0, 1_000_000, ""),
    "client_messages_per_second": (0, 1_000_000, ""),
    "audit_log_max_bytes": (4096, 2**40, "bytes"),
    "audit_log_backups": (1, 1000, ""),
    "history_retention_days": (0.001, 36_500, "days"),
    "history_max_rows": (1, 2**63 - 1, ""),
    "history_output_bytes": (0, 2**30, "bytes"),
}

#: rustc's ``-C opt-level`` values (the agent takes these alone, too).
RUST_OPT_LEVELS = ("0", "1", "2", "3", "s", "z")

#: Timeouts that may be ``none`` (no limit).
_OPTIONAL = frozenset({"idle_timeout", "max_lifetime", "send_timeout", "request_timeout"})

#: Shortest ``SESSION_SECRET`` accepted (a random one, made when it is empty, is 43).
MIN_SESSION_SECRET = 16
MIN_KEY_LENGTH = 16
"""Characters an API key, the admin key or the Jupyter token needs at least."""


def _show(value: float) -> str:
    """A number as an operator would write it: 2592000, not 2592000.0 or 2.592e+06."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


_RANGE_REASONS = {
    "audit_log_backups": "with 0, each rotation would delete the audit lines written so far",
}
"""Why a bound is what it is, where the range alone does not say."""


def describe_range(name: str) -> str:
    """``between LO and HI UNIT`` for field ``name`` (plus ``, or none`` where allowed)."""
    lo, hi, unit = BOUNDS[name]
    text = f"between {_show(lo)} and {_show(hi)}{' ' + unit if unit else ''}"
    return text + (", or none" if name in _OPTIONAL else "")



@dataclass(frozen=True, slots=True)
class Settings:
    """Effective configuration. Build it with :meth:`from_env`; it validates itself.

    Each field's metadata names its environment variable and documents it.
    """

    # --- service -------------------------------------------------------------------------
    host: str = field(default="127.0.0.1", metadata={"env": "SANDBOX_HOST", "operator": True,
        "doc": "Address to bind; loopback unless told otherwise"})
    port: int = field(default=8090, metadata={"env": "SANDBOX_PORT", "operator": True,
                                              "doc": "TCP port"})
    instance_name: str = field(default="ws-sandbox", metadata={
        "env": "INSTANCE_NAME", "operator": True,
        "doc": "Label value marking this service's containers; the stopped ones of earlier"
        " runs are removed at start-up. Give each service on one engine its own"})
    session_secret: str = field(default="", metadata={"env": "SESSION_SECRET",
        "doc": "Key signing resume tokens and login cookies, at least 16 characters;"
        " random per start when empty", "secret": True})
    allow_unauthenticated: bool = field(default=False, metadata={
        "env": "ALLOW_UNAUTHENTICATED", "doc": "Allow a non-loopback bind without API keys"
        " (only behind something that authenticates)"})
    log_level: str = field(default="info", metadata={"env": "LOG_LEVEL",
        "doc": "debug, info, warning or error; debug logs every WebSocket message, code and"
        " output included (keys and tokens are redacted)"})
    # --- languages -----------------------------------------------------------------------
    enable_python: bool = field(default=True, metadata={"env": "ENABLE_PYTHON",
        "doc": "Offer Python 3"})
    enable_javascript: bool = field(default=True, metadata={"env": "ENABLE_JAVASCRIPT",
        "doc": "Offer JavaScript (Node.js)"})
    enable_shell: bool = field(default=True, metadata={"env": "ENABLE_SHELL",
        "doc": "Offer bash"})
    enable_rust: bool = field(default=True, metadata={"env": "ENABLE_RUST",
        "doc": "Offer Rust (each cell compiled and run)"})
    # --- limits --------------------------------------------------------------------------
    max_execution_time: float = field(default=30.0, metadata={"env": "MAX_EXECUTION_TIME",
        "doc": "Upper bound of a cell's timeout, seconds"})
    default_execution_time: float = field(default=10.0, metadata={
        "env": "DEFAULT_EXECUTION_TIME", "doc": "Cell timeout when a request names none"})
    max_memory_mb: int = field(default=512, metadata={"env": "MAX_MEMORY_MB",
        "doc": "Memory of one sandbox (swap equal to it: none extra)"})
    max_concurrent_executions: int = field(default=10, metadata={
        "env": "MAX_CONCURRENT_EXECUTIONS", "doc": "Sessions (and one-shot calls) at once"})
    max_sessions_per_key: int = field(default=0, metadata={"env": "MAX_SESSIONS_PER_KEY",
        "doc": "Sessions (WebSocket sessions, one-shot calls, Jupyter kernels; a dropped one"
        " waiting out RESUME_GRACE too) one caller may hold at once: per API key, or per"
        " client address without keys; 0: no cap but MAX_CONCURRENT_EXECUTIONS (as is a"
        " cap at or above it)"})
    max_connections_per_address: int = field(default=256, metadata={
        "env": "MAX_CONNECTIONS_PER_ADDRESS",
        "doc": "Connections (HTTP and WebSocket) one client address (an IPv6 address: its"
        " /64) may hold open at once, before any credentials are read; past it a"
        " connection gets 503 too_many_connections and is closed. Behind a proxy every"
        " client has the proxy's address: raise it there. 0: no cap (the service still"
        " keeps a quarter of its open files limit for sandboxes and files)"})
    max_output_bytes: int = field(default=1_048_576, metadata={"env": "MAX_OUTPUT_BYTES",
        "doc": "Output kept per cell; the rest is cut with a visible marker"})
    max_code_bytes: int = field(default=1_048_576, metadata={"env": "MAX_CODE_BYTES",
        "doc": "Largest cell source accepted"})
    max_queued_cells: int = field(default=16, metadata={"env": "MAX_QUEUED_CELLS",
        "doc": "Cells waiting behind the running one in a session"})
    cpu_limit: float = field(default=1.0, metadata={"env": "CPU_LIMIT",
        "doc": "CPUs one sandbox may use (rounded up, the threads OpenBLAS and OpenMP start)"})
    pids_limit: int = field(default=128, metadata={"env": "PIDS_LIMIT",
        "doc": "Processes and threads in one sandbox"})
    workspace_size_mb: int = field(default=64, metadata={"env": "WORKSPACE_SIZE_MB",
        "doc": "Size of the /workspace tmpfs"})
    tmp_size_mb: int = field(default=64, metadata={"env": "TMP_SIZE_MB",
        "doc": "Size of the /tmp tmpfs"})
    nofile_limit: int = field(default=1024, metadata={"env": "NOFILE_LIMIT",
        "doc": "Open files per process"})
    fsize_limit_mb: int = field(default=64, metadata={"env": "FSIZE_LIMIT_MB",
        "doc": "Largest file a process may write"})
    max_sandbox_replacements: int = field(default=10, metadata={
        "env": "MAX_SANDBOX_REPLACEMENTS",
        "doc": "Sandboxes one session may have replaced within a minute (its code killed the"
        " agent or the container, ran it out of memory, or did not stop when restarted); one"
        " more closes the session (sandbox_lost), so a cell cannot make the engine start"
        " containers in a loop. 0: no cap"})
    # --- timeouts (seconds; "none" for no limit where allowed) ----------------------------
    idle_timeout: float | None = field(default=300.0, metadata={"env": "IDLE_TIMEOUT",
        "doc": "Close a session after this long without a cell or a frame"})
    max_lifetime: float | None = field(default=3600.0, metadata={"env": "MAX_LIFETIME",
        "doc": "Close a session this long after it opened"})
    resume_grace: float = field(default=30.0, metadata={"env": "RESUME_GRACE",
        "doc": "How long a dropped session waits for its client to resume"})
    interrupt_grace: float = field(default=1.0, metadata={"env": "INTERRUPT_GRACE",
        "doc": "After an interrupt, wait this long before restarting the interpreter"})
    restart_timeout: float = field(default=5.0, metadata={"env": "RESTART_TIMEOUT",
        "doc": "After a restart request, wait this long before replacing the container"})
    sandbox_start_timeout: float = field(default=30.0, metadata={
        "env": "SANDBOX_START_TIMEOUT", "doc": "Create, start and greet one container"})
    exit_wait_timeout: float = field(default=2.0, metadata={"env": "EXIT_WAIT_TIMEOUT",
        "doc": "When a sandbox's stream ends, wait this long for the engine to record its"
               " exit (and whether it ran out of memory) before deciding why it stopped"})
    stop_timeout: float = field(default=1.0, metadata={"env": "STOP_TIMEOUT",
        "doc": "A sandbox being removed gets this long to stop on its own once its stdin is"
               " closed (its agent ends every process and exits) before it is killed; 0"
               " kills at once"})
    acquire_timeout: float = field(default=30.0, metadata={"env": "ACQUIRE_TIMEOUT",
        "doc": "How long a new session waits for a container from the pool"})
    send_timeout: float | None = field(default=30.0, metadata={"env": "SEND_TIMEOUT",
        "doc": "A client that accepts nothing for this long (no WebSocket frame, no byte of"
               " an HTTP response) is disconnected; a sandbox that does not take a frame"
               " written to it within this long is replaced"})
    request_timeout: float | None = field(default=60.0, metadata={"env": "REQUEST_TIMEOUT",
        "doc": "Each HTTP request must arrive whole (head and body; a WebSocket upgrade: its"
               " head) within this long of the connection being ready for it, or the"
               " connection is closed: a client cannot hold a socket by never finishing one"})
    shutdown_timeout: float = field(default=10.0, metadata={"env": "SHUTDOWN_TIMEOUT",
        "doc": "On SIGTERM, SIGINT or SIGHUP, running cells are stopped at once (killed) and"
               " sessions get this long to close; the exit takes at most about 5 s more,"
               " and the containers' removal"})
    # --- containers ----------------------------------------------------------------------
    container_image: str = field(default="ws-sandbox-runtime:latest", metadata={
        "env": "CONTAINER_IMAGE", "operator": True,
        "doc": "Runtime image (ws-sandbox build-image makes it)"})
    container_runtime: str = field(default="", metadata={"env": "CONTAINER_RUNTIME",
        "doc": "Engine runtime: empty for the engine default (runc), or runsc (gVisor; the"
        " engine's runsc needs --oci-seccomp, which scripts/setup.sh registers)"})
    python_preload: str = field(default="", metadata={"env": "PYTHON_PRELOAD",
        "doc": "Modules a Python sandbox imports before it joins the pool (e.g. numpy,pandas):"
        " faster first cells, but each sandbox costs more CPU to start and more memory"})
    rust_opt_level: str = field(default="0", metadata={"env": "RUST_OPT_LEVEL",
        "doc": "rustc's -C opt-level for Rust cells: 0 (the fastest to compile), 1, 2, 3, s"
        " or z. A higher level compiles slower and runs loops many times faster (measured in"
        " the image: a 90-line program compiled in 0.75 s and ran in 0.5 s at 0, compiled in"
        " 1.5 s and ran in 19 ms at 1); overflow checks and debug assertions stay on"})
    pool_size: int = field(default=2, metadata={"env": "POOL_SIZE",
        "doc": "Started, never-used containers kept ready per enabled language"})
    network_mode: str = field(default="none", metadata={"env": "NETWORK_MODE",
        "doc": "Docker network of sandboxes; anything but none needs ALLOW_UNSAFE_NETWORK"})
    allow_unsafe_network: bool = field(default=False, metadata={
        "env": "ALLOW_UNSAFE_NETWORK", "doc": "Explicit opt-in to give sandboxes a network"})
    allow_loopback_sockets: bool = field(default=False, metadata={
        "env": "ALLOW_LOOPBACK_SOCKETS",
        "doc": "Under runc, let sandboxes open TCP and UDP sockets on their own loopback (a"
        " cell's local server and its client). Off, they get EAFNOSUPPORT: the kernel memory"
        " of loopback connections and buffers is the host's, outside the sandbox's memory"
        " limit (one sandbox took gigabytes in seconds). Always on under runsc, whose"
        " network stack lives in the sandbox's memory, and with a network"})
    read_only_root: bool = field(default=True, metadata={"env": "READ_ONLY_ROOT",
        "doc": "Mount the sandbox root file system read-only"})
    drop_all_capabilities: bool = field(default=True, metadata={
        "env": "DROP_ALL_CAPABILITIES", "doc": "Drop every Linux capability in sandboxes"})
    seccomp_profile: str = field(default="", metadata={"env": "SECCOMP_PROFILE", "operator": True,
        "doc": "Path of a seccomp JSON profile; empty: the shipped runtime/seccomp.json"
        " (unconfined is refused)"})

    # --- service surface: audit, history, rate limits, keys ------------------------------
    api_keys: str = field(default="", metadata={"env": "API_KEYS",
        "doc": "Comma-separated API keys (no empty item between commas), each at least 16"
        " characters; when set, every call needs one (Authorization: Bearer, or ?api_key="
        " for browser WebSockets)",
        "secret": True})
    admin_api_key: str = field(default="", metadata={"env": "ADMIN_API_KEY",
        "doc": "Key of the admin API (at least 16 characters, and none of API_KEYS); empty:"
        " the admin API is switched off", "secret": True})
    allowed_origins: str = field(default="", metadata={"env": "ALLOWED_ORIGINS", "operator": True,
        "doc": "Comma-separated origins (scheme://host[:port]) whose pages may open"
        " WebSockets to the service (and write to an open Jupyter endpoint); the service's own"
        " host always may; * allows any. No CORS headers are sent: REST calls from another"
        " origin's page are not readable"})
    allowed_hosts: str = field(default="", metadata={"env": "ALLOWED_HOSTS", "operator": True,
        "doc": "Comma-separated host names a service without API keys answers to, besides"
        " localhost and IP addresses (a defence against DNS rebinding: a web page whose name"
        " resolves to this service); * allows any"})
    rate_limit_per_minute: int = field(default=120, metadata={
        "env": "RATE_LIMIT_PER_MINUTE", "doc": "Calls (REST executions, session opens,"
        " cells) per minute per API key or client address; 0 switches limiting off"})
    rate_limit_burst: int = field(default=20, metadata={"env": "RATE_LIMIT_BURST",
        "doc": "Calls allowed at once before the per-minute rate applies"})
    auth_failures_per_minute: int = field(default=30, metadata={
        "env": "AUTH_FAILURES_PER_MINUTE",
        "doc": "Wrong API keys, Jupyter tokens or passwords one client address may send a"
               " minute; past it, none of its credentials are checked until it may try again"
               " (429). 0: off (behind a proxy, every client shares one address)"})
    client_messages_per_second: int = field(default=5000, metadata={
        "env": "CLIENT_MESSAGES_PER_SECOND",
        "doc": "WebSocket messages one connection (a session's, or a Jupyter kernel's"
               " channel) may send a second, as many at once; past it the connection is read"
               " no faster, and its client's sends wait. 0: no limit"})
    enable_audit_log: bool = field(default=True, metadata={"env": "ENABLE_AUDIT_LOG",
        "doc": "Write one JSON line per execution to AUDIT_LOG_PATH"})
    audit_log_path: str = field(default="data/audit.log", metadata={
        "env": "AUDIT_LOG_PATH", "operator": True,
        "doc": "File of the audit log"})
    audit_log_max_bytes: int = field(default=10_485_760, metadata={
        "env": "AUDIT_LOG_MAX_BYTES", "doc": "Rotate the audit log when it reaches this size"})
    audit_log_backups: int = field(default=5, metadata={"env": "AUDIT_LOG_BACKUPS",
        "doc": "Rotated audit log files kept (audit.log.1 ... audit.log.N)"})
    enable_history: bool = field(default=True, metadata={"env": "ENABLE_HISTORY",
        "doc": "Keep executions in HISTORY_DB_PATH for /api/v1/executions"})
    history_db_path: str = field(default="data/history.sqlite3", metadata={
        "env": "HISTORY_DB_PATH", "operator": True, "doc": "SQLite file of the execution history"})
    history_retention_days: float = field(default=7.0, metadata={
        "env": "HISTORY_RETENTION_DAYS", "doc": "Forget executions older than this"})
    history_max_rows: int = field(default=100_000, metadata={"env": "HISTORY_MAX_ROWS",
        "doc": "Keep at most this many executions (the oldest go first)"})
    history_output_bytes: int = field(default=65_536, metadata={
        "env": "HISTORY_OUTPUT_BYTES", "doc": "Bytes of stdout, and as many of stderr, kept"
                                              " per execution (rows x 2 x this bounds the"
                                              " database)"})
    store_timeout: float = field(default=10.0, metadata={"env": "STORE_TIMEOUT",
        "doc": "A history read waits this long for its database (behind a write to a disk"
               " that hangs) before it is refused with 503 store_unavailable; at shutdown,"
               " the audit log and the history each get this long to write what they hold"})

    # --- Jupyter kernel endpoint (/api/kernels) ------------------------------------------
    jupyter_token: str = field(default="", metadata={"env": "JUPYTER_TOKEN",
        "doc": "Token of the Jupyter endpoint (?token= or Authorization: token; at least 16"
        " characters); API keys are accepted too. Empty with no password and no API keys:"
        " as open as the service",
        "secret": True})
    jupyter_password: str = field(default="", metadata={"env": "JUPYTER_PASSWORD",
        "doc": "Password of the Jupyter login form (POST /login, then a signed cookie and"
        " X-XSRFToken)", "secret": True})
    secure_cookies: bool = field(default=False, metadata={"env": "SECURE_COOKIES", "operator": True,
        "doc": "Mark the login and _xsrf cookies Secure, so that browsers send them over"
        " HTTPS alone: set it when clients reach the service through TLS (a proxy), which"
        " the service cannot tell"})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``env`` (default ``os.environ``), then apply ``overrides``.

        Raises:
            ConfigError: listing every variable that is malformed or unsafe.
        """
        env = os.environ if env is None else env
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None or f.name in overrides:
                continue
            try:
                values[f.name] = _parse(raw, hints[f.name],
                                        BOUNDS[f.name][2] if f.name in BOUNDS else "")
            except ValueError as exc:
                problems.append(f"{name}={raw!r}: {exc}")
        values.update(overrides)
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))
        settings = cls(**values)
        settings.validate()
        if not settings.session_secret:
            settings = dataclasses.replace(settings, session_secret=secrets.token_urlsafe(32))
        return settings

    def validate(self) -> None:
        """Check ranges and safety rules.

        Raises:
            ConfigError: listing every problem found.
        """
        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        out_of_range = set()
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in BOUNDS and value is not None:
                lo, hi, _ = BOUNDS[f.name]
                if not lo <= value <= hi:
                    out_of_range.add(f.name)
                    need(False, f"{f.metadata['env']}={_show(value)} is out of range:"
                         f" must be {describe_range(f.name)}"
                         + (f" ({_RANGE_REASONS[f.name]})" if f.name in _RANGE_REASONS else ""))
        # Said once: a timeout out of its range is not also compared with the other.
        need(bool(out_of_range & {"default_execution_time", "max_execution_time"})
             or self.default_execution_time <= self.max_execution_time,
             f"DEFAULT_EXECUTION_TIME={_show(self.default_execution_time)} must be at most"
             f" MAX_EXECUTION_TIME={_show(self.max_execution_time)} (the timeout of a cell"
             " that names none): lower DEFAULT_EXECUTION_TIME, or raise MAX_EXECUTION_TIME")
        need(all(all(p.isidentifier() for p in m.strip().split("."))
                 for m in self.python_preload.split(",") if m.strip()),
             "PYTHON_PRELOAD must be module names separated by commas")
        need(not self.api_keys.strip() or all(k.strip() for k in self.api_keys.split(",")),
             "API_KEYS has an empty key (a stray comma, or only commas and spaces): give"
             " each key between commas, or leave API_KEYS empty for no keys")
        for name, keys in (("API_KEYS", _split(self.api_keys)),
                           ("ADMIN_API_KEY", (self.admin_api_key,) if self.admin_api_key
                            else ()),
                           ("JUPYTER_TOKEN", (self.jupyter_token,) if self.jupyter_token
                            else ())):
            for number, key in enumerate(keys, 1):
                need(_is_key(key), f"{name} (key {number}) has a character a key cannot"
                     " have: keys travel in headers and URLs, so they are ASCII letters,"
                     " digits and punctuation other than " + " ".join(_KEY_FORBIDDEN)
                     + " (openssl rand -hex 24 makes one; base64 ones may hold + or /,"
                     " and + is refused)")
                need(len(key) >= MIN_KEY_LENGTH,
                     f"{name} (key {number}) has {len(key)} characters; a key needs at least"
                     f" {MIN_KEY_LENGTH}, since a short one can be guessed (openssl rand -hex"
                     " 24 makes one)")
        need(not self.admin_api_key or self.admin_api_key not in _split(self.api_keys),
             "ADMIN_API_KEY is also one of API_KEYS: whoever holds that key would be an"
             " administrator (read every caller's history, change limits, end sessions);"
             " give the admin a key of its own")
        need(not self.admin_api_key or self.admin_api_key != self.jupyter_token,
             "ADMIN_API_KEY is also JUPYTER_TOKEN: whoever is given the Jupyter token (an"
             " Open WebUI's settings) would hold the admin key; give the admin a key of its"
             " own")
        need(not self.session_secret or len(self.session_secret) >= MIN_SESSION_SECRET,
             f"SESSION_SECRET must be at least {MIN_SESSION_SECRET} characters (it has"
             f" {len(self.session_secret)}); leave it empty for a random one per start")
        for origin in _split(self.allowed_origins):
            need(origin == "*" or _is_origin(origin),
                 f"ALLOWED_ORIGINS item {origin!r} is not an origin: give * or"
                 " scheme://host[:port] (no path, user, query or fragment), separated by"
                 " commas")
        for host in _split(self.allowed_hosts):
            need(host == "*" or _is_host_name(host),
                 f"ALLOWED_HOSTS item {host!r} is not a host name: give * or names such as"
                 " sandbox.example.com (no scheme, port or path), separated by commas")
        need(bool(self.enabled_languages), "at least one language must be enabled")
        need(self.network_mode == "none" or self.allow_unsafe_network,
             f"NETWORK_MODE={self.network_mode} gives sandboxes a network; refused unless"
             " ALLOW_UNSAFE_NETWORK=true")
        need(self.seccomp_profile.strip().lower() != "unconfined",
             "SECCOMP_PROFILE=unconfined is refused: sandboxes always run under seccomp")
        if self.seccomp_profile.strip().lower() != "unconfined":
            try:
                load_seccomp_profile(self.seccomp_profile_path)
            except ConfigError as exc:
                problems.append(str(exc))
        need(self.container_runtime in ("", "runc", "runsc"),
             "CONTAINER_RUNTIME must be empty, runc or runsc")
        need(self.rust_opt_level in RUST_OPT_LEVELS,
             f"RUST_OPT_LEVEL must be one of {', '.join(RUST_OPT_LEVELS)}, not"
             f" {self.rust_opt_level!r}")
        need(self.log_level in ("debug", "info", "warning", "error"),
             "LOG_LEVEL must be debug, info, warning or error")
        need(bool(self.container_image.strip()), "CONTAINER_IMAGE must not be empty")
        need(bool(self.instance_name.strip()), "INSTANCE_NAME must not be empty")
        need(not self.enable_audit_log or bool(self.audit_log_path.strip()),
             "AUDIT_LOG_PATH must not be empty when ENABLE_AUDIT_LOG is on")
        need(not self.enable_history or bool(self.history_db_path.strip()),
             "HISTORY_DB_PATH must not be empty when ENABLE_HISTORY is on")
        if (self.enable_audit_log and self.enable_history and self.audit_log_path.strip()
                and self.history_db_path.strip()):
            audit = os.path.realpath(self.audit_log_path)
            history = os.path.realpath(self.history_db_path)
            need(audit not in (history, *(history + end for end in ("-wal", "-shm",
                                                                     "-journal"))),
                 f"AUDIT_LOG_PATH={self.audit_log_path} is the history's own file"
                 f" (HISTORY_DB_PATH={self.history_db_path}): SQLite would write over the"
                 " audit lines; give each its own file")
            need(history not in (f"{audit}.{n}" for n in range(1, self.audit_log_backups + 1)),
                 f"HISTORY_DB_PATH={self.history_db_path} is one of the audit log's backups"
                 f" (AUDIT_LOG_PATH={self.audit_log_path}, AUDIT_LOG_BACKUPS="
                 f"{self.audit_log_backups}): its rotation would replace the database; give"
                 " each its own file")
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    @property
    def enabled_languages(self) -> tuple[Language, ...]:
        """Languages switched on, in a fixed order."""
        return tuple(lang for lang in LANGUAGES if getattr(self, f"enable_{lang}"))

    @property
    def seccomp_profile_path(self) -> Path:
        """The seccomp profile applied to sandboxes: the operator's, or the shipped one."""
        chosen = self.seccomp_profile.strip()
        return Path(chosen).resolve() if chosen else SHIPPED_SECCOMP_PROFILE

    @property
    def loopback_sockets(self) -> bool:
        """Whether sandboxes may open TCP and UDP sockets: under runsc (gVisor's network
        stack is in the sandbox's memory), with a network, or by ``ALLOW_LOOPBACK_SOCKETS``;
        under runc the kernel's memory for them is the host's, which no limit of the
        sandbox's counts."""
        return (self.allow_loopback_sockets or self.network_mode != "none"
                or self.container_runtime == "runsc")

    @property
    def api_key_list(self) -> tuple[str, ...]:
        """The configured API keys (empty: no key needed)."""
        return _split(self.api_keys)

    @property
    def allowed_origin_list(self) -> tuple[str, ...]:
        """Origins allowed besides the service's own host."""
        return _split(self.allowed_origins)

    @property
    def allowed_host_list(self) -> tuple[str, ...]:
        """Host names an open service answers to besides localhost and IP addresses,
        lower-case and without a trailing dot."""
        return tuple(h.lower().rstrip(".") for h in _split(self.allowed_hosts))

    @property
    def is_loopback(self) -> bool:
        """Whether :attr:`host` binds to loopback only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def advice(self) -> list[str]:
        """Settings that are valid but leave callers less protected than they likely expect
        (the service logs each at start, as a warning)."""
        found = []
        keys = len(self.api_key_list)
        if keys >= 2 and not 0 < self.max_sessions_per_key < self.max_concurrent_executions:
            found.append(
                f"API_KEYS has {keys} keys and MAX_SESSIONS_PER_KEY"
                f" ({self.max_sessions_per_key}) caps no key below MAX_CONCURRENT_EXECUTIONS"
                f" ({self.max_concurrent_executions}): one key may hold every session and"
                " lock the others out; set MAX_SESSIONS_PER_KEY (for example"
                f" {max(1, self.max_concurrent_executions // keys)}) if the keys are"
                " different tenants")
        return found

    def public(self, *, operator: bool = True) -> dict[str, Any]:
        """Settings that may be shown to clients: every field not marked secret; without
        ``operator``, none that describes the host either (addresses, names, paths), which
        a tenant has no use for (a review found every key read the service's file paths)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not f.metadata.get("secret")
                and (operator or not f.metadata.get("operator"))}


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


_KEY_FORBIDDEN = ('"', "'", "&", ";", "#", "%", "+", "\\", ",")
"""Characters a key may not have: they end or change a query value (and a log's quoting),
or separate keys."""


def _is_key(text: str) -> bool:
    """Whether ``text`` can be a key: printable ASCII without spaces or
    :data:`_KEY_FORBIDDEN` (non-ASCII never matched: headers arrive as latin-1)."""
    return all("!" <= ch <= "~" and ch not in _KEY_FORBIDDEN for ch in text)


_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def _is_host_name(text: str) -> bool:
    """Whether ``text`` is a DNS host name (labels of letters, digits and inner hyphens)."""
    return _HOST_NAME.fullmatch(text) is not None


def _is_origin(text: str) -> bool:
    """Whether ``text`` is an origin as a browser sends it (a trailing ``/`` is allowed,
    as :func:`ws_sandbox.auth.check_origin` ignores it)."""
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return False
    del port
    return (bool(_SCHEME.fullmatch(parts.scheme)) and bool(parts.hostname)
            and "@" not in parts.netloc and not any(c.isspace() for c in text)
            and text.startswith(f"{parts.scheme}://") and parts.path in ("", "/")
            and not parts.query and not parts.fragment and "?" not in text
            and "#" not in text)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(raw: str, hint: Any, unit: str = "") -> Any:
    """Parse one variable's text; ``unit`` (seconds, CPUs, days...) goes into the message."""
    text = raw.strip()
    args = get_args(hint)
    if type(None) in args:
        if text.lower() in ("", "none", "null", "off"):
            return None
        (hint,) = (a for a in args if a is not type(None))
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("expected true or false")
    of = f" of {unit}" if unit else ""
    if hint is int:
        if not _INT.fullmatch(text):
            raise ValueError(f"expected a whole number{of} (ASCII digits 0-9)")
        try:
            return int(text)
        except ValueError:  # more digits than Python converts
            raise ValueError(f"expected a whole number{of} (ASCII digits 0-9)") from None
    if hint is float:
        if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise ValueError("expected a finite number")
        if not _FLOAT.fullmatch(text):
            raise ValueError(f"expected a number{of}, as plain ASCII decimals"
                             " (e.g. 2, 0.5 or 1e3)")
        value = float(text)
        if value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        return value
    return text


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def env_example() -> str:
    """Render ``env.example``: every variable with its default, meaning and range."""
    lines = ["# ws_sandbox settings: every variable with its default.",
             "# The service reads them from its environment, and no file. From an edited copy:",
             "#   set -a; . ./ws-sandbox.env; set +a; ws-sandbox serve",
             "# (or systemd's EnvironmentFile=). docker-compose.yml passes on only the variables",
             "# its `environment:` names: add any other there.", ""]
    for f in fields(Settings):
        default = f.default
        if isinstance(default, bool):
            shown = "true" if default else "false"
        elif default is None:
            shown = "none"
        else:
            shown = str(default)
        bounds = f" ({describe_range(f.name)})" if f.name in BOUNDS else ""
        lines.append(f"# {f.metadata['doc']}{bounds}")
        lines.append(f"{f.metadata['env']}={shown}")
    return "\n".join(lines) + "\n"
