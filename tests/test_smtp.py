"""SMTP delivery into NEWMAIL, over real sockets with smtplib, and the POP3 side of it."""

from __future__ import annotations

import errno
import smtplib
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from live import Live, folder_names, start
from vmspop.passwd import Account, PasswordFile

MESSAGE = (b"From: alice@example.org\r\nTo: jones@localhost\r\nSubject: over SMTP\r\n\r\n"
           b"Hello Jones,\r\n..a line that began with a dot\r\n\xc3\xa9t\xc3\xa9 in UTF-8\r\n")


def smtp(live: Live) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", live.smtp_port, local_hostname="client.example.org", timeout=10)


def stored(live: Live, user: str = "jones") -> list[bytes]:
    new = live.store.folder(user, "NEWMAIL") / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())]


def leftovers(live: Live, user: str = "jones") -> list[str]:
    return [p.name for p in (live.store.folder(user, "NEWMAIL") / "tmp").iterdir()]


def add_user(live: Live, name: str, **flags: Any) -> None:
    PasswordFile(live.store.root.parent / "passwd").update(
        name, lambda _: Account(name, "{PLAIN}x", **flags))
    live.store.create_mailbox(name)


def test_ehlo_advertises_size_8bitmime_pipelining(live: Live) -> None:
    """EHLO lists SIZE with the limit, 8BITMIME, PIPELINING and ENHANCEDSTATUSCODES, and no AUTH."""
    with smtp(live) as client:
        code, _ = client.ehlo()
        assert code == 250
        assert client.esmtp_features["size"] == str(50 * 1024 * 1024)
        for feature in ("8bitmime", "pipelining", "enhancedstatuscodes"):
            assert feature in client.esmtp_features
        assert "auth" not in client.esmtp_features


def test_delivery_then_pop3_retrieval_is_byte_exact(live: Live) -> None:
    """End to end: SMTP in, POP3 out; the body arrives unchanged after the trace headers."""
    with smtp(live) as client:
        assert client.sendmail("alice@example.org", ["JONES@LOCALHOST"], MESSAGE) == {}
    [raw] = stored(live)
    assert raw.startswith(b"Return-Path: <alice@example.org>\nReceived: from client.example.org ([127.0.0.1])")
    assert b"\r" not in raw  # stored with LF line ends, the Maildir convention
    pop = live.pop()
    pop.user("jones")
    pop.pass_("wonderland")
    _, lines, _ = pop.retr(1)
    body = b"\r\n".join(lines) + b"\r\n"
    assert body.endswith(MESSAGE)  # smtplib stuffed the dot line, the server un-stuffed it
    pop.quit()


def test_unknown_user_and_relaying_are_refused(live: Live) -> None:
    """550 5.1.1 for an unknown local user, 550 5.7.1 for any other domain; others still get it."""
    with smtp(live) as client:
        refused = client.sendmail("alice@example.org",
                                  ["nobody@localhost", "jones@elsewhere.example", "jones@localhost"],
                                  MESSAGE)
    assert refused["nobody@localhost"][0] == 550 and refused["nobody@localhost"][1].startswith(b"5.1.1")
    assert refused["jones@elsewhere.example"][0] == 550
    assert refused["jones@elsewhere.example"][1].startswith(b"5.7.1 relaying denied")
    assert len(stored(live)) == 1


def test_nomail_account_is_refused(live: Live) -> None:
    """A DISMAIL (nomail) account does not receive mail: 550 5.2.1."""
    add_user(live, "smith", dismail=True)
    with smtp(live) as client, pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        client.sendmail("alice@example.org", ["smith@localhost"], MESSAGE)
    code, text = caught.value.recipients["smith@localhost"]
    assert code == 550 and b"5.2.1" in text and b"DISMAIL" in text


def test_several_recipients_one_transaction(live: Live) -> None:
    """Each accepted recipient gets its own copy, with the same base name (one delivery)."""
    add_user(live, "smith")
    with smtp(live) as client:
        client.sendmail("alice@example.org", ["jones@localhost", "smith@localhost"], MESSAGE)
    names = {folder_names(live.store, "NEWMAIL", user)[0].split(",")[0] for user in ("jones", "smith")}
    assert len(names) == 1
    assert stored(live, "jones") == stored(live, "smith")


def test_declared_size_over_the_limit(reactor: Any, tmp_path: Path) -> None:
    """MAIL FROM with SIZE= beyond --max-message-size is refused before any data: 552 5.3.4."""
    live = start(reactor, tmp_path, max_message_size=4096)
    try:
        with smtp(live) as client:
            client.ehlo()
            code, text = client.mail("alice@example.org", ["SIZE=5000"])
            assert (code, text[:5]) == (552, b"5.3.4")
    finally:
        live.stop()


def test_actual_size_over_the_limit(reactor: Any, tmp_path: Path) -> None:
    """A message that grows past the limit is read to its end, refused with 552, and not stored."""
    live = start(reactor, tmp_path, max_message_size=4096)
    try:
        with smtp(live) as client:
            client.ehlo()
            assert client.mail("alice@example.org")[0] == 250  # no SIZE= declared
            assert client.rcpt("jones@localhost")[0] == 250
            code, text = client.data(b"Subject: big\r\n\r\n" + b"x" * 8000)
            assert (code, text[:5]) == (552, b"5.3.4")
            assert client.noop()[0] == 250  # the session goes on
        assert stored(live) == [] and leftovers(live) == []
    finally:
        live.stop()


def test_disk_full_answers_452_and_stores_nothing(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while storing gives 452 4.3.1 (retry later), and no partial file anywhere."""
    import vmspop.store as store_module
    add_user(live, "smith")
    real = store_module._write_all
    calls = []

    def full(fd: int, data: bytes) -> None:
        calls.append(1)
        if len(calls) > 1:  # the first recipient's copy is written, the second's fails
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(store_module, "_write_all", full)
    with smtp(live) as client, pytest.raises(smtplib.SMTPDataError) as caught:
        client.sendmail("alice@example.org", ["jones@localhost", "smith@localhost"], MESSAGE)
    assert caught.value.smtp_code == 452 and caught.value.smtp_error.startswith(b"4.3.1")
    for user in ("jones", "smith"):
        assert stored(live, user) == [] and leftovers(live, user) == []


def test_io_error_answers_451_and_stores_nothing(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO from fsync (a failing disk) gives 451 4.3.0 (retry later), and no file anywhere;
    the SMTP session and the next delivery go on."""
    import os
    real = os.fsync
    calls = []

    def failing(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:  # the message's fsync, before the rename into new/
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", failing)
    with smtp(live) as client:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail("alice@example.org", ["jones@localhost"], MESSAGE)
        assert caught.value.smtp_code == 451 and caught.value.smtp_error.startswith(b"4.3.0")
        assert stored(live) == [] and leftovers(live) == []
        assert client.sendmail("alice@example.org", ["jones@localhost"], MESSAGE) == {}
    assert len(stored(live)) == 1 and leftovers(live) == []


def test_drop_mid_data_leaves_nothing(live: Live) -> None:
    """A client that disconnects in the middle of DATA leaves nothing behind."""
    sock = socket.create_connection(("127.0.0.1", live.smtp_port), timeout=10)
    sock.recv(1024)
    sock.sendall(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<jones@localhost>\r\nDATA\r\n"
                 b"Subject: cut\r\n\r\nhalf a messa")
    time.sleep(0.3)
    sock.close()
    time.sleep(0.3)
    assert stored(live) == [] and leftovers(live) == []


def test_noop_and_vrfy(live: Live) -> None:
    """NOOP works; VRFY answers 252 without telling whether a user exists."""
    with smtp(live) as client:
        assert client.noop() == (250, b"2.0.0 OK")
        assert client.verify("jones")[0] == client.verify("nobody")[0] == 252


def test_pipelined_transaction(live: Live) -> None:
    """PIPELINING: a whole transaction in one packet gets its replies in order, 250 after storing."""
    sock = socket.create_connection(("127.0.0.1", live.smtp_port), timeout=10)
    sock.recv(1024)
    sock.sendall(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@localhost>\r\n"
                 b"RCPT TO:<jones@localhost>\r\nDATA\r\nSubject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    replies = b""
    while not replies.endswith(b"\r\n") or b"221" not in replies:
        chunk = sock.recv(65536)
        if not chunk:
            break
        replies += chunk
    sock.close()
    codes = [line[:3] for line in replies.split(b"\r\n") if line[3:4] == b" "]
    assert codes == [b"250", b"250", b"550", b"250", b"354", b"250", b"221"]
    assert len(stored(live)) == 1


def test_recipient_limit(live: Live) -> None:
    """More than 100 recipients in one message get 452 4.5.3 (the sender retries the rest)."""
    with smtp(live) as client:
        client.ehlo()
        client.mail("alice@example.org")
        for _ in range(100):
            assert client.rcpt("jones@localhost")[0] == 250
        code, text = client.rcpt("jones@localhost")
        assert (code, text[:5]) == (452, b"4.5.3")
        assert client.data(b"Subject: many\r\n\r\nx\r\n")[0] == 250
    assert len(stored(live)) == 1  # the same user listed many times gets one copy


def transcript_session(tmp_path: Path) -> tuple[Any, Any, Any]:
    """An SMTP protocol over a StringTransport, with a fake clock and synchronous storing."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from support import Server, run_now
    from vmspop.events import EventLog
    from vmspop.server import make_smtp_factory
    server = Server(tmp_path)
    server.add_user("jones")
    factory = make_smtp_factory(server.config, server.clock,
                                events=EventLog("info", False, server.log.logger), run_in_thread=run_now)
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
    protocol.makeConnection(transport)
    return server, protocol, transport


def test_delivery_and_refusals_are_logged(tmp_path: Path) -> None:
    """One log line per stored message and per refused recipient, with the client address."""
    server, protocol, transport = transcript_session(tmp_path)
    protocol.dataReceived(b"HELO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@pop.example.com>\r\n"
                          b"RCPT TO:<jones@pop.example.com>\r\nDATA\r\nSubject: t\r\n\r\nhi\r\n.\r\n")
    assert transport.value().endswith(b"250 2.0.0 message " + protocol._id.encode()
                                      + b" stored for 1 recipient\r\n")
    [refused] = server.log.matching("smtp refused:")
    assert "rcpt=<nobody@pop.example.com> rip=192.0.2.7 reason=5.1.1" in refused
    [delivered] = server.log.matching("smtp delivered:")
    assert "from=<a@example.org> to=<jones>" in delivered and "rip=192.0.2.7" in delivered


def test_idle_smtp_client_is_dropped_and_nothing_stored(tmp_path: Path) -> None:
    """A client idle for 5 minutes mid-DATA gets 421 4.4.2, and its message is not stored."""
    server, protocol, transport = transcript_session(tmp_path)
    protocol.dataReceived(b"HELO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<jones@pop.example.com>\r\n"
                          b"DATA\r\nSubject: t\r\n")
    server.clock.advance(299)
    assert not transport.disconnecting
    server.clock.advance(2)
    assert transport.value().endswith(b"421 4.4.2 pop.example.com idle too long, closing connection\r\n")
    assert transport.disconnecting
    protocol.connectionLost(None)
    assert server.files("jones", "NEWMAIL") == []


def test_smtp_session_limit(tmp_path: Path) -> None:
    """Connections beyond the SMTP session cap get 421 4.7.0 and are closed."""
    server, first, _ = transcript_session(tmp_path)
    first.factory.max_sessions = 1
    from twisted.internet.testing import StringTransport
    second = first.factory.buildProtocol(None)
    transport = StringTransport()
    second.makeConnection(transport)
    assert transport.value().startswith(b"421 4.7.0 ") and transport.disconnecting


def test_bare_lf_dot_does_not_end_data(tmp_path: Path) -> None:
    """Only CRLF.CRLF ends a message: a bare-LF "." cannot smuggle a second message."""
    server, protocol, transport = transcript_session(tmp_path)
    protocol.dataReceived(b"HELO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<jones@pop.example.com>\r\n"
                          b"DATA\r\nSubject: t\r\n\r\nhi\n.\nMAIL FROM:<evil@example.org>\r\n.\r\n")
    [name] = server.files("jones", "NEWMAIL")
    path = server.store.folder("jones", "NEWMAIL") / name
    assert path.read_bytes().endswith(b"hi\n.\nMAIL FROM:<evil@example.org>\n")
    assert transport.value().count(b"250 2.0.0 message") == 1
