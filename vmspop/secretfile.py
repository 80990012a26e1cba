"""``POP_SECRET.DAT``: the per-user APOP shared secret, read and written safely.

The OpenVMS server read the secret from a one-line file of at most 500 characters
in the user's mail directory, protected ``(S,W,G,O:RWED)`` - only the owner may
touch it.  vmspop refuses (and the caller logs) any file that could have been read
or planted by someone else: a symbolic link, anything but a regular file, a file
with group or other permission bits, or one owned by neither the user nor the store
owner.  A refused file means "no secret": APOP then fails for that user.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Collection
from pathlib import Path

__all__ = [
    "MAX_SECRET_CHARS",
    "SecretRejected",
    "SecretMissing",
    "check_secret_text",
    "read_secret",
    "write_secret",
]

#: HELP TCPIP_Services POP: the secret is one line of at most 500 characters.
MAX_SECRET_CHARS = 500
#: 500 characters of 4-octet UTF-8 plus CRLF; anything larger cannot be valid,
#: so it is never read into memory whole.
MAX_SECRET_OCTETS = MAX_SECRET_CHARS * 4 + 2


class SecretMissing(Exception):
    """The user has no secret file."""


class SecretRejected(Exception):
    """The secret file exists but must not be used; the message is for the operator log."""


def check_secret_text(raw: bytes) -> bytes:
    """Validate a secret file's content and return the secret without its line end.

    Raises:
        SecretRejected: empty, more than one line, or more than 500 characters.
    """
    if raw.endswith(b"\r\n"):
        secret = raw[:-2]
    elif raw.endswith(b"\n"):
        secret = raw[:-1]
    else:
        secret = raw
    if b"\n" in secret or b"\r" in secret:
        raise SecretRejected("it holds more than one line")
    if not secret:
        raise SecretRejected("it is empty")
    if len(secret.decode("utf-8", "surrogateescape")) > MAX_SECRET_CHARS:
        raise SecretRejected(f"it is longer than {MAX_SECRET_CHARS} characters")
    return secret


def read_secret(path: str | os.PathLike[str], owners: Collection[int]) -> bytes:
    """Read an APOP secret file, refusing any file others could read or plant.

    Args:
        path: the ``POP_SECRET.DAT`` file.
        owners: uids allowed to own it: the user's and the store owner's.

    Raises:
        SecretMissing: there is no such file.
        SecretRejected: the file is unsafe or malformed; the message says why.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SecretMissing(str(path)) from None
    except OSError as e:
        if os.path.islink(path):
            raise SecretRejected("it is a symbolic link") from None
        raise SecretRejected(f"it cannot be opened: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretRejected("it is not a regular file")
        if info.st_mode & 0o077:
            raise SecretRejected(f"its mode {stat.S_IMODE(info.st_mode):04o} lets group or others "
                                 "access it (use 0600)")
        if info.st_uid not in owners:
            raise SecretRejected(f"it is owned by uid {info.st_uid}, neither the user nor the store owner")
        if info.st_size > MAX_SECRET_OCTETS:
            raise SecretRejected(f"it is longer than {MAX_SECRET_CHARS} characters")
        raw = os.read(fd, MAX_SECRET_OCTETS + 1)
    finally:
        os.close(fd)
    return check_secret_text(raw)


def write_secret(path: str | os.PathLike[str], secret: bytes, uid: int | None = None) -> None:
    """Replace a secret file atomically with mode 0600.

    Args:
        path: the ``POP_SECRET.DAT`` file.
        secret: the secret, with or without one trailing line end.
        uid: if given (and permitted), the file is chowned to this user.

    Raises:
        SecretRejected: the secret is empty, multi-line or too long; nothing is written.
    """
    value = check_secret_text(secret)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".POP_SECRET.", dir=target.parent)
    try:
        # fdopen first, so the descriptor is closed even if fchmod or fchown fails.
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, 0o600)
            if uid is not None and uid != os.geteuid():
                os.fchown(fd, uid, -1)
            f.write(value + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
