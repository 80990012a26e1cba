"""A vmspop on a real loopback socket, served by Twisted's reactor in a background thread.

Each test gets its own store, password file and listening port; the reactor runs
for the whole test session (fixtures in conftest.py).
"""

from __future__ import annotations

import poplib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.threads import blockingCallFromThread

from vmspop.config import ServerConfig
from vmspop.passwd import Account, PasswordFile
from vmspop.secretfile import write_secret
from vmspop.server import POP3Factory, make_pop3_factory, make_smtp_factory
from vmspop.store import MailStore


def run_reactor() -> Iterator[Any]:
    """Start Twisted's reactor in a daemon thread; stop it when the generator is closed."""
    from twisted.internet import reactor as global_reactor
    thread = threading.Thread(target=global_reactor.run, kwargs={"installSignalHandlers": False},
                              daemon=True)
    thread.start()
    yield global_reactor
    global_reactor.callFromThread(global_reactor.stop)
    thread.join(10)


@dataclass
class Live:
    """A vmspop listening on 127.0.0.1."""

    port: int
    store: MailStore
    factory: POP3Factory
    reactor: Any
    listening: Any
    smtp_port: int
    smtp_listening: Any
    clients: list[poplib.POP3] = field(default_factory=list)

    def pop(self) -> poplib.POP3:
        """A connected poplib client, closed when the test ends."""
        client = poplib.POP3("127.0.0.1", self.port, timeout=10)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        """Close the clients and the listening port."""
        for client in self.clients:
            client.close()
        blockingCallFromThread(self.reactor, self.listening.stopListening)
        blockingCallFromThread(self.reactor, self.smtp_listening.stopListening)


def start(reactor: Any, tmp_path: Path, **settings: Any) -> Live:
    """Create user jones (password wonderland, APOP secret tanstaafl); listen for POP3 and SMTP."""
    settings.setdefault("auth_failure_delay", 0.0)
    config = ServerConfig(mail_root=tmp_path / "mail", passwd=tmp_path / "passwd", hostname="localhost",
                          **settings)
    store = MailStore(config.mail_root)
    PasswordFile(config.passwd).update("jones", lambda _: Account("jones", "{PLAIN}wonderland"))
    store.create_mailbox("jones")
    write_secret(store.secret_path("jones"), b"tanstaafl")
    factory = blockingCallFromThread(reactor, make_pop3_factory, config, reactor)
    port = blockingCallFromThread(reactor, reactor.listenTCP, 0, factory, interface="127.0.0.1")
    smtp_factory = blockingCallFromThread(reactor, make_smtp_factory, config, reactor)
    smtp_port = blockingCallFromThread(reactor, reactor.listenTCP, 0, smtp_factory,
                                       interface="127.0.0.1")
    return Live(port.getHost().port, store, factory, reactor, port, smtp_port.getHost().port,
                smtp_port)


def folder_names(store: MailStore, folder: str, user: str = "jones") -> list[str]:
    """Message file names in one folder of a user."""
    return sorted(p.name for sub in ("new", "cur") for p in (store.folder(user, folder) / sub).iterdir())
