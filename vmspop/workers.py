"""``--workers N``: several processes serve one vmspop, sharing its listening sockets.

One Python process uses one core (the GIL), so ``twistd vmspop`` runs a small
supervisor (the twistd process itself) and N worker processes:

* The supervisor binds every ``--pop3`` and ``--smtp`` socket (in
  ``privilegedStartService``, so ports below 1024 work with ``twistd --uid``), and
  never accepts on them.  It starts the workers with ``spawnProcess``, passing the
  sockets as inherited descriptors; each worker adopts them
  (``reactor.adoptStreamPort``) and serves connections with its own reactor.  The
  kernel hands each new connection to one of the workers waiting on the socket; a
  worker with more sessions than another stops accepting for a while
  (:mod:`vmspop.balance`), so the load spreads evenly.
* Shareable: ``tcp:``, ``tcp6:``, ``ssl:`` and ``systemd:`` INET/INET6 sockets, each
  also under ``haproxy:``.  A ``unix:`` socket is not (a worker would remove or
  re-mode the socket file when it stops or starts), nor is an endpoint type vmspop
  does not know; then the server runs in one process and says why in the log.
* Per-user locks already hold across processes (``flock`` in the store).
  ``--max-sessions`` and ``--max-sessions-per-ip`` hold for the server as a whole:
  the workers count in one shared table (:mod:`vmspop.tally`).  Failure penalties,
  the login-check limit per address, ``XTND STATS`` counters and the SMTP
  connection limit are each worker's own.
* Logs: a worker sends its log events, as text, to the supervisor through its standard
  output, and the supervisor re-emits them into its own log, so worker lines reach the
  same place (``-n``, ``--logfile``, syslog) in the same format as in one process
  (:mod:`vmspop.logrelay`).  A worker killed with SIGKILL loses the lines of its last
  :data:`~vmspop.logrelay.LOG_RELAY_DELAY`.
* SIGTERM (or SIGINT) to the supervisor closes its listening sockets and sends
  SIGTERM to every worker; each drains as one process does (``--shutdown-grace``),
  and the supervisor exits after the last one.  A worker still there
  :data:`STOP_MARGIN` seconds after the grace period is killed.  A worker whose
  supervisor disappears sees its standard input close and drains the same way.
* A worker that dies unexpectedly is logged and restarted, after a delay that
  doubles while it keeps dying young (:data:`RESTART_DELAY` to :data:`MAX_RESTART_DELAY`).

The embedding API is unchanged: :func:`vmspop.server.make_service` serves in the
calling process unless asked for workers (``workers=True``).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints, error, main
from twisted.internet.abstract import isIPv6Address
from twisted.internet.interfaces import IReadDescriptor, IStreamServerEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from vmspop.balance import AcceptBalance, BalancedTally
from vmspop.config import MAX_WORKERS, ServerConfig
from vmspop.logrelay import Relay, ToSupervisor, split_lines
from vmspop.processwide import keep_freed_memory, settle_garbage_collector
from vmspop.server import build_service
from vmspop.tally import SharedTally

__all__ = ["WorkerPool", "default_workers", "make_worker_pool", "plan_listeners", "worker_main"]

#: A worker that died is restarted after this long at first: long enough that a worker
#: dying at start-up does not spin, short enough that a one-off crash is hardly noticed
#: (the other workers serve meanwhile, and new connections wait in the listen queue).
RESTART_DELAY = 0.5
#: The restart delay doubles up to this while a worker keeps dying young.
MAX_RESTART_DELAY = 30.0
#: A worker that ran this long before dying was not in a crash loop: back to RESTART_DELAY.
STABLE_AFTER = 60.0
#: Seconds after --shutdown-grace before the supervisor kills a worker that has not
#: exited: its own grace period ends first, and closing the last sessions takes a moment.
STOP_MARGIN = 10.0
#: systemd's socket-activation variables: they describe the supervisor's descriptors,
#: not a worker's (a worker gets its sockets from the supervisor instead).
_SYSTEMD_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_FAMILIES = {socket.AF_INET: "INET", socket.AF_INET6: "INET6"}
_SHAREABLE = "only tcp:, tcp6:, ssl: and systemd: INET/INET6 sockets (also under haproxy:) can be shared"

_log = Logger(namespace="vmspop")


def default_workers() -> int:
    """One worker per core this process may run on (at most :data:`~vmspop.config.MAX_WORKERS`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


# -- the supervisor ---------------------------------------------------------------------

@dataclass(frozen=True)
class Listener:
    """One listening socket the workers share.

    Attributes:
        description: the endpoint string as configured.
        leaf: the endpoint under a ``haproxy:`` prefix (else ``description``).
        proxy: True under ``haproxy:`` (each worker reads the PROXY header itself).
        ssl: True for an ``ssl:`` leaf (each worker re-reads its PEM files).
    """

    description: str
    leaf: str
    proxy: bool
    ssl: bool


def plan_listeners(config: ServerConfig, reactor: Any) -> tuple[list[Listener], str | None]:
    """The sockets the workers would share, or why one of them cannot be shared.

    Raises:
        ValueError: an endpoint description cannot be parsed (as in a single process).
    """
    descriptions = list(config.pop3) + ([] if config.no_smtp else list(config.smtp))
    listeners = []
    for description in descriptions:
        endpoints.serverFromString(reactor, description)  # the single-process check first
        prefix, _, rest = description.partition(":")
        proxy = prefix.lower() == "haproxy"
        leaf = rest if proxy else description
        endpoint = endpoints.serverFromString(reactor, leaf)
        if isinstance(endpoint, (endpoints.UNIXServerEndpoint, endpoints.AdoptedStreamServerEndpoint)):
            if getattr(endpoint, "addressFamily", socket.AF_UNIX) == socket.AF_UNIX:
                return [], (f"{description} is a Unix socket, which the workers cannot share "
                            "(each would remove or re-mode its file)")
        elif not isinstance(endpoint, (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint,
                                       endpoints.SSL4ServerEndpoint)):
            return [], f"{description}: {_SHAREABLE}"
        listeners.append(Listener(description, leaf, proxy,
                                  isinstance(endpoint, endpoints.SSL4ServerEndpoint)))
    return listeners, None


def make_worker_pool(config: ServerConfig, reactor: Any) -> MultiService:
    """The service of ``twistd vmspop``: ``config.workers`` processes (None: one per core),
    or a single process when that is 1 or an endpoint cannot be shared (logged).

    Raises:
        ValueError: an endpoint description cannot be parsed.
    """
    count = config.workers if config.workers is not None else default_workers()
    if count == 1:
        return build_service(config, reactor)
    listeners, why = plan_listeners(config, reactor)
    if why is not None:
        _log.warn("workers: serving in one process, not {count}: {why}", count=count, why=why)
        return build_service(config, reactor)
    top = MultiService()
    WorkerPool(config, reactor, listeners, count).setServiceParent(top)
    return top


class _NoConnections(Factory):
    """The supervisor never accepts; should it ever, the connection is closed at once."""

    noisy = False

    def buildProtocol(self, addr: Any) -> None:
        return None


class _Binder:
    """Stands in for the reactor under an endpoint, in the supervisor: where the endpoint
    would create a listening port, bind and listen a plain socket and keep it."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> socket.socket:
        """As ``IReactorTCP.listenTCP`` binds (SO_REUSEADDR, IPv6 scope ids), without a Port."""
        family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                address: Any = socket.getaddrinfo(interface, port, family, socket.SOCK_STREAM, 0,
                                                  socket.AI_NUMERICHOST | socket.AI_PASSIVE)[0][4]
            else:
                address = (interface, port)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)  # the workers' reactors need it; the flag is shared
        except OSError as e:
            sock.close()
            raise error.CannotListenError(interface, port, e) from e
        self.sockets.append(sock)
        return sock

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> socket.socket:
        """The TCP socket under an ``ssl:`` endpoint; TLS is each worker's business."""
        return self.listenTCP(port, factory, backlog, interface)

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> socket.socket:
        """A ``systemd:`` socket: keep a copy (the endpoint closes the original)."""
        sock = socket.socket(addressFamily, socket.SOCK_STREAM, fileno=os.dup(fileDescriptor))
        sock.setblocking(False)
        self.sockets.append(sock)
        return sock


def _bind(listener: Listener) -> socket.socket:
    binder = _Binder()
    outcome: list[Any] = []
    endpoints.serverFromString(binder, listener.leaf).listen(_NoConnections()).addBoth(outcome.append)
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    [sock] = binder.sockets
    return sock


def _child_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARIABLES}
    # The worker imports vmspop (and Twisted) from exactly where the supervisor did.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _how(reason: Failure) -> str:
    value = reason.value
    signal_number = getattr(value, "signal", None)
    if signal_number:
        try:
            return f"killed by signal {signal_number} ({signal.Signals(signal_number).name})"
        except ValueError:
            return f"killed by signal {signal_number}"
    return f"exit status {getattr(value, 'exitCode', 0) or 0}"


class _WorkerProcess(ProcessProtocol):
    """The supervisor's side of one worker: relays its log, reports its end."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.number = index + 1
        self.pid = 0
        self.started = 0.0
        self._err = b""

    def connectionMade(self) -> None:
        """Spawned: its pid is known."""
        self.pid = self.transport.pid
        # Structured observers can tell the workers apart; the text is unchanged.
        self._log = Relay(self.pool.observer, {"vmspop_worker": self.number, "vmspop_worker_pid": self.pid},
                          self._text)

    def outReceived(self, data: bytes) -> None:
        """Log records (:mod:`vmspop.logrelay`)."""
        self._log.received(data)

    def errReceived(self, data: bytes) -> None:
        """Anything written to the real standard error (a crash before logging started)."""
        lines, self._err = split_lines(self._err + data)
        for line in lines:
            self._text(line)

    def _text(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            _log.warn("worker {number} (pid={pid}): {text}", number=self.number, pid=self.pid,
                      text=text)

    def processEnded(self, reason: Failure) -> None:
        """The worker exited (all its output has been relayed by now)."""
        self._log.ended()
        if self._err:
            self._text(self._err)
            self._err = b""
        self.pool.ended(self, reason)


class WorkerPool(Service):
    """The supervisor: binds the shared sockets, starts, restarts and stops the workers.

    Args:
        config: the server settings (passed on to each worker).
        reactor: spawns processes and keeps time.
        listeners: from :func:`plan_listeners`.
        count: how many workers.
        observer: where the workers' log events go (default: the global log).
    """

    def __init__(self, config: ServerConfig, reactor: Any, listeners: list[Listener], count: int,
                 observer: Any = None) -> None:
        self.config = config
        self.reactor = reactor
        self.listeners = listeners
        self.count = count
        self.observer = observer if observer is not None else _log.observer
        self.sockets: list[socket.socket] = []
        self.tally: SharedTally | None = None
        self.workers: dict[int, _WorkerProcess] = {}
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, Any] = {}
        self._stopping = False
        self._stopped: defer.Deferred | None = None
        self._killer: Any = None

    def privilegedStartService(self) -> None:
        """Bind the sockets while twistd still has its privileges (ports below 1024)."""
        super().privilegedStartService()
        try:
            for listener in self.listeners:
                self.sockets.append(_bind(listener))
        except BaseException:
            self._close_sockets()
            raise

    def startService(self) -> None:
        """Start the workers."""
        super().startService()
        if not self.sockets:  # started without privilegedStartService (not by twistd)
            self.privilegedStartService()
        self.tally = SharedTally.create(self.count, self.config.max_sessions)
        _log.info("workers: {count} processes share {endpoints}", count=self.count,
                  endpoints=", ".join(listener.description for listener in self.listeners))
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        assert self.tally is not None
        first = 4  # 0-2 are the standard streams, 3 the session tally
        spec = {
            "worker": index, "workers": self.count, "tally": 3,
            "settings": self.config.to_settings(),
            "listeners": [{"fd": first + i, "description": listener.description,
                           "family": _FAMILIES[sock.family], "proxy": listener.proxy,
                           "ssl": listener.leaf if listener.ssl else None}
                          for i, (listener, sock) in enumerate(zip(self.listeners, self.sockets))],
        }
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", 3: self.tally.fd}
        child_fds.update({first + i: sock.fileno() for i, sock in enumerate(self.sockets)})
        process = _WorkerProcess(self, index)
        transport = self.reactor.spawnProcess(
            process, sys.executable,
            [sys.executable, "-P", "-m", "vmspop.workers", f"{index + 1}/{self.count}"],
            env=_child_environment(), childFDs=child_fds)
        process.started = self.reactor.seconds()
        # The worker reads this first line; its standard input then stays open as long
        # as the supervisor lives.
        transport.write(json.dumps(spec).encode("utf-8") + b"\n")
        self.workers[index] = process
        _log.info("worker {number} started: pid={pid}", number=index + 1, pid=transport.pid)

    def ended(self, process: _WorkerProcess, reason: Failure) -> None:
        """A worker exited: count its sessions out, then restart it or finish stopping."""
        if self.workers.get(process.index) is process:
            del self.workers[process.index]
        if self.tally is not None:
            self.tally.forget(process.index)
        if self._stopping:
            _log.info("worker {number} (pid={pid}) stopped: {how}", number=process.number,
                      pid=process.pid, how=_how(reason))
            self._maybe_stopped()
            return
        uptime = self.reactor.seconds() - process.started
        previous = self._delays.get(process.index)
        delay = (RESTART_DELAY if previous is None or uptime >= STABLE_AFTER
                 else min(MAX_RESTART_DELAY, previous * 2))
        self._delays[process.index] = delay
        _log.error("worker {number} (pid={pid}) exited unexpectedly ({how}) after {uptime:.1f} s; "
                   "restarting it in {delay:g} s", number=process.number, pid=process.pid,
                   how=_how(reason), uptime=uptime, delay=delay)
        self._restarts[process.index] = self.reactor.callLater(delay, self._spawn, process.index)

    def stopService(self) -> defer.Deferred:
        """Stop listening, tell every worker to drain, and wait until all have exited."""
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        self._close_sockets()
        for process in list(self.workers.values()):
            try:
                process.transport.signalProcess("TERM")
            except error.ProcessExitedAlready:
                pass
        self._stopped = defer.Deferred()
        if self.workers:
            self._killer = self.reactor.callLater(self.config.shutdown_grace + STOP_MARGIN, self._kill)
        self._maybe_stopped()
        return self._stopped

    def _kill(self) -> None:
        self._killer = None
        for process in list(self.workers.values()):
            _log.error("worker {number} (pid={pid}) did not stop in time; killing it",
                       number=process.number, pid=process.pid)
            try:
                process.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

    def _maybe_stopped(self) -> None:
        if self.workers or self._stopped is None or self._stopped.called:
            return
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        if self.tally is not None:
            self.tally.close()
            self.tally = None
        self._stopped.callback(None)

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []


# -- a worker ---------------------------------------------------------------------------

class _Adopter:
    """Stands in for the reactor under an endpoint, in a worker: where the endpoint would
    bind, adopt the socket inherited from the supervisor instead (with TLS for ssl:)."""

    def __init__(self, reactor: Any, fd: int, family: int,
                 balance: AcceptBalance | None = None) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family
        self.balance = balance

    def adopt(self, factory: Any) -> Any:
        """Listen on the inherited socket with ``factory``."""
        port = self.reactor.adoptStreamPort(self.fd, self.family, factory)
        os.close(self.fd)  # adoptStreamPort works on a duplicate
        _wake_one_worker(self.reactor, port.fileno())
        if self.balance is not None:
            self.balance.add(port)
        return port

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        """What ``reactor.listenSSL`` does, on the inherited socket."""
        return self.adopt(TLSMemoryBIOFactory(contextFactory, False, factory))


def _wake_one_worker(reactor: Any, fd: int) -> bool:
    """Have a new connection wake one of the workers waiting on the shared socket.

    Every worker's epoll waits on the same listening socket, and by default the
    kernel wakes them all for each connection; all but one then find nothing to
    accept (80 % of the accept() calls in a one-client test).  ``EPOLLEXCLUSIVE``
    (Linux 4.5) wakes one.  Twisted's epoll reactor has no way to ask for it, so the
    socket's registration is replaced by one with the flag; Twisted never modifies
    the registration of a listening socket (it only reads) and removes it as usual.

    Returns:
        True when done; False with another reactor or an older kernel (all wake).
    """
    poller = getattr(reactor, "_poller", None)
    exclusive = getattr(select, "EPOLLEXCLUSIVE", 0)
    if not exclusive or not isinstance(poller, getattr(select, "epoll", ())):
        return False
    try:
        poller.unregister(fd)
        poller.register(fd, select.EPOLLIN | exclusive)
    except OSError:
        poller.register(fd, select.EPOLLIN)
        return False
    return True


@implementer(IStreamServerEndpoint)
class _Inherited:
    """An endpoint over an inherited listening socket."""

    def __init__(self, adopter: _Adopter) -> None:
        self.adopter = adopter

    def listen(self, protocolFactory: Any) -> defer.Deferred:
        """Adopt the socket."""
        return defer.execute(self.adopter.adopt, protocolFactory)


@implementer(IStreamServerEndpoint)
class _Checked:
    """Records a listening failure, so that the worker can exit (and be restarted) rather
    than run without one of its sockets."""

    def __init__(self, endpoint: Any, description: str, failures: list[str]) -> None:
        self.endpoint = endpoint
        self.description = description
        self.failures = failures

    def listen(self, protocolFactory: Any) -> defer.Deferred:
        """Listen through the wrapped endpoint."""
        def failed(reason: Failure) -> Failure:
            self.failures.append(f"{self.description}: {reason.getErrorMessage()}")
            return reason
        return self.endpoint.listen(protocolFactory).addErrback(failed)


def _inherited_endpoint(reactor: Any, listener: dict[str, Any], failures: list[str],
                        balance: AcceptBalance) -> Any:
    adopter = _Adopter(reactor, listener["fd"], getattr(socket, "AF_" + listener["family"]), balance)
    endpoint: Any = (endpoints.serverFromString(adopter, listener["ssl"]) if listener["ssl"]
                     else _Inherited(adopter))
    if listener["proxy"]:
        endpoint = proxyEndpoint(endpoint)
    return _Checked(endpoint, listener["description"], failures)


@implementer(IReadDescriptor)
class _SupervisorWatch:
    """Standard input stays open while the supervisor lives; its end means drain and exit."""

    def __init__(self, gone: Any) -> None:
        self.gone = gone

    def fileno(self) -> int:
        """Standard input."""
        return 0

    def logPrefix(self) -> str:
        """For Twisted's log."""
        return "supervisor"

    def doRead(self) -> Any:
        """Nothing more is ever written; only the end matters."""
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return None
        return None if data else main.CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        """The supervisor is gone."""
        self.gone()


def _read_spec() -> dict[str, Any]:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 65536)
        if not chunk:
            raise SystemExit("vmspop worker: no configuration on standard input")
        line += chunk
    spec = json.loads(line)
    if not isinstance(spec, dict):
        raise SystemExit("vmspop worker: bad configuration on standard input")
    return spec


def _log_to_supervisor() -> None:
    from twisted.logger import globalLogBeginner
    observer = ToSupervisor()
    atexit.register(observer.flush)  # also after an uncaught exception
    globalLogBeginner.beginLoggingTo([observer])


def worker_main() -> None:
    """A worker process (``python -P -m vmspop.workers N/COUNT``), started by :class:`WorkerPool`.

    A process entry point, like :func:`vmspop.tap.makeService`: the one other place
    that takes the global reactor.
    """
    spec = _read_spec()
    _log_to_supervisor()
    keep_freed_memory()
    from twisted.internet import reactor

    config = ServerConfig.from_settings(spec["settings"])
    failures: list[str] = []
    tally = SharedTally(spec["tally"], worker=spec["worker"])

    def resume(port: Any) -> None:
        port.startReading()
        _wake_one_worker(reactor, port.fileno())

    balance = AcceptBalance(reactor, tally, resume)
    by_description = {listener["description"]: _inherited_endpoint(reactor, listener, failures, balance)
                      for listener in spec["listeners"]}
    label = f"{spec['worker'] + 1} of {spec['workers']} (pid {os.getpid()})"
    service = build_service(config, reactor, endpoint=by_description.__getitem__,
                            tally=BalancedTally(tally, balance), worker=label)
    status = 0
    stopping = False

    def stop() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            try:
                reactor.stop()
            except error.ReactorNotRunning:
                pass  # already stopping by another way

    def on_signal(signum: int, frame: Any) -> None:
        reactor.callFromThread(stop)

    def start() -> None:
        nonlocal status
        # Twisted's own handlers would try to stop twice when both the supervisor and a
        # terminal (or systemd's control-group kill) send the signal.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # twistd rotates its log on SIGUSR1; a worker has no log file, and must not die of it.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        reactor.addReader(_SupervisorWatch(stop))
        service.startService()
        settle_garbage_collector()
        if failures:
            for failure in failures:
                _log.critical("worker cannot listen on {failure}", failure=failure)
            status = 1
            stop()

    reactor.addSystemEventTrigger("before", "shutdown", balance.stop)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.callWhenRunning(start)
    reactor.run()
    # A second SIGTERM (the supervisor's, after systemd's or a terminal's) must not
    # interrupt the exit: the drain is done.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(status)


if __name__ == "__main__":
    worker_main()
