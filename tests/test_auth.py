"""Logins over the wire: USER/PASS and APOP through the portal, limits, delays, flags, secret files."""

from __future__ import annotations

import datetime
import hashlib
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.cred.credentials import IUsernameHashedPassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from zope.interface import implementer
from zope.interface.verify import verifyObject

from support import CapturedLog, Client, Server, counting_thread_calls, open_files
from vmspop.auth import (AccountChecker, APOPCredentials, IAPOPCredentials, IBlockingChecker,
                         IBlockingRealm, LoginAttempts, MailRealm, SessionPortal, refusal_reply)
from vmspop import cached
from vmspop.hashing import hash_password
from vmspop.passwd import Account


@pytest.fixture
def server(tmp_path: Path) -> Server:
    s = Server(tmp_path)
    s.add_user("jones", secret=b"tanstaafl")
    return s


def challenge(client: Client) -> bytes:
    return client.greeting.rsplit(b" ", 1)[1].strip()


def apop(client: Client, user: str, secret: bytes) -> bytes:
    digest = hashlib.md5(challenge(client) + secret).hexdigest()
    return client.command(f"APOP {user} {digest}")


# -- APOP ------------------------------------------------------------------------------------


def test_apop_credentials_compare_bytes() -> None:
    """Stock defect: APOP credentials accept the right digest given as bytes, in either case."""
    digest = hashlib.md5(b"<1@x>secret").hexdigest().encode()
    creds = APOPCredentials(b"jones", b"<1@x>", digest.upper())
    assert verifyObject(IAPOPCredentials, creds) and IUsernameHashedPassword.providedBy(creds)
    assert creds.checkPassword(b"secret")
    assert not creds.checkPassword(b"Secret")


def test_apop_login(server: Server) -> None:
    """APOP with the POP_SECRET.DAT secret logs in."""
    client = server.connect()
    assert apop(client, "jones", b"tanstaafl").startswith(b"+OK Username/secret combination ok")
    assert server.log.matching("login: user=<jones> method=APOP rip=192.0.2.7")


def test_apop_user_name_is_case_insensitive(server: Server) -> None:
    """JONES, jones and Jones are one user, for APOP as for USER."""
    assert apop(server.connect(), "JONES", b"tanstaafl").startswith(b"+OK")


def test_apop_digest_for_another_challenge_fails(server: Server) -> None:
    """A digest computed for one connection's challenge does not work on another (no replay)."""
    first, second = server.connect(), server.connect()
    digest = hashlib.md5(challenge(first) + b"tanstaafl").hexdigest()
    assert second.command(f"APOP jones {digest}").startswith(b"-ERR [AUTH]")


def test_login_password_is_never_an_apop_secret(server: Server) -> None:
    """Without a secret file APOP fails, even with the login password (here a {PLAIN} one)."""
    server.add_user("smith", password="sesame")
    assert apop(server.connect(), "smith", b"sesame").startswith(b"-ERR [AUTH]")
    assert "reason=no-secret" in server.log.matching("auth failed: user=<smith>")[0]


@pytest.mark.parametrize("problem", ["mode", "symlink", "owner", "two-lines", "too-long"])
def test_unsafe_secret_file_is_ignored_and_logged(server: Server, problem: str) -> None:
    """A secret file others could read or plant, or a malformed one, is ignored and the reason logged."""
    path = server.store.secret_path("jones")
    if problem == "mode":
        os.chmod(path, 0o640)
    elif problem == "symlink":
        real = path.with_name("elsewhere")
        os.rename(path, real)
        os.symlink(real, path)
    elif problem == "owner":
        os.chown(path, 54321, -1)
    elif problem == "two-lines":
        path.write_bytes(b"tanstaafl\nsecond\n")
    else:
        path.write_bytes(b"t" * 501 + b"\n")
    secret = b"t" * 501 if problem == "too-long" else b"tanstaafl"
    assert apop(server.connect(), "jones", secret).startswith(b"-ERR [AUTH]")
    [warning] = [line for line in server.log.lines() if "APOP secret file" in line]
    assert "user=<jones> ignored" in warning
    assert "tanstaafl" not in "\n".join(server.log.lines())


def test_secret_owned_by_the_user_is_accepted(server: Server) -> None:
    """A secret file owned by the account's uid (from the password file) is trusted."""
    server.add_user("smith", secret=b"opensesame", uid=4242)
    os.chown(server.store.secret_path("smith"), 4242, -1)
    assert apop(server.connect(), "smith", b"opensesame").startswith(b"+OK")


def test_malformed_apop_digest_is_refused_without_counting(server: Server) -> None:
    """An APOP digest that is not 32 hex digits is a syntax error, not a login attempt."""
    client = server.connect()
    for _ in range(3):
        assert client.command("APOP jones xyz") == b"-ERR APOP digest must be 32 hexadecimal digits\r\n"
    assert not client.closed


# -- USER/PASS -------------------------------------------------------------------------------


def test_password_with_spaces(server: Server) -> None:
    """PASS takes the rest of the line, spaces included."""
    server.add_user("smith", password="open sesame ")
    assert server.connect().login("smith", "open sesame ").startswith(b"+OK")


def test_argon2_password(server: Server) -> None:
    """A real Argon2id hash from the password file verifies (through the thread runner)."""
    server.passwords.update("smith", lambda _: Account("smith", hash_password("s3cret")))
    server.store.create_mailbox("smith")
    assert server.connect().login("smith", "s3cret").startswith(b"+OK")


def test_pass_without_user(server: Server) -> None:
    """PASS before USER is a sequence error, not a failed login."""
    client = server.connect()
    assert client.command("PASS x") == b"-ERR give USER first\r\n"
    assert not server.log.matching("auth failed")


def test_disable_userpass_refuses_user_and_pass(tmp_path: Path) -> None:
    """--disable-userpass: USER and PASS are refused; APOP still works."""
    s = Server(tmp_path, disable_userpass=True)
    s.add_user("jones", secret=b"tanstaafl")
    client = s.connect()
    assert client.command("USER jones").startswith(b"-ERR USER/PASS is disabled")
    assert client.command("PASS wonderland").startswith(b"-ERR USER/PASS is disabled")
    assert apop(client, "jones", b"tanstaafl").startswith(b"+OK")


# -- limits ----------------------------------------------------------------------------------


def test_two_failures_close_the_connection(server: Server) -> None:
    """The OpenVMS limit: after --max-auth-attempts (2) failures, -ERR [AUTH] and the connection closes."""
    client = server.connect()
    assert client.login(password="bad") == b'-ERR [AUTH] Access to user account "jones" denied\r\n'
    assert not client.closed
    last = client.login(password="worse")
    assert last.startswith(b'-ERR [AUTH] Access to user account "jones" denied; too many failed logins')
    assert client.closed
    assert client.command("USER jones") == b""  # nothing more is read


def test_apop_and_pass_failures_count_together(server: Server) -> None:
    """One login path: an APOP failure and a PASS failure make two attempts."""
    client = server.connect()
    assert apop(client, "jones", b"wrong").startswith(b"-ERR [AUTH]")
    assert client.login(password="wrong").startswith(b"-ERR [AUTH]")
    assert client.closed
    attempts = [line.rsplit("attempt=", 1)[1] for line in server.log.matching("auth failed")]
    assert attempts == ["1/2", "2/2"]


def test_max_auth_attempts_setting(tmp_path: Path) -> None:
    """--max-auth-attempts 3 allows a third try."""
    s = Server(tmp_path, max_auth_attempts=3)
    s.add_user("jones")
    client = s.connect()
    client.login(password="a")
    client.login(password="b")
    assert not client.closed
    assert client.login().startswith(b"+OK")


def test_failure_delay_uses_the_clock(tmp_path: Path) -> None:
    """--auth-failure-delay delays the -ERR without blocking: other sessions are served meanwhile."""
    s = Server(tmp_path, auth_failure_delay=2.0)
    s.add_user("jones")
    s.add_user("smith")
    slow = s.connect()
    assert slow.login(password="bad") == b""
    other = s.connect()
    assert other.login("smith").startswith(b"+OK")
    s.clock.advance(1.9)
    assert slow.take() == b""
    s.clock.advance(0.2)
    assert slow.take().startswith(b"-ERR [AUTH]")


def test_in_use_counts_as_an_attempt(server: Server) -> None:
    """A lock conflict reports [IN-USE] and counts toward the attempt limit."""
    server.connect().login()
    client = server.connect()
    assert client.login().startswith(b"-ERR [IN-USE]")
    assert client.login().startswith(b"-ERR [IN-USE]")
    assert client.closed


# -- security modes and account flags --------------------------------------------------------


def test_secure_mode_hides_unknown_users(server: Server) -> None:
    """secure (default): an unknown user gets exactly the reply of a wrong password."""
    assert server.connect().command("USER nobody") == b'+OK Password required for "nobody"\r\n'
    unknown = server.connect().login("nobody", "x")
    wrong = server.connect().login("jones", "x")
    assert unknown.replace(b"nobody", b"X") == wrong.replace(b"jones", b"X")


def test_secure_mode_unknown_user_costs_a_hash(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """secure: an unknown user's password is still run through a hash check, so timing matches."""
    import vmspop.auth as auth
    seen: list[str] = []
    real = auth.verify_password
    monkeypatch.setattr(auth, "verify_password", lambda h, p: seen.append(h) or real(h, p))
    server.connect().login("nobody", "x")
    assert seen and seen[0].startswith("{ARGON2ID}")


@pytest.mark.parametrize("fields, reply", [
    ({"disuser": True}, b'-ERR [SYS/PERM] account "smith" is disabled'),
    ({"dismail": True}, b'-ERR [SYS/PERM] account "smith" may not use mail'),
    ({"expires": datetime.date(2000, 1, 1)}, b'-ERR [SYS/PERM] account "smith" has expired'),
])
def test_account_flags_refuse_both_methods(tmp_path: Path, fields: dict, reply: bytes) -> None:
    """DISUSER, DISMAIL and expiry refuse USER/PASS and APOP; friendly mode says which."""
    s = Server(tmp_path, security="friendly", max_auth_attempts=5)
    s.add_user("smith", secret=b"opensesame", **fields)
    client = s.connect()
    assert client.login("smith").startswith(reply)
    assert apop(client, "smith", b"opensesame").startswith(reply)


def test_account_flags_are_generic_in_secure_mode(tmp_path: Path) -> None:
    """secure: a disabled account looks like a wrong password to the client; the log says why."""
    s = Server(tmp_path)
    s.add_user("smith", disuser=True)
    assert s.connect().login("smith") == b'-ERR [AUTH] Access to user account "smith" denied\r\n'
    assert "reason=disabled" in s.log.matching("auth failed")[0]


def test_flags_only_after_correct_credentials(tmp_path: Path) -> None:
    """A wrong password on a disabled account says "incorrect", revealing nothing about the flag."""
    s = Server(tmp_path, security="friendly")
    s.add_user("smith", disuser=True)
    assert s.connect().login("smith", "bad") == \
        b'-ERR [AUTH] password supplied for "smith" is incorrect\r\n'


@pytest.mark.parametrize("reason", ["unknown-user", "bad-password", "no-secret", "bad-secret-file",
                                    "bad-digest", "disabled", "nomail", "expired"])
def test_secure_replies_are_all_the_same(reason: str) -> None:
    """secure mode maps every credential or account problem to the one OpenVMS reply."""
    assert refusal_reply(reason, "jones", "secure") == ("AUTH", 'Access to user account "jones" denied')


def test_friendly_unknown_user(tmp_path: Path) -> None:
    """friendly: an unknown user is named as such."""
    s = Server(tmp_path, security="friendly")
    assert s.connect().login("nobody", "x") == b'-ERR [AUTH] user "nobody" is unknown\r\n'


def test_user_without_mailbox(server: Server) -> None:
    """An account whose mail directory is missing gets [SYS/PERM], an operator problem."""
    server.add_user("smith")
    os.rename(server.store.user_dir("smith"), server.store.root / "elsewhere")
    assert server.connect().login("smith").startswith(b"-ERR [SYS/PERM] no mailbox exists")


def test_broken_password_file_is_a_server_fault(server: Server) -> None:
    """A malformed password file answers [SYS/TEMP] (not counted), and the operator sees why."""
    Path(server.config.passwd).write_text("jones:{PLAIN}x:notanumber\n")
    os.utime(server.config.passwd, (1, 1))
    client = server.connect()
    assert client.login().startswith(b"-ERR [SYS/TEMP]")
    assert client.login().startswith(b"-ERR [SYS/TEMP]")
    assert not client.closed
    assert any("login failed unexpectedly" in line for line in server.log.lines())


def test_checker_and_realm_provide_cred_interfaces(server: Server) -> None:
    """The checker and realm are real twisted.cred providers."""
    from twisted.cred.checkers import ICredentialsChecker
    checker = next(iter(server.factory.portal.checkers.values()))
    assert isinstance(checker, AccountChecker) and verifyObject(ICredentialsChecker, checker)
    assert isinstance(server.factory.portal.realm, MailRealm)
    assert verifyObject(IRealm, server.factory.portal.realm)
    assert verifyObject(IBlockingChecker, checker)
    assert verifyObject(IBlockingRealm, server.factory.portal.realm)


def test_a_login_is_one_blocking_call(server: Server) -> None:
    """The check and the opening of the mailbox share one pool call (a hand-over costs
    more than either); a refused login opens nothing, and a lock conflict is [IN-USE]."""
    calls = counting_thread_calls(server)
    client = server.connect()
    assert client.login(password="wrong").startswith(b"-ERR")
    assert not open_files(server.store.root)  # the lock was not taken
    assert client.login().startswith(b"+OK")
    assert calls == ["check_and_open"] * 2
    assert server.connect().login().startswith(b"-ERR [IN-USE]")
    assert calls == ["check_and_open"] * 3



def settle(server: Server, user: str = "jones") -> None:
    """Date the password file and the user's folders a minute back, as on a server that
    has been running: what is in memory can then be trusted."""
    past = time.time() - 60
    os.utime(server.passwords.path, (past, past))
    for sub in ("new", "cur"):
        os.utime(server.store.folder(user, "NEWMAIL") / sub, (past, past))


@pytest.mark.skipif(not cached.available(), reason="openat2 with RESOLVE_CACHED is not available here")
def test_a_login_from_memory_takes_no_pool_call(server: Server) -> None:
    """A PLAIN password and a mailbox whose lock, folders and listing are in memory are
    checked and opened on the reactor thread; refusals and lock conflicts too."""
    server.deliver("jones", b"Subject: x\n\nbody\n")
    settle(server)
    calls = counting_thread_calls(server)
    first = server.connect()
    assert first.login().startswith(b"+OK")  # re-reads the password file, makes the lock file
    assert calls == ["check_and_open"]
    assert first.command("QUIT").startswith(b"+OK")
    calls.clear()
    client = server.connect()
    assert client.login(password="wrong").startswith(b"-ERR")
    assert client.protocol._attempts is not None and client.protocol._attempts.failures == 1
    assert client.login().startswith(b"+OK")
    assert client.command("STAT").startswith(b"+OK 1 ")
    assert server.connect().login().startswith(b"-ERR [IN-USE]")
    assert calls == []
    assert server.log.matching("auth failed: user=<jones> method=USER")


@pytest.mark.parametrize("case", ["hash", "unknown", "apop", "changed-folder", "changed-passwd"])
def test_work_that_takes_time_goes_to_the_pool(server: Server, case: str) -> None:
    """A hash to verify, an unknown user (the dummy hash), a secret file, a folder or a
    password file changed since: one pool call, as before."""
    server.deliver("jones", b"Subject: x\n\nbody\n")
    settle(server)
    first = server.connect()
    assert first.login().startswith(b"+OK")
    assert first.command("QUIT").startswith(b"+OK")
    calls = counting_thread_calls(server)
    client = server.connect()
    if case == "hash":
        server.passwords.update("hashed", lambda _: Account("hashed", hash_password("pw")))
        server.store.create_mailbox("hashed")
        settle(server, "hashed")
        assert client.login("hashed", "pw").startswith(b"+OK")
    elif case == "unknown":
        assert client.login("nobody", "pw").startswith(b"-ERR")
    elif case == "apop":
        assert apop(client, "jones", b"tanstaafl").startswith(b"+OK")
    elif case == "changed-folder":
        server.deliver("jones", b"Subject: y\n\nbody\n")
        assert client.login().startswith(b"+OK")
    else:
        server.add_user("smith")
        assert client.login().startswith(b"+OK")
    assert calls[-1:] == ["check_and_open"]


def test_portal_takes_two_steps_for_other_checkers(tmp_path: Path) -> None:
    """With a checker that has no blocking form, the portal is plain Portal.login (one
    call each), and its failures are counted, delayed and logged all the same."""
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
    from twisted.cred.credentials import UsernamePassword
    from twisted.internet import defer, task
    from twisted.mail.pop3 import IMailbox

    from vmspop.events import EventLog

    calls: list[str] = []

    def run(f, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(f.__name__)
        return defer.maybeDeferred(f, *args, **kwargs)

    @implementer(IRealm)
    class Realm:
        def requestAvatar(self, avatarId, mind, *interfaces):  # type: ignore[no-untyped-def]
            return IMailbox, SimpleNamespace(user=avatarId.decode()), lambda: None

    log = CapturedLog()
    portal = SessionPortal(Realm(), [InMemoryUsernamePasswordDatabaseDontUse(jones=b"pw")],
                           clock=task.Clock(), failure_delay=0, events=EventLog("info", False, log.logger),
                           run_in_thread=run)
    mind = LoginAttempts(2, "192.0.2.7", "s1")
    refused = portal.login(UsernamePassword(b"jones", b"nope"), mind, IMailbox)
    assert refused.result.check(UnauthorizedLogin) and mind.failures == 1
    refused.addErrback(lambda _: None)
    assert log.matching("auth failed: user=<jones> method=USER rip=192.0.2.7")
    assert portal.login(UsernamePassword(b"jones", b"pw"), mind, IMailbox).result[1].user == "jones"
    assert log.matching("login: user=<jones> method=USER rip=192.0.2.7")
    assert calls == []


def test_without_openat2_a_login_goes_straight_to_the_pool(server: Server,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """On a kernel without openat2 nothing is tried on the reactor thread first."""
    monkeypatch.setattr(cached, "_syscall", False)
    server.deliver("jones", b"Subject: x\n\nbody\n")
    settle(server)
    calls = counting_thread_calls(server)
    tried: list[bool] = []
    real = cached.without_waiting
    monkeypatch.setattr(cached, "without_waiting", lambda: tried.append(True) or real())
    assert server.connect().login().startswith(b"+OK")
    assert calls == ["check_and_open"] and tried == []
