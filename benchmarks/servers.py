"""Starting, watching and stopping the servers under test, all on 127.0.0.1.

* vmspop:  ``twistd -n vmspop`` from this checkout (PYTHONPATH, like big_retr.py)
* Dovecot: ``dovecot-peer.sh`` (../shared/tools), tuned for performance or stock settings
* stock:   benchmarks/stock_pop3.py (twisted.mail.pop3.POP3), with or without TCP_NODELAY
* ceiling: benchmarks/ceiling.py (plain sockets, replies prepared in memory)
"""

from __future__ import annotations

import abc
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_CANDIDATES = [
    Path(os.environ["DOVECOT_PEER"]) if os.environ.get("DOVECOT_PEER") else None,
    ROOT.parent / "shared" / "tools" / "dovecot-peer.sh",
    Path("/work/shared/tools/dovecot-peer.sh"),
]

# Dovecot's "high-performance mode" (doc.dovecot.org, "Login processes" and
# "Performance tuning"): login processes and pop3 processes are reused instead of
# forked per connection, a few are kept ready, and the auth cache is on.
DOVECOT_TUNED = """
service pop3-login {
  service_count = 0
  process_min_avail = 2
}
service pop3 {
  service_count = 0
  process_min_avail = 2
}
service auth {
  client_limit = 2000
}
auth_cache_size = 10M
"""
# Both: do not touch the corpus (no new/ -> cur/ moves, no flag updates) and show
# "[user ip]" in the worker's process title, so the harness can find it.
DOVECOT_COMMON = """
pop3_no_flag_updates = yes
verbose_proctitle = yes
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dovecot_peer() -> Path | None:
    """The peer script, or None when Dovecot (or the script) is not installed."""
    if shutil.which("dovecot") is None or not Path("/usr/lib/dovecot/pop3").exists():
        return None
    for p in PEER_CANDIDATES:
        if p is not None and p.exists():
            return p
    return None


def wait_greeting(port: int, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if s.recv(512).startswith(b"+OK"):
                    s.sendall(b"QUIT\r\n")
                    s.recv(512)
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no POP3 greeting on 127.0.0.1:{port}")
        time.sleep(0.1)


# -- /proc ------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def reset_hwm(pid: int) -> bool:
    """Reset the peak-RSS counter (write 5 to clear_refs; Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


_TICK = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (and their reaped children)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / _TICK


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def drop_caches() -> bool:
    """Empty the page cache (root only); False if not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3")
        return True
    except OSError:
        return False


# -- servers ----------------------------------------------------------------------------

class Server(abc.ABC):
    """One server under test."""

    name = "?"
    label = "?"

    def __init__(self, corpus, work: Path) -> None:
        self.corpus = corpus
        self.work = work
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        for attempt in (1, 2):  # a second try on another port, should the first be taken
            self.port = free_port()
            self.proc = subprocess.Popen(self.command(), cwd=self.work, env=self.env(),
                                         stdout=self.log(), stderr=subprocess.STDOUT)
            try:
                wait_greeting(self.port, process=self.proc)
                return
            except RuntimeError as e:
                self.stop()
                if attempt == 2:
                    log = (self.work / f"{self.name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{self.name}: {e}; its log ends:\n{log}") from None

    def log(self):
        return open(self.work / f"{self.name}.log", "ab")

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(ROOT))

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The command line that starts this server."""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def worker(self, user: str) -> int:
        """The process serving ``user``'s session now (for memory and CPU figures)."""
        return self.pid

    def processes(self) -> list[int]:
        """Every process of the server (for CPU figures)."""
        return tree(self.pid)


class Vmspop(Server):
    name, label = "vmspop", "vmspop"

    def __init__(self, corpus, work: Path, lag_control: Path | None = None) -> None:
        super().__init__(corpus, work)
        self.lag_control = lag_control
        if lag_control is not None:
            self.name = "vmspop-lag"

    def command(self) -> list[str]:
        twistd = [str(Path(sys.executable).with_name("twistd"))]
        if self.lag_control is not None:
            twistd = [sys.executable, str(HERE / "lagmon.py"), str(self.lag_control)]
        return twistd + [
            "-n", "--pidfile=", f"--logfile={self.work / (self.name + '-twistd.log')}",
            "vmspop", "--mail-root", str(self.corpus.mailroot), "--passwd", str(self.corpus.users_file),
            "--pop3", f"tcp:{self.port}:interface=127.0.0.1", "--no-smtp",
            "--auth-failure-delay", "0", "--leave-in-newmail",
            "--max-sessions", "2000", "--max-sessions-per-ip", "2000",
            # One process: the figures above are per process (vmspop-workers runs several).
            "--workers", "1"]

    def start(self) -> None:
        if self.lag_control is not None and self.lag_control.exists():
            self.lag_control.unlink()
        super().start()


class VmspopWorkers(Vmspop):
    """vmspop with ``--workers`` (default: one per core): a supervisor and its workers."""

    name = "vmspop-workers"

    def __init__(self, corpus, work: Path, count: int | None = None) -> None:
        super().__init__(corpus, work)
        self.count = count or len(os.sched_getaffinity(0))
        self.label = f"vmspop --workers {self.count}"

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--workers") + 1] = str(self.count)
        return command

    def worker(self, user: str) -> int:
        """The worker holding ``user``'s session lock (the user must be logged in)."""
        lock = f"/{user}/.vmspop.lock"
        for pid in tree(self.pid):
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(lock):
                        return pid
                except OSError:
                    continue
        return self.pid


class Stock(Server):
    def __init__(self, corpus, work: Path, nodelay: bool) -> None:
        super().__init__(corpus, work)
        self.nodelay = nodelay
        self.name = "stock-nodelay" if nodelay else "stock"
        self.label = "stock Twisted + TCP_NODELAY" if nodelay else "stock Twisted"

    def command(self) -> list[str]:
        cmd = [sys.executable, str(HERE / "stock_pop3.py"), str(self.port),
               str(self.corpus.mailroot), str(self.corpus.users_file)]
        return cmd + (["--nodelay"] if self.nodelay else [])


class Ceiling(Server):
    name, label = "ceiling", "loopback ceiling"

    def command(self) -> list[str]:
        return [sys.executable, str(HERE / "ceiling.py"), str(self.port),
                str(self.corpus.mailroot), str(self.corpus.users_file)]


class Dovecot(Server):
    def __init__(self, corpus, work: Path, peer: Path, tuned: bool) -> None:
        super().__init__(corpus, work)
        self.peer = peer
        self.tuned = tuned
        self.name = "dovecot" if tuned else "dovecot-default"
        self.label = "Dovecot (tuned)" if tuned else "Dovecot (default settings)"
        self.master = 0

    @property
    def pid(self) -> int:
        return self.master

    def start(self) -> None:
        self.port = free_port()
        inst = self.work / self.name
        inst.mkdir(exist_ok=True)
        extra = inst / "extra.conf"
        extra.write_text(DOVECOT_COMMON + (DOVECOT_TUNED if self.tuned else ""))
        mailroot = self.corpus.mailroot
        index = f"{mailroot}/.{self.name}-index/%u"
        env = dict(os.environ, DOVECOT_EXTRA_CONF=str(extra),
                   DOVECOT_MAIL_LOCATION=f"maildir:{mailroot}/%u/NEWMAIL:INDEX={index}:CONTROL={index}")
        # Files, not pipes: the daemon inherits them and would keep a pipe open forever.
        with open(inst / "peer.out", "w+") as out, open(inst / "peer.err", "w+") as err:
            done = subprocess.run(self.command(), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                  timeout=120)
            out.seek(0)
            err.seek(0)
            if done.returncode != 0:
                raise RuntimeError(f"dovecot-peer.sh failed: {err.read().strip()}")
            self.master = int(out.read().split()[-1])
        wait_greeting(self.port)

    def command(self) -> list[str]:
        """The peer script, which starts the daemon and prints its master's pid."""
        return ["bash", str(self.peer), str(self.port), str(self.corpus.mailroot),
                str(self.corpus.users_file), str(self.work / self.name)]

    def stop(self) -> None:
        if self.master:
            subprocess.run(["bash", str(self.peer), "stop", str(self.work / self.name)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
            self.master = 0

    def worker(self, user: str) -> int:
        mark = f"dovecot-peer-{self.port}/pop3 [{user} "
        for pid in tree(self.master):
            if cmdline(pid).startswith(mark):
                return pid
        raise RuntimeError(f"no Dovecot pop3 process for {user}")
