"""Micro-benchmark: what vmspop's RETR costs beyond the work any correct server does.

    .venv/bin/python benchmarks/retr_overhead.py [--rounds N]

One session of the real protocol class, on one end of a loopback socket pair (a
Twisted tcp.Server with a memory reactor), is fed ``RETR n`` for each message of the
bench corpus's mailbox that fits in one block; the other end is read empty after each
reply.  Timed: the protocol's ``dataReceived``, i.e. parsing, the session's checks,
reading the file, byte-stuffing and sending.  Against it, in the same process and
alternating round by round, the essential work alone: open, read, ``Stuffer`` and one
``sendmsg`` of the same reply.  The ratio of the two medians is steady on this VM
where absolute times drift by a fifth or more from minute to minute (end-to-end
figures need many runs to show a change of 10 %).  The reactor's own work per message
(epoll, ``doRead``) is outside both.
It prints numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from twisted.internet import defer, protocol, tcp, task  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import MemoryReactorClock  # noqa: E402
from twisted.logger import Logger  # noqa: E402

import corpus as corpus_mod  # noqa: E402
from vmspop.config import ServerConfig  # noqa: E402
from vmspop.events import EventLog  # noqa: E402
from vmspop.server import make_pop3_factory  # noqa: E402
from vmspop.transfer import BLOCK_SIZE  # noqa: E402
from vmspop.wire import Stuffer  # noqa: E402


def connect() -> tuple[tcp.Server, socket.socket]:
    """A tcp.Server on one end of a loopback TCP connection, and the other end."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    peer.setblocking(False)
    for s in (ours, peer):  # room for a whole reply: each send is one sendmsg
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * BLOCK_SIZE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * BLOCK_SIZE)
    transport = tcp.Server(ours, protocol.Protocol(), ("127.0.0.1", 1), None, 1, MemoryReactorClock())
    return transport, peer


def drain(peer: socket.socket) -> int:
    got = 0
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return got
        got += len(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of each (default 10)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vmspop-retr-"))
    corpus = corpus_mod.build(work / "corpus", bulk_users=1, big_mib=1, list_count=10, login_users=1)
    box = corpus.bulk[0]
    config = ServerConfig(mail_root=corpus.mailroot, passwd=corpus.users_file, hostname="bench.example",
                          auth_failure_delay=0.0, leave_in_newmail=True)
    factory = make_pop3_factory(config, task.Clock(), events=EventLog(logger=Logger(observer=lambda e: None)),
                                run_in_thread=defer.maybeDeferred)
    transport, peer = connect()
    session = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport.protocol = session
    session.makeConnection(transport)
    session.dataReceived(b"USER %s\r\nPASS %s\r\n" % (box.user.encode(), box.password.encode()))
    drain(peer)
    mbox = session.mbox
    numbers = [i + 1 for i in range(len(mbox.messages)) if os.path.getsize(mbox.messages.path(i)) <= BLOCK_SIZE]
    paths = [mbox.messages.path(n - 1) for n in numbers]
    octets = sum(mbox.size_at(n - 1) for n in numbers)
    sock = transport.socket

    def vmspop_round() -> float:
        spent = 0.0
        for n in numbers:
            line = b"RETR %d\r\n" % n
            start = time.perf_counter()
            session.dataReceived(line)
            spent += time.perf_counter() - start
            drain(peer)
        return spent / len(numbers)

    def essential_round() -> float:
        spent = 0.0
        for path in paths:
            start = time.perf_counter()
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.read(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
            stuffer = Stuffer()
            sock.sendmsg([b"+OK %d octets\r\n" % len(data), *stuffer.feed_parts(data), stuffer.finish()])
            spent += time.perf_counter() - start
            drain(peer)
        return spent / len(paths)

    vmspop_round(), essential_round()  # warm: page cache, listing, allocator
    ours, essential = [], []
    for _ in range(args.rounds):
        ours.append(vmspop_round())
        essential.append(essential_round())
    ratios = [a / b for a, b in zip(ours, essential)]
    print(f"{len(numbers)} messages of one block at most ({octets / len(numbers) / 1000:.1f} kB on average), "
          f"{args.rounds} rounds of each")
    print(f"vmspop RETR (dataReceived): median {statistics.median(ours) * 1e6:6.1f} us")
    print(f"essential work:             median {statistics.median(essential) * 1e6:6.1f} us "
          "(open, fstat, read, close, Stuffer, one sendmsg)")
    print(f"ratio: median {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
