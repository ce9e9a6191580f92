"""Checks of the ``ranking`` section's values: the order, speeds, sizes and the margin.

Pure functions raising ValueError with a message meant for the operator, as in
:mod:`tracker.config.values` (the loader puts the key path in front of it).
"""

from __future__ import annotations

import math

from tracker.config.values import above_zero, describe, size_in

#: The orders a group can rank by (docs/ranking.md).
RANKING_ORDERS = ("time_to_running", "slot")


def ranking_order(value: object) -> str:
    """``time_to_running`` or ``slot``."""
    if value not in RANKING_ORDERS:
        raise ValueError(f"must be one of {', '.join(RANKING_ORDERS)}, got {value!r}")
    return str(value)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {describe(value)}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


#: A finite number above 0.
positive_number = above_zero(_number, "above 0")


def throughput(value: object) -> float:
    """Bytes per second above 0: a number, or a size per second such as ``50MB/s`` (the rule of
    :func:`tracker.config.values.size_in` for rates)."""
    if isinstance(value, str):
        if not value.strip().endswith("/s"):
            raise ValueError(f"expected a speed like '50MB/s' or a number, got {value!r}")
        return float(_RATE(value))
    return positive_number(value)


_RATE = size_in(1, per_second=True)


def fraction(value: object) -> float:
    """A fraction from 0 to 1: a number (0.1) or a percentage (``10%``)."""
    if isinstance(value, str):
        text = value.strip()
        if not text.endswith("%"):
            raise ValueError(f"expected a percentage like '10%' or a number, got {value!r}")
        try:
            number = float(text[:-1]) / 100
        except ValueError:
            raise ValueError(f"expected a percentage like '10%', got {value!r}") from None
    else:
        number = _number(value)
    if not 0 <= number < 1:
        raise ValueError(f"must be from 0% to below 100%, got {value!r}")
    return number
