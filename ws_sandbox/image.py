"""Build the sandbox runtime image: the ``ws-sandbox build-image`` command.

The runtime image is built from ``runtime/Dockerfile``, which starts with
``ARG BASE_IMAGE=debian:bookworm-slim``. Where no registry is reachable, that base cannot be
pulled, so this module makes an equivalent local base instead::

    --base present locally? ──yes──► build on it
            │ no
    docker pull --base ───────ok───► build on it
            │ fails
    local base present? ──────yes──► build on it        (ws-sandbox-base:bookworm)
            │ no
    mmdebstrap minbase from this machine's apt sources ─► docker import ─► build on it

The apt sources come from the machine's ``/etc/apt`` (never a host name written in the
repository), filtered to the Debian suite being built. The built image carries the label
``org.ws_sandbox.context_hash``: a hash of the build context that :func:`context_hash`
recomputes, so the service can tell whether its image is current, and so a second
``build-image`` with nothing changed returns at once.

Docker is driven through its CLI (``subprocess``), which streams build progress as is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

__all__ = [
    "BASE_LABEL",
    "CONTEXT_HASH_LABEL",
    "DEFAULT_BASE",
    "DEFAULT_LOCAL_BASE",
    "DEFAULT_TAG",
    "AptSource",
    "BuildError",
    "BuildOptions",
    "add_arguments",
    "build_image",
    "context_hash",
    "find_context",
    "main",
    "run",
]

DEFAULT_BASE = "debian:bookworm-slim"
DEFAULT_LOCAL_BASE = "ws-sandbox-base:bookworm"
DEFAULT_TAG = "ws-sandbox-runtime:latest"
DEFAULT_SUITE = "bookworm"
CONTEXT_HASH_LABEL = "org.ws_sandbox.context_hash"
BASE_LABEL = "org.ws_sandbox.base_image"

# What debian:bookworm-slim sets; an imported tarball carries no configuration at all.
_IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'CMD ["bash"]',
)
# Host apt options worth carrying into the base: a snapshot mirror needs the first two.
_APT_OPTIONS = ("Acquire::Check-Valid-Until", "Acquire::Check-Date", "Acquire::Retries")
# Never part of the image, whatever .dockerignore says.
_HASH_SKIP_DIRS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_HASH_SKIP_SUFFIXES = (".pyc", ".pyo")
# One-line sources.list option names whose deb822 field name is not just capitalised.
_ONE_LINE_OPTION_FIELDS = {"arch": "Architectures", "lang": "Languages", "target": "Targets"}
# The legacy builder colours a step's stderr; the escapes are noise in logs.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class BuildError(Exception):
    """A build step failed; the message says what and how to fix it, for a person."""


# --------------------------------------------------------------------------- apt sources


@dataclass(frozen=True)
class AptSource:
    """One apt source entry, whichever file format it came from.

    Attributes:
        types: ``deb`` and/or ``deb-src``.
        uris: Repository URIs.
        suites: Suites such as ``bookworm`` or ``bookworm-security``.
        components: Components such as ``main``.
        options: Other deb822 fields (``Signed-By`` ...), in file order.
    """

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    options: tuple[tuple[str, str], ...] = ()

    def to_deb822(self) -> str:
        """Render as one deb822 stanza, ending in a newline."""
        lines = [
            f"Types: {' '.join(self.types)}",
            f"URIs: {' '.join(self.uris)}",
            f"Suites: {' '.join(self.suites)}",
            f"Components: {' '.join(self.components)}",
        ]
        for name, value in self.options:
            # Multi-line values (an inline key) continue on lines starting with a space.
            first, *more = value.split("\n")
            rendered = "".join([f" {first}" if first else "", *(f"\n {v or '.'}" for v in more)])
            lines.append(f"{name}:{rendered}")
        return "\n".join(lines) + "\n"


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Parse a deb822 ``*.sources`` file; stanzas with ``Enabled: no`` are dropped."""
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    last: str | None = None
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                stanzas.append(fields)
            fields, last = {}, None
        elif raw[0] in " \t" and last is not None:
            line = raw.strip()
            fields[last] += "\n" + ("" if line == "." else line)
        elif ":" in raw:
            name, _, value = raw.partition(":")
            last = name.strip()
            fields[last] = value.strip()
    sources = []
    for stanza in stanzas:
        by_lower = {name.lower(): (name, value) for name, value in stanza.items()}
        if by_lower.get("enabled", ("", "yes"))[1].lower() == "no":
            continue
        main_fields = ("types", "uris", "suites", "components", "enabled")
        sources.append(
            AptSource(
                types=tuple(by_lower.get("types", ("", ""))[1].split()),
                uris=tuple(by_lower.get("uris", ("", ""))[1].split()),
                suites=tuple(by_lower.get("suites", ("", ""))[1].split()),
                components=tuple(by_lower.get("components", ("", ""))[1].split()),
                options=tuple(
                    (name, value)
                    for lower, (name, value) in by_lower.items()
                    if lower not in main_fields
                ),
            )
        )
    return sources


def parse_one_line_sources(text: str) -> list[AptSource]:
    """Parse a one-line-style ``sources.list`` (``deb [opts] uri suite components``)."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        options: list[tuple[str, str]] = []
        rest = rest.strip()
        if rest.startswith("["):
            opts, _, rest = rest[1:].partition("]")
            for opt in opts.split():
                name, _, value = opt.partition("=")
                field = _ONE_LINE_OPTION_FIELDS.get(name) or "-".join(
                    part.capitalize() for part in name.split("-")
                )
                options.append((field, value.replace(",", " ")))
        words = rest.split()
        if kind not in ("deb", "deb-src") or len(words) < 2:
            continue
        sources.append(
            AptSource(
                types=(kind,),
                uris=(words[0],),
                suites=(words[1],),
                components=tuple(words[2:]),
                options=tuple(options),
            )
        )
    return sources


def _suite_matches(suite: str, wanted: str) -> bool:
    return suite == wanted or suite.startswith((f"{wanted}-", f"{wanted}/"))


def select_sources(sources: Sequence[AptSource], suite: str) -> list[AptSource]:
    """Keep the binary Debian archive entries for ``suite`` and its updates and security.

    Third-party repositories (their own suite names, or no ``main`` component) are dropped:
    their keys would be missing in the new root, and they do not belong in a sandbox.
    """
    selected = []
    for source in sources:
        suites = tuple(s for s in source.suites if _suite_matches(s, suite))
        if "deb" not in source.types or not suites or "main" not in source.components:
            continue
        selected.append(AptSource(("deb",), source.uris, suites, source.components, source.options))
    return selected


def read_apt_sources(
    etc_apt: Path = Path("/etc/apt"), suite: str = DEFAULT_SUITE
) -> list[AptSource]:
    """Read the machine's apt sources for ``suite`` from ``sources.list`` and ``sources.list.d``.

    Args:
        etc_apt: The apt configuration directory.
        suite: Debian suite the base is made of.

    Returns:
        The selected entries, in apt's reading order (possibly empty).
    """
    found: list[AptSource] = []
    main_list = etc_apt / "sources.list"
    if main_list.is_file():
        found += parse_one_line_sources(main_list.read_text(encoding="utf-8"))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.name.endswith(".list") and path.is_file():
                found += parse_one_line_sources(path.read_text(encoding="utf-8"))
            elif path.name.endswith(".sources") and path.is_file():
                found += parse_deb822_sources(path.read_text(encoding="utf-8"))
    return select_sources(found, suite)


def apt_options_from_dump(dump: str) -> list[str]:
    """Pick the apt options to carry into the base from ``apt-config dump`` output.

    Returns:
        Options in ``--aptopt`` form, such as ``Acquire::Check-Valid-Until "false"``.
    """
    options = []
    for line in dump.splitlines():
        name, _, value = line.strip().partition(" ")
        if name in _APT_OPTIONS and value.endswith(";"):
            options.append(f"{name} {value[:-1]}")
    return options


def host_apt_options() -> list[str]:
    """The host's apt options worth carrying (see :func:`apt_options_from_dump`)."""
    try:
        dump = subprocess.run(
            ["apt-config", "dump"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return apt_options_from_dump(dump)


# --------------------------------------------------------------------------- build context


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Translate one .dockerignore pattern the way Docker does (Go ``filepath.Match``).

    ``*`` and ``?`` stop at ``/``; ``**`` crosses directories; ``[...]`` is a class.
    """
    out = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and "]" in pattern[i + 1 :]:
            close = pattern.index("]", i + 1)
            body = pattern[i + 1 : close]
            out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
            i = close
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[re.Pattern[str], bool]]:
    """Parse a .dockerignore: ``(regex, excludes)`` rules in file order."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        cleaned = os.path.normpath(line.lstrip("!").strip()).strip("/")
        if cleaned and cleaned != ".":
            rules.append((_dockerignore_regex(cleaned), excludes))
    return rules


def is_ignored(relative: str, rules: Sequence[tuple[re.Pattern[str], bool]]) -> bool:
    """Whether Docker leaves ``relative`` (a ``/``-separated path) out of the context.

    As in Docker, the last rule matching the path or one of its parent directories wins.
    """
    parts = relative.split("/")
    paths = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for regex, excludes in rules:
        if any(regex.match(path) for path in paths):
            ignored = excludes
    return ignored


def _context_files(context: Path) -> Iterator[tuple[str, Path]]:
    ignore = context / ".dockerignore"
    rules = dockerignore_rules(ignore.read_text(encoding="utf-8")) if ignore.is_file() else []
    for root, dirs, files in os.walk(context):
        dirs[:] = sorted(d for d in dirs if d not in _HASH_SKIP_DIRS)
        for name in sorted(files):
            if name.endswith(_HASH_SKIP_SUFFIXES):
                continue
            path = Path(root, name)
            relative = path.relative_to(context).as_posix()
            # Docker always reads these two, whatever .dockerignore says.
            if relative in ("Dockerfile", ".dockerignore") or not is_ignored(relative, rules):
                yield relative, path


def context_hash(context: Path) -> str:
    """Hash a build context: every file's path, executable bit and content.

    Python caches and paths ``.dockerignore`` excludes are left out, so the hash changes exactly
    when something that goes into the image changes. The service may call this to check
    that its image (label :data:`CONTEXT_HASH_LABEL`) is current.

    Args:
        context: The build context directory.

    Returns:
        A 64-character hex SHA-256 digest.
    """
    digest = hashlib.sha256()
    for relative, path in sorted(_context_files(context)):
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            kind, content = b"l", os.readlink(path).encode()
        else:
            kind = b"x" if mode & stat.S_IXUSR else b"f"
            content = path.read_bytes()
        digest.update(relative.encode() + b"\0" + kind + hashlib.sha256(content).digest())
    return digest.hexdigest()


def find_context(explicit: Path | None = None) -> Path:
    """Locate the ``runtime/`` build context.

    Args:
        explicit: A directory given by the user; used as is when set.

    Raises:
        BuildError: No directory with a ``Dockerfile`` was found.
    """
    candidates = (
        [explicit]
        if explicit is not None
        else [Path(__file__).resolve().parent.parent / "runtime", Path.cwd() / "runtime"]
    )
    for candidate in candidates:
        if (candidate / "Dockerfile").is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise BuildError(f"no Dockerfile found in {tried}; pass --context DIR")


# --------------------------------------------------------------------------- commands


def mmdebstrap_command(
    suite: str, target: Path, sources_file: Path, apt_options: Sequence[str]
) -> list[str]:
    """The mmdebstrap command that writes a minbase root of ``suite`` to ``target``."""
    command = ["mmdebstrap", "--variant=minbase"]
    command += [f"--aptopt={option}" for option in apt_options]
    return [*command, suite, str(target), str(sources_file)]


def import_command(tarball: Path, tag: str) -> list[str]:
    """The ``docker import`` command that turns a root tarball into image ``tag``."""
    command = ["docker", "import"]
    for change in _IMPORT_CHANGES:
        command += ["--change", change]
    return [*command, "--message", "ws-sandbox local base (mmdebstrap)", str(tarball), tag]


def build_command(
    context: Path, tag: str, base: str, requested_base: str, digest: str
) -> list[str]:
    """The ``docker build`` command for the runtime image.

    Args:
        context: Build context directory.
        tag: Tag of the result.
        base: Image passed as ``BASE_IMAGE``.
        requested_base: The ``--base`` the user asked for, recorded to detect changes.
        digest: :func:`context_hash` of ``context``.
    """
    return [
        "docker", "build",
        "--tag", tag,
        "--build-arg", f"BASE_IMAGE={base}",
        "--label", f"{CONTEXT_HASH_LABEL}={digest}",
        "--label", f"{BASE_LABEL}={requested_base}",
        str(context),
    ]  # fmt: skip


# --------------------------------------------------------------------------- running


class Progress:
    """Numbered steps with elapsed times, and streamed output of the commands they run."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()
        self.steps = 0

    def say(self, message: str) -> None:
        """Print one line now."""
        print(message, file=self.out, flush=True)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Announce a step, then its elapsed time when it ends (successfully or not)."""
        self.steps += 1
        began = time.monotonic()
        self.say(f"==> [{self.steps}] {title}")
        try:
            yield
        finally:
            self.say(
                f"    [{self.steps}] {time.monotonic() - began:.1f}s"
                f" (total {time.monotonic() - self.started:.1f}s)"
            )

    def stream(self, command: Sequence[str]) -> None:
        """Run ``command``, echoing its output line by line with elapsed seconds.

        Raises:
            BuildError: The command is missing or fails.
        """
        began = time.monotonic()
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                env={**os.environ, "BUILDKIT_PROGRESS": "plain"},
            )
        except OSError as exc:
            raise BuildError(f"cannot run {command[0]}: {exc.strerror}") from exc
        assert process.stdout is not None
        with process:
            for line in process.stdout:
                line = _ANSI_ESCAPE.sub("", line.rstrip())
                self.say(f"    {time.monotonic() - began:6.1f}s | {line}")
        if process.returncode != 0:
            raise BuildError(f"`{' '.join(command)}` failed with exit status {process.returncode}")


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a short docker CLI command, capturing its output.

    A non-zero exit status is returned, not raised: callers decide what it means.

    Raises:
        BuildError: The docker CLI is missing or did not finish within ``timeout``.
    """
    try:
        return subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise BuildError("the docker CLI is not installed; run scripts/setup.sh") from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"`docker {' '.join(args)}` did not answer within {timeout:.0f}s") from exc


def image_labels(ref: str) -> dict[str, str] | None:
    """The labels of local image ``ref``, or ``None`` when it is not present."""
    result = _docker("image", "inspect", "--format", "{{json .Config.Labels}}", ref)
    if result.returncode != 0:
        return None
    labels = json.loads(result.stdout or "null")
    return dict(labels) if isinstance(labels, dict) else {}


def _check_engine(progress: Progress) -> None:
    result = _docker("version", "--format", "{{.Server.Version}}", timeout=30)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"no Docker engine answers ({detail[0]}); start one with scripts/setup.sh")
    progress.say(f"    Docker engine {result.stdout.strip()}")


def _ensure_mmdebstrap(progress: Progress) -> None:
    if shutil.which("mmdebstrap"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BuildError("mmdebstrap is not installed; run: apt-get install mmdebstrap")
    progress.say("    mmdebstrap is not installed; installing it with apt-get")
    install = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q"]
    try:
        progress.stream([*install, "mmdebstrap"])
    except BuildError:
        # A bare machine has no package lists yet.
        progress.stream(["apt-get", "update", "-q"])
        progress.stream([*install, "mmdebstrap"])


def make_local_base(
    progress: Progress, tag: str, suite: str = DEFAULT_SUITE, etc_apt: Path = Path("/etc/apt")
) -> None:
    """Make a minimal Debian base image ``tag`` with mmdebstrap and ``docker import``.

    Raises:
        BuildError: No apt source for ``suite`` is configured, or a command failed.
    """
    sources = read_apt_sources(etc_apt, suite)
    if not sources:
        raise BuildError(
            f"no apt source for Debian {suite} in {etc_apt}/sources.list(.d);"
            " cannot make a base image without one"
        )
    _ensure_mmdebstrap(progress)
    with tempfile.TemporaryDirectory(prefix="ws-sandbox-base-") as tmp:
        sources_file = Path(tmp, "ws-sandbox.sources")
        sources_file.write_text("\n".join(s.to_deb822() for s in sources), encoding="utf-8")
        tarball = Path(tmp, "base.tar")
        progress.say(
            f"    mmdebstrap {suite} minbase from {len(sources)} apt source(s) of this machine"
        )
        progress.stream(mmdebstrap_command(suite, tarball, sources_file, host_apt_options()))
        progress.stream(import_command(tarball, tag))


def _pull(progress: Progress, ref: str, timeout: float) -> bool:
    began = time.monotonic()
    try:
        result = _docker("pull", "--quiet", ref, timeout=timeout)
    except BuildError as exc:
        progress.say(f"    pull failed: {exc}")
        return False
    if result.returncode == 0:
        return True
    reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
    progress.say(f"    pull failed after {time.monotonic() - began:.1f}s: {reason}")
    return False


@dataclass(frozen=True)
class BuildOptions:
    """What :func:`build_image` builds; the defaults are the service's defaults."""

    context: Path | None = None
    tag: str = DEFAULT_TAG
    base: str = DEFAULT_BASE
    local_base: str = DEFAULT_LOCAL_BASE
    suite: str = DEFAULT_SUITE
    pull: bool = True
    pull_timeout: float = 60.0
    force: bool = False


def resolve_base(progress: Progress, options: BuildOptions) -> str:
    """Find or make the image to build on (see the module docstring for the order)."""
    if image_labels(options.base) is not None:
        progress.say(f"    {options.base} is present locally")
        return options.base
    if options.pull:
        progress.say(f"    {options.base} is not present; trying docker pull")
        if _pull(progress, options.base, options.pull_timeout):
            return options.base
    if image_labels(options.local_base) is not None:
        progress.say(f"    using the local base {options.local_base} (made earlier)")
        return options.local_base
    progress.say(f"    making the local base {options.local_base}")
    make_local_base(progress, options.local_base, options.suite)
    return options.local_base


def build_image(options: BuildOptions, out: TextIO = sys.stdout) -> str:
    """Build the runtime image, making a local base first when needed.

    Args:
        options: What to build.
        out: Where progress goes.

    Returns:
        The context hash the image is labelled with.

    Raises:
        BuildError: Something failed; the message says what.
    """
    progress = Progress(out)
    context = find_context(options.context)
    with progress.step("Docker engine"):
        _check_engine(progress)
    with progress.step(f"Build context {context}"):
        digest = context_hash(context)
        progress.say(f"    context hash {digest[:16]}")
        labels = image_labels(options.tag) or {}
        wanted = {CONTEXT_HASH_LABEL: digest, BASE_LABEL: options.base}
        if not options.force and all(labels.get(k) == v for k, v in wanted.items()):
            progress.say(f"    {options.tag} is up to date (use --force to rebuild)")
            return digest
    with progress.step("Base image"):
        base = resolve_base(progress, options)
    with progress.step(f"docker build {options.tag} on {base}"):
        progress.stream(build_command(context, options.tag, base, options.base, digest))
    with progress.step("Result"):
        size = _docker("image", "inspect", "--format", "{{.Size}}", options.tag).stdout.strip()
        mb = f"{int(size) / 1e6:.0f} MB" if size.isdigit() else "size unknown"
        progress.say(f"    {options.tag} ({mb}), context hash {digest[:16]}")
    return digest


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``build-image`` options to ``parser`` (a subcommand parser)."""
    parser.add_argument(
        "--context",
        type=Path,
        help="build context with a Dockerfile (default: the repo's runtime/)",
    )
    parser.add_argument("--tag", default=DEFAULT_TAG, help="tag of the result (%(default)s)")
    parser.add_argument(
        "--base",
        default=DEFAULT_BASE,
        help="base image, used when present or pullable (%(default)s)",
    )
    parser.add_argument(
        "--local-base",
        default=DEFAULT_LOCAL_BASE,
        help="local base made with mmdebstrap when --base is unavailable (%(default)s)",
    )
    parser.add_argument("--suite", default=DEFAULT_SUITE, help="Debian suite of the local base")
    parser.add_argument("--no-pull", action="store_true", help="do not try docker pull")
    parser.add_argument(
        "--pull-timeout", type=float, default=60.0, help="seconds for docker pull (%(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="build even when up to date")


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    """Turn parsed :func:`add_arguments` options into :class:`BuildOptions`."""
    return BuildOptions(
        context=args.context,
        tag=args.tag,
        base=args.base,
        local_base=args.local_base,
        suite=args.suite,
        pull=not args.no_pull,
        pull_timeout=args.pull_timeout,
        force=args.force,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``build-image`` with parsed options; returns the process exit status."""
    try:
        build_image(options_from_args(args))
    except BuildError as exc:
        print(f"ws-sandbox build-image: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ws-sandbox build-image: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ws_sandbox.image [options]``: the same as ``ws-sandbox build-image``."""
    parser = argparse.ArgumentParser(
        prog="ws-sandbox build-image", description="Build the sandbox runtime image."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
