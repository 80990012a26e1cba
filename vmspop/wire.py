"""The POP3 wire codec: replies, command parsing, line framing, body framing.

Pure functions and small state machines, bytes in and bytes out: nothing here
does I/O or imports Twisted, so every rule of the protocol's framing can be
tested exhaustively on its own.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# RFC 1939 §3: a response line is at most 512 octets including the CRLF.
MAX_REPLY_LINE = 512
# RFC 2449 §4: a command line is at most 255 octets including the CRLF.
MAX_COMMAND_LINE = 255
# RFC 1939 §3: each argument is at most 40 characters.
MAX_ARGUMENT = 40
# RFC 1939 §3 keywords are 3-4 characters; allow extensions up to 10 letters.
MAX_VERB = 10
# Message numbers and line counts fit in 10 digits (> 2**32); more is abuse.
MAX_NUMBER_DIGITS = 10

CRLF = b"\r\n"
# RFC 1939 §3: a multi-line response ends with a line holding a single ".".
TERMINATOR = b".\r\n"

_LF = 0x0A
_CR = 0x0D
_DOT = 0x2E

# Anything that could break a reply line or confuse a client's terminal:
# C0, DEL, C1 and the Unicode line/paragraph separators.
_REPLY_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_PRINTABLE = re.compile(rb"[\x21-\x7e]+")
_VERB = re.compile(rb"[A-Za-z]{1,%d}" % MAX_VERB)
_NUMBER = re.compile(rb"[0-9]{1,%d}" % MAX_NUMBER_DIGITS)
_BAD_CHARS = "non-ASCII or control characters in command"


# --- Replies


def _reply(status: str, text: str, code: str | None) -> bytes:
    line = status
    if code:
        line += f" [{code}]"
    if text:
        line += " " + text
    line = _REPLY_UNSAFE.sub(" ", line)
    data = line.encode("utf-8", "replace")  # lone surrogates must not crash
    limit = MAX_REPLY_LINE - len(CRLF)
    if len(data) > limit:
        # Cut on a character boundary: dropping a torn trailing sequence.
        data = data[:limit].decode("utf-8", "ignore").encode("utf-8")
    return data + CRLF


def ok(text: str = "", code: str | None = None) -> bytes:
    """Build ``b"+OK [CODE] text\\r\\n"``; see err() for the rules."""
    return _reply("+OK", text, code)


def ok_octets(size: int) -> bytes:
    """RETR's ``b"+OK n octets\\r\\n"`` (RFC 1939's example): ok() for the commonest
    reply, without its checks, which a number cannot fail."""
    return b"+OK %d octets\r\n" % size


def err(text: str, code: str | None = None) -> bytes:
    """Build ``b"-ERR [CODE] text\\r\\n"``, e.g. ``err("locked", "IN-USE")``.

    Args:
        text: Human-readable UTF-8 text; control characters become spaces,
            and it is truncated to keep the line within MAX_REPLY_LINE.
        code: Optional RFC 2449/3206 response code (AUTH, SYS/TEMP, ...).
    """
    return _reply("-ERR", text, code)


def multiline(first: bytes, lines: Iterable[bytes]) -> bytes:
    """Build a multi-line response (CAPA, LIST, UIDL...).

    Args:
        first: The complete status line, CRLF included.
        lines: Lines without terminators; they must not contain CR or LF.

    Returns:
        The status line, the dot-stuffed lines and the terminating ``.`` line.

    Raises:
        ValueError: A line contains CR or LF (it would corrupt the framing).
    """
    items = list(lines)
    if not items:
        return first + TERMINATOR
    body = CRLF.join(items)
    seps = len(items) - 1
    if body.count(b"\n") != seps or body.count(b"\r") != seps:
        raise ValueError("multi-line response line contains CR or LF")
    if body[:1] == b".":
        body = b"." + body
    body = body.replace(b"\r\n.", b"\r\n..")
    return b"".join((first, body, CRLF, TERMINATOR))


# --- Commands


class CommandError(Exception):
    """A malformed client command; ``text`` is safe to send to the client."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Command:
    """A parsed command: upper-case verb and its present arguments."""

    verb: str
    args: tuple[bytes | int, ...]


# Argument kinds: word (printable ASCII token), number (decimal, as int),
# rest (verbatim remainder after one space); a "?" suffix makes it optional.
# Absent optional arguments are simply missing from Command.args.
GRAMMAR: dict[str, tuple[str, ...]] = {
    "USER": ("word",),
    "PASS": ("rest",),
    "APOP": ("word", "word"),
    "AUTH": ("word?", "rest?"),
    "STLS": (),
    "CAPA": (),
    "STAT": (),
    "LIST": ("number?",),
    "UIDL": ("number?",),
    "RETR": ("number",),
    "TOP": ("number", "number"),
    "DELE": ("number",),
    "NOOP": (),
    "RSET": (),
    "QUIT": (),
    "XTND": ("word", "rest?"),
}


def _missing(verb: str, kinds: tuple[str, ...]) -> CommandError:
    required = [k for k in kinds if not k.endswith("?")]
    if len(required) > 1:
        return CommandError(f"{verb} takes {len(required)} arguments")
    if required == ["number"]:
        return CommandError(f"{verb} needs a message number")
    return CommandError(f"{verb} needs an argument")


def _too_many(verb: str, kinds: tuple[str, ...]) -> CommandError:
    n = len(kinds)
    if n == 0:
        return CommandError(f"{verb} takes no arguments")
    plural = "argument" if n == 1 else "arguments"
    if any(k.endswith("?") for k in kinds):
        return CommandError(f"{verb} takes at most {n} {plural}")
    return CommandError(f"{verb} takes {n} {plural}")


#: Lines parsed with GRAMMAR and kept for reuse, with no argument or numbers only
#: ("RETR 7", "STAT"): a download sends the same ones in every session, and parsing
#: took about a twentieth of a RETR's CPU.  No line with a word or a password is kept.
_parsed: dict[bytes, Command] = {}
#: The table is emptied when it holds this many lines (about a megabyte at most).
MAX_KEPT_COMMANDS = 4096


def parse_command(
    line: bytes, grammar: Mapping[str, tuple[str, ...]] = GRAMMAR
) -> Command:
    """Parse one client command line.

    Args:
        line: The line without its terminator.
        grammar: Verb to argument kinds; see GRAMMAR.

    Returns:
        The command, verb upper-cased, numbers as int, words/rest as bytes.

    Raises:
        CommandError: For any malformed or unknown command, whatever bytes.
    """
    if grammar is GRAMMAR:
        command = _parsed.get(line)
        if command is None:
            command = _parse(line, grammar)
            if all(type(arg) is int for arg in command.args):
                if len(_parsed) >= MAX_KEPT_COMMANDS:
                    _parsed.clear()
                _parsed[line] = command
        return command
    return _parse(line, grammar)


def _parse(line: bytes, grammar: Mapping[str, tuple[str, ...]]) -> Command:
    if len(line) + len(CRLF) > MAX_COMMAND_LINE:
        raise CommandError("command line too long")
    if _CONTROL.search(line):
        raise CommandError(_BAD_CHARS)
    line = line.lstrip(b" ")  # harmless leniency for people typing in telnet
    if not line:
        raise CommandError("empty command")
    raw_verb = line.partition(b" ")[0]
    verb = raw_verb.decode("ascii").upper() if _VERB.fullmatch(raw_verb) else ""
    if verb not in grammar:
        if len(raw_verb) <= MAX_VERB and _PRINTABLE.fullmatch(raw_verb):
            raise CommandError(f'unknown command "{raw_verb.decode().upper()}"')
        raise CommandError("unknown command")
    kinds = grammar[verb]
    rest = line[len(raw_verb) :]  # empty, or starts with the separator space
    args: list[bytes | int] = []
    numbers = 0
    for kind in kinds:
        base = kind.rstrip("?")
        if base == "rest":
            # Verbatim after exactly one space, so passwords keep their spaces.
            value, rest = rest[1:], b""
            if not value:
                if kind.endswith("?"):
                    continue
                raise _missing(verb, kinds)
            try:  # non-ASCII is tolerated here only as valid UTF-8
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise CommandError(_BAD_CHARS) from None
            args.append(value)
            continue
        token, _, rest = rest.lstrip(b" ").partition(b" ")
        rest = b" " + rest if rest else b""
        if not token:
            if kind.endswith("?"):
                continue
            raise _missing(verb, kinds)
        if base == "number":
            if not _NUMBER.fullmatch(token):
                raise CommandError(
                    "message number must be a positive decimal number"
                    if numbers == 0
                    else "line count must be a non-negative decimal number"
                )
            numbers += 1
            args.append(int(token))
        else:
            if len(token) > MAX_ARGUMENT:
                raise CommandError("argument too long")
            if not _PRINTABLE.fullmatch(token):
                raise CommandError(_BAD_CHARS)
            args.append(token)
    if rest.strip(b" "):
        raise _too_many(verb, kinds)
    return Command(verb, tuple(args))


# --- Client line framing


class LineTooLong(Exception):
    """A client line exceeded the limit; ``lines`` holds the good ones before it."""

    def __init__(self, lines: list[bytes] | None = None) -> None:
        super().__init__("line too long")
        self.lines: list[bytes] = lines or []


class LineBuffer:
    """Split client input into lines, accepting CRLF or bare LF.

    Memory is bounded by ``max_length``: an overlong line raises LineTooLong
    as soon as it is seen, complete or not, and the buffer is then emptied.
    """

    def __init__(self, max_length: int = MAX_COMMAND_LINE) -> None:
        self.max_length = max_length
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Add received data; return the complete lines, terminators removed.

        Raises:
            LineTooLong: A line (content + CRLF) is longer than max_length.
        """
        if not self._buffer and data[-1:] == b"\n" and data.find(b"\n") == len(data) - 1:
            # The usual input: one whole command in one read.  No split, no list walk.
            line = data[:-2] if data[-2:] == CRLF else data[:-1]
            if len(line) > self.max_length - len(CRLF):
                raise LineTooLong([])
            return [line]
        lines = (self._buffer + data).split(b"\n")
        partial = lines.pop()
        limit = self.max_length - len(CRLF)
        for i, line in enumerate(lines):
            if line[-1:] == b"\r":
                line = lines[i] = line[:-1]
            if len(line) > limit:
                self._buffer = b""
                raise LineTooLong(lines[:i])
        # A trailing CR may yet become the terminator, so it does not count.
        if len(partial) - partial.endswith(b"\r") > limit:
            self._buffer = b""
            raise LineTooLong(lines)
        self._buffer = partial
        return lines

    @property
    def pending(self) -> bool:
        """True while an incomplete line is buffered."""
        return bool(self._buffer)

    def clear(self) -> bytes:
        """Drop and return any buffered incomplete line."""
        data, self._buffer = self._buffer, b""
        return data


# --- SASL (RFC 5034)


def sasl_decode(data: bytes) -> bytes:
    """A client's base64 SASL response; ``=`` alone is an empty initial response.

    Raises:
        ValueError: not valid base64.
    """
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise ValueError("the response is not valid base64") from None


def sasl_challenge(data: bytes) -> bytes:
    """A server challenge line: ``+ `` and the data in base64 (RFC 5034 section 4)."""
    return b"+ " + base64.b64encode(data) + CRLF


# --- Message body framing

# Where the output (or scan) currently stands relative to line structure.
_BOL, _AFTER_CR, _MID = 0, 1, 2


#: What a reply is written as: bytes, or views of bytes or of a bytearray that nothing
#: changes (a message as vmspop.cached reads it), never of a buffer still in use.
Buffer = bytes | bytearray | memoryview


#: Dots are looked for one by one while they are rarer than one in this many octets,
#: and past that with one C-level split (see double_dots).
DOT_SPACING = 512
# Dots the one-by-one search may visit before DOT_SPACING applies.
_DOT_ALLOWANCE = 16


def double_dots(block: bytes) -> list[Buffer]:
    """Double the "." that starts each line of ``block`` after its first.

    ``block`` must be CRLF-normalised (every LF is in a CRLF, so a line start is a
    position after an LF); the block's first line is the caller's (Stuffer knows
    whether it starts a line).  The result is parts to send in order: views of
    ``block`` with a ``b"."`` between them where a dot is doubled, so the dots cost
    no copy of the block (a writer's ``sendmsg`` takes the parts as they are).

    A search for the two octets LF "." cannot use memchr and scans at about 1 ns an
    octet (50 us for a 53 KB message), while ``find(b".")`` does use it, and base64
    holds no dots and most mail text few: stepping from dot to dot is then 5x faster
    (benchmarks/stuffer.py).  Each dot costs a Python step, though, so once dots come
    closer than ``DOT_SPACING`` octets on average, the block goes to one ``split`` on
    CRLF "." instead: text full of dots costs about 5 % more than the split alone, and
    dots a little closer than ``DOT_SPACING`` (the fallback comes late) up to a fifth
    more.
    """
    find = block.find
    cuts: list[int] = []
    steps = 0
    dot = find(b".", 1)
    while dot >= 0:
        if block[dot - 1] == _LF:
            cuts.append(dot)
        steps += 1
        if steps > _DOT_ALLOWANCE + dot // DOT_SPACING:
            # Dense: start again with the split (one copy, but no Python step a dot).
            return [b"\r\n..".join(block.split(b"\r\n."))]
        dot = find(b".", dot + 1)
    if not cuts:
        return [block]
    view = memoryview(block)
    parts: list[Buffer] = []
    start = 0
    for cut in cuts:
        parts += (view[start:cut], b".")
        start = cut
    parts.append(view[start:])
    return parts


def to_crlf(block: bytes) -> bytes:
    """``block`` with every LF that has no CR before it made a CRLF; a lone CR stays.

    The caller sees to a CR that ends one block and an LF that starts the next.
    """
    if b"\r" not in block:
        return block.replace(b"\n", b"\r\n")
    # Mail stored with CRLF (rare: Maildir deliverers write LF) skips the copies but
    # pays two counts, about three times the replace's time (benchmarks/stuffer.py).
    if block.count(b"\n") != block.count(b"\r\n"):
        return block.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return block


class Stuffer:
    """Convert stored message bytes to the POP3 wire form, block by block.

    Bare LF becomes CRLF, CRLF stays, a lone CR passes through, and a line
    starting with "." gets another "." (RFC 1939 §3).  The concatenated
    output does not depend on how the input is split.  Use once per message.
    """

    def __init__(self) -> None:
        self._fed = False
        self._state = _BOL  # _AFTER_CR: last byte emitted was a CR

    def feed(self, block: bytes) -> bytes:
        """Convert the next block of the stored message."""
        return b"".join(self.feed_parts(block))  # one part: that part itself, no copy

    def feed_parts(self, block: bytes) -> list[Buffer]:
        """Like :meth:`feed`, as parts to send in order (see :func:`double_dots`)."""
        if not block:
            return []
        self._fed = True
        parts: list[Buffer] = []
        if self._state == _AFTER_CR and block[0] == _LF:
            # The CR already sent plus this LF make a CRLF: no CR to add.
            parts.append(b"\n")
            block = block[1:]
            self._state = _BOL
            if not block:
                return parts
        block = to_crlf(block)
        if b"." in block:
            if self._state == _BOL and block[0] == _DOT:
                parts.append(b".")
            parts += double_dots(block)
        else:
            parts.append(block)
        last = block[-1]
        self._state = _BOL if last == _LF else _AFTER_CR if last == _CR else _MID
        return parts

    def finish(self) -> bytes:
        """Return the end of the response: the "." line, after a CRLF if needed."""
        if not self._fed or self._state == _BOL:
            return TERMINATOR
        return CRLF + TERMINATOR


class TopFilter:
    """Pass the header, the blank line and the first N body lines (TOP).

    A line ends at LF; the separator is the first empty line (LF or CRLF);
    a message without one is all header.  Output stays raw: feed it to a
    Stuffer.  ``done`` turns True once nothing more can be output.
    """

    def __init__(self, body_lines: int) -> None:
        if body_lines < 0:
            raise ValueError("body_lines must be >= 0")
        self._left = body_lines
        self._in_body = False
        self._done = False
        self._state = _BOL  # header scan: _AFTER_CR means the line is b"\r"

    @property
    def done(self) -> bool:
        """True once further input cannot produce output."""
        return self._done

    def _separator_end(self, block: bytes) -> int:
        # Index just past the separator line ending in this block, or -1.
        if self._state == _BOL:
            if block[0] == _LF:
                return 1
            if block[:2] == b"\r\n":
                return 2
        elif self._state == _AFTER_CR and block[0] == _LF:
            return 1
        lf = block.find(b"\n\n")
        crlf = block.find(b"\n\r\n", 0, lf + 2 if lf >= 0 else len(block))
        if crlf >= 0:
            return crlf + 3
        return lf + 2 if lf >= 0 else -1

    def feed(self, block: bytes) -> bytes:
        """Filter the next block of the stored message."""
        if self._done or not block:
            return b""
        head = b""
        if not self._in_body:
            end = self._separator_end(block)
            if end < 0:
                last = block[-1]
                if last == _LF:
                    self._state = _BOL
                elif last == _CR and (
                    block[-2:-1] == b"\n" or (len(block) == 1 and self._state == _BOL)
                ):
                    self._state = _AFTER_CR
                else:
                    self._state = _MID
                return block
            head, block = block[:end], block[end:]
            self._in_body = True
        if self._left == 0:
            self._done = True
            return head
        count = block.count(b"\n")
        if count < self._left:
            self._left -= count
            return head + block if head else block
        # Cut after the N-th LF in C, not with a per-line Python loop.
        tail = block.split(b"\n", self._left)[-1]
        self._done = True
        return head + block[: len(block) - len(tail)]


class WireSize:
    """Count a message's wire size: CRLF-normalised, before dot-stuffing.

    The terminating "." line and any CRLF Stuffer.finish() adds to an
    unterminated last line are not counted (as Dovecot's ``W=`` size).
    """

    def __init__(self) -> None:
        self._size = 0
        self._physical = 0
        self._after_cr = False

    def feed(self, block: bytes) -> None:
        """Count the next block of the stored message."""
        if not block:
            return
        self._physical += len(block)
        bare = block.count(b"\n")
        if bare:
            if b"\r" in block:
                bare -= block.count(b"\r\n")
            if self._after_cr and block[0] == _LF:
                bare -= 1  # completes a CRLF begun in the previous block
        self._size += len(block) + bare
        self._after_cr = block[-1] == _CR

    @property
    def size(self) -> int:
        """Octets on the wire, excluding dot-stuffing and termination."""
        return self._size

    @property
    def physical(self) -> int:
        """Raw octets fed."""
        return self._physical


def wire_size(data: bytes) -> int:
    """Return WireSize.size for a whole message held in memory."""
    counter = WireSize()
    counter.feed(data)
    return counter.size
