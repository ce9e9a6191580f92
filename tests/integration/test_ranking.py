"""Ranking by the time to a running node, over HTTP against the tracker's own components:
the JSON's predictions, the short redirects following the pair handed out, the Go tracker's
answers without a ``ranking`` section, and one answer between equal candidates."""

from __future__ import annotations

import json

import pytest
import trio
from helpers_ports import REFUSED
from helpers_proxy import GROUP, advertise, make_config, running_tracker
from helpers_wire import raw_request
from names import archive_hash, full_name, incremental_name

from tracker.config.schema import Ranking, TargetGroup
from tracker.ordering.index import TargetKey

MB = 1_000_000
NEWEST = full_name(1000)
OLDER = full_name(900)
INCR = incremental_name(900, 990)
SLOW, FAST = f"http://{REFUSED}/slow", f"http://{REFUSED}/fast"
RANKING = Ranking(by="time_to_running", replay_slots_per_second=25, slot_seconds=0.4)


def config(ranking: Ranking | None):  # type: ignore[no-untyped-def]
    group = TargetGroup(group=GROUP, ranking=ranking)
    return make_config(None, proxy_snapshot_downloads=False, target_groups=(group,))


async def location(base: str, short: str) -> str:
    wire = await raw_request(base, f"/v1/{short}?group={GROUP}", idle=0)
    assert wire.status == 303, wire
    return (wire.header("location") or "").rsplit("/", 1)[-1]


async def best_snapshots(base: str) -> list[dict[str, object]]:
    wire = await raw_request(base, f"/v1/best_snapshots?group={GROUP}", idle=0)
    assert wire.status == 200
    body = json.loads(wire.body)
    assert isinstance(body, list)
    return body


def advertise_two(index) -> None:  # type: ignore[no-untyped-def]
    """The newest full on a slow source; an older full with a recent incremental on a fast."""
    advertise(index, SLOW, [(NEWEST, f"{SLOW}/{NEWEST}", 2000 * MB)])
    fast = [(OLDER, f"{FAST}/{OLDER}", 2000 * MB), (INCR, f"{FAST}/{INCR}", 50 * MB)]
    advertise(index, FAST, fast)
    index.record_transfer(TargetKey(GROUP, SLOW), 20 * MB, 1.0)
    index.record_transfer(TargetKey(GROUP, FAST), 200 * MB, 1.0)


@pytest.mark.parametrize(
    ("ranking", "full", "incremental", "first", "predicted"),
    [
        (None, NEWEST, None, NEWEST, False),
        (Ranking(by="slot"), NEWEST, None, NEWEST, False),
        (RANKING, OLDER, INCR, INCR, True),
    ],
    ids=["no-ranking", "by-slot", "time-to-running"],
)
async def test_json_and_redirects_follow_the_ranking(
    ranking: Ranking | None, full: str, incremental: str | None, first: str, predicted: bool
) -> None:
    async with running_tracker(config(ranking)) as t:
        advertise_two(t.index)
        listing = await best_snapshots(t.base)
        files = listing[0]["files"]
        assert isinstance(files, list) and files[0]["file_name"].endswith(first)
        # Additive: present on every pair when ranked by it, absent (the Go JSON) otherwise.
        assert {"predicted_seconds" in e for e in listing} == {predicted}
        if predicted:
            seconds = {e["slot"]: e["predicted_seconds"] for e in listing}
            assert seconds == {1000: 111.1, 990: 11.8, 900: 15.6}
        assert await location(t.base, "snapshot.tar.bz2") == full
        if incremental is None:
            wire = await raw_request(t.base, f"/v1/incremental-snapshot.tar.bz2?group={GROUP}")
            assert wire.status == 202
        else:
            assert await location(t.base, "incremental-snapshot.tar.bz2") == incremental


async def test_equal_candidates_keep_one_answer_between_requests() -> None:
    """Two fulls a slot apart from sources as fast as each other, whose measurements take
    turns being the faster: every request gets the same full. (One slot has one hash: two
    at one slot are screened, the majority's kept, none on a tie.)"""
    a, b = full_name(1000), full_name(999, hash_=archive_hash(12345))
    async with running_tracker(config(RANKING)) as t:
        advertise(t.index, SLOW, [(a, f"{SLOW}/{a}", 1000 * MB)])
        advertise(t.index, FAST, [(b, f"{FAST}/{b}", 1000 * MB)])
        answers = set()
        for n in range(20):
            faster, slower = (SLOW, FAST) if n % 2 else (FAST, SLOW)
            t.index.record_transfer(TargetKey(GROUP, faster), 104 * MB, 1.0)
            t.index.record_transfer(TargetKey(GROUP, slower), 96 * MB, 1.0)
            answers.add(await location(t.base, "snapshot.tar.bz2"))
            listing = await best_snapshots(t.base)
            answers.add(listing[0]["files"][0]["file_name"].rsplit("/", 1)[-1])  # type: ignore[index]
            await trio.lowlevel.checkpoint()
        assert len(answers) == 1


async def test_the_listing_on_one_full_keeps_the_order_of_the_time_ranking() -> None:
    """``?slot=B`` is the listing's order, filtered: in a group ranked by time the pair
    handed out first, not the newest slot first (the short redirect and the listing a
    client takes the first of must agree)."""
    full, small, big = full_name(900), incremental_name(900, 990), incremental_name(900, 995)
    async with running_tracker(config(RANKING)) as t:
        advertise(
            t.index,
            FAST,
            [(full, f"{FAST}/{full}", 2000 * MB), (small, f"{FAST}/{small}", 50 * MB)],
        )
        advertise(
            t.index, SLOW, [(full, f"{SLOW}/{full}", 2000 * MB), (big, f"{SLOW}/{big}", 1500 * MB)]
        )
        t.index.record_transfer(TargetKey(GROUP, SLOW), 20 * MB, 1.0)
        t.index.record_transfer(TargetKey(GROUP, FAST), 200 * MB, 1.0)
        assert await location(t.base, "incremental-snapshot.tar.bz2") == small

        async def names(query: str) -> list[str]:
            wire = await raw_request(t.base, f"/v1/snapshots?group={GROUP}{query}", idle=0)
            return [e["files"][0]["file_name"].rsplit("/", 1)[-1] for e in json.loads(wire.body)]

        every, on_full = await names(""), await names("&slot=900")
        assert on_full == [name for name in every if name in on_full]
        assert on_full[0] == small
