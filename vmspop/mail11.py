"""VMS MAIL ``EXTRACT`` files in, RFC 822 messages out: MAIL-11 header rebuilding.

Pure functions and small generators over bytes; nothing here opens a file or
touches the store (:mod:`vmspop.importer` does).  The rules follow section 8 of
the OpenVMS POP server reference; docs/migration.md explains them to operators.

The extract layout (``MAIL> EXTRACT/ALL``)::

    From:<TAB>NODE::USER "Personal Name"  2-JUL-1992 21:17:08.08
    To:<TAB>JONES
    CC:<TAB>
    Subj:<TAB>Lunch
    <blank line>
    body...
    <form feed>
    From:<TAB>...

Decisions where the reference is silent (each is also in docs/migration.md):

- **Separators.** A form feed at the start of a line separates messages; the
  rest of that line, if not blank, is the next message's first line.  In a file
  that has MAIL-11 headers, a form feed that is *not* followed by a ``From:``
  line is a page break inside the body and stays there.  Chunks holding only
  blank lines are dropped.
- **Line ends.** LF, CRLF, CRCRLF (a file converted twice) and lone CR (a
  CR-only file) all end a line; the rendered message uses LF, as the store does.
- **Headers.** To: is required; CC: (absent before VMS V5) and Subj: may be
  missing.  Empty To, CC and Subject are omitted.  A malformed header makes the
  whole message malformed; its position is reported and nothing of it is used.
- **Time zone.** VMS kept local time and recorded no zone; the arrival date is
  taken as UTC (``+0000``), which is also how the UIDL prints it.
- **8-bit header text** is decoded as UTF-8 when valid, else as ISO 8859-1 (the
  near-twin of DEC MCS).  Unstructured fields and the personal name become RFC
  2047 encoded words; the From address itself, which cannot carry encoded
  words, is written in UTF-8.  Bodies are kept byte for byte.
- **NOHEADER extracts.**  A message without MAIL-11 lines keeps its own RFC 822
  header block if it starts with one (arrival: its ``Date:``), else gets only a
  ``Date:`` header; either way the arrival falls back to a time the caller gives.
- **Foreign (binary) messages** are recognised by their content: a NUL byte, or
  more than one byte in ten being a control character
  (:data:`FOREIGN_CONTROL_FRACTION`).  They become the rebuilt headers plus
  :data:`FOREIGN_NOTICE`.
"""

from __future__ import annotations

import calendar
import datetime
import email.header
import email.utils
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "FOREIGN_CONTROL_FRACTION",
    "FOREIGN_NOTICE",
    "REWRITE_MODES",
    "ExtractMessage",
    "ExtractReader",
    "Mail11Header",
    "Rendered",
    "RewriteOptions",
    "format_date",
    "is_foreign",
    "is_smtp_address",
    "read_extract",
    "rebuild_address",
    "rebuilt_headers",
    "render",
    "rfc822_header_lines",
    "split_lines",
]

#: TCPIP$POP_DECNET_REWRITE and TCPIP$POP_QUOTED_DECNET_REWRITE values.
REWRITE_MODES: Final = ("transform", "generic", "none")

#: The share of control characters (other than TAB, BS, FF and ESC, which text
#: mail from VT terminals does contain) above which a body is binary.  A
#: /FOREIGN message's data has far more; text almost never has any.
FOREIGN_CONTROL_FRACTION: Final = 0.1

#: The body stored for a foreign-format message; the VMS server sent a notice
#: like this (its exact wording is not documented).
FOREIGN_NOTICE: Final = (
    b"This message was stored by VMS MAIL in foreign (non-text) format and\n"
    b"cannot be shown here. Its contents were not imported. Log in to the\n"
    b"original OpenVMS system and copy it to a file with the MAIL command\n"
    b"EXTRACT.\n"
)

_MONTHS: Final = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                  "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_FORM_FEED: Final = b"\f"
# Line ends: CR* LF (LF, CRLF, and CRCRLF from a file converted twice), or a lone CR.
_EOL: Final = re.compile(rb"\r*\n|\r")
_WSP: Final = " \t"

# The MAIL-11 From line: the From field, then the arrival date at the end.
_DATE_TEXT: Final = (r"(?P<day>\d{1,2})-(?P<month>[A-Za-z]{3})-(?P<year>\d{4})[ \t]+"
                     r"(?P<hour>\d{1,2}):(?P<minute>\d{2})"
                     r"(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,2}))?)?")
_FROM_LINE: Final = re.compile(r"From:[ \t]*(?P<field>.*?)[ \t]+" + _DATE_TEXT + r"[ \t]*",
                               re.IGNORECASE)
# A From line that is meant as MAIL-11 (VMS writes a TAB after the colon) but has no date.
_FROM_TAB: Final = re.compile(r"From:\t", re.IGNORECASE)
_FROM_ANY: Final = re.compile(r"From:", re.IGNORECASE)
_FIELD_LINE: Final = re.compile(r"(?P<name>To|CC|Subj):[ \t]*(?P<value>.*)", re.IGNORECASE)

# Address classes of section 8.3.  Node names: DECnet Phase IV letters and digits,
# plus $ _ - for DECnet-Plus synonyms; user names: the VMS user name alphabet.
_NODE: Final = r"[A-Za-z0-9$_-]+"
_USER: Final = r"[A-Za-z0-9$_]+"
_SMTP: Final = re.compile(r'SMTP%"(?P<inner>.+)"', re.IGNORECASE | re.DOTALL)
_CLUSTER_SMTP: Final = re.compile(rf'(?P<node>{_NODE})::SMTP%"(?P<inner>.+)"',
                                  re.IGNORECASE | re.DOTALL)
_QUOTED_DECNET: Final = re.compile(rf'(?P<node>{_NODE})::"(?P<inner>[^"]*@[^"]*)"')
_SIMPLE_DECNET: Final = re.compile(rf"(?P<node>{_NODE})::(?P<user>{_USER})")
_USER_ONLY: Final = re.compile(_USER)
# SMTP hides nested double quotes as the cent sign (Latin-1 0xA2; U+00A2 once decoded).
_CENT: Final = "\u00a2"

# RFC 5322 field name: printable ASCII except the colon.
_RFC822_FIELD: Final = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
# A header block must have one of these to count as one, so that a body line
# such as "Note: see below" followed by a blank line is not taken for headers.
_RFC822_TELLTALES: Final = frozenset({b"from", b"date", b"received", b"return-path",
                                      b"message-id", b"mime-version", b"sender"})
# Control bytes that make a body binary: C0 and DEL except TAB, BS, FF, ESC (LF separates lines).
_BINARY_CONTROLS: Final = bytes(c for c in (*range(0x20), 0x7F) if c not in (0x08, 0x09, 0x0A,
                                                                            0x0C, 0x1B))


# --- options ------------------------------------------------------------------------


@dataclass(frozen=True)
class RewriteOptions:
    """How MAIL-11 senders are rebuilt: the ``vmspop import`` rewrite options.

    Attributes:
        hostname: the local host name (``--hostname``), for generic addresses
            when there is no substitute domain.
        substitute_domain: SMTP ``/SUBSTITUTE_DOMAIN`` (``--substitute-domain``).
        decnet_rewrite: ``NODE::USER`` handling, one of :data:`REWRITE_MODES`.
        quoted_decnet_rewrite: ``NODE::"user@host"`` handling.
        decnet_nodes: DECnet node (upper case) to host name (``--decnet-node``).
        local_hosts: host names that count as local (``--local-host``).
        personal_name: keep the sender's personal name (``--personal-name``).
        ignore_mail11_headers: use an SMTP message's own RFC 822 headers when
            its body starts with them (``--ignore-mail11-headers``).
    """

    hostname: str
    substitute_domain: str | None = None
    decnet_rewrite: str = "transform"
    quoted_decnet_rewrite: str = "transform"
    decnet_nodes: Mapping[str, str] = field(default_factory=dict)
    local_hosts: frozenset[str] = frozenset()
    personal_name: bool = False
    ignore_mail11_headers: bool = False

    def __post_init__(self) -> None:
        for name in ("decnet_rewrite", "quoted_decnet_rewrite"):
            if getattr(self, name) not in REWRITE_MODES:
                raise ValueError(f"{name} must be one of {', '.join(REWRITE_MODES)}")

    @property
    def domain(self) -> str:
        """The domain of user-name-only and generic addresses."""
        return self.substitute_domain or self.hostname

    def is_local(self, host: str) -> bool:
        """The "is this host local?" test the POP and SMTP servers shared."""
        name = host.lower()
        return (name == self.hostname.lower() or name in {h.lower() for h in self.local_hosts}
                or (self.substitute_domain is not None and name == self.substitute_domain.lower()))


# --- the extract file ---------------------------------------------------------------


@dataclass(frozen=True)
class Mail11Header:
    """The MAIL-11 header lines of one message, decoded.

    Attributes:
        address: the From address as written (``NODE::USER``, ``SMTP%"..."``).
        personal_name: the quoted personal name after it, without the quotes.
        arrival: the arrival date (UTC, hundredths of a second).
        to: the To field.
        cc: the CC field ("" when empty or absent).
        subject: the Subj field ("" when empty or absent).
    """

    address: str
    personal_name: str | None
    arrival: datetime.datetime
    to: str
    cc: str
    subject: str

    @property
    def from_field(self) -> str:
        """The VMS From field as VMS MAIL showed it: address and quoted personal name."""
        if self.personal_name is None:
            return self.address
        return f'{self.address} "{self.personal_name}"'


@dataclass
class ExtractMessage:
    """One message of an extract file.

    Attributes:
        number: its position among the file's messages, from 1.
        line: the line number of its first line.
        offset: the byte offset of its first line in the file, where an
            import of the rest of the file can start (``tail -c +OFFSET+1``).
        header: the MAIL-11 header; None for a NOHEADER message or a malformed one.
        body: the body lines, without line ends.
        error: why the message is malformed (then it must not be imported).
        error_line: the line number ``error`` is about.
    """

    number: int
    line: int
    offset: int
    header: Mail11Header | None
    body: list[bytes]
    error: str | None = None
    error_line: int | None = None


def split_lines(blocks: Iterable[bytes]) -> Iterator[tuple[bytes, int]]:
    """Split a byte stream into lines, whatever its line ends.

    LF, CRLF, CR CR LF and a lone CR each end one line.  Only one line is held
    in memory at a time.

    Args:
        blocks: the file's contents, in blocks of any size.

    Yields:
        Each line without its line end, and the byte offset where it starts.
    """
    buffer = bytearray()
    offset = 0  # file offset of buffer[0]
    for block in blocks:
        if not block:
            continue
        # The buffer holds no line end except trailing CRs, so scanning resumes there.
        scan = len(buffer.rstrip(b"\r"))
        buffer += block
        # Trailing CRs may yet be followed by LF in the next block: leave them.
        end = len(buffer.rstrip(b"\r"))
        start = 0
        for match in _EOL.finditer(buffer, scan, end):
            yield bytes(buffer[start:match.start()]), offset + start
            start = match.end()
        del buffer[:start]
        offset += start
    start = 0
    for match in _EOL.finditer(buffer):
        yield bytes(buffer[start:match.start()]), offset + start
        start = match.end()
    if start < len(buffer):
        yield bytes(buffer[start:]), offset + start


@dataclass
class _Chunk:
    """The lines between two separating form feeds."""

    lines: list[bytes] = field(default_factory=list)
    line: int = 1          # line number of lines[0]
    offset: int = 0        # byte offset of lines[0]
    separator: bytes = b""  # the raw form-feed line that opened it
    inline: bool = False   # the separator line's text is lines[0]

    def restored(self) -> list[bytes]:
        """The lines as the file had them, form feed included (for a page break)."""
        if self.inline:
            return [self.separator, *self.lines[1:]]
        return [self.separator, *self.lines] if self.separator else list(self.lines)


def read_extract(blocks: Iterable[bytes]) -> Iterator[ExtractMessage]:
    """Parse a VMS MAIL ``EXTRACT`` file (``/ALL``, with or without ``/NOHEADER``).

    A shorthand for iterating over an :class:`ExtractReader`.
    """
    return iter(ExtractReader(blocks))


class ExtractReader:
    """The messages of a VMS MAIL ``EXTRACT`` file, parsed as the file is read.

    Iterating yields each message in file order, malformed ones included (with
    ``error`` set).  A message is yielded only once the next one has begun,
    because a form feed followed by text that is not a ``From:`` line still
    belongs to it (a page break).

    Args:
        blocks: the file's contents, in blocks of any size.

    Attributes:
        resume: the number and byte offset of the first message not yet
            yielded: where an import of the rest of the file starts if reading
            fails after the last message yielded was stored.
    """

    def __init__(self, blocks: Iterable[bytes]) -> None:
        self._blocks = blocks
        self._held: ExtractMessage | None = None
        self._headed = False  # a MAIL-11 From line was seen: form feeds may be page breaks
        self._number = 0
        self.resume: tuple[int, int] = (1, 0)

    def __iter__(self) -> Iterator[ExtractMessage]:
        chunk = _Chunk()
        line_number = 0
        for raw, offset in split_lines(self._blocks):
            line_number += 1
            if raw.startswith(_FORM_FEED):
                yield from self._close(chunk)
                rest = raw.lstrip(_FORM_FEED)
                if rest.strip(b" \t"):
                    chunk = _Chunk([rest], line_number, offset + len(raw) - len(rest), raw, True)
                else:
                    chunk = _Chunk([], line_number + 1, offset, raw)
                continue
            if not chunk.lines:
                chunk.line, chunk.offset = line_number, offset
            chunk.lines.append(raw)
        yield from self._close(chunk)
        if self._held is not None:
            held, self._held = self._held, None
            self.resume = (held.number + 1, -1)  # nothing is left
            yield held

    def _close(self, done: _Chunk) -> Iterator[ExtractMessage]:
        """Classify a finished chunk: a new message, or a page break of the held one."""
        first = next((i for i, line in enumerate(done.lines) if line.strip(b" \t")), None)
        if first is None:
            return  # nothing but blank lines (or a trailing form feed)
        text = _decode(done.lines[first])
        mail11 = _FROM_LINE.fullmatch(text) is not None or _FROM_TAB.match(text) is not None
        if mail11 or (self._headed and _FROM_ANY.match(text)):
            self._headed = True
        elif self._headed and self._held is not None:
            self._held.body.extend(done.restored())  # a page break inside the held body
            return
        self._number += 1
        if self._held is not None:
            self.resume = (self._number, done.offset)
            yield self._held
        # Blank lines before a From line are skipped; a resume may start at them.
        self._held = (_parse_mail11(self._number, done.line + first, done.offset,
                                    done.lines[first:]) if self._headed
                      else ExtractMessage(self._number, done.line, done.offset, None, done.lines))


def _parse_mail11(number: int, line: int, offset: int, lines: list[bytes]) -> ExtractMessage:
    """Parse a message that starts with a MAIL-11 From line; sets ``error`` if malformed."""

    def malformed(why: str, at: int) -> ExtractMessage:
        return ExtractMessage(number, line, offset, None, [], why, at)

    from_text = _decode(lines[0]).rstrip(_WSP)
    match = _FROM_LINE.fullmatch(from_text)
    if match is None:
        return malformed("the From: line has no arrival date (D-MMM-YYYY HH:MM:SS.CC)", line)
    try:
        arrival = _vms_date(match)
    except ValueError as e:
        return malformed(str(e), line)
    address, personal_name = _split_from_field(match["field"])
    if not address:
        return malformed("the From: line has no address", line)
    fields: dict[str, str] = {}
    last: str | None = None
    index = 1
    while index < len(lines):
        raw = lines[index]
        if not raw.strip(b" \t"):
            index += 1  # the blank line ends the header
            break
        text = _decode(raw)
        if text[:1] in (" ", "\t") and last is not None:
            fields[last] += " " + text.strip(_WSP)  # a folded continuation line
        else:
            found = _FIELD_LINE.fullmatch(text)
            if found is None:
                return malformed(f"expected To:, CC: or Subj: before the blank line, "
                                 f"found {_shorten(text)!r}", line + index)
            last = found["name"].lower()
            if last in fields:
                return malformed(f"a second {found['name']}: line", line + index)
            fields[last] = found["value"]
        index += 1
    if "to" not in fields:
        return malformed("the MAIL-11 header has no To: line", line)
    header = Mail11Header(address, personal_name, arrival, fields["to"].strip(_WSP),
                          fields.get("cc", "").strip(_WSP), fields.get("subj", "").strip(_WSP))
    return ExtractMessage(number, line, offset, header, lines[index:])


def _vms_date(match: re.Match[str]) -> datetime.datetime:
    """The arrival date of a From line match, as an aware UTC datetime."""
    month = match["month"].upper()
    if month not in _MONTHS:
        raise ValueError(f"arrival date: unknown month {match['month']!r}")
    fraction = match["fraction"] or "0"
    try:
        moment = datetime.datetime(
            int(match["year"]), _MONTHS.index(month) + 1, int(match["day"]),
            int(match["hour"]), int(match["minute"]), int(match["second"] or 0),
            int(fraction.ljust(2, "0")) * 10_000, tzinfo=datetime.timezone.utc)
    except ValueError as e:
        raise ValueError(f"arrival date is not a valid date: {e}") from None
    if moment.year < 1970:
        # A Maildir name, hence the UIDL and the folder order, starts with the Unix time.
        raise ValueError(f"arrival date {moment:%d-%b-%Y} is before 1970 and cannot be stored")
    return moment


def _split_from_field(text: str) -> tuple[str, str | None]:
    """Split ``ADDRESS "Personal Name"``: the address ends at whitespace outside quotes."""
    quoted = False
    end = len(text)
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char in _WSP and not quoted:
            end = i
            break
    address, rest = text[:end], text[end:].strip(_WSP)
    if len(rest) >= 2 and rest[0] == rest[-1] == '"':
        rest = rest[1:-1].strip(_WSP)
    return address, rest or None


def _decode(raw: bytes) -> str:
    """Header text: UTF-8 when it is valid UTF-8, else ISO 8859-1 (near enough to DEC MCS)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- rebuilding headers -------------------------------------------------------------


def rebuild_address(address: str, options: RewriteOptions) -> str:
    """Rebuild a VMS From address for RFC 822 (section 8.3 of the reference).

    The classes are tried in the manual's order: SMTP, cluster-forwarding SMTP,
    quoted DECnet, simple DECnet, user name only, and everything else.

    Args:
        address: the VMS address, as written in the From line.
        options: the rewrite options.

    Returns:
        The RFC 822 address (no personal name).
    """
    if match := _SMTP.fullmatch(address):
        return _unhide_quotes(match["inner"])
    if match := _CLUSTER_SMTP.fullmatch(address):
        return _unhide_quotes(match["inner"])
    if match := _QUOTED_DECNET.fullmatch(address):
        mode = options.quoted_decnet_rewrite
        if mode == "transform":
            return match["inner"]
        return address if mode == "none" else _generic(address, options)
    if match := _SIMPLE_DECNET.fullmatch(address):
        mode = options.decnet_rewrite
        if mode == "none":
            return address
        host = options.decnet_nodes.get(match["node"].upper()) if mode == "transform" else None
        if host is None:
            return _generic(address, options)  # generic, or transform of an unknown node
        domain = (options.substitute_domain or host) if options.is_local(host) else host
        return f"{match['user'].lower()}@{domain}"
    if _USER_ONLY.fullmatch(address):
        return f"{address.lower()}@{options.domain}"
    return _generic(address, options)


def _unhide_quotes(inner: str) -> str:
    """The address inside ``SMTP%"..."``, with SMTP's cent signs turned back into quotes."""
    return inner.replace(_CENT, '"').strip(_WSP)


def _generic(address: str, options: RewriteOptions) -> str:
    """The generic form: the whole VMS address as a quoted local part at the local domain.

    The manual escapes only double quotes; a backslash is escaped too, or one at
    the end would swallow the closing quote and break the header.
    """
    escaped = address.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"@{options.domain}'


def is_smtp_address(address: str) -> bool:
    """True for ``SMTP%"..."`` and ``NODE::SMTP%"..."``: mail that came in through SMTP."""
    return bool(_SMTP.fullmatch(address) or _CLUSTER_SMTP.fullmatch(address))


def _from_value(header: Mail11Header, options: RewriteOptions) -> str:
    address = rebuild_address(header.address, options)
    if not (options.personal_name and header.personal_name) or "<" in address:
        return address  # an SMTP address may already carry its own name <addr>
    name = header.personal_name
    if name.isascii():
        phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        phrase = email.header.Header(name, "utf-8").encode(linesep="\n")
    return f"{phrase} <{address}>"


def _unstructured(name: str, value: str) -> str:
    """A header line; non-ASCII text becomes RFC 2047 encoded words."""
    if value.isascii():
        return f"{name}: {value}"
    encoded = email.header.Header(value, "utf-8", header_name=name).encode(linesep="\n")
    return f"{name}: {encoded}"


def format_date(moment: datetime.datetime) -> str:
    """An RFC 5322 date, ``Tue, 06 Apr 1999 06:02:31 +0000`` (hundredths dropped)."""
    return email.utils.format_datetime(moment.astimezone(datetime.timezone.utc)
                                       .replace(microsecond=0))


def rebuilt_headers(header: Mail11Header, options: RewriteOptions) -> list[str]:
    """The RFC 822 header lines section 8.2 lists, in its order.

    ``Date``, ``From``, ``To``, ``CC``, ``Subject``, ``X-VMS-From``; To, CC and
    Subject are left out when empty.  The ``X-POP3-*`` headers are added by the
    server at retrieval (``--send-id-headers``), not stored.
    """
    lines = [f"Date: {format_date(header.arrival)}",
             f"From: {_from_value(header, options)}"]
    for name, value in (("To", header.to), ("CC", header.cc), ("Subject", header.subject)):
        if value:
            lines.append(_unstructured(name, value))
    lines.append(_unstructured("X-VMS-From", header.from_field))
    return lines


def rfc822_header_lines(body: list[bytes]) -> int | None:
    """How many lines of ``body`` are an RFC 822 header block, blank line included.

    A block is one or more ``Name: value`` fields (with continuation lines)
    ending at a blank line or at the end of the body, holding at least one of
    From, Date, Received, Return-Path, Message-ID, MIME-Version or Sender.

    Returns:
        The count, or None when the body does not start with such a block.
    """
    names: set[bytes] = set()
    for index, line in enumerate(body):
        if not line:
            return index + 1 if index and names & _RFC822_TELLTALES else None
        if line[:1] in (b" ", b"\t") and index:
            continue
        match = _RFC822_FIELD.match(line)
        if match is None:
            return None
        names.add(match.group()[:-1].lower())
    return len(body) if body and names & _RFC822_TELLTALES else None


def is_foreign(body: list[bytes]) -> bool:
    """True when a body is binary data (a ``/FOREIGN`` message), not text.

    That is: it holds a NUL byte, or more than :data:`FOREIGN_CONTROL_FRACTION`
    of its bytes are control characters other than TAB, BS, FF and ESC.
    """
    total = controls = 0
    for line in body:
        if b"\0" in line:
            return True
        total += len(line) + 1
        controls += len(line) - len(line.translate(None, _BINARY_CONTROLS))
    return controls > FOREIGN_CONTROL_FRACTION * total


# --- rendering ----------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """One message as it will be stored.

    Attributes:
        data: the RFC 822 message, LF line ends.
        arrival: the arrival time, seconds since the epoch (UTC).
        foreign: the body was binary and was replaced by :data:`FOREIGN_NOTICE`.
        own_headers: the message's own RFC 822 headers were kept (a NOHEADER
            message, or ``--ignore-mail11-headers``).
    """

    data: bytes
    arrival: float
    foreign: bool = False
    own_headers: bool = False


def render(message: ExtractMessage, options: RewriteOptions, fallback_arrival: float) -> Rendered:
    """Build the RFC 822 message for one extract message, once, at import.

    Args:
        message: a well-formed message (``error`` is None).
        options: the rewrite options.
        fallback_arrival: the arrival time of a NOHEADER message whose own
            headers carry no usable ``Date:`` (the importer passes the extract
            file's modification time).

    Raises:
        ValueError: ``message`` is malformed.
    """
    if message.error is not None:
        raise ValueError(f"message {message.number} is malformed: {message.error}")
    header, body = message.header, message.body
    foreign = is_foreign(body)
    if header is None:
        own = None if foreign else rfc822_header_lines(body)
        arrival = (_header_date(body[:own]) if own else None) or fallback_arrival
        if own:
            return Rendered(_join(body), arrival, own_headers=True)
        lines = [f"Date: {format_date(_utc(arrival))}"]
        return Rendered(_message(lines, FOREIGN_NOTICE if foreign else _join(body)), arrival,
                        foreign)
    arrival = calendar.timegm(header.arrival.utctimetuple()) + header.arrival.microsecond / 1e6
    if foreign:
        return Rendered(_message(rebuilt_headers(header, options), FOREIGN_NOTICE), arrival, True)
    if options.ignore_mail11_headers and is_smtp_address(header.address) \
            and rfc822_header_lines(body):
        return Rendered(_join(body), arrival, own_headers=True)
    return Rendered(_message(rebuilt_headers(header, options), _join(body)), arrival)


def _message(headers: list[str], body: bytes) -> bytes:
    """Header lines, the blank line, the body."""
    return "".join(line + "\n" for line in headers).encode("utf-8") + b"\n" + body


def _join(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def _header_date(lines: list[bytes]) -> float | None:
    """The ``Date:`` of an RFC 822 header block, as epoch seconds; None if absent or unusable."""
    value: str | None = None
    for line in lines:
        if value is not None and line[:1] in (b" ", b"\t"):
            value += " " + _decode(line).strip()
        elif value is not None:
            break
        elif line[:5].lower() == b"date:":
            value = _decode(line[5:]).strip()
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    seconds = moment.timestamp()
    return seconds if seconds >= 0 else None
