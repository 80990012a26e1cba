"""Tests for vmspop.secretfile: reading and writing POP_SECRET.DAT safely."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vmspop.secretfile import (
    MAX_SECRET_CHARS,
    MAX_SECRET_OCTETS,
    SecretMissing,
    SecretRejected,
    check_secret_text,
    read_secret,
    write_secret,
)

ME = os.geteuid()
SOMEONE_ELSE = 12345
OWNERS = {ME}


def make_secret(path: Path, content: bytes, mode: int = 0o600, uid: int | None = None) -> Path:
    """Write a secret file with an exact mode (umask-proof) and owner."""
    path.write_bytes(content)
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, -1)
    return path


def dir_names(directory: Path) -> list[str]:
    """The sorted names in a directory, dot files included."""
    return sorted(os.listdir(directory))


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------- read_secret: good files


@pytest.mark.parametrize(("content", "secret"), [
    (b"tanstaaf\n", b"tanstaaf"),
    (b"tanstaaf\r\n", b"tanstaaf"),
    (b"tanstaaf", b"tanstaaf"),
    (b" spaces  kept \n", b" spaces  kept "),
])
def test_read_secret_returns_secret_without_line_end(tmp_path: Path, content: bytes, secret: bytes) -> None:
    """A 0600 file owned by an allowed uid yields its one line without LF or CRLF."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", content)
    assert read_secret(path, OWNERS) == secret


def test_read_secret_accepts_any_listed_owner(tmp_path: Path) -> None:
    """A file owned by any uid in ``owners`` (e.g. the user rather than the store owner) is accepted."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", b"s3cret\n", uid=SOMEONE_ELSE)
    assert read_secret(path, {ME, SOMEONE_ELSE}) == b"s3cret"
    assert read_secret(str(path), [SOMEONE_ELSE]) == b"s3cret"


@pytest.mark.parametrize("mode", [0o400, 0o600, 0o700])
def test_read_secret_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    """Any mode without group or other bits is accepted."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", b"s\n", mode=mode)
    assert read_secret(path, OWNERS) == b"s"


def test_read_secret_500_characters_accepted_501_rejected(tmp_path: Path) -> None:
    """Exactly 500 characters is the limit; 501 is refused."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", b"x" * MAX_SECRET_CHARS + b"\r\n")
    assert read_secret(path, OWNERS) == b"x" * 500
    make_secret(path, b"x" * (MAX_SECRET_CHARS + 1) + b"\n")
    with pytest.raises(SecretRejected, match="longer than 500"):
        read_secret(path, OWNERS)


def test_read_secret_counts_characters_not_octets(tmp_path: Path) -> None:
    """500 non-ASCII characters (1000 octets of UTF-8) are accepted; 501 are not."""
    secret = ("é" * 500).encode("utf-8")
    assert len(secret) == 1000
    path = make_secret(tmp_path / "POP_SECRET.DAT", secret + b"\n")
    assert read_secret(path, OWNERS) == secret
    four = ("😀" * 500).encode("utf-8")  # 2000 octets, the largest valid file with CRLF
    make_secret(path, four + b"\r\n")
    assert read_secret(path, OWNERS) == four
    make_secret(path, ("é" * 501).encode("utf-8"))
    with pytest.raises(SecretRejected, match="longer than"):
        read_secret(path, OWNERS)


# ---------------------------------------------------------------- read_secret: refused files


def test_read_secret_missing(tmp_path: Path) -> None:
    """No file at all raises SecretMissing."""
    with pytest.raises(SecretMissing):
        read_secret(tmp_path / "POP_SECRET.DAT", OWNERS)


def test_read_secret_refuses_symlink_to_perfect_file(tmp_path: Path) -> None:
    """A symbolic link is refused even when its target would be accepted on its own."""
    target = make_secret(tmp_path / "real", b"fine\n")
    assert read_secret(target, OWNERS) == b"fine"
    link = tmp_path / "POP_SECRET.DAT"
    link.symlink_to(target)
    with pytest.raises(SecretRejected, match="symbolic link"):
        read_secret(link, OWNERS)


def test_read_secret_refuses_dangling_symlink(tmp_path: Path) -> None:
    """A symlink to nothing is refused as a link, not reported as missing."""
    link = tmp_path / "POP_SECRET.DAT"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(SecretRejected, match="symbolic link"):
        read_secret(link, OWNERS)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o601, 0o610, 0o666])
def test_read_secret_refuses_group_or_other_bits(tmp_path: Path, mode: int) -> None:
    """Any group or other permission bit makes the file unusable; the message names the mode."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", b"s\n", mode=mode)
    with pytest.raises(SecretRejected, match=f"mode {mode:04o}"):
        read_secret(path, OWNERS)


def test_read_secret_refuses_foreign_owner(tmp_path: Path) -> None:
    """A file owned by a uid not in ``owners`` is refused, naming that uid."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", b"s\n", uid=SOMEONE_ELSE)
    with pytest.raises(SecretRejected, match=str(SOMEONE_ELSE)):
        read_secret(path, OWNERS)
    with pytest.raises(SecretRejected, match="owned"):
        read_secret(path, set())


def test_read_secret_refuses_directory(tmp_path: Path) -> None:
    """A directory in the secret's place is refused as not a regular file."""
    path = tmp_path / "POP_SECRET.DAT"
    path.mkdir(mode=0o700)
    with pytest.raises(SecretRejected, match="not a regular file"):
        read_secret(path, OWNERS)


def run_with_timeout(call: Callable[[], Any], timeout: float, unblock: Callable[[], None]) -> Any:
    """Run ``call`` in a thread; if it is still running after ``timeout``, unblock it and fail."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:  # handed back to the test thread
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        unblock()
        thread.join(5)
        pytest.fail("the call blocked")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_read_secret_refuses_fifo_without_blocking(tmp_path: Path) -> None:
    """A FIFO with no writer is refused at once (opened O_NONBLOCK), not waited on."""
    path = tmp_path / "POP_SECRET.DAT"
    os.mkfifo(path, 0o600)

    def unblock() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)

    with pytest.raises(SecretRejected, match="not a regular file"):
        run_with_timeout(lambda: read_secret(path, OWNERS), 3.0, unblock)


@pytest.mark.parametrize("content", [b"one\ntwo\n", b"one\ntwo", b"one\r\ntwo\r\n", b"one\n\n", b"a\rb\n"])
def test_read_secret_refuses_more_than_one_line(tmp_path: Path, content: bytes) -> None:
    """A second line (or a stray CR) is refused."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", content)
    with pytest.raises(SecretRejected, match="more than one line"):
        read_secret(path, OWNERS)


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_read_secret_refuses_empty(tmp_path: Path, content: bytes) -> None:
    """An empty file, or one holding only a line end, is refused."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", content)
    with pytest.raises(SecretRejected, match="empty"):
        read_secret(path, OWNERS)


def test_read_secret_refuses_huge_file_without_reading_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 MB file is refused from its size alone; at most MAX_SECRET_OCTETS+1 octets are ever read."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", b"a" * 1_000_000)
    requested: list[int] = []
    real_read = os.read

    def spy(fd: int, n: int) -> bytes:
        requested.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", spy)
    with pytest.raises(SecretRejected, match="longer than"):
        read_secret(path, OWNERS)
    assert sum(requested) <= MAX_SECRET_OCTETS + 1


def test_read_secret_just_over_octet_limit(tmp_path: Path) -> None:
    """One octet more than any valid file can hold is refused by size."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", b"a" * (MAX_SECRET_OCTETS + 1))
    with pytest.raises(SecretRejected, match="longer than"):
        read_secret(path, OWNERS)


def test_read_secret_closes_its_descriptor(tmp_path: Path) -> None:
    """Neither success nor refusal leaks a file descriptor."""
    good = make_secret(tmp_path / "good", b"s\n")
    bad = make_secret(tmp_path / "bad", b"s\n", mode=0o644)
    before = open_fds()
    for _ in range(20):
        read_secret(good, OWNERS)
        with pytest.raises(SecretRejected):
            read_secret(bad, OWNERS)
    assert open_fds() == before


# ---------------------------------------------------------------- check_secret_text


def test_check_secret_text_strips_only_one_line_end() -> None:
    """check_secret_text removes one trailing LF or CRLF and nothing else."""
    assert check_secret_text(b"abc\n") == b"abc"
    assert check_secret_text(b"abc\r\n") == b"abc"
    assert check_secret_text(b"\tabc ") == b"\tabc "


def test_check_secret_text_counts_invalid_utf8_octets_as_characters() -> None:
    """Bytes that are not UTF-8 count one character each, so the limit still holds."""
    assert check_secret_text(b"\xff" * 500) == b"\xff" * 500
    with pytest.raises(SecretRejected):
        check_secret_text(b"\xff" * 501)


# ---------------------------------------------------------------- write_secret


def test_write_secret_creates_0600_file(tmp_path: Path) -> None:
    """write_secret writes the secret plus LF, mode 0600, leaving no temporary file."""
    path = tmp_path / "POP_SECRET.DAT"
    old = os.umask(0)
    try:
        write_secret(path, b"tanstaaf")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"tanstaaf\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dir_names(tmp_path) == ["POP_SECRET.DAT"]
    assert read_secret(path, OWNERS) == b"tanstaaf"


def test_write_secret_normalises_line_end(tmp_path: Path) -> None:
    """A secret given with CRLF is stored with a single LF."""
    path = tmp_path / "POP_SECRET.DAT"
    write_secret(path, b"abc\r\n")
    assert path.read_bytes() == b"abc\n"


def test_write_secret_replaces_existing_file(tmp_path: Path) -> None:
    """An existing (even world-readable) file is replaced by a new 0600 inode."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", b"old\n", mode=0o644)
    old_inode = path.stat().st_ino
    write_secret(path, b"new")
    assert path.read_bytes() == b"new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != old_inode
    assert dir_names(tmp_path) == ["POP_SECRET.DAT"]


def test_write_secret_replaces_symlink_not_its_target(tmp_path: Path) -> None:
    """A symlink in the secret's place is replaced; the file it pointed at is untouched."""
    target = make_secret(tmp_path / "elsewhere", b"victim\n", mode=0o644)
    link = tmp_path / "POP_SECRET.DAT"
    link.symlink_to(target)
    write_secret(link, b"new")
    assert not link.is_symlink()
    assert link.read_bytes() == b"new\n"
    assert target.read_bytes() == b"victim\n"


@pytest.mark.parametrize("bad", [b"", b"\n", b"two\nlines", b"a\rb", b"x" * 501, ("é" * 501).encode()])
def test_write_secret_refuses_bad_text_and_keeps_old_file(tmp_path: Path, bad: bytes) -> None:
    """Empty, multi-line or over-long text is refused; nothing is written and the old file stays."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", b"old\n")
    with pytest.raises(SecretRejected):
        write_secret(path, bad)
    assert path.read_bytes() == b"old\n"
    assert dir_names(tmp_path) == ["POP_SECRET.DAT"]


def test_write_secret_refuses_bad_text_without_creating(tmp_path: Path) -> None:
    """When there was no file, a refused secret leaves none."""
    with pytest.raises(SecretRejected):
        write_secret(tmp_path / "POP_SECRET.DAT", b"x" * 501)
    assert dir_names(tmp_path) == []


def test_write_secret_accepts_500_characters(tmp_path: Path) -> None:
    """The longest legal secret (500 characters, multi-octet) round-trips."""
    path = tmp_path / "POP_SECRET.DAT"
    secret = ("é" * 500).encode()
    write_secret(path, secret)
    assert read_secret(path, OWNERS) == secret


def test_write_secret_chowns_to_uid(tmp_path: Path) -> None:
    """With ``uid`` the file belongs to that user and is readable as theirs."""
    path = tmp_path / "POP_SECRET.DAT"
    write_secret(path, b"theirs", uid=SOMEONE_ELSE)
    info = path.stat()
    assert info.st_uid == SOMEONE_ELSE
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert read_secret(path, {SOMEONE_ELSE}) == b"theirs"
    with pytest.raises(SecretRejected, match="owned"):
        read_secret(path, {ME})


def test_write_secret_uid_of_self_is_no_chown(tmp_path: Path) -> None:
    """Passing our own uid works and leaves the file ours."""
    path = tmp_path / "POP_SECRET.DAT"
    write_secret(path, b"mine", uid=ME)
    assert path.stat().st_uid == ME


def test_write_secret_failure_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If chown fails (not permitted), the error propagates, no temp file stays and no fd leaks."""
    path = make_secret(tmp_path / "POP_SECRET.DAT", b"old\n")

    def refuse(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refuse)
    before = open_fds()
    with pytest.raises(PermissionError):
        write_secret(path, b"new", uid=SOMEONE_ELSE)
    assert open_fds() == before
    assert dir_names(tmp_path) == ["POP_SECRET.DAT"]
    assert path.read_bytes() == b"old\n"


def test_write_secret_into_directory_target_fails_cleanly(tmp_path: Path) -> None:
    """If the final rename fails (a directory is in the way), no temporary file is left."""
    path = tmp_path / "POP_SECRET.DAT"
    path.mkdir()
    with pytest.raises(OSError):
        write_secret(path, b"new")
    assert dir_names(tmp_path) == ["POP_SECRET.DAT"]
