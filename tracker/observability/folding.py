"""Log lines a remote party can multiply, folded beyond a rate into one summary line.

A client causes a ``download`` line with each archive request, however small (a ``bytes=0-0``
GET costs it one round trip and the tracker ~1 ms of CPU), and the lines of a failing
proxied request or refresh with each request; a discovered node causes a ``probe_failed``
line each round it fails. Pipelined, such requests make thousands of lines a second, and a
journal's rate limit (journald: 10,000 lines per 30 s per unit by default) then drops every
line of the unit past it, the ones an operator needs among them (docs/http-api.md,
"Connections"). So each such line is logged through :func:`log_folded`: all of them
together have :data:`LINES_PER_WINDOW` lines in full per :data:`WINDOW` seconds, and those
past it are only counted, the counts logged as one ``log_lines_folded`` line when the window
ends (:meth:`LineFolder.flush`, called every window by the service and at the next folded
line) and kept exact in ``snapshot_tracker_log_lines_folded_total{event}``
(:class:`FoldedCounts`). Each event's first :data:`EACH_EVENT` lines of a window are logged
in full whatever the others spent: a flood of one kind (a client's tiny requests) never
hides every line of another (a refresh that fails for every client, with its reason). A
line its call site says is no flood's (``unfolded``: a download that moved at least a GiB, a
configured target's probe) is always logged and spends nothing: its rate is bounded by the
bandwidth or the config, not by a remote party.

The budget is the process's, as the log stream and the journal's limit are: one per
process, :data:`FOLDER`. Whether a line is logged is :func:`fold_verdict`'s decision, pure.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import attrs
from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.registry import Collector

from tracker.observability.collectors import PREFIX
from tracker.observability.logs import LEVELS, log_event

log = logging.getLogger("tracker.logs")

#: Lines logged in full per window, all folded events together: a 30 s interval of the
#: journal sees at most about half of it, 3% of journald's default burst.
LINES_PER_WINDOW = 600
#: Lines of each event logged in full per window whatever the others spent: the budget was
#: all events' together, so a client's flood of tiny requests spent it within seconds and a
#: refresh failing for every client was only a count in the summary, its reason never
#: written. The events are a fixed set of call sites (``log_folded``'s callers, about two
#: dozen): ten lines of each a window more at most.
EACH_EVENT = 10
#: Seconds of one window, and between two summary lines.
WINDOW = 60.0
#: Bytes a transfer must have moved for its line never to be folded: such lines come at
#: most once a GiB (~1.2 a second at 10 Gbit/s), whoever asks, and a real download's or
#: refresh's line stays however many small ones came.
UNFOLDED_BYTES = 1 << 30


def bulk(moved: int) -> bool:
    """Whether the line of a transfer that moved ``moved`` bytes is logged whatever the rate
    of lines (:data:`UNFOLDED_BYTES`). Pure."""
    return moved >= UNFOLDED_BYTES


@attrs.frozen
class FoldVerdict:
    """What :func:`fold_verdict` decided for one line."""

    #: The line is logged in full (else it is counted only).
    log: bool
    #: The window the line would have counted in has ended: its folded lines are summed up
    #: first and a new window starts with this line.
    closes: bool


def fold_verdict(
    started: float,
    logged: int,
    now: float,
    *,
    of_event: int = 0,
    unfolded: bool = False,
    budget: int = LINES_PER_WINDOW,
    each: int = EACH_EVENT,
    every: float = WINDOW,
) -> FoldVerdict:
    """Whether a line that comes at ``now`` is logged in full, in a window begun at
    ``started`` in which ``logged`` folded-kind lines were logged so far, ``of_event`` of
    them of this line's event: yes while they are fewer than ``budget`` or those of its
    event fewer than ``each``, and always when ``unfolded``. A window lasts ``every``
    seconds: a line at or past its end closes it and counts in a new one. Pure."""
    closes = now - started >= every
    spent, own = (0, 0) if closes else (logged, of_event)
    return FoldVerdict(log=unfolded or spent < budget or own < each, closes=closes)


class LineFolder:
    """The window of the lines of :func:`log_folded` and what it folded (see the module).
    Thread-safe: a line may come from a worker thread. ``clock`` is injectable for tests."""

    def __init__(
        self,
        budget: int = LINES_PER_WINDOW,
        every: float = WINDOW,
        *,
        each: int = EACH_EVENT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.every = every
        self.each = each
        self._clock = clock
        self._lock = threading.Lock()
        self._started = -math.inf
        self._logged = 0
        #: Lines logged in full in the current window, by event.
        self._logged_by: Counter[str] = Counter()
        #: Lines folded in the current window, by event, not yet summed up.
        self._folded: Counter[str] = Counter()
        #: Every line folded since the start, by event (the metric).
        self._totals: Counter[str] = Counter()

    def admit(self, event: str, *, unfolded: bool = False) -> bool:
        """Whether the line of ``event`` is logged in full now; a folded one is counted.
        The summary of a window that ended is logged first."""
        with self._lock:
            now = self._clock()
            verdict = fold_verdict(
                self._started,
                self._logged,
                now,
                of_event=self._logged_by[event],
                unfolded=unfolded,
                budget=self.budget,
                each=self.each,
                every=self.every,
            )
            ended = self._close(now) if verdict.closes else None
            if not verdict.log:
                self._folded[event] += 1
                self._totals[event] += 1
            elif not unfolded:
                self._logged += 1
                self._logged_by[event] += 1
        if ended:
            _summary(ended, self.every)
        return verdict.log

    def flush(self, *, final: bool = False) -> None:
        """Log the summary of the window when it ended with lines folded (``final``: now,
        whether it ended or not: the tracker stops)."""
        with self._lock:
            now = self._clock()
            ended = self._close(now) if final or now - self._started >= self.every else None
        if ended:
            _summary(ended, self.every)

    def _close(self, now: float) -> Counter[str]:
        """End the window (under the lock): a new one starts at ``now``; what the old one
        folded."""
        folded, self._folded = self._folded, Counter()
        self._started, self._logged, self._logged_by = now, 0, Counter()
        return folded

    def folded(self, event: str) -> int:
        """The lines of ``event`` folded since the start."""
        with self._lock:
            return self._totals[event]

    def totals(self) -> dict[str, int]:
        """Every event's lines folded since the start."""
        with self._lock:
            return dict(self._totals)


def _summary(folded: Counter[str], every: float) -> None:
    """The one line of a window's folded lines: how many of each event, and in all."""
    log_event(
        log,
        "warning",
        "log_lines_folded",
        exc_info=False,
        seconds=every,
        total=sum(folded.values()),
        **dict(sorted(folded.items())),
    )


#: The process's folder: the log stream is the process's.
FOLDER = LineFolder()


def log_folded(
    logger: logging.Logger,
    level: str,
    event: str,
    /,
    *,
    unfolded: bool = False,
    exc_info: BaseException | bool = False,
    **fields: object,
) -> None:
    """:func:`~tracker.observability.logs.log_event` for a line a remote party can cause
    once per request, connection or probe: logged while :data:`FOLDER`'s budget lasts, else
    folded into the window's summary. ``unfolded``: this one is no flood's (see the
    module), always logged."""
    if not logger.isEnabledFor(LEVELS[level]):
        return  # neither logged nor folded: the level says nobody wants it
    if FOLDER.admit(event, unfolded=unfolded):
        log_event(logger, level, event, exc_info=exc_info, **fields)


class FoldedCounts(Collector):
    """``snapshot_tracker_log_lines_folded_total{event}``, read from :data:`FOLDER` at each
    scrape: the labels are the folded events' names, a fixed set of call sites."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        """One counter family, a series per event folded at least once."""
        family = CounterMetricFamily(
            PREFIX + "log_lines_folded",
            "Log lines a remote party caused past the rate logged in full: counted, not logged.",
            labels=["event"],
        )
        for event, count in sorted(FOLDER.totals().items()):
            family.add_metric([event], count)
        yield family
