"""``vmspop import``: VMS MAIL ``EXTRACT/ALL`` files into a user's NEWMAIL.

The file is read in blocks and parsed one message at a time
(:func:`vmspop.mail11.read_extract`); each message is rendered once and
delivered on its own with :meth:`MailStore.deliver`, under its VMS arrival date,
so UIDLs ("user name + date of arrival") and the folder order follow the
original mail.

Failure handling, chosen so that no half message is ever stored:

- A malformed message is reported (message number and line) and skipped; the
  rest of the file is imported.
- A delivery failure (disk full, I/O error), a read error or an interrupt
  stops the import.  Messages already imported stay: each was delivered
  atomically, and a failed delivery leaves nothing behind.  :class:`ImportStopped`
  says where the first message not imported starts, so the rest of the file
  can be imported on its own (``tail -c +N``); importing the whole file again
  would duplicate the messages already imported.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TextIO

from vmspop import config, mail11
from vmspop.config import ConfigError
from vmspop.store import READ_BLOCK, DeliveryError, MailStore, NoSuchMailbox

__all__ = [
    "IMPORT_OPTIONS",
    "ImportReport",
    "ImportStopped",
    "Progress",
    "import_extract",
    "resume_command",
    "rewrite_options",
]

#: The settings ``vmspop import`` reads: its own, plus the server's host name.
IMPORT_OPTIONS: Final = (*config.IMPORT_SETTINGS,
                         next(s for s in config.SETTINGS if s.name == "hostname"))

#: A progress line more often than this is flicker, not information.
PROGRESS_INTERVAL: Final = 0.1
#: RFC 1035: a domain name is at most 255 octets.
MAX_HOST_NAME: Final = 255
#: Two messages with the same VMS arrival date (to the hundredth) are filed this
#: many microseconds apart, in file order, so that the folder order stays the
#: file's order (the store sorts by arrival); a UIDL shows hundredths, so it
#: still shows the VMS date.  One is the smallest step a Maildir name records.
ARRIVAL_TICK_MICROSECONDS: Final = 1

# A host name: letters, digits, hyphens, dots and underscores (old intranet names
# have them), neither starting nor ending with a dot or a hyphen.
_HOST: Final = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_NODE: Final = re.compile(r"[A-Za-z0-9$_-]+")


# --- options ------------------------------------------------------------------------


def rewrite_options(values: Mapping[str, Any]) -> mail11.RewriteOptions:
    """Validate the import settings, keyed by option name, into rewrite options.

    Args:
        values: ``{"decnet-node": [...], "hostname": ..., ...}`` as given on the
            command line or in ``--config``; a missing or None key takes its
            default (for ``hostname``, this host's name).

    Raises:
        ConfigError: a value is unusable; the message names the option.
    """
    known = {s.name: s for s in IMPORT_OPTIONS}
    settled: dict[str, Any] = {}
    for name, setting in known.items():
        value = values.get(name)
        settled[name] = setting.default if value is None else config.coerce(setting, value)
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}")
    hostname = settled["hostname"] or socket.gethostname()
    _check_host("--hostname", hostname)
    substitute = settled["substitute-domain"] or None
    if substitute is not None:
        _check_host("--substitute-domain", substitute)
    nodes: dict[str, str] = {}
    for entry in settled["decnet-node"]:
        node, equals, host = entry.partition("=")
        node, host = node.strip(), host.strip()
        if not equals or not _NODE.fullmatch(node) or not _HOST.fullmatch(host) \
                or len(host) > MAX_HOST_NAME:
            raise ConfigError(f"--decnet-node {entry!r}: expected NODE=HOST, such as "
                              "ORDERS=orders.example.com")
        previous = nodes.setdefault(node.upper(), host)
        if previous.lower() != host.lower():
            raise ConfigError(f"--decnet-node: {node.upper()} is given as both {previous} "
                              f"and {host}")
    for host in settled["local-host"]:
        _check_host("--local-host", host)
    return mail11.RewriteOptions(
        hostname=hostname,
        substitute_domain=substitute,
        decnet_rewrite=settled["decnet-rewrite"],
        quoted_decnet_rewrite=settled["quoted-decnet-rewrite"],
        decnet_nodes=nodes,
        local_hosts=frozenset(h.lower() for h in settled["local-host"]),
        personal_name=settled["personal-name"],
        ignore_mail11_headers=settled["ignore-mail11-headers"],
    )


def _check_host(option: str, host: str) -> None:
    if not _HOST.fullmatch(host) or len(host) > MAX_HOST_NAME:
        raise ConfigError(f"{option} {host!r} is not a host name")


# --- progress -----------------------------------------------------------------------


class Progress:
    """A one-line progress display on a terminal; silent anywhere else.

    Args:
        stream: where to write (standard error).
        enabled: show progress; None means "when ``stream`` is a terminal".
        clock: a monotonic clock, for the rate and the throttle.
    """

    def __init__(self, stream: TextIO, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        if enabled is None:
            try:
                enabled = stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        self._clock = clock
        self._started = clock()
        self._shown = -PROGRESS_INTERVAL  # time of the last update, relative to the start
        self._width = 0

    def update(self, done: int) -> None:
        """Show ``done`` messages and the rate, at most every :data:`PROGRESS_INTERVAL`."""
        if not self.enabled:
            return
        elapsed = self._clock() - self._started
        if elapsed - self._shown < PROGRESS_INTERVAL:
            return
        self._shown = elapsed
        rate = done / elapsed if elapsed > 0 else 0.0
        self._draw(f"{done} message{'' if done == 1 else 's'}, {rate:.1f}/s")

    def note(self, line: str) -> None:
        """Write one line (a warning) without garbling the progress line."""
        self.clear()
        print(line, file=self._stream, flush=True)

    def clear(self) -> None:
        """Erase the progress line."""
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

    def _draw(self, text: str) -> None:
        pad = max(0, self._width - len(text))
        self._stream.write("\r" + text + " " * pad)
        self._stream.flush()
        self._width = len(text)


# --- the import ---------------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did.

    Attributes:
        imported: messages stored.
        skipped: malformed messages left out.
        foreign: imported messages stored as a notice (binary /FOREIGN mail).
        octets: bytes stored.
    """

    imported: int = 0
    skipped: int = 0
    foreign: int = 0
    octets: int = 0

    def summary(self, user: str, path: str | os.PathLike[str]) -> str:
        """The summary line: imported, skipped and bytes."""
        foreign = f" ({self.foreign} foreign)" if self.foreign else ""
        return (f"imported {self.imported} message{'' if self.imported == 1 else 's'}{foreign} "
                f"from {path} into {user}'s NEWMAIL, {self.skipped} skipped, "
                f"{self.octets} bytes")


class ImportStopped(Exception):
    """The import stopped before the end of the file; what was imported stays.

    Attributes:
        report: what was done before the stop.
        number: the number of the first message not imported.
        offset: the byte offset where that message starts; -1 when every
            message was imported.
        cause: ``"store"`` (a message could not be stored), ``"read"`` (the
            file could not be read to the end) or ``"interrupt"``.
    """

    def __init__(self, reason: str, report: ImportReport, number: int, offset: int,
                 cause: str) -> None:
        super().__init__(reason)
        self.report = report
        self.number = number
        self.offset = offset
        self.cause = cause


def resume_command(path: str | os.PathLike[str], offset: int, user: str, rest: str) -> str:
    """The shell commands that import a file from ``offset`` on."""
    return (f"tail -c +{offset + 1} {shlex.quote(str(path))} > {shlex.quote(rest)} && "
            f"vmspop import {shlex.quote(user)} {shlex.quote(rest)}")


def import_extract(store: MailStore, user: str, path: str | os.PathLike[str],
                   options: mail11.RewriteOptions, *,
                   warn: Callable[[str], None] | None = None,
                   progress: Progress | None = None) -> ImportReport:
    """Import a VMS MAIL extract file into ``user``'s NEWMAIL.

    Args:
        store: the mail store.
        user: the recipient: a checked, canonical user name with a mail directory.
        path: the extract file.
        options: how to rebuild MAIL-11 headers.
        warn: called with one line per skipped or foreign message.
        progress: the progress display, if any.

    Returns:
        What was imported.

    Raises:
        OSError: the file cannot be opened (nothing imported).
        ImportStopped: a message could not be stored, the file could not be
            read to the end, or the import was interrupted (KeyboardInterrupt);
            earlier messages stay imported.
    """
    report = ImportReport()
    say = warn or (lambda line: None)
    used: set[int] = set()  # arrival times already filed, in microseconds
    with open(path, "rb") as source:
        # NOHEADER messages have no arrival date: the extract's time is the closest there is.
        fallback = os.fstat(source.fileno()).st_mtime
        if fallback < 0:  # a file dated before 1970 cannot name a Maildir file
            fallback = time.time()
        reader = mail11.ExtractReader(_blocks(source))
        pending = reader.resume  # the first message not imported yet: (number, offset)
        try:
            for message in reader:
                pending = (message.number, message.offset)
                if message.error is not None:
                    report.skipped += 1
                    say(f"{path}: message {message.number} (line {message.error_line}): "
                        f"{message.error}; skipped")
                else:
                    _store(store, user, message, options, fallback, used, report, say, path)
                pending = reader.resume
                if progress is not None:
                    progress.update(report.imported + report.skipped)
        except _ReadError as e:
            raise ImportStopped(f"cannot read {path}: {e}", report, *pending, "read") from None
        except DeliveryError as e:
            raise ImportStopped(f"message {pending[0]}: {e}", report, *pending, "store") from None
        except NoSuchMailbox:
            raise ImportStopped(f"message {pending[0]}: {user} no longer has a mail directory",
                                report, *pending, "store") from None
        except KeyboardInterrupt:
            raise ImportStopped("interrupted", report, *pending, "interrupt") from None
        finally:
            if progress is not None:
                progress.clear()
    return report


def _store(store: MailStore, user: str, message: mail11.ExtractMessage,
           options: mail11.RewriteOptions, fallback: float, used: set[int],
           report: ImportReport,
           say: Callable[[str], None], path: str | os.PathLike[str]) -> None:
    """Render one message and deliver it under its own arrival time."""
    rendered = mail11.render(message, options, fallback)
    store.deliver([user], [rendered.data], arrival=_unique(rendered.arrival, used))
    report.imported += 1
    report.octets += len(rendered.data)
    if rendered.foreign:
        report.foreign += 1
        say(f"{path}: message {message.number} (line {message.line}) is in foreign (binary) "
            "format; stored as a notice to extract it on the original system")


def _unique(arrival: float, used: set[int]) -> float:
    """The arrival time to file a message under: its own, or a microsecond later if taken."""
    micros = round(arrival * 1_000_000)
    while micros in used:
        micros += ARRIVAL_TICK_MICROSECONDS
    used.add(micros)
    return micros / 1_000_000


class _ReadError(Exception):
    """The extract file could not be read to the end."""


def _blocks(source: Any) -> Iterator[bytes]:
    while True:
        try:
            block = source.read(READ_BLOCK)
        except OSError as e:
            raise _ReadError(e.strerror or str(e)) from None
        if not block:
            return
        yield block
