"""The release rule (docs/architecture.md, "The release rule"): no reader gets the last byte
of a copy while a check the tracker runs on it is still running or has failed, and a copy
from several sources reaches a client complete only once every byte of it is vouched for as
much as one source's copy would be. Real hypercorn tracker, real archives, hostile sources
on 127.0.0.1 that change one byte inside each zstd raw block of the account storages (the
stream still decodes, the manifest is the name's: tests/helpers_rawblocks.py)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trio
from archives import archive_name, forged_accounts_archive
from helpers_bytes import MiB, sha256
from helpers_proxy import GROUP, TrackerUnderTest, advertise, proxy_tracker, wait_for
from helpers_rawblocks import as_agave_writes, flipped_in_raw_blocks, storage_heavy_archive
from helpers_secondread import SecondRead, hold_second_read
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving, sidecar_listing
from test_clients_real import CLEAN_ENV, tool

from tracker.cache.refresh import HOLD_BACK
from tracker.config.schema import BearerAuth, SourceLimits, TargetGroup, Trust
from tracker.core.snapshots import parse_archive_name
from tracker.discovery.sidecar import probe_sidecar
from tracker.ordering.index import TargetKey
from tracker.proof.levels import Level

#: Body bytes per second of one source: slow enough that every source takes pieces.
RATE = 2 * MiB


def group(require: Level | None = None, known: tuple[str, ...] = ()) -> TargetGroup:
    return TargetGroup(
        group=GROUP,
        bearer_auth=BearerAuth(token="t"),
        source_limits=SourceLimits(max_transfers=1),
        trust=Trust(known_sources=known, require=require),
    )


@asynccontextmanager
async def upstreams(
    files: list[bytes], name: str, **behaviour: object
) -> AsyncIterator[list[FakeUpstream]]:
    """One upstream serving each of ``files`` as ``name``, each at RATE per request."""
    ups: list[FakeUpstream] = []
    async with trio.open_nursery() as nursery:
        for data in files:
            up = FakeUpstream(files={name: data})
            up.behaviour[name] = Behaviour(rate=RATE, **behaviour)  # type: ignore[arg-type]
            ups.append(await nursery.start(_serve, up))
        yield ups
        nursery.cancel_scope.cancel()


async def _serve(up: FakeUpstream, *, task_status: trio.TaskStatus[FakeUpstream]) -> None:
    async with serving(up) as running:
        task_status.started(running)
        await trio.sleep_forever()


@asynccontextmanager
async def tracker(
    tmp_path: Path, ups: list[FakeUpstream], name: str, size: int, **config: object
) -> AsyncIterator[TrackerUnderTest]:
    """A tracker (archives checked, fulls proven to ``accounts``) whose index lists each of
    ``ups`` as a source of ``name``, the first one freshest (asked first)."""
    settings: dict[str, object] = {"verify_archives": True, "target_groups": (group(),)}
    settings.update(config)
    async with proxy_tracker(tmp_path / "cache", **settings) as t:
        for age, up in enumerate(ups):
            advertise(t.index, up.base, [(name, up.url(name), size)], age=age)
        yield t


async def published(t: TrackerUnderTest, ups: list[FakeUpstream], name: str, data: bytes) -> None:
    """Each of ``ups`` is a sidecar publishing the SHA-256 of ``data`` for ``name`` (the
    true archive; an incremental listed with its full), probed for real; the first one
    freshest."""
    files = {name: data}
    parsed = parse_archive_name(name)
    assert parsed is not None
    if not parsed.is_full:
        files = {archive_name(parsed.base_slot): bytes(1024), **files}
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        for age, up in enumerate(ups):
            up.listing = sidecar_listing(files)
            entries = [f for info in up.listing for f in info["files"] if f["file_name"] == name]
            for entry in entries:
                entry["sha256"] = sha256(data)
            infos = await probe_sidecar(client, up.base)
            when = datetime.now(UTC) - timedelta(seconds=age)
            t.index.apply(TargetKey(GROUP, up.base), infos, when)


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, int]:
    """One GET: status, SHA-256 and length of the body as far as it came (a broken stream
    is what the test looks at)."""
    digest, size = hashlib.sha256(), 0
    async with (
        httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        try:
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                size += len(chunk)
        except httpx.HTTPError:
            pass
    return response.status_code, digest.hexdigest(), size


def sent(up: FakeUpstream, name: str) -> int:
    return sum(s.body_sent for s in up.gets(name))


# -- finding 2: a copy from several sources is vouched for --------------------------------------


@pytest.mark.parametrize("known", [False, True], ids=["published", "published_by_known"])
async def test_an_incremental_from_several_sources_is_never_a_mixture(
    tmp_path: Path, known: bool
) -> None:
    """Three sidecars of an incremental publish its true SHA-256; one of them changes a
    byte inside each raw block it serves. The incremental's level stops at ``manifest``,
    which none of those bytes is under: unless known sources publish the digest, the
    refresh takes the file from its first source alone (the liar is never asked); when
    they do, the copy's SHA-256 must be that digest: the mixture fails it, the liar is
    found and named, the copy repaired. Either way no client and no cache get a byte the
    sources did not all serve, and the digest listed is the archive's."""
    name, data = storage_heavy_archive(tmp_path, base_slot=400)
    lie, _count = flipped_in_raw_blocks(data)
    async with upstreams([data, lie, data], name) as ups:
        known_sources = tuple(up.base for up in ups) if known else ()
        async with tracker(
            tmp_path, [], name, len(data), target_groups=(group(known=known_sources),)
        ) as t:
            await published(t, ups, name, data)
            status, digest, size = await get(t.url(name))
            if known:  # the mixture failed its digest: the reader was cut off
                assert status == 200 and size < len(data)
            else:
                assert (status, digest, size) == (200, sha256(data), len(data))
            await wait_for(lambda: name in t.cached(), timeout=30)
            assert sha256((t.group_dir() / name).read_bytes()) == sha256(data)
            again = await get(t.url(name))
            assert again == (200, sha256(data), len(data))
            if known:
                named = t.streamer.rejections.errors(t.index.clock())
                assert list(named) == [TargetKey(GROUP, ups[1].base)], named
    if not known:
        assert ups[1].gets(name) == []  # one source's copy: the liar gave nothing
        assert sent(ups[2], name) == 0


# -- findings 3 and 6: no reader gets the end before every check passed ------------------------


async def read_along(url: str, size: int, held: SecondRead) -> tuple[int, int]:
    """A client reads ``url`` (``size`` bytes) while the accounts level's second read is
    held: once it got every byte but the last HOLD_BACK (the first read passed, the second
    one waits) the second read goes on. Its status and the bytes it got."""
    got = [0, 0]
    done = trio.Event()

    async def client() -> None:
        async with (
            httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as http,
            http.stream("GET", url) as response,
        ):
            got[0] = response.status_code
            try:
                async for chunk in response.aiter_raw():
                    got[1] += len(chunk)
            except httpx.HTTPError:
                pass
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        await held.wait_started()
        await wait_for(lambda: got[1] >= size - HOLD_BACK or done.is_set(), timeout=30)
        held.go()
    return got[0], got[1]


async def test_the_first_reader_of_a_full_from_several_sources_waits_for_accounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the default level (``manifest``) a full from two sources, one changing a
    byte inside each raw block of the account storages: the first read passes (the
    manifest is the name's), only the accounts level's second read fails. The client
    reading along never gets the end, however long that second read takes; the copy is
    repaired and cached exact."""
    held = hold_second_read(monkeypatch)
    name, data = storage_heavy_archive(tmp_path)
    lie, _count = flipped_in_raw_blocks(data)
    try:
        async with (
            upstreams([data, lie], name) as ups,
            tracker(tmp_path, ups, name, len(data)) as t,
        ):
            status, size = await read_along(t.url(name), len(data), held)
            assert status == 200 and size < len(data)  # a broken stream, never a whole body
            assert sent(ups[1], name) > 0  # the liar gave pieces
            await wait_for(lambda: name in t.cached(), timeout=30)
            assert sha256((t.group_dir() / name).read_bytes()) == sha256(data)
    finally:
        held.go()


async def test_a_full_with_changed_accounts_from_one_source_never_reaches_its_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One sidecar serving a full whose accounts were changed (a proper zstd stream, its
    manifest the name's), under the default level: its client's stream breaks short of the
    end, however long the accounts level's second read takes; nothing is cached."""
    held = hold_second_read(monkeypatch)
    name, bad = forged_accounts_archive(2000, seed=26, account_size=256 * 1024)
    bad = as_agave_writes(bad)
    try:
        async with upstreams([bad], name) as ups, tracker(tmp_path, ups, name, len(bad)) as t:
            status, size = await read_along(t.url(name), len(bad), held)
            assert status == 200 and size < len(bad)
            await wait_for(lambda: t.streamer.refreshes() == [], timeout=30)
            assert t.cached() == []
    finally:
        held.go()


# -- finding 5: readers during a refresh under trust.require: accounts -------------------------


@pytest.mark.parametrize("forged", [True, False], ids=["changed_accounts", "good"])
async def test_requests_during_a_refresh_meet_the_accounts_level(
    tmp_path: Path, forged: bool
) -> None:
    """Under ``trust.require: accounts`` (unshared refreshes): while a refresh of a full
    runs, a whole-file GET reads the refresh (never the source's own stream) and gets its
    end only once the copy passed every check; a Range GET gets no unchecked byte at all
    (a ``503`` with ``retry-after``, never a 206 from the growing file or a source). A copy
    whose accounts were changed reaches no client complete; a good one reaches both
    readers exact, and the Range once it is cached."""
    name, good = forged_accounts_archive(2100, seed=27, account_size=256 * 1024)
    if not forged:
        from archives import build_archive

        name, good = build_archive(2100, seed=27, account_size=256 * 1024)
    data = as_agave_writes(good)
    pause = len(data) // 2
    accounts = (group(Level.ACCOUNTS),)
    async with (
        upstreams([data], name, pause_at=pause) as ups,
        tracker(tmp_path, ups, name, len(data), target_groups=accounts) as t,
    ):
        results: dict[str, tuple[int, str, int]] = {}
        async with trio.open_nursery() as nursery:

            async def client(label: str) -> None:
                results[label] = await get(t.url(name))

            nursery.start_soon(client, "first")
            await wait_for(lambda: sent(ups[0], name) >= pause)  # the refresh runs, paused
            nursery.start_soon(client, "whole")
            await wait_for(lambda: t.counter("snapshot_tracker_shared_readers_total") >= 1)
            during = await get(t.url(name), {"range": "bytes=0-65535"})
            assert results == {}  # nobody got a last byte while the copy is unchecked
            ups[0].behaviour[name].resume.set()
        assert during[0] == 503  # no byte of a range before the check passed
        assert len(ups[0].gets(name)) == 1  # one stream from the source, the refresh's
        if forged:
            assert results["first"][2] < len(data) and results["whole"][2] < len(data)
        else:
            assert results["first"] == results["whole"] == (200, sha256(data), len(data))
            after = await get(t.url(name), {"range": "bytes=0-65535"})
            assert after == (206, sha256(data[:65536]), 65536)


@pytest.mark.parametrize("liar", [True, False], ids=["liar_first", "honest"])
async def test_aria2c_through_a_cold_tracker_never_ends_with_a_poisoned_file(
    tmp_path: Path, liar: bool
) -> None:
    """The README's ``aria2c -x4 -s4`` through a cold tracker under ``trust.require:
    accounts``, three sources of a full, the freshest one changing a byte inside each raw
    block of the storages: aria2c ends with the exact archive or fails; never exit 0 with
    the liar's bytes. With three honest sources it gets the exact archive (exit 0)."""
    aria2c = tool("aria2c")
    name, data = storage_heavy_archive(tmp_path)
    lie, _count = flipped_in_raw_blocks(data)
    accounts = (group(Level.ACCOUNTS),)
    async with (
        upstreams([lie if liar else data, data, data], name) as ups,
        tracker(tmp_path, ups, name, len(data), target_groups=accounts) as t,
    ):
        args = ["-q", "-x4", "-s4", "--min-split-size=1M", "--allow-overwrite=true"]
        with trio.fail_after(120):
            done = await trio.run_process(
                [aria2c, *args, "-d", str(tmp_path), "-o", "aria", t.url(name)],
                cwd=tmp_path,
                env=CLEAN_ENV,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        got = (tmp_path / "aria").read_bytes() if (tmp_path / "aria").exists() else b""
        if done.returncode == 0:
            assert sha256(got) == sha256(data), "aria2c exit 0 with a file that is not the archive"
        assert sent(ups[0], name) > 0  # the freshest source was asked
        if not liar:
            assert done.returncode == 0, done.stderr[-300:]
