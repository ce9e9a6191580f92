"""``fetch`` follows a tracker that ranks by the time to a running node, priced with its own
ledger: a full the ledger holds costs nothing (docs/ranking.md)."""

from __future__ import annotations

from pathlib import Path

from helpers_bytes import MiB, archive_bytes
from helpers_proxy import GROUP, advertise, make_config, running_tracker
from helpers_upstream import FakeUpstream, serving
from names import full_name, incremental_name

from tracker.config.schema import Ranking, TargetGroup
from tracker.fetch.progress import NoProgress
from tracker.fetch.run import FetchOptions, run_fetch
from tracker.fetch.settings import FetchSettings
from tracker.ordering.index import TargetKey

NEWEST, ON_NEWEST = full_name(30_000), incremental_name(30_000, 30_100)
OLDER, ON_OLDER = full_name(20_000), incremental_name(20_000, 29_990)
FILES = {
    NEWEST: archive_bytes(6 * MiB, seed=1),
    ON_NEWEST: archive_bytes(MiB, seed=2),
    OLDER: archive_bytes(6 * MiB, seed=3),
    ON_OLDER: archive_bytes(MiB, seed=4),
}
SETTINGS = FetchSettings(connections=2, piece_size=MiB, min_speed=0, verify=False)


async def test_a_full_in_the_ledger_costs_nothing(tmp_path: Path) -> None:
    """The source is measured slow (100 kB/s): for a node with nothing the newest pair is
    the fastest to run (the tracker hands it out), but a ledger holding the older full runs
    sooner on that full's recent incremental: only that is downloaded."""
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / OLDER).write_bytes(FILES[OLDER])
    group = TargetGroup(group=GROUP, ranking=Ranking())
    config = make_config(None, proxy_snapshot_downloads=False, target_groups=(group,))
    async with serving(FakeUpstream(files=dict(FILES))) as up, running_tracker(config) as t:
        advertise(t.index, up.base, [(n, up.url(n), len(d)) for n, d in FILES.items()])
        t.index.record_transfer(TargetKey(GROUP, up.base), 100_000, 1.0)
        best = t.index.best_full(GROUP)
        assert best is not None and best.info.slot == 30_000
        options = FetchOptions(
            ledger=str(ledger), tracker=t.base, progress="none", settings=SETTINGS
        )
        results = await run_fetch(options, NoProgress())
        assert not up.gets(NEWEST) and not up.gets(ON_NEWEST)
    assert [Path(r.path).name for r in results] == [ON_OLDER]
