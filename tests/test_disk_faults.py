"""Disk full and I/O errors during the QUIT update and during delivery.

The update's file-system calls (``unlink``, ``rename``, ``mkdir``, ``fsync``) are
made to fail at the Nth call, for every N the update makes, once (a transient
error) or from then on (a disk that stays full).  Whatever fails, every message
must stay in exactly one place (or be gone only if DELE'd), byte-identical, the
client must get one ``-ERR [SYS/TEMP]`` for QUIT, the operator one log line with
the cause, and the next session must see a consistent mailbox and complete the
changes at its own QUIT.

The last tests use a real, tiny tmpfs (root only) and a real ``twistd vmspop``:
SMTP answers 452 and ``vmspop deliver`` exits 75 while it is full, and a QUIT
update that must create ``MAIL/cur`` fails, then succeeds once a deletion frees
an inode.
"""

from __future__ import annotations

import errno
import os
import poplib
import smtplib
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogLevel

from support import Client, Server
from twistd import ROOT, connect, free_port, start_twistd
from vmspop.store import MAIL, NEWMAIL, parse_name

ERRORS = {"ENOSPC": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
          "EIO": OSError(errno.EIO, os.strerror(errno.EIO))}
#: The os functions the update calls in each mode (mkdir: MAIL/cur must be created).
FUNCTIONS = {"default": ("unlink", "rename", "mkdir", "fsync"),
             "leave-in-newmail": ("unlink", "fsync"),
             "use-mail-folder": ("unlink", "fsync")}
MESSAGES = [b"Subject: m%d\n\n%s\n.dotted line\n" % (i, b"x" * (100 * i)) for i in range(1, 7)]
RETRIEVED = {1, 2, 3, 4}
DELETED = {3, 4, 5}


class Failing:
    """Wraps an os function: the Nth call (and, if ``persistent``, every later one) raises."""

    def __init__(self, real: Callable[..., Any], nth: int, error: OSError, persistent: bool) -> None:
        self.real, self.nth, self.error, self.persistent = real, nth, error, persistent
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.nth or (self.persistent and self.calls > self.nth > 0):
            raise OSError(self.error.errno, self.error.strerror)
        return self.real(*args, **kwargs)


def where(server: Server) -> dict[str, tuple[str, bytes]]:
    """base -> (folder/sub, contents) of every message file; fails on a duplicate or a tmp/ file."""
    found: dict[str, tuple[str, bytes]] = {}
    for folder in (NEWMAIL, MAIL):
        for sub in ("new", "cur", "tmp"):
            directory = server.store.folder("jones", folder) / sub
            if not directory.is_dir():
                continue
            for name in os.listdir(directory):
                assert sub != "tmp", f"{folder}/tmp/{name} left behind"
                parts = parse_name(name)
                assert parts is not None
                assert parts[0] not in found, f"{name} duplicated: also in {found[parts[0]][0]}"
                found[parts[0]] = (f"{folder}/{sub}", (directory / name).read_bytes())
    return found


def session(server: Server, retrieve: set[int], delete: set[int]) -> tuple[Client, dict[bytes, int]]:
    """Log in, RETR and DELE by number; returns the client, ready for QUIT, and UIDL -> number."""
    client = server.connect()
    assert client.login().startswith(b"+OK")
    listing = client.command("UIDL").split(b"\r\n")[1:-2]
    uids = {line.split()[1]: int(line.split()[0]) for line in listing}
    for number in sorted(retrieve):
        assert client.command(f"RETR {number}").startswith(b"+OK")
    for number in sorted(delete):
        assert client.command(f"DELE {number}").startswith(b"+OK")
    return client, uids


def quit_with(client: Client, monkeypatch: pytest.MonkeyPatch, function: str, wrapper: Any) -> bytes:
    """QUIT with ``os.<function>`` replaced by ``wrapper`` for the update only."""
    with monkeypatch.context() as patch:
        patch.setattr(os, function, wrapper)
        reply = client.command("QUIT")
    assert client.closed
    return reply


def errors_logged(server: Server) -> list[str]:
    """The formatted events at error level or worse."""
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in server.log.events if e["log_level"] >= LogLevel.error]


def prepare(tmp: Path, mode: str, function: str) -> Server:
    """A server in ``mode`` and jones's six messages."""
    server = Server(tmp, use_mail_folder=mode == "use-mail-folder",
                    leave_in_newmail=mode == "leave-in-newmail")
    server.add_user("jones")
    server.deliver("jones", *MESSAGES)
    if function == "mkdir":
        os.rmdir(server.store.folder("jones", MAIL) / "cur")  # as left by another delivery agent
    return server


def count_calls(tmp: Path, monkeypatch: pytest.MonkeyPatch, mode: str, function: str) -> int:
    """How many times a successful update calls ``function``: the Ns to try."""
    server = prepare(tmp, mode, function)
    counting = Failing(getattr(os, function), 0, ERRORS["EIO"], False)
    client, _ = session(server, RETRIEVED, DELETED)
    assert quit_with(client, monkeypatch, function, counting).startswith(b"+OK")
    return counting.calls


def one_case(tmp: Path, monkeypatch: pytest.MonkeyPatch, mode: str, function: str, nth: int,
             error: OSError, persistent: bool) -> str:
    """One failed update and the session after it; returns the QUIT reply."""
    server = prepare(tmp, mode, function)
    origin = MAIL if mode == "use-mail-folder" else NEWMAIL
    moving = RETRIEVED - DELETED if mode == "default" else set()
    before = where(server)
    bodies = {base: data for base, (_, data) in before.items()}

    # The UIDL derives from the base alone, so it names the file in either folder.
    base_of_uid = {m.uid.encode(): m.base for folder in (NEWMAIL, MAIL)
                   for m in server.store.scan("jones", folder)}
    failing = Failing(getattr(os, function), nth, error, persistent)
    client, uids = session(server, RETRIEVED, DELETED)
    reply = quit_with(client, monkeypatch, function, failing)
    numbers = {base_of_uid[uid]: number for uid, number in uids.items()}
    assert set(numbers) == set(bodies)
    after = where(server)

    # Every message in exactly one place (where() checks), unchanged, or gone only if DELE'd.
    for base, (place, data) in after.items():
        assert data == bodies[base], f"{base} changed"
    not_removed = not_moved = 0
    for base, number in numbers.items():
        if number in DELETED:
            if base in after:
                not_removed += 1
                assert after[base][0].startswith(origin), f"deleted message {number} moved"
        else:
            assert base in after, f"message {number} lost"
            if number in moving and after[base][0].startswith(NEWMAIL):
                not_moved += 1
            elif number in moving:
                assert after[base][0] == f"{MAIL}/cur"
            else:
                assert after[base][0].startswith(origin), f"message {number} moved without RETR"

    # One -ERR for the client, one line with the cause for the operator.
    assert reply.startswith(b"-ERR [SYS/TEMP] ") and reply.endswith(b"\r\n"), reply
    if not_removed:
        assert b"%d deleted message" % not_removed in reply
    if not_moved:
        assert b"%d retrieved message" % not_moved in reply
    if not (not_removed or not_moved):
        assert function == "fsync" and b"not confirmed on disk" in reply
    [line] = errors_logged(server)
    assert "update of user=<jones>" in line and "incomplete" in line and error.strerror in line
    assert not any("log_failure" in e for e in server.log.events), "a traceback was logged"
    assert server.log.matching("logout:") == []

    # The next session sees what is on disk, and its QUIT completes the changes.
    again = server.connect()
    assert again.login().startswith(b"+OK")
    listing = again.command("UIDL").split(b"\r\n")[1:-2]
    shown = {line.split()[1]: int(line.split()[0]) for line in listing}
    on_disk = {m.uid.encode() for m in server.store.scan("jones", origin)}
    assert set(shown) == on_disk and len(shown) == len(listing)
    redo_retr = {shown[uid] for uid, number in uids.items() if uid in shown and number in moving}
    redo_dele = {shown[uid] for uid, number in uids.items() if uid in shown and number in DELETED}
    for number in sorted(redo_retr):
        assert again.command(f"RETR {number}").startswith(b"+OK")
    for number in sorted(redo_dele):
        assert again.command(f"DELE {number}").startswith(b"+OK")
    assert again.command("QUIT").startswith(b"+OK POP server signing off")
    final = where(server)
    for base, number in numbers.items():
        if number in DELETED:
            assert base not in final
        elif number in moving:
            assert final[base][0] == f"{MAIL}/cur"
        else:
            assert final[base][0].startswith(origin)
        if base in final:
            assert final[base][1] == bodies[base]
    return reply.decode()


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "from-then-on"])
@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize(("mode", "function"),
                         [(mode, f) for mode, functions in FUNCTIONS.items() for f in functions])
def test_update_failing_at_every_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
                                      function: str, error: str, persistent: bool) -> None:
    """ENOSPC or EIO at the Nth call of the update, for every N: nothing lost or duplicated,
    -ERR [SYS/TEMP] for QUIT, one log line with the cause, and the next QUIT finishes the job."""
    calls = count_calls(tmp_path / "count", monkeypatch, mode, function)
    assert calls >= 1, f"the update no longer calls os.{function}"
    replies = {one_case(tmp_path / f"call{nth}", monkeypatch, mode, function, nth, ERRORS[error],
                        persistent) for nth in range(1, calls + 1)}
    assert all(ERRORS[error].strerror not in reply for reply in replies)  # the cause is the operator's


# -- a real full file system -------------------------------------------------------------------


def _can_mount_tmpfs() -> str | None:
    """Why a tmpfs cannot be mounted here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root, to mount a small tmpfs that can really fill up"
    probe = Path(f"/tmp/vmspop-tmpfs-probe-{uuid.uuid4().hex}")
    probe.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}"
        subprocess.run(["umount", str(probe)], check=True)
        return None
    except FileNotFoundError:
        return "no mount command"
    finally:
        probe.rmdir()


NO_TMPFS = _can_mount_tmpfs()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs with 64 inodes, unmounted afterwards."""
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=64,mode=0700", "tmpfs",
                    str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path) -> None:
    """Use up every block, then every inode, of the file system holding ``directory``."""
    directory.mkdir()
    with open(directory / "blocks", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    for i in range(10_000):
        try:
            (directory / f"inode{i}").touch()
        except OSError as e:
            assert e.errno == errno.ENOSPC
            return
    raise AssertionError("the file system never ran out of inodes")


def deliver_cli(data: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vmspop.cli", "--mail-root", str(data / "mail"), "--passwd",
         str(data / "passwd"), "deliver", "jones"], input=b"Subject: cli\n\nhello\n",
        capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)


@pytest.mark.skipif(NO_TMPFS is not None, reason=str(NO_TMPFS))
def test_full_tmpfs_delivery_and_update(small_fs: Path, tmp_path: Path) -> None:
    """On a really full file system: SMTP says 452, `vmspop deliver` exits 75, a QUIT update
    that must create MAIL/cur answers -ERR and keeps the mail in NEWMAIL (one log line), and
    the next QUIT, whose deletion frees an inode, moves it; the server stays up throughout."""
    from vmspop.passwd import Account, PasswordFile
    from vmspop.store import MailStore
    PasswordFile(small_fs / "passwd").update("jones", lambda _: Account("jones", "{PLAIN}wonderland"))
    store = MailStore(small_fs / "mail")
    store.create_mailbox("jones")
    for message in MESSAGES[:3]:
        store.deliver(["jones"], [message])
    os.rmdir(store.folder("jones", MAIL) / "cur")  # the first move to MAIL must create it
    store.lock("jones").release()  # the lock file exists before the disk fills, as in real life
    port, smtp_port, log = free_port(), free_port(), tmp_path / "twistd.log"
    server = start_twistd(small_fs, port, logfile=str(log), smtp=smtp_port)
    try:
        connect(port, server).close()
        fill(small_fs / "filler")

        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPDataError) as caught:
                client.sendmail("alice@example.org", ["jones@localhost"], b"Subject: full\r\n\r\nx\r\n")
        assert caught.value.smtp_code == 452
        done = deliver_cli(small_fs)
        assert done.returncode == 75 and b"No space left on device" in done.stderr
        assert os.listdir(store.folder("jones", NEWMAIL) / "tmp") == []

        pop = poplib.POP3("127.0.0.1", port, timeout=30)
        pop.user("jones")
        pop.pass_("wonderland")
        pop.retr(1)
        pop.retr(2)
        with pytest.raises(poplib.error_proto) as refused:
            pop.quit()
        pop.close()  # poplib does not close after a -ERR to QUIT
        assert refused.value.args[0] == (b"-ERR [SYS/TEMP] 2 retrieved messages not moved to MAIL "
                                         b"(server storage error); shown again at your next login")
        assert len(store.scan("jones", NEWMAIL)) == 3

        pop = poplib.POP3("127.0.0.1", port, timeout=30)
        pop.user("jones")
        assert pop.pass_("wonderland").startswith(b"+OK")
        assert pop.stat()[0] == 3
        pop.retr(1)
        pop.retr(2)
        pop.dele(3)  # frees an inode, so MAIL/cur can be created
        assert pop.quit() == b"+OK POP server signing off (1 deleted, 2 moved to MAIL)"
        assert len(store.scan("jones", MAIL)) == 2 and store.scan("jones", NEWMAIL) == []

        for path in sorted((small_fs / "filler").iterdir()):
            path.unlink()
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            assert client.sendmail("alice@example.org", ["jones@localhost"], b"Subject: ok\r\n\r\nx\r\n") == {}
        assert deliver_cli(small_fs).returncode == 0
        assert len(store.scan("jones", NEWMAIL)) == 2
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(10)
    errors = [line for line in log.read_text().splitlines() if "#error]" in line or "#critical]" in line]
    [update] = [line for line in errors if "update of user=<jones>" in line]
    assert "0 of 0 deletions and 2 of 2 moves to MAIL not made" in update
    assert "No space left on device" in update and "MAIL/cur" in update
    assert len([line for line in errors if "smtp delivery" in line]) == 1
    assert len(errors) == 2 and "Traceback" not in log.read_text()
