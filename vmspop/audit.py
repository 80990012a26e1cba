"""``vmspop check``: an audit of the mail store and the password file.

It reports what the server would refuse or could be fooled by (unsafe
``POP_SECRET.DAT`` files, directories others own or can write, symbolic links,
stray files), what is inconsistent (size fields, accounts without mail
directories and the reverse) and abandoned deliveries.  It only stats message
files; it never reads a message body.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vmspop import secretfile
from vmspop.passwd import Account, InvalidUsername, PasswdError, PasswordFile, normalize_username
from vmspop.store import (
    LOCK_FILE,
    MAIL,
    MAILDIR_SUBDIRS,
    NEWMAIL,
    SECRET_FILE,
    STALE_TMP_SECONDS,
    MailStore,
)
from vmspop.names import parse_name

__all__ = ["Audit", "Finding", "audit"]

PROG: Final = "vmspop"
# Left behind by secretfile.write_secret if it is interrupted between mkstemp and rename.
_SECRET_TEMP_PREFIX: Final = ".POP_SECRET."


@dataclass(frozen=True)
class Finding:
    """One problem found by :func:`audit`.

    Attributes:
        path: the file or directory concerned.
        problem: what is wrong with it, and where useful what to do.
    """

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{PROG} check: {_show(self.path)}: {self.problem}"


def _show(path: Path | str) -> str:
    # A file name may hold a newline or terminal escapes; keep one finding per line.
    text = os.fspath(path)
    return text if text.isprintable() else ascii(text)[1:-1]


def _kind(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "special file"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


@dataclass
class Audit:
    """One audit of the store: what was found and how much was looked at.

    Attributes:
        mail_root: the mail root.
        passwd_path: the password file.
        now: the current time, for the 36-hour rule.
        findings: the problems found, in a stable order.
        users: user directories examined.
        messages: message files examined (by stat only).
    """

    mail_root: Path
    passwd_path: Path
    now: float
    findings: list[Finding] = dataclasses.field(default_factory=list)
    users: int = 0
    messages: int = 0

    def report(self, path: Path, problem: str) -> None:
        """Record one problem."""
        self.findings.append(Finding(path, problem))

    def real_dir(self, path: Path, missing: str | None = "missing") -> bool:
        """True if ``path`` is a directory, not through a link; else report why not."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            if missing is not None:
                self.report(path, missing)
            return False
        except OSError as e:
            self.report(path, f"cannot be examined: {e.strerror}")
            return False
        if stat.S_ISLNK(st.st_mode):
            self.report(path, "is a symbolic link, not a directory (vmspop does not follow it)")
            return False
        if not stat.S_ISDIR(st.st_mode):
            self.report(path, f"is a {_kind(st)}, not a directory")
            return False
        return True

    def accounts(self) -> dict[str, Account] | None:
        """The password file's accounts; None (after reporting) if they cannot be known."""
        try:
            st = self.passwd_path.stat()
        except FileNotFoundError:
            self.report(self.passwd_path, "password file does not exist")
            return None
        except OSError as e:
            self.report(self.passwd_path, f"password file cannot be examined: {e.strerror}")
            return None
        if not stat.S_ISREG(st.st_mode):
            self.report(self.passwd_path, "password file is not a regular file")
            return None
        try:
            return PasswordFile(self.passwd_path).accounts()
        except PasswdError as e:
            # The message names file and line and never quotes a hash.
            self.report(self.passwd_path, f"password file is malformed: {e}")
        except OSError as e:
            self.report(self.passwd_path, f"password file cannot be read: {e.strerror}")
        return None

    def run(self) -> None:
        """Audit the password file and every entry of the mail root."""
        accounts = self.accounts()
        try:
            root_stat = self.mail_root.stat()  # a symlinked mail root is an admin's choice
        except FileNotFoundError:
            self.report(self.mail_root, "mail root does not exist")
            return
        except OSError as e:
            self.report(self.mail_root, f"mail root cannot be examined: {e.strerror}")
            return
        if not stat.S_ISDIR(root_stat.st_mode):
            self.report(self.mail_root, "mail root is not a directory")
            return
        store = MailStore(self.mail_root)
        entries = self.listing(self.mail_root, "mail root cannot be read")
        if entries is None:
            return
        # The password file (and its lock) may live inside the mail root.
        own_files = {os.path.realpath(self.passwd_path),
                     os.path.realpath(f"{self.passwd_path}.lock")}
        seen: set[str] = set()
        for entry in entries:
            path = Path(entry.path)
            if os.path.realpath(path) in own_files or _is_passwd_temp(path, self.passwd_path):
                continue
            try:
                name = normalize_username(entry.name)
            except InvalidUsername as e:
                self.report(path, f"not a mail directory: the name is not a valid user name "
                                  f"({e.reason})")
                continue
            if name != entry.name:
                self.report(path, f"not a mail directory: user directories are named in lower "
                                  f"case ({name})")
                continue
            seen.add(name)
            owners: set[int] | None = None
            if accounts is not None:
                account = accounts.get(name)
                if account is None:
                    st = _lstat(path)
                    if st is not None and not stat.S_ISDIR(st.st_mode):
                        self.report(path, f"stray {_kind(st)} in the mail root")
                        continue
                    self.report(path, f"user directory with no account in {_show(self.passwd_path)}")
                owners = {root_stat.st_uid}
                if account is not None and account.uid is not None:
                    owners.add(account.uid)
            self.user(store, name, path, owners)
        if accounts is not None:
            for name in accounts:
                if name not in seen:
                    self.report(self.mail_root / name, f"user {name} has no mail directory")

    def user(self, store: MailStore, name: str, path: Path, owners: set[int] | None) -> None:
        """Audit one user directory; ``owners`` are the uids a secret may have (None: unknown)."""
        if not self.real_dir(path):
            return
        self.users += 1
        self.ownership(path, owners)
        entries = self.listing(path)
        if entries is None:
            return
        for entry in entries:
            child = Path(entry.path)
            if entry.name in (NEWMAIL, MAIL):
                continue  # below, in a fixed order
            if entry.name == SECRET_FILE:
                self.secret(child, owners)
            elif entry.name == LOCK_FILE:
                st = _lstat(child)
                if st is not None and not stat.S_ISREG(st.st_mode):
                    self.report(child, f"is a {_kind(st)}, not a regular file (the session "
                                       "lock cannot be taken)")
            elif entry.name.startswith(_SECRET_TEMP_PREFIX):
                # A write in progress is normal; an old one was interrupted.
                st = _lstat(child)
                if st is not None and self.now - st.st_mtime > STALE_TMP_SECONDS:
                    self.report(child, "leftover of an interrupted 'vmspop secret', older than "
                                       "36 hours (it may hold a secret; delete it)")
            else:
                st = _lstat(child)
                kind = _kind(st) if st is not None else "file"
                self.report(child, f"stray {kind} (a mail directory holds only {NEWMAIL}, "
                                   f"{MAIL}, {SECRET_FILE} and {LOCK_FILE})")
        tmp_dirs: set[Path] = set()
        for folder in (NEWMAIL, MAIL):
            maildir = path / folder
            if not self.real_dir(maildir):
                continue
            self.ownership(maildir, owners)
            for sub in MAILDIR_SUBDIRS:
                if not self.real_dir(maildir / sub):
                    continue
                self.ownership(maildir / sub, owners)
                if sub == "tmp":
                    tmp_dirs.add(maildir / sub)
                else:
                    self.messages_in(maildir / sub)
        leftovers = store.stale_tmp_files(name, self.now)
        while True:
            try:
                leftover = next(leftovers)
            except StopIteration:
                break
            except OSError:
                # stale_tmp_files only tolerates a missing tmp/; a folder or tmp/ that
                # is a file (already reported above) ends the scan.
                break
            if leftover.parent in tmp_dirs:  # not through a symlinked tmp/ (reported above)
                self.report(leftover, "leftover of an interrupted delivery, older than 36 hours "
                                      "(safe to delete)")

    def ownership(self, path: Path, owners: set[int] | None) -> None:
        """Report a directory someone other than the user or the store owner could fill."""
        st = _lstat(path)
        if st is None:
            return
        if owners is not None and st.st_uid not in owners:
            self.report(path, f"owned by uid {st.st_uid}, neither the user's uid nor the store owner")
        if st.st_mode & 0o022:
            self.report(path, f"mode {stat.S_IMODE(st.st_mode):04o} lets group or others create "
                              "files here (use 0700)")

    def listing(self, directory: Path, unreadable: str = "cannot be read") -> list[os.DirEntry] | None:
        """The entries of ``directory`` sorted by name (a stable report), or None when it
        cannot be read, which is reported."""
        try:
            return sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            self.report(directory, f"{unreadable}: {e.strerror}")
            return None

    def messages_in(self, directory: Path) -> None:
        """Audit the message files of one ``new/`` or ``cur/``, by stat only."""
        entries = self.listing(directory)
        if entries is None:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue  # Maildir readers ignore dot files; so does the server
            path = Path(entry.path)
            try:
                st = entry.stat(follow_symlinks=False)  # stat only: bodies are never read
            except FileNotFoundError:
                continue  # retrieved and deleted meanwhile
            if not stat.S_ISREG(st.st_mode):
                self.report(path, f"is a {_kind(st)}, not a message file")
                continue
            self.messages += 1
            parsed = parse_name(entry.name)
            if parsed is None:
                continue
            size = parsed[1].get("S")
            if size is not None and size.isdigit() and int(size) != st.st_size:
                self.report(path, f"the name says S={size} octets but the file has "
                                  f"{st.st_size} (changed after delivery?)")

    def secret(self, path: Path, owners: set[int] | None) -> None:
        """Audit a ``POP_SECRET.DAT`` as the server would judge it, reporting every fault."""
        st = _lstat(path)
        if st is None:
            return
        if stat.S_ISLNK(st.st_mode):
            self.report(path, "is a symbolic link; the server ignores it, so APOP fails")
            return
        if not stat.S_ISREG(st.st_mode):
            self.report(path, f"is a {_kind(st)}, not a regular file; APOP fails")
            return
        if st.st_mode & 0o077:
            self.report(path, f"mode {stat.S_IMODE(st.st_mode):04o} lets group or others access "
                              "it; the server ignores it (chmod 600)")
        if owners is not None and st.st_uid not in owners:
            self.report(path, f"owned by uid {st.st_uid}, neither the user's uid nor the store "
                              "owner; the server ignores it")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                         | os.O_CLOEXEC)
        except OSError as e:
            self.report(path, f"cannot be read: {e.strerror}")
            return
        try:
            raw = os.read(fd, secretfile.MAX_SECRET_OCTETS + 1)
        finally:
            os.close(fd)
        try:
            secretfile.check_secret_text(raw)
            return
        except secretfile.SecretRejected as e:
            reason = str(e)  # says what is wrong, never the secret
        self.report(path, f"invalid secret: {reason}; the server ignores it")


def _is_passwd_temp(path: Path, passwd_path: Path) -> bool:
    # PasswordFile writes ".<name>.XXXX.tmp" next to the file.
    return (path.parent.resolve() == passwd_path.parent.resolve()
            and path.name.startswith(f".{passwd_path.name}.") and path.name.endswith(".tmp"))


def audit(mail_root: Path, passwd_path: Path, now: float | None = None) -> Audit:
    """Audit the store and the password file, reading no message bodies.

    Args:
        mail_root: the mail root.
        passwd_path: the password file.
        now: the current time, for the 36-hour rule (default: now).

    Returns:
        The finished audit; its ``findings`` are empty when the store is clean.
    """
    run = Audit(mail_root, passwd_path, time.time() if now is None else now)
    run.run()
    return run
