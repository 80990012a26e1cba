"""A worker's log lines: from its log observer, through a pipe, into the supervisor's log.

Worker side, :class:`ToSupervisor`: each event becomes one JSON record on a line of
the worker's standard output (``x``: the text with any traceback, ``t``: time, ``l``:
level, ``n``: namespace, ``s``: system if set).  Only the text travels, not the
event's fields: re-encoding whole events cost the supervisor about 140 us per line,
this about a third of that.  Lines wait up to :data:`LOG_RELAY_DELAY` and leave in one
write (each keeps its own time): a pipe write and a supervisor wake-up per line cost
the supervisor about 150 us a line, batched about 50.

Supervisor side, :class:`Relay`: each record becomes a log event again for the
supervisor's observer, so worker lines reach the same place (``-n``, ``--logfile``,
syslog, an embedding application's observers) in the same format as in one process.
One common case is cheaper: when that observer is a :class:`~vmspop.textlog.TextLog`
and nothing else (``twistd vmspop`` with ``--logfile``, or ``-n`` to standard output),
the relay writes the lines itself, all lines of one read in one write.  Re-emitting
events had cost the supervisor about 40 us a line, in bursts of a relay interval's
lines, and those bursts delayed the worker's sessions: with one client, p99 latency
2.7-3.3 ms against 1.4-1.8 ms with the lines written directly (docs/performance.md).
Any other observer (another one added, syslog, ``--logger``, an embedding
application's) gets events.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
from json.encoder import encode_basestring_ascii
from typing import Any, Callable

from twisted.logger import ILogObserver, LogLevel, LogPublisher
from zope.interface import implementer

from vmspop.textlog import TextLog, event_text, line

__all__ = ["Relay", "ToSupervisor", "split_lines"]

#: A worker's log line longer than this (it never writes one) is cut, so a runaway
#: worker cannot make the supervisor buffer without bound.
MAX_RELAYED_LINE = 1024 * 1024
#: A worker's log lines reach the supervisor at most this long after their event; the
#: lines of one such interval travel in one write.
LOG_RELAY_DELAY = 0.02
#: Past this many octets of lines waiting, the thread that logs writes them at once
#: (waiting for the supervisor if it is slow), so a worker's buffer stays bounded.
LOG_RELAY_BUFFER = 256 * 1024


# -- a worker ---------------------------------------------------------------------------

@implementer(ILogObserver)
class ToSupervisor:
    """A worker's log observer: one JSON record per event, batched, on a pipe.

    Lines wait up to ``delay`` and go in one write; a thread of its own writes them,
    so the reactor never waits on the pipe unless :data:`LOG_RELAY_BUFFER` is full.

    Args:
        out: where the lines go (default: the real file descriptor 1).
        delay: how long a line may wait for others.
    """

    def __init__(self, out: Any = None, delay: float = LOG_RELAY_DELAY) -> None:
        self._out = out if out is not None else io.FileIO(1, "w", closefd=False)
        self._delay = delay
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._waiting = threading.Condition()
        self._writing = threading.Lock()  # batches leave in the order they were taken
        threading.Thread(target=self._relay, name="vmspop-log-relay", daemon=True).start()

    def __call__(self, event: dict[str, Any]) -> None:
        """Queue one event."""
        level = event.get("log_level")
        system = event.get("log_system")
        # The JSON is written by hand: json.dumps took 7 µs a line, this under 3.
        line = (f'{{"t": {_number(event.get("log_time"))}, '
                f'"l": {_string(level.name if level is not None else "info")}, '
                f'"n": {_string(event.get("log_namespace", "-"))}, "x": {_string(event_text(event))}'
                # as twisted.logger: a system of None means "not set"
                + ("" if system is None else f', "s": {_string(system)}')
                + "}\n").encode("ascii")
        with self._waiting:
            self._pending.append(line)
            self._pending_size += len(line)
            if len(self._pending) == 1:
                self._waiting.notify()
            full = self._pending_size > LOG_RELAY_BUFFER
        if full:
            self.flush()

    def flush(self) -> None:
        """Write every waiting line now (blocks while the supervisor does not read)."""
        with self._writing:
            with self._waiting:
                data = b"".join(self._pending)
                self._pending, self._pending_size = [], 0
            view = memoryview(data)
            while view:
                view = view[self._out.write(view):]

    def _relay(self) -> None:
        while True:
            with self._waiting:
                while not self._pending:
                    self._waiting.wait()
            time.sleep(self._delay)
            self.flush()


def _string(value: Any) -> str:
    """``value`` as a JSON string, escaped to ASCII as json.dumps does."""
    return encode_basestring_ascii(value if type(value) is str else str(value))


def _number(value: Any) -> str:
    """A log time as JSON: a finite number, or null."""
    if type(value) in (int, float) and math.isfinite(value):
        return repr(value)
    return "null"


# -- the supervisor ---------------------------------------------------------------------

def split_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines in ``buffer``, and the rest (cut at :data:`MAX_RELAYED_LINE`)."""
    *lines, rest = buffer.split(b"\n")
    if len(rest) > MAX_RELAYED_LINE:
        lines.append(rest[:MAX_RELAYED_LINE])
        rest = b""
    return lines, rest


_LEVELS = frozenset(level.name for level in LogLevel.iterconstants())


def _record(data: bytes) -> dict[str, Any] | None:
    """The record in ``data``, or None if it is not one (of the shape ToSupervisor writes)."""
    try:
        record = json.loads(data)
    except ValueError:
        return None
    if (isinstance(record, dict) and isinstance(record.get("x"), str)
            and isinstance(record.get("n"), str) and record.get("l") in _LEVELS
            and isinstance(record.get("t"), (int, float, type(None)))
            and isinstance(record.get("s", ""), str)):
        return record
    return None


def _event(record: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    event = {"log_format": "{log_text}", "log_text": record["x"], "log_time": record.get("t"),
             "log_level": LogLevel.levelWithName(record["l"]), "log_namespace": record["n"],
             **fields}
    if "s" in record:
        event["log_system"] = record["s"]
    return event


class Relay:
    """The supervisor's side of one worker's log: re-emits its records.

    Args:
        observer: the supervisor's log observer (in twistd, the global log publisher).
        fields: added to every event, so structured observers can tell workers apart.
        text: called with a line that is not a record (something the worker printed
            before its log began).
    """

    def __init__(self, observer: Any, fields: dict[str, Any], text: Callable[[bytes], None]) -> None:
        self._observer = observer
        self._fields = fields
        self._text = text
        self._rest = b""

    def received(self, data: bytes) -> None:
        """Bytes read from the worker's standard output."""
        lines, self._rest = split_lines(self._rest + data)
        self._emit(lines)

    def ended(self) -> None:
        """The worker exited: its last, unterminated line."""
        rest, self._rest = self._rest, b""
        self._emit([rest])

    def _emit(self, lines: list[bytes]) -> None:
        records: list[dict[str, Any]] = []
        for text in lines:
            if not text.strip():
                continue
            record = _record(text)
            if record is None:
                self._deliver(records)  # keep the order
                records = []
                self._text(text)
            else:
                records.append(record)
        self._deliver(records)

    def _deliver(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        target = self._text_log()
        if target is not None:
            try:
                target.write("".join(_line(record) for record in records))
                return
            except Exception:
                pass  # the observer, given the events, fails (and is reported) its own way
        for record in records:
            self._observer(_event(record, self._fields))

    def _text_log(self) -> TextLog | None:
        observer = self._observer
        if isinstance(observer, LogPublisher):
            # A private attribute: without it (another Twisted), events are the safe way.
            observers = getattr(observer, "_observers", None)
            if not isinstance(observers, list) or len(observers) != 1:
                return None
            observer = observers[0]
        return observer if isinstance(observer, TextLog) else None


def _line(record: dict[str, Any]) -> str:
    system = record.get("s")
    return line(record.get("t"), f"{record['n']}#{record['l']}" if system is None else system, record["x"])
