"""Coverage-guided fuzzing of the POP3 command parser and client line framing (atheris).

    .venv/bin/python fuzz/fuzz_commands.py fuzz/corpus/commands -max_total_time=60

Any exception other than the documented client errors is a bug.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    import atheris  # only the fuzzing run needs it; tests replay the corpus without it

    with atheris.instrument_imports():
        from vmspop import wire
else:
    from vmspop import wire


def test_one_input(data: bytes) -> None:
    buffer = wire.LineBuffer()
    try:
        lines = buffer.feed(data)
    except wire.LineTooLong:
        return
    for line in lines:
        try:
            command = wire.parse_command(line)
        except wire.CommandError as e:
            assert e.text and "Error" not in e.text
            continue
        assert command.verb in wire.GRAMMAR
    stuffer = wire.Stuffer()
    out = stuffer.feed(data) + stuffer.finish()
    assert out.endswith(b".\r\n")


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
