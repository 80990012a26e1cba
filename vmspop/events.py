"""The operator's log: one stable, documented line per login, failure, logout and refusal.

The formats are part of vmspop's interface (docs/admin.md, fail2ban filters match
them); change them only with care.  Values that come from the client (user names)
are reduced to a safe alphabet so they cannot forge fields.  Passwords, digests and
secrets are never passed here.
"""

from __future__ import annotations

import re

from twisted.logger import Logger

from vmspop.config import LOG_LEVELS

__all__ = ["EventLog", "safe"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._$@+-]")
#: A logged user name longer than RFC 1939's 40-octet argument limit is cut.
MAX_LOGGED_NAME = 40


def safe(text: str | bytes | None) -> str:
    """A client-supplied value reduced to characters that cannot break a log line."""
    if text is None:
        return "-"
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    return _UNSAFE.sub("?", text[:MAX_LOGGED_NAME]) or "-"


class EventLog:
    """Emits vmspop's log events, filtered by ``--log-level`` and ``--trace``.

    Args:
        level: one of :data:`vmspop.config.LOG_LEVELS`.
        trace: log every protocol line (masked by the caller).
        logger: the twisted.logger Logger to emit to.
    """

    def __init__(self, level: str = "info", trace: bool = False, logger: Logger | None = None) -> None:
        self._rank = LOG_LEVELS.index(level)
        self._sessions = self._on("session")  # the level is fixed: not looked up per command
        self.trace_enabled = trace
        self.log = logger if logger is not None else Logger(namespace="vmspop")
        self._holds = 0
        self._held: list[tuple[str, dict[str, object]]] = []

    def hold(self) -> None:
        """Keep the info lines emitted from now until the matching :meth:`release`.

        A session holds them while it answers a batch of commands, and releases them
        once the replies are sent: writing a line through twistd's log observer takes
        tens of microseconds, which the client would otherwise wait for at PASS and
        QUIT (docs/performance.md).  Warnings and errors are not held.
        """
        self._holds += 1

    def release(self) -> None:
        """End a :meth:`hold`; after the outermost one, emit the kept lines in order."""
        self._holds -= 1
        if not self._holds and self._held:
            held, self._held = self._held, []
            for line, fields in held:
                self.log.info("{line}", line=line, **fields)

    def _on(self, level: str) -> bool:
        return self._rank >= LOG_LEVELS.index(level)

    def _info(self, line: str, **fields: object) -> None:
        # The line is formatted here with an f-string; twisted.logger's own "{field}"
        # formatting runs in Python and cost a fifth of a login (docs/performance.md).
        # The fields stay in the event for structured observers.
        if self._holds:
            self._held.append((line, fields))
        else:
            self.log.info("{line}", line=line, **fields)

    # -- info: what fail2ban and an operator need ---------------------------------------

    def login(self, *, user: str, method: str, rip: str, session: str) -> None:
        """A successful login."""
        if self._on("info"):
            user = safe(user)
            self._info(f"login: user=<{user}> method={method} rip={rip} session=<{session}>",
                       user=user, method=method, rip=rip, session=session)

    def login_failed(self, *, user: str | bytes | None, method: str, rip: str, session: str,
                     reason: str, attempt: int, limit: int) -> None:
        """A failed login; ``reason`` is a fixed word (docs/admin.md lists them)."""
        if self._on("info"):
            shown = safe(user)
            self._info(f"auth failed: user=<{shown}> method={method} rip={rip} session=<{session}> "
                       f"reason={reason} attempt={attempt}/{limit}",
                       user=shown, method=method, rip=rip, session=session, reason=reason,
                       attempt=attempt, limit=limit)

    def logout(self, *, user: str, rip: str, session: str, retr: int, retr_octets: int, top: int,
               deleted: int, deleted_octets: int, moved: int, missing: int) -> None:
        """The end of a session that QUIT and updated the mailbox."""
        if self._on("info"):
            user = safe(user)
            self._info(f"logout: user=<{user}> rip={rip} session=<{session}> retr={retr}/{retr_octets} "
                       f"top={top} del={deleted}/{deleted_octets} moved={moved} missing={missing}",
                       user=user, rip=rip, session=session, retr=retr, retr_octets=retr_octets,
                       top=top, deleted=deleted, deleted_octets=deleted_octets, moved=moved,
                       missing=missing)

    def disconnected(self, *, user: str | None, rip: str, session: str, reason: str,
                     attempts: int) -> None:
        """A connection that ended without a completed QUIT: nothing in the mailbox changed."""
        if not self._on("info"):
            return
        if user is None:
            self._info(f"disconnected without login: rip={rip} session=<{session}> "
                       f"reason={reason} attempts={attempts}",
                       rip=rip, session=session, reason=reason, attempts=attempts)
        else:
            user = safe(user)
            self._info(f"disconnected: user=<{user}> rip={rip} session=<{session}> "
                       f"reason={reason} (mailbox unchanged)",
                       user=user, rip=rip, session=session, reason=reason)

    def refused(self, *, rip: str, reason: str) -> None:
        """A connection refused before the greeting (e.g. too many sessions)."""
        if self._on("info"):
            self._info(f"connection refused: rip={rip} reason={reason}", rip=rip, reason=reason)

    def smtp_delivered(self, *, rip: str, sender: str, recipients: list[str], octets: int, id: str,
                       seconds: float) -> None:
        """A message accepted over SMTP and stored for every recipient."""
        if self._on("info"):
            self.log.info("smtp delivered: id={id} from=<{sender}> to=<{to}> octets={octets} "
                          "rip={rip} seconds={seconds:.3f}", id=id, sender=safe(sender),
                          to=",".join(recipients), octets=octets, rip=rip, seconds=seconds)

    def smtp_refused(self, *, rip: str, rcpt: str, reason: str) -> None:
        """An SMTP recipient refused (unknown user, relaying, DISMAIL...)."""
        if self._on("info"):
            self.log.info("smtp refused: rcpt=<{rcpt}> rip={rip} reason={reason}",
                          rcpt=safe(rcpt), rip=rip, reason=reason)

    def secret_ignored(self, *, user: str, why: str) -> None:
        """A POP_SECRET.DAT that vmspop will not use, and why."""
        if self._on("error"):
            self.log.warn("APOP secret file of user=<{user}> ignored: {why}", user=safe(user), why=why)

    def skipped(self, *, user: str, problem: str) -> None:
        """Something found in a mailbox at login: a file that cannot be served (left
        untouched), or abandoned deliveries removed from ``tmp/``."""
        if self._on("error"):
            self.log.warn("mailbox of user=<{user}>: {problem}", user=safe(user), problem=problem)

    def statistics(self, lines: list[str]) -> None:
        """The XTND STATS figures, as one log line (at shutdown)."""
        if self._on("info"):
            self.log.info("statistics: {figures}", figures="; ".join(
                line.replace(" : ", "=") for line in lines if " : " in line))

    # -- session and debug --------------------------------------------------------------

    def snapshot(self, *, user: str, session: str, folder: str, messages: int, octets: int) -> None:
        """The session's view of the mailbox at login (debug level)."""
        if self._on("debug"):
            self.log.info("snapshot: user=<{user}> session=<{session}> folder={folder} "
                           "messages={messages} octets={octets}", user=safe(user), session=session,
                           folder=folder, messages=messages, octets=octets)

    def connected(self, *, rip: str, session: str) -> None:
        """A new connection (session level)."""
        if self._on("session"):
            self._info(f"connect: rip={rip} session=<{session}>", rip=rip, session=session)

    def command(self, *, session: str, verb: str, detail: str = "") -> None:
        """One command handled (session level); never carries arguments that are secrets."""
        if self._sessions:
            self._info(f"command: session=<{session}> {verb}{' ' + detail if detail else ''}",
                       session=session, verb=verb, detail=detail)

    def trace(self, *, session: str, direction: str, line: str) -> None:
        """One protocol line, already masked by the caller (``--trace``)."""
        if self.trace_enabled:
            self._info(f"trace: session=<{session}> {direction} {line}", session=session,
                       direction=direction, traced=line)

    # -- errors: the operator's problem, never the client's -----------------------------

    def failure(self, message: str, **fields: object) -> None:
        """A server-side fault, with the current exception's traceback."""
        self.log.failure(message, **fields)

    def update_incomplete(self, *, user: str, rip: str, session: str, summary: str, why: str) -> None:
        """A QUIT update whose changes could not all be made (disk full, I/O error): one line."""
        self.log.error("update of user=<{user}> rip={rip} session=<{session}> incomplete: {summary}: {why}",
                       user=safe(user), rip=rip, session=session, summary=summary, why=why)

    def error(self, message: str, **fields: object) -> None:
        """A server-side problem without a traceback."""
        self.log.error(message, **fields)
