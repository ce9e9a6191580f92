"""A refresh of the cache from several sources at once (docs/architecture.md, "A refresh
from several sources"): real hypercorn tracker, real archives (tests/archives.py, checked:
``verify_archives`` on), small real upstreams on 127.0.0.1, one origin each.

Each source sends at most ``RATE`` bytes a second per request and the group allows one
transfer per origin (``source_limits.max_transfers: 1``): a source is capped at ``RATE`` in
all, so a single-stream client that gets the file faster than one source can send it got
it from several. The tests of liars pace every source at ``JUDGED_RATE``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import logging
import random
import tarfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import zstandard
from archives import (
    VERSION,
    account_bytes,
    archive_name,
    build_archive,
    compress,
    make_tar,
    many_accounts_archive,
    snapshot_entries,
)
from helpers_bytes import MiB, sha256
from helpers_proxy import FAST, GROUP, TrackerUnderTest, advertise, proxy_tracker, wait_for
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, agave_rpc, serving

from tracker.cache.refresh import Refresh
from tracker.config.schema import BearerAuth, SourceLimits, TargetGroup
from tracker.multisource.sources import Source
from tracker.observability.logs import TextFormatter
from tracker.ordering.index import TargetKey
from tracker.proof.formats.writing import (
    OK_RESULT,
    Account,
    archive_hash_of,
    lattice_of,
    padded,
    write_manifest,
    write_status_cache,
    write_storage,
)
from tracker.proxy import cachefill, transfers

NAME, DATA = build_archive(9300, accounts=36, account_size=MiB, seed=3)
SIZE = len(DATA)
#: Body bytes per second of one source (one request at a time: max_transfers 1).
RATE = 3 * MiB
#: Body bytes per second of every source in the tests of liars (their pieces compared,
#: rewritten, judged by the whole-file check): they show whose bytes the copy ends with, not
#: how fast any came, and every range compared is read at this pace, one at a time (at RATE,
#: 6 of the 9 s of the test of two ports). All of a test's sources keep one pace, as at RATE.
JUDGED_RATE = 2 * RATE


def group(max_transfers: int = 1) -> TargetGroup:
    limits = SourceLimits(max_transfers=max_transfers)
    return TargetGroup(group=GROUP, bearer_auth=BearerAuth(token="t"), source_limits=limits)


@asynccontextmanager
async def sources(
    count: int, rate: float | None = RATE, **fields: object
) -> AsyncIterator[list[FakeUpstream]]:
    """``count`` upstreams serving the archive, each at ``rate`` per request."""
    async with AsyncExitStack() as stack:
        ups = []
        for _ in range(count):
            up = FakeUpstream(files={NAME: DATA}, behaviour={NAME: Behaviour(rate=rate)})
            for key, value in fields.items():
                setattr(up, key, value)
            ups.append(await stack.enter_async_context(serving(up)))
        yield ups


@asynccontextmanager
async def tracker(
    tmp_path: Path, ups: list[FakeUpstream], max_transfers: int = 1, **overrides: object
) -> AsyncIterator[TrackerUnderTest]:
    config = {"verify_archives": True, "target_groups": (group(max_transfers),), **overrides}
    async with proxy_tracker(tmp_path / "cache", **config) as t:
        for age, up in enumerate(ups):  # the first is the freshest: asked first
            advertise(t.index, up.base, [(NAME, up.url(NAME), SIZE)], age=age)
        yield t


async def get(url: str) -> tuple[int, str, int, float]:
    """One single-stream GET: status, SHA-256 and length of the body, seconds taken."""
    digest, size = hashlib.sha256(), 0
    started = trio.current_time()
    async with (
        httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client,
        client.stream("GET", url) as response,
    ):
        try:
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                size += len(chunk)
        except httpx.HTTPError:
            pass  # a broken stream: what came is what the test looks at
    return response.status_code, digest.hexdigest(), size, trio.current_time() - started


def sent(up: FakeUpstream) -> int:
    return sum(s.body_sent for s in up.gets(NAME))


async def test_three_capped_sources_give_one_client_their_sum(tmp_path: Path) -> None:
    """Each source is capped at RATE, one request at a time: the client's download comes
    from all three at once, each sending through most of it (their rates add up; how fast,
    bench/run.py measures), each giving a share."""
    async with sources(3) as ups, tracker(tmp_path / "three", ups) as t:
        status, digest, size, _seconds = await get(t.url(NAME))
        assert (status, digest, size) == (200, sha256(DATA), SIZE)
        await wait_for(lambda: NAME in t.cached())
        assert sha256((t.group_dir() / NAME).read_bytes()) == sha256(DATA)
        # Each source's share of the refresh and the seconds it took part (its rate).
        metric = "snapshot_tracker_refresh_source_bytes_total"
        given = [t.counter(metric, group=GROUP, target=up.base) for up in ups]
        assert sum(given) == SIZE and all(g >= 0.15 * SIZE for g in given), given
        took = "snapshot_tracker_refresh_source_seconds_total"
        assert all(t.counter(took, group=GROUP, target=up.base) > 0 for up in ups)
    shares = [sent(up) / SIZE for up in ups]
    assert all(share >= 0.15 for share in shares), shares
    assert sum(shares) <= 1.3  # what the first answer had sent on when its piece ended
    # Sending side by side, not in turns: from the first body byte of any source to the
    # last, each was sending for most of the time (in turns, a third each at most). A
    # ratio of clocks, the same on a loaded machine: every source is slowed alike.
    answers = [[s for s in up.gets(NAME) if s.body_sent] for up in ups]
    began = min(s.first_sent for sent_by in answers for s in sent_by)
    ended = max(s.last_sent for sent_by in answers for s in sent_by)
    busy = [
        sum(s.last_sent - s.first_sent for s in sent_by) / (ended - began) for sent_by in answers
    ]
    assert all(b >= 0.6 for b in busy), busy
    # source_limits.max_transfers: 1 held at every origin, the first answer included.
    assert [up.most_at_once for up in ups] == [1, 1, 1]


async def test_a_source_that_dies_halfway_hands_its_pieces_to_the_others(
    tmp_path: Path,
) -> None:
    async with sources(3) as ups:
        ups[1].dies_after = SIZE // 6  # half of what its third would be
        async with tracker(tmp_path, ups) as t:
            status, digest, size, _seconds = await get(t.url(NAME))
            assert (status, digest, size) == (200, sha256(DATA), SIZE)
            await wait_for(lambda: NAME in t.cached())
            assert sha256((t.group_dir() / NAME).read_bytes()) == sha256(DATA)
    assert ups[1].dead
    assert sent(ups[0]) + sent(ups[2]) >= SIZE - sent(ups[1])
    assert [up.most_at_once for up in ups] == [1, 1, 1]


async def test_a_source_that_stalls_is_dropped_and_its_pieces_go_to_the_others(
    tmp_path: Path,
) -> None:
    """Its answers stop after 256 KiB and never go on (the read timeout is 10 s): it sends
    nothing over a speed window while the others do, and is dropped well before that."""
    async with sources(3) as ups:
        ups[2].behaviour[NAME] = Behaviour(rate=RATE, pause_at=256 * 1024)
        async with tracker(tmp_path, ups) as t:
            status, digest, size, seconds = await get(t.url(NAME))
            assert (status, digest, size) == (200, sha256(DATA), SIZE)
            await wait_for(lambda: NAME in t.cached())
    assert sent(ups[2]) < SIZE // 3
    assert seconds < FAST.read_timeout  # not one read timeout waited for
    ups[2].behaviour[NAME].resume.set()


@pytest.mark.parametrize("max_transfers", [1, 2])
async def test_max_transfers_is_never_exceeded_at_any_origin(
    tmp_path: Path, max_transfers: int
) -> None:
    async with sources(3) as ups, tracker(tmp_path, ups, max_transfers) as t:
        status, digest, _size, _seconds = await get(t.url(NAME))
        assert (status, digest) == (200, sha256(DATA))
    assert max(up.most_at_once for up in ups) <= max_transfers
    # Every source was asked for pieces.
    assert all(up.gets(NAME) for up in ups)
    if max_transfers == 2:
        assert any(up.most_at_once == 2 for up in ups)


async def test_a_second_client_joining_mid_refresh_reads_the_same_growing_file(
    tmp_path: Path,
) -> None:
    async with (
        sources(3) as ups,
        tracker(tmp_path, ups, cache_share_inflight=True) as t,
        trio.open_nursery() as nursery,
    ):
        results: list[tuple[int, str, int, float]] = []

        async def client() -> None:
            results.append(await get(t.url(NAME)))

        nursery.start_soon(client)
        # Mid-refresh: a third of the archive came from the sources.
        await wait_for(lambda: sum(sent(up) for up in ups) >= SIZE // 3)
        assert len(results) == 0
        # The status page's view of it: three sources, each with its bytes so far.
        (progress,) = t.streamer.refreshes()
        assert [url for url, _sent in progress.sources] == [up.url(NAME) for up in ups]
        assert sum(given for _url, given in progress.sources) <= progress.size
        second = await get(t.url(NAME))
    assert results[0][:3] == (200, sha256(DATA), SIZE)
    assert second[:3] == (200, sha256(DATA), SIZE)
    # Both read the one refresh: the sources sent the archive about once, not twice.
    assert sum(sent(up) for up in ups) <= 1.3 * SIZE


def test_pieces_come_only_from_sources_of_the_same_size() -> None:
    """The pure choice of a refresh's other sources: same size, another target, a URL."""
    from tracker.core.snapshots import SnapshotFile, parse_archive_name

    parsed = parse_archive_name(NAME)
    assert parsed is not None

    def entry(target: str, size: int, url: str = "http://x/f") -> tuple[SnapshotFile, object]:
        class Held:
            key = TargetKey(GROUP, target)

        return SnapshotFile(parsed, url, size, url=url), Held()

    found = [entry("a", SIZE), entry("b", SIZE), entry("c", SIZE + 1), entry("d", SIZE, "")]
    found += [entry("e", 0), entry("f", SIZE), entry("g", SIZE), entry("h", SIZE)]
    kept, _refused = cachefill.choose(TargetKey(GROUP, "a"), SIZE, found)  # type: ignore[arg-type]
    assert [s.key.target for _f, s in kept] == ["b", "f", "g"]  # type: ignore[attr-defined]


class LyingUpstream(FakeUpstream):
    """Serves the archive, except that the first piece it is asked for (a range longer
    than the refresh's one-byte probe) has 4 KiB of other bytes after its first 8 KiB (right
    name, right size, wrong bytes). Early in the piece: they land within milliseconds of its
    start, before a loaded host's speed window could drop the source (its piece then goes to
    the others, and nothing wrong would land)."""

    lied: tuple[int, int] | None = None

    async def _body(self, conn: Any, stream: Any, seen: Any, how: Any, body: bytes) -> bool:
        asked = seen.headers.get("range", "")
        if self.lied is None and asked.startswith("bytes=") and len(body) > 3 * 4096:
            middle = 2 * 4096
            start = int(asked.removeprefix("bytes=").split("-")[0]) + middle
            self.lied = (start, start + 4096)
            wrong = bytes(b ^ 0xFF for b in body[middle : middle + 4096])
            body = body[:middle] + wrong + body[middle + 4096 :]
        return await super()._body(conn, stream, seen, how, body)


async def read_along_then_repaired(t: Any) -> None:
    """A client reads along a refresh with a liar among its sources: it never gets a
    complete body (its stream breaks), and the cache then holds the exact archive."""
    status, digest, size, _seconds = await get(t.url(NAME))
    assert status == 200
    assert size < SIZE, digest == sha256(DATA)  # never a complete wrong body: a broken stream
    await wait_for(lambda: NAME in t.cached(), timeout=30)
    assert sha256((t.group_dir() / NAME).read_bytes()) == sha256(DATA)


def only_named(t: Any) -> TargetKey:
    """The one source held back, for bytes that differ from the other sources'."""
    named = t.streamer.rejections.errors(t.index.clock())
    assert len(named) == 1, named
    [(key, reason)] = named.items()
    assert "differ from the other sources'" in reason, reason
    return key  # type: ignore[no-any-return]


async def test_a_liar_costs_only_its_pieces_and_is_named(tmp_path: Path) -> None:
    """A source that lies in one range: the client that read along never gets a complete
    body (its stream breaks), the copy is repaired from the others (compared with another
    source, the tie broken by a third), checked again and cached exact, and the liar is
    held back for the archive with a reason (``/v1/targets`` ``last_error``)."""
    async with (
        sources(2, JUDGED_RATE) as honest,
        serving(LyingUpstream(files={NAME: DATA})) as liar,
    ):
        liar.behaviour[NAME] = Behaviour(rate=JUDGED_RATE)
        ups = [*honest, liar]
        async with tracker(tmp_path, ups) as t:
            await read_along_then_repaired(t)
            assert liar.lied is not None
            rejections = t.streamer.rejections
            assert only_named(t) == TargetKey(GROUP, liar.base)
            # Skipped for this archive from now on: the next refresh would not ask it.
            assert rejections.rejected(TargetKey(GROUP, liar.base), NAME, t.index.clock())
            # The cache hit that follows is the exact archive.
            again = await get(t.url(NAME))
            assert again[:3] == (200, sha256(DATA), SIZE)
    # Comparing cost about one more copy at most, not a refresh per source.
    assert sum(sent(up) for up in ups) <= 2.5 * SIZE


async def published(
    t: TrackerUnderTest, ups: list[FakeUpstream], digests: list[str | None]
) -> None:
    """Each of ``ups`` serves a sidecar listing of the archive publishing its ``digests``
    entry as the file's ``sha256`` (None: none), and the index takes what the real probe
    of each makes of it (the freshest first: the first is asked first)."""
    from datetime import UTC, datetime, timedelta

    from helpers_upstream import sidecar_listing

    from tracker.discovery.sidecar import probe_sidecar

    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        for age, (up, digest) in enumerate(zip(ups, digests, strict=True)):
            up.listing = sidecar_listing({NAME: DATA})
            if digest is not None:
                up.listing[0]["files"][0]["sha256"] = digest
            infos = await probe_sidecar(client, up.base)
            assert infos[0].files[0].sha256 == (digest or "")
            when = datetime.now(UTC) - timedelta(seconds=age)
            t.index.apply(TargetKey(GROUP, up.base), infos, when)


async def test_a_source_publishing_another_sha256_gives_no_pieces_and_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three sidecars of the same name and size; two publish the archive's SHA-256 (one of
    them the first asked), the third another one: it is never asked for a byte, the refresh
    comes from the two that agree, and the log names the one refused and why."""
    import logging

    caplog.set_level(logging.WARNING, logger="tracker.proxy")
    other = "0" * 64
    async with sources(3) as ups, tracker(tmp_path, []) as t:
        await published(t, ups, [sha256(DATA), None, other])
        status, digest, size, _seconds = await get(t.url(NAME))
        assert (status, digest, size) == (200, sha256(DATA), SIZE)
        await wait_for(lambda: NAME in t.cached())
        assert sha256((t.group_dir() / NAME).read_bytes()) == sha256(DATA)
    assert ups[2].gets(NAME) == []
    assert sent(ups[0]) > 0 and sent(ups[1]) > 0  # the two that agree both gave pieces
    text = TextFormatter()
    refused = [text.format(r) for r in caplog.records if r.getMessage() == "refresh_source_refused"]
    assert len(refused) == 1, refused
    assert ups[2].base in refused[0]
    assert f"publishes sha256 {other}, the other sources {sha256(DATA)}" in refused[0]


class RangeLiar(FakeUpstream):
    """Serves the archive whole (a 200) as it is, but every range it is asked for with 4 KiB
    of other bytes in its middle: its pieces are wrong, and asked to compare another
    source's range (or for its side of a judgement) it lies too."""

    lies: int = 0

    async def _body(self, conn: Any, stream: Any, seen: Any, how: Any, body: bytes) -> bool:
        if seen.headers.get("range", "").startswith("bytes="):
            self.lies += 1
            middle = len(body) // 2
            wrong = bytes(b ^ 0xFF for b in body[middle : middle + 4096])
            body = body[:middle] + wrong + body[middle + len(wrong) :]
        return await super()._body(conn, stream, seen, how, body)


@pytest.mark.parametrize("liar_first", [False, True], ids=["liar_second", "liar_first"])
async def test_two_sources_one_liar_the_whole_file_check_judges(
    tmp_path: Path, liar_first: bool
) -> None:
    """Two sources, one lying in every range it sends (also when asked to compare the
    other's): no third source breaks the tie, and a comparison alone cannot tell which one
    lies, so the differing ranges are taken from one side and the copy checked, then from
    the other; the side whose bytes pass is honest. The client that read along never gets a
    complete body, the cache ends exact, the liar alone is named."""
    async with (
        sources(1, JUDGED_RATE) as honest,
        serving(RangeLiar(files={NAME: DATA})) as liar,
    ):
        liar.behaviour[NAME] = Behaviour(rate=JUDGED_RATE)
        ups = [liar, *honest] if liar_first else [*honest, liar]
        async with tracker(tmp_path, ups) as t:
            await read_along_then_repaired(t)
            assert liar.lies > 0
            assert only_named(t) == TargetKey(GROUP, liar.base)
            again = await get(t.url(NAME))
            assert again[:3] == (200, sha256(DATA), SIZE)
    # Judging cost the differing bytes and a comparison, not another copy from each.
    assert sum(sent(up) for up in ups) <= 2.5 * SIZE


class BreakingJudgeLiar(RangeLiar):
    """A :class:`RangeLiar` that, asked for its side of the judgement (a span inside a
    range it sent before, once the comparison began), sends half of it, other bytes, then
    breaks the connection: its side fails with its bytes written."""

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        self.comparing = trio.Event()
        self.asked: list[tuple[int, int]] = []
        self.broken = 0

    async def _body(self, conn: Any, stream: Any, seen: Any, how: Any, body: bytes) -> bool:
        spec = seen.headers.get("range", "")
        if self.comparing.is_set() and spec.startswith("bytes="):
            first, last = (int(x) for x in spec.removeprefix("bytes=").split("-"))
            inside = any(
                a <= first and last <= b and (a, b) != (first, last) for a, b in self.asked
            )
            self.asked.append((first, last))
            if inside:
                self.broken += 1
                wrong = bytes(b ^ 0xFF for b in body)
                how = attrs.evolve(how, drop_after=len(body) // 2)
                return await FakeUpstream._body(self, conn, stream, seen, how, wrong)
        elif spec.startswith("bytes="):
            first, last = (int(x) for x in spec.removeprefix("bytes=").split("-"))
            self.asked.append((first, last))
        return await super()._body(conn, stream, seen, how, body)


class _Comparing(logging.Handler):
    """Sets ``event`` when the refresh logs ``refresh_comparing``."""

    def __init__(self, event: trio.Event) -> None:
        super().__init__()
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "refresh_comparing":
            self.event.set()


async def test_a_liar_whose_side_breaks_halfway_leaves_the_honest_side_to_repair(
    tmp_path: Path,
) -> None:
    """Two sources, the liar first: in the judgement its side's rewrite sends part of a
    span, other bytes, then breaks. Those bytes are on disk: the honest side rewrites that
    span too, the copy passes and is cached exact, and the liar alone is named (the span
    was taken for the honest side's still, so the copy failed and both sources were held
    back: one liar kept the honest source's archive from the fleet)."""
    liar = BreakingJudgeLiar(files={NAME: DATA})
    comparing = _Comparing(liar.comparing)
    proxy_log = logging.getLogger("tracker.proxy")
    proxy_log.addHandler(comparing)
    try:
        async with sources(1, JUDGED_RATE) as honest, serving(liar):
            liar.behaviour[NAME] = Behaviour(rate=JUDGED_RATE)
            async with tracker(tmp_path, [liar, *honest]) as t:
                await read_along_then_repaired(t)
                assert liar.broken > 0
                assert only_named(t) == TargetKey(GROUP, liar.base)
    finally:
        proxy_log.removeHandler(comparing)


async def test_a_repaired_copy_is_uploaded_to_the_bucket_by_that_refresh(
    tmp_path: Path, weed: Any
) -> None:
    """With an object store: the refresh (under the bucket's lock) that repaired its copy
    after a liar's bytes uploads the repaired copy itself. The upload that followed the
    file had read parts before the cut (they may hold the wrong bytes): it is aborted and
    starts again once the copy passed its check; no part of it stays, and the bucket's
    object is the exact archive, with no second request."""
    from helpers_bucket import prefix_of, store_config, uploaded

    async with sources(2) as honest, serving(LyingUpstream(files={NAME: DATA})) as liar:
        liar.behaviour[NAME] = Behaviour(rate=RATE)
        ups = [*honest, liar]
        async with tracker(tmp_path, ups, object_store=store_config(weed)) as t:
            status, digest, size, _seconds = await get(t.url(NAME))
            # the reader was cut off (never a complete body: not even the right one here)
            assert (status, size < SIZE) == (200, True), digest == sha256(DATA)
            assert liar.lied is not None
            await uploaded(weed, t, NAME)
            key = f"{prefix_of(t)}{GROUP}/{NAME}"
            body = weed.client().get_object(Bucket="snapshots", Key=key)["Body"].read()
            assert sha256(body) == sha256(DATA)
            assert weed.uploads(prefix_of(t)) == []  # the aborted upload left no part
            ok = t.counter("snapshot_tracker_object_uploads_total", outcome="ok")
            failed = t.counter("snapshot_tracker_object_uploads_total", outcome="failed")
            assert (ok, failed) == (1, 0)
            assert TargetKey(GROUP, liar.base) in t.streamer.rejections.errors(t.index.clock())


# Sources as they are: agave's RPC ignores Range (tests/helpers_upstream.py, agave_rpc).
#: A smaller archive (about 7 MB: a few seconds from one source at RATE).
SMALL_NAME, SMALL = build_archive(9310, accounts=20, account_size=MiB, seed=5)
#: What a source may send besides what the refresh reads of it: the probe's answer, closed
#: unread (a 64 KiB chunk or two at RATE before the close reaches it), with room to spare.
PROBE = MiB


def sent_small(up: FakeUpstream) -> int:
    return sum(s.body_sent for s in up.gets(SMALL_NAME))


@asynccontextmanager
async def small_sources(
    ranged: list[bool], rate: float | None = RATE
) -> AsyncIterator[list[FakeUpstream]]:
    """One upstream per entry of ``ranged`` serving SMALL at ``rate``: True honours Range
    (a tracker, nginx), False is agave's RPC (the whole file, a 200, no validators)."""
    async with AsyncExitStack() as stack:
        ups = []
        for honours in ranged:
            how = Behaviour(rate=rate) if honours else agave_rpc(rate=rate)
            up = FakeUpstream(files={SMALL_NAME: SMALL}, behaviour={SMALL_NAME: how})
            ups.append(await stack.enter_async_context(serving(up)))
        yield ups


@asynccontextmanager
async def small_tracker(
    tmp_path: Path, ups: list[FakeUpstream], max_transfers: int = 1
) -> AsyncIterator[TrackerUnderTest]:
    """A tracker whose group lists ``ups`` as its HTTP targets (``/v1/targets`` shows
    them), each advertising SMALL (the first the freshest: asked first)."""
    from tracker.config.schema import HttpTargets

    listed = HttpTargets(targets=tuple(up.base for up in ups))
    limits = SourceLimits(max_transfers=max_transfers)
    with_targets = TargetGroup(
        group=GROUP, bearer_auth=BearerAuth(token="t"), source_limits=limits, http_targets=listed
    )
    config = {"verify_archives": True, "target_groups": (with_targets,)}
    async with proxy_tracker(tmp_path / "cache", **config) as t:
        await t.parts.scraper.scrape_round()  # /v1/targets lists them (none lists SMALL)
        for age, up in enumerate(ups):
            advertise(t.index, up.base, [(SMALL_NAME, up.url(SMALL_NAME), len(SMALL))], age=age)
        yield t


async def shown_uses(t: TrackerUnderTest) -> dict[str, dict[str, Any]]:
    """Each target's ``refresh`` as ``/v1/targets`` shows it, by target."""
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        entries = (await client.get(f"{t.base}/v1/targets")).json()
    return {e["target"]: e["refresh"] for e in entries if "refresh" in e}


@pytest.mark.parametrize("max_transfers", [1, 2])
async def test_sources_that_ignore_range_give_the_archive_as_one_stream(
    tmp_path: Path, max_transfers: int
) -> None:
    """Three sources of one archive as agave's RPC serves it: the client gets the whole
    archive, it is cached, the best source sends it once and the others a probe's worth
    at most; ``/v1/targets`` says the first was used alone and why the others were left
    out."""
    async with small_sources([False, False, False]) as ups:
        async with small_tracker(tmp_path, ups, max_transfers) as t:
            status, digest, size, _seconds = await get(t.url(SMALL_NAME))
            assert (status, digest, size) == (200, sha256(SMALL), len(SMALL))
            await wait_for(lambda: SMALL_NAME in t.cached())
            assert sha256((t.group_dir() / SMALL_NAME).read_bytes()) == sha256(SMALL)
            uses = await shown_uses(t)
        assert uses[ups[0].base]["used"] == "alone", uses
        assert uses[ups[0].base]["bytes"] == len(SMALL)
        for up in ups[1:]:
            assert uses[up.base]["used"] == "left out", uses
            assert "ignores Range" in uses[up.base]["reason"]
    assert len(SMALL) <= sent_small(ups[0]) <= len(SMALL) + PROBE
    assert all(sent_small(up) <= PROBE for up in ups[1:]), [sent_small(u) for u in ups]


@pytest.mark.parametrize("agave_first", [False, True], ids=["agave_second", "agave_first"])
async def test_with_a_mix_only_sources_that_honour_range_read_in_parallel(
    tmp_path: Path, agave_first: bool
) -> None:
    """Two sources that honour Range and one agave RPC: the two give pieces in parallel;
    the RPC gives a probe's worth when it is not the first source, and its one stream of
    the head (never more than the archive once) when it is."""
    ranged = [False, True, True] if agave_first else [True, False, True]
    async with small_sources(ranged) as ups, small_tracker(tmp_path, ups) as t:
        status, digest, size, _seconds = await get(t.url(SMALL_NAME))
        assert (status, digest, size) == (200, sha256(SMALL), len(SMALL))
        await wait_for(lambda: SMALL_NAME in t.cached())
        uses = await shown_uses(t)
    rpc = ups[ranged.index(False)]
    pieces = [up for up, honours in zip(ups, ranged, strict=True) if honours]
    assert all(sent_small(up) > 0 for up in pieces)
    assert all(uses[up.base]["used"] == "parallel" for up in pieces), uses
    if agave_first:
        assert sent_small(rpc) <= len(SMALL) + PROBE
        assert uses[rpc.base]["used"] == "parallel", uses
        assert "ignores Range" in uses[rpc.base]["reason"]
    else:
        assert sent_small(rpc) <= PROBE
        assert uses[rpc.base]["used"] == "left out", uses


#: Seconds after which a refresh is taken for held (a few seconds are what it takes).
HELD = 120


class Dripper(FakeUpstream):
    """Answers every request as it should (a 200 of the file, a 206 of the range asked) and
    then sends its body one byte a second: never silent long enough for a read timeout."""

    async def _body(self, conn: Any, stream: Any, seen: Any, how: Any, body: bytes) -> bool:
        if len(body) > 1:  # its one-byte probe comes at once: the rest drips
            self.chunk, how = 1, attrs.evolve(how, rate=1.0)
        return await super()._body(conn, stream, seen, how, body)


@pytest.mark.parametrize("dripper_first", [True, False], ids=["first", "second"])
async def test_a_source_that_drips_does_not_hold_the_refresh(
    tmp_path: Path, dripper_first: bool
) -> None:
    """Two fast sources and one that answers and drips a byte a second (first: the first
    answer, whose claim is the head every reader waits for; second: a 206 of a piece). The
    others soon have nothing left to claim within the window and idle (a rate of 0 over
    every window the speed is judged on), yet the dripper's claim at the prefix is taken
    from it and it is dropped (judged against the others' rate over the refresh, and the
    floor); the client gets the archive whole."""
    async with small_sources([True, True], rate=None) as honest, serving(Dripper()) as dripper:
        dripper.files = {SMALL_NAME: SMALL}
        ups = [dripper, *honest] if dripper_first else [*honest, dripper]
        async with small_tracker(tmp_path, ups) as t:
            # A held refresh feeds its client a byte a second for ever (no read timeout
            # fires): the bound only turns that into a failure, it measures nothing.
            with trio.fail_after(HELD):
                status, digest, size, _seconds = await get(t.url(SMALL_NAME))
            assert (status, digest, size) == (200, sha256(SMALL), len(SMALL))
            await wait_for(lambda: SMALL_NAME in t.cached())
            uses = await shown_uses(t)
    assert uses[dripper.base]["used"] == "dropped", uses


class WrongEverywhere(FakeUpstream):
    """Right name, right size, every byte of every range it sends wrong (its pieces, and
    its answers when asked to compare or break a tie)."""

    async def _body(self, conn: Any, stream: Any, seen: Any, how: Any, body: bytes) -> bool:
        if seen.headers.get("range", "").startswith("bytes="):
            body = bytes(b ^ 0x5A for b in body)
        return await super()._body(conn, stream, seen, how, body)


async def test_a_liar_wrong_everywhere_is_repaired_around_and_alone_held_back(
    tmp_path: Path,
) -> None:
    """Two honest sources and one whose every byte is wrong: every range each source wrote
    is compared (not only those before the check's first failure), so all the liar's
    pieces are found and rewritten; the copy passes, the liar alone is held back and the
    honest ones still serve the next client (a cache hit, never a 502)."""
    async with (
        sources(2, JUDGED_RATE) as honest,
        serving(WrongEverywhere(files={NAME: DATA})) as liar,
    ):
        liar.behaviour[NAME] = Behaviour(rate=JUDGED_RATE)
        ups = [*honest, liar]
        async with tracker(tmp_path, ups) as t:
            await read_along_then_repaired(t)
            assert only_named(t) == TargetKey(GROUP, liar.base)
            now = t.index.clock()
            for up in honest:
                assert not t.streamer.rejections.rejected(TargetKey(GROUP, up.base), NAME, now)
            again = await get(t.url(NAME))
            assert again[:3] == (200, sha256(DATA), SIZE)
            # a copy repaired is no rejected archive: stored, not "neither stored nor handed
            # out" (the liar named counted one)
            assert t.counter("snapshot_tracker_archives_rejected_total", group=GROUP) == 0


async def test_one_copy_rejected_from_three_sources_counts_once(tmp_path: Path) -> None:
    """Three sources of the same corrupt copy: one archive failed its check, every source
    held back for it, and ``archives_rejected_total`` moves by one (it moved by three: the
    alert said three archives were neither stored nor handed out)."""
    middle = SIZE // 2
    bad = DATA[:middle] + bytes(b ^ 0xFF for b in DATA[middle : middle + 4096])
    bad += DATA[middle + 4096 :]
    async with AsyncExitStack() as stack:
        ups = [
            await stack.enter_async_context(
                serving(
                    FakeUpstream(files={NAME: bad}, behaviour={NAME: Behaviour(rate=JUDGED_RATE)})
                )
            )
            for _ in range(3)
        ]
        async with tracker(tmp_path, ups) as t:
            status, _digest, size, _seconds = await get(t.url(NAME))
            assert status == 200 and size < SIZE
            await wait_for(lambda: t.outcome("refresh_rejected") == 1, timeout=30)
            assert len(t.streamer.rejections.errors(t.index.clock())) == 3
            assert t.counter("snapshot_tracker_archives_rejected_total", group=GROUP) == 1


class WrongThenMute(WrongEverywhere):
    """As WrongEverywhere until the refresh starts comparing (``mute``, set when the tracker
    logs ``refresh_comparing``): then it answers 500 to every range, so the comparisons it
    is asked for stay undecided."""

    mute: bool = False

    async def _answer(self, conn: Any, stream: Any, req: Any) -> bool:
        if not self.mute:
            return await super()._answer(conn, stream, req)
        how = self.behaviour[NAME]
        self.behaviour[NAME] = attrs.evolve(how, status=500)
        try:
            return await super()._answer(conn, stream, req)
        finally:
            self.behaviour[NAME] = how


class MuteWhenComparing(logging.Handler):
    """Mutes ``liar`` as the repair begins (the log record comes before any comparison)."""

    def __init__(self, liar: WrongThenMute) -> None:
        super().__init__()
        self.liar = liar

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "refresh_comparing":
            self.liar.mute = True


@asynccontextmanager
async def beside_a_mute_liar(
    tmp_path: Path, honest: int
) -> AsyncIterator[tuple[Any, WrongThenMute]]:
    """A tracker refreshing from ``honest`` honest sources and a :class:`WrongThenMute`
    liar, muted as the repair begins: the tracker and the liar."""
    async with (
        sources(honest, JUDGED_RATE) as ups,
        serving(WrongThenMute(files={NAME: DATA})) as liar,
    ):
        liar.behaviour[NAME] = Behaviour(rate=JUDGED_RATE)
        handler = MuteWhenComparing(liar)
        logging.getLogger("tracker.proxy").addHandler(handler)
        try:
            async with tracker(tmp_path, [*ups, liar]) as t:
                yield t, liar
        finally:
            logging.getLogger("tracker.proxy").removeHandler(handler)


async def held_back_alone(t: Any, liar: WrongThenMute) -> None:
    """Until the liar, muted, is held back: it alone."""
    clock, rejected = t.index.clock, t.streamer.rejections
    key = TargetKey(GROUP, liar.base)
    await wait_for(lambda: rejected.rejected(key, NAME, clock()), timeout=30)
    assert liar.mute
    assert list(rejected.errors(clock())) == [key]


async def test_an_undecided_repair_holds_back_only_the_liar(tmp_path: Path) -> None:
    """Two honest sources and a liar that will not answer once the comparison begins: its
    own pieces are found wrong, the honest ones' bytes were confirmed by each other, but
    what it was asked to compare stays undecided and the copy is not cached. The liar alone
    carries the failed check: the next client gets the archive from the two honest sources
    (never a 502)."""
    async with beside_a_mute_liar(tmp_path, 2) as (t, liar):
        status, _digest, size, _seconds = await get(t.url(NAME))
        assert (status, size < SIZE) == (200, True)
        await held_back_alone(t, liar)
        assert NAME not in t.cached()
        again = await get(t.url(NAME))
        assert again[:3] == (200, sha256(DATA), SIZE)


async def test_a_liar_gone_mute_beside_one_honest_source_is_held_back_alone(
    tmp_path: Path,
) -> None:
    """One honest source and a liar that will not answer once the comparison begins: the
    liar's pieces differ from the honest source's, the honest source's stay undecided (the
    liar compares nothing). Both were held back, the archive kept from the fleet. The check
    of the whole copy judges between the two: repaired from the honest source and cached,
    the liar alone held back."""
    async with beside_a_mute_liar(tmp_path, 1) as (t, liar):
        await get(t.url(NAME))
        await held_back_alone(t, liar)
        again = await get(t.url(NAME))
        assert again[:3] == (200, sha256(DATA), SIZE)


async def test_a_fast_liar_beside_an_honest_laggard_is_held_back_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A liar whose every byte is wrong, fast, and an honest source under a tenth of its
    rate, dropped as a laggard after its first bytes: the laggard's bytes, compared with the
    liar's (no other source could be asked, a dropped one is not), differed, and neither
    source's were confirmed by another: both were held back, the archive kept from the
    fleet on one liar's word. The copy, every byte of it then the liar's, fails its check:
    the liar alone carries it, and the honest source serves the next client."""
    # over the floor (64 KiB/s), under a tenth of the liar's even on a loaded host
    async with (
        serving(WrongEverywhere(files={NAME: DATA})) as liar,
        sources(1, rate=100 * 1024) as (honest,),
    ):
        liar.behaviour[NAME] = Behaviour(rate=12 * MiB)
        async with tracker(tmp_path, [liar, honest]) as t:
            status, _digest, size, _seconds = await get(t.url(NAME))
            assert status == 200 and size < SIZE
            clock, rejected = t.index.clock, t.streamer.rejections
            key = TargetKey(GROUP, liar.base)
            await wait_for(lambda: rejected.rejected(key, NAME, clock()), timeout=30)
            assert list(rejected.errors(clock())) == [key]
            drops = [
                getattr(r, "tracker_fields", {})
                for r in caplog.records
                if r.getMessage() == "refresh_source_dropped"
            ]
            assert [str(d["url"]).startswith(honest.base) for d in drops] == [True], drops
            assert sent(honest) > 16 * 1024  # its bytes were on disk, compared with the liar's
            honest.behaviour[NAME] = Behaviour(rate=JUDGED_RATE)  # no test waits a laggard out
            again = await get(t.url(NAME))
            assert again[:3] == (200, sha256(DATA), SIZE)


async def test_a_liar_dropped_as_a_laggard_costs_no_copy(tmp_path: Path) -> None:
    """The other way round: a slow liar, dropped as a laggard after its first (wrong) bytes,
    beside a fast honest source. Its bytes, compared with the honest one's, differed and
    were rewritten, but the honest source's own ranges had no one to compare them: the
    repair was undecided, the copy rejected and both held back. Every byte of the copy is
    then the honest source's: it passes its check, is cached, and the liar alone is named."""
    async with (
        sources(1, rate=12 * MiB) as (honest,),
        serving(WrongEverywhere(files={NAME: DATA})) as liar,
    ):
        liar.behaviour[NAME] = Behaviour(rate=100 * 1024)  # under a tenth of the honest one's
        async with tracker(tmp_path, [honest, liar]) as t:
            await read_along_then_repaired(t)
            assert sent(liar) > 16 * 1024  # its bytes were on disk, compared with the other's
            assert only_named(t) == TargetKey(GROUP, liar.base)


async def test_two_ports_of_one_host_are_one_voice(tmp_path: Path) -> None:
    """An honest source on one host and two on another (a sidecar and its validator's RPC
    on one machine) whose every byte is the same wrong one: counted per source, the two
    outvoted the honest one at every tie, which was then held back alone (and the copy not
    repaired). Per host, it is two voices: the whole-file check judges between them, the
    copy is repaired from the honest host, and the two ports are named."""
    honest = FakeUpstream(files={NAME: DATA}, behaviour={NAME: Behaviour(rate=JUDGED_RATE)})
    honest.host = "127.0.0.2"
    liars = [WrongEverywhere(files={NAME: DATA}) for _ in range(2)]
    for liar in liars:
        liar.host = "127.0.0.3"
        liar.behaviour[NAME] = Behaviour(rate=JUDGED_RATE)
    async with AsyncExitStack() as stack:
        ups = [await stack.enter_async_context(serving(up)) for up in (honest, *liars)]
        async with tracker(tmp_path, ups) as t:
            await read_along_then_repaired(t)
            now = t.index.clock()
            named = t.streamer.rejections.errors(now)
            assert set(named) == {TargetKey(GROUP, liar.base) for liar in liars}
            rejections = t.streamer.rejections
            assert not rejections.rejected(TargetKey(GROUP, honest.base), NAME, now)
            assert any(rejections.rejected(TargetKey(GROUP, up.base), NAME, now) for up in liars)
            again = await get(t.url(NAME))
            assert again[:3] == (200, sha256(DATA), SIZE)


async def test_pieces_asked_after_a_reload_carry_the_credentials_of_now(tmp_path: Path) -> None:
    """A refresh from several sources outlives the reload that rotated its group's token:
    each piece asked after it carries the new one (one origin's transfer at a time: only
    the piece asked before the reload may still carry the old one)."""
    async with sources(2) as ups, tracker(tmp_path, ups) as t:
        async with trio.open_nursery() as nursery:
            got: list[tuple[int, str, int, float]] = []

            async def read() -> None:
                got.append(await get(t.url(NAME)))

            nursery.start_soon(read)
            second = ups[1]
            await wait_for(lambda: sent(second) >= 1)  # the crew asks the second source
            before = [len(up.gets(NAME)) for up in ups]
            [old] = t.config.target_groups
            rotated = attrs.evolve(old, bearer_auth=BearerAuth(token="rotated"))
            t.config = attrs.evolve(t.config, target_groups=(rotated,))
        assert got[0][:3] == (200, sha256(DATA), SIZE)
        later = [
            [r.headers.get("authorization") for r in up.gets(NAME)[n:]]
            for up, n in zip(ups, before, strict=True)
        ]
        print(f"\nasked after the reload: {later}")
        assert any("Bearer rotated" in asked for asked in later)
        for asked in later:  # the first may have been asked before the reload, none after
            assert all(auth == "Bearer rotated" for auth in asked[1:]), later


async def test_two_colluding_liars_never_get_the_honest_source_held_back(
    tmp_path: Path,
) -> None:
    """One honest source (asked first) and two that send the same wrong bytes everywhere:
    two against one outvote the honest one's ranges, but the copy rewritten with their
    bytes fails its check again. The vote was refuted by the check that vouches for every
    byte: the honest source is not held back for it."""
    async with AsyncExitStack() as stack:
        honest = await stack.enter_async_context(
            serving(FakeUpstream(files={NAME: DATA}, behaviour={NAME: Behaviour(rate=JUDGED_RATE)}))
        )
        liars = [WrongEverywhere(files={NAME: DATA}) for _ in range(2)]
        for liar in liars:
            liar.behaviour[NAME] = Behaviour(rate=JUDGED_RATE)
            await stack.enter_async_context(serving(liar))
        async with tracker(tmp_path, [honest, *liars]) as t:
            status, _digest, size, _seconds = await get(t.url(NAME))
            assert status == 200 and size < SIZE
            await wait_for(lambda: t.outcome("refresh_rejected") == 1, timeout=30)
            now = t.index.clock()
            rejections = t.streamer.rejections
            assert not rejections.rejected(TargetKey(GROUP, honest.base), NAME, now)
            assert any(rejections.rejected(TargetKey(GROUP, up.base), NAME, now) for up in liars)


@asynccontextmanager
async def archive_tracker(
    tmp_path: Path, ups: list[FakeUpstream], name: str, data: bytes, **overrides: object
) -> AsyncIterator[TrackerUnderTest]:
    """A checked tracker that knows ``ups`` (the first the freshest: asked first) as the
    sources of the archive ``name`` (``data``'s size)."""
    config = {"verify_archives": True, "target_groups": (group(),), **overrides}
    async with proxy_tracker(tmp_path / "cache", **config) as t:
        for age, up in enumerate(ups):
            advertise(t.index, up.base, [(name, up.url(name), len(data))], age=age)
        yield t


def over_the_bound() -> tuple[str, bytes]:
    """A full of more accounts than ``prove_accounts_max`` allows (about 2.5 MB): its copy is
    proven to ``manifest`` at most, short of what vouches for a copy of several sources."""
    return many_accounts_archive(9320, 24_000)  # built once (cached)


@pytest.mark.parametrize("honest", [2, 1])
async def test_a_repaired_copy_short_of_accounts_still_holds_the_liar_back(
    tmp_path: Path, honest: int
) -> None:
    """Honest sources and a liar; the copy fails its check, the liar's bytes are found by
    two sources against one (with one honest source: each side's bytes are taken and the
    copy checked) and rewritten, and the copy is checked again, but its proof stops at
    ``manifest`` (``prove_accounts_max``): no check vouches for it, so it is not kept. The
    failed check still stands, carried by the liar alone (it was held back by no one, and
    the next refresh asked it again)."""
    name, data = over_the_bound()
    ups = [FakeUpstream(files={name: data}) for _ in range(honest)]
    liar = LyingUpstream(files={name: data})
    async with AsyncExitStack() as stack:
        for up in (*ups, liar):
            up.behaviour[name] = Behaviour()
            await stack.enter_async_context(serving(up))
        t = await stack.enter_async_context(
            archive_tracker(tmp_path, [*ups, liar], name, data, prove_accounts_max=1000)
        )
        status, _digest, size, _seconds = await get(t.url(name))
        assert (status, size < len(data)) == (200, True)
        assert liar.lied is not None
        clock, rejections = t.index.clock, t.streamer.rejections
        await wait_for(lambda: bool(rejections.errors(clock())), timeout=30)
        assert list(rejections.errors(clock())) == [TargetKey(GROUP, liar.base)]
        assert name not in t.cached()


@functools.cache
def status_cache_twins(slot: int) -> tuple[str, bytes, bytes]:
    """A full (a plain ``.tar``) whose status cache holds about 6 MiB of statuses, and the
    same archive with another first byte in every status's key: the same name, size,
    manifest and storages, so both prove to ``accounts``, which binds no status."""
    rnd = random.Random(slot)
    keys = [rnd.randbytes(20) for _ in range(90_000)]
    entries = snapshot_entries(slot, accounts=3, account_size=64 * 1024, seed=7)
    at = next(i for i, (member, _) in enumerate(entries) if member == "snapshots/status_cache")
    twins = []
    for flip in (0, 0xFF):
        statuses = [(bytes([key[0] ^ flip]) + key[1:], OK_RESULT) for key in keys]
        entries[at] = (entries[at][0], write_status_cache([slot, slot - 2, slot - 1], statuses))
        twins.append(make_tar(entries))
    return archive_name(slot, None, "tar", seed=7), twins[0], twins[1]


async def test_bytes_no_level_binds_from_one_source_alone_are_not_kept(tmp_path: Path) -> None:
    """The first source stalls after its first KiB and is dropped; the liar, the only source
    left, sends the rest, the status cache among it. No second source can vouch for those
    bytes (the first cannot be asked again), so the copy is not kept, and no one is held
    back (the liar's status cache was cached as proven)."""
    name, good, lie = status_cache_twins(9330)
    honest = FakeUpstream(files={name: good})
    honest.behaviour[name] = Behaviour(rate=RATE, pause_at=1024)
    liar = FakeUpstream(files={name: lie})
    liar.behaviour[name] = Behaviour(rate=RATE)
    async with AsyncExitStack() as stack:
        for up in (honest, liar):
            await stack.enter_async_context(serving(up))
        t = await stack.enter_async_context(archive_tracker(tmp_path, [honest, liar], name, good))
        status, _digest, size, _seconds = await get(t.url(name))
        assert (status, size < len(good)) == (200, True)
        await wait_for(lambda: t.outcome("refresh_failed") == 1, timeout=30)
        assert name not in t.cached()
        assert t.streamer.rejections.errors(t.index.clock()) == {}
        honest.behaviour[name].resume.set()


def stored_frames(data: bytes, frame: int = 512 * 1024) -> bytes:
    """``data`` as zstd frames of ``frame`` bytes of raw (stored) blocks: as long whatever the
    bytes, so that two archives that differ in them are of one size."""
    out = bytearray()
    for at in range(0, len(data), frame):
        part = data[at : at + frame]
        # the magic number, a frame header without checksum, a window of 1 MiB
        out += (0xFD2FB528).to_bytes(4, "little") + bytes([0x00, 0x50])
        blocks = [part[i : i + 128 * 1024] for i in range(0, len(part), 128 * 1024)]
        for n, block in enumerate(blocks):
            out += (len(block) << 3 | (n == len(blocks) - 1)).to_bytes(3, "little") + block
    return bytes(out)


@functools.cache
def firedancer_twins(slot: int, statuses: int) -> tuple[str, bytes, bytes]:
    """A full as Firedancer v26.08 writes it (docs/architecture.md, "Bytes no level binds"):
    its storages (about 12 MiB of tar, one account each, all of its slot, the manifest
    listing none) in zstd frames of 1 MiB of tar, its status cache of ``statuses`` after
    them; and the same archive with another first byte in every status's key. The status
    cache's frames are of stored blocks: both archives have one size (and one name, both
    prove to ``accounts``, which binds no status)."""
    rnd = random.Random(slot)
    accounts = [
        Account(rnd.randbytes(32), 1 + rnd.randrange(10**9), account_bytes(rnd, MiB))
        for _ in range(12)
    ]
    entries: list[tuple[str, bytes | None]] = [
        ("version", VERSION),
        ("snapshots", None),
        (f"snapshots/{slot}", None),
        (f"snapshots/{slot}/{slot}", write_manifest(slot, lattice_of(accounts), [])),
        *((f"accounts/{slot}.{i}", padded(write_storage([a]))) for i, a in enumerate(accounts)),
    ]
    keys = [rnd.randbytes(20) for _ in range(statuses)]
    twins = []
    for flip in (0, 0xFF):
        cache = [(bytes([key[0] ^ flip]) + key[1:], OK_RESULT) for key in keys]
        tar = make_tar([*entries, ("snapshots/status_cache", write_status_cache([slot], cache))])
        with tarfile.open(fileobj=io.BytesIO(tar)) as members:
            split = members.getmembers()[-1].offset  # the status cache's header
        storages = compress(tar[:split], "zst", pieces=len(tar[:split]) // MiB)
        twins.append(storages + stored_frames(tar[split:]))
    name = f"snapshot-{slot}-{archive_hash_of(lattice_of(accounts))}.tar.zst"
    assert len(twins[0]) == len(twins[1])
    return name, twins[0], twins[1]


def undecided(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The reasons of the ``refresh_unbound_undecided`` lines logged so far."""
    return [
        str(getattr(r, "tracker_fields", {}).get("reason", ""))
        for r in caplog.records
        if r.getMessage() == "refresh_unbound_undecided"
    ]


def unbound_checked(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The fields of each ``refresh_unbound_checked`` logged."""
    return [
        getattr(r, "tracker_fields", {})
        for r in caplog.records
        if r.getMessage() == "refresh_unbound_checked"
    ]


async def test_bytes_no_level_binds_last_are_asked_from_their_frame_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Firedancer's layout (the status cache after the storages) in zstd frames, from two
    honest sources: what the first is asked again is the head's and, from the start of the
    frame the status cache begins in, the tail's bytes the other wrote (frames decode
    apart), not every byte the other sent (about half of the archive)."""
    caplog.set_level(logging.INFO, logger="tracker.proxy")
    name, good, _lie = firedancer_twins(9340, 300)
    ups = [FakeUpstream(files={name: good}) for _ in range(2)]
    async with AsyncExitStack() as stack:
        for up in ups:
            up.behaviour[name] = Behaviour(rate=RATE)
            await stack.enter_async_context(serving(up))
        t = await stack.enter_async_context(archive_tracker(tmp_path, ups, name, good))
        assert (await get(t.url(name)))[:3] == (200, sha256(good), len(good))
        await wait_for(lambda: name in t.cached(), timeout=30)
        assert sha256((t.group_dir() / name).read_bytes()) == sha256(good)
    assert sum(s.body_sent for s in ups[1].gets(name)) > len(good) // 4  # it gave pieces
    checked = unbound_checked(caplog)
    asked = sum(int(str(fields.get("asked", 0))) for fields in checked)
    assert asked < len(good) // 8, (asked, len(good))  # the tail: its last frame or two
    assert all(fields.get("rewritten") == 0 for fields in checked)


@pytest.mark.parametrize("layout", ["agave", "firedancer"])
async def test_bytes_no_level_binds_are_never_one_other_sources_word(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, layout: str
) -> None:
    """An honest first source and a liar whose archive differs only in its status cache
    (no level binds a status: docs/architecture.md, "Proven archives"): before the account
    storages as agave writes it, or after them (about 6 MiB) as Firedancer does. The liar's
    pieces of it pass every check; such bytes are kept only as the first source sends them,
    as one source's copy would hold them: they are compared with the first source's (from
    the frame the status cache begins in, where it comes last), which replace them. The
    copy is cached exact and no one is named (which of the two lied, no check can tell).
    The reader that read along was cut off (it got the liar's statuses)."""
    caplog.set_level(logging.INFO, logger="tracker.proxy")
    if layout == "agave":
        name, good, lie = status_cache_twins(9330)
    else:
        name, good, lie = firedancer_twins(9341, 90_000)
    honest = FakeUpstream(files={name: good})
    liar = FakeUpstream(files={name: lie})
    async with AsyncExitStack() as stack:
        for up in (honest, liar):
            up.behaviour[name] = Behaviour(rate=RATE)
            await stack.enter_async_context(serving(up))
        t = await stack.enter_async_context(archive_tracker(tmp_path, [honest, liar], name, good))
        status, _digest, size, _seconds = await get(t.url(name))
        assert (status, size < len(good)) == (200, True)  # cut off: it read the liar's
        await wait_for(lambda: name in t.cached(), timeout=30)
        assert sha256((t.group_dir() / name).read_bytes()) == sha256(good)
        assert sum(s.body_sent for s in liar.gets(name)) > MiB  # it gave pieces
        assert t.streamer.rejections.errors(t.index.clock()) == {}
    assert any(int(str(fields.get("rewritten", 0))) > 0 for fields in unbound_checked(caplog))


class LiesOnceDone(FakeUpstream):
    """Honest while the refresh downloads; once it has (``done``: the tracker logged
    ``refresh_sources``), every byte of every range it sends is another one."""

    done: bool = False

    async def _body(self, conn: Any, stream: Any, seen: Any, how: Any, body: bytes) -> bool:
        if self.done and seen.headers.get("range", "").startswith("bytes="):
            body = bytes(b ^ 0x5A for b in body)
        return await super()._body(conn, stream, seen, how, body)


class DoneWhenDelivered(logging.Handler):
    """Sets ``up.done`` once the refresh logs ``refresh_sources`` (every byte delivered)."""

    def __init__(self, up: LiesOnceDone) -> None:
        super().__init__()
        self.up = up

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "refresh_sources":
            self.up.done = True


async def test_a_first_source_whose_bytes_fail_the_check_alone_costs_the_copy_and_is_held_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first source, asked again for the head's bytes the second one wrote, sends other
    bytes, which break the status cache the copy passed its check with. The first may have
    lied, or the second's bytes fit only its own (pieces framed apart): no check of that
    copy tells which, so the first is asked for the rest of the second's bytes too. It sends
    other bytes again: the copy, every byte of it the first's, fails its check as the
    first's copy alone would, so the first alone is held back for it (not the second) and
    the copy is not kept. The next refresh takes the file from the second."""
    name, good, _lie = status_cache_twins(9330)
    first = LiesOnceDone(files={name: good})
    second = FakeUpstream(files={name: good})
    handler = DoneWhenDelivered(first)
    caplog.set_level(logging.INFO, logger="tracker.proxy")  # refresh_sources is told
    logging.getLogger("tracker.proxy").addHandler(handler)
    try:
        async with AsyncExitStack() as stack:
            for up in (first, second):
                up.behaviour[name] = Behaviour(rate=RATE)
                await stack.enter_async_context(serving(up))
            t = await stack.enter_async_context(
                archive_tracker(tmp_path, [first, second], name, good)
            )
            status, _digest, size, _seconds = await get(t.url(name))
            assert (status, size < len(good)) == (200, True)
            assert first.done
            await wait_for(lambda: t.outcome("refresh_rejected") == 1, timeout=30)
            assert "fail the check its copy passed without them" in undecided(caplog)[0]
            clock = t.index.clock
            errors = t.streamer.rejections.errors(clock())
            assert list(errors) == [TargetKey(GROUP, first.base)]
            assert "bytes alone fails its check" in errors[TargetKey(GROUP, first.base)]
            assert name not in t.cached()
            # held back: the next refresh is the second's
            assert (await get(t.url(name)))[:3] == (200, sha256(good), len(good))
            await wait_for(lambda: name in t.cached(), timeout=30)
            assert sha256((t.group_dir() / name).read_bytes()) == sha256(good)
            assert list(t.streamer.rejections.errors(clock())) == [TargetKey(GROUP, first.base)]
    finally:
        logging.getLogger("tracker.proxy").removeHandler(handler)


@functools.cache
def reframed_twins(slot: int) -> tuple[str, bytes, bytes, tuple[int, int]]:
    """A full (``.tar.zst``, frames of 128 KiB of tar, about 2.3 MB of statuses before the
    storages) and a liar's copy of it of the same name and size: the same bytes outside a
    window that starts past 1.25 MiB (where a refresh's first piece ends) and ends two frames
    before the end; inside it, the same tar but another first byte in every status's key,
    framed otherwise (frames of 128 KiB of tar shifted by half a frame, a skippable frame
    making up the size). Each copy passes every check; a copy of the honest bytes up to
    anywhere inside the window and the liar's after it fails (a frame cut), so the liar's
    pieces there fit only its own neighbours. The window's raw (start, end) with them."""
    rnd = random.Random(slot)
    keys = [rnd.randbytes(20) for _ in range(32_000)]
    entries = snapshot_entries(slot, accounts=12, account_size=512 * 1024, seed=7)
    at = next(i for i, (member, _) in enumerate(entries) if member == "snapshots/status_cache")
    tars = []
    for flip in (0, 0xFF):
        statuses = [(bytes([key[0] ^ flip]) + key[1:], OK_RESULT) for key in keys]
        entries[at] = (entries[at][0], write_status_cache([slot, slot - 2, slot - 1], statuses))
        tars.append(make_tar(entries))
    frame = 128 * 1024

    def framed(tar: bytes, cuts: list[int], level: int) -> list[bytes]:
        bounds = [0, *cuts, len(tar)]
        zstd = zstandard.ZstdCompressor(level=level, write_checksum=True)
        return [zstd.compress(tar[a:b]) for a, b in itertools.pairwise(bounds)]

    frames = framed(tars[0], list(range(frame, len(tars[0]), frame)), 3)
    good = b"".join(frames)
    starts = [sum(len(f) for f in frames[:i]) for i in range(len(frames) + 1)]
    first = next(i for i, start in enumerate(starts) if start >= MiB * 5 // 4)
    last = len(frames) - 2
    low, high = first * frame, last * frame
    # level 19: shorter than the honest frames, the rest a skippable frame of zeros
    own = b"".join(framed(tars[1][low:high], list(range(frame // 2, high - low, frame)), 19))
    pad = starts[last] - starts[first] - len(own) - 8
    skippable = (0x184D2A50).to_bytes(4, "little") + pad.to_bytes(4, "little") + bytes(pad)
    lie = good[: starts[first]] + own + skippable + good[starts[last] :]
    assert len(lie) == len(good) and pad >= 0
    return archive_name(slot, None, "zst", seed=7), good, lie, (starts[first], starts[last])


async def test_a_liar_framing_its_pieces_apart_cannot_keep_the_archive_out_of_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An honest first source and a fast liar whose copy (:func:`reframed_twins`) decodes to
    the same tar but for its statuses, framed otherwise: the first sends the first piece,
    the liar all the rest, and the copy passes its check. The head's bytes the liar wrote are
    asked of the first and replace the liar's; the copy then fails its check (the first's
    frames end inside the liar's), as it would on every refresh. The rest of what the liar
    wrote is asked of the first too: the copy is then the first's alone, passes, and is
    cached, exact; no one is held back (each copy passes its check on its own)."""
    caplog.set_level(logging.INFO, logger="tracker.proxy")
    name, good, lie, (low, high) = reframed_twins(9350)
    honest = FakeUpstream(files={name: good})
    honest.behaviour[name] = Behaviour(rate=1.5 * MiB)
    liar = FakeUpstream(files={name: lie})
    liar.behaviour[name] = Behaviour(rate=10 * MiB)
    async with AsyncExitStack() as stack:
        for up in (honest, liar):
            await stack.enter_async_context(serving(up))
        t = await stack.enter_async_context(archive_tracker(tmp_path, [honest, liar], name, good))
        status, _digest, size, _seconds = await get(t.url(name))
        assert (status, size < len(good)) == (200, True)  # cut off: it read the liar's
        ended = ("refresh_ok", "refresh_failed", "refresh_rejected")
        await wait_for(lambda: any(t.outcome(o) for o in ended), timeout=30)
        assert undecided(caplog)  # the first's head alone failed beside the liar's frames
        assert name in t.cached()
        assert sha256((t.group_dir() / name).read_bytes()) == sha256(good)
        assert t.streamer.rejections.errors(t.index.clock()) == {}
        assert any(r.getMessage() == "refresh_unbound_first_alone" for r in caplog.records)
    # the liar wrote the whole window (else the first check would have failed, not this)
    ranges = [g.headers.get("range", "") for g in liar.gets(name)]
    assert sum(s.body_sent for s in liar.gets(name)) >= high - low, ranges


async def test_a_source_dropped_as_a_laggard_is_not_priced_as_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A source slower than a tenth of the other (:func:`tracker.multisource.judging.laggards`)
    is dropped after one speed window, with about 1 MiB sent or less. It was sending all
    along: our refresh ended its part, not the source (docs/ranking.md, "Failed
    transfers"), so it is priced as a transfer our side ended (from 1 MiB on, over the
    seconds it took part). Priced as a failure (its bytes over at least the read timeout),
    an honest source capped by its operator was measured at a fraction of its rate."""
    # over the floor (64 KiB/s), under a tenth of the other even when a loaded host slows
    # the other to 1 MiB/s (the drop must not depend on the machine's load)
    laggard_rate = 100 * 1024
    async with sources(2, rate=12 * MiB) as ups:
        ups[1].behaviour[NAME] = Behaviour(rate=laggard_rate)
        async with tracker(tmp_path, ups) as t:
            status, digest, size, _seconds = await get(t.url(NAME))
            assert (status, digest, size) == (200, sha256(DATA), SIZE)
            await wait_for(lambda: NAME in t.cached())
            laggard = TargetKey(GROUP, ups[1].base)
            _probed, achieved = t.index.speeds.figures(laggard, trio.current_time())
    drops = [
        getattr(r, "tracker_fields", {})
        for r in caplog.records
        if r.getMessage() == "refresh_source_dropped"
    ]
    assert len(drops) == 1 and str(drops[0]["url"]).startswith(ups[1].base), drops
    assert "under 10%" in str(drops[0]["reason"]), drops
    # nothing under 1 MiB is measured; more is its rate, never a failure's price
    assert achieved == 0 or achieved >= laggard_rate / 2, f"priced at {achieved:.0f} bytes/s"


#: How long the test's promotion takes after the archive check passed (the check catching
#: up, the commit's fsync): far longer than the loopback body itself.
PROMOTION = 1.5


@pytest.mark.parametrize("count", [1, 2], ids=["one source", "two sources"])
async def test_a_refresh_measures_its_sources_until_their_last_byte_not_its_promotion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """A checked refresh is promoted after its source's last byte came (the check catching
    up, the commit): that time is the tracker's, not the source's. Counted as the first
    source's, every checked refresh priced it below its speed tests (docs/ranking.md,
    "Failed transfers"). Each source's measured seconds end at its last byte, both with
    one source and from several."""
    verify = Refresh.verify

    async def slow_verify(self: Refresh) -> None:
        await verify(self)
        await trio.sleep(PROMOTION)  # a promotion slower than the body, on purpose

    measured: list[tuple[int, float]] = []
    measured_transfer = transfers.measured_transfer

    def spy(moved: int, seconds: float, *args: Any, **kwargs: Any) -> tuple[int, float] | None:
        measured.append((moved, seconds))
        return measured_transfer(moved, seconds, *args, **kwargs)

    monkeypatch.setattr(Refresh, "verify", slow_verify)
    monkeypatch.setattr(transfers, "measured_transfer", spy)
    async with sources(count, rate=None) as ups, tracker(tmp_path, ups) as t:
        status, digest, size, _seconds = await get(t.url(NAME))
        assert (status, digest, size) == (200, sha256(DATA), SIZE)
        await wait_for(lambda: NAME in t.cached())
        await wait_for(lambda: len(measured) == count)  # the first's when its answer closes
    assert sum(moved for moved, _s in measured) >= SIZE, measured
    # the loopback body takes a fraction of the promotion, on a loaded host too
    assert all(seconds < PROMOTION for _moved, seconds in measured), measured


async def test_a_first_source_dropped_as_a_laggard_is_measured_over_its_own_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first source, slower than a tenth of the other, is dropped as a laggard after a
    short speed window or two while the other sends on: its transfer is measured over the
    seconds it took part, as another source's is (docs/ranking.md, "Failed transfers"), not
    over the whole refresh."""
    # Half a second: the other source's first bytes (its one-byte probe, then its piece) come
    # within the first window on a loaded host too. In windows of 0.2 s, beside CPU hogs, it
    # sent nothing in the first one and was dropped as stalled (docs/architecture.md, "A
    # refresh from several sources"), leaving the laggard the last source, never dropped.
    monkeypatch.setattr(cachefill, "SPEED_WINDOW", 0.5)
    lagged: dict[Source, float] = {}
    every: list[Source] = []
    lagging = cachefill.lagging

    def spy_lagging(sources: list[Source], dropped: dict[Source, float], *args: Any) -> list[str]:
        reasons = lagging(sources, dropped, *args)
        every[:] = sources
        lagged.update(dropped)
        return reasons

    measured: list[tuple[int, float]] = []
    measured_transfer = transfers.measured_transfer

    def spy(moved: int, seconds: float, *args: Any, **kwargs: Any) -> tuple[int, float] | None:
        measured.append((moved, seconds))
        return measured_transfer(moved, seconds, *args, **kwargs)

    monkeypatch.setattr(cachefill, "lagging", spy_lagging)
    monkeypatch.setattr(transfers, "measured_transfer", spy)
    # over the floor (64 KiB/s), far under a tenth of the other (on a loaded host too), in
    # small chunks: each window holds several, so its rate is not a chunk or none; the other
    # at 6 MiB/s sends on for a second or more after the drop
    async with sources(2, rate=6 * MiB) as ups:
        ups[0].behaviour[NAME] = Behaviour(rate=128 * 1024)
        ups[0].chunk = 16 * 1024
        async with tracker(tmp_path, ups) as t:
            status, digest, size, _seconds = await get(t.url(NAME))
            assert (status, digest, size) == (200, sha256(DATA), SIZE)
            await wait_for(lambda: NAME in t.cached())
            await wait_for(lambda: len(measured) == 2)  # the first's when its answer closes
    assert every and every[0] in lagged, "the first source was not dropped as a laggard"
    part = lagged[every[0]]
    (_other, whole), (first_sent, first_seconds) = measured
    assert first_sent == every[0].sent
    assert whole > part + 0.3, (whole, part)  # the other sent on well after the drop
    assert first_seconds < part + 0.25, (first_seconds, part, whole)


def measured_by_source(monkeypatch: pytest.MonkeyPatch) -> dict[TargetKey, tuple[int, float, str]]:
    """Each source's last transfer as the launcher measures it (bytes, seconds, ending), by
    source, filled as the tracker measures them."""
    measured: dict[TargetKey, tuple[int, float, str]] = {}
    launcher_measured = transfers.Launcher._measured

    def spy(
        self: transfers.Launcher,
        key: TargetKey,
        size: int,
        seconds: float,
        ending: transfers.Ending,
        waited: float,
        stalled: float,
    ) -> None:
        measured[key] = (size, seconds, ending)
        launcher_measured(self, key, size, seconds, ending, waited, stalled)

    monkeypatch.setattr(transfers.Launcher, "_measured", spy)
    return measured


@pytest.mark.parametrize("dies", [0, 1], ids=["the first source", "another source"])
async def test_a_source_dropped_for_failing_is_measured_over_its_own_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dies: int
) -> None:
    """A source that dies after 1 MiB is dropped for failing (its pieces break, three in a
    row) early, while the other sends on for seconds: it ended its own part then, and is
    measured over the seconds it took part, as a laggard is (docs/ranking.md, "Failed
    transfers"), not over the whole refresh's (harsher than a laggard's price)."""
    measured = measured_by_source(monkeypatch)
    async with sources(2, rate=4 * MiB) as ups:
        ups[dies].dies_after = MiB
        async with tracker(tmp_path, ups) as t:
            status, digest, size, _seconds = await get(t.url(NAME))
            assert (status, digest, size) == (200, sha256(DATA), SIZE)
            await wait_for(lambda: NAME in t.cached())
            await wait_for(lambda: len(measured) == 2)  # the first's when its answer closes
    assert ups[dies].dead
    died = measured[TargetKey(GROUP, ups[dies].base)]
    _sent, whole, _ending = measured[TargetKey(GROUP, ups[1 - dies].base)]
    assert died[2] == "source", died
    assert whole > 1.5, whole  # the survivor sent the rest alone, at 4 MiB/s
    assert died[1] < whole / 2, (died, whole)


async def test_every_source_of_a_failed_refresh_is_measured_over_its_own_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three sources, every one cutting each answer after 64 KiB: all are dropped for
    failing and the refresh fails. Each ended its own part, and each is measured as the
    source's failure over the seconds it took part (docs/ranking.md, "Failed transfers"),
    not the first alone: a source whose failures went unmeasured kept its place, and the
    next refresh leaned on it again."""
    measured = measured_by_source(monkeypatch)
    async with sources(3, rate=None) as ups:
        for up in ups:
            up.behaviour[NAME] = Behaviour(drop_after=64 * 1024)
        keys = [TargetKey(GROUP, up.base) for up in ups]
        async with tracker(tmp_path, ups) as t:
            _status, _digest, size, _seconds = await get(t.url(NAME))
            assert size < SIZE  # the refresh failed: its client's body broke
            await wait_for(lambda: keys[0] in measured)  # the first's when its answer closes
            assert NAME not in t.cached()
            now = trio.current_time()
            achieved = [t.index.speeds.figures(key, now)[1] for key in keys]
    assert all(sent(up) > 0 for up in ups), [sent(up) for up in ups]
    assert sorted(measured) == sorted(keys), measured
    assert [measured[key][2] for key in keys] == ["source"] * 3, measured
    # each priced as a failure: its few KiB over at least the read timeout
    assert all(0 < rate < MiB / FAST.read_timeout for rate in achieved), achieved


async def test_a_source_dropped_for_busy_answers_is_not_priced_as_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A source that answers its pieces 503 (agave's RPC, nginx's ``limit_conn`` at their
    connection limit) is dropped from the refresh after three such answers in a row, as a
    failing one is, but it is busy, not slow: priced as a failure (one byte over the read
    timeout) one busy moment put it behind every other source for hours. Its part is one
    our side ended (nothing under 1 MiB is measured), and it backs off instead
    (docs/ranking.md, "Busy answers")."""
    async with sources(2, rate=None) as ups:
        ups[1].behaviour[NAME] = Behaviour(real_status=503)  # its one-byte probe is served
        async with tracker(tmp_path, ups) as t:
            status, digest, size, _seconds = await get(t.url(NAME))
            assert (status, digest, size) == (200, sha256(DATA), SIZE)
            await wait_for(lambda: NAME in t.cached())
            busy = TargetKey(GROUP, ups[1].base)
            _probed, achieved = t.index.speeds.figures(busy, trio.current_time())
            assert achieved == 0, f"priced at {achieved:.0f} bytes/s"
            assert t.streamer.launcher.busy.until(busy) > t.index.clock()  # backing off
    drops = [
        getattr(r, "tracker_fields", {})
        for r in caplog.records
        if r.getMessage() == "refresh_source_dropped"
    ]
    assert len(drops) == 1 and str(drops[0]["url"]).startswith(ups[1].base), drops
    assert "503" in str(drops[0]["reason"]), drops
