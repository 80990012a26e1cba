"""Fault injection: SIGKILL a real server in the middle of QUIT updates, and check nothing is lost.

Each round starts ``twistd vmspop`` on a fresh store of many messages, marks half
of them deleted and the other half retrieved, sends QUIT, and kills the server
with SIGKILL after a random delay, so the kill lands before, during or after the
update.  Afterwards every message must be in exactly one of NEWMAIL and MAIL, or
gone only if it was DELE'd; no file may be half-written; and a new server must
serve the user at once (no stale lock).  The same is done to the SMTP listener
in the middle of deliveries, and to ``vmspop deliver``; and hundreds of SMTP
clients vanish mid-DATA without leaving a descriptor open in the server.
``VMSPOP_FAULT_ROUNDS`` sets the number of rounds (default 8, for CI time; run
thousands by hand).
"""

from __future__ import annotations

import os
import poplib
import random
import signal
import smtplib
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twistd import ROOT, connect, free_port, start_twistd
from vmspop.names import parse_name
from vmspop.passwd import Account, PasswordFile
from vmspop.store import MAIL, NEWMAIL, MailStore

ROUNDS = int(os.environ.get("VMSPOP_FAULT_ROUNDS", "8"))
#: Clients cut off mid-DATA in the descriptor-leak test (issue 6 asks for thousands).
LEAK_CLIENTS = int(os.environ.get("VMSPOP_LEAK_CLIENTS", "1000"))
MESSAGES = 400


def start(tmp: Path, port: int) -> subprocess.Popen:
    process = start_twistd(tmp, port)
    connect(port, process).close()
    return process


def files(store: MailStore) -> dict[str, list[str]]:
    """base name -> folders holding a file with that base."""
    found: dict[str, list[str]] = {}
    for folder in (NEWMAIL, MAIL):
        for sub in ("new", "cur", "tmp"):
            directory = store.folder("jones", folder) / sub
            for name in os.listdir(directory):
                parts = parse_name(name)
                assert parts is not None, name
                found.setdefault(parts[0], []).append(f"{folder}/{sub}")
    return found


def login_on_a_new_server(tmp: Path, leftovers: Sequence[Path] = ()) -> int:
    """Age ``leftovers`` past Maildir's 36 hours, log jones in on a new server (which
    removes them), and return the number of messages the login found."""
    old = time.time() - 37 * 3600
    for path in leftovers:
        os.utime(path, (old, old))
    port = free_port()
    server = start(tmp, port)
    try:
        client = poplib.POP3("127.0.0.1", port, timeout=30)
        client.user("jones")
        assert client.pass_("wonderland").startswith(b"+OK")
        count = client.stat()[0]
        client.quit()
    finally:
        server.terminate()
        server.wait(10)
    return count


def one_round(tmp: Path, rng: random.Random) -> str:
    tmp.mkdir()
    PasswordFile(tmp / "passwd").update("jones", lambda _: Account("jones", "{PLAIN}wonderland"))
    store = MailStore(tmp / "mail")
    store.create_mailbox("jones")
    bodies = {}
    for i in range(MESSAGES):
        body = b"Subject: m%d\n\n%s\n" % (i, b"x" * rng.randrange(0, 2000))
        [path] = store.deliver(["jones"], [body])
        bodies[parse_name(path.name)[0]] = body  # type: ignore[index]
    port = free_port()
    server = start(tmp, port)
    try:
        client = poplib.POP3("127.0.0.1", port, timeout=30)
        client.user("jones")
        client.pass_("wonderland")
        uids = {int(n): uid for n, uid in (line.split() for line in client.uidl()[1])}
        deleted = set(rng.sample(sorted(uids), MESSAGES // 2))
        retrieved = set(uids) - deleted
        for number in sorted(deleted):
            client._shortcmd(f"DELE {number}")
        for number in sorted(retrieved):
            client.retr(number)
        client.sock.sendall(b"QUIT\r\n")
        time.sleep(rng.uniform(0.0, 0.025))
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        client.close()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)

    # Map UIDLs back to bases through a scan (the UIDL derives from the base, stable everywhere).
    by_uid = {m.uid.encode(): m.base for folder in (NEWMAIL, MAIL) for m in store.scan("jones", folder)}
    placed = files(store)
    outcome = "before"
    moved = sum(1 for folders in placed.values() if folders[0].startswith(MAIL))
    gone = MESSAGES - len(placed)
    if moved or gone:
        outcome = "during" if (moved < len(retrieved) or gone < len(deleted)) else "after"
    for base, folders in placed.items():
        assert len(folders) == 1, f"{base} is in {folders}: duplicated"
        assert not folders[0].endswith("tmp"), f"{base} left in {folders[0]}"
    for number, uid in uids.items():
        base = by_uid.get(uid)
        if number in deleted:
            assert base is None or placed[base][0].startswith(NEWMAIL), f"deleted {number} moved"
        else:
            assert base is not None, f"message {number} was retrieved, not deleted, and is gone"
    for base, folders in placed.items():
        folder, sub = folders[0].split("/")
        [name] = [n for n in os.listdir(store.folder("jones", folder) / sub) if n.startswith(base)]
        stored = (store.folder("jones", folder) / sub / name).read_bytes()
        assert stored == bodies[base], f"{name} changed"

    # A new server serves the user at once: the lock died with the killed process.
    login_on_a_new_server(tmp)
    return outcome


def test_sigkill_during_quit_updates(tmp_path: Path) -> None:
    """SIGKILL at random points of QUIT updates never loses, duplicates or half-writes a message."""
    rng = random.Random(int(os.environ.get("VMSPOP_FAULT_SEED", "1926")))
    outcomes = [one_round(tmp_path / f"round{i}", rng) for i in range(ROUNDS)]
    # Where the kill landed varies with the machine's speed; measured here, about 4 in 5
    # rounds hit the update itself.  Each round's checks are the assertions that matter.
    print("kill landed:", {k: outcomes.count(k) for k in sorted(set(outcomes))})


def feed(pipe: Any, data: bytes) -> None:
    try:
        for start in range(0, len(data), 65536):
            pipe.write(data[start:start + 65536])
    except (BrokenPipeError, ValueError):
        pass  # the reader was killed
    finally:
        try:
            pipe.close()
        except BrokenPipeError:
            pass


def test_sigkill_during_deliver(tmp_path: Path) -> None:
    """A `vmspop deliver` killed at any point leaves the message whole in new/ or not at all;
    its tmp/ leftover is removed by the next login once it is 36 hours old."""
    rng = random.Random(int(os.environ.get("VMSPOP_FAULT_SEED", "1926")))
    PasswordFile(tmp_path / "passwd").update("jones", lambda _: Account("jones", "{PLAIN}wonderland"))
    store = MailStore(tmp_path / "mail")
    store.create_mailbox("jones")
    message = b"Subject: big\n\n" + b"z" * (8 * 1024 * 1024) + b"\n"
    landed = []
    for _ in range(ROUNDS):
        process = subprocess.Popen(
            [sys.executable, "-m", "vmspop.cli", "--mail-root", str(tmp_path / "mail"),
             "--passwd", str(tmp_path / "passwd"), "deliver", "jones"],
            stdin=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert process.stdin is not None
        # Feed the message from a thread, so the kill can land while it is still being read.
        feeder = threading.Thread(target=feed, args=(process.stdin, message))
        feeder.start()
        time.sleep(rng.uniform(0.05, 0.35))  # start-up, reading, writing, fsync, rename
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        feeder.join(10)
        new = store.folder("jones", NEWMAIL) / "new"
        for name in os.listdir(new):
            assert (new / name).read_bytes() == message  # whole, or not there at all
            os.unlink(new / name)
            landed.append(name)
    print("delivered before the kill:", len(landed), "of", ROUNDS)
    login_on_a_new_server(tmp_path, list((store.folder("jones", NEWMAIL) / "tmp").iterdir()))
    assert list((store.folder("jones", NEWMAIL) / "tmp").iterdir()) == []


def smtp_listening(port: int, process: subprocess.Popen) -> None:
    """Wait until the SMTP listener accepts connections."""
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
            return
        except OSError:
            assert process.poll() is None, "twistd exited"
            assert time.monotonic() < deadline, "SMTP did not start listening"
            time.sleep(0.05)


def smtp_message(rng: random.Random, tag: str) -> bytes:
    """A message of 10 KB to 2.5 MB with CRLF lines, some starting with a dot."""
    lines = [b"From: alice@example.org", b"To: jones@localhost", b"Subject: " + tag.encode(), b""]
    size = rng.randrange(10_000, 2_500_000)
    line = b"%s%s" % (rng.choice([b"", b".", b".."]), b"z" * rng.randrange(0, 200))
    lines.extend([line] * (size // (len(line) + 2)))
    return b"\r\n".join(lines) + b"\r\n"


def test_sigkill_during_smtp_deliveries(tmp_path: Path) -> None:
    """SIGKILL of the server while SMTP clients send: every message acknowledged with 250 is
    in new/, whole; every other one is whole or absent; nothing partial is visible; tmp/
    leftovers stay in tmp/ and the next login removes them once 36 hours old."""
    rng = random.Random(int(os.environ.get("VMSPOP_FAULT_SEED", "1926")))
    PasswordFile(tmp_path / "passwd").update("jones", lambda _: Account("jones", "{PLAIN}wonderland"))
    store = MailStore(tmp_path / "mail")
    store.create_mailbox("jones")
    sent: dict[str, bytes] = {}
    acked: list[str] = []
    for round_ in range(ROUNDS):
        messages = {f"r{round_}m{i}": smtp_message(rng, f"r{round_}m{i}") for i in range(4)}
        sent.update(messages)
        port, smtp_port = free_port(), free_port()
        server = start_twistd(tmp_path, port, smtp=smtp_port)
        try:
            smtp_listening(smtp_port, server)

            def send() -> None:
                try:
                    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
                        for tag, message in messages.items():
                            client.sendmail("alice@example.org", ["jones@localhost"], message)
                            acked.append(tag)  # only after the 250
                except (smtplib.SMTPException, OSError):
                    pass  # the server was killed

            sender = threading.Thread(target=send)
            sender.start()
            time.sleep(rng.uniform(0.0, 0.35))  # before, during or after any of the four DATAs
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            sender.join(30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(10)

    found: dict[str, int] = {}
    for name in os.listdir(store.folder("jones", NEWMAIL) / "new"):
        stored = (store.folder("jones", NEWMAIL) / "new" / name).read_bytes()
        tag = stored.split(b"\nSubject: ", 1)[1].split(b"\n", 1)[0].decode()
        expected = sent[tag].replace(b"\r\n", b"\n")
        trace, _, rest = stored.partition(b"\nFrom: alice@example.org\n")
        assert trace.startswith(b"Return-Path: <alice@example.org>\nReceived: ") and b"\n\n" not in trace
        assert b"From: alice@example.org\n" + rest == expected, f"{name} is not whole"
        found[tag] = found.get(tag, 0) + 1
    assert all(count == 1 for count in found.values()), "a message was stored twice"
    assert set(acked) <= set(found), "a message acknowledged with 250 is missing"
    for folder, sub in ((NEWMAIL, "cur"), (MAIL, "new"), (MAIL, "cur"), (MAIL, "tmp")):
        assert os.listdir(store.folder("jones", folder) / sub) == []
    leftovers = list((store.folder("jones", NEWMAIL) / "tmp").iterdir())
    print(f"{len(acked)} acknowledged, {len(found)} stored of {len(sent)} sent; "
          f"{len(leftovers)} left in tmp/")

    # Leftovers are removed by the next login once Maildir's 36 hours have passed, not before.
    fresh = store.folder("jones", NEWMAIL) / "tmp" / "1.M1P1.fresh"
    fresh.write_bytes(b"a delivery in progress")
    assert login_on_a_new_server(tmp_path, leftovers) == len(found)
    assert list((store.folder("jones", NEWMAIL) / "tmp").iterdir()) == [fresh]


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_no_descriptor_leak_after_smtp_clients_vanish_mid_data(tmp_path: Path) -> None:
    """A thousand SMTP clients that vanish in the middle of DATA (some after more than the
    in-memory spool, some with a reset) leave no descriptor open in the server, and no file."""
    PasswordFile(tmp_path / "passwd").update("jones", lambda _: Account("jones", "{PLAIN}wonderland"))
    store = MailStore(tmp_path / "mail")
    store.create_mailbox("jones")
    port, smtp_port = free_port(), free_port()
    server = start_twistd(tmp_path, port, smtp=smtp_port)
    big = (b"x" * 998 + b"\r\n") * 1200  # past the 1 MiB in-memory spool: a temporary file

    def drop(body: bytes, reset: bool) -> None:
        sock = socket.create_connection(("127.0.0.1", smtp_port), timeout=10)
        sock.recv(1024)
        sock.sendall(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<jones@localhost>\r\nDATA\r\n")
        replies = b""
        while b"354" not in replies:
            replies += sock.recv(4096)
        sock.sendall(body)
        if reset:  # an abortive close (RST), as from a crashed client
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    try:
        smtp_listening(smtp_port, server)
        drop(big, False)  # warm up: the thread pool and the like
        time.sleep(0.5)
        before = descriptors(server.pid)
        for i in range(LEAK_CLIENTS):
            body = big if i % 4 == 0 else b"Subject: cut\r\n\r\nhalf a li"
            drop(body[: len(body) - (i % 7)], reset=i % 3 == 0)
        deadline = time.monotonic() + 20
        while descriptors(server.pid) > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert descriptors(server.pid) <= before
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(10)
    for sub in ("new", "cur", "tmp"):
        assert os.listdir(store.folder("jones", NEWMAIL) / sub) == []
