"""The administration command ``vmspop``: accounts, APOP secrets, local delivery and a store audit.

::

    vmspop [--config FILE] [--mail-root DIR] [--passwd FILE] COMMAND ...

    adduser USER [--disabled] [--nomail] [--expires YYYY-MM-DD]
    passwd USER
    modify USER [--disabled|--enabled] [--nomail|--mail] [--expires DATE|--no-expiry]
    secret USER
    deliver USER...
    import USER FILE [rewrite options]
    check

Exit statuses: 0 success, 1 failed (the command ran but could not do its job,
or ``check`` found a problem), 2 usage error (including bad user names, bad
dates, conflicting flags, a bad ``--config`` file and a refused secret).
``deliver`` uses the sendmail statuses a delivery agent is expected to use:
67 (EX_NOUSER) unknown user, 75 (EX_TEMPFAIL) temporary failure, 65
(EX_DATAERR) empty input.  ``import`` delivers too and uses the same: 67 for
a user who may not receive mail, 75 when a message cannot be stored (the
import stops; earlier messages stay), 65 for a file with no messages, and 1
when it skipped malformed messages or could not read the file.

Everything here blocks; the command never starts a reactor and uses nothing
from Twisted.  The functions
:func:`add_user`, :func:`set_secret` and :func:`deliver_message` are the code
paths of the commands, reused by :mod:`vmspop.demo`; ``check`` lives in
:mod:`vmspop.audit`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import getpass
import io
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, NoReturn

from vmspop import config, hashing, importer, secretfile
from vmspop.audit import Audit, Finding, audit
from vmspop.mail11 import RewriteOptions
from vmspop.passwd import Account, InvalidUsername, PasswdError, PasswordFile, normalize_username
from vmspop.store import READ_BLOCK, SECRET_FILE, DeliveryError, MailStore, NoSuchMailbox

__all__ = [
    "EX_DATAERR",
    "EX_FAILED",
    "EX_NOUSER",
    "EX_OK",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "Audit",
    "CommandError",
    "Finding",
    "add_user",
    "audit",
    "build_parser",
    "change_password",
    "check_recipients",
    "deliver_message",
    "main",
    "read_password",
    "read_secret_input",
    "set_secret",
]

EX_OK: Final = 0
#: The command ran but could not do what was asked (or ``check`` found problems).
EX_FAILED: Final = 1
#: What argparse uses for a bad command line; we use it for every usage error.
EX_USAGE: Final = 2
#: sysexits.h values, which MTAs (Postfix pipe, sendmail, exim) map to bounce/defer.
EX_DATAERR: Final = 65
EX_NOUSER: Final = 67
EX_TEMPFAIL: Final = 75

PROG: Final = "vmspop"
_SETTINGS: Final = {s.name: s for s in config.SETTINGS}
# The admin command reads two settings, but one --config file is shared with
# the server, so every server key is accepted (and ignored).
_CONFIG_KEYS: Final = config.CONFIG_KEYS
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class CommandError(Exception):
    """A command failed; ``main`` prints the message (prefixed ``vmspop: ``) and exits.

    Attributes:
        status: the exit status.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- command-line parsing ---------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``vmspop: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print one usage-error line on stderr and exit with status 2."""
        self.exit(EX_USAGE, f"{PROG}: {message} (see '{self.prog} --help')\n")


def _user_arg(text: str) -> str:
    """argparse type: a valid user name, returned in canonical (lower-case) form."""
    try:
        return normalize_username(text)
    except InvalidUsername as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _date_arg(text: str) -> datetime.date:
    """argparse type: a YYYY-MM-DD date (strictly; fromisoformat alone also takes 20261201)."""
    if _DATE_RE.fullmatch(text):
        try:
            return datetime.date.fromisoformat(text)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a date of the form YYYY-MM-DD")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``vmspop`` argument parser.

    Returns:
        The parser; each command's sub-parser sets ``handler`` (the function
        that runs it) and ``subparser`` (for late usage errors).
    """
    parser = _Parser(
        prog=PROG,
        description="Administer vmspop: accounts, APOP secrets, local delivery and a store audit.",
        epilog="Exit status: 0 success, 1 failed, 2 usage error; deliver and import: 67 unknown "
               "user, 75 temporary failure.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="TOML file of settings keyed by long option name (shared with the "
                             "server; mail-root, passwd and the import options are used here)")
    parser.add_argument("--mail-root", metavar="DIR",
                        help=f"the mail root (default: {_SETTINGS['mail-root'].default})")
    parser.add_argument("--passwd", metavar="FILE",
                        help=f"the password file (default: {_SETTINGS['passwd'].default})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace, _Context], int],
                help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler, subparser=sub)
        return sub

    adduser = command("adduser", _cmd_adduser,
                      "add a user and create the mail directory; the password is read from "
                      "standard input (one line), or prompted for twice on a terminal")
    adduser.add_argument("user", metavar="USER", type=_user_arg)
    adduser.add_argument("--disabled", action="store_true",
                         help="the account may not log in (VMS DISUSER)")
    adduser.add_argument("--nomail", action="store_true",
                         help="the account may not read or receive mail (VMS DISMAIL)")
    adduser.add_argument("--expires", metavar="YYYY-MM-DD", type=_date_arg,
                         help="refuse the account from this day (UTC) on")

    passwd = command("passwd", _cmd_passwd,
                     "change a user's password (same input rules as adduser)")
    passwd.add_argument("user", metavar="USER", type=_user_arg)

    modify = command("modify", _cmd_modify,
                     "set or clear the DISUSER, DISMAIL and expiration flags of a user")
    modify.add_argument("user", metavar="USER", type=_user_arg)
    login = modify.add_mutually_exclusive_group()
    login.add_argument("--disabled", dest="disuser", action="store_const", const=True,
                       help="disable logins (VMS DISUSER)")
    login.add_argument("--enabled", dest="disuser", action="store_const", const=False,
                       help="enable logins")
    mail = modify.add_mutually_exclusive_group()
    mail.add_argument("--nomail", dest="dismail", action="store_const", const=True,
                      help="the account may not read or receive mail (VMS DISMAIL)")
    mail.add_argument("--mail", dest="dismail", action="store_const", const=False,
                      help="the account may read and receive mail")
    expiry = modify.add_mutually_exclusive_group()
    expiry.add_argument("--expires", metavar="YYYY-MM-DD", type=_date_arg,
                        help="refuse the account from this day (UTC) on")
    expiry.add_argument("--no-expiry", action="store_true", help="the account never expires")

    secret = command("secret", _cmd_secret,
                     f"write the APOP shared secret ({SECRET_FILE}, mode 0600) from standard input: "
                     f"one line of at most {secretfile.MAX_SECRET_CHARS} characters")
    secret.add_argument("user", metavar="USER", type=_user_arg)

    deliver = command("deliver", _cmd_deliver,
                      "deliver the RFC 5322 message on standard input into each user's NEWMAIL, "
                      "all or nothing")
    # Validated by the command, not argparse: to a mail transfer agent a bad name is
    # an unknown user (67), not a usage error.
    deliver.add_argument("users", metavar="USER", nargs="+")

    importing = command("import", _cmd_import,
                        "import a VMS MAIL EXTRACT/ALL file into USER's NEWMAIL, rebuilding "
                        "RFC 822 headers from the MAIL-11 ones once; rewrite options also "
                        "come from --config")
    importing.add_argument("user", metavar="USER", type=_user_arg)
    importing.add_argument("file", metavar="FILE",
                           help="the extract file, transferred in text mode")
    settings = {s.name: s for s in importer.IMPORT_OPTIONS}
    importing.add_argument("--substitute-domain", metavar="DOMAIN",
                           help=settings["substitute-domain"].help)
    importing.add_argument("--hostname", metavar="NAME",
                           help="the local host name, for the generic form (default: this "
                                "host's name)")
    for name in ("decnet-rewrite", "quoted-decnet-rewrite"):
        importing.add_argument(f"--{name}", type=str.lower, choices=settings[name].choices,
                               help=f"{settings[name].help} (default: {settings[name].default})")
    importing.add_argument("--decnet-node", metavar="NODE=HOST", action="append",
                           help=settings["decnet-node"].help)
    importing.add_argument("--local-host", metavar="HOST", action="append",
                           help=settings["local-host"].help)
    for name in ("personal-name", "ignore-mail11-headers"):
        importing.add_argument(f"--{name}", action="store_const", const=True,
                               help=settings[name].help)

    command("check", _cmd_check,
            "audit the store: unsafe secret files, ownership, stray files, sizes; "
            "exit status 1 when a problem is found")
    return parser


@dataclass(frozen=True)
class _Context:
    """The store and password file a command works on."""

    mail_root: Path
    passwd_path: Path
    store: MailStore
    passwords: PasswordFile


def _context(args: argparse.Namespace) -> _Context:
    """Resolve ``--config``, ``--mail-root`` and ``--passwd``; the command line wins."""
    from_file: dict[str, Any] = {}
    try:
        if args.config is not None:
            from_file = config.load_toml(args.config, allowed=_CONFIG_KEYS)
        paths: dict[str, Path] = {}
        for name, given in (("mail-root", args.mail_root), ("passwd", args.passwd)):
            setting = _SETTINGS[name]
            if given is not None:
                paths[name] = Path(given)
            elif from_file.get(name) is not None:
                paths[name] = config.coerce(setting, from_file[name])
            else:
                paths[name] = Path(setting.default)
    except config.ConfigError as e:
        raise CommandError(EX_USAGE, str(e)) from None
    mail_root, passwd_path = paths["mail-root"], paths["passwd"]
    return _Context(mail_root, passwd_path, MailStore(mail_root), PasswordFile(passwd_path))


# --- reading passwords and secrets ------------------------------------------------


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # closed
        return False


def _binary_stdin() -> BinaryIO:
    """Standard input as bytes (falls back to encoding a text-only stand-in)."""
    if sys.stdin is None:
        raise CommandError(EX_FAILED, "standard input is closed")
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        return buffer  # type: ignore[no-any-return]
    return io.BytesIO(sys.stdin.read().encode("utf-8", "surrogateescape"))


def _strip_line_end(line: bytes) -> bytes:
    # Only the line end goes: spaces are part of a password.  CRLF counts as a line end.
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def _prompt_twice(first: str, second: str, what: str) -> str:
    try:
        one = getpass.getpass(first)
        two = getpass.getpass(second)
    except EOFError:
        raise CommandError(EX_FAILED, f"no {what} given; nothing changed") from None
    if one != two:
        raise CommandError(EX_FAILED, f"{what}s do not match; nothing changed")
    return one


def read_password(user: str) -> str:
    """Read a new password: one line of standard input, or twice from the terminal.

    Args:
        user: the account, for the prompt.

    Returns:
        The password, decoded as UTF-8 with ``surrogateescape`` (as the server
        decodes PASS), so any bytes survive.

    Raises:
        CommandError: no password on standard input, or the two entries differ.
    """
    if _stdin_is_terminal():
        password = _prompt_twice(f"New password for {user}: ", "Retype the new password: ",
                                 "password")
    else:
        # Bounded: a password longer than this could never be verified anyway.
        line = _binary_stdin().readline(hashing.MAX_PASSWORD_BYTES + 3)
        if not line:
            raise CommandError(EX_FAILED, "no password on standard input; nothing changed")
        password = _strip_line_end(line).decode("utf-8", "surrogateescape")
    return password


def read_secret_input(user: str) -> bytes:
    """Read an APOP shared secret from standard input (twice from a terminal).

    Args:
        user: the account, for the prompt.

    Returns:
        The raw secret, possibly with one trailing line end.

    Raises:
        CommandError: the two entries differ (status 1).
    """
    if _stdin_is_terminal():
        text = _prompt_twice(f"APOP shared secret for {user}: ", "Retype the shared secret: ",
                             "secret")
        return text.encode("utf-8", "surrogateescape")
    # One more octet than any valid secret can have, so a huge input is never held whole.
    return _binary_stdin().read(secretfile.MAX_SECRET_OCTETS + 1)


def _check_secret(user: str, raw: bytes) -> None:
    """Refuse (status 2) a secret that is empty, multi-line or too long."""
    try:
        secretfile.check_secret_text(raw)  # input longer than any valid secret fails as too long
        return
    except secretfile.SecretRejected as e:
        reason = str(e)
    raise CommandError(EX_USAGE, f"secret for {user} refused: {reason}; nothing written "
                                 f"(one line of at most {secretfile.MAX_SECRET_CHARS} characters)")


# --- the operations (shared with vmspop.demo) --------------------------------------


class _Refused(Exception):
    """Raised from a PasswordFile.update callback to abort without writing."""


def _flags(account: Account) -> str:
    expires = f"expires {account.expires.isoformat()}" if account.expires else "no expiry"
    return (f"{'disabled' if account.disuser else 'enabled'}, "
            f"{'nomail' if account.dismail else 'mail'}, {expires}")


def _hash(password: str) -> str:
    if not password:
        raise CommandError(EX_FAILED, "empty password refused; nothing changed")
    try:
        return hashing.hash_password(password)
    except ValueError as e:
        # The message says what is wrong (e.g. too long) and never contains the password.
        raise CommandError(EX_FAILED, f"password refused: {e}; nothing changed") from None


def _ensure_passwd_dir(path: Path) -> None:
    # PasswordFile.update needs the directory for its lock file and atomic rename;
    # 0700 like the mail directories, since it holds password hashes.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)


def add_user(passwords: PasswordFile, store: MailStore, user: str, password: str, *,
             disabled: bool = False, nomail: bool = False,
             expires: datetime.date | None = None) -> Account:
    """Add an account with an Argon2id password hash and create its mail directory.

    The mail directory is created first, so an account never exists without one;
    an existing (empty or orphaned) mail directory is kept.

    Args:
        passwords: the password file.
        store: the mail store.
        user: the user name (any case).
        password: the new password.
        disabled: set DISUSER.
        nomail: set DISMAIL.
        expires: the first day (UTC) the account is refused.

    Returns:
        The new account.

    Raises:
        CommandError: the user exists (1), the password is empty or too
            long (1), the name is invalid (2), or a file could not be
            written (1).
        PasswdError: the password file is malformed (it is left alone).
    """
    try:
        name = normalize_username(user)
    except InvalidUsername as e:
        raise CommandError(EX_USAGE, str(e)) from None
    if passwords.lookup(name) is not None:  # before the slow hash
        raise CommandError(EX_FAILED, f"user {name} already exists; nothing changed")
    account = Account(name=name, password_hash=_hash(password), disuser=disabled,
                      dismail=nomail, expires=expires)
    top = store.user_dir(name)
    if os.path.lexists(top) and not store.has_mailbox(name):
        raise CommandError(EX_FAILED, f"{top} exists but is not a directory; nothing changed")
    try:
        store.create_mailbox(name)
    except OSError as e:
        raise CommandError(EX_FAILED, f"cannot create the mail directory {top}: {_why(e)}; "
                                      "no account added") from None

    def change(current: Account | None) -> Account:
        if current is not None:
            raise _Refused  # added by someone else since the lookup
        return account

    try:
        _ensure_passwd_dir(Path(passwords.path))
        passwords.update(name, change)
    except _Refused:
        raise CommandError(EX_FAILED, f"user {name} already exists; nothing changed") from None
    except OSError as e:
        raise CommandError(EX_FAILED, f"cannot update {passwords.path}: {_why(e)}; "
                                      "no account added") from None
    return account


def change_password(passwords: PasswordFile, user: str, password: str) -> Account:
    """Replace a user's password hash with a new Argon2id hash.

    Args:
        passwords: the password file.
        user: the user name (any case).
        password: the new password.

    Returns:
        The updated account.

    Raises:
        CommandError: no such user, or the password is empty or too long (1).
        PasswdError: the password file is malformed (it is left alone).
        OSError: the password file could not be written.
    """
    new_hash = _hash(password)

    def change(current: Account | None) -> Account:
        if current is None:
            raise _Refused
        return dataclasses.replace(current, password_hash=new_hash)

    try:
        result = passwords.update(user, change)
    except _Refused:
        raise CommandError(EX_FAILED, f"no such user {user}; nothing changed") from None
    assert result is not None
    return result


def set_secret(store: MailStore, account: Account, secret: bytes) -> Path:
    """Write ``POP_SECRET.DAT`` atomically, mode 0600, after validating the secret.

    When running as root and the account has a uid, the file is given to that uid.

    Args:
        store: the mail store.
        account: the user.
        secret: one line (a trailing line end is allowed) of at most 500 characters.

    Returns:
        The secret file's path.

    Raises:
        CommandError: the secret is refused (2, nothing written), the user
            has no mail directory (1) or the file cannot be written (1).
    """
    _check_secret(account.name, secret)  # before anything touches the disk
    if not store.has_mailbox(account.name):
        raise CommandError(EX_FAILED, f"user {account.name} has no mail directory "
                                      f"({store.user_dir(account.name)}); nothing written")
    path = store.secret_path(account.name)
    # Only root may give a file away; as anyone else the file is ours, which the
    # server accepts when we are the store owner.
    uid = account.uid if account.uid is not None and os.geteuid() == 0 else None
    try:
        secretfile.write_secret(path, secret, uid=uid)
    except secretfile.SecretRejected as e:  # not reached: checked above
        raise CommandError(EX_USAGE, f"secret for {account.name} refused: {e}") from None
    except OSError as e:
        raise CommandError(EX_FAILED, f"cannot write {path}: {e.strerror or e}") from None
    return path


def check_recipients(passwords: PasswordFile, store: MailStore, users: Iterable[str]) -> list[str]:
    """Check that every recipient may receive mail.

    Args:
        passwords: the password file.
        store: the mail store.
        users: the recipients, in any case.

    Returns:
        The recipients' canonical names.

    Raises:
        CommandError: 67 naming every refused recipient (an invalid name, no
            account, DISMAIL, no mail directory); 75 if the password file
            cannot be read.
    """
    names: list[str] = []
    problems: list[str] = []
    for user in users:
        try:
            name = normalize_username(user)
        except InvalidUsername as e:
            problems.append(f"unknown user: {e}")
            continue
        try:
            account = passwords.lookup(name)
        except (PasswdError, OSError) as e:
            # An operator can fix the file; the MTA should retry, not bounce.
            raise CommandError(EX_TEMPFAIL, f"cannot read the password file: {_why(e)}; "
                                            "nothing delivered") from None
        if account is None:
            problems.append(f"unknown user {name}")
        elif account.dismail:
            problems.append(f"user {name} may not receive mail (nomail)")
        elif not store.has_mailbox(name):
            problems.append(f"user {name} has no mail directory")
        else:
            names.append(name)
    if problems:
        raise CommandError(EX_NOUSER, "; ".join(problems) + "; nothing delivered")
    return names


def deliver_message(passwords: PasswordFile, store: MailStore, users: Iterable[str],
                    source: BinaryIO | Iterable[bytes]) -> list[Path]:
    """Deliver one message to every user's NEWMAIL, all or nothing.

    Every recipient is checked first: it must be a valid name with an account
    that is not DISMAIL and a mail directory.  The message is streamed, never
    read into memory whole.

    Args:
        passwords: the password file.
        store: the mail store.
        users: the recipients (any case; duplicates are delivered once).
        source: the message, a binary file or an iterable of byte blocks.

    Returns:
        The delivered files.

    Raises:
        CommandError: 67 when a recipient is refused, 75 when the message
            could not be stored; in both cases nothing was delivered.
    """
    names = check_recipients(passwords, store, users)
    try:
        return store.deliver(names, source)
    except NoSuchMailbox as e:  # removed since the check above
        raise CommandError(EX_NOUSER, f"user {e} has no mail directory; nothing delivered") from None
    except (DeliveryError, OSError) as e:
        # Every store failure is 75: a full disk or a lock is worth retrying, and
        # the MTA keeps the message rather than bouncing it.
        raise CommandError(EX_TEMPFAIL, f"{_why(e)}; nothing delivered, try again later") from None


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)


# --- the commands ------------------------------------------------------------------


def _cmd_adduser(args: argparse.Namespace, ctx: _Context) -> int:
    if ctx.passwords.lookup(args.user) is not None:  # before asking for a password
        raise CommandError(EX_FAILED, f"user {args.user} already exists; nothing changed")
    existed = ctx.store.has_mailbox(args.user)
    password = read_password(args.user)
    add_user(ctx.passwords, ctx.store, args.user, password, disabled=args.disabled,
             nomail=args.nomail, expires=args.expires)
    kept = ", already there" if existed else ""
    print(f"{PROG}: added user {args.user} (mail directory {ctx.store.user_dir(args.user)}{kept})")
    return EX_OK


def _cmd_passwd(args: argparse.Namespace, ctx: _Context) -> int:
    if ctx.passwords.lookup(args.user) is None:
        raise CommandError(EX_FAILED, f"no such user {args.user}; nothing changed")
    change_password(ctx.passwords, args.user, read_password(args.user))
    print(f"{PROG}: changed the password of {args.user}")
    return EX_OK


def _cmd_modify(args: argparse.Namespace, ctx: _Context) -> int:
    changes: dict[str, Any] = {}
    if args.disuser is not None:
        changes["disuser"] = args.disuser
    if args.dismail is not None:
        changes["dismail"] = args.dismail
    if args.expires is not None:
        changes["expires"] = args.expires
    elif args.no_expiry:
        changes["expires"] = None
    if not changes:
        args.subparser.error("give at least one of --disabled/--enabled, --nomail/--mail, "
                             "--expires/--no-expiry")

    def change(current: Account | None) -> Account:
        if current is None:
            raise _Refused
        return dataclasses.replace(current, **changes)

    try:
        account = ctx.passwords.update(args.user, change)
    except _Refused:
        raise CommandError(EX_FAILED, f"no such user {args.user}; nothing changed") from None
    assert account is not None
    print(f"{PROG}: user {account.name}: {_flags(account)}")
    return EX_OK


def _cmd_secret(args: argparse.Namespace, ctx: _Context) -> int:
    account = ctx.passwords.lookup(args.user)
    if account is None:
        raise CommandError(EX_FAILED, f"no such user {args.user}; nothing written")
    path = set_secret(ctx.store, account, read_secret_input(account.name))
    print(f"{PROG}: wrote the APOP secret of {account.name} to {path} (mode 0600)")
    return EX_OK


def _cmd_deliver(args: argparse.Namespace, ctx: _Context) -> int:
    # Recipients first: an unknown user is refused without reading the message.
    recipients = check_recipients(ctx.passwords, ctx.store, args.users)
    stream = _binary_stdin()
    try:
        first = stream.read(READ_BLOCK)
    except OSError as e:
        raise CommandError(EX_TEMPFAIL, f"cannot read standard input: {_why(e)}; "
                                        "nothing delivered") from None
    if not first:
        raise CommandError(EX_DATAERR, "no message on standard input; nothing delivered")
    # The block already read, then the rest, streamed: never the whole message in memory.
    rest = iter(lambda: stream.read(READ_BLOCK), b"")
    deliver_message(ctx.passwords, ctx.store, recipients, itertools.chain([first], rest))
    return EX_OK


def _import_options(args: argparse.Namespace) -> RewriteOptions:
    """The rewrite options of ``import``: the command line, else ``--config``, else defaults."""
    try:
        from_file = config.load_toml(args.config, allowed=_CONFIG_KEYS) if args.config else {}
        values = {}
        for setting in importer.IMPORT_OPTIONS:
            given = getattr(args, setting.attribute)
            # A list given on the command line replaces the file's whole list, as --pop3 does.
            values[setting.name] = given if given is not None else from_file.get(setting.name)
        return importer.rewrite_options(values)
    except config.ConfigError as e:
        raise CommandError(EX_USAGE, str(e)) from None


def _cmd_import(args: argparse.Namespace, ctx: _Context) -> int:
    options = _import_options(args)
    [user] = check_recipients(ctx.passwords, ctx.store, [args.user])  # 67, like deliver
    progress = importer.Progress(sys.stderr)
    try:
        report = importer.import_extract(ctx.store, user, args.file, options,
                                         warn=lambda line: progress.note(f"{PROG}: {line}"),
                                         progress=progress)
    except importer.ImportStopped as e:
        print(f"{PROG}: {e.report.summary(user, args.file)}")
        status = {"store": EX_TEMPFAIL, "interrupt": 130}.get(e.cause, EX_FAILED)
        kept = f"the {e.report.imported} imported stay" if e.report.imported else "none imported"
        if e.offset < 0:
            raise CommandError(status, f"{e} after the last message; all were imported") from None
        rest = f"{args.file}.rest"
        raise CommandError(status, f"{e}; stopped at message {e.number} ({kept}); to import "
                                   f"the rest, with the same options, run: "
                                   f"{importer.resume_command(args.file, e.offset, user, rest)}"
                           ) from None
    except OSError as e:
        raise CommandError(EX_FAILED, f"cannot read {args.file}: {_why(e)}; nothing imported"
                           ) from None
    print(f"{PROG}: {report.summary(user, args.file)}")
    if not report.imported and not report.skipped:
        raise CommandError(EX_DATAERR, f"{args.file} holds no messages; nothing imported")
    return EX_FAILED if report.skipped else EX_OK


def _cmd_check(args: argparse.Namespace, ctx: _Context) -> int:
    run = audit(ctx.mail_root, ctx.passwd_path)
    for finding in run.findings:
        print(finding)
    scope = (f"{run.users} user director{'y' if run.users == 1 else 'ies'}, "
             f"{run.messages} message{'' if run.messages == 1 else 's'}")
    count = len(run.findings)
    if count:
        print(f"{PROG} check: {count} problem{'' if count == 1 else 's'} found ({scope})")
        return EX_FAILED
    print(f"{PROG} check: no problems found ({scope})")
    return EX_OK


# --- entry point -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the ``vmspop`` command.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed
        return e.code if isinstance(e.code, int) else (EX_OK if e.code is None else EX_USAGE)
    try:
        ctx = _context(args)
        return int(args.handler(args, ctx))
    except SystemExit as e:  # a late usage error (subparser.error)
        return e.code if isinstance(e.code, int) else EX_USAGE
    except CommandError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.status
    except PasswdError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EX_FAILED
    except OSError as e:
        print(f"{PROG}: {_why(e)}", file=sys.stderr)
        return EX_FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing changed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
