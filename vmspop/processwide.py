"""Process-wide settings that only vmspop's own entry points apply.

``twistd vmspop`` and each worker process call these; an application that embeds
vmspop owns its process and decides about its collector, its allocator, its
signal handlers and its log observers itself (docs/embedding.md).
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
from types import FrameType
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger, LogPublisher

from vmspop.textlog import install as install_text_log

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "is_glibc", "keep_freed_memory", "settle_garbage_collector",
           "stop_on_signals", "write_text_log"]

_log = Logger(namespace="vmspop")

# mallopt() parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Allocations up to this size come from the heap instead of a mapping of their own.
#: A 256 KiB message block (vmspop.transfer.BLOCK_SIZE) is over glibc's initial 128 KiB,
#: so each read mapped fresh pages, faulted them in one by one and unmapped them.
MMAP_THRESHOLD = 1024 * 1024
#: Free memory at the top of a heap is kept for reuse up to this size.  glibc gives it
#: back beyond twice the (dynamic) mapping threshold: with four clients downloading,
#: the heap shrank and grew again every few messages, and the pages faulted back in
#: cost 7-10 % of the CPU of a 53 KB RETR (docs/performance.md).  At most this much
#: per heap stays mapped while unused.
TRIM_THRESHOLD = 4 * 1024 * 1024

# An operator who tunes malloc through the environment keeps the last word.
_OPERATOR_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                      "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Set glibc's allocator to reuse freed memory instead of returning it to the kernel
    after every message; True if it was set.

    Nothing is changed with another C library, or when the environment already sets
    one of glibc's malloc tunables (``GLIBC_TUNABLES``, ``MALLOC_*_``).
    """
    if not is_glibc() or any(name in os.environ for name in _OPERATOR_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success; setting either fixes both thresholds (no dynamic ones).
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def is_glibc() -> bool:
    """True when this process runs on the GNU C library (whose malloc mallopt() tunes)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # a name the C library does not know
        return False


def settle_garbage_collector() -> None:
    """Exempt what start-up made (modules, Twisted, the service) from garbage collection.

    A full collection walks every object; the ~50,000 of an idle server took 9 ms,
    a reactor stall each time one ran under load.
    """
    gc.collect()
    gc.freeze()


def stop_on_signals(reactor: Any) -> None:
    """Replace the reactor's SIGTERM and SIGINT handlers with ones that do not log.

    A Python signal handler runs between two bytecodes of whatever the main thread
    was doing, which on a busy server is often writing a log line.  Twisted's own
    handler logs "Received SIGTERM" right there, and its file log observer holds a
    pure-Python RLock: a signal that lands inside that lock's acquire or release
    leaves the process waiting for itself forever (twisted#7736, docs/twisted-defects.md).
    These handlers only hand the stop over to the reactor, which logs and stops in
    its next turn.  Call once the reactor runs (it installs its handlers then); a
    handler that is not the reactor's own (a debugger's) is left in place.
    """
    def handler(number: int, frame: FrameType | None) -> None:
        reactor.callFromThread(stop, number)

    def stop(number: int) -> None:
        _log.info("Received {signal}, shutting down.", signal=signal.Signals(number).name)
        if hasattr(reactor, "_exitSignal"):
            # twistd re-raises the signal once it has shut down, as with Twisted's handlers.
            reactor._exitSignal = number
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # a second signal while stopping

    for number, own in ((signal.SIGTERM, getattr(reactor, "sigTerm", None)),
                        (signal.SIGINT, getattr(reactor, "sigInt", None))):
        if own is not None and signal.getsignal(number) == own:
            signal.signal(number, handler)


def write_text_log(reactor: Any, publisher: LogPublisher) -> None:
    """Write twistd's text log with :class:`vmspop.textlog.TextLog` while the reactor runs.

    Call once the reactor runs (twistd begins logging after ``makeService``).  twistd
    removes its own observer after the reactor has stopped, so it gets it back then.
    """
    restore = install_text_log(publisher)
    if restore is not None:
        reactor.addSystemEventTrigger("after", "shutdown", restore)
