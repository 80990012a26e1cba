"""Graceful shutdown: on SIGTERM, listeners close and sessions get a bounded time to finish.

The OpenVMS server's ``XTND SHUTDOWN`` waited for its clients to disconnect.  Here
twistd stops the services on SIGTERM: the endpoint services stop listening (new
connections are refused by the kernel), and :class:`DrainService` holds the
shutdown until the sessions of each factory have ended, or ``--shutdown-grace``
has passed.  Then the rest are cut: a POP3 session cut this way changes nothing
in its mailbox (no QUIT), one already in its QUIT update is let finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from vmspop.events import EventLog

__all__ = ["DrainService", "Drainable"]


class Drainable(Protocol):
    """A factory whose live sessions can be waited for and cut."""

    sessions: Any

    def cut(self, session: Any) -> bool:
        """Close ``session`` now; False if it must be let finish (e.g. a QUIT update)."""


class DrainService(Service):
    """Waits, at shutdown, for the sessions of some factories to end.

    Args:
        factories: the POP3 and SMTP factories.
        clock: for the grace period.
        grace: seconds to wait before cutting the sessions left.
        events: the operator's log.
        on_stopped: called once everything has ended (e.g. to log the statistics).
    """

    def __init__(self, factories: Iterable[Drainable], clock: IReactorTime, grace: float,
                 events: EventLog, on_stopped: Callable[[], None] | None = None) -> None:
        self.factories = list(factories)
        self.clock = clock
        self.grace = grace
        self.events = events
        self.on_stopped = on_stopped or (lambda: None)

    def _remaining(self) -> list[tuple[Drainable, Any]]:
        return [(f, s) for f in self.factories for s in list(f.sessions)]

    def stopService(self) -> defer.Deferred:
        """Wait for the sessions (at most ``grace`` seconds), then cut the rest."""
        super().stopService()
        done: defer.Deferred = defer.Deferred()
        remaining = self._remaining()
        if remaining:
            self.events.error("shutdown: waiting up to {grace:g} s for {count} session(s) to end",
                              grace=self.grace, count=len(remaining))
        deadline = self.clock.seconds() + self.grace
        cut = False

        def poll() -> None:
            nonlocal cut
            left = self._remaining()
            if not left:
                self.on_stopped()
                done.callback(None)
                return
            if not cut and self.clock.seconds() >= deadline:
                cut = True
                closed = sum(factory.cut(session) for factory, session in left)
                self.events.error("shutdown: closed {count} session(s) after the grace period",
                                  count=closed)
            self.clock.callLater(0.1, poll)

        poll()
        return done
