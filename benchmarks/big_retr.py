"""Benchmark: one large RETR over loopback - throughput, time to first byte, server memory.

Starts ``twistd -n vmspop`` in a subprocess on a throw-away store, delivers one
message of --size MiB, fetches it with a plain socket client that checks the octet
count and the terminating line, and prints the figures.  It is a benchmark, not a
test: it prints numbers and never fails on them.

    .venv/bin/python benchmarks/big_retr.py --size 100 --runs 3
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmspop.passwd import Account, PasswordFile  # noqa: E402
from vmspop.store import MailStore  # noqa: E402


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def reset_hwm(pid: int) -> None:
    """Reset the peak-RSS counter (Linux: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def read_reply(sock: socket.socket, buffer: bytearray) -> bytes:
    while b"\r\n" not in buffer:
        buffer += sock.recv(65536)
    line, _, rest = bytes(buffer).partition(b"\r\n")
    buffer[:] = rest
    return line


def fetch(port: int, expected: int) -> tuple[float, float]:
    """RETR 1 once; returns (seconds to first body byte, total seconds)."""
    sock = socket.create_connection(("127.0.0.1", port))
    buffer = bytearray()
    read_reply(sock, buffer)
    sock.sendall(b"USER bench\r\nPASS bench\r\n")
    read_reply(sock, buffer)
    assert read_reply(sock, buffer).startswith(b"+OK")
    start = time.perf_counter()
    sock.sendall(b"RETR 1\r\n")
    status = read_reply(sock, buffer)
    assert status == b"+OK %d octets" % expected, status
    first = None
    received = len(buffer)
    tail = bytes(buffer[-5:])
    view = bytearray(1 << 20)
    while True:
        if first is None and received:
            first = time.perf_counter() - start
        if tail.endswith(b"\r\n.\r\n") and received >= expected + 3:
            break
        n = sock.recv_into(view)
        if not n:
            raise RuntimeError("connection closed early")
        received += n
        tail = (tail + bytes(view[:n]))[-5:]
    total = time.perf_counter() - start
    # Body lines of "x" never need stuffing, so the wire carries exactly the octets announced.
    assert received == expected + 3, (received, expected)
    sock.sendall(b"QUIT\r\n")
    sock.close()
    return first or total, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="message size in MiB [100]")
    parser.add_argument("--runs", type=int, default=3, help="fetches; the median is reported [3]")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        PasswordFile(data / "passwd").update("bench", lambda _: Account("bench", "{PLAIN}bench"))
        store = MailStore(data / "mail")
        store.create_mailbox("bench")
        line = b"x" * 76 + b"\n"
        count = args.size * 1024 * 1024 // len(line)
        store.deliver(["bench"], (line * 8192 for _ in range(count // 8192)))
        expected = (count // 8192) * 8192 * (len(line) + 1)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        twistd = Path(sys.executable).with_name("twistd")
        server = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "--logfile=/dev/null", "vmspop",
             "--mail-root", str(data / "mail"), "--passwd", str(data / "passwd"),
             "--pop3", f"tcp:{port}:interface=127.0.0.1", "--leave-in-newmail",
             "--auth-failure-delay", "0", "--no-smtp", "--workers", "1"],  # RSS of this one process
            cwd=tmp, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    time.sleep(0.1)
            fetch(port, expected)  # warm the page cache and the server
            rss_before, _ = rss_kib(server.pid)
            reset_hwm(server.pid)
            firsts, totals = [], []
            for _ in range(args.runs):
                first, total = fetch(port, expected)
                firsts.append(first)
                totals.append(total)
            rss_after, hwm = rss_kib(server.pid)
        finally:
            server.terminate()
            server.wait(30)

    mib = expected / (1024 * 1024)
    median = statistics.median(totals)
    print(f"message: {mib:.1f} MiB on the wire, {args.runs} runs (median)")
    print(f"throughput: {expected / median / 1e6:.0f} MB/s  ({median:.2f} s per RETR)")
    print(f"time to first byte: {statistics.median(firsts) * 1000:.1f} ms")
    print(f"server RSS: {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB after, "
          f"peak {hwm / 1024:.1f} MiB (growth {(hwm - rss_before) / 1024:+.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
