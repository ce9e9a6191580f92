"""Credentials reach only their own origin; sources' redirects reach only where egress allows.

Real hypercorn tracker on 127.0.0.1; the configured source is a :class:`FakeUpstream` on
127.0.0.1 and "another origin" is a second one on 127.0.0.3 that records every request it
gets (headers, and whether it was contacted at all). Loopback addresses are refused by the
default egress policy, so the cases where the other origin may be reached allow
``127.0.0.0/8`` explicitly. Nothing here leaves the machine (tests/conftest.py guards it).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_proxy import GROUP, advertise, make_config, running_tracker, wait_for
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name, incremental_name

from tracker.config.schema import BasicAuth, Config, Egress, HttpTargets, TargetGroup
from tracker.discovery.scrape import Scraper
from tracker.ordering.index import Index
from tracker.proxy.prefetch import Prefetcher

NAME = full_name(5100)
DATA = archive_bytes(1 * MiB, seed=51)
BASIC = "Basic " + base64.b64encode(b"ops:hunter2").decode()
LOOPBACK = Egress(allow=("127.0.0.0/8",))


def basic_group() -> TargetGroup:
    return TargetGroup(group=GROUP, basic_auth=BasicAuth(username="ops", password="hunter2"))


@pytest.fixture
async def source() -> AsyncIterator[FakeUpstream]:
    """The configured source, on 127.0.0.1."""
    async with serving(FakeUpstream(files={NAME: DATA})) as up:
        yield up


@pytest.fixture
async def elsewhere() -> AsyncIterator[FakeUpstream]:
    """Another origin (127.0.0.3) that holds the file too and records every request."""
    async with serving(FakeUpstream(files={NAME: DATA}, host="127.0.0.3")) as up:
        yield up


def config(tmp_path: Path | None, **overrides: object) -> Config:
    return make_config(tmp_path, target_groups=(basic_group(),), **overrides)


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        return await client.get(url)


@pytest.mark.parametrize("egress", [Egress(), LOOPBACK], ids=["default-policy", "loopback-allowed"])
async def test_a_location_to_another_origin_never_gets_the_groups_credentials(
    source: FakeUpstream, elsewhere: FakeUpstream, egress: Egress
) -> None:
    """The source's probe answered a Location on another origin: the file's URL is there,
    but the configured source is ``source``."""
    async with running_tracker(config(None, egress=egress)) as t:
        advertise(t.index, source.base, [(NAME, elsewhere.url(NAME), len(DATA))])
        response = await get(t.url(NAME))
    if egress == LOOPBACK:
        assert (response.status_code, sha256(response.content)) == (200, sha256(DATA))
        [seen] = elsewhere.seen
        assert "authorization" not in seen.headers
    else:
        assert response.status_code == 502
        assert "refused by the egress policy" in response.text
        assert "\n" not in response.text.strip()
        assert elsewhere.seen == []  # never contacted
    assert source.seen == []


async def test_the_sources_own_origin_gets_the_credentials(source: FakeUpstream) -> None:
    """Default policy: a redirect back to the source's own origin is that source."""
    source.behaviour["alias"] = Behaviour(redirect_to=f"/files/{NAME}")
    async with running_tracker(config(None)) as t:
        advertise(t.index, source.base, [(NAME, f"{source.base}/x/alias", len(DATA))])
        response = await get(t.url(NAME))
    assert (response.status_code, sha256(response.content)) == (200, sha256(DATA))
    assert [s.headers.get("authorization") for s in source.seen] == [BASIC, BASIC]


async def test_a_prefetch_never_sends_credentials_to_another_origin(
    source: FakeUpstream, elsewhere: FakeUpstream, tmp_path: Path
) -> None:
    for egress in (Egress(), LOOPBACK):
        cache = tmp_path / str(len(egress.allow))
        overrides = {"cache_prefetch": True, "egress": egress}
        async with running_tracker(config(cache, **overrides)) as t:
            advertise(t.index, source.base, [(NAME, elsewhere.url(NAME), len(DATA))])
            prefetcher = Prefetcher(lambda t=t: t.config, t.index, t.streamer.prefetch, t.transfers)
            assert prefetcher.check() == 1
            if egress == LOOPBACK:
                await wait_for(lambda t=t: t.cached() == [NAME])
            else:
                await wait_for(lambda t=t: t.outcome("refresh_failed") == 1)
                assert t.cached() == []
    [seen] = elsewhere.seen  # only the run that allows loopback reached it
    assert "authorization" not in seen.headers
    assert source.seen == []


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:{port}/metrics",
        "http://[::ffff:127.0.0.1]:{port}/metrics",
        "http://user@127.0.0.1:{port}/metrics",
        "http://127.0.0.1:{port}@127.0.0.1:{port}/metrics",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
        "http://10.0.0.1/",
        "http://0.0.0.0:{port}/",
    ],
)
async def test_a_redirect_into_the_trackers_own_network_is_refused(
    source: FakeUpstream, location: str
) -> None:
    """A source answering a redirect to the tracker's internal listener (here: a recorder on
    another port of 127.0.0.1) or to a metadata service gets a 502; nothing is contacted."""
    async with serving(FakeUpstream()) as internal:
        port = internal.base.rsplit(":", 1)[1]
        source.behaviour[NAME] = Behaviour(redirect_to=location.format(port=port))
        async with running_tracker(config(None)) as t:
            advertise(t.index, source.base, [(NAME, source.url(NAME), len(DATA))])
            response = await get(t.url(NAME))
        assert response.status_code == 502
        assert "egress policy" in response.text
        assert internal.seen == []
        assert [s.headers.get("authorization") for s in source.seen] == [BASIC]


async def test_deny_wins_over_allow(source: FakeUpstream, elsewhere: FakeUpstream) -> None:
    source.behaviour[NAME] = Behaviour(redirect_to=elsewhere.url(NAME))
    egress = Egress(allow=("127.0.0.0/8",), deny=("127.0.0.3/32",))
    async with running_tracker(config(None, egress=egress)) as t:
        advertise(t.index, source.base, [(NAME, source.url(NAME), len(DATA))])
        response = await get(t.url(NAME))
    assert response.status_code == 502
    assert "denied by egress.deny" in response.text
    assert elsewhere.seen == []


async def test_userinfo_of_a_configured_url_goes_to_its_origin_only(
    source: FakeUpstream, elsewhere: FakeUpstream
) -> None:
    """``http://user:password@host/`` as a target: Basic credentials to that origin, none
    to another one, and never in a URL the tracker stores or follows."""
    host = source.base.removeprefix("http://")
    target = f"http://ops:hunter2@{host}"
    source.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{NAME}")
    source.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(
        redirect_to=elsewhere.url(incremental_name(5100, 5110))
    )
    group = TargetGroup(group=GROUP, http_targets=HttpTargets((target,)))
    cfg = make_config(None, target_groups=(group,), egress=LOOPBACK)
    index = Index()
    scraper = Scraper(cfg, index)
    try:
        await scraper.scrape_round()
    finally:
        await scraper.aclose()
    [full_file] = index.best_full(GROUP).info.files  # type: ignore[union-attr]
    assert full_file.url == f"{source.base}/files/{NAME}"  # no userinfo kept
    assert {s.headers.get("authorization") for s in source.seen} == {BASIC}
    async with running_tracker(cfg, index=index) as t:
        response = await get(t.url(NAME))
    assert (response.status_code, sha256(response.content)) == (200, sha256(DATA))
    assert source.seen[-1].headers.get("authorization") == BASIC
    assert elsewhere.seen == []


async def test_a_probe_location_refused_by_egress_marks_the_target_down(
    source: FakeUpstream, elsewhere: FakeUpstream
) -> None:
    source.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=elsewhere.url(NAME))
    source.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(status=404)
    group = TargetGroup(group=GROUP, http_targets=HttpTargets((source.base,)))
    scraper = Scraper(make_config(None, target_groups=(group,)), Index())
    try:
        await scraper.scrape_round()
    finally:
        await scraper.aclose()
    [health] = scraper.health.values()
    assert health.health == "down"
    assert "refused by the egress policy" in health.last_error
    assert "127.0.0.3 is a loopback address" in health.last_error
    assert scraper.index.sources(GROUP) == []
    assert elsewhere.seen == []


async def test_a_probe_location_is_checked_after_resolution(source: FakeUpstream) -> None:
    """A host name that resolves to a metadata address is refused like the address."""
    source.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=f"http://metadata.internal/{NAME}")
    source.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(status=404)
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["169.254.169.254"]

    group = TargetGroup(group=GROUP, http_targets=HttpTargets((source.base,)))
    scraper = Scraper(make_config(None, target_groups=(group,)), Index(), resolver=resolve)
    try:
        await scraper.scrape_round()
    finally:
        await scraper.aclose()
    [health] = scraper.health.values()
    assert asked == ["metadata.internal"]
    assert "169.254.169.254 is a link-local address" in health.last_error


async def test_cookies_are_never_kept_nor_replayed(source: FakeUpstream) -> None:
    """A source's Set-Cookie (on probes and downloads) goes nowhere: not back to it, not to
    another group's source on the same host."""
    cookie = [("set-cookie", "session=planted; Path=/")]
    source.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{NAME}", headers=cookie)
    source.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(status=404, headers=cookie)
    source.behaviour[NAME] = Behaviour(headers=cookie)
    groups = tuple(
        TargetGroup(group=name, http_targets=HttpTargets((f"{source.base}/{name}",)))
        for name in (GROUP, "other")
    )
    cfg = make_config(None, target_groups=groups)
    index = Index()
    scraper = Scraper(cfg, index)
    try:
        for _ in range(2):
            await scraper.scrape_round()
    finally:
        await scraper.aclose()
    async with running_tracker(cfg, index=index) as t:
        for _ in range(2):
            assert (await get(t.url(NAME))).status_code == 200
    probes = [s for s in source.seen if not s.target.startswith("/files/")]
    assert len(probes) == 2 * 2 * 2  # both aliases, both groups, twice
    sizes = [s for s in source.seen if s.method == "HEAD" and s.target.startswith("/files/")]
    assert 1 <= len(sizes) <= 2  # the archive's size, asked once (by each group at most)
    assert len(source.gets()) == 2
    assert all("cookie" not in s.headers for s in source.seen)
