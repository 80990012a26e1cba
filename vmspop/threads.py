"""Taking blocking work (hashing, file system) off the reactor thread.

Library code never reaches for the global reactor: whoever builds the server passes
a :data:`ThreadRunner`, normally :func:`thread_runner` of the reactor in use; tests
pass one that runs the call at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

__all__ = ["ThreadRunner", "thread_runner"]

#: Runs ``f(*args, **kwargs)`` off the reactor thread; returns a Deferred of its result.
ThreadRunner = Callable[..., Deferred]


def thread_runner(reactor: Any) -> ThreadRunner:
    """A :data:`ThreadRunner` using ``reactor``'s thread pool."""

    def run(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)

    return run
