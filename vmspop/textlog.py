"""twistd's text log (``--logfile``, or ``-n`` to standard output), written with less work.

twistd logs through twisted.logger's text file observer, which for every line formats
the time (time zone arithmetic and ``strftime``), the event's text (with Python's
``string.Formatter``) and its system.  With vmspop's two lines per POP3 session that
was about a tenth of the CPU of a login in one process (docs/performance.md).

:class:`TextLog` writes the same lines with less work: the time once per second,
lines without fields and lines that are one text field (vmspop's own, already
formatted by :mod:`vmspop.events`) as they are; anything else, tracebacks
included, is formatted by Twisted.  ``twistd vmspop`` puts one in place of twistd's observer once the reactor
runs (:func:`install`), only after checking that it writes exactly the lines the
observer it replaces writes for a set of sample events.  Otherwise twistd's observer
stays, and only speed differs.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import IO, Any, Callable

from twisted.logger import (
    FileLogObserver, ILogObserver, LogLevel, LogPublisher, eventAsText, formatTime,
)
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["TextLog", "event_system", "event_text", "install", "line"]


def event_text(event: dict[str, Any]) -> str:
    """An event's text with any traceback, as Twisted formats it (without time and system)."""
    form = event.get("log_format")
    if type(form) is str and "log_failure" not in event and "log_flattened" not in event:
        if "{" not in form and "}" not in form:
            return form
        # One field that is the whole text, as vmspop.events and vmspop.logrelay log
        # ("{line}", "{log_text}"): a str formats as itself.
        if form[0] == "{" and form[-1] == "}" and form[1:-1].isidentifier():
            text = event.get(form[1:-1])
            if type(text) is str:
                return text
    return eventAsText(event, includeTimestamp=False, includeSystem=False)


def event_system(event: dict[str, Any]) -> str:
    """The bracketed part of a line: the event's system, or its namespace and level."""
    value = event.get("log_system")
    if value is None:
        level = event.get("log_level")
        return f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    if type(value) is str:
        return value
    try:
        return str(value)
    except Exception:
        return "UNFORMATTABLE"


@lru_cache(maxsize=16)
def _second(second: int) -> str:
    return formatTime(second)


def _time_text(when: float | None) -> str:
    # twistd's time format has whole seconds: one formatting per second, not per line.
    if when is None:
        return "-"
    second = math.floor(when)
    if round((when - second) * 1e6) == 1_000_000:  # as datetime, which rounds to microseconds
        second += 1
    return _second(second)


def line(when: float | None, system: str, text: str) -> str:
    """One line of twistd's text log; ``""`` when the text is empty (nothing is written)."""
    if not text:
        return ""
    return f"{_time_text(when)} [{system}] {text}".replace("\n", "\n\t") + "\n"


@implementer(ILogObserver)
class TextLog:
    """Writes each event as twistd's text file observer would, to the same file.

    Args:
        out: the file (twistd's rotating log file, or standard output).
        encoding: None if ``out`` takes text, else the encoding for bytes.
    """

    def __init__(self, out: IO[Any], encoding: str | None) -> None:
        self._out = out
        self._encoding = encoding

    def __call__(self, event: dict[str, Any]) -> None:
        """Write one event."""
        self.write(self.format(event))

    @staticmethod
    def format(event: dict[str, Any]) -> str:
        """The line for one event (``""``: nothing to write)."""
        return line(event.get("log_time"), event_system(event), event_text(event))

    def write(self, text: str) -> None:
        """Write lines already formatted (the workers' relayed lines)."""
        if text:
            self._out.write(text if self._encoding is None else text.encode(self._encoding))
            self._out.flush()


def _samples() -> list[dict[str, Any]]:
    """Events covering every way TextLog formats: what install() checks it against."""
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    return [
        {"log_format": "{line}", "line": "login: user=<jones> rip=192.0.2.7", "user": "jones",
         "log_time": 1_700_000_000.75, "log_level": LogLevel.info, "log_namespace": "vmspop"},
        {"log_format": "{log_text}", "log_text": "Traceback:\n  oops\nZeroDivisionError",
         "log_time": 1_700_000_002.9999996, "log_level": LogLevel.critical,
         "log_namespace": "vmspop", "log_system": "POP3Factory,3,192.0.2.7"},
        {"log_format": "Main loop terminated.", "log_time": 86_400.5, "log_level": LogLevel.info,
         "log_namespace": "twisted.internet.base", "log_system": None},
        {"log_format": "{what!r} {{braces}} {n:>4}", "what": "caf\u00e9 \u2603", "n": 7,
         "log_time": None, "log_level": None, "log_namespace": "-"},
        {"log_format": "update failed", "log_failure": failure, "log_time": 1.0,
         "log_level": LogLevel.error, "log_namespace": "vmspop", "log_system": 42},
        {"log_format": "", "log_time": 2.0, "log_level": LogLevel.debug, "log_namespace": "vmspop"},
    ]


def install(publisher: LogPublisher) -> Callable[[], None] | None:
    """Put a TextLog in place of ``publisher``'s only observer if that is twistd's text
    file observer and the TextLog writes what it writes.

    Returns:
        A function that puts the observer back, or None if nothing was replaced.
    """
    # A private attribute: without it (another Twisted), twistd's observer stays.
    observers = getattr(publisher, "_observers", None)
    if not isinstance(observers, list) or len(observers) != 1:
        return None
    (current,) = observers
    if type(current) is not FileLogObserver:
        return None
    encoding = getattr(current, "_encoding", "")
    out = getattr(current, "_outFile", None)
    if out is None or encoding not in (None, "utf-8"):
        return None
    replacement = TextLog(out, encoding)
    try:
        same = all((current.formatEvent(event) or "") == replacement.format(event) for event in _samples())
    except Exception:
        same = False
    if not same:
        return None
    _swap(publisher, current, replacement)
    return lambda: _swap(publisher, replacement, current)


def _swap(publisher: LogPublisher, old: Any, new: Any) -> None:
    # The new one is added before the old goes: a line logged meanwhile by a thread may
    # appear twice, never not at all.
    publisher.addObserver(new)
    publisher.removeObserver(old)
