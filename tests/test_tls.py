"""TLS over real sockets: STLS (RFC 2595), implicit TLS (RFC 8314), --require-tls, SMTP STARTTLS."""

from __future__ import annotations

import os
import poplib
import shutil
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import endpoints
from twisted.internet.threads import blockingCallFromThread
from twisted.python.usage import UsageError

from certs import make_certificate
from live import Live, start
from vmspop.tap import Options


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path)


@pytest.fixture
def tls_live(reactor: Any, tmp_path: Path, cert: tuple[Path, Path]) -> Iterator[Live]:
    live = start(reactor, tmp_path, tls_cert=cert[0], tls_key=cert[1])
    yield live
    live.stop()


def context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def test_stls_then_login(tls_live: Live, cert: tuple[Path, Path]) -> None:
    """poplib.stls(): CAPA offers STLS before and not after; the session goes on encrypted."""
    client = tls_live.pop()
    assert "STLS" in client.capa()
    client.stls(context(cert[0]))
    assert "STLS" not in client.capa()
    client.user("jones")
    assert client.pass_("wonderland").startswith(b"+OK")
    client.quit()


def test_second_stls_and_stls_after_login_are_refused(tls_live: Live, cert: tuple[Path, Path]) -> None:
    """STLS twice, or after login, is refused."""
    client = tls_live.pop()
    client.stls(context(cert[0]))
    with pytest.raises(poplib.error_proto, match="already encrypted"):
        client._shortcmd("STLS")
    client.user("jones")
    client.pass_("wonderland")
    with pytest.raises(poplib.error_proto, match="already logged in"):
        client._shortcmd("STLS")
    client.quit()


def test_commands_pipelined_behind_stls_are_discarded(tls_live: Live, cert: tuple[Path, Path]) -> None:
    """STARTTLS injection: clear-text commands sent with STLS are never executed."""
    raw = socket.create_connection(("127.0.0.1", tls_live.port), timeout=10)
    raw.recv(1024)
    raw.sendall(b"STLS\r\nUSER jones\r\nPASS wonderland\r\n")
    assert raw.recv(1024) == b"+OK Begin TLS negotiation\r\n"
    wrapped = context(cert[0]).wrap_socket(raw, server_hostname="localhost")
    wrapped.sendall(b"NOOP\r\n")
    # The first reply over TLS answers NOOP (not logged in: refused), not the injected USER.
    assert wrapped.recv(1024).startswith(b"-ERR not logged in")
    wrapped.close()


def test_implicit_tls_endpoint(reactor: Any, tmp_path: Path, cert: tuple[Path, Path]) -> None:
    """An ssl: endpoint (RFC 8314, port 995 style) serves POP3_SSL; CAPA has no STLS there."""
    live = start(reactor, tmp_path, require_tls=True, tls_cert=cert[0], tls_key=cert[1])
    description = f"ssl:0:interface=127.0.0.1:privateKey={cert[1]}:certKey={cert[0]}"
    endpoint = endpoints.serverFromString(reactor, description)
    port = blockingCallFromThread(reactor, endpoint.listen, live.factory)
    try:
        client = poplib.POP3_SSL("127.0.0.1", port.getHost().port, context=context(cert[0]), timeout=10)
        capabilities = client.capa()
        assert "STLS" not in capabilities and "USER" in capabilities  # already encrypted
        client.user("jones")
        assert client.pass_("wonderland").startswith(b"+OK")
        client.quit()
    finally:
        blockingCallFromThread(reactor, port.stopListening)
        live.stop()


def test_require_tls_refuses_cleartext_logins(reactor: Any, tmp_path: Path, cert: tuple[Path, Path]) -> None:
    """--require-tls: USER and APOP get -ERR [AUTH] before TLS, CAPA hides USER; after STLS all works."""
    live = start(reactor, tmp_path, require_tls=True, tls_cert=cert[0], tls_key=cert[1])
    try:
        client = live.pop()
        assert "USER" not in client.capa()
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] TLS is required"):
            client.user("jones")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] TLS is required"):
            client.apop("jones", "tanstaafl")
        client.stls(context(cert[0]))
        assert "USER" in client.capa()
        client.user("jones")
        assert client.pass_("wonderland").startswith(b"+OK")
        client.quit()
    finally:
        live.stop()


def test_loopback_exemption(reactor: Any, tmp_path: Path, cert: tuple[Path, Path]) -> None:
    """--allow-loopback-plaintext lets 127.0.0.1 log in without TLS under --require-tls."""
    live = start(reactor, tmp_path, require_tls=True, allow_loopback_plaintext=True,
                 tls_cert=cert[0], tls_key=cert[1])
    try:
        client = live.pop()
        client.user("jones")
        assert client.pass_("wonderland").startswith(b"+OK")
        client.quit()
    finally:
        live.stop()


def served_certificate(live: Live, cafile: Path) -> bytes:
    client = live.pop()
    client.stls(context(cafile))
    der = client.sock.getpeercert(binary_form=True)
    client.quit()
    return der


def test_certificate_is_reloaded_when_replaced(tls_live: Live, tmp_path: Path,
                                               cert: tuple[Path, Path]) -> None:
    """A certificate replaced on disk is used by the next STLS, without a restart."""
    first = served_certificate(tls_live, cert[0])
    new_cert, new_key = make_certificate(tmp_path, prefix="new-")
    time.sleep(0.01)
    os.replace(new_key, cert[1])
    os.replace(new_cert, cert[0])
    second = served_certificate(tls_live, cert[0])
    assert first != second


def test_broken_replacement_keeps_the_old_certificate(tls_live: Live, cert: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    """A half-written replacement is refused (and logged); the previous certificate stays in use."""
    from twisted.logger import formatEvent, globalLogPublisher
    keep = tmp_path / "keep.pem"
    shutil.copy(cert[0], keep)
    before = served_certificate(tls_live, cert[0])
    cert[0].write_bytes(b"-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n")
    seen: list[str] = []
    observer = lambda event: seen.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        assert served_certificate(tls_live, keep) == before
    finally:
        globalLogPublisher.removeObserver(observer)
    assert any("new TLS certificate not loaded, keeping the previous one" in line for line in seen)


def test_smtp_starttls(tls_live: Live, cert: tuple[Path, Path]) -> None:
    """The SMTP listener offers STARTTLS with the same certificate and delivers over it."""
    with smtplib.SMTP("127.0.0.1", tls_live.smtp_port, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        client.starttls(context=context(cert[0]))
        client.ehlo()
        assert not client.has_extn("starttls")
        assert client.sendmail("a@example.org", ["jones@localhost"], b"Subject: tls\r\n\r\nhi\r\n") == {}
    assert len(list((tls_live.store.folder("jones", "NEWMAIL") / "new").iterdir())) == 1


@pytest.mark.parametrize("argv, message", [
    (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], "No such file"),
    (["--tls-cert", "/etc/hostname"], "go together"),
    (["--require-tls"], "--require-tls needs"),
])
def test_tls_option_errors(argv: list[str], message: str) -> None:
    """Unusable TLS settings are refused when twistd starts, not at the first STLS."""
    with pytest.raises(UsageError, match=message):
        Options().parseOptions(argv)


def test_mismatched_key_is_refused(tmp_path: Path) -> None:
    """A key that does not belong to the certificate is a start-up error."""
    cert_path, _ = make_certificate(tmp_path)
    _, other_key = make_certificate(tmp_path, prefix="other-")
    with pytest.raises(UsageError, match="does not match"):
        Options().parseOptions(["--tls-cert", str(cert_path), "--tls-key", str(other_key)])


def test_pipelined_retrs_over_tls_wait_for_a_client_that_does_not_read(
        tls_live: Live, cert: tuple[Path, Path]) -> None:
    """Over STLS the unsent backlog is bounded too (the wait goes through the TLS layer's
    producer), and every reply arrives once the client reads."""
    body = b"".join(b"line %06d of a long message\r\n" % i for i in range(4000))
    tls_live.store.deliver(["jones"], [b"Subject: big\r\n\r\n" + body])
    raw = socket.create_connection(("127.0.0.1", tls_live.port), timeout=10)
    raw.recv(1024)
    raw.sendall(b"STLS\r\n")
    assert raw.recv(1024).startswith(b"+OK")
    wrapped = context(cert[0]).wrap_socket(raw, server_hostname="localhost")
    wrapped.sendall(b"USER jones\r\nPASS wonderland\r\n" + b"RETR 1\r\n" * 60)
    time.sleep(0.5)  # the server fills the socket buffers, then waits
    (session,) = tls_live.factory.sessions
    held = blockingCallFromThread(tls_live.reactor, lambda: session._output.backlog())
    assert 0 < held < 60 * len(body) // 4
    received = b""
    while received.count(b"\r\n.\r\n") < 60:
        received += wrapped.recv(1 << 20)
    assert received.count(b"+OK ") == 62 and received.endswith(b"\r\n.\r\n")
    wrapped.sendall(b"QUIT\r\n")
    assert wrapped.recv(1024).startswith(b"+OK")
    wrapped.close()
