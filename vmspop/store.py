"""The mail store on disk: per-user NEWMAIL and MAIL Maildirs, locks, delivery and the QUIT update.

Layout (see docs/admin.md)::

    MAILROOT/<user>/NEWMAIL/{cur,new,tmp}/   new mail is delivered into NEWMAIL/new/
    MAILROOT/<user>/MAIL/{cur,new,tmp}/      retrieved-but-not-deleted mail goes to MAIL/cur/
    MAILROOT/<user>/POP_SECRET.DAT           the APOP shared secret (vmspop.secretfile)
    MAILROOT/<user>/.vmspop.lock             the session lock (flock; never removed)
    MAILROOT/<user>/<FOLDER>/.vmspop-listing the folder's listing (vmspop.listing), a cache

Message file names follow the Maildir convention with Dovecot's size fields:
``<base>,S=<stored octets>,W=<wire octets>[:2,<flags>]``.  The base never changes
once vmspop has seen the message, and every move keeps it, so the UIDL, which is
derived from the base, survives sessions, restarts and the NEWMAIL-to-MAIL move.

Everything here blocks on the file system; the server calls it from threads.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import secrets
import socket
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vmspop import cached, relist
from vmspop.filesystems import current_stat, is_local
from vmspop.listing import Listing, build_listing
from vmspop.names import NAME, StoredMessage, arrival_of, make_uid, parse_name, size_field
from vmspop.wire import WireSize

__all__ = [
    "DeliveryError",
    "MAIL",
    "MailStore",
    "MailboxLocked",
    "NEWMAIL",
    "NoSuchMailbox",
    "SECRET_FILE",
    "UserLock",
]

NEWMAIL = "NEWMAIL"
MAIL = "MAIL"
SECRET_FILE = "POP_SECRET.DAT"
LOCK_FILE = ".vmspop.lock"
#: In each folder: its listing as last built, for other processes and restarts (a cache).
LISTING_FILE = ".vmspop-listing"
MAILDIR_SUBDIRS = ("cur", "new", "tmp")

#: Large enough that the per-block Python overhead is negligible, small enough to stay in cache.
READ_BLOCK = 256 * 1024
#: Listings kept for the next login, in messages over all users: about 85 octets each,
#: so at most 17 MB; the least recently used user's listing goes first.
LISTING_CACHE_MESSAGES = 200_000
#: A directory changed this recently may change again without its mtime moving
#: (timestamps advance by clock ticks, or whole seconds on some file systems).
MTIME_SETTLE_SECONDS = 2.0
#: Folders whose new/ and cur/ directories are this large (about 13,000 names on ext4)
#: are listed in a helper process (vmspop.relist): a second of Python in a pool thread
#: would hold the GIL and stall every session.
OUT_OF_PROCESS_DIRECTORY_BYTES = 1 << 20
#: Maildir's rule: a file in tmp/ untouched for 36 hours is an abandoned delivery.
STALE_TMP_SECONDS = 36 * 3600
#: A login looks for abandoned deliveries at most this often a user (in each process):
#: they must be 36 hours old to go, so an hour later changes little, and reading two
#: tmp/ directories was a third of the time it takes to open a small mailbox.
TMP_SWEEP_INTERVAL = 3600.0
#: Users (and their folders) whose directory paths are kept: building a Path costs a
#: few microseconds, and a login asks for them several times.
PATHS_KEPT = 4096


@dataclass(frozen=True)
class _CachedListing:
    stamp: list[list[int] | None]  # [inode, mtime] of new/ and cur/ when listed
    listing: Listing
    problems: list[str]


class MailboxLocked(Exception):
    """Another session holds the user's mailbox (RFC 1939: the maildrop is locked)."""


class NoSuchMailbox(Exception):
    """The user has no mail directory."""


class DeliveryError(Exception):
    """A delivery could not be completed; nothing was delivered to anyone.

    Attributes:
        temporary: True when retrying later may succeed (disk full, I/O error).
    """

    def __init__(self, message: str, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


def _is_link(path: Path) -> bool:
    if cached.waiting_allowed():
        return path.is_symlink()
    try:
        return stat.S_ISLNK(cached.stat_cached(path, follow_symlinks=False).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False  # as is_symlink() answers


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _new_private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class UserLock:
    """An exclusive lock on one user's mailbox, held for a whole POP3 session.

    It is an ``flock`` on ``.vmspop.lock`` in the user's directory, so the kernel
    drops it when the process dies: there are no stale locks after a crash.
    """

    def __init__(self, store: MailStore, user: str, fd: int) -> None:
        self._store = store
        self.user = user
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """True until :meth:`release` is called."""
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up; calling it again does nothing."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.close(fd)  # closing the descriptor drops the flock
        finally:
            self._store._forget_lock(self.user)


class MailStore:
    """All users' mail under one mail root.

    Args:
        root: the mail root directory (``--mail-root``).
        hostname: used in the names of delivered files, as Maildir asks.
    """

    def __init__(self, root: str | os.PathLike[str], hostname: str | None = None) -> None:
        self.root = Path(root)
        host = hostname or socket.gethostname()
        self.hostname = host
        # Maildir: '/' and ':' cannot appear in the host part; Dovecot also escapes ','.
        self._host = host.replace("/", r"\057").replace(":", r"\072").replace(",", r"\054")
        self._counter = itertools.count(1)
        self._locks_held: set[str] = set()
        self._locks_guard = threading.Lock()
        self._listings: OrderedDict[tuple[str, str], _CachedListing] = OrderedDict()
        self._listings_guard = threading.Lock()
        self._swept: dict[str, float] = {}  # user -> time.monotonic() of the last tmp/ sweep
        self._paths: dict[str | tuple[str, str], Path] = {}  # user (, folder) -> its directory

    # -- paths --------------------------------------------------------------------------

    def user_dir(self, user: str) -> Path:
        """The mail directory of ``user`` (already a normalised, validated name)."""
        path = self._paths.get(user)
        if path is None:
            if not user or "/" in user or user in (".", "..") or "\0" in user:
                raise ValueError("invalid user name")
            path = self._keep_path(user, self.root / user)
        return path

    def folder(self, user: str, folder: str) -> Path:
        """The Maildir of one folder (NEWMAIL or MAIL) of ``user``."""
        key = (user, folder)
        path = self._paths.get(key)
        return path if path is not None else self._keep_path(key, self.user_dir(user) / folder)

    def _keep_path(self, key: str | tuple[str, str], path: Path) -> Path:
        if len(self._paths) >= PATHS_KEPT:
            self._paths.clear()  # simpler than an LRU, and a rebuild costs little
        self._paths[key] = path
        return path

    def secret_path(self, user: str) -> Path:
        """Where ``user``'s APOP shared secret lives."""
        return self.user_dir(user) / SECRET_FILE

    def has_mailbox(self, user: str) -> bool:
        """True when ``user`` has a mail directory (not following a symlink)."""
        try:
            current_stat(self.user_dir(user), directory=True)
        except OSError:
            return False
        return True

    def create_mailbox(self, user: str) -> None:
        """Create the user's directory with its NEWMAIL and MAIL Maildirs (idempotent).

        Raises:
            FileExistsError: the user's path exists but is not a real directory
                (a file, or a symbolic link that could lead out of the mail root).
        """
        _make_dirs(self.root)
        top = self.user_dir(user)
        top.mkdir(mode=0o700, exist_ok=True)
        if not self.has_mailbox(user):
            raise FileExistsError(errno.EEXIST, "not a directory (or a symbolic link)", str(top))
        for folder in (NEWMAIL, MAIL):
            (top / folder).mkdir(mode=0o700, exist_ok=True)
            for sub in MAILDIR_SUBDIRS:
                (top / folder / sub).mkdir(mode=0o700, exist_ok=True)

    # -- locking ------------------------------------------------------------------------

    def lock(self, user: str) -> UserLock:
        """Take the session lock of ``user`` without waiting.

        Raises:
            MailboxLocked: another session (in this or another process) holds it.
            NoSuchMailbox: the user has no mail directory.
        """
        if not self.has_mailbox(user):
            raise NoSuchMailbox(user)
        with self._locks_guard:
            # flock is per open file, which already separates sessions in one process;
            # the set also covers file systems where flock is per process (NFS).
            if user in self._locks_held:
                raise MailboxLocked(user)
            self._locks_held.add(user)
        path = self.user_dir(user) / LOCK_FILE
        try:
            if cached.waiting_allowed():
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            else:
                fd = cached.open_cached(path, os.O_RDWR | os.O_NOFOLLOW)  # NotCached if new
        except (OSError, cached.NotCached) as e:
            self._forget_lock(user)
            if isinstance(e, FileNotFoundError) and not cached.waiting_allowed():
                raise cached.NotCached(path) from None  # to be created, in a thread
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            self._forget_lock(user)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MailboxLocked(user) from None
            raise
        return UserLock(self, user, fd)

    def _forget_lock(self, user: str) -> None:
        with self._locks_guard:
            self._locks_held.discard(user)

    # -- reading ------------------------------------------------------------------------

    def scan(self, user: str, folder: str, limit: int = 0,
             problems: list[str] | None = None) -> Listing:
        """The messages of one folder, oldest arrival first.

        Files whose names carry no size fields (delivered by another agent) are
        measured once and renamed to carry them, so later scans read no bodies.
        Entries that cannot be served (not a regular file, unreadable, a second
        file with the same base name) are left alone and described in ``problems``,
        so one bad file never hides the rest of the mailbox.

        The listing is kept (up to :data:`LISTING_CACHE_MESSAGES` messages for all
        users) and given again, without reading the directories, while the
        modification times of ``new/`` and ``cur/`` stay what they were: every
        delivery, move and removal changes them.  It is also saved in the folder
        (:data:`LISTING_FILE`), where other processes find it.

        Args:
            user: the mailbox owner.
            folder: NEWMAIL or MAIL.
            limit: keep only the oldest ``limit`` messages; 0 keeps all.
            problems: if given, receives one line per entry that was skipped.
        """
        maildir = self.folder(user, folder)
        skipped = problems if problems is not None else []
        if _is_link(maildir):
            # A link could lead anywhere outside the mail root; never follow it.
            skipped.append(f"skipped {maildir}: a symbolic link, not served")
            return Listing.empty(user, os.fsencode(maildir))
        started = time.time()
        stamp, subdirs, size, local = self._stamp(maildir, skipped)
        key = (user, folder)
        with self._listings_guard:
            kept = self._listings.get(key)
            if kept is not None and kept.stamp == stamp:
                self._listings.move_to_end(key)
                skipped.extend(kept.problems)
                kept.listing.local = local
                return kept.listing.head(limit)
        if not cached.waiting_allowed():
            raise cached.NotCached(maildir)  # to be loaded or listed, in a thread
        # Another process (a worker, another node, this one before a restart) may have
        # saved the listing of this very state of the folder.
        loaded = self._load_listing(user, maildir, maildir / LISTING_FILE, stamp)
        built_elsewhere = None
        if loaded is None and size >= OUT_OF_PROCESS_DIRECTORY_BYTES:
            built_elsewhere = maildir / "tmp" / f"{LISTING_FILE}.{os.getpid()}.{threading.get_ident()}"
            if relist.build_elsewhere(self.root, self.hostname, user, folder, built_elsewhere):
                # None if the folder changed while the helper listed it: then list it here.
                loaded = self._load_listing(user, maildir, built_elsewhere, stamp)
        if loaded is not None:
            listing, found = loaded
        else:
            found = []
            listing = self._build(user, maildir, subdirs, found)
        listing.local = local
        skipped.extend(found)
        # A change in the same timestamp tick as the listing could leave the mtime as it
        # was; only a listing of directories that had been still for a while is kept.
        settled = (started - MTIME_SETTLE_SECONDS) * 1e9
        if all(s is None or s[1] < settled for s in stamp):
            self._keep(key, _CachedListing(stamp, listing, found))
            if built_elsewhere is not None and loaded is not None:
                _rename_quietly(built_elsewhere, maildir / LISTING_FILE)
            elif loaded is None:
                self._save_listing(maildir, listing, stamp, found)
        if built_elsewhere is not None:
            _unlink_quietly(built_elsewhere)
        return listing.head(limit)

    def _stamp(self, maildir: Path,
               skipped: list[str]) -> tuple[list[list[int] | None], list[str], int, bool]:
        """The [inode, mtime] of new/ and cur/ (None where missing), the sub-directories
        that hold messages, the size of those directories (which grows with the
        number of names in them), and whether they are all on local file systems."""
        stamp: list[list[int] | None] = []  # JSON-ready: saved with the listing
        subdirs: list[str] = []
        size = 0
        local = True
        for sub in ("new", "cur"):
            try:
                st = current_stat(maildir / sub, directory=True)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise
                if not cached.waiting_allowed():
                    raise cached.NotCached(maildir / sub) from None  # unusual: in a thread
                if (maildir / sub).is_symlink():
                    skipped.append(f"skipped {maildir / sub}: a symbolic link, not served")
                stamp.append(None)
                continue
            stamp.append([st.st_ino, st.st_mtime_ns])
            subdirs.append(sub)
            size += st.st_size
            local = local and is_local(st.st_dev)
        return stamp, subdirs, size, local

    def _build(self, user: str, maildir: Path, subdirs: list[str], problems: list[str]) -> Listing:
        return build_listing(user, os.fsencode(maildir),
                             lambda directory, name: self._describe(user, Path(directory), name),
                             problems, tuple(subdirs))

    def save_built_listing(self, user: str, folder: str, output: Path) -> None:
        """List ``folder`` here and save it to ``output``, settled or not (for
        :mod:`vmspop.relist`, whose caller decides whether to keep it)."""
        maildir = self.folder(user, folder)
        problems: list[str] = []
        stamp, subdirs, _, _ = self._stamp(maildir, problems)
        listing = self._build(user, maildir, subdirs, problems)
        with open(output, "wb", opener=_new_private) as f:
            listing.save(f, stamp, problems)

    def _load_listing(self, user: str, maildir: Path, path: Path,
                      stamp: list[list[int] | None]) -> tuple[Listing, list[str]] | None:
        try:
            with open(path, "rb", opener=_no_follow) as f:
                return Listing.load(user, os.fsencode(maildir), f, stamp)
        except OSError:
            return None  # none saved yet, or unreadable: list the folder

    def _save_listing(self, maildir: Path, listing: Listing, stamp: list[list[int] | None],
                      problems: list[str]) -> None:
        # Written in tmp/ and renamed, so a reader never sees half a file, and what a
        # crash leaves there goes with Maildir's 36-hour rule; not fsync'ed: a listing
        # lost in a crash is only built again.
        partial = maildir / "tmp" / f"{LISTING_FILE}.{os.getpid()}.{threading.get_ident()}"
        try:
            with open(partial, "wb", opener=_new_private) as f:
                listing.save(f, stamp, problems)
            os.rename(partial, maildir / LISTING_FILE)
        except OSError:
            _unlink_quietly(partial)  # a full disk, say: the listing stays in memory

    def _keep(self, key: tuple[str, str], entry: _CachedListing) -> None:
        with self._listings_guard:
            self._listings.pop(key, None)
            self._listings[key] = entry
            total = sum(len(e.listing) for e in self._listings.values())
            while total > LISTING_CACHE_MESSAGES and len(self._listings) > 1:
                _, evicted = self._listings.popitem(last=False)
                total -= len(evicted.listing)

    def _describe(self, user: str, directory: Path, name: str) -> StoredMessage | None:
        parts = parse_name(name)
        if parts is None:
            return None
        base, fields, info = parts
        arrival = arrival_of(base)
        physical, wire = size_field(fields.get("S")), size_field(fields.get("W"))
        if arrival is None or physical is None or wire is None:
            # Measure once and cache the result in the name (and, for a name with no
            # leading timestamp, the arrival time too), so the UIDL stays stable.
            path = directory / name
            physical, wire = measure(path)
            if arrival is None:
                mtime = path.stat().st_mtime
                base = f"{int(mtime)}.M{int((mtime % 1) * 1e6):06d}.{base}"
                arrival = arrival_of(base)
                assert arrival is not None
            # Keep any other ",X=" fields the delivering agent wrote.
            others = "".join(f",{k}={v}" for k, v in fields.items() if k not in ("S", "W"))
            new_name = (f"{base}{others},S={physical},W={wire}"
                        + (f":{info}" if info is not None else ""))
            _rename_new(path, directory / new_name)
            name = new_name
        return StoredMessage(str(directory / name), base, arrival, physical, wire,
                             make_uid(user, arrival, base))

    # -- the QUIT update ----------------------------------------------------------------

    def remove(self, message: StoredMessage) -> bool:
        """Delete a message; False if it was already gone."""
        try:
            os.unlink(message.path)
        except FileNotFoundError:
            return False
        return True

    def move_to_mail(self, user: str, message: StoredMessage) -> bool:
        """Move a retrieved message from NEWMAIL to MAIL/cur as seen, in one rename.

        Returns False if the file had disappeared.  The base name is kept, so the
        message keeps its UIDL.
        """
        source = Path(message.path)
        info = NAME.match(source.name)
        flags = ""
        if info is not None and info["info"] and info["info"].startswith("2,"):
            flags = info["info"][2:]
        if "S" not in flags:
            flags = "".join(sorted(flags + "S"))
        head = source.name.split(":", 1)[0]
        target = self.folder(user, MAIL) / "cur" / f"{head}:2,{flags}"
        _make_dirs(target.parent)
        try:
            _rename_new(source, target)
        except FileNotFoundError:
            return False
        return True

    def move_new_to_mail(self, user: str, problems: list[str] | None = None) -> int:
        """Move every NEWMAIL message into MAIL (``--use-mail-folder``), keeping names.

        A message whose name is already taken in MAIL stays in NEWMAIL and is
        described in ``problems``.
        """
        if not cached.waiting_allowed():
            raise cached.NotCached(user)  # directories to read, files to move: in a thread
        moved = 0
        for sub in ("new", "cur"):
            source = self.folder(user, NEWMAIL) / sub
            target = self.folder(user, MAIL) / sub
            try:
                names = [n for n in os.listdir(source) if not n.startswith(".")]
            except FileNotFoundError:
                continue
            _make_dirs(target)
            for name in names:
                try:
                    _rename_new(source / name, target / name)
                    moved += 1
                except FileNotFoundError:
                    pass  # gone meanwhile
                except FileExistsError:
                    if problems is not None:
                        problems.append(f"{source / name}: left in {NEWMAIL}, "
                                        f"{target / name} already exists")
        if moved:
            self.sync_folders(user)
        return moved

    def sync_folders(self, user: str) -> None:
        """Make renames and unlinks in both folders durable."""
        for folder in (NEWMAIL, MAIL):
            for sub in ("new", "cur"):
                path = self.folder(user, folder) / sub
                if path.is_dir():
                    _fsync_dir(path)

    # -- delivery -----------------------------------------------------------------------

    def deliver(self, users: Iterable[str], source: BinaryIO | Iterable[bytes], *,
                arrival: float | None = None) -> list[Path]:
        """Deliver one message into the NEWMAIL of every user, all or nothing.

        The message is written (with LF line ends, the Unix Maildir convention) into
        each ``NEWMAIL/tmp/``, fsync'ed, and only then renamed into ``NEWMAIL/new/``,
        so a reader never sees a partial message.  If any write fails, every file
        written so far is removed and nothing is delivered to anyone.

        Args:
            users: the recipients (normalised names with mail directories).
            source: a binary file or an iterable of byte blocks.
            arrival: the arrival time (seconds since the epoch, UTC, not before
                1970) to record in the file name, hence in the UIDL and the
                folder order; None means now.  ``vmspop import`` passes the
                VMS arrival date so imported mail keeps its place and its date.

        Returns:
            The delivered files, one per user.

        Raises:
            NoSuchMailbox: a recipient has no mail directory (checked before writing).
            DeliveryError: the message could not be stored; nothing was delivered.
            ValueError: ``arrival`` is before 1970: a name cannot record it.
        """
        if arrival is not None and not arrival >= 0:
            raise ValueError(f"arrival time {arrival!r} is before 1970")
        recipients = list(dict.fromkeys(users))
        for user in recipients:
            if not self.has_mailbox(user):
                raise NoSuchMailbox(user)
        blocks = _blocks(source)
        now = time.time() if arrival is None else arrival
        # Rounded, not truncated, to the microsecond the name records: 709506428.08
        # is 709506428.0799999... in binary and would otherwise be filed as .079999.
        seconds, micros = divmod(round(now * 1_000_000), 1_000_000)
        base = (f"{seconds}.M{micros:06d}P{os.getpid()}"
                f"Q{next(self._counter)}R{secrets.token_hex(4)}.{self._host}")
        pending: list[tuple[Path, int]] = []
        delivered: list[Path] = []
        try:
            for user in recipients:
                tmp_dir = self.folder(user, NEWMAIL) / "tmp"
                _make_dirs(tmp_dir)
                _make_dirs(self.folder(user, NEWMAIL) / "new")
                path = tmp_dir / base
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                pending.append((path, fd))
            counter = WireSize()
            lf = _LineFeeds()
            for block in itertools.chain(blocks, [None]):
                data = lf.feed(block) if block is not None else lf.finish()
                if not data:
                    continue
                counter.feed(data)
                for _, fd in pending:
                    _write_all(fd, data)
            for _, fd in pending:
                os.fsync(fd)
            name = f"{base},S={counter.physical},W={counter.size}"
            for (path, _), user in zip(pending, recipients):
                target = self.folder(user, NEWMAIL) / "new" / name
                os.rename(path, target)
                delivered.append(target)
            for user in recipients:
                _fsync_dir(self.folder(user, NEWMAIL) / "new")
        except BaseException as e:
            # Whatever went wrong (also a source that raises), leave nothing behind.
            for path, _ in pending:
                _unlink_quietly(path)
            for path in delivered:
                _unlink_quietly(path)
            if not isinstance(e, OSError):
                raise
            temporary = e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS)
            raise DeliveryError(f"cannot store the message: {e.strerror or e}", temporary) from e
        finally:
            for _, fd in pending:
                os.close(fd)
        return delivered

    def stale_tmp_files(self, user: str, now: float | None = None) -> Iterator[Path]:
        """Abandoned deliveries: files in a ``tmp/`` older than Maildir's 36 hours."""
        now = time.time() if now is None else now
        for folder in (NEWMAIL, MAIL):
            tmp = self.folder(user, folder) / "tmp"
            try:
                entries = list(os.scandir(tmp))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS:
                        yield Path(entry.path)
                except FileNotFoundError:
                    continue


    def sweep_tmp(self, user: str) -> int:
        """:meth:`remove_stale_tmp_files`, unless this process did so for ``user`` less than
        :data:`TMP_SWEEP_INTERVAL` ago (then 0)."""
        now = time.monotonic()
        last = self._swept.get(user)
        if last is not None and now - last < TMP_SWEEP_INTERVAL:
            return 0
        if not cached.waiting_allowed():
            raise cached.NotCached(self.user_dir(user))
        removed = self.remove_stale_tmp_files(user)
        self._swept[user] = now  # only after a sweep that did not fail
        return removed

    def remove_stale_tmp_files(self, user: str, now: float | None = None) -> int:
        """Delete abandoned deliveries (Maildir's rule: only ``tmp/`` files over 36 hours old).

        A delivery in progress is never that old, so this cannot race with one.
        Returns how many files were removed.
        """
        removed = 0
        for path in list(self.stale_tmp_files(user, now)):
            if path.is_file() and not path.is_symlink():
                _unlink_quietly(path)
                removed += 1
        return removed


def measure(path: str | os.PathLike[str]) -> tuple[int, int]:
    """The stored and wire octet counts of a message file, read once."""
    counter = WireSize()
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            counter.feed(block)
    return counter.physical, counter.size


def _rename_new(source: Path, target: Path) -> None:
    """Rename without ever replacing an existing file (a replaced file is a lost message).

    Raises:
        FileExistsError: ``target`` exists; ``source`` is left where it was.
    """
    # The check and the rename are not atomic, but every writer of these names holds
    # the user's session lock, and deliveries only ever create new, unique names.
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "target exists", str(target))
    os.rename(source, target)


def _make_dirs(path: Path) -> None:
    """Create ``path`` and missing parents with mode 0700 (mkdir's parents ignore mode)."""
    if not path.is_dir():
        _make_dirs(path.parent)
        path.mkdir(mode=0o700, exist_ok=True)


def _blocks(source: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if read is None:
        yield from source  # type: ignore[misc]
        return
    while block := read(READ_BLOCK):
        yield block


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _rename_quietly(source: Path, target: Path) -> None:
    try:
        os.rename(source, target)
    except OSError:
        pass  # a cache: the next process lists the folder again


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class _LineFeeds:
    """Stateful CRLF-to-LF conversion for delivery, exact across block boundaries."""

    def __init__(self) -> None:
        self._cr = False

    def feed(self, block: bytes) -> bytes:
        if self._cr:
            block = b"\r" + block
            self._cr = False
        if block.endswith(b"\r"):
            block = block[:-1]
            self._cr = True
        return block.replace(b"\r\n", b"\n")

    def finish(self) -> bytes:
        cr, self._cr = self._cr, False
        return b"\r" if cr else b""
