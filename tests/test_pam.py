"""--auth pam: USER/PASS and PLAIN checked by the host's PAM stack, with PAM's account checks.

The tests install their own PAM service, /etc/pam.d/vmspop-test-<random>, whose
auth and account phases are pam_exec scripts, so no system account is touched.
That needs root and pam_exec.so; without them the tests are skipped, saying so.
"""

from __future__ import annotations

import base64
import ctypes.util
import glob
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Server
from vmspop.pam import PAMError, pam_check

PAM_EXEC = glob.glob("/lib/*/security/pam_exec.so") + glob.glob("/usr/lib/*/security/pam_exec.so")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not PAM_EXEC or ctypes.util.find_library("pam") is None
    or not os.path.isdir("/etc/pam.d"),
    reason="needs root (to install a PAM service in /etc/pam.d), libpam and pam_exec.so")

AUTH_SCRIPT = """#!/bin/sh
read -r password
[ "$PAM_USER" = "jones" ] && [ "$password" = "system-pw" ] && exit 0
[ "$PAM_USER" = "locked" ] && [ "$password" = "system-pw" ] && exit 0
exit 1
"""
ACCOUNT_SCRIPT = """#!/bin/sh
[ "$PAM_USER" = "locked" ] && exit 1
exit 0
"""


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    """A PAM service: password "system-pw" for jones and locked; locked fails the account phase."""
    scripts = tmp_path / "pam"
    scripts.mkdir()
    scripts.chmod(0o755)
    tmp_path.chmod(0o755)
    for name, text in (("auth.sh", AUTH_SCRIPT), ("account.sh", ACCOUNT_SCRIPT)):
        (scripts / name).write_text(text)
        (scripts / name).chmod(0o755)
    name = f"vmspop-test-{secrets.token_hex(4)}"
    path = Path("/etc/pam.d") / name
    path.write_text(f"auth required pam_exec.so expose_authtok quiet {scripts}/auth.sh\n"
                    f"account required pam_exec.so quiet {scripts}/account.sh\n")
    yield name
    path.unlink()


def test_pam_check_direct(service: str) -> None:
    """The binding accepts the right password and names the reason for each refusal."""
    pam_check(service, "jones", b"system-pw")
    with pytest.raises(PAMError) as wrong:
        pam_check(service, "jones", b"nope")
    assert wrong.value.reason == "bad-password"
    with pytest.raises(PAMError) as locked:
        pam_check(service, "locked", b"system-pw")
    assert locked.value.reason == "disabled"


def test_user_pass_through_pam(tmp_path: Path, service: str) -> None:
    """USER/PASS and AUTH PLAIN use PAM's password, not the password file's."""
    s = Server(tmp_path, auth="pam", pam_service=service, security="friendly", max_auth_attempts=5)
    s.add_user("jones", password="file-pw")
    client = s.connect()
    assert client.login(password="file-pw").startswith(b"-ERR [AUTH]")
    assert client.login(password="system-pw").startswith(b"+OK")
    client.command("QUIT")
    plain = base64.b64encode(b"\0jones\0system-pw")
    assert s.connect().command(b"AUTH PLAIN " + plain).startswith(b"+OK")


def test_pam_account_checks_refuse_a_locked_account(tmp_path: Path, service: str) -> None:
    """PAM's account phase (a locked or expired account) refuses even the right password."""
    s = Server(tmp_path, auth="pam", pam_service=service, security="friendly")
    s.add_user("locked")
    assert s.connect().login("locked", "system-pw") == b'-ERR [SYS/PERM] account "locked" is disabled\r\n'


def test_pam_user_needs_a_mailbox(tmp_path: Path, service: str) -> None:
    """A PAM-authenticated user still needs a mail directory under the mail root."""
    s = Server(tmp_path, auth="pam", pam_service=service)
    s.store.create_mailbox("jones")  # no password-file entry: a system account
    assert s.connect().login("jones", "system-pw").startswith(b"+OK")


def test_pam_only_user_receives_mail_over_smtp(tmp_path: Path, service: str) -> None:
    """With --auth pam, a host user with a mail directory (no password-file line) gets mail."""
    from twisted.internet.testing import StringTransport

    from support import run_now
    from vmspop.events import EventLog
    from vmspop.server import make_smtp_factory
    s = Server(tmp_path, auth="pam", pam_service=service)
    s.store.create_mailbox("jones")
    factory = make_smtp_factory(s.config, s.clock, events=EventLog("info", False, s.log.logger),
                                run_in_thread=run_now)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"HELO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<jones@pop.example.com>\r\n"
                          b"RCPT TO:<nobody@pop.example.com>\r\nDATA\r\nSubject: t\r\n\r\nhi\r\n.\r\n")
    replies = transport.value()
    assert b"550 5.1.1 no such user here: nobody" in replies and b"250 2.0.0 message" in replies
    assert len(s.files("jones", "NEWMAIL")) == 1
