"""The shipped fail2ban filter matches the log lines a real `twistd vmspop` writes."""

from __future__ import annotations

import configparser
import poplib
import re
import signal
import time
from pathlib import Path

from twistd import connect, free_port, start_twistd
from vmspop.passwd import Account, PasswordFile
from vmspop.store import MailStore

ROOT = Path(__file__).resolve().parent.parent
FILTER = ROOT / "docs" / "fail2ban" / "vmspop.conf"
# fail2ban's own expansion of <HOST> (an address, optionally IPv4-mapped IPv6).
HOST = r"(?:::f{4,6}:)?(?P<host>[\w\-.^_:]*\w)"


def failregexes() -> list[re.Pattern[str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(FILTER)
    lines = [line.strip() for line in parser["Definition"]["failregex"].splitlines() if line.strip()]
    return [re.compile(line.replace("<HOST>", HOST)) for line in lines]


def serve_and_fail(tmp_path: Path) -> str:
    """Run twistd vmspop with two workers (their lines reach the supervisor's log), fail two
    logins and log in once; return the log."""
    PasswordFile(tmp_path / "passwd").update("jones", lambda _: Account("jones", "{PLAIN}wonderland"))
    MailStore(tmp_path / "mail").create_mailbox("jones")
    port = free_port()
    log = tmp_path / "twistd.log"
    process = start_twistd(tmp_path, port, logfile=str(log), workers=2)
    try:
        client = connect(port, process)
        for password in ("guess1", "guess2"):
            client.user("nobody")
            try:
                client.pass_(password)
            except poplib.error_proto:
                pass
        client.close()
        ok = poplib.POP3("127.0.0.1", port, timeout=10)
        ok.user("jones")
        ok.pass_("wonderland")
        ok.quit()
        time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    return log.read_text()


def test_filter_matches_real_failures_and_nothing_else(tmp_path: Path) -> None:
    """Both failures and the forced disconnect match with the client address; a good login does not."""
    text = serve_and_fail(tmp_path)
    patterns = failregexes()
    hits = [(line, m.group("host")) for line in text.splitlines()
            for m in [next((p.search(line) for p in patterns if p.search(line)), None)] if m]
    assert [host for _, host in hits] == ["127.0.0.1"] * 3, text
    assert sum("auth failed:" in line for line, _ in hits) == 2
    assert sum("too-many-auth-failures" in line for line, _ in hits) == 1
    assert not any(p.search(line) for p in patterns for line in text.splitlines()
                   if "login: user=<jones>" in line or "logout:" in line)


def test_forged_user_name_cannot_inject_an_address(tmp_path: Path) -> None:
    """A user name crafted to look like another field cannot make the filter ban someone else."""
    line = ("2026-11-26T10:00:00+0000 [vmspop#info] auth failed: user=<x?rip=198.51.100.1> method=USER "
            "rip=192.0.2.7 session=<0123456789ab> reason=unknown-user attempt=1/2")
    [pattern, _] = failregexes()
    assert pattern.search(line).group("host") == "192.0.2.7"
