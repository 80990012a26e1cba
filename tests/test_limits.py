"""Abuse limits: per-address penalties and connection caps, invalid-command floods, slowloris."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import defer, task

import vmspop.limits as limits
from support import Server
from vmspop.limits import AddressPenalties, address_key


def test_penalty_doubles_up_to_fifteen_seconds() -> None:
    """Each recent failure from one address doubles the delay: 2, 4, 8, then 15 s at most."""
    clock = task.Clock()
    penalties = AddressPenalties(clock, 2.0)
    delays = []
    for attempt in range(6):
        delays.append(penalties.delay("192.0.2.1"))
        penalties.failed("192.0.2.1", attempt)
    assert delays == [2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert penalties.delay("192.0.2.99") == 2.0  # other addresses are not affected


def test_repeated_same_attempt_does_not_grow_the_penalty() -> None:
    """A saved, outdated password tried again and again is not treated as guessing."""
    penalties = AddressPenalties(task.Clock(), 2.0)
    for _ in range(5):
        penalties.failed("192.0.2.1", 42)
    assert penalties.delay("192.0.2.1") == 4.0  # counted once


def test_penalty_expires_and_success_clears_it() -> None:
    """Failures older than the window are forgotten; a correct login clears the address."""
    clock = task.Clock()
    penalties = AddressPenalties(clock, 2.0)
    for attempt in range(3):
        penalties.failed("192.0.2.1", attempt)
    assert penalties.delay("192.0.2.1") == 15.0
    clock.advance(limits.PENALTY_WINDOW + 1)
    assert penalties.delay("192.0.2.1") == 2.0
    for attempt in range(3):
        penalties.failed("192.0.2.1", attempt)
    penalties.succeeded("192.0.2.1")
    assert penalties.delay("192.0.2.1") == 2.0


def test_ipv6_addresses_group_by_64() -> None:
    """An IPv6 /64 is one site: its addresses share a penalty and a connection count."""
    assert address_key("2001:db8:1:2::5") == address_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("/run/vmspop.sock") == "/run/vmspop.sock"


def test_tracked_addresses_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays bounded: the oldest addresses are forgotten first."""
    monkeypatch.setattr(limits, "MAX_TRACKED_ADDRESSES", 3)
    penalties = AddressPenalties(task.Clock(), 2.0)
    for i in range(10):
        penalties.failed(f"192.0.2.{i}", i)
    assert len(penalties._records) == 3


def test_penalty_applies_across_connections(tmp_path: Path) -> None:
    """A guesser reconnecting after each closed connection waits longer each time."""
    s = Server(tmp_path, auth_failure_delay=1.0, max_auth_attempts=1)
    s.add_user("jones")
    waits = []
    for attempt in range(3):
        client = s.connect()
        assert client.login(password=f"guess{attempt}") == b""
        waited = 0.0
        while not client.transport.value():
            s.clock.advance(0.5)
            waited += 0.5
        waits.append(waited)
    assert waits == [1.0, 2.0, 4.0]


def test_checks_from_one_address_are_bounded(tmp_path: Path) -> None:
    """A flood from one address holds at most CHECKS_PER_ADDRESS hashing threads; the rest queue."""
    s = Server(tmp_path)
    users = [f"user{i}" for i in range(limits.CHECKS_PER_ADDRESS + 1)]
    for user in users:
        s.add_user(user)
    started: list[defer.Deferred] = []

    def later(f, *a, **kw):  # type: ignore[no-untyped-def]
        d: defer.Deferred = defer.Deferred()
        started.append(d)
        return d.addCallback(lambda _: f(*a, **kw))

    clients = [s.connect() for _ in users]
    s.run_in_thread = later
    for client, user in zip(clients, users):
        client.command(f"USER {user}")
        client.command("PASS wonderland")
    assert len(started) == limits.CHECKS_PER_ADDRESS  # the last check waits for a free slot
    while started:
        started.pop(0).callback(None)
    assert all(client.take().startswith(b"+OK") for client in clients)


def test_connections_per_address_are_capped(tmp_path: Path) -> None:
    """--max-sessions-per-ip: the next connection from that address gets -ERR [SYS/TEMP]."""
    s = Server(tmp_path, max_sessions_per_ip=2)
    first, _, third = s.connect(), s.connect(), s.connect()
    assert third.greeting == b"-ERR [SYS/TEMP] too many connections from your address; try again later\r\n"
    assert third.closed
    assert "reason=too-many-sessions-from-address" in s.log.matching("connection refused")[0]
    first.drop()
    assert s.connect().greeting.startswith(b"+OK")


def test_stream_of_invalid_commands_is_cut_off(tmp_path: Path) -> None:
    """Ten invalid commands end the session with a clear -ERR; fewer are simply answered."""
    s = Server(tmp_path)
    client = s.connect()
    for _ in range(9):
        assert client.command("BOGUS").startswith(b"-ERR unknown command")
    assert not client.closed
    assert client.command("BOGUS").endswith(b"too many invalid commands, closing connection\r\n")
    assert client.closed


def test_slow_partial_line_is_cut_off(tmp_path: Path) -> None:
    """Slowloris: a command line not completed within 60 s ends in -ERR and a close."""
    s = Server(tmp_path)
    client = s.connect()
    for _ in range(5):
        client.send(b"U")
        s.clock.advance(10)
    assert not client.closed
    s.clock.advance(11)
    assert client.take().startswith(b"-ERR command line not completed within 60 seconds")
    assert client.closed


def test_complete_lines_cancel_the_partial_line_timer(tmp_path: Path) -> None:
    """A command finished in time stops the partial-line timer."""
    s = Server(tmp_path)
    client = s.connect()
    client.send(b"CA")
    s.clock.advance(30)
    assert client.send(b"PA\r\n").startswith(b"+OK")
    s.clock.advance(45)
    assert not client.closed


def test_blank_lines_do_not_count_as_invalid_commands(tmp_path: Path) -> None:
    """Blank lines get -ERR but never end the session (some clients send them as keep-alives)."""
    s = Server(tmp_path)
    client = s.connect()
    for _ in range(20):
        assert client.command("").startswith(b"-ERR")
    assert not client.closed
