"""The background loop both provers of this package run: a round every ``every`` seconds.

:class:`tracker.proof.background.heads.HeadProofs` and
:class:`tracker.proof.background.localfiles.LocalProofs` look at what is due once a second and start
each read or check in the background, so that a slow one never holds back the next round; a read
that failed for a reason not the archive's is tried again ``retry_after`` seconds later.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import trio

from tracker.config.schema import Config
from tracker.ordering.index import Index

#: How often what is due is looked at (seconds).
CHECK_EVERY = 1.0
#: A read that failed for the source's (or the disk's) reason is tried again after this many
#: seconds.
RETRY_AFTER = 60.0


class Rounds(ABC):
    """Rounds of proofs over the config and the index, started by the service."""

    def __init__(
        self, config: Callable[[], Config], index: Index, every: float, retry_after: float
    ) -> None:
        self._config = config
        self._index = index
        self._every = every
        self._retry_after = retry_after
        #: Rounds completed (tests wait on it).
        self.rounds = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run a round every ``every`` seconds, what it starts in the background of one
        nursery, until cancelled."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                await self.round(nursery)
                await trio.sleep(self._every)

    @abstractmethod
    async def round(self, nursery: trio.Nursery | None = None) -> int:
        """Start what is due now in ``nursery`` (None: one after another, awaited); how many
        were due or decided."""
