"""Tests for ``vmspop import`` (vmspop.importer and the command in vmspop.cli)."""

from __future__ import annotations

import errno
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import Server, multiline_body
from vmspop import cli, importer, mail11, store as store_module
from vmspop.config import ConfigError
from vmspop.importer import ImportStopped, Progress
from vmspop.mail11 import RewriteOptions
from vmspop.passwd import Account, PasswordFile
from vmspop.store import NEWMAIL, MailStore

OPTIONS = RewriteOptions(hostname="vms.example.com")


def message(address: str = "JONES", date: str = "6-APR-1999 06:02:31.15", subject: str = "Hi",
            body: bytes = b"Hello.\n", name: str | None = None) -> bytes:
    sender = address + (f' "{name}"' if name else "")
    return (f"From:\t{sender}  {date}\nTo:\tSMITH\nCC:\t\nSubj:\t{subject}\n\n".encode()
            + body)


def extract(*messages: bytes) -> bytes:
    """An EXTRACT/ALL file: messages separated by form-feed lines."""
    return b"\f\n".join(messages)


# Section 8.1's real example, then two more in a different order of arrival.
FIRST = (b'From:\tMERC::"uunet!CRVAX.SRI.COM!RELAY-INFO-VAX"  2-JUL-1992 21:17:08.08\n'
         b"To:\tinfo-vax@kl.sri.com\nCC:\t\nSubj:\tRe: Mail file format\n\n"
         b"Is the format documented?\n.\n.leading dot\n")
SECOND = message("ORDERS::J_SMITH", "6-APR-1999 06:02:31.15", "order", name="John Smith")
THIRD = message('SMTP%"jim@example.org"', "3-JUL-1992 08:00:00.00", "earlier than second")


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    s = MailStore(tmp_path / "mail", "test.example")
    s.create_mailbox("jones")
    return s


def write(tmp_path: Path, data: bytes, name: str = "mail.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def stored(store: MailStore, user: str = "jones") -> list[bytes]:
    """The stored messages, in folder (arrival) order."""
    return [Path(m.path).read_bytes() for m in store.scan(user, NEWMAIL)]


# -- rewrite options -------------------------------------------------------------------


def test_rewrite_options_from_settings() -> None:
    options = importer.rewrite_options({
        "hostname": "vms.example.com", "substitute-domain": "example.com",
        "decnet-rewrite": "GENERIC", "quoted-decnet-rewrite": "none",
        "decnet-node": ["orders=orders.example.com", "VAXA = vaxa.example.com"],
        "local-host": ["VAXA.example.com"], "personal-name": True,
        "ignore-mail11-headers": False})
    assert options == RewriteOptions(
        hostname="vms.example.com", substitute_domain="example.com", decnet_rewrite="generic",
        quoted_decnet_rewrite="none",
        decnet_nodes={"ORDERS": "orders.example.com", "VAXA": "vaxa.example.com"},
        local_hosts=frozenset({"vaxa.example.com"}), personal_name=True)


def test_rewrite_options_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer.socket, "gethostname", lambda: "here.example.com")
    assert importer.rewrite_options({}) == RewriteOptions(hostname="here.example.com")


@pytest.mark.parametrize("values, words", [
    ({"decnet-node": ["ORDERS"]}, "expected NODE=HOST"),
    ({"decnet-node": ["=host"]}, "expected NODE=HOST"),
    ({"decnet-node": ["ORDERS="]}, "expected NODE=HOST"),
    ({"decnet-node": ["OR DERS=h"]}, "expected NODE=HOST"),
    ({"decnet-node": ["ORDERS=a b"]}, "expected NODE=HOST"),
    ({"decnet-node": ["A=x.org", "a=y.org"]}, "both x.org and y.org"),
    ({"local-host": ["bad host"]}, "--local-host"),
    ({"substitute-domain": "a@b"}, "--substitute-domain"),
    ({"hostname": "-"}, "--hostname"),
    ({"decnet-rewrite": "sideways"}, "--decnet-rewrite must be one of"),
    ({"personal-name": "yes"}, "--personal-name must be true or false"),
    ({"bogus": 1}, "unknown setting 'bogus'"),
])
def test_rewrite_options_refused(values: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        importer.rewrite_options({"hostname": "h.example.com", **values})


def test_repeated_decnet_node_with_same_host_is_fine() -> None:
    options = importer.rewrite_options({"hostname": "h", "decnet-node": ["A=x.org", "a=X.org"]})
    assert options.decnet_nodes == {"A": "x.org"}


# -- importing ----------------------------------------------------------------------------


def test_import_orders_by_vms_arrival_and_names_uidls_after_it(store: MailStore,
                                                                tmp_path: Path) -> None:
    """Each message is filed under its VMS arrival date: folder order and UIDL follow it."""
    path = write(tmp_path, extract(FIRST, SECOND, THIRD))
    report = importer.import_extract(store, "jones", path, OPTIONS)
    assert (report.imported, report.skipped, report.foreign) == (3, 0, 0)
    messages = store.scan("jones", NEWMAIL)
    assert [Path(m.path).read_bytes().split(b"\n")[3] for m in messages] == [
        b"Subject: Re: Mail file format", b"Subject: earlier than second", b"Subject: order"]
    assert re.fullmatch(r"JONES_02_JUL_1992_21_17_08_08_[A-Z2-7]{8}", messages[0].uid)
    assert messages[1].uid.startswith("JONES_03_JUL_1992_08_00_00_00_")
    assert messages[2].uid.startswith("JONES_06_APR_1999_06_02_31_15_")
    assert report.octets == sum(m.physical for m in messages)


def test_import_renders_each_message_once_as_stored_bytes(store: MailStore,
                                                          tmp_path: Path) -> None:
    """The stored file is exactly the rendered message (LF line ends)."""
    path = write(tmp_path, extract(FIRST).replace(b"\n", b"\r\n"))
    importer.import_extract(store, "jones", path, OPTIONS)
    [first] = list(mail11.read_extract([FIRST]))
    assert stored(store) == [mail11.render(first, OPTIONS, 0.0).data]


def test_same_arrival_keeps_file_order(store: MailStore, tmp_path: Path) -> None:
    """Messages with one VMS date are filed a microsecond apart, in file order, same UIDL date."""
    same = [message(subject=f"n{i}") for i in range(12)]
    importer.import_extract(store, "jones", write(tmp_path, extract(*same)), OPTIONS)
    messages = store.scan("jones", NEWMAIL)
    assert [Path(m.path).read_bytes().split(b"\n")[3] for m in messages] == [
        f"Subject: n{i}".encode() for i in range(12)]
    assert all(m.uid.startswith("JONES_06_APR_1999_06_02_31_15_") for m in messages)
    assert len({m.uid for m in messages}) == 12


def test_malformed_message_is_reported_and_the_rest_imported(store: MailStore,
                                                             tmp_path: Path) -> None:
    bad = b"From:\tJONES\nTo:\tSMITH\n\nbody\n"
    path = write(tmp_path, extract(FIRST, bad, SECOND))
    warnings: list[str] = []
    report = importer.import_extract(store, "jones", path, OPTIONS, warn=warnings.append)
    assert (report.imported, report.skipped) == (2, 1)
    line = FIRST.count(b"\n") + 2
    assert warnings == [f"{path}: message 2 (line {line}): the From: line has no arrival date "
                        "(D-MMM-YYYY HH:MM:SS.CC); skipped"]
    assert len(stored(store)) == 2


def test_foreign_message_is_counted_and_reported(store: MailStore, tmp_path: Path) -> None:
    path = write(tmp_path, extract(FIRST, message(body=b"\x00\x01binary\x00\n")))
    warnings: list[str] = []
    report = importer.import_extract(store, "jones", path, OPTIONS, warn=warnings.append)
    assert (report.imported, report.foreign) == (2, 1)
    assert len(warnings) == 1 and "message 2 (line 10) is in foreign (binary) format" in warnings[0]
    assert stored(store)[1].endswith(b"\n\n" + mail11.FOREIGN_NOTICE)


def test_noheader_extract_uses_the_file_time(store: MailStore, tmp_path: Path) -> None:
    """EXTRACT/NOHEADER: messages without their own Date: arrive at the file's mtime."""
    path = write(tmp_path, b"first text\n\f\nsecond text\n")
    os.utime(path, (923378551.0, 923378551.0))
    importer.import_extract(store, "jones", path, OPTIONS)
    messages = store.scan("jones", NEWMAIL)
    assert [Path(m.path).read_bytes() for m in messages] == [
        b"Date: Tue, 06 Apr 1999 06:02:31 +0000\n\nfirst text\n",
        b"Date: Tue, 06 Apr 1999 06:02:31 +0000\n\nsecond text\n"]
    assert [m.arrival for m in messages] == [923378551.0, 923378551.000001]


def test_ignore_mail11_headers_stores_the_mime_message(store: MailStore, tmp_path: Path) -> None:
    mime = (b"From: Jim <jim@example.org>\nMIME-Version: 1.0\n"
            b"Content-Type: text/plain; charset=utf-8\n\nGr\xc3\xbc\xc3\x9fe\n")
    path = write(tmp_path, message('SMTP%"jim@example.org"', body=mime))
    options = RewriteOptions(hostname="h.example.com", ignore_mail11_headers=True)
    importer.import_extract(store, "jones", path, options)
    [only] = store.scan("jones", NEWMAIL)
    assert Path(only.path).read_bytes() == mime
    assert only.uid.startswith("JONES_06_APR_1999_06_02_31_15_")


def test_empty_file_imports_nothing(store: MailStore, tmp_path: Path) -> None:
    report = importer.import_extract(store, "jones", write(tmp_path, b"\f\n\n"), OPTIONS)
    assert (report.imported, report.skipped) == (0, 0)


def fail_on_write(monkeypatch: pytest.MonkeyPatch, number: int,
                  error: BaseException | None = None) -> None:
    """Make the ``number``-th message write fail (each message here is one block)."""
    original = store_module._write_all
    calls = iter(range(1, 1_000_000))

    def write_all(fd: int, data: bytes) -> None:
        if next(calls) == number:
            raise error or OSError(errno.ENOSPC, "No space left on device")
        original(fd, data)

    monkeypatch.setattr(store_module, "_write_all", write_all)


def test_disk_full_stops_keeping_what_was_imported(store: MailStore, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed delivery stops the import; earlier messages stay; the rest can be resumed."""
    data = extract(FIRST, SECOND, THIRD)
    path = write(tmp_path, data)
    fail_on_write(monkeypatch, 2)
    with pytest.raises(ImportStopped) as stopped:
        importer.import_extract(store, "jones", path, OPTIONS)
    e = stopped.value
    assert (e.cause, e.number, e.report.imported) == ("store", 2, 1)
    assert "No space left on device" in str(e)
    assert data[e.offset:] == extract(SECOND, THIRD)
    assert len(stored(store)) == 1
    assert not os.listdir(store.folder("jones", NEWMAIL) / "tmp")  # no half message
    monkeypatch.undo()
    rest = write(tmp_path, data[e.offset:], "rest.txt")
    assert importer.import_extract(store, "jones", rest, OPTIONS).imported == 2
    everything = MailStore(tmp_path / "other", "test.example")
    everything.create_mailbox("jones")
    importer.import_extract(everything, "jones", path, OPTIONS)
    assert stored(store) == stored(everything)  # resumed = imported in one go, no duplicate


def test_read_error_stops_after_the_last_stored_message(store: MailStore, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    data = extract(FIRST, SECOND, THIRD)
    cut = data.index(b"From:\tSMTP")  # the read fails inside the third message

    def blocks(source: Any) -> Iterator[bytes]:
        yield data[:cut]
        raise importer._ReadError("Input/output error")

    monkeypatch.setattr(importer, "_blocks", blocks)
    with pytest.raises(ImportStopped) as stopped:
        importer.import_extract(store, "jones", write(tmp_path, data), OPTIONS)
    e = stopped.value
    assert (e.cause, e.report.imported) == ("read", 1)
    assert (e.number, data[e.offset:]) == (2, extract(SECOND, THIRD))


def test_interrupt_stops_without_a_half_message(store: MailStore, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fail_on_write(monkeypatch, 3, KeyboardInterrupt())
    data = extract(FIRST, SECOND, THIRD)
    with pytest.raises(ImportStopped) as stopped:
        importer.import_extract(store, "jones", write(tmp_path, data), OPTIONS)
    e = stopped.value
    assert (e.cause, e.number, e.report.imported) == ("interrupt", 3, 2)
    assert data[e.offset:] == THIRD
    assert len(stored(store)) == 2 and not os.listdir(store.folder("jones", NEWMAIL) / "tmp")


def test_resume_command_quotes_names() -> None:
    assert importer.resume_command("my mail.txt", 99, "jones", "my mail.txt.rest") == (
        "tail -c +100 'my mail.txt' > 'my mail.txt.rest' && "
        "vmspop import jones 'my mail.txt.rest'")


# -- progress ---------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_one_throttled_line() -> None:
    now = [0.0]
    stream = Terminal()
    progress = Progress(stream, clock=lambda: now[0])
    assert progress.enabled
    for done, at in ((1, 0.01), (2, 0.05), (3, 0.5), (4, 0.55), (50, 1.0)):
        now[0] = at
        progress.update(done)
    progress.note("vmspop: a warning")
    progress.update(51)  # throttled
    now[0] = 2.0
    progress.update(100)
    progress.clear()
    text = stream.getvalue()
    assert "\n" not in text.replace("vmspop: a warning\n", "")
    frames = [f.strip() for f in text.replace("vmspop: a warning\n", "").split("\r") if f.strip()]
    assert frames == ["1 message, 100.0/s", "3 messages, 6.0/s", "50 messages, 50.0/s",
                      "100 messages, 50.0/s"]
    assert text.endswith("\r")  # the line is erased at the end


def test_progress_is_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream)
    assert not progress.enabled
    progress.update(1)
    progress.clear()
    progress.note("vmspop: warning")
    assert stream.getvalue() == "vmspop: warning\n"


# -- the command ------------------------------------------------------------------------------


class Env:
    """A store and password file under tmp_path, and ``vmspop`` run on them."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp = tmp_path
        self.mail_root = tmp_path / "mail"
        self.passwd = tmp_path / "passwd"
        self.store = MailStore(self.mail_root)
        self._capsys = capsys
        self.out = self.err = ""

    def add(self, user: str = "jones", **flags: Any) -> None:
        account = Account(name=user, password_hash="{PLAIN}wonderland", **flags)
        PasswordFile(self.passwd).update(user, lambda _: account)
        self.store.create_mailbox(user)

    def run(self, *args: str) -> int:
        self._capsys.readouterr()
        status = cli.main(["--mail-root", str(self.mail_root), "--passwd", str(self.passwd),
                           *args])
        self.out, self.err = self._capsys.readouterr()
        return status

    def file(self, data: bytes, name: str = "mail.txt") -> str:
        return str(write(self.tmp, data, name))

    def messages(self, user: str = "jones") -> list[bytes]:
        return stored(self.store, user)


@pytest.fixture
def env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Env:
    e = Env(tmp_path, capsys)
    e.add()
    return e


def test_command_imports_and_prints_the_summary(env: Env) -> None:
    path = env.file(extract(FIRST, SECOND))
    assert env.run("import", "JONES", path, "--hostname", "vms.example.com") == 0, env.err
    assert env.err == ""
    octets = sum(len(m) for m in env.messages())
    assert env.out == (f"vmspop: imported 2 messages from {path} into jones's NEWMAIL, "
                       f"0 skipped, {octets} bytes\n")


def test_command_rewrite_options(env: Env) -> None:
    path = env.file(SECOND)
    assert env.run("import", "jones", path, "--hostname", "vms.example.com",
                   "--decnet-node", "ORDERS=orders.example.com", "--local-host",
                   "orders.example.com", "--substitute-domain", "example.com",
                   "--personal-name") == 0, env.err
    assert b'\nFrom: "John Smith" <j_smith@example.com>\n' in env.messages()[0]


@pytest.mark.parametrize("args, expected", [
    ([], b"\nFrom: j_smith@orders.example.com\n"),
    (["--decnet-rewrite", "NONE"], b"\nFrom: ORDERS::J_SMITH\n"),
    (["--decnet-rewrite", "generic"], b'\nFrom: "ORDERS::J_SMITH"@cli.example.com\n'),
    (["--decnet-node", "ORDERS=other.example.com"], b"\nFrom: j_smith@other.example.com\n"),
])
def test_config_file_keys_and_command_line_precedence(env: Env, args: list[str],
                                                      expected: bytes) -> None:
    """Rewrite options come from --config under their option names; the command line wins."""
    config = env.tmp / "vmspop.toml"
    config.write_text('hostname = "file.example.com"\ndecnet-rewrite = "transform"\n'
                      'decnet-node = ["ORDERS=orders.example.com"]\npersonal-name = false\n'
                      'pop3 = "tcp:1110"\n')
    path = env.file(SECOND)
    assert env.run("--config", str(config), "import", "jones", path, "--hostname",
                   "cli.example.com", *args) == 0, env.err
    assert expected in env.messages()[0]


def test_config_file_hostname_and_flags(env: Env) -> None:
    config = env.tmp / "vmspop.toml"
    config.write_text('hostname = "file.example.com"\npersonal-name = true\n')
    assert env.run("--config", str(config), "import", "jones", env.file(message(name="Jim"))) == 0
    assert b'\nFrom: "Jim" <jones@file.example.com>\n' in env.messages()[0]


@pytest.mark.parametrize("args, words", [
    (["--decnet-node", "ORDERS"], "expected NODE=HOST"),
    (["--decnet-rewrite", "bogus"], "invalid choice"),
    (["--hostname", "a b"], "--hostname"),
    (["--folder", "MAIL"], "unrecognized arguments"),
])
def test_command_usage_errors_exit_2(env: Env, args: list[str], words: str) -> None:
    assert env.run("import", "jones", env.file(FIRST), *args) == 2
    assert words in env.err and env.err.startswith("vmspop: ") and env.err.count("\n") == 1
    assert env.messages() == []


def test_bad_config_value_exits_2(env: Env) -> None:
    config = env.tmp / "vmspop.toml"
    config.write_text('decnet-node = ["nonsense"]\n')
    assert env.run("--config", str(config), "import", "jones", env.file(FIRST)) == 2
    assert "expected NODE=HOST" in env.err


def test_invalid_user_name_exits_2(env: Env) -> None:
    assert env.run("import", "jo/nes", env.file(FIRST)) == 2


@pytest.mark.parametrize("user, setup, words", [
    ("smith", None, "unknown user smith"),
    ("brown", "nomail", "may not receive mail"),
    ("green", "nodir", "no mail directory"),
])
def test_refused_user_exits_67(env: Env, user: str, setup: str | None, words: str) -> None:
    """As for deliver: a user who may not receive mail is EX_NOUSER, before the file is read."""
    if setup == "nomail":
        env.add(user, dismail=True)
    elif setup == "nodir":
        PasswordFile(env.passwd).update(user, lambda _: Account(name=user, password_hash="x"))
    assert env.run("import", user, env.file(FIRST)) == 67
    assert words in env.err


def test_missing_file_exits_1(env: Env) -> None:
    assert env.run("import", "jones", str(env.tmp / "absent.txt")) == 1
    assert "cannot read" in env.err and "nothing imported" in env.err


def test_empty_file_exits_65(env: Env) -> None:
    assert env.run("import", "jones", env.file(b"")) == 65
    assert "holds no messages; nothing imported" in env.err
    assert "imported 0 messages" in env.out


def test_skipped_messages_exit_1_with_one_line_each(env: Env) -> None:
    bad = b"From:\tJONES  6-APR-1999 06:02:31.15\nSubj:\tno To\n\nbody\n"
    path = env.file(extract(FIRST, bad, SECOND, bad))
    assert env.run("import", "jones", path, "--hostname", "h.example.com") == 1
    lines = env.err.splitlines()
    assert len(lines) == 2 and all(l.startswith(f"vmspop: {path}: message ") for l in lines)
    assert "message 2 (line" in lines[0] and "message 4 (line" in lines[1]
    assert ", 2 skipped, " in env.out and "imported 2 messages" in env.out


def test_disk_full_exits_75_with_resume_instructions(env: Env,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = extract(FIRST, SECOND, THIRD)
    path = env.file(data)
    fail_on_write(monkeypatch, 3)
    assert env.run("import", "jones", path, "--hostname", "h.example.com") == 75
    assert "imported 2 messages" in env.out and ", 0 skipped, " in env.out
    [line] = env.err.splitlines()
    assert "No space left on device" in line and "stopped at message 3" in line
    assert "the 2 imported stay" in line
    offset = data.index(b"From:\tSMTP")
    assert line.endswith(f"run: tail -c +{offset + 1} {path} > {path}.rest && "
                         f"vmspop import jones {path}.rest")
    # The advice works: the rest imports the third message only.
    monkeypatch.undo()
    subprocess.run(line.split("run: ", 1)[1].split(" && ")[0], shell=True, check=True)
    assert env.run("import", "jones", f"{path}.rest", "--hostname", "h.example.com") == 0
    assert len(env.messages()) == 3


def test_interrupt_exits_130(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_on_write(monkeypatch, 2, KeyboardInterrupt())
    assert env.run("import", "jones", env.file(extract(FIRST, SECOND))) == 130
    assert "interrupted; stopped at message 2 (the 1 imported stay)" in env.err


def test_no_progress_when_stderr_is_not_a_terminal(env: Env) -> None:
    many = extract(*(message(subject=f"m{i}") for i in range(30)))
    assert env.run("import", "jones", env.file(many)) == 0
    assert env.err == "" and env.out.count("\n") == 1


def test_progress_when_stderr_is_a_terminal(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert env.run("import", "jones", env.file(extract(FIRST, SECOND))) == 0
    assert "\r1 message, " in terminal.getvalue()
    assert env.out.startswith("vmspop: imported 2 messages")


def test_console_script_import(tmp_path: Path) -> None:
    """python -m vmspop.cli import, as an operator runs it."""
    repo = Path(__file__).resolve().parent.parent
    PasswordFile(tmp_path / "passwd").update(
        "jones", lambda _: Account(name="jones", password_hash="{PLAIN}pw"))
    MailStore(tmp_path / "mail").create_mailbox("jones")
    write(tmp_path, extract(FIRST, SECOND))
    result = subprocess.run(
        [sys.executable, "-m", "vmspop.cli", "--mail-root", "mail", "--passwd", "passwd",
         "import", "jones", "mail.txt", "--hostname", "h.example.com"],
        capture_output=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(repo)),
        timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"vmspop: imported 2 messages from mail.txt")
    assert result.stderr == b""


def test_documented_move_into_mail_keeps_uidls(store: MailStore, tmp_path: Path) -> None:
    """docs/migration.md: old read mail is imported, then moved to MAIL/cur with mv."""
    importer.import_extract(store, "jones", write(tmp_path, extract(FIRST, SECOND)), OPTIONS)
    before = [(m.uid, Path(m.path).read_bytes()) for m in store.scan("jones", NEWMAIL)]
    user_dir = store.user_dir("jones")
    # for f in NEWMAIL/new/*; do mv -n "$f" "MAIL/cur/${f##*/}:2,S"; done
    subprocess.run('for f in NEWMAIL/new/*; do mv -n "$f" "MAIL/cur/${f##*/}:2,S"; done',
                   shell=True, check=True, cwd=user_dir)
    assert store.scan("jones", NEWMAIL) == []
    after = [(m.uid, Path(m.path).read_bytes()) for m in store.scan("jones", store_module.MAIL)]
    assert after == before


# -- end to end: import, then POP3 --------------------------------------------------------------


def test_imported_mail_is_served_byte_exact_over_pop3(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Import an extract, log in over POP3: UIDLs carry the VMS dates, RETR the rendered bytes."""
    server = Server(tmp_path)
    server.add_user("jones")
    data = extract(FIRST, SECOND, THIRD).replace(b"\n", b"\r\n")
    path = write(tmp_path, data)
    argv = ["--mail-root", str(tmp_path / "mail"), "--passwd", str(tmp_path / "passwd"),
            "import", "jones", str(path), "--hostname", "vms.example.com",
            "--decnet-node", "ORDERS=orders.example.com", "--personal-name"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    options = RewriteOptions(hostname="vms.example.com", personal_name=True,
                             decnet_nodes={"ORDERS": "orders.example.com"})
    expected = [mail11.render(m, options, 0.0).data
                for m in mail11.read_extract([extract(FIRST, THIRD, SECOND)])]

    client = server.connect()
    assert client.login().startswith(b"+OK")
    uids = [line.split()[1] for line in multiline_body(client.command("UIDL"))]
    assert [u[:len("JONES_02_JUL_1992_21_17_08_08_")] for u in uids] == [
        b"JONES_02_JUL_1992_21_17_08_08_", b"JONES_03_JUL_1992_08_00_00_00_",
        b"JONES_06_APR_1999_06_02_31_15_"]
    sizes = [int(line.split()[1]) for line in multiline_body(client.command("LIST"))]
    for number, rendered in enumerate(expected, 1):
        wire = rendered.replace(b"\n", b"\r\n")
        assert sizes[number - 1] == len(wire)
        reply = client.command(f"RETR {number}")
        assert reply.split(b"\r\n", 1)[1] == re.sub(rb"(?m)^\.", b"..", wire) + b".\r\n"
    assert b'\r\nFrom: "John Smith" <j_smith@orders.example.com>\r\n' in \
        client.command("RETR 3")
    assert client.command("QUIT").startswith(b"+OK")
