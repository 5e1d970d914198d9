"""``ws_sandbox.connections``: the gate's counts and caps (sans I/O; test_http_protocol runs
it under uvicorn, and test_rest against the service)."""

from __future__ import annotations

import json

import pytest

from ws_sandbox import connections
from ws_sandbox.connections import ConnectionGate, refusal_response, total_for


def test_an_address_is_capped_and_others_are_not() -> None:
    gate = ConnectionGate(per_address=2)
    seen: list[tuple[str, str]] = []
    gate.on_refused = lambda reason, address: seen.append((reason, address))
    assert gate.admit("10.0.0.1") is None and gate.admit("10.0.0.1") is None
    refusal = gate.admit("10.0.0.1")
    assert refusal is not None and refusal.http_status == 503
    assert refusal.message == ("your address holds 2 connections to the service, the most"
                               " one address may (MAX_CONNECTIONS_PER_ADDRESS=2); close some"
                               " first")
    assert gate.admit("10.0.0.2") is None
    assert (gate.open, gate.refused, gate.held_by("10.0.0.1")) == (3, 1, 2)
    gate.leave("10.0.0.1")
    assert gate.admit("10.0.0.1") is None
    assert seen == [("too_many_connections", "10.0.0.1")]
    for address in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        gate.leave(address)
    assert (gate.open, gate.held_by("10.0.0.1"), gate.held_by("10.0.0.2")) == (0, 0, 0)
    assert gate._by_address == {}  # no address is remembered once it holds none


def test_the_total_caps_every_address_and_zero_means_no_cap() -> None:
    gate = ConnectionGate(per_address=0, total=3)
    assert all(gate.admit(f"10.0.0.{n}") is None for n in range(3))
    refusal = gate.admit("10.0.0.9")
    assert refusal is not None and refusal.message.startswith("the service holds 3")
    unbounded = ConnectionGate(per_address=0)
    assert all(unbounded.admit("10.0.0.1") is None for _ in range(10_000))


def test_an_unknown_address_is_one_address() -> None:
    gate = ConnectionGate(per_address=1)
    seen: list[tuple[str, str]] = []
    gate.on_refused = lambda reason, address: seen.append((reason, address))
    assert gate.admit("") is None
    assert gate.admit("") is not None
    assert seen == [("too_many_connections", "unknown")]


def test_refused_connections_linger_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "MAX_LINGERING", 2)
    gate = ConnectionGate(per_address=1)
    assert gate.linger() and gate.linger() and not gate.linger()
    gate.stop_lingering()
    assert gate.linger()


def test_total_for_leaves_a_quarter_of_the_open_files() -> None:
    assert (total_for(20_000), total_for(1024), total_for(1)) == (15_000, 768, 1)


def test_the_refusal_is_a_whole_http_response_with_the_error_body() -> None:
    refusal = ConnectionGate(per_address=0, total=1)
    refusal.admit("a")
    error = refusal.admit("b")
    assert error is not None
    raw = refusal_response(error)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields == {"content-type": "application/json", "content-length": str(len(body)),
                      "retry-after": "1", "connection": "close"}
    assert json.loads(body) == {"error": {"code": "too_many_connections",
                                          "message": error.message}}


def test_an_ipv6_address_counts_as_its_64() -> None:
    """Each exact IPv6 address was one address: a client holding a /64 (as one commonly
    does) had as many caps as addresses (a review). It counts as its /64, as the guess
    limit counts it; an IPv4 address, and one mapped into IPv6, as itself."""
    gate = ConnectionGate(per_address=2)
    assert gate.admit("2001:db8:1:2::1") is None and gate.admit("2001:db8:1:2::ffff") is None
    assert gate.admit("2001:db8:1:2:aaaa::5") is not None
    assert gate.admit("2001:db8:1:3::1") is None  # another /64
    assert gate.held_by("2001:db8:1:2::77") == 2
    gate.leave("2001:db8:1:2::1")
    assert gate.admit("2001:db8:1:2::9") is None
    for address in ("192.0.2.1", "192.0.2.1", "::ffff:192.0.2.2", "::ffff:192.0.2.2"):
        assert gate.admit(address) is None
    assert gate.admit("192.0.2.1") is not None
