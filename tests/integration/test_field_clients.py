"""README.md#clients: the clients in the field get their archives in every mode.

Firedancer and solana-snapshot-finder are emulated by their own rules (tests/field_clients.py);
agave's request is sent as it sends it; wget, aria2c and axel are the real tools. Modes:
redirect, proxy, proxy + cache, and a local source (the tracker reads the file itself).
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from field_clients import ALIASES, PeerRefused, firedancer, request, snapshot_finder_heads
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_ports import REFUSED
from helpers_proxy import (
    EARLY,
    FAST,
    GROUP,
    TrackerUnderTest,
    advertise_files,
    make_config,
    running_tracker,
    wait_for,
)
from helpers_proxy import advertise as advertise_urls
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving
from helpers_wire import raw_request
from names import full_name, incremental_name
from test_clients_real import run, tool

from tracker.config.schema import TargetGroup
from tracker.core.snapshots import SnapshotFile, chains_from_files, parse_archive_name
from tracker.ordering.index import TargetKey
from tracker.proxy.upstream import ProxySettings

FULL = full_name(12_000)
INCR = incremental_name(12_000, 12_040)
FILES = {FULL: archive_bytes(3 * MiB, seed=31), INCR: archive_bytes(MiB // 2, seed=32)}
MODES = ("redirect", "proxy", "cache", "share", "local")
OPEN_GROUP = TargetGroup(group=GROUP)  # no credentials: redirect mode really redirects


@attrs.define
class Setup:
    tracker: TrackerUnderTest
    upstream: FakeUpstream
    host: str
    port: int


def config_for(mode: str, tmp_path: Path, **overrides: Any) -> Any:
    """Redirect, proxy, proxy + cache ("cache", and "share" with ``cache_share_inflight``),
    or redirect mode whose source is local ("local")."""
    proxy = mode in ("proxy", "cache", "share")
    cache = tmp_path / "cache" if mode in ("cache", "share") else None
    settings: dict[str, Any] = {"proxy_snapshot_downloads": proxy, "target_groups": (OPEN_GROUP,)}
    if mode == "share":
        settings["cache_share_inflight"] = True
    settings.update(overrides)
    return make_config(cache, **settings)


def advertise_local(t: TrackerUnderTest, directory: Path, files: dict[str, bytes]) -> None:
    """A local source holding ``files`` in ``directory`` (as a ledger directory scan finds)."""
    entries = []
    for name, data in files.items():
        (directory / name).write_bytes(data)
        parsed = parse_archive_name(name)
        assert parsed is not None
        path = str(directory / name)
        entries.append(SnapshotFile(name=parsed, file_name=name, size=len(data), path=path))
    key = TargetKey(GROUP, str(directory))
    t.index.apply(key, chains_from_files(entries), datetime.now(UTC))


@asynccontextmanager
async def setup(
    mode: str,
    tmp_path: Path,
    *,
    upstream: FakeUpstream | None = None,
    files: dict[str, bytes] = FILES,
    settings: ProxySettings = FAST,
    **overrides: Any,
) -> AsyncIterator[Setup]:
    up = upstream if upstream is not None else FakeUpstream(files=dict(files))
    config = config_for(mode, tmp_path, **overrides)
    async with serving(up), running_tracker(config, settings=settings) as t:
        if mode == "local":
            ledger = tmp_path / "ledger"
            ledger.mkdir()
            advertise_local(t, ledger, files)
        else:
            advertise_files(t.index, up, files)
        host, port = t.base.removeprefix("http://").rsplit(":", 1)
        yield Setup(t, up, host, int(port))


# -- Firedancer --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_firedancer_gets_both_archives(mode: str, tmp_path: Path) -> None:
    async with setup(mode, tmp_path) as s:
        got = await firedancer(s.host, s.port)
    assert got["/snapshot.tar.bz2"][0] == FULL
    assert got["/incremental-snapshot.tar.bz2"][0] == INCR
    for name, data in got.values():
        assert sha256(data) == sha256(FILES[name])


async def test_firedancer_is_sent_to_the_source_when_serve_user_agents_is_empty(
    tmp_path: Path,
) -> None:
    """``serve_user_agents: []``: redirect mode redirects Firedancer too (which refuses it)."""
    async with setup("redirect", tmp_path, serve_user_agents=()) as s:
        with pytest.raises(PeerRefused, match=re.escape("is not /<name>.tar.zst")):
            await firedancer(s.host, s.port)
        assert not s.upstream.gets()


@pytest.mark.parametrize("mode", ["proxy", "cache", "share"])
async def test_firedancer_gets_a_head_within_a_second_from_a_slow_source(
    mode: str, tmp_path: Path
) -> None:
    """The source takes 1.5 s to answer: the head still goes out within 1 s (early head).
    After 0.2 s, not the default's 0.5: Firedancer's second is wall time, and beside a
    stress run's CPU hogs the default's head took the whole second."""
    slow = {name: Behaviour(delay=1.5) for name in FILES}
    up = FakeUpstream(files=dict(FILES), behaviour=slow)
    early = attrs.evolve(EARLY, early_head_after=0.2)
    async with setup(mode, tmp_path, upstream=up, settings=early) as s:
        got = await firedancer(s.host, s.port)
        for name, data in got.values():
            assert sha256(data) == sha256(FILES[name])
        if mode != "proxy":
            await wait_for(lambda: sorted(s.tracker.cached()) == sorted(FILES))


# -- solana-snapshot-finder ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_snapshot_finder_downloads_what_the_location_names(mode: str, tmp_path: Path) -> None:
    wget = tool("wget")
    async with setup(mode, tmp_path) as s:
        locations = await snapshot_finder_heads(s.host, s.port)
        assert locations == {"/snapshot.tar.bz2": f"/{FULL}", ALIASES[1]: f"/{INCR}"}
        for location in locations.values():
            out = tmp_path / f"finder{location.count('incremental')}"
            out.mkdir()
            url = f"http://{s.host}:{s.port}{location}"
            await run(wget, "-q", "--trust-server-names", url, cwd=out)
            [saved] = out.iterdir()
            assert saved.name == location[1:]
            assert sha256(saved.read_bytes()) == sha256(FILES[saved.name])


# -- agave -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_agave_gets_identity_bytes_of_the_root_concrete_name(
    mode: str, tmp_path: Path
) -> None:
    """agave asks ``/{name}`` with ``accept-encoding: gzip, br, deflate`` and follows up to
    10 redirects: it must get the archive's own bytes (identity), whatever the source does
    with that header."""
    coding = {name: Behaviour(gzip_if_asked=True) for name in FILES}
    up = FakeUpstream(files=dict(FILES), behaviour=coding)
    async with setup(mode, tmp_path, upstream=up) as s:
        headers = {"accept-encoding": "gzip, br, deflate", "user-agent": "agave/2.2"}
        async with httpx.AsyncClient(
            verify=client_tls(), trust_env=False, max_redirects=10
        ) as client:
            url = f"{s.tracker.base}/{FULL}"
            async with client.stream("GET", url, headers=headers, follow_redirects=True) as r:
                raw = b"".join([part async for part in r.aiter_raw()])
                tracker_hop = r.history[0] if r.history else r
        assert r.status_code == 200
        if mode != "redirect":  # in redirect mode the bytes come from the source itself
            assert "content-encoding" not in r.headers
            assert sha256(raw) == sha256(FILES[FULL])
        assert "content-encoding" not in tracker_hop.headers


# -- slow and dead sources -------------------------------------------------------------------


async def test_two_sources_one_never_answers(tmp_path: Path) -> None:
    """Every one of 8 GETs completes with the right bytes within first_byte_timeout + 1 s,
    although the source asked first accepts connections and never answers."""
    # The incremental (512 KiB): transfers under 1 MiB do not rank sources by throughput, so
    # the dead source stays first for all 8 GETs.
    dead = FakeUpstream(files=dict(FILES), behaviour={INCR: Behaviour(delay=math.inf)})
    good = FakeUpstream(files=dict(FILES))
    # a short first_byte_timeout: eight waits for the dead source, each with the same margin
    config = config_for("proxy", tmp_path, first_byte_timeout=0.5)
    async with serving(good), serving(dead), running_tracker(config) as t:
        advertise_files(t.index, good, FILES)
        advertise_files(t.index, dead, FILES)  # scraped last: asked first
        assert t.index.find_file(GROUP, INCR)[0][1].key.target == dead.base
        # the dead source given up at first_byte_timeout, not at the answer timeout (5 s)
        limit = t.config.first_byte_timeout + 3.0
        durations = []
        for _ in range(8):
            start = trio.current_time()
            with trio.fail_after(limit + 5):
                wire = await raw_request(t.base, f"/v1/{GROUP}/{INCR}")
            durations.append(trio.current_time() - start)
            assert wire.status == 200 and sha256(wire.body) == sha256(FILES[INCR])
        assert max(durations) <= limit, durations
        assert len(dead.gets(INCR)) == 8  # it was asked first every time


async def test_a_source_that_answers_but_never_starts_its_body_is_given_up(
    tmp_path: Path,
) -> None:
    """A head without a body byte is no start: the next source serves (after the early head
    went out, with the index's size)."""
    stalls = FakeUpstream(files=dict(FILES), behaviour={FULL: Behaviour(body_delay=math.inf)})
    good = FakeUpstream(files=dict(FILES))
    config = config_for("proxy", tmp_path)
    async with serving(good), serving(stalls), running_tracker(config, settings=EARLY) as t:
        advertise_files(t.index, good, FILES)
        advertise_files(t.index, stalls, FILES)
        start = trio.current_time()
        wire = await raw_request(t.base, f"/v1/{GROUP}/{FULL}")
        # not at the read timeout (10 s)
        assert trio.current_time() - start <= t.config.first_byte_timeout + 3.0
        assert wire.status == 200 and sha256(wire.body) == sha256(FILES[FULL])
        assert wire.header("etag") is None  # an early head carries no validator
        assert good.gets(FULL)


@pytest.mark.parametrize("mode", ["proxy", "cache"])
async def test_a_source_dying_mid_body_breaks_the_connection_and_nothing_is_spliced(
    mode: str, tmp_path: Path
) -> None:
    """The source sending the body dies; another holds a file of the same name and size
    (but other bytes, as another node's archive of the same slot would be). The client's
    connection breaks (or, in cache mode, the same source's rest is resumed): never a 200
    shorter than its length, never a byte of the other source."""
    size = len(FILES[FULL])
    other = {FULL: archive_bytes(size, seed=99), INCR: FILES[INCR]}
    dying = FakeUpstream(
        files=dict(FILES),
        behaviour={FULL: Behaviour(drop_after=size // 3, etag=None, last_modified=None)},
    )
    healthy = FakeUpstream(files=other)
    async with serving(healthy), serving(dying), running_tracker(config_for(mode, tmp_path)) as t:
        advertise_files(t.index, healthy, FILES)
        advertise_files(t.index, dying, FILES)
        wire = await raw_request(t.base, f"/v1/{GROUP}/{FULL}")
        assert wire.status == 200 and wire.header("content-length") == str(size)
        assert wire.closed and len(wire.body) < size
        assert wire.body == FILES[FULL][: len(wire.body)]
        assert not healthy.gets(FULL)
        assert not t.cached()


@pytest.mark.parametrize("mode", ["proxy", "cache", "share"])
async def test_a_slow_source_that_fails_after_the_early_head_breaks_the_connection(
    mode: str, tmp_path: Path
) -> None:
    """The head went out (200, the index's size); no source delivers after all: the body
    breaks, never a short 200 that looks complete, and nothing is cached."""
    failing = {FULL: Behaviour(delay=1.0, status=500)}
    up = FakeUpstream(files=dict(FILES), behaviour=failing)
    async with setup(mode, tmp_path, upstream=up, settings=EARLY) as s:
        wire = await raw_request(s.tracker.base, f"/v1/{GROUP}/{FULL}")
        assert wire.status == 200 and wire.header("content-length") == str(len(FILES[FULL]))
        assert wire.closed and wire.body == b""
        assert s.tracker.cached() == []


async def test_every_source_failing_fast_is_still_a_502(tmp_path: Path) -> None:
    """The early head is for slow sources: refused or erroring sources answer 502 at once."""
    broken = FakeUpstream(files=dict(FILES), behaviour={FULL: Behaviour(status=500)})
    # "Fast" is before the early head's timer: on a loaded machine the two failures may take
    # longer than the product's 0.5 s, and then a 200 head rightly goes out first (FAST's
    # early head comes after 30 s).
    config = config_for("proxy", tmp_path)
    async with serving(broken), running_tracker(config) as t:
        advertise_files(t.index, broken, FILES)
        advertise(t, f"http://{REFUSED}", FULL)  # nothing listens there
        wire = await raw_request(t.base, f"/v1/{GROUP}/{FULL}")
    assert wire.status == 502


def advertise(t: TrackerUnderTest, base: str, name: str) -> None:
    advertise_urls(t.index, base, [(name, f"{base}/files/{name}", len(FILES[name]))])


# -- clients that always send Range ----------------------------------------------------------


@pytest.mark.parametrize("client", ["aria2c", "axel"])
async def test_range_only_clients_on_a_cold_cache_get_the_file_cached(
    client: str, tmp_path: Path
) -> None:
    """aria2c -x4 and axel -n 4 split the file into ranges: correct bytes, and the file is
    cached once (upstream sent at most twice its size), then served without upstream.

    Twice: ranges ahead of the background refresh stream from upstream in parallel while
    the refresh fetches the whole file once; ranges it already wrote are read from its temp
    file. Both tools also ask for some bytes twice themselves (axel's first request,
    ``bytes=0-``, dropped once it knows the size; pieces of a slow connection handed to a
    finished one): those repeats are the client's and are taken off before comparing."""
    path = tool(client)
    files = {FULL: archive_bytes(16 * MiB, seed=33), INCR: FILES[INCR]}
    size = len(files[FULL])
    async with setup("cache", tmp_path, files=files) as s:
        url = f"{s.tracker.base}/v1/{GROUP}/{FULL}"
        out = tmp_path / "out"
        out.mkdir()
        if client == "aria2c":
            args = ["-q", "-x4", "-s4", "--min-split-size=1M", "-d", str(out), url]
        else:
            args = ["-q", "-n", "4", "-o", str(out / FULL), url]
        await run(path, *args, cwd=out)
        assert sha256((out / FULL).read_bytes()) == sha256(files[FULL])
        await wait_for(lambda: FULL in s.tracker.cached())
        gets = s.upstream.gets(FULL)
        whole = [g for g in gets if "range" not in g.headers]
        assert len(whole) == 1 and whole[0].body_sent == size  # one refresh, complete
        relayed = [g for g in gets if "range" in g.headers]
        sent = sum(g.body_sent for g in gets) - repeated_bytes(relayed)
        assert sent <= 2 * size
        before = len(s.upstream.seen)
        wire = await raw_request(s.tracker.base, f"/v1/{GROUP}/{FULL}")
        assert sha256(wire.body) == sha256(files[FULL])
        assert len(s.upstream.seen) == before  # from the disk cache


def repeated_bytes(ranges: list[Any]) -> int:
    """Bytes the upstream sent for relayed ranges more than once (a client asking for the
    same bytes twice): everything sent minus the union of what was sent."""
    spans = []
    for seen in ranges:
        first = int(seen.headers["range"].removeprefix("bytes=").split("-")[0])
        spans.append((first, first + seen.body_sent))
    union, reach = 0, 0
    for start, end in sorted(spans):
        union += max(0, end - max(start, reach))
        reach = max(reach, end)
    return sum(end - start for start, end in spans) - union


# -- names that wget saves --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["redirect", "proxy"])
async def test_wget_saves_the_real_name_from_every_short_endpoint(
    mode: str, tmp_path: Path
) -> None:
    wget = tool("wget")
    async with setup(mode, tmp_path) as s:
        paths = []
        for ext in ("tar.bz2", "tar.zst"):
            for short in (f"snapshot.{ext}", f"incremental-snapshot.{ext}"):
                paths += [f"/v1/{short}", f"/v1/{short}?group={GROUP}", f"/{short}"]
        for number, path in enumerate(paths):
            out = tmp_path / f"wget{number}"
            out.mkdir()
            await run(wget, "-q", "--trust-server-names", s.tracker.base + path, cwd=out)
            [saved] = out.iterdir()
            expected = INCR if "incremental" in path else FULL
            assert saved.name == expected, path
            assert sha256(saved.read_bytes()) == sha256(FILES[expected])


# -- the wire ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_every_header_name_is_lower_case(mode: str, tmp_path: Path) -> None:
    """Redirects, archives, errors and listings, on connections the server closes (HTTP/1.0
    and ``connection: close``, where the server adds ``connection`` itself)."""
    async with setup(mode, tmp_path) as s:
        targets = [
            "/snapshot.tar.bz2",
            "/v1/snapshot.tar.zst",
            f"/{FULL}",
            f"/v1/{GROUP}/{INCR}",
            "/v1/snapshots",
            "/v1/nope.tar.zst",
            "/v1/best_snapshots?max=abc",
        ]
        for target in targets:
            for version, extra in (("1.1", [("connection", "close")]), ("1.0", [])):
                wire = await raw_http(s.tracker.base, target, version, extra)
                assert wire["names"], target
                upper = [n for n in wire["names"] if n != n.lower()]
                assert not upper, (target, version, upper)
                if version == "1.1":
                    assert "connection" in wire["names"], (target, wire["names"])


async def raw_http(
    base: str, target: str, version: str, headers: list[tuple[str, str]]
) -> dict[str, Any]:
    """The header names of one answer, read from the socket until the server closes it."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    lines = [f"GET {target} HTTP/{version}", f"host: {host}", *(f"{k}: {v}" for k, v in headers)]
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = bytearray()
            while chunk := await stream.receive_some(1 << 20):
                data += chunk
    head = bytes(data).partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    return {"status": head[0], "names": [line.split(":", 1)[0] for line in head[1:]]}


async def test_early_head_request_counts() -> None:
    """``request`` (the emulation's building block) measures the head of a real answer."""
    async with serving(FakeUpstream(files=dict(FILES))) as up:
        host, port = up.base.removeprefix("http://").rsplit(":", 1)
        answer = await request(host, int(port), "HEAD", f"/files/{FULL}", [("Host", host)])
    assert answer.status == 200 and answer.headers["content-length"] == str(len(FILES[FULL]))
    assert 0 < answer.head_seconds < 1
