"""Micro-benchmark: vmspop's byte-stuffer (vmspop.wire.Stuffer) on different contents.

    .venv/bin/python benchmarks/stuffer.py

RETR turns each 256 KiB block of a stored message into the wire form: LF -> CRLF,
then "." doubled at the start of lines.  Its cost depends on the content, so this
feeds 64 MiB of each kind in 256 KiB blocks and also times its two passes on one
block: ``to_crlf`` for the line ends and ``double_dots`` for the dots, against the
one ``split``/``join`` it falls back to (and used alone before).  Two contents are
its worst for dots: dots everywhere, and dots just too rare for the fallback; the
last, mail stored with CRLF, is its worst for line ends.
It prints numbers; it is not a test.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from vmspop.wire import DOT_SPACING, Stuffer, double_dots, to_crlf  # noqa: E402
import corpus  # noqa: E402

BLOCK = 256 * 1024
SIZE = 64 * 1024 * 1024


def contents() -> dict[str, bytes]:
    rng = random.Random(corpus.SEED)
    text, b64 = corpus._line_pool(rng)
    plain = [line for line in text if not line.startswith(b".")]
    return {
        "x lines (no dots; big_retr.py)": (b"x" * 76 + b"\n") * (SIZE // 77),
        "base64 attachment (no dots)": b"".join(rng.choices(b64, k=SIZE // 77)),
        "text, no line starts with '.'": b"".join(rng.choices(plain, k=SIZE // 40)),
        "text, 1.2 % of lines start with '.'": b"".join(rng.choices(text, k=SIZE // 40)),
        "prose, a '.' every 24 octets": b"Dr. A. B. Smith, Esq. and Co.\n" * (SIZE // 30),
        f"a '.' every {DOT_SPACING + 8} octets": (b"x" * (DOT_SPACING + 6) + b".\n") * (SIZE // (DOT_SPACING + 8)),
        "text stored with CRLF (1.2 % dot lines)": b"".join(rng.choices(text, k=SIZE // 40)).replace(b"\n", b"\r\n"),
    }


def main() -> int:
    print(f"{'content':40s} {'Stuffer MB/s':>12s} {'LF->CRLF ms':>12s} {'dot pass ms':>12s} "
          f"{'split ms':>9s}  (per 256 KiB block)")
    for name, data in contents().items():
        stuffer = Stuffer()
        t = time.perf_counter()
        for i in range(0, len(data), BLOCK):
            stuffer.feed(data[i:i + BLOCK])
        rate = len(data) / (time.perf_counter() - t) / 1e6
        block = data[:BLOCK]
        t = time.perf_counter()
        for _ in range(50):
            crlf = to_crlf(block)
        lf = (time.perf_counter() - t) / 50 * 1000
        t = time.perf_counter()
        for _ in range(50):
            double_dots(crlf)
        dot = (time.perf_counter() - t) / 50 * 1000
        t = time.perf_counter()
        for _ in range(50):
            b"\r\n..".join(crlf.split(b"\r\n."))
        split = (time.perf_counter() - t) / 50 * 1000
        print(f"{name:40s} {rate:12.0f} {lf:12.2f} {dot:12.2f} {split:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
