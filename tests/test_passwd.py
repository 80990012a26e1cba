"""Tests for vmspop.passwd."""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmspop import cached
from vmspop.passwd import (
    Account,
    InvalidUsername,
    PasswdError,
    PasswordFile,
    format_account,
    normalize_username,
    parse_passwd,
    utc_today,
)

SECRET = "{PLAIN}s3cr3t-hash"

SAMPLE = """\
# vmspop password file
  # an indented comment

Alice:{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA:1000:100:Alice Liddell:\
/home/alice:/bin/sh:userdb_quota_rule=*:storage=1G disuser nopassword
bob:{SHA512-CRYPT}$6$salt$hash
# trailing comment
carol:{PLAIN}pw::::::DISMAIL expires=2026-12-01 x=a=b
"""


def _write(path: Path, text: str, mtime_ns: int | None = None) -> None:
    """Writes a file in place (same inode) and optionally sets its mtime."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


# An mtime safely outside the racy window, so the cache trusts the file.
OLD_NS = 1_600_000_000 * 10**9


# --- User names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Alice", "alice"),
        ("SYSTEM", "system"),
        ("a$b_c.d-e9", "a$b_c.d-e9"),
        ("_x", "_x"),
        ("$", "$"),
        (b"BOB", "bob"),
        ("a" * 32, "a" * 32),
    ],
)
def test_normalize_username_accepts_valid_names(name: str | bytes, expected: str) -> None:
    """Valid names are accepted and lower-cased."""
    assert normalize_username(name) == expected


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../x", "start with"),
        ("a/b", "may only contain"),
        ("", "empty"),
        (b"", "empty"),
        ("a" * 33, "longer than 32"),
        (".x", "start with"),
        ("-x", "start with"),
        ("a\x00b", "may only contain"),
        ("a b", "may only contain"),
        ("a:b", "may only contain"),
        ("user\n", "may only contain"),
        ("jörg", "may only contain"),
        ("\u212a", "may only contain"),  # KELVIN SIGN, which lower-cases to "k"
        (b"\xff", "may only contain"),
    ],
)
def test_normalize_username_rejects_invalid_names(name: str | bytes, reason: str) -> None:
    """Invalid names raise InvalidUsername saying why."""
    with pytest.raises(InvalidUsername, match=reason) as info:
        normalize_username(name)
    assert isinstance(info.value, ValueError)
    assert "invalid user name" in str(info.value)


def test_invalid_username_message_is_bounded() -> None:
    """A very long name is shortened in the message."""
    with pytest.raises(InvalidUsername) as info:
        normalize_username("x" * 10_000)
    assert len(str(info.value)) < 200


# --- Parsing and formatting ---------------------------------------------------


def test_parse_sample() -> None:
    """Fields, flags and unknown extra fields are parsed; comments skipped."""
    accounts = parse_passwd(SAMPLE)
    assert list(accounts) == ["alice", "bob", "carol"]
    alice = accounts["alice"]
    assert alice.name == "alice"
    assert alice.password_hash.startswith("{ARGON2ID}$argon2id$")
    assert (alice.uid, alice.gid) == (1000, 100)
    assert (alice.gecos, alice.home, alice.shell) == ("Alice Liddell", "/home/alice", "/bin/sh")
    assert alice.disuser and not alice.dismail and alice.expires is None
    assert alice.extra == (("userdb_quota_rule", "*:storage=1G"), ("nopassword", None))
    bob = accounts["bob"]
    assert bob == Account(name="bob", password_hash="{SHA512-CRYPT}$6$salt$hash")
    carol = accounts["carol"]
    assert carol.uid is None and carol.gid is None
    assert carol.dismail and not carol.disuser
    assert carol.expires == datetime.date(2026, 12, 1)
    assert carol.extra == (("x", "a=b"),)


def test_format_round_trips() -> None:
    """Every parsed account formats to a line that parses back to it."""
    for account in parse_passwd(SAMPLE).values():
        line = format_account(account)
        assert "\n" not in line
        assert parse_passwd(line) == {account.name: account}


def test_format_account_layout() -> None:
    """Trailing empty fields are dropped; flags come first in the extra field."""
    assert format_account(Account(name="bob", password_hash="{PLAIN}x")) == "bob:{PLAIN}x"
    assert (
        format_account(Account(name="bob", password_hash="{PLAIN}x", uid=0, home="/h"))
        == "bob:{PLAIN}x:0:::/h"
    )
    account = Account(
        name="carol",
        password_hash="{PLAIN}x",
        disuser=True,
        dismail=True,
        expires=datetime.date(2027, 1, 2),
        extra=(("k", "v"), ("bare", None)),
    )
    assert format_account(account) == (
        "carol:{PLAIN}x::::::disuser dismail expires=2027-01-02 k=v bare"
    )


@pytest.mark.parametrize(
    "account",
    [
        Account(name="Bob", password_hash="{PLAIN}x"),
        Account(name="../x", password_hash="{PLAIN}x"),
        Account(name="bob", password_hash="{PLAIN}x:y"),
        Account(name="bob", password_hash="{PLAIN}x\ny"),
        Account(name="bob", password_hash="{PLAIN}x", gecos="a:b"),
        Account(name="bob", password_hash="{PLAIN}x", home="/h\r"),
        Account(name="bob", password_hash="{PLAIN}x", uid=-1),
        Account(name="bob", password_hash="{PLAIN}x", gid=2**32),
        Account(name="bob", password_hash="{PLAIN}x", extra=(("a b", None),)),
        Account(name="bob", password_hash="{PLAIN}x", extra=(("a=b", None),)),
        Account(name="bob", password_hash="{PLAIN}x", extra=(("", "v"),)),
        Account(name="bob", password_hash="{PLAIN}x", extra=(("k", "v w"),)),
        Account(name="bob", password_hash="{PLAIN}x", extra=(("DISUSER", None),)),
    ],
)
def test_format_account_rejects_unrepresentable(account: Account) -> None:
    """Accounts that would not parse back identically raise ValueError."""
    with pytest.raises(ValueError):
        format_account(account)


def test_parse_flags() -> None:
    """Flags accept bare keys, yes/no values and any case."""
    accounts = parse_passwd(
        "a:x::::::disuser\n"
        "b:x::::::DISUSER=yes dismail=no\n"
        "c:x::::::disuser=no Dismail=True\n"
        "d:x::::::EXPIRES=2030-02-28\n"
    )
    assert (accounts["a"].disuser, accounts["a"].dismail) == (True, False)
    assert (accounts["b"].disuser, accounts["b"].dismail) == (True, False)
    assert (accounts["c"].disuser, accounts["c"].dismail) == (False, True)
    assert accounts["d"].expires == datetime.date(2030, 2, 28)


def test_parse_crlf_and_missing_final_newline() -> None:
    """CRLF line ends and a missing final newline are tolerated."""
    accounts = parse_passwd("# c\r\nalice:{PLAIN}pw:1\r\nbob:{PLAIN}pw")
    assert accounts["alice"].uid == 1
    assert accounts["alice"].password_hash == "{PLAIN}pw"
    assert accounts["bob"].password_hash == "{PLAIN}pw"


def test_parse_empty() -> None:
    """An empty or comment-only file has no accounts."""
    assert parse_passwd("") == {}
    assert parse_passwd("# nobody here\n\n") == {}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("alice", "at least"),
        (f"alice:{SECRET}:abc", "uid"),
        (f"alice:{SECRET}:+1", "uid"),
        (f"alice:{SECRET}:4294967296", "uid"),
        (f"alice:{SECRET}:1:-1", "gid"),
        (f"alice:{SECRET}:1:1.5", "gid"),
        (f"alice:{SECRET}::::::expires=2026-13-01", "expires"),
        (f"alice:{SECRET}::::::expires=tomorrow", "expires"),
        (f"alice:{SECRET}::::::expires", "expires"),
        (f"alice:{SECRET}::::::expires=2026-1-1", "expires"),
        (f"alice:{SECRET}::::::disuser=maybe", "disuser"),
        (f"alice:{SECRET}::::::dismail dismail", "duplicate"),
        (f"alice:{SECRET}::::::=v", "without a name"),
        (f"../alice:{SECRET}", "invalid user name"),
        (f":{SECRET}", "invalid user name"),
        (f"alice:{SECRET}\nALICE:{SECRET}", "duplicate user 'alice'"),
    ],
)
def test_parse_errors_name_line_not_hash(line: str, reason: str) -> None:
    """Malformed lines raise PasswdError with file and line, never the hash."""
    text = f"# header\n\n{line}\n"
    with pytest.raises(PasswdError, match=reason) as info:
        parse_passwd(text, "/etc/vmspop/passwd")
    message = str(info.value)
    lineno = 3 + line.count("\n")
    assert message.startswith(f"/etc/vmspop/passwd:{lineno}: ")
    assert "s3cr3t" not in message


def test_parse_error_does_not_quote_misaligned_secret() -> None:
    """A PLAIN password containing ':' spills into uid, but is not quoted."""
    with pytest.raises(PasswdError, match="uid") as info:
        parse_passwd("alice:{PLAIN}hunter:2xyz\n")
    assert "hunter" not in str(info.value) and "2xyz" not in str(info.value)


# --- Expiry -------------------------------------------------------------------


def test_expiry_boundary() -> None:
    """expires=2026-12-01 allows 2026-11-30 and refuses from 2026-12-01 on."""
    account = parse_passwd("carol:{PLAIN}x::::::expires=2026-12-01\n")["carol"]
    assert not account.expired(datetime.date(2026, 11, 30))
    assert account.expired(datetime.date(2026, 12, 1))
    assert account.expired(datetime.date(2026, 12, 2))
    never = Account(name="dave", password_hash="{PLAIN}x")
    assert not never.expired(datetime.date(9999, 12, 31))


def test_utc_today() -> None:
    """utc_today() is the current UTC date."""
    before = datetime.datetime.now(datetime.UTC).date()
    today = utc_today()
    after = datetime.datetime.now(datetime.UTC).date()
    assert before <= today <= after


# --- PasswordFile: reading ----------------------------------------------------


def test_missing_file_has_no_users(tmp_path: Path) -> None:
    """A missing file means no users, not an error."""
    passwd = PasswordFile(tmp_path / "passwd")
    assert passwd.lookup("alice") is None
    assert passwd.accounts() == {}


def test_lookup_is_case_insensitive(tmp_path: Path) -> None:
    """Lookups match names in any case; invalid names are simply unknown."""
    path = tmp_path / "passwd"
    _write(path, SAMPLE, OLD_NS)
    passwd = PasswordFile(str(path))
    for name in ("alice", "ALICE", "aLiCe"):
        account = passwd.lookup(name)
        assert account is not None and account.name == "alice"
    assert passwd.lookup("nobody") is None
    assert passwd.lookup("../alice") is None
    assert passwd.lookup("") is None
    assert list(passwd.accounts()) == ["alice", "bob", "carol"]


def test_reload_on_change(tmp_path: Path) -> None:
    """A rewritten file with a different mtime is re-read."""
    path = tmp_path / "passwd"
    _write(path, "alice:{PLAIN}one\n", OLD_NS)
    passwd = PasswordFile(path)
    assert passwd.lookup("alice") == Account(name="alice", password_hash="{PLAIN}one")
    _write(path, "alice:{PLAIN}two\nbob:{PLAIN}x\n", OLD_NS + 10**9)
    assert passwd.lookup("alice") == Account(name="alice", password_hash="{PLAIN}two")
    assert passwd.lookup("bob") is not None
    path.unlink()
    assert passwd.lookup("alice") is None


def test_unchanged_file_is_served_from_cache(tmp_path: Path) -> None:
    """With mtime, size and inode unchanged the file is not re-read."""
    path = tmp_path / "passwd"
    _write(path, "alice:{PLAIN}one\n", OLD_NS)
    passwd = PasswordFile(path)
    assert passwd.lookup("alice") is not None
    # Same size, same inode, mtime restored: indistinguishable by stat().
    _write(path, "alice:{PLAIN}two\n", OLD_NS)
    account = passwd.lookup("alice")
    assert account is not None and account.password_hash == "{PLAIN}one"


def test_recently_modified_file_is_not_trusted(tmp_path: Path) -> None:
    """A file modified within the racy window is re-read even if stat() matches."""
    path = tmp_path / "passwd"
    _write(path, "alice:{PLAIN}one\n")
    recent_ns = path.stat().st_mtime_ns
    passwd = PasswordFile(path)
    assert passwd.lookup("alice") is not None
    _write(path, "alice:{PLAIN}two\n", recent_ns)
    account = passwd.lookup("alice")
    assert account is not None and account.password_hash == "{PLAIN}two"


def test_malformed_file_raises_until_fixed(tmp_path: Path) -> None:
    """A malformed file raises PasswdError on every lookup until it is fixed."""
    path = tmp_path / "passwd"
    _write(path, f"alice:{SECRET}\nbob:{SECRET}:x\n", OLD_NS)
    passwd = PasswordFile(path)
    for _ in range(2):
        with pytest.raises(PasswdError, match="^" + re.escape(f"{path}:2: ")) as info:
            passwd.lookup("alice")
        assert "s3cr3t" not in str(info.value)
    with pytest.raises(PasswdError):
        passwd.accounts()
    _write(path, f"alice:{SECRET}\n", OLD_NS + 10**9)
    assert passwd.lookup("alice") is not None


# --- PasswordFile: updating ---------------------------------------------------


def test_update_creates_file(tmp_path: Path) -> None:
    """update() on a missing file creates it with mode 0600, plus the lock file."""
    path = tmp_path / "passwd"
    passwd = PasswordFile(path)
    account = Account(name="bob", password_hash="{PLAIN}x", uid=1001)
    assert passwd.update("BOB", lambda old: account) == account
    assert path.read_text() == "bob:{PLAIN}x:1001\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "passwd.lock").stat().st_mode) == 0o600
    assert passwd.lookup("bob") == account
    # Only the file and its lock: no temporary files left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd", "passwd.lock"]


def test_update_modifies_in_place_preserving_everything_else(tmp_path: Path) -> None:
    """Only the changed line differs; comments, order, CRLF and mode are kept."""
    path = tmp_path / "passwd"
    text = SAMPLE.replace("bob:{SHA512-CRYPT}$6$salt$hash\n", "bob:{SHA512-CRYPT}$6$salt$hash\r\n")
    _write(path, text, OLD_NS)
    path.chmod(0o640)
    passwd = PasswordFile(path)
    assert passwd.lookup("alice") is not None

    seen: list[Account | None] = []

    def disable(old: Account | None) -> Account | None:
        seen.append(old)
        assert old is not None
        return dataclasses.replace(old, disuser=False, dismail=True)

    new = passwd.update("ALICE", disable)
    assert seen[0] is not None and seen[0].name == "alice"
    old_line = next(line for line in text.splitlines() if line.startswith("Alice:"))
    new_line = (
        "alice:{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA:1000:100:"
        "Alice Liddell:/home/alice:/bin/sh:dismail userdb_quota_rule=*:storage=1G nopassword"
    )
    assert path.read_bytes().decode() == text.replace(old_line, new_line)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert passwd.lookup("alice") == new
    assert list(passwd.accounts()) == ["alice", "bob", "carol"]


def test_update_appends_and_removes(tmp_path: Path) -> None:
    """A new account is appended; returning None removes the line."""
    path = tmp_path / "passwd"
    _write(path, "# head\nalice:{PLAIN}a\n# tail", OLD_NS)
    passwd = PasswordFile(path)
    passwd.update("dave", lambda old: Account(name="dave", password_hash="{PLAIN}d"))
    assert path.read_text() == "# head\nalice:{PLAIN}a\n# tail\ndave:{PLAIN}d\n"
    assert passwd.update("alice", lambda old: None) is None
    assert path.read_text() == "# head\n# tail\ndave:{PLAIN}d\n"
    assert passwd.lookup("alice") is None


def test_update_without_change_does_not_write(tmp_path: Path) -> None:
    """If change() returns the current state the file is not rewritten."""
    path = tmp_path / "passwd"
    _write(path, "alice:{PLAIN}a\n", OLD_NS)
    inode = path.stat().st_ino
    passwd = PasswordFile(path)
    assert passwd.update("alice", lambda old: old) is not None
    assert passwd.update("nobody", lambda old: None) is None
    assert path.stat().st_ino == inode
    assert path.stat().st_mtime_ns == OLD_NS


def test_update_refuses_rename_and_bad_accounts(tmp_path: Path) -> None:
    """Renaming or unwritable accounts raise ValueError and leave the file alone."""
    path = tmp_path / "passwd"
    _write(path, "alice:{PLAIN}a\n", OLD_NS)
    passwd = PasswordFile(path)
    with pytest.raises(ValueError, match="renamed"):
        passwd.update("alice", lambda old: Account(name="bob", password_hash="{PLAIN}b"))
    with pytest.raises(ValueError):
        passwd.update("alice", lambda old: Account(name="alice", password_hash="{PLAIN}a:b"))
    with pytest.raises(InvalidUsername):
        passwd.update("../etc", lambda old: None)

    def fail(old: Account | None) -> Account | None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        passwd.update("alice", fail)
    assert path.read_text() == "alice:{PLAIN}a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd", "passwd.lock"]


def test_update_refuses_malformed_file(tmp_path: Path) -> None:
    """A malformed file is not rewritten by update()."""
    path = tmp_path / "passwd"
    _write(path, "alice:{PLAIN}a:notanumber\n", OLD_NS)
    passwd = PasswordFile(path)
    with pytest.raises(PasswdError, match=":1: "):
        passwd.update("bob", lambda old: Account(name="bob", password_hash="{PLAIN}b"))
    assert path.read_text() == "alice:{PLAIN}a:notanumber\n"


def test_update_through_symlink_replaces_target(tmp_path: Path) -> None:
    """Updating via a symlink rewrites the file it points to and keeps the link."""
    real = tmp_path / "real"
    real.mkdir()
    _write(real / "passwd", "alice:{PLAIN}a\n", OLD_NS)
    link = tmp_path / "passwd"
    link.symlink_to(real / "passwd")
    passwd = PasswordFile(link)
    passwd.update("bob", lambda old: Account(name="bob", password_hash="{PLAIN}b"))
    assert link.is_symlink()
    assert (real / "passwd").read_text() == "alice:{PLAIN}a\nbob:{PLAIN}b\n"


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    """20 threads adding a user each, through separate objects, leave 20 users."""
    path = tmp_path / "passwd"
    _write(path, "# users\n")
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            passwd = PasswordFile(path) if i % 2 else shared
            barrier.wait()
            name = f"user{i}"
            passwd.update(name, lambda old: Account(name=name, password_hash="{PLAIN}x", uid=i))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    shared = PasswordFile(path)
    threads = [threading.Thread(target=add, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    accounts = PasswordFile(path).accounts()
    assert sorted(accounts) == sorted(f"user{i}" for i in range(20))
    assert all(accounts[f"user{i}"].uid == i for i in range(20))
    assert path.read_text().startswith("# users\n")
    assert len(shared.accounts()) == 20


# --- Property: format/parse round trip ------------------------------------------

def _has_space(text: str) -> bool:
    """Tells whether str.split() would split the text."""
    return any(c.isspace() for c in text)


_field_text = st.text(
    alphabet=st.characters(exclude_characters=":\n\r", exclude_categories=["Cs"]),
    max_size=12,
)
_token = st.text(
    alphabet=st.characters(
        exclude_categories=["Cs", "Zs", "Zl", "Zp", "Cc"], exclude_characters="="
    ),
    min_size=1,
    max_size=8,
).filter(lambda s: not _has_space(s) and s.lower() not in {"disuser", "dismail", "expires"})
_value = st.none() | st.text(
    alphabet=st.characters(exclude_categories=["Cs", "Zs", "Zl", "Zp", "Cc"]), max_size=8
).filter(lambda s: not _has_space(s))


@settings(max_examples=100, deadline=None)
@given(
    account=st.builds(
        Account,
        name=st.from_regex(r"[a-z0-9_$][a-z0-9_$.-]{0,31}", fullmatch=True),
        password_hash=_field_text,
        uid=st.none() | st.integers(0, 2**32 - 1),
        gid=st.none() | st.integers(0, 2**32 - 1),
        gecos=_field_text,
        home=_field_text,
        shell=_field_text,
        disuser=st.booleans(),
        dismail=st.booleans(),
        expires=st.none() | st.dates(),
        extra=st.lists(st.tuples(_token, _value), max_size=3).map(tuple),
    )
)
def test_format_parse_round_trip_property(account: Account) -> None:
    """Any representable account survives format_account() then parse_passwd()."""
    assert parse_passwd(format_account(account)) == {account.name: account}


@pytest.mark.skipif(not cached.available(), reason="openat2 with RESOLVE_CACHED is not available here")
def test_a_lookup_without_waiting_does_not_wait_for_a_reload(tmp_path: Path) -> None:
    """While a thread holds the file's mutex (re-reading it), a lookup on the reactor
    thread gives up at once (NotCached) instead of waiting for that disk read."""
    path = tmp_path / "users"
    path.write_text("jones:{PLAIN}pw\n")
    os.utime(path, (1e9, 1e9))  # long unchanged: its cached contents are trusted
    passwords = PasswordFile(path)
    assert passwords.lookup("jones") is not None
    with cached.without_waiting():
        assert passwords.lookup("jones") is not None  # from memory, when nothing holds it
    held, done = threading.Event(), threading.Event()

    def reloading() -> None:
        with passwords._mutex:
            held.set()
            done.wait(5)  # a lookup that waited would get the mutex only then, and fail below

    thread = threading.Thread(target=reloading)
    thread.start()
    held.wait()
    try:
        with cached.without_waiting(), pytest.raises(cached.NotCached):
            passwords.lookup("jones")
    finally:
        done.set()
        thread.join()
