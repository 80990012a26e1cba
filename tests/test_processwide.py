"""Process-wide tuning applied by vmspop's entry points (vmspop.processwide)."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmspop import processwide

REPO = Path(__file__).resolve().parent.parent

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                reason="mallopt() and its thresholds are glibc's")

# Downloads at once: six 200 KB blocks alive together, then freed.  glibc's default
# trims the heap after each round and faults the pages in again at the next.
_CHURN = textwrap.dedent("""
    import resource, sys
    from vmspop.processwide import keep_freed_memory
    if sys.argv[1] == "tuned":
        assert keep_freed_memory()
    def round_():
        blocks = [b"x" * 200_000 for _ in range(6)]
        del blocks
    for _ in range(5):
        round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        round_()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _page_faults(mode: str, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in processwide._OPERATOR_SETTINGS}
    done = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True,
                          env={**clean, "PYTHONPATH": str(REPO), **env}, timeout=60, check=True)
    return int(done.stdout)


@glibc_only
def test_freed_memory_is_reused_instead_of_faulted_back_in() -> None:
    untuned, tuned = _page_faults("plain"), _page_faults("tuned")
    # 40 rounds of 1.2 MB: about 12,000 fresh pages without the setting, none with it.
    assert untuned > 5_000
    assert tuned < 100


@pytest.mark.parametrize("name", processwide._OPERATOR_SETTINGS)
def test_the_operators_malloc_environment_is_left_alone(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "glibc.malloc.trim_threshold=131072" if name == "GLIBC_TUNABLES" else "131072")
    assert processwide.keep_freed_memory() is False


def test_start_up_objects_are_exempt_from_collection() -> None:
    try:
        processwide.settle_garbage_collector()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_twistd_tunes_the_process_it_owns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from vmspop import tap
    calls: list[str] = []
    monkeypatch.setattr(tap, "keep_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(tap, "settle_garbage_collector", lambda: calls.append("gc"))
    options = tap.Options()
    options.parseOptions(["--mail-root", str(tmp_path), "--workers", "1", "--no-smtp"])
    tap.makeService(options, MemoryReactorClock())
    assert calls == ["malloc", "gc"]

