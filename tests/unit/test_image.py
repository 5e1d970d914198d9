"""Unit tests for ws_sandbox.image: apt sources, context hashing, command construction."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from ws_sandbox import image
from ws_sandbox.image import AptSource

DEBIAN_SOURCES = """\
Types: deb
# a comment line inside a stanza
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/disabled
Suites: bookworm
Components: main
Enabled: no
"""

THIRD_PARTY_SOURCES = """\
Types: deb
URIs: https://vendor.invalid/node
Suites: nodistro
Components: main
Signed-By: /usr/share/keyrings/vendor.gpg
"""


@pytest.fixture
def etc_apt(tmp_path: Path) -> Path:
    """A fake /etc/apt with deb822, one-line and ignored files."""
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "debian.sources").write_text(DEBIAN_SOURCES)
    (parts / "vendor.sources").write_text(THIRD_PARTY_SOURCES)
    (parts / "cloud.list.disabled").write_text("deb http://cloud.invalid/apt bookworm main\n")
    (parts / "docker.list").write_text(
        "deb [arch=amd64 signed-by=/k/docker.gpg] https://docker.invalid bookworm stable\n"
    )
    (tmp_path / "sources.list").write_text(
        "# old style\n"
        "deb [signed-by=/k.gpg check-valid-until=no] http://old.invalid/debian bookworm main # x\n"
        "deb-src http://old.invalid/debian bookworm main\n"
        "deb http://old.invalid/debian bullseye main\n"
    )
    return tmp_path


def test_read_apt_sources_keeps_debian_entries_for_the_suite(etc_apt: Path) -> None:
    sources = image.read_apt_sources(etc_apt, "bookworm")

    assert [s.uris for s in sources] == [
        ("http://old.invalid/debian",),
        ("http://mirror.invalid/debian",),
        ("http://mirror.invalid/debian-security",),
    ]
    assert all(s.types == ("deb",) for s in sources)
    assert sources[1].suites == ("bookworm", "bookworm-updates")
    assert sources[2].components == ("main", "contrib")


def test_read_apt_sources_converts_one_line_options(etc_apt: Path) -> None:
    old_style = image.read_apt_sources(etc_apt, "bookworm")[0]

    assert old_style.options == (("Signed-By", "/k.gpg"), ("Check-Valid-Until", "no"))


def test_read_apt_sources_other_suite_and_missing_dir(etc_apt: Path, tmp_path: Path) -> None:
    assert [s.suites for s in image.read_apt_sources(etc_apt, "bullseye")] == [("bullseye",)]
    assert image.read_apt_sources(tmp_path / "nothing-here") == []


def test_deb822_round_trip() -> None:
    (source,) = image.select_sources(image.parse_deb822_sources(DEBIAN_SOURCES), "bookworm")[:1]

    assert source.to_deb822() == (
        "Types: deb\n"
        "URIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    assert image.parse_deb822_sources(source.to_deb822()) == [source]


def test_deb822_multi_line_value_round_trip() -> None:
    text = (
        "Types: deb\nURIs: http://m.invalid/debian\nSuites: bookworm\nComponents: main\n"
        "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n"
        " -----END PGP PUBLIC KEY BLOCK-----\n"
    )
    (source,) = image.parse_deb822_sources(text)

    assert source.options[0][1].split("\n")[:3] == ["", "-----BEGIN PGP PUBLIC KEY BLOCK-----", ""]
    assert source.to_deb822() == text
    assert image.parse_deb822_sources(source.to_deb822()) == [source]


def test_select_sources_drops_third_party_suites() -> None:
    vendor = AptSource(("deb",), ("https://v.invalid",), ("bookworm",), ("stable",))
    cloud = AptSource(("deb",), ("https://c.invalid",), ("cloud-sdk-bookworm",), ("main",))
    slash = AptSource(("deb",), ("http://s.invalid",), ("bookworm/updates",), ("main",))

    assert image.select_sources([vendor, cloud, slash], "bookworm") == [slash]


def test_apt_options_from_dump() -> None:
    dump = (
        'APT "";\n'
        'Acquire::Check-Valid-Until "false";\n'
        'Acquire::Check-Date "false";\n'
        'Acquire::http::Proxy "http://proxy.invalid:3128";\n'
        'Dir::Cache::pkgcache "";\n'
    )

    assert image.apt_options_from_dump(dump) == [
        'Acquire::Check-Valid-Until "false"',
        'Acquire::Check-Date "false"',
    ]


@pytest.fixture
def context(tmp_path: Path) -> Path:
    root = tmp_path / "runtime"
    (root / "agent" / "__pycache__").mkdir(parents=True)
    (root / "Dockerfile").write_text("ARG BASE_IMAGE=debian:bookworm-slim\nFROM ${BASE_IMAGE}\n")
    (root / "agent" / "agent.py").write_text("print('agent')\n")
    return root


def test_context_hash_is_stable(context: Path) -> None:
    first = image.context_hash(context)

    assert len(first) == 64
    assert image.context_hash(context) == first


def test_context_hash_changes_with_content_name_and_mode(context: Path) -> None:
    seen = {image.context_hash(context)}
    agent = context / "agent" / "agent.py"

    agent.write_text("print('changed')\n")
    seen.add(image.context_hash(context))
    agent.chmod(0o755)
    seen.add(image.context_hash(context))
    agent.rename(context / "agent" / "renamed.py")
    seen.add(image.context_hash(context))
    (context / "new.txt").write_text("")
    seen.add(image.context_hash(context))

    assert len(seen) == 5


def test_context_hash_ignores_caches_and_dockerignore(context: Path) -> None:
    (context / ".dockerignore").write_text("# comment\n*.log\nscratch/\n")
    before = image.context_hash(context)

    (context / "agent" / "__pycache__" / "agent.cpython-311.pyc").write_bytes(b"\0")
    (context / "agent" / "stale.pyc").write_bytes(b"\0")
    (context / "build.log").write_text("noise")
    (context / "scratch").mkdir()
    (context / "scratch" / "x").write_text("noise")

    assert image.context_hash(context) == before


def test_context_hash_follows_a_whitelist_dockerignore(context: Path) -> None:
    (context / ".dockerignore").write_text("*\n!Dockerfile\n!agent/*.py\nagent/skip.py\n")
    before = image.context_hash(context)

    (context / "README").write_text("not sent to the daemon")
    (context / "agent" / "skip.py").write_text("")
    (context / "agent" / "notes.txt").write_text("")
    assert image.context_hash(context) == before

    (context / "agent" / "extra.py").write_text("")
    assert image.context_hash(context) != before


@pytest.mark.parametrize(
    ("rules", "path", "ignored"),
    [
        ("*", "a/b.py", True),
        ("*\n!a/*.py", "a/b.py", False),
        ("*\n!a/*.py", "a/c/b.py", True),
        ("a/*.py", "a/c/b.py", False),
        ("**/*.log", "x/y/z.log", True),
        ("**/*.log", "z.log", True),
        ("/build/", "build/out/x", True),
        ("b?ild", "build", True),
        ("[a-c].txt", "b.txt", True),
        ("[!a-c].txt", "b.txt", False),
        ("# comment only", "x", False),
    ],
)
def test_is_ignored(rules: str, path: str, ignored: bool) -> None:
    assert image.is_ignored(path, image.dockerignore_rules(rules)) is ignored


def test_find_context(context: Path, tmp_path: Path) -> None:
    assert image.find_context(context) == context.resolve()
    with pytest.raises(image.BuildError, match="pass --context"):
        image.find_context(tmp_path / "missing")


def test_find_context_defaults_to_the_repository_runtime() -> None:
    repo_runtime = Path(image.__file__).resolve().parent.parent / "runtime"
    if not (repo_runtime / "Dockerfile").is_file():
        pytest.fail(f"{repo_runtime}/Dockerfile is missing")

    assert image.find_context() == repo_runtime


def test_mmdebstrap_command() -> None:
    command = image.mmdebstrap_command(
        "bookworm", Path("/t/base.tar"), Path("/t/s.sources"), ['Acquire::Check-Date "false"']
    )

    assert command == [
        "mmdebstrap",
        "--variant=minbase",
        '--aptopt=Acquire::Check-Date "false"',
        "bookworm",
        "/t/base.tar",
        "/t/s.sources",
    ]


def test_import_command_restores_slim_image_config() -> None:
    command = image.import_command(Path("/t/base.tar"), "ws-sandbox-base:bookworm")

    assert command[:2] == ["docker", "import"]
    assert command[-2:] == ["/t/base.tar", "ws-sandbox-base:bookworm"]
    changes = [command[i + 1] for i, arg in enumerate(command) if arg == "--change"]
    assert any(c.startswith("ENV PATH=") for c in changes)
    assert 'CMD ["bash"]' in changes


def test_build_command() -> None:
    command = image.build_command(
        Path("/repo/runtime"), "t:latest", "ws-sandbox-base:bookworm", "debian:bookworm-slim", "ab"
    )

    assert command == [
        "docker",
        "build",
        "--tag",
        "t:latest",
        "--build-arg",
        "BASE_IMAGE=ws-sandbox-base:bookworm",
        "--label",
        "org.ws_sandbox.context_hash=ab",
        "--label",
        "org.ws_sandbox.base_image=debian:bookworm-slim",
        "/repo/runtime",
    ]


def test_arguments_map_to_options() -> None:
    parser = argparse.ArgumentParser()
    image.add_arguments(parser)

    defaults = image.options_from_args(parser.parse_args([]))
    assert defaults == image.BuildOptions()
    custom = image.options_from_args(
        parser.parse_args(["--context", "/c", "--tag", "x:1", "--no-pull", "--force"])
    )
    assert custom == image.BuildOptions(context=Path("/c"), tag="x:1", pull=False, force=True)


def test_progress_streams_output_and_reports_failure() -> None:
    out = io.StringIO()
    progress = image.Progress(out)

    with progress.step("echo"):
        progress.stream(["sh", "-c", "echo hello; printf '\\033[91mred\\033[0m\\n'"])
    with pytest.raises(image.BuildError, match="exit status 3"), progress.step("fail"):
        progress.stream(["sh", "-c", "exit 3"])
    with pytest.raises(image.BuildError, match="cannot run"):
        progress.stream(["/nonexistent/command"])

    text = out.getvalue()
    assert "==> [1] echo" in text
    assert "| hello" in text
    assert "| red" in text
    assert "\033" not in text
    assert "==> [2] fail" in text


def test_run_turns_errors_into_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert image.main(["--context", str(tmp_path)]) == 1

    err = capsys.readouterr().err
    assert err.startswith("ws-sandbox build-image: error: no Dockerfile found")
