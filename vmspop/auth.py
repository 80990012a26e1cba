"""Authentication through twisted.cred: credentials, the account checker, the portal and the realm.

Every login method (USER/PASS, APOP, and later SASL) goes through
:meth:`SessionPortal.login`, which is the one place that counts failures per
connection, delays failure replies, and logs the outcome.  The checker owns the
secrets (the password file and the ``POP_SECRET.DAT`` files); the realm locks the
mailbox and takes the session snapshot.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import pwd
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.mail.pop3 import IMailbox
from twisted.python.failure import Failure
from zope.interface import Attribute, implementer

from vmspop import cached
from vmspop.events import EventLog
from vmspop.hashing import UnsupportedHash, dummy_hash, is_instant, verify_password
from vmspop.limits import AddressPenalties
from vmspop.mailbox import open_mailbox
from vmspop.sasl import ISharedSecretCredentials
from vmspop.pam import PAMError, pam_check
from vmspop.passwd import Account, InvalidUsername, PasswordFile, normalize_username, utc_today
from vmspop.secretfile import SecretMissing, SecretRejected, read_secret
from vmspop.store import MailboxLocked, MailStore, NoSuchMailbox
from vmspop.threads import ThreadRunner

__all__ = [
    "APOPCredentials",
    "AccountChecker",
    "IAPOPCredentials",
    "LoginAttempts",
    "LoginRefused",
    "MailRealm",
    "SessionPortal",
    "refusal_reply",
]


class IAPOPCredentials(ISharedSecretCredentials):
    """APOP credentials: checked against the user's shared secret, never the login password."""

    challenge = Attribute("The greeting's <...> timestamp, bytes.")
    digest = Attribute("The client's 32 lower-case hex digits, bytes.")


@implementer(IAPOPCredentials)
class APOPCredentials:
    """An APOP attempt (RFC 1939 section 7).

    Twisted's own ``APOPCredentials`` compares a str digest with the bytes from the
    wire and so never succeeds on Python 3; this one works on bytes and compares in
    constant time.
    """

    def __init__(self, username: bytes, challenge: bytes, digest: bytes) -> None:
        self.username = username
        self.challenge = challenge
        self.digest = digest.lower()

    def checkPassword(self, password: bytes) -> bool:
        """True if ``password`` (the shared secret) produced the client's digest."""
        expected = hashlib.md5(self.challenge + password).hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.digest)


class LoginRefused(UnauthorizedLogin):
    """A login refused for a reason the log names.

    Attributes:
        reason: a fixed word for the log (``unknown-user``, ``bad-password``,
            ``no-secret``, ``bad-secret-file``, ``bad-digest``, ``disabled``,
            ``nomail``, ``expired``, ``in-use``, ``no-mailbox``, ``too-many-attempts``).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# reason -> (response code, friendly text).  {user} is the name as the client typed it.
_FRIENDLY: dict[str, tuple[str, str]] = {
    "unknown-user": ("AUTH", 'user "{user}" is unknown'),
    "bad-password": ("AUTH", 'password supplied for "{user}" is incorrect'),
    "no-secret": ("AUTH", 'no APOP shared secret (POP_SECRET.DAT) is set up for "{user}"'),
    "bad-secret-file": ("AUTH", 'the APOP shared secret of "{user}" cannot be used; ask the postmaster'),
    "bad-digest": ("AUTH", 'digest supplied for "{user}" does not match the shared secret'),
    "disabled": ("SYS/PERM", 'account "{user}" is disabled'),
    "nomail": ("SYS/PERM", 'account "{user}" may not use mail'),
    "expired": ("SYS/PERM", 'account "{user}" has expired'),
    "password-expired": ("SYS/PERM", 'the password of "{user}" has expired; change it first'),
    "too-many-attempts": ("AUTH", "too many failed logins on this connection"),
}
# Replies that reveal nothing a wrong password would not, so secure mode keeps them.
_ALWAYS: dict[str, tuple[str, str]] = {
    "in-use": ("IN-USE", 'mailbox of "{user}" is in use by another session; try again later'),
    "no-mailbox": ("SYS/PERM", 'no mailbox exists for "{user}"; contact the postmaster'),
}
# The OpenVMS server's one generic reply in TCPIP$POP_SECURITY SECURE mode.
_SECURE = ("AUTH", 'Access to user account "{user}" denied')


def refusal_reply(reason: str, user: str, security: str) -> tuple[str, str]:
    """The response code and text for a refused login.

    In ``secure`` mode every credential or account problem gets the same reply, so an
    unknown user cannot be told from a wrong password.  Lock conflicts are reported
    as they are: they happen only after the credentials were accepted.
    """
    if reason in _ALWAYS:
        code, text = _ALWAYS[reason]
    elif security == "friendly" and reason in _FRIENDLY:
        code, text = _FRIENDLY[reason]
    else:
        code, text = _SECURE
    return code, text.format(user=user)


class IBlockingChecker(ICredentialsChecker):
    """A checker whose work is blocking, offered also as a plain call, so that a portal
    can run it in one pool call together with the realm's (:class:`SessionPortal`).

    The portal first calls it on the reactor thread within
    :func:`vmspop.cached.without_waiting`: there :meth:`check` must raise
    :class:`vmspop.cached.NotCached` for anything that could wait (a disk, the
    network, a slow hash), before any side effect, and it is then called again in a
    pool thread.
    """

    def check(credentials: Any) -> bytes:
        """Blocking: the avatar id, or raise :class:`UnauthorizedLogin`."""


class IBlockingRealm(IRealm):
    """A realm whose work is blocking, offered also as a plain call (see IBlockingChecker,
    whose rule for :func:`vmspop.cached.without_waiting` :meth:`open` follows too,
    undoing what it did before raising NotCached)."""

    def open(avatarId: bytes, mind: object, *interfaces: Any) -> tuple[Any, Any, Callable[[], None]]:
        """Blocking: ``(interface, avatar, logout)``, or raise :class:`UnauthorizedLogin`."""


@implementer(IBlockingChecker)
class AccountChecker:
    """Checks USER/PASS and SASL PLAIN against the password file, and APOP, CRAM-MD5 and
    SCRAM-SHA-256 against the shared secret in ``POP_SECRET.DAT``.

    The work (hash verification, file reads) runs in a thread.  Account flags are
    checked only after the credentials are proven, so a stranger learns nothing from
    them.

    Args:
        passwords: the password file.
        store: the mail store (where secret files live).
        run_in_thread: runs a blocking callable off the reactor thread.
        events: where ignored secret files are reported.
        today: the current date (UTC), for account expiry; injectable for tests.
        pam_service: with ``--auth pam``, the PAM service that checks passwords
            (and the host's accounts stand in for users missing from the file).
    """

    credentialInterfaces = (IUsernamePassword, ISharedSecretCredentials)

    def __init__(self, passwords: PasswordFile, store: MailStore, run_in_thread: ThreadRunner,
                 events: EventLog, today: Callable[[], datetime.date] | None = None,
                 pam_service: str | None = None) -> None:
        self.passwords = passwords
        self.pam_service = pam_service
        self.store = store
        self._run = run_in_thread
        self._events = events
        self._today = today or utc_today

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        """Fire with the normalised user name (bytes) or fail with :class:`LoginRefused`."""
        return self._run(self.check, credentials)

    def check(self, credentials: Any) -> bytes:
        """:meth:`requestAvatarId`'s work, blocking.

        Within :func:`vmspop.cached.without_waiting` it raises NotCached for work that
        takes time: a secret file to read, PAM, a password hash to verify.
        """
        shared_secret = ISharedSecretCredentials.providedBy(credentials)
        instant_only = not cached.waiting_allowed()
        if instant_only and (shared_secret or self.pam_service is not None):
            raise cached.NotCached("a secret file or PAM")
        try:
            name = normalize_username(credentials.username)
        except InvalidUsername:
            name = None
        account = self._account(name) if name is not None else None
        if shared_secret:
            if account is None:
                # Do the digest work a known user costs, so timing tells nothing.
                credentials.checkPassword(b"")
                raise LoginRefused("unknown-user")
            secret = self._secret(account)
            if not credentials.checkPassword(secret):
                raise LoginRefused("bad-digest")
        else:
            password = credentials.password
            if isinstance(password, bytes):
                password = password.decode("utf-8", "surrogateescape")
            if self.pam_service is not None:
                self._check_pam(name, password)
                # PAM vouched for the user (it may come from LDAP or another NSS source).
                account = account or Account(name or "", "")
            elif account is None:
                if instant_only:
                    raise cached.NotCached("the dummy hash")
                # Spend the time a real verification costs, so timing does not
                # tell an unknown user from a wrong password.
                verify_password(dummy_hash(), password)
                raise LoginRefused("unknown-user")
            else:
                if instant_only and not is_instant(account.password_hash):
                    raise cached.NotCached("a password hash")
                self._check_file(account, password)
        if account.disuser:
            raise LoginRefused("disabled")
        if account.dismail:
            raise LoginRefused("nomail")
        if account.expired(self._today()):
            raise LoginRefused("expired")
        return account.name.encode("ascii")

    def _account(self, name: str) -> Account | None:
        account = self.passwords.lookup(name)
        if account is None and self.pam_service is not None:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                return None
            account = Account(name, "", uid=entry.pw_uid, gid=entry.pw_gid)
        return account

    def _check_file(self, account: Account, password: str) -> None:
        try:
            if not verify_password(account.password_hash, password):
                raise LoginRefused("bad-password")
        except UnsupportedHash as e:
            self._events.error("password hash of user=<{user}> unusable: {why}",
                               user=account.name, why=str(e))
            raise LoginRefused("bad-password") from None

    def _check_pam(self, name: str | None, password: str) -> None:
        assert self.pam_service is not None
        try:
            pam_check(self.pam_service, name or "", password.encode("utf-8", "surrogateescape"))
        except PAMError as e:
            raise LoginRefused(e.reason if e.reason in _FRIENDLY else "bad-password") from None

    def _secret(self, account: Any) -> bytes:
        owners = {os.stat(self.store.root).st_uid}
        if account.uid is not None:
            owners.add(account.uid)
        try:
            return read_secret(self.store.secret_path(account.name), owners)
        except SecretMissing:
            raise LoginRefused("no-secret") from None
        except SecretRejected as e:
            self._events.secret_ignored(user=account.name, why=str(e))
            raise LoginRefused("bad-secret-file") from None


@implementer(IBlockingRealm)
class MailRealm:
    """Turns an authenticated user into a locked :class:`~vmspop.mailbox.VMSMailbox`.

    Args:
        store: the mail store.
        run_in_thread: runs the lock and the folder scan off the reactor thread.
        use_mail_folder: serve MAIL (``--use-mail-folder``).
        leave_in_newmail: keep retrieved mail in NEWMAIL (``--leave-in-newmail``).
        message_maximum: messages per session, 0 for all (``--message-maximum``).
        id_server: the ``X-POP3-Server:`` value with ``--send-id-headers``, else None.
    """

    def __init__(self, store: MailStore, run_in_thread: ThreadRunner, *, use_mail_folder: bool = False,
                 leave_in_newmail: bool = False, message_maximum: int = 0,
                 id_server: str | None = None) -> None:
        self.store = store
        self._run = run_in_thread
        self._options: dict[str, Any] = dict(
            use_mail_folder=use_mail_folder, leave_in_newmail=leave_in_newmail,
            limit=message_maximum, id_server=id_server)

    def requestAvatar(self, avatarId: bytes, mind: object, *interfaces: Any) -> defer.Deferred:
        """Fire with ``(IMailbox, mailbox, logout)``; fail with LoginRefused("in-use") if locked."""
        if IMailbox not in interfaces:
            raise NotImplementedError("vmspop only serves POP3 mailboxes")
        return self._run(self.open, avatarId, mind, *interfaces)

    def open(self, avatarId: bytes, mind: object, *interfaces: Any) -> tuple[Any, Any, Callable[[], None]]:
        """:meth:`requestAvatar`'s work, blocking: lock the mailbox and list the folder."""
        if IMailbox not in interfaces:
            raise NotImplementedError("vmspop only serves POP3 mailboxes")
        try:
            mailbox = open_mailbox(self.store, avatarId.decode("ascii"), run_in_thread=self._run,
                                   **self._options)
        except MailboxLocked:
            raise LoginRefused("in-use") from None
        except NoSuchMailbox:
            raise LoginRefused("no-mailbox") from None
        return IMailbox, mailbox, mailbox.logout


class LoginAttempts:
    """The per-connection login state passed to the portal as the cred "mind".

    Attributes:
        limit: failures allowed on this connection (``--max-auth-attempts``).
        failures: failures so far.
        rip: the client's address, for the log.
        session: the session id, for the log.
        method: the login method of the attempt in progress (USER, APOP, PLAIN, ...).
    """

    def __init__(self, limit: int, rip: str, session: str) -> None:
        self.limit = limit
        self.failures = 0
        self.rip = rip
        self.session = session
        self.method = "USER"

    @property
    def exhausted(self) -> bool:
        """True once no more attempts are allowed."""
        return self.failures >= self.limit


def fingerprint(credentials: Any) -> int:
    """A hash of what was tried, so a repeated (saved, outdated) password is recognised."""
    secret = getattr(credentials, "password", None)
    if secret is None:
        secret = getattr(credentials, "digest", None) or getattr(credentials, "response", b"")
    return hash((getattr(credentials, "username", b""), secret))


class SessionPortal(Portal):
    """A Portal that counts, delays and logs every failed login of a connection.

    Args:
        realm: the realm.
        checkers: the credential checkers.
        clock: schedules the failure delay (never sleeps on the reactor thread).
        failure_delay: seconds before a failure is reported (``--auth-failure-delay``);
            recent failures from the same address double it, up to 15 s.
        events: the operator's log.
        run_in_thread: given, and with a checker and a realm that offer their blocking
            forms (:class:`IBlockingChecker`, :class:`IBlockingRealm`), a login is
            tried on this thread from memory only, then done in one pool call, not
            two: a hand-over costs far more than its bookkeeping (two thread
            wake-ups and the GIL passed back and forth: 100-200 us of CPU of a
            700-1,100 us login session, measured in docs/performance.md).
    """

    def __init__(self, realm: IRealm, checkers: list[ICredentialsChecker], *, clock: IReactorTime,
                 failure_delay: float, events: EventLog,
                 run_in_thread: ThreadRunner | None = None) -> None:
        super().__init__(realm, checkers)
        self.clock = clock
        self.events = events
        self.penalties = AddressPenalties(clock, failure_delay)
        self._run = run_in_thread

    def _authenticate(self, credentials: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        """:meth:`Portal.login`; when the checker and realm allow it, from memory on this
        thread if it can be done so, else in a single pool call."""
        checker = next((c for i, c in self.checkers.items() if i.providedBy(credentials)), None)
        realm = self.realm
        if (self._run is None or checker is None or not IBlockingChecker.providedBy(checker)
                or not IBlockingRealm.providedBy(realm)):
            return super().login(credentials, mind, *interfaces)

        def check_and_open() -> tuple[Any, Any, Callable[[], None]]:
            return realm.open(checker.check(credentials), mind, *interfaces)

        if not cached.available():
            return self._run(check_and_open)
        # First on this thread, from memory only: a PLAIN password and a mailbox whose
        # lock, folders and listing the kernel and the store hold need no pool call.
        try:
            with cached.without_waiting():
                return defer.succeed(check_and_open())
        except cached.NotCached:
            return self._run(check_and_open)
        except Exception:
            return defer.fail()

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        """Log in; with a :class:`LoginAttempts` mind, failures are counted, delayed and logged."""
        if not isinstance(mind, LoginAttempts):
            return super().login(credentials, mind, *interfaces)
        user = getattr(credentials, "username", None)
        method = mind.method
        if mind.exhausted:
            return defer.fail(LoginRefused("too-many-attempts"))
        # One check at a time per address: a flood from one address holds one thread.
        d = self.penalties.serialized(mind.rip, self._authenticate, credentials, mind, *interfaces)

        def succeeded(result: Any) -> Any:
            self.penalties.succeeded(mind.rip)
            self.events.login(user=result[1].user, method=method, rip=mind.rip, session=mind.session)
            return result

        def failed(failure: Failure) -> Any:
            if not failure.check(UnauthorizedLogin):
                return failure  # a server fault: not the client's, so not counted
            mind.failures += 1
            delay = self.penalties.delay(mind.rip)
            self.penalties.failed(mind.rip, fingerprint(credentials))
            reason = getattr(failure.value, "reason", "bad-credentials")
            self.events.login_failed(user=user, method=method, rip=mind.rip, session=mind.session,
                                     reason=reason, attempt=mind.failures, limit=mind.limit)
            if delay > 0:
                return task.deferLater(self.clock, delay, lambda: failure)
            return failure

        d.addCallbacks(succeeded, failed)
        return d
