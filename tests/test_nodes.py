"""Several vmspop nodes on one store (docs/operations.md, "Several nodes on one store").

Two independent `twistd vmspop` processes (different ports, the same --mail-root and
--passwd), as behind a load balancer on a shared file system: the mailbox lock and
the QUIT update rules must hold between them exactly as within one server.
"""

from __future__ import annotations

import os
import poplib
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from twistd import ROOT, connect, free_port, start_twistd
from vmspop.passwd import Account, PasswordFile
from vmspop.store import MAIL, NEWMAIL, MailStore


def subjects(client: poplib.POP3) -> list[bytes]:
    count = client.stat()[0]
    return [next(line for line in client.top(i, 0)[1] if line.startswith(b"Subject:"))
            for i in range(1, count + 1)]


def test_two_nodes_on_one_store(tmp_path: Path) -> None:
    """Node A's session locks the mailbox against node B; mail delivered meanwhile (over B's
    SMTP and with `vmspop deliver`) waits for the next session; after A's QUIT, B sees
    exactly what A left in NEWMAIL (although B listed the folder before), with the same
    UIDLs, and MAIL holds what A retrieved."""
    PasswordFile(tmp_path / "passwd").update("jones", lambda _: Account("jones", "{PLAIN}wonderland"))
    store = MailStore(tmp_path / "mail")
    store.create_mailbox("jones")
    for n in range(1, 5):
        store.deliver(["jones"], [f"Subject: m{n}\n\nbody {n}\n".encode()], arrival=1_700_000_000 + n)
    for sub in ("new", "cur"):  # settled long ago: a node may keep its listing of them
        os.utime(tmp_path / "mail" / "jones" / NEWMAIL / sub, (1_700_000_000, 1_700_000_000))
    port_a, port_b, smtp_b = free_port(), free_port(), free_port()
    node_a = start_twistd(tmp_path, port_a, "--hostname", "a.example.com")
    node_b = start_twistd(tmp_path, port_b, "--hostname", "b.example.com", "--local-domain",
                          "example.com", smtp=smtp_b)
    try:
        b = connect(port_b, node_b)  # node B lists the folder first...
        b.user("jones")
        b.pass_("wonderland")
        assert b.stat()[0] == 4
        b.quit()

        a = connect(port_a, node_a)  # ...then node A changes it
        a.user("jones")
        a.pass_("wonderland")
        uids_a = dict(line.split() for line in a.uidl()[1])

        b = connect(port_b, node_b)
        b.user("jones")
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            b.pass_("wonderland")
        b.quit()

        with smtplib.SMTP("127.0.0.1", smtp_b, timeout=10) as smtp:
            smtp.sendmail("someone@example.org", ["jones@example.com"], b"Subject: m5\r\n\r\nbody 5\r\n")
        subprocess.run([sys.executable, "-m", "vmspop.cli", "--mail-root", str(tmp_path / "mail"),
                        "--passwd", str(tmp_path / "passwd"), "deliver", "jones"],
                       input=b"Subject: m6\n\nbody 6\n", check=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))

        assert a.stat()[0] == 4  # the session's snapshot: no m5, no m6
        assert subjects(a) == [b"Subject: m1", b"Subject: m2", b"Subject: m3", b"Subject: m4"]
        a.retr(1)
        a.retr(2)
        a.dele(2)
        a.dele(3)
        a.quit()  # m1 retrieved: to MAIL; m2 and m3 deleted; m4 untouched

        b = connect(port_b, node_b)
        b.user("jones")
        b.pass_("wonderland")
        assert subjects(b) == [b"Subject: m4", b"Subject: m5", b"Subject: m6"]
        uids_b = dict(line.split() for line in b.uidl()[1])
        assert uids_b[b"1"] == uids_a[b"4"]  # the same message, the same UIDL on either node
        b.quit()
    finally:
        for node in (node_a, node_b):
            node.send_signal(signal.SIGTERM)
        for node in (node_a, node_b):
            node.wait(30)
    mail = store.scan("jones", MAIL)
    assert [m.uid for m in mail] == [uids_a[b"1"].decode()]
    assert Path(mail[0].path).read_bytes() == b"Subject: m1\n\nbody 1\n"
    assert len(store.scan("jones", NEWMAIL)) == 3
