"""vmspop performance benchmark: vmspop against Dovecot, stock Twisted and the loopback ceiling.

    make bench                                  # the whole thing (5-9 minutes)
    .venv/bin/python benchmarks/run.py --quick  # a short run, for trying it out
    .venv/bin/python benchmarks/run.py --runs 5 --json /tmp/bench.json

It generates a deterministic corpus (seeded) in a temporary directory, starts every
server on 127.0.0.1 over the same files with the same users and PLAIN passwords,
runs the scenarios, checks every reply, and prints a table of medians over the runs
with vmspop/Dovecot and vmspop/stock ratios, the issue's targets (met or not) and a
chart (docs/performance.png, when matplotlib is installed).  A server that answers a
scenario wrongly (a status line, an octet count, a byte of a body, the terminating
line) scores nothing for that scenario.  See docs/performance.md for the method.

Scenarios (list and big: each server in turn within each run; login and bulk: all
servers running, measured in short slices that take turns, so that the machine's slow
and fast phases fall on every server alike):
  list     login+STAT, LIST and UIDL of a 100,000-message NEWMAIL; "cold" is the first
           login after a restart with the page cache dropped (when root), "warm" the next
  login    USER/PASS + STAT + QUIT, back to back, with 1, 4 and 16 concurrent clients
  bulk     4 clients (own users, the same mixed-size mailbox) RETR every message, for a
           fixed time: MB/s and messages/s
  big      3 RETRs of one ~100 MiB message: MB/s, time to first byte, server RSS growth
  lag      vmspop only: the longest reactor stall while 100 sessions are active
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus as corpus_mod  # noqa: E402
import servers as srv  # noqa: E402
from client import BadReply, Conn  # noqa: E402

ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from vmspop.store import MTIME_SETTLE_SECONDS  # noqa: E402


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- parameters ---------------------------------------------------------------------------

@dataclass
class Params:
    runs: int = 3
    bulk_clients: int = 4
    bulk_seconds: float = 3.0
    login_clients: tuple[int, ...] = (1, 4, 16)
    login_seconds: float = 2.0
    big_mib: int = 100
    list_count: int = 100_000
    lag_sessions: int = 100
    lag_seconds: float = 5.0
    lag_list: bool = True
    quiet_wait: float = 120.0
    # login and bulk: each server's time in a run is cut into this many slices, and the
    # servers take turns slice by slice.  This VM's speed drifts by a fifth or more over
    # tens of seconds; measured one server after another, ratios swung by 0.2-0.3 from
    # run to run (docs/performance.md).
    slices: int = 4
    client_processes: bool = False  # login and bulk clients: processes, not threads

    @classmethod
    def quick(cls) -> "Params":
        return cls(runs=1, bulk_seconds=1.0, login_seconds=0.5, big_mib=20, list_count=10_000,
                   lag_seconds=2.0)


@dataclass
class Expected:
    bulk: list[bytes]
    bulk_sizes: list[int]
    big: bytes
    list_sizes: list[int]


@dataclass
class ClientRun:
    results: list[Any]    # what each client returned, in order
    elapsed: float        # seconds from the start to the last client's end
    server_cpu: float     # CPU seconds of the server's processes meanwhile
    client_cpu: float     # CPU seconds of the client processes meanwhile


def run_clients(server: srv.Server, n: int, seconds: float,
                target: Callable[[int, float], Any], processes: bool = False) -> ClientRun:
    """Run ``target(i, deadline)`` for i in range(n) for ``seconds``, in threads of this
    process or (``processes``) each in a process of its own.  Re-raises the first failure
    (a BadReply stays one).

    Threads (the default, as in every figure of docs/performance.md) share this
    process's GIL; processes are how real clients come.  The processes are forked, and
    the threads started, before the clock starts, and all begin together.  Both ways
    were measured side by side (docs/performance.md, "Method").
    """
    if processes:
        ctx: Any = multiprocessing.get_context("fork")
        go, deadline, results = ctx.Event(), ctx.Value("d", 0.0), ctx.SimpleQueue()
        start = ctx.Process
    else:
        go, deadline, results = threading.Event(), SimpleNamespace(value=0.0), queue.SimpleQueue()
        start = threading.Thread
    who = resource.RUSAGE_SELF if processes else resource.RUSAGE_THREAD

    def client(i: int) -> None:
        go.wait()
        r0 = resource.getrusage(who)
        try:
            out: tuple = ("ok", target(i, deadline.value))
        except BaseException as e:  # noqa: BLE001 - reported by the parent
            out = ("bad" if isinstance(e, BadReply) else "error", f"{type(e).__name__}: {e}")
        r1 = resource.getrusage(who)
        results.put((i, out, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime))

    clients = [start(target=client, args=(i,), daemon=True) for i in range(n)]
    for c in clients:
        c.start()
    s0 = srv.cpu_seconds(server.processes())
    t0 = time.perf_counter()
    deadline.value = t0 + seconds  # CLOCK_MONOTONIC: the same in every process
    go.set()
    done: dict[int, tuple[str, Any]] = {}
    cpu = 0.0
    for _ in clients:
        i, done[i], used = results.get()
        cpu += used
    elapsed = time.perf_counter() - t0
    s1 = srv.cpu_seconds(server.processes())
    for c in clients:
        c.join()
    for i, (kind, value) in sorted(done.items()):
        if kind != "ok":
            raise (BadReply if kind == "bad" else RuntimeError)(f"client {i}: {value}")
    return ClientRun([done[i][1] for i in range(n)], elapsed, s1 - s0, cpu)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# -- scenarios ----------------------------------------------------------------------------

class Bench:
    def __init__(self, corpus: corpus_mod.Corpus, expected: Expected, params: Params, work: Path) -> None:
        self.c = corpus
        self.e = expected
        self.p = params
        self.work = work
        self.uids: dict[str, bytes] = {}
        self.can_drop = os.geteuid() == 0
        self.stall_sites: dict[str, int] = {}  # loop lag: where the reactor was during stalls

    def list(self, server: srv.Server, cold: bool) -> dict[str, float]:
        box = self.c.listbox
        n, octets = len(box.messages), box.octets
        if cold:
            # The caller has just (re)started the server: this is its first login.
            srv.reset_hwm(server.pid)
            self.can_drop = srv.drop_caches() and self.can_drop
        t0 = time.perf_counter()
        conn = Conn(server.port)
        conn.login(box.user, box.password)
        conn.stat(n, octets)
        t1 = time.perf_counter()
        conn.list_all(self.e.list_sizes)
        t2 = time.perf_counter()
        uids = conn.uidl_all(n)
        t3 = time.perf_counter()
        peak = srv.proc_status(server.worker(box.user))["VmHWM"] / 1024
        conn.quit()
        digest = hash(tuple(uids)).to_bytes(8, "big", signed=True)
        if self.uids.setdefault(server.name, digest) != digest:
            raise BadReply("UIDL changed between sessions")
        kind = "cold" if cold else "warm"
        out = {f"list_{kind}_login": t1 - t0, f"list_{kind}_list": t2 - t1,
               f"list_{kind}_uidl": t3 - t2, f"list_{kind}_total": t3 - t0}
        if cold:
            out["list_peak"] = peak
        return out

    def login(self, server: srv.Server, clients: int, seconds: float) -> dict[str, float]:
        def worker(i: int, deadline: float) -> list[float]:
            box = self.c.login[i]
            count, octets = len(box.messages), box.octets
            mine: list[float] = []
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                conn = Conn(server.port)
                conn.login(box.user, box.password)
                conn.stat(count, octets)
                conn.quit()
                mine.append(time.perf_counter() - t)
            return mine

        run = run_clients(server, clients, seconds, worker, self.p.client_processes)
        every = [x for mine in run.results for x in mine]
        return {f"login{clients}_rate": len(every) / run.elapsed,
                f"login{clients}_p99": quantile(every, 0.99) * 1000,
                f"login{clients}_server_cpu": run.server_cpu / run.elapsed,
                f"login{clients}_client_cpu": run.client_cpu / run.elapsed}

    def bulk(self, server: srv.Server, seconds: float) -> dict[str, float]:
        sizes, bodies = self.e.bulk_sizes, self.e.bulk

        def worker(i: int, deadline: float) -> tuple[int, int]:
            box = self.c.bulk[i]
            messages = octets = 0
            while time.perf_counter() < deadline:
                conn = Conn(server.port)
                conn.login(box.user, box.password)
                conn.stat(len(sizes), sum(sizes))
                conn.list_all(sizes)
                for n, (size, body) in enumerate(zip(sizes, bodies)):
                    if time.perf_counter() >= deadline:
                        break
                    conn.retr(n + 1, size, body)
                    messages += 1
                    octets += size
                conn.quit()
            return messages, octets

        run = run_clients(server, self.p.bulk_clients, seconds, worker, self.p.client_processes)
        messages = sum(d[0] for d in run.results)
        octets = sum(d[1] for d in run.results)
        return {"bulk_mbps": octets / run.elapsed / 1e6, "bulk_msgs": messages / run.elapsed,
                "bulk_server_cpu": run.server_cpu / run.elapsed,
                "bulk_client_cpu": run.client_cpu / run.elapsed}

    def big(self, server: srv.Server, repeat: int = 3) -> dict[str, float]:
        """``repeat`` RETRs of the big message in one session; the median counts."""
        box = self.c.big
        size = box.messages[0].wire
        conn = Conn(server.port)
        conn.login(box.user, box.password)
        conn.stat(1, size)
        conn.reserve(len(self.e.big) + 3)
        pid = server.worker(box.user)
        before = srv.proc_status(pid)["VmRSS"]
        reset = srv.reset_hwm(pid)
        times, ttfbs, cpus = [], [], []
        for _ in range(repeat):
            s0 = srv.cpu_seconds([pid])
            t0 = time.perf_counter()
            conn.retr(1, size, self.e.big)
            times.append(time.perf_counter() - t0)
            ttfbs.append(conn.first_byte - conn.sent_at)
            cpus.append((srv.cpu_seconds([pid]) - s0) / times[-1])
        after = srv.proc_status(pid)
        conn.quit()
        out = {"big_mbps": size / statistics.median(times) / 1e6,
               "big_ttfb": statistics.median(ttfbs) * 1000,
               "big_server_cpu": statistics.median(cpus)}
        if reset:
            out["big_rss"] = (after["VmHWM"] - before) / 1024
        return out

    # -- loop lag (vmspop only) -------------------------------------------------------------

    def lag(self, server_class: type = srv.Vmspop) -> dict[str, float]:
        control = self.work / "lag.sock"
        server = server_class(self.c, self.work, lag_control=control)
        server.start()
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Value("i", 0)
        stop = ctx.Event()
        results = ctx.Queue()
        load_sessions = self.p.lag_sessions - 1
        proc = ctx.Process(target=_lag_load, args=(server.port, self.c, self.e, load_sessions,
                                                   self.p.lag_list, ready, stop, results), daemon=True)
        try:
            proc.start()
            deadline = time.monotonic() + 60
            while ready.value < load_sessions:
                if time.monotonic() > deadline or not proc.is_alive():
                    raise RuntimeError(f"only {ready.value} of {load_sessions} load sessions logged in")
                time.sleep(0.05)
            probe = Conn(server.port)
            probe.login(self.c.login[0].user, self.c.login[0].password)
            _control(control, b"RESET")
            rtts = []
            end = time.perf_counter() + self.p.lag_seconds
            while time.perf_counter() < end:
                t = time.perf_counter()
                probe.send(b"NOOP")
                probe.ok("NOOP")
                rtts.append(time.perf_counter() - t)
                time.sleep(0.005)
            timer = json.loads(_control(control, b"GET"))
            probe.quit()
            stop.set()
            load = results.get(timeout=120)
            proc.join(30)
        finally:
            stop.set()
            if proc.is_alive():
                proc.kill()
            server.stop()
        if load["errors"]:
            raise BadReply(f"under load: {load['errors'][0]}")
        for site, count in timer["stall_sites"]:
            self.stall_sites[site] = self.stall_sites.get(site, 0) + count
        return {"lag_max": timer["max_ms"], "lag_p99": timer["p99_ms"], "lag_p50": timer["p50_ms"],
                "lag_ticks": timer["ticks"], "lag_over50": timer["over_50ms"],
                "lag_noop_max": max(rtts) * 1000,
                "lag_noop_p99": quantile(rtts, 0.99) * 1000,
                "lag_load_mbps": load["octets"] / load["seconds"] / 1e6}


def _control(path: Path, command: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(command + b"\r\n")
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.strip()


def _lag_load(port: int, c: corpus_mod.Corpus, e: Expected, sessions: int, with_list: bool,
              ready, stop, results) -> None:
    """The loop-lag load (a separate process, so the probe has its own interpreter):
    bulk loops, one big-RETR loop and one login+LIST+UIDL loop of the 100,000-message
    folder (without it, one more bulk loop)."""
    octets = [0]
    errors: list[str] = []
    lock = threading.Lock()

    def logged_in(first: list[bool]) -> None:
        if first[0]:
            first[0] = False
            with ready.get_lock():
                ready.value += 1

    def bulk(i: int) -> None:
        box = c.bulk[i]
        first = [True]
        while not stop.is_set():
            conn = Conn(port)
            conn.login(box.user, box.password)
            logged_in(first)
            for n, (size, body) in enumerate(zip(e.bulk_sizes, e.bulk)):
                if stop.is_set():
                    break
                conn.retr(n + 1, size, body)
                with lock:
                    octets[0] += size
            conn.quit()

    def big(_: int) -> None:
        box, first = c.big, [True]
        while not stop.is_set():
            conn = Conn(port)
            conn.login(box.user, box.password)
            logged_in(first)
            conn.retr(1, box.messages[0].wire, e.big)
            with lock:
                octets[0] += box.messages[0].wire
            conn.quit()

    def listing(_: int) -> None:
        box, first = c.listbox, [True]
        while not stop.is_set():
            conn = Conn(port)
            conn.login(box.user, box.password)
            logged_in(first)
            conn.list_all(e.list_sizes)
            conn.uidl_all(len(box.messages))
            conn.quit()

    specials = [(big, 0), (listing, 0)] if with_list else [(big, 0)]
    jobs = [(bulk, i) for i in range(sessions - len(specials))] + specials

    def wrap(i: int) -> None:
        f, arg = jobs[i]
        try:
            f(arg)
        except BaseException as ex:  # noqa: BLE001
            errors.append(f"{f.__name__}: {ex}")
            stop.set()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put({"errors": errors, "octets": octets[0], "seconds": time.perf_counter() - t0})


# -- metrics, table, targets, chart ----------------------------------------------------------

# key, label, higher is better
METRICS = [
    ("bulk_mbps", "bulk: MB/s", True),
    ("bulk_msgs", "bulk: messages/s", True),
    ("bulk_server_cpu", "bulk: server CPU (cores)", None),
    ("bulk_client_cpu", "bulk: client CPU (cores)", None),
    ("login1_rate", "login, 1 client: sessions/s", True),
    ("login1_p99", "login, 1 client: p99 ms", False),
    ("login4_rate", "login, 4 clients: sessions/s", True),
    ("login4_p99", "login, 4 clients: p99 ms", False),
    ("login16_rate", "login, 16 clients: sessions/s", True),
    ("login16_p99", "login, 16 clients: p99 ms", False),
    ("login16_server_cpu", "login, 16 clients: server CPU (cores)", None),
    ("big_mbps", "big: MB/s", True),
    ("big_ttfb", "big: time to first byte, ms", False),
    ("big_rss", "big: server RSS growth, MiB", False),
    ("big_server_cpu", "big: serving process CPU (cores)", None),
    ("list_warm_login", "list warm: login+STAT, s", False),
    ("list_warm_list", "list warm: LIST, s", False),
    ("list_warm_uidl", "list warm: UIDL, s", False),
    ("list_warm_total", "list warm: login+STAT+LIST+UIDL, s", False),
    ("list_cold_login", "list cold: login+STAT, s", False),
    ("list_cold_total", "list cold: login+STAT+LIST+UIDL, s", False),
    ("list_peak", "list: peak RSS of the serving process, MiB", False),
    ("lag_max", "loop lag: longest reactor stall (timer), ms", False),
    ("lag_p99", "loop lag: p99 timer lateness, ms", False),
    ("lag_p50", "loop lag: median timer lateness, ms", False),
    ("lag_ticks", "loop lag: 5 ms timer ticks that ran", None),
    ("lag_over50", "loop lag: ticks more than 50 ms late", False),
    ("lag_noop_max", "loop lag: longest NOOP round trip, ms", False),
    ("lag_noop_p99", "loop lag: p99 NOOP round trip, ms", False),
    ("lag_load_mbps", "loop lag: MB/s served to the 99 load sessions", True),
]
GROUP = {"bulk": "bulk", "logi": "login", "big_": "big", "list": "list", "lag_": "lag"}


def group_of(key: str) -> str:
    return GROUP[key[:4]]


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def medians(results: dict, failures: dict) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for server, metrics in results.items():
        out[server] = {}
        for key, values in metrics.items():
            if group_of(key) in failures.get(server, {}) or not values:
                continue
            out[server][key] = statistics.median(values)
    return out


def table(med: dict, failures: dict, order: list[tuple[str, str]]) -> str:
    names = [n for n, _ in order if n in med or n in failures]
    heads = ["metric"] + names
    ratio_cols = [("vmspop/dovecot", "vmspop", "dovecot"),
                  ("workers/dovecot", "vmspop-workers", "dovecot"),
                  ("vmspop/stock+nodelay", "vmspop", "stock-nodelay"),
                  ("vmspop/stock", "vmspop", "stock")]
    ratio_cols = [(h, a, b) for h, a, b in ratio_cols if a in names and b in names]
    heads += [h for h, _, _ in ratio_cols]
    rows = []
    for key, label, higher in METRICS:
        row = [label + ("" if higher is None else (" (^)" if higher else " (v)"))]
        present = False
        for n in names:
            if group_of(key) in failures.get(n, {}):
                row.append("FAIL")
                present = True
            elif key in med.get(n, {}):
                row.append(fmt(med[n][key]))
                present = True
            else:
                row.append("-")
        for _, mine, other in ratio_cols:
            a, b = med.get(mine, {}).get(key), med.get(other, {}).get(key)
            row.append(f"{a / b:.2f}x" if a is not None and b else "-")
        if present:
            rows.append(row)
    widths = [max(len(r[i]) for r in rows + [heads]) for i in range(len(heads))]
    lines = ["  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(heads))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    return "\n".join(lines)


def targets(med: dict, failures: dict) -> list[tuple[str, str, str]]:
    """Issue 5's targets: throughput for one process and for the default --workers; list,
    memory and loop lag for one process (each worker is one)."""
    out = []
    for name in ("vmspop", "vmspop-workers"):
        if name in med:
            out += _targets(med, name, throughput_only=name != "vmspop")
    return out


def _targets(med: dict, name: str, throughput_only: bool) -> list[tuple[str, str, str]]:
    v, d, s = med.get(name, {}), med.get("dovecot", {}), med.get("stock-nodelay", {})
    suffix = "" if name == "vmspop" else f" [{name}]"
    out = []

    def check(name: str, ok: bool | None, detail: str) -> None:
        out.append((name + suffix, "n/a" if ok is None else ("MET" if ok else "NOT MET"), detail))

    def ratio(key: str, other: dict, need: float, name: str, lower: bool = False) -> None:
        a, b = v.get(key), other.get(key)
        if a is None or b is None:
            check(name, None if b is None else False, "vmspop FAILED" if a is None and b else "no anchor")
            return
        r = a / b
        check(name, r <= need if lower else r >= need, f"{r:.2f}x (vmspop {fmt(a)}, anchor {fmt(b)})")

    ratio("bulk_mbps", d, 1.0, "bulk >= 1.0x Dovecot (MB/s)")
    ratio("bulk_mbps", s, 1.5, "bulk >= 1.5x stock Twisted + TCP_NODELAY (MB/s)")
    ratio("big_mbps", d, 1.2, "big >= 1.2x Dovecot (MB/s)")
    for n in (1, 4, 16):
        ratio(f"login{n}_rate", d, 1.0, f"login >= 1.0x Dovecot tuned, {n} client{'s' if n > 1 else ''}")
    if throughput_only:
        return out
    g = v.get("big_rss")
    check("big: server grows <= 2 MiB", None if g is None else g <= 2.0, f"{fmt(g)} MiB")
    ratio("list_warm_total", d, 1.0, "list warm <= Dovecot (login+STAT+LIST+UIDL)", lower=True)
    c = v.get("list_cold_total")
    check("list: first login after restart <= 1.5 s", None if c is None else c <= 1.5, f"{fmt(c)} s")
    p = v.get("list_peak")
    check("list: peak server memory <= 64 MiB", None if p is None else p <= 64, f"{fmt(p)} MiB")
    lag = v.get("lag_max")
    check("loop lag: no stall over 50 ms (100 sessions)", None if lag is None else lag <= 50,
          f"{fmt(lag)} ms (NOOP round trip max {fmt(v.get('lag_noop_max'))} ms)")
    return out


def chart(med: dict, order: list[tuple[str, str]], path: Path, title: str) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install matplotlib)"
    # title, metrics, sub-labels, absolute target (drawn as a dashed line)
    panels = [
        ("bulk: MB/s (higher is better)", ["bulk_mbps"], None, None),
        ("bulk: messages/s (higher is better)", ["bulk_msgs"], None, None),
        ("big, one ~100 MiB RETR: MB/s (higher is better)", ["big_mbps"], None, None),
        ("login: sessions/s (higher is better)", ["login1_rate", "login4_rate", "login16_rate"],
         ["1 client", "4 clients", "16 clients"], None),
        ("list warm: login+STAT+LIST+UIDL, s (lower is better)", ["list_warm_total"], None, None),
        ("list cold (first login after restart), s (lower)", ["list_cold_total"], None, 1.5),
        ("list: peak RSS of the serving process, MiB (lower)", ["list_peak"], None, 64),
        ("vmspop loop lag, 100 sessions: longest stall, ms (lower)", ["lag_max", "lag_noop_max"],
         ["reactor timer", "NOOP round trip"], 50),
    ]
    colours = {"vmspop": "#d62728", "vmspop-workers": "#ff9896", "dovecot": "#1f77b4", "dovecot-default": "#aec7e8",
               "stock": "#7f7f7f", "stock-nodelay": "#bcbd22", "ceiling": "#2ca02c"}
    fig, axes = plt.subplots(2, 4, figsize=(18, 9))
    handles = {}
    for ax, (name, keys, sub, target) in zip(axes.flat, panels):
        servers = [(n, lab) for n, lab in order if any(k in med.get(n, {}) for k in keys)]
        width = 0.8 / max(1, len(servers))
        for j, (n, lab) in enumerate(servers):
            xs = [i + j * width for i in range(len(keys))]
            ys = [med.get(n, {}).get(k, 0) for k in keys]
            bars = ax.bar(xs, ys, width, label=lab, color=colours.get(n, "#999999"))
            handles[lab] = bars
            for b, y in zip(bars, ys):
                ax.annotate(fmt(y), (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom",
                            fontsize=7, rotation=90 if len(servers) * len(keys) > 6 else 0)
        if target is not None:
            ax.axhline(target, color="black", linestyle="--", linewidth=1)
            ax.annotate(f"target {target:g}", (ax.get_xlim()[0], target), fontsize=7, va="bottom")
        ax.set_xticks([i + width * (len(servers) - 1) / 2 for i in range(len(keys))])
        ax.set_xticklabels(sub or [""] * len(keys), fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.margins(y=0.25)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
               ncol=len(handles), fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return f"chart written to {path}"


#: Other processes using more CPU than this (in cores) during a turn make it be measured again
#: (at most MAX_RETRIES turns per run of the benchmark, to bound its time).
DISTURBED = 0.33
MAX_RETRIES = 4


def foreign_cpu(mine: set[int]) -> dict[int, float]:
    """CPU seconds used so far by every process that is not ours."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in mine:
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def wait_quiet(limit: float, threshold: float = 0.10) -> tuple[float, float]:
    """Wait (up to ``limit`` seconds) until the machine is nearly idle; (waited, busy share)."""
    t = time.monotonic()
    busy = busy_share()
    while busy > threshold and time.monotonic() - t < limit:
        busy = busy_share(1.0)
    return time.monotonic() - t, busy


def busy_share(seconds: float = 0.5) -> float:
    """The machine's CPU use (0..1) over a short idle moment: other people's work."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)
    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (b1 - b0) / max(1, t1 - t0)


def source_stamp() -> dict[str, int]:
    """Modification times of vmspop's source: a shared checkout may change during a run."""
    return {str(p): p.stat().st_mtime_ns for d in ("vmspop", "twisted")
            for p in (ROOT / d).rglob("*.py")}


def machine() -> dict[str, str]:
    info = {"nproc": str(os.cpu_count()), "kernel": platform.release(),
            "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        info["memory"] = f"{int(mem) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    import twisted
    info["twisted"] = twisted.__version__
    try:
        sys.path.insert(0, str(ROOT))
        from vmspop import _version
        info["vmspop"] = _version.__version__
    except ImportError:
        pass
    if shutil.which("dovecot"):
        info["dovecot"] = subprocess.run(["dovecot", "--version"], capture_output=True,
                                         text=True).stdout.strip()
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %cd", "--date=iso"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "vmspop", "twisted"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["vmspop_commit"] = head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    info["loadavg_start"] = Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    return info


# -- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--quick", action="store_true",
                        help="short run: 1 run, 10,000-message list, 20 MiB big message, short scenarios")
    parser.add_argument("--runs", type=int, help="runs; medians are reported [3; --quick: 1]")
    parser.add_argument("--servers", default="vmspop,vmspop-workers,dovecot,dovecot-default,stock,stock-nodelay,ceiling",
                        help="comma-separated subset of the default list (vmspop is one process, "
                             "vmspop-workers the default --workers, one per core)")
    parser.add_argument("--scenarios", default="list,login,bulk,big,lag",
                        help="comma-separated subset of the default list")
    parser.add_argument("--chart", default=str(ROOT / "docs" / "performance.png"),
                        help="PNG to write [docs/performance.png]; '' for none")
    parser.add_argument("--json", help="also write every figure (all runs) to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (corpus, logs)")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="seconds the whole benchmark may spend waiting, before a server's turn, "
                             "for other processes to leave the CPUs idle [120]")
    parser.add_argument("--lag-without-list", action="store_true",
                        help="loop lag: no session on the 100,000-message folder (to separate causes)")
    parser.add_argument("--client-processes", action="store_true",
                        help="run the login and bulk clients as processes, one a session, instead of "
                             "threads of one process (see docs/performance.md, Method)")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, profile vmspop with py-spy in the scenarios run (bulk, login-16, "
                             "list-warm, big, loop lag) and print the top functions (needs py-spy in the venv)")
    args = parser.parse_args(argv)
    params = Params.quick() if args.quick else Params()
    if args.runs:
        params.runs = args.runs
    params.lag_list = not args.lag_without_list
    params.quiet_wait = args.quiet_wait
    params.client_processes = args.client_processes
    wanted = set(args.servers.split(","))
    scenarios = set(args.scenarios.split(","))
    started = time.monotonic()

    info = machine()
    info["clients"] = "processes" if params.client_processes else "threads"
    stamp = source_stamp()
    note("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    work = Path(tempfile.mkdtemp(prefix="vmspop-bench-"))
    work.chmod(0o755)  # Dovecot's auth and mail processes run as other users
    peer = srv.dovecot_peer()
    servers: list[srv.Server] = []
    try:
        t = time.monotonic()
        corpus = corpus_mod.build(work / "corpus", bulk_users=max(params.lag_sessions, params.bulk_clients),
                                  big_mib=params.big_mib, list_count=params.list_count,
                                  login_users=max(params.login_clients))
        expected = Expected(
            bulk=[corpus.wire_bytes(corpus.bulk[0], i) for i in range(len(corpus.bulk[0].messages))],
            bulk_sizes=[m.wire for m in corpus.bulk[0].messages],
            big=corpus.wire_bytes(corpus.big, 0),
            list_sizes=[m.wire for m in corpus.listbox.messages])
        corpus_written = time.time()
        note(f"corpus: {len(expected.bulk)} bulk messages ({sum(expected.bulk_sizes) / 1e6:.1f} MB, "
             f"hard-linked into {len(corpus.bulk)} users), {len(expected.big) / 2**20:.1f} MiB big message, "
             f"{len(expected.list_sizes):,} list messages; built in {time.monotonic() - t:.1f} s in {work}")

        if "vmspop" in wanted:
            servers.append(srv.Vmspop(corpus, work))
        if "vmspop-workers" in wanted:
            servers.append(srv.VmspopWorkers(corpus, work))
        if peer is None:
            print("Dovecot not installed (or dovecot-peer.sh not found): Dovecot skipped", flush=True)
        else:
            if "dovecot" in wanted:
                servers.append(srv.Dovecot(corpus, work, peer, tuned=True))
            if "dovecot-default" in wanted:
                servers.append(srv.Dovecot(corpus, work, peer, tuned=False))
        if "stock" in wanted:
            servers.append(srv.Stock(corpus, work, nodelay=False))
        if "stock-nodelay" in wanted:
            servers.append(srv.Stock(corpus, work, nodelay=True))
        if "ceiling" in wanted:
            servers.append(srv.Ceiling(corpus, work))
        order = [(s.name, s.label) for s in servers]

        bench = Bench(corpus, expected, params, work)
        results: dict[str, dict[str, list[float]]] = {s.name: {} for s in servers}
        failures: dict[str, dict[str, str]] = {s.name: {} for s in servers}
        extra: dict[str, float] = {}

        def record(server: srv.Server, group: str, f) -> None:
            if group in failures[server.name]:
                return
            try:
                for key, value in f().items():
                    results[server.name].setdefault(key, []).append(value)
            except Exception as e:  # noqa: BLE001 - a wrong answer scores nothing
                why = f"{type(e).__name__}: {e}"
                failures[server.name][group] = why
                note(f"  {server.name} {group}: FAILED: {why}")
                if not isinstance(e, BadReply):
                    note(traceback.format_exc())

        # vmspop keeps (and saves) no listing of a folder changed in the last
        # MTIME_SETTLE_SECONDS, and the corpus was being written a moment ago: let it
        # settle, as a mail folder between deliveries has, or vmspop's "first-ever open"
        # below would save nothing and its first cold run would list the folder anew.
        time.sleep(max(0.0, corpus_written + MTIME_SETTLE_SECONDS + 0.5 - time.time()))
        # Dovecot builds its index at a folder's first-ever open, vmspop its saved listing
        # (.vmspop-listing, shared by vmspop and vmspop-workers); do that once, untimed
        # except for the record, so "cold" means the first login after a restart for all.
        listing_saved = False
        for s in servers:
            if isinstance(s, srv.Vmspop) and listing_saved:
                continue
            if isinstance(s, srv.Dovecot) and not s.tuned:
                s.start()
                for box in corpus.login:
                    conn = Conn(s.port)
                    conn.login(box.user, box.password)
                    conn.quit()
                s.stop()
            elif isinstance(s, (srv.Dovecot, srv.Vmspop)):
                listing_saved = listing_saved or isinstance(s, srv.Vmspop)
                s.start()
                t = time.perf_counter()
                conn = Conn(s.port)
                conn.login(corpus.listbox.user, corpus.listbox.password)
                conn.stat(len(corpus.listbox.messages), corpus.listbox.octets)
                conn.list_all(expected.list_sizes)
                conn.uidl_all(len(expected.list_sizes))
                conn.quit()
                extra[f"{s.name}_list_index_build_s"] = time.perf_counter() - t
                for box in corpus.bulk[: params.bulk_clients] + corpus.login + [corpus.big]:
                    conn = Conn(s.port)
                    conn.login(box.user, box.password)
                    conn.quit()
                s.stop()
                note(f"{s.name}: first-ever open of the list folder (index or listing build) "
                     f"{extra[f'{s.name}_list_index_build_s']:.2f} s")

        disturbance: list[tuple[str, float]] = []
        waiting, retries = [0.0], [0]  # seconds spent waiting for quiet, turns measured again
        warm_files = [corpus.path(corpus.bulk[0], m) for m in corpus.bulk[0].messages] + \
                     [corpus.path(corpus.big, corpus.big.messages[0])]
        dovecots = [s for s in servers if isinstance(s, srv.Dovecot)]

        def ours() -> set[int]:
            mine = set(srv.tree(os.getpid()))
            for d in dovecots:
                if d.master:
                    mine.update(srv.tree(d.master))
            return mine

        def turn(label: str, body) -> None:
            """One server's scenarios, after waiting for a quiet machine.  The CPU other
            processes used meanwhile is noted; a turn they disturbed (more than a third of
            a core) is measured again, once."""
            for attempt in (1, 2):
                waited, busy = wait_quiet(max(0.0, params.quiet_wait - waiting[0]))
                waiting[0] += waited
                kept = {n: {k: len(v) for k, v in m.items()} for n, m in results.items()}
                failed = {n: dict(f) for n, f in failures.items()}
                sites = dict(bench.stall_sites)
                before, t = foreign_cpu(ours()), time.monotonic()
                body()
                elapsed = time.monotonic() - t
                used = {pid: c - before.get(pid, 0.0) for pid, c in foreign_cpu(ours()).items()}
                other = sum(max(0.0, c) for c in used.values()) / elapsed
                top = sorted(used.items(), key=lambda x: -x[1])[:3]
                note(f"  {label:16s} {elapsed:5.1f} s  (waited {waited:.0f} s for a quiet machine; "
                     f"other processes meanwhile: {other:.2f} cores)")
                if other <= DISTURBED or attempt == 2 or retries[0] >= MAX_RETRIES:
                    disturbance.append((label, other))
                    return
                retries[0] += 1
                note(f"  {label}: disturbed by other processes ("
                     + ", ".join(f"{srv.cmdline(p)[:60] or p} {c:.1f} s" for p, c in top if c > 0)
                     + "); measuring it again")
                for n, m in results.items():
                    for k, v in m.items():
                        del v[kept.get(n, {}).get(k, 0):]
                for n in failures:
                    failures[n] = failed.get(n, {})
                bench.stall_sites = sites

        def interleaved(group: str, measure) -> None:
            """One scenario of login or bulk for every server taking part (all running):
            params.slices slices each, the servers taking turns, the first of each round
            rotating so that none is always measured after the same one."""
            taking_part = [s for s in servers if group == "login" or s.name != "dovecot-default"]
            for k in range(params.slices):
                for s in taking_part[k % len(taking_part):] + taking_part[:k % len(taking_part)]:
                    record(s, group, lambda s=s: measure(s))

        def warm_up(s: srv.Server) -> None:
            """A login for each user of the interleaved scenarios (untimed), so that the
            first slice does not pay for a server's first sessions."""
            for box in corpus.login + corpus.bulk[: params.bulk_clients]:
                conn = Conn(s.port)
                conn.login(box.user, box.password)
                conn.quit()

        for run in range(params.runs):
            note(f"run {run + 1}/{params.runs} ({time.monotonic() - started:.0f} s elapsed)")
            for s in servers:
                if s.name == "dovecot-default" or not scenarios & {"list", "big"}:
                    continue  # it takes part in the login scenario only

                def body(s: srv.Server = s) -> None:
                    s.start()
                    try:
                        if "list" in scenarios:
                            if not isinstance(s, srv.Ceiling):
                                record(s, "list", lambda: bench.list(s, cold=True))
                                for f in warm_files:  # the cold drop emptied the cache for all
                                    f.read_bytes()
                            record(s, "list", lambda: bench.list(s, cold=False))
                        if "big" in scenarios:
                            record(s, "big", lambda: bench.big(s))
                    finally:
                        s.stop()
                    short = {k: fmt(v[-1]) for k, v in results[s.name].items()
                             if k.startswith(("list", "big")) and k.endswith(("mbps", "total")) and v}
                    note(f"  {s.name:16s} {short}")

                turn(s.name, body)
            if scenarios & {"login", "bulk"}:
                def paired_body() -> None:
                    for s in servers:
                        s.start()
                    try:
                        for s in servers:
                            warm_up(s)
                        if "login" in scenarios:
                            for n in params.login_clients:
                                interleaved("login", lambda s, n=n: bench.login(
                                    s, n, params.login_seconds / params.slices))
                        if "bulk" in scenarios:
                            interleaved("bulk", lambda s: bench.bulk(
                                s, params.bulk_seconds / params.slices))
                    finally:
                        for s in servers:
                            s.stop()
                    for s in servers:
                        short = {k: fmt(statistics.median(v[-params.slices:]))
                                 for k, v in results[s.name].items()
                                 if k.endswith(("mbps", "rate")) and v and not k.startswith("big")}
                        note(f"  {s.name:16s} {short}")

                turn("login and bulk", paired_body)
            if "lag" in scenarios and "vmspop" in wanted:
                vm = next(s for s in servers if s.name == "vmspop")

                def lag_body(vm: srv.Server = vm) -> None:
                    record(vm, "lag", bench.lag)
                    note(f"  vmspop lag       "
                         f"{ {k: fmt(v[-1]) for k, v in results['vmspop'].items() if k.startswith('lag_') and v} }")

                turn("vmspop lag", lag_body)

        med = medians(results, failures)
        changed = sorted(k for k, v in source_stamp().items() if stamp.get(k) != v)
        changed += sorted(k for k in stamp if not Path(k).exists())
        info["loadavg_end"] = str(Path("/proc/loadavg").read_text().split(" ", 3)[:3])
        print()
        print(f"vmspop benchmark: medians of {params.runs} run{'s' if params.runs > 1 else ''}"
              f" (login and bulk: of {params.runs} x {params.slices} interleaved slices)"
              f"{' (--quick)' if args.quick else ''}; (^) higher is better, (v) lower is better")
        print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
        print(f"corpus: bulk {len(expected.bulk)} messages / {sum(expected.bulk_sizes) / 1e6:.1f} MB per "
              f"mailbox, {params.bulk_clients} clients for {params.bulk_seconds:g} s; big "
              f"{len(expected.big) / 2**20:.1f} MiB; list {len(expected.list_sizes):,} messages; "
              f"login {params.login_seconds:g} s per concurrency; lag {params.lag_sessions} sessions "
              f"for {params.lag_seconds:g} s")
        print(f"waited {waiting[0]:.0f} s in all for a quiet machine; {retries[0]} turn(s) measured "
              f"again because other processes disturbed them")
        worst = max(disturbance, key=lambda x: x[1]) if disturbance else ("-", 0.0)
        print(f"other processes on the machine used {statistics.mean(x[1] for x in disturbance):.2f} "
              f"cores on average during the measurements (most: {worst[1]:.2f} during {worst[0]})"
              if disturbance else "")
        if not bench.can_drop:
            print("note: the page cache could not be dropped (not root): 'cold' is only the first "
                  "login after a restart")
        if changed:
            print("WARNING: vmspop's source changed during the run, so runs measured different code: "
                  + ", ".join(Path(c).relative_to(ROOT).as_posix() for c in changed))
        print()
        print(table(med, failures, order))
        for k, v in extra.items():
            print(f"{k}: {v:.2f}")
        for name, why in ((n, w) for n, fs in failures.items() for w in fs.items()):
            print(f"FAILED: {name} {why[0]}: {why[1]}")
        if bench.stall_sites:
            print("vmspop loop lag: where the reactor thread was while a tick was over 50 ms late "
                  "(samples every 10 ms, all runs; innermost vmspop frames first; a frame at a system "
                  "call - epoll, recv, close - means the reactor was waiting to take the GIL back):")
            for site, count in sorted(bench.stall_sites.items(), key=lambda x: -x[1])[:8]:
                print(f"  {count:4d} x {site}")
        ceiling = med.get("ceiling", {})
        for key in ("bulk_mbps", "big_mbps"):
            if key in ceiling:
                share = ", ".join(f"{n} {med[n][key] / ceiling[key] * 100:.0f} %" for n, _ in order
                                  if n != "ceiling" and key in med.get(n, {}))
                print(f"{key} as a share of the loopback ceiling ({fmt(ceiling[key])}): {share}")
        print()
        print("targets (issue 5; ratios from this run):")
        for name, state, detail in targets(med, failures):
            print(f"  {state:8s} {name}: {detail}")
        if args.chart:
            print(chart(med, order, Path(args.chart),
                        f"vmspop vs Dovecot, stock Twisted and the loopback ceiling on 127.0.0.1 - "
                        f"median of {params.runs} run{'s' if params.runs > 1 else ''}, "
                        f"{info.get('nproc')} cores, {info.get('cpu', '')}, Python {info['python']}"))
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "params": params.__dict__,
                                                   "disturbance": disturbance,
                                                   "results": results, "failures": failures,
                                                   "medians": med, "extra": extra,
                                                   "stall_sites": bench.stall_sites}, indent=1))
        if args.profile:
            profile(corpus, expected, params, work, scenarios)
        print(f"total time {time.monotonic() - started:.0f} s")
    finally:
        for s in servers:
            s.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


# -- profiling --------------------------------------------------------------------------------

def profile(corpus, expected, params, work: Path, scenarios: list[str]) -> None:
    """py-spy (launch mode: attaching is not permitted in every container) on vmspop, in the
    scenarios that were run."""
    spy = Path(sys.executable).with_name("py-spy")
    found = shutil.which("py-spy")
    if not spy.exists() and found:
        spy = Path(found)
    if not spy.exists():
        print("profile skipped: py-spy not installed (pip install py-spy)")
        return
    bench = Bench(corpus, expected, params, work)

    class Spied(srv.Vmspop):
        output = work / "profile.txt"

        def command(self) -> list[str]:
            return [str(spy), "record", "--rate", "250", "--format", "raw", "--threads", "--gil",
                    "--output", str(self.output), "--"] + super().command()

        def stop(self) -> None:
            if self.proc is None:
                return
            for p in srv.tree(self.proc.pid):  # twistd under py-spy: stop it, py-spy then writes
                if p != self.proc.pid:
                    try:
                        os.kill(p, 15)
                    except OSError:
                        pass
            self.proc.wait(120)
            self.proc = None

    runs = [("bulk", "bulk", lambda s: bench.bulk(s, params.bulk_seconds)),
            ("login", "login, 16 clients", lambda s: bench.login(s, 16, params.login_seconds)),
            ("list", "list warm, 3 sessions", lambda s: [bench.list(s, cold=False) for _ in range(3)]),
            ("big", "big", lambda s: bench.big(s)),
            ("lag", "loop lag", None)]
    for scenario, label, run in runs:
        if scenario not in scenarios:
            continue
        Spied.output = work / f"profile-{label.split(',')[0].replace(' ', '-')}.txt"
        if run is None:
            bench.lag(Spied)
        else:
            server = Spied(corpus, work)
            server.start()
            try:
                run(server)
            finally:
                server.stop()
        print()
        print(f"py-spy profile of vmspop, scenario {label} (250 samples/s of the thread holding the GIL):")
        print(summarise(Spied.output))


def summarise(path: Path, top: int = 15) -> str:
    """Top functions of a py-spy raw profile, serving time only (startup is left out)."""
    if not path.exists():
        return "  (no profile written)"
    import re
    samples: list[tuple[str, list[str], int]] = []
    names: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        m = re.match(r"thread \((\w+)\)(?:: (.*))?", frames[0])
        tid = frames[0]
        if m:
            tid = m.group(1)
            if m.group(2):
                names[tid] = m.group(2)
            frames = frames[1:]
        if not any("mainLoop" in f or "_threadworker" in f for f in frames):
            continue  # start-up and shut-down
        # "func (path/file.py:123)" -> "func (file.py)": one row per function
        frames = [re.sub(r" \((?:.*/)?([^/]+?):\d+\)$", r" (\1)", f) for f in frames]
        samples.append((tid, frames, int(count)))
    total = sum(n for _, _, n in samples)
    if not total:
        return "  (no samples while serving)"
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    threads: dict[str, int] = {}
    for tid, frames, n in samples:
        kind = names.get(tid, tid)
        kind = "reactor thread" if kind == "MainThread" else (
            "thread pool" if kind.startswith("PoolThread") else kind)
        threads[kind] = threads.get(kind, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
    lines = [f"  {total} samples while serving; GIL held by: " + ", ".join(
        f"{k} {v * 100 / total:.0f} %" for k, v in sorted(threads.items(), key=lambda x: -x[1]))]
    lines.append("  self time (function):")
    for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]:
        lines.append(f"    {n * 100 / total:5.1f} %  {f}")
    lines.append("  inclusive (vmspop functions):")
    picked = [(f, n) for f, n in sorted(inclusive.items(), key=lambda x: -x[1])
              if re.search(r"\((store|mailbox|protocol|transfer|wire|auth|passwd|hashing|limits|"
                           r"events|server|threads|audit)\.py\)$", f)]
    for f, n in picked[:top]:
        lines.append(f"    {n * 100 / total:5.1f} %  {f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
