"""Streaming multi-line replies (RETR, TOP, LIST, UIDL) with back-pressure.

:class:`Streamer` is a push producer: it reads a block, transforms it (byte-stuffing),
writes it, and reads the next only while the transport wants more, so memory does
not grow with message size and a client that stops reading stops the reads.
:class:`FileSource` reads a message file in a thread, so a slow disk never stalls
other sessions, and closes the file on every exit path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from vmspop.threads import ThreadRunner

if TYPE_CHECKING:
    from vmspop.mailbox import VMSMailbox

__all__ = ["FileSource", "IterSource", "ReadAhead", "StreamStopped", "Streamer", "BLOCK_SIZE",
           "MAX_READ_AHEAD", "READ_AHEAD_BYTES", "WHOLE_READ_LIMIT"]

#: Large reads amortise the thread hop and the per-block Python work (measured in
#: docs/performance.md); 256 KiB keeps memory per transfer small.
BLOCK_SIZE = 256 * 1024
#: A RETR reads and sends a message up to this size whole, on the reactor thread, when
#: the kernel holds all of it and the socket can take all of it at once
#: (:meth:`vmspop.output.Output.room`), instead of in blocks through the pool and the
#: transport: with four clients downloading the bench's mailbox (10 of its 400
#: messages between 256 KiB and 1 MiB) that cost one process about a sixth more CPU a
#: message (docs/performance.md).  As the socket takes it, a session does not hold such
#: a message unsent (at most what the estimate of room missed); while it is made ready
#: it holds about twice its size.
WHOLE_READ_LIMIT = 1024 * 1024
#: A session reads the next small messages of a download along with the one asked
#: for, up to this many (wire) octets: a client that fetches 1, 2, 3, ... then finds
#: most of them ready, and each saves a hand-over to the pool (45 us of bookkeeping, and
#: more under load, of the 250 a 50 KB RETR costs).  It is also what one session can hold
#: in memory for it: 128 or 256 KiB saved hardly more CPU than 64 (within the noise) and
#: held more memory.
READ_AHEAD_BYTES = 64 * 1024
#: Messages read ahead at most in one step (the count doubles from 1 while the client
#: keeps to the order; the octets above bound it first for all but small mail).
MAX_READ_AHEAD = 32


class StreamStopped(Exception):
    """The consumer went away (the client disconnected) before the stream ended."""


class FileSource:
    """Reads a file block by block in a thread.

    Opening the file and reading its first block are one thread call, and a
    read that returns less than ``block_size`` has reached the end, so the file
    is closed in that same call: a message shorter than a block costs a single
    hand-over to the pool, and no call is spent on reading the final b"".  Such a
    call also reads the ``ahead`` files, whole, for the requests that follow.

    Args:
        path: the file.
        run_in_thread: runs blocking calls off the reactor thread.
        block_size: octets per read.
        ahead: files to read along, when this one fits in a block.
    """

    def __init__(self, path: str | bytes, run_in_thread: ThreadRunner, block_size: int = BLOCK_SIZE,
                 ahead: Sequence[str | bytes] = ()) -> None:
        self.path = path
        self._run = run_in_thread
        self._block_size = block_size
        self._ahead_paths = ahead
        self._fd: int | None = None
        self._first: bytes | None = None
        #: After :meth:`open`: the contents of each ``ahead`` file, or None for one not
        #: read (unreadable, larger than a block, or this file was not read whole).
        self.ahead: list[bytes | None] = []

    def open(self) -> defer.Deferred:
        """Open the file and read ahead its first block; fails with OSError if it is gone."""
        def opened(result: tuple[int | None, bytes, list[bytes | None]]) -> None:
            self._fd, self._first, self.ahead = result

        return self._run(self._open_and_read).addCallback(opened)

    def _open_and_read(self) -> tuple[int | None, bytes, list[bytes | None]]:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            at_end, block = self._read_block(fd)
        except BaseException:
            os.close(fd)
            raise
        if not at_end:
            return fd, block, []
        return None, block, [self._read_small(path) for path in self._ahead_paths]

    def _read_small(self, path: str | bytes) -> bytes | None:
        # Any trouble is left for the request of that message to meet and report.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = _read_upto(fd, self._block_size + 1)
            finally:
                os.close(fd)
        except OSError:
            return None
        return data if len(data) <= self._block_size else None

    @property
    def whole(self) -> bytes | None:
        """After :meth:`open`: the entire file when its first block was all of it, else None."""
        return self._first if self._fd is None else None

    def read(self) -> defer.Deferred:
        """The next block, or b"" at the end."""
        if self._first is not None:
            block, self._first = self._first, None
            return defer.succeed(block)
        if self._fd is None:
            return defer.succeed(b"")

        def got(result: tuple[bool, bytes]) -> bytes:
            at_end, block = result
            if at_end:
                self._fd = None  # closed by the thread: no extra hand-over for the final b""
            return block

        return self._run(self._read_block, self._fd).addCallback(got)

    def _read_block(self, fd: int) -> tuple[bool, bytes]:
        block = _read_upto(fd, self._block_size)
        if len(block) < self._block_size:
            os.close(fd)
            return True, block
        return False, block

    def close(self) -> None:
        """Close the file (quick: no flush on a read-only file)."""
        self._first = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _read_upto(fd: int, size: int) -> bytes:
    """``size`` octets from ``fd``, or fewer at the end of the file.

    Plain descriptor reads, not a file object: Python's ``open()`` adds an ``fstat``, an
    ``ioctl`` and an ``lseek`` to every file, and in a pool thread each system call
    hands the GIL to the reactor and waits to get it back (docs/performance.md).  A
    short read is followed by another, as a buffered read does, to be sure of the end.
    """
    data = os.read(fd, size)
    while 0 < len(data) < size:
        more = os.read(fd, size - len(data))
        if not more:
            break
        data += more
    return data


class ReadAhead:
    """One session's read-ahead: the messages read along with another, and how many to
    read at the next step.

    A client that asks for the next live message after the one it had last is going
    in order.  Then, as a disk reads ahead, the message is read with the 1 after it,
    at the next step in order with 2, then 4, ... (at most :data:`MAX_READ_AHEAD`, and
    :data:`READ_AHEAD_BYTES` in all), so that a client that stops after a few
    messages wastes little.  Anything else resets the count.
    """

    def __init__(self) -> None:
        self._held: dict[int, bytes] = {}
        self._last: int | None = None
        self._count = 0

    @property
    def held(self) -> dict[int, bytes]:
        """Message index -> contents, read ahead and not asked for yet."""
        return self._held

    def take(self, mbox: VMSMailbox, index: int) -> bytes | None:
        """A request for message ``index``: its contents if they were read ahead, else
        None (then :meth:`along` tells what to read with it, if it is read from disk)."""
        last, self._last = self._last, index
        # index is live (the session checked it), so last + 1 is the next live one.
        in_order = last is not None and (index == last + 1 or index == mbox.next_live(last))
        contents = self._held.pop(index, None)
        if contents is not None:
            return contents
        if self._held:
            self._held = {}  # what was read ahead and passed over goes
        self._count = min(max(1, 2 * self._count), MAX_READ_AHEAD) if in_order else 0
        return None

    def along(self, mbox: VMSMailbox, index: int) -> list[int]:
        """After :meth:`take` gave None: the messages to read along with ``index``."""
        return mbox.following(index, READ_AHEAD_BYTES, self._count) if self._count else []

    def keep(self, indices: Sequence[int], contents: Sequence[bytes | None]) -> None:
        """What was read along (None for a message that could not be)."""
        self._held = {i: data for i, data in zip(indices, contents) if data is not None}

    def drop(self, index: int | None = None) -> None:
        """Let go of message ``index`` (DELE), or of everything (the session ended)."""
        if index is None:
            self._held = {}
        else:
            self._held.pop(index, None)


class IterSource:
    """Adapts an iterator of byte blocks (LIST and UIDL lines) to the source protocol."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks

    def read(self) -> defer.Deferred:
        """The next block, or b"" at the end."""
        return defer.succeed(next(self._blocks, b""))

    def close(self) -> None:
        """Nothing to release."""


@implementer(IPushProducer)
class Streamer:
    """Copy blocks from a source to a consumer, honouring pause and resume.

    Args:
        consumer: the transport.
        read: returns a Deferred of the next block (b"" at the end).
        transform: applied to each block before it is written.
        finish: returns the final octets (the terminating ``.`` line).
        progress: called after each write; the protocol re-arms its idle timer there,
            so a client that stops reading is timed out.
        close: releases the source; called exactly once, however the stream ends.
    """

    def __init__(self, consumer: IConsumer, read: Callable[[], defer.Deferred],
                 transform: Callable[[bytes], bytes], finish: Callable[[], bytes],
                 progress: Callable[[], None], close: Callable[[], None]) -> None:
        self._consumer = consumer
        self._read = read
        self._transform = transform
        self._finish = finish
        self._progress = progress
        self._close = close
        self._done: defer.Deferred = defer.Deferred()
        self._paused = False
        self._reading = False
        self._ended = False
        self._in_pump = False
        self._pump_again = False
        self.octets = 0

    def start(self) -> defer.Deferred:
        """Begin streaming; the Deferred fires when all is written, or fails with StreamStopped."""
        self._consumer.registerProducer(self, True)
        self._pump()
        return self._done

    def _pump(self) -> None:
        # A source that answers synchronously would recurse once per block; loop instead.
        if self._in_pump:
            self._pump_again = True
            return
        self._in_pump = True
        try:
            while not (self._paused or self._reading or self._ended):
                self._pump_again = False
                self._reading = True
                self._read().addCallbacks(self._got, self._failed)
                if not self._pump_again:
                    break
        finally:
            self._in_pump = False

    def _got(self, block: bytes) -> None:
        self._reading = False
        if self._ended:
            self._close()  # stopped while the read was in flight
            return
        if not block:
            self._end(None, self._finish())
            return
        data = self._transform(block)
        if data:
            self._consumer.write(data)
            self.octets += len(data)
        self._progress()
        self._pump()

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        if self._ended:
            self._close()
            return
        self._end(failure, b"")

    def _end(self, failure: Failure | None, tail: bytes) -> None:
        self._ended = True
        if tail:
            self._consumer.write(tail)
        self._consumer.unregisterProducer()
        self._close()
        if failure is None:
            self._done.callback(None)
        else:
            self._done.errback(failure)

    # -- IPushProducer ------------------------------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's buffer is full: stop reading."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The transport drained: the client is reading, so continue."""
        self._paused = False
        if not self._ended:
            self._progress()
            self._pump()

    def stopProducing(self) -> None:
        """The connection is gone: release the source now, or when the read in flight returns."""
        if self._ended:
            return
        self._ended = True
        if not self._reading:
            self._close()
        self._done.errback(StreamStopped())
