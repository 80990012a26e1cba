"""Load: 1,000 concurrent POP3 connections against one `twistd vmspop`, for a bounded time.

900 connections stay open and idle (half logged in, half at the greeting), each
sending a keep-alive (NOOP, or CAPA before login) well within the idle timeout;
100 are active, each running whole sessions in a loop: USER/PASS, STAT, LIST,
UIDL, three RETRs, DELE/RSET/DELE, QUIT, then an SMTP delivery that puts back the
message it deleted, so every mailbox keeps its size however long the run.  Every
reply is checked: +OK, the terminating dot, LIST's octet count against the bytes
RETR sent, and the message itself against what was stored.

The server's RSS is sampled every second from /proc/<pid>/status; at the end the
script reports connections held, sessions, messages and MB retrieved, errors
(must be 0), RSS at start, peak and end (must stay flat), both processes' CPU
time, and the server log's error-level lines (must be 0: none of the load is
the server's fault).  It is a benchmark, not a test: it prints figures and exits
1 only when a reply was wrong or the server logged an error.

    .venv/bin/python benchmarks/load.py --seconds 60        # or: make load
    .venv/bin/python benchmarks/load.py --prepare /srv/load  # then start twistd yourself, and:
    .venv/bin/python benchmarks/load.py --connect 127.0.0.1:1110 --smtp-connect 127.0.0.1:2525 \\
        [--pid PID] [--log twistd.log]

Passwords are stored {PLAIN} so that the figures measure POP3 and the store;
with Argon2id each of the ~100 logins a second would cost tens of milliseconds
of CPU (docs/performance.md has the login figures).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmspop.store import MailStore  # noqa: E402

SEED = 20260601
ACTIVE = 100
IDLE = 900
MESSAGES_PER_BOX = 20
RETR_PER_SESSION = 3
PASSWORD = "load"
#: Client read buffer: larger than the largest message, so one readuntil() takes it whole.
READ_LIMIT = 4 * 1024 * 1024
#: Connections opened at once during ramp-up: Twisted listens with a backlog of 50,
#: and a burst beyond it costs SYN retransmits (a second or more), not errors.
CONNECT_BATCH = 50


class BadReply(Exception):
    """A reply the server should not have sent."""


@dataclass
class Figures:
    """What the run counted."""

    sessions: int = 0
    session_seconds: list[float] = field(default_factory=list)
    retrieved: int = 0
    retrieved_octets: int = 0
    deliveries: int = 0
    keepalives: int = 0
    errors: list[str] = field(default_factory=list)
    open_connections: int = 0  # POP3 and SMTP, idle and active
    idle_held: int = 0


# -- the corpus --------------------------------------------------------------------------------


def pool(rng: random.Random) -> dict[str, bytes]:
    """20 messages (id -> CRLF text as submitted), mostly small, some large, with dot lines."""
    messages = {}
    for i in range(MESSAGES_PER_BOX):
        size = (rng.randrange(2_000, 8_000) if i % 10 < 6 else
                rng.randrange(20_000, 60_000) if i % 10 < 9 else rng.randrange(150_000, 300_000))
        lines = [b"From: load@example.org", b"To: user@localhost", b"Subject: load %d" % i,
                 b"X-Load-Id: m%02d" % i, b""]
        total = sum(len(line) + 2 for line in lines)
        while total < size:
            line = (b"." if rng.random() < 0.05 else b"") + b"x" * rng.randrange(0, 120)
            lines.append(line)
            total += len(line) + 2
        messages[f"m{i:02d}"] = b"\r\n".join(lines) + b"\r\n"
    return messages


def users() -> tuple[list[str], list[str]]:
    """The active users, and the users of the idle connections that log in."""
    return [f"act{i:03d}" for i in range(ACTIVE)], [f"idl{i:03d}" for i in range(IDLE // 2)]


def prepare(data: Path, messages: dict[str, bytes]) -> None:
    """The password file and every mailbox, written directly (no fsync: it is throw-away)."""
    active, idle = users()
    data.mkdir(parents=True, exist_ok=True)
    (data / "passwd").write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}\n" for u in active + idle))
    store = MailStore(data / "mail", "load")
    # One file per message, hard-linked into every mailbox: one page-cache copy.
    originals = data / "originals"
    originals.mkdir(parents=True)
    names = []
    for n, (_, text) in enumerate(sorted(messages.items())):
        stored = text.replace(b"\r\n", b"\n")
        name = f"{1_700_000_000 + n}.M000000P1Q{n}.load,S={len(stored)},W={len(text)}"
        (originals / name).write_bytes(stored)
        names.append(name)
    for user in active + idle:
        store.create_mailbox(user)
        new = store.folder(user, "NEWMAIL") / "new"
        for name in names if user in active else names[:1]:
            os.link(originals / name, new / name)


# -- the client --------------------------------------------------------------------------------


class Conn:
    """One POP3 connection with checked replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, figures: Figures) -> None:
        self.reader, self.writer, self.figures = reader, writer, figures

    @classmethod
    async def open(cls, host: str, port: int, figures: Figures) -> Conn:
        reader, writer = await asyncio.open_connection(host, port, limit=READ_LIMIT)
        figures.open_connections += 1
        conn = cls(reader, writer, figures)
        await conn.status(b"greeting")
        return conn

    async def status(self, what: bytes) -> bytes:
        line = await self.reader.readuntil(b"\r\n")
        if not line.startswith(b"+OK"):
            raise BadReply(f"{what.decode()}: {line[:200]!r}")
        return line

    async def command(self, line: bytes) -> bytes:
        self.writer.write(line + b"\r\n")
        return await self.status(line.split(b" ")[0])

    async def multiline(self, line: bytes) -> bytes:
        """The body of a multi-line reply, terminator checked and removed, still stuffed."""
        await self.command(line)
        block = await self.reader.readuntil(b".\r\n")
        while not (block == b".\r\n" or block.endswith(b"\r\n.\r\n")):
            block += await self.reader.readuntil(b".\r\n")  # a ".\r\n" inside a line
        return block[:-3]

    async def quit(self) -> bytes:
        reply = await self.command(b"QUIT")
        if await self.reader.read() != b"":
            raise BadReply("data after the QUIT reply")
        self.close()
        return reply

    def close(self) -> None:
        if not self.writer.is_closing():
            self.figures.open_connections -= 1
            self.writer.close()


async def login(conn: Conn, user: str) -> None:
    await conn.command(b"USER " + user.encode())
    await conn.command(b"PASS " + PASSWORD.encode())


async def session(host: str, port: int, user: str, rng: random.Random, messages: dict[str, bytes],
                  figures: Figures) -> None:
    """One whole active session; every reply checked."""
    conn = await Conn.open(host, port, figures)
    try:
        await login(conn, user)
        count, octets = (int(x) for x in (await conn.command(b"STAT")).split()[1:3])
        listing = (await conn.multiline(b"LIST")).split(b"\r\n")[:-1]
        sizes = {int(n): int(s) for n, s in (line.split() for line in listing)}
        if len(sizes) != count or sum(sizes.values()) != octets:
            raise BadReply(f"LIST {sizes} does not add up to STAT {count} {octets}")
        if count != MESSAGES_PER_BOX:
            raise BadReply(f"STAT: {count} messages, not the {MESSAGES_PER_BOX} every session leaves")
        uids = (await conn.multiline(b"UIDL")).split(b"\r\n")[:-1]
        if len({line.split()[1] for line in uids}) != count:
            raise BadReply("UIDL: not one unique id per message")
        for number in rng.sample(sorted(sizes), RETR_PER_SESSION):
            body = (await conn.multiline(b"RETR %d" % number)).replace(b"\r\n..", b"\r\n.")
            if len(body) != sizes[number]:
                raise BadReply(f"RETR {number}: {len(body)} octets, LIST said {sizes[number]}")
            key = body.split(b"X-Load-Id: ", 1)[1][:3].decode()
            if not body.endswith(messages[key]):
                raise BadReply(f"RETR {number}: not the message {key} that was stored")
            figures.retrieved += 1
            figures.retrieved_octets += len(body)
        await conn.command(b"DELE 1")
        await conn.command(b"DELE 2")
        if not (await conn.command(b"RSET")).startswith(b"+OK maildrop has %d messages" % count):
            raise BadReply("RSET did not restore the maildrop")
        await conn.command(b"DELE 1")
        if b"(1 deleted, 0 moved to MAIL)" not in await conn.quit():
            raise BadReply("QUIT did not delete exactly one message")
    finally:
        conn.close()


async def smtp_deliver(host: str, port: int, user: str, message: bytes, figures: Figures) -> None:
    """Put a message back over SMTP (no byte-stuffing needed: checked by the caller's pool)."""
    reader, writer = await asyncio.open_connection(host, port, limit=READ_LIMIT)
    figures.open_connections += 1

    async def reply(code: bytes) -> None:
        while True:
            line = await reader.readuntil(b"\r\n")
            if not line.startswith(code):
                raise BadReply(f"SMTP: expected {code.decode()}, got {line[:200]!r}")
            if line[3:4] == b" ":
                return

    try:
        await reply(b"220")
        for command, code in ((b"EHLO load.example.org", b"250"), (b"MAIL FROM:<load@example.org>", b"250"),
                              (b"RCPT TO:<" + user.encode() + b"@localhost>", b"250"), (b"DATA", b"354")):
            writer.write(command + b"\r\n")
            await reply(code)
        writer.write(message.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        await reply(b"250")
        writer.write(b"QUIT\r\n")
        await reply(b"221")
        figures.deliveries += 1
    finally:
        figures.open_connections -= 1
        writer.close()


async def active(host: str, port: int, smtp: tuple[str, int], user: str, messages: dict[str, bytes],
                 figures: Figures, stop: asyncio.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        started = time.monotonic()
        try:
            await session(host, port, user, rng, messages, figures)
            figures.sessions += 1
            figures.session_seconds.append(time.monotonic() - started)
            # Put back a message: the mailbox keeps its 20, as much mail arrives as is deleted.
            await smtp_deliver(*smtp, user, messages[rng.choice(sorted(messages))], figures)
        except (BadReply, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            figures.errors.append(f"{user}: {type(e).__name__}: {e}")
            await asyncio.sleep(1)


async def idle(host: str, port: int, user: str | None, keepalive: float, figures: Figures,
               stop: asyncio.Event, ready: asyncio.Semaphore, seed: int) -> None:
    """One idle connection: logged in (NOOP) or at the greeting (CAPA), until the end."""
    conn = None
    held = False
    try:
        async with ready:
            conn = await Conn.open(host, port, figures)
            if user is not None:
                await login(conn, user)
        figures.idle_held += 1
        held = True
        rng = random.Random(seed)
        while True:
            try:
                await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 1.0) * keepalive)
                break
            except asyncio.TimeoutError:
                if user is not None:
                    await conn.command(b"NOOP")
                else:
                    await conn.multiline(b"CAPA")
                figures.keepalives += 1
        figures.idle_held -= 1
        held = False
        await conn.quit()
    except (BadReply, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        figures.errors.append(f"idle {user or 'at greeting'}: {type(e).__name__}: {e}")
    finally:
        if held:
            figures.idle_held -= 1
        if conn is not None:
            conn.close()


# -- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_processes(pid: int) -> list[int]:
    """``pid`` and its descendants: with --workers, the supervisor and its workers."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def rss_kib(pid: int) -> int:
    """The resident memory of the server: its process, and its workers if any."""
    total = 0
    for process in server_processes(pid):
        try:
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def cpu_seconds(pid: int) -> float:
    """CPU time of the server's processes now alive (a worker that died takes its own away)."""
    total = 0
    for process in server_processes(pid):
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def raise_nofile(needed: int) -> None:
    """Both sides hold one descriptor per connection: raise the soft limit (inherited by twistd)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            sys.exit(f"load.py: needs {needed} open files, the hard limit is {hard} (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def start_server(data: Path, pop3: int, smtp: int, idle_timeout: float, log: Path,
                 workers: int) -> subprocess.Popen:
    twistd = Path(sys.executable).with_name("twistd")
    return subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", f"--logfile={log}", "vmspop",
         "--mail-root", str(data / "mail"), "--passwd", str(data / "passwd"), "--hostname", "localhost",
         "--pop3", f"tcp:{pop3}:interface=127.0.0.1", "--smtp", f"tcp:{smtp}:interface=127.0.0.1",
         # --max-sessions defaults to 1000 and --max-sessions-per-ip to 50 (one NAT address);
         # here every connection comes from 127.0.0.1, and an active client may reconnect a
         # moment before the server has counted its previous connection out, so leave room.
         "--max-sessions", "1100", "--max-sessions-per-ip", "1100",
         # Short enough that the idle connections' keep-alives matter within the run.
         "--idle-timeout", str(idle_timeout),
         # The leave-in-newmail mode keeps retrieved mail in place: every session sees the same
         # mailbox; deletions (one per session) still exercise the QUIT update.
         "--leave-in-newmail",
         # One process unless asked: the figures in operations.md are one process's.
         "--workers", str(workers)],
        cwd=data, env=dict(os.environ, PYTHONPATH=str(ROOT)))


async def wait_listening(host: str, port: int, process: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            await reader.readuntil(b"\r\n")
            writer.close()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                sys.exit(f"load.py: twistd exited with status {process.returncode}")
            if time.monotonic() > deadline:
                sys.exit("load.py: the server did not start listening")
            await asyncio.sleep(0.1)


def error_lines(log: Path) -> list[str]:
    """Lines of the server log at error level or worse (the server's faults, never the client's)."""
    return [line for line in log.read_text(errors="replace").splitlines()
            if "#error]" in line or "#critical]" in line or "Traceback" in line or "Unhandled" in line]


# -- the run -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, pid: int | None, host: str, port: int,
              smtp: tuple[str, int], messages: dict[str, bytes]) -> tuple[Figures, dict[str, Any]]:
    figures = Figures()
    stop = asyncio.Event()
    samples: list[tuple[float, int, int]] = []  # (seconds since the start, RSS KiB, connections)
    active_users, idle_users = users()
    started = time.monotonic()

    async def sample() -> None:
        while True:
            if pid is not None:
                samples.append((time.monotonic() - started, rss_kib(pid), figures.open_connections))
            await asyncio.sleep(1)

    sampler = asyncio.create_task(sample())
    rss_idle = rss_kib(pid) if pid is not None else 0
    ready = asyncio.Semaphore(CONNECT_BATCH)
    idlers = [asyncio.create_task(idle(host, port, user, args.idle_timeout / 3, figures, stop, ready,
                                       SEED + ACTIVE + i))
              for i, user in enumerate(idle_users + [None] * (IDLE - len(idle_users)))]
    while figures.idle_held < IDLE and not figures.errors:
        await asyncio.sleep(0.05)
    ramp = time.monotonic() - started
    rss_ramp = rss_kib(pid) if pid is not None else 0
    cpu_before = cpu_seconds(pid) if pid is not None else 0.0
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    steady = time.monotonic()
    workers = [asyncio.create_task(active(host, port, smtp, user, messages, figures, stop, SEED + i))
               for i, user in enumerate(active_users)]
    held, idle_held = [], []
    while time.monotonic() - steady < args.seconds:
        await asyncio.sleep(1)
        held.append(figures.open_connections)
        idle_held.append(figures.idle_held)
    stop.set()
    await asyncio.gather(*workers)
    elapsed = time.monotonic() - steady
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_server = (cpu_seconds(pid) - cpu_before) if pid is not None else float("nan")
    rss_end = rss_kib(pid) if pid is not None else 0
    await asyncio.gather(*idlers)
    sampler.cancel()
    during = [rss for t, rss, _ in samples if t >= steady - started]
    # RSS at each tenth of the steady state: flat, or growing (a leak)?
    timeline = [during[min(len(during) - 1, len(during) * k // 10)] for k in range(11)] if during else []
    return figures, dict(
        ramp=ramp, elapsed=elapsed, held_min=min(held), held_max=max(held), idle_min=min(idle_held),
        idle_max=max(idle_held), timeline=timeline, rss_idle=rss_idle,
        rss_ramp=rss_ramp, rss_peak=max(during, default=0), rss_end=rss_end,
        cpu_server=cpu_server,
        cpu_client=(usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="steady-state duration (default 60)")
    parser.add_argument("--idle-timeout", type=float, default=30,
                        help="the server's --idle-timeout; idle clients send a keep-alive every "
                             "1/6 to 1/3 of it (default 30)")
    parser.add_argument("--prepare", type=Path, metavar="DIR",
                        help="only write the store and password file into DIR, for --connect")
    parser.add_argument("--connect", metavar="HOST:PORT", help="load a running server (prepared with --prepare)")
    parser.add_argument("--smtp-connect", metavar="HOST:PORT", help="its SMTP listener (with --connect)")
    parser.add_argument("--pid", type=int, help="with --connect: the server's process id, for RSS and CPU")
    parser.add_argument("--log", type=Path, help="with --connect: the server's log file, checked for errors")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and log")
    parser.add_argument("--workers", type=int, default=1,
                        help="--workers of the server started here (default 1; RSS and CPU are "
                             "then summed over the supervisor and its workers)")
    args = parser.parse_args()
    messages = pool(random.Random(SEED))
    if args.prepare is not None:
        prepare(args.prepare, messages)
        print(f"prepared {args.prepare}: start twistd vmspop with --mail-root {args.prepare}/mail "
              f"--passwd {args.prepare}/passwd --hostname localhost --leave-in-newmail "
              f"--max-sessions 1100 --max-sessions-per-ip 1100 --idle-timeout {args.idle_timeout:g}")
        return 0
    raise_nofile(IDLE + ACTIVE * 2 + 200)

    process = None
    tmp = None
    if args.connect:
        if not args.smtp_connect:
            parser.error("--connect needs --smtp-connect")
        host, port = args.connect.rsplit(":", 1)
        smtp_host, smtp_port = args.smtp_connect.rsplit(":", 1)
        smtp = (smtp_host, int(smtp_port))
        pid, log = args.pid, args.log
    else:
        tmp = Path(tempfile.mkdtemp(prefix="vmspop-load-"))
        print(f"preparing {ACTIVE} + {IDLE // 2} users in {tmp} ...", flush=True)
        prepare(tmp, messages)
        host, port, smtp = "127.0.0.1", free_port(), ("127.0.0.1", free_port())
        log = tmp / "twistd.log"
        process = start_server(tmp, int(port), smtp[1], args.idle_timeout, log, args.workers)
        pid = process.pid
    try:
        asyncio.run(wait_listening(host, int(port), process))
        print(f"loading {host}:{port} with {IDLE} idle + {ACTIVE} active connections "
              f"for {args.seconds:g} s ...", flush=True)
        figures, m = asyncio.run(run(args, pid, host, int(port), smtp, messages))
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)
    errors_in_log = error_lines(log) if log is not None else []

    times = sorted(figures.session_seconds) or [float("nan")]
    mib = figures.retrieved_octets / 2**20
    print(f"""
machine                {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; server --workers {args.workers if process else '(yours)'}
ramp-up                {IDLE} idle connections open (half logged in) in {m['ramp']:.1f} s
idle connections held  {m['idle_min']}-{m['idle_max']} of {IDLE}, sampled every second for {m['elapsed']:.1f} s
all connections open   {m['held_min']}-{m['held_max']} (active clients reconnect after each session)
sessions completed     {figures.sessions} ({figures.sessions / m['elapsed']:.1f}/s); \
duration p50 {times[len(times) // 2] * 1000:.1f} ms, p99 {times[int(len(times) * 0.99)] * 1000:.1f} ms
messages retrieved     {figures.retrieved} ({mib:.1f} MiB, {mib / m['elapsed']:.2f} MiB/s)
SMTP deliveries        {figures.deliveries}
idle keep-alives       {figures.keepalives}
errors                 {len(figures.errors)}
server RSS (MiB)       idle {m['rss_idle'] / 1024:.1f}, after ramp-up {m['rss_ramp'] / 1024:.1f}, \
peak {m['rss_peak'] / 1024:.1f}, end {m['rss_end'] / 1024:.1f}
RSS by tenths (MiB)    {' '.join(f"{kib / 1024:.0f}" for kib in m['timeline'])}
CPU during the run     server {m['cpu_server']:.1f} s ({m['cpu_server'] / m['elapsed']:.0%}), \
client {m['cpu_client']:.1f} s ({m['cpu_client'] / m['elapsed']:.0%})
server log errors      {len(errors_in_log) if log is not None else 'not checked (no --log)'}""")
    for line in figures.errors[:10] + errors_in_log[:10]:
        print("  ", line[:300])
    if tmp is not None:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp)
    return 1 if figures.errors or errors_in_log else 0


if __name__ == "__main__":
    sys.exit(main())
