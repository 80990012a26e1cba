"""Current file attributes on local and network file systems alike.

On NFS, ``stat()`` may answer from the client's attribute cache, up to a minute old;
opening the file or directory makes the client revalidate it with the server
("close-to-open" consistency), so a change made on another node is seen at once.
That takes an open, an fstat and a close instead of one stat, and in a pool thread
every system call hands the GIL to a busy reactor and waits to get it back
(docs/performance.md): on a file system whose ``stat()`` is always current,
:func:`current_stat` stats, and it opens only elsewhere.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from vmspop import cached

__all__ = ["LOCAL_TYPES", "current_stat", "filesystem_type", "is_local"]

#: File systems on one machine's disks or memory, whose ``stat()`` is always current.
#: Any other type, and any device not found in the mount table, is treated as shared:
#: opening costs two system calls more, a stale attribute would serve an old listing.
LOCAL_TYPES = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "bcachefs", "jfs", "reiserfs",
    "nilfs2", "tmpfs", "ramfs", "overlay", "vfat", "exfat", "ntfs3", "hfsplus",
})

MOUNTINFO = Path("/proc/self/mountinfo")

# Device number -> local?  Mounts come and go rarely; a device number names one mount.
_local: dict[int, bool] = {}


def filesystem_type(mountinfo: str, major: int, minor: int) -> str | None:
    """The type of the file system mounted from device ``major:minor``, from the text of
    a ``/proc/<pid>/mountinfo`` (see proc(5)); None if no mount has that device."""
    device = f"{major}:{minor}"
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 2 and fields[2] == device and " - " in line:
            return line.split(" - ", 1)[1].split(" ", 1)[0]
    return None


def is_local(device: int) -> bool:
    """True if ``device`` (an ``st_dev``) holds a file system in :data:`LOCAL_TYPES`."""
    local = _local.get(device)
    if local is None:
        try:
            text = MOUNTINFO.read_text(errors="replace")
        except OSError:  # not Linux, or no /proc: take the safe way
            text = ""
        local = _local[device] = filesystem_type(text, os.major(device), os.minor(device)) in LOCAL_TYPES
    return local


def current_stat(path: str | os.PathLike[str], *, directory: bool = False) -> os.stat_result:
    """``path``'s attributes as its file server has them now.

    Args:
        path: a file (links followed) or, with ``directory``, a directory, which must
            not be a symbolic link.

    Raises:
        OSError: as ``open()`` would: FileNotFoundError, ENOTDIR for a directory that
            is not one, ELOOP for one that is a link, ...
        cached.NotCached: within :func:`cached.without_waiting`, when the answer is not
            in memory or the file system is not local.
    """
    waiting = cached.waiting_allowed()
    st = (os.stat if waiting else cached.stat_cached)(path, follow_symlinks=not directory)
    if directory and not stat.S_ISDIR(st.st_mode):
        code = errno.ELOOP if stat.S_ISLNK(st.st_mode) else errno.ENOTDIR
        raise OSError(code, os.strerror(code), os.fspath(path))
    if is_local(st.st_dev):
        return st
    if not waiting:
        raise cached.NotCached(path)  # opening asks the file server
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY | os.O_NOFOLLOW if directory else 0)
    fd = os.open(path, flags)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)
