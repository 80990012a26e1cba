"""Replay the corpora the coverage-guided fuzzers found (fuzz/, `make fuzz`) as regression tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"


def target(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"fuzz_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["commands", "mail11"])
def test_corpus_replays_cleanly(name: str) -> None:
    """Every saved fuzz input still passes its target's checks."""
    module = target(name)
    inputs = sorted((FUZZ / "corpus" / name).iterdir())
    assert len(inputs) > 10
    for path in inputs:
        module.test_one_input(path.read_bytes())
