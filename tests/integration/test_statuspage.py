"""The status page (``GET /`` on the internal listener) of a real tracker, in a real browser.

Real parts: the tracker (``run_tracker`` on 127.0.0.1), fake sidecars and HTTP targets that
are real HTTP servers (tests/helpers_upstream.py), a fake RPC node, and headless Chromium
(skipped where it is not installed). A refresh is held in progress by an upstream that
pauses mid-body until the test lets it go.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import trio
from cluster_answers import node_entry, nodes_answer
from fakes import Rpc, Sidecar, sidecar_info
from helpers_browser import (
    CHROMIUM,
    PAGE_TAGS,
    Dom,
    dump_dom,
    layout_of,
    needs_chromium,
    screenshot,
    with_layout,
)
from helpers_bytes import archive_bytes
from helpers_ports import REFUSED
from helpers_server import serve_app
from helpers_sources import Answer as SourceAnswer
from helpers_sources import Request, ScriptedApp
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_upstream import UPSTREAM_LAST_MODIFIED, Behaviour, FakeUpstream, sidecar_listing
from names import full_name, incremental_name
from prometheus_client.parser import text_string_to_metric_families
from test_attestations import attest

from tracker.config.files import signing
from tracker.config.schema import Attest
from tracker.observability.logs import log_event
from tracker.web.statusformat import format_time

MiB = 1024 * 1024
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FULL_SLOT = 345_600_000
FULL = full_name(FULL_SLOT)
INCR = incremental_name(FULL_SLOT, FULL_SLOT + 1_500)
FULL_DATA = archive_bytes(8 * MiB, seed=1)
INCR_DATA = archive_bytes(1 * MiB, seed=2)
PAUSE = int(len(FULL_DATA) * 0.4)
#: The screenshot README.md shows, made by the browser test below from the live page. It
#: keeps the layout of the page it shows (its headings and column heads); the test fails
#: when the page's layout is another, until the screenshot is made again: set this variable
#: to the path to write (``docs/status-page.png``). Nothing is written without it.
SCREENSHOT_ENV = "STATUS_PAGE_SCREENSHOT"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"
log = logging.getLogger("tracker.test")


async def page_of(client: httpx.AsyncClient, internal: str, query: str = "") -> str:
    response = await client.get(f"{internal}/{query}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in response.headers["content-security-policy"]  # none at all
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    return response.text


def key_of(key_file: str) -> str:
    """The base58 public key of the keypair file ``key_file``."""
    signer, _valid_for = signing(Attest(key=key_file))
    assert signer is not None
    return signer.public_key


async def tracker_with(nursery: trio.Nursery, tmp_path: Path, **settings: Any) -> tuple[str, str]:
    settings = {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "300ms",
        "verify_archives": False,  # opaque blobs, not archives
        **settings,
    }
    public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    return public, internal


async def read_all(client: httpx.AsyncClient, url: str, bodies: list[bytes]) -> None:
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        bodies.append(await response.aread())


def readers_of_refresh(page: str) -> int | None:
    found = re.search(r'>(\d+)</td><td><span class="none">when complete', page)
    return int(found[1]) if found else None


def keep_or_compare(shot: Path, layout: str) -> None:
    """Write the screenshot where SCREENSHOT_ENV says, keeping ``layout`` in it; then the
    shipped one must show a page of that layout (else it is stale: one line says how to
    make it again)."""
    wanted = os.environ.get(SCREENSHOT_ENV)
    if wanted:
        Path(wanted).write_bytes(with_layout(shot.read_bytes(), layout))
    shown = layout_of(SCREENSHOT.read_bytes())
    assert shown == layout, (
        f"{SCREENSHOT.name} shows another page than today's: make it again with "
        f"{SCREENSHOT_ENV}=docs/status-page.png (README.md, 'The status page')"
    )


@needs_chromium
async def test_the_page_in_a_browser_during_a_refresh(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Two groups (one without snapshot, its target down), a refresh of the best full held at
    40 % with two clients reading it, a failover to the second source, a rejected archive,
    the incremental cached: Chromium shows each, and the screenshot is kept."""
    good = FakeUpstream(files={FULL: FULL_DATA, INCR: INCR_DATA})
    good.listing = sidecar_listing({FULL: FULL_DATA, INCR: INCR_DATA})
    # Slow to start its body: the other source is asked meanwhile, and fails (a failover).
    good.behaviour[FULL] = Behaviour(pause_at=PAUSE, body_delay=0.5)
    bad = FakeUpstream(files={FULL: FULL_DATA}, host="127.0.0.2")
    bad.listing = sidecar_listing({FULL: FULL_DATA})
    bad.behaviour[FULL] = Behaviour(status=503)
    for upstream in (good, bad):
        await nursery.start(upstream.run)
    rpc = await nursery.start(serve_app, Rpc(slot=FULL_SLOT + 1_620).app())
    sidecars = [u.base.removeprefix("http://") for u in (good, bad)]
    key = attest(tmp_path, n=4)
    public, internal = await tracker_with(
        nursery,
        tmp_path,
        rpc=rpc,
        attest={"key": key.key, "valid_for": "1h"},
        proxy_snapshot_downloads=True,
        proxy_snapshot_cache_dir=str(tmp_path / "cache"),
        cache_share_inflight=True,
        first_byte_timeout="200ms",
        target_groups=[
            {"group": "mainnet", "static_targets": {"targets": sidecars}},
            # Sorts after mainnet by name: first on the page only because it is down.
            {"group": "testnet", "static_targets": {"targets": [f"{REFUSED}"]}},
        ],
    )
    async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client:

        async def both_sources() -> bool:
            listed = (await client.get(f"{public}/v1/snapshots?group=mainnet")).json()
            return len(listed) == 3 and "1,620" in await page_of(client, internal)

        await wait_until(both_sources)
        assert (await client.get(f"{public}/v1/mainnet/{INCR}")).content == INCR_DATA
        log_event(
            log,
            "warning",
            "archive_rejected",
            group="mainnet",
            file=full_name(FULL_SLOT - 25_000),
            source="http://10.0.0.7:8899/snapshot.tar.bz2",
            reason="zstd: frame checksum mismatch at byte 1073741824",
        )
        bodies: list[bytes] = []
        url = f"{public}/v1/mainnet/{FULL}"
        async with trio.open_nursery() as readers:
            readers.start_soon(read_all, client, url, bodies)

            async def refreshing(readers: int) -> bool:
                page = await page_of(client, internal)
                return "40.0 % of 8.0 MiB" in page and readers_of_refresh(page) == readers

            await wait_until(lambda: refreshing(1))
            readers.start_soon(read_all, client, url, bodies)
            await wait_until(lambda: refreshing(2))
            dom = Dom(await dump_dom(f"{internal}/", tmp_path / "profile"))
            shot = tmp_path / "status-page.png"
            await screenshot(f"{internal}/", shot, tmp_path / "profile", (1280, 1480))
            good.behaviour[FULL].resume.set()
        assert bodies == [FULL_DATA, FULL_DATA]
    text = dom.text
    assert set(dom.tags) <= PAGE_TAGS
    for shown in (
        "Best snapshots",
        FULL,
        INCR,
        "345,600,000",
        "1,620",  # the full's age in slots (the RPC's slot)
        "~10 min",  # ... and in time, estimated from the slots
        "no snapshot yet",  # testnet
        "refreshing",
        "40.0 % of 8.0 MiB",
        "complete",  # the incremental, cached
        "upstream_failed",  # the failover to the other source
        "zstd: frame checksum mismatch at byte 1073741824",
        "No bucket is configured",
        "2 / 3",  # targets up: the bad sidecar answers its listing, testnet's does not
        "Targets (3, 1 not up)",
    ):
        assert shown in text, shown
    rows = text[text.index("last scrape", text.index("Targets (")) :]
    assert rows.index("testnet") < rows.index("mainnet")  # unhealthy first
    # The incremental was cached during the test; its source's file is days old
    # (UPSTREAM_LAST_MODIFIED): the page says when the cache took it, never the file's time
    # (the exact time is each age's tooltip).
    cached = re.findall(r"cached (.{1,20}?) ago", text)
    assert len(cached) == 1 and re.fullmatch(r"\d+ (s|min)", cached[0]), cached
    source_time = parsedate_to_datetime(UPSTREAM_LAST_MODIFIED).timestamp()
    assert ("title", format_time(source_time)) not in dom.attributes
    # The signing card: the key, and why it signs nothing here (opaque blobs, unchecked).
    signing = text[text.index("Signing") : text.index("Rejected archives")]
    assert key_of(key.key) in signing, signing
    assert "nothing can be signed: verify_archives is false" in signing
    keep_or_compare(shot, dom.layout)


@needs_chromium
async def test_local_proofs_and_the_signing_card_in_a_browser(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The quickstart's ledger with ``attest``: Chromium shows each best archive's SHA-256
    and level (never "unknown"), and the signing card its key, since when, the statements
    held (one per local file) and the last one signed."""
    ledger = tmp_path / "ledger"
    shutil.copytree(EXAMPLES / "ledger", ledger)
    key = attest(tmp_path, n=4)
    public, internal = await tracker_with(
        nursery,
        tmp_path,
        verify_archives=True,
        attest={"key": key.key, "valid_for": "1h"},
        target_groups=[{"group": "local", "local_targets": {"paths": [str(ledger)]}}],
    )
    async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client:

        async def all_signed() -> bool:
            listed = (await client.get(f"{public}/v1/snapshots")).json()
            files = [f for s in listed for f in s["files"]]
            return len(listed) == 3 and all(f.get("attestations") for f in files)

        await wait_until(all_signed, timeout=30)
    dom = Dom(await dump_dom(f"{internal}/?refresh=0", tmp_path / "profile"))
    text = dom.text
    assert set(dom.tags) <= PAGE_TAGS
    best = text[text.index("Best snapshots") : text.index("Disk cache")]
    assert "unknown" not in best
    assert "accounts" in best and "manifest" in best  # the full; its incremental
    signing = text[text.index("Signing") : text.index("Rejected archives")]
    assert key_of(key.key) in signing
    assert re.search(r"ago3(snapshot|incremental-snapshot)-1000-", signing), signing  # 3 held
    assert "nothing can be signed" not in signing
    summary = text[text.index("targets up") : text.index("Best snapshots")]
    assert "3statements signed" in summary


HOSTILE_HASH = '<script>alert("x")</script>\'\u001b[31m'
HOSTILE_LOCATION = '/<script>alert("x")</script>"><img src=x onerror=alert(1)>.tar.zst'
SECRETS = ("pa55", "K3Y", "t0ken")


async def test_hostile_sources_render_as_text_and_credentials_never_show(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A sidecar whose listing holds script and control characters, an HTTP target (with
    credentials in its URL) redirecting to a script-laden Location, and a
    rejected-archive event full of them: all shown as text, no credential anywhere."""
    sidecar = FakeUpstream()
    listing = sidecar_listing({FULL: FULL_DATA})
    listing[0]["hash"] = HOSTILE_HASH
    sidecar.listing = listing
    target = FakeUpstream(host="127.0.0.3")
    target.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=HOSTILE_LOCATION)
    for upstream in (sidecar, target):
        await nursery.start(upstream.run)
    port = target.base.rsplit(":", 1)[1]
    http_target = f"http://user:pa55@127.0.0.3:{port}/"
    _public, internal = await tracker_with(
        nursery,
        tmp_path,
        target_groups=[
            {
                "group": "mainnet",
                "static_targets": {"targets": [sidecar.base.removeprefix("http://")]},
                "http_targets": {"targets": [http_target]},
            }
        ],
    )
    log_event(
        log,
        "warning",
        "archive_rejected",
        group="mainnet",
        file='<script>alert("x")</script>',
        source="https://u:t0ken@node.example/snapshot.tar.bz2?key=K3Y",
        reason="bad\u001b[2J\nframe <b>",
    )
    async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client:

        async def both_failed() -> bool:
            page = await page_of(client, internal)
            return page.count('<span class="badge down">') == 2

        await wait_until(both_failed)
        page = await page_of(client, internal)
    dom = Dom(page)
    assert set(dom.tags) <= PAGE_TAGS
    assert not any(name.startswith("on") for name, _ in dom.attributes)
    assert "<script" not in page and "<img" not in page and "\x1b" not in page
    assert [s for s in SECRETS if s in page] == []
    text = dom.text
    assert '<script>alert("x")</script>' in text  # the sidecar's error and the event
    assert "\\x1b[31m" in text and "bad\\x1b[2J\\x0aframe <b>" in text
    assert f"http://***@127.0.0.3:{port}" in text
    assert "https://***@node.example/snapshot.tar.bz2?***" in text
    if CHROMIUM is None:  # the parser above stands in for the browser
        return
    browser = Dom(await dump_dom(f"{internal}/", tmp_path / "profile"))
    assert set(browser.tags) <= PAGE_TAGS
    assert '<script>alert("x")</script>' in browser.text
    assert [s for s in SECRETS if s in browser.text] == []


async def test_no_snapshot_no_cache_no_bucket(nursery: trio.Nursery, tmp_path: Path) -> None:
    _public, internal = await tracker_with(
        nursery,
        tmp_path,
        target_groups=[{"group": "mainnet", "static_targets": {"targets": [f"{REFUSED}"]}}],
    )
    async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client:
        page = await page_of(client, internal)
        assert (await client.get(f"{internal}/?refresh=abc")).status_code == 400
        quiet = await page_of(client, internal, "?refresh=0")
    for says in (
        "redirect mode",
        "no snapshot yet",
        "No disk cache is configured",
        "No bucket is configured",
        "No archive was rejected",
        "No failover",
    ):
        assert says in page, says
    assert 'http-equiv="refresh"' in page and 'http-equiv="refresh"' not in quiet


async def test_the_bucket_down_and_an_empty_cache(nursery: trio.Nursery, tmp_path: Path) -> None:
    store = {
        "endpoint": f"http://{REFUSED}",  # nothing listens: the store is down
        "bucket": "snapshots",
        "prefix": "tracker/",
        "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": "s3cret-key",
        "request_timeout": "500ms",
    }
    _public, internal = await tracker_with(
        nursery,
        tmp_path,
        proxy_snapshot_downloads=True,
        proxy_snapshot_cache_dir=str(tmp_path / "cache"),
        object_store=store,
        target_groups=[{"group": "mainnet", "static_targets": {"targets": [f"{REFUSED}"]}}],
    )
    async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client:

        async def bucket_down() -> bool:
            return '<span class="badge down">down</span></td><td><code>' in await page_of(
                client, internal
            )

        await wait_until(bucket_down, timeout=30)
        page = await page_of(client, internal)
    assert "proxy mode with a disk cache and a bucket" in page
    assert "The cache is empty" in page and "snapshots" in page and "tracker/" in page
    assert "s3cret-key" not in page and "AKIDEXAMPLE" not in page
    assert ">DOWN<" in page  # the summary's card


async def test_the_cluster_rpc_is_not_counted_among_the_targets_up(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A group discovering its nodes from an RPC that answers, its one node down: the page
    says 0 of 1 targets up, as the metrics do (the RPC URL is a row of the Targets table, not
    a snapshot source: counted, it read "1 / 2" while the alert for no healthy target fired).
    """
    down = REFUSED.removeprefix("http://")

    async def nodes(_request: Request) -> SourceAnswer:
        body = nodes_answer([node_entry(1, down)])
        return SourceAnswer(200, (("content-type", "application/json"),), body)

    rpc = await nursery.start(serve_app, ScriptedApp({"/": nodes}))
    settings = {
        "scrape_interval": "300ms",
        "internal_listen": "127.0.0.1:0",
        "egress": {"allow": ["127.0.0.0/8"]},
        "target_groups": [{"group": "g", "cluster_discovery": {"rpc": [rpc], "interval": "200ms"}}],
    }
    public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client:

        async def both_probed() -> bool:
            shown = (await client.get(f"{public}/v1/targets")).json()
            return sorted((t["kind"], t["health"]) for t in shown) == [
                ("cluster", "up"),
                ("http", "down"),
            ]

        await wait_until(both_probed)
        page = (await client.get(f"{internal}/")).text
        metrics = (await client.get(f"{internal}/metrics")).text
    assert 'snapshot_tracker_targets{group="g"} 1.0' in metrics
    assert 'snapshot_tracker_targets_up{group="g"} 0.0' in metrics
    assert re.findall(r"<b>([^<]*)</b><span>targets up", page) == ["0 / 1"]
    assert re.findall(r"(\d+ / \d+) targets up</span>", page) == ["0 / 1"]


def age_metric(text: str, group: str) -> float | None:
    """``snapshot_tracker_snapshot_age_slots`` of ``group`` in a ``/metrics`` text."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "snapshot_tracker_snapshot_age_slots" and s.labels["group"] == group:
                return s.value
    return None


def age_on_page(page: str, slot: int) -> str:
    """The "age in slots" cell of the best snapshot at ``slot`` on the status page."""
    [age] = re.findall(rf'<td class="num">{slot:,}</td><td class="num">([^<]*)</td>', page)
    return age


async def test_the_page_and_the_metric_show_one_age_when_the_rpc_stops_answering(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The page's age in slots came from the slot the index screens with (the RPC's last
    answer, carried on for minutes when it fails) while ``snapshot_age_slots`` was dropped
    at the first failed read: the page said "10 slots old" while the metric, and its
    alert, said nothing. Both read the one slot now (docs/http-api.md, "The status page")."""
    slot = 7_000_000
    rpc = Rpc(slot=slot)
    rpc_url = await nursery.start(serve_app, rpc.app())
    sidecar = Sidecar([sidecar_info((full_name(slot - 10), 10))])
    source = await nursery.start(serve_app, sidecar.app())
    _public, internal = await tracker_with(
        nursery,
        tmp_path,
        scrape_interval="100ms",
        rpc=rpc_url,
        target_groups=[{"group": "g", "static_targets": {"targets": [source[7:]]}}],
    )
    async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client:

        async def aged() -> bool:
            text = (await client.get(f"{internal}/metrics")).text
            page = await page_of(client, internal)
            return age_metric(text, "g") == 10 and "no snapshot yet" not in page

        await wait_until(aged)
        assert age_on_page(await page_of(client, internal), slot - 10) == "10"
        rpc.status = 500  # getSlot fails from now on
        asked = len(rpc.seen)

        async def failed_read_done() -> bool:
            # the slot loop reads one after the other: a second failed read began only
            # once the first one's outcome was published
            return len(rpc.seen) >= asked + 2

        await wait_until(failed_read_done)
        metric = age_metric((await client.get(f"{internal}/metrics")).text, "g")
        page = int(age_on_page(await page_of(client, internal), slot - 10).replace(",", ""))
    # the carried slot moves on one slot every 0.4 s and the metric is published once an
    # interval, the page at its request: the metric may be a step or two behind, never gone
    assert metric is not None and 0 <= page - metric <= 3, (page, metric)


async def test_a_group_whose_rpc_fails_says_which_rpc_and_why(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A group's ``rpc`` failing getSlot showed as "—" in the age columns and nothing more,
    while ``snapshot_tracker_cluster_rpc_up`` read 0. The page says it under the group's
    archives, the RPC's URL masked as every URL on the page, with the reason; the line
    goes once the RPC answers again (docs/http-api.md, "The status page")."""
    slot = 7_000_000
    rpc = Rpc(slot=slot, status=503)
    rpc_url = await nursery.start(serve_app, rpc.app())
    sidecar = Sidecar([sidecar_info((full_name(slot - 10), 10))])
    source = await nursery.start(serve_app, sidecar.app())
    _public, internal = await tracker_with(
        nursery,
        tmp_path,
        scrape_interval="100ms",
        rpc=f"{rpc_url}/?api-key=K3Y",
        target_groups=[{"group": "g", "static_targets": {"targets": [source[7:]]}}],
    )
    note = (
        f'<td colspan="8" class="err">cluster rpc <code>{rpc_url}/?***</code> '
        "failed its last getSlot: HTTP 503</td>"
    )
    gauge = 'snapshot_tracker_cluster_rpc_up{group="g"}'
    async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client:

        async def says(shown: bool, up: str) -> bool:
            metrics = (await client.get(f"{internal}/metrics")).text
            page = await page_of(client, internal)
            return (note in page) == shown and f"{gauge} {up}" in metrics

        await wait_until(lambda: says(True, "0.0"))
        page = await page_of(client, internal)
        assert "K3Y" not in page
        assert set(Dom(page).tags) <= PAGE_TAGS
        rpc.status = 200
        await wait_until(lambda: says(False, "1.0"))
        assert "failed its last getSlot" not in await page_of(client, internal)
