"""``twistd vmspop``: command-line options and the service they build.

The options are generated from :data:`vmspop.config.SETTINGS`, so ``--help``,
``--config`` keys and the documentation cannot drift apart.  A ``--config`` TOML
file is read first; options given on the command line override it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import IService
from twisted.logger import globalLogPublisher
from twisted.python import usage

from vmspop.config import SETTINGS, ConfigError, ServerConfig, Setting, load_toml
from vmspop.processwide import keep_freed_memory, settle_garbage_collector, stop_on_signals, write_text_log
from vmspop.server import make_service
from vmspop.tls import TLSCertificate, TLSError

__all__ = ["Options", "makeService"]


def _describe(setting: Setting) -> str:
    text = setting.help
    if setting.kind != "flag" and setting.default not in (None, ()):
        default = setting.default
        if isinstance(default, tuple):
            default = ", ".join(default)
        text += f" [default: {default}]"
    if setting.vms:
        text += f" (OpenVMS: {setting.vms})"
    return text


class Options(usage.Options):
    """Options of ``twistd vmspop``."""

    synopsis = ("[--config FILE] [--mail-root DIR] [--passwd FILE] [--pop3 ENDPOINT]... "
                "[--smtp ENDPOINT]... [--no-smtp] [options]")
    longdesc = (
        "vmspop serves each user's NEWMAIL folder over POP3 with the OpenVMS TCP/IP Services "
        "semantics: at QUIT deleted mail is removed and mail retrieved but not deleted moves "
        "to MAIL.  Users log in with USER/PASS or AUTH PLAIN (password file or PAM), or with "
        "the shared secret in POP_SECRET.DAT (APOP, AUTH CRAM-MD5, AUTH SCRAM-SHA-256); mail "
        "arrives over SMTP, `vmspop deliver` or any Maildir agent.  "
        "Endpoints are Twisted endpoint strings such as tcp:110 or unix:/run/vmspop.sock."
    )
    optFlags = [[s.name, None, _describe(s)] for s in SETTINGS if s.kind == "flag"]
    optParameters = [[s.name, None, None, _describe(s)] for s in SETTINGS
                     if s.kind not in ("flag", "list")]
    optParameters.append(["config", None, None, "TOML file of settings, keyed by long option name"])

    def __init__(self) -> None:
        super().__init__()
        for setting in SETTINGS:
            if setting.kind == "list":
                self[setting.name] = []
        self._from_file: dict[str, Any] = {}


    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse the command line; ``--config`` is read first so the command line wins."""
        argv = list(options) if options is not None else None
        path = _config_path(argv)
        if path is not None:
            try:
                self._from_file = load_toml(path)
            except ConfigError as e:
                raise usage.UsageError(str(e)) from None
        super().parseOptions(argv)

    def postOptions(self) -> None:
        """Merge the file, the command line and the defaults into a :class:`ServerConfig`."""
        server_keys = {s.name for s in SETTINGS}
        # The file is shared with `vmspop import`, whose keys the server ignores.
        values = {k: v for k, v in self._from_file.items() if k in server_keys}
        for setting in SETTINGS:
            given = self.get(setting.name)
            if setting.kind == "flag":
                if given:
                    values[setting.name] = True
            elif setting.kind == "list":
                if given:
                    values[setting.name] = list(given)
            elif given is not None:
                values[setting.name] = given
        try:
            self.config = ServerConfig.from_settings(values)
            if self.config.tls_cert is not None and self.config.tls_key is not None:
                TLSCertificate(self.config.tls_cert, self.config.tls_key)  # fail now, not at STLS
        except (ConfigError, TLSError, TypeError) as e:
            raise usage.UsageError(str(e)) from None


def _repeatable(setting: Setting) -> Callable[[Options, str], None]:
    def option(self: Options, value: str) -> None:
        self[setting.name].append(value)

    option.__doc__ = _describe(setting)
    return option


# usage.Options finds opt_* methods by name: one per repeatable setting (--pop3, --smtp, ...).
for _setting in SETTINGS:
    if _setting.kind == "list":
        setattr(Options, "opt_" + _setting.attribute, _repeatable(_setting))


def _config_path(argv: list[str] | None) -> str | None:
    if argv is None:
        import sys
        argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the vmspop service from parsed options.

    Args:
        options: parsed :class:`Options`.
        reactor: for tests; the global reactor when None (only twistd calls it so).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor
        reactor = global_reactor
    keep_freed_memory()
    # twistd serves from --workers processes (default: one per core); see vmspop.workers.
    service = make_service(options.config, reactor, workers=True)
    settle_garbage_collector()
    reactor.callWhenRunning(stop_on_signals, reactor)
    # twistd begins logging after makeService; its observer is in place once the reactor runs.
    reactor.callWhenRunning(write_text_log, reactor, globalLogPublisher)
    return service

