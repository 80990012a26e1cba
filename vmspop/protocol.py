"""The POP3 protocol: wires the codec (vmspop.wire), the state table (vmspop.state),
the portal and the mailbox to a Twisted transport.

``VMSPOP3`` subclasses :class:`twisted.mail.pop3.POP3` for its place in Twisted
(``IMailbox`` avatars, ``portal``/``factory`` attributes, ``TimeoutMixin``), and
replaces the parts of it that are wrong: parsing, the login path, deleted-message
handling, byte-stuffing, octet counts, QUIT and the idle timer.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import secrets
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import ILoggingContext, IProtocol, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.mail import pop3
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper  # no public name for it
from twisted.python.failure import Failure
from zope.interface import implementer_only

from vmspop import sasl, state, wire
from vmspop.auth import APOPCredentials, LoginAttempts, LoginRefused, refusal_reply
from vmspop.cached import read_if_cached
from vmspop.mailbox import BadMessageNumber, UpdateIncomplete, UpdateResult, VMSMailbox
from vmspop.output import MAX_BACKLOG, Output
from vmspop.pipeline import LineQueue
from vmspop.transfer import FileSource, IterSource, ReadAhead, StreamStopped, Streamer

if TYPE_CHECKING:
    from vmspop.server import POP3Factory

__all__ = ["VMSPOP3"]

#: Pipelined input held while a command runs; past this the socket is not read,
#: so a client cannot make the server buffer without bound (RFC 2449 PIPELINING).
MAX_PENDING_INPUT = 64 * 1024
#: RFC 5034 section 4: the 255-octet command limit does not bind SASL responses;
#: this fits the largest step vmspop's mechanisms accept (sasl.MAX_STEP_OCTETS) in base64.
MAX_SASL_LINE = 2048
#: A client sending this many invalid commands in one session is broken or probing;
#: cut it off rather than answer forever (aiosmtpd's BOGUS_LIMIT, pymap's bad_command_limit).
MAX_BAD_COMMANDS = 10
#: A command line must be complete within this time; a client dribbling bytes
#: (slowloris) would otherwise hold its slot for the whole idle timeout.
PARTIAL_LINE_TIMEOUT = 60.0
#: LIST and UIDL lines per written block: few writes, bounded memory for 100,000 messages.
LINES_PER_BLOCK = 2048
_HEX = frozenset(b"0123456789abcdefABCDEF")
_HANDLERS = {verb: "do_" + verb for verb in wire.GRAMMAR}  # named once, not per command


# The stock class declares IProducer with a stopProducing that raises; vmspop's
# producer is the Streamer of each transfer, so the protocol claims only what it is.
@implementer_only(IProtocol, ILoggingContext)
class VMSPOP3(pop3.POP3):
    """One POP3 connection.

    Args:
        factory: the :class:`~vmspop.server.POP3Factory` that holds the settings,
            the portal, the clock and the shared counters.
    """

    def __init__(self, factory: POP3Factory) -> None:
        self.factory = factory
        self.portal = factory.portal
        self.config = factory.config
        self.events = factory.events
        self.callLater = factory.clock.callLater  # TimeoutMixin: no global reactor
        self.session = secrets.token_hex(6)
        self.phase = state.AUTHORIZATION
        self.mbox: VMSMailbox | None = None
        self.rip = "-"
        self._lines = wire.LineBuffer()
        self._queue = LineQueue(self._run, lambda: self.transport, MAX_PENDING_INPUT)
        self._closing = False
        self._admitted = False
        self._user: bytes | None = None
        self._attempts: LoginAttempts | None = None
        self._streamer: Streamer | None = None
        self._read_ahead = ReadAhead()
        self._stats = dict(retr=0, retr_octets=0, top=0)
        self._why = "connection-lost"  # for the disconnect log line
        self._tls_started = False
        self._local = False
        self._bad_commands = 0
        self._peer_known = False
        self._proxied = False
        self._partial_timer: Any = None
        self._mechanism: sasl.Mechanism | None = None
        self._sasl_success: Any = None

    # -- connection ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        """Greet the client with the APOP challenge, or refuse it when the server is full."""
        self._output = Output(self.transport)
        peer = self.transport.getPeer()
        self.rip = getattr(peer, "host", None) or str(peer)
        self._local = isinstance(peer, UNIXAddress) or _is_loopback(self.rip)
        # Behind a PROXY-protocol listener this is the proxy's address: the client's
        # comes with its first data, and only then is it counted per address.
        self._proxied = _behind_proxy(self.transport)
        refused = self.factory.admit(self, None if self._proxied else self.rip)
        if refused is not None:
            self.events.refused(rip=self.rip, reason=refused)
            text = ("too many connections from your address" if refused.endswith("address")
                    else "too many sessions")
            self._send(wire.err(f"{text}; try again later", "SYS/TEMP"))
            self._close()
            return
        self._admitted = True
        self._attempts = LoginAttempts(self.config.max_auth_attempts, self.rip, self.session)
        self._output.set_no_delay()
        self.magic = self.factory.challenge()
        self.events.connected(rip=self.rip, session=self.session)
        self.setTimeout(self.config.idle_timeout or None)
        self._send(wire.ok(self.factory.greeting(self.magic.decode("ascii"))))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Drop the session: without a completed QUIT nothing in the mailbox changes."""
        self.setTimeout(None)
        # A protocol lives in reference cycles until the garbage collector's next full
        # pass; what it read ahead goes now.
        self._read_ahead.drop()
        self._closing = self._queue.closed = True
        if self._partial_timer is not None:
            self._partial_timer.cancel()
            self._partial_timer = None
        if self._streamer is not None:
            self._streamer.stopProducing()
        if self._sasl_success is not None:
            self._sasl_success[1].logout()  # logged in, but the SASL exchange never finished
            self._sasl_success = None
        if not self._admitted:
            return
        self.factory.release(self)
        self.factory.stats.session_ended(self._why)
        if self.phase == state.UPDATE:
            return  # the update runs to its end and then releases the lock
        if self.mbox is not None:
            self.mbox.logout()
            self.events.disconnected(user=self.mbox.user, rip=self.rip, session=self.session,
                                     reason=self._why, attempts=0)
        else:
            self.events.disconnected(user=None, rip=self.rip, session=self.session, reason=self._why,
                                     attempts=self._attempts.failures if self._attempts else 0)

    def timeoutConnection(self) -> None:
        """The idle timer fired: log the client out without an update."""
        self._why = "idle-timeout"
        if self._streamer is not None:
            # The client stopped reading: a graceful close would wait for it forever.
            self.transport.abortConnection()
        else:
            self._send(wire.err("autologout; idle for too long"))
            self._close()

    # -- input --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Split input into lines and run them in order, one at a time (PIPELINING);
        the replies to the lines run now leave together."""
        if not self._closing:
            self._batch(self._take, data)

    def _batch(self, run: Callable[..., None], *args: Any) -> None:
        """Run commands: their replies leave together, then their log lines (the client
        waits for the replies, not for the log)."""
        self._output.cork()
        self.events.hold()
        try:
            run(*args)
        finally:
            self._output.uncork()
            self.events.release()

    def _take(self, data: bytes) -> None:
        if not self._peer_known:
            self._peer_known = True
            if not self._learn_proxied_peer():
                return
        try:
            lines = self._lines.feed(data)
        except wire.LineTooLong:
            self._send(wire.err(f"line too long; commands are limited to {wire.MAX_COMMAND_LINE} octets"))
            self._why = "line-too-long"
            self._close()
            return
        if self._partial_timer is not None or self._lines.pending:
            self._watch_partial_line()
        self._queue.add(lines)

    def _learn_proxied_peer(self) -> bool:
        """Behind a PROXY-protocol listener the real client address is known only once the
        header has been read, i.e. by the first client data; account and log under it."""
        if not self._proxied:
            return True
        peer = self.transport.getPeer()
        self.rip = getattr(peer, "host", None) or str(peer)
        self._local = isinstance(peer, UNIXAddress) or _is_loopback(self.rip)
        if self._attempts is not None:
            self._attempts.rip = self.rip
        refused = self.factory.admit(self, self.rip)
        if refused is None:
            return True
        self._admitted = False
        self.events.refused(rip=self.rip, reason=refused)
        self._send(wire.err("too many connections from your address; try again later", "SYS/TEMP"))
        self._close()
        return False

    def _watch_partial_line(self) -> None:
        if self._lines.pending and self._partial_timer is None:
            self._partial_timer = self.callLater(PARTIAL_LINE_TIMEOUT, self._partial_line_expired)
        elif not self._lines.pending and self._partial_timer is not None:
            self._partial_timer.cancel()
            self._partial_timer = None

    def _partial_line_expired(self) -> None:
        self._partial_timer = None
        self._send(wire.err(f"command line not completed within {PARTIAL_LINE_TIMEOUT:g} seconds"))
        self._why = "partial-line-timeout"
        self._close()

    def _refuse_command(self, text: str) -> None:
        self._bad_commands += 1
        if self._bad_commands >= MAX_BAD_COMMANDS:
            self._send(wire.err(f"{text}; too many invalid commands, closing connection"))
            self._why = "too-many-bad-commands"
            self._close()
        else:
            self._send(wire.err(text))


    def _run(self, line: bytes) -> None:
        self.resetTimeout()
        if self._mechanism is not None:
            if self.events.trace_enabled:
                self._trace("C:", b"********")  # SASL responses carry credentials
            self._hold_for(self._sasl_line(line), "AUTH")
            return
        if self.events.trace_enabled:
            self._trace("C:", _masked(line))
        try:
            command = wire.parse_command(line)
        except wire.CommandError as e:
            if line.strip():
                self._refuse_command(e.text)
            else:
                self._send(wire.err(e.text))  # a blank line is noise, not probing
            return
        verb = command.verb
        if verb not in state.ALLOWED[self.phase]:
            self._refuse_command(state.refusal(self.phase, verb))
            return
        self.events.command(session=self.session, verb=verb)
        try:
            result = getattr(self, _HANDLERS[verb])(*command.args)
        except BadMessageNumber as e:
            self._send(wire.err(str(e)))
            return
        except Exception:
            self.events.failure("{verb} failed", verb=command.verb)
            self._send(wire.err("internal server error", "SYS/TEMP"))
            return
        if result is None and not self._closing and self._output.backlog() > MAX_BACKLOG:
            result = self._output.drained()  # the client is not reading: the next line waits
        self._hold_for(result, command.verb)

    def _hold_for(self, result: Any, verb: str) -> None:
        """While a command's Deferred runs, later (pipelined) lines wait their turn."""
        if isinstance(result, defer.Deferred):
            self._queue.hold()
            result.addErrback(self._unexpected, verb)
            result.addBoth(self._release)

    def _release(self, _: Any = None) -> None:
        """The held command is answered: run the lines behind it."""
        self._batch(self._queue.release)

    def _unexpected(self, failure: Failure, verb: str) -> None:
        if failure.check(StreamStopped):
            return  # the transfer ended without a reply being possible; see _stream
        self.events.failure("{verb} failed", failure=failure, verb=verb)
        self._send(wire.err("internal server error", "SYS/TEMP"))

    # -- output -------------------------------------------------------------------------

    def _send(self, data: bytes, *more: wire.Buffer) -> None:
        if self.events.trace_enabled:
            self._trace("S:", data.split(b"\r\n", 1)[0])
        self._output.write(data, *more)

    def _trace(self, direction: str, line: bytes) -> None:
        self.events.trace(session=self.session, direction=direction,
                          line=line.decode("ascii", "backslashreplace"))

    def _close(self) -> None:
        self._closing = self._queue.closed = True
        # The last reply leaves now and the socket closes at the reactor's next turn: a
        # client that reconnects on seeing it must find the session's slot free.
        self.factory.release(self)
        self._output.flush()
        self._output.end_now()
        self.transport.loseConnection()

    def _stream(self, read: Any, close: Any, transform: Any, finish: Any) -> defer.Deferred:
        self._output.flush()  # the streamer writes to the transport itself
        streamer = Streamer(self.transport, read, transform, finish,
                            progress=self.resetTimeout, close=close)
        self._streamer = streamer

        def done(result: Any) -> Any:
            self._streamer = None
            if isinstance(result, Failure) and not result.check(StreamStopped):
                # Part of the reply is out: no -ERR can follow it, only a cut connection,
                # which the client sees as a failed transfer (and no update happens).
                self.events.failure("sending a reply failed", failure=result)
                self._why = "send-error"
                self.transport.abortConnection()
                return Failure(StreamStopped())
            return result

        return streamer.start().addBoth(done)

    def _lines_reply(self, first: bytes, lines: Iterator[bytes]) -> defer.Deferred:
        """A multi-line reply of short lines (LIST, UIDL), written in blocks."""
        def blocks() -> Iterator[bytes]:
            batch: list[bytes] = []
            for line in lines:
                batch.append(line)
                if len(batch) == LINES_PER_BLOCK:
                    yield b"\r\n".join(batch) + b"\r\n"
                    batch = []
            if batch:
                yield b"\r\n".join(batch) + b"\r\n"

        self._send(first)
        # Lines are built from numbers and UIDLs, which never start with ".".
        source = IterSource(blocks())
        return self._stream(source.read, source.close, lambda block: block, lambda: b".\r\n")

    # -- AUTHORIZATION ------------------------------------------------------------------

    @property
    def secure(self) -> bool:
        """True once the session is encrypted (STLS done, or an implicit-TLS listener)."""
        return self._tls_started or ISSLTransport.providedBy(self.transport)

    def _cleartext_refusal(self) -> bytes | None:
        """The reply refusing a clear-text login under ``--require-tls``, or None if allowed."""
        if not self.config.require_tls or self.secure:
            return None
        if self.config.allow_loopback_plaintext and self._local:
            return None
        return wire.err("TLS is required before logging in; use STLS first", "AUTH")

    def do_CAPA(self) -> None:
        """RFC 2449 capabilities, for the current state."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.phase == state.AUTHORIZATION:
            if self.factory.tls is not None and not self.secure:
                caps.append("STLS")
            if not self.config.disable_userpass and self._cleartext_refusal() is None:
                caps.append("USER")
            caps.append("SASL " + " ".join(m.decode("ascii") for m in self._sasl_mechanisms()))
        # RFC 2449 EXPIRE 0: mail retrieved in this session leaves the maildrop (it moves
        # to MAIL), which is what "leave mail on server" clients must know.
        moves = not (self.config.leave_in_newmail or self.config.use_mail_folder)
        caps.append("EXPIRE 0" if moves else "EXPIRE NEVER")
        caps.append(f"IMPLEMENTATION {self.factory.implementation}")
        self._send(wire.multiline(wire.ok("Capability list follows"), (c.encode() for c in caps)))

    def do_USER(self, name: bytes) -> None:
        """Remember the user name; the password check comes with PASS."""
        refusal = self._userpass_refusal()
        if refusal is not None:
            self._send(refusal)
            return
        self._user = name
        # The OpenVMS reply; in secure mode it is the same for unknown users.
        self._send(wire.ok(f'Password required for "{_shown(name)}"'))

    def do_PASS(self, password: bytes) -> defer.Deferred | None:
        """Check USER's password through the portal."""
        refusal = self._userpass_refusal()
        if refusal is not None:
            self._send(refusal)
            return None
        if self._user is None:
            self._send(wire.err("give USER first"))
            return None
        user, self._user = self._user, None
        return self._login(UsernamePassword(user, password), user, "USER",
                           "Username/password combination ok")

    def do_APOP(self, name: bytes, digest: bytes) -> defer.Deferred | None:
        """Check an APOP digest against the user's POP_SECRET.DAT through the portal."""
        if len(digest) != 32 or not set(digest) <= _HEX:
            self._send(wire.err("APOP digest must be 32 hexadecimal digits"))
            return None
        refusal = self._cleartext_refusal()
        if refusal is not None:
            self._send(refusal)
            return None
        self._user = None
        assert self.magic is not None
        credentials = APOPCredentials(name, self.magic, digest)
        return self._login(credentials, name, "APOP", "Username/secret combination ok")

    @property
    def _sasl(self) -> sasl.Mechanism | None:
        """The SASL exchange in progress; while there is one, lines are its responses."""
        return self._mechanism

    @_sasl.setter
    def _sasl(self, mechanism: sasl.Mechanism | None) -> None:
        self._mechanism = mechanism
        self._lines.max_length = wire.MAX_COMMAND_LINE if mechanism is None else MAX_SASL_LINE

    def _sasl_mechanisms(self) -> list[bytes]:
        """The SASL mechanisms usable now; PLAIN only where USER/PASS would be."""
        usable = [m for m in sasl.MECHANISMS if m != b"PLAIN"]
        if self._userpass_refusal() is None:
            usable.append(b"PLAIN")
        return usable

    def do_AUTH(self, mechanism: bytes | None = None, initial: bytes | None = None) -> Any:
        """SASL (RFC 5034): PLAIN against the password file, CRAM-MD5 and SCRAM-SHA-256
        against the POP_SECRET.DAT shared secret."""
        usable = self._sasl_mechanisms()
        if mechanism is None:
            # The pre-RFC 5034 listing form, still sent by some clients.
            self._send(wire.multiline(wire.ok("SASL mechanisms follow"), usable))
            return None
        name = mechanism.upper()
        if name not in usable:
            if name == b"PLAIN":
                self._send(self._userpass_refusal() or wire.err("PLAIN is not available"))
            else:
                self._send(wire.err(f'unrecognized authentication type "{_shown(mechanism)}"'))
            return None
        self._sasl = sasl.make_mechanism(name, hostname=self.config.hostname)
        try:
            data = None if initial is None else wire.sasl_decode(initial)
            step = self._sasl.start(data)
        except (sasl.SASLFailure, ValueError) as e:
            self._sasl = None
            self._send(wire.err(f"authentication failed: {e}"))
            return None
        return self._sasl_step(step)

    def _sasl_line(self, line: bytes) -> Any:
        """A client response during a SASL exchange."""
        mechanism = self._sasl
        assert mechanism is not None
        if self._sasl_success is not None:
            return self._finish_sasl_success(cancel=line != b"")
        if line == b"*":
            self._sasl = None
            self._send(wire.err("authentication cancelled"))
            return None
        try:
            step = mechanism.respond(wire.sasl_decode(line))
        except (sasl.SASLFailure, ValueError) as e:
            self._sasl = None
            self._send(wire.err(f"authentication failed: {e}"))
            return None
        return self._sasl_step(step)

    def _sasl_step(self, step: sasl.Step) -> Any:
        mechanism = self._sasl
        assert mechanism is not None
        if isinstance(step, sasl.Challenge):
            self._send(wire.sasl_challenge(step.data))
            return None
        credentials = step.credentials
        user = getattr(credentials, "username", b"")
        d = self._login(credentials, user, mechanism.name.decode("ascii"), "authentication successful",
                        hold=True)

        def logged_in(result: Any) -> None:
            if result is None:
                self._sasl = None  # refused; the failure reply is out
                return
            extra = mechanism.success()
            if extra is None:
                self._sasl = None
                self._accept(result, "authentication successful")
            else:
                # RFC 5034: success data goes out as a last challenge, answered empty.
                self._sasl_success = result
                self._send(wire.sasl_challenge(extra))

        return d.addCallback(logged_in)

    def _finish_sasl_success(self, cancel: bool) -> None:
        result, self._sasl_success = self._sasl_success, None
        if result is None:
            return
        self._sasl = None
        if cancel:
            result[1].logout()
            self._send(wire.err("authentication cancelled after the server's proof", "AUTH"))
        else:
            self._accept(result, "authentication successful")

    def _userpass_refusal(self) -> bytes | None:
        if self.config.disable_userpass:
            return wire.err("USER/PASS is disabled on this server; use APOP")
        return self._cleartext_refusal()

    def do_STLS(self) -> None:
        """Start TLS (RFC 2595); anything the client pipelined behind STLS is thrown away."""
        if self.secure:
            self._send(wire.err("the session is already encrypted"))
            return
        if self.factory.tls is None:
            self._send(wire.err("STLS is not available: TLS is not configured on this server"))
            return
        self._send(wire.ok("Begin TLS negotiation"))
        # Commands sent in clear behind STLS must not run as if they came over TLS
        # (the STARTTLS command injection of CVE-2011-0411 and its kin).
        self._queue.clear()
        self._lines.clear()
        self._user = None
        self._tls_started = True
        self._output.through_transport()
        self.transport.startTLS(self.factory.tls.options())

    def _login(self, credentials: Any, user: bytes, method: str, success: str,
               hold: bool = False) -> defer.Deferred:
        """Log in through the portal; with ``hold``, fire with the result (None if refused)
        instead of entering TRANSACTION, for SASL's final exchange."""
        assert self._attempts is not None
        self._attempts.method = method
        d = self.portal.login(credentials, self._attempts, pop3.IMailbox)
        if hold:
            return d.addCallbacks(self._held, self._login_failed, errbackArgs=(user,))
        d.addCallbacks(self._accept, self._login_failed, callbackArgs=(success,),
                       errbackArgs=(user,))
        return d

    def _held(self, result: tuple[Any, VMSMailbox, Any]) -> Any:
        if self._closing:
            result[1].logout()
            return None
        return result

    def _accept(self, result: tuple[Any, VMSMailbox, Any], success: str) -> None:
        _, mailbox, _ = result
        if self._closing:
            mailbox.logout()  # the client left while the login ran
            return
        self.mbox = mailbox
        self.phase = state.TRANSACTION
        count, octets = mailbox.totals()
        for problem in mailbox.problems:
            self.events.skipped(user=mailbox.user, problem=problem)
        self.events.snapshot(user=mailbox.user, session=self.session, folder=mailbox.folder,
                             messages=count, octets=octets)
        self._send(wire.ok(f"{success}; {_maildrop(count, octets)}"))

    def _login_failed(self, failure: Failure, user: bytes) -> None:
        assert self._attempts is not None
        if not failure.check(UnauthorizedLogin):
            self.events.failure("login failed unexpectedly", failure=failure)
            self._send(wire.err("temporary server error; try again later", "SYS/TEMP"))
            return
        self.factory.stats.auth_failures += 1
        reason = failure.value.reason if isinstance(failure.value, LoginRefused) else "bad-credentials"
        code, text = refusal_reply(reason, _shown(user), self.config.security)
        if self._attempts.exhausted:
            self._send(wire.err(f"{text}; too many failed logins, closing connection", code))
            self._why = "too-many-auth-failures"
            self._close()
        else:
            self._send(wire.err(text, code))

    # -- TRANSACTION --------------------------------------------------------------------

    def do_STAT(self) -> None:
        """Count and octets of the messages not marked deleted."""
        assert self.mbox is not None
        count, octets = self.mbox.totals()
        self._send(wire.ok(f"{count} {octets}"))

    def do_LIST(self, number: int | None = None) -> defer.Deferred | None:
        """Sizes on the wire; deleted messages are not listed."""
        mbox = self.mbox
        assert mbox is not None
        if number is not None:
            self._send(wire.ok(f"{number} {mbox.size_at(mbox.check(number - 1))}"))
            return None
        count, octets = mbox.totals()
        size_at = mbox.size_at
        lines = (b"%d %d" % (i + 1, size_at(i)) for i in mbox.live_indices())
        return self._lines_reply(wire.ok(_maildrop(count, octets)), lines)

    def do_UIDL(self, number: int | None = None) -> defer.Deferred | None:
        """Unique ids; ``UIDL n`` answers ``+OK n uid`` (RFC 1939)."""
        mbox = self.mbox
        assert mbox is not None
        if number is not None:
            self._send(wire.ok(f"{number} {mbox.uid_at(mbox.check(number - 1))}"))
            return None
        uid_at = mbox.uid_at
        lines = (b"%d %s" % (i + 1, uid_at(i).encode("ascii")) for i in mbox.live_indices())
        return self._lines_reply(wire.ok("unique-id listing follows"), lines)

    def do_RETR(self, number: int) -> defer.Deferred | None:
        """Send a whole message; a completed RETR marks it for the move to MAIL."""
        return self._send_message(number, None)

    def do_TOP(self, number: int, lines: int) -> defer.Deferred | None:
        """Send the headers and the first ``lines`` body lines; TOP does not mark the message read."""
        return self._send_message(number, lines)

    def _send_message(self, number: int, body_lines: int | None) -> defer.Deferred | None:
        mbox = self.mbox
        assert mbox is not None
        index = number - 1
        mbox.check(index)
        messages = mbox.messages
        # As bytes: the os calls take it so without converting it (a RETR's cost counts).
        path, size = messages.raw_path(index), mbox.size_at(index)
        contents = self._read_ahead.take(mbox, index)
        if contents is None and messages.local:
            # In memory already (most recent mail is): no hand-over to the pool.  A RETR
            # larger than a block goes whole too if the socket can take it all now.
            limit = self.factory.block_size
            if (body_lines is None and limit < size <= self.factory.whole_read_limit
                    and self._output.room() >= size):
                limit = self.factory.whole_read_limit
            contents = read_if_cached(path, limit)
        if contents is not None:
            self._send_whole(index, size, body_lines, contents)
            return None
        ahead = self._read_ahead.along(mbox, index)
        source = FileSource(path, self.factory.run_in_thread, self.factory.block_size,
                            [messages.raw_path(i) for i in ahead])

        def opened(_: Any) -> defer.Deferred | None:
            if ahead:
                self._read_ahead.keep(ahead, source.ahead)
            whole = source.whole
            if whole is not None:
                # Read whole in its first block (most mail): one write, no producer to run.
                source.close()
                self.resetTimeout()  # the disk took its time; _run reset it otherwise
                self._send_whole(index, size, body_lines, whole)
                return None
            status, stuffer, top = _message_reply(size, body_lines)
            parts = stuffer.feed_parts if top is None else lambda block: stuffer.feed_parts(top.feed(block))
            # TOP stops reading once the requested lines are out.
            read = source.read if top is None else lambda: defer.succeed(b"") if top.done else source.read()
            self._send(status, *parts(mbox.prefix(index)))
            return self._stream(read, source.close, lambda block: b"".join(parts(block)),
                                stuffer.finish).addCallback(lambda _: self._sent(index, size, body_lines))

        def unreadable(failure: Failure) -> None:
            failure.trap(OSError)
            self.events.error("message {path} of user=<{user}> cannot be read: {why}",
                              path=os.fsdecode(path), user=mbox.user,
                              why=failure.value.strerror or str(failure.value))
            self._send(wire.err(f"message {number} is no longer available", "SYS/TEMP"))

        return source.open().addCallbacks(opened, unreadable)

    def _send_whole(self, index: int, size: int, body_lines: int | None, contents: bytes) -> None:
        """Answer RETR or TOP for a message in memory: one write."""
        assert self.mbox is not None
        status, stuffer, top = _message_reply(size, body_lines)
        head = self.mbox.prefix(index)
        if top is not None:
            head, contents = top.feed(head), top.feed(contents)
        self._send(status, *stuffer.feed_parts(head), *stuffer.feed_parts(contents), stuffer.finish())
        self._sent(index, size, body_lines)

    def _sent(self, index: int, size: int, body_lines: int | None) -> None:
        """A RETR or TOP reply is out: count it, and a RETR marks its message for the move."""
        assert self.mbox is not None
        if body_lines is None:
            self.mbox.mark_retrieved(index)
            self._stats["retr"] += 1
            self._stats["retr_octets"] += size
            self.factory.stats.retrieved(size)
        else:
            self._stats["top"] += 1

    def do_XTND(self, verb: bytes, rest: bytes | None = None) -> None:
        """The OpenVMS extensions: ``XTND STATS`` for the accounts in ``--stats-users``."""
        if verb.upper() != b"STATS":
            self._refuse_command(f'unknown XTND command "{_shown(verb)}"; vmspop offers XTND STATS')
            return
        assert self.mbox is not None
        if self.mbox.user not in self.factory.stats_users:
            self._send(wire.err("XTND STATS is for the accounts in --stats-users", "SYS/PERM"))
            return
        lines = self.factory.report()
        self._send(wire.multiline(wire.ok("Statistics follow"), (line.encode() for line in lines)))

    def shutdown(self) -> bool:
        """Cut this session for a server shutdown; False while its QUIT update runs."""
        if self.phase == state.UPDATE:
            return False
        self._why = "shutdown"
        self.transport.abortConnection()
        return True

    def do_DELE(self, number: int) -> None:
        """Mark a message deleted; it is removed only at QUIT."""
        assert self.mbox is not None
        self.mbox.deleteMessage(number - 1)
        self._read_ahead.drop(number - 1)
        self._send(wire.ok(f"message {number} deleted"))

    def do_NOOP(self) -> None:
        """Nothing, successfully."""
        self._send(wire.ok())

    def do_RSET(self) -> None:
        """Undo every DELE of this session."""
        assert self.mbox is not None
        self.mbox.undeleteMessages()
        count, octets = self.mbox.totals()
        self._send(wire.ok(f"maildrop has {_maildrop(count, octets)}"))

    def do_QUIT(self) -> defer.Deferred | None:
        """End the session; in TRANSACTION, apply the update first and answer only after it."""
        if self.mbox is None:
            self._send(wire.ok("POP server signing off"))
            self._why = "quit"
            self._close()
            return None
        self.phase = state.UPDATE
        self._why = "quit"
        self._queue.clear()
        mbox = self.mbox
        deleted_octets = sum(mbox.size_at(i) for i in mbox.deleted)
        d = mbox.sync()

        def updated(result: UpdateResult) -> None:
            mbox.logout()
            self.events.logout(user=mbox.user, rip=self.rip, session=self.session,
                               retr=self._stats["retr"], retr_octets=self._stats["retr_octets"],
                               top=self._stats["top"], deleted=result.deleted,
                               deleted_octets=deleted_octets, moved=result.moved,
                               missing=result.missing)
            self._send(wire.ok(f"POP server signing off ({result.deleted} deleted, "
                               f"{result.moved} moved to MAIL)"))
            self._close()

        def failed(failure: Failure) -> None:
            mbox.logout()
            if failure.check(UpdateIncomplete):
                # A storage error: one line with its cause, whatever the number of messages.
                incomplete = failure.value
                self.events.update_incomplete(user=mbox.user, rip=self.rip, session=self.session,
                                              summary=incomplete.summary(), why=incomplete.why())
                reply = incomplete.reply()
            else:
                self.events.failure("update of user=<{user}> failed", failure=failure, user=mbox.user)
                reply = "some deleted messages not removed"  # RFC 1939's words
            self._send(wire.err(reply, "SYS/TEMP"))
            self._close()

        return d.addCallbacks(updated, failed)


def _behind_proxy(transport: Any) -> bool:
    """True for a connection from a PROXY-protocol (haproxy:) listener."""
    return isinstance(transport, HAProxyProtocolWrapper)


@functools.lru_cache(maxsize=4096)  # asked at every connection; few distinct clients
def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a UNIX socket path or an unknown address family


def _message_reply(size: int, body_lines: int | None) -> tuple[bytes, wire.Stuffer, wire.TopFilter | None]:
    """The status line, the stuffer and, for TOP, the filter of a RETR or TOP reply."""
    if body_lines is None:
        return wire.ok_octets(size), wire.Stuffer(), None
    return wire.ok("top of message follows"), wire.Stuffer(), wire.TopFilter(body_lines)


def _maildrop(count: int, octets: int) -> str:
    return f"{count} message{'' if count == 1 else 's'} ({octets} octets)"


def _shown(name: bytes) -> str:
    """A client-supplied user name as echoed in replies (printable ASCII only)."""
    return name.decode("ascii", "replace").replace('"', "'")


def _masked(line: bytes) -> bytes:
    """A command line as it may appear in a trace: no passwords, digests or SASL data."""
    verb = line.split(b" ", 1)[0].upper()
    if verb == b"PASS":
        return b"PASS ********"
    if verb == b"APOP":
        parts = line.split(b" ")
        return b" ".join(parts[:2]) + b" ********" if len(parts) > 2 else line
    if verb == b"AUTH" and line.count(b" ") > 1:
        return b" ".join(line.split(b" ")[:2]) + b" ********"
    return line
