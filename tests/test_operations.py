"""Operations: XTND STATS with the OpenVMS counters, and the graceful drain on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support import Server, multiline_body
from twistd import connect, free_port, start_twistd
from vmspop.drain import DrainService
from vmspop.events import EventLog
from vmspop.passwd import Account, PasswordFile
from vmspop.store import MailStore



@pytest.fixture
def server(tmp_path: Path) -> Server:
    s = Server(tmp_path, stats_users=("SYSTEM",))
    s.add_user("jones")
    s.add_user("system")
    return s


def figures(lines: list[bytes]) -> dict[str, str]:
    return dict(line.decode().split(" : ", 1) for line in lines if b" : " in line)


def test_xtnd_stats_reports_the_vms_counters(server: Server) -> None:
    """XTND STATS (for --stats-users) lists the OpenVMS counters in their order, with live values."""
    server.deliver("jones", b"Subject: a\n\nbody\n")
    failed = server.connect()
    failed.login(password="wrong")
    failed.command("QUIT")
    failed.drop()  # the transport closes after QUIT
    reader = server.connect()
    reader.login()
    reader.command("RETR 1")
    reader.command("QUIT")
    reader.drop()
    admin = server.connect()
    admin.login("system")
    reply = admin.command("XTND STATS")
    assert reply.startswith(b"+OK Statistics follow\r\n")
    lines = multiline_body(reply)
    labels = [line.split(b" : ")[0] for line in lines if b" : " in line]
    assert labels[:4] == [b"Version Number", b"Logging Level", b"Current Time", b"Start Time"]
    values = figures(lines)
    assert values["Retrieved Messages"] == "1" and values["Retrieved Octets"] == str(len(b"Subject: a\r\n\r\nbody\r\n"))
    assert values["Auth Failures"] == "1" and values["Normal Disconnects"] == "2"
    assert values["Total Threads"] == "3" and values["Current Threads"] == "1"
    assert lines[-2:] == [b"Current Users :", b"0. system"]


def test_xtnd_stats_needs_a_stats_user(server: Server) -> None:
    """Other users get -ERR [SYS/PERM]; XTND needs a login; other XTND verbs are unknown."""
    assert server.connect().command("XTND STATS").startswith(b"-ERR not logged in")
    client = server.connect()
    client.login()
    assert client.command("XTND STATS").startswith(b"-ERR [SYS/PERM] XTND STATS is for the accounts")
    assert client.command("XTND SHUTDOWN").startswith(b'-ERR unknown XTND command "SHUTDOWN"')
    for _ in range(8):
        client.command("XTND FOO")
    assert client.command("XTND FOO").endswith(b"too many invalid commands, closing connection\r\n")


def test_timeouts_and_drops_are_counted(tmp_path: Path) -> None:
    """Client timeouts and abnormal disconnects have their own counters."""
    s = Server(tmp_path, idle_timeout=60)
    s.add_user("jones")
    idle = s.connect()
    s.clock.advance(61)
    idle.drop()
    s.connect().drop()
    assert (s.factory.stats.client_timeouts, s.factory.stats.abnormal_disconnects) == (1, 1)


def test_drain_waits_then_cuts(server: Server) -> None:
    """Shutdown waits for sessions; after the grace period the rest are cut without update."""
    server.deliver("jones", b"Subject: a\n\nbody\n")
    quitter, lingerer = server.connect(), server.connect()
    quitter.login("system")
    lingerer.login()
    lingerer.command("DELE 1")
    lingerer.transport.abortConnection = lingerer.drop  # type: ignore[method-assign]
    stopped: list[bool] = []
    drain = DrainService([server.factory], server.clock, 30.0, EventLog("info", False, server.log.logger),
                         on_stopped=lambda: stopped.append(True))
    drain.startService()
    done = drain.stopService()
    fired: list[object] = []
    done.addCallback(fired.append)
    quitter.command("QUIT")
    quitter.drop()
    server.clock.advance(29)
    assert not fired and len(server.factory.sessions) == 1
    server.clock.advance(2)  # the grace period ends: the lingering session is cut
    server.clock.advance(0.2)
    assert fired and stopped == [True]
    assert len(server.files("jones", "NEWMAIL")) == 1  # the cut session's DELE never applied
    assert server.log.matching("shutdown: closed 1 session(s) after the grace period")


def test_sigterm_drains_a_real_server(tmp_path: Path) -> None:
    """SIGTERM: new connections are refused, a session in progress may finish, then twistd exits."""
    PasswordFile(tmp_path / "passwd").update("jones", lambda _: Account("jones", "{PLAIN}wonderland"))
    store = MailStore(tmp_path / "mail")
    store.create_mailbox("jones")
    store.deliver(["jones"], [b"Subject: a\n\nbody\n"])
    port = free_port()
    process = start_twistd(tmp_path, port, "--shutdown-grace", "20", logfile="-",
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = connect(port, process)
        client.user("jones")
        client.pass_("wonderland")
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert process.poll() is None  # still draining
        assert client.retr(1)[1][-1] == b"body"
        client.quit()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    with process.stdout:  # type: ignore[union-attr]
        output = process.stdout.read().decode()  # type: ignore[union-attr]
    assert "shutdown: waiting up to 20 s for 1 session(s) to end" in output
    assert "statistics: Version Number=vmspop" in output and "Retrieved Messages=1" in output
    assert "logout: user=<jones>" in output and "moved=1" in output
