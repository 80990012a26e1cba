"""A session's way out: replies go to the socket when they are written.

A Twisted transport buffers what it is given and sends it at the reactor's next turn,
once epoll says the socket is writable: per reply, two ``epoll_ctl`` calls, a pass
through the reactor, and a client that waits for all that.  :class:`Output` sends a
reply with one ``send``/``sendmsg`` at once when the transport has nothing queued
before it, and hands anything the socket does not take (or any error) to the
transport, which sends it, or meets the error and closes, in the usual way.  Replies
to a batch of pipelined commands are held (:meth:`Output.cork`) and leave together.

Sending around the transport relies on how :class:`twisted.internet.tcp.Connection`
buffers (``dataBuffer``/``offset``/``_tempDataLen``, its ``TLS`` flag);
:func:`direct_socket` checks these exist and otherwise every write takes the
transport's own path.  tests/test_output.py pins the behaviour on the installed Twisted.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp

__all__ = ["Output", "direct_socket"]

#: Parts given to one sendmsg(); more are joined first (Linux takes at most 1024).
MAX_PARTS = 64

_BUFFER_NAMES = ("dataBuffer", "offset", "_tempDataLen", "TLS", "connected", "disconnecting")


def direct_socket(transport: Any) -> socket.socket | None:
    """The socket of a plain TCP or UNIX connection, or None if writes must go through
    the transport (TLS, PROXY-protocol wrappers, test transports, an unknown Twisted)."""
    if not isinstance(transport, tcp.Connection):
        return None
    if not all(hasattr(transport, name) for name in _BUFFER_NAMES):
        return None
    return transport.getHandle()


class Output:
    """Writes one connection's replies, at once when nothing is queued before them."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._socket = direct_socket(transport)
        self._corks = 0
        self._held: list[bytes] = []

    def write(self, *parts: bytes) -> None:
        """Send ``parts`` in order, after everything written before."""
        if self._corks:
            self._held.extend(parts)
        else:
            self._send(list(parts))

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
            parts, self._held = self._held, []
            self._send(parts)

    def through_transport(self) -> None:
        """From now on write only through the transport (STLS: it encrypts from here)."""
        self.flush()
        self._socket = None

    def _send(self, parts: list[bytes]) -> None:
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
            parts = _unsent(parts, sent)
            if not parts:
                return
        self._transport.writeSequence(parts)

    def _nothing_queued(self) -> bool:
        t = self._transport
        return bool(t.connected and not t.disconnecting and not t.TLS
                    and not t._tempDataLen and len(t.dataBuffer) == t.offset)


def _unsent(parts: list[bytes], sent: int) -> list[bytes]:
    """What is left of ``parts`` after the first ``sent`` octets went out."""
    for i, part in enumerate(parts):
        if sent < len(part):
            return [part[sent:] if sent else part, *parts[i + 1:]]
        sent -= len(part)
    return []
