"""Process-wide settings applied by vmspop's entry points (vmspop.processwide)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from vmspop import processwide

REPO = Path(__file__).resolve().parent.parent

glibc_only = pytest.mark.skipif(not processwide.is_glibc(),
                                reason="mallopt() and its thresholds are glibc's")

# Downloads at once: six 200 KB blocks alive together, then freed.  glibc's default
# trims the heap after each round and faults the pages in again at the next.
_CHURN = textwrap.dedent("""
    import resource, sys
    from vmspop.processwide import keep_freed_memory
    if sys.argv[1] == "tuned":
        assert keep_freed_memory()
    def round_():
        blocks = [b"x" * 200_000 for _ in range(6)]
        del blocks
    for _ in range(5):
        round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        round_()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _page_faults(mode: str) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in processwide._OPERATOR_SETTINGS}
    done = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True,
                          env={**clean, "PYTHONPATH": str(REPO)}, timeout=60, check=True)
    return int(done.stdout)


@glibc_only
def test_freed_memory_is_reused_instead_of_faulted_back_in() -> None:
    untuned, tuned = _page_faults("plain"), _page_faults("tuned")
    # 40 rounds of 1.2 MB: about 12,000 fresh pages without the setting, none with it.
    assert untuned > 5_000
    assert tuned < 100


@pytest.mark.parametrize("name", processwide._OPERATOR_SETTINGS)
def test_the_operators_malloc_environment_is_left_alone(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "glibc.malloc.trim_threshold=131072" if name == "GLIBC_TUNABLES" else "131072")
    assert processwide.keep_freed_memory() is False


def test_start_up_objects_are_exempt_from_collection() -> None:
    try:
        processwide.settle_garbage_collector()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_twistd_tunes_the_process_it_owns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from vmspop import tap
    calls: list[str] = []
    monkeypatch.setattr(tap, "keep_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(tap, "settle_garbage_collector", lambda: calls.append("gc"))
    options = tap.Options()
    options.parseOptions(["--mail-root", str(tmp_path), "--workers", "1", "--no-smtp"])
    reactor = MemoryReactorClock()
    tap.makeService(options, reactor)
    assert calls == ["malloc", "gc"]
    # Once the reactor runs (twistd's log observer is in place by then): the faster text log.
    from twisted.logger import globalLogPublisher
    assert (tap.write_text_log, (reactor, globalLogPublisher), {}) in reactor.whenRunningHooks


def test_twistd_gets_its_log_observer_back_when_the_reactor_has_stopped() -> None:
    """twistd removes its own observer after the reactor stops; it must be there then."""
    import io

    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import LogPublisher, textFileLogObserver

    from vmspop.textlog import TextLog
    twistds = textFileLogObserver(io.StringIO())
    publisher, reactor = LogPublisher(twistds), MemoryReactorClock()
    processwide.write_text_log(reactor, publisher)
    assert [type(o) for o in publisher._observers] == [TextLog]
    [(restore, args, kwargs)] = reactor.triggers["after"]["shutdown"]
    restore(*args, **kwargs)
    assert publisher._observers == [twistds]



# A twistd-like process (threads on, a LogFile) caught inside its log file's lock as
# SIGTERM arrives: the lock taken, its owner not yet set (where a signal can land).
_SIGNAL_IN_LOG_WRITE = textwrap.dedent("""
    import os, signal, sys
    from twisted.internet import reactor
    from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
    from twisted.python import threadable
    from twisted.python.logfile import LogFile
    from vmspop.processwide import stop_on_signals

    threadable.init(1)
    logfile = LogFile("twistd.log", sys.argv[2])
    globalLogBeginner.beginLoggingTo([textFileLogObserver(logfile)], redirectStandardIO=False)
    Logger().info("a first line makes the log file's lock")

    def caught_in_a_log_write():
        if sys.argv[1] == "vmspop":
            stop_on_signals(reactor)
        lock = logfile._threadable_lock
        lock._block.acquire()
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs at the next bytecode
        lock._block.release()

    reactor.callWhenRunning(caught_in_a_log_write)
    reactor.run()
    print("stopped", flush=True)
""")


def _signalled(mode: str, directory: Path) -> str | None:
    """The log of a run, or None if it hung."""
    directory.mkdir()
    try:
        done = subprocess.run([sys.executable, "-c", _SIGNAL_IN_LOG_WRITE, mode, str(directory)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                              timeout=5)
    except subprocess.TimeoutExpired:
        return None
    assert done.stdout == "stopped\n", done
    return (directory / "twistd.log").read_text()


def test_a_signal_during_a_log_write_stops_the_server(tmp_path: Path) -> None:
    """Stock defect (twisted#7736): Twisted's SIGTERM handler logs, and a signal that
    lands inside the log file's lock leaves twistd waiting for itself forever."""
    assert _signalled("stock", tmp_path / "stock") is None  # the test reproduces the hang
    log = _signalled("vmspop", tmp_path / "vmspop")
    assert log is not None and "Received SIGTERM, shutting down." in log


def test_only_the_reactors_own_handlers_are_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet.testing import MemoryReactorClock

    class Reactor(MemoryReactorClock):
        _exitSignal = None

        def sigTerm(self, number: int, frame: object = None) -> None:
            raise AssertionError("the stock handler ran")

        def sigInt(self, number: int, frame: object = None) -> None:
            raise AssertionError("the stock handler ran")

        def callFromThread(self, f: Callable[..., object], *args: object) -> None:
            self.callLater(0, f, *args)

    reactor = Reactor()
    debugger = lambda number, frame: None  # noqa: E731
    monkeypatch.setattr(signal, "signal", lambda number, handler: installed.__setitem__(number, handler))
    installed = {signal.SIGTERM: reactor.sigTerm, signal.SIGINT: debugger}
    monkeypatch.setattr(signal, "getsignal", installed.__getitem__)
    processwide.stop_on_signals(reactor)
    assert installed[signal.SIGINT] is debugger
    installed[signal.SIGTERM](signal.SIGTERM, None)  # the handler: a hand-over, nothing more
    assert not reactor.hasStopped and reactor._exitSignal is None
    reactor.running = True
    reactor.advance(0)
    assert reactor.hasStopped and reactor._exitSignal == signal.SIGTERM
