"""SMTP delivery into NEWMAIL: the OpenVMS "mail repository that accepts mail while the PC is off".

``DeliverySMTP`` subclasses Twisted's ``ESMTP`` for the dialogue (greeting, EHLO,
MAIL/RCPT parsing, RSET, QUIT) and replaces what a mail store must get right:

- only vmspop's own users at its own domains are accepted (no relaying);
- SIZE is advertised and enforced, without buffering more than a block in memory;
- one transaction is stored once for all its recipients, all or nothing, and
  ``250`` is sent only after every copy is fsync'ed and renamed into ``new/``;
  disk full answers ``452 4.3.1``, and a dropped connection leaves nothing;
- pipelined commands wait for the reply to the message before them.
"""

from __future__ import annotations

import errno
import secrets
import tempfile
import time
from email.utils import format_datetime
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.mail import smtp
from twisted.python.failure import Failure

from vmspop._version import __version__
from vmspop.passwd import InvalidUsername, PasswordFile, normalize_username
from vmspop.pipeline import LineQueue
from vmspop.store import DeliveryError, MailStore, NoSuchMailbox

if TYPE_CHECKING:
    from vmspop.config import ServerConfig
    from vmspop.events import EventLog
    from vmspop.threads import ThreadRunner
    from vmspop.tls import TLSCertificate

__all__ = ["DeliverySMTP", "SMTPFactory"]

#: RFC 5321 section 4.5.3.1.8: a server must accept at least 100 recipients.
MAX_RECIPIENTS = 100
#: RFC 5321 section 4.5.3.2.7 asks for at least 5 minutes between commands.
SMTP_IDLE_TIMEOUT = 300
#: RFC 5321 limits a text line to 1000 octets; real mail sometimes exceeds it, so
#: accept more, but bound what one line can make the server buffer.
MAX_LINE = 64 * 1024
#: Messages smaller than this stay in memory while they arrive; larger ones spill
#: to a temporary file, so memory per session stays bounded.
SPOOL_IN_MEMORY = 1024 * 1024
#: Pipelined input held while a message is being stored; beyond it the socket is not read.
MAX_PENDING_INPUT = 64 * 1024


class SMTPFactory(ServerFactory):
    """Builds :class:`DeliverySMTP` connections and holds what they share.

    Args:
        config: the server settings (hostname, local domains, size limit).
        store: where mail is delivered.
        passwords: the accounts mail is accepted for.
        run_in_thread: runs the (fsync-heavy) delivery off the reactor thread.
        clock: timers (the idle timeout).
        events: the operator's log.
        max_sessions: concurrent SMTP connections accepted.
        tls: the certificate for STARTTLS, or None.
    """

    noisy = False

    def __init__(self, config: ServerConfig, store: MailStore, passwords: PasswordFile,
                 run_in_thread: ThreadRunner, clock: Any, events: EventLog,
                 max_sessions: int = 100, tls: TLSCertificate | None = None) -> None:
        self.config = config
        self.store = store
        self.passwords = passwords
        self.run_in_thread = run_in_thread
        self.clock = clock
        self.events = events
        self.max_sessions = max_sessions
        self.tls = tls
        self.sessions: set[DeliverySMTP] = set()
        self.domains = {d.lower() for d in (config.hostname, *config.local_domain)}

    def cut(self, session: DeliverySMTP) -> bool:
        """Close a session at shutdown (a message not yet acknowledged will be re-sent)."""
        session.transport.abortConnection()
        return True

    def buildProtocol(self, addr: Any) -> DeliverySMTP:
        """A new connection's protocol."""
        return DeliverySMTP(self)


class _Refused(Exception):
    """A recipient or message refused with an SMTP reply."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class DeliverySMTP(smtp.ESMTP):
    """One SMTP connection delivering into vmspop's store."""

    def __init__(self, factory: SMTPFactory) -> None:
        super().__init__()
        self.factory = factory
        self.host = factory.config.hostname.encode("ascii")
        self.timeout = SMTP_IDLE_TIMEOUT
        self.callLater = factory.clock.callLater  # TimeoutMixin: no global reactor
        self.rip = "-"
        self._buffer = b""
        self._queue = LineQueue(self.lineReceived, lambda: self.transport, MAX_PENDING_INPUT)
        self._peer_known = False
        self._closing = False
        self._recipients: list[str] = []
        self._envelope: tuple[smtp.Address, list[str]] | None = None
        self._id = ""
        self._spool: IO[bytes] | None = None
        self._size = 0
        self._too_big = False

    # -- connection ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        """Greet, or refuse with 421 when too many SMTP sessions are open."""
        peer = self.transport.getPeer()
        self.rip = getattr(peer, "host", None) or str(peer)
        if len(self.factory.sessions) >= self.factory.max_sessions:
            self.sendCode(421, b"4.7.0 " + self.host + b" too many connections, try again later")
            self.factory.events.refused(rip=self.rip, reason="too-many-smtp-sessions")
            self._closing = self._queue.closed = True
            self.transport.loseConnection()
            return
        self.factory.sessions.add(self)
        if self.factory.tls is not None:
            self.ctx = self.factory.tls.options()  # ESMTP offers STARTTLS when ctx is set
        super().connectionMade()

    def greeting(self) -> bytes:
        """The 220 banner."""
        return self.host + b" ESMTP vmspop " + __version__.encode() + b" ready"

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Forget a message in progress: nothing of it was stored."""
        self._closing = self._queue.closed = True
        self._discard()
        self.factory.sessions.discard(self)
        self.setTimeout(None)

    def timeoutConnection(self) -> None:
        """Idle too long: 421 and close, dropping any unfinished message."""
        self.sendCode(421, b"4.4.2 " + self.host + b" idle too long, closing connection")
        self._closing = self._queue.closed = True
        self.transport.loseConnection()

    def extensions(self) -> dict[bytes, list[bytes] | None]:
        """EHLO keywords: SIZE with the limit, 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES."""
        ext = super().extensions()
        ext.pop(b"AUTH", None)  # no SMTP AUTH: this listener only takes mail for local users
        ext[b"SIZE"] = [str(self.factory.config.max_message_size).encode()]
        ext[b"8BITMIME"] = None
        ext[b"PIPELINING"] = None
        ext[b"ENHANCEDSTATUSCODES"] = None
        return ext

    # -- input: one command at a time, in order -----------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Split CRLF lines (never bare LF: no end-of-data smuggling) and run them in order."""
        if self._closing:
            return
        if not self._peer_known:
            # Behind a PROXY-protocol listener the client's address is known only now.
            self._peer_known = True
            peer = self.transport.getPeer()
            self.rip = getattr(peer, "host", None) or str(peer)
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\r\n")
        if len(self._buffer) > MAX_LINE or any(len(line) > MAX_LINE for line in lines):
            self.sendCode(500, b"5.5.2 line too long; closing connection")
            self._closing = self._queue.closed = True
            self._discard()
            self.transport.loseConnection()
            return
        self._queue.add(lines)

    # -- envelope -----------------------------------------------------------------------

    def do_MAIL(self, rest: bytes) -> None:
        """MAIL FROM, refusing at once a declared SIZE beyond the limit (RFC 1870)."""
        match = self.mail_re.match(rest)
        options = (match.group("opts") or b"") if match else b""
        for option in options.split():
            key, _, value = option.partition(b"=")
            if key.upper() == b"SIZE":
                if not value.isdigit():
                    self.sendCode(501, b"5.5.4 SIZE needs a number of octets")
                    return
                if int(value) > self.factory.config.max_message_size:
                    self.sendCode(552, b"5.3.4 message size exceeds the limit of %d octets"
                                  % self.factory.config.max_message_size)
                    return
        if not self._from:
            self._recipients = []  # a new transaction (a second MAIL gets 503 from ESMTP)
        super().do_MAIL(rest)

    def validateFrom(self, helo: Any, origin: smtp.Address) -> smtp.Address:
        """Any sender is accepted: mail for local users comes from anywhere."""
        return origin

    def do_RCPT(self, rest: bytes) -> None:
        """RCPT TO, with a limit on recipients per message."""
        if self._from and len(self._to) >= MAX_RECIPIENTS:
            self.sendCode(452, b"4.5.3 too many recipients; send the rest in another message")
            return
        super().do_RCPT(rest)

    def validateTo(self, user: smtp.User) -> Any:
        """Accept only a local user at one of our domains who may receive mail."""
        local = bytes(user.dest.local).decode("utf-8", "replace")
        domain = bytes(user.dest.domain).decode("ascii", "replace").lower().rstrip(".")
        try:
            name = self._local_user(local, domain)
        except _Refused as e:
            self.factory.events.smtp_refused(rip=self.rip, rcpt=f"{local}@{domain}", reason=e.text)
            raise smtp.SMTPBadRcpt(user, e.code, e.text) from None
        self._recipients.append(name)
        return lambda: name

    def _local_user(self, local: str, domain: str) -> str:
        if domain not in self.factory.domains:
            raise _Refused(550, f"5.7.1 relaying denied: {domain} is not a domain of this server")
        try:
            name = normalize_username(local)
        except InvalidUsername:
            raise _Refused(550, f"5.1.1 no such user here: {local}") from None
        account = self.factory.passwords.lookup(name)
        if account is None:
            # With --auth pam a user may exist only on the host; a mail directory is
            # then what makes them a vmspop user.
            if self.factory.config.auth == "pam" and self.factory.store.has_mailbox(name):
                return name
            raise _Refused(550, f"5.1.1 no such user here: {name}")
        if account.dismail:
            raise _Refused(550, f"5.2.1 mailbox of {name} is disabled (DISMAIL)")
        if not self.factory.store.has_mailbox(name):
            # An account without a mail directory is the operator's to fix: retry later.
            raise _Refused(451, f"4.3.0 mailbox of {name} is not available; try again later")
        return name

    def ext_STARTTLS(self, rest: bytes) -> None:
        """STARTTLS (RFC 3207): discard what was pipelined behind it, and start over."""
        if self.ctx is not None and self.canStartTLS and not self.startedTLS:
            # Clear-text commands behind STARTTLS must not run as if sent over TLS.
            self._queue.clear()
            self._buffer = b""
            self._helo = (None, self.rip.encode("ascii", "replace"))
            self._from, self._to, self._recipients = None, [], []
        super().ext_STARTTLS(rest)

    def do_NOOP(self, rest: bytes) -> None:
        """RFC 5321 requires NOOP; Twisted's server lacks it."""
        self.sendCode(250, b"2.0.0 OK")

    def do_VRFY(self, rest: bytes) -> None:
        """RFC 5321 requires VRFY; 252 answers it without revealing which users exist."""
        self.sendCode(252, b"2.5.0 cannot verify users; send the message and see")

    def do_RSET(self, rest: bytes) -> None:
        """RSET also forgets the accepted recipients."""
        self._recipients = []
        super().do_RSET(rest)

    # -- the message --------------------------------------------------------------------

    def do_DATA(self, rest: bytes) -> None:
        """Start one spool for the whole transaction (one copy per recipient at the end)."""
        if self._from is None or not self._to:
            self.sendCode(503, b"5.5.1 need MAIL FROM and at least one accepted RCPT TO first")
            return
        recipients = list(dict.fromkeys(self._recipients))
        self._envelope = (self._from, recipients)
        self._from, self._to, self._recipients = None, [], []
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        self._size = 0
        self._too_big = False
        self._write(self._trace_headers(*self._envelope))
        self.mode = smtp.DATA
        self.sendCode(354, b"Start mail input; end with <CRLF>.<CRLF>")

    def state_DATA(self, line: bytes) -> None:
        """One line of the message; "." alone ends it (RFC 5321 section 4.1.1.4)."""
        if line == b".":
            self.mode = smtp.COMMAND
            self._end_of_data()
            return
        if line.startswith(b"."):
            line = line[1:]
        self._size += len(line) + 2
        if self._size > self.factory.config.max_message_size:
            self._too_big = True  # keep reading to the end, storing nothing more
            return
        self._write(line + b"\n")  # stored with LF line ends, the Maildir convention

    def _write(self, data: bytes) -> None:
        if self._spool is not None and not self._too_big:
            self._spool.write(data)

    def _trace_headers(self, origin: smtp.Address, recipients: list[str]) -> bytes:
        helo = (self._helo[0] or b"unknown").decode("ascii", "replace")
        stamp = format_datetime(datetime.now(timezone.utc))
        sender = bytes(origin).decode("utf-8", "replace")
        for_ = f"\n\tfor <{recipients[0]}@{self.factory.config.hostname}>" if len(recipients) == 1 else ""
        self._id = secrets.token_hex(6)
        return (f"Return-Path: <{sender}>\n"
                f"Received: from {helo} ([{self.rip}])\n"
                f"\tby {self.factory.config.hostname} (vmspop {__version__}) with ESMTP id {self._id}"
                f"{for_};\n\t{stamp}\n").encode("utf-8", "replace")

    def _end_of_data(self) -> None:
        spool, self._spool = self._spool, None
        assert spool is not None and self._envelope is not None
        origin, recipients = self._envelope
        if self._too_big:
            spool.close()
            self.sendCode(552, b"5.3.4 message size exceeds the limit of %d octets; not delivered"
                          % self.factory.config.max_message_size)
            return
        spool.seek(0)
        self._queue.hold()
        started = time.monotonic()
        d = self.factory.run_in_thread(self.factory.store.deliver, recipients, spool)

        def delivered(_: Any) -> None:
            self.factory.events.smtp_delivered(rip=self.rip, sender=bytes(origin).decode("utf-8", "replace"),
                                               recipients=recipients, octets=self._size, id=self._id,
                                               seconds=time.monotonic() - started)
            self.sendCode(250, b"2.0.0 message %s stored for %d recipient%s"
                          % (self._id.encode(), len(recipients), b"" if len(recipients) == 1 else b"s"))

        def failed(failure: Failure) -> None:
            cause = failure.value.__cause__ if failure.check(DeliveryError) else failure.value
            full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
            if failure.check(DeliveryError, NoSuchMailbox, OSError):
                self.factory.events.error("smtp delivery {id} failed, nothing stored: {why}",
                                          id=self._id, why=str(failure.value))
            else:
                self.factory.events.failure("smtp delivery {id} failed", failure=failure, id=self._id)
            if full:
                self.sendCode(452, b"4.3.1 insufficient system storage; nothing stored, try again later")
            else:
                self.sendCode(451, b"4.3.0 local error storing the message; nothing stored, "
                                   b"try again later")

        def done(_: Any) -> None:
            spool.close()
            self._queue.release()

        d.addCallbacks(delivered, failed).addBoth(done)

    def _discard(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
