"""twistd's text log written with less work (vmspop.textlog): the same lines, always.

Every check compares with twistd's own observer (twisted.logger.textFileLogObserver)
given the same events.
"""

from __future__ import annotations

import io
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st
from twisted.logger import (
    FileLogObserver, LogLevel, LogPublisher, Logger, eventAsText, jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from support import twistd_writes
from vmspop.events import EventLog
from vmspop.textlog import TextLog, install


def text_log_writes(events: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    observer = TextLog(out, None)
    for event in events:
        observer(dict(event))
    return out.getvalue()


def vmspop_events() -> list[dict[str, Any]]:
    """vmspop's own lines, a traceback, and Twisted's kinds of lines."""
    events: list[dict[str, Any]] = []
    log = EventLog("debug", trace=True, logger=Logger(namespace="vmspop", observer=events.append))
    log.login(user="jones", method="USER", rip="192.0.2.7", session="0123456789ab")
    log.logout(user="jones", rip="192.0.2.7", session="0123456789ab", retr=1, retr_octets=2, top=0,
               deleted=1, deleted_octets=2, moved=0, missing=0)
    log.trace(session="0123456789ab", direction="S:", line="+OK caf\u00e9 {braces}")
    log.error("message {path} of user=<{user}> cannot be read: {why}", path="/x", user="jones",
              why="EIO")
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("update of user=<{user}> failed", user="jones")
    twisted = Logger(namespace="twisted.internet.base", observer=events.append)
    twisted.info("Main loop terminated.")
    twisted.info("{{literal braces}}")
    events.append({"log_format": "POP3Factory starting on {port!r}", "port": 1110,
                   "log_system": "-", "log_level": LogLevel.info, "log_namespace": "log_legacy",
                   "log_time": 2.0})
    return events


def test_vmspop_and_twisted_lines_read_the_same() -> None:
    events = vmspop_events()
    assert text_log_writes(events) == twistd_writes(events)
    assert "ZeroDivisionError" in text_log_writes(events)


@given(
    form=st.sampled_from(["{line}", "{log_text}", "{value}", "plain text", "{value!r} and {{braces}}",
                          "{missing}", "{0}", "", None]),
    text=st.text(),
    when=st.one_of(st.none(), st.floats(min_value=-2e9, max_value=4e9, allow_nan=False)),
    level=st.sampled_from([None, *LogLevel.iterconstants()]),
    namespace=st.sampled_from(["vmspop", "-", None]),
    system=st.one_of(st.none(), st.text(max_size=20), st.integers()),
)
def test_any_event_reads_the_same(form: str | None, text: str, when: float | None, level: Any,
                                  namespace: str | None, system: Any) -> None:
    """Whatever the format, text (newlines, any characters), time (seconds that round
    up), level, namespace and system."""
    event: dict[str, Any] = {"log_format": form, "line": text, "log_text": text, "value": text,
                             "log_time": when, "log_level": level, "log_system": system}
    if form == "plain text":
        event["log_format"] = text.replace("{", "").replace("}", "") or "plain"
    if namespace is not None:
        event["log_namespace"] = namespace
    assert text_log_writes([event]) == twistd_writes([event])


def test_bytes_files_get_utf8() -> None:
    events = vmspop_events()
    out = io.BytesIO()
    observer = TextLog(out, "utf-8")
    for event in events:
        observer(dict(event))
    assert out.getvalue().decode("utf-8") == twistd_writes(events)


@pytest.mark.parametrize("where", ["--logfile", "-n"])
def test_twistds_own_observer_is_replaced(where: str, tmp_path: Path) -> None:
    """The observer twistd makes for --logfile (a rotating LogFile) and for -n (standard
    output) is recognised and replaced; the file gets the same lines."""
    from twisted.scripts._twistd_unix import UnixAppLogger

    log = tmp_path / "twistd.log"
    options = {"logfile": str(log)} if where == "--logfile" else {"nodaemon": True, "logfile": ""}
    before = signal.getsignal(signal.SIGUSR1)
    try:
        twistds = UnixAppLogger(options)._getLogObserver()  # sets a SIGUSR1 handler
    finally:
        signal.signal(signal.SIGUSR1, before)
    publisher = LogPublisher(twistds)
    try:
        restore = install(publisher)
        assert restore is not None
        [replacement] = publisher._observers
        assert isinstance(replacement, TextLog)
        events = vmspop_events()
        if where == "--logfile":
            for event in events:
                publisher(dict(event))
        restore()
        assert publisher._observers == [twistds]
    finally:
        if where == "--logfile":
            twistds._outFile.close()
    if where == "--logfile":
        assert log.read_text() == twistd_writes(events)


@pytest.mark.parametrize("observer", [
    lambda out: textFileLogObserver(out, timeFormat="%H:%M:%S.%f"),
    lambda out: FileLogObserver(out, lambda event: eventAsText(event) + "\n"),
    jsonFileLogObserver,
    lambda out: TextLog(out, None),
], ids=["own-time-format", "own-formatter", "json", "already"])
def test_other_observers_stay(observer: Any) -> None:
    """An observer that does not write what TextLog would is left in place."""
    only = observer(io.StringIO())
    publisher = LogPublisher(only)
    assert install(publisher) is None and publisher._observers == [only]


def test_not_when_twistd_has_company() -> None:
    """With a second observer, or none, nothing is replaced."""
    observers = [textFileLogObserver(io.StringIO()), lambda event: None]
    two, empty = LogPublisher(*observers), LogPublisher()
    assert install(two) is None and install(empty) is None
    assert two._observers == observers and empty._observers == []


def test_failures_are_formatted_by_twisted() -> None:
    """A traceback that cannot be formatted reads as Twisted says it."""
    class Broken(Failure):
        def getTraceback(self, *args: Any, **kwargs: Any) -> str:
            raise RuntimeError("no traceback")
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Broken()
    event = {"log_format": "{line}", "line": "x", "log_failure": failure, "log_time": 1.0,
             "log_level": LogLevel.error, "log_namespace": "vmspop"}
    assert text_log_writes([event]) == twistd_writes([event])
    assert "UNABLE TO OBTAIN TRACEBACK" in text_log_writes([event])


@pytest.mark.parametrize("workers", [1, 2])
def test_twistd_vmspop_log_rotates_on_sigusr1(workers: int, tmp_path: Path) -> None:
    """A real `twistd vmspop --logfile`: every line lands once, in the file that was
    current, across a rotation (SIGUSR1), in one process and through the workers' relay."""
    import poplib
    import time

    from twistd import connect, free_port, start_twistd, wait_for
    from vmspop.passwd import Account, PasswordFile
    from vmspop.store import MailStore

    PasswordFile(tmp_path / "passwd").update("jones", lambda _: Account("jones", "{PLAIN}wonderland"))
    MailStore(tmp_path / "mail").create_mailbox("jones")
    port, log = free_port(), tmp_path / "twistd.log"
    rotated = tmp_path / "twistd.log.1"

    def session() -> None:
        client = poplib.POP3("127.0.0.1", port, timeout=10)
        client.user("jones")
        client.pass_("wonderland")
        client.quit()

    process = start_twistd(tmp_path, port, logfile=str(log), workers=workers)
    try:
        connect(port, process).quit()
        session()
        wait_for(lambda: log.read_text().count("logout: user=<jones>") == 1, "the first logout line")
        process.send_signal(signal.SIGUSR1)
        wait_for(rotated.exists, "the rotation")
        for _ in range(3):
            session()
        wait_for(lambda: log.read_text().count("logout: user=<jones>") == 3, "the new logout lines")
        time.sleep(0.1)  # a line written twice would show by now
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    before, after = rotated.read_text(), log.read_text()
    assert before.count("login: user=<jones>") == 1 and before.count("logout: user=<jones>") == 1
    assert after.count("login: user=<jones>") == 3 and after.count("logout: user=<jones>") == 3
    line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] \S")
    assert all(line.match(text) for text in (before + after).splitlines() if not text.startswith("\t"))
