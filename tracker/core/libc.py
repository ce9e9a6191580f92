"""Functions of the C library that Python's os module lacks (Linux: glibc).

Each is an optimisation or a capability its caller can do without, so a platform or a C
library without it gives None and the caller takes its fallback.
"""

from __future__ import annotations

import ctypes
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
