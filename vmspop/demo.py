"""Demo data for ``make run``: a user ``demo`` with one welcome message, and how to fetch it.

::

    python -m vmspop.demo [--data DIR]

If ``DIR/passwd`` does not exist, this creates the user ``demo`` (password
``demo``, Argon2id-hashed like ``vmspop adduser`` does, because it is the same
code), the APOP secret ``demo-secret`` and one message in NEWMAIL.  Either way
it prints how to fetch the message from a server on 127.0.0.1:1110, the
default of ``twistd -n vmspop``.  Existing data is never changed.
"""

from __future__ import annotations

import argparse
import email.utils
import sys
from pathlib import Path
from typing import Final

from vmspop import cli
from vmspop.passwd import PasswordFile
from vmspop.store import NEWMAIL, MailStore

__all__ = ["DEMO_PASSWORD", "DEMO_SECRET", "DEMO_USER", "create_demo", "demo_message",
           "instructions", "main"]

DEMO_USER: Final = "demo"
DEMO_PASSWORD: Final = "demo"
DEMO_SECRET: Final = "demo-secret"
#: ``twistd -n vmspop``'s default POP3 endpoint is tcp:1110:interface=127.0.0.1.
HOST: Final = "127.0.0.1"
PORT: Final = 1110
PROG: Final = "vmspop demo"


def demo_message() -> bytes:
    """The welcome message: a short RFC 5322 message with Date and Message-ID."""
    headers = [
        "From: vmspop postmaster <postmaster@localhost>",
        f"To: {DEMO_USER}@localhost",
        "Subject: Welcome to vmspop",
        f"Date: {email.utils.formatdate(localtime=True)}",
        f"Message-ID: {email.utils.make_msgid('vmspop-demo', domain='localhost')}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
    ]
    body = [
        "Hello!",
        "",
        "This message was fetched from vmspop, a POP3 server that brings the",
        "behaviour of the OpenVMS TCP/IP Services POP server to Unix.  It is",
        "written in Python on Twisted.",
        "",
        "New mail waits in the NEWMAIL folder.  Mail you retrieve but do not",
        "delete moves to the MAIL folder when you QUIT, as it did on OpenVMS.",
        "Besides USER/PASS, vmspop offers APOP, with the shared secret kept in",
        "POP_SECRET.DAT in your mail directory.",
        "",
        "Manage users with the vmspop command: vmspop adduser, passwd, modify,",
        "secret, deliver and check.",
        "",
        "-- ",
        "postmaster@localhost",
    ]
    return ("\r\n".join([*headers, "", *body]) + "\r\n").encode("ascii")


def create_demo(data: Path) -> Path:
    """Create the demo user, its APOP secret and the welcome message under ``data``.

    Args:
        data: the data directory; the mail root is ``data/mail`` and the
            password file ``data/passwd``, as the server's defaults expect.

    Returns:
        The delivered message file.

    Raises:
        cli.CommandError: something could not be created.
    """
    passwords = PasswordFile(data / "passwd")
    store = MailStore(data / "mail")
    account = cli.add_user(passwords, store, DEMO_USER, DEMO_PASSWORD)
    cli.set_secret(store, account, DEMO_SECRET.encode("ascii") + b"\n")
    [delivered] = cli.deliver_message(passwords, store, [DEMO_USER], [demo_message()])
    return delivered


def instructions() -> str:
    """How to fetch the demo message with poplib (USER/PASS) and curl (the shared secret)."""
    poplib_line = (
        f"python3 -c 'import poplib; p = poplib.POP3(\"{HOST}\", {PORT}); "
        f"p.user(\"{DEMO_USER}\"); p.pass_(\"{DEMO_PASSWORD}\"); "
        "print(b\"\\n\".join(p.retr(1)[1]).decode()); p.quit()'"
    )
    curl_line = f"curl -u {DEMO_USER}:{DEMO_SECRET} pop3://{HOST}:{PORT}/1"
    return "\n".join([
        f"With the server running on {HOST}:{PORT} (make run starts it next), fetch the message",
        f"with USER/PASS ({DEMO_USER}/{DEMO_PASSWORD}):",
        "",
        f"    {poplib_line}",
        "",
        "or with the shared secret (curl logs in with SASL CRAM-MD5, or APOP with",
        "--login-options 'AUTH=+APOP'):",
        "",
        f"    {curl_line}",
        "",
        "Mail retrieved and not deleted moves from NEWMAIL to the MAIL folder at QUIT, as on",
        "OpenVMS, so the second of these finds an empty maildrop; start the server with",
        "--leave-in-newmail to keep retrieved mail in NEWMAIL.",
    ])


def main(argv: list[str] | None = None) -> int:
    """Create the demo data unless it exists, then print how to use it.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 1 when the demo data could not be created.
    """
    parser = argparse.ArgumentParser(
        prog="python -m vmspop.demo",
        description="Create a demo user with one message (unless DIR/passwd exists) and print "
                    "how to fetch it.")
    parser.add_argument("--data", metavar="DIR", default="vmspop-data",
                        help="the data directory: DIR/mail and DIR/passwd (default: vmspop-data)")
    args = parser.parse_args(argv)
    data = Path(args.data)
    passwd = data / "passwd"
    if passwd.exists() or passwd.is_symlink():
        print(f"{PROG}: the demo data already exists ({passwd} is there); nothing changed "
              f"(delete {data} to start afresh).")
    else:
        try:
            delivered = create_demo(data)
        except cli.CommandError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"{PROG}: cannot create the demo data in {data}: {e.strerror or e}",
                  file=sys.stderr)
            return 1
        print(f"{PROG}: created user {DEMO_USER} (password {DEMO_PASSWORD!r}, APOP secret "
              f"{DEMO_SECRET!r}) in {passwd}")
        print(f"{PROG}: delivered a welcome message to {DEMO_USER}'s {NEWMAIL}: {delivered}")
    print()
    print(instructions())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
