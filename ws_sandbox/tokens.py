"""Resume tokens: a session id signed with the service's secret (itsdangerous).

A token lets a client that dropped reconnect to its session within the resume grace. It is
useless once its session has ended, on another service (other secret) or when altered.

A token carries no expiry of its own: it is worth exactly as long as its session lives, and
the session's lifetime (``MAX_LIFETIME`` when it opened; an admin may change it for sessions
opened later) bounds that. An expiry fixed when the service started refused, after an admin
raised ``max_lifetime``, to resume a session that was still alive.
"""

from __future__ import annotations

import itsdangerous

from ws_sandbox.exceptions import InvalidToken

_SALT = "ws_sandbox.resume.v1"


class TokenSigner:
    """Signs and checks resume tokens.

    Args:
        secret: the service's ``SESSION_SECRET``.
    """

    def __init__(self, secret: str) -> None:
        self._serializer = itsdangerous.URLSafeSerializer(secret, salt=_SALT)

    def sign(self, session_id: str) -> str:
        """A token for ``session_id``."""
        return str(self._serializer.dumps(session_id))

    def verify(self, token: str) -> str:
        """The session id inside ``token``.

        Raises:
            InvalidToken: the token is malformed, tampered with or foreign.
        """
        try:
            value = self._serializer.loads(token)
        except itsdangerous.BadData:
            raise InvalidToken("resume token is not valid") from None
        if not isinstance(value, str):
            raise InvalidToken("resume token is not valid")
        return value
