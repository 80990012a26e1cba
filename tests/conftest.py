"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from live import Live, run_reactor, start


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
