"""Reading a file only when the kernel holds it: never waiting for a disk."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from vmspop import cached
from vmspop.cached import read_if_cached

needs_openat2 = pytest.mark.skipif(not cached.available(),
                                   reason="openat2 with RESOLVE_CACHED is not available here")


@needs_openat2
def test_a_file_in_memory_is_read_whole(tmp_path: Path) -> None:
    """A file just written is in the page cache: read whole, up to the limit."""
    data = os.urandom(70_000)
    (tmp_path / "m").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert read_if_cached(tmp_path / "m", 70_000) == data
    assert read_if_cached(os.fsencode(tmp_path / "m"), 70_000) == data
    assert read_if_cached(str(tmp_path / "empty"), 10) == b""
    assert read_if_cached(str(tmp_path / "m"), 69_999) is None  # larger than the limit
    assert read_if_cached(str(tmp_path / "missing"), 10) is None
    assert read_if_cached(str(tmp_path), 10**6) is None  # a directory


@needs_openat2
def test_a_file_not_in_memory_is_refused(tmp_path: Path) -> None:
    """Data the kernel would have to read from the disk: None, at once."""
    path = tmp_path / "m"
    with open(path, "wb") as f:
        f.write(os.urandom(200_000))
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if read_if_cached(str(path), 200_000) is not None:
        pytest.skip("this file system keeps the pages (tmpfs): nothing to evict")
    assert path.read_bytes()  # read the ordinary way, it is cached again
    assert read_if_cached(str(path), 200_000) is not None


@needs_openat2
@pytest.mark.parametrize("result", [BlockingIOError(errno.EAGAIN, "would block"), 5])
def test_a_read_that_would_block_or_reads_short_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, result: object) -> None:
    """EAGAIN, or part of the data (the rest would need the disk): None."""
    (tmp_path / "m").write_bytes(b"x" * 100)

    def preadv(fd: int, buffers: list, offset: int, flags: int) -> int:
        assert flags == os.RWF_NOWAIT
        if isinstance(result, BaseException):
            raise result
        return int(result)  # type: ignore[call-overload]

    monkeypatch.setattr("vmspop.cached.os.preadv", preadv)
    assert read_if_cached(str(tmp_path / "m"), 1000) is None


@pytest.mark.parametrize("code, disabled", [(errno.ENOSYS, True), (errno.EPERM, True),
                                            (errno.EAGAIN, False), (errno.ENOENT, False)])
def test_an_unsupported_openat2_is_given_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            code: int, disabled: bool) -> None:
    """A kernel or sandbox without openat2 answers once and is not asked again; a path
    that is not cached, or missing, is only that file's answer."""
    calls: list[bytes] = []

    def syscall(number: object, dirfd: object, path: bytes, how: object, size: object) -> int:
        calls.append(path)
        ctypes.set_errno(code)
        return -1

    monkeypatch.setattr(cached, "_syscall", syscall)
    (tmp_path / "m").write_bytes(b"x")
    assert read_if_cached(str(tmp_path / "m"), 10) is None
    assert read_if_cached(str(tmp_path / "m"), 10) is None
    assert len(calls) == (1 if disabled else 2)
    assert cached.available() is not disabled


def test_without_waiting_is_for_this_thread_and_this_block() -> None:
    """The flag is set within the block only, and cleared on the way out of an error."""
    assert cached.waiting_allowed()
    with pytest.raises(cached.NotCached):
        with cached.without_waiting():
            assert not cached.waiting_allowed()
            raise cached.NotCached("x")
    assert cached.waiting_allowed()


@needs_openat2
def test_stat_and_open_from_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths in memory are answered as os.stat answers; current_stat's errors for a
    directory are those of open with O_NOFOLLOW, from memory too."""
    from vmspop import filesystems
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path)
    assert cached.stat_cached(tmp_path / "f").st_ino == os.stat(tmp_path / "f").st_ino
    assert cached.stat_cached(tmp_path / "link").st_ino == os.stat(tmp_path).st_ino
    assert cached.stat_cached(tmp_path / "link", follow_symlinks=False).st_ino == \
        os.lstat(tmp_path / "link").st_ino
    monkeypatch.setattr(filesystems, "is_local", lambda device: True)
    with cached.without_waiting():
        assert filesystems.current_stat(tmp_path, directory=True).st_ino == os.stat(tmp_path).st_ino
        for name, code in (("link", errno.ELOOP), ("f", errno.ENOTDIR)):
            with pytest.raises(OSError) as raised:
                filesystems.current_stat(tmp_path / name, directory=True)
            assert raised.value.errno == code
    # A name the dentry cache does not know to be missing would need a lookup.
    with pytest.raises((FileNotFoundError, cached.NotCached)):
        cached.stat_cached(tmp_path / "missing")
    fd = cached.open_cached(tmp_path / "f", os.O_RDWR)
    try:
        assert os.read(fd, 1) == b"x"
    finally:
        os.close(fd)


def test_current_stat_without_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within without_waiting, current_stat answers from memory on a local file system
    and gives up (NotCached) on a shared one, or where openat2 is missing."""
    from vmspop import filesystems
    with cached.without_waiting():
        if cached.available():
            monkeypatch.setattr(filesystems, "is_local", lambda device: True)
            assert filesystems.current_stat(tmp_path, directory=True).st_ino == os.stat(tmp_path).st_ino
        monkeypatch.setattr(filesystems, "is_local", lambda device: False)
        with pytest.raises(cached.NotCached):
            filesystems.current_stat(tmp_path, directory=True)
        monkeypatch.setattr(cached, "_syscall", False)
        with pytest.raises(cached.NotCached):
            filesystems.current_stat(tmp_path, directory=True)
