"""Per-target probe metrics, one small array of numbers per target.

A ``prometheus_client`` histogram child holds a value object and a lock per bucket. With
3,000 discovered nodes that made ~100,000 objects for Python's cyclic garbage collector to
walk, and each of its full collections stopped the event loop for 60-140 ms during a scrape
round (bench: cluster discovery; the API's p99 was those pauses). Here each target's series
live in one ``array('d')``, which the collector does not track at all, and the exposition is
built when ``/metrics`` is read. Its text is the one ``prometheus_client`` gives for a
``Histogram`` and a ``Counter`` labelled ``group`` and ``target`` (a test compares them).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


def _le_texts(bounds: Sequence[float]) -> list[str]:
    """The exact ``le`` texts prometheus_client writes for ``bounds`` (``+Inf``, ``0.005``,
    ``1e+06``...), read from a histogram of its own (no registry) by its public API."""
    model = Histogram("le_texts", "", buckets=bounds, registry=None)
    [family] = model.collect()
    return [s.labels["le"] for s in family.samples if s.name.endswith("_bucket")]


class ProbeSeries(Collector):
    """Probe durations (a histogram) and failed probes (a counter) per ``(group, target)``.

    Thread-safe: one lock guards the series (``/metrics`` is rendered in a worker thread).
    ``clock`` gives the ``_created`` timestamps (seconds since the epoch).
    """

    def __init__(
        self,
        duration_name: str,
        duration_help: str,
        errors_name: str,
        errors_help: str,
        buckets: Sequence[float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._duration = (duration_name, duration_help)
        # A counter's family is named without ``_total``, as prometheus_client names it.
        self._errors = (errors_name.removesuffix("_total"), errors_help)
        self._bounds = (*sorted(buckets), math.inf)
        self._les = _le_texts(self._bounds)
        self._clock = clock
        self._lock = threading.Lock()
        #: Per series: a count per bucket (not cumulative), then the fields below.
        self._series: dict[tuple[str, str], array[float]] = {}

    @property
    def _sum(self) -> int:
        return len(self._bounds)

    def observe(self, group: str, target: str, seconds: float, *, failed: bool) -> None:
        """One probe took ``seconds``; ``failed`` also counts an error. The first call for a
        series creates both of its metrics (the error counter at 0)."""
        with self._lock:
            values = self._series.get((group, target))
            if values is None:
                now = self._clock()
                # buckets..., sum, errors, created (histogram), created (counter)
                values = array("d", [0.0] * len(self._bounds) + [0.0, 0.0, now, now])
                self._series[(group, target)] = values
            # A bucket counts the values up to and including its bound.
            values[bisect.bisect_left(self._bounds, seconds)] += 1
            values[self._sum] += seconds
            if failed:
                values[self._sum + 1] += 1

    def remove(self, group: str, target: str) -> None:
        """Drop both series of ``(group, target)`` (nothing happens when there are none)."""
        with self._lock:
            self._series.pop((group, target), None)

    def collect(self) -> Iterator[Metric]:
        """The two metric families, in the order the series were created."""
        with self._lock:
            series = [(labels, values.tolist()) for labels, values in self._series.items()]
        created = created_series()
        duration = Metric(*self._duration, "histogram")
        errors = Metric(*self._errors, "counter")
        for (group, target), values in series:
            labels = {"group": group, "target": target}
            self._histogram(duration, labels, values, created=created)
            errors.add_sample(errors.name + "_total", labels, values[self._sum + 1])
            if created:
                errors.add_sample(errors.name + "_created", labels, values[self._sum + 3])
        yield duration
        yield errors

    def _histogram(
        self, metric: Metric, labels: dict[str, str], values: list[float], *, created: bool
    ) -> None:
        total = 0.0
        for le, count in zip(self._les, values, strict=False):
            total += count
            metric.add_sample(metric.name + "_bucket", {**labels, "le": le}, total)
        metric.add_sample(metric.name + "_count", labels, total)
        metric.add_sample(metric.name + "_sum", labels, values[self._sum])
        if created:
            metric.add_sample(metric.name + "_created", labels, values[self._sum + 2])


def created_series() -> bool:
    """True when prometheus_client writes ``_created`` series (``disable_created_metrics()``
    and ``PROMETHEUS_DISABLE_CREATED_SERIES`` turn them off for every metric): asked of an
    unregistered counter through the public ``collect()``, so that these series follow it."""
    probe = Counter("created_probe", "", registry=None)
    return any(s.name.endswith("_created") for m in probe.collect() for s in m.samples)
