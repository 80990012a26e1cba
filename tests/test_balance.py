"""Tests for vmspop.balance: spreading connections over the workers."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock

from vmspop.balance import DISTRUST_PERIOD, MARGIN, RECHECK_INTERVAL, AcceptBalance, BalancedTally
from vmspop.tally import SharedTally


class FakePort:
    """What AcceptBalance uses of a twisted.internet.tcp.Port, over a real listening socket
    (whose queue it looks at)."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.reading = True
        self.connected = True
        self.disconnecting = False
        self.numberAccepts = 100
        self.reads = 0

    def fileno(self) -> int:
        return self.socket.fileno()

    def doRead(self) -> None:
        self.reads += 1

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


_ports: list[FakePort] = []


@pytest.fixture
def workers(shared: tuple[SharedTally, SharedTally, SharedTally]) -> Iterator[tuple[SharedTally, ...]]:
    """Two workers' views of one session table (conftest's ``shared``); closes the ports."""
    yield shared
    while _ports:
        _ports.pop().socket.close()


def balanced(tally: SharedTally, clock: Clock) -> tuple[AcceptBalance, BalancedTally, FakePort]:
    """A worker's balance, its tally and one port it listens on."""
    balance = AcceptBalance(clock, tally, resume=lambda port: port.startReading())
    port = FakePort()
    _ports.append(port)
    balance.add(port)
    return balance, BalancedTally(tally, balance), port


def test_a_busier_worker_stops_accepting_until_it_is_not(workers) -> None:
    """More sessions than the other worker (beyond the margin): stop reading the port; the
    recheck sees the other catch up, or this worker's own sessions end."""
    _, first, second = workers
    clock = Clock()
    balance, counted, port = balanced(first, clock)
    other, other_counted, _ = balanced(second, clock)
    for _ in range(MARGIN):
        assert counted.add(None, 100, 100) is None
    assert balance.accepting and port.reading
    counted.add(None, 100, 100)
    assert not balance.accepting and not port.reading
    for _ in range(2):
        other_counted.add(None, 100, 100)  # the other worker's sessions: this one is not told...
    assert not port.reading
    clock.advance(RECHECK_INTERVAL)  # ...until it looks again
    assert balance.accepting and port.reading
    other_counted.remove(None)
    other_counted.remove(None)
    counted.add(None, 100, 100)
    assert not port.reading  # 3 against 0
    counted.remove(None)  # its own sessions end: it knows at once
    assert not port.reading
    counted.remove(None)
    assert port.reading
    assert other.accepting


def test_a_worker_takes_one_connection_per_wake_up(workers) -> None:
    """Twisted's accept loop is held to one connection, whatever it raised it to."""
    _, first, _ = workers
    _, _, port = balanced(first, Clock())
    port.numberAccepts = 21
    port.doRead()
    assert port.numberAccepts == 1 and port.reads == 1


def test_connections_nobody_takes_are_taken(workers) -> None:
    """A worker deferred to but not accepting (stopped, stuck): after a connection waited one
    whole recheck interval, this worker accepts and does not defer for a while."""
    _, first, second = workers
    clock = Clock()
    balance, counted, port = balanced(first, clock)
    balanced(second, clock)
    for _ in range(MARGIN + 1):
        counted.add(None, 100, 100)
    assert not port.reading
    with socket.create_connection(port.socket.getsockname()):
        clock.advance(RECHECK_INTERVAL)
        assert not port.reading  # waiting for the first time: the other may be about to take it
        clock.advance(RECHECK_INTERVAL)
        assert port.reading
        counted.add(None, 100, 100)
        assert port.reading  # not deferring
        clock.advance(DISTRUST_PERIOD)
        counted.add(None, 100, 100)
        assert not port.reading  # deferring again


def test_a_draining_worker_is_not_deferred_to_nor_reopened(workers) -> None:
    """stop(): the others stop deferring to this worker, and its closed port is left alone."""
    _, first, second = workers
    clock = Clock()
    balance, counted, port = balanced(first, clock)
    other, _, _ = balanced(second, clock)
    for _ in range(MARGIN + 1):
        counted.add(None, 100, 100)
    assert not port.reading
    other.stop()
    port.disconnecting = True  # this worker's own port closes too (stopListening)
    clock.advance(RECHECK_INTERVAL)
    assert not port.reading  # not busier now, but its port is closed: not read again
    assert balance.accepting
    balance.stop()
    assert not first.busier() and not second.busier()
    assert not clock.getDelayedCalls()
