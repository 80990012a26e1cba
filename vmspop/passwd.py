"""The password file, in Dovecot's passwd-file format.

One account per line::

    user:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields

Trailing fields may be left out.  Blank lines and lines starting with ``#``
are comments.  ``extra_fields`` is a space-separated list of ``key=value`` or
bare ``key`` tokens (a bare key means ``key=yes``); everything after the
seventh ``:`` belongs to it.  vmspop's account flags live there:

``disuser``
    The account is disabled (VMS ``DISUSER``).
``dismail``
    The account may not read mail (VMS ``DISMAIL``).
``expires=YYYY-MM-DD``
    The account is refused from 00:00 UTC on that date on, i.e. it is valid
    through the day before.

The flag names are matched case-insensitively, so a VMS-style ``DISUSER``
works too.  Other extra fields (Dovecot's ``userdb_*`` and so on) are kept and
written back verbatim.  User names are case-insensitive and stored in lower
case.

This module is pure and blocking; callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from vmspop import cached
from vmspop.filesystems import current_stat

__all__ = [
    "USERNAME_MAX_LENGTH",
    "Account",
    "InvalidUsername",
    "PasswdError",
    "PasswordFile",
    "format_account",
    "normalize_username",
    "parse_passwd",
    "utc_today",
]

# Long enough for any real login name (32 is also the Linux useradd limit),
# short enough to be harmless as a file name and in log lines.
USERNAME_MAX_LENGTH: Final = 32
_USERNAME_RE: Final = re.compile(rf"[a-z0-9_$][a-z0-9_$.-]{{0,{USERNAME_MAX_LENGTH - 1}}}")
_USERNAME_CHARS: Final = "letters, digits and _ $ . -"

# uid_t and gid_t are 32-bit unsigned on every platform we run on.
_MAX_ID: Final = 2**32 - 1
_ID_RE: Final = re.compile(r"[0-9]{1,10}")
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

# A file modified less than this long ago may be modified again without its
# mtime changing (timestamps are taken from a coarse clock, and are 2 s apart
# on FAT), so a cache entry made from it is not trusted: the file is re-read
# until it has been quiet this long.  Also covers an inode number being
# reused by a quick rewrite of the same size.
_RACY_WINDOW_NS: Final = 2_000_000_000

_DISUSER: Final = "disuser"
_DISMAIL: Final = "dismail"
_EXPIRES: Final = "expires"
_FLAGS: Final = frozenset({_DISUSER, _DISMAIL, _EXPIRES})
_TRUE: Final = frozenset({"yes", "y", "true", "1", "on"})
_FALSE: Final = frozenset({"no", "n", "false", "0", "off"})

_ENCODING: Final = "utf-8"
# Bytes that are not UTF-8 (in a GECOS field, say) survive a rewrite.
_ERRORS: Final = "surrogateescape"


class InvalidUsername(ValueError):
    """A user name is not acceptable.

    Attributes:
        reason: What is wrong, without the name itself.
    """

    def __init__(self, name: str | bytes, reason: str) -> None:
        """Creates the exception.

        Args:
            name: The rejected name (quoted, shortened, in the message).
            reason: What is wrong with it.
        """
        shown = name[:40]
        suffix = "..." if len(name) > 40 else ""
        super().__init__(f"invalid user name {shown!r}{suffix}: {reason}")
        self.reason = reason


class PasswdError(Exception):
    """The password file is malformed.

    The message names the file and line, but never contains a password hash.
    """


def normalize_username(name: str | bytes) -> str:
    """Validates a user name and returns its canonical (lower-case) form.

    A valid name has 1 to 32 characters from ``[a-z0-9_$.-]`` after lower-
    casing and does not start with ``.`` or ``-``.  This keeps names safe to
    use as file names: no ``/``, no ``..``, no NUL.

    Args:
        name: The name, as typed by a client or found in the file.

    Returns:
        The name in lower case.

    Raises:
        InvalidUsername: The name is not valid; the message says why.
    """
    if isinstance(name, bytes):
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidUsername(name, f"may only contain {_USERNAME_CHARS}") from None
    else:
        text = name
    if not text:
        raise InvalidUsername(name, "is empty")
    if len(text) > USERNAME_MAX_LENGTH:
        raise InvalidUsername(name, f"is longer than {USERNAME_MAX_LENGTH} characters")
    # Check ASCII before lower(): some non-ASCII letters lower-case to ASCII
    # (KELVIN SIGN becomes "k").
    lowered = text.lower() if text.isascii() else text
    if lowered[0] in ".-":
        raise InvalidUsername(name, "must not start with '.' or '-'")
    if not _USERNAME_RE.fullmatch(lowered):
        raise InvalidUsername(name, f"may only contain {_USERNAME_CHARS}")
    return lowered


def utc_today() -> datetime.date:
    """Returns today's date in UTC, the day :meth:`Account.expired` expects."""
    return datetime.datetime.now(datetime.UTC).date()


@dataclass(frozen=True)
class Account:
    """One line of the password file.

    Attributes:
        name: The user name, in lower case.
        password_hash: ``{SCHEME}hash``, e.g. ``{ARGON2ID}$argon2id$...``.
        uid: Numeric user id, or None if the field is empty.
        gid: Numeric group id, or None if the field is empty.
        gecos: Free text (the owner's name).
        home: Home directory, or "".
        shell: Shell, or "".
        disuser: The account is disabled (VMS DISUSER).
        dismail: The account may not read mail (VMS DISMAIL).
        expires: First day (UTC) on which the account is refused, or None.
        extra: The other extra fields, in file order; the value is None for a
            bare key.
    """

    name: str
    password_hash: str
    uid: int | None = None
    gid: int | None = None
    gecos: str = ""
    home: str = ""
    shell: str = ""
    disuser: bool = False
    dismail: bool = False
    expires: datetime.date | None = None
    extra: tuple[tuple[str, str | None], ...] = ()

    def expired(self, today: datetime.date) -> bool:
        """Tells whether the account has expired.

        Args:
            today: The current date in UTC (see :func:`utc_today`).

        Returns:
            True on and after the ``expires`` date: an account with
            ``expires=2026-12-01`` can log in through 2026-11-30 and is
            refused from 2026-12-01 00:00 UTC on.
        """
        return self.expires is not None and today >= self.expires


# --- Parsing ----------------------------------------------------------------


def parse_passwd(text: str, source: str = "passwd") -> dict[str, Account]:
    """Parses the contents of a password file.

    Args:
        text: The file's contents.
        source: The file's name, for error messages.

    Returns:
        The accounts by (lower-case) name, in file order.

    Raises:
        PasswdError: A line is malformed, or a user appears twice
            (case-insensitively).
    """
    _lines, index = _parse_lines(text, source)
    return {name: account for name, (_line, account) in index.items()}


def _split_lines(text: str) -> list[str]:
    # Split on "\n" only: str.splitlines() would also split on characters
    # such as U+2028 that may legitimately appear in a GECOS field.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _is_comment(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _parse_lines(text: str, source: str) -> tuple[list[str], dict[str, tuple[int, Account]]]:
    """Returns the raw lines and, by name, each account with its line index."""
    lines = _split_lines(text)
    index: dict[str, tuple[int, Account]] = {}
    for i, raw in enumerate(lines):
        if _is_comment(raw):
            continue
        where = f"{source}:{i + 1}"
        account = _parse_account(raw.removesuffix("\r"), where)
        if account.name in index:
            first = index[account.name][0] + 1
            raise PasswdError(f"{where}: duplicate user {account.name!r} (see line {first})")
        index[account.name] = (i, account)
    return lines, index


def _parse_account(line: str, where: str) -> Account:
    # Error messages quote no field values: if a line is misaligned (say, a
    # PLAIN password containing ":"), any field may hold part of a secret.
    fields = line.split(":", 7)
    if len(fields) < 2:
        raise PasswdError(f"{where}: expected at least 'user:password'")
    fields += [""] * (8 - len(fields))
    name_field, password_hash, uid, gid, gecos, home, shell, extra_field = fields
    try:
        name = normalize_username(name_field)
    except InvalidUsername as e:
        raise PasswdError(f"{where}: invalid user name: {e.reason}") from None

    disuser = dismail = False
    expires: datetime.date | None = None
    extra: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for token in extra_field.split():
        key, equals, value = token.partition("=")
        if not key:
            raise PasswdError(f"{where}: extra field without a name")
        flag = key.lower()
        if flag not in _FLAGS:
            extra.append((key, value if equals else None))
            continue
        if flag in seen:
            raise PasswdError(f"{where}: duplicate extra field {flag!r}")
        seen.add(flag)
        if flag == _EXPIRES:
            expires = _parse_date(value, where)
        elif flag == _DISUSER:
            disuser = _parse_bool(value if equals else None, flag, where)
        else:
            dismail = _parse_bool(value if equals else None, flag, where)

    return Account(
        name=name,
        password_hash=password_hash,
        uid=_parse_id(uid, "uid", where),
        gid=_parse_id(gid, "gid", where),
        gecos=gecos,
        home=home,
        shell=shell,
        disuser=disuser,
        dismail=dismail,
        expires=expires,
        extra=tuple(extra),
    )


def _parse_id(value: str, what: str, where: str) -> int | None:
    if not value:
        return None
    # Not int(): it would also accept "+1", " 1", "1_0" and non-ASCII digits.
    if not _ID_RE.fullmatch(value) or int(value) > _MAX_ID:
        raise PasswdError(f"{where}: {what} is not a number from 0 to {_MAX_ID}")
    return int(value)


def _parse_date(value: str, where: str) -> datetime.date:
    if _DATE_RE.fullmatch(value):
        with contextlib.suppress(ValueError):
            return datetime.date.fromisoformat(value)
    raise PasswdError(f"{where}: expires is not a date of the form YYYY-MM-DD")


def _parse_bool(value: str | None, flag: str, where: str) -> bool:
    if value is None or value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise PasswdError(f"{where}: {flag} must be 'yes' or 'no'")


# --- Formatting -------------------------------------------------------------


def format_account(account: Account) -> str:
    """Formats an account as one line of the password file.

    Trailing empty fields are left out.  The flags are written first among
    the extra fields (``disuser``, ``dismail``, ``expires=``; false flags are
    omitted), followed by the other extra fields in order.

    Args:
        account: The account.

    Returns:
        The line, without a newline; :func:`parse_passwd` turns it back into
        an equal account.

    Raises:
        ValueError: A field cannot be represented: the name is not in
            canonical form, a field contains ``:`` or a line break, an id is
            out of range, or an extra field is ill-formed or duplicates a
            flag.
    """
    if normalize_username(account.name) != account.name:
        raise ValueError("account name is not in canonical (lower-case) form")
    for what, text in (
        ("password hash", account.password_hash),
        ("gecos", account.gecos),
        ("home", account.home),
        ("shell", account.shell),
    ):
        if ":" in text or "\n" in text or "\r" in text:
            raise ValueError(f"{what} must not contain ':' or a line break")

    tokens: list[str] = []
    if account.disuser:
        tokens.append(_DISUSER)
    if account.dismail:
        tokens.append(_DISMAIL)
    if account.expires is not None:
        tokens.append(f"{_EXPIRES}={account.expires.isoformat()}")
    for key, value in account.extra:
        if not key or "=" in key or _has_space(key) or key.lower() in _FLAGS:
            raise ValueError(f"ill-formed extra field name {key!r}")
        if value is None:
            tokens.append(key)
        elif _has_space(value):
            raise ValueError(f"extra field {key!r} has a value containing white space")
        else:
            tokens.append(f"{key}={value}")

    fields = [
        account.name,
        account.password_hash,
        _format_id(account.uid, "uid"),
        _format_id(account.gid, "gid"),
        account.gecos,
        account.home,
        account.shell,
        " ".join(tokens),
    ]
    while len(fields) > 2 and not fields[-1]:
        fields.pop()
    return ":".join(fields)


def _has_space(text: str) -> bool:
    # The same notion of white space as the str.split() the parser uses.
    return any(c.isspace() for c in text)


def _format_id(value: int | None, what: str) -> str:
    if value is None:
        return ""
    if not 0 <= value <= _MAX_ID:
        raise ValueError(f"{what} must be from 0 to {_MAX_ID}")
    return str(value)


# --- The file on disk -------------------------------------------------------

_CacheKey = tuple[int, int, int, int]


def _cache_key(st: os.stat_result) -> _CacheKey:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class PasswordFile:
    """The password file on disk, cached by (mtime_ns, size, inode) so a login costs one open and fstat.

    (The cache key also includes the device.  A file changed within the last
    two seconds is re-read on every use, because a further change might not
    alter its mtime.)  Safe to share between threads.  Writers (in this or other processes)
    serialize on an ``flock`` of the sibling file ``<path>.lock`` and replace
    the file atomically, so readers never see a half-written file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Creates the object; the file is read on first use.

        Args:
            path: Where the password file is (or will be).
        """
        self.path: Final = os.fspath(path)
        self.lock_path: Final = self.path + ".lock"
        self._mutex = threading.Lock()
        self._key: _CacheKey | None = None
        self._trusted = False
        self._accounts: dict[str, Account] = {}
        # The message of the PasswdError the cached contents raised, if any.
        self._error: str | None = None

    def lookup(self, name: str) -> Account | None:
        """Finds an account, re-reading the file if it has changed.

        Args:
            name: The user name, in any case.

        Returns:
            The account, or None if there is no such user, the name is not a
            valid user name, or the file does not exist.

        Raises:
            PasswdError: The file is malformed.
            OSError: The file exists but cannot be read.
        """
        try:
            key = normalize_username(name)
        except InvalidUsername:
            return None
        return self._current().get(key)

    def accounts(self) -> dict[str, Account]:
        """Returns all accounts by name, in file order (a fresh copy).

        Raises:
            PasswdError: The file is malformed.
            OSError: The file exists but cannot be read.
        """
        return dict(self._current())

    def update(
        self, name: str, change: Callable[[Account | None], Account | None]
    ) -> Account | None:
        """Changes, adds or removes one account atomically.

        The file is re-read under an exclusive lock, ``change`` is called with
        the account's current state (None if there is no such account), and
        its result replaces the account's line in place; a new account is
        appended and None removes the line.  Comments and all other lines are
        kept byte for byte.  Nothing is written if the result equals the
        current state.

        The new file is written to a temporary file in the same directory
        (mode 0600 for a new file, else the existing file's mode and, where
        permitted, owner), fsynced, renamed over the file, and the directory
        fsynced.

        Args:
            name: The user name, in any case.
            change: Computes the new state; called with the lock held, so it
                should be quick.  An exception from it aborts the update.

        Returns:
            The account's new state, as returned by ``change``.

        Raises:
            InvalidUsername: ``name`` is not a valid user name.
            ValueError: ``change`` renamed the account or returned an account
                :func:`format_account` cannot write.
            PasswdError: The existing file is malformed (it is left alone).
            OSError: The file could not be read or written.
        """
        key = normalize_username(name)
        with self._locked():
            # Through a symlink, replace the file it points to, not the link.
            target = os.path.realpath(self.path)
            text, old_stat = _read(target)
            lines, index = _parse_lines(text, self.path)
            entry = index.get(key)
            old = entry[1] if entry is not None else None
            new = change(old)
            if new is not None and new.name != key:
                raise ValueError(f"change() renamed account {key!r} to {new.name!r}")
            if new == old:
                return new
            if new is None:
                if entry is not None:  # always: new != old
                    del lines[entry[0]]
            elif entry is None:
                lines.append(format_account(new))
            else:
                lines[entry[0]] = format_account(new)
            _replace(target, "".join(line + "\n" for line in lines), old_stat)
            self._invalidate()
        return new

    # Internals.

    def _current(self) -> dict[str, Account]:
        # Without waiting (a login on the reactor thread), a thread re-reading the file
        # holds the mutex: wait for it in a thread too, not here.
        if not self._mutex.acquire(blocking=cached.waiting_allowed()):
            raise cached.NotCached(self.path)
        try:
            try:
                st = current_stat(self.path)
            except FileNotFoundError:
                self._store_locked(None, {}, error=None)
                return self._accounts
            if not (self._trusted and _cache_key(st) == self._key):
                if not cached.waiting_allowed():
                    raise cached.NotCached(self.path)  # to be read, in a thread
                self._reload_locked()
            if self._error is not None:
                # A fresh exception each time: re-raising one instance would
                # grow its traceback on every lookup.
                raise PasswdError(self._error)
            return self._accounts
        finally:
            self._mutex.release()

    def _reload_locked(self) -> None:
        text, st = _read(self.path)
        key = None if st is None else _cache_key(st)
        try:
            accounts = parse_passwd(text, self.path)
        except PasswdError as e:
            # Cached too, so that a broken file is not re-parsed on every
            # login; the next change to the file clears it.
            self._store_locked(key, {}, error=str(e))
        else:
            self._store_locked(key, accounts, error=None)

    def _invalidate(self) -> None:
        with self._mutex:
            self._trusted = False

    def _store_locked(
        self, key: _CacheKey | None, accounts: dict[str, Account], error: str | None
    ) -> None:
        self._key = key
        self._accounts = accounts
        self._error = error
        mtime_ns = key[2] if key is not None else 0
        self._trusted = key is not None and time.time_ns() - mtime_ns > _RACY_WINDOW_NS

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock() locks belong to the open file description, so threads of
        # this process that each open the lock file exclude each other too.
        # The lock file is never removed: removing it would let two writers
        # lock two different files.
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # also releases the lock


def _read(path: str) -> tuple[str, os.stat_result | None]:
    """Reads a file and stats what was read; a missing file is empty."""
    try:
        # newline="": keep "\r" so that CRLF lines are rewritten unchanged.
        with open(path, encoding=_ENCODING, errors=_ERRORS, newline="") as f:
            # fstat, not stat: the name may already point to a newer file.
            return f.read(), os.fstat(f.fileno())
    except FileNotFoundError:
        return "", None


def _replace(path: str, content: str, old_stat: os.stat_result | None) -> None:
    """Atomically and durably replaces a file's contents."""
    directory, base = os.path.split(path)
    fd, temp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)  # mode 0600
    try:
        with open(fd, "w", encoding=_ENCODING, errors=_ERRORS, newline="") as f:
            if old_stat is not None:
                own = os.fstat(fd)
                if (own.st_uid, own.st_gid) != (old_stat.st_uid, old_stat.st_gid):
                    # Only root may give a file away; otherwise the file
                    # becomes ours, as with any rewrite by rename.
                    with contextlib.suppress(PermissionError):
                        os.fchown(fd, old_stat.st_uid, old_stat.st_gid)
                os.fchmod(fd, stat.S_IMODE(old_stat.st_mode))
            f.write(content)
            f.flush()
            os.fsync(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
