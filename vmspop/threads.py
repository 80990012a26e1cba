"""Taking blocking work (hashing, file system) off the reactor thread.

Library code never reaches for the global reactor: whoever builds the server passes
a :data:`ThreadRunner`, normally :func:`thread_runner` of the reactor in use; tests
pass one that runs the call at once.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["BlockingCalls", "MAX_THREADS", "ThreadRunner", "thread_runner"]

#: Runs ``f(*args, **kwargs)`` off the reactor thread; returns a Deferred of its result.
ThreadRunner = Callable[..., Deferred]

#: Threads per reactor, as many as Twisted's own reactor pool allows: enough to keep a
#: disk (or an NFS server) busy with a queue of reads, few enough that a stalled file
#: system ties up a bounded number of threads; further calls wait in line.
MAX_THREADS = 10

_pools: weakref.WeakKeyDictionary[Any, BlockingCalls] = weakref.WeakKeyDictionary()


class BlockingCalls:
    """Threads that run blocking calls and fire each call's Deferred in the reactor thread.

    It does what ``deferToThreadPool(reactor, reactor.getThreadPool(), ...)`` does, for
    less: a call passes through one queue and is answered with one
    ``callFromThread``, where Twisted's ThreadPool passes it between a coordinator and
    a worker, through two queues and several locks.  That cost about 80 us of CPU a
    call here, this about 45, in a loop of calls; under load each call also wakes a
    thread, then the reactor, and passes the GIL back and forth, which costs more.
    So a login makes one call, and a RETR one or none (docs/performance.md).

    Threads start when calls need them, up to ``size``, and then stay.  :meth:`stop`
    (run during the reactor's shutdown by :func:`thread_runner`) lets the calls already
    queued finish, as Twisted's pool does, so a QUIT update under way is completed.

    Args:
        reactor: the reactor whose thread receives the results.
        size: the most threads.
    """

    def __init__(self, reactor: Any, size: int = MAX_THREADS) -> None:
        self._reactor = reactor
        self._size = size
        self._calls: queue.SimpleQueue[tuple[Deferred, Callable[..., Any], tuple, dict] | None] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a call that no queued call has claimed
        self._stopped = False

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """Run ``f(*args, **kwargs)`` in a thread; a Deferred of its result or exception."""
        with self._lock:
            if self._stopped:
                return defer.fail(RuntimeError("blocking calls are no longer taken: the server is stopping"))
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._size:
                thread = threading.Thread(target=self._work, name=f"vmspop-blocking-{len(self._threads)}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
        d: Deferred = Deferred()
        self._calls.put((d, f, args, kwargs))
        return d

    def stop(self) -> None:
        """Finish the queued calls, then end every thread (blocks until they have ended)."""
        with self._lock:
            self._stopped = True
            threads = list(self._threads)
        for _ in threads:
            self._calls.put(None)
        for thread in threads:
            thread.join()

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            self._answer(*call)
            del call  # an idle thread keeps no message or result alive
            with self._lock:
                self._idle += 1

    def _answer(self, d: Deferred, f: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        try:
            result = f(*args, **kwargs)
        except BaseException:
            self._reactor.callFromThread(d.errback, Failure())
        else:
            self._reactor.callFromThread(d.callback, result)


def thread_runner(reactor: Any) -> ThreadRunner:
    """The :data:`ThreadRunner` of ``reactor``.

    All runners of one reactor share one :class:`BlockingCalls`, made at the first
    call (so building a server starts no thread) and stopped during the reactor's
    shutdown.
    """

    def run(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        pool = _pools.get(reactor)
        if pool is None:
            pool = _pools[reactor] = BlockingCalls(reactor)
            reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
        return pool.run(f, *args, **kwargs)

    return run
