"""Running a real `twistd vmspop` in a subprocess for the end-to-end tests."""

from __future__ import annotations

import os
import poplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_twistd(data: Path, port: int, *options: str, logfile: str = "/dev/null",
                 smtp: int | None = None, workers: int = 1, **popen: Any) -> subprocess.Popen:
    """`twistd -n vmspop` on ``data``'s mail root and password file, POP3 on 127.0.0.1:``port``,
    no failure delay, SMTP on 127.0.0.1:``smtp`` for the domain ``localhost`` (or no SMTP
    when ``smtp`` is None), ``--workers`` ``workers`` (1: a single process); ``options`` are
    added; returns once it is started."""
    listener = (["--smtp", f"tcp:{smtp}:interface=127.0.0.1", "--hostname", "localhost"]
                if smtp is not None else ["--no-smtp"])
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", f"--logfile={logfile}",
         "vmspop", "--mail-root", str(data / "mail"), "--passwd", str(data / "passwd"), *listener,
         "--auth-failure-delay", "0", "--pop3", f"tcp:{port}:interface=127.0.0.1",
         "--workers", str(workers), *options],
        cwd=data, env=dict(os.environ, PYTHONPATH=str(ROOT)), **popen)
    return process


def connect(port: int, process: subprocess.Popen, timeout: float = 30) -> poplib.POP3:
    """A poplib client, once the server listens (fails if the server died meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return poplib.POP3("127.0.0.1", port, timeout=10)
        except OSError:
            assert process.poll() is None, "twistd exited"
            assert time.monotonic() < deadline, "twistd did not start listening"
            time.sleep(0.05)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll until ``condition()`` is true; return its value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def workers_of(pid: int) -> dict[int, int]:
    """The worker processes of the twistd ``pid``: worker number -> process id (Linux /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != pid or b"vmspop.workers" not in argv:
            continue
        found[int(argv[argv.index(b"vmspop.workers") + 1].split(b"/")[0])] = int(entry)
    return found


def alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
