"""--workers: several processes share the listening sockets of one `twistd vmspop`.

The end-to-end tests run a real `twistd vmspop --workers 2`.  To make a connection
land on a chosen worker they stop the other one (SIGSTOP): a stopped process cannot
accept, so the kernel hands the connection to the one that runs.
"""

from __future__ import annotations

import io
import json
import os
import poplib
import select
import signal
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error, task
from twisted.logger import LogLevel, Logger, formatEvent, formatEventAsClassicLogText
from twisted.python.failure import Failure

from certs import make_certificate
from twistd import alive, free_port, start_twistd, wait_for, workers_of
from vmspop import workers as pool_module
from vmspop.config import ServerConfig
from vmspop.logrelay import ToSupervisor
from vmspop.passwd import Account, PasswordFile
from vmspop.server import make_service
from vmspop.store import MailStore
from vmspop.workers import WorkerPool, plan_listeners


def make_users(data: Path, *names: str) -> MailStore:
    store = MailStore(data / "mail")
    for name in names:
        PasswordFile(data / "passwd").update(name, lambda _, n=name: Account(n, "{PLAIN}wonderland"))
        store.create_mailbox(name)
    return store


def login(port: int, user: str) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    client.user(user)
    client.pass_("wonderland")
    return client


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def holding_the_tally(pids: list[int]) -> bool:
    """True if one of ``pids`` holds a POSIX record lock: the session tally's (Linux /proc/locks)."""
    held = {line.split()[4] for line in Path("/proc/locks").read_text().splitlines()
            if line.split()[1] == "POSIX"}
    return any(str(pid) in held for pid in pids)


@contextmanager
def only(worker: int, pids: dict[int, int]) -> Iterator[None]:
    """Every other worker is stopped meanwhile, so new connections go to ``worker``."""
    others = [pid for number, pid in pids.items() if number != worker]
    for _ in range(100):
        for pid in others:
            os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: all(_state(pid) == "T" for pid in others), "the workers to stop")
        # Never freeze a worker in the middle of counting: the one left would wait for it.
        if not holding_the_tally(others):
            break
        for pid in others:
            os.kill(pid, signal.SIGCONT)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def stats(port: int) -> dict[str, str]:
    client = login(port, "system")
    lines = client._longcmd("XTND STATS")[1]
    client.quit()
    return dict(line.decode().split(" : ", 1) for line in lines if b" : " in line)


def started(log: Path, port: int, count: int) -> bool:
    """True once ``count`` workers have adopted the socket of ``port``."""
    return log.exists() and log.read_text().count(f"starting on {port}\n") >= count


def test_two_workers_share_sessions_locks_and_limits(tmp_path: Path) -> None:
    """Both workers serve (also ssl: and haproxy: sockets); a mailbox locked on one is
    [IN-USE] on the other; --max-sessions counts the sessions of both; XTND STATS says
    which worker answers."""
    store = make_users(tmp_path, "jones", "smith", "brown", "system")
    store.deliver(["jones"], [b"Subject: a\n\nbody\n"])
    cert, key = make_certificate(tmp_path)
    port, tls_port, proxy_port, log = free_port(), free_port(), free_port(), tmp_path / "twistd.log"
    smtp_port = free_port()
    process = start_twistd(
        tmp_path, port, "--max-sessions", "4", "--stats-users", "system", "--hostname", "example.com",
        "--pop3", f"ssl:{tls_port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        "--pop3", f"haproxy:tcp:{proxy_port}:interface=127.0.0.1", logfile=str(log), workers=2,
        smtp=smtp_port)
    try:
        for listening in (port, tls_port, proxy_port, smtp_port):
            wait_for(lambda: started(log, listening, 2), "both workers")
        pids = workers_of(process.pid)
        assert sorted(pids) == [1, 2]
        for number in (1, 2):  # the SMTP listener is shared as well
            with only(number, pids), smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
                smtp.sendmail("a@example.org", ["jones@example.com"], f"Subject: s{number}\r\n\r\nx\r\n")
        for number in (1, 2):
            with only(number, pids):
                secure = poplib.POP3_SSL("127.0.0.1", tls_port, timeout=10,
                                         context=ssl.create_default_context(cafile=str(cert)))
                secure.user("smith")
                secure.pass_("wonderland")
                secure.quit()
                with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as proxied:
                    proxied.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 110\r\nQUIT\r\n")
                    assert proxied.recv(4096).startswith(b"+OK POP server")

        def sessions(user: str) -> None:
            for _ in range(15):
                client = login(port, user)
                client.stat()
                client.quit()

        threads = [threading.Thread(target=sessions, args=(user,)) for user in ("smith", "brown")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        served = {}
        for number in (1, 2):
            with only(number, pids):
                figures = stats(port)
            assert figures["Worker"] == f"{number} of 2 (pid {pids[number]})"
            # less the TLS and PROXY sessions above and this XTND STATS session
            served[number] = int(figures["Total Threads"]) - 3
        assert min(served.values()) >= 1 and sum(served.values()) == 30, served

        with only(1, pids):
            first = login(port, "jones")
            assert first.stat()[0] == 3  # the message delivered at the start, and one per worker
        with only(2, pids):
            second = poplib.POP3("127.0.0.1", port, timeout=10)
            second.user("jones")
            with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
                second.pass_("wonderland")
        second.quit()
        first.quit()

        # --max-sessions 4: four sessions on worker 1 leave no room on worker 2.  First,
        # the sessions above must be counted out (a worker does so once it sees the close).
        wait_for(lambda: stats(port)["All Workers Threads"] == "1", "the sessions to be counted out")
        with only(1, pids):
            held = [poplib.POP3("127.0.0.1", port, timeout=10) for _ in range(4)]
        with only(2, pids):
            assert greeting(port).startswith(b"-ERR [SYS/TEMP] too many sessions")
        quitting = "disconnected without login: rip=127.0.0.1"
        before = log.read_text().count(quitting)
        held.pop().quit()  # worker 1 gives the slot back when the connection has closed
        wait_for(lambda: log.read_text().count(quitting) > before, "worker 1 to count it out")
        with only(2, pids):
            assert greeting(port).startswith(b"+OK POP server")
        for client in held:
            client.quit()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert text.count("login: user=<jones>") == 1 and "reason=too-many-sessions" in text
    assert "rip=203.0.113.7" in text  # the PROXY header's address, from either worker


def greeting(port: int) -> bytes:
    """The first line a new connection gets (then QUIT)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        line = sock.makefile("rb").readline()
        sock.sendall(b"QUIT\r\n")
    return line


def test_a_killed_worker_is_restarted_and_sigterm_drains_all(tmp_path: Path) -> None:
    """A worker killed with its sessions is logged and replaced, and its sessions no longer
    count; SIGTERM lets a session in progress finish, then every process exits."""
    store = make_users(tmp_path, "jones")
    store.deliver(["jones"], [b"Subject: a\n\nbody\n"])
    port, log = free_port(), tmp_path / "twistd.log"
    process = start_twistd(tmp_path, port, "--max-sessions", "2", "--shutdown-grace", "20",
                           logfile=str(log), workers=2)
    try:
        wait_for(lambda: started(log, port, 2), "both workers")
        pids = workers_of(process.pid)
        with only(1, pids):
            doomed = [poplib.POP3("127.0.0.1", port, timeout=10) for _ in range(2)]
        os.kill(pids[1], signal.SIGKILL)
        wait_for(lambda: started(log, port, 3), "the replacement worker")
        replacement = workers_of(process.pid)
        assert replacement[2] == pids[2] and replacement[1] != pids[1]
        assert (f"worker 1 (pid={pids[1]}) exited unexpectedly (killed by signal 9 (SIGKILL))"
                in log.read_text())
        for client in doomed:
            client.close()

        reader = login(port, "jones")  # the dead worker's two sessions no longer count
        other = poplib.POP3("127.0.0.1", port, timeout=10)
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: not _listening(port), "the listeners to close")
        assert process.poll() is None  # still draining
        assert reader.retr(1)[1][-1] == b"body"
        reader.quit()
        other.quit()
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode in (0, -signal.SIGTERM)
    assert not any(alive(pid) for pid in (*pids.values(), *replacement.values()))
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "logout: user=<jones>" in text and "moved=1" in text
    for number, pid in replacement.items():
        assert f"worker {number} (pid={pid}) stopped: exit status 0" in text
    assert text.count("statistics: Version Number=vmspop") == 2


def test_workers_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """No orphans: workers whose supervisor was SIGKILLed see their stdin close and exit."""
    make_users(tmp_path, "jones")
    port, log = free_port(), tmp_path / "twistd.log"
    process = start_twistd(tmp_path, port, logfile=str(log), workers=2)
    try:
        wait_for(lambda: started(log, port, 2), "both workers")
        pids = workers_of(process.pid)
    finally:
        process.kill()
        process.wait(30)
    wait_for(lambda: not any(alive(pid) for pid in pids.values()), "the workers to exit", timeout=15)
    assert not _listening(port)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


# -- the supervisor, without processes --------------------------------------------------

def config(**changes: Any) -> ServerConfig:
    return ServerConfig(mail_root=Path("/nonexistent"), passwd=Path("/nonexistent"), no_smtp=True,
                        hostname="pop.example.com", **changes)


@pytest.mark.parametrize("pop3, shared", [
    (("tcp:110", "tcp6:110:interface=\\:\\:1"), True),
    (("haproxy:tcp:110", "ssl:995:privateKey={key}:certKey={cert}"), True),
    (("unix:/run/vmspop.sock",), False),
    (("tcp:110", "haproxy:unix:/run/vmspop.sock"), False),
])
def test_which_endpoints_are_shared(pop3: tuple[str, ...], shared: bool, tmp_path: Path) -> None:
    """TCP, SSL and PROXY-wrapped TCP sockets are shared; a Unix socket is not."""
    cert, key = make_certificate(tmp_path)
    pop3 = tuple(d.format(key=key, cert=cert) for d in pop3)
    listeners, why = plan_listeners(config(pop3=pop3), task.Clock())
    assert (why is None) == shared
    if shared:
        assert [(l.proxy, l.ssl) for l in listeners] == [(d.startswith("haproxy"), d.startswith("ssl"))
                                                        for d in pop3]
    else:
        assert why is not None and "Unix socket" in why


def test_an_unshareable_endpoint_means_one_process(caplog: Any) -> None:
    """--workers 4 with a Unix socket serves in one process and logs why; --workers 1 and the
    embedding default never start workers."""
    from twisted.logger import globalLogPublisher
    seen: list[str] = []
    observer = lambda event: seen.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        single = make_service(config(pop3=("unix:/run/vmspop.sock",), workers=4), task.Clock(),
                              workers=True)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert not any(isinstance(s, WorkerPool) for s in single)
    assert any("serving in one process, not 4: unix:/run/vmspop.sock is a Unix socket" in line
               for line in seen)
    for service in (make_service(config(pop3=("tcp:110",), workers=1), task.Clock(), workers=True),
                    make_service(config(pop3=("tcp:110",), workers=4), task.Clock())):
        assert not any(isinstance(s, WorkerPool) for s in service)
    pooled = make_service(config(pop3=("tcp:110",), workers=4), task.Clock(), workers=True)
    assert [s.count for s in pooled if isinstance(s, WorkerPool)] == [4]


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written = b""
        self.signals: list[str] = []

    def write(self, data: bytes) -> None:
        self.written += data

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakeReactor(task.Clock):
    """A clock that records spawnProcess calls."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[int, Any]]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: dict[str, str],
                     childFDs: dict[int, Any]) -> FakeTransport:
        transport = FakeTransport(1000 + len(self.spawned))
        protocol.makeConnection(transport)
        self.spawned.append((protocol, args, childFDs))
        return transport


@pytest.fixture
def pool(monkeypatch: Any) -> Iterator[WorkerPool]:
    """A pool of two workers on a fake reactor, with a real (unused) socket and tally."""
    events: list[dict[str, Any]] = []
    listeners, _ = plan_listeners(config(pop3=("tcp:0:interface=127.0.0.1",)), task.Clock())
    pool = WorkerPool(config(pop3=("tcp:0:interface=127.0.0.1",), shutdown_grace=5), FakeReactor(),
                      listeners, 2, observer=events.append)
    pool.events = events  # type: ignore[attr-defined]
    monkeypatch.setattr(pool_module, "_log", pool_module.Logger(namespace="vmspop",
                                                                observer=events.append))
    pool.privilegedStartService()
    pool.startService()
    yield pool
    if pool.running:
        pool._close_sockets()
        if pool.tally is not None:
            pool.tally.close()


def died(pool: WorkerPool, index: int, signal_number: int | None = signal.SIGKILL) -> None:
    process = pool.workers[index]
    process.processEnded(Failure(error.ProcessTerminated(None if signal_number else 1, signal_number)))


def test_workers_get_the_sockets_and_the_settings(pool: WorkerPool) -> None:
    """Each worker gets the tally and the sockets as descriptors and its settings on stdin."""
    reactor = pool.reactor
    assert [args[-1] for _, args, _ in reactor.spawned] == ["1/2", "2/2"]
    protocol, args, fds = reactor.spawned[0]
    assert args[1:4] == ["-P", "-m", "vmspop.workers"]
    assert fds[3] == pool.tally.fd and fds[4] == pool.sockets[0].fileno()
    spec = json.loads(protocol.transport.written)
    assert spec["worker"] == 0 and spec["settings"]["shutdown-grace"] == 5
    assert spec["listeners"] == [{"fd": 4, "description": "tcp:0:interface=127.0.0.1",
                                  "family": "INET", "proxy": False, "ssl": None}]


def test_restarts_back_off_while_a_worker_keeps_dying(pool: WorkerPool) -> None:
    """0.5 s, then doubling while the worker dies young, up to 30 s; back to 0.5 s after a
    worker that ran for a minute."""
    reactor = pool.reactor
    delays = []
    for _ in range(8):
        died(pool, 0)
        before = len(reactor.spawned)
        delay = reactor.getDelayedCalls()[0].getTime() - reactor.seconds()
        reactor.advance(delay)
        assert len(reactor.spawned) == before + 1
        delays.append(delay)
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30]
    reactor.advance(61)
    died(pool, 0, None)
    assert reactor.getDelayedCalls()[0].getTime() - reactor.seconds() == 0.5
    assert any("worker 1 (pid=" in formatEvent(e) and "exited unexpectedly (exit status 1)"
               in formatEvent(e) for e in pool.events)  # type: ignore[attr-defined]


def test_stop_signals_every_worker_and_waits(pool: WorkerPool) -> None:
    """Stopping sends SIGTERM, restarts nothing, fires when the last worker has exited, and
    kills one that outlives the grace period."""
    reactor = pool.reactor
    died(pool, 1)  # a restart is pending
    done = pool.stopService()
    assert not reactor.getDelayedCalls() or all(c.getTime() - reactor.seconds() == 15
                                                for c in reactor.getDelayedCalls())
    [first] = pool.workers.values()
    assert first.transport.signals == ["TERM"] and not pool.sockets
    reactor.advance(15)  # --shutdown-grace 5 + STOP_MARGIN
    assert first.transport.signals == ["TERM", "KILL"] and not done.called
    died(pool, 0)
    assert done.called and len(reactor.spawned) == 2


def test_worker_log_events_are_relayed_unchanged(pool: WorkerPool) -> None:
    """A worker's events (even split across reads, with a traceback, with a system) read as
    the same log lines in the supervisor's log; anything else is logged as text
    (tests/test_logrelay.py has the details)."""
    out = io.BytesIO()
    writer = ToSupervisor(out)
    originals: list[dict[str, Any]] = []
    log = Logger(namespace="vmspop", observer=lambda e: (originals.append(e), writer(e)))
    log.info("login: user=<{user}> rip={rip}", user="jones", rip="192.0.2.7")
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("update of user=<{user}> failed", user="jones")
    originals.append({"log_format": "POP3Factory starting on 1110", "log_system": "-",
                      "log_level": LogLevel.info, "log_namespace": "log_legacy", "log_time": 2.0})
    writer(originals[-1])
    writer.flush()
    data = out.getvalue()
    protocol = pool.workers[0]
    protocol.outReceived(data[:10])
    protocol.outReceived(data[10:] + b"not json\n")
    protocol.errReceived(b"Fatal Python error: oops\n")
    relayed = [e for e in pool.events if e.get("vmspop_worker") == 1]  # type: ignore[attr-defined]
    assert [formatEventAsClassicLogText(e) for e in relayed] == [
        formatEventAsClassicLogText(e) for e in originals]
    assert "ZeroDivisionError" in formatEventAsClassicLogText(relayed[1])
    assert all(e["vmspop_worker_pid"] == 1000 for e in relayed)
    texts = [formatEvent(e) for e in pool.events]  # type: ignore[attr-defined]
    assert "worker 1 (pid=1000): not json" in texts
    assert "worker 1 (pid=1000): Fatal Python error: oops" in texts


@pytest.mark.skipif(not hasattr(select, "EPOLLEXCLUSIVE"), reason="EPOLLEXCLUSIVE is Linux's (4.5 and later)")
def test_a_connection_wakes_one_worker() -> None:
    """Workers adopting one listening socket: a connection wakes one of them, not all."""
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.protocol import Factory

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    reactors = [EPollReactor(), EPollReactor()]
    ports = [pool_module._Adopter(r, os.dup(listener.fileno()), socket.AF_INET).adopt(Factory())
             for r in reactors]
    woken: list[list] = [[], []]
    waiting = [threading.Thread(target=lambda i=i: woken[i].extend(reactors[i]._poller.poll(1.0)))
               for i in range(2)]
    for t in waiting:
        t.start()
    time.sleep(0.2)  # both are in epoll_wait
    with socket.create_connection(listener.getsockname()):
        for t in waiting:
            t.join()
    assert sorted(len(events) for events in woken) == [0, 1]
    for port, r in zip(ports, reactors):
        port.stopReading()  # Twisted removes the registration as usual
        assert port.fileno() not in {fd for fd, _ in r._poller.poll(0.1)}
        port.socket.close()
        r._poller.close()
    listener.close()
    assert pool_module._wake_one_worker(object(), 0) is False  # another reactor: all wake
