"""Process-wide tuning that only vmspop's own entry points apply.

``twistd vmspop`` and each worker process call these; an application that embeds
vmspop owns its process and decides about its collector and its allocator itself
(docs/embedding.md).
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory", "settle_garbage_collector"]

# mallopt() parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Allocations up to this size come from the heap instead of a mapping of their own.
#: A 256 KiB message block (vmspop.transfer.BLOCK_SIZE) is over glibc's initial 128 KiB,
#: so each read mapped fresh pages, faulted them in one by one and unmapped them.
MMAP_THRESHOLD = 1024 * 1024
#: Free memory at the top of a heap is kept for reuse up to this size.  glibc gives it
#: back beyond twice the (dynamic) mapping threshold: with four clients downloading,
#: the heap shrank and grew again every few messages, and the pages faulted back in
#: cost a tenth of the CPU of a 53 KB RETR (docs/performance.md).  At most this much
#: per heap stays mapped while unused.
TRIM_THRESHOLD = 4 * 1024 * 1024

# An operator who tunes malloc through the environment keeps the last word.
_OPERATOR_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                      "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Set glibc's allocator to reuse freed memory instead of returning it to the kernel
    after every message; True if it was set.

    Nothing is changed with another C library, or when the environment already sets
    one of glibc's malloc tunables (``GLIBC_TUNABLES``, ``MALLOC_*_``).
    """
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in _OPERATOR_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success; setting either fixes both thresholds (no dynamic ones).
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def settle_garbage_collector() -> None:
    """Exempt what start-up made (modules, Twisted, the service) from garbage collection.

    A full collection walks every object; the ~50,000 of an idle server took 9 ms,
    a reactor stall each time one ran under load.
    """
    gc.collect()
    gc.freeze()
