"""A client's flood of tiny archive requests, or a cluster of failing nodes, makes a
bounded number of log lines (docs/http-api.md, "Connections"): each ``bytes=0-0`` GET of a
cached archive wrote a ``download`` line, each failed probe of a discovered node a
``probe_failed`` line, and thousands a second made a journal's rate limit drop the
tracker's other lines. Past the budget they are folded into one summary line a window,
counted exactly in the metrics; a real transfer's line, and a configured target's, is
always written.

Real parts: the tracker's own components on 127.0.0.1 with its zero-copy server, a real
upstream, a real HTTP client, a real ``getClusterNodes`` RPC naming nodes that refuse
connections; the folder's clock is the test's (the window ends when the test says)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import trio
from cluster_answers import node_entry
from helpers_bytes import MiB, archive_bytes
from helpers_ports import REFUSED, REFUSED_PORT
from helpers_proxy import proxy_tracker, wait_for
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name
from test_cluster import config_for, rpc_app, scraper_for

from tracker.observability import folding
from tracker.observability.logs import record_fields

NAME = full_name(4200)
DATA = archive_bytes(2 * MiB, seed=9)
#: Lines in full a window, for the test (the product's: folding.LINES_PER_WINDOW).
BUDGET = 20
FLOOD = 200


class Clock:
    """The folder's clock, moved by the test."""

    now = 0.0

    def __call__(self) -> float:
        return self.now


def folded_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [record_fields(r)[1] for r in caplog.records if r.getMessage() == "log_lines_folded"]


async def test_a_flood_of_tiny_requests_makes_a_bounded_number_of_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    folder = folding.LineFolder(budget=BUDGET, clock=clock)
    monkeypatch.setattr(folding, "FOLDER", folder)
    # a whole copy of this archive counts as a real transfer (the product's: a GiB)
    monkeypatch.setattr(folding, "UNFOLDED_BYTES", len(DATA))
    caplog.set_level(logging.INFO)

    def downloads() -> list[dict[str, object]]:
        return [record_fields(r)[1] for r in caplog.records if r.getMessage() == "download"]

    async with (
        serving(FakeUpstream(files={NAME: DATA})) as up,
        proxy_tracker(tmp_path / "cache", up) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client,
    ):
        whole = await client.get(t.url(NAME))  # fills the cache
        assert whole.content == DATA
        await wait_for(lambda: t.holds(NAME))
        for _ in range(FLOOD):
            probe = await client.get(t.url(NAME), headers={"range": "bytes=0-0"})
            assert (probe.status_code, probe.content) == (206, DATA[:1])
        again = await client.get(t.url(NAME))  # a real download after the flood
        assert again.content == DATA
        await wait_for(lambda: len(downloads()) + folder.folded("download") == FLOOD + 2)
        counted = t.counter("snapshot_tracker_log_lines_folded_total", event="download")
        hits = t.outcome("cache_hit")
    lines = downloads()
    # the budget's lines of the flood, and both whole copies' lines, whatever came between
    assert len(lines) == BUDGET + 2
    assert [line["bytes"] for line in (lines[0], lines[-1])] == [len(DATA), len(DATA)]
    assert folder.folded("download") == counted == FLOOD - BUDGET
    assert hits == FLOOD + 1  # every request counted: the metrics stay exact
    assert folded_lines(caplog) == []  # the window has not ended
    clock.now += folding.WINDOW
    folder.flush()
    [summary] = folded_lines(caplog)
    assert (summary["download"], summary["total"]) == (FLOOD - BUDGET, FLOOD - BUDGET)


async def test_failing_discovered_nodes_make_a_bounded_number_of_lines(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster decides how many nodes there are, and each may fail every round: their
    ``probe_failed`` lines share the budget; a configured target's line stays."""
    folder = folding.LineFolder(budget=BUDGET, clock=Clock())
    monkeypatch.setattr(folding, "FOLDER", folder)
    caplog.set_level(logging.INFO)
    # one machine each (discovery keeps one node a host), none listening on that port
    nodes = [node_entry(n, f"127.3.0.{n + 1}:{REFUSED_PORT}") for n in range(3 * BUDGET)]
    rpc = await nursery.start(serve_app, rpc_app([nodes]))
    configured = f"http://{REFUSED}"
    async with scraper_for(config_for(rpc, known=(configured,))) as (scraper, _index):
        await scraper.scrape_round()  # the budget's lines, and the configured target's
        assert folder.folded("probe_failed") == 2 * BUDGET
        await scraper.scrape_round()  # the window's budget spent: the configured one's
        down = [h for h in scraper.health.values() if h.health == "down"]
    failed = [record_fields(r)[1] for r in caplog.records if r.getMessage() == "probe_failed"]
    assert len(down) == 3 * BUDGET + 1  # every node was probed, and failed
    assert [line["target"] for line in failed].count(configured) == 2
    assert len(failed) == BUDGET + 2
    assert folder.folded("probe_failed") == 5 * BUDGET


async def test_a_refresh_failing_after_a_flood_of_tiny_requests_is_written_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's flood of ``bytes=0-0`` GETs spent the window's budget; then a refresh
    failed (its source answers 500, for every client). Its lines were folded with the
    flood's: the summary said ``upstream_failed=1 cache_refresh_ended=1 proxy_failed=1``,
    never which file, which source nor why. Each event's first lines of a window are
    written whatever the flood spent."""
    folder = folding.LineFolder(budget=BUDGET, clock=Clock())
    monkeypatch.setattr(folding, "FOLDER", folder)
    caplog.set_level(logging.INFO)
    broken = full_name(4300)  # the newest: a miss of it refreshes
    up = FakeUpstream(
        files={NAME: DATA, broken: archive_bytes(MiB, seed=10)},
        behaviour={broken: Behaviour(status=500)},
    )
    async with (
        serving(up),
        proxy_tracker(tmp_path / "cache", up) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client,
    ):
        for _ in range(FLOOD):  # relayed
            probe = await client.get(t.url(NAME), headers={"range": "bytes=0-0"})
            assert probe.status_code == 206
        assert folder.folded("download") > 0  # the budget is spent
        failed = await client.get(t.url(broken))
        assert failed.status_code == 502
        await wait_for(lambda: "cache_refresh_ended" in messages(caplog) + folded(folder))
    fields = [record_fields(r) for r in caplog.records]
    [upstream] = [f for event, f in fields if event == "upstream_failed"]
    assert upstream["url"] == up.url(broken) and "500" in str(upstream["reason"])
    [ended] = [f for event, f in fields if event == "cache_refresh_ended"]
    assert (ended["file"], ended["outcome"]) == (broken, "refresh_failed")
    [answered] = [f for event, f in fields if event == "proxy_failed"]
    assert "500" in str(answered["reason"])
    assert folder.folded("download") == FLOOD - BUDGET


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def folded(folder: folding.LineFolder) -> list[str]:
    return list(folder.totals())
