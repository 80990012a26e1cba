"""A fast, strict POP3 client for the benchmark (blocking sockets, one thread per session).

Every reply is checked: status lines, the octet count of RETR against LIST, the
body byte for byte against the corpus (compared byte-stuffed, with one memcmp),
and the terminating dot line.  Any deviation raises :class:`BadReply`; the
harness then scores the server nothing for that scenario.

The receive path is ``recv_into`` a reusable buffer and C-level ``find`` for the
terminator, so the client spends little CPU per byte (the loopback ceiling, measured
with this same client, shows how much it can take).
"""

from __future__ import annotations

import re
import socket
import time

HOST = "127.0.0.1"
TIMEOUT = 60.0
_TERM = b"\r\n.\r\n"


class BadReply(Exception):
    """The server answered something a correct POP3 server would not."""


class Conn:
    """One POP3 connection."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(1 << 20)
        self.view = memoryview(self.buf)
        self.end = 0          # valid bytes in buf
        self.first_byte = 0.0  # perf_counter of the first recv of the last reply
        self.sent_at = 0.0

    # -- low level ------------------------------------------------------------------

    def _fill(self) -> None:
        if self.end == len(self.buf):
            bigger = bytearray(len(self.buf) * 2)
            bigger[: self.end] = self.buf
            self.view.release()
            self.buf, self.view = bigger, memoryview(bigger)
        if not self.end:
            # The first read of a reply is small: a large recv keeps copying while data
            # keeps arriving, and would return (and time the "first byte") late.
            n = self.sock.recv_into(self.view[:4096])
            self.first_byte = time.perf_counter()
        else:
            n = self.sock.recv_into(self.view[self.end:])
        if not n:
            raise BadReply("connection closed by the server")
        self.end += n

    def _consume(self, upto: int) -> None:
        rest = self.end - upto
        if rest:
            self.buf[:rest] = self.buf[upto:self.end]
        self.end = rest

    def reserve(self, octets: int) -> None:
        """Make room for a reply of ``octets`` (so a big RETR is not timed growing it)."""
        if len(self.buf) < octets:
            bigger = bytearray(octets)
            bigger[::4096] = bytes(len(range(0, octets, 4096)))  # fault the pages in now
            bigger[: self.end] = self.buf[: self.end]
            self.view.release()
            self.buf, self.view = bigger, memoryview(bigger)

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\r\n")

    def line(self) -> bytes:
        """One reply line, without CRLF."""
        start = 0
        while True:
            i = self.buf.find(b"\r\n", start, self.end)
            if i >= 0:
                text = bytes(self.buf[:i])
                self._consume(i + 2)
                return text
            start = max(self.end - 1, 0)
            self._fill()

    def ok(self, what: str) -> bytes:
        """A status line that must be +OK; returns the text after "+OK"."""
        text = self.line()
        if not text.startswith(b"+OK"):
            raise BadReply(f"{what}: {text[:200]!r}")
        return text[3:].strip()

    def multiline(self) -> memoryview:
        """The body of a multi-line reply after its status line: everything up to and
        including the CRLF before the terminating ".", still byte-stuffed.  Valid until
        the next call."""
        start = 0
        while True:
            # The status line's CRLF was consumed, so an empty body is ".\r\n" at 0.
            if self.end >= 3 and self.buf.startswith(b".\r\n"):
                self._consume(3)
                return memoryview(b"")
            i = self.buf.find(_TERM, start, self.end)
            if i >= 0:
                if i + 5 != self.end:
                    raise BadReply(f"{self.end - i - 5} unexpected octets after the terminating line")
                body = self.view[: i + 2]
                self.end = 0
                return body
            start = max(self.end - 4, 0)
            self._fill()

    def close(self) -> None:
        try:
            self.view.release()
        except Exception:
            pass
        self.sock.close()

    # -- POP3 -----------------------------------------------------------------------

    def login(self, user: str, password: str) -> None:
        self.ok("greeting")
        self.send(b"USER " + user.encode())
        self.ok("USER")
        self.send(b"PASS " + password.encode())
        self.ok("PASS")

    def stat(self, count: int, octets: int) -> None:
        self.send(b"STAT")
        text = self.ok("STAT").split()
        if [int(x) for x in text[:2]] != [count, octets]:
            raise BadReply(f"STAT says {text!r}, expected {count} {octets}")

    def list_all(self, sizes: list[int]) -> None:
        self.send(b"LIST")
        self.ok("LIST")
        body = bytes(self.multiline())
        lines = body.split(b"\r\n")[:-1]
        if len(lines) != len(sizes):
            raise BadReply(f"LIST has {len(lines)} lines, expected {len(sizes)}")
        expected = b"".join(b"%d %d\r\n" % (i + 1, s) for i, s in enumerate(sizes))
        if body != expected:
            for i, (got, s) in enumerate(zip(lines, sizes)):
                if got.split()[:2] != [b"%d" % (i + 1), b"%d" % s]:
                    raise BadReply(f"LIST line {got!r}, expected {i + 1} {s}")
            raise BadReply("LIST reply differs from the expected sizes")

    def uidl_all(self, count: int) -> list[bytes]:
        self.send(b"UIDL")
        self.ok("UIDL")
        body = bytes(self.multiline())
        lines = body.split(b"\r\n")[:-1]
        if len(lines) != count:
            raise BadReply(f"UIDL has {len(lines)} lines, expected {count}")
        uids = []
        for i, line in enumerate(lines):
            number, _, uid = line.partition(b" ")
            if number != b"%d" % (i + 1) or not _UID.fullmatch(uid):
                raise BadReply(f"UIDL line {line[:100]!r}")
            uids.append(uid)
        if len(set(uids)) != count:
            raise BadReply("UIDL repeats a unique id")
        return uids

    def retr(self, number: int, size: int, expected: bytes) -> int:
        """RETR and check it against ``expected`` (the byte-stuffed body without the
        terminating line); returns the octets received on the wire.

        The reply is read up to the expected length without scanning it: a correct body
        never contains CRLF "." CRLF, so a stream that ends with it early is short.
        """
        self.sent_at = time.perf_counter()
        self.send(b"RETR %d" % number)
        status = self.ok(f"RETR {number}")
        # "+OK 123 octets" (RFC 1939 suggests it); stock Twisted says "+OK 123".
        m = re.match(rb"(\d+)", status)
        if m and int(m.group(1)) != size:
            raise BadReply(f"RETR {number} announces {status!r}, LIST said {size}")
        need = len(expected) + 3
        self.reserve(need)
        while self.end < need:
            self._fill()
            if self.end < need and self.end >= 5 and self.buf[self.end - 5:self.end] == _TERM:
                raise BadReply(f"RETR {number}: reply ended after {self.end} octets, "
                               f"{need} expected (first difference at "
                               f"{_first_difference(self.buf[:self.end], expected)})")
        if not self.buf.startswith(expected):
            raise BadReply(f"RETR {number}: body differs from the message at octet "
                           f"{_first_difference(self.buf[:need], expected)} of {len(expected)}")
        if self.buf[need - 3:need] != b".\r\n" or self.end != need:
            raise BadReply(f"RETR {number}: no terminating line where expected "
                           f"({self.end} octets received, {need} expected)")
        self.end = 0
        return need

    def quit(self, wait_close: bool = True) -> None:
        self.send(b"QUIT")
        self.ok("QUIT")
        if wait_close:
            # Let the server close first, so TIME_WAIT stays on its side of loopback.
            try:
                while self.sock.recv(4096):
                    pass
            except OSError:
                pass
        self.close()


_UID = re.compile(rb"[\x21-\x7e]{1,70}")


def _first_difference(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> int:
    a, b = bytes(a), bytes(b)
    lo, hi = 0, min(len(a), len(b))
    # Binary search on equal prefixes (memcmp is cheap).
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
