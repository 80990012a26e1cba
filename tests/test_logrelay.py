"""A worker's log lines, through the pipe into the supervisor's log (vmspop.logrelay).

The supervisor's lines must read exactly as one process's would: the tests log the
same events straight to an observer and through the relay, and compare.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from hypothesis import given, strategies as st
from twisted.logger import (
    FileLogObserver, LogLevel, LogPublisher, Logger, eventAsText, formatEventAsClassicLogText,
    textFileLogObserver,
)

from support import twistd_writes
from vmspop import logrelay
from vmspop.logrelay import Relay, ToSupervisor
from vmspop.textlog import TextLog


class Pipe:
    """A pipe stand-in that records each write, and may take only part of one."""

    def __init__(self, most: int | None = None) -> None:
        self.writes: list[bytes] = []
        self.most = most

    def write(self, data: memoryview) -> int:
        taken = bytes(data[: self.most])
        self.writes.append(taken)
        return len(taken)


class LogText(io.StringIO):
    """A text log file that counts its writes, and can fail some."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.writes = 0
        self.failures = failures

    def write(self, text: str) -> int:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        self.writes += 1
        return super().write(text)


def sample_events() -> list[dict[str, Any]]:
    """What workers log: vmspop's lines, a traceback, Twisted's own lines with a system."""
    events: list[dict[str, Any]] = []
    log = Logger(namespace="vmspop", observer=events.append)
    log.info("login: user=<{user}> rip={rip}", user="jones", rip="192.0.2.7")
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("update of user=<{user}> failed", user="jones")
    log.warn("mailbox of user=<jones>: caf\u00e9 \u2603 {{braces}}")
    events.append({"log_format": "POP3Factory starting on 1110", "log_system": "-",
                   "log_level": LogLevel.info, "log_namespace": "log_legacy", "log_time": 2.0})
    events.append({"log_format": "no system", "log_system": None, "log_level": LogLevel.debug,
                   "log_namespace": "twisted.internet.base", "log_time": 3.9999999})
    return events


def records(events: list[dict[str, Any]]) -> bytes:
    """The bytes a worker writes for ``events``."""
    pipe = Pipe()
    writer = ToSupervisor(pipe, delay=60.0)
    for event in events:
        writer(event)
    writer.flush()
    return b"".join(pipe.writes)


def text_lines() -> tuple[list[bytes], Any]:
    seen: list[bytes] = []
    return seen, seen.append


@pytest.mark.parametrize("published", [False, True], ids=["observer", "publisher"])
def test_text_log_gets_the_same_lines_in_one_write_per_read(published: bool) -> None:
    """A TextLog, alone (twistd vmspop with --logfile, or -n): the lines one process would
    write, each read's lines in one write."""
    events = sample_events()
    out = LogText()
    observer = TextLog(out, None)
    relay = Relay(LogPublisher(observer) if published else observer, {}, text_lines()[1])
    data = records(events)
    relay.received(data[:10])
    relay.received(data[10:])
    assert out.getvalue() == twistd_writes(events)
    assert "ZeroDivisionError" in out.getvalue() and "[twisted.internet.base#debug] no system" in out.getvalue()
    assert out.writes == 1


def test_other_observers_get_the_events() -> None:
    """Any other observer gets events that format as one process's, with the worker's number."""
    events = sample_events()
    relayed: list[dict[str, Any]] = []
    relay = Relay(relayed.append, {"vmspop_worker": 2}, text_lines()[1])
    relay.received(records(events))
    assert [formatEventAsClassicLogText(e) for e in relayed] == [
        formatEventAsClassicLogText(e) for e in events]
    assert all(e["vmspop_worker"] == 2 for e in relayed)


@pytest.mark.parametrize("observer", [
    textFileLogObserver,
    lambda out: textFileLogObserver(out, timeFormat="%H:%M:%S.%f"),
    lambda out: FileLogObserver(out, lambda event: eventAsText(event, includeTimestamp=False) + "\n"),
    lambda out: LogPublisher(TextLog(out, None), lambda event: None),
    lambda out: LogPublisher(),
], ids=["twistds", "own-time-format", "own-formatter", "second-observer", "no-observer"])
def test_other_observers_get_events(observer: Any) -> None:
    """Anything but a TextLog alone gets events, one write each, the same as in one process."""
    events = sample_events()
    relayed, direct = LogText(), LogText()
    Relay(observer(relayed), {}, text_lines()[1]).received(records(events))
    to_direct = observer(direct)
    for event in events:
        to_direct(dict(event))
    assert relayed.getvalue() == direct.getvalue()
    assert relayed.writes == direct.writes


def _record(event: dict[str, Any]) -> dict[str, Any]:
    return json.loads(records([event]))


def test_an_observer_added_later_gets_the_next_lines_as_events() -> None:
    out = LogText()
    publisher = LogPublisher(TextLog(out, None))
    relay = Relay(publisher, {}, text_lines()[1])
    events = sample_events()
    relay.received(records(events[:1]))
    added: list[dict[str, Any]] = []
    publisher.addObserver(added.append)
    relay.received(records(events[1:]))
    assert out.getvalue() == twistd_writes(events)
    assert out.writes == 1 + len(events) - 1
    assert [e["log_text"] for e in added] == [_record(e)["x"] for e in events[1:]]


def test_a_failed_write_is_retried_as_events() -> None:
    """A write that fails (disk full) leaves the lines to the observer's own handling:
    here it succeeds the second time, and every line is there once."""
    events = sample_events()
    out = LogText(failures=1)
    relay = Relay(TextLog(out, None), {}, text_lines()[1])
    relay.received(records(events))
    assert out.getvalue() == twistd_writes(events)
    relay.received(records(events[:1]))
    assert out.getvalue() == twistd_writes(events + events[:1])


def test_lines_that_are_not_records_are_text_in_their_place() -> None:
    """Not JSON, JSON of another shape, an unknown level: handed over as text, after the
    records before them and before those after; a line cut at the exit comes last."""
    out = LogText()
    seen: list[bytes] = []
    relay = Relay(TextLog(out, None), {}, lambda line: (seen.append(line), out.write("TEXT\n")))
    events = sample_events()[:1]
    bad = [b"not json", b"[1, 2]", json.dumps({"x": "a", "n": "v", "l": "loud", "t": 1.0}).encode(),
           json.dumps({"x": 7, "n": "v", "l": "info", "t": 1.0}).encode()]
    relay.received(records(events) + b"\n".join(bad) + b"\n" + records(events) + b"\n\ncut off")
    assert seen == bad
    line = twistd_writes(events)
    assert out.getvalue() == line + "TEXT\n" * 4 + line
    relay.ended()
    assert seen[-1] == b"cut off"


def test_a_runaway_line_is_cut() -> None:
    seen, text = text_lines()
    relay = Relay(lambda event: None, {}, text)
    relay.received(b"x" * (logrelay.MAX_RELAYED_LINE + 10))
    assert [len(line) for line in seen] == [logrelay.MAX_RELAYED_LINE]


@given(st.floats(min_value=-2e9, max_value=4e9, allow_nan=False))
def test_times_read_as_twistds(when: float) -> None:
    """Whole seconds as twistd writes them, also where the fraction rounds up."""
    event = {"log_format": "x", "log_time": when, "log_namespace": "n", "log_level": LogLevel.info}
    assert logrelay._line(_record(event)) == formatEventAsClassicLogText(event)


@given(text=st.text(), namespace=st.text() | st.integers(), system=st.none() | st.text() | st.integers(),
       when=st.none() | st.floats() | st.integers(min_value=-2**40, max_value=2**40))
def test_any_event_reaches_the_supervisor_as_one_record(text: str, namespace: Any, system: Any,
                                                        when: Any) -> None:
    """Whatever the text (quotes, control characters, lone surrogates), the line is one
    JSON record the supervisor accepts; a time that is not a finite number travels as
    null, and a namespace or system that is not text as its str()."""
    event = {"log_format": "{t}", "t": text, "log_level": LogLevel.warn, "log_namespace": namespace,
             "log_system": system, "log_time": when}
    line = records([event])
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = logrelay._record(line)
    assert record is not None
    finite = when is not None and when == when and abs(when) != float("inf")
    expected = {"t": when if finite else None, "l": "warn", "n": str(namespace), "x": text}
    if system is not None:
        expected["s"] = str(system)
    assert record == expected


def test_worker_lines_travel_in_batches() -> None:
    """Lines wait up to the relay delay and leave together; a short write is completed."""
    out = Pipe(most=50)
    writer = ToSupervisor(out, delay=0.2)
    log = Logger(namespace="vmspop", observer=writer)
    for n in range(3):
        log.info("line {n}", n=n)
    assert out.writes == []  # nothing yet: they wait for the batch
    for _ in range(100):
        time.sleep(0.05)
        if out.writes and b"line 2" in b"".join(out.writes):
            break
    data = b"".join(out.writes)
    assert [json.loads(line)["x"] for line in data.splitlines()] == ["line 0", "line 1", "line 2"]
    assert all(len(w) <= 50 for w in out.writes)


def test_worker_buffer_is_bounded(monkeypatch: Any) -> None:
    """Past LOG_RELAY_BUFFER octets waiting, the logging thread writes them itself."""
    monkeypatch.setattr(logrelay, "LOG_RELAY_BUFFER", 300)
    out = Pipe()
    writer = ToSupervisor(out, delay=60.0)
    log = Logger(namespace="vmspop", observer=writer)
    for n in range(10):
        log.info("a line of some length, number {n}", n=n)
    data = b"".join(out.writes)
    assert len(out.writes) >= 1 and len(data) > 300
    assert writer._pending_size <= 300
    writer.flush()
    assert [json.loads(line)["x"][-1] for line in b"".join(out.writes).splitlines()] == \
        [str(n) for n in range(10)]
