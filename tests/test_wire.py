"""Tests for vmspop.wire, the pure POP3 codec."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmspop import wire
from vmspop.wire import (
    GRAMMAR,
    MAX_COMMAND_LINE,
    MAX_KEPT_COMMANDS,
    MAX_REPLY_LINE,
    Command,
    DOT_SPACING,
    CommandError,
    LineBuffer,
    LineTooLong,
    Stuffer,
    TopFilter,
    WireSize,
    double_dots,
    err,
    multiline,
    ok,
    ok_octets,
    parse_command,
    to_crlf,
    wire_size,
)

# ---------------------------------------------------------------- helpers


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split data at the given offsets (any order, duplicates give empty blocks)."""
    points = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:])]


def stuff(blocks: list[bytes]) -> tuple[bytes, bytes]:
    """Run a Stuffer over blocks; return (concatenated feed output, finish())."""
    s = Stuffer()
    return b"".join(s.feed(b) for b in blocks), s.finish()


def top(blocks: list[bytes], n: int) -> bytes:
    """Run a TopFilter over blocks, stopping once it says it is done."""
    f = TopFilter(n)
    out = []
    for b in blocks:
        if f.done:
            break
        out.append(f.feed(b))
    return b"".join(out)


def normalise(data: bytes) -> bytes:
    """Reference CRLF normalisation: bare LF -> CRLF, lone CR kept."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def unstuff(wire: bytes) -> bytes:
    """Decode a multi-line body as a client would: lines, minus one leading dot."""
    assert wire.endswith(b".\r\n")
    body = wire[:-3]
    if not body:
        return b""
    assert body.endswith(b"\r\n")
    lines = body.split(b"\r\n")[:-1]
    assert b"." not in lines
    return b"".join((l[1:] if l[:1] == b"." else l) + b"\r\n" for l in lines)


def reference_top(data: bytes, n: int) -> bytes:
    """Obvious TOP: header lines, first empty line, then n body lines."""
    lines = re.findall(rb"[^\n]*\n|[^\n]+$", data)
    for i, line in enumerate(lines):
        if line in (b"\n", b"\r\n"):
            return b"".join(lines[: i + 1 + n])
    return data


messages = st.lists(
    st.sampled_from([b"\r", b"\n", b".", b"a", b"b", b"\r\n", b"\n.", b"..", b" "]),
    max_size=40,
).map(b"".join) | st.binary(max_size=40)


@st.composite
def split_messages(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A message and a random split of it into blocks (empty ones included)."""
    data = draw(messages)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    return data, split_at(data, cuts)


# ---------------------------------------------------------------- replies


def test_ok_plain_and_empty() -> None:
    """ok() builds +OK lines, with no trailing space when text is empty."""
    assert ok() == b"+OK\r\n"
    assert ok("ready") == b"+OK ready\r\n"


def test_ok_and_err_with_code() -> None:
    """Response codes go in brackets between the status and the text."""
    assert ok("hi", "X") == b"+OK [X] hi\r\n"
    assert err("locked", "IN-USE") == b"-ERR [IN-USE] locked\r\n"
    assert err("no", "SYS/TEMP") == b"-ERR [SYS/TEMP] no\r\n"
    assert err("bad") == b"-ERR bad\r\n"


def test_reply_text_is_one_line() -> None:
    """CR, LF, NUL and other control characters in text cannot split a reply."""
    line = err("a\r\nb\x00c\x1bd\x85e\u2028f")
    assert line == b"-ERR a  b c d e f\r\n"
    assert line.count(b"\n") == 1 and line.count(b"\r") == 1


def test_reply_utf8() -> None:
    """Reply text is encoded as UTF-8."""
    assert ok("café") == "+OK café\r\n".encode()


def test_reply_capped_at_512() -> None:
    """A long reply is truncated to 512 octets incl. CRLF, on a UTF-8 boundary."""
    assert len(ok("x" * 1000)) == MAX_REPLY_LINE
    line = err("é" * 1000, "AUTH")
    assert len(line) <= MAX_REPLY_LINE and line.endswith(b"\r\n")
    line[:-2].decode("utf-8")  # not cut inside a character


def test_reply_lone_surrogate() -> None:
    """Text that cannot be encoded (lone surrogate) is replaced, not fatal."""
    assert ok("a\udcffb") == b"+OK a?b\r\n"


@given(st.text(), st.none() | st.text(max_size=20))
def test_reply_always_one_bounded_line(text: str, code: str | None) -> None:
    """Whatever the text and code, a reply is one CRLF-terminated line <= 512 octets."""
    for line in (ok(text, code), err(text, code)):
        assert len(line) <= MAX_REPLY_LINE
        assert line.endswith(b"\r\n") and line.count(b"\n") == 1 and line.count(b"\r") == 1
        assert line.startswith((b"+OK", b"-ERR"))


def test_multiline_stuffs_and_terminates() -> None:
    """multiline() dot-stuffs each line and appends the "." line."""
    out = multiline(b"+OK\r\n", [b"1 10", b".", b"..x", b""])
    assert out == b"+OK\r\n1 10\r\n..\r\n...x\r\n\r\n.\r\n"


def test_multiline_empty() -> None:
    """An empty listing is just the status line and the terminator."""
    assert multiline(b"+OK 0\r\n", iter([])) == b"+OK 0\r\n.\r\n"


def test_multiline_first_line_dot() -> None:
    """The first line is stuffed too."""
    assert multiline(b"+OK\r\n", [b".a"]) == b"+OK\r\n..a\r\n.\r\n"


def test_multiline_rejects_embedded_newline() -> None:
    """A line containing CR or LF would break framing and is refused."""
    with pytest.raises(ValueError):
        multiline(b"+OK\r\n", [b"a\nb"])
    with pytest.raises(ValueError):
        multiline(b"+OK\r\n", [b"a\r"])


# ---------------------------------------------------------------- commands


def test_parse_simple_verbs() -> None:
    """Verbs are case-insensitive and returned upper-case."""
    assert parse_command(b"quit") == Command("QUIT", ())
    assert parse_command(b"StAt") == Command("STAT", ())


def test_parse_numbers() -> None:
    """Numbers become ints; extra spaces between and after arguments are fine."""
    assert parse_command(b"RETR 1") == Command("RETR", (1,))
    assert parse_command(b"TOP  12   0  ") == Command("TOP", (12, 0))
    assert parse_command(b"DELE 4294967296") == Command("DELE", (4294967296,))


def test_parse_optional_number() -> None:
    """LIST and UIDL take an optional message number; absent means no args."""
    assert parse_command(b"LIST") == Command("LIST", ())
    assert parse_command(b"LIST ") == Command("LIST", ())
    assert parse_command(b"UIDL 7") == Command("UIDL", (7,))


def test_parse_words() -> None:
    """USER and APOP take printable words as bytes."""
    assert parse_command(b"USER bob@example.org") == Command("USER", (b"bob@example.org",))
    digest = b"c4c9334bac560ecc979e58001b3e22fb"
    assert parse_command(b"APOP mrose " + digest) == Command("APOP", (b"mrose", digest))


def test_parse_pass_rest_verbatim() -> None:
    """PASS takes everything after the first space, spaces included."""
    assert parse_command(b"PASS a b") == Command("PASS", (b"a b",))
    assert parse_command(b"PASS  x") == Command("PASS", (b" x",))
    assert parse_command(b"PASS x ") == Command("PASS", (b"x ",))


def test_parse_pass_utf8() -> None:
    """A UTF-8 password is accepted as raw bytes."""
    assert parse_command("PASS pässword".encode()) == Command("PASS", ("pässword".encode(),))


def test_parse_auth_forms() -> None:
    """AUTH takes an optional mechanism and an optional initial response."""
    assert parse_command(b"AUTH") == Command("AUTH", ())
    assert parse_command(b"AUTH PLAIN") == Command("AUTH", (b"PLAIN",))
    assert parse_command(b"AUTH PLAIN =") == Command("AUTH", (b"PLAIN", b"="))
    assert parse_command(b"AUTH PLAIN ") == Command("AUTH", (b"PLAIN",))


def test_parse_xtnd() -> None:
    """XTND takes a word and an optional verbatim rest."""
    assert parse_command(b"XTND XMIT") == Command("XTND", (b"XMIT",))
    assert parse_command(b"XTND XMIT a b") == Command("XTND", (b"XMIT", b"a b"))


def test_parse_custom_grammar() -> None:
    """A caller-supplied grammar replaces the default one."""
    grammar = {"ZAP": ("number", "word?")}
    assert parse_command(b"zap 3 x", grammar) == Command("ZAP", (3, b"x"))
    with pytest.raises(CommandError):
        parse_command(b"QUIT", grammar)


def test_grammar_covers_rfc_verbs() -> None:
    """Every verb other modules dispatch on is in GRAMMAR."""
    assert set(GRAMMAR) == {
        "USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", "STAT", "LIST",
        "UIDL", "RETR", "TOP", "DELE", "NOOP", "RSET", "QUIT", "XTND",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b"", "empty command"),
        (b"   ", "empty command"),
        (b"FOO", 'unknown command "FOO"'),
        (b"foo bar", 'unknown command "FOO"'),
        (b"X1!", 'unknown command "X1!"'),
        (b"ABCDEFGHIJK", "unknown command"),
        (b"\xff\xfe", "unknown command"),
        (b"RETR", "RETR needs a message number"),
        (b"DELE  ", "DELE needs a message number"),
        (b"USER", "USER needs an argument"),
        (b"PASS", "PASS needs an argument"),
        (b"PASS ", "PASS needs an argument"),
        (b"XTND", "XTND needs an argument"),
        (b"TOP 1", "TOP takes 2 arguments"),
        (b"TOP 1 2 3", "TOP takes 2 arguments"),
        (b"APOP bob", "APOP takes 2 arguments"),
        (b"RETR 1 2", "RETR takes 1 argument"),
        (b"LIST 1 2", "LIST takes at most 1 argument"),
        (b"QUIT now", "QUIT takes no arguments"),
        (b"RETR -1", "message number must be a positive decimal number"),
        (b"RETR +1", "message number must be a positive decimal number"),
        (b"RETR 1x", "message number must be a positive decimal number"),
        (b"RETR 0x1", "message number must be a positive decimal number"),
        (b"RETR 1_0", "message number must be a positive decimal number"),
        (b"RETR 00000000001", "message number must be a positive decimal number"),
        ("RETR ١".encode(), "message number must be a positive decimal number"),
        (b"TOP 1 -5", "line count must be a non-negative decimal number"),
        (b"USER " + b"a" * 41, "argument too long"),
        (b"USER \xc3\xa9", "non-ASCII or control characters in command"),
        (b"USER a\x00b", "non-ASCII or control characters in command"),
        (b"NOOP\x00", "non-ASCII or control characters in command"),
        (b"USER\ta", "non-ASCII or control characters in command"),
        (b"PASS a\rb", "non-ASCII or control characters in command"),
        (b"PASS \xff\xfe", "non-ASCII or control characters in command"),
        (b"PASS \x7f", "non-ASCII or control characters in command"),
        (b"PASS " + b"x" * 249, "command line too long"),
    ],
)
def test_parse_errors(line: bytes, text: str) -> None:
    """Each malformed command raises CommandError with a precise client text."""
    with pytest.raises(CommandError) as info:
        parse_command(line)
    assert info.value.text == text


def test_parse_longest_line_allowed() -> None:
    """A line of exactly MAX_COMMAND_LINE octets with CRLF is accepted."""
    line = b"PASS " + b"x" * (MAX_COMMAND_LINE - 2 - 5)
    assert parse_command(line).args == (b"x" * 248,)


def test_parse_max_word_and_number() -> None:
    """A 40-octet word and a 10-digit number are the accepted maxima."""
    assert parse_command(b"USER " + b"a" * 40).args == (b"a" * 40,)
    assert parse_command(b"RETR 0000000001").args == (1,)


def test_parse_keeps_only_lines_without_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines with numbers only are parsed once and kept; a user name or a password is
    never kept, a bad line still fails each time, and the table stays bounded."""
    monkeypatch.setattr(wire, "_parsed", {})
    lines = [b"RETR 7", b"TOP 1 10", b"STAT", b"USER jones", b"PASS secret", b"AUTH PLAIN",
             b"APOP jones c4c9334bac560ecc979e58001b3e22fb", b"XTND STATS"]
    first = [parse_command(line) for line in lines]
    assert [parse_command(line) for line in lines] == first
    assert set(wire._parsed) == {b"RETR 7", b"TOP 1 10", b"STAT"}
    for _ in range(2):
        with pytest.raises(CommandError):
            parse_command(b"RETR x")
    assert parse_command(b"RETR 7", {"RETR": ("word",)}) == Command("RETR", (b"7",))
    for n in range(MAX_KEPT_COMMANDS + 10):
        assert parse_command(b"DELE %d" % (n + 1)) == Command("DELE", (n + 1,))
    assert 0 < len(wire._parsed) <= MAX_KEPT_COMMANDS


@given(st.integers(min_value=0, max_value=10**12))
def test_ok_octets_is_ok(size: int) -> None:
    """RETR's status line, built directly, is what ok() builds."""
    assert ok_octets(size) == ok(f"{size} octets")


@settings(max_examples=300)
@given(st.binary(max_size=80) | st.text(max_size=40).map(str.encode))
def test_parse_never_crashes(line: bytes) -> None:
    """Any bytes either parse or raise CommandError whose text is clean ASCII."""
    try:
        parse_command(line)
    except CommandError as e:
        assert e.text.isascii() and e.text.isprintable()
        assert "Error" not in e.text


# ---------------------------------------------------------------- LineBuffer


def test_linebuffer_crlf_and_lf() -> None:
    """CRLF and bare LF both end a line; the terminator is removed."""
    buf = LineBuffer()
    assert buf.feed(b"USER a\r\nPASS b\nNOOP") == [b"USER a", b"PASS b"]
    assert buf.feed(b"\r\n") == [b"NOOP"]


def test_linebuffer_split_input() -> None:
    """A line split across feeds, even between CR and LF, comes out whole."""
    buf = LineBuffer()
    assert buf.feed(b"ST") == []
    assert buf.feed(b"AT\r") == []
    assert buf.feed(b"\nQU") == [b"STAT"]
    assert buf.clear() == b"QU"
    assert buf.feed(b"IT\n") == [b"IT"]


def test_linebuffer_only_one_cr_stripped() -> None:
    """Only one CR before LF is part of the terminator."""
    assert LineBuffer().feed(b"a\r\r\n") == [b"a\r"]


def test_linebuffer_limit_exact() -> None:
    """A line whose content + CRLF equals max_length passes; one more octet fails."""
    buf = LineBuffer(10)
    assert buf.feed(b"12345678\r\n") == [b"12345678"]
    with pytest.raises(LineTooLong):
        buf.feed(b"123456789\n")


def test_linebuffer_overlong_partial() -> None:
    """An unterminated line raises as soon as it cannot fit, and is dropped."""
    buf = LineBuffer(10)
    assert buf.feed(b"12345678\r") == []  # the CR may be the terminator
    buf.clear()
    with pytest.raises(LineTooLong):
        buf.feed(b"123456789")
    assert buf.clear() == b""


def test_linebuffer_overlong_keeps_earlier_lines() -> None:
    """LineTooLong carries the complete lines that preceded the long one."""
    buf = LineBuffer(10)
    with pytest.raises(LineTooLong) as info:
        buf.feed(b"NOOP\r\nSTAT\n" + b"x" * 20 + b"\nQUIT\n")
    assert info.value.lines == [b"NOOP", b"STAT"]


@given(st.lists(st.sampled_from([b"RETR 1", b"NOOP", b"", b"a\r", b"\r", b"x" * 20]), max_size=6),
       st.lists(st.integers(min_value=0, max_value=200), max_size=6),
       st.sampled_from([b"\r\n", b"\n"]))
def test_linebuffer_any_cut_gives_the_same_lines(lines: list[bytes], cuts: list[int], end: bytes) -> None:
    """However the input is cut into reads (one whole line per read being the usual
    case, with its own quick path), the same lines come out."""
    data = b"".join(line + end for line in lines)
    buf = LineBuffer()
    got: list[bytes] = []
    at = 0
    for cut in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        got += buf.feed(data[at:cut])
        at = cut
    # One CR before the LF is part of the terminator, whichever ending was added.
    assert got == [line[:-1] if line.endswith(b"\r") else line for line in (x + end[:-1] for x in lines)]
    assert not buf.pending


def test_linebuffer_max_length_mutable() -> None:
    """max_length can be raised, e.g. for long SASL responses."""
    buf = LineBuffer()
    buf.max_length = 1000
    assert buf.feed(b"x" * 900 + b"\r\n") == [b"x" * 900]


# ---------------------------------------------------------------- Stuffer


def test_stuffer_first_line_dot() -> None:
    """A dot on the very first line of the message is stuffed."""
    assert stuff([b".hidden\n"]) == (b"..hidden\r\n", b".\r\n")


def test_stuffer_lone_dot_at_block_boundary() -> None:
    """A "." line starting exactly at a block boundary is stuffed."""
    assert stuff([b"a\n", b".\n", b"b\n"]) == (b"a\r\n..\r\nb\r\n", b".\r\n")
    assert stuff([b"a\r\n", b".", b"\r\n"]) == (b"a\r\n..\r\n", b".\r\n")


def test_stuffer_dot_after_split_crlf() -> None:
    """A dot after a CRLF split across blocks is stuffed."""
    assert stuff([b"a\r", b"\n.b\n"]) == (b"a\r\n..b\r\n", b".\r\n")


def test_stuffer_crlf_not_doubled() -> None:
    """CRLF input is passed through, never becoming CR CR LF."""
    assert stuff([b"a\r\nb\r\n"]) == (b"a\r\nb\r\n", b".\r\n")
    assert stuff([b"a\r\nb\n"]) == (b"a\r\nb\r\n", b".\r\n")


def test_stuffer_cr_at_block_end_then_lf() -> None:
    """A CR ending one block and an LF starting the next make one CRLF."""
    assert stuff([b"a\r", b"\n", b"b\r", b"\nc"]) == (b"a\r\nb\r\nc", b"\r\n.\r\n")


def test_stuffer_lone_cr() -> None:
    """A CR not followed by LF passes unchanged and does not start a line."""
    assert stuff([b"a\rb\r.c\n"]) == (b"a\rb\r.c\r\n", b".\r\n")
    assert stuff([b"a\r", b".c\n"]) == (b"a\r.c\r\n", b".\r\n")


def test_stuffer_unterminated_last_line() -> None:
    """An unterminated last line gets a CRLF before the "." line."""
    assert stuff([b"a\nb"]) == (b"a\r\nb", b"\r\n.\r\n")
    assert stuff([b"a\r"]) == (b"a\r", b"\r\n.\r\n")
    assert stuff([b"."]) == (b"..", b"\r\n.\r\n")


def test_stuffer_empty_message() -> None:
    """An empty message (no bytes, or only empty blocks) is just the "." line."""
    assert stuff([]) == (b"", b".\r\n")
    assert stuff([b"", b""]) == (b"", b".\r\n")


def test_stuffer_blank_lines() -> None:
    """Empty lines survive as CRLF."""
    assert stuff([b"\n\n", b"\r\n"]) == (b"\r\n\r\n\r\n", b".\r\n")


def test_stuffer_byte_at_a_time() -> None:
    """One-byte blocks give the same output as one block."""
    data = b".a\r\r\n.\n\r.\r\n..\nx\r"
    assert stuff([data[i : i + 1] for i in range(len(data))]) == stuff([data])


def test_to_crlf_examples() -> None:
    """Bare LFs gain a CR, CRLFs and lone CRs stay, in LF, CRLF and mixed blocks."""
    assert to_crlf(b"a\nb\n") == b"a\r\nb\r\n"
    assert to_crlf(b"a\r\nb\r\n") == b"a\r\nb\r\n"
    assert to_crlf(b"a\r\nb\n\rc\r\r\n") == b"a\r\nb\r\n\rc\r\r\n"
    assert to_crlf(b"") == b""


@given(st.binary())
def test_to_crlf_ends_every_line_with_crlf_and_keeps_the_rest(data: bytes) -> None:
    """Every LF ends up in a CRLF; taking the CRs of the CRLFs away gives the input
    with the same done to it (nothing else changed, nothing added)."""
    out = to_crlf(data)
    assert out.count(b"\n") == out.count(b"\r\n") == data.count(b"\n")
    assert out.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")


def dots_reference(block: bytes) -> bytes:
    """What double_dots must return: every CRLF "." becomes CRLF "..", in one split."""
    return b"\r\n..".join(block.split(b"\r\n."))


# Lines of a CRLF-normalised block: far apart dots, dense dots, dot lines, bare dots.
_dot_lines = st.lists(st.sampled_from([
    b"x" * (DOT_SPACING + 40) + b".\r\n", b"a.b.c.d\r\n", b".\r\n", b"..x\r\n", b"\r\n",
    b"." * 30 + b"\r\n", b"y" * 3000 + b"\r\n", b"."]), max_size=120).map(b"".join)


@settings(max_examples=300)
@given(_dot_lines)
def test_double_dots_matches_split(block: bytes) -> None:
    """Stepping from dot to dot, or falling back to the split, gives the split's result."""
    assert b"".join(double_dots(block)) == dots_reference(block)


@pytest.mark.parametrize("block", [
    b".\r\n" * 100,  # dense from the start: the split at once
    (b"z" * 2000 + b"\r\n.a\r\n") * 40,  # sparse: dot to dot all the way
    (b"z" * 2000 + b"\r\n.\r\n") * 40 + b"\r\n." * 500,  # sparse, then dense
    b"no dot\r\n.", b"\r\n.", b".", b"a.\r\n",
])
def test_double_dots_both_ways(block: bytes) -> None:
    """The two ways of finding dot lines, and the block's edges."""
    assert b"".join(double_dots(block)) == dots_reference(block)


def test_double_dots_leaves_first_line_alone() -> None:
    """The block's first line is the Stuffer's to judge (it may continue a line)."""
    assert b"".join(double_dots(b".a\r\n.b")) == b".a\r\n..b"


def test_double_dots_parts_are_views_of_the_block() -> None:
    """The doubled dots cost no copy of the block: the parts between them are views."""
    block = b"a\r\n.b\r\n.c"
    parts = double_dots(block)
    assert parts[1::2] == [b".", b"."]
    assert all(isinstance(p, memoryview) and p.obj is block for p in parts[::2])


@settings(max_examples=400)
@given(split_messages())
def test_stuffer_parts_join_to_feed(sample: tuple[bytes, list[bytes]]) -> None:
    """feed_parts gives, part by part, what feed gives joined."""
    _, blocks = sample
    by_parts, joined = Stuffer(), Stuffer()
    for block in blocks:
        assert b"".join(by_parts.feed_parts(block)) == joined.feed(block)
    assert by_parts.finish() == joined.finish()


@settings(max_examples=400)
@given(split_messages())
def test_stuffer_split_invariant(sample: tuple[bytes, list[bytes]]) -> None:
    """(a) Output is the same however the input is split into blocks."""
    data, blocks = sample
    assert stuff(blocks) == stuff([data])


@settings(max_examples=400)
@given(split_messages())
def test_stuffer_round_trip(sample: tuple[bytes, list[bytes]]) -> None:
    """(b, c) A client un-stuffing the output gets the input, CRLF-normalised.

    unstuff() also asserts that no line before the terminator is a bare ".".
    """
    data, blocks = sample
    body, end = stuff(blocks)
    expected = normalise(data)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert unstuff(body + end) == expected


@settings(max_examples=400)
@given(split_messages())
def test_wiresize_matches_stuffer(sample: tuple[bytes, list[bytes]]) -> None:
    """(d) size == len(feed output) - stuffing dots; finish() is 5 octets iff unterminated.

    So the octets a client receives after the status line are exactly
    size + dots + len(finish()), with len(finish()) == 3 when size == 0 or the
    normalised message ends in CRLF, and 5 otherwise.
    """
    data, blocks = sample
    counter = WireSize()
    for b in blocks:
        counter.feed(b)
    body, end = stuff(blocks)
    dots = sum(1 for line in body.split(b"\r\n") if line[:1] == b".")
    assert counter.size == len(body) - dots == len(normalise(data))
    assert counter.size == wire_size(data)
    assert counter.physical == len(data)
    terminated = counter.size == 0 or normalise(data).endswith(b"\r\n")
    assert end == (b".\r\n" if terminated else b"\r\n.\r\n")


def test_wiresize_examples() -> None:
    """Bare LF counts 2, CRLF counts 2 (even split), lone CR counts 1."""
    assert wire_size(b"a\nb") == 4
    assert wire_size(b"a\r\nb") == 4
    assert wire_size(b"a\rb") == 3
    counter = WireSize()
    counter.feed(b"a\r")
    counter.feed(b"")
    counter.feed(b"\n")
    assert (counter.size, counter.physical) == (3, 3)


# ---------------------------------------------------------------- TopFilter


MSG = b"From: a\nSubject: b\n\nline1\nline2\nline3\n"


def test_top_zero_lines() -> None:
    """TOP n 0 gives the header and blank line only, and is done."""
    f = TopFilter(0)
    assert f.feed(MSG) == b"From: a\nSubject: b\n\n"
    assert f.done
    assert f.feed(b"more\n") == b""


def test_top_some_lines() -> None:
    """TOP n 2 adds exactly two body lines."""
    assert top([MSG], 2) == b"From: a\nSubject: b\n\nline1\nline2\n"


def test_top_more_lines_than_exist() -> None:
    """Asking for more lines than the body has gives the whole message, not done."""
    f = TopFilter(50)
    assert f.feed(MSG) == MSG
    assert not f.done


def test_top_separator_straddles_blocks() -> None:
    """The blank line is found when split across blocks, LF or CRLF."""
    assert top([b"H: 1\n", b"\nbody\nx\n"], 0) == b"H: 1\n\n"
    assert top([b"H: 1\r\n\r", b"\nbody\r\n"], 1) == b"H: 1\r\n\r\nbody\r\n"
    assert top([b"H: 1\r\n", b"\r", b"\nbody\r\n"], 0) == b"H: 1\r\n\r\n"


def test_top_cr_line_is_not_blank() -> None:
    """A line holding only a lone CR is not the separator."""
    assert top([b"H: 1\n\rx\n\nb\n"], 0) == b"H: 1\n\rx\n\n"
    assert top([b"H: 1\n\r", b"\r\n\nb\n"], 0) == b"H: 1\n\r\r\n\n"


def test_top_unterminated_final_line() -> None:
    """An unterminated last body line counts as a line and is passed."""
    assert top([b"H\n\na\nb"], 2) == b"H\n\na\nb"
    assert top([b"H\n\na\nb"], 1) == b"H\n\na\n"


def test_top_no_blank_line() -> None:
    """A message without a blank line is all header and is passed whole."""
    f = TopFilter(0)
    assert f.feed(b"H: 1\nH: 2") == b"H: 1\nH: 2"
    assert not f.done


def test_top_empty_first_line() -> None:
    """An empty first line means no header at all."""
    assert top([b"\nbody\nmore\n"], 1) == b"\nbody\n"
    assert top([b"\r", b"\nbody\n"], 0) == b"\r\n"


def test_top_crlf_message() -> None:
    """CRLF-stored messages are cut on the same lines."""
    msg = MSG.replace(b"\n", b"\r\n")
    assert top([msg], 1) == b"From: a\r\nSubject: b\r\n\r\nline1\r\n"


def test_top_mixed_line_ends() -> None:
    """An LF header followed by a CRLF blank line is a separator."""
    assert top([b"H: 1\n\r\nbody\n"], 0) == b"H: 1\n\r\n"


def test_top_rejects_negative() -> None:
    """A negative line count is a programming error."""
    with pytest.raises(ValueError):
        TopFilter(-1)


@settings(max_examples=400)
@given(split_messages(), st.integers(0, 5))
def test_top_split_invariant_and_reference(
    sample: tuple[bytes, list[bytes]], n: int
) -> None:
    """(e) TopFilter equals a reference implementation whatever the split."""
    data, blocks = sample
    assert top(blocks, n) == reference_top(data, n)
    f = TopFilter(n)
    assert b"".join(f.feed(b) for b in blocks) == reference_top(data, n)


@settings(max_examples=200)
@given(split_messages(), st.integers(0, 5))
def test_top_then_stuff(sample: tuple[bytes, list[bytes]], n: int) -> None:
    """TOP output piped through a Stuffer frames like stuffing the reference."""
    data, blocks = sample
    f, s = TopFilter(n), Stuffer()
    out = b"".join(s.feed(f.feed(b)) for b in blocks) + s.finish()
    assert out == b"".join(stuff([reference_top(data, n)]))
