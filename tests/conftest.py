"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from live import Live, run_reactor, start

from vmspop.tally import SharedTally


# CI explores the same examples every run, so a landing never hinges on luck; local runs
# keep exploring new ones (and remember failures in .hypothesis/).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def reactor() -> Iterator[Any]:
    """Twisted's reactor, running in a daemon thread for the whole session."""
    yield from run_reactor()


@pytest.fixture
def live(reactor: Any, tmp_path: Path) -> Iterator[Live]:
    """vmspop on a loopback port with user jones (password wonderland, secret tanstaafl)."""
    server = start(reactor, tmp_path)
    yield server
    server.stop()


@pytest.fixture
def shared() -> Iterator[tuple[SharedTally, SharedTally, SharedTally]]:
    """The supervisor's view and two workers' views of one session table (as after spawnProcess)."""
    supervisor = SharedTally.create(workers=2, max_sessions=10)
    workers = [SharedTally(os.dup(supervisor.fd), worker=i) for i in (0, 1)]
    yield supervisor, workers[0], workers[1]
    for tally in (supervisor, *workers):
        tally.close()
