"""The benchmark corpus: deterministic (seeded) users, passwords and Maildirs.

Every server in the benchmark serves the very same files:

    ROOT/mail/<user>/NEWMAIL/{new,cur,tmp}/   the messages (vmspop's NEWMAIL;
                                              Dovecot's INBOX via mail_location)
    ROOT/mail/<user>/MAIL/{new,cur,tmp}/      empty (vmspop's layout)
    ROOT/users                                Dovecot passwd-file, {PLAIN} passwords

Message files have LF line ends (the Unix Maildir convention, as vmspop delivers
them) and Dovecot-style names, ``<time>.M<usec>P<pid>Q<n>R<hex>.bench,S=<stored>,W=<wire>``,
so vmspop and Dovecot both take sizes from the name.  Bodies contain lines that
start with "." so byte-stuffing is exercised, and lines longer than a
typical client buffer are avoided (all lines are at most 998 octets).

Users:
    bulk001..bulkNNN  the same mixed-size mailbox (hard links: one page-cache copy)
    login01..login16  10 small messages each (hard links to the first 10 bulk messages)
    big               one message of about big_mib MiB (text part + base64 attachment)
    list              LIST_COUNT small messages (100,000 in a full run)
"""

from __future__ import annotations

import base64
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

SEED = 20251126
BASE_TIME = 1_700_000_000

WORDS = ("the of and to in is for on that with as by at from this be are was it or an not "
         "mail server message client session user folder retrieve delete quit list unique "
         "listing octets maildrop newmail vms alpha bravo charlie delta echo foxtrot golf "
         "hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango "
         "uniform victor whiskey xray yankee zulu report invoice meeting schedule budget "
         "project release deadline review attached please regards thanks tomorrow friday "
         "monday network storage backup restore cluster node queue process thread").split()


@dataclass
class Message:
    """One message as the client expects it."""

    name: str          # file name (in new/)
    stored: int        # octets on disk (LF line ends)
    wire: int          # octets as sent: CRLF line ends, before byte-stuffing (what LIST says)
    stuffed: int       # octets of the byte-stuffed body, without the terminating ".\r\n"


@dataclass
class Mailbox:
    user: str
    password: str
    messages: list[Message] = field(default_factory=list)

    @property
    def octets(self) -> int:
        return sum(m.wire for m in self.messages)


@dataclass
class Corpus:
    root: Path
    bulk: list[Mailbox]
    login: list[Mailbox]
    big: Mailbox
    listbox: Mailbox

    @property
    def mailroot(self) -> Path:
        return self.root / "mail"

    @property
    def users_file(self) -> Path:
        return self.root / "users"

    def path(self, box: Mailbox, message: Message) -> Path:
        return self.mailroot / box.user / "NEWMAIL" / "new" / message.name

    def wire_bytes(self, box: Mailbox, index: int) -> bytes:
        """The expected RETR body (CRLF, byte-stuffed, without the terminating line)."""
        return stuff(self.path(box, box.messages[index]).read_bytes())


def stuff(stored: bytes) -> bytes:
    """LF message -> CRLF, byte-stuffed (RFC 1939 3), as a correct server sends it."""
    crlf = stored.replace(b"\n", b"\r\n")
    body = crlf.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    return body


def _line_pool(rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    text = []
    for _ in range(4000):
        words: list[str] = []
        length = rng.randint(8, 76)
        while sum(len(w) + 1 for w in words) < length:
            words.append(rng.choice(WORDS))
        line = " ".join(words)
        roll = rng.random()
        if roll < 0.01:
            line = "." + line           # a dot line: must be stuffed
        elif roll < 0.012:
            line = "."                  # the lone dot that would end the message unstuffed
        elif roll < 0.06:
            line = ""
        elif roll < 0.08:
            line = "> " + line
        text.append(line.encode("ascii") + b"\n")
    b64 = [base64.b64encode(rng.randbytes(57)) + b"\n" for _ in range(4000)]
    return text, b64


def _message(rng: random.Random, pool: tuple[list[bytes], list[bytes]], n: int, size: int,
             user: str) -> bytes:
    text, b64 = pool
    when = BASE_TIME + n
    head = (f"Return-Path: <sender{n % 97}@example.org>\n"
            f"Received: from mx.example.org (mx.example.org [192.0.2.{n % 250 + 1}])\n"
            f"\tby pop.example.net with ESMTP id B{n:08d}; Tue, 14 Nov 2023 22:13:20 +0000\n"
            f"From: Sender {n % 97} <sender{n % 97}@example.org>\n"
            f"To: {user}@example.net\n"
            f"Subject: benchmark message {n} ({size} octets)\n"
            f"Date: {when}\n"
            f"Message-ID: <{n}.{rng.getrandbits(48):012x}@example.org>\n"
            f"MIME-Version: 1.0\n").encode("ascii")
    parts = [head]
    have = len(head)
    if size > 16 * 1024:
        boundary = b"=_b%d" % n
        parts.append(b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\n\n--"
                     + boundary + b"\nContent-Type: text/plain\n\n")
        have += len(parts[-1])
        text_target = min(size // 4, 8192)
        while have < text_target:
            line = rng.choice(text)
            parts.append(line)
            have += len(line)
        parts.append(b"\n--" + boundary + b"\nContent-Type: application/octet-stream\n"
                     b"Content-Transfer-Encoding: base64\n\n")
        have += len(parts[-1])
        tail = b"\n--" + boundary + b"--\n"
        lines = rng.choices(b64, k=max(0, (size - have - len(tail)) // 77))
        parts.extend(lines)
        parts.append(tail)
    else:
        parts.append(b"Content-Type: text/plain; charset=us-ascii\n\n")
        have += len(parts[-1])
        while have < size:
            line = rng.choice(text)
            parts.append(line)
            have += len(line)
    return b"".join(parts)


def _mixed_size(rng: random.Random) -> int:
    """The bulk mix: about 63 KB on average, most messages small, a few large."""
    roll = rng.random()
    if roll < 0.50:
        return rng.randint(1_000, 8_000)
    if roll < 0.81:
        return rng.randint(8_000, 64_000)
    if roll < 0.96:
        return rng.randint(64_000, 256_000)
    return rng.randint(256_000, 1_000_000)


def _name(n: int, rng: random.Random, data: bytes) -> tuple[str, int, int]:
    stored = len(data)
    wire = stored + data.count(b"\n")
    name = (f"{BASE_TIME + n}.M{n % 1_000_000:06d}P4242Q{n}R{rng.getrandbits(32):08x}.bench"
            f",S={stored},W={wire}")
    return name, stored, wire


def _maildir(root: Path, user: str) -> Path:
    for folder in ("NEWMAIL", "MAIL"):
        for sub in ("cur", "new", "tmp"):
            (root / user / folder / sub).mkdir(parents=True, exist_ok=True)
    return root / user / "NEWMAIL" / "new"


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _stuffed_len(data: bytes) -> int:
    crlf_len = len(data) + data.count(b"\n")
    dots = data.count(b"\n.") - (1 if data.endswith(b"\n.") else 0)
    return crlf_len + dots + (1 if data.startswith(b".") else 0)


def build(root: Path, *, bulk_users: int = 100, bulk_messages: int = 400,
          big_mib: int = 100, list_count: int = 100_000, login_users: int = 16,
          seed: int = SEED) -> Corpus:
    """Write the corpus under ``root`` (which must be empty or missing)."""
    rng = random.Random(seed)
    pool = _line_pool(rng)
    mailroot = root / "mail"
    mailroot.mkdir(parents=True)
    users: list[tuple[str, str]] = []

    # The bulk mailbox, written once and hard-linked into every bulk and login user.
    first = _maildir(mailroot, "bulk001")
    template: list[Message] = []
    for i in range(bulk_messages):
        data = _message(rng, pool, i, _mixed_size(rng), "bulk")
        name, stored, wire = _name(i, rng, data)
        _write(first / name, data)
        template.append(Message(name, stored, wire, _stuffed_len(data)))
    bulk = []
    for u in range(1, bulk_users + 1):
        user = f"bulk{u:03d}"
        box = Mailbox(user, f"pw-{user}", list(template))
        bulk.append(box)
        users.append((user, box.password))
        if u > 1:
            new = _maildir(mailroot, user)
            for m in template:
                os.link(first / m.name, new / m.name)
    login = []
    for u in range(1, login_users + 1):
        user = f"login{u:02d}"
        box = Mailbox(user, f"pw-{user}", template[:10])
        login.append(box)
        users.append((user, box.password))
        new = _maildir(mailroot, user)
        for m in box.messages:
            os.link(first / m.name, new / m.name)

    # One big message, as such messages are: a short text part and one base64
    # attachment, big_mib MiB in all (benchmarks/stuffer.py shows how much the
    # content matters to the byte-stuffer).
    new = _maildir(mailroot, "big")
    data = _message(rng, pool, 900_000, big_mib * 1024 * 1024, "big")
    name, stored, wire = _name(900_000, rng, data)
    _write(new / name, data)
    big = Mailbox("big", "pw-big", [Message(name, stored, wire, _stuffed_len(data))])
    users.append(("big", big.password))
    del data

    # The 100,000-message mailbox: small messages (about 1 KB).
    new = _maildir(mailroot, "list")
    listbox = Mailbox("list", "pw-list")
    for i in range(list_count):
        n = 1_000_000 + i
        data = _message(rng, pool, n, rng.randint(300, 1500), "list")
        name, stored, wire = _name(n, rng, data)
        _write(new / name, data)
        listbox.messages.append(Message(name, stored, wire, _stuffed_len(data)))
    users.append(("list", listbox.password))

    (root / "users").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in users))
    return Corpus(root, bulk, login, big, listbox)
