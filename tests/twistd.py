"""Running a real `twistd vmspop` in a subprocess for the end-to-end tests."""

from __future__ import annotations

import os
import poplib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_twistd(data: Path, port: int, *options: str, logfile: str = "/dev/null",
                 smtp: int | None = None, **popen: Any) -> subprocess.Popen:
    """`twistd -n vmspop` on ``data``'s mail root and password file, POP3 on 127.0.0.1:``port``,
    no failure delay, and SMTP on 127.0.0.1:``smtp`` for the domain ``localhost`` (or no SMTP
    when ``smtp`` is None); ``options`` are added; returns once it is started."""
    listener = (["--smtp", f"tcp:{smtp}:interface=127.0.0.1", "--hostname", "localhost"]
                if smtp is not None else ["--no-smtp"])
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", f"--logfile={logfile}",
         "vmspop", "--mail-root", str(data / "mail"), "--passwd", str(data / "passwd"), *listener,
         "--auth-failure-delay", "0", "--pop3", f"tcp:{port}:interface=127.0.0.1", *options],
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
