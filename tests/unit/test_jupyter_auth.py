"""Jupyter endpoint credentials: tokens, API keys, login cookies, XSRF, no Docker."""

from __future__ import annotations

import pytest

from ws_sandbox.exceptions import Forbidden, Unauthorized
from ws_sandbox.jupyter import auth
from ws_sandbox.settings import Settings


def settings(**overrides: str) -> Settings:
    return Settings.from_env({}, session_secret="s" * 32, **overrides)


def creds(**parts: str) -> auth.Credentials:
    query = {k: v for k, v in parts.items() if k in ("token", "api_key")}
    headers = {k.replace("_", "-"): v for k, v in parts.items()
               if k in ("authorization", "x_xsrftoken", "origin", "host")}
    cookies = {k: v for k, v in parts.items() if k in (auth.LOGIN_COOKIE, "_xsrf")}
    return auth.Credentials.from_parts(query, headers, cookies)


def check(s: Settings, c: auth.Credentials, method: str = "GET",
          websocket: bool = False) -> str:
    return auth.authenticate(s, c, method=method, websocket=websocket, address="1.2.3.4")


def test_open_when_nothing_is_configured() -> None:
    s = settings()
    assert check(s, creds(), "POST") == "1.2.3.4"
    assert check(s, creds(token="anything"), "POST") == "1.2.3.4"


@pytest.mark.parametrize("parts", [
    {"token": "tok"},
    {"authorization": "token tok"},
    {"authorization": "Bearer tok"},
    {"authorization": "TOKEN  tok "},
])
def test_token_forms(parts: dict[str, str]) -> None:
    s = settings(jupyter_token="tok")
    assert check(s, creds(**parts), "POST") == "jupyter-token"


def test_missing_and_wrong_token() -> None:
    s = settings(jupyter_token="tok")
    with pytest.raises(Unauthorized):
        check(s, creds())
    with pytest.raises(Forbidden):
        check(s, creds(token="nope"))
    with pytest.raises(Unauthorized):
        check(s, creds(authorization="Basic dG9r"))


def test_api_key_is_a_token() -> None:
    s = settings(api_keys="k1,k2")
    assert check(s, creds(token="k2")).startswith("key:")
    assert check(s, creds(authorization="token k1")).startswith("key:")
    with pytest.raises(Unauthorized):
        check(s, creds())


def test_login_cookie_and_xsrf() -> None:
    s = settings(jupyter_password="pw")
    cookie = auth.LoginSigner(s).sign()
    base = {auth.LOGIN_COOKIE: cookie}
    assert check(s, creds(**base)) == "jupyter-login"  # a GET needs no XSRF header
    with pytest.raises(Forbidden, match="_xsrf"):
        check(s, creds(**base), "POST")
    with pytest.raises(Forbidden, match="_xsrf"):
        check(s, creds(**base, _xsrf="a", x_xsrftoken="b"), "POST")
    assert check(s, creds(**base, _xsrf="a", x_xsrftoken="a"), "DELETE") == "jupyter-login"
    with pytest.raises(Unauthorized):
        check(s, creds(**{auth.LOGIN_COOKIE: cookie + "x"}))


def test_login_cookie_void_after_password_change() -> None:
    old = auth.LoginSigner(settings(jupyter_password="pw")).sign()
    new = settings(jupyter_password="other")
    assert not auth.LoginSigner(new).valid(old)


def test_cookie_websocket_checks_origin() -> None:
    s = settings(jupyter_password="pw")
    cookie = {auth.LOGIN_COOKIE: auth.LoginSigner(s).sign()}
    assert check(s, creds(**cookie, origin="http://svc:8090", host="svc:8090"),
                 websocket=True) == "jupyter-login"
    assert check(s, creds(**cookie), websocket=True) == "jupyter-login"  # no browser
    with pytest.raises(Forbidden, match="origin"):
        check(s, creds(**cookie, origin="http://evil.example", host="svc:8090"),
              websocket=True)


def test_open_endpoint_refuses_a_foreign_site_s_writes() -> None:
    """A cross-site form (text/plain, no preflight) must not start kernels on an open
    endpoint; clients that are not browsers send no Origin and are let through."""
    s = settings()
    assert check(s, creds(), "POST") == "1.2.3.4"
    assert check(s, creds(origin="http://svc:8090", host="svc:8090"), "POST") == "1.2.3.4"
    assert check(s, creds(origin="http://evil.example", host="svc:8090")) == "1.2.3.4"  # GET
    for method in ("POST", "DELETE", "PATCH"):
        with pytest.raises(Forbidden, match="origin"):
            check(s, creds(origin="http://evil.example", host="svc:8090"), method)


def test_check_password() -> None:
    assert auth.check_password(settings(jupyter_password="pw"), "pw")
    assert not auth.check_password(settings(jupyter_password="pw"), "PW")
    assert auth.check_password(settings(jupyter_token="tok"), "tok")
    assert not auth.check_password(settings(jupyter_token="tok"), "pw")
    assert auth.check_password(settings(api_keys="k"), "k")
    assert auth.check_password(settings(), "")


def test_secrets_are_not_public() -> None:
    public = settings(jupyter_token="tok", jupyter_password="pw").public()
    assert "jupyter_token" not in public and "jupyter_password" not in public
