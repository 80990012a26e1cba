"""Session counting for --max-sessions(-per-ip): in one process, and shared by worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmspop.tally import REFUSED_ADDRESS, REFUSED_TOTAL, LocalTally, SharedTally

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("make", [LocalTally, lambda: SharedTally(SharedTally.create(1, 10).fd, 0)])
def test_limits_and_refusal_reasons(make) -> None:
    """The total and the per-address limit each refuse with their own reason; None counts in total only."""
    tally = make()
    assert tally.add("192.0.2.1", 3, 2) is None
    assert tally.add("192.0.2.1", 3, 2) is None
    assert tally.add("192.0.2.1", 3, 2) == REFUSED_ADDRESS
    assert tally.add(None, 3, 2) is None
    assert tally.add("192.0.2.2", 3, 2) == REFUSED_TOTAL
    assert (tally.total(), tally.per_key("192.0.2.1")) == (3, 2)
    assert tally.rekey(None, "192.0.2.1", 2) == REFUSED_ADDRESS  # nothing changed
    assert tally.rekey(None, "192.0.2.2", 2) is None
    assert (tally.total(), tally.per_key("192.0.2.2")) == (3, 1)
    tally.remove("192.0.2.1")
    assert (tally.total(), tally.per_key("192.0.2.1")) == (2, 1)


def test_workers_count_in_one_table(shared: tuple[SharedTally, SharedTally, SharedTally]) -> None:
    """A limit reached through one worker refuses through the other; a dead worker's sessions
    are forgotten, the others' kept."""
    supervisor, first, second = shared
    assert first.add("192.0.2.1", 3, 2) is None
    assert first.add(None, 3, 2) is None
    assert second.add("192.0.2.1", 3, 2) is None
    assert second.add("192.0.2.1", 3, 2) == REFUSED_TOTAL
    assert second.add("192.0.2.9", 3, 2) == REFUSED_TOTAL
    first.remove(None)
    assert second.add("192.0.2.1", 3, 2) == REFUSED_ADDRESS
    assert supervisor.total() == 2 and supervisor.per_key("192.0.2.1") == 2
    supervisor.forget(0)  # the first worker died with its session
    assert (supervisor.total(), supervisor.per_key("192.0.2.1")) == (1, 1)
    assert second.add("192.0.2.1", 3, 2) is None


def test_a_separate_process_sees_the_same_counts(shared: tuple[SharedTally, SharedTally, SharedTally]) -> None:
    """The table is shared memory: another process, given the descriptor, counts into it."""
    supervisor, first, _ = shared
    first.add("192.0.2.1", 5, 5)
    code = (f"from vmspop.tally import SharedTally; t = SharedTally({supervisor.fd}, worker=1); "
            "assert t.per_key('192.0.2.1') == 1; assert t.add('192.0.2.1', 5, 5) is None")
    subprocess.run([sys.executable, "-c", code], check=True, pass_fds=(supervisor.fd,),
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert (supervisor.total(), supervisor.per_key("192.0.2.1")) == (2, 2)


def _colliding(homes: set[int], count: int) -> list[str]:
    """Addresses whose home slots in a 64-slot table are in ``homes``: long probe chains,
    some wrapping around the end of the table."""
    from vmspop.tally import _digest
    found = []
    for i in range(100_000):
        address = f"2001:db8:{i:x}::/64"
        if int.from_bytes(_digest(address)[:8], "little") & 63 in homes:
            found.append(address)
            if len(found) == count:
                return found
    raise AssertionError("no colliding addresses")


# Addresses that collide in the 64-slot table (two clusters, one across its end), so that
# removals in the middle of probe chains exercise the backward-shift deletion.
COLLIDING = _colliding({62, 63, 0}, 8) + _colliding({20}, 6)
addresses = st.sampled_from([None, *COLLIDING])
verbs = st.sampled_from(["add", "add", "add", "remove", "remove", "rekey", "forget"])  # adds fill chains
operations = st.lists(st.tuples(verbs, st.integers(0, 1), addresses, addresses), max_size=200)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_shared_tally_matches_a_model(ops: list[tuple[str, int, str | None, str | None]]) -> None:
    """Any sequence of adds, removes, re-keys and worker deaths leaves the table equal to
    a simple model, with the limits applied across both workers."""
    max_total, max_per_key = 30, 3  # 64 slots
    supervisor = SharedTally.create(workers=2, max_sessions=max_total)
    workers = [SharedTally(os.dup(supervisor.fd), worker=i) for i in (0, 1)]
    live: list[list[str | None]] = [[], []]  # the sessions (by key) each worker has counted
    try:
        for op, w, key, other in ops:
            counts = Counter(k for sessions in live for k in sessions if k is not None)
            total = len(live[0]) + len(live[1])
            if op == "add":
                expected = (REFUSED_TOTAL if total >= max_total else
                            REFUSED_ADDRESS if key is not None and counts[key] >= max_per_key else None)
                assert workers[w].add(key, max_total, max_per_key) == expected
                if expected is None:
                    live[w].append(key)
            elif op == "remove" and live[w]:
                gone = live[w].pop(0)
                workers[w].remove(gone)
            elif op == "rekey" and None in live[w] and other is not None:
                expected = REFUSED_ADDRESS if counts[other] >= max_per_key else None
                assert workers[w].rekey(None, other, max_per_key) == expected
                if expected is None:
                    live[w][live[w].index(None)] = other
            elif op == "forget":
                supervisor.forget(w)
                live[w] = []
            counts = Counter(k for sessions in live for k in sessions if k is not None)
            assert supervisor.total() == len(live[0]) + len(live[1])
            for address in COLLIDING:
                assert supervisor.per_key(address) == counts[address]
    finally:
        for tally in (supervisor, *workers):
            tally.close()


def test_busier_compares_with_listening_workers(shared: tuple[SharedTally, SharedTally, SharedTally]) -> None:
    """A worker is busier than another that listens and has fewer sessions (by more than
    the margin); a worker that does not listen, or has died, is not compared with."""
    supervisor, first, second = shared
    for _ in range(3):
        first.add(None, 10, 10)
    assert not first.busier()  # the other does not listen (yet)
    second.set_listening(True)
    assert first.busier() and first.busier(2) and not first.busier(3)
    assert not second.busier()
    second.set_listening(False)  # it drains
    assert not first.busier()
    second.set_listening(True)
    supervisor.forget(1)  # it died
    assert not first.busier()
