"""Process-wide memory settings applied once at start-up."""

from __future__ import annotations

import ctypes
import gc
import os
from collections.abc import Callable

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Blocks up to this size come from the heap, where freed ones are reused, rather than from
#: an mmap(2) of their own that is unmapped again when freed.
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the top of the heap kept for reuse before it goes back to the system.
TRIM_THRESHOLD = 64 * 1024 * 1024


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """Cap glibc's malloc arenas (unless ``MALLOC_ARENA_MAX`` is set); True when applied.

    Archive chunks are read in worker threads, and glibc gives each thread its own arena in
    which freed chunks stay: peak RSS for 16 cache hits + 4 proxied streams measured 277-319 MB
    with the default arenas and 135 MB with one, at the same throughput (bench/README.md).
    Call before any thread starts. Does nothing on a libc without ``mallopt``.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, arenas))


def keep_freed_buffers() -> bool:
    """Let glibc reuse freed megabyte-sized buffers instead of unmapping them (unless the
    operator set ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``); True when applied.

    Every piece of a refresh or a proxied stream is a new ``bytes`` of about a MiB. Above
    glibc's (adaptive) mmap threshold each one was mapped on its own and unmapped when freed,
    so every piece faulted in fresh pages: on a VM that hands freed memory back to its host
    that ran at about half the speed of reused pages, and a refresh filled its cache at
    0.6x nginx ``proxy_cache``; with the buffers reused, 0.94-1.05x (bench: refresh). Costs
    at most TRIM_THRESHOLD of freed memory kept. Call at start-up.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None on a libc without it."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def freeze_startup_objects() -> int:
    """Collect once, then exempt every object alive now from future collections; returns
    how many were frozen.

    What exists at start-up (modules, classes, functions, the config: ~80,000 objects with
    the server's libraries imported) lives as long as the process, yet each full collection
    of the cyclic garbage collector walked all of it again, stopping the event loop for tens
    of milliseconds (bench: cluster discovery). Frozen objects are still freed by reference
    counting; only cycles among them would never be collected (there are none to speak of
    in imported code). Call once, after the imports and before serving.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
