"""Spreading connections evenly over the worker processes (``--workers``).

The workers share the listening sockets, and the kernel hands a new connection to
whichever worker waits on them first.  Clients that connect together then often
land on one worker: four at once went 3 and 1 (or 4 and 0) in 9 tries of 12 with
two workers, and the busier worker, held to one core by the GIL, slowed all of its
clients while the other sat idle (docs/performance.md).

So a worker that has more sessions than another (by more than :data:`MARGIN`)
stops accepting until that is no longer so, and accepts one connection per
wake-up, so that the next connection of a burst can go to another worker.  It
defers only to a worker that listens: each says so in the shared session table
(:mod:`vmspop.tally`), and one that drains or has died does not.

A worker learns of its own sessions at once, and of the others' by looking again
every :data:`RECHECK_INTERVAL` while it does not accept.  Then it also looks at the
listening sockets: a connection still waiting at the next look means that the
worker deferred to does not take it (it is stopped, or busy in one long step), so
this one accepts and defers to nobody for :data:`DISTRUST_PERIOD`.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from vmspop.tally import SharedTally

__all__ = ["AcceptBalance", "BalancedTally", "DISTRUST_PERIOD", "MARGIN", "RECHECK_INTERVAL"]

#: While a worker does not accept, other workers' sessions come and go without telling
#: it: it looks again this often.  Should every worker stop accepting at once (each
#: seeing the other a moment before), a connection waits this long at most, in the
#: listening socket's queue.
RECHECK_INTERVAL = 0.005
#: A worker stops accepting when it has more than this many sessions more than another.
#: One more is what short sessions coming and going make all the time: acting on it
#: would stop and start reading the sockets at nearly every session.
MARGIN = 1
#: A worker that defers to another that does not take the connections waiting (it is
#: stopped, or busy in one long step) accepts them itself, and defers to nobody for
#: this long.
DISTRUST_PERIOD = 1.0


class AcceptBalance:
    """Starts and stops accepting on a worker's listening ports by its share of sessions.

    Args:
        clock: the reactor, for the recheck timer.
        tally: the shared session table, as this worker.
        resume: starts reading a port again (the worker also restores its epoll flags).
    """

    def __init__(self, clock: IReactorTime, tally: SharedTally,
                 resume: Callable[[Any], None]) -> None:
        self._clock = clock
        self._tally = tally
        self._resume = resume
        self._ports: list[Any] = []
        self._accepting = True
        self._stopped = False
        self._waited = False
        self._trust_at = 0.0
        self._recheck = LoopingCall(self._look_again)
        self._recheck.clock = clock
        tally.set_listening(True)

    def add(self, port: Any) -> None:
        """Balance ``port`` (a ``twisted.internet.tcp.Port``) too."""
        self._ports.append(port)
        read = port.doRead

        def doRead() -> None:
            # Twisted accepts as many connections as are queued, up to numberAccepts,
            # which it raises while they keep coming: one, so that the next one of a
            # burst can go to another worker.
            port.numberAccepts = 1
            read()

        port.doRead = doRead
        if not self._accepting:
            port.stopReading()

    @property
    def accepting(self) -> bool:
        """Whether this worker accepts connections now."""
        return self._accepting

    def changed(self) -> None:
        """This worker's sessions changed: accept, or not."""
        if self._stopped or self._clock.seconds() < self._trust_at:
            return
        busier = self._tally.busier(MARGIN)
        if busier == self._accepting:
            self._set(not busier)

    def stop(self) -> None:
        """The worker stops listening (it drains, or exits): nobody is to defer to it."""
        self._stopped = True
        self._tally.set_listening(False)
        if self._recheck.running:
            self._recheck.stop()

    def _look_again(self) -> None:
        waiting = any(_readable(port) for port in self._live_ports())
        if waiting and self._waited:
            # A connection waited a whole interval and no worker took it: the one this
            # worker defers to is stopped or stuck.  Accept, and do not defer for a while.
            self._trust_at = self._clock.seconds() + DISTRUST_PERIOD
            self._set(True)
            return
        self._waited = waiting
        self.changed()

    def _set(self, accepting: bool) -> None:
        self._accepting = accepting
        self._waited = False
        for port in self._live_ports():
            if accepting:
                self._resume(port)
            else:
                port.stopReading()
        if accepting:
            self._recheck.stop()
        else:
            self._recheck.start(RECHECK_INTERVAL, now=False)

    def _live_ports(self) -> list[Any]:
        # A port closed by stopListening is not to be read again.
        return [port for port in self._ports if port.connected and not port.disconnecting]


def _readable(port: Any) -> bool:
    """True if connections wait in ``port``'s queue."""
    return bool(select.select([port.fileno()], [], [], 0)[0])


class BalancedTally:
    """A :class:`~vmspop.tally.SharedTally` that tells an :class:`AcceptBalance` when this
    worker's sessions change (it implements :class:`~vmspop.tally.SessionTally`)."""

    def __init__(self, tally: SharedTally, balance: AcceptBalance) -> None:
        self._tally = tally
        self._balance = balance

    def add(self, key: str | None, max_total: int, max_per_key: int) -> str | None:
        """Count a session in; see :meth:`vmspop.tally.SessionTally.add`."""
        refused = self._tally.add(key, max_total, max_per_key)
        if refused is None:
            self._balance.changed()
        return refused

    def rekey(self, old: str | None, new: str | None, max_per_key: int) -> str | None:
        """See :meth:`vmspop.tally.SessionTally.rekey`."""
        return self._tally.rekey(old, new, max_per_key)

    def remove(self, key: str | None) -> None:
        """Count a session out; see :meth:`vmspop.tally.SessionTally.remove`."""
        self._tally.remove(key)
        self._balance.changed()

    def total(self) -> int:
        """See :meth:`vmspop.tally.SessionTally.total`."""
        return self._tally.total()

    def per_key(self, key: str) -> int:
        """See :meth:`vmspop.tally.SessionTally.per_key`."""
        return self._tally.per_key(key)
