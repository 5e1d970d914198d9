"""Resume tokens: a session id signed with the service's secret (itsdangerous).

A token lets a client that dropped reconnect to its session within the resume grace. It is
useless after that window, on another service (other secret) or when altered.
"""

from __future__ import annotations

import itsdangerous

from ws_sandbox.exceptions import InvalidToken

_SALT = "ws_sandbox.resume.v1"


class TokenSigner:
    """Signs and checks resume tokens.

    Args:
        secret: the service's ``SESSION_SECRET``.
        max_age: seconds a token stays valid after it was issued.
    """

    def __init__(self, secret: str, max_age: float) -> None:
        self._serializer = itsdangerous.URLSafeTimedSerializer(secret, salt=_SALT)
        self._max_age = max(1, int(max_age))

    def sign(self, session_id: str) -> str:
        """A token for ``session_id``."""
        return str(self._serializer.dumps(session_id))

    def verify(self, token: str) -> str:
        """The session id inside ``token``.

        Raises:
            InvalidToken: the token is malformed, tampered with, foreign or expired.
        """
        try:
            value = self._serializer.loads(token, max_age=int(self._max_age))
        except itsdangerous.SignatureExpired:
            raise InvalidToken("resume token has expired") from None
        except itsdangerous.BadData:
            raise InvalidToken("resume token is not valid") from None
        if not isinstance(value, str):
            raise InvalidToken("resume token is not valid")
        return value
