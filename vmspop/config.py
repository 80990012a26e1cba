"""Server settings: one table that drives ``twistd vmspop --help``, ``--config`` and the docs.

Each setting carries its long option name, its default, the reason for that default
and, where one exists, the OpenVMS TCP/IP Services logical name it replaces.  The
:class:`ServerConfig` dataclass is the typed, validated result that the rest of
vmspop reads; nothing else parses options.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_KEYS",
    "ConfigError",
    "IMPORT_SETTINGS",
    "LOG_LEVELS",
    "SECURITY_MODES",
    "SETTINGS",
    "ServerConfig",
    "Setting",
    "load_toml",
]

SECURITY_MODES = ("secure", "friendly")
#: Ordered from quietest to noisiest, as TCPIP$POP_LOG_LEVEL's ERROR/INFORMATIONAL/THREAD/DEBUG.
LOG_LEVELS = ("error", "info", "session", "debug")

DEFAULT_POP3_ENDPOINT = "tcp:1110:interface=127.0.0.1"
DEFAULT_SMTP_ENDPOINT = "tcp:2525:interface=127.0.0.1"
#: Generous for mail with attachments, small enough that a client cannot fill the disk
#: with one message; Postfix's default message_size_limit is 10 MB, Exchange's 25-35 MB.
DEFAULT_MAX_MESSAGE_SIZE = 50 * 1024 * 1024

#: RFC 1939 section 3: an autologout timer must be at least 10 minutes.
DEFAULT_IDLE_TIMEOUT = 600.0
#: TCPIP$POP_MAXIMUM_THREADS defaulted to 15 on a VAX; one Twisted process
#: serves thousands of mostly idle POP3 connections, so the cap is about
#: file descriptors and memory, not threads.
DEFAULT_MAX_SESSIONS = 1000
#: Enough for an office behind one NAT address polling from many desktops and
#: phones, few enough that one address cannot take every slot.
DEFAULT_MAX_SESSIONS_PER_IP = 50
#: The OpenVMS server allowed two USER/PASS attempts per TCP connection (HELP TCPIP_Services POP).
DEFAULT_MAX_AUTH_ATTEMPTS = 2
#: Dovecot's auth_failure_delay: slows online guessing without hurting a user who mistyped.
DEFAULT_AUTH_FAILURE_DELAY = 2.0
#: TCPIP$POP_MESSAGE_MAXIMUM accepted 0-65535.
MAX_MESSAGE_MAXIMUM = 65535
#: Long enough for a client to finish a normal download and QUIT, short enough for
#: systemd's default 90 s stop timeout.
DEFAULT_SHUTDOWN_GRACE = 30.0
#: A failure delay longer than this only ties up connection slots; clients time out first.
MAX_AUTH_FAILURE_DELAY = 60.0
#: RFC 1035 limit for a domain name; it also keeps the greeting within 512 octets.
MAX_HOSTNAME = 255
#: Each worker is a whole Python process (some 50 MiB resident before any session); more
#: than this is likelier a typo than a plan, and would only add memory, not throughput.
MAX_WORKERS = 64


class ConfigError(ValueError):
    """A setting has a value vmspop cannot use; the message names the setting."""


@dataclass(frozen=True)
class Setting:
    """One server option.

    Attributes:
        name: the long option name (``--name``) and ``--config`` key.
        kind: ``"flag"``, ``"int"``, ``"float"``, ``"str"``, ``"path"``,
            ``"choice"`` or ``"list"`` (repeatable).
        default: the value used when neither the command line nor the
            configuration file gives one.
        help: one sentence for ``--help``.
        vms: the OpenVMS logical name this setting carries over, if any.
        choices: the allowed values of a ``"choice"`` setting.
    """

    name: str
    kind: str
    default: Any
    help: str
    vms: str | None = None
    choices: tuple[str, ...] = ()

    @property
    def attribute(self) -> str:
        """The :class:`ServerConfig` field name."""
        return self.name.replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("mail-root", "path", "vmspop-data/mail",
            "directory holding one mail directory per user"),
    Setting("passwd", "path", "vmspop-data/passwd",
            "password file, Dovecot passwd-file format"),
    Setting("pop3", "list", (DEFAULT_POP3_ENDPOINT,),
            "POP3 listening endpoint, a Twisted endpoint string (repeatable)"),
    Setting("smtp", "list", (DEFAULT_SMTP_ENDPOINT,),
            "SMTP listening endpoint for mail delivery into NEWMAIL (repeatable)"),
    Setting("no-smtp", "flag", False,
            "do not accept mail over SMTP (deliver with `vmspop deliver` instead)"),
    Setting("hostname", "str", None,
            "host name shown in the greetings and the APOP challenge, and a domain whose mail "
            "is accepted (default: this host's name)"),
    Setting("local-domain", "list", (),
            "another mail domain whose users' mail the SMTP listener accepts (repeatable)"),
    Setting("max-message-size", "int", DEFAULT_MAX_MESSAGE_SIZE,
            "largest message accepted over SMTP, in octets (advertised with SIZE)"),
    Setting("leave-in-newmail", "flag", False,
            "leave retrieved, undeleted mail in NEWMAIL at QUIT instead of moving it to MAIL",
            vms="TCPIP$POP_LEAVE_IN_NEWMAIL"),
    Setting("use-mail-folder", "flag", False,
            "serve the MAIL folder, moving new mail into it at login",
            vms="TCPIP$POP_USE_MAIL_FOLDER"),
    Setting("disable-userpass", "flag", False,
            "refuse USER, PASS and AUTH PLAIN; only the shared secret (APOP, CRAM-MD5, "
            "SCRAM-SHA-256) logs in",
            vms="TCPIP$POP_DISUSERPASS"),
    Setting("security", "choice", "secure",
            "secure: one generic login failure reply; friendly: say what was wrong",
            vms="TCPIP$POP_SECURITY", choices=SECURITY_MODES),
    Setting("idle-timeout", "float", DEFAULT_IDLE_TIMEOUT,
            "seconds a client may stay idle (or stop reading) before it is logged out; 0 = never",
            vms="TCPIP$POP_LINK_IDLE_TIMEOUT"),
    Setting("max-sessions", "int", DEFAULT_MAX_SESSIONS,
            "concurrent POP3 connections; more are refused with -ERR [SYS/TEMP]",
            vms="TCPIP$POP_MAXIMUM_THREADS"),
    Setting("max-sessions-per-ip", "int", DEFAULT_MAX_SESSIONS_PER_IP,
            "concurrent POP3 connections from one client address (an IPv6 /64)"),
    Setting("message-maximum", "int", 0,
            "messages shown per session, oldest first; 0 = unlimited",
            vms="TCPIP$POP_MESSAGE_MAXIMUM"),
    Setting("send-id-headers", "flag", False,
            "add X-POP3-Server: and X-POP3-ID: headers to retrieved messages",
            vms="TCPIP$POP_SEND_ID_HEADERS"),
    Setting("log-level", "choice", "info",
            "error, info (logins and logouts), session (every command) or debug",
            vms="TCPIP$POP_LOG_LEVEL", choices=LOG_LEVELS),
    Setting("trace", "flag", False,
            "log every protocol line (passwords, digests and message bodies masked)",
            vms="TCPIP$POP_TRACE"),
    Setting("auth", "choice", "file",
            "where USER/PASS and AUTH PLAIN passwords are checked: file (--passwd) or pam",
            vms="SYSUAF", choices=("file", "pam")),
    Setting("pam-service", "str", "vmspop",
            "PAM service name with --auth pam (/etc/pam.d/NAME)"),
    Setting("tls-cert", "path", None,
            "PEM certificate (and chain) for STLS and SMTP STARTTLS; re-read when it changes"),
    Setting("tls-key", "path", None, "PEM private key of --tls-cert"),
    Setting("require-tls", "flag", False,
            "refuse USER, PASS, APOP and AUTH PLAIN until the session is encrypted"),
    Setting("allow-loopback-plaintext", "flag", False,
            "with --require-tls, still allow clear-text logins from 127.0.0.0/8 and ::1"),
    Setting("stats-users", "list", (),
            "accounts allowed to run XTND STATS (repeatable)"),
    Setting("shutdown-grace", "float", DEFAULT_SHUTDOWN_GRACE,
            "seconds sessions may go on after SIGTERM before they are closed without update; "
            "the OpenVMS XTND SHUTDOWN drain"),
    Setting("max-auth-attempts", "int", DEFAULT_MAX_AUTH_ATTEMPTS,
            "failed logins allowed per connection before it is closed"),
    Setting("auth-failure-delay", "float", DEFAULT_AUTH_FAILURE_DELAY,
            "seconds to wait before answering a failed login"),
    Setting("workers", "int", None,
            "processes that share the listening sockets and serve connections (default: one "
            "per CPU core, or 1 when an endpoint cannot be shared); 1 = a single process"),
)

#: Options of ``vmspop import`` that rebuild RFC 822 headers from MAIL-11 ones.  They
#: live in the same ``--config`` file as the server settings (the server ignores them).
IMPORT_SETTINGS: tuple[Setting, ...] = (
    Setting("substitute-domain", "str", None,
            "domain for user-name-only and generic addresses (default: --hostname)",
            vms="SMTP /SUBSTITUTE_DOMAIN"),
    Setting("decnet-rewrite", "choice", "transform",
            "how NODE::USER senders are rebuilt: transform, generic or none",
            vms="TCPIP$POP_DECNET_REWRITE", choices=("transform", "generic", "none")),
    Setting("quoted-decnet-rewrite", "choice", "transform",
            'how NODE::"user@host" senders are rebuilt: transform, generic or none',
            vms="TCPIP$POP_QUOTED_DECNET_REWRITE", choices=("transform", "generic", "none")),
    Setting("decnet-node", "list", (),
            "DECnet node to host name translation, NODE=HOST (repeatable)"),
    Setting("local-host", "list", (),
            "host names that count as local (repeatable)", vms="TCPIP$SMTP_LOCAL_ALIASES.TXT"),
    Setting("personal-name", "flag", False,
            "keep the sender's personal name in the rebuilt From:", vms="TCPIP$POP_PERSONAL_NAME"),
    Setting("ignore-mail11-headers", "flag", False,
            "use RFC 822 headers found at the top of a message body instead of rebuilt ones",
            vms="TCPIP$POP_IGNORE_MAIL11_HEADERS"),
)

_BY_NAME = {s.name: s for s in SETTINGS}
#: Every key a shared ``--config`` file may hold.
CONFIG_KEYS = frozenset(_BY_NAME) | frozenset(s.name for s in IMPORT_SETTINGS)


@dataclass(frozen=True)
class ServerConfig:
    """The validated server settings.  See :data:`SETTINGS` for each field's meaning."""

    mail_root: Path = Path("vmspop-data/mail")
    passwd: Path = Path("vmspop-data/passwd")
    pop3: tuple[str, ...] = (DEFAULT_POP3_ENDPOINT,)
    smtp: tuple[str, ...] = (DEFAULT_SMTP_ENDPOINT,)
    no_smtp: bool = False
    hostname: str = field(default_factory=socket.gethostname)
    local_domain: tuple[str, ...] = ()
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    leave_in_newmail: bool = False
    use_mail_folder: bool = False
    disable_userpass: bool = False
    security: str = "secure"
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_sessions_per_ip: int = DEFAULT_MAX_SESSIONS_PER_IP
    message_maximum: int = 0
    send_id_headers: bool = False
    log_level: str = "info"
    trace: bool = False
    auth: str = "file"
    pam_service: str = "vmspop"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = False
    allow_loopback_plaintext: bool = False
    stats_users: tuple[str, ...] = ()
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    max_auth_attempts: int = DEFAULT_MAX_AUTH_ATTEMPTS
    auth_failure_delay: float = DEFAULT_AUTH_FAILURE_DELAY
    #: None: one per core (twistd); only make_service(..., workers=True) looks at it.
    workers: int | None = None

    def __post_init__(self) -> None:
        for problem in self.problems():
            raise ConfigError(problem)

    def problems(self) -> list[str]:
        """Every reason this configuration cannot be used, each naming its option."""
        found = []
        if self.security not in SECURITY_MODES:
            found.append(f"--security must be one of {', '.join(SECURITY_MODES)}")
        if self.log_level not in LOG_LEVELS:
            found.append(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if not self.idle_timeout >= 0:
            found.append("--idle-timeout must be 0 (never) or a positive number of seconds")
        if self.max_sessions < 1:
            found.append("--max-sessions must be at least 1")
        if self.max_sessions_per_ip < 1:
            found.append("--max-sessions-per-ip must be at least 1")
        if not 0 <= self.message_maximum <= MAX_MESSAGE_MAXIMUM:
            found.append(f"--message-maximum must be between 0 and {MAX_MESSAGE_MAXIMUM}")
        if not self.shutdown_grace >= 0:
            found.append("--shutdown-grace must be 0 or a positive number of seconds")
        if self.max_auth_attempts < 1:
            found.append("--max-auth-attempts must be at least 1")
        if not 0 <= self.auth_failure_delay <= MAX_AUTH_FAILURE_DELAY:
            found.append(f"--auth-failure-delay must be between 0 and {MAX_AUTH_FAILURE_DELAY:g} seconds")
        if self.workers is not None and not 1 <= self.workers <= MAX_WORKERS:
            found.append(f"--workers must be between 1 and {MAX_WORKERS}")
        if (not self.hostname or len(self.hostname) > MAX_HOSTNAME
                or any(not 0x21 <= ord(c) <= 0x7E or c in "<>@" for c in self.hostname)):
            found.append("--hostname must be 1-255 printable characters without spaces, <, > or @")
        if not self.pop3:
            found.append("at least one --pop3 endpoint is needed")
        if self.auth not in ("file", "pam"):
            found.append("--auth must be file or pam")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", self.pam_service):
            found.append("--pam-service must be a plain file name")
        if (self.tls_cert is None) != (self.tls_key is None):
            found.append("--tls-cert and --tls-key go together")
        implicit_tls = any(re.match(r"(haproxy:)?(ssl|tls):", e) for e in self.pop3)
        if self.require_tls and self.tls_cert is None and not implicit_tls:
            found.append("--require-tls needs --tls-cert/--tls-key or an ssl: endpoint, "
                         "else no login could ever succeed")
        if self.max_message_size < 1024:
            found.append("--max-message-size must be at least 1024 octets")
        for domain in self.local_domain:
            if not domain or any(not 0x21 <= ord(c) <= 0x7E or c in "<>@[]" for c in domain):
                found.append(f"--local-domain {domain!r} is not a domain name")
        if self.leave_in_newmail and self.use_mail_folder:
            found.append("--leave-in-newmail and --use-mail-folder exclude each other "
                         "(MAIL is served, so nothing is left in NEWMAIL)")
        return found

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> ServerConfig:
        """Build a configuration from option-name keyed values (``"mail-root"``, ...).

        Keys missing from ``values`` or set to ``None`` take their defaults.

        Raises:
            ConfigError: for an unknown key or an unusable value.
        """
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            setting = _BY_NAME.get(key)
            if setting is None:
                raise ConfigError(f"unknown setting {key!r}")
            if value is None:
                continue
            kwargs[setting.attribute] = coerce(setting, value)
        return cls(**kwargs)

    def to_settings(self) -> dict[str, Any]:
        """The inverse of :meth:`from_settings`: option-name keyed, TOML/JSON-typed values
        (how the configuration reaches a worker process)."""
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            value = getattr(self, setting.attribute)
            if value is None:
                continue
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            values[setting.name] = value
        return values

    def replace(self, **changes: Any) -> ServerConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def coerce(setting: Setting, value: Any) -> Any:
    """Convert a command-line string or a TOML value to the setting's type.

    Raises:
        ConfigError: naming the option when the value does not fit.
    """
    name = f"--{setting.name}"
    try:
        if setting.kind == "flag":
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ConfigError(f"{name} must be true or false")
        if setting.kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if setting.kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if setting.kind == "path":
            return Path(_text(value, name))
        if setting.kind == "list":
            if isinstance(value, str):
                return (value,)
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ConfigError(f"{name} must be a string or a list of strings")
        text = _text(value, name)
        if setting.kind == "choice" and text.lower() not in setting.choices:
            raise ConfigError(f"{name} must be one of {', '.join(setting.choices)}")
        return text.lower() if setting.kind == "choice" else text
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{name}: {value!r} is not a valid {setting.kind}") from None


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string")
    return value


def load_toml(path: str | Path, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    """Read a ``--config`` file: a TOML table whose keys are long option names.

    Args:
        path: the file to read.
        allowed: the keys accepted; None means :data:`CONFIG_KEYS` (every
            tool's keys, since one file serves the server and ``vmspop``).

    Raises:
        ConfigError: if the file cannot be read or parsed, or holds an unknown key.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML: {e}") from None
    known = allowed if allowed is not None else CONFIG_KEYS
    for key in data:
        if key not in known:
            raise ConfigError(f"--config {path}: unknown setting {key!r}")
    return data
