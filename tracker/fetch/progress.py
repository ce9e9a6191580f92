"""What a fetch shows while it runs: a progress bar on a terminal, log lines otherwise.

On a terminal, tqdm draws one bar per file (bytes, rate, ETA). Without one (systemd, CI,
a pipe) a log line every few seconds says the same, so a journal shows progress too. Both
end with the caller's summary line.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Never, Protocol, TextIO

from tqdm import tqdm

from tracker.observability.logs import log_event

log = logging.getLogger("tracker.fetch")


class Progress(Protocol):
    """Told what a download does; cheap calls from the event loop."""

    def start(self, name: str, size: int, done: int) -> None:
        """A download of ``size`` bytes starts, ``done`` of them already on disk."""

    def add(self, count: int) -> None:
        """``count`` more bytes were written."""

    def finish(self) -> None:
        """The download ended (complete or not)."""


class NoProgress:
    """Shows nothing (``--progress none``)."""

    def start(self, name: str, size: int, done: int) -> None:
        return None

    def add(self, count: int) -> None:
        return None

    def finish(self) -> None:
        return None


class BarProgress:
    """A tqdm bar on ``stream`` (a terminal). A stream that cannot be written (a full disk,
    a closed terminal) ends the bar, never the download: what is shown is no part of it."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._bar: tqdm[Never] | None = None
        self._broken = False

    def start(self, name: str, size: int, done: int) -> None:
        if self._broken:
            return
        try:
            self._bar = tqdm(
                total=size,
                initial=done,
                desc=name[:48],
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self._stream,
                dynamic_ncols=True,
                mininterval=0.2,
            )
        except (OSError, ValueError):  # ValueError: a closed stream
            self._give_up()

    def add(self, count: int) -> None:
        if self._bar is not None:
            try:
                self._bar.update(count)
            except (OSError, ValueError):
                self._give_up()

    def finish(self) -> None:
        if self._bar is not None:
            try:
                self._bar.close()
            except (OSError, ValueError):
                self._give_up()
            self._bar = None

    def _give_up(self) -> None:
        """Show nothing more: the stream refused a write (the bar disabled first, so that
        it writes nothing as it is collected either)."""
        if self._bar is not None:
            self._bar.disable = True
        self._bar, self._broken = None, True


class LogProgress:
    """One ``fetch_progress`` log line every ``every`` seconds."""

    def __init__(self, every: float = 5.0) -> None:
        self._every = every
        self._name = ""
        self._size = self._done = 0
        self._since = self._last = 0.0
        self._at_start = 0

    def start(self, name: str, size: int, done: int) -> None:
        self._name, self._size, self._done, self._at_start = name, size, done, done
        self._since = self._last = time.monotonic()

    def add(self, count: int) -> None:
        self._done += count
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            rate = (self._done - self._at_start) / max(now - self._since, 1e-9)
            eta = (self._size - self._done) / rate if rate > 0 else float("inf")
            log_event(
                log,
                "info",
                "fetch_progress",
                file=self._name,
                done=self._done,
                size=self._size,
                percent=round(100 * self._done / max(1, self._size), 1),
                rate=f"{rate / 2**20:.1f}MiB/s",
                eta=f"{eta:.0f}s",
            )

    def finish(self) -> None:
        return None


def progress_for(mode: str, stream: TextIO | None = None, *, every: float = 5.0) -> Progress:
    """``auto``: a bar when ``stream`` (stderr) is a terminal, else log lines (one every
    ``every`` seconds). A terminal that says it has no columns (a pseudo-terminal nobody
    sized: ``script``, some ``ssh``/``docker exec`` sessions) gets log lines for ``bar`` too:
    tqdm draws an empty bar there, so nothing would show until the file is done."""
    stream = stream if stream is not None else sys.stderr
    if mode == "none" or stream is None:  # None: started with stderr closed (2>&-)
        return NoProgress()
    if (mode == "bar" or (mode == "auto" and stream.isatty())) and not _unsized_terminal(stream):
        return BarProgress(stream)
    return LogProgress(every)


def _unsized_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is a terminal whose size is 0 columns."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns == 0
    except (OSError, ValueError, AttributeError):  # no descriptor, or not a terminal
        return False
