"""The loopback ceiling: a plain-socket "server" that sends the same bytes from memory.

    python ceiling.py PORT MAILROOT USERSFILE

It answers the POP3 commands the benchmark client sends (USER, PASS, STAT, LIST,
UIDL, RETR, NOOP, QUIT) with replies prepared in advance: each RETR reply is one
``sendall`` of a ready-made bytes object (status line, byte-stuffed body and the
terminating line), read once from the corpus file.  No parsing, no file I/O, no
event loop: what is left is the kernel's loopback and the client, so its figures
are what this machine and the benchmark client can do at most.  One thread per
connection (``sendall`` and ``recv`` release the GIL).
"""

from __future__ import annotations

import os
import socket
import socketserver
import sys
import threading

PORT, MAILROOT, USERS = int(sys.argv[1]), sys.argv[2], sys.argv[3]
PASSWORDS = {}
for _line in open(USERS).read().split():
    _user, _, _pw = _line.partition(":")
    PASSWORDS[_user] = _pw.removeprefix("{PLAIN}").encode()

_lock = threading.Lock()
_boxes: dict[str, "Box"] = {}
_replies: dict[int, bytes] = {}  # RETR replies by inode (bulk users share hard links)


def _stuff(stored: bytes) -> bytes:
    body = stored.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
    return b"." + body if body.startswith(b".") else body


class Box:
    def __init__(self, user: str) -> None:
        new = os.path.join(MAILROOT, user, "NEWMAIL", "new")
        self.paths = [os.path.join(new, n) for n in sorted(os.listdir(new))]
        self.sizes = [int(p.rsplit(",W=", 1)[1]) for p in self.paths]
        self.stat = b"+OK %d %d\r\n" % (len(self.sizes), sum(self.sizes))
        self.list = (b"+OK\r\n" + b"".join(b"%d %d\r\n" % (i + 1, s) for i, s in enumerate(self.sizes))
                     + b".\r\n")
        self.uidl = (b"+OK\r\n" + b"".join(b"%d %s\r\n" % (i + 1, os.path.basename(p).split(",")[0].encode())
                                            for i, p in enumerate(self.paths)) + b".\r\n")

    def retr(self, i: int) -> bytes:
        inode = os.stat(self.paths[i]).st_ino
        reply = _replies.get(inode)
        if reply is None:
            with open(self.paths[i], "rb") as f:
                reply = b"+OK %d octets\r\n" % self.sizes[i] + _stuff(f.read()) + b".\r\n"
            with _lock:
                _replies[inode] = reply
        return reply


def box(user: str) -> Box:
    with _lock:
        b = _boxes.get(user)
    if b is None:
        b = Box(user)
        with _lock:
            _boxes[user] = b
    return b


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        s = self.request
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"+OK ceiling ready\r\n")
        pending = b""
        user = b""
        b = None
        while True:
            data = s.recv(65536)
            if not data:
                return
            pending += data
            while b"\r\n" in pending:
                line, pending = pending.split(b"\r\n", 1)
                verb, _, arg = line.partition(b" ")
                verb = verb.upper()
                if verb == b"USER":
                    user = arg
                    s.sendall(b"+OK\r\n")
                elif verb == b"PASS":
                    name = user.decode()
                    if PASSWORDS.get(name) == arg:
                        b = box(name)
                        s.sendall(b"+OK logged in\r\n")
                    else:
                        s.sendall(b"-ERR no\r\n")
                elif verb == b"STAT" and b:
                    s.sendall(b.stat)
                elif verb == b"LIST" and b:
                    s.sendall(b.list)
                elif verb == b"UIDL" and b:
                    s.sendall(b.uidl)
                elif verb == b"RETR" and b:
                    s.sendall(b.retr(int(arg) - 1))
                elif verb == b"NOOP":
                    s.sendall(b"+OK\r\n")
                elif verb == b"QUIT":
                    s.sendall(b"+OK bye\r\n")
                    return
                else:
                    s.sendall(b"-ERR unknown\r\n")


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


if __name__ == "__main__":
    # Prepare every listing, and the RETR replies of the bulk and big mailboxes,
    # before accepting connections.
    for _name in PASSWORDS:
        if os.path.isdir(os.path.join(MAILROOT, _name)):
            _b = box(_name)
            if _name in ("bulk001", "big"):
                for _i in range(len(_b.paths)):
                    _b.retr(_i)
    with Server(("127.0.0.1", PORT), Handler) as server:
        server.serve_forever()
