"""``fetch`` follows a tracker that ranks by the time to a running node, priced with its own
ledger: a full the ledger holds costs nothing (docs/ranking.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import GROUP, advertise, make_config, running_tracker
from helpers_upstream import FakeUpstream, serving
from names import full_name, incremental_name

from tracker.config.schema import Ranking, TargetGroup
from tracker.errors import FetchError
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


async def fetched_without_a_group(tmp_path: Path, *, proxied: bool, others: int) -> list[str]:
    """What a fetch without ``--group`` puts into a fresh ledger from a tracker of two
    groups: this one's older pair, and ``others`` sources of the other group's newer full."""
    ours = {OLDER: FILES[OLDER], ON_OLDER: FILES[ON_OLDER]}
    other = {full_name(90_000): archive_bytes(2 * MiB, seed=5)}
    groups = (
        TargetGroup(group=GROUP, ranking=Ranking()),
        TargetGroup(group="testnet", ranking=Ranking()),
    )
    cache = tmp_path / "cache" if proxied else None
    config = make_config(cache, proxy_snapshot_downloads=proxied, target_groups=groups)
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    async with serving(FakeUpstream(files={**ours, **other})) as up, running_tracker(config) as t:
        advertise(t.index, f"{up.base}/m", [(n, up.url(n), len(d)) for n, d in ours.items()])
        theirs = [(n, up.url(n), len(d)) for n, d in other.items()]
        for i in range(others):
            advertise(t.index, f"{up.base}/t{i}", theirs, group="testnet")
        options = FetchOptions(
            ledger=str(ledger), tracker=t.base, progress="none", settings=SETTINGS
        )
        results = await run_fetch(options, NoProgress())
    return sorted(Path(r.path).name for r in results)


@pytest.mark.parametrize("proxied", [False, True], ids=["redirect", "proxy"])
async def test_fetch_without_a_group_takes_the_default_groups_pair(
    tmp_path: Path, proxied: bool
) -> None:
    """Two groups, the other's slots higher: a listing without a group names both, and
    fetch took the other cluster's pair into this node's ledger (``--group`` says "default:
    its default group"). The default group is learned from the tracker's redirect (a source's
    URL in redirect mode, the tracker's route naming the group in proxy mode)."""
    got = await fetched_without_a_group(tmp_path, proxied=proxied, others=1)
    assert got == sorted([OLDER, ON_OLDER])


async def test_fetch_without_a_group_finds_its_group_past_another_groups_25_best(
    tmp_path: Path,
) -> None:
    """Redirect mode, another group's slots higher and its sources more than the 25 that
    ``/v1/best_snapshots`` lists: the default group's redirect (one of its sources) matched
    nothing listed there, and the one group listed (the other) was taken."""
    got = await fetched_without_a_group(tmp_path, proxied=False, others=26)
    assert got == sorted([OLDER, ON_OLDER])


async def test_fetch_without_a_group_asks_for_one_when_the_tracker_does_not_tell(
    tmp_path: Path,
) -> None:
    """The default group holds nothing (its redirect answers 202): which group to take is
    not known, and fetch names the groups instead of taking another cluster's archives."""
    config = make_config(
        None,
        proxy_snapshot_downloads=False,
        default_group=GROUP,
        target_groups=(TargetGroup(group=GROUP), TargetGroup(group="testnet")),
    )
    other = {full_name(90_000): archive_bytes(2 * MiB, seed=5)}
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    async with serving(FakeUpstream(files=other)) as up, running_tracker(config) as t:
        listed = [(n, up.url(n), len(d)) for n, d in other.items()]
        advertise(t.index, f"{up.base}/t", listed, group="testnet")
        advertise(t.index, f"{up.base}/m", [], group=GROUP)
        options = FetchOptions(
            ledger=str(ledger), tracker=t.base, progress="none", settings=SETTINGS
        )
        wanted = r"default group has no snapshot \(it lists groups testnet\); name one with"
        with pytest.raises(FetchError, match=wanted):
            await run_fetch(options, NoProgress())
    assert not up.seen and list(ledger.iterdir()) == []
