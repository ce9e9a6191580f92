"""Functions of the C library that Python's os module lacks (Linux: glibc).

Each is an optimisation or a capability its caller can do without, so a platform or a C
library without it gives None and the caller takes its fallback.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any, cast


def libc_function(name: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """The C library's function ``name`` taking ``argtypes`` and returning an ``int``, with
    ``ctypes.get_errno`` telling its errors; None where the C library has no such function.

    Declared here once: a wrong ``argtypes`` passes 64-bit offsets as 32-bit ones without a
    word, so every caller states them and the loading is the same for all.
    """
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return cast(Callable[..., int], function)


#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Buffers up to this size come from the heap, and this much free heap is kept, rather than
#: each buffer mapped afresh and its pages faulted in again.
LARGE_BUFFER = 32 * 1024 * 1024


@functools.cache  # once a process
def keep_large_buffers() -> bool:
    """Have glibc's malloc serve buffers of up to 32 MiB from its heap and keep 64 MiB of
    free heap, for the rest of the process; True once set (False: not glibc).

    An accounts proof decodes its archive twice in pieces of 4 MiB and holds its index's
    runs in arrays of megabytes. By default glibc maps each buffer over 128 KiB afresh and
    raises that bound only as mapped buffers are freed, so a process's first proof faulted
    in ~55,000 more pages than the next ones (0.1-0.15 s at a million accounts: bench/README.md,
    "History of the figures"). The same bounds glibc settles on by itself after its first
    large frees (a mapping threshold of at most 32 MiB, twice that of free heap kept), set at
    once."""
    mallopt = libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    return (
        mallopt is not None
        and mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER) == 1
        and mallopt(_M_TRIM_THRESHOLD, 2 * LARGE_BUFFER) == 1
    )
