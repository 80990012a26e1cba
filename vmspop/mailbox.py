"""One POP3 session's view of a user's folder, with the OpenVMS update rules.

The session works on a snapshot taken at login: messages numbered 1..n oldest first,
marks for DELE and RETR, and nothing touched on disk until QUIT.  At QUIT
(:meth:`VMSMailbox.sync`) deleted messages are removed and, in the default mode,
messages retrieved with RETR but not deleted move from NEWMAIL to MAIL.  Every
change is a single unlink or rename, so a crash in the middle leaves each message
in exactly one place.  A change that fails (disk full, I/O error) leaves its message
where it was; the others are still made, and :class:`UpdateIncomplete` says what failed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from twisted.internet.defer import Deferred, succeed
from twisted.mail.pop3 import IMailbox
from zope.interface import implementer

from vmspop.listing import Listing
from vmspop.names import StoredMessage
from vmspop.store import MAIL, NEWMAIL, MailStore, UserLock
from vmspop.threads import ThreadRunner

__all__ = ["UpdateIncomplete", "UpdateResult", "VMSMailbox", "BadMessageNumber"]


class BadMessageNumber(ValueError):
    """A message number that does not name a live message; ``str()`` is the client text."""


@dataclass(frozen=True)
class UpdateResult:
    """What a QUIT update did.

    Attributes:
        deleted: messages removed.
        moved: messages moved from NEWMAIL to MAIL.
        missing: marked messages that had vanished from disk meanwhile.
    """

    deleted: int
    moved: int
    missing: int


class UpdateIncomplete(Exception):
    """A QUIT update that could not make every change (the server's fault, not the client's).

    Each change that failed left its message where it was, so nothing is lost or
    duplicated; the next session shows those messages again.

    Attributes:
        result: the changes that were made.
        not_removed: deleted messages whose file could not be removed.
        not_moved: retrieved messages that could not be moved to MAIL.
        cause: the first error met, for the operator's one log line.
    """

    def __init__(self, result: UpdateResult, not_removed: int, not_moved: int, cause: OSError) -> None:
        super().__init__(str(cause))
        self.result = result
        self.not_removed = not_removed
        self.not_moved = not_moved
        self.cause = cause

    def reply(self) -> str:
        """The client's -ERR text (RFC 1939's "some deleted messages not removed", made exact)."""
        parts = []
        if self.not_removed:
            parts.append(f"{_messages(self.not_removed, 'deleted')} not removed")
        if self.not_moved:
            parts.append(f"{_messages(self.not_moved, 'retrieved')} not moved to MAIL")
        if not parts:
            return "mailbox changes made but not confirmed on disk (server storage error)"
        return ", ".join(parts) + " (server storage error); shown again at your next login"

    def why(self) -> str:
        """The cause as the operator reads it: the error and the file it hit."""
        e = self.cause
        path = f" ({os.fsdecode(e.filename)})" if e.filename is not None else ""
        return f"{e.strerror or e}{path}"

    def summary(self) -> str:
        """What failed, for the operator's log line."""
        r = self.result
        if not (self.not_removed or self.not_moved):
            return f"all {r.deleted} deletions and {r.moved} moves to MAIL made, but not synced to disk"
        return (f"{self.not_removed} of {r.deleted + self.not_removed} deletions and "
                f"{self.not_moved} of {r.moved + self.not_moved} moves to MAIL not made "
                f"(those messages left where they were)")


def _messages(count: int, kind: str) -> str:
    return f"{count} {kind} message{'' if count == 1 else 's'}"


@implementer(IMailbox)
class VMSMailbox:
    """The maildrop of one session: a snapshot plus deletion and retrieval marks.

    Indices are 0-based, as in Twisted's ``IMailbox``.

    Args:
        store: the mail store.
        user: the mailbox owner (normalised name).
        folder: the folder served, NEWMAIL or MAIL.
        messages: the snapshot, oldest first.
        lock: the session lock, released by :meth:`logout`.
        run_in_thread: how blocking file work is taken off the reactor thread.
        move_retrieved: move retrieved-but-not-deleted mail to MAIL at QUIT.
        id_server: with ``--send-id-headers``, the ``X-POP3-Server:`` value; each
            message then starts with that header and ``X-POP3-ID: <uidl>``.
    """

    def __init__(self, store: MailStore, user: str, folder: str, messages: Listing,
                 lock: UserLock, run_in_thread: ThreadRunner, move_retrieved: bool,
                 id_server: str | None = None) -> None:
        self.store = store
        self.user = user
        self.folder = folder
        self.messages = messages
        self._lock = lock
        self._run = run_in_thread
        self._move_retrieved = move_retrieved and folder == NEWMAIL
        self.id_server = id_server
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()
        #: Entries of the folder that could not be served, for the operator's log.
        self.problems: list[str] = []
        # What the ID headers add to every message: the same for all, since every
        # UIDL of one user has the same length.
        self._extra = self._wire_length(self.prefix(0)) if id_server and messages else 0
        # Kept up to date by DELE and RSET: STAT and the login reply cost nothing per message.
        self._all_octets = messages.total_wire + len(messages) * self._extra
        self._live_octets = self._all_octets

    # -- the session's questions ----------------------------------------------------------

    def check(self, index: int) -> int:
        """``index``, if it names a live (not deleted) message.

        Raises:
            BadMessageNumber: out of range or marked deleted; the text names the problem.
        """
        if not 0 <= index < len(self.messages):
            count = len(self.messages)
            raise BadMessageNumber(f"no such message, only {count} message{'s' if count != 1 else ''} in maildrop")
        if index in self.deleted:
            raise BadMessageNumber(f"message {index + 1} already deleted")
        return index

    def prefix(self, index: int) -> bytes:
        """Octets sent before stored message ``index``: the ID headers, if enabled (LF ends)."""
        if self.id_server is None:
            return b""
        return f"X-POP3-Server: {self.id_server}\nX-POP3-ID: {self.uid_at(index)}\n".encode("ascii")

    @staticmethod
    def _wire_length(stored: bytes) -> int:
        return len(stored) + stored.count(b"\n")

    def size_at(self, index: int) -> int:
        """Message ``index``'s size on the wire (CRLF line ends, before byte-stuffing)."""
        return self.messages.wire[index] + self._extra

    def uid_at(self, index: int) -> str:
        """The UIDL of message ``index``."""
        return self.messages.uid(index)

    def live_indices(self, after: int = -1) -> Iterator[int]:
        """The index of every message not marked deleted (after index ``after``), in order."""
        deleted = self.deleted
        return (i for i in range(after + 1, len(self.messages)) if i not in deleted)

    def next_live(self, index: int) -> int | None:
        """The first message after ``index`` not marked deleted, if there is one."""
        return next(self.live_indices(index), None)

    def following(self, index: int, octets: int, count: int) -> list[int]:
        """Up to ``count`` live messages right after ``index`` whose sizes add up to at
        most ``octets`` (what a client downloading in order asks for next)."""
        out: list[int] = []
        for i in self.live_indices(index):
            if len(out) == count:
                break
            octets -= self.size_at(i)
            if octets < 0:
                break
            out.append(i)
        return out

    def totals(self) -> tuple[int, int]:
        """Number and wire octets of the messages not marked deleted (STAT)."""
        return len(self.messages) - len(self.deleted), self._live_octets

    def mark_retrieved(self, index: int) -> None:
        """Record a RETR, which drives the NEWMAIL-to-MAIL move at QUIT."""
        self.retrieved.add(index)

    # -- twisted.mail.pop3.IMailbox -------------------------------------------------------

    def listMessages(self, index: int | None = None) -> list[int] | int:
        """Wire sizes; a deleted message counts 0 (the IMailbox contract)."""
        if index is None:
            return [0 if i in self.deleted else self.size_at(i) for i in range(len(self.messages))]
        return self.size_at(self.check(index))

    def getMessage(self, index: int) -> IO[bytes]:
        """The stored file, opened in binary mode; the caller must close it."""
        return open(self.messages.path(self.check(index)), "rb")

    def getUidl(self, index: int) -> bytes:
        """The message's UIDL."""
        return self.uid_at(self.check(index)).encode("ascii")

    def deleteMessage(self, index: int) -> None:
        """Mark a message deleted; it disappears at QUIT, and from listings now."""
        self.check(index)
        self.deleted.add(index)
        self._live_octets -= self.size_at(index)

    def undeleteMessages(self) -> None:
        """RSET: clear every deletion mark (retrieval marks stay, as in RFC 1939)."""
        self.deleted.clear()
        self._live_octets = self._all_octets

    def sync(self) -> Deferred:
        """The UPDATE state: apply the marks on disk, in a thread.

        Returns:
            A Deferred firing with an :class:`UpdateResult`, or failing with
            :class:`UpdateIncomplete` when some change could not be made.
        """
        deleted = [self.messages[i] for i in sorted(self.deleted)]
        moving = ([self.messages[i] for i in sorted(self.retrieved - self.deleted)]
                  if self._move_retrieved else [])
        if not (deleted or moving):
            return succeed(UpdateResult(0, 0, 0))  # nothing to do on disk: no thread hand-over
        return self._run(self._apply, deleted, moving)

    def _apply(self, deleted: list[StoredMessage], moving: list[StoredMessage]) -> UpdateResult:
        # Deletions first: on a full disk they free the space a move may need (a new
        # directory block, or MAIL/cur itself).  A failed change leaves its message in
        # place and the others are still tried: RFC 1939 allows "some or none" removed,
        # and each change made is one the next session need not repeat.
        missing = not_removed = not_moved = 0
        cause: OSError | None = None
        for message in deleted:
            try:
                missing += not self.store.remove(message)
            except OSError as e:
                not_removed += 1
                cause = cause or e
        for message in moving:
            try:
                missing += not self.store.move_to_mail(self.user, message)
            except OSError as e:
                not_moved += 1
                cause = cause or e
        if deleted or moving:
            try:
                self.store.sync_folders(self.user)
            except OSError as e:  # the changes are made, but may not survive a power cut
                cause = cause or e
        result = UpdateResult(len(deleted) - not_removed, len(moving) - not_moved, missing)
        if cause is not None:
            raise UpdateIncomplete(result, not_removed, not_moved, cause)
        return result

    # -- end of session -------------------------------------------------------------------

    def logout(self) -> None:
        """Release the session lock; any marks not applied by :meth:`sync` are dropped."""
        self._lock.release()


def open_mailbox(store: MailStore, user: str, *, use_mail_folder: bool, leave_in_newmail: bool,
                 limit: int, run_in_thread: ThreadRunner, id_server: str | None = None) -> VMSMailbox:
    """Lock ``user``'s mailbox and take the session snapshot (blocking; run it in a thread).

    Returns:
        A :class:`VMSMailbox`.

    Raises:
        MailboxLocked: another session holds the mailbox.
        NoSuchMailbox: the user has no mail directory.
    """
    lock = store.lock(user)
    problems: list[str] = []
    try:
        removed = store.sweep_tmp(user)
        if removed:
            problems.append(f"removed {removed} abandoned delivery file(s) older than 36 hours from tmp/")
        if use_mail_folder:
            store.move_new_to_mail(user, problems)
        folder = MAIL if use_mail_folder else NEWMAIL
        messages = store.scan(user, folder, limit, problems)
    except BaseException:
        lock.release()
        raise
    mailbox = VMSMailbox(store, user, folder, messages, lock, run_in_thread,
                         move_retrieved=not leave_in_newmail, id_server=id_server)
    mailbox.problems = problems
    return mailbox
