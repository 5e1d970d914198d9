"""Open connections, bounded per client address and in all, before any credentials are read.

Every connection holds a file descriptor for as long as it lives, and ``REQUEST_TIMEOUT``
only bounds each one's life: a client that opened connections as fast as they were closed
held thousands at once, until the service's open files ran out. Then nobody could connect,
and the service could neither open a file nor reach the engine (a review: 20,000 half-sent
request heads from one address locked every tenant out).

:class:`ConnectionGate` counts the connections the HTTP protocol has accepted, by peer
address (an IPv6 address as its /64, as the guess limit counts it; a WebSocket keeps its
connection's place after the upgrade), and refuses one past
``MAX_CONNECTIONS_PER_ADDRESS`` from its address, or past :attr:`ConnectionGate.total` in
all: three quarters of the open files limit, so that the rest stays for the sandboxes'
streams, the engine's connections and the stores' files. A refused connection gets a 503
``too_many_connections`` at once and is closed, so its descriptor comes back within
:data:`LINGER` seconds: it is read (and what it sent dropped) until then, or until its client
closes, since closing a socket that holds unread bytes (the request the client sent at once)
makes the kernel send a reset, and the client would see "connection reset" instead of the
answer. At most :data:`MAX_LINGERING` linger at once; past that, one is closed at once.
Refusals go into the operators' summary (:mod:`ws_sandbox.refusals`), never one log line
each.

Clients behind a proxy all have the proxy's address: there, the proxy is the place to bound
each client, and ``MAX_CONNECTIONS_PER_ADDRESS`` should be raised (or 0).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import msgspec

from ws_sandbox.exceptions import TooManyConnections
from ws_sandbox.ratelimit import client_network

TOTAL_SHARE = 0.75
"""Share of the open files limit that connections may hold."""
RETRY_AFTER = 1
LINGER = 1.0
"""Seconds a refused connection is read after its answer, at most (see above)."""
MAX_LINGERING = 256
"""Refused connections lingering at once, at most: their descriptors are not counted."""


class ConnectionGate:
    """Admits connections while their address, and the service, hold fewer than their caps.

    Args:
        per_address: connections one address may hold (0: no cap).
        total: connections in all (0: no cap); :func:`total_for` gives it for an open files
            limit.
    """

    def __init__(self, per_address: int, total: int = 0) -> None:
        self.per_address = per_address
        self.total = total
        self.open = 0
        """Connections admitted and not yet closed."""
        self.refused = 0
        """Connections refused since start."""
        self._by_address: Counter[str] = Counter()
        self.lingering = 0
        """Refused connections being read until their client takes the answer."""
        self.on_refused: Callable[[str, str], None] | None = None
        """Told each refusal (reason, address): the operators' summary."""

    def admit(self, address: str) -> TooManyConnections | None:
        """Count a new connection from ``address`` (an IPv6 address counts as its /64, which
        one client commonly holds whole), or say why it is refused.

        An admitted connection must be :meth:`leave` d once it is closed.
        """
        address = client_network(address)
        held = self._by_address[address]
        refusal = None
        if self.total and self.open >= self.total:
            refusal = TooManyConnections(
                f"the service holds {self.open} connections, as many as its open files"
                " allow; try again later", retry_after=RETRY_AFTER)
        elif self.per_address and held >= self.per_address:
            refusal = TooManyConnections(
                f"your address holds {held} connections to the service, the most one address"
                f" may (MAX_CONNECTIONS_PER_ADDRESS={self.per_address}); close some first",
                retry_after=RETRY_AFTER)
        if refusal is not None:
            self.refused += 1
            if self.on_refused is not None:
                self.on_refused(refusal.code, address or "unknown")
            return refusal
        self.open += 1
        self._by_address[address] = held + 1
        return None

    def leave(self, address: str) -> None:
        """An admitted connection from ``address`` is closed."""
        address = client_network(address)
        self.open -= 1
        held = self._by_address[address] - 1
        if held > 0:
            self._by_address[address] = held
        else:
            del self._by_address[address]

    def linger(self) -> bool:
        """Whether a refused connection may linger (:data:`LINGER`); if so, it must
        :meth:`stop_lingering` once closed."""
        if self.lingering >= MAX_LINGERING:
            return False
        self.lingering += 1
        return True

    def stop_lingering(self) -> None:
        """A lingering connection is closed."""
        self.lingering -= 1

    def held_by(self, address: str) -> int:
        """Connections ``address`` (its /64, for IPv6) holds now."""
        return self._by_address[client_network(address)]


def total_for(open_files: int) -> int:
    """The connections in all for an open files limit (:data:`TOTAL_SHARE` of it)."""
    return max(1, int(open_files * TOTAL_SHARE))


def raw_error_response(status: int, phrase: str, code: str, message: str,
                       headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP response, for a connection then closed, with the service's JSON error
    body: for what is refused below the application (uvicorn's own answers are plain
    text)."""
    body = msgspec.json.encode({"error": {"code": code, "message": message}})
    fields = [("content-type", "application/json"), ("content-length", str(len(body))),
              *headers, ("connection", "close")]
    head = f"HTTP/1.1 {status} {phrase}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    return (head + "\r\n").encode() + body


def refusal_response(refusal: TooManyConnections) -> bytes:
    """The whole HTTP response that answers a refused connection (then closed): the
    service's JSON error body, ``Retry-After``."""
    return raw_error_response(refusal.http_status, "Service Unavailable", refusal.code,
                              refusal.message,
                              (("retry-after", f"{refusal.retry_after_header}"),))
