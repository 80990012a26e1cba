"""Compact listings of one Maildir folder: what a session's snapshot is made of.

A folder of 100,000 messages must not cost 100,000 Python objects at every login
(docs/performance.md measured about 1 KB and 30 µs per message that way).  A
:class:`Listing` keeps the file names in one ``bytes`` blob, the wire sizes in an
``array`` and each UIDL as two numbers in two more, about 85 octets a message; a
:class:`~vmspop.names.StoredMessage` is made only for the message a command names,
and a UIDL's text only when one is asked for.  Listings are immutable once built,
so one can serve several sessions and be replaced under them, and they can be
saved to a file (:meth:`Listing.save`) that another process loads in a few ms.

:func:`build_listing` runs in a pool thread (it reads directories and hashes every
name for its UIDL); everything else is cheap enough for the reactor thread.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import sys
import zlib
from array import array
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, overload

from vmspop.names import ARRIVAL, StoredMessage, arrival_of, format_uid_tail, make_uid, parse_name, uid_parts

__all__ = ["Listing", "build_listing"]

# A name vmspop can take at its word without opening the file: "<sec>.<...M<usec>...>,S=n,W=n"
# and any ":2,flags".  The base has no ",", as vmspop's, Dovecot's and Postfix's never do;
# anything else goes the slow way (parse_name, and measuring the file if need be), which
# gives the same answer for these names (tests/test_listing.py checks that).
_FAST = re.compile(rb"((\d{1,12})\.(?:[^.,:/]*?M(\d{1,6}))?[^,:/]*),S=(\d+),W=(\d+)(?::.*)?\Z")
#: File names as bytes are the UTF-8 (surrogateescape) that make_uid hashes: true
#: wherever Python runs in UTF-8 mode or a UTF-8 locale; otherwise names are decoded.
_UTF8_NAMES = os.fsencode("\udcff\u00e9") == "\udcff\u00e9".encode("utf-8", "surrogateescape")
#: First line of a saved listing (Listing.save); a new layout gets a new number.
_FILE_MAGIC = b"vmspop folder listing 1\n"
#: A saved listing's header line is at most this long (100 problem lines fit).
_MAX_HEADER = 1 << 20
#: Between names in the blob: a file name cannot contain NUL.
_SEP = b"\0"
#: Messages sorted at a time before merging: bounds the sort's memory (about 45 octets each).
SORT_SLICE = 16_384
#: In the UIDL cache: not computed yet (days since 1970; this one is in 2149).
_NOT_YET = 0xFFFF


class Listing(Sequence[StoredMessage]):
    """The messages of one folder, oldest arrival first, as they were when it was built.

    Indexing gives a :class:`~vmspop.names.StoredMessage`; the cheaper
    :meth:`path`, :attr:`wire` and :meth:`uid` answer a session's commands without one.

    Args:
        user: the owner, whose name is part of every UIDL.
        folder: the Maildir (``.../NEWMAIL``), as bytes.
        blob: the names, each ``new/<name>`` or ``cur/<name>``, each ended by NUL.
        starts: where each message's name starts in ``blob``, in message order.
        wire: each message's size on the wire, in message order.
    """

    def __init__(self, user: str, folder: bytes, blob: bytes | bytearray, starts: array,
                 wire: array) -> None:
        self.user = user
        self._folder = folder + b"/"
        self._blob = blob
        self._starts = starts
        #: Wire octets (CRLF line ends, before byte-stuffing) of message i.
        self.wire = wire
        #: Sum of :attr:`wire`.
        self.total_wire = sum(wire)
        self._uid_days: array | None = None  # set by build_listing, or filled as asked for
        self._uid_rest = array("Q")
        self._upper = user.upper() + "_"
        #: True when the files are on a local file system (set by MailStore.scan), where
        #: a message in memory may be read on the reactor thread (vmspop.cached).
        self.local = False

    @classmethod
    def empty(cls, user: str, folder: bytes) -> Listing:
        """A listing with no message."""
        return cls(user, folder, b"", array("I"), array("q"))

    def __len__(self) -> int:
        return len(self._starts)

    def head(self, limit: int) -> Listing:
        """The oldest ``limit`` messages (``--message-maximum``); sharing the names."""
        if not 0 < limit < len(self):
            return self
        head = Listing(self.user, self._folder[:-1], self._blob, self._starts[:limit], self.wire[:limit])
        if self._uid_days is not None:
            head._uid_days, head._uid_rest = self._uid_days[:limit], self._uid_rest[:limit]
        head.local = self.local
        return head

    def name(self, index: int) -> bytes:
        """``new/<file name>`` or ``cur/<file name>`` of message ``index``."""
        start = self._starts[index]
        return bytes(self._blob[start:self._blob.index(_SEP, start)])

    def path(self, index: int) -> str:
        """The full path of message ``index``'s file."""
        return os.fsdecode(self.raw_path(index))

    def raw_path(self, index: int) -> bytes:
        """:meth:`path` as the file system has it (what os calls take without a conversion)."""
        return self._folder + self.name(index)

    def uid(self, index: int) -> str:
        """The UIDL of message ``index`` (computed once, then kept with the listing)."""
        if self._uid_days is None:
            # 10 octets a message where the text would take 32: kept for every later UIDL.
            self._uid_days = array("H", [_NOT_YET]) * len(self)
            self._uid_rest = array("Q", bytes(8 * len(self)))
        days = self._uid_days[index]
        if days != _NOT_YET:
            return self._upper + format_uid_tail(days, self._uid_rest[index])
        start = self._starts[index]
        match = _FAST.match(self._blob, start + 4, self._blob.index(_SEP, start)) if _UTF8_NAMES else None
        if match is None:
            return self[index].uid
        # The base and arrival as parse_name and arrival_of read them, in a third of the time.
        usec = match[3]
        days, rest = uid_parts(int(match[2]) + (int(usec) / 1e6 if usec else 0.0), match[1])
        if days < _NOT_YET:
            self._uid_days[index] = days
            self._uid_rest[index] = rest
        return self._upper + format_uid_tail(days, rest)

    def save(self, f: BinaryIO, stamp: object, problems: list[str]) -> None:
        """Write the listing for :meth:`load`; ``stamp`` (JSON) names the state of the
        folder it describes, ``problems`` what building it skipped (the first 100 kept).
        The file is a cache: one that cannot be loaded is built again."""
        body = [memoryview(part) for part in (self._blob, self._starts, self.wire)]
        if self._uid_days is not None:
            body += [memoryview(self._uid_days), memoryview(self._uid_rest)]
        header = json.dumps({"stamp": stamp, "count": len(self), "blob": len(self._blob),
                             "wire": self.wire.typecode, "byteorder": sys.byteorder,
                             "uids": self._uid_days is not None, "crc32": _crc32(body),
                             "problems": problems[:100]})
        f.write(_FILE_MAGIC + header.encode("ascii") + b"\n")
        for part in body:
            f.write(part)

    @classmethod
    def load(cls, user: str, maildir: bytes, f: BinaryIO,
             stamp: object) -> tuple[Listing, list[str]] | None:
        """The listing and problems :meth:`save` wrote for this ``stamp``, or None (another
        state of the folder, another machine's byte order, or a damaged or truncated file)."""
        if f.readline(len(_FILE_MAGIC) + 1) != _FILE_MAGIC:
            return None
        try:
            header = json.loads(f.readline(_MAX_HEADER))
            count, length, typecode = int(header["count"]), int(header["blob"]), header["wire"]
            problems = [str(line) for line in header["problems"]]
            if (header["stamp"] != stamp or header["byteorder"] != sys.byteorder
                    or typecode not in ("I", "q") or not 0 <= count <= length):
                return None
            blob = f.read(length)
            starts, wire = array("I"), array(typecode)
            uid_days, uid_rest = array("H"), array("Q")
            arrays = (starts, wire, uid_days, uid_rest) if header["uids"] else (starts, wire)
            for part in arrays:
                part.frombytes(f.read(count * part.itemsize))
        except (ValueError, KeyError, TypeError):
            return None
        if (f.read(1) or len(blob) != length or any(len(part) != count for part in arrays)
                or _crc32([memoryview(part) for part in (blob, *arrays)]) != header["crc32"]):
            return None
        # Every name is "new/..." or "cur/..." with no other "/", ended by NUL: nothing in
        # the file can name a path outside the folder.
        if count and (blob.count(_SEP) != count or blob.count(b"/") != count
                      or not blob.endswith(_SEP) or max(starts) >= length
                      or blob.startswith((b"new/", b"cur/")) + blob.count(_SEP + b"new/")
                      + blob.count(_SEP + b"cur/") != count):
            return None
        listing = cls(user, maildir, blob, starts, wire)
        if header["uids"]:
            listing._uid_days, listing._uid_rest = uid_days, uid_rest
        return listing, problems

    @overload
    def __getitem__(self, index: int) -> StoredMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[StoredMessage]: ...

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("message index out of range")
        name = os.fsdecode(self.name(index)[4:])
        parts = parse_name(name)
        assert parts is not None, name  # only parsable names get into a listing
        base, fields, _ = parts
        arrival = arrival_of(base)
        assert arrival is not None, name
        return StoredMessage(self.path(index), base, arrival, int(fields["S"]), int(fields["W"]),
                             make_uid(self.user, arrival, base))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Listing, list)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Listing of {os.fsdecode(self._folder)}: {len(self)} messages>"


Describe = Callable[[str, str], "StoredMessage | None"]


def build_listing(user: str, maildir: bytes, describe: Describe, problems: list[str],
                  subdirs: tuple[str, ...] = ("new", "cur")) -> Listing:
    """List a folder (blocking: run it in a thread).

    Args:
        user: the owner.
        maildir: the folder's directory, as bytes.
        describe: for a name vmspop cannot read at a glance, ``describe(directory,
            name)`` gives its :class:`StoredMessage` (measuring the file and renaming
            it to carry its sizes) or None if it is not a message name; it may raise
            OSError (FileNotFoundError: gone meanwhile).
        problems: receives one line per entry that is skipped.
        subdirs: the sub-directories that hold messages, already checked not to be links.
    """
    blob = bytearray()
    starts = array("I")
    wire = array("q")
    arrivals = array("q")  # microseconds since the epoch: the sort key
    # The UIDLs' two numbers (uid_parts), computed here, in the pool thread, so that the
    # saved listing carries them and no process has to compute them on its reactor.
    uid_days, uid_rest = array("H"), array("Q")
    for sub in subdirs:
        directory = maildir + b"/" + sub.encode()
        prefix = sub.encode() + b"/"
        try:
            entries = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                name = entry.name
                if name.startswith(b"."):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        problems.append(f"skipped {os.fsdecode(entry.path)}: not a regular file")
                        continue
                    match = _FAST.match(name)
                    if match is not None and _UTF8_NAMES:
                        base, sec, usec, size = match.group(1, 2, 3, 5)
                        micros = int(sec) * 1_000_000 + (int(usec) if usec else 0)
                        days, rest = uid_parts(int(sec) + (int(usec) / 1e6 if usec else 0.0), base)
                    else:
                        message = describe(os.fsdecode(directory), os.fsdecode(name))
                        if message is None:
                            problems.append(f"skipped {os.fsdecode(entry.path)}: "
                                            "not a Maildir message name")
                            continue
                        name = os.fsencode(os.path.basename(message.path))
                        micros, size = _micros(message.base), message.wire
                        days, rest = uid_parts(message.arrival,
                                               message.base.encode("utf-8", "surrogateescape"))
                except FileNotFoundError:
                    continue  # removed by another agent since the listing
                except OSError as e:
                    problems.append(f"skipped {os.fsdecode(entry.path)}: {e.strerror or e}")
                    continue
                starts.append(len(blob))
                blob += prefix
                blob += name
                blob += _SEP
                wire.append(int(size))
                arrivals.append(micros)
                uid_days.append(min(days, _NOT_YET))  # after 2149: computed when asked for
                uid_rest.append(rest)
    order = _oldest_first(blob, starts, arrivals, maildir, problems)
    del arrivals
    sizes = array("I" if max(wire, default=0) < 1 << 32 else "q", (wire[i] for i in order))
    del wire
    listing = Listing(user, maildir, blob, array("I", (starts[i] for i in order)), sizes)
    listing._uid_days = array("H", (uid_days[i] for i in order))
    listing._uid_rest = array("Q", (uid_rest[i] for i in order))
    return listing


def _micros(base: str) -> int:
    match = ARRIVAL.match(base)
    assert match is not None, base  # describe() gives every message an arrival time
    return int(match["sec"]) * 1_000_000 + int(match["usec"] or 0)


def _oldest_first(blob: bytearray, starts: array, arrivals: array, maildir: bytes,
                  problems: list[str]) -> array:
    """Indices in (arrival, base) order, leaving out second files of one base."""
    count = len(starts)
    # Sorted in slices, each as one list of ints with arrival and index packed, then
    # merged: sorting all 100,000 at once held 4.4 MB of ints at the peak.
    shift = count.bit_length()
    mask = (1 << shift) - 1
    slices = []
    for first in range(0, count, SORT_SLICE):
        keys = sorted((arrivals[i] << shift) | i for i in range(first, min(count, first + SORT_SLICE)))
        slices.append(array("I", (key & mask for key in keys)))
        del keys
    if len(slices) == 1:
        order = slices[0]
    else:
        order = array("I", heapq.merge(*slices, key=arrivals.__getitem__))
    del slices
    # Equal arrival times (rare: the same microsecond) are ordered by base.
    tied = [j for j in range(1, count) if arrivals[order[j]] == arrivals[order[j - 1]]]
    if not tied:
        return order
    runs: list[list[int]] = []
    for j in tied:
        if runs and runs[-1][-1] == j - 1:
            runs[-1].append(j)
        else:
            runs.append([j - 1, j])
    dropped: set[int] = set()
    for run in runs:
        kept = _by_base([order[j] for j in run], blob, starts, maildir, problems)
        for j, i in zip(run, kept):
            order[j] = i
        dropped.update(run[len(kept):])
    if dropped:
        order = array("I", (i for j, i in enumerate(order) if j not in dropped))
    return order


def _by_base(run: list[int], blob: bytearray, starts: array, maildir: bytes,
             problems: list[str]) -> list[int]:
    # Serve one file per base (the same base twice would repeat a UIDL).  The same
    # base always has the same arrival, so any duplicate is in this run.
    def base(i: int) -> str:
        start = starts[i] + 4  # past "new/" or "cur/"
        parts = parse_name(os.fsdecode(bytes(blob[start:blob.index(_SEP, start)])))
        assert parts is not None
        return parts[0]

    ordered = sorted(run, key=lambda i: (base(i), starts[i]))
    kept = [ordered[0]]
    for i in ordered[1:]:
        if base(i) == base(kept[-1]):
            problems.append(f"skipped {os.fsdecode(_path(maildir, blob, starts, i))}: duplicate of "
                            f"{os.fsdecode(_path(maildir, blob, starts, kept[-1]))}")
        else:
            kept.append(i)
    return kept


def _path(maildir: bytes, blob: bytearray, starts: array, i: int) -> bytes:
    start = starts[i]
    return maildir + b"/" + bytes(blob[start:blob.index(_SEP, start)])


def _crc32(parts: list[memoryview]) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc
