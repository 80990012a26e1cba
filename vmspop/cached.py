"""File work on the reactor thread when, and only when, no disk is involved.

A hand-over to the pool costs more than reading a message, or checking a login, whose
files the kernel already holds (docs/performance.md).  Linux can refuse instead of
wait: ``openat2()`` with ``RESOLVE_CACHED`` fails with EAGAIN unless every step of
the path is in the dentry cache (Linux 5.12), and ``preadv2()`` with ``RWF_NOWAIT``
fails, or reads short, unless the data is in the page cache (4.14).

- :func:`read_if_cached` reads a message that way, and gives None for anything
  else, which then goes to the pool as before.
- Within :func:`without_waiting`, the file helpers a login uses
  (:func:`vmspop.filesystems.current_stat`, the lock, the kept listing, the password
  file) answer from memory that way or raise :class:`NotCached`, and the caller
  does the whole work again in a pool thread.

Only for files on a local file system: opening a file on NFS asks the server,
whatever the path cache holds (vmspop.filesystems).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["NotCached", "available", "open_cached", "read_if_cached", "stat_cached",
           "waiting_allowed", "without_waiting"]

# openat2's number, the same on every architecture that numbers new calls alike.
_SYS_OPENAT2 = 437
_ARCHITECTURES = frozenset({"x86_64", "aarch64", "riscv64", "ppc64le", "s390x"})
_AT_FDCWD = -100
_RESOLVE_CACHED = 0x20
# A kernel or sandbox without openat2 (or without RESOLVE_CACHED) answers these once;
# vmspop then stops trying.
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.E2BIG, errno.EPERM})


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_syscall: Any = None  # libc's syscall(); False once openat2 proved unusable here


def available() -> bool:
    """True where the kernel and the C library offer what this module needs (else every
    helper here gives None or raises NotCached at once)."""
    global _syscall
    if _syscall is None:
        _syscall = False
        if (platform.system() == "Linux" and platform.machine() in _ARCHITECTURES
                and hasattr(os, "RWF_NOWAIT")):
            try:
                function = ctypes.CDLL(None, use_errno=True).syscall
            except (OSError, AttributeError):
                return False
            function.restype = ctypes.c_long
            _syscall = function
    return _syscall is not False


class NotCached(Exception):
    """The work would have to wait for a disk (or cannot be sure not to): do it in a
    pool thread."""


_state = threading.local()


@contextmanager
def without_waiting() -> Iterator[None]:
    """Within (this thread only), file helpers that would touch a disk raise NotCached."""
    _state.on = True
    try:
        yield
    finally:
        _state.on = False


def waiting_allowed() -> bool:
    """False within :func:`without_waiting`."""
    return not getattr(_state, "on", False)


# syscall() is variadic and reads every argument as a long: pass them as such, built
# once (building them took half of the 5 us a call costs).
_NUMBER = ctypes.c_long(_SYS_OPENAT2)
_CWD = ctypes.c_long(_AT_FDCWD)
_HOW_SIZE = ctypes.c_long(ctypes.sizeof(_OpenHow))
_hows: dict[int, tuple[_OpenHow, Any]] = {}  # flags -> (struct, pointer to it)


def _openat2(path: bytes, flags: int) -> int:
    """A descriptor, or -errno."""
    global _syscall
    how = _hows.get(flags)
    if how is None:
        struct = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_CACHED)
        how = _hows[flags] = (struct, ctypes.byref(struct))
    fd = _syscall(_NUMBER, _CWD, path, how[1], _HOW_SIZE)
    if fd >= 0:
        return int(fd)
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        _syscall = False
    return -code


def open_cached(path: str | bytes | os.PathLike[str], flags: int) -> int:
    """``os.open(path, flags)`` (no O_CREAT), from the dentry cache only.

    Raises:
        NotCached: part of the path is not in memory, or openat2 is not available.
        OSError: as os.open would (FileNotFoundError, ELOOP, ...).
    """
    if not available():
        raise NotCached(path)
    fd = _openat2(os.fsencode(path), flags)
    if fd >= 0:
        return fd
    if -fd == errno.EAGAIN or _syscall is False:
        raise NotCached(path)
    raise OSError(-fd, os.strerror(-fd), os.fspath(path))


def stat_cached(path: str | bytes | os.PathLike[str], *, follow_symlinks: bool = True) -> os.stat_result:
    """``os.stat(path, follow_symlinks=...)`` from memory only: an ``O_PATH`` descriptor
    opened by :func:`open_cached` (which reads nothing, not even on NFS) and ``fstat``."""
    fd = open_cached(path, os.O_PATH | (0 if follow_symlinks else os.O_NOFOLLOW))
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def read_if_cached(path: str | bytes | os.PathLike[str], limit: int) -> bytearray | None:
    """The whole file, if it holds at most ``limit`` octets and the kernel has its path
    and all its data in memory; otherwise, and on any error, None (the pool's read meets
    the error again and reports it).  A bytearray, which the caller owns: making bytes
    of it would copy the message once more."""
    if not available():
        return None
    fd = _openat2(os.fsencode(path), os.O_RDONLY)
    if fd < 0:
        return None
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            return None
        data = bytearray(size)
        # A short read is data partly in memory: the rest would need the disk.
        if size and os.preadv(fd, [data], 0, os.RWF_NOWAIT) != size:
            return None
        return data
    except OSError:  # EAGAIN: not all in the page cache; EOPNOTSUPP: not on this file system
        return None
    finally:
        os.close(fd)
