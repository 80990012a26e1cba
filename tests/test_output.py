"""vmspop.output: replies go to the socket at once, in order, and what the socket does
not take goes through the transport.  Run over real socket pairs and Twisted's own
tcp.Server (with a memory reactor), so a Twisted whose buffering changed fails here."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import protocol, tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from tests.live import start
from tests.support import CapturedLog, Server, counting_thread_calls
from vmspop import cached
from vmspop.events import EventLog
from vmspop.output import MAX_BACKLOG, MAX_PARTS, Output, direct_socket


needs_openat2 = pytest.mark.skipif(not cached.available(),
                                   reason="openat2 with RESOLVE_CACHED is not available here")


class Recording:
    """A socket that records the sends made on it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sends: list[bytes] = []

    def send(self, data: bytes) -> int:
        sent = self._sock.send(data)
        self.sends.append(data[:sent])
        return sent

    def sendmsg(self, parts: list[bytes]) -> int:
        sent = self._sock.sendmsg(parts)
        self.sends.append(b"".join(parts)[:sent])
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Link:
    """A tcp.Server transport on one end of a socket pair; the test reads the other."""

    def __init__(self, proto: protocol.Protocol | None = None) -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            self.peer = socket.create_connection(listener.getsockname())
            ours, _ = listener.accept()
        self.peer.setblocking(False)
        self.reactor = MemoryReactorClock()
        self.socket = Recording(ours)
        self.transport = tcp.Server(self.socket, proto or protocol.Protocol(), ("127.0.0.1", 1),
                                    None, 1, self.reactor)
        if proto is not None:
            proto.makeConnection(self.transport)

    def received(self) -> bytes:
        data = b""
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk

    def queued(self) -> bool:
        """The transport holds data and waits for the reactor to find the socket writable."""
        return self.transport in self.reactor.getWriters()

    def drain(self) -> bytes:
        """Read until the transport has sent everything it holds, as the reactor would."""
        data = self.received()
        while self.queued():
            self.transport.doWrite()
            data += self.received()
        return data

    def close(self) -> None:
        self.peer.close()
        self.socket.close()


@pytest.fixture
def link() -> Iterator[Link]:
    made = Link()
    yield made
    made.close()


def test_a_write_leaves_at_once(link: Link) -> None:
    out = Output(link.transport)
    out.write(b"+OK ready\r\n")
    assert link.received() == b"+OK ready\r\n"
    assert not link.queued()  # no pass through the reactor
    out.write(b"+OK 3 octets\r\n", b"abc\r\n", b".\r\n")
    assert link.received() == b"+OK 3 octets\r\nabc\r\n.\r\n"
    assert link.socket.sends == [b"+OK ready\r\n", b"+OK 3 octets\r\nabc\r\n.\r\n"]  # one sendmsg


def test_end_now_sends_the_end_at_once_when_every_reply_is_out(link: Link) -> None:
    out = Output(link.transport)
    out.write(b"+OK bye\r\n")
    out.end_now()
    assert link.received() == b"+OK bye\r\n"
    assert link.peer.recv(1) == b""  # the end, before any reactor turn


def test_end_now_waits_for_replies_held_or_queued(link: Link) -> None:
    out = Output(link.transport)
    out.cork()
    out.write(b"+OK held\r\n")
    out.end_now()
    link.transport.write(b"+OK queued\r\n")  # the transport holds it until the reactor's turn
    out.end_now()
    assert link.received() == b""
    with pytest.raises(BlockingIOError):
        link.peer.recv(1)  # neither data nor the end yet
    assert link.drain() == b"+OK queued\r\n"


class _IdleProducer:
    """A pull producer with nothing to give yet (a transfer between two blocks)."""

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def test_end_now_leaves_the_end_to_a_transfer_that_still_writes(link: Link) -> None:
    out = Output(link.transport)
    link.transport.registerProducer(_IdleProducer(), False)
    out.end_now()
    with pytest.raises(BlockingIOError):
        link.peer.recv(1)  # not ended: the producer may write more


def test_corked_writes_leave_together_at_the_outermost_uncork(link: Link) -> None:
    out = Output(link.transport)
    out.cork()
    out.write(b"+OK one\r\n")
    out.cork()  # a batch inside a batch (a command answered at once while the queue runs)
    out.write(b"+OK two\r\n")
    out.uncork()
    assert link.received() == b""
    out.write(b"+OK three\r\n")
    out.uncork()
    assert link.received() == b"+OK one\r\n+OK two\r\n+OK three\r\n"
    assert len(link.socket.sends) == 1
    out.write(b"+OK four\r\n")  # not corked any more
    assert link.received() == b"+OK four\r\n"


def test_flush_sends_what_is_held_and_stays_corked(link: Link) -> None:
    out = Output(link.transport)
    out.cork()
    out.write(b"+OK one\r\n")
    out.flush()
    assert link.received() == b"+OK one\r\n"
    out.write(b"+OK two\r\n")
    assert link.received() == b""
    out.uncork()
    assert link.received() == b"+OK two\r\n"


def test_what_the_socket_does_not_take_goes_through_the_transport_in_order(link: Link) -> None:
    link.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    out = Output(link.transport)
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers take
    out.write(b"+OK\r\n", big)
    assert link.queued()  # the rest waits in the transport for the reactor
    sends = len(link.socket.sends)
    out.write(b"after\r\n")  # must not overtake what waits
    assert len(link.socket.sends) == sends  # not sent: queued behind the rest
    assert link.drain() == b"+OK\r\n" + big + b"after\r\n"
    out.write(b"again\r\n")  # the transport is empty again: straight out
    assert link.received() == b"again\r\n" and link.socket.sends[-1] == b"again\r\n"


def test_views_the_socket_does_not_take_reach_the_transport_as_bytes(link: Link) -> None:
    """A Twisted transport refuses anything but bytes: parts that are views of a
    message (wire.double_dots) are joined before the transport gets them."""
    link.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    out = Output(link.transport)
    big = bytes(range(256)) * 4096
    view = memoryview(big)
    out.write(b"+OK\r\n", view[:1000], b".", view[1000:], b".\r\n")
    assert link.queued()
    assert all(type(part) is bytes for part in link.transport._tempDataBuffer)
    assert link.drain() == b"+OK\r\n" + big[:1000] + b"." + big[1000:] + b".\r\n"


def test_many_parts_are_joined_into_one_send(link: Link) -> None:
    out = Output(link.transport)
    parts = [b"%d\r\n" % i for i in range(MAX_PARTS + 1)]
    out.write(*parts)
    assert link.received() == b"".join(parts) and len(link.socket.sends) == 1


def test_through_transport_after_stls(link: Link) -> None:
    out = Output(link.transport)
    out.cork()
    out.write(b"+OK Begin TLS negotiation\r\n")
    out.through_transport()
    assert link.received() == b"+OK Begin TLS negotiation\r\n"  # in clear, before TLS
    out.write(b"secret\r\n")
    out.uncork()
    assert link.queued() and link.received() == b""  # the transport's (TLS) path now
    assert link.drain() == b"secret\r\n"


def test_a_broken_connection_is_left_to_the_transport() -> None:
    link = Link()
    link.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    link.peer.close()  # a reset (RST) at once
    out = Output(link.transport)
    with pytest.raises(ConnectionResetError):
        link.socket.send(b"x")  # what the socket says now
    out.write(b"+OK\r\n")  # no exception here
    assert link.queued()  # the reactor's doWrite meets the error and closes as usual
    assert isinstance(link.transport.doWrite(), Exception)
    link.socket.close()


def test_closing_or_closed_transports_are_not_written_around(link: Link) -> None:
    out = Output(link.transport)
    link.transport.loseConnection()
    out.write(b"-ERR bye\r\n")
    assert link.queued()  # written by the transport, before it closes
    assert link.drain() == b"-ERR bye\r\n"


def test_only_plain_socket_transports_are_written_around(link: Link) -> None:
    assert direct_socket(link.transport) is link.socket
    assert direct_socket(StringTransport()) is None
    out = Output(StringTransport())
    out.write(b"+OK\r\n", b"x")
    assert out._transport.value() == b"+OK\r\nx"


def test_a_pipelined_batch_is_answered_in_one_send(tmp_path: Path) -> None:
    server = Server(tmp_path)
    server.add_user("jones")
    server.deliver("jones", b"Subject: hi\n\n.dot\n")
    link = Link(server.factory.buildProtocol(("127.0.0.1", 1)))
    assert link.received().startswith(b"+OK") and len(link.socket.sends) == 1  # the greeting
    link.transport.protocol.dataReceived(b"USER jones\r\nPASS wonderland\r\nSTAT\r\nRETR 1\r\n")
    replies = link.received()
    assert replies.count(b"+OK") == 4 and replies.endswith(b"\r\n..dot\r\n.\r\n")
    assert len(link.socket.sends) == 2
    link.transport.protocol.dataReceived(b"QUIT\r\n")
    assert link.received().startswith(b"+OK POP server signing off")
    assert len(link.socket.sends) == 3
    link.close()


def test_backlog_counts_what_is_held_and_what_the_transport_holds(link: Link) -> None:
    link.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    out = Output(link.transport)
    assert out.backlog() == 0
    out.cork()
    out.write(b"+OK\r\n", b"x" * 1000)
    assert out.backlog() == 1005
    out.uncork()
    out.write(b"y" * (1 << 20))  # more than the socket takes
    queued = len(link.transport.dataBuffer) - link.transport.offset + link.transport._tempDataLen
    assert out.backlog() == queued > 0
    link.drain()
    assert out.backlog() == 0
    assert Output(StringTransport()).backlog() == 0  # a transport that cannot tell


def test_room_is_what_the_socket_would_take_now(link: Link) -> None:
    """About half the send buffer, less what is held or unsent; 0 once the transport queues."""
    link.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    out = Output(link.transport)
    room = out.room()
    assert 0 < room <= link.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
    out.cork()
    out.write(b"x" * 1000)
    assert out.room() == room - 1000  # what is held leaves first
    out.uncork()
    link.received()
    assert 0 < out.room() <= room  # the peer's acknowledgement may still be on its way
    out.write(b"y" * (8 << 20))  # more than the socket takes: the transport queues the rest
    assert link.queued() and out.room() == 0
    link.drain()
    assert Output(StringTransport()).room() == 0  # writes that go through the transport


@needs_openat2
@pytest.mark.parametrize("buffer, whole", [(1 << 20, True), (4096, False)])
def test_a_retr_larger_than_a_block_goes_whole_when_the_socket_takes_it(
        tmp_path: Path, buffer: int, whole: bool) -> None:
    """A message in memory, over a block and under the whole-read limit, is read and sent
    whole on the reactor thread if the socket has room for it; otherwise it is streamed
    in blocks through the pool.  The client gets the same octets either way."""
    server = Server(tmp_path)
    server.add_user("jones")
    server.factory.block_size = 4096
    server.factory.whole_read_limit = 64 * 1024
    body = b"".join(b".line %05d\n" % i for i in range(2500))  # 30 KB, every line dot-stuffed
    server.deliver("jones", b"Subject: big\n\n" + body)
    calls = counting_thread_calls(server)
    link = Link(server.factory.buildProtocol(("127.0.0.1", 1)))
    link.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
    link.received()
    proto = link.transport.protocol
    proto.dataReceived(b"USER jones\r\nPASS wonderland\r\n")
    link.received()
    del calls[:]
    proto.dataReceived(b"RETR 1\r\n")
    reply = link.drain()
    while proto._streamer is not None:  # a stream waits for the reactor to resume it
        link.transport.producer.resumeProducing()
        reply += link.drain()
    stored = b"Subject: big\n\n" + body
    wire = stored.replace(b"\n", b"\r\n")
    assert reply == (b"+OK %d octets\r\n" % len(wire) + wire.replace(b"\r\n.", b"\r\n..") + b".\r\n")
    assert (calls == []) == whole
    link.close()


def test_a_client_that_does_not_read_holds_one_backlog_of_replies(tmp_path: Path) -> None:
    """Pipelined RETRs wait while MAX_BACKLOG octets are unsent; all arrive once read."""
    server = Server(tmp_path)
    server.add_user("jones")
    body = b"".join(b"line %06d of a long message\n" % i for i in range(4000))  # ~120 KB
    server.deliver("jones", b"Subject: big\n\n" + body)
    link = Link(server.factory.buildProtocol(("127.0.0.1", 1)))
    link.received()
    proto = link.transport.protocol
    proto.dataReceived(b"USER jones\r\nPASS wonderland\r\n")
    link.received()
    proto.dataReceived(b"RETR 1\r\n" * 100)
    held = len(link.transport.dataBuffer) - link.transport.offset + link.transport._tempDataLen
    assert 0 < held <= MAX_BACKLOG + len(body) * 2  # not 100 messages
    replies = link.drain()
    assert replies.count(b"+OK ") == 100 and replies.count(b"\r\n.\r\n") == 100
    assert link.transport.producer is None  # the wait is over, nothing left registered
    proto.dataReceived(b"QUIT\r\n")
    assert link.received().startswith(b"+OK")
    link.close()


def test_the_wait_ends_when_the_connection_is_lost(tmp_path: Path) -> None:
    server = Server(tmp_path)
    server.add_user("jones")
    server.deliver("jones", b"Subject: big\n\n" + b"x" * 200_000 + b"\n")
    link = Link(server.factory.buildProtocol(("127.0.0.1", 1)))
    proto = link.transport.protocol
    proto.dataReceived(b"USER jones\r\nPASS wonderland\r\n" + b"RETR 1\r\n" * 100)
    assert link.transport.producer is not None  # waiting for the client to read
    link.transport.connectionLost(Failure(ConnectionDone()))
    assert link.transport.producer is None and proto._queue.closed
    assert server.files("jones", "NEWMAIL") and not server.files("jones", "MAIL")  # no QUIT
    link.close()


def test_held_info_lines_are_emitted_in_order_at_the_outermost_release() -> None:
    captured = CapturedLog()
    events = EventLog("info", logger=captured.logger)
    events.hold()
    events.login(user="jones", method="USER", rip="192.0.2.1", session="s1")
    events.hold()
    events.refused(rip="192.0.2.2", reason="too-many-sessions")
    events.release()
    events.error("disk {what}", what="full")  # warnings and errors are not held
    assert captured.lines() == ["disk full"]
    events.release()
    assert captured.lines()[1:] == ["login: user=<jones> method=USER rip=192.0.2.1 session=<s1>",
                                    "connection refused: rip=192.0.2.2 reason=too-many-sessions"]
    events.login(user="smith", method="APOP", rip="192.0.2.3", session="s2")  # not held now
    assert captured.lines()[-1].startswith("login: user=<smith>")


def test_log_lines_of_a_batch_follow_its_replies(tmp_path: Path) -> None:
    """The client waits for +OK, not for the log line: PASS and QUIT log after sending."""
    server = Server(tmp_path)
    server.add_user("jones")
    sends_at: dict[str, int] = {}
    link = Link(server.factory.buildProtocol(("127.0.0.1", 1)))
    server.log.logger.observer = lambda event: (sends_at.setdefault(
        event.get("line", "").split(":")[0], len(link.socket.sends)), server.log.events.append(event))
    link.transport.protocol.dataReceived(b"USER jones\r\nPASS wonderland\r\n")
    assert sends_at["login"] == 2  # the greeting, then USER's and PASS's replies in one send
    link.transport.protocol.dataReceived(b"QUIT\r\n")
    assert sends_at["logout"] == 3
    assert link.received().count(b"+OK") == 4
    link.close()


def test_a_session_that_said_goodbye_no_longer_counts(tmp_path: Path) -> None:
    """QUIT's reply leaves at once and the socket closes at the reactor's next turn; a
    client reconnecting in between must not find --max-sessions used up."""
    server = Server(tmp_path, max_sessions=1)
    server.add_user("jones")
    first = Link(server.factory.buildProtocol(("127.0.0.1", 1)))
    first.transport.protocol.dataReceived(b"USER jones\r\nPASS wonderland\r\nQUIT\r\n")
    assert first.received().count(b"+OK") == 4  # not closed yet: no reactor turn has run
    second = Link(server.factory.buildProtocol(("127.0.0.1", 2)))
    assert second.received().startswith(b"+OK POP server")
    first.close()
    second.close()


def test_a_unix_socket_listener_serves_with_direct_sends(reactor: Any, tmp_path: Path) -> None:
    """A unix: listener's connections (twisted.internet.unix.Server, a tcp.Connection,
    so replies go straight to its socket) are served byte for byte, with no error logged."""
    live = start(reactor, tmp_path)
    live.store.deliver(["jones"], [b"Subject: x\n\n.dot\nbody\n"])
    path = str(tmp_path / "pop.sock")
    port = blockingCallFromThread(reactor, reactor.listenUNIX, path, live.factory)
    errors: list[str] = []
    observer = lambda event: errors.append(str(event)) if event.get("log_level") == LogLevel.critical \
        or event.get("isError") else None  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(path)
            client.sendall(b"USER jones\r\nPASS wonderland\r\nRETR 1\r\nQUIT\r\n")
            received = b""
            while chunk := client.recv(65536):
                received += chunk
        assert received.startswith(b"+OK POP server") and received.count(b"+OK") == 5
        assert b"\r\n..dot\r\nbody\r\n.\r\n" in received
        assert errors == []
    finally:
        globalLogPublisher.removeObserver(observer)
        blockingCallFromThread(reactor, port.stopListening)
        live.stop()


def test_no_delay_is_set_on_the_connection_under_any_layer(link: Link) -> None:
    """Behind TLS or a PROXY-protocol wrapper, TCP_NODELAY goes on the TCP connection."""
    class Layer:  # what TLSMemoryBIOProtocol and HAProxyProtocolWrapper look like here
        def __init__(self, transport: Any) -> None:
            self.transport = transport

    link.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    Output(Layer(Layer(link.transport))).set_no_delay()
    assert link.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    Output(StringTransport()).set_no_delay()  # nothing under it: nothing to set
