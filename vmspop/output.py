"""A session's way out: replies go to the socket when they are written.

A Twisted transport buffers what it is given and sends it at the reactor's next turn,
once epoll says the socket is writable: per reply, two ``epoll_ctl`` calls, a pass
through the reactor, and a client that waits for all that.  :class:`Output` sends a
reply with one ``send``/``sendmsg`` at once when the transport has nothing queued
before it, and hands anything the socket does not take (or any error) to the
transport, which sends it, or meets the error and closes, in the usual way.  Replies
to a batch of pipelined commands are held (:meth:`Output.cork`) and leave together.

A client that pipelines commands and does not read its replies would make the
transport hold them all (8,000 pipelined RETRs of a 240 KB message: 1.2 GB).
:meth:`Output.backlog` tells how much waits unsent, and :meth:`Output.drained` waits
for it to go, so the next command can wait (see ``VMSPOP3._run``).

Sending around the transport relies on how :class:`twisted.internet.tcp.Connection`
buffers (``dataBuffer``/``offset``/``_tempDataLen``, its ``TLS`` flag);
:func:`direct_socket` checks these exist and otherwise every write takes the
transport's own path.  tests/test_output.py pins the behaviour on the installed Twisted.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Any

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

from vmspop.wire import Buffer

__all__ = ["MAX_BACKLOG", "Output", "direct_socket"]

#: Unsent octets beyond which the next command waits until they are sent: bounds the
#: memory a client that does not read can make a connection hold (one message more).
MAX_BACKLOG = 256 * 1024

#: Parts given to one sendmsg(); more are joined first (Linux takes at most 1024).
MAX_PARTS = 64

# The ioctl that tells the octets a socket holds unsent (SIOCOUTQ is TIOCOUTQ on Linux).
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)

_BUFFER_NAMES = ("dataBuffer", "offset", "_tempDataLen", "TLS", "connected", "disconnecting")


def direct_socket(transport: Any) -> socket.socket | None:
    """The socket of a plain TCP or UNIX connection, or None if writes must go through
    the transport (TLS, PROXY-protocol wrappers, test transports, an unknown Twisted)."""
    if _buffering(transport) is None or transport.TLS:
        return None
    return transport.getHandle()


def _buffering(transport: Any) -> tcp.Connection | None:
    """``transport`` if it is a TCP or UNIX connection whose buffer can be read."""
    if isinstance(transport, tcp.Connection) and all(hasattr(transport, n) for n in _BUFFER_NAMES):
        return transport
    return None


def _connection_under(transport: Any) -> tcp.Connection | None:
    """The TCP or UNIX connection under any TLS or PROXY-protocol layers."""
    while transport is not None and not isinstance(transport, tcp.Connection):
        transport = getattr(transport, "transport", None)
    return transport


class Output:
    """Writes one connection's replies, at once when nothing is queued before them."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._socket = direct_socket(transport)
        self._under = _connection_under(transport)
        self._connection = _buffering(self._under)
        self._corks = 0
        self._held: list[Buffer] = []
        self._held_octets = 0

    def set_no_delay(self) -> None:
        """Set TCP_NODELAY on the connection (under any TLS or PROXY layer): without it
        the final line of each RETR waits for the client's delayed ACK."""
        if self._under is not None:
            self._under.setTcpNoDelay(True)

    def write(self, *parts: Buffer) -> None:
        """Send ``parts`` in order, after everything written before.  Views may be
        among them (see wire.double_dots); they must stay unchanged until sent."""
        if self._corks:
            self._held.extend(parts)
            self._held_octets += sum(map(len, parts))
        else:
            self._send(list(parts), sum(map(len, parts)))

    def cork(self) -> None:
        """Hold what is written until the matching :meth:`uncork` (a batch of replies)."""
        self._corks += 1

    def uncork(self) -> None:
        """End a :meth:`cork`; after the outermost one, send what was held."""
        self._corks -= 1
        if not self._corks:
            self.flush()

    def flush(self) -> None:
        """Send what is held now.  Call it before anything else reaches the transport
        (a producer's writes, a close) so that the order holds."""
        if self._held:
            parts, octets = self._held, self._held_octets
            self._held, self._held_octets = [], 0
            self._send(parts, octets)

    def end_now(self) -> None:
        """Send the end of the stream (FIN) at once if every reply is out, instead of at
        the reactor's next turn: the client then need not wait for the session's log
        lines, which are written in between.  The transport still closes as usual, and
        not before a transfer (a producer) that still writes has ended."""
        if (self._socket is not None and not self._held and self._nothing_queued()
                and self._transport.producer is None):
            try:
                self._socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # gone already: the transport learns of it in its own way

    def room(self) -> int:
        """About how many octets the socket would take at once now: half its send buffer
        (the kernel counts its bookkeeping in it), less what it and this output hold
        unsent.  0 when writes go through the transport (TLS, another transport, data
        queued there) or the system cannot tell."""
        if self._socket is None or _OUTQ is None or not self._nothing_queued():
            return 0
        try:
            size = self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            unsent = struct.unpack("i", fcntl.ioctl(self._socket.fileno(), _OUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return 0
        return max(0, size // 2 - unsent - self._held_octets)

    def through_transport(self) -> None:
        """From now on write only through the transport (STLS: it encrypts from here)."""
        self.flush()
        self._socket = None

    def backlog(self) -> int:
        """Octets written and not sent yet (0 when the transport cannot tell, or
        the connection is gone)."""
        t = self._connection
        if t is None or not t.connected:
            return 0
        return _buffered(t) + self._held_octets

    def drained(self) -> defer.Deferred[None]:
        """Fires once the transport has sent everything; never if the connection is
        lost first (its end stops the session).  Not while a producer is registered on
        the transport (a transfer runs)."""
        done: defer.Deferred[None] = defer.Deferred()
        self.flush()
        self._transport.registerProducer(_DrainWaiter(self, self._transport, done), False)
        return done

    def _send(self, parts: list[Buffer], octets: int) -> None:
        if self._socket is not None and self._nothing_queued():
            try:
                if len(parts) == 1:
                    sent = self._socket.send(parts[0])
                elif len(parts) <= MAX_PARTS:
                    sent = self._socket.sendmsg(parts)
                else:
                    parts = [b"".join(parts)]
                    sent = self._socket.send(parts[0])
            except OSError:
                # Full (EAGAIN) or broken: the transport takes it all, and on a broken
                # connection meets the same error at the reactor's next turn.
                sent = 0
            if sent == octets:
                return  # the usual case: no need to find where the socket stopped
            parts = _unsent(parts, sent)
        if not all(type(part) is bytes for part in parts):
            parts = [b"".join(parts)]  # a transport takes bytes only
        self._transport.writeSequence(parts)

    def _nothing_queued(self) -> bool:
        t = self._transport
        return bool(t.connected and not t.disconnecting and not t.TLS and not _buffered(t))


def _buffered(connection: tcp.Connection) -> int:
    """Octets a TCP or UNIX connection holds unsent."""
    return len(connection.dataBuffer) - connection.offset + connection._tempDataLen


def _unsent(parts: list[Buffer], sent: int) -> list[Buffer]:
    """What is left of ``parts`` after the first ``sent`` octets went out."""
    for i, part in enumerate(parts):
        if sent < len(part):
            return [part[sent:] if sent else part, *parts[i + 1:]]
        sent -= len(part)
    return []


@implementer(IPullProducer)
class _DrainWaiter:
    """Registered as the transport's pull producer, which it asks for more data
    (:meth:`resumeProducing`) each time its buffer has emptied."""

    def __init__(self, output: Output, transport: Any, done: defer.Deferred[None]) -> None:
        self._output = output
        self._transport = transport
        self._done = done

    def resumeProducing(self) -> None:
        # Also called at registration, and under TLS on every cooperator step.
        if self._output.backlog() or self._done.called:
            return
        self._transport.unregisterProducer()
        self._done.callback(None)

    def stopProducing(self) -> None:
        # The connection is gone.  Firing would run the commands queued behind the
        # wait before the protocol learns of it, for nobody.
        pass
