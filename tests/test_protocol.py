"""Transcript tests of the POP3 session over a StringTransport and a fake clock.

Each test pins one behaviour; those marked "stock defect" are regressions for a
defect of twisted.mail.pop3 that vmspop must not inherit (docs/twisted-defects.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet import defer

from support import Client, Server, counting_thread_calls, multiline_body, open_files

from vmspop import cached, protocol
from vmspop.transfer import READ_AHEAD_BYTES

HELLO = b"Subject: hello\n\nfirst line\n"
SECOND = b"Subject: second\r\n\r\nline one\r\nline two\r\n"


@pytest.fixture
def server(tmp_path: Path) -> Server:
    s = Server(tmp_path)
    s.add_user("jones", secret=b"tanstaafl")
    return s


@pytest.fixture
def uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if no message were in the page cache: every read goes to the pool."""
    monkeypatch.setattr("vmspop.protocol.read_if_cached", lambda path, limit: None)


def logged_in(server: Server, *messages: bytes) -> Client:
    server.deliver("jones", *messages)
    client = server.connect()
    assert client.login().startswith(b"+OK")
    return client


# -- greeting, CAPA ------------------------------------------------------------------------


def test_greeting_carries_unique_apop_challenge(server: Server) -> None:
    """The greeting follows the OpenVMS shape and ends with a fresh <...@host> challenge."""
    first, second = server.connect(), server.connect()
    assert first.greeting.startswith(b"+OK POP server vmspop ")
    assert b" at pop.example.com, up since " in first.greeting
    challenge = first.greeting.rsplit(b" ", 1)[1].strip()
    assert challenge.startswith(b"<") and challenge.endswith(b"@pop.example.com>")
    assert challenge != second.greeting.rsplit(b" ", 1)[1].strip()


def test_capa_lists_registered_capabilities(server: Server) -> None:
    """Stock defect: CAPA advertises PIPELINING (not PIPELINE), RESP-CODES, AUTH-RESP-CODE, no jokes."""
    caps = multiline_body(server.connect().command("CAPA"))
    for cap in (b"TOP", b"UIDL", b"USER", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"):
        assert cap in caps
    assert any(c.startswith(b"IMPLEMENTATION vmspop-") for c in caps)
    assert b"EXPIRE 0" in caps  # retrieved mail leaves NEWMAIL at QUIT
    assert not {b"PIPELINE", b"CELERITY", b"AUSPEX", b"POTENCE", b"STLS"} & set(caps)
    assert b"SASL SCRAM-SHA-256 CRAM-MD5 PLAIN" in caps


def test_capa_without_user_when_userpass_disabled(tmp_path: Path) -> None:
    """--disable-userpass removes USER from CAPA; leave-in-newmail advertises EXPIRE NEVER."""
    s = Server(tmp_path, disable_userpass=True, leave_in_newmail=True)
    caps = multiline_body(s.connect().command("CAPA"))
    assert b"USER" not in caps
    assert b"EXPIRE NEVER" in caps


def test_stls_refused_without_tls(server: Server) -> None:
    """STLS gets -ERR while TLS is not configured, and the session continues."""
    client = server.connect()
    assert client.command("STLS").startswith(b"-ERR")
    assert client.login().startswith(b"+OK")


# -- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"", b"FOO", b"TOP 1", b"RETR x", b"RETR -1", b"LIST 1 2",
                                  b"USER \xff\xfe", b"\x00\x01", b"DELE 99999999999", b"USER"])
def test_malformed_commands_answered_without_disconnect(server: Server, line: bytes) -> None:
    """Stock defect: bad commands get -ERR, never a dropped connection or a Python class name."""
    client = logged_in(server, HELLO)
    reply = client.command(line)
    assert reply.startswith(b"-ERR ")
    assert b"Error" not in reply and b"Exception" not in reply and b"<class" not in reply
    assert not client.closed
    assert client.command("NOOP") == b"+OK\r\n"


def test_overlong_line_is_refused_and_closed(server: Server) -> None:
    """A command line beyond RFC 2449's 255 octets ends the connection with a clear -ERR."""
    client = server.connect()
    reply = client.send(b"USER " + b"x" * 300 + b"\r\n")
    assert reply.startswith(b"-ERR line too long")
    assert client.closed


def test_transaction_commands_need_login(server: Server) -> None:
    """STAT before login is refused with a plain explanation."""
    reply = server.connect().command("STAT")
    assert reply == b"-ERR not logged in: STAT needs USER/PASS or APOP first\r\n"


def test_no_reauthentication(server: Server) -> None:
    """Stock defect: USER/PASS/APOP after login are refused, the session stays as it was."""
    client = logged_in(server, HELLO)
    for line in ("USER jones", "PASS wonderland", "APOP jones " + "0" * 32):
        assert client.command(line).startswith(b"-ERR already logged in")
    assert client.command("STAT") == b"+OK 1 %d\r\n" % len(HELLO.replace(b"\n", b"\r\n"))


def test_lf_only_client_lines_accepted(server: Server) -> None:
    """Clients typing by hand (nc, telnet) that end lines with LF alone are understood."""
    client = server.connect()
    assert client.send(b"USER jones\n").startswith(b"+OK")
    assert client.send(b"PASS wonderland\n").startswith(b"+OK")


# -- listings and sizes ----------------------------------------------------------------------


def test_sizes_are_wire_octets(server: Server) -> None:
    """Stock defect: STAT, LIST and RETR report CRLF octets, and RETR sends exactly that many."""
    client = logged_in(server, HELLO, SECOND)
    size1 = len(HELLO.replace(b"\n", b"\r\n"))
    size2 = len(SECOND)
    assert client.command("STAT") == b"+OK 2 %d\r\n" % (size1 + size2)
    assert multiline_body(client.command("LIST")) == [b"1 %d" % size1, b"2 %d" % size2]
    assert client.command("LIST 2") == b"+OK 2 %d\r\n" % size2
    for number, size in ((1, size1), (2, size2)):
        reply = client.command(f"RETR {number}")
        status, _, body = reply.partition(b"\r\n")
        assert status == b"+OK %d octets" % size
        assert len(body) - len(b".\r\n") == size


def test_uidl_n_includes_message_number(server: Server) -> None:
    """Stock defect (twisted#9104): UIDL n answers "+OK n uid"."""
    client = logged_in(server, HELLO, SECOND)
    listing = multiline_body(client.command("UIDL"))
    assert client.command("UIDL 2") == b"+OK " + listing[1] + b"\r\n"
    uid = listing[1].split(b" ")[1]
    assert uid.startswith(b"JONES_") and 1 <= len(uid) <= 70
    assert all(0x21 <= c <= 0x7E for c in uid)


def test_empty_mailbox_is_still_logged_in(server: Server) -> None:
    """Stock defect: an empty mailbox is a normal session: STAT 0 0, and QUIT updates."""
    client = server.connect()
    assert client.login() == b"+OK Username/password combination ok; 0 messages (0 octets)\r\n"
    assert client.command("STAT") == b"+OK 0 0\r\n"
    assert multiline_body(client.command("LIST")) == []
    assert client.command("QUIT").startswith(b"+OK POP server signing off")


def test_message_maximum_shows_oldest_first(tmp_path: Path) -> None:
    """--message-maximum shows only the oldest N messages."""
    s = Server(tmp_path, message_maximum=1)
    s.add_user("jones")
    client = logged_in(s, HELLO, SECOND)
    assert client.command("STAT").startswith(b"+OK 1 ")
    assert b"Subject: hello" in client.command("RETR 1")


# -- DELE and RSET ---------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["0", "3", "4000000000"])
def test_dele_out_of_range(server: Server, number: str) -> None:
    """Stock defect: DELE 0 or beyond the last message is an error, not the last message."""
    client = logged_in(server, HELLO, SECOND)
    assert client.command(f"DELE {number}").startswith(b"-ERR no such message")
    assert client.command("STAT").startswith(b"+OK 2 ")


def test_deleted_messages_are_hidden_until_rset(server: Server) -> None:
    """Stock defect (twisted#9094): a DELE'd message leaves STAT/LIST/UIDL and cannot be used."""
    client = logged_in(server, HELLO, SECOND)
    assert client.command("DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command("DELE 1") == b"-ERR message 1 already deleted\r\n"
    assert client.command("STAT") == b"+OK 1 %d\r\n" % len(SECOND)
    assert [line.split()[0] for line in multiline_body(client.command("LIST"))] == [b"2"]
    assert [line.split()[0] for line in multiline_body(client.command("UIDL"))] == [b"2"]
    for line in ("LIST 1", "UIDL 1", "RETR 1", "TOP 1 0"):
        assert client.command(line) == b"-ERR message 1 already deleted\r\n"
    assert client.command("RSET").startswith(b"+OK maildrop has 2 messages")
    assert client.command("STAT").startswith(b"+OK 2 ")


# -- RETR and TOP ----------------------------------------------------------------------------


def test_retr_stuffs_first_line_and_block_boundaries(server: Server) -> None:
    """Stock defect: a leading "." is stuffed on the first line and at every read-block boundary."""
    message = b".first\n" + b"x" * 5 + b"\n.\n..two\n"
    server.factory.block_size = 7  # ".first\n" | "xxxxx\n." | ...: lines start at block edges
    client = logged_in(server, message)
    reply = client.command("RETR 1")
    assert reply.split(b"\r\n", 1)[1] == b"..first\r\nxxxxx\r\n..\r\n...two\r\n.\r\n"


@pytest.mark.parametrize("block_size", [1, 3, 16, 256 * 1024])
def test_crlf_and_lf_messages_both_sent_as_crlf(server: Server, block_size: int) -> None:
    """Stock defect (twisted#2071): CRLF input is not doubled to CR CR LF; LF input becomes CRLF."""
    server.factory.block_size = block_size
    client = logged_in(server, HELLO, SECOND)
    assert client.command("RETR 1").split(b"\r\n", 1)[1] == HELLO.replace(b"\n", b"\r\n") + b".\r\n"
    assert client.command("RETR 2").split(b"\r\n", 1)[1] == SECOND + b".\r\n"


@pytest.mark.parametrize("block_size", [1, 2, 5, 64])
def test_top_exact_across_blocks(server: Server, block_size: int) -> None:
    """Stock defect: TOP finds the header end even when it straddles a read block."""
    server.factory.block_size = block_size
    client = logged_in(server, b"A: 1\nB: 2\n\nl1\nl2\nl3")
    assert multiline_body(client.command("TOP 1 0")) == [b"A: 1", b"B: 2", b""]
    assert multiline_body(client.command("TOP 1 2")) == [b"A: 1", b"B: 2", b"", b"l1", b"l2"]
    assert multiline_body(client.command("TOP 1 9")) == [b"A: 1", b"B: 2", b"", b"l1", b"l2", b"l3"]


def test_zero_byte_message_is_retrievable(server: Server) -> None:
    """Stock defect: a 0-byte message is a message, not a deleted one."""
    client = logged_in(server, b"")
    assert client.command("LIST 1") == b"+OK 1 0\r\n"
    assert client.command("RETR 1") == b"+OK 0 octets\r\n.\r\n"


def test_send_id_headers_are_counted(tmp_path: Path) -> None:
    """--send-id-headers prepends X-POP3-Server/X-POP3-ID, and the sizes include them."""
    s = Server(tmp_path, send_id_headers=True)
    s.add_user("jones")
    client = logged_in(s, HELLO)
    uid = multiline_body(client.command("UIDL"))[0].split()[1]
    size = int(client.command("LIST 1").split()[2])
    status, _, body = client.command("RETR 1").partition(b"\r\n")
    assert body.startswith(b"X-POP3-Server: pop.example.com vmspop ")
    assert b"X-POP3-ID: " + uid + b"\r\n" in body
    assert status == b"+OK %d octets" % size and len(body) - 3 == size


def test_vanished_file_answers_error(server: Server) -> None:
    """A message removed behind the session's back gets -ERR [SYS/TEMP], and the session goes on."""
    client = logged_in(server, HELLO, SECOND)
    os.unlink(client.protocol.mbox.messages[0].path)
    assert client.command("RETR 1") == b"-ERR [SYS/TEMP] message 1 is no longer available\r\n"
    assert client.command("RETR 2").startswith(b"+OK")


@pytest.mark.usefixtures("uncached")
def test_retr_reads_the_next_messages_ahead(server: Server) -> None:
    """A download in order reads 1, 2, 4, 8, ... messages ahead: 16 messages, 5 blocking calls."""
    messages = [b"Subject: %d\n\nbody %d\n" % (i, i) for i in range(1, 17)]
    client = logged_in(server, *messages)
    calls = counting_thread_calls(server)
    for number, message in enumerate(messages, 1):
        assert client.command(f"RETR {number}").split(b"\r\n", 1)[1] == \
            message.replace(b"\n", b"\r\n") + b".\r\n"
    assert calls == ["_open_and_read"] * 5  # RETR 1, 2 (+3), 4 (+5, 6), 7 (+8-11), 12 (+13-16)
    assert client.command("TOP 16 0").startswith(b"+OK")  # a repeat is read again
    assert len(calls) == 6 and client.protocol._read_ahead.held == {}


@pytest.mark.usefixtures("uncached")
def test_read_ahead_only_in_order(server: Server) -> None:
    """A client that jumps about gets nothing read ahead; "in order" skips deleted messages."""
    client = logged_in(server, *[HELLO] * 8)
    for number in (5, 1, 3):
        assert client.command(f"RETR {number}").startswith(b"+OK")
        assert client.protocol._read_ahead.held == {}
    assert client.command("DELE 4").startswith(b"+OK")
    assert client.command("RETR 5").startswith(b"+OK")  # the next live one after 3
    assert set(client.protocol._read_ahead.held) == {5}  # message 6
    assert client.command("RETR 8").startswith(b"+OK")  # a jump drops what was read ahead
    assert client.protocol._read_ahead.held == {}


@pytest.mark.usefixtures("uncached")
def test_read_ahead_skips_deleted_and_stops_at_its_budget(server: Server) -> None:
    """Deleted messages are not read ahead, READ_AHEAD_BYTES bounds what is, and DELE lets
    go of a message read ahead."""
    big = b"x" * 70 + b"\n"
    body = big * (READ_AHEAD_BYTES * 2 // 5 // (len(big) + 1))  # two fit in the budget, three do not
    client = logged_in(server, *[HELLO] * 7, body, body, body, body, HELLO)
    calls = counting_thread_calls(server)
    assert client.command("DELE 6").startswith(b"+OK")
    for number in (1, 2, 3):
        assert client.command(f"RETR {number}").startswith(b"+OK")
    assert client.command("RETR 4").startswith(b"+OK")
    assert set(client.protocol._read_ahead.held) == {4, 6}  # message 6 (index 5) skipped
    for number in (5, 7, 8):  # 5 and 7 were read ahead; 8 is the next step in order
        assert client.command(f"RETR {number}").startswith(b"+OK")
    assert set(client.protocol._read_ahead.held) == {8, 9}  # 4 asked for, 2 fit
    assert sum(map(len, client.protocol._read_ahead.held.values())) <= READ_AHEAD_BYTES
    assert client.command("DELE 10").startswith(b"+OK")
    assert set(client.protocol._read_ahead.held) == {8}
    assert client.command("RETR 9").startswith(b"+OK %d octets" % (len(body) + body.count(b"\n")))
    assert calls == ["_open_and_read"] * 4


@pytest.mark.usefixtures("uncached")
def test_read_ahead_leaves_an_unreadable_message_to_its_own_retr(server: Server) -> None:
    """A message that cannot be read ahead is not an error until it is asked for."""
    client = logged_in(server, HELLO, HELLO, HELLO, SECOND)
    os.unlink(client.protocol.mbox.messages[2].path)
    assert client.command("RETR 1").startswith(b"+OK")
    assert client.command("RETR 2").startswith(b"+OK")  # in order: reads message 3 ahead
    assert client.protocol._read_ahead.held == {}
    assert client.command("RETR 3") == b"-ERR [SYS/TEMP] message 3 is no longer available\r\n"
    assert client.command("RETR 4").split(b"\r\n", 1)[1] == SECOND + b".\r\n"


def test_no_read_ahead_after_a_message_larger_than_a_block(server: Server) -> None:
    """A message streamed in several blocks reads nothing ahead (its file stays open)."""
    server.factory.block_size = 16
    client = logged_in(server, b"y", b"y" * 40 + b"\n", b"y")
    assert client.command("RETR 1").startswith(b"+OK")
    assert client.command("RETR 2").startswith(b"+OK 42 octets")  # in order, streamed
    assert client.protocol._read_ahead.held == {}


@pytest.mark.usefixtures("uncached")
def test_read_ahead_takes_only_files_that_fit_a_block(server: Server) -> None:
    """A file read ahead must fit in one block; a larger one is streamed when asked for."""
    server.factory.block_size = 32
    long = b"z" * 50 + b"\n"
    client = logged_in(server, HELLO, HELLO, long, HELLO)
    calls = counting_thread_calls(server)
    assert client.command("RETR 1").startswith(b"+OK")
    assert client.command("RETR 2").startswith(b"+OK")  # in order: message 3 is too long
    assert client.protocol._read_ahead.held == {}
    assert client.command("RETR 3").split(b"\r\n", 1)[1] == long.replace(b"\n", b"\r\n") + b".\r\n"
    assert calls[:2] == ["_open_and_read"] * 2 and "_open_and_read" in calls[2:]


# -- the update ------------------------------------------------------------------------------


def test_quit_removes_deleted_and_moves_retrieved(server: Server) -> None:
    """Default mode: DELE'd mail goes, RETR'd mail moves to MAIL, untouched mail stays in NEWMAIL."""
    third = b"Subject: third\n\nx\n"
    client = logged_in(server, HELLO, SECOND, third)
    uids = multiline_body(client.command("UIDL"))
    client.command("RETR 1")
    client.command("RETR 2")
    client.command("DELE 2")
    client.command("TOP 3 1")  # TOP does not count as reading
    assert client.command("QUIT") == b"+OK POP server signing off (1 deleted, 1 moved to MAIL)\r\n"
    assert client.closed
    assert len(server.files("jones", "NEWMAIL")) == 1
    [moved] = server.files("jones", "MAIL")
    assert moved.startswith("cur/") and moved.endswith(":2,S")
    # UIDLs survive the move: the next session of MAIL... and NEWMAIL keep them.
    again = server.connect()
    again.login()
    assert multiline_body(again.command("UIDL")) == [b"1 " + uids[2].split()[1]]


def test_leave_in_newmail_keeps_retrieved(tmp_path: Path) -> None:
    """--leave-in-newmail: retrieved mail stays in NEWMAIL; deletions still happen."""
    s = Server(tmp_path, leave_in_newmail=True)
    s.add_user("jones")
    client = logged_in(s, HELLO, SECOND)
    client.command("RETR 1")
    client.command("DELE 2")
    assert client.command("QUIT").startswith(b"+OK POP server signing off (1 deleted, 0 moved")
    assert len(s.files("jones", "NEWMAIL")) == 1 and s.files("jones", "MAIL") == []


def test_use_mail_folder_serves_mail(tmp_path: Path) -> None:
    """--use-mail-folder: new mail is moved into MAIL at login and MAIL is served."""
    s = Server(tmp_path, use_mail_folder=True)
    s.add_user("jones")
    client = logged_in(s, HELLO, SECOND)
    assert s.files("jones", "NEWMAIL") == []
    assert client.command("STAT").startswith(b"+OK 2 ")
    client.command("RETR 1")
    client.command("QUIT")
    assert len(s.files("jones", "MAIL")) == 2


def test_drop_without_quit_changes_nothing(server: Server) -> None:
    """RFC 1939: a connection that ends without QUIT deletes and moves nothing, and frees the lock."""
    client = logged_in(server, HELLO, SECOND)
    before = server.files("jones", "NEWMAIL")
    client.command("RETR 1")
    client.command("DELE 2")
    client.drop()
    assert server.files("jones", "NEWMAIL") == before
    assert server.files("jones", "MAIL") == []
    assert server.connect().login().startswith(b"+OK")
    assert server.log.matching("disconnected: user=<jones>")


def test_quit_answers_after_update_finishes(server: Server) -> None:
    """Stock defect: QUIT replies only once the update is on disk."""
    client = logged_in(server, HELLO)
    client.command("DELE 1")
    pending: list[defer.Deferred] = []

    def later(f, *a, **kw):  # type: ignore[no-untyped-def]
        d: defer.Deferred = defer.Deferred()
        pending.append(d)
        return d.addCallback(lambda _: f(*a, **kw))

    server.run_in_thread = later
    assert client.command("QUIT") == b""
    assert len(server.files("jones", "NEWMAIL")) == 1
    pending.pop().callback(None)
    assert client.take().startswith(b"+OK POP server signing off (1 deleted")
    assert server.files("jones", "NEWMAIL") == []


def test_mail_arriving_during_session_is_untouched(server: Server) -> None:
    """The session works on its login snapshot: new mail is not shown and survives QUIT."""
    client = logged_in(server, HELLO)
    server.deliver("jones", SECOND)
    assert client.command("STAT").startswith(b"+OK 1 ")
    client.command("DELE 1")
    client.command("QUIT")
    assert len(server.files("jones", "NEWMAIL")) == 1


# -- locking ---------------------------------------------------------------------------------


def test_second_session_gets_in_use(server: Server) -> None:
    """RFC 1939 maildrop lock: a concurrent login gets -ERR [IN-USE] at once."""
    first = logged_in(server, HELLO)
    second = server.connect()
    reply = second.login()
    assert reply.startswith(b"-ERR [IN-USE] ")
    first.command("QUIT")
    assert server.connect().login().startswith(b"+OK")


# -- pipelining and asynchrony ---------------------------------------------------------------


def test_pipelined_commands_after_asynchronous_login(server: Server) -> None:
    """Stock defect: commands pipelined behind PASS wait for the login and then run in order."""
    server.deliver("jones", HELLO)
    pending: list[defer.Deferred] = []

    def later(f, *a, **kw):  # type: ignore[no-untyped-def]
        d: defer.Deferred = defer.Deferred()
        pending.append(d)
        return d.addCallback(lambda _: f(*a, **kw))

    client = server.connect()
    server.run_in_thread = later
    assert client.send(b"USER jones\r\nPASS wonderland\r\nSTAT\r\nNOOP\r\n") == \
        b'+OK Password required for "jones"\r\n'
    while pending:
        pending.pop(0).callback(None)
    out = client.take().split(b"\r\n")
    assert out[0].startswith(b"+OK Username/password combination ok")
    assert out[1].startswith(b"+OK 1 ") and out[2] == b"+OK"


def test_pipelined_commands_after_retr_wait_for_body(server: Server) -> None:
    """PIPELINING: a command sent during a RETR is answered after the message's final dot."""
    client = logged_in(server, HELLO, SECOND)
    reply = client.send(b"RETR 1\r\nSTAT\r\nRETR 2\r\n")
    first, rest = reply.split(b"\r\n.\r\n", 1)
    assert first.startswith(b"+OK") and rest.startswith(b"+OK 2 ")
    assert rest.endswith(b"line two\r\n.\r\n")


# -- streaming, timers and files -------------------------------------------------------------


def test_retr_honours_back_pressure_and_closes_file(server: Server) -> None:
    """A paused transport stops the reads; the file is closed when the message is done."""
    body = b"Subject: big\n\n" + b"y" * 100 + b"\n"
    server.factory.block_size = 10
    client = logged_in(server, body)
    reads: list[int] = []
    original = server.run_in_thread

    def counting(f, *a, **kw):  # type: ignore[no-untyped-def]
        reads.append(1)
        return original(f, *a, **kw)

    server.run_in_thread = counting
    client.transport.write = lambda data, w=client.transport.write: (w(data), pause())  # type: ignore
    streamer_box: list = []

    def pause() -> None:
        s = client.protocol._streamer
        if s is not None and not streamer_box:
            streamer_box.append(s)
            s.pauseProducing()

    client.command("RETR 1")
    assert streamer_box, "the stream started"
    stalled = len(reads)
    assert stalled <= 3
    streamer_box[0].resumeProducing()
    assert client.take().endswith(b"y\r\n.\r\n")
    assert len(reads) > stalled
    assert client.protocol._streamer is None


def test_idle_timeout_logs_out_without_update(tmp_path: Path) -> None:
    """--idle-timeout: an idle client gets -ERR and is closed; its DELEs are not applied."""
    s = Server(tmp_path, idle_timeout=600)
    s.add_user("jones")
    client = logged_in(s, HELLO)
    client.command("DELE 1")
    s.clock.advance(599)
    assert not client.closed
    s.clock.advance(2)
    assert client.take() == b"-ERR autologout; idle for too long\r\n"
    assert client.closed
    client.drop()
    assert len(s.files("jones", "NEWMAIL")) == 1
    assert s.log.matching("disconnected: user=<jones>")[0].count("reason=idle-timeout") == 1


def test_idle_timer_runs_during_stalled_transfer(tmp_path: Path) -> None:
    """A client that stops reading mid-RETR is aborted after --idle-timeout, and nothing changes."""
    s = Server(tmp_path, idle_timeout=30)
    s.add_user("jones")
    s.factory.block_size = 4
    client = logged_in(s, HELLO)
    aborted: list[bool] = []
    client.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    real_write = client.transport.write

    def write_then_stall(data: bytes) -> None:
        real_write(data)
        if client.protocol._streamer is not None:
            client.protocol._streamer.pauseProducing()

    client.transport.write = write_then_stall  # type: ignore[method-assign]
    client.command("RETR 1")
    s.clock.advance(31)
    assert aborted == [True]
    client.drop()
    assert len(s.files("jones", "NEWMAIL")) == 1 and s.files("jones", "MAIL") == []


def test_files_are_closed_after_retr_top_and_drop(server: Server) -> None:
    """Stock defect: message files are closed after RETR, TOP, and a mid-transfer disconnect."""
    client = logged_in(server, HELLO, SECOND)
    client.command("RETR 1")
    client.command("TOP 2 0")
    stalled = client.transport.write

    def stall(data: bytes) -> None:
        stalled(data)
        if client.protocol._streamer is not None:
            client.protocol._streamer.pauseProducing()

    client.transport.write = stall  # type: ignore[method-assign]
    server.factory.block_size = 4  # a message shorter than one block is closed after the first read
    client.command("RETR 2")
    assert open_files(server.store.root / "jones" / "NEWMAIL")  # the stalled transfer holds one
    client.drop()
    assert open_files(server.store.root) == []


@pytest.mark.usefixtures("uncached")
def test_file_reads_go_through_the_thread_runner(server: Server) -> None:
    """Stock defect: message files are opened and read off the reactor thread (unless
    the kernel has them in memory: see the next tests)."""
    client = logged_in(server, HELLO)
    calls = counting_thread_calls(server)
    client.command("RETR 1")
    # Open, read and close of a message shorter than a block: one hand-over, not three.
    assert calls == ["_open_and_read"]
    server.factory.block_size = 8
    calls.clear()
    assert client.command("RETR 1").endswith(b".\r\n")
    assert calls == ["_open_and_read"] + ["_read_block"] * (len(HELLO) // 8)


@pytest.mark.parametrize("block_size", [8, 256 * 1024])
def test_short_reads_do_not_cut_a_message(server: Server, block_size: int,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that returns fewer octets than asked before the end (FUSE may)
    still gets the whole message sent, read ahead or not."""
    server.factory.block_size = block_size
    client = logged_in(server, HELLO, SECOND)
    real_read = os.read
    monkeypatch.setattr("vmspop.transfer.os.read", lambda fd, n: real_read(fd, min(n, 5)))
    assert client.command("RETR 1").split(b"\r\n", 1)[1] == HELLO.replace(b"\n", b"\r\n") + b".\r\n"
    assert client.command("RETR 2").split(b"\r\n", 1)[1] == SECOND + b".\r\n"
    assert open_files(server.store.root / "jones" / "NEWMAIL") == []



def test_a_message_in_memory_is_read_without_the_pool(server: Server,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On a local file system a message the kernel holds is read on the reactor thread,
    which cannot wait for a disk (vmspop.cached); one it does not hold goes to the pool."""
    client = logged_in(server, HELLO, SECOND)
    client.protocol.mbox.messages.local = True
    calls = counting_thread_calls(server)
    asked: list[int] = []
    real = protocol.read_if_cached

    def recording(path: str, limit: int) -> bytes | None:
        asked.append(limit)
        return real(path, limit) if len(asked) == 1 else None  # the second is "not in memory"

    monkeypatch.setattr("vmspop.protocol.read_if_cached", recording)
    if not cached.available():
        pytest.skip("openat2 with RESOLVE_CACHED is not available on this kernel or architecture")
    assert client.command("RETR 1").split(b"\r\n", 1)[1] == HELLO.replace(b"\n", b"\r\n") + b".\r\n"
    assert calls == [] and asked == [server.factory.block_size]
    assert client.command("TOP 2 0").startswith(b"+OK")
    assert calls == ["_open_and_read"]
    client.protocol.mbox.messages.local = False  # NFS: opening would ask the server
    assert client.command("RETR 2").startswith(b"+OK")
    assert len(asked) == 2 and calls == ["_open_and_read"] * 2


def test_scan_marks_local_folders(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a folder whose new/ and cur/ are on local file systems is marked local."""
    server.deliver("jones", HELLO)
    for local in (True, False):
        monkeypatch.setattr("vmspop.store.is_local", lambda device: local)
        assert server.store.scan("jones", "NEWMAIL").local is local


# -- limits ----------------------------------------------------------------------------------


def test_max_sessions_refuses_with_sys_temp(tmp_path: Path) -> None:
    """--max-sessions: the connection beyond the cap gets -ERR [SYS/TEMP] and is closed."""
    s = Server(tmp_path, max_sessions=1)
    first = s.connect()
    second = s.connect()
    assert second.greeting.startswith(b"-ERR [SYS/TEMP] ")
    assert second.closed
    first.drop()
    assert s.connect().greeting.startswith(b"+OK")


def test_trace_never_shows_password(tmp_path: Path) -> None:
    """--trace logs the dialogue with PASS and APOP arguments masked."""
    s = Server(tmp_path, trace=True)
    s.add_user("jones")
    client = s.connect()
    client.login(password="wonderland")
    client.command("APOP jones " + "a" * 32)
    text = "\n".join(s.log.lines())
    assert "C: PASS ********" in text and "C: USER jones" in text
    assert "wonderland" not in text and "a" * 32 not in text


def test_unservable_files_are_skipped_and_logged(server: Server) -> None:
    """A directory or a duplicate in the Maildir is skipped and logged; the rest is served."""
    server.deliver("jones", HELLO)
    new = server.store.folder("jones", "NEWMAIL") / "new"
    (new / "1700000000.M1P1.stray").mkdir()
    client = server.connect()
    assert client.login().endswith(b"1 message (%d octets)\r\n" % len(HELLO.replace(b"\n", b"\r\n")))
    [warning] = server.log.matching("mailbox of user=<jones>: skipped")
    assert "not a regular file" in warning


def test_debug_level_logs_the_snapshot(tmp_path: Path) -> None:
    """--log-level debug adds the login snapshot; session adds each command; info neither."""
    for level, expected in (("info", 0), ("session", 0), ("debug", 1)):
        s = Server(tmp_path / level, log_level=level)
        s.add_user("jones")
        client = s.connect()
        client.login()
        client.command("STAT")
        assert len(s.log.matching("snapshot: user=<jones>")) == expected
        assert bool(s.log.matching("command: ")) == (level != "info")


def test_factory_builds_its_protocol_class(server: Server) -> None:
    """Subclassing VMSPOP3 works by setting the factory's protocol attribute."""
    from vmspop.protocol import VMSPOP3

    class Custom(VMSPOP3):
        pass

    server.factory.protocol = Custom
    assert isinstance(server.connect().protocol, Custom)


def test_read_error_mid_message_cuts_the_connection(server: Server) -> None:
    """An I/O error after part of a message is sent aborts the connection: no -ERR inside a body."""
    import errno
    server.factory.block_size = 8
    client = logged_in(server, HELLO)
    aborted: list[bool] = []
    client.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    reads = 0
    original = server.run_in_thread

    def failing(f, *a, **kw):  # type: ignore[no-untyped-def]
        nonlocal reads
        if getattr(f, "__name__", "") == "_read_block":
            reads += 1
            if reads == 2:
                return defer.fail(OSError(errno.EIO, "Input/output error"))
        return original(f, *a, **kw)

    server.run_in_thread = failing
    reply = client.command("RETR 1")
    assert reply.startswith(b"+OK") and b"-ERR" not in reply and not reply.endswith(b".\r\n")
    assert aborted == [True]
    client.drop()
    assert len(server.files("jones", "NEWMAIL")) == 1
    assert any("sending a reply failed" in line for line in server.log.lines())
    assert "reason=send-error" in server.log.matching("disconnected: user=<jones>")[0]


def test_protocol_does_not_claim_to_be_a_producer(server: Server) -> None:
    """Stock defect: POP3 claims IProducer with a stopProducing that raises; VMSPOP3 does not."""
    from twisted.internet.interfaces import IProducer, IProtocol
    protocol = server.connect().protocol
    assert IProtocol.providedBy(protocol) and not IProducer.providedBy(protocol)


def test_list_honours_back_pressure(server: Server) -> None:
    """Stock defect (twisted#2258): a long LIST stops while the transport is paused."""
    import vmspop.protocol as protocol_module
    server.deliver("jones", *[b"m%d\n" % i for i in range(10)])
    client = server.connect()
    client.login()
    real_write = client.transport.write
    paused: list = []

    def write_then_pause(data: bytes) -> None:
        real_write(data)
        streamer = client.protocol._streamer
        if streamer is not None and not paused:
            paused.append(streamer)
            streamer.pauseProducing()

    client.transport.write = write_then_pause  # type: ignore[method-assign]
    old = protocol_module.LINES_PER_BLOCK
    protocol_module.LINES_PER_BLOCK = 3
    try:
        first = client.command("LIST")
        assert first.count(b"\r\n") == 1 + 3  # status line and one block, then paused
        assert client.command("NOOP") == b""  # pipelined behind the paused LIST
        paused[0].resumeProducing()
        rest = client.take()
        assert rest.endswith(b"10 4\r\n.\r\n+OK\r\n")
    finally:
        protocol_module.LINES_PER_BLOCK = old


def test_symlinked_folder_is_not_followed(server: Server, tmp_path: Path) -> None:
    """A NEWMAIL/new that is a symbolic link (maybe out of the mail root) is not served."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "1700000000.M1P1.x").write_bytes(b"Subject: secret\n\nnot yours\n")
    new = server.store.folder("jones", "NEWMAIL") / "new"
    new.rmdir()
    new.symlink_to(outside)
    client = server.connect()
    assert client.login().endswith(b"0 messages (0 octets)\r\n")
    assert "a symbolic link, not served" in server.log.matching("mailbox of user=<jones>: skipped")[0]


def test_hundreds_of_pipelined_listings(server: Server) -> None:
    """Pipelined commands whose answers are ready at once do not nest (no RecursionError)."""
    client = server.connect()
    client.login()
    reply = b"+OK 0 messages (0 octets)\r\n.\r\n"
    assert client.send(b"LIST\r\n" * 3000 + b"NOOP\r\n") == reply * 3000 + b"+OK\r\n"
