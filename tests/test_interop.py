"""Interoperability with real third-party clients and with Dovecot (``make interop``).

These need Debian packages (``apt-get install dovecot-core dovecot-pop3d fetchmail
getmail6 neomutt``), so they carry the ``interop`` marker and ``make test`` leaves
them out; a missing tool is a failure here, not a skip.  Command lines follow
``../shared/tools/CLIENTS.md``.
"""

from __future__ import annotations

import os
import poplib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from live import Live, folder_names

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT.parent / "shared" / "tools" / "dovecot-peer.sh"
MESSAGES = [
    b"From: alice@example.org\nTo: jones@example.com\nSubject: first\n\nHello.\n.dotted\n.\nbye\n",
    b"From: bob@example.org\r\nSubject: second\r\n\r\nCRLF body\r\nno final newline",
]


def need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is not installed; see docs/testing.md for `make interop`"
    return path


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=60, **kwargs)


@pytest.fixture
def request_cleanup() -> Iterator[list[Path]]:
    """Directories to remove after the test."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def fetchmail(live: Live, home: Path, protocol_line: str, extra: str = "") -> subprocess.CompletedProcess:
    home.mkdir(mode=0o700, exist_ok=True)
    rc = "\n".join([
        "set no syslog",
        f"poll 127.0.0.1 service {live.port} {protocol_line}",
        '  user "jones" there with password "%s" is "root" here' % (
            "tanstaafl" if "APOP" in protocol_line else "wonderland"),
        f'  options keep {extra} no rewrite sslproto ""',
        f'  mda "cat >> {home}/out.mbox"',
    ]) + "\n"
    return run([need("fetchmail"), "-v", "--nodetach", "-f", "-"], input=rc.encode(),
               env=dict(os.environ, FETCHMAILHOME=str(home)))


def test_fetchmail_user_pass_and_uidl_stability(live: Live, tmp_path: Path) -> None:
    """fetchmail (USER/PASS, uidl, keep) fetches both messages, then finds nothing new on a second poll."""
    live.store.deliver(["jones"], [MESSAGES[0]])
    live.store.deliver(["jones"], [MESSAGES[1]])
    first = fetchmail(live, tmp_path / "fm", "protocol POP3 auth password uidl")
    assert first.returncode == 0, first.stderr.decode()
    mbox = (tmp_path / "fm" / "out.mbox").read_bytes()
    assert b"Subject: first" in mbox and b"no final newline" in mbox
    second = fetchmail(live, tmp_path / "fm", "protocol POP3 auth password uidl")
    assert second.returncode == 1, second.stderr.decode()  # 1 = no new mail: UIDLs were stable


def test_fetchmail_apop(live: Live, tmp_path: Path) -> None:
    """fetchmail with protocol APOP logs in with the POP_SECRET.DAT secret."""
    live.store.deliver(["jones"], [MESSAGES[0]])
    result = fetchmail(live, tmp_path / "fm", "protocol APOP", "fetchall")
    assert result.returncode == 0, result.stderr.decode()
    assert b"Subject: first" in (tmp_path / "fm" / "out.mbox").read_bytes()


@pytest.mark.parametrize("apop", [False, True])
def test_getmail(live: Live, tmp_path: Path, apop: bool, request_cleanup: list[Path]) -> None:
    """getmail6 retrieves with USER/PASS and with APOP into a Maildir; delete=true removes the mail."""
    live.store.deliver(["jones"], [MESSAGES[0]])
    # getmail refuses to deliver as root; its "nobody" delivery process must reach the Maildir,
    # which pytest's private (0700) tmp_path would not allow.
    parent = Path(tempfile.mkdtemp())
    request_cleanup.append(parent)
    parent.chmod(0o755)
    out = parent / "out"
    for sub in ("", "cur", "new", "tmp"):
        (out / sub).mkdir(exist_ok=True)
        shutil.chown(out / sub, "nobody")
    rc = tmp_path / "rc"
    rc.write_text("\n".join([
        "[retriever]", "type = SimplePOP3Retriever", "server = 127.0.0.1", f"port = {live.port}",
        "username = jones", f"password = {'tanstaafl' if apop else 'wonderland'}", "timeout = 20",
        f"use_apop = {'true' if apop else 'false'}",
        "[destination]", "type = Maildir", f"path = {out}/", "user = nobody",
        "[options]", "verbose = 2", "read_all = true", "delete = true", ""]))
    result = run([need("getmail"), "--getmaildir", str(tmp_path), "--rcfile", str(rc)])
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    [delivered] = list((out / "new").iterdir())
    assert b"Subject: first" in delivered.read_bytes()
    assert folder_names(live.store, "NEWMAIL") == [] and folder_names(live.store, "MAIL") == []


@pytest.mark.parametrize("method", ["apop", "user"])
def test_neomutt_lists_the_mailbox(live: Live, tmp_path: Path, method: str) -> None:
    """NeoMutt opens the POP mailbox (UIDL + TOP n 0) and shows the subjects."""
    need("script")
    live.store.deliver(["jones"], [MESSAGES[0]])
    (tmp_path / "Mail").mkdir()
    muttrc = tmp_path / "muttrc"
    muttrc.write_text("\n".join([
        f'set folder = "{tmp_path}/Mail"', f'set spoolfile = "pop://jones@127.0.0.1:{live.port}/"',
        'set pop_user = "jones"',
        f'set pop_pass = "{"tanstaafl" if method == "apop" else "wonderland"}"',
        f'set pop_authenticators = "{method}"', "set pop_auth_try_all = no", "set ssl_starttls = no",
        "set ssl_force_tls = no", 'set header_cache = ""', ""]))
    typescript = tmp_path / "typescript"
    run(["timeout", "20", "script", "-qfc",
         f"{need('neomutt')} -n -F {muttrc} -e 'push q'", str(typescript)], env=dict(os.environ, TERM="xterm"))
    assert b"first" in typescript.read_bytes()
    # TOP does not count as reading: nothing moved to MAIL.
    assert len(folder_names(live.store, "NEWMAIL")) == 1


@pytest.fixture
def dovecot(request_cleanup: list[Path]) -> Iterator[int]:
    """A Dovecot POP3 peer holding the same messages for user jones."""
    need("dovecot")
    assert PEER.exists(), f"{PEER} is missing"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Dovecot's mail processes run unprivileged and must traverse the path.
    tmp_path = Path(tempfile.mkdtemp())
    request_cleanup.append(tmp_path)
    tmp_path.chmod(0o755)
    maildir = tmp_path / "peer" / "mail" / "jones"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for i, message in enumerate(MESSAGES):
        (maildir / "new" / f"{1700000000 + i}.M{i}P1.peer").write_bytes(message)
    users = tmp_path / "peer" / "users"
    users.write_text("jones:wonderland\n")
    work = tmp_path / "peer" / "inst"
    log = tmp_path / "peer.log"
    with open(log, "wb") as out:  # the daemon keeps its output open: no pipes
        started = subprocess.run(["bash", str(PEER), str(port), str(tmp_path / "peer" / "mail"),
                                  str(users), str(work)], stdout=out, stderr=out, timeout=60)
    assert started.returncode == 0, log.read_text()
    yield port
    with open(log, "ab") as out:
        subprocess.run(["bash", str(PEER), "stop", str(work)], stdout=out, stderr=out, timeout=60)


def transcript(port: int) -> dict[str, Any]:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        client.user("jones")
        client.pass_("wonderland")
        return {
            "stat": client.stat(),
            "list": client.list()[1],
            "retr": [client.retr(n)[1:] for n in (1, 2)],
            "top": [client.top(n, 1)[1] for n in (1, 2)],
            "dele_twice": _errors(client, "DELE 1", "DELE 1"),
            "bad_number": _errors(client, "RETR 9"),
        }
    finally:
        client.quit()


def _errors(client: poplib.POP3, *commands: str) -> list[bool]:
    results = []
    for command in commands:
        try:
            client._shortcmd(command)
            results.append(True)
        except poplib.error_proto:
            results.append(False)
    return results


def test_same_answers_as_dovecot(live: Live, dovecot: int) -> None:
    """STAT, LIST, RETR and TOP (octets included) and error cases match Dovecot on the same mail."""
    live.store.deliver(["jones"], [MESSAGES[0]])
    live.store.deliver(["jones"], [MESSAGES[1]])
    assert transcript(live.port) == transcript(dovecot)
