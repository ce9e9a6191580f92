"""The status page's targets say why a copy was kept out of the ranking by a proof (its
``trust.require``, docs/architecture.md "Proven archives"), as ``/v1/targets`` does."""

from __future__ import annotations

from typing import Any

from tracker.discovery.roster import Target, TargetHealth
from tracker.ordering.index import Index, TargetKey
from tracker.web.statusgather import StatusSources, _targets
from tracker.web.wire import DISPROVEN


def sources(index: Index) -> StatusSources:
    nothing: Any = None
    return StatusSources(
        config=nothing,
        index=index,
        scraper=nothing,
        cache=lambda: None,
        listing=nothing,
        refreshes=list,
        store_status=lambda: None,
        events=nothing,
    )


def test_a_disproven_copy_shows_its_reason_on_the_status_page() -> None:
    index = Index()
    key = TargetKey("mainnet", "http://a")
    reason = "proven to manifest, cluster required: cluster not proven: 30.0% of the stake"
    index.disprove(key, "snapshot-5000-x.tar.zst", reason)
    health = TargetHealth(Target(key, "http", "http://a"), health="up")
    (view,) = _targets(sources(index), [health])
    assert view.last_error == f"{DISPROVEN}snapshot-5000-x.tar.zst: {reason}"
    index.disprove(key, "snapshot-5000-x.tar.zst", None)  # proven after all
    (view,) = _targets(sources(index), [health])
    assert view.last_error == ""
