"""SASL AUTH (RFC 5034) over the wire: PLAIN, CRAM-MD5 and SCRAM-SHA-256 through the one login path."""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import subprocess
from pathlib import Path

import pytest

from live import Live
from support import Client, Server, multiline_body


@pytest.fixture
def server(tmp_path: Path) -> Server:
    s = Server(tmp_path)
    s.add_user("jones", secret=b"tanstaafl")
    return s


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def challenge_of(reply: bytes) -> bytes:
    assert reply.startswith(b"+ ") and reply.endswith(b"\r\n"), reply
    return base64.b64decode(reply[2:-2])


def scram_login(client: Client, user: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """Run a SCRAM-SHA-256 exchange as a client; return (reply to the proof, expected signature)."""
    client_nonce = b"fyko+d2lbbFgONRv9qkxdawL"
    first_bare = b"n=" + user + b",r=" + client_nonce
    server_first = challenge_of(client.command(b"AUTH SCRAM-SHA-256 " + b64(b"n,," + first_bare)))
    attrs = dict(item.split(b"=", 1) for item in server_first.split(b","))
    assert attrs[b"r"].startswith(client_nonce)
    salted = hashlib.pbkdf2_hmac("sha256", secret, base64.b64decode(attrs[b"s"]), int(attrs[b"i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    final_bare = b"c=biws,r=" + attrs[b"r"]
    auth_message = first_bare + b"," + server_first + b"," + final_bare
    signature = hmac.new(stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    reply = client.command(b64(final_bare + b",p=" + b64(proof)))
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    expected = b"v=" + b64(hmac.new(server_key, auth_message, "sha256").digest())
    return reply, expected


def test_capa_lists_usable_mechanisms(tmp_path: Path) -> None:
    """CAPA's SASL line lists what can be used now: no PLAIN where USER/PASS is refused."""
    s = Server(tmp_path)
    assert b"SASL SCRAM-SHA-256 CRAM-MD5 PLAIN" in multiline_body(s.connect().command("CAPA"))
    s = Server(tmp_path / "b", disable_userpass=True)
    assert b"SASL SCRAM-SHA-256 CRAM-MD5" in multiline_body(s.connect().command("CAPA"))


def test_auth_without_mechanism_lists_them(server: Server) -> None:
    """The old listing form of AUTH answers with the mechanisms."""
    assert multiline_body(server.connect().command("AUTH")) == [b"SCRAM-SHA-256", b"CRAM-MD5", b"PLAIN"]


def test_plain_with_initial_response(server: Server) -> None:
    """AUTH PLAIN with an initial response (RFC 5034) logs in against the password file."""
    reply = server.connect().command(b"AUTH PLAIN " + b64(b"\0jones\0wonderland"))
    assert reply.startswith(b"+OK authentication successful")
    assert server.log.matching("login: user=<jones> method=PLAIN")


def test_plain_with_a_challenge(server: Server) -> None:
    """AUTH PLAIN without an initial response gets an empty challenge first."""
    client = server.connect()
    assert client.command("AUTH PLAIN") == b"+ \r\n"
    assert client.command(b64(b"jones\0jones\0wonderland")).startswith(b"+OK")


def test_cram_md5_uses_the_shared_secret(server: Server) -> None:
    """CRAM-MD5 (RFC 2195) is checked against POP_SECRET.DAT, not the password."""
    client = server.connect()
    challenge = challenge_of(client.command("AUTH CRAM-MD5"))
    assert challenge.startswith(b"<") and challenge.endswith(b"@pop.example.com>")
    digest = hmac.new(b"tanstaafl", challenge, "md5").hexdigest().encode()
    assert client.command(b64(b"jones " + digest)).startswith(b"+OK")


def test_scram_sha_256_with_server_proof(server: Server) -> None:
    """SCRAM-SHA-256: the server's final message comes as a '+' challenge, then +OK."""
    client = server.connect()
    reply, expected = scram_login(client, b"jones", b"tanstaafl")
    assert challenge_of(reply) == expected
    assert client.command("").startswith(b"+OK authentication successful")
    assert client.command("STAT") == b"+OK 0 0\r\n"
    assert server.log.matching("login: user=<jones> method=SCRAM-SHA-256")


def test_scram_wrong_secret_and_unknown_user(server: Server) -> None:
    """A wrong secret and an unknown user fail alike, after a full exchange, with [AUTH]."""
    wrong = scram_login(server.connect(), b"jones", b"guess")[0]
    unknown = scram_login(server.connect(), b"nobody", b"guess")[0]
    assert wrong.startswith(b"-ERR [AUTH]") and unknown.startswith(b"-ERR [AUTH]")
    assert wrong.replace(b"jones", b"X") == unknown.replace(b"nobody", b"X")


def test_sasl_failures_count_toward_the_limit(server: Server) -> None:
    """SASL failures use the one login path: two of them close the connection."""
    client = server.connect()
    assert client.command(b"AUTH PLAIN " + b64(b"\0jones\0bad")).startswith(b"-ERR [AUTH]")
    assert client.command(b"AUTH PLAIN " + b64(b"\0jones\0worse")).startswith(b"-ERR [AUTH]")
    assert client.closed


def test_cancel_and_malformed_responses(server: Server) -> None:
    """'*' cancels; bad base64 and an unknown mechanism are errors; none counts as a failed login."""
    client = server.connect()
    client.command("AUTH CRAM-MD5")
    assert client.command("*") == b"-ERR authentication cancelled\r\n"
    client.command("AUTH CRAM-MD5")
    assert client.command("!!!").startswith(b"-ERR authentication failed")
    assert client.command("AUTH GSSAPI").startswith(b'-ERR unrecognized authentication type "GSSAPI"')
    assert not client.closed and not server.log.matching("auth failed")
    assert client.login().startswith(b"+OK")


def test_cancel_after_server_proof_logs_nothing_in(server: Server) -> None:
    """A client that answers the server's SCRAM proof with '*' is not logged in, and the lock is free."""
    client = server.connect()
    scram_login(client, b"jones", b"tanstaafl")
    assert client.command("*") == b"-ERR [AUTH] authentication cancelled after the server's proof\r\n"
    assert client.command("STAT").startswith(b"-ERR not logged in")
    assert server.connect().login().startswith(b"+OK")


def test_drop_after_server_proof_frees_the_lock(server: Server) -> None:
    """A client that vanishes before answering the server's SCRAM proof leaves no lock behind."""
    client = server.connect()
    scram_login(client, b"jones", b"tanstaafl")
    client.drop()
    assert server.connect().login().startswith(b"+OK")


def test_plain_refused_when_userpass_is(tmp_path: Path) -> None:
    """--disable-userpass also refuses PLAIN (the same password); SCRAM still works."""
    s = Server(tmp_path, disable_userpass=True)
    s.add_user("jones", secret=b"tanstaafl")
    client = s.connect()
    assert client.command(b"AUTH PLAIN " + b64(b"\0jones\0wonderland")).startswith(b"-ERR USER/PASS is disabled")
    reply, _ = scram_login(client, b"jones", b"tanstaafl")
    assert reply.startswith(b"+ ") and client.command("").startswith(b"+OK")


def test_trace_masks_sasl_data(tmp_path: Path) -> None:
    """--trace shows neither the initial response nor later SASL responses."""
    s = Server(tmp_path, trace=True)
    s.add_user("jones", secret=b"tanstaafl")
    client = s.connect()
    initial = b64(b"\0jones\0wonderland")
    client.command(b"AUTH PLAIN " + initial)
    client2 = s.connect()
    client2.command("AUTH PLAIN")
    client2.command(initial)
    text = "\n".join(s.log.lines())
    assert initial.decode() not in text and "C: AUTH PLAIN ********" in text and "C: ********" in text


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("mechanism, password", [("PLAIN", "wonderland"), ("CRAM-MD5", "tanstaafl")])
def test_curl_sasl(live: Live, mechanism: str, password: str) -> None:
    """curl logs in with SASL PLAIN (password) and CRAM-MD5 (shared secret) over a real socket."""
    live.store.deliver(["jones"], [b"Subject: sasl\n\nhello\n"])
    result = subprocess.run(["curl", "-s", "-u", f"jones:{password}", "--login-options",
                             f"AUTH={mechanism}", f"pop3://127.0.0.1:{live.port}/1"],
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Subject: sasl\r\n\r\nhello\r\n"


def test_long_sasl_response_is_not_a_long_command(server: Server) -> None:
    """RFC 5034: a SASL response may exceed the 255-octet command limit."""
    server.add_user("smith", password="p" * 300)
    client = server.connect()
    assert client.command("AUTH PLAIN") == b"+ \r\n"
    response = b64(b"\0smith\0" + b"p" * 300)
    assert len(response) > 255
    assert client.command(response).startswith(b"+OK")
    assert client.command(b"NOOP " + b"x" * 300).startswith(b"-ERR line too long")  # commands again
