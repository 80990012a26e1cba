"""Assembling a POP3 server: the factory, the portal, and the service for twistd or a host application.

This is vmspop's embedding API (re-exported from :mod:`vmspop`)::

    from vmspop import ServerConfig, make_service
    make_service(ServerConfig(mail_root=..., passwd=...), reactor).setServiceParent(application)

or, for one listener you manage yourself, :func:`make_pop3_factory`.
"""

from __future__ import annotations

import itertools
import platform
import secrets
import time
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.interfaces import IAddress, IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import ServerFactory

from vmspop._version import __version__
from vmspop.auth import AccountChecker, MailRealm, SessionPortal
from vmspop.config import ServerConfig
from vmspop.drain import DrainService
from vmspop.events import EventLog
from vmspop.limits import address_key
from vmspop.passwd import PasswordFile
from vmspop.protocol import VMSPOP3
from vmspop.smtp import SMTPFactory
from vmspop.stats import ServerStats
from vmspop.store import MailStore
from vmspop.tally import LocalTally, SessionTally
from vmspop.threads import ThreadRunner, thread_runner
from vmspop.tls import TLSCertificate
from vmspop.transfer import BLOCK_SIZE, WHOLE_READ_LIMIT

__all__ = ["POP3Factory", "load_tls", "make_pop3_factory", "make_service", "make_smtp_factory"]

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


class POP3Factory(ServerFactory):
    """Builds :class:`~vmspop.protocol.VMSPOP3` connections and holds what they share.

    Args:
        config: the server settings.
        portal: the :class:`~vmspop.auth.SessionPortal` every login goes through.
        clock: timers (idle timeout); the reactor in production, a ``Clock`` in tests.
        run_in_thread: runs blocking file work off the reactor thread.
        events: the operator's log.
        tls: the certificate for STLS, or None when STLS is not offered.
    """

    protocol = VMSPOP3  # type: ignore[assignment]
    noisy = False  # vmspop logs its own events; "Starting factory" lines are noise

    def __init__(self, config: ServerConfig, portal: SessionPortal, clock: IReactorTime,
                 run_in_thread: ThreadRunner, events: EventLog, tls: TLSCertificate | None = None,
                 tally: SessionTally | None = None, worker: str | None = None) -> None:
        self.config = config
        self.tls = tls
        self.portal = portal
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.events = events
        self.implementation = f"vmspop-{__version__}"
        self.started = time.time()
        self.stats = ServerStats(started=self.started)
        self.stats_users = frozenset(u.lower() for u in config.stats_users)
        self.sessions: set[VMSPOP3] = set()
        #: Counts for --max-sessions(-per-ip): this process's, or every worker's (--workers).
        self.tally: SessionTally = tally if tally is not None else LocalTally()
        #: "2 of 4 (pid 4242)" in a worker process, for XTND STATS; None in a single process.
        self.worker = worker
        self._counted: dict[VMSPOP3, str | None] = {}
        self.block_size = BLOCK_SIZE
        self.whole_read_limit = WHOLE_READ_LIMIT
        self._challenges = itertools.count(1)

    def buildProtocol(self, addr: IAddress) -> VMSPOP3:
        """A new connection's protocol (an instance of :attr:`protocol`, which subclasses may set)."""
        return self.protocol(self)

    def admit(self, session: VMSPOP3, address: str | None) -> str | None:
        """Count a new connection in, or say why not (``--max-sessions``, ``--max-sessions-per-ip``).

        Args:
            session: the connection.
            address: its client address, or None while it is not known yet (behind a
                PROXY-protocol listener, until the header is read).  A session admitted
                so is admitted again with its address; if that is refused, the session
                is counted out here, since the caller closes it.
        """
        key = address_key(address) if address is not None else None
        limits = self.config
        if session not in self.sessions:
            refused = self.tally.add(key, limits.max_sessions, limits.max_sessions_per_ip)
            if refused is None:
                self.sessions.add(session)
                self._counted[session] = key
                self.stats.session_started(len(self.sessions))
        else:
            old = self._counted[session]
            if old == key:
                return None
            refused = self.tally.rekey(old, key, limits.max_sessions_per_ip)
            if refused is None:
                self._counted[session] = key
            else:
                self.release(session)
        if refused is not None:
            self.stats.refused_sessions += 1
        return refused

    def cut(self, session: VMSPOP3) -> bool:
        """Close a session at shutdown; one in its QUIT update is let finish."""
        return session.shutdown()

    def report(self) -> list[str]:
        """The ``XTND STATS`` lines."""
        users = sorted(s.mbox.user for s in self.sessions if s.mbox is not None)
        extra = []
        if self.worker is not None:
            # Every other figure is this worker's own; say whose, and the server's total.
            extra = [f"Worker : {self.worker}", f"All Workers Threads : {self.tally.total()}"]
        return self.stats.report(version=__version__, log_level=self.config.log_level,
                                 current_sessions=len(self.sessions), current_users=users,
                                 extra=extra)

    def release(self, session: VMSPOP3) -> None:
        """Count a closed connection out (once; a connection never admitted is ignored)."""
        if session in self.sessions:
            self.sessions.discard(session)
            self.tally.remove(self._counted.pop(session, None))

    def challenge(self) -> bytes:
        """A fresh APOP timestamp, in the OpenVMS server's shape.

        ``<random.N_26_NOV_2026_10_46_46_15@host>``: 64 random bits make it
        unpredictable, the counter and the connection time make it unique.
        """
        now = self.clock.seconds()
        t = time.gmtime(now)
        stamp = (f"{t.tm_mday}_{_MONTHS[t.tm_mon - 1]}_{t.tm_year}_{t.tm_hour:02d}_"
                 f"{t.tm_min:02d}_{t.tm_sec:02d}_{int((now % 1) * 100):02d}")
        token = secrets.token_hex(8).upper()
        return f"<{token}.{next(self._challenges)}_{stamp}@{self.config.hostname}>".encode("ascii")

    def greeting(self, challenge: str) -> str:
        """The greeting text, after the OpenVMS one, ending with the APOP challenge."""
        up = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.started))
        return (f"POP server vmspop {__version__}, {platform.system()} at {self.config.hostname}, "
                f"up since {up} {challenge}")


def load_tls(config: ServerConfig, events: EventLog) -> TLSCertificate | None:
    """The ``--tls-cert``/``--tls-key`` pair, or None when TLS is not configured.

    Raises:
        TLSError: the files cannot be used.
    """
    if config.tls_cert is None or config.tls_key is None:
        return None
    return TLSCertificate(config.tls_cert, config.tls_key,
                          on_error=lambda text: events.error("{text}", text=text))


def _defaults(config: ServerConfig, reactor: Any, events: EventLog | None,
              run_in_thread: ThreadRunner | None,
              tls: TLSCertificate | None) -> tuple[EventLog, ThreadRunner, TLSCertificate | None]:
    events = events if events is not None else EventLog(config.log_level, config.trace)
    run = run_in_thread if run_in_thread is not None else thread_runner(reactor)
    return events, run, tls if tls is not None else load_tls(config, events)


def make_pop3_factory(config: ServerConfig, reactor: Any, events: EventLog | None = None,
                      run_in_thread: ThreadRunner | None = None,
                      tls: TLSCertificate | None = None, *, tally: SessionTally | None = None,
                      worker: str | None = None) -> POP3Factory:
    """Build a POP3 factory with its store, password file, checker, realm and portal.

    Args:
        config: the server settings.
        reactor: provides time and the thread pool.
        events: the operator's log (default: one built from ``config``).
        run_in_thread: default: the reactor's thread pool.
        tls: the STLS certificate (default: loaded from ``config``).
        tally: where sessions are counted (default: in this process only).
        worker: this worker's description for ``XTND STATS`` (worker processes only).
    """
    events, run, tls = _defaults(config, reactor, events, run_in_thread, tls)
    store = MailStore(config.mail_root, config.hostname)
    checker = AccountChecker(PasswordFile(config.passwd), store, run, events,
                             pam_service=config.pam_service if config.auth == "pam" else None)
    realm = MailRealm(store, run, use_mail_folder=config.use_mail_folder,
                      leave_in_newmail=config.leave_in_newmail,
                      message_maximum=config.message_maximum,
                      id_server=(f"{config.hostname} vmspop {__version__}"
                                 if config.send_id_headers else None))
    portal = SessionPortal(realm, [checker], clock=reactor, failure_delay=config.auth_failure_delay,
                           events=events, run_in_thread=run)
    return POP3Factory(config, portal, reactor, run, events, tls, tally=tally, worker=worker)


def make_smtp_factory(config: ServerConfig, reactor: Any, events: EventLog | None = None,
                      run_in_thread: ThreadRunner | None = None,
                      tls: TLSCertificate | None = None) -> SMTPFactory:
    """Build the SMTP factory that delivers mail for vmspop's users into NEWMAIL.

    Args:
        config: the server settings.
        reactor: provides time and the thread pool.
        events: the operator's log (default: one built from ``config``).
        run_in_thread: default: the reactor's thread pool.
        tls: the STARTTLS certificate (default: loaded from ``config``).
    """
    events, run, tls = _defaults(config, reactor, events, run_in_thread, tls)
    return SMTPFactory(config, MailStore(config.mail_root, config.hostname), PasswordFile(config.passwd),
                       run, reactor, events, tls=tls)


def make_service(config: ServerConfig, reactor: Any, *, workers: bool = False) -> MultiService:
    """A service listening on every ``--pop3`` and (unless ``--no-smtp``) ``--smtp`` endpoint.

    Args:
        config: the server settings.
        reactor: the reactor to listen and run on.
        workers: True to serve from ``config.workers`` worker processes that share the
            listening sockets (what ``twistd vmspop`` does; see :mod:`vmspop.workers`).
            False (the default) serves in this process, whatever ``config.workers`` says.

    Raises:
        ValueError: an endpoint description cannot be parsed.
    """
    if workers:
        from vmspop.workers import make_worker_pool  # here: embedding never loads it
        return make_worker_pool(config, reactor)
    return build_service(config, reactor)


def build_service(config: ServerConfig, reactor: Any, *,
                  endpoint: Callable[[str], IStreamServerEndpoint] | None = None,
                  tally: SessionTally | None = None, worker: str | None = None) -> MultiService:
    """The single-process service of :func:`make_service`, also what each worker runs.

    Args:
        config: the server settings.
        reactor: the reactor to listen and run on.
        endpoint: turns an endpoint description into the endpoint to listen on
            (default: ``serverFromString``; a worker adopts the supervisor's sockets).
        tally: where POP3 sessions are counted (default: in this process).
        worker: this worker's description for ``XTND STATS``.
    """
    top = MultiService()
    events = EventLog(config.log_level, config.trace)
    tls = load_tls(config, events)
    # one factory: one session count
    pop3_factory = make_pop3_factory(config, reactor, events, tls=tls, tally=tally, worker=worker)
    listeners: list[tuple[str, ServerFactory]] = [(d, pop3_factory) for d in config.pop3]
    drained: list[Any] = [pop3_factory]
    if not config.no_smtp:
        smtp_factory = make_smtp_factory(config, reactor, events, tls=tls)
        listeners += [(description, smtp_factory) for description in config.smtp]
        drained.append(smtp_factory)

    def log_statistics() -> None:
        events.statistics(pop3_factory.report())

    def parse(description: str) -> IStreamServerEndpoint:
        return endpoints.serverFromString(reactor, description)

    # Added first, so stopped last: the listeners close, then the sessions drain.
    DrainService(drained, reactor, config.shutdown_grace, events, log_statistics).setServiceParent(top)
    for description, factory in listeners:
        StreamServerEndpointService((endpoint or parse)(description), factory).setServiceParent(top)
    return top
