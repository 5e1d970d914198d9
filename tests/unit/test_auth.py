"""API keys, the admin key and WebSocket origins."""

from __future__ import annotations

import pytest

from ws_sandbox.auth import check_origin, check_request, key_identity
from ws_sandbox.exceptions import Forbidden, Unauthorized
from ws_sandbox.settings import Settings


def settings(**kw: str) -> Settings:
    return Settings.from_env(kw)


def test_no_keys_configured_means_open_and_address_identity() -> None:
    assert check_request(settings(), address="10.0.0.1") == "10.0.0.1"


def test_keys_required_when_configured() -> None:
    s = settings(API_KEYS="k1, k2")
    with pytest.raises(Unauthorized):
        check_request(s)
    with pytest.raises(Forbidden):
        check_request(s, authorization="Bearer nope")
    assert check_request(s, authorization="Bearer k2") == key_identity("k2")
    assert check_request(s, api_key="k1") == key_identity("k1")
    with pytest.raises(Unauthorized):
        check_request(s, authorization="Basic k1")


def test_admin_needs_the_admin_key_and_is_off_without_one() -> None:
    with pytest.raises(Forbidden, match="switched off"):
        check_request(settings(API_KEYS="k"), authorization="Bearer k", admin=True)
    s = settings(API_KEYS="k", ADMIN_API_KEY="boss")
    with pytest.raises(Forbidden):
        check_request(s, authorization="Bearer k", admin=True)
    with pytest.raises(Unauthorized):
        check_request(s, admin=True)
    assert check_request(s, authorization="Bearer boss", admin=True) == key_identity("boss")
    assert check_request(s, authorization="Bearer boss") == key_identity("boss")


def test_origins() -> None:
    s = settings(ALLOWED_ORIGINS="https://chat.example")
    check_origin(s, None, "localhost:8090")
    check_origin(s, "http://localhost:8090", "localhost:8090")
    check_origin(s, "https://chat.example", "localhost:8090")
    with pytest.raises(Forbidden, match="ALLOWED_ORIGINS"):
        check_origin(s, "https://evil.example", "localhost:8090")
    check_origin(settings(ALLOWED_ORIGINS="*"), "https://any.example", "h")


@pytest.mark.parametrize("origin", ["http://[", "http://[::1", "http://[zz]"])
def test_an_origin_that_is_not_a_url_is_forbidden_not_a_crash(origin: str) -> None:
    """urlsplit raises ValueError on these (a 500 before); they are simply not allowed."""
    with pytest.raises(Forbidden, match="is not allowed"):
        check_origin(settings(), origin, "localhost:8090")


def test_key_identity_does_not_reveal_the_key() -> None:
    assert "secret" not in key_identity("secret-key")
