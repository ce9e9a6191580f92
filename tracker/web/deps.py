"""What the public API reads, as one value the composition root builds: the live config, the
index, the scrape loop, the byte paths and the helpers. Its own module so that the routes
(:mod:`tracker.web.api`) and the short redirects answered before them
(:mod:`tracker.web.shortcuts`) both depend on it, not on each other.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from tracker.config.schema import Config
from tracker.core.digests import Digests
from tracker.discovery.scrape import Scraper
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.sourcehistory import Flowing, Rejections
from tracker.proof.records.attestations import Attestations
from tracker.proof.records.localcopies import Checked
from tracker.web.delivery import Delivery
from tracker.web.healthcheck import HealthChecker

#: ``(route template, status, seconds to the response head or None)`` of every answer.
ResponseCounter = Callable[[str, int, float | None], None]


async def _nothing_to_confirm(_group: str, _name: str) -> None:
    """No disk cache: no copy of its to confirm."""


@attrs.define
class ApiDeps:
    """What the API reads: the live config (swapped on reload), the index, and helpers."""

    config: Callable[[], Config]
    index: Index
    scraper: Scraper
    delivery: Delivery
    health: HealthChecker
    #: The object store's status (docs/http-api.md#with-an-object-store-object_store), None
    #: without one.
    store_status: Callable[[], dict[str, Any] | None] = lambda: None
    #: Digests of the archives held verified, and sources whose copy failed its check
    #: (docs/http-api.md, "Verified archives").
    digests: Digests = attrs.Factory(Digests)
    rejections: Rejections = attrs.Factory(Rejections)
    #: The signed statements of those archives (docs/http-api.md, "Signed statements").
    attestations: Attestations = attrs.Factory(
        lambda self: Attestations(self.digests), takes_self=True
    )
    #: Seconds since the epoch (statements are signed and expire on this clock).
    wall_clock: Callable[[], float] = time.time
    #: Monotonic seconds (rejections run out on this clock).
    clock: Callable[[], float] = trio.current_time
    #: Per group: why its last refresh streamed uncached for want of disk room.
    uncached: Callable[[], Mapping[str, str]] = dict
    #: Per target: how the latest refresh from several sources that asked it used it.
    sources_used: Callable[[], Mapping[TargetKey, Mapping[str, object]]] = dict
    #: The sources bytes come from now: a target's rate meanwhile is shown before the
    #: index's throughput, which is measured when a transfer ends.
    flowing: Flowing = attrs.Factory(Flowing)
    #: What the checks of a local target's files said, by name (docs/architecture.md,
    #: "Proven archives"; None: not checked yet).
    local_checks: Callable[[TargetKey], list[tuple[str, Checked | None]]] = lambda _key: []
    #: Asked of (group, name) before a digest route answers: the disk cache forgets the
    #: digest of its copy of a file replaced or written under its name since its check
    #: (docs/http-api.md, "Verified archives"); RequestError(503) when the cache directory
    #: hangs.
    confirm_cached: Callable[[str, str], Awaitable[None]] = _nothing_to_confirm
