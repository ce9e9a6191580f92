"""A reload during a scrape round (docs/http-api.md, "Internal routes"): the new config takes
effect at once, so a probe still waiting for its turn in the round is not made for a group
the reload dropped, nor what its Consul or cluster RPC found probed, and the round ends as
usual. Local targets, and discovery calls replaced by held ones: no network."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from test_sources_local import FULL, write

import tracker.discovery.probing as probing
from tracker.config.schema import (
    ClusterDiscovery,
    Config,
    ConsulSDConfig,
    Egress,
    LocalTargets,
    TargetGroup,
)
from tracker.discovery.scrape import Scraper
from tracker.ordering.index import Index


async def test_a_reload_dropping_a_group_mid_round_skips_its_waiting_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledgers: dict[str, str] = {}
    for name in ("g", "h"):
        (tmp_path / name).mkdir()
        write(tmp_path / name / FULL, 10)
        ledgers[name] = str(tmp_path / name)
    groups = [TargetGroup(group=n, local_targets=LocalTargets((p,))) for n, p in ledgers.items()]
    # One probe at a time: the first scan holds the round's only slot, the other waits.
    config = Config(target_groups=tuple(groups), scrape_concurrency=1)
    scanned: list[str] = []
    scanning, go_on = threading.Event(), threading.Event()
    real_scan = probing.scan_local

    def held_scan(path: str) -> object:
        scanned.append(path)
        if len(scanned) == 1:
            scanning.set()
            go_on.wait(10)
        return real_scan(path)

    monkeypatch.setattr(probing, "scan_local", held_scan)
    index = Index()
    scraper = Scraper(config, index)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scraper.scrape_round)
            await trio.to_thread.run_sync(scanning.wait, 10)
            [first] = [n for n, p in ledgers.items() if p == scanned[0]]
            kept = [g for g in groups if g.group == first]
            scraper.update_config(attrs.evolve(config, target_groups=tuple(kept)))
            go_on.set()
        assert scanned == [ledgers[first]]  # the dropped group's probe was never made
        [dropped] = set(ledgers) - {first}
        assert index.find_file(dropped, FULL) == []
        assert [f.file_name for f, _ in index.find_file(first, FULL)] == [FULL]
    finally:
        go_on.set()
        await scraper.aclose()


def _discovered_by(kind: str, name: str) -> TargetGroup:
    if kind == "consul":
        return TargetGroup(group=name, consul_sd_config=ConsulSDConfig(host=name, service="s"))
    return TargetGroup(group=name, cluster_discovery=ClusterDiscovery(rpc=(f"http://{name}",)))


@pytest.mark.parametrize("kind", ["consul", "cluster"])
async def test_a_reload_dropping_a_group_mid_discovery_probes_nothing_it_found(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every group's Consul or cluster RPC is asked at once (docs/architecture.md, "Scrape
    rounds"); a reload while they are asked drops the second group: what its question found
    is not probed (its client went with it), and the round ends as usual."""
    import tracker.discovery.targetset as targetset
    from tracker.discovery.nodes import Node

    groups = (_discovered_by(kind, "a"), _discovered_by(kind, "b"))
    # a discovered node on loopback passes the egress policy: only the reload keeps it unasked
    config = Config(target_groups=groups, egress=Egress(allow=("127.0.0.0/8",)))
    asked: list[str] = []
    probed: list[str] = []
    both_asked, go_on = trio.Event(), trio.Event()

    async def held(_client: object, query: Any, **_kwargs: Any) -> list[Any]:
        host = query.host if kind == "consul" else query.rpc[0]
        asked.append(host)
        if len(asked) == 2:
            both_asked.set()
        await go_on.wait()
        if host.endswith("b"):  # the dropped group's question found a target
            return ["127.0.0.1:9"] if kind == "consul" else [Node("http://127.0.0.1:9")]
        return []

    async def recorded(_client: object, location: str, **_kwargs: Any) -> list[Any]:
        probed.append(location)
        return []

    monkeypatch.setattr(
        targetset, "discover_consul" if kind == "consul" else "cluster_targets", held
    )
    monkeypatch.setattr(probing, "probe_sidecar", recorded)
    monkeypatch.setattr(probing, "probe_http", recorded)
    scraper = Scraper(config, Index())
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scraper.scrape_round)
            with trio.fail_after(10):
                await both_asked.wait()  # asked at once: neither waits for the other
            scraper.update_config(attrs.evolve(config, target_groups=groups[:1]))
            go_on.set()
        assert sorted(asked) == (["a", "b"] if kind == "consul" else ["http://a", "http://b"])
        assert probed == []  # what the dropped group's question found
    finally:
        await scraper.aclose()


async def test_a_reload_changing_cluster_discovery_asks_its_rpc_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The nodes a group's cluster discovery found were kept by the group's name for
    ``interval`` (5 minutes by default): a reload to another RPC, version filter or bound
    kept the old nodes and asked nothing until then, though a reload applies at once."""
    import tracker.discovery.targetset as targetset

    asked: list[str] = []

    async def nodes_of(_client: object, query: ClusterDiscovery, **_kwargs: Any) -> list[Any]:
        asked.append(query.rpc[0])
        return []

    monkeypatch.setattr(targetset, "cluster_targets", nodes_of)
    before = TargetGroup(group="g", cluster_discovery=ClusterDiscovery(rpc=("http://x",)))
    config = Config(target_groups=(before,))
    scraper = Scraper(config, Index())
    try:
        await scraper.scrape_round()
        await scraper.scrape_round()  # within the interval: the kept nodes
        after = attrs.evolve(before, cluster_discovery=ClusterDiscovery(rpc=("http://y",)))
        scraper.update_config(attrs.evolve(config, target_groups=(after,)))
        await scraper.scrape_round()
    finally:
        await scraper.aclose()
    assert asked == ["http://x", "http://y"]
