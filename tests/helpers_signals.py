"""Signals in the test's own process: a stop whose KeyboardInterrupt the interpreter drops
(tracker/cli.py raises it again until it lands), and what such a drop leaves behind."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class DroppedStop:
    """Sends ``signum`` when collected: its handler runs inside ``__del__``, where the
    interpreter drops the KeyboardInterrupt it raises (as inside a weakref's callback)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        signal.raise_signal(self.signum)


@contextmanager
def drops_kept() -> Iterator[list[object]]:
    """What the interpreter drops meanwhile is kept here, not handed to pytest's hook; once
    the block ends, no timer is left to raise a stop again."""
    dropped: list[object] = []
    hook, sys.unraisablehook = sys.unraisablehook, dropped.append
    try:
        yield dropped
    finally:
        sys.unraisablehook = hook
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
