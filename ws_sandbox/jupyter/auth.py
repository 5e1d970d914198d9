"""Credentials as Jupyter clients send them.

* **Token**: ``?token=<t>`` on any request or WebSocket, or ``Authorization: token <t>`` or
  ``Bearer <t>``. Accepted: ``JUPYTER_TOKEN``, and any API key of the service.
* **Password** (Jupyter's login form, which Open WebUI also drives): ``GET /login`` sets an
  ``_xsrf`` cookie; a form ``POST /login`` with ``_xsrf`` and ``password`` answers 302 with a
  login cookie signed with ``SESSION_SECRET``. Later calls carry the cookie, and every call
  but a GET also an ``X-XSRFToken`` header equal to the ``_xsrf`` cookie (double submit). A
  browser WebSocket authenticated by cookie must come from an allowed origin.
* With no ``JUPYTER_TOKEN``, ``JUPYTER_PASSWORD`` nor ``API_KEYS`` the endpoint is as open
  as the rest of the service (which then binds to loopback, or was told
  ``ALLOW_UNAUTHENTICATED``), except to browsers on other sites: a WebSocket, ``POST``,
  ``PATCH`` or ``DELETE`` whose ``Origin`` is not allowed is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import itsdangerous

from ws_sandbox.auth import check_host, check_origin, is_key_identity, key_identity
from ws_sandbox.exceptions import Forbidden, Unauthorized, WrongCredential
from ws_sandbox.settings import Settings

LOGIN_COOKIE = "ws_sandbox_jupyter_login"
XSRF_COOKIE = "_xsrf"
XSRF_HEADER = "x-xsrftoken"
LOGIN_MAX_AGE = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that only read: no XSRF token, no origin check."""
_SALT = "ws_sandbox.jupyter.login.v1"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one request carries, taken from its query, headers and cookies."""

    token: str | None
    login_cookie: str | None
    xsrf_cookie: str | None
    xsrf_header: str | None
    origin: str | None
    host: str | None

    @classmethod
    def from_parts(cls, query: Mapping[str, str], headers: Mapping[str, str],
                   cookies: Mapping[str, str]) -> Credentials:
        """Collect credentials (``headers`` must have lower-case keys or be case-blind)."""
        token = query.get("token") or query.get("api_key") or _auth_header(
            headers.get("authorization"))
        return cls(token=token or None, login_cookie=cookies.get(LOGIN_COOKIE),
                   xsrf_cookie=cookies.get(XSRF_COOKIE), xsrf_header=headers.get(XSRF_HEADER),
                   origin=headers.get("origin"), host=headers.get("host"))


def _auth_header(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() in ("token", "bearer"):
        return rest.strip() or None
    return None


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def is_open(settings: Settings) -> bool:
    """Whether no credential at all is configured for the Jupyter endpoint."""
    return not (settings.jupyter_token or settings.jupyter_password
                or settings.api_key_list)


def check_open_host(settings: Settings, host: str | None) -> None:
    """On an open endpoint, refuse a request that names the service by a foreign host.

    Before every credential: there anyone gets one (any password logs in), so a page whose
    own name points here (DNS rebinding: :func:`ws_sandbox.auth.check_host`) could log in
    and use the cookie.

    Raises:
        Forbidden: see :func:`ws_sandbox.auth.check_host`.
    """
    if is_open(settings):
        check_host(settings, host)


def token_identity(settings: Settings, token: str) -> str | None:
    """The caller's identity if ``token`` is accepted, else ``None``."""
    by_token = bool(settings.jupyter_token) and _equal(token, settings.jupyter_token)
    keys = settings.api_key_list + ((settings.admin_api_key,) if settings.admin_api_key
                                    else ())
    by_key = False
    for key in keys:  # no early exit: timing says nothing about which key matched
        by_key |= _equal(token, key)
    if by_key:
        return key_identity(token)
    return "jupyter-token" if by_token else None


LOGIN_IDENTITY = "jupyter-login"
"""The identity of a login with ``JUPYTER_PASSWORD`` (or on an open service)."""


class LoginSigner:
    """Signs and checks login cookies.

    A cookie names who logged in: the password's identity, or the token's or API key's
    when one was given as the password (as Jupyter allows, where no password is set), so
    that a key's kernels stay that key's. A new ``JUPYTER_PASSWORD`` (without one, a new
    ``JUPYTER_TOKEN``) voids every cookie; a key's cookie is void once the key is no longer
    accepted.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._serializer = itsdangerous.URLSafeTimedSerializer(settings.session_secret,
                                                               salt=_SALT)
        # Keyed with the session secret: the cookie's payload is signed, not encrypted, and
        # a plain hash of the password (or token) in it let anyone who logged in, with an
        # API key of their own, guess the token offline at the hash's speed (a review).
        self._stamp = hmac.new(settings.session_secret.encode(),
                               (settings.jupyter_password or settings.jupyter_token).encode(),
                               hashlib.sha256).hexdigest()[:16]

    def sign(self, identity: str = LOGIN_IDENTITY) -> str:
        """A fresh login cookie value for ``identity``."""
        return str(self._serializer.dumps([self._stamp, identity]))

    def identity(self, value: str) -> str | None:
        """Who ``value`` logged in, if it is a login cookie of ours, unexpired, for this
        password, and (a key's) for a key still accepted; else ``None``."""
        try:
            loaded = self._serializer.loads(value, max_age=LOGIN_MAX_AGE)
        except itsdangerous.BadData:
            return None
        if not (isinstance(loaded, list) and len(loaded) == 2
                and all(isinstance(part, str) for part in loaded)):
            return None
        stamp, identity = loaded
        if not _equal(stamp, self._stamp):
            return None
        if is_key_identity(identity) and identity not in self._accepted_keys():
            return None
        return str(identity)

    def _accepted_keys(self) -> set[str]:
        s = self._settings
        keys = s.api_key_list + ((s.admin_api_key,) if s.admin_api_key else ())
        return {key_identity(key) for key in keys}


def new_xsrf() -> str:
    """A fresh ``_xsrf`` value."""
    return secrets.token_urlsafe(24)


_XSRF = re.compile(r"[A-Za-z0-9_-]{32}")


def is_xsrf(value: str) -> bool:
    """Whether ``value`` has the form of a :func:`new_xsrf` value."""
    return _XSRF.fullmatch(value) is not None


def check_password(settings: Settings, password: str) -> str | None:
    """Who the login form's ``password`` logs in (Jupyter also takes the token there, and
    we an API key, as the key's own identity), or ``None``."""
    if settings.jupyter_password:
        return LOGIN_IDENTITY if _equal(password, settings.jupyter_password) else None
    if settings.jupyter_token or settings.api_key_list:
        return token_identity(settings, password)
    return LOGIN_IDENTITY


def authenticate(settings: Settings, creds: Credentials, *, method: str, websocket: bool,
                 address: str) -> str:
    """Check one request's credentials; return the caller's identity.

    Args:
        settings: effective settings.
        creds: what the request carries.
        method: the HTTP method (``GET`` for a WebSocket upgrade).
        websocket: whether this is a WebSocket upgrade.
        address: the peer's address, the identity on an open endpoint.

    Raises:
        Unauthorized: credentials are needed and none were given.
        Forbidden: the credentials, the XSRF token or the origin are not accepted.
    """
    check_open_host(settings, creds.host)
    if creds.token is not None:
        identity = token_identity(settings, creds.token)
        if identity is not None:
            return identity
        if not is_open(settings):
            raise WrongCredential("the token is not valid")
    login = (LoginSigner(settings).identity(creds.login_cookie)
             if creds.login_cookie is not None else None)
    if login is not None:
        if websocket:
            check_origin(settings, creds.origin, creds.host)
        elif method not in SAFE_METHODS and not (
                creds.xsrf_cookie and creds.xsrf_header
                and _equal(creds.xsrf_header, creds.xsrf_cookie)):
            raise Forbidden("'_xsrf' argument missing or not matching the _xsrf cookie")
        return login
    if is_open(settings):
        # No credentials to forge, so a browser must not act from another site: a page's
        # cross-site form could otherwise start kernels. Reads stay open (CORS hides them),
        # but not to a page whose own name points here (checked above).
        if websocket or method not in SAFE_METHODS:
            check_origin(settings, creds.origin, creds.host)
        return address
    raise Unauthorized("a Jupyter token or login is required: send ?token=<token>")
