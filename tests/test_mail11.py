"""Tests for vmspop.mail11: parsing VMS MAIL extract files and rebuilding RFC 822 headers."""

from __future__ import annotations

import datetime
import email.header
import email.utils

import pytest

from vmspop import mail11
from vmspop.mail11 import ExtractMessage, Mail11Header, RewriteOptions

UTC = datetime.timezone.utc
# Section 8.1 of the reference: a real extracted message.
EXAMPLE = (b'From:\tMERC::"uunet!CRVAX.SRI.COM!RELAY-INFO-VAX"  2-JUL-1992 21:17:08.08\n'
           b"To:\tinfo-vax@kl.sri.com\n"
           b"CC:\t\n"
           b"Subj:\tRe: Mail file format\n"
           b"\n"
           b"Is the format documented?\n")


def parse(data: bytes, block: int | None = None) -> list[ExtractMessage]:
    """All messages of an extract, fed in blocks of ``block`` bytes (default: whole)."""
    size = block or max(1, len(data))
    return list(mail11.read_extract(data[i:i + size] for i in range(0, len(data), size)))


def one(data: bytes) -> ExtractMessage:
    [message] = parse(data)
    return message


def mail11_message(address: str = "JONES", name: str | None = None, *, date: str = "6-APR-1999 "
                   "06:02:31.15", to: str = "SMITH", cc: str = "", subject: str = "Hi",
                   body: bytes = b"Hello.\n") -> bytes:
    """One extract message, the way EXTRACT writes it (TABs after the field names)."""
    sender = address + (f' "{name}"' if name is not None else "")
    head = f"From:\t{sender}  {date}\nTo:\t{to}\nCC:\t{cc}\nSubj:\t{subject}\n\n"
    return head.encode("utf-8") + body


def header(address: str, name: str | None = None, **fields: str) -> Mail11Header:
    values = dict(to="JONES", cc="", subject="Hi")
    values.update(fields)
    return Mail11Header(address, name, datetime.datetime(1999, 4, 6, 6, 2, 31, 150000, UTC),
                        values["to"], values["cc"], values["subject"])


def rendered(data: bytes, options: RewriteOptions | None = None,
             fallback: float = 0.0) -> mail11.Rendered:
    return mail11.render(one(data), options or RewriteOptions(hostname="vms.example.com"),
                         fallback)


def decoded(value: str) -> str:
    """An RFC 2047 header value, decoded."""
    return str(email.header.make_header(email.header.decode_header(value)))


# -- lines ----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"one\ntwo\n\nfour\n",
    b"one\r\ntwo\r\n\r\nfour\r\n",
    b"one\r\r\ntwo\r\r\n\r\r\nfour\r\r\n",      # CRLF converted again: CR CR LF
    b"one\rtwo\r\rfour\r",                        # a CR-only file
    b"one\r\ntwo\n\rfour",                        # mixed, no final line end
])
@pytest.mark.parametrize("block", [1, 2, 3, 5, 1000])
def test_split_lines_accepts_every_line_end(data: bytes, block: int) -> None:
    """LF, CRLF, CR CR LF and lone CR each end one line, whatever the block boundaries."""
    blocks = [data[i:i + block] for i in range(0, len(data), block)]
    lines = list(mail11.split_lines(blocks))
    assert [line for line, _ in lines] == [b"one", b"two", b"", b"four"]
    for line, offset in lines:
        assert data[offset:offset + len(line)] == line


def test_split_lines_keeps_a_long_line_whole() -> None:
    """A line longer than many blocks comes out whole, at its offset."""
    data = b"a" * 10_000 + b"\r\nb"
    lines = list(mail11.split_lines(data[i:i + 7] for i in range(0, len(data), 7)))
    assert lines == [(b"a" * 10_000, 0), (b"b", 10_002)]


# -- splitting messages ---------------------------------------------------------------


@pytest.mark.parametrize("separator", [b"\f\n", b"\n\f\n", b"\f", b"\f\r\n", b"\f  \n", b"\f\f\n"])
def test_form_feed_variants_separate_messages(separator: bytes) -> None:
    """A form feed alone on a line, before the From line, doubled, or with spaces separates."""
    first = mail11_message(subject="one", body=b"first\n")
    second = mail11_message(subject="two", body=b"second\n")
    messages = parse(first + separator + second)
    assert [m.header.subject for m in messages if m.header] == ["one", "two"]
    assert messages[0].body[-1:] in ([b"first"], [b""])
    assert messages[1].body == [b"second"]
    assert [m.number for m in messages] == [1, 2]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_line_end_variants_parse_alike(newline: bytes) -> None:
    """An extract with CRLF or CR line ends parses as the LF one does."""
    data = (mail11_message(subject="one") + b"\f\n" + mail11_message(subject="two"))
    expected = [(m.header, m.body, m.line) for m in parse(data)]
    converted = data.replace(b"\n", newline)
    for block in (1, 4, 4096):
        assert [(m.header, m.body, m.line) for m in parse(converted, block)] == expected


def test_leading_and_trailing_form_feeds_and_blank_chunks_are_ignored() -> None:
    """A form feed before the first message, after the last, or around blank lines adds nothing."""
    data = b"\f\n\n" + mail11_message() + b"\f\n\n\n\f\n" + mail11_message() + b"\f\n"
    assert len(parse(data)) == 2


def test_page_break_in_a_body_stays_in_it() -> None:
    """In a headed extract, a form feed not followed by a From: line is a page break of the body."""
    body = b"page one\n\fpage two\n\f\npage three\n"
    messages = parse(mail11_message(body=body) + b"\f\n" + mail11_message(subject="next"))
    assert len(messages) == 2
    assert messages[0].body == [b"page one", b"\fpage two", b"\f", b"page three"]
    assert messages[1].number == 2 and messages[1].header is not None


def test_message_positions_and_resume_offsets() -> None:
    """Each message knows its number, first line and byte offset; the reader its resume point."""
    first = mail11_message()
    second = mail11_message(subject="two")
    data = first + b"\f\n" + second
    reader = mail11.ExtractReader([data])
    seen = []
    for message in reader:
        seen.append((message.number, message.line, message.offset, reader.resume))
    second_line = first.count(b"\n") + 2
    second_offset = len(first) + 2
    assert seen == [(1, 1, 0, (2, second_offset)),
                    (2, second_line, second_offset, (3, -1))]
    assert data[second_offset:] == second


# -- MAIL-11 header lines -------------------------------------------------------------


def test_example_of_section_8_1() -> None:
    """The reference's real extracted message parses into its four fields and date."""
    message = one(EXAMPLE)
    assert message.error is None
    assert message.header == Mail11Header(
        'MERC::"uunet!CRVAX.SRI.COM!RELAY-INFO-VAX"', None,
        datetime.datetime(1992, 7, 2, 21, 17, 8, 80000, UTC),
        "info-vax@kl.sri.com", "", "Re: Mail file format")
    assert message.body == [b"Is the format documented?"]


def test_spaces_instead_of_tabs() -> None:
    """Spaces after the field names (an extract retyped or re-tabbed) are accepted."""
    data = (b"From:  JONES   \"Jim Jones\"   6-APR-1999 06:02:31.15\nTo: SMITH\nCC:\n"
            b"Subj:  Hello there  \n\nbody\n")
    assert one(data).header == header("JONES", "Jim Jones", to="SMITH", subject="Hello there")


@pytest.mark.parametrize("line, address, name", [
    ('JONES "Jim Jones"', "JONES", "Jim Jones"),
    ('JONES "Jones, Jim"', "JONES", "Jones, Jim"),
    ('JONES "Jim "The Jet" Jones"', "JONES", 'Jim "The Jet" Jones'),
    ('NODE::"j@x.org" "Jim"', 'NODE::"j@x.org"', "Jim"),
    ('SMTP%"¢Jim Jones¢ <j@x.org>"', 'SMTP%"¢Jim Jones¢ <j@x.org>"', None),
    ('JONES ""', "JONES", None),
    ("JONES", "JONES", None),
])
def test_from_field_address_and_personal_name(line: str, address: str, name: str | None) -> None:
    """The address ends at whitespace outside quotes; the quoted rest is the personal name."""
    data = f"From:\t{line}  6-APR-1999 06:02:31.15\nTo:\tSMITH\n\nx\n".encode()
    parsed = one(data).header
    assert parsed is not None
    assert (parsed.address, parsed.personal_name) == (address, name)


@pytest.mark.parametrize("date, expected", [
    ("2-JUL-1992 21:17:08.08", datetime.datetime(1992, 7, 2, 21, 17, 8, 80000, UTC)),
    ("02-jul-1992 21:17:08.8", datetime.datetime(1992, 7, 2, 21, 17, 8, 800000, UTC)),
    ("31-DEC-1999 23:59:59.99", datetime.datetime(1999, 12, 31, 23, 59, 59, 990000, UTC)),
    ("1-JAN-2001 00:00", datetime.datetime(2001, 1, 1, 0, 0, 0, 0, UTC)),
])
def test_arrival_dates(date: str, expected: datetime.datetime) -> None:
    """VMS absolute times, with hundredths, any case, seconds optional; taken as UTC."""
    message = one(mail11_message(date=date))
    assert message.header is not None and message.header.arrival == expected


def test_missing_cc_and_subj_lines_are_empty_fields() -> None:
    """VMS MAIL before V5 wrote no CC: line; a missing Subj: is an empty subject."""
    message = one(b"From:\tJONES  6-APR-1999 06:02:31.15\nTo:\tSMITH\n\nbody\n")
    assert message.header == header("JONES", to="SMITH", cc="", subject="")


def test_folded_header_line_is_unfolded() -> None:
    """A To: list continued on an indented line is joined with one space."""
    message = one(b"From:\tJONES  6-APR-1999 06:02:31.15\nTo:\tSMITH,\n\tBROWN\nSubj:\tx\n\nb\n")
    assert message.header is not None and message.header.to == "SMITH, BROWN"


def test_header_only_message_has_empty_body() -> None:
    message = one(b"From:\tJONES  6-APR-1999 06:02:31.15\nTo:\tSMITH\nSubj:\tnote")
    assert message.error is None and message.body == []


@pytest.mark.parametrize("lines, error_line, words", [
    ([b"From:\tJONES", b"To:\tSMITH"], 1, "no arrival date"),
    ([b"From:\tJONES  6-FOO-1999 06:02:31.15", b"To:\tSMITH"], 1, "unknown month"),
    ([b"From:\tJONES  31-FEB-1999 06:02:31.15", b"To:\tSMITH"], 1, "not a valid date"),
    ([b"From:\tJONES  17-NOV-1858 00:00:00.00", b"To:\tSMITH"], 1, "before 1970"),
    ([b"From:\t  6-APR-1999 06:02:31.15", b"To:\tSMITH"], 1, "no address"),
    ([b"From:\tJONES  6-APR-1999 06:02:31.15", b"Subj:\tx"], 1, "no To: line"),
    ([b"From:\tJONES  6-APR-1999 06:02:31.15", b"To:\tSMITH", b"Bcc:\tX"], 3, "found 'Bcc:"),
    ([b"From:\tJONES  6-APR-1999 06:02:31.15", b"To:\tA", b"To:\tB"], 3, "a second To: line"),
])
def test_malformed_message_reports_its_line(lines: list[bytes], error_line: int,
                                            words: str) -> None:
    """A malformed message carries the reason and the line; the messages around it still parse."""
    good = mail11_message()
    data = good + b"\f\n" + b"\n".join(lines) + b"\n\nbody\n\f\n" + good
    messages = parse(data)
    assert [m.error is None for m in messages] == [True, False, True]
    bad = messages[1]
    start = good.count(b"\n") + 2
    assert bad.number == 2 and bad.header is None and bad.body == []
    assert bad.error_line == start + error_line - 1
    assert bad.error is not None and words in bad.error
    assert messages[2].number == 3


def test_render_refuses_a_malformed_message() -> None:
    """A malformed message never becomes a (half) message."""
    bad = one(b"From:\tJONES\nTo:\tSMITH\n\nbody\n")
    with pytest.raises(ValueError):
        mail11.render(bad, RewriteOptions(hostname="h"), 0.0)


def test_8bit_header_lines_in_latin1_and_utf8() -> None:
    """Header text is UTF-8 when valid, else ISO 8859-1 (DEC MCS)."""
    latin = one(b"From:\tJONES \"Ren\xe9\"  6-APR-1999 06:02:31.15\nTo:\tSMITH\n"
                b"Subj:\tCaf\xe9\n\nx\n").header
    utf8 = one("From:\tJONES \"René\"  6-APR-1999 06:02:31.15\nTo:\tSMITH\nSubj:\tCafé\n\nx\n"
               .encode("utf-8")).header
    assert latin == utf8 and utf8 is not None
    assert (utf8.personal_name, utf8.subject) == ("René", "Café")


# -- section 8.3: rebuilding From ---------------------------------------------------------

WIDGETS = RewriteOptions(hostname="widgets.xyzcorp.com")
ORDERS_NODES = {"ORDERS": "orders.acme.widgets.com", "HOST12": "host12.acme.widgets.com"}


@pytest.mark.parametrize("address, options, expected", [
    # 1. SMTP
    ('SMTP%"james.jones@federation.gov"', WIDGETS, "james.jones@federation.gov"),
    ('smtp%"james.jones@federation.gov"', WIDGETS, "james.jones@federation.gov"),
    # The manual's cent-sign example, without its typeset stray space (see the next test).
    ('SMTP%"¢ABCMTS::MRGATE::\\¢ABCDEF::VIVALDI\\¢¢@xyz.org"', WIDGETS,
     '"ABCMTS::MRGATE::\\"ABCDEF::VIVALDI\\""@xyz.org'),
    # 2. cluster-forwarding SMTP
    ('ABCDEF::SMTP%"james.jones@federation.gov"', WIDGETS, "james.jones@federation.gov"),
    # 3. quoted DECnet
    ('ORDERS::"j.smith@acme.com"', WIDGETS, "j.smith@acme.com"),
    ('ORDERS::"j_smith@acme.com"', RewriteOptions(hostname="widgets.xyzcorp.com",
                                                  quoted_decnet_rewrite="generic"),
     '"ORDERS::\\"j_smith@acme.com\\""@widgets.xyzcorp.com'),
    ('ORDERS::"j_smith@acme.com"', RewriteOptions(hostname="widgets.xyzcorp.com",
                                                  quoted_decnet_rewrite="none"),
     'ORDERS::"j_smith@acme.com"'),
    # 4. simple DECnet
    ("ORDERS::J_SMITH", RewriteOptions(hostname="widgets.xyzcorp.com", decnet_rewrite="generic"),
     '"ORDERS::J_SMITH"@widgets.xyzcorp.com'),
    ("ORDERS::J_SMITH", RewriteOptions(hostname="widgets.xyzcorp.com", decnet_rewrite="none"),
     "ORDERS::J_SMITH"),
    # transform, vectors a-d (local host orders.acme.widgets.com)
    ("ORDERS::J_SMITH", RewriteOptions(hostname="orders.acme.widgets.com",
                                       decnet_nodes=ORDERS_NODES),
     "j_smith@orders.acme.widgets.com"),
    ("ORDERS::J_SMITH", RewriteOptions(hostname="orders.acme.widgets.com",
                                       substitute_domain="acme.widgets.com",
                                       decnet_nodes=ORDERS_NODES),
     "j_smith@acme.widgets.com"),
    ("HOST12::J_JONES", RewriteOptions(hostname="orders.acme.widgets.com",
                                       decnet_nodes=ORDERS_NODES),
     "j_jones@host12.acme.widgets.com"),
    ("HOST13::J_JONES", RewriteOptions(hostname="orders.acme.widgets.com",
                                       decnet_nodes=ORDERS_NODES),
     '"HOST13::J_JONES"@orders.acme.widgets.com'),
    # 5. user name only
    ("Smith", RewriteOptions(hostname="widgets.xyzcorp.com", substitute_domain="acme.widgets.com"),
     "smith@acme.widgets.com"),
    ("SMITH", WIDGETS, "smith@widgets.xyzcorp.com"),
    # 6. everything else
    ('ABCMTS::MRGATE::"ORDERS::SPECIAL"', RewriteOptions(hostname="widgets.xyzcorp.com",
                                                         substitute_domain="xyz.org"),
     '"ABCMTS::MRGATE::\\"ORDERS::SPECIAL\\""@xyz.org'),
], ids=lambda v: v if isinstance(v, str) else "")
def test_worked_examples_of_section_8_3(address: str, options: RewriteOptions,
                                        expected: str) -> None:
    """Every worked example of the reference's From: rebuilding section."""
    assert mail11.rebuild_address(address, options) == expected


def test_cent_sign_example_as_printed_keeps_its_space() -> None:
    """Cent signs become quotes and nothing else changes: the printed example's space stays."""
    address = 'SMTP%"¢ABCMTS::MRGATE::\\¢ABCDEF::VIVALDI \\¢¢@xyz.org"'
    assert mail11.rebuild_address(address, WIDGETS) == \
        '"ABCMTS::MRGATE::\\"ABCDEF::VIVALDI \\""@xyz.org'


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_cent_sign_in_either_encoding_of_the_file(encoding: str) -> None:
    """The cent sign is recognised as Latin-1 0xA2 and as UTF-8 C2 A2."""
    line = 'From:\tSMTP%"¢J. Jones¢@x.org"  6-APR-1999 06:02:31.15\nTo:\tSMITH\n\nb\n'
    data = rendered(line.encode(encoding)).data
    assert b'\nFrom: "J. Jones"@x.org\n' in data


@pytest.mark.parametrize("mode, expected", [
    ("transform", "j_smith@orders.example.com"),
    ("generic", '"ORDERS::J_SMITH"@vms.example.com'),
    ("none", "ORDERS::J_SMITH"),
])
def test_decnet_rewrite_modes(mode: str, expected: str) -> None:
    options = RewriteOptions(hostname="vms.example.com", decnet_rewrite=mode,
                             decnet_nodes={"ORDERS": "orders.example.com"})
    assert mail11.rebuild_address("ORDERS::J_SMITH", options) == expected


def test_transform_local_host_uses_the_substitute_domain() -> None:
    """A node translating to a --local-host name is local: user@substitute-domain."""
    options = RewriteOptions(hostname="vms.example.com", substitute_domain="example.com",
                             decnet_nodes={"VAXA": "vaxa.example.com"},
                             local_hosts=frozenset({"vaxa.example.com"}))
    assert mail11.rebuild_address("VAXA::JONES", options) == "jones@example.com"
    assert options.is_local("VAXA.example.com") and options.is_local("Example.COM")
    assert not options.is_local("other.example.com")


def test_generic_substitute_domain_applies_to_decnet_generic_too() -> None:
    """The GENERIC outputs of rules 3 and 4 use the substitute domain as rule 6 does."""
    options = RewriteOptions(hostname="vms.example.com", substitute_domain="example.com",
                             decnet_rewrite="generic", quoted_decnet_rewrite="generic")
    assert mail11.rebuild_address("A::B", options) == '"A::B"@example.com'
    assert mail11.rebuild_address('A::"b@c"', options) == '"A::\\"b@c\\""@example.com'


def test_generic_form_escapes_backslashes() -> None:
    """A backslash is escaped too, so it cannot swallow the closing quote."""
    assert mail11.rebuild_address("A::B::C\\", WIDGETS) == '"A::B::C\\\\"@widgets.xyzcorp.com'


def test_quoted_decnet_without_at_sign_is_generic() -> None:
    """The section 8.1 sender, a UUCP path in DECnet quotes, is not user@host: generic form."""
    assert mail11.rebuild_address('MERC::"uunet!CRVAX.SRI.COM!RELAY-INFO-VAX"', WIDGETS) == \
        '"MERC::\\"uunet!CRVAX.SRI.COM!RELAY-INFO-VAX\\""@widgets.xyzcorp.com'


@pytest.mark.parametrize("name, expected", [
    ("Jim Jones", '"Jim Jones" <jones@vms.example.com>'),
    ("Jones, Jim", '"Jones, Jim" <jones@vms.example.com>'),
    ('Jim "The Jet" Jones', '"Jim \\"The Jet\\" Jones" <jones@vms.example.com>'),
    ("Back\\slash", '"Back\\\\slash" <jones@vms.example.com>'),
])
def test_personal_name_is_quoted(name: str, expected: str) -> None:
    """--personal-name: "Personal Name" <addr>, with RFC 5322 quoting."""
    options = RewriteOptions(hostname="vms.example.com", personal_name=True)
    data = rendered(mail11_message("JONES", name), options).data
    assert f"\nFrom: {expected}\n".encode() in data
    parsed = email.utils.parseaddr(expected)
    assert parsed == (name, "jones@vms.example.com")


def test_personal_name_off_gives_the_bare_address() -> None:
    data = rendered(mail11_message("JONES", "Jim Jones")).data
    assert b"\nFrom: jones@vms.example.com\n" in data


def test_non_ascii_personal_name_is_an_encoded_word() -> None:
    options = RewriteOptions(hostname="vms.example.com", personal_name=True)
    data = rendered(mail11_message("JONES", "René Müller"), options).data
    line = next(l for l in data.decode("ascii").split("\n") if l.startswith("From: "))
    assert line.endswith(" <jones@vms.example.com>") and "=?utf-8?" in line
    assert decoded(line[len("From: "):line.index(" <")]) == "René Müller"


def test_personal_name_is_not_added_to_an_address_with_its_own_name() -> None:
    options = RewriteOptions(hostname="h", personal_name=True)
    data = rendered(mail11_message('SMTP%"¢J J¢ <j@x.org>"', "Jim"), options).data
    assert b'\nFrom: "J J" <j@x.org>\n' in data


# -- section 8.2: the rebuilt message ---------------------------------------------------------


def test_rendered_example_of_section_8_1() -> None:
    """Date, From, To, Subject, X-VMS-From in order; the empty CC is left out; then the body."""
    result = rendered(EXAMPLE, RewriteOptions(hostname="vms.example.com"))
    assert result.data == (
        b"Date: Thu, 02 Jul 1992 21:17:08 +0000\n"
        b'From: "MERC::\\"uunet!CRVAX.SRI.COM!RELAY-INFO-VAX\\""@vms.example.com\n'
        b"To: info-vax@kl.sri.com\n"
        b"Subject: Re: Mail file format\n"
        b'X-VMS-From: MERC::"uunet!CRVAX.SRI.COM!RELAY-INFO-VAX"\n'
        b"\n"
        b"Is the format documented?\n")
    assert result.arrival == pytest.approx(710111828.08)
    assert not result.foreign and not result.own_headers


def test_cc_and_personal_name_in_x_vms_from() -> None:
    """A non-empty CC is copied; X-VMS-From is the VMS From field, personal name included."""
    data = rendered(mail11_message("ORDERS::J_SMITH", "John Smith", cc="BROWN, GREEN")).data
    head = data.split(b"\n\n", 1)[0].split(b"\n")
    assert [line.split(b":", 1)[0] for line in head] == [
        b"Date", b"From", b"To", b"CC", b"Subject", b"X-VMS-From"]
    assert b"CC: BROWN, GREEN" in head
    assert b'X-VMS-From: ORDERS::J_SMITH "John Smith"' in head


def test_empty_subject_and_to_are_left_out() -> None:
    data = rendered(b"From:\tJONES  6-APR-1999 06:02:31.15\nTo:\t\nSubj:\t\n\nbody\n").data
    assert [line.split(b":")[0] for line in data.split(b"\n\n")[0].split(b"\n")] == [
        b"Date", b"From", b"X-VMS-From"]


def test_format_date() -> None:
    moment = datetime.datetime(1999, 4, 6, 6, 2, 31, 150000, UTC)
    assert mail11.format_date(moment) == "Tue, 06 Apr 1999 06:02:31 +0000"


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_8bit_subject_is_an_encoded_word(encoding: str) -> None:
    """Non-ASCII header text becomes RFC 2047 (UTF-8), so the header stays 7-bit and decodable."""
    data = rendered(mail11_message(subject="Grüße aus Zürich").decode()
                    .encode(encoding)).data
    head = data.split(b"\n\n", 1)[0]
    assert head.isascii()
    subject = head.decode().split("Subject: ", 1)[1].split("\nX-VMS-From")[0]
    assert decoded(subject.replace("\n", "")) == "Grüße aus Zürich"


def test_8bit_body_is_kept_byte_for_byte() -> None:
    body = b"Gr\xfc\xdfe \xa2 \xff\n.\n..\n"
    assert rendered(mail11_message(body=body)).data.endswith(b"\n\n" + body)


def test_x_vms_from_with_cent_signs_is_encoded_and_lossless() -> None:
    address = 'SMTP%"¢A::B¢@x.org"'
    data = rendered(mail11_message(address).decode().encode("latin-1")).data
    line = next(l for l in data.decode("ascii").split("\n") if l.startswith("X-VMS-From: "))
    assert decoded(line[len("X-VMS-From: "):]) == address


# -- section 8.4: --ignore-mail11-headers -------------------------------------------------

MIME_BODY = (b"Received: from mx.example.org by vms.example.com; 6 Apr 1999 06:02:30 +0000\n"
             b"From: Jim Jones <jim@example.org>\n"
             b"To: smith@vms.example.com\n"
             b"Subject: report\n"
             b"MIME-Version: 1.0\n"
             b'Content-Type: multipart/mixed; boundary="XX"\n'
             b"\n"
             b"--XX\n"
             b"Content-Type: text/plain\n"
             b"\n"
             b"see attachment\n"
             b"--XX--\n")
IGNORE = RewriteOptions(hostname="vms.example.com", ignore_mail11_headers=True)


@pytest.mark.parametrize("address", ['SMTP%"jim@example.org"', 'VAXA::SMTP%"jim@example.org"'])
def test_ignore_mail11_headers_keeps_the_mime_message(address: str) -> None:
    """SMTP mail whose body starts with RFC 822 headers is stored as that message, unchanged."""
    result = rendered(mail11_message(address, body=MIME_BODY), IGNORE)
    assert result.data == MIME_BODY
    assert result.own_headers
    assert result.arrival == pytest.approx(923378551.15)  # still the VMS arrival date


def test_ignore_mail11_headers_only_for_smtp_senders() -> None:
    result = rendered(mail11_message("VAXA::JONES", body=MIME_BODY), IGNORE)
    assert result.data.startswith(b"Date: ") and result.data.endswith(b"\n\n" + MIME_BODY)


def test_ignore_mail11_headers_needs_headers_at_the_top() -> None:
    body = b"Hello.\n\nReceived: later\n"
    result = rendered(mail11_message('SMTP%"a@b.org"', body=body), IGNORE)
    assert result.data.startswith(b"Date: ") and not result.own_headers


def test_without_the_option_mime_headers_stay_in_the_body() -> None:
    result = rendered(mail11_message('SMTP%"jim@example.org"', body=MIME_BODY))
    assert result.data.startswith(b"Date: ") and result.data.endswith(b"\n\n" + MIME_BODY)


@pytest.mark.parametrize("body, lines", [
    (MIME_BODY.split(b"\n"), 7),
    ([b"From: a@b", b" continued", b"Subject: x"], 3),
    ([b"Note: this is text", b""], None),         # no telltale field: not headers
    ([b"From: a@b", b"not a header", b""], None),
    ([b"", b"From: a@b"], None),
    ([b" From: a@b", b""], None),
    ([], None),
])
def test_rfc822_header_lines(body: list[bytes], lines: int | None) -> None:
    assert mail11.rfc822_header_lines(body) == lines


# -- NOHEADER extracts ----------------------------------------------------------------------


def test_noheader_message_keeps_its_own_headers_and_date() -> None:
    """EXTRACT/NOHEADER of SMTP mail: its RFC 822 block is the header; its Date the arrival."""
    body = b"Date: Tue, 06 Apr 1999 08:02:31 +0200\nFrom: a@b.org\n\nhello\n"
    result = rendered(body, fallback=1234.0)
    assert result.data == body and result.own_headers
    assert result.arrival == 923378551.0


@pytest.mark.parametrize("date", [b"Date: not a date\n", b"Date: Tue, 06 Apr 1965 08:02:31 +0200\n",
                                  b""])
def test_noheader_message_without_usable_date_gets_the_fallback(date: bytes) -> None:
    body = b"From: a@b.org\n" + date + b"\nhello\n"
    result = rendered(body, fallback=1234.5)
    assert result.arrival == 1234.5 and result.data == body


def test_noheader_plain_text_gets_only_a_date() -> None:
    """A body with no headers at all gets Date: from the fallback arrival, nothing invented."""
    result = rendered(b"Just text.\n", fallback=923378551.0)
    assert result.data == b"Date: Tue, 06 Apr 1999 06:02:31 +0000\n\nJust text.\n"


def test_noheader_form_feeds_always_separate() -> None:
    """Without MAIL-11 headers there are no page breaks: every form feed starts a message."""
    messages = parse(b"Just text.\n\fmore text\n\f\nthird\n")
    assert [m.body for m in messages] == [[b"Just text."], [b"more text"], [b"third"]]


def test_noheader_file_with_rfc822_from_lines_is_not_mail11() -> None:
    """An RFC 822 From: line (no VMS date) starts a NOHEADER message, not a malformed one."""
    data = b"From: a@b.org\nSubject: one\n\nx\n\f\nFrom: c@d.org\nSubject: two\n\ny\n"
    messages = parse(data)
    assert [(m.header, m.error) for m in messages] == [(None, None), (None, None)]


# -- foreign messages ---------------------------------------------------------------------------


@pytest.mark.parametrize("body, foreign", [
    (b"plain text\twith tab\n\x1b[1mbold\x1b[0m\n", False),
    (b"bin\x00ary\n", True),
    (bytes(range(1, 32)) * 4 + b"\n", True),
    (b"x" * 95 + b"\x01" * 5 + b"\n", False),
    (b"x" * 80 + b"\x01" * 20 + b"\n", True),
    (b"", False),
])
def test_is_foreign(body: bytes, foreign: bool) -> None:
    assert mail11.is_foreign(body.split(b"\n")[:-1] if body else []) is foreign


def test_foreign_message_becomes_headers_and_notice() -> None:
    """A /FOREIGN message: the rebuilt headers and the notice to extract it on VMS."""
    result = rendered(mail11_message(body=b"\x00\x01\x02binary\n\x00\n"))
    assert result.foreign
    head, body = result.data.split(b"\n\n", 1)
    assert head.startswith(b"Date: Tue, 06 Apr 1999 06:02:31 +0000\nFrom: jones@vms.example.com")
    assert body == mail11.FOREIGN_NOTICE
    assert b"EXTRACT" in body and body.isascii()


def test_foreign_noheader_message_becomes_date_and_notice() -> None:
    result = rendered(b"\x00\x00binary\n", fallback=0.0)
    assert result.foreign
    assert result.data == b"Date: Thu, 01 Jan 1970 00:00:00 +0000\n\n" + mail11.FOREIGN_NOTICE


def test_binary_data_with_form_feeds_stays_one_foreign_message() -> None:
    """Form feeds inside a foreign body are page breaks, not separators: one message, one notice."""
    data = mail11_message(body=b"\x00\x01\n\f\x02\x03\n\f\n\x00\n") + b"\f\n" + mail11_message()
    messages = parse(data)
    assert len(messages) == 2
    assert mail11.is_foreign(messages[0].body) and not mail11.is_foreign(messages[1].body)


def test_rewrite_options_refuse_unknown_modes() -> None:
    with pytest.raises(ValueError, match="decnet_rewrite"):
        RewriteOptions(hostname="h", decnet_rewrite="TRANSFORM")
