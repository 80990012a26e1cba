"""``twistd vmspop``: option parsing, --config files, the plugin, the service, embedding, a real twistd."""

from __future__ import annotations

import os
import poplib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError

from vmspop import ServerConfig, make_service
from vmspop.config import SETTINGS
from vmspop.passwd import Account, PasswordFile
from vmspop.server import POP3Factory
from vmspop.store import MailStore
from vmspop.tap import Options, makeService

ROOT = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> ServerConfig:
    options = Options()
    options.parseOptions(list(argv))
    return options.config


def test_defaults_are_the_embedded_default() -> None:
    """With no options: data under vmspop-data/, POP3 on 127.0.0.1:1110, the OpenVMS limits."""
    config = parse()
    assert config.mail_root == Path("vmspop-data/mail")
    assert config.passwd == Path("vmspop-data/passwd")
    assert config.pop3 == ("tcp:1110:interface=127.0.0.1",)
    assert (config.max_auth_attempts, config.idle_timeout, config.security) == (2, 600.0, "secure")
    assert config.workers is None  # one worker per core, decided when the service is made


def test_every_setting_is_an_option() -> None:
    """Each setting in the table is accepted on the command line and documented in --help."""
    text = str(Options())
    for setting in SETTINGS:
        assert f"--{setting.name}" in text
        if setting.vms:
            assert setting.vms in text


def test_every_setting_is_in_the_admin_guide() -> None:
    """docs/admin.md's option table has a row for each setting, so --help and the guide agree."""
    rows = [line for line in (ROOT / "docs" / "admin.md").read_text().splitlines()
            if line.startswith("| `--")]
    for setting in SETTINGS:
        assert any(row.startswith(f"| `--{setting.name}") for row in rows), setting.name


def test_command_line_values() -> None:
    """Options reach the configuration with their types."""
    config = parse("--mail-root", "/srv/mail", "--pop3", "tcp:110", "--pop3", "unix:/tmp/p.sock",
                   "--leave-in-newmail", "--security", "FRIENDLY", "--idle-timeout", "0",
                   "--max-sessions", "5", "--message-maximum", "100", "--hostname", "pop.example.org",
                   "--max-auth-attempts", "3", "--auth-failure-delay", "0.5", "--trace",
                   "--workers", "3")
    assert config.mail_root == Path("/srv/mail") and config.pop3 == ("tcp:110", "unix:/tmp/p.sock")
    assert config.leave_in_newmail and config.trace and config.security == "friendly"
    assert (config.idle_timeout, config.max_sessions, config.message_maximum) == (0.0, 5, 100)
    assert (config.max_auth_attempts, config.auth_failure_delay, config.workers) == (3, 0.5, 3)


@pytest.mark.parametrize("argv, message", [
    (["--security", "lax"], "--security must be one of"),
    (["--message-maximum", "70000"], "--message-maximum must be between 0 and 65535"),
    (["--max-auth-attempts", "0"], "--max-auth-attempts must be at least 1"),
    (["--idle-timeout", "soon"], "--idle-timeout"),
    (["--hostname", "a b"], "--hostname"),
    (["--leave-in-newmail", "--use-mail-folder"], "exclude each other"),
    (["--workers", "0"], "--workers must be between 1 and 64"),
    (["--workers", "many"], "--workers"),
])
def test_bad_values_are_usage_errors(argv: list[str], message: str) -> None:
    """Every bad value is a UsageError that names the option."""
    with pytest.raises(UsageError, match=message):
        parse(*argv)


def test_config_file_and_command_line_precedence(tmp_path: Path) -> None:
    """--config keys are long option names; the command line overrides the file."""
    path = tmp_path / "vmspop.toml"
    path.write_text('mail-root = "/srv/mail"\nsecurity = "friendly"\nleave-in-newmail = true\n'
                    'pop3 = ["tcp:2110", "tcp:3110"]\nidle-timeout = 900\n')
    config = parse("--config", str(path), "--security", "secure")
    assert config.mail_root == Path("/srv/mail") and config.security == "secure"
    assert config.leave_in_newmail and config.pop3 == ("tcp:2110", "tcp:3110")
    assert config.idle_timeout == 900.0
    assert parse(f"--config={path}", "--pop3", "tcp:4110").pop3 == ("tcp:4110",)


@pytest.mark.parametrize("text, message", [
    ('bogus = 1\n', "unknown setting 'bogus'"),
    ('max-sessions = "many"\n', "--max-sessions"),
    ('leave-in-newmail = "yes"\n', "must be true or false"),
    ('this is not toml', "not valid TOML"),
])
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    """A config file with an unknown key, a wrong type or bad TOML is refused with the reason."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        parse("--config", str(path))


def test_missing_config_file() -> None:
    """A --config file that cannot be read is a usage error."""
    with pytest.raises(UsageError, match="--config /nonexistent.toml"):
        parse("--config", "/nonexistent.toml")


def test_plugin_is_discoverable() -> None:
    """twisted.plugin finds the vmspop IServiceMaker (no __init__.py shadows Twisted's packages)."""
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    assert "vmspop" in makers
    assert makers["vmspop"].options is Options
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()


def test_make_service_listens_on_every_endpoint(tmp_path: Path) -> None:
    """makeService builds one listener per --pop3 and --smtp endpoint, without the global reactor."""
    from vmspop.smtp import SMTPFactory
    reactor = MemoryReactorClock()
    options = Options()
    options.parseOptions(["--mail-root", str(tmp_path), "--pop3", "tcp:1234:interface=127.0.0.1",
                          "--pop3", "tcp:5678", "--smtp", "tcp:2526:interface=127.0.0.1",
                          "--workers", "1"])
    service = makeService(options, reactor)
    service.startService()
    ports = {port: (factory, interface) for port, factory, _, interface in reactor.tcpServers}
    assert sorted(ports) == [1234, 2526, 5678]
    assert ports[1234][1] == "127.0.0.1" and ports[5678][1] == ""
    assert isinstance(ports[1234][0], POP3Factory) and ports[1234][0] is ports[5678][0]
    assert isinstance(ports[2526][0], SMTPFactory)
    service.stopService()


def test_default_smtp_listener_and_no_smtp(tmp_path: Path) -> None:
    """SMTP listens on 127.0.0.1:2525 by default; --no-smtp turns it off."""
    for argv, expected in (([], [1110, 2525]), (["--no-smtp"], [1110])):
        reactor = MemoryReactorClock()
        options = Options()
        options.parseOptions(["--mail-root", str(tmp_path), "--workers", "1", *argv])
        makeService(options, reactor).startService()
        assert sorted(port for port, *_ in reactor.tcpServers) == expected


def test_embedding_in_a_multiservice(tmp_path: Path) -> None:
    """The public API plugs a POP3 service into an existing application's MultiService."""
    reactor = MemoryReactorClock()
    application = MultiService()
    config = ServerConfig(mail_root=tmp_path / "mail", passwd=tmp_path / "passwd",
                          pop3=("tcp:1110",), hostname="pop.example.com")
    make_service(config, reactor).setServiceParent(application)
    application.startService()
    [(port, factory, _, _)] = [server for server in reactor.tcpServers if server[0] == 1110]
    assert isinstance(factory, POP3Factory)
    assert factory.config is config
    application.stopService()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_twistd_serves_over_a_real_socket(tmp_path: Path) -> None:
    """`twistd -n vmspop --config FILE` starts, serves poplib, and stops cleanly on SIGTERM;
    with two workers (from the file; not one per core, which a CI machine may have many of),
    whose lines reach twistd's standard output."""
    mail, passwd, port = tmp_path / "mail", tmp_path / "passwd", free_port()
    PasswordFile(passwd).update("jones", lambda _: Account("jones", "{PLAIN}wonderland"))
    store = MailStore(mail)
    store.create_mailbox("jones")
    store.deliver(["jones"], [b"Subject: hi\n\nhello\n"])
    config = tmp_path / "vmspop.toml"
    config.write_text(f'mail-root = "{mail}"\npasswd = "{passwd}"\nauth-failure-delay = 0\n'
                      'workers = 2\n')
    twistd = Path(sys.executable).with_name("twistd")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "--logfile=-", "vmspop", "--config", str(config),
         "--pop3", f"tcp:{port}:interface=127.0.0.1", "--no-smtp"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = None
        deadline = time.monotonic() + 30
        while client is None:
            try:
                client = poplib.POP3("127.0.0.1", port, timeout=10)
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "twistd did not start listening"
                time.sleep(0.1)
        client.user("jones")
        client.pass_("wonderland")
        assert client.retr(1)[1] == [b"Subject: hi", b"", b"hello"]
        client.quit()
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    # twistd shuts down cleanly, then re-raises SIGTERM so its parent sees how it ended.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Server Shut Down." in output and "workers: 2 processes share" in output
    assert "login: user=<jones> method=USER rip=127.0.0.1" in output
    assert "logout: user=<jones>" in output and "retr=1/" in output


def test_config_file_shared_with_import(tmp_path: Path) -> None:
    """The server accepts (and ignores) the `vmspop import` keys of a shared --config file."""
    path = tmp_path / "shared.toml"
    path.write_text('mail-root = "/srv/mail"\ndecnet-rewrite = "generic"\npersonal-name = true\n')
    assert parse("--config", str(path)).mail_root == Path("/srv/mail")
