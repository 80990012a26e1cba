"""Reading a message on the reactor thread when, and only when, no disk is involved.

A hand-over to the pool costs more than reading a message the kernel already holds
(docs/performance.md).  Linux can refuse instead of wait: ``openat2()`` with
``RESOLVE_CACHED`` fails with EAGAIN unless every step of the path is in the
dentry cache (Linux 5.12), and ``preadv2()`` with ``RWF_NOWAIT`` fails, or reads
short, unless the data is in the page cache (4.14).  :func:`read_if_cached` reads a
file that way, and gives None for anything else, which then goes to the pool as
before.  Callers use it only for files on a local file system: opening a file on
NFS asks the server, whatever the path cache holds (vmspop.filesystems).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from typing import Any

__all__ = ["available", "read_if_cached"]

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
    """True where the kernel and the C library offer what :func:`read_if_cached` needs."""
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


def _open_cached(path: bytes) -> int | None:
    global _syscall
    how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC, 0, _RESOLVE_CACHED)
    # syscall() is variadic and reads every argument as a long: pass them as such.
    fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(_AT_FDCWD), ctypes.c_char_p(path),
                  ctypes.byref(how), ctypes.c_long(ctypes.sizeof(how)))
    if fd >= 0:
        return int(fd)
    if ctypes.get_errno() in _UNSUPPORTED:
        _syscall = False
    return None


def read_if_cached(path: str | bytes | os.PathLike[str], limit: int) -> bytes | None:
    """The whole file, if it holds at most ``limit`` octets and the kernel has its path
    and all its data in memory; otherwise, and on any error, None (the pool's read meets
    the error again and reports it)."""
    if not available():
        return None
    fd = _open_cached(os.fsencode(path))
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            return None
        data = bytearray(size)
        # A short read is data partly in memory: the rest would need the disk.
        if size and os.preadv(fd, [data], 0, os.RWF_NOWAIT) != size:
            return None
        return bytes(data)
    except OSError:  # EAGAIN: not all in the page cache; EOPNOTSUPP: not on this file system
        return None
    finally:
        os.close(fd)
