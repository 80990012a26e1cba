"""Tests for the ``make run`` demo data (vmspop.demo)."""

from __future__ import annotations

import email
import email.policy
import hashlib
import stat
from pathlib import Path

import pytest

from support import Server, multiline_body
from vmspop import cli, demo
from vmspop.hashing import verify_password
from vmspop.passwd import PasswordFile


def newmail(data: Path) -> list[Path]:
    """The files in demo's NEWMAIL/new."""
    return sorted((data / "mail" / "demo" / "NEWMAIL" / "new").iterdir())


def test_demo_creates_user_secret_and_message(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A fresh data directory gets user demo/demo (Argon2id), secret demo-secret and one message."""
    assert demo.main(["--data", str(tmp_path)]) == 0
    account = PasswordFile(tmp_path / "passwd").lookup("demo")
    assert account is not None
    assert account.password_hash.startswith("{ARGON2ID}")
    assert verify_password(account.password_hash, "demo")
    secret = tmp_path / "mail" / "demo" / "POP_SECRET.DAT"
    assert secret.read_bytes() == b"demo-secret\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    [message_file] = newmail(tmp_path)
    message = email.message_from_bytes(message_file.read_bytes(), policy=email.policy.default)
    assert message["From"].addresses[0].addr_spec == "postmaster@localhost"
    assert message["Date"] is not None and message["Message-ID"].startswith("<")
    assert "vmspop" in message.get_content()
    out = capsys.readouterr().out
    assert "created user demo" in out


def test_demo_prints_how_to_fetch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The instructions give a poplib USER/PASS one-liner and the curl APOP command."""
    assert demo.main(["--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'poplib.POP3("127.0.0.1", 1110)' in out
    assert 'p.user("demo"); p.pass_("demo")' in out
    assert "curl -u demo:demo-secret pop3://127.0.0.1:1110/1" in out


def test_poplib_one_liner_is_valid_python(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The printed poplib command is a shell-quoted, compilable Python program."""
    demo.main(["--data", str(tmp_path)])
    [line] = [s.strip() for s in capsys.readouterr().out.splitlines() if "python3 -c" in s]
    assert line.startswith("python3 -c '") and line.endswith("'")
    compile(line[len("python3 -c '"):-1], "<one-liner>", "exec")


def test_demo_leaves_existing_data_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second run changes nothing, says the data exists, and still prints the instructions."""
    assert demo.main(["--data", str(tmp_path)]) == 0
    passwd = (tmp_path / "passwd").read_bytes()
    capsys.readouterr()
    assert demo.main(["--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "already exists" in out and "curl -u demo:demo-secret" in out
    assert (tmp_path / "passwd").read_bytes() == passwd
    assert len(newmail(tmp_path)) == 1


def test_demo_respects_a_foreign_passwd_file(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """If a password file exists (without demo), no demo user is added."""
    (tmp_path / "passwd").write_text("jones:{PLAIN}pw\n")
    assert demo.main(["--data", str(tmp_path)]) == 0
    assert PasswordFile(tmp_path / "passwd").lookup("demo") is None
    assert not (tmp_path / "mail").exists()
    assert "already exists" in capsys.readouterr().out


def test_demo_failure_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """If the data cannot be created, one error line and status 1."""
    (tmp_path / "mail").write_text("not a directory")
    assert demo.main(["--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vmspop demo: ") and len(err.splitlines()) == 1


def test_demo_store_checks_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo data passes vmspop check."""
    demo.main(["--data", str(tmp_path)])
    assert cli.main(["--mail-root", str(tmp_path / "mail"), "--passwd", str(tmp_path / "passwd"),
                     "check"]) == 0


def test_demo_account_logs_in_with_user_pass_and_apop(tmp_path: Path) -> None:
    """The server accepts USER/PASS demo/demo and APOP with demo-secret, and serves the message."""
    demo.main(["--data", str(tmp_path)])
    server = Server(tmp_path)  # tmp_path/mail and tmp_path/passwd, as demo made them
    client = server.connect()
    assert client.login("demo", "demo").startswith(b"+OK")
    body = multiline_body(client.command("RETR 1"))
    assert b"Subject: Welcome to vmspop" in body
    client.drop()  # no QUIT: the message stays in NEWMAIL
    client = server.connect()
    challenge = client.greeting.rsplit(b" ", 1)[1].strip()
    digest = hashlib.md5(challenge + b"demo-secret").hexdigest()
    assert client.command(f"APOP demo {digest}").startswith(b"+OK")
