"""Test doubles shared by the suite: a server on a fake clock, clients over StringTransport."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, textFileLogObserver

from vmspop.config import ServerConfig
from vmspop.events import EventLog
from vmspop.passwd import Account, PasswordFile
from vmspop.secretfile import write_secret
from vmspop.server import POP3Factory, make_pop3_factory
from vmspop.store import MailStore


def run_now(f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
    """A ThreadRunner that runs the call at once, so protocol tests are deterministic."""
    return defer.maybeDeferred(f, *args, **kwargs)


class CapturedLog:
    """Collects vmspop's log events; ``lines()`` gives them formatted."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.logger = Logger(namespace="vmspop", observer=self.events.append)

    def lines(self) -> list[str]:
        """Every event as the text an operator would read."""
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.events]

    def matching(self, prefix: str) -> list[str]:
        """The formatted events that start with ``prefix``."""
        return [line for line in self.lines() if line.startswith(prefix)]


class Server:
    """A vmspop factory over a temporary store, with a fake clock and synchronous threads.

    Args:
        tmp_path: where the mail root and password file go.
        **settings: ServerConfig fields to override.
    """

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        defaults: dict[str, Any] = dict(mail_root=tmp_path / "mail", passwd=tmp_path / "passwd",
                                        hostname="pop.example.com", auth_failure_delay=0.0)
        defaults.update(settings)
        self.config = ServerConfig(**defaults)
        self.clock = task.Clock()
        self.log = CapturedLog()
        self.store = MailStore(self.config.mail_root, "pop.example.com")
        self.store.root.mkdir(parents=True, exist_ok=True)
        self.passwords = PasswordFile(self.config.passwd)
        self.run_in_thread: Callable[..., defer.Deferred] = run_now
        self.factory: POP3Factory = make_pop3_factory(
            self.config, self.clock,
            events=EventLog(self.config.log_level, self.config.trace, self.log.logger),
            run_in_thread=lambda f, *a, **kw: self.run_in_thread(f, *a, **kw))

    def add_user(self, name: str, password: str = "wonderland", secret: bytes | None = None,
                 **fields: Any) -> Account:
        """Create an account ({PLAIN} password, for speed) and its mailbox."""
        account = Account(name=name.lower(), password_hash="{PLAIN}" + password, **fields)
        self.passwords.update(name, lambda _: account)
        self.store.create_mailbox(name.lower())
        if secret is not None:
            write_secret(self.store.secret_path(name.lower()), secret)
        return account

    def deliver(self, user: str, *messages: bytes) -> list[Path]:
        """Deliver messages, each with a distinct, increasing arrival time."""
        paths = []
        for message in messages:
            paths.extend(self.store.deliver([user], [message]))
        return paths

    def files(self, user: str, folder: str) -> list[str]:
        """The message file names in one folder (new/ and cur/), sorted."""
        names = []
        for sub in ("new", "cur"):
            directory = self.store.folder(user, folder) / sub
            if directory.is_dir():
                names.extend(f"{sub}/{n}" for n in os.listdir(directory))
        return sorted(names)

    def connect(self) -> Client:
        """A new client connection over a StringTransport."""
        return Client(self.factory)


class Client:
    """One connection: send lines, read what the server wrote."""

    def __init__(self, factory: POP3Factory) -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> bytes:
        """Everything written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data: bytes) -> bytes:
        """Feed raw bytes and return the server's output."""
        self.protocol.dataReceived(data)
        return self.take()

    def command(self, line: str | bytes) -> bytes:
        """Send one command line (CRLF added) and return the reply bytes."""
        raw = line.encode() if isinstance(line, str) else line
        return self.send(raw + b"\r\n")

    def login(self, user: str = "jones", password: str = "wonderland") -> bytes:
        """USER/PASS; returns the PASS reply."""
        assert self.command(f"USER {user}").startswith(b"+OK")
        return self.command(f"PASS {password}")

    @property
    def closed(self) -> bool:
        """True once the server asked to close the connection."""
        return bool(self.transport.disconnecting)

    def drop(self) -> None:
        """The client vanishes without QUIT."""
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        self.protocol.connectionLost(Failure(ConnectionLost()))


def counting_thread_calls(server: Server) -> list[str]:
    """Count the server's blocking calls by name (they still run at once)."""
    calls: list[str] = []
    run = server.run_in_thread

    def counted(f, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(f.__name__)
        return run(f, *args, **kwargs)

    server.run_in_thread = counted
    return calls


def twistd_writes(events: list[dict[str, Any]]) -> str:
    """What twistd's own text file observer writes for ``events``: the reference for
    the lines vmspop writes itself (vmspop.textlog, vmspop.logrelay)."""
    out = io.StringIO()
    observer = textFileLogObserver(out)
    for event in events:
        observer(dict(event))
    return out.getvalue()


def multiline_body(reply: bytes) -> list[bytes]:
    """The lines of a multi-line reply after its status line, un-stuffed, terminator checked."""
    assert reply.endswith(b"\r\n.\r\n") or reply.endswith(b"+OK\r\n.\r\n") or reply.count(b"\r\n") >= 2
    status, _, rest = reply.partition(b"\r\n")
    assert status.startswith(b"+OK"), reply
    assert rest.endswith(b".\r\n"), reply
    lines = rest[:-3].split(b"\r\n")[:-1] if rest != b".\r\n" else []
    return [line[1:] if line.startswith(b".") else line for line in lines]


def open_files(under: Path) -> list[str]:
    """Files below ``under`` that this process has open."""
    found = []
    prefix = str(under) + os.sep
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefix):
            found.append(target)
    return found
