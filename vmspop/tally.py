"""Counting POP3 sessions for ``--max-sessions`` and ``--max-sessions-per-ip``.

A single process counts in memory (:class:`LocalTally`).  With ``--workers N`` the
connections of one server are spread over N processes, and an operator who sets
``--max-sessions 100`` still means 100 in all, not 100 per process, nor 100/N per
process (which would refuse clients while another worker sits idle).  So the
workers count in one table in shared memory (:class:`SharedTally`): a small file
(a memfd on Linux) that the supervisor creates and every worker maps.

The table keeps one column per worker.  When a worker dies, the kernel has closed
its connections, and the supervisor zeroes its column (:meth:`SharedTally.forget`),
so a crashed worker never leaks session slots.  The table also says which workers
listen, for :mod:`vmspop.balance`, which spreads the connections evenly over them.
Updates take a POSIX record lock (``lockf``) on the file: it excludes other
processes, is dropped by the kernel if its holder dies, and is held for a few
microseconds of arithmetic.  Only the reactor thread of each process counts, so
threads never contend for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
from collections import Counter
from functools import lru_cache
from typing import Protocol

__all__ = ["LocalTally", "REFUSED_ADDRESS", "REFUSED_TOTAL", "SessionTally", "SharedTally"]

#: The refusal reasons, as logged (``connection refused: ... reason=...``).
REFUSED_TOTAL = "too-many-sessions"
REFUSED_ADDRESS = "too-many-sessions-from-address"

_MAGIC = b"VPT1"
_HEADER = struct.Struct("<4sII")  # magic, workers, slots
_COUNT = struct.Struct("<I")
_KEY_SIZE = 16
_EMPTY = bytes(_KEY_SIZE)
#: The address table has twice as many slots as sessions can be counted (each session
#: counts under at most one address), so it never fills and probes stay short...
_LOAD_FACTOR_INVERSE = 2
_MIN_SLOTS = 64
#: ...up to this many: more client addresses connected at once than one host has
#: descriptors for is not a real load, and a huge --max-sessions must not make a huge
#: table (a worker's death walks all of it).  Should it ever fill, new addresses are
#: refused with REFUSED_TOTAL, never miscounted.
MAX_SLOTS = 1 << 18


class SessionTally(Protocol):
    """Where :class:`~vmspop.server.POP3Factory` counts its sessions.

    ``key`` is a client address as :func:`vmspop.limits.address_key` gives it, or None
    while it is not known (behind a PROXY-protocol listener, before the header).
    """

    def add(self, key: str | None, max_total: int, max_per_key: int) -> str | None:
        """Count a new session in, or return why not (:data:`REFUSED_TOTAL`, :data:`REFUSED_ADDRESS`)."""

    def rekey(self, old: str | None, new: str | None, max_per_key: int) -> str | None:
        """A counted session's address became known: move it from ``old`` to ``new``,
        or return :data:`REFUSED_ADDRESS` and change nothing."""

    def remove(self, key: str | None) -> None:
        """Count a session out."""

    def total(self) -> int:
        """Sessions counted now, in every process that shares this tally."""

    def per_key(self, key: str) -> int:
        """Sessions counted now under ``key``, in every process."""


class LocalTally:
    """The tally of a single process: two counters in memory."""

    def __init__(self) -> None:
        self._total = 0
        self._per_key: Counter[str] = Counter()

    def add(self, key: str | None, max_total: int, max_per_key: int) -> str | None:
        """See :meth:`SessionTally.add`."""
        if self._total >= max_total:
            return REFUSED_TOTAL
        if key is not None and self._per_key[key] >= max_per_key:
            return REFUSED_ADDRESS
        self._total += 1
        if key is not None:
            self._per_key[key] += 1
        return None

    def rekey(self, old: str | None, new: str | None, max_per_key: int) -> str | None:
        """See :meth:`SessionTally.rekey`."""
        if new is not None and self._per_key[new] >= max_per_key:
            return REFUSED_ADDRESS
        if new is not None:
            self._per_key[new] += 1
        self._drop(old)
        return None

    def remove(self, key: str | None) -> None:
        """See :meth:`SessionTally.remove`."""
        self._total = max(0, self._total - 1)
        self._drop(key)

    def _drop(self, key: str | None) -> None:
        if key is not None and self._per_key[key] > 0:
            self._per_key[key] -= 1
            if not self._per_key[key]:
                del self._per_key[key]

    def total(self) -> int:
        """See :meth:`SessionTally.total`."""
        return self._total

    def per_key(self, key: str) -> int:
        """See :meth:`SessionTally.per_key`."""
        return self._per_key.get(key, 0)


@lru_cache(maxsize=1024)  # a session's address is hashed at its start and again at its end
def _digest(key: str) -> bytes:
    # 128 bits: two addresses sharing a slot by accident is not a real possibility.
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=_KEY_SIZE).digest()
    return digest if digest != _EMPTY else digest[:-1] + b"\x01"


class _Locked:
    """The tally's lock, for ``with`` blocks (a class, not a generator: a worker takes
    it twice a session, and ``contextlib.contextmanager`` tripled its cost)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: object) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)


class SharedTally:
    """Session counts shared by the worker processes of one server.

    The file holds a header, one total per worker, one "listening" flag per worker,
    and an open-addressing table of client addresses (a 16-byte digest and one count
    per worker).  Build it with :meth:`create` in the supervisor; each worker maps
    the inherited descriptor with ``SharedTally(fd, worker=i)``.

    Args:
        fd: the shared file's descriptor.
        worker: this process's column, 0-based; None in the supervisor, which only
            calls :meth:`forget`, :meth:`total` and :meth:`per_key`.
    """

    def __init__(self, fd: int, worker: int | None = None) -> None:
        self.fd = fd
        self._lock = _Locked(fd)
        self._map = mmap.mmap(fd, os.fstat(fd).st_size)
        magic, self.workers, self.slots = _HEADER.unpack_from(self._map, 0)
        if magic != _MAGIC:
            raise ValueError("not a vmspop session tally")
        if worker is not None and not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} out of range")
        self.worker = worker
        self._counts = struct.Struct(f"<{self.workers}I")
        self._totals_at = _HEADER.size
        self._listening_at = self._totals_at + self._counts.size
        self._slot_size = _KEY_SIZE + self._counts.size
        self._slots_at = self._listening_at + self._counts.size
        self._mask = self.slots - 1

    @classmethod
    def create(cls, workers: int, max_sessions: int) -> SharedTally:
        """A new, empty tally for ``workers`` processes; its descriptor is not inherited
        by children unless passed explicitly (``childFDs``)."""
        slots = _MIN_SLOTS
        while slots < _LOAD_FACTOR_INVERSE * max_sessions and slots < MAX_SLOTS:
            slots *= 2
        size = _HEADER.size + 2 * 4 * workers + slots * (_KEY_SIZE + 4 * workers)
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("vmspop-sessions", os.MFD_CLOEXEC)
        else:  # other Unixes: an unlinked temporary file serves the same purpose
            fd, path = tempfile.mkstemp(prefix="vmspop-sessions-")
            os.unlink(path)
        os.ftruncate(fd, size)
        os.pwrite(fd, _HEADER.pack(_MAGIC, workers, slots), 0)
        return cls(fd)

    def close(self) -> None:
        """Unmap the table and close the descriptor."""
        self._map.close()
        os.close(self.fd)

    # -- the table ----------------------------------------------------------------------

    def _slot(self, index: int) -> int:
        return self._slots_at + index * self._slot_size

    def _key(self, index: int) -> bytes:
        at = self._slot(index)
        return self._map[at:at + _KEY_SIZE]

    def _home(self, digest: bytes) -> int:
        return int.from_bytes(digest[:8], "little") & self._mask

    def _find(self, digest: bytes) -> tuple[int, bool]:
        """The slot holding ``digest``, or the empty slot where it would go; -1 if full."""
        index = self._home(digest)
        for _ in range(self.slots):
            key = self._key(index)
            if key == digest:
                return index, True
            if key == _EMPTY:
                return index, False
            index = (index + 1) & self._mask
        return -1, False

    def _sum(self, index: int) -> int:
        return sum(self._counts.unpack_from(self._map, self._slot(index) + _KEY_SIZE))

    def _bump(self, at: int, delta: int) -> None:
        """Add ``delta`` to this worker's count at byte offset ``at`` (never below 0)."""
        assert self.worker is not None, "only a worker counts sessions"
        at += 4 * self.worker
        (value,) = _COUNT.unpack_from(self._map, at)
        _COUNT.pack_into(self._map, at, max(0, value + delta))

    def _claim(self, key: str, max_per_key: int) -> str | None:
        digest = _digest(key)
        index, found = self._find(digest)
        if found and self._sum(index) >= max_per_key:
            return REFUSED_ADDRESS
        if index < 0:
            return REFUSED_TOTAL  # cannot happen with the table's size; refuse, never corrupt
        if not found:
            at = self._slot(index)
            self._map[at:at + _KEY_SIZE] = digest
        self._bump(self._slot(index) + _KEY_SIZE, +1)
        return None

    def _drop(self, key: str | None) -> None:
        if key is None:
            return
        index, found = self._find(_digest(key))
        if not found:
            return
        self._bump(self._slot(index) + _KEY_SIZE, -1)
        if self._sum(index) == 0:
            self._delete(index)

    def _delete(self, hole: int) -> None:
        """Empty a slot, moving later entries of the probe chain back (no tombstones)."""
        index = hole
        while True:
            index = (index + 1) & self._mask
            key = self._key(index)
            if key == _EMPTY:
                break
            home = self._home(key)
            # The entry stays if its home lies cyclically in (hole, index].
            if (hole < home <= index) if hole <= index else (home > hole or home <= index):
                continue
            src, dst = self._slot(index), self._slot(hole)
            self._map[dst:dst + self._slot_size] = self._map[src:src + self._slot_size]
            hole = index
        at = self._slot(hole)
        self._map[at:at + self._slot_size] = bytes(self._slot_size)

    # -- SessionTally -------------------------------------------------------------------

    def add(self, key: str | None, max_total: int, max_per_key: int) -> str | None:
        """See :meth:`SessionTally.add`."""
        with self._lock:
            if self._total() >= max_total:
                return REFUSED_TOTAL
            if key is not None:
                refused = self._claim(key, max_per_key)
                if refused is not None:
                    return refused
            self._bump(self._totals_at, +1)
        return None

    def rekey(self, old: str | None, new: str | None, max_per_key: int) -> str | None:
        """See :meth:`SessionTally.rekey`."""
        with self._lock:
            if new is not None:
                refused = self._claim(new, max_per_key)
                if refused is not None:
                    return refused
            self._drop(old)
        return None

    def remove(self, key: str | None) -> None:
        """See :meth:`SessionTally.remove`."""
        with self._lock:
            self._bump(self._totals_at, -1)
            self._drop(key)

    def _total(self) -> int:
        return sum(self._counts.unpack_from(self._map, self._totals_at))

    def total(self) -> int:
        """See :meth:`SessionTally.total`."""
        with self._lock:
            return self._total()

    def per_key(self, key: str) -> int:
        """See :meth:`SessionTally.per_key`."""
        with self._lock:
            index, found = self._find(_digest(key))
            return self._sum(index) if found else 0

    def set_listening(self, listening: bool) -> None:
        """Say whether this worker listens (False once it drains)."""
        assert self.worker is not None, "only a worker listens"
        _COUNT.pack_into(self._map, self._listening_at + 4 * self.worker, int(listening))

    def busier(self, margin: int = 0) -> bool:
        """True if this worker has more than ``margin`` sessions more than another worker
        that listens.

        Read without the lock: a worker that balances on a count a moment old only
        balances a little less well.
        """
        assert self.worker is not None, "only a worker compares"
        totals = self._counts.unpack_from(self._map, self._totals_at)
        listening = self._counts.unpack_from(self._map, self._listening_at)
        mine = totals[self.worker]
        return any(listening[w] and totals[w] + margin < mine
                   for w in range(self.workers) if w != self.worker)

    def forget(self, worker: int) -> None:
        """Zero the counts of a worker that has died (its connections died with it), and
        mark it as not listening."""
        with self._lock:
            totals = list(self._counts.unpack_from(self._map, self._totals_at))
            totals[worker] = 0
            self._counts.pack_into(self._map, self._totals_at, *totals)
            _COUNT.pack_into(self._map, self._listening_at + 4 * worker, 0)
            kept: list[tuple[bytes, list[int]]] = []
            changed = False
            for index in range(self.slots):
                key = self._key(index)
                if key == _EMPTY:
                    continue
                counts = list(self._counts.unpack_from(self._map, self._slot(index) + _KEY_SIZE))
                changed = changed or counts[worker] != 0
                counts[worker] = 0
                if any(counts):
                    kept.append((key, counts))
            if not changed:
                return
            # Rebuilt rather than edited in place: simpler than deleting during the walk.
            start = self._slots_at
            self._map[start:start + self.slots * self._slot_size] = bytes(self.slots * self._slot_size)
            for key, counts in kept:
                index, _ = self._find(key)
                at = self._slot(index)
                self._map[at:at + _KEY_SIZE] = key
                self._counts.pack_into(self._map, at + _KEY_SIZE, *counts)
