"""LineQueue: pipelined lines run one at a time, in order, and a held line stops the rest."""

from __future__ import annotations

from typing import Any

from vmspop.pipeline import LineQueue


class FakeTransport:
    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False


def queue(handle: Any, max_pending: int = 100) -> tuple[LineQueue, FakeTransport]:
    transport = FakeTransport()
    return LineQueue(handle, lambda: transport, max_pending), transport


def holding_on(hold: bytes, max_pending: int = 100) -> tuple[LineQueue, FakeTransport, list[bytes]]:
    """A queue that records the lines it runs and holds on the line ``hold``."""
    ran: list[bytes] = []

    def handle(line: bytes) -> None:
        ran.append(line)
        if line == hold:
            q.hold()

    q, transport = queue(handle, max_pending)
    return q, transport, ran


def test_a_line_that_arrives_while_one_runs_waits_its_turn() -> None:
    """A single line runs at once; one added while it runs follows it, not inside it."""
    ran: list[bytes] = []

    def handle(line: bytes) -> None:
        ran.append(line)
        if line == b"first":
            q.add([b"second"])
            assert ran == [b"first"]

    q, _ = queue(handle)
    q.add([b"first"])
    assert ran == [b"first", b"second"]
    assert len(q) == 0


def test_a_held_line_keeps_the_next_waiting_until_release() -> None:
    q, _, ran = holding_on(b"login")
    q.add([b"login"])
    q.add([b"STAT"])
    q.add([b"LIST", b"QUIT"])
    assert ran == [b"login"]
    assert len(q) == 3
    q.release()
    assert ran == [b"login", b"STAT", b"LIST", b"QUIT"]


def test_waiting_input_beyond_the_bound_pauses_the_transport_until_it_runs() -> None:
    q, transport, ran = holding_on(b"hold", max_pending=10)
    q.add([b"hold"])
    q.add([b"x" * 6])
    assert not transport.paused
    q.add([b"y" * 6])  # 12 octets wait: over the bound
    assert transport.paused
    q.release()
    assert ran == [b"hold", b"x" * 6, b"y" * 6]
    assert not transport.paused
    q.add([b"z"])  # with nothing waiting, a single line runs at once again
    assert ran[-1] == b"z"


def test_nothing_runs_once_closed() -> None:
    ran: list[bytes] = []
    q, _ = queue(ran.append)
    q.closed = True
    q.add([b"NOOP"])
    q.add([b"STAT", b"QUIT"])
    assert ran == []
