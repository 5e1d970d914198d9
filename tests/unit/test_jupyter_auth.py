"""Jupyter endpoint credentials: tokens, API keys, login cookies, XSRF, no Docker."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from ws_sandbox.auth import key_identity
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
    {"token": "tok-0123456789abcd"},
    {"authorization": "token tok-0123456789abcd"},
    {"authorization": "Bearer tok-0123456789abcd"},
    {"authorization": "TOKEN  tok-0123456789abcd "},
])
def test_token_forms(parts: dict[str, str]) -> None:
    s = settings(jupyter_token="tok-0123456789abcd")
    assert check(s, creds(**parts), "POST") == "jupyter-token"


def test_missing_and_wrong_token() -> None:
    s = settings(jupyter_token="tok-0123456789abcd")
    with pytest.raises(Unauthorized):
        check(s, creds())
    with pytest.raises(Forbidden):
        check(s, creds(token="nope"))
    with pytest.raises(Unauthorized):
        check(s, creds(authorization="Basic dG9r"))


def test_api_key_is_a_token() -> None:
    s = settings(api_keys="k1-0123456789abcde,k2-0123456789abcde")
    assert check(s, creds(token="k2-0123456789abcde")).startswith("key:")
    assert check(s, creds(authorization="token k1-0123456789abcde")).startswith("key:")
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
    assert auth.LoginSigner(new).identity(old) is None


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
    s = settings(allowed_hosts="svc")
    assert check(s, creds(), "POST") == "1.2.3.4"
    assert check(s, creds(origin="http://svc:8090", host="svc:8090"), "POST") == "1.2.3.4"
    assert check(s, creds(origin="http://evil.example", host="svc:8090")) == "1.2.3.4"  # GET
    for method in ("POST", "DELETE", "PATCH"):
        with pytest.raises(Forbidden, match="origin"):
            check(s, creds(origin="http://evil.example", host="svc:8090"), method)


def test_open_endpoint_answers_only_to_its_own_names() -> None:
    """DNS rebinding: a page whose name points at the service is its own site to the browser
    (Origin and Host agree), so an open endpoint answers only to localhost, IP addresses and
    ALLOWED_HOSTS; with a credential configured, the credential protects it."""
    page = creds(origin="http://evil.example:8090", host="evil.example:8090")
    for method in ("GET", "POST"):
        with pytest.raises(Forbidden, match="ALLOWED_HOSTS"):
            check(settings(), page, method)
    assert check(settings(), creds(origin="http://localhost:8090", host="localhost:8090"),
                 "POST") == "1.2.3.4"
    assert check(settings(allowed_hosts="evil.example"), page, "POST") == "1.2.3.4"
    with pytest.raises(Unauthorized):
        check(settings(jupyter_token="tok-0123456789abcd"), page, "POST")


def test_an_open_endpoint_s_login_cookie_does_not_get_past_the_host_check() -> None:
    """On an open endpoint any password logs in, so a rebinding page could get a login
    cookie and use it: the cookie was checked before the host (found by a review)."""
    s = settings()
    identity = auth.check_password(s, "anything")
    assert identity is not None  # any password logs in on an open endpoint
    cookie = auth.LoginSigner(s).sign(identity)
    assert check(s, auth.Credentials(token=None, login_cookie=cookie, xsrf_cookie="x",
                                     xsrf_header="x", origin=None, host="localhost:8090"),
                 "POST") == auth.LOGIN_IDENTITY
    for method, websocket in (("GET", False), ("POST", False), ("GET", True)):
        with pytest.raises(Forbidden, match="ALLOWED_HOSTS"):
            check(s, auth.Credentials(token=None, login_cookie=cookie, xsrf_cookie="x",
                                      xsrf_header="x", origin="http://evil.example:8090",
                                      host="evil.example:8090"), method, websocket)
        with pytest.raises(Forbidden, match="ALLOWED_HOSTS"):
            check(s, creds(token="whatever", host="evil.example:8090"), method, websocket)


def test_check_password() -> None:
    assert auth.check_password(settings(jupyter_password="pw"), "pw")
    assert not auth.check_password(settings(jupyter_password="pw"), "PW")
    assert auth.check_password(settings(jupyter_token="tok-0123456789abcd"), "tok-0123456789abcd")
    assert not auth.check_password(settings(jupyter_token="tok-0123456789abcd"), "pw")
    assert auth.check_password(settings(api_keys="k-0123456789abcdef"), "k-0123456789abcdef")
    assert auth.check_password(settings(), "")


def test_secrets_are_not_public() -> None:
    public = settings(jupyter_token="tok-0123456789abcd", jupyter_password="pw").public()
    assert "jupyter_token" not in public and "jupyter_password" not in public


class _Clock:
    """The clock itsdangerous reads (``TimestampSigner.get_timestamp``), set by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, now: int) -> None:
        import itsdangerous

        self.now = now
        monkeypatch.setattr(itsdangerous.TimestampSigner, "get_timestamp",
                            lambda _signer: self.now)


@pytest.mark.parametrize(("age", "accepted"), [
    (0, True),
    (12 * 3600 - 60, True),   # just under 12 hours
    (12 * 3600, True),        # exactly 12 hours: itsdangerous expires on age > max_age
    (12 * 3600 + 1, False),   # 12 hours and a second
    (12 * 3600 + 60, False),  # 12 hours and a minute
    (7 * 24 * 3600, False),
])
def test_login_cookie_lasts_12_hours(monkeypatch: pytest.MonkeyPatch, age: int,
                                     accepted: bool) -> None:
    """docs/jupyter.md: the login cookie lasts 12 hours. Time is the signer's clock, moved
    by the test: the cookie is signed at ``t0`` and presented at ``t0 + age``."""
    t0 = 1_900_000_000
    clock = _Clock(monkeypatch, t0)
    s = settings(jupyter_password="pw")
    cookie = auth.LoginSigner(s).sign()
    clock.now = t0 + age
    assert (auth.LoginSigner(s).identity(cookie) is not None) is accepted
    if accepted:
        assert check(s, creds(**{auth.LOGIN_COOKIE: cookie})) == "jupyter-login"
    else:
        with pytest.raises(Unauthorized):
            check(s, creds(**{auth.LOGIN_COOKIE: cookie}))


async def test_an_expired_login_cookie_is_a_401_over_http(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same through the routes: an expired cookie gets Jupyter's 401 body, a fresh one
    is let in (the app is the Jupyter routes alone; ``/api/kernelspecs`` needs no Docker)."""
    from types import SimpleNamespace

    import httpx
    from starlette.applications import Starlette

    from ws_sandbox.jupyter.routes import routes

    s = settings(jupyter_password="pw")
    app = Starlette(routes=routes())
    app.state.manager = SimpleNamespace(settings=s)
    t0 = 1_900_000_000
    clock = _Clock(monkeypatch, t0)
    cookie = auth.LoginSigner(s).sign()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://svc:8090",
                                 cookies={auth.LOGIN_COOKIE: cookie}) as client:
        clock.now = t0 + 12 * 3600 - 30  # just under 12 hours
        fresh = await client.get("/api/kernelspecs")
        assert fresh.status_code == 200, fresh.text
        assert fresh.json()["default"] == "python3"
        clock.now = t0 + 12 * 3600 + 30  # just over
        stale = await client.get("/api/kernelspecs")
        assert stale.status_code == 401, stale.text
        assert stale.json()["reason"] == "unauthorized"


def test_a_login_with_an_api_key_is_that_keys_and_ends_with_the_key() -> None:
    """Jupyter takes a token in the login form's password field, and so do we an API key:
    the cookie then names the key (its kernels stay its own), and is void once the key is
    no longer accepted. It named everyone "jupyter-login" before, and outlived the key."""
    s = settings(api_keys="ka-0123456789abcde,kb-0123456789abcde")
    identity = auth.check_password(s, "kb-0123456789abcde")
    assert identity == key_identity("kb-0123456789abcde")
    cookie = auth.LoginSigner(s).sign(identity)
    assert auth.LoginSigner(s).identity(cookie) == key_identity("kb-0123456789abcde")
    revoked = settings(api_keys="ka-0123456789abcde")  # kb's key is gone
    assert auth.LoginSigner(revoked).identity(cookie) is None
    assert auth.check_password(settings(jupyter_password="pw"), "pw") == auth.LOGIN_IDENTITY
    assert auth.LoginSigner(s).identity("not a cookie") is None


def test_an_xsrf_value_is_one_of_ours_or_not() -> None:
    assert auth.is_xsrf(auth.new_xsrf())
    for value in ("", "x" * 31, "x" * 33, '"><script>alert(1)</script>' + "x" * 5,
                  "a" * 31 + "="):
        assert not auth.is_xsrf(value), value


@pytest.mark.parametrize("secure", [False, True])
async def test_secure_cookies_marks_every_cookie_secure(secure: bool) -> None:
    """Behind TLS (SECURE_COOKIES), the login, its deletion and ``_xsrf`` are ``Secure``:
    a browser sends them over HTTPS alone (they were never, and the service cannot tell
    that a proxy speaks TLS for it)."""
    from types import SimpleNamespace

    import httpx
    from starlette.applications import Starlette

    from ws_sandbox.jupyter.routes import routes

    s = Settings.from_env({"SECURE_COOKIES": str(secure).lower()}, session_secret="s" * 32,
                          jupyter_password="pw-0123456789abcdef")
    assert s.secure_cookies is secure
    app = Starlette(routes=routes())
    app.state.manager = SimpleNamespace(settings=s)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://localhost:8090") as client:  # a proxy's TLS
        page = await client.get("/login")
        xsrf = page.cookies[auth.XSRF_COOKIE]
        login = await client.post("/login", data={"_xsrf": xsrf,
                                                  "password": "pw-0123456789abcdef"})
        assert login.status_code == 302, login.text
        logout = await client.get("/logout")
    for response in (page, login, logout):
        [header] = response.headers.get_list("set-cookie")
        assert ("; secure" in header.lower()) is secure, header


def test_a_login_cookie_gives_nothing_to_guess_the_token_with() -> None:
    """The cookie's payload is readable (signed, not encrypted): it held sha256 of the token,
    so a tenant that logged in with its own API key could guess the token offline, past
    AUTH_FAILURES_PER_MINUTE (a review). What it holds now is keyed with the session secret."""
    token = "jupyter-token-0123456789"
    s = settings(jupyter_token=token, api_keys="tenant-key-0123456789abc")
    cookie = auth.LoginSigner(s).sign(key_identity("tenant-key-0123456789abc"))
    payload = cookie.split(".")[0]
    stamp, _ = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert stamp != hashlib.sha256(token.encode()).hexdigest()[:16]
    other = Settings.from_env({}, session_secret="t" * 32, jupyter_token=token)
    assert stamp != auth.LoginSigner(other)._stamp  # not the token's alone
    assert auth.LoginSigner(s).identity(cookie) == key_identity("tenant-key-0123456789abc")
