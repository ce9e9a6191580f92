"""What the proxy's parts share, given to each once: a frozen context, not a locator.

:class:`ProxyContext` holds the live config, the index, the transfers nursery, the metrics,
the rejected sources and the settings (read through a callable: one copy, the streamer's,
so that replacing the settings reaches every part, the download clients included). The
executors depend on the narrow protocols below, not on each other's attributes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs

from tracker.cache.refresh import Refresh
from tracker.config.schema import Config, TargetGroup
from tracker.core.index import Index
from tracker.core.metrics import ByteSource, Metrics, Outcome
from tracker.core.rejections import Rejections
from tracker.core.snapshots import ArchiveName
from tracker.files.answers import Answer
from tracker.proxy.ask import Ask
from tracker.proxy.decisions import Found
from tracker.proxy.settings import ProxySettings
from tracker.proxy.sharing import ReaderEvents
from tracker.proxy.transfers import Head, StreamJob, Transfers

Pump = Callable[..., Awaitable[None]]


@attrs.frozen
class ProxyContext:
    """The proxy's shared parts; see the module doc."""

    config: Callable[[], Config]
    index: Index
    transfers: Transfers
    settings: Callable[[], ProxySettings]
    metrics: Metrics | None
    rejections: Rejections


class Streams(Protocol):
    """Starting a file's streams and counting what they come to
    (:class:`tracker.proxy.streamjobs.Launcher`)."""

    def job(
        self,
        group: TargetGroup,
        ask: Ask,
        archive: ArchiveName,
        found: Found,
        *,
        origin: ByteSource = "upstream",
        zero_copy: bool = True,
    ) -> StreamJob:
        """The job of a stream of ``archive`` for ``ask`` from the sources of ``found``."""
        ...

    async def start(
        self, pump: Pump, *, refresh: Refresh | None = None, client: bool = True, failed: str = ""
    ) -> Head | Answer:
        """Start ``pump``: its Head, or the 502/503 answer."""
        ...

    async def relay(self, job: StreamJob) -> Answer:
        """A plain stream to one client, nothing cached."""
        ...

    def count(self, outcome: Outcome) -> None:
        """Count an archive request's outcome."""
        ...

    def reader_events(self, origin: ByteSource = "cache") -> ReaderEvents:
        """Metrics callbacks of a reader of a refresh's temp file."""
        ...

    def is_best(self, group: str, name: str) -> bool:
        """Whether ``name`` is its group's best full or incremental."""
        ...

    def index_size(self, group: str, name: str) -> int:
        """The file's size in the index (0: unknown)."""
        ...
