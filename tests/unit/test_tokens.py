"""Resume tokens: signed session ids, refused when altered or foreign, without an expiry of
their own (the session's lifetime bounds them)."""

from __future__ import annotations

import time

import itsdangerous
import pytest

from ws_sandbox.exceptions import InvalidToken
from ws_sandbox.tokens import TokenSigner


def test_a_token_gives_back_its_session_id() -> None:
    signer = TokenSigner("secret")
    assert signer.verify(signer.sign("s-1")) == "s-1"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "é" * 50, "x" * 10_000])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken, match="not valid"):
        TokenSigner("secret").verify(token)


def test_an_altered_token_is_refused() -> None:
    signer = TokenSigner("secret")
    token = signer.sign("s-1")
    payload, signature = token.split(".")
    forged = itsdangerous.URLSafeSerializer("other", salt="x").dumps("s-2").split(".")[0]
    for bad in (f"{forged}.{signature}", f"{payload}.{signature[:-2]}AA", token + "A"):
        with pytest.raises(InvalidToken):
            signer.verify(bad)


def test_a_token_of_another_service_is_refused() -> None:
    with pytest.raises(InvalidToken):
        TokenSigner("secret").verify(TokenSigner("another secret").sign("s-1"))


def test_only_session_ids_are_accepted() -> None:
    """A payload of another type, signed with the right secret (another use of the same
    secret and salt, say), is not taken for a session id."""
    signer = TokenSigner("secret")
    other = itsdangerous.URLSafeSerializer("secret", salt="ws_sandbox.resume.v1").dumps(
        ["s-1"])
    with pytest.raises(InvalidToken):
        signer.verify(other)


def test_an_old_token_stays_good_while_its_session_lives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A token has no expiry of its own: an admin may raise ``max_lifetime`` for new
    sessions after the service started, and a session a year old is resumed if it lives."""
    signer = TokenSigner("secret")
    year = 365 * 24 * 3600
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    token = signer.sign("s-1")
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0 + year)
    assert signer.verify(token) == "s-1"
