"""Tests for the administration command ``vmspop`` (vmspop.cli)."""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import errno
import io
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vmspop import cli, secretfile
from vmspop.hashing import verify_password
from vmspop.passwd import Account, PasswordFile
from vmspop.store import DeliveryError, MailStore

REPO = Path(__file__).resolve().parent.parent
MESSAGE = b"From: alice@example.com\r\nSubject: hello\r\n\r\nHello, world.\r\n"


class Env:
    """A store and password file under tmp_path, and a way to run ``vmspop`` on them."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp = tmp_path
        self.mail_root = tmp_path / "mail"
        self.passwd = tmp_path / "passwd"
        self.store = MailStore(self.mail_root)
        self._monkeypatch = monkeypatch
        self._capsys = capsys
        self.out = ""
        self.err = ""

    def stdin(self, data: bytes) -> None:
        """Make ``data`` the standard input (not a terminal)."""
        self._monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))

    def run(self, *args: str, stdin: bytes = b"", paths: bool = True) -> int:
        """Run ``vmspop [--mail-root M --passwd P] args`` and keep its output."""
        self.stdin(stdin)
        argv = (["--mail-root", str(self.mail_root), "--passwd", str(self.passwd)]
                if paths else []) + list(args)
        self._capsys.readouterr()
        status = cli.main(argv)
        self.out, self.err = self._capsys.readouterr()
        return status

    def add(self, user: str = "jones", password: str = "wonderland", *flags: str,
            argon2: bool = False) -> None:
        """adduser, which must succeed; with a cheap {PLAIN} hash unless ``argon2`` (for speed)."""
        with self._monkeypatch.context() as patch:
            if not argon2:
                patch.setattr(cli.hashing, "hash_password", lambda password: "{PLAIN}" + password)
            status = self.run("adduser", user, *flags, stdin=password.encode() + b"\n")
        assert status == 0, self.err

    def account(self, user: str = "jones") -> Account | None:
        """The account as stored in the password file."""
        return PasswordFile(self.passwd).lookup(user)

    def files(self, user: str, folder: str = "NEWMAIL", sub: str = "new") -> list[Path]:
        """The files of one Maildir subdirectory."""
        directory = self.mail_root / user / folder / sub
        return sorted(directory.iterdir()) if directory.is_dir() else []

    def one_error_line(self) -> str:
        """The single stderr line, checked to carry the ``vmspop: `` prefix."""
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("vmspop: "), self.err
        return lines[0]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Env:
    return Env(tmp_path, monkeypatch, capsys)


def terminal(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """Pretend stdin is a terminal whose getpass prompts return ``answers``; returns the prompts."""
    prompts: list[str] = []
    replies = iter(answers)

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        prompts.append(prompt)
        return next(replies)

    tty = io.TextIOWrapper(io.BytesIO(b"must not be read\n"))
    monkeypatch.setattr(tty, "isatty", lambda: True)
    monkeypatch.setattr(sys, "stdin", tty)
    monkeypatch.setattr(cli.getpass, "getpass", fake_getpass)
    return prompts


# -- general ---------------------------------------------------------------------------


def test_help_returns_zero(env: Env) -> None:
    """--help prints usage and main returns 0 instead of raising SystemExit."""
    assert env.run("--help", paths=False) == 0
    assert "adduser" in env.out and "check" in env.out


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["adduser"], ["deliver"], ["--bogus", "check"]])
def test_usage_errors_exit_2_with_one_line(env: Env, argv: list[str]) -> None:
    """A bad command line is one 'vmspop: ' line on stderr and status 2."""
    assert env.run(*argv, paths=False) == 2
    env.one_error_line()


def test_console_script_runs_as_module(tmp_path: Path) -> None:
    """python -m vmspop.cli works as the console script: adduser, then check of the result."""
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    base = [sys.executable, "-m", "vmspop.cli", "--mail-root", "mail", "--passwd", "passwd"]
    added = subprocess.run([*base, "adduser", "Jones"], input=b"pw\n", capture_output=True,
                           cwd=tmp_path, env=environment, timeout=60)
    assert added.returncode == 0, added.stderr
    assert b"added user jones" in added.stdout
    assert b"pw" not in added.stdout + added.stderr
    checked = subprocess.run([*base, "check"], capture_output=True, cwd=tmp_path,
                             env=environment, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    account = PasswordFile(tmp_path / "passwd").lookup("jones")
    assert account is not None and verify_password(account.password_hash, "pw")


def test_default_paths_are_under_vmspop_data(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without options the store is vmspop-data/mail and vmspop-data/passwd in the working directory."""
    monkeypatch.chdir(env.tmp)
    assert env.run("adduser", "jones", stdin=b"pw\n", paths=False) == 0
    assert (env.tmp / "vmspop-data" / "passwd").is_file()
    assert (env.tmp / "vmspop-data" / "mail" / "jones" / "NEWMAIL" / "new").is_dir()
    assert "vmspop-data/mail/jones" in env.out


# -- --config ---------------------------------------------------------------------------


def test_config_file_sets_paths_and_ignores_server_keys(env: Env) -> None:
    """mail-root and passwd come from --config; server-only keys are accepted and ignored."""
    config = env.tmp / "vmspop.toml"
    config.write_text(f'mail-root = "{env.tmp / "cfgmail"}"\npasswd = "{env.tmp / "cfgpasswd"}"\n'
                      'pop3 = ["tcp:1110"]\nsecurity = "friendly"\nidle-timeout = 600\n'
                      'leave-in-newmail = true\n')
    assert env.run("--config", str(config), "adduser", "jones", stdin=b"pw\n", paths=False) == 0
    assert PasswordFile(env.tmp / "cfgpasswd").lookup("jones") is not None
    assert (env.tmp / "cfgmail" / "jones" / "MAIL" / "cur").is_dir()


def test_command_line_overrides_config_file(env: Env) -> None:
    """--mail-root and --passwd on the command line win over the config file."""
    config = env.tmp / "vmspop.toml"
    config.write_text(f'mail-root = "{env.tmp / "cfgmail"}"\npasswd = "{env.tmp / "cfgpasswd"}"\n')
    assert env.run("--config", str(config), "adduser", "jones", stdin=b"pw\n") == 0
    assert env.account() is not None and (env.mail_root / "jones").is_dir()
    assert not (env.tmp / "cfgpasswd").exists() and not (env.tmp / "cfgmail").exists()


@pytest.mark.parametrize("content, words", [
    ('mail-root = "/x"\nsubmarine = 1\n', "submarine"),
    ("mail-root = \n", "not valid TOML"),
    ("passwd = 5\n", "--passwd"),
])
def test_bad_config_file_is_a_usage_error(env: Env, content: str, words: str) -> None:
    """An unknown key, invalid TOML or a mistyped value in --config exits 2."""
    config = env.tmp / "vmspop.toml"
    config.write_text(content)
    assert env.run("--config", str(config), "check", paths=False) == 2
    assert words in env.one_error_line()


def test_missing_config_file_is_a_usage_error(env: Env) -> None:
    """A --config file that does not exist exits 2."""
    assert env.run("--config", str(env.tmp / "nope.toml"), "check", paths=False) == 2
    assert "nope.toml" in env.one_error_line()


# -- adduser ----------------------------------------------------------------------------


def test_adduser_creates_account_and_mail_directory(env: Env) -> None:
    """adduser stores an Argon2id hash and creates NEWMAIL and MAIL Maildirs, printing no password."""
    assert env.run("adduser", "Jones", stdin=b"s3cr3t-pw\n") == 0
    account = env.account("JONES")
    assert account is not None and account.name == "jones"
    assert account.password_hash.startswith("{ARGON2ID}$argon2id$")
    assert verify_password(account.password_hash, "s3cr3t-pw")
    assert not (account.disuser or account.dismail or account.expires)
    for folder in ("NEWMAIL", "MAIL"):
        for sub in ("cur", "new", "tmp"):
            assert (env.mail_root / "jones" / folder / sub).is_dir()
    assert env.out == f"vmspop: added user jones (mail directory {env.mail_root / 'jones'})\n"
    assert "s3cr3t-pw" not in env.out + env.err


def test_adduser_flags(env: Env) -> None:
    """--disabled, --nomail and --expires set DISUSER, DISMAIL and the expiry date."""
    env.add("jones", "pw", "--disabled", "--nomail", "--expires", "2026-12-01")
    account = env.account()
    assert account is not None
    assert account.disuser and account.dismail
    assert account.expires == datetime.date(2026, 12, 1)


def test_adduser_existing_user_fails(env: Env) -> None:
    """adduser of an existing user (in any case) exits 1 and keeps the old password."""
    env.add("jones", "first")
    before = env.passwd.read_bytes()
    assert env.run("adduser", "JONES", stdin=b"second\n") == 1
    assert "already exists" in env.one_error_line()
    assert env.passwd.read_bytes() == before


def test_adduser_keeps_existing_mail_directory(env: Env) -> None:
    """An orphaned mail directory is adopted, its mail kept."""
    env.store.create_mailbox("jones")
    env.store.deliver(["jones"], [MESSAGE])
    env.add("jones")
    assert "already there" in env.out
    assert len(env.files("jones")) == 1


def test_adduser_refuses_user_path_that_is_not_a_directory(env: Env) -> None:
    """A file where the mail directory should be is an error (1) and no account is added."""
    env.mail_root.mkdir()
    (env.mail_root / "jones").write_text("junk")
    assert env.run("adduser", "jones", stdin=b"pw\n") == 1
    assert "not a directory" in env.one_error_line()
    assert env.account() is None


@pytest.mark.parametrize("name", ["a/b", "..", "-x", "x" * 33, "jönes", ""])
def test_adduser_invalid_user_name_exits_2(env: Env, name: str) -> None:
    """An invalid user name is a usage error and nothing is created."""
    assert env.run("adduser", name, stdin=b"pw\n") == 2
    env.one_error_line()
    assert not env.passwd.exists() and not env.mail_root.exists()


@pytest.mark.parametrize("date", ["2026-02-30", "20261201", "2026-1-01", "tomorrow"])
def test_adduser_bad_date_exits_2(env: Env, date: str) -> None:
    """--expires takes exactly YYYY-MM-DD; anything else exits 2."""
    assert env.run("adduser", "jones", "--expires", date, stdin=b"pw\n") == 2
    assert "YYYY-MM-DD" in env.one_error_line()
    assert not env.passwd.exists()


@pytest.mark.parametrize("stdin, words", [
    (b"\n", "empty password"),
    (b"", "no password"),
    (b"x" * 1100 + b"\n", "longer than 1024"),
])
def test_adduser_bad_password_input_fails(env: Env, stdin: bytes, words: str) -> None:
    """An empty, missing or overlong password exits 1 and adds nothing."""
    assert env.run("adduser", "jones", stdin=stdin) == 1
    assert words in env.one_error_line()
    assert env.account() is None


def test_password_line_keeps_spaces_and_reads_one_line(env: Env) -> None:
    """Only the line end is stripped (LF or CRLF); a second line is not part of the password."""
    env.add("jones", "  spaced pw  ")
    account = env.account()
    assert account is not None and verify_password(account.password_hash, "  spaced pw  ")
    assert env.run("adduser", "smith", stdin=b"crlf\r\nsecond line\n") == 0
    smith = env.account("smith")
    assert smith is not None and verify_password(smith.password_hash, "crlf")


def test_password_bytes_survive_as_the_server_decodes_them(env: Env) -> None:
    """A non-UTF-8 password is hashed byte for byte (UTF-8 with surrogateescape, like PASS)."""
    assert env.run("adduser", "jones", stdin=b"caf\xe9\n") == 0
    account = env.account()
    assert account is not None
    assert verify_password(account.password_hash, b"caf\xe9".decode("utf-8", "surrogateescape"))


def test_adduser_prompts_twice_on_a_terminal(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the password is asked for twice with getpass."""
    prompts = terminal(monkeypatch, "tty-pw", "tty-pw")
    assert cli.main(["--mail-root", str(env.mail_root), "--passwd", str(env.passwd),
                     "adduser", "jones"]) == 0
    assert len(prompts) == 2
    account = env.account()
    assert account is not None and verify_password(account.password_hash, "tty-pw")


def test_adduser_mismatched_passwords_fail(env: Env, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Two different entries on a terminal exit 1 with 'passwords do not match'."""
    terminal(monkeypatch, "one", "two")
    assert cli.main(["--mail-root", str(env.mail_root), "--passwd", str(env.passwd),
                     "adduser", "jones"]) == 1
    assert "passwords do not match" in capsys.readouterr().err
    assert env.account() is None


def test_adduser_creates_passwd_directory(env: Env) -> None:
    """A missing parent directory of the password file is created."""
    env.passwd = env.tmp / "etc" / "vmspop" / "passwd"
    env.add("jones")
    assert env.passwd.is_file()
    assert stat.S_IMODE(env.passwd.stat().st_mode) == 0o600
    assert stat.S_IMODE(env.passwd.parent.stat().st_mode) == 0o700


# -- passwd ----------------------------------------------------------------------------


def test_passwd_changes_the_password(env: Env) -> None:
    """adduser, then passwd: the stored hash verifies the new password only."""
    env.add("jones", "old-pw", "--nomail", argon2=True)
    before = env.account()
    assert before is not None and verify_password(before.password_hash, "old-pw")
    assert env.run("passwd", "JONES", stdin=b"new-pw\n") == 0
    account = env.account()
    assert account is not None
    assert account.password_hash.startswith("{ARGON2ID}$argon2id$")
    assert verify_password(account.password_hash, "new-pw")
    assert not verify_password(account.password_hash, "old-pw")
    assert account.dismail  # other fields untouched
    assert "changed the password of jones" in env.out
    assert "new-pw" not in env.out + env.err


def test_passwd_unknown_user_fails(env: Env) -> None:
    """passwd of an unknown user exits 1 and creates nothing."""
    assert env.run("passwd", "nobody", stdin=b"pw\n") == 1
    assert "no such user nobody" in env.one_error_line()
    assert not env.passwd.exists()


def test_passwd_empty_password_fails(env: Env) -> None:
    """An empty new password is refused (1) and the old one stays."""
    env.add("jones", "old-pw")
    assert env.run("passwd", "jones", stdin=b"\n") == 1
    account = env.account()
    assert account is not None and verify_password(account.password_hash, "old-pw")


def test_passwd_mismatch_on_terminal_fails(env: Env, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Mismatched terminal entries leave the password unchanged (1)."""
    env.add("jones", "old-pw")
    terminal(monkeypatch, "a", "b")
    assert cli.main(["--mail-root", str(env.mail_root), "--passwd", str(env.passwd),
                     "passwd", "jones"]) == 1
    assert "do not match" in capsys.readouterr().err
    account = env.account()
    assert account is not None and verify_password(account.password_hash, "old-pw")


def test_passwd_invalid_user_name_exits_2(env: Env) -> None:
    """passwd with an invalid user name is a usage error."""
    assert env.run("passwd", "bad/name", stdin=b"pw\n") == 2
    env.one_error_line()


# -- modify -----------------------------------------------------------------------------


@pytest.mark.parametrize("flags, disuser, dismail, expires, shown", [
    (["--disabled"], True, False, None, "disabled, mail, no expiry"),
    (["--nomail"], False, True, None, "enabled, nomail, no expiry"),
    (["--expires", "2027-01-31"], False, False, datetime.date(2027, 1, 31),
     "enabled, mail, expires 2027-01-31"),
    (["--disabled", "--nomail", "--expires", "2027-01-31"], True, True,
     datetime.date(2027, 1, 31), "disabled, nomail, expires 2027-01-31"),
])
def test_modify_sets_flags(env: Env, flags: list[str], disuser: bool, dismail: bool,
                           expires: datetime.date | None, shown: str) -> None:
    """modify sets each flag and prints the resulting flags."""
    env.add("jones")
    assert env.run("modify", "Jones", *flags) == 0
    account = env.account()
    assert account is not None
    assert (account.disuser, account.dismail, account.expires) == (disuser, dismail, expires)
    assert env.out == f"vmspop: user jones: {shown}\n"


def test_modify_clears_flags(env: Env) -> None:
    """--enabled, --mail and --no-expiry undo DISUSER, DISMAIL and the expiry date."""
    env.add("jones", "pw", "--disabled", "--nomail", "--expires", "2026-12-01")
    assert env.run("modify", "jones", "--enabled", "--mail", "--no-expiry") == 0
    account = env.account()
    assert account is not None
    assert not (account.disuser or account.dismail or account.expires)
    assert env.out == "vmspop: user jones: enabled, mail, no expiry\n"


def test_modify_one_flag_leaves_the_others(env: Env) -> None:
    """Changing one flag keeps the others, the hash and foreign fields."""
    env.passwd.write_text("jones:{PLAIN}pw:1000:100:Jones:/home/jones:/bin/sh:quota=1G dismail\n")
    assert env.run("modify", "jones", "--disabled") == 0
    account = env.account()
    assert account is not None
    assert account.disuser and account.dismail
    assert (account.password_hash, account.uid, account.gecos) == ("{PLAIN}pw", 1000, "Jones")
    assert account.extra == (("quota", "1G"),)


@pytest.mark.parametrize("flags", [
    ["--disabled", "--enabled"],
    ["--nomail", "--mail"],
    ["--expires", "2027-01-01", "--no-expiry"],
])
def test_modify_conflicting_flags_exit_2(env: Env, flags: list[str]) -> None:
    """The two flags of a pair exclude each other: usage error, nothing changed."""
    env.add("jones")
    before = env.passwd.read_bytes()
    assert env.run("modify", "jones", *flags) == 2
    assert "not allowed with" in env.one_error_line()
    assert env.passwd.read_bytes() == before


def test_modify_needs_a_flag(env: Env) -> None:
    """modify without any flag is a usage error."""
    env.add("jones")
    assert env.run("modify", "jones") == 2
    assert "at least one" in env.one_error_line()


def test_modify_bad_date_exits_2(env: Env) -> None:
    """modify --expires with a bad date is a usage error."""
    env.add("jones")
    assert env.run("modify", "jones", "--expires", "2027-02-29") == 2


def test_modify_unknown_user_fails(env: Env) -> None:
    """modify of an unknown user exits 1."""
    env.add("jones")
    assert env.run("modify", "smith", "--disabled") == 1
    assert "no such user smith" in env.one_error_line()


# -- secret -----------------------------------------------------------------------------


def with_uid(account: Account | None, uid: int) -> Account:
    """The account with a uid field."""
    assert account is not None
    return dataclasses.replace(account, uid=uid)


def secret_file(env: Env, user: str = "jones") -> Path:
    """Where the user's POP_SECRET.DAT is."""
    return env.mail_root / user / "POP_SECRET.DAT"


@pytest.mark.parametrize("stdin, stored", [
    (b"tanstaafl\n", b"tanstaafl\n"),
    (b"no line end", b"no line end\n"),
    (b"crlf\r\n", b"crlf\n"),
    (b"x" * 500 + b"\n", b"x" * 500 + b"\n"),
    ("é".encode() * 500, "é".encode() * 500 + b"\n"),
])
def test_secret_written_with_mode_0600(env: Env, stdin: bytes, stored: bytes) -> None:
    """secret writes one line of up to 500 characters, mode 0600, and never prints it."""
    env.add("jones")
    assert env.run("secret", "JONES", stdin=stdin) == 0, env.err
    path = secret_file(env)
    assert path.read_bytes() == stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "wrote the APOP secret of jones" in env.out
    assert stored.strip().decode() not in env.out + env.err
    assert sorted(p.name for p in path.parent.iterdir()) == ["MAIL", "NEWMAIL", "POP_SECRET.DAT"]


@pytest.mark.parametrize("stdin, words", [
    (b"x" * 501 + b"\n", "longer than 500"),
    (b"x" * 10000, "longer than 500"),
    (b"a\nb\n", "more than one line"),
    (b"a\n\n", "more than one line"),
    (b"a\rb", "more than one line"),
    (b"\n", "empty"),
    (b"", "empty"),
])
def test_secret_refused_exits_2_and_writes_nothing(env: Env, stdin: bytes, words: str) -> None:
    """Over 500 characters, more than one line, or empty: status 2, no file, no temp file."""
    env.add("jones")
    assert env.run("secret", "jones", stdin=stdin) == 2
    assert words in env.one_error_line()
    assert sorted(p.name for p in (env.mail_root / "jones").iterdir()) == ["MAIL", "NEWMAIL"]


def test_refused_secret_keeps_the_old_one(env: Env) -> None:
    """A refused secret does not touch the existing file."""
    env.add("jones")
    assert env.run("secret", "jones", stdin=b"old\n") == 0
    assert env.run("secret", "jones", stdin=b"new\nsecond\n") == 2
    assert secret_file(env).read_bytes() == b"old\n"


def test_secret_replaces_atomically(env: Env) -> None:
    """A second secret replaces the first by rename (a new inode), mode 0600."""
    env.add("jones")
    assert env.run("secret", "jones", stdin=b"first\n") == 0
    inode = secret_file(env).stat().st_ino
    assert env.run("secret", "jones", stdin=b"second\n") == 0
    assert secret_file(env).read_bytes() == b"second\n"
    assert secret_file(env).stat().st_ino != inode


def test_secret_unknown_user_fails(env: Env) -> None:
    """secret for an unknown user exits 1."""
    env.add("jones")
    assert env.run("secret", "smith", stdin=b"x\n") == 1
    assert "no such user smith" in env.one_error_line()


def test_secret_without_mail_directory_fails(env: Env) -> None:
    """secret for a user whose mail directory is missing exits 1 and writes nothing."""
    env.passwd.write_text("jones:{PLAIN}pw\n")
    assert env.run("secret", "jones", stdin=b"x\n") == 1
    assert "no mail directory" in env.one_error_line()
    assert not env.mail_root.exists()


def test_secret_prompts_twice_on_a_terminal(env: Env, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """On a terminal the secret is asked for twice; a mismatch exits 1 and writes nothing."""
    env.add("jones")
    argv = ["--mail-root", str(env.mail_root), "--passwd", str(env.passwd), "secret", "jones"]
    terminal(monkeypatch, "one", "two")
    assert cli.main(argv) == 1
    assert "secrets do not match" in capsys.readouterr().err
    assert not secret_file(env).exists()
    prompts = terminal(monkeypatch, "tty-secret", "tty-secret")
    assert cli.main(argv) == 0
    assert len(prompts) == 2
    assert secret_file(env).read_bytes() == b"tty-secret\n"


def test_secret_chowned_to_account_uid_as_root(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root the file is given to the account's uid; otherwise no uid is passed."""
    env.add("jones")
    PasswordFile(env.passwd).update("jones", lambda a: with_uid(a, 4242))
    calls: list[int | None] = []
    real_write = secretfile.write_secret
    really_root = os.geteuid() == 0

    def spy(path: Path, secret: bytes, uid: int | None = None) -> None:
        calls.append(uid)
        real_write(path, secret, uid if really_root else None)

    monkeypatch.setattr(cli.secretfile, "write_secret", spy)
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert env.run("secret", "jones", stdin=b"x\n") == 0
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    assert env.run("secret", "jones", stdin=b"y\n") == 0
    assert calls == [None, 4242]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_secret_really_owned_by_account_uid(env: Env) -> None:
    """Run as root, the secret file ends up owned by the account's uid, mode 0600."""
    env.passwd.write_text("jones:{PLAIN}pw:4242\n")
    env.store.create_mailbox("jones")
    assert env.run("secret", "jones", stdin=b"x\n") == 0
    st = secret_file(env).stat()
    assert st.st_uid == 4242 and stat.S_IMODE(st.st_mode) == 0o600


# -- deliver ----------------------------------------------------------------------------


def test_deliver_to_two_users(env: Env) -> None:
    """One message reaches both users' NEWMAIL/new, with LF line ends, status 0."""
    env.add("jones")
    env.add("smith")
    assert env.run("deliver", "JONES", "smith", stdin=MESSAGE) == 0, env.err
    expected = MESSAGE.replace(b"\r\n", b"\n")
    for user in ("jones", "smith"):
        [delivered] = env.files(user)
        assert delivered.read_bytes() == expected
        assert f",S={len(expected)}," in delivered.name
        assert env.files(user, sub="tmp") == []


def test_deliver_duplicate_recipients_once(env: Env) -> None:
    """A user named twice (in any case) gets one copy."""
    env.add("jones")
    assert env.run("deliver", "jones", "Jones", stdin=MESSAGE) == 0
    assert len(env.files("jones")) == 1


@pytest.mark.parametrize("setup, user, words", [
    (lambda env: None, "smith", "unknown user smith"),
    (lambda env: env.add("smith", "pw", "--nomail"), "smith", "user smith may not receive mail"),
    (lambda env: env.passwd.write_text(env.passwd.read_text() + "smith:{PLAIN}pw\n"), "smith",
     "user smith has no mail directory"),
    (lambda env: None, "bad/name", "invalid user name"),
])
def test_deliver_refused_recipient_exits_67_delivering_nothing(
        env: Env, setup: Callable[[Env], None], user: str, words: str) -> None:
    """An unknown, nomail or directory-less recipient: 67, named, and nobody gets the message."""
    env.add("jones")
    setup(env)
    assert env.run("deliver", "jones", user, stdin=MESSAGE) == 67
    line = env.one_error_line()
    assert words in line and "nothing delivered" in line
    assert env.files("jones") == [] and env.files("jones", sub="tmp") == []


def test_deliver_without_passwd_file_is_unknown_user(env: Env) -> None:
    """With no password file every recipient is unknown (67)."""
    env.store.create_mailbox("jones")
    assert env.run("deliver", "jones", stdin=MESSAGE) == 67
    assert env.files("jones") == []


@pytest.mark.parametrize("call, error, cause", [
    ("write", errno.ENOSPC, "No space left on device"),  # the disk fills while writing
    ("fsync", errno.EIO, "Input/output error"),  # a failing disk
])
def test_deliver_disk_error_exits_75_delivering_nothing(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                        call: str, error: int, cause: str) -> None:
    """An error on the second copy (ENOSPC from write, EIO from fsync): 75, the cause
    named, and no file left for either user."""
    env.add("jones")
    env.add("smith")
    real = getattr(os, call)
    calls = []

    def failing(fd: int, *args: bytes) -> object:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(error, os.strerror(error))
        return real(fd, *args)

    monkeypatch.setattr(os, call, failing)
    status = env.run("deliver", "jones", "smith", stdin=MESSAGE)
    monkeypatch.setattr(os, call, real)
    assert status == 75
    assert cause in env.one_error_line()
    for user in ("jones", "smith"):
        assert env.files(user) == [] and env.files(user, sub="tmp") == []


@pytest.mark.parametrize("error", [
    DeliveryError("cannot store the message: Resource temporarily unavailable"),
    DeliveryError("cannot store the message: Permission denied", temporary=False),
    OSError(errno.EIO, "Input/output error"),
])
def test_deliver_store_failure_exits_75(env: Env, monkeypatch: pytest.MonkeyPatch,
                                        error: Exception) -> None:
    """Every store failure (temporary or not, or a bare OSError) is 75 (EX_TEMPFAIL)."""
    env.add("jones")

    def fail(self: MailStore, users: object, source: object) -> list[Path]:
        raise error

    monkeypatch.setattr(MailStore, "deliver", fail)
    assert env.run("deliver", "jones", stdin=MESSAGE) == 75
    assert "nothing delivered" in env.one_error_line()


def test_deliver_malformed_passwd_exits_75(env: Env) -> None:
    """A broken password file is a temporary failure (75), not a bounce."""
    env.store.create_mailbox("jones")
    env.passwd.write_text("jones:{PLAIN}pw:notanumber\n")
    assert env.run("deliver", "jones", stdin=MESSAGE) == 75
    assert "password file" in env.one_error_line()


def test_deliver_empty_input_exits_65(env: Env) -> None:
    """Empty standard input is refused with EX_DATAERR and nothing is delivered."""
    env.add("jones")
    assert env.run("deliver", "jones", stdin=b"") == 65
    assert "no message" in env.one_error_line()
    assert env.files("jones") == []


def test_deliver_streams_standard_input(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The message is read in bounded blocks, never whole, and arrives intact."""
    env.add("jones")
    body = b"Subject: big\n\n" + b"0123456789abcde\n" * 100_000  # 1.6 MB

    class Bounded(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            assert size is not None and 0 < size <= 1024 * 1024, "read() of the whole input"
            return super().read(size)

        def read1(self, size: int | None = -1) -> bytes:
            return self.read(size)

    stdin = io.TextIOWrapper(Bounded(body))
    monkeypatch.setattr(sys, "stdin", stdin)
    argv = ["--mail-root", str(env.mail_root), "--passwd", str(env.passwd), "deliver", "jones"]
    assert cli.main(argv) == 0
    [delivered] = env.files("jones")
    assert delivered.read_bytes() == body


def test_deliver_to_disabled_user(env: Env) -> None:
    """DISUSER stops logins, not mail: a disabled user still receives (as on OpenVMS)."""
    env.add("jones", "pw", "--disabled", "--expires", "2000-01-01")
    assert env.run("deliver", "jones", stdin=MESSAGE) == 0
    assert len(env.files("jones")) == 1


# -- check ------------------------------------------------------------------------------



def populated(env: Env) -> None:
    """Two users, a secret, and mail in NEWMAIL and MAIL."""
    env.add("jones")
    env.add("smith")
    assert env.run("secret", "jones", stdin=b"tanstaafl\n") == 0
    assert env.run("deliver", "jones", "smith", stdin=MESSAGE) == 0
    env.store.move_to_mail("jones", env.store.scan("jones", "NEWMAIL")[0])
    (env.mail_root / "jones" / ".vmspop.lock").touch()


def test_check_clean_store(env: Env) -> None:
    """A store made by the commands themselves checks clean (0)."""
    populated(env)
    assert env.run("check") == 0, env.out
    assert env.out == "vmspop check: no problems found (2 user directories, 2 messages)\n"


def test_check_reads_no_message_bodies(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """check stats message files but never opens them."""
    populated(env)
    real_open, real_os_open = builtins.open, os.open

    def guarded(path: object, *args: object, **kwargs: object) -> object:
        assert "/cur/" not in str(path) and "/new/" not in str(path), path
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    def guarded_os(path: object, *args: object, **kwargs: object) -> int:
        assert "/cur/" not in str(path) and "/new/" not in str(path), path
        return real_os_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(os, "open", guarded_os)
    assert env.run("check") == 0, env.out


def old(path: Path, hours: float = 37) -> None:
    """Set a file's times ``hours`` into the past."""
    then = time.time() - hours * 3600
    os.utime(path, (then, then), follow_symlinks=False)


def secret_with(env: Env, content: bytes, mode: int = 0o600) -> None:
    """Replace the secret file with ``content`` and ``mode`` directly."""
    path = secret_file(env)
    path.unlink(missing_ok=True)
    path.write_bytes(content)
    path.chmod(mode)


FINDINGS: list[tuple[str, Callable[[Env], Path], str]] = []


def finding(problem: str) -> Callable[[Callable[[Env], Path]], Callable[[Env], Path]]:
    """Register a change to a clean store that ``check`` must report with ``problem``."""
    def register(setup: Callable[[Env], Path]) -> Callable[[Env], Path]:
        FINDINGS.append((setup.__name__, setup, problem))
        return setup
    return register


def add_account(env: Env, name: str) -> None:
    """Append an account line to the password file directly."""
    env.passwd.write_text(env.passwd.read_text() + f"{name}:{{PLAIN}}pw\n")


@finding("is a symbolic link")
def secret_symlink(env: Env) -> Path:
    path = secret_file(env)
    path.unlink()
    path.symlink_to(env.tmp / "elsewhere")
    return path


@finding("is a directory, not a regular file")
def secret_directory(env: Env) -> Path:
    path = secret_file(env)
    path.unlink()
    path.mkdir()
    return path


@finding("mode 0640 lets group or others access it")
def secret_group_readable(env: Env) -> Path:
    secret_file(env).chmod(0o640)
    return secret_file(env)


@finding("mode 0602 lets group or others access it")
def secret_other_writable(env: Env) -> Path:
    secret_file(env).chmod(0o602)
    return secret_file(env)


@finding("invalid secret: it is empty")
def secret_empty(env: Env) -> Path:
    secret_with(env, b"")
    return secret_file(env)


@finding("invalid secret: it holds more than one line")
def secret_two_lines(env: Env) -> Path:
    secret_with(env, b"a\nb\n")
    return secret_file(env)


@finding("invalid secret: it is longer than 500 characters")
def secret_too_long(env: Env) -> Path:
    secret_with(env, b"x" * 501)
    return secret_file(env)


@finding("invalid secret: it is longer than 500 characters")
def secret_huge(env: Env) -> Path:
    secret_with(env, b"x" * 5000)
    return secret_file(env)


@finding("user directory with no account in")
def directory_without_account(env: Env) -> Path:
    env.store.create_mailbox("orphan")
    return env.mail_root / "orphan"


@finding("user ghost has no mail directory")
def account_without_directory(env: Env) -> Path:
    add_account(env, "ghost")
    return env.mail_root / "ghost"


@finding("is a symbolic link, not a directory")
def user_directory_symlink(env: Env) -> Path:
    env.store.create_mailbox("real")
    add_account(env, "link")
    (env.mail_root / "link").symlink_to("real")
    return env.mail_root / "link"


@finding("is a file, not a directory")
def user_directory_is_a_file(env: Env) -> Path:
    add_account(env, "plain")
    (env.mail_root / "plain").write_text("x")
    return env.mail_root / "plain"


@finding("is a symbolic link, not a directory")
def newmail_symlink(env: Env) -> Path:
    newmail = env.mail_root / "smith" / "NEWMAIL"
    newmail.rename(env.tmp / "moved")
    newmail.symlink_to(env.tmp / "moved")
    return newmail


@finding("is a file, not a directory")
def mail_not_a_directory(env: Env) -> Path:
    mail = env.mail_root / "smith" / "MAIL"
    for sub in mail.iterdir():
        sub.rmdir()
    mail.rmdir()
    mail.write_text("x")
    return mail


@finding("missing")
def newmail_missing(env: Env) -> Path:
    newmail = env.mail_root / "smith" / "NEWMAIL"
    newmail.rename(env.tmp / "moved")
    return newmail


@finding("missing")
def cur_missing(env: Env) -> Path:
    cur = env.mail_root / "smith" / "MAIL" / "cur"
    cur.rmdir()
    return cur


@finding("is a symbolic link")
def tmp_symlink(env: Env) -> Path:
    tmp = env.mail_root / "smith" / "NEWMAIL" / "tmp"
    tmp.rmdir()
    tmp.symlink_to(env.tmp)
    return tmp


@finding("stray file")
def stray_file(env: Env) -> Path:
    path = env.mail_root / "jones" / "notes.txt"
    path.write_text("x")
    return path


@finding("stray directory")
def stray_directory(env: Env) -> Path:
    path = env.mail_root / "jones" / "Maildir"
    path.mkdir()
    return path


@finding("leftover of an interrupted 'vmspop secret'")
def old_secret_temp_file(env: Env) -> Path:
    path = env.mail_root / "jones" / ".POP_SECRET.abc"
    path.write_text("x")
    old(path)
    return path


@finding("not a regular file")
def lock_is_a_directory(env: Env) -> Path:
    path = env.mail_root / "jones" / ".vmspop.lock"
    path.unlink()
    path.mkdir()
    return path


@finding("the name says S=")
def size_field_wrong(env: Env) -> Path:
    [path] = env.files("smith")
    path.write_bytes(b"changed")
    return path


@finding("is a symbolic link, not a message file")
def message_symlink(env: Env) -> Path:
    path = env.mail_root / "smith" / "NEWMAIL" / "cur" / "123.M1P1.host,S=1,W=1"
    path.symlink_to(env.passwd)
    return path


@finding("leftover of an interrupted delivery")
def stale_tmp_file(env: Env) -> Path:
    path = env.mail_root / "smith" / "NEWMAIL" / "tmp" / "x"
    path.write_text("partial")
    old(path)
    return path


@finding("not a valid user name")
def invalid_user_name(env: Env) -> Path:
    path = env.mail_root / "bad name"
    path.mkdir()
    return path


@finding("named in lower case")
def upper_case_directory(env: Env) -> Path:
    path = env.mail_root / "SMITH"
    path.mkdir()
    return path


@finding("not a valid user name")
def dot_file_in_mail_root(env: Env) -> Path:
    path = env.mail_root / ".cache"
    path.write_text("x")
    return path


@finding("password file does not exist")
def missing_passwd(env: Env) -> Path:
    env.passwd.unlink()
    return env.passwd


@finding("password file is malformed")
def malformed_passwd(env: Env) -> Path:
    env.passwd.write_text("jones:{PLAIN}pw:x\n")
    return env.passwd


@pytest.mark.parametrize("setup, problem", [(s, p) for _, s, p in FINDINGS],
                         ids=[name for name, _, _ in FINDINGS])
def test_check_finds_problem(env: Env, setup: Callable[[Env], Path], problem: str) -> None:
    """Each kind of problem is reported as 'vmspop check: <path>: <problem>' with status 1."""
    populated(env)
    path = setup(env)
    assert env.run("check") == 1
    expected = f"vmspop check: {path}: "
    assert any(line.startswith(expected) and problem in line
               for line in env.out.splitlines()), env.out
    assert env.out.splitlines()[-1].startswith("vmspop check: ")
    assert " problem" in env.out.splitlines()[-1]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_check_secret_wrong_owner(env: Env) -> None:
    """A secret owned by neither the user's uid nor the store owner is reported."""
    populated(env)
    os.chown(secret_file(env), 4242, -1)
    assert env.run("check") == 1
    assert f"vmspop check: {secret_file(env)}: owned by uid 4242" in env.out
    # ... but the account's own uid is fine.
    PasswordFile(env.passwd).update("jones", lambda a: with_uid(a, 4242))
    assert env.run("check") == 0, env.out


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_check_folder_owned_by_someone_else(env: Env) -> None:
    """A mail folder owned by a stranger (who could plant messages) is reported."""
    populated(env)
    folder = env.mail_root / "jones" / "NEWMAIL" / "new"
    os.chown(folder, 4242, -1)
    assert env.run("check") == 1
    assert f"vmspop check: {folder}: owned by uid 4242" in env.out


def test_check_group_writable_mail_directory(env: Env) -> None:
    """A user directory others can write into is reported with its mode."""
    populated(env)
    (env.mail_root / "jones").chmod(0o770)
    assert env.run("check") == 1
    assert "mode 0770 lets group or others create files here" in env.out


def test_check_accepts_fresh_leftovers(env: Env) -> None:
    """A delivery or secret write in progress (fresh tmp files) is not a problem."""
    populated(env)
    (env.mail_root / "smith" / "NEWMAIL" / "tmp" / "inflight").write_text("partial")
    (env.mail_root / "jones" / ".POP_SECRET.xyz").write_text("x")
    assert env.run("check") == 0, env.out


def test_check_accepts_foreign_message_names(env: Env) -> None:
    """Messages from other delivery agents (no S= field) are fine."""
    populated(env)
    (env.mail_root / "smith" / "NEWMAIL" / "new" / "1700000000.P1.host").write_bytes(MESSAGE)
    assert env.run("check") == 0, env.out


def test_check_missing_mail_root(env: Env) -> None:
    """A missing mail root is a finding (1)."""
    env.passwd.write_text("jones:{PLAIN}pw\n")
    assert env.run("check") == 1
    assert f"vmspop check: {env.mail_root}: mail root does not exist" in env.out


def test_check_reports_every_problem(env: Env) -> None:
    """Several problems are all listed, with a count in the summary."""
    populated(env)
    secret_file(env).chmod(0o644)
    (env.mail_root / "jones" / "junk").write_text("x")
    assert env.run("check") == 1
    lines = env.out.splitlines()
    assert len(lines) == 3
    assert lines[-1] == "vmspop check: 2 problems found (2 user directories, 2 messages)"


def test_check_escapes_unprintable_names(env: Env) -> None:
    """A file name with a newline stays on one finding line."""
    populated(env)
    (env.mail_root / "jones" / "evil\nname").write_text("x")
    assert env.run("check") == 1
    assert any(line.endswith("stray file (a mail directory holds only NEWMAIL, MAIL, "
                             "POP_SECRET.DAT and .vmspop.lock)") and "evil\\nname" in line
               for line in env.out.splitlines())


def test_check_ignores_passwd_inside_mail_root(env: Env) -> None:
    """A password file kept in the mail root (and its lock) is not taken for a user directory."""
    env.passwd = env.mail_root / "passwd"
    populated(env)
    assert env.run("check") == 0, env.out


def test_check_stray_file_in_mail_root(env: Env) -> None:
    """A file in the mail root that is no user's is reported once, as stray."""
    populated(env)
    (env.mail_root / "readme").write_text("x")
    assert env.run("check") == 1
    line = f"vmspop check: {env.mail_root / 'readme'}: stray file in the mail root"
    assert env.out.splitlines()[0] == line
    assert len(env.out.splitlines()) == 2

