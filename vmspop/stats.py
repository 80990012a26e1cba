"""Server counters, shown by ``XTND STATS`` and logged at shutdown, as the OpenVMS server kept them."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

__all__ = ["ServerStats"]


@dataclass
class ServerStats:
    """The counters of the OpenVMS server's ``XTND STATS`` report.

    "Threads" are POP3 connections here: the VMS server ran one thread per client.
    """

    started: float
    total_sessions: int = 0
    max_sessions: int = 0
    refused_sessions: int = 0
    normal_disconnects: int = 0
    abnormal_disconnects: int = 0
    client_timeouts: int = 0
    retrieved_messages: int = 0
    retrieved_octets: int = 0
    min_octets: int | None = None
    max_octets: int = 0
    auth_failures: int = 0

    def session_started(self, current: int) -> None:
        """A connection was admitted; ``current`` counts it."""
        self.total_sessions += 1
        self.max_sessions = max(self.max_sessions, current)

    def session_ended(self, why: str) -> None:
        """A connection ended; ``why`` is the disconnect reason of the log line."""
        if why == "quit":
            self.normal_disconnects += 1
        elif why == "idle-timeout":
            self.client_timeouts += 1
        else:
            self.abnormal_disconnects += 1

    def retrieved(self, octets: int) -> None:
        """A message was sent whole by RETR."""
        self.retrieved_messages += 1
        self.retrieved_octets += octets
        self.min_octets = octets if self.min_octets is None else min(self.min_octets, octets)
        self.max_octets = max(self.max_octets, octets)

    def report(self, *, version: str, log_level: str, current_sessions: int,
               current_users: list[str], now: float | None = None,
               extra: list[str] | None = None) -> list[str]:
        """The ``Label : value`` lines of the VMS report, in its order; ``extra`` lines
        (vmspop's own, e.g. which worker process answers) go before the user list."""
        now = time.time() if now is None else now
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        average = self.retrieved_octets // self.retrieved_messages if self.retrieved_messages else 0
        lines = [
            f"Version Number : vmspop {version}",
            f"Logging Level : {log_level.upper()}",
            f"Current Time : {_stamp(now)}",
            f"Start Time : {_stamp(self.started)}",
            f"CPU Seconds : {cpu:.2f} ({int(cpu // 60)} mins, {int(cpu % 60)} secs)",
            f"Current Threads : {current_sessions}",
            f"Total Threads : {self.total_sessions}",
            f"Max Threads : {self.max_sessions}",
            f"Too Many Threads : {self.refused_sessions}",
            f"Normal Disconnects : {self.normal_disconnects}",
            f"Abnormal Disconnects : {self.abnormal_disconnects}",
            f"Client Timeouts : {self.client_timeouts}",
            f"Retrieved Messages : {self.retrieved_messages}",
            f"Retrieved Octets : {self.retrieved_octets}",
            f"Average Octets : {average}",
            f"Minimum Octets : {self.min_octets or 0}",
            f"Maximum Octets : {self.max_octets}",
            f"Auth Failures : {self.auth_failures}",
            *(extra or []),
            "Current Users :",
        ]
        lines += [f"{i}. {user}" for i, user in enumerate(current_users)]
        return lines


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
