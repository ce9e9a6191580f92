"""``fetch`` over every source a tracker lists: its JSON written by the test (the additive
``url`` and ``sha256`` keys of a file, docs/http-api.md) served by a small real HTTP server,
the sources sidecar-like upstreams, all on 127.0.0.1."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from archives import archive_name, compress, make_tar, snapshot_entries, status_cache_of
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_fetch import (
    CountingUpstream,
    FakeTracker,
    SigningStore,
    sidecar_url,
    tracker_entries,
)
from helpers_proxy import GROUP
from helpers_upstream import Behaviour, FakeUpstream, agave_rpc, serving
from names import full_name, incremental_name
from test_fetch import (
    FAST,
    FILES,
    FULL,
    INCR,
    fetch_command,
    ledger_of,
    options,
    run_cli,
    the_error_line,
)

from tracker.core.snapshots import parse_archive_name
from tracker.errors import FetchError
from tracker.fetch.listing import default_group
from tracker.fetch.progress import NoProgress
from tracker.fetch.run import FetchOptions, run_fetch

#: The identity samples compared before two sources are used together (3 x 64 KiB).
SAMPLES = 3 * 64 * 1024
#: Another group's full, newer than this one's.
NEWER, NEWER_DATA = full_name(90_000), archive_bytes(2 * MiB, seed=43)


@asynccontextmanager
async def tracker_of(
    sidecars: list[FakeUpstream], *, redirect_to: FakeUpstream | None = None, **listing: Any
) -> AsyncIterator[FakeTracker]:
    """A tracker (redirect mode) whose JSON lists every sidecar (best first) with its files,
    and whose route ``/v1/{group}/{name}`` redirects to ``redirect_to`` (default: the
    first)."""
    async with AsyncExitStack() as stack:
        for sidecar in sidecars:
            await stack.enter_async_context(serving(sidecar))
        entries = [e for s in sidecars for e in tracker_entries(s, s.files, **listing)]
        fake = FakeTracker(entries=entries)
        target = redirect_to or sidecars[0]
        for name in target.files:
            fake.behaviour[name] = Behaviour(redirect_to=sidecar_url(target, name))
        yield await stack.enter_async_context(serving(fake))


def body_bytes(up: FakeUpstream, name: str) -> int:
    return sum(s.body_sent for s in up.gets(name))


@pytest.mark.parametrize("url", [True, False])
async def test_every_sidecar_holding_the_archive_is_used(url: bool, tmp_path: Path) -> None:
    """Two sidecars with the same archives, the tracker redirecting to the first: with the
    files' ``url`` both carry the download, and from an older tracker (no ``url``: the
    sidecars' names are bare) so do they, at each entry's ``target``'s sidecar route."""
    a, b = FakeUpstream(files=dict(FILES)), FakeUpstream(files=dict(FILES))
    ledger = ledger_of(tmp_path)
    async with tracker_of([a, b], url=url) as tracker:
        results = await run_fetch(options(ledger, tracker.base), NoProgress())
    assert [Path(r.path).name for r in results] == [FULL, INCR]
    assert all(sha256((ledger / n).read_bytes()) == sha256(d) for n, d in FILES.items())
    assert body_bytes(a, FULL) > SAMPLES
    assert body_bytes(b, FULL) > SAMPLES, "the second sidecar carried nothing"


async def test_a_go_tracker_without_a_route_for_the_bytes_is_fetched_from(tmp_path: Path) -> None:
    """The Go tracker lists bare names and its sidecars as ``target``s, and has no route
    for the bytes: every download from it failed (404 at ``/v1/{group}/{name}``). Its
    sidecars' route is where its own fetch reads them."""
    sidecar = FakeUpstream(files=dict(FILES))
    ledger = ledger_of(tmp_path)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(serving(sidecar))
        go = FakeTracker(entries=tracker_entries(sidecar, sidecar.files, url=False))
        await stack.enter_async_context(serving(go))
        results = await run_fetch(options(ledger, go.base), NoProgress())
    assert [Path(r.path).name for r in results] == [FULL, INCR]
    assert all(sha256((ledger / n).read_bytes()) == sha256(d) for n, d in FILES.items())


async def test_the_default_group_is_found_past_another_groups_25_best_in_its_fulls_listing(
    tmp_path: Path,
) -> None:
    """Another group's 26 sources fill the 25 best of every group: the default group's
    redirect (to one of its sidecars) is looked for among the sources of that full
    (``/v1/snapshots?slot=``), never in the listing of every source (which a fleet of
    thousands of nodes makes larger than any bound: fetch failed)."""
    ours = FakeUpstream(files=dict(FILES))
    theirs = [FakeUpstream(files={NEWER: NEWER_DATA}) for _ in range(26)]
    async with AsyncExitStack() as stack:
        for sidecar in (ours, *theirs):
            await stack.enter_async_context(serving(sidecar))
        entries = [
            *(
                e | {"group": "testnet"}
                for up in theirs
                for e in tracker_entries(up, up.files, url=False)
            ),
            *tracker_entries(ours, ours.files, url=False),
        ]
        tracker = FakeTracker(entries=entries)
        tracker.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=sidecar_url(ours, FULL))
        await stack.enter_async_context(serving(tracker))
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            assert await default_group(client, tracker.base, within=5) == GROUP
    asked = [s.target for s in tracker.seen if s.target.startswith("/v1/snapshots")]
    assert asked == [f"/v1/snapshots?slot={parse_archive_name(FULL).slot}"]  # type: ignore[union-attr]


async def test_the_default_group_of_a_go_tracker_of_two_groups_is_found(tmp_path: Path) -> None:
    """A Go tracker of two groups, another's slots higher: its redirect goes to a sidecar's
    route ``{target}/v1/snapshot/{name}``, which fetch builds for a bare name but did not
    look for (and read ``snapshot`` in it as a group): every fetch without ``--group``
    failed."""
    ours, theirs = FakeUpstream(files=dict(FILES)), FakeUpstream(files={NEWER: NEWER_DATA})
    ledger = ledger_of(tmp_path)
    async with AsyncExitStack() as stack:
        for sidecar in (ours, theirs):
            await stack.enter_async_context(serving(sidecar))
        entries = [
            *(e | {"group": "testnet"} for e in tracker_entries(theirs, theirs.files, url=False)),
            *tracker_entries(ours, ours.files, url=False),
        ]
        go = FakeTracker(entries=entries)
        go.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=sidecar_url(ours, FULL))
        await stack.enter_async_context(serving(go))
        results = await run_fetch(options(ledger, go.base), NoProgress())
    assert [Path(r.path).name for r in results] == [FULL, INCR]
    assert not theirs.gets()


async def test_a_sidecar_dying_mid_way_leaves_the_download_to_the_other(tmp_path: Path) -> None:
    """The sidecar the tracker redirects to breaks every answer after 300 kB: it is dropped
    and the other sidecar (known from the files' ``url``) delivers the rest."""
    dying = FakeUpstream(files=dict(FILES), behaviour={FULL: Behaviour(drop_after=300_000)})
    good = FakeUpstream(files=dict(FILES))
    ledger = ledger_of(tmp_path)
    async with tracker_of([dying, good]) as tracker:
        await run_fetch(options(ledger, tracker.base, incremental=False), NoProgress())
    assert sha256((ledger / FULL).read_bytes()) == sha256(FILES[FULL])
    assert any(s.body_sent >= 300_000 for s in dying.gets(FULL))  # it died mid-way
    assert body_bytes(good, FULL) > len(FILES[FULL]) // 2


async def test_a_sidecar_breaking_its_samples_is_left_unused(tmp_path: Path) -> None:
    """The second sidecar closes every answer after 1,000 bytes: its samples break off while
    the sources are compared, so it is not used and the first delivers the archive."""
    good = FakeUpstream(files=dict(FILES))
    breaking = FakeUpstream(files=dict(FILES), behaviour={FULL: Behaviour(drop_after=1000)})
    ledger = ledger_of(tmp_path)
    async with tracker_of([good, breaking]) as tracker:
        await run_fetch(options(ledger, tracker.base, incremental=False), NoProgress())
    assert sha256((ledger / FULL).read_bytes()) == sha256(FILES[FULL])
    assert any("range" in s.headers for s in breaking.gets(FULL))  # it was sampled
    assert body_bytes(breaking, FULL) < SAMPLES


async def test_a_thousand_urls_for_one_archive_are_bounded(tmp_path: Path) -> None:
    """A listing with 1,000 URLs of one archive (one sidecar under as many names): at most
    ``checks_at_once`` first-byte checks at a time, at most ``max_sources`` URLs used."""
    data = FILES[FULL]
    up = CountingUpstream(files={FULL: data}, behaviour={FULL: Behaviour(delay=0.02)})
    settings = attrs.evolve(FAST, max_sources=24, checks_at_once=8)
    ledger = ledger_of(tmp_path)
    async with tracker_of([up]) as tracker:
        [entry] = tracker.entries
        tracker.entries = [entry]
        for copy in range(1, 1000):
            again = json.loads(json.dumps(entry))
            again["files"][0]["url"] += f"?copy={copy}"
            tracker.entries.append(again)
        opts = options(ledger, tracker.base, incremental=False, settings=settings)
        with trio.fail_after(30):
            await run_fetch(opts, NoProgress())
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)
    asked = {s.target for s in up.gets(FULL)}
    assert len(asked) <= 24, len(asked)
    assert 1 < up.peak_checks <= 8, up.peak_checks


async def test_a_json_answer_is_not_taken_for_the_archive(tmp_path: Path) -> None:
    """No size in the listing, and the tracker's route leads to a 200 of a 31 KB JSON body
    (its own listing): the size two sidecars agree on wins, the JSON is never the archive."""
    a, b = FakeUpstream(files=dict(FILES)), FakeUpstream(files=dict(FILES))
    ledger = ledger_of(tmp_path)
    async with tracker_of([a, b], sizes=False) as tracker:
        json_url = f"{tracker.base}/v1/best_snapshots"
        tracker.behaviour[FULL] = Behaviour(redirect_to=json_url)
        while len(json.dumps(tracker.entries)) < 31_000:  # padding: a 31 KB listing
            tracker.entries.append({"padding": "x" * 1000})
        opts = options(ledger, tracker.base, incremental=False)
        await run_fetch(opts, NoProgress())
        assert [s for s in tracker.seen if s.target == "/v1/best_snapshots"]  # it was asked
    assert sha256((ledger / FULL).read_bytes()) == sha256(FILES[FULL])


# -- fetch verifies: the tracker's sha256 -----------------------------------------------------


def _archives_of(slot: int) -> tuple[bytes, bytes]:
    """Two real archives of ``slot`` (both pass the check) of the same size, other bytes:
    two nodes' archives of one slot and hash (other transactions in the status cache)."""
    entries = snapshot_entries(slot, accounts=4, account_size=512 * 1024, seed=91)
    good = compress(make_tar(entries), "zst")
    status, _data = entries[4]
    for seed in range(64):
        entries[4] = (status, status_cache_of(slot, random.Random(seed)))
        other = compress(make_tar(entries), "zst")
        if len(other) == len(good):
            return good, other
    raise AssertionError("no same-size pair of archives")


#: A name its archives prove to (its hash is their manifest's lattice hash's, SIMD-0220).
PROVEN = archive_name(20_000, seed=91)
GOOD, OTHER = _archives_of(20_000)
VERIFYING = attrs.evolve(FAST, verify=True)


async def test_a_copy_with_another_sha256_is_deleted_and_the_next_source_used(
    tmp_path: Path,
) -> None:
    """The tracker lists the archive's sha256 and redirects to a sidecar whose copy has
    other bytes (same size): that copy is deleted, the other sidecar's (not pooled with the
    first: its samples differ) is fetched and kept."""
    other, good = FakeUpstream(files={PROVEN: OTHER}), FakeUpstream(files={PROVEN: GOOD})
    ledger = ledger_of(tmp_path)
    async with tracker_of([other, good], sha256={PROVEN: sha256(GOOD)}) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=VERIFYING)
        [result] = await run_fetch(opts, NoProgress())
    assert body_bytes(other, PROVEN) >= len(OTHER)  # a whole copy came from there first
    assert body_bytes(good, PROVEN) >= len(GOOD)
    assert result.sha256 == sha256(GOOD)
    assert sorted(p.name for p in ledger.iterdir()) == [PROVEN]
    assert sha256((ledger / PROVEN).read_bytes()) == sha256(GOOD)


async def test_no_copy_with_the_trackers_sha256_is_exit_1_and_nothing_kept(tmp_path: Path) -> None:
    """Every source's copy has another sha256 than the tracker lists: exit 1 with one line
    naming the reason, and the ledger keeps none of the copies (nor a temp file)."""
    ups = [FakeUpstream(files={PROVEN: OTHER}), FakeUpstream(files={PROVEN: GOOD})]
    ledger = ledger_of(tmp_path)
    listed = sha256(b"a third archive")
    async with tracker_of(ups, sha256={PROVEN: listed}) as tracker:
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true")
        done = await run_cli(*command)
    line = the_error_line(done)
    assert "no source delivered a good copy" in line and f"tracker's {listed}" in line, line
    assert all(body_bytes(up, PROVEN) >= len(GOOD) for up in ups)  # both were tried
    assert list(ledger.iterdir()) == []


async def test_verify_false_keeps_what_the_source_sent(tmp_path: Path) -> None:
    """``--verify=false``: no check, no comparison; the copy is kept as sent."""
    other = FakeUpstream(files={PROVEN: OTHER})
    ledger = ledger_of(tmp_path)
    async with tracker_of([other], sha256={PROVEN: sha256(GOOD)}) as tracker:
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=false")
        done = await run_cli(*command)
    assert done.returncode == 0, done.stderr
    assert b'sha256="not verified"' in done.stderr, done.stderr
    assert sha256((ledger / PROVEN).read_bytes()) == sha256(OTHER)


async def test_a_listed_source_redirecting_past_port_65535_costs_itself_only(
    tmp_path: Path,
) -> None:
    """``--tracker http://user:pw@...`` listing two sidecars, one redirecting the archive to
    ``http://127.0.0.1:65536/...`` (a URL httpx takes and the origin check could not
    parse): that source fails at its connect and the other delivers. The check raised
    ValueError out of the request: the whole fetch ended, ``unexpected error``."""
    good, bad = FakeUpstream(files=dict(FILES)), FakeUpstream(files=dict(FILES))
    bad.behaviour[FULL] = Behaviour(redirect_to=f"http://127.0.0.1:65536/x/{FULL}")
    ledger = ledger_of(tmp_path)
    async with tracker_of([good, bad]) as tracker:
        typed = tracker.base.replace("http://", "http://user:pw@", 1)
        await run_fetch(options(ledger, typed, incremental=False), NoProgress())
    assert sha256((ledger / FULL).read_bytes()) == sha256(FILES[FULL])
    assert bad.gets(FULL)  # it was asked, and failed on its own


@pytest.mark.parametrize("moved", [False, True], ids=["renewed", "moved"])
async def test_an_expired_presigned_url_is_asked_for_again(moved: bool, tmp_path: Path) -> None:
    """The tracker's route and the listed URL lead to a bucket's presigned URL, which
    expires (403) after three GETs while the download runs (a full takes longer than the
    15 minutes such a link lives): the listed URL is asked again, and the fetch ends with
    the bytes. It failed: ``every source failed: ...?sig=1: answered 403 to a range``. A
    renewal is taken only for the same path: one that leads elsewhere (another node's
    archive, maybe) is that source's failure, whatever its bytes."""
    data = FILES[FULL]
    store = SigningStore(files={FULL: data}, moved=moved)
    ledger = ledger_of(tmp_path)
    async with serving(store), serving(FakeTracker()) as tracker:
        listed = f"{store.base}/sign/{FULL}"
        tracker.entries = [
            {
                "group": GROUP,
                "target": store.base,
                "files": [{"file_name": FULL, "size": len(data), "url": listed}],
            }
        ]
        tracker.behaviour[FULL] = Behaviour(redirect_to=listed)
        opts = options(ledger, tracker.base, incremental=False)
        if moved:
            with pytest.raises(FetchError, match="not to a renewal of") as failed:
                await run_fetch(opts, NoProgress())
            assert "every source failed" in str(failed.value)
            assert not (ledger / FULL).exists()
            return
        await run_fetch(opts, NoProgress())
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)
    assert store.signature >= 3, store.signature  # renewed more than once


async def test_a_validator_without_a_full_offers_no_full(tmp_path: Path) -> None:
    """``--source A --source B``: A offers a full and an incremental on it, B's full alias
    answers 404 and its incremental alias leads to a newer incremental on another full. A's
    pair is fetched; B's incremental was taken for a full (the newest "snapshot"): the
    ledger got it alone, which no validator can start from, and fetch said done."""
    other = incremental_name(20_100, 20_900)
    a = FakeUpstream(files=dict(FILES))
    b = FakeUpstream(files={other: FILES[INCR]})
    a.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{FULL}")
    a.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{INCR}")
    b.behaviour["snapshot.tar.bz2"] = Behaviour(status=404)
    b.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{other}")
    ledger = ledger_of(tmp_path)
    async with serving(a), serving(b):
        opts = FetchOptions(ledger=str(ledger), sources=(a.base, b.base), settings=FAST)
        results = await run_fetch(opts, NoProgress())
    assert [Path(r.path).name for r in results] == [FULL, INCR]
    assert sorted(p.name for p in ledger.iterdir()) == sorted([FULL, INCR])
    assert not b.gets(other)


async def test_an_incremental_alone_on_the_ledger_s_full_is_fetched(tmp_path: Path) -> None:
    """The ledger holds the full at 20,000; A offers a full 50 slots newer (within
    ``min_slots``: not worth its download) without an incremental, B's full alias answers
    404 and its incremental alias leads to one on the ledger's full: that incremental is
    fetched alone, from B (what a validator offers without its full is asked for by its
    base)."""
    newer_full = full_name(20_050)
    a = FakeUpstream(files={newer_full: FILES[FULL]})
    b = FakeUpstream(files={INCR: FILES[INCR]})
    a.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{newer_full}")
    a.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(status=404)
    b.behaviour["snapshot.tar.bz2"] = Behaviour(status=404)
    b.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{INCR}")
    ledger = ledger_of(tmp_path)
    (ledger / FULL).write_bytes(FILES[FULL])
    async with serving(a), serving(b):
        opts = FetchOptions(ledger=str(ledger), sources=(a.base, b.base), settings=FAST)
        results = await run_fetch(opts, NoProgress())
    assert [Path(r.path).name for r in results] == [INCR]
    assert sha256((ledger / INCR).read_bytes()) == sha256(FILES[INCR])
    assert not a.gets(newer_full)


async def test_a_first_source_that_ignores_range_leaves_the_download_to_one_that_takes_it(
    tmp_path: Path,
) -> None:
    """``--source AGAVE --source SIDECAR``: agave's RPC answers every Range with the whole
    file, slowly; the sidecar takes Range. As the first source agave was the reference, so
    the download was its one slow stream (no other source pooled with it, none dropped for
    it) and ran out of time with the sidecar unused: the sidecar goes first."""
    slow, fast = FakeUpstream(files=dict(FILES)), FakeUpstream(files=dict(FILES))
    for up in (slow, fast):
        up.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{FULL}")
        up.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{INCR}")
    slow.behaviour[FULL] = slow.behaviour[INCR] = agave_rpc(rate=256 * 1024)  # 6 MiB: 24 s
    ledger = ledger_of(tmp_path)
    async with serving(slow), serving(fast):
        opts = FetchOptions(
            ledger=str(ledger), sources=(slow.base, fast.base), settings=FAST, download_timeout=12
        )
        results = await run_fetch(opts, NoProgress())
    assert [Path(r.path).name for r in results] == [FULL, INCR]
    assert sha256((ledger / FULL).read_bytes()) == sha256(FILES[FULL])
    assert body_bytes(fast, FULL) >= len(FILES[FULL])
