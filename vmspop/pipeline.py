"""Pipelined input (RFC 2449 PIPELINING, RFC 2920): lines run one at a time, in order.

A command that answers later (a login, a message being stored or sent) holds the
queue until it is done; lines behind it wait.  Input waiting beyond a bound pauses
the transport, so a client cannot make the server buffer without limit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["LineQueue"]


class LineQueue:
    """The lines a connection has received and not yet handled.

    Args:
        handle: runs one line; it calls :meth:`hold` when its answer comes later.
        transport: returns the transport to pause and resume.
        max_pending: octets of waiting input beyond which the transport is paused.
    """

    def __init__(self, handle: Callable[[bytes], None], transport: Callable[[], Any],
                 max_pending: int) -> None:
        self._handle = handle
        self._transport = transport
        self._max_pending = max_pending
        self._lines: deque[bytes] = deque()
        self._octets = 0
        self._paused = False
        self._running = False
        self.busy = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._lines)

    def add(self, lines: list[bytes]) -> None:
        """Queue received lines and run what can run now."""
        if len(lines) == 1 and not (self._lines or self.busy or self._running or self._paused
                                    or self.closed):
            # The usual case, one command with nothing before it: it runs at once, with
            # no trip through the deque and no pause check (each RETR pays for them).
            self._running = True
            try:
                self._handle(lines[0])
            finally:
                self._running = False
            if self._lines:
                self.run()  # queued while it ran
            return
        for line in lines:
            self._lines.append(line)
            self._octets += len(line)
        self.run()

    def clear(self) -> None:
        """Forget the waiting lines (e.g. what was pipelined behind STLS)."""
        self._lines.clear()
        self._octets = 0

    def hold(self) -> None:
        """The current line answers later: hold the others until :meth:`release`."""
        self.busy = True

    def release(self, _: object = None) -> None:
        """The held line is answered: run the next ones."""
        self.busy = False
        self.run()

    def run(self) -> None:
        """Run waiting lines until one holds the queue."""
        # A held line whose answer was already there releases at once, inside this loop;
        # without the guard each such line would nest one call deeper (a RecursionError
        # after a few hundred pipelined LISTs).
        if self._running:
            return
        self._running = True
        try:
            while self._lines and not self.busy and not self.closed:
                line = self._lines.popleft()
                self._octets -= len(line)
                self._handle(line)
        finally:
            self._running = False
        full = self._octets > self._max_pending
        if full != self._paused and not self.closed:
            self._paused = full
            transport = self._transport()
            (transport.pauseProducing if full else transport.resumeProducing)()
