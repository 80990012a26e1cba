"""vmspop.threads: blocking calls in threads, answered in the reactor thread."""

from __future__ import annotations

import gc
import queue
import threading
import weakref
from typing import Any

import pytest

from vmspop.threads import BlockingCalls, thread_runner

WAIT = 10.0


class Reactor:
    """The two reactor methods the pool uses; deliver() plays the reactor thread."""

    def __init__(self) -> None:
        self.from_threads: queue.SimpleQueue = queue.SimpleQueue()
        self.triggers: list[tuple[str, str, Any]] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.from_threads.put((f, args, threading.get_ident()))

    def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> None:
        self.triggers.append((phase, event, f))

    def deliver(self, count: int = 1) -> None:
        for _ in range(count):
            f, args, _ = self.from_threads.get(timeout=WAIT)
            f(*args)


def results(d: Any) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def test_result_arrives_through_the_reactor_thread() -> None:
    """The call runs in another thread; its result is delivered by callFromThread."""
    reactor = Reactor()
    pool = BlockingCalls(reactor)
    d = pool.run(lambda a, b=0: (threading.get_ident(), a + b), 2, b=3)
    got = results(d)
    f, args, caller = reactor.from_threads.get(timeout=WAIT)
    assert got == []  # nothing fires before the reactor thread runs it
    f(*args)
    ident, value = got[0]
    assert value == 5 and ident == caller != threading.get_ident()
    pool.stop()


def test_exception_becomes_a_failure_of_the_same_type() -> None:
    reactor = Reactor()
    pool = BlockingCalls(reactor)
    got = results(pool.run(lambda: {}["missing"]))
    reactor.deliver()
    assert got[0].check(KeyError)
    pool.stop()


def test_threads_grow_to_the_size_and_no_further() -> None:
    """Three calls that wait for each other need three threads; a size of 2 runs two at once."""
    reactor = Reactor()
    pool = BlockingCalls(reactor, size=3)
    barrier = threading.Barrier(3, timeout=WAIT)
    got = [results(pool.run(barrier.wait)) for _ in range(3)]
    reactor.deliver(3)
    assert sorted(r[0] for r in got) == [0, 1, 2]
    pool.stop()

    pool = BlockingCalls(reactor, size=2)
    running, most, lock, release = [0], [0], threading.Lock(), threading.Event()

    def call() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(WAIT)
        with lock:
            running[0] -= 1

    got = [results(pool.run(call)) for _ in range(5)]
    for _ in range(1000):  # until both threads are inside a call
        with lock:
            if running[0] == 2:
                break
        threading.Event().wait(0.005)
    release.set()
    reactor.deliver(5)
    assert most[0] == 2 and all(r == [None] for r in got)
    assert len(pool._threads) == 2
    pool.stop()


def test_an_idle_thread_is_reused() -> None:
    reactor = Reactor()
    pool = BlockingCalls(reactor)
    for _ in range(20):
        got = results(pool.run(threading.get_ident))
        reactor.deliver()
        assert got
    assert len(pool._threads) == 1
    pool.stop()


def test_stop_finishes_queued_calls_then_refuses_new_ones() -> None:
    """A QUIT update under way when the server stops is completed, as with Twisted's pool."""
    reactor = Reactor()
    pool = BlockingCalls(reactor, size=1)
    started, release, done = threading.Event(), threading.Event(), []

    def slow() -> str:
        started.set()
        release.wait(WAIT)
        done.append("slow")
        return "slow"

    first = results(pool.run(slow))
    second = results(pool.run(lambda: done.append("queued") or "queued"))
    started.wait(WAIT)
    stopper = threading.Thread(target=pool.stop)
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive()  # stop() waits for the calls
    release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive() and done == ["slow", "queued"]
    reactor.deliver(2)
    assert first == ["slow"] and second == ["queued"]
    assert not any(t.is_alive() for t in pool._threads)
    late = results(pool.run(lambda: "late"))
    assert late[0].check(RuntimeError) and "stopping" in str(late[0].value)


def test_idle_threads_keep_no_result_alive() -> None:
    """A thread waiting for work holds no reference to the last message it read."""
    reactor = Reactor()
    pool = BlockingCalls(reactor)

    class Body:
        pass

    got = results(pool.run(Body))
    reactor.deliver()
    ref = weakref.ref(got.pop())
    for _ in range(100):  # the thread may not be back at its queue yet
        gc.collect()
        if ref() is None:
            break
        threading.Event().wait(0.01)
    assert ref() is None
    pool.stop()


def test_one_pool_per_reactor_made_at_first_call_stopped_at_shutdown() -> None:
    reactor, other = Reactor(), Reactor()
    run, again, elsewhere = thread_runner(reactor), thread_runner(reactor), thread_runner(other)
    assert reactor.triggers == []  # building a server starts nothing
    got = [results(f(threading.get_ident)) for f in (run, again, elsewhere)]
    reactor.deliver(2)
    other.deliver()
    assert [(phase, event) for phase, event, _ in reactor.triggers] == [("during", "shutdown")]
    assert len(other.triggers) == 1
    pool = reactor.triggers[0][2].__self__
    assert len(pool._threads) <= 2 and {r[0] for r in got[:2]} <= {t.ident for t in pool._threads}
    assert got[2][0] not in {t.ident for t in pool._threads}
    reactor.triggers[0][2]()
    assert results(run(lambda: 8))[0].check(RuntimeError)
    other.triggers[0][2]()


@pytest.mark.parametrize("calls", [1, 50])
def test_every_call_is_answered_once(calls: int) -> None:
    reactor = Reactor()
    pool = BlockingCalls(reactor, size=4)
    got = [results(pool.run(lambda i=i: i * i)) for i in range(calls)]
    reactor.deliver(calls)
    assert [r for r in got] == [[i * i] for i in range(calls)]
    assert reactor.from_threads.empty()
    pool.stop()
