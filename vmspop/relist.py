"""Listing a large folder in a helper process, so the server's reactor keeps the GIL.

Building the listing of a 100,000-message folder is about a second of Python
(a regex and a SHA-256 per name).  In a pool thread of the server, that second
holds the GIL, and the reactor then waits up to a switch interval after each of
its system calls: every session stalls.  :meth:`vmspop.store.MailStore.scan`
therefore builds large folders here instead, with
``python -P -m vmspop.relist ROOT HOST USER FOLDER OUTPUT``, and loads the
result from OUTPUT.  Small folders are built in the thread: starting Python
costs more than listing them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["build_elsewhere", "main"]

#: How long the helper may take before the server gives up and lists in-process:
#: far more than a million messages need, so only a hung file system reaches it.
TIMEOUT_SECONDS = 300


def build_elsewhere(root: Path, host: str, user: str, folder: str, output: Path) -> bool:
    """Run the helper (blocking: call it from a pool thread); True if it wrote ``output``."""
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-m", "vmspop.relist", str(root), host, user, folder, str(output)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def main(argv: list[str]) -> int:
    """``ROOT HOST USER FOLDER OUTPUT``: list ``FOLDER`` of ``USER`` and save it to OUTPUT."""
    from vmspop.store import MailStore

    root, host, user, folder, output = argv
    MailStore(root, host).save_built_listing(user, folder, Path(output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
