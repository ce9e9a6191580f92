"""Probe results on their way to the index: one by one between rounds, in batches during one.

During a round results reach the index every :data:`APPLY_EVERY` seconds, not one by one:
each change re-ranks the index on the next read, which with thousands of targets answering
within a second would keep the API busy re-ranking (bench: cluster discovery).

The index keeps what each target contributes within a bound (docs/http-api.md, "Snapshot
sources"); a target whose answer it cuts is logged once (``listing_trimmed``), not again
while its answers keep being cut.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

import trio

from tracker.core.snapshots import SnapshotInfo
from tracker.observability.folding import log_folded
from tracker.ordering.index import Index, TargetKey

log = logging.getLogger("tracker.scrape")

#: Seconds between two hand-overs of probe results to the index during a round.
APPLY_EVERY = 0.25


class ResultBatches:
    """Probe results not handed to the index yet; ``changed`` is called at each hand-over
    (what ``/v1/targets`` shows may have changed with it)."""

    def __init__(self, index: Index, changed: Callable[[], None]) -> None:
        self.index = index
        self._changed = changed
        self._pending: dict[TargetKey, tuple[list[SnapshotInfo], datetime, float]] = {}
        #: True during a round: results wait for the next hand-over.
        self.batching = False

    def add(self, key: TargetKey, infos: list[SnapshotInfo], at: datetime, latency: float) -> None:
        """A target's probe result (it replaces one of the same target still pending)."""
        self._pending[key] = (infos, at, latency)
        if not self.batching:
            self.flush()

    def waiting(self) -> list[TargetKey]:
        """The targets whose results wait for the next hand-over."""
        return list(self._pending)

    def drop(self, key: TargetKey) -> None:
        """Forget a target: its pending result, if any, and what the index holds of it."""
        self._pending.pop(key, None)
        self.index.drop(key)

    @asynccontextmanager
    async def batched(self, every: float = APPLY_EVERY) -> AsyncIterator[None]:
        """Within: results reach the index every ``every`` seconds, and the rest at the end."""
        self.batching = True
        try:
            async with trio.open_nursery() as flusher:
                flusher.start_soon(self._flush_every, every)
                yield
                flusher.cancel_scope.cancel()
        finally:
            self.batching = False
            self.flush()

    async def _flush_every(self, seconds: float) -> None:
        while True:
            await trio.sleep(seconds)
            self.flush()

    def flush(self) -> None:
        """Hand every pending result to the index now."""
        self._changed()
        pending, self._pending = self._pending, {}
        cut = self.index.apply_many((k, i, at, lat) for k, (i, at, lat) in pending.items())
        for key, dropped in cut:
            log_folded(
                log,
                "info",
                "listing_trimmed",
                unfolded=not key.discovered,
                group=key.group,
                target=key.target,
                kept=self.index.count(key),
                dropped=dropped,
            )
