"""A stateful model test of whole POP3 sessions against the OpenVMS mailbox rules.

Hypothesis drives :class:`POP3Machine` through random sessions of user jones: STAT,
LIST, UIDL, RETR, TOP, DELE, RSET, NOOP, garbage and malformed lines, pipelined
batches, mail arriving meanwhile, idle time, a concurrent login, and the three ways
a session ends (QUIT, a dropped connection, the idle timeout), each followed by a
new login that must see what the model says is left.  Every command's bytes, and
every pipelined batch, are cut at random points into several ``dataReceived``
calls, and the whole output is compared, byte for byte, with what the model
predicts.

Each example draws its server: the update mode (default, --leave-in-newmail,
--use-mail-folder), --send-id-headers, --message-maximum, the read block size, and
whether blocking work (logins, file reads, the update) completes at once or later,
interleaved with the client's input and with disconnects.

The model knows, for every message file on disk, what was delivered (so its wire
form, size, RETR and TOP bodies follow from first principles, not from vmspop's
codec), where the file is, and its UIDL once a session has listed it.  After every
step the folders on disk must match the model exactly: nothing changes until QUIT;
QUIT removes the deleted messages and (in the default mode) moves the retrieved ones
to MAIL, keeping their UIDLs; a session that ends any other way changes nothing.

Messages are delivered two ways: through ``MailStore.deliver`` (stored with LF line
ends) and as "foreign" files written straight into ``NEWMAIL/new`` with their CRLF
line ends and without size fields, as another delivery agent would leave them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from twisted.internet import defer

from support import Client, Server, open_files
from vmspop._version import __version__
from vmspop.protocol import MAX_BAD_COMMANDS
from vmspop.store import MailboxLocked

USER = "jones"
NEWMAIL, MAIL = "NEWMAIL", "MAIL"
CRLF = b"\r\n"
#: ServerConfig's default --idle-timeout, which the machine's servers keep.
IDLE_TIMEOUT = 600.0
#: The three update modes; --leave-in-newmail and --use-mail-folder exclude each other.
MODES = ("default", "leave_in_newmail", "use_mail_folder")
#: Read block sizes: tiny ones put every line end, CRLF and "." at a block boundary.
BLOCK_SIZES = (1, 2, 3, 7, 64, 256 * 1024)
#: How blocking work (password checks, the snapshot, file reads, the update) completes:
#: "sync" at once, or "queued" later, in steps interleaved with the client's input.
THREADS = ("sync", "queued")
#: Line counts for TOP, including one far beyond any message.
LINE_COUNTS = (0, 1, 2, 3, 5, 9, 9999999999)
#: Lines that are well-formed-looking but wrong in TRANSACTION: all must get a one-line
#: -ERR and change nothing (in particular "QUIT now" and "QUIT\0" must not end the session).
MALFORMED = (
    b"", b"   ", b"RETR", b"RETR x", b"RETR -1", b"RETR 99999999999", b"TOP 1", b"TOP x 1",
    b"TOP 1 -1", b"LIST 1 2", b"UIDL x", b"DELE", b"DELE 1 1", b"STAT 1", b"NOOP x", b"RSET 1",
    b"USER jones", b"PASS wonderland", b"APOP jones " + b"0" * 32, b"AUTH", b"STLS",
    b"XTND foo", b"QUIT now", b"QUIT\x00", b"RETR\t1",
)
#: What one of those (or a garbage line) must be answered with: one printable -ERR line.
ONE_ERROR_LINE = rb"-ERR [\x20-\x7e]+\r\n"
#: ... except the MAX_BAD_COMMANDS-th non-blank one of a session, after which the server hangs up.
LAST_ERROR_LINE = rb"-ERR [\x20-\x7e]+; too many invalid commands, closing connection\r\n"

# -- messages ---------------------------------------------------------------------------------

#: Pieces of message lines: dots (stuffing), NUL and 8-bit octets, and a CR that is never
#: followed by CR or LF (so it cannot merge with a line end into a different line break).
_PIECES = st.sampled_from([b".", b"..", b"Subject: hello", b"x", b" ", b"\t", b"\x00",
                           b"\xc3\xa9", b"\xff", b"\rZ", b"From ", b"a.b", b". "])
_CONTENT = st.lists(_PIECES, max_size=4).map(b"".join)


@dataclass(frozen=True)
class MessageSpec:
    """A message as delivered: lines with their own line ends, and an optional unterminated tail.

    Attributes:
        lines: (content, LF or CRLF) pairs; contents hold no LF and no CR before a line end.
        tail: the last line when the message has no final newline (b"" for none); it may end in CR.
        foreign: written directly into NEWMAIL/new (CRLF kept, no size fields in the name)
            instead of through ``MailStore.deliver`` (which stores LF line ends).
    """

    lines: tuple[tuple[bytes, bytes], ...]
    tail: bytes
    foreign: bool

    @property
    def raw(self) -> bytes:
        """The octets handed to the delivery agent."""
        return b"".join(c + end for c, end in self.lines) + self.tail

    @property
    def stored(self) -> bytes:
        """The octets in the message file."""
        if self.foreign:
            return self.raw
        return b"".join(c + b"\n" for c, _ in self.lines) + self.tail

    @property
    def wire(self) -> bytes:
        """The message as POP3 sends it, before byte-stuffing: every line end CRLF."""
        return b"".join(c + CRLF for c, _ in self.lines) + self.tail

    @property
    def size(self) -> int:
        """The size STAT, LIST and RETR report."""
        return len(self.wire)

    @property
    def text_lines(self) -> list[bytes]:
        """Every line a client sees, the unterminated tail included."""
        return [c for c, _ in self.lines] + ([self.tail] if self.tail else [])

    def retr_reply(self, prefix: list[bytes]) -> bytes:
        """The complete RETR reply, after the ``prefix`` header lines (--send-id-headers)."""
        size = self.size + sum(len(line) + len(CRLF) for line in prefix)
        return b"+OK %d octets\r\n" % size + _body(prefix + self.text_lines)

    def top_reply(self, body_lines: int, prefix: list[bytes]) -> bytes:
        """The complete TOP reply: the header, the blank line and ``body_lines`` body lines.

        The header (after the ``prefix`` lines) ends at the first empty line; a message
        without one is all header.
        """
        separator = next((i for i, (c, _) in enumerate(self.lines) if c == b""), None)
        lines = prefix + self.text_lines
        if separator is not None:
            lines = lines[: len(prefix) + separator + 1 + body_lines]
        return b"+OK top of message follows\r\n" + _body(lines)


def _body(lines: list[bytes]) -> bytes:
    """Lines as a multi-line reply body: dot-stuffed, CRLF-terminated, then the "." line."""
    return b"".join((b"." + line if line.startswith(b".") else line) + CRLF
                    for line in lines) + b".\r\n"


@st.composite
def message_specs(draw: st.DrawFn) -> MessageSpec:
    """Messages of 0-8 lines mixing LF and CRLF, "." lines, and sometimes no final newline."""
    lines = draw(st.lists(st.tuples(_CONTENT, st.sampled_from([b"\n", CRLF])), max_size=8))
    tail = draw(st.one_of(st.just(b""), _CONTENT, _CONTENT.map(lambda c: c + b"\r")))
    return MessageSpec(tuple(lines), tail, draw(st.booleans()))


@dataclass
class DiskMessage:
    """Where the model expects one message file, and what it knows about it.

    Attributes:
        spec: what was delivered.
        base: the unique part of the file name (it never changes).
        key: the arrival order (seconds, microseconds, base), as the server sorts.
        folder: NEWMAIL or MAIL.
        rel: "new/<name>" or "cur/<name>" inside the folder.
        uid: the UIDL, once a session has listed the message.
    """

    spec: MessageSpec
    base: str
    key: tuple[int, int, str]
    folder: str
    rel: str
    uid: str | None = None


# -- sessions and commands ---------------------------------------------------------------------


@dataclass
class Session:
    """The model of the session in progress: its snapshot and its marks (0-based indices).

    Attributes:
        bad: invalid non-blank commands so far (garbage, malformed, wrong state).
        cut: the server hung up after too many invalid commands; later lines go unanswered.
    """

    client: Client
    snapshot: list[DiskMessage]
    deleted: set[int] = field(default_factory=set)
    retrieved: set[int] = field(default_factory=set)
    bad: int = 0
    cut: bool = False


@dataclass(frozen=True)
class Command:
    """One command as sent: its kind (STAT, LIST, ..., GARBAGE, MALFORMED), arguments, octets."""

    kind: str
    args: tuple[int, ...]
    line: bytes


@dataclass(frozen=True)
class Loose:
    """An expected reply given as a regular expression (error texts that are not pinned)."""

    pattern: bytes


Expected = bytes | Loose

#: Command kinds the rules and pipelined batches draw from.
KINDS = ("STAT", "LIST", "LIST n", "UIDL", "UIDL n", "RETR", "TOP", "DELE", "RSET", "NOOP",
         "GARBAGE", "MALFORMED")
_NUMBERED = frozenset({"LIST n", "UIDL n", "RETR", "TOP", "DELE"})
_STYLES = st.tuples(
    st.sampled_from(["upper", "lower", "mixed"]),  # verb case
    st.sampled_from([b"", b" "]),                  # leading space (tolerated)
    st.sampled_from([b" ", b"  "]),                # separator
    st.integers(0, 2),                             # leading zeros on numbers
    st.sampled_from([b"", b" "]),                  # trailing space
    st.sampled_from([CRLF, b"\n"]),                # line end (bare LF: people with telnet)
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split data at the given offsets (any order; duplicates give empty chunks)."""
    points = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:])]


def maildrop(count: int, octets: int) -> bytes:
    """The "N messages (M octets)" phrase of the login, LIST and RSET replies."""
    return b"%d message%s (%d octets)" % (count, b"" if count == 1 else b"s", octets)


_F = TypeVar("_F", bound=Callable[..., Any])


def in_session(f: _F) -> _F:
    """Precondition: a session is logged in and has not ended."""
    return precondition(lambda self: self.session is not None)(f)


# -- the machine ---------------------------------------------------------------------------------


class POP3Machine(RuleBasedStateMachine):
    """Random POP3 sessions of jones, checked reply by reply and folder by folder."""

    def __init__(self) -> None:
        super().__init__()
        # A fresh directory per example: pytest's function-scoped tmp_path is shared by
        # every example hypothesis runs inside one test call.
        self.tmp = Path(tempfile.mkdtemp(prefix="vmspop-model-"))
        self.server: Server | None = None
        self.mode = "default"
        self.disk: dict[str, DiskMessage] = {}
        self.session: Session | None = None
        self.idle_seconds = 0.0
        self.foreign_made = 0
        self.id_server: bytes | None = None
        self.limit = 0
        self.pending: list[tuple[defer.Deferred[Any], Callable[[], Any]]] = []

    def teardown(self) -> None:
        """Drop a session still open (releasing its lock and files) and remove the directory."""
        if self.session is not None:
            self.session.client.drop()
            self.session = None
        self._settle()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers: the store --------------------------------------------------------------------

    @property
    def srv(self) -> Server:
        """The server of this example (set up by the initialize rule)."""
        assert self.server is not None
        return self.server

    @property
    def served(self) -> str:
        """The folder sessions serve."""
        return MAIL if self.mode == "use_mail_folder" else NEWMAIL

    def _prefix(self, message: DiskMessage) -> list[bytes]:
        """The header lines --send-id-headers puts before the message."""
        if self.id_server is None:
            return []
        assert message.uid is not None
        return [b"X-POP3-Server: " + self.id_server, b"X-POP3-ID: " + message.uid.encode()]

    def _size(self, message: DiskMessage) -> int:
        """The size the session reports for a message (ID headers included)."""
        return message.spec.size + sum(len(line) + len(CRLF) for line in self._prefix(message))

    def _queue(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """The "queued" ThreadRunner: the call runs when the machine lets it (_settle)."""
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append((d, lambda: f(*args, **kwargs)))
        return d

    def _settle(self, budget: int | None = None) -> None:
        """Let queued blocking calls finish, oldest first: ``budget`` of them, or all."""
        while self.pending and (budget is None or budget > 0):
            d, call = self.pending.pop(0)
            defer.maybeDeferred(call).chainDeferred(d)  # may queue more calls
            if budget is not None:
                budget -= 1

    def _talk(self, client: Client, payload: bytes) -> bytes:
        """Send ``payload`` in one piece and return everything the server says once idle."""
        output = client.send(payload)
        self._settle()
        return output + client.take()

    def _deliver(self, spec: MessageSpec) -> None:
        """Deliver one message and record where it must be."""
        new = self.srv.store.folder(USER, NEWMAIL) / "new"
        if spec.foreign:
            now = time.time()
            self.foreign_made += 1
            name = f"{int(now)}.M{int(now % 1 * 1e6):06d}P{os.getpid()}F{self.foreign_made}.foreign"
            (new / name).write_bytes(spec.raw)
        else:
            [path] = self.srv.deliver(USER, spec.raw)
            name = path.name
            assert path.parent == new
            assert name == f"{name.split(',', 1)[0]},S={len(spec.stored)},W={spec.size}", name
            assert path.read_bytes() == spec.stored
        base = name.split(",", 1)[0]
        arrival = re.match(r"(\d+)\.M(\d+)", base)
        assert arrival is not None, base
        assert base not in self.disk
        self.disk[base] = DiskMessage(spec, base, (int(arrival[1]), int(arrival[2]), base),
                                      NEWMAIL, "new/" + name)

    def _layout(self) -> dict[str, list[str]]:
        """The message files on disk, per folder."""
        return {folder: self.srv.files(USER, folder) for folder in (NEWMAIL, MAIL)}

    def _expected_layout(self, disk: dict[str, DiskMessage] | None = None) -> dict[str, list[str]]:
        """The message files the model (or the given disk model) expects, per folder."""
        layout: dict[str, list[str]] = {NEWMAIL: [], MAIL: []}
        for message in (self.disk if disk is None else disk).values():
            layout[message.folder].append(message.rel)
        return {folder: sorted(names) for folder, names in layout.items()}

    def _tmp_files(self) -> list[str]:
        return [name for folder in (NEWMAIL, MAIL)
                for name in os.listdir(self.srv.store.folder(USER, folder) / "tmp")]

    def _lock_is_free(self) -> bool:
        """Whether a new session could take jones's lock now (probing with a separate flock)."""
        try:
            lock = self.srv.store.lock(USER)
        except MailboxLocked:
            return False
        lock.release()
        return True

    def _check_uids_unique(self) -> None:
        uids = [m.uid for m in self.disk.values() if m.uid is not None]
        assert len(uids) == len(set(uids)), f"a UIDL is used twice: {sorted(uids)}"

    def _check_mail_folder_uids(self) -> None:
        """MAIL's files keep the UIDLs they were listed with, and no UIDL is used twice
        (vmspop's own scan; read-only here, since every file in MAIL carries its sizes)."""
        scanned = self.srv.store.scan(USER, MAIL)
        assert sorted(m.base for m in scanned) == sorted(
            m.base for m in self.disk.values() if m.folder == MAIL)
        for stored in scanned:
            known = self.disk[stored.base]
            if known.uid is None:
                known.uid = stored.uid  # beyond --message-maximum: never listed yet
            assert stored.uid == known.uid, (stored, known)
        self._check_uids_unique()

    # -- helpers: sessions ---------------------------------------------------------------------

    def _login_effects(self) -> None:
        """What a login does on disk, in its thread, even if the client has gone: with
        --use-mail-folder NEWMAIL moves into MAIL (names kept), and the scan gives files
        without size fields their ",S=<stored>,W=<wire>" once."""
        if self.mode == "use_mail_folder":
            for message in self.disk.values():
                message.folder = MAIL
        for message in self.disk.values():
            if message.folder == self.served and ",S=" not in message.rel:
                message.rel += f",S={len(message.spec.stored)},W={message.spec.size}"

    def _abandoned_login(self, data: st.DataObject) -> None:
        """A client sends USER and PASS and vanishes before the answer: the login runs to
        its end anyway, and must then free the lock."""
        client = self.srv.connect()
        client.send(b"USER jones\r\nPASS wonderland\r\n")
        self._settle(data.draw(st.integers(0, 3), label="calls done before the drop"))
        client.drop()
        self._settle()
        self._login_effects()
        self._end_checks()

    def _open_session(self, data: st.DataObject) -> None:
        """Connect, log in, and learn the snapshot's UIDLs from the first UIDL listing.

        The snapshot, its sizes and its UIDLs must be exactly what the model says the
        previous sessions left; sometimes an abandoned login comes first.
        """
        assert self.session is None
        if data.draw(st.sampled_from([False, False, False, True]), label="abandoned login first"):
            self._abandoned_login(data)
        client = self.srv.connect()
        assert client.greeting.startswith(b"+OK POP server vmspop ")
        self._login_effects()
        snapshot = sorted((m for m in self.disk.values() if m.folder == self.served),
                          key=lambda m: m.key)
        if self.limit:
            snapshot = snapshot[: self.limit]  # --message-maximum: the oldest ones
        assert self._talk(client, b"USER jones\r\n") == b'+OK Password required for "jones"\r\n'
        welcome = self._talk(client, b"PASS wonderland\r\n")
        self.session = Session(client, snapshot)
        self.idle_seconds = 0.0

        status, _, rest = self._talk(client, b"UIDL\r\n").partition(CRLF)
        assert status == b"+OK unique-id listing follows" and rest.endswith(b".\r\n"), rest
        entries = rest[:-3].split(CRLF)[:-1]
        assert len(entries) == len(snapshot), entries
        for number, (entry, message) in enumerate(zip(entries, snapshot), 1):
            shown, _, uid = entry.partition(b" ")
            assert shown == b"%d" % number, entry
            assert re.fullmatch(rb"[\x21-\x7e]{1,70}", uid), entry  # RFC 1939 section 7
            if message.uid is None:
                message.uid = uid.decode("ascii")
            else:
                assert uid.decode("ascii") == message.uid, "a UIDL changed between sessions"
        self._check_uids_unique()
        # Checked only now: with --send-id-headers the sizes include the UIDLs.
        octets = sum(self._size(m) for m in snapshot)
        assert welcome == (
            b"+OK Username/password combination ok; " + maildrop(len(snapshot), octets) + CRLF)
        if self.served == NEWMAIL:
            self._check_mail_folder_uids()

    def _end_checks(self) -> None:
        """After any end of a session: files closed, disk as modelled, lock free."""
        assert self.session is None
        assert not self.pending
        assert open_files(self.tmp) == []
        assert self._layout() == self._expected_layout()
        assert self._tmp_files() == []
        assert self._lock_is_free()

    def _quit_outcome(self) -> tuple[dict[str, DiskMessage], bytes]:
        """The disk model after a QUIT of the session now, and the QUIT reply."""
        s = self.session
        assert s is not None
        disk = {base: replace(message) for base, message in self.disk.items()}
        moving = sorted(s.retrieved - s.deleted) if self.mode == "default" else []
        for index in s.deleted:
            del disk[s.snapshot[index].base]
        for index in moving:
            message = disk[s.snapshot[index].base]
            head = message.rel.split("/", 1)[1].split(":", 1)[0]
            message.folder, message.rel = MAIL, f"cur/{head}:2,S"
        reply = b"+OK POP server signing off (%d deleted, %d moved to MAIL)\r\n" % (
            len(s.deleted), len(moving))
        return disk, reply

    def _number(self, data: st.DataObject) -> int:
        """A message number: mostly 0..count+1 (so invalid ones appear), rarely huge."""
        assert self.session is not None
        count = len(self.session.snapshot)
        number: int = data.draw(
            st.sampled_from([*range(count + 2)] * 3 + [4294967296, 9999999999]), label="number")
        return number

    def _render(self, data: st.DataObject, verb: str, args: tuple[int, ...] = ()) -> bytes:
        """A command line in a drawn but valid spelling."""
        style: tuple[str, bytes, bytes, int, bytes, bytes] = data.draw(_STYLES, label="style")
        case, lead, sep, zeros, trail, eol = style
        word = {"upper": verb, "lower": verb.lower(),
                "mixed": "".join(c.lower() if i % 2 else c for i, c in enumerate(verb))}[case]
        parts = [word.encode()]
        for arg in args:
            digits = b"%d" % arg
            parts.append(b"0" * zeros + digits if len(digits) + zeros <= 10 else digits)
        return lead + sep.join(parts) + trail + eol

    def _draw(self, data: st.DataObject, kind: str) -> Command:
        """A command of ``kind`` with drawn arguments and spelling."""
        if kind == "GARBAGE":
            # "#" can never begin a verb, so the line is never a valid command.
            junk = data.draw(st.binary(max_size=59), label="garbage")
            junk = junk.replace(b"\r", b"").replace(b"\n", b"")
            return Command(kind, (), b"#" + junk + data.draw(st.sampled_from([CRLF, b"\n"])))
        if kind == "MALFORMED":
            line = data.draw(st.sampled_from(MALFORMED), label="malformed")
            return Command(kind, (), line + data.draw(st.sampled_from([CRLF, b"\n"])))
        verb = kind.split(" ")[0]
        args: tuple[int, ...] = ()
        if kind in _NUMBERED:
            args = (self._number(data),)
        if kind == "TOP":
            args += (data.draw(st.sampled_from(LINE_COUNTS), label="lines"),)
        return Command(kind, args, self._render(data, verb, args))

    def _bad_number(self, number: int) -> bytes | None:
        """The -ERR for a message number that names no live message, else None."""
        assert self.session is not None
        count = len(self.session.snapshot)
        if not 1 <= number <= count:
            return b"-ERR no such message, only %d message%s in maildrop\r\n" % (
                count, b"" if count == 1 else b"s")
        if number - 1 in self.session.deleted:
            return b"-ERR message %d already deleted\r\n" % number
        return None

    def _apply(self, command: Command) -> Expected:
        """Run ``command`` on the model; return the reply it must get."""
        s = self.session
        assert s is not None
        live = [(i, m) for i, m in enumerate(s.snapshot) if i not in s.deleted]
        octets = sum(self._size(m) for _, m in live)
        kind, args = command.kind, command.args
        if s.cut:
            return b""  # the connection is closing: nothing more is read
        if kind in ("GARBAGE", "MALFORMED"):
            if not command.line.rstrip(b"\n").rstrip(b"\r").strip():
                return Loose(ONE_ERROR_LINE)  # a blank line is answered, but not counted
            s.bad += 1
            if s.bad >= MAX_BAD_COMMANDS:
                s.cut = True
                return Loose(LAST_ERROR_LINE)
            return Loose(ONE_ERROR_LINE)
        if kind == "STAT":
            return b"+OK %d %d\r\n" % (len(live), octets)
        if kind == "LIST":
            return (b"+OK " + maildrop(len(live), octets) + CRLF
                    + b"".join(b"%d %d\r\n" % (i + 1, self._size(m)) for i, m in live) + b".\r\n")
        if kind == "UIDL":
            return (b"+OK unique-id listing follows\r\n"
                    + b"".join(b"%d %s\r\n" % (i + 1, str(m.uid).encode()) for i, m in live)
                    + b".\r\n")
        if kind == "NOOP":
            return b"+OK\r\n"
        if kind == "RSET":
            s.deleted.clear()  # retrieval marks stay (RFC 1939)
            everything = sum(self._size(m) for m in s.snapshot)
            return b"+OK maildrop has " + maildrop(len(s.snapshot), everything) + CRLF
        number = args[0]
        refusal = self._bad_number(number)
        if refusal is not None:
            return refusal
        index = number - 1
        message = s.snapshot[index]
        if kind == "LIST n":
            return b"+OK %d %d\r\n" % (number, self._size(message))
        if kind == "UIDL n":
            return b"+OK %d %s\r\n" % (number, str(message.uid).encode())
        if kind == "RETR":
            s.retrieved.add(index)
            return message.spec.retr_reply(self._prefix(message))
        if kind == "TOP":
            return message.spec.top_reply(args[1], self._prefix(message))
        assert kind == "DELE", kind
        s.deleted.add(index)
        return b"+OK message %d deleted\r\n" % number

    def _send(self, data: st.DataObject, payload: bytes, settle: bool = True) -> bytes:
        """Send ``payload`` cut at random points into several reads, letting some queued
        blocking calls finish between reads (and, with ``settle``, all at the end)."""
        assert self.session is not None
        client = self.session.client
        cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=5), label="cuts")
        output = b""
        for chunk in split_at(payload, cuts):
            output += client.send(chunk)
            if self.pending:
                self._settle(data.draw(st.integers(0, 2), label="calls done"))
                output += client.take()
        if settle:
            self._settle()
            output += client.take()
        return output

    @staticmethod
    def _check(output: bytes, expected: list[Expected]) -> None:
        """The output is exactly the expected replies, in order."""
        pattern = b"".join(e.pattern if isinstance(e, Loose) else re.escape(e) for e in expected)
        assert re.fullmatch(pattern, output, re.DOTALL), (
            f"\nexpected: {expected!r}\nactual:   {output!r}")

    def _exchange(self, data: st.DataObject, commands: list[Command]) -> None:
        """Send the commands in one go (randomly cut) and check the replies against the model."""
        expected = [self._apply(c) for c in commands]
        output = self._send(data, b"".join(c.line for c in commands))
        self._check(output, expected)
        self.idle_seconds = 0.0
        assert self.session is not None
        if self.session.cut:
            self._hung_up(data)

    def _hung_up(self, data: st.DataObject) -> None:
        """The server closed the connection on its own: no update; jones logs in again."""
        assert self.session is not None
        client = self.session.client
        assert client.closed
        client.drop()  # the transport closes
        self.session = None
        self._end_checks()
        self._open_session(data)

    # -- setup --------------------------------------------------------------------------------

    @initialize(mode=st.sampled_from(MODES), id_headers=st.booleans(),
                limit=st.sampled_from([0, 0, 0, 1, 3]), threads=st.sampled_from(THREADS),
                block_size=st.sampled_from(BLOCK_SIZES),
                messages=st.lists(message_specs(), max_size=6), data=st.data())
    def setup(self, mode: str, id_headers: bool, limit: int, threads: str, block_size: int,
              messages: list[MessageSpec], data: st.DataObject) -> None:
        """A store with jones and 0-6 messages and the drawn settings (update mode,
        --send-id-headers, --message-maximum, block size, thread timing); jones logs in."""
        self.mode = mode
        self.limit = limit
        options: dict[str, Any] = {} if mode == "default" else {mode: True}
        self.server = Server(self.tmp, send_id_headers=id_headers, message_maximum=limit, **options)
        if id_headers:
            self.id_server = f"{self.server.config.hostname} vmspop {__version__}".encode()
        self.server.factory.block_size = block_size
        if threads == "queued":
            self.server.run_in_thread = self._queue
        self.server.add_user(USER)
        for spec in messages:
            self._deliver(spec)
        before = {m.base for m in self.disk.values()}
        self._open_session(data)
        assert {m.base for m in self.disk.values() if m.folder == self.served} == before

    # -- transaction commands -----------------------------------------------------------------

    @in_session
    @rule(data=st.data())
    def stat(self, data: st.DataObject) -> None:
        """STAT counts only the messages not marked deleted."""
        self._exchange(data, [self._draw(data, "STAT")])

    @in_session
    @rule(data=st.data())
    def list_all(self, data: st.DataObject) -> None:
        """LIST shows the live messages with their wire sizes."""
        self._exchange(data, [self._draw(data, "LIST")])

    @in_session
    @rule(data=st.data())
    def list_one(self, data: st.DataObject) -> None:
        """LIST n: one size, or -ERR for a deleted or out-of-range number."""
        self._exchange(data, [self._draw(data, "LIST n")])

    @in_session
    @rule(data=st.data())
    def uidl_all(self, data: st.DataObject) -> None:
        """UIDL lists the live messages with the UIDLs first listed."""
        self._exchange(data, [self._draw(data, "UIDL")])

    @in_session
    @rule(data=st.data())
    def uidl_one(self, data: st.DataObject) -> None:
        """UIDL n answers "+OK n uid", or -ERR."""
        self._exchange(data, [self._draw(data, "UIDL n")])

    @in_session
    @rule(data=st.data())
    def retr(self, data: st.DataObject) -> None:
        """RETR sends the message with CRLF line ends, byte-stuffed, and marks it retrieved."""
        self._exchange(data, [self._draw(data, "RETR")])

    @in_session
    @rule(data=st.data())
    def top(self, data: st.DataObject) -> None:
        """TOP n k sends the header, the blank line and k body lines; no retrieval mark."""
        self._exchange(data, [self._draw(data, "TOP")])

    @in_session
    @rule(data=st.data())
    def dele(self, data: st.DataObject) -> None:
        """DELE marks a live message deleted; a deleted or unknown one gets -ERR."""
        self._exchange(data, [self._draw(data, "DELE")])

    @in_session
    @rule(data=st.data())
    def rset(self, data: st.DataObject) -> None:
        """RSET clears every deletion mark of the session."""
        self._exchange(data, [self._draw(data, "RSET")])

    @in_session
    @rule(data=st.data())
    def noop(self, data: st.DataObject) -> None:
        """NOOP answers +OK."""
        self._exchange(data, [self._draw(data, "NOOP")])

    @in_session
    @rule(data=st.data())
    def garbage(self, data: st.DataObject) -> None:
        """A line of random octets gets one -ERR line; the session goes on."""
        self._exchange(data, [self._draw(data, "GARBAGE")])

    @in_session
    @rule(data=st.data())
    def malformed(self, data: st.DataObject) -> None:
        """A bad argument list, or a command of another state, gets -ERR and changes nothing."""
        self._exchange(data, [self._draw(data, "MALFORMED")])

    @in_session
    @rule(data=st.data(), count=st.integers(2, 4))
    def pipelined(self, data: st.DataObject, count: int) -> None:
        """2-4 commands sent at once are answered in order, each as if sent alone."""
        kinds = [data.draw(st.sampled_from(KINDS), label="kind") for _ in range(count)]
        self._exchange(data, [self._draw(data, kind) for kind in kinds])

    # -- time and new mail --------------------------------------------------------------------

    @rule(spec=message_specs())
    def new_mail(self, spec: MessageSpec) -> None:
        """Mail arriving during a session is not in its snapshot and survives its QUIT."""
        self._deliver(spec)

    @in_session
    @rule(data=st.data(), seconds=st.sampled_from([1.0, 240.0, 420.0, 599.0]))
    def idle(self, data: st.DataObject, seconds: float) -> None:
        """Idle time; at --idle-timeout the client is logged out and nothing is updated."""
        assert self.session is not None
        client = self.session.client
        self.srv.clock.advance(seconds)
        self.idle_seconds += seconds
        output = client.take()
        if self.idle_seconds < IDLE_TIMEOUT:
            assert output == b""
            return
        assert output == b"-ERR autologout; idle for too long\r\n"
        self._hung_up(data)

    @in_session
    @rule(leave=st.sampled_from(["QUIT", "drop"]))
    def second_login(self, leave: str) -> None:
        """A concurrent login gets -ERR [IN-USE] and changes nothing; the session goes on."""
        other = self.srv.connect()
        self._check(self._talk(other, b"USER jones\r\nPASS wonderland\r\n"),
                    [b'+OK Password required for "jones"\r\n',
                     Loose(rb"-ERR \[IN-USE\] [\x20-\x7e]+\r\n")])
        if leave == "QUIT":
            assert self._talk(other, b"QUIT\r\n") == b"+OK POP server signing off\r\n"
            assert other.closed
        other.drop()

    # -- the end of a session ------------------------------------------------------------------

    @in_session
    @rule(data=st.data(), before=st.integers(0, 2),
          after=st.lists(st.sampled_from([b"DELE 1\r\n", b"RSET\r\n", b"STAT\r\n", b"QUIT\r\n"]),
                         max_size=2))
    def quit(self, data: st.DataObject, before: int, after: list[bytes]) -> None:
        """QUIT (maybe pipelined after commands, and before ones that must be ignored) applies
        the marks: deleted files go, retrieved ones move to MAIL in the default mode."""
        s = self.session
        assert s is not None
        commands = [self._draw(data, data.draw(st.sampled_from(KINDS), label="kind"))
                    for _ in range(before)]
        expected: list[Expected] = [self._apply(c) for c in commands]
        payload = b"".join(c.line for c in commands) + self._render(data, "QUIT") + b"".join(after)
        if s.cut:  # hung up before the QUIT was read
            self._check(self._send(data, payload), expected)
            self._hung_up(data)
            return
        disk, reply = self._quit_outcome()
        self._check(self._send(data, payload), [*expected, reply])
        self.disk = disk
        client = s.client
        assert client.closed
        assert client.send(b"STAT\r\n") == b""
        client.drop()  # the transport closes after the reply
        self.session = None
        self._end_checks()
        self._check_mail_folder_uids()
        self._open_session(data)

    @in_session
    @rule(data=st.data(), how=st.sampled_from(["plain", "partial line", "mid-RETR", "in flight"]))
    def drop(self, data: st.DataObject, how: str) -> None:
        """A connection lost without QUIT (also mid-line, mid-RETR, or with commands still
        running) changes nothing on disk and frees the lock.  If a pipelined QUIT did start
        its update, the update completes: all of it, never part."""
        s = self.session
        assert s is not None
        client = s.client
        if how == "partial line":
            line = self._draw(data, data.draw(st.sampled_from(KINDS), label="kind")).line
            assert client.send(line[: data.draw(st.integers(0, max(0, len(line) - 2)))]) == b""
        elif how == "mid-RETR":
            live = [i for i in range(len(s.snapshot)) if i not in s.deleted]
            if live:
                index = data.draw(st.sampled_from(live), label="index")
                write = client.transport.write

                def write_then_stall(octets: bytes) -> None:
                    write(octets)
                    if client.protocol._streamer is not None:
                        client.protocol._streamer.pauseProducing()

                client.transport.write = write_then_stall  # type: ignore[method-assign]
                output = self._talk(client, b"RETR %d\r\n" % (index + 1))
                message = s.snapshot[index]
                assert output.startswith(b"+OK %d octets\r\n" % self._size(message)), output
        elif how == "in flight":
            kinds = [k for k in KINDS if k not in ("GARBAGE", "MALFORMED")]
            commands = [self._draw(data, data.draw(st.sampled_from(kinds), label="kind"))
                        for _ in range(data.draw(st.integers(0, 3), label="commands"))]
            replies = [self._apply(c) for c in commands]
            before = b"".join(r for r in replies if isinstance(r, bytes))
            quitting = data.draw(st.booleans(), label="QUIT too")
            quitted, reply = self._quit_outcome()
            payload = b"".join(c.line for c in commands) + (b"QUIT\r\n" if quitting else b"")
            output = self._send(data, payload, settle=False)
            client.drop()
            self._settle()
            output += client.take()
            full = before + (reply if quitting else b"")
            assert full.startswith(output), f"\nexpected a prefix of {full!r}\nactual: {output!r}"
            if quitting and output == full:
                self.disk = quitted  # the update ran: all of it
            elif quitting and output == before and self._layout() == self._expected_layout(quitted):
                self.disk = quitted  # it ran, and its reply was not written to the lost connection
        if how != "in flight":
            client.drop()
        self.session = None
        self._end_checks()
        self._open_session(data)

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def disk_matches_model(self) -> None:
        """The folders hold exactly the modelled files (nothing changes before QUIT); tmp/ is empty."""
        assert self._layout() == self._expected_layout()
        assert self._tmp_files() == []

    @invariant()
    def session_open_and_quiet(self) -> None:
        """During a session the connection stays open, idle and locked; otherwise the lock is free."""
        if self.session is None:
            assert self._lock_is_free()
            return
        client = self.session.client
        assert not client.closed
        assert client.transport.value() == b""
        assert client.protocol._streamer is None and not client.protocol._queue.busy
        assert not len(client.protocol._queue)
        assert not self._lock_is_free()


# About 8 s on two idle cores (hypothesis's own bookkeeping dominates); deadline=None because
# a step's time depends on fsync and on how many messages earlier steps delivered.
# No health check needs suppressing.  Shrinking a failure can take a few minutes.
POP3Machine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestPOP3Session = POP3Machine.TestCase
