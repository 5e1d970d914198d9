"""The one exception tree: every error has its status and close code, and is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from ws_sandbox import exceptions
from ws_sandbox.exceptions import ERROR_TABLE, SandboxError

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "protocol" / "spec.md").read_text() + (ROOT / "docs" / "service.md").read_text()


def _tree(cls: type[SandboxError]) -> list[type[SandboxError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _tree(sub))]


ERRORS = _tree(SandboxError)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_has_a_status_and_a_close_code(cls: type[SandboxError]) -> None:
    status, close = ERROR_TABLE[cls]
    assert 400 <= status <= 599
    assert close in (1003, 1008, 1009, 1011, 1013)
    error = cls("what went wrong")
    assert (error.http_status, error.close_code) == (status, close)
    assert error.message == "what went wrong"


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_code_is_documented(cls: type[SandboxError]) -> None:
    """A client reading protocol/spec.md and docs/service.md meets no code they do not name."""
    assert f"`{cls.code}`" in DOCS, cls.code


def test_the_tree_in_the_module_docstring_names_every_error() -> None:
    assert exceptions.__doc__ is not None
    for cls in ERRORS:
        assert cls.__name__ in exceptions.__doc__, cls.__name__


def test_retry_after_is_kept() -> None:
    assert SandboxError("x").retry_after is None
    assert exceptions.CapacityError("busy", retry_after=2.5).retry_after == 2.5


@pytest.mark.parametrize(("seconds", "header"),
                         [(None, None), (0.0, "1"), (0.2, "1"), (1.0, "1"), (2.5, "3")])
def test_retry_after_header_is_whole_seconds_rounded_up_never_zero(
        seconds: float | None, header: str | None) -> None:
    """The REST and the Jupyter endpoints both send this; the Jupyter one sent ``0`` for a
    wait under a second, which invites an immediate retry."""
    assert exceptions.RateLimited("slow down", retry_after=seconds).retry_after_header == header


def test_quoted_cuts_and_escapes_what_it_repeats() -> None:
    assert exceptions.quoted("nope") == "'nope'"
    assert exceptions.quoted("a\nb\x1b") == "'a\\nb\\x1b'"
    long = exceptions.quoted("x" * 5000)
    assert long == repr("x" * exceptions.QUOTED_CHARS + "...")
