"""twistd with a reactor-stall monitor, for the loop-lag scenario.

    python lagmon.py CONTROL_SOCKET twistd-arguments...

Before twistd starts the application, this schedules a timer every 5 ms on the
reactor and records how late each one fires: a timer can only fire late when the
reactor thread was busy (or not scheduled by the OS), so the lateness is the stall
the reactor imposed on every connection at that moment.

A watchdog thread also looks every 10 ms whether the next tick is more than 50 ms
overdue and, if so, notes where the reactor thread is (its innermost vmspop frames,
from sys._current_frames()): each note stands for about 10 ms of a long stall spent
in that code.  The figures are read and reset over a Unix socket: "RESET", or "GET"
(one JSON line).  Nothing in the served application changes; the monitor costs one
short callback per 5 ms and one short wake-up per 10 ms.

For experiments only, LAGMON_SWITCHINTERVAL=seconds sets sys.setswitchinterval()
(CPython's GIL hand-over interval, 0.005 by default) in the server.
"""

import collections
import json
import os
import sys
import threading
import time

from twisted.internet import protocol, reactor
from twisted.protocols.basic import LineReceiver

INTERVAL = 0.005
STALL = 0.050
WATCH = 0.010


class Monitor:
    def __init__(self) -> None:
        self.next_due = time.monotonic() + INTERVAL
        self.reset()

    def reset(self) -> None:
        self.lags: list[float] = []
        self.worst = 0.0
        self.sites: collections.Counter = collections.Counter()

    def tick(self, due: float) -> None:
        now = time.monotonic()
        late = now - due
        self.lags.append(late)
        self.worst = max(self.worst, late)
        self.next_due = now + INTERVAL
        reactor.callLater(INTERVAL, self.tick, self.next_due)

    def summary(self) -> dict:
        lags = sorted(self.lags)
        n = len(lags)
        return {
            "ticks": n,
            "max_ms": self.worst * 1000,
            "p99_ms": lags[int(n * 0.99)] * 1000 if n else 0.0,
            "p50_ms": lags[n // 2] * 1000 if n else 0.0,
            "over_10ms": sum(1 for x in lags if x > 0.010),
            "over_50ms": sum(1 for x in lags if x > 0.050),
            "stall_sites": self.sites.most_common(12),
        }


MONITOR = Monitor()


def where(frame) -> str:
    """The innermost vmspop frames of a stack (else the innermost frame), innermost first."""
    ours, first = [], None
    while frame is not None:
        code = frame.f_code
        name = f"{code.co_name} ({os.path.basename(code.co_filename)}:{frame.f_lineno})"
        if first is None:
            first = name
        if f"{os.sep}vmspop{os.sep}" in code.co_filename:
            ours.append(name)
            if len(ours) == 3:
                break
        frame = frame.f_back
    return " <- ".join(ours) if ours else f"{first} (no vmspop frame)"


def watchdog(reactor_thread: int) -> None:
    while True:
        time.sleep(WATCH)
        if time.monotonic() - MONITOR.next_due > STALL:
            frame = sys._current_frames().get(reactor_thread)
            if frame is not None:
                MONITOR.sites[where(frame)] += 1


class Control(LineReceiver):
    def lineReceived(self, line: bytes) -> None:
        if line == b"RESET":
            MONITOR.reset()
            self.sendLine(b"OK")
        elif line == b"GET":
            self.sendLine(json.dumps(MONITOR.summary()).encode())
        self.transport.loseConnection()


def start(path: str) -> None:
    reactor.listenUNIX(path, protocol.Factory.forProtocol(Control))
    MONITOR.next_due = time.monotonic() + INTERVAL
    reactor.callLater(INTERVAL, MONITOR.tick, MONITOR.next_due)
    threading.Thread(target=watchdog, args=(threading.get_ident(),), daemon=True,
                     name="lagmon-watchdog").start()


if __name__ == "__main__":
    if os.environ.get("LAGMON_SWITCHINTERVAL"):
        sys.setswitchinterval(float(os.environ["LAGMON_SWITCHINTERVAL"]))
    control = sys.argv.pop(1)
    reactor.callWhenRunning(start, control)
    from twisted.scripts.twistd import run
    sys.argv[0] = "twistd"
    run()
