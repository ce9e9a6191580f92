"""Cluster discovery, trust and measured ranking (docs/http-api.md#trust), against real loopback
nodes.

The nodes are real listeners, each on a loopback address of its own (127.1.x.y: the trust
screen counts discovered nodes by their hosts, and discovery keeps one node a machine), and
on 127.0.9.x for the egress cases; the private, link-local and metadata addresses listed by
the fake RPC must never be connected to (``tests/conftest.py`` fails any test that connects
off the machine; here they are also checked to show ``blocked``).
"""

from __future__ import annotations

import json
import logging
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from cluster_answers import NESTED, empty_nodes, node_entry, nodes_answer
from helpers_bytes import MiB, archive_bytes
from helpers_ports import REFUSED
from helpers_proxy import GROUP, advertise, make_config, running_tracker
from helpers_server import serve_app
from helpers_sources import Answer, Request, ScriptedApp
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import archive_hash, full_name

from tracker.clientwire.transport import HeadClient
from tracker.config.schema import (
    ClusterDiscovery,
    Config,
    Egress,
    HttpTargets,
    TargetGroup,
    Trust,
)
from tracker.discovery import cluster as cluster_module
from tracker.discovery import targetset
from tracker.discovery.cluster import cluster_targets
from tracker.discovery.nodes import MAX_NODES
from tracker.discovery.nodes import Node as ClusterNode
from tracker.discovery.scrape import Scraper
from tracker.discovery.targetset import TargetFinder
from tracker.errors import ProbeError
from tracker.observability.logs import record_fields
from tracker.observability.metrics import Metrics
from tracker.ordering.index import Index, TargetKey
from tracker.reporting import track_snapshot_age
from tracker.service import apply_trust
from tracker.web.healthcheck import HealthChecker
from tracker.web.wire import health_json

SLOT = 5000


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=20) as client:
        return await client.get(url)


DEFAULT_TRUST = Trust()


@attrs.define
class Node:
    """A validator's snapshot server: its full alias redirects to ``full`` (None: 404)."""

    full: str | None
    size: int = 1000
    connections: int = 0
    requests: int = 0


class Nodes:
    """Many nodes, each a real listener, served by one handler (raw HTTP/1.1, keep-alive)."""

    def __init__(self) -> None:
        self.by_address: dict[tuple[str, int], Node] = {}
        self._hosts = 0

    def next_host(self) -> str:
        """A loopback address of its own (127.1.x.y): each node a machine of its own, as the
        trust screen counts discovered nodes by their hosts."""
        n, self._hosts = self._hosts, self._hosts + 1
        return f"127.1.{n // 250}.{n % 250 + 1}"

    async def serve(
        self, nursery: trio.Nursery, nodes: list[Node], host: str | None = None
    ) -> list[str]:
        """Listen for each of ``nodes`` on ``host`` (None: each on its own loopback
        address); their ``ip:port`` addresses."""
        addresses = []
        listeners = []
        for node in nodes:
            at = host if host is not None else self.next_host()
            [listener] = await trio.open_tcp_listeners(0, host=at)
            port = listener.socket.getsockname()[1]
            self.by_address[(at, port)] = node
            listeners.append(listener)
            addresses.append(f"{at}:{port}")
        nursery.start_soon(trio.serve_listeners, self._handle, listeners)
        return addresses

    async def _handle(self, stream: trio.SocketStream) -> None:
        host, port = stream.socket.getsockname()[:2]
        node = self.by_address[(host, port)]
        # Counted at once: a denied node must see no connection at all, request or not.
        node.connections += 1
        async with stream:
            try:
                await self._answer_requests(stream, node)
            except trio.BrokenResourceError:
                return  # the tracker gave up on this node: fine for a fake node

    async def _answer_requests(self, stream: trio.SocketStream, node: Node) -> None:
        buffer = b""
        while data := await stream.receive_some(65536):
            buffer += data
            while b"\r\n\r\n" in buffer:
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                request_line = head.split(b"\r\n", 1)[0].split(b" ")
                if len(request_line) != 3:
                    # Not an HTTP request (a stray connect from another test process that
                    # had this port before): answer as a server would and close.
                    await stream.send_all(_BAD_REQUEST)
                    return
                node.requests += 1
                await stream.send_all(_answer(node, request_line[1].decode()))


_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _answer(node: Node, path: str) -> bytes:
    if path == "/snapshot.tar.bz2" and node.full is not None:
        redirect = f"location: /{node.full}\r\ncontent-length: 0"
        return f"HTTP/1.1 303 See Other\r\n{redirect}\r\n\r\n".encode()
    if node.full is not None and path == f"/{node.full}":
        return f"HTTP/1.1 200 OK\r\ncontent-length: {node.size}\r\n\r\n".encode()
    return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


def rpc_app(answers: list[list[dict[str, Any]]]) -> ScriptedApp:
    """A JSON-RPC node answering ``getClusterNodes`` with ``answers[-1]`` (tests append)."""

    async def handle(request: Request) -> Answer:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": answers[-1]}).encode()
        return Answer(200, (("content-type", "application/json"),), body)

    return ScriptedApp({"/": handle})


def config_for(
    rpc: str,
    *,
    trust: Trust = DEFAULT_TRUST,
    known: tuple[str, ...] = (),
    deny: tuple[str, ...] = ("127.0.9.0/24",),
    interval: float = 0.001,
) -> Config:
    group = TargetGroup(
        group=GROUP,
        cluster_discovery=ClusterDiscovery(rpc=(rpc,), interval=interval),
        http_targets=HttpTargets(known) if known else None,
        trust=trust,
    )
    return make_config(
        None,
        target_groups=(group,),
        egress=Egress(allow=("127.0.0.0/8",), deny=deny),
        # a round is called directly, so the interval only bounds the timeout: a probe of
        # 1,000 nodes served in this process took past 10 s beside two CPU hogs, and every
        # test here wants the nodes up (what it checks is discovery, screening, ranking)
        scrape_interval=120.0,
        scrape_timeout=120.0,
        scrape_concurrency=256,
    )


@asynccontextmanager
async def scraper_for(config: Config) -> AsyncIterator[tuple[Scraper, Index]]:
    index = Index()
    apply_trust(index, config)
    scraper = Scraper(config, index)
    try:
        yield scraper, index
    finally:
        await scraper.aclose()


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 8192):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))


# -- the whole cluster --------------------------------------------------------------------------


async def test_a_thousand_nodes_discovered_screened_and_ranked(nursery: trio.Nursery) -> None:
    """1,000 nodes from getClusterNodes: most hold the good snapshot at SLOT, some hold
    none, three advertise another hash at SLOT (marked), some a bogus slot far above the
    cluster's (never ranked), some sit on denied or non-loopback addresses (blocked, never
    connected to), some have a malformed rpc (skipped)."""
    raise_fd_limit()
    good, other = full_name(SLOT), full_name(SLOT, archive_hash(999))
    bogus = full_name(10**9)
    kinds = [good] * 900 + [None] * 80 + [other] * 3 + [bogus] * 5
    nodes = Nodes()
    served = [Node(full) for full in kinds]
    addresses = await nodes.serve(nursery, served)
    denied = [Node(good) for _ in range(4)]
    # each on a host of its own: discovery keeps one node a machine
    denied_addresses = [
        address
        for n, node in enumerate(denied)
        for address in await nodes.serve(nursery, [node], host=f"127.0.9.{n + 1}")
    ]
    off_machine = ["10.1.2.3:8899", "169.254.169.254:80", "192.168.7.7:8899", "100.64.0.1:80"]
    malformed = ["not-an-address", "1.2.3.4", "[::1]:99999", "host.example:8899"]
    entries = [node_entry(n, a) for n, a in enumerate(addresses + denied_addresses)]
    entries += [node_entry(2000 + n, a) for n, a in enumerate(off_machine + malformed)]
    entries.append(node_entry(3000, None))  # no rpc at all
    rpc = await nursery.start(serve_app, rpc_app([entries]))
    config = config_for(rpc)
    async with scraper_for(config) as (scraper, index):
        index.set_cluster_slots({GROUP: SLOT + 10})
        start = trio.current_time()
        await scraper.scrape_round()
        took = trio.current_time() - start
        health = {h.target.key.target: h for h in scraper.health.values()}
        assert len(health) == len(addresses) + len(denied_addresses) + len(off_machine)
        assert all(h.target.key.discovered for h in health.values())
        best = index.best_full(GROUP)
        assert best is not None and best.info.files[0].bare_name == good
        for address, node in zip(addresses, served, strict=True):
            h = health[f"http://{address}"]
            assert h.health == "up", (address, h.last_error)
            entry = health_json(
                h, index.count(h.target.key), index.mismatches().get(h.target.key, "")
            )
            assert entry["source"] == "discovered"
            if node.full == other:
                assert entry["last_error"] == f"hash mismatch at slot {SLOT}"
            else:
                assert entry["last_error"] == ""
        for address in denied_addresses + off_machine:
            h = health[f"http://{address}"]
            assert h.health == "blocked" and "refused by the egress policy" in h.last_error
        assert all(node.connections == 0 for node in denied)
        ranked = [s.info.files[0].bare_name for s in index.sources(GROUP)]
        assert bogus not in ranked and other not in ranked
    print(f"\n1,000 discovered nodes: one round in {took:.2f} s")


async def test_nodes_joining_and_leaving(nursery: trio.Nursery) -> None:
    nodes = Nodes()
    first = await nodes.serve(nursery, [Node(full_name(SLOT)) for _ in range(3)])
    answers = [[node_entry(n, a) for n, a in enumerate(first)]]
    rpc = await nursery.start(serve_app, rpc_app(answers))
    async with scraper_for(config_for(rpc)) as (scraper, index):
        await scraper.scrape_round()
        assert len(index.keys()) == 3
        # Two nodes: what one discovered node alone advertises is never ranked.
        joined = await nodes.serve(nursery, [Node(full_name(SLOT + 1)) for _ in range(2)])
        answers.append(
            [node_entry(0, first[0]), *(node_entry(9 + n, a) for n, a in enumerate(joined))]
        )
        await scraper.scrape_round()
        targets = [k.target for k in index.keys()]  # noqa: SIM118 (an Index, not a dict)
        assert sorted(targets) == sorted(f"http://{a}" for a in (first[0], *joined))
        best = index.best_full(GROUP)
        assert best is not None and best.info.slot == SLOT + 1


async def test_a_node_absent_for_a_round_keeps_its_machines_measurements(
    nursery: trio.Nursery,
) -> None:
    """A node measured slow that left the cluster's list for one round (or came back on
    another port of its machine) came back unmeasured: priced at the assumed throughput,
    its slow history gone. Its machine's measurements wait for it (docs/ranking.md,
    "Probed and achieved")."""
    nodes = Nodes()
    first, other = await nodes.serve(nursery, [Node(full_name(SLOT)) for _ in range(2)])
    answers = [[node_entry(0, first), node_entry(1, other)]]
    rpc = await nursery.start(serve_app, rpc_app(answers))
    async with scraper_for(config_for(rpc)) as (scraper, index):
        await scraper.scrape_round()
        key = TargetKey(GROUP, f"http://{first}", discovered=True)
        assert index.lists(key)
        index.record_transfer(key, MiB, 10.0)  # about 100 kB/s: slow
        measured = index.speeds.measurements("achieved")[key]
        answers.append([node_entry(1, other)])
        await scraper.scrape_round()
        assert not index.lists(key)
        answers.append(answers[0])
        await scraper.scrape_round()
        assert index.lists(key)
        assert index.speeds.measurements("achieved").get(key) == measured
        # back under another identity, on another port of its machine: the same history
        host = first.rsplit(":", 1)[0]
        [moved] = await nodes.serve(nursery, [Node(full_name(SLOT))], host=host)
        answers.append([node_entry(2, moved), node_entry(1, other)])
        await scraper.scrape_round()
        moved_key = TargetKey(GROUP, f"http://{moved}", discovered=True)
        assert index.lists(moved_key) and not index.lists(key)
        assert index.speeds.measurements("achieved").get(moved_key) == measured


async def test_a_group_removed_and_added_again_asks_the_cluster_anew(
    nursery: trio.Nursery,
) -> None:
    # Within its interval a group is answered by its last discovery; a group a reload
    # removed keeps none of it: added again, it asks the cluster at once.
    answers = [[node_entry(0, "127.0.0.1:1001")]]
    rpc = await nursery.start(serve_app, rpc_app(answers))
    config = config_for(rpc, interval=3600.0)
    async with httpx.AsyncClient(trust_env=False, verify=client_tls()) as client:
        found = TargetFinder(lambda _group: client, lambda *_answered: None)
        assert [t.location for t in await found.discover(config)] == ["http://127.0.0.1:1001"]
        answers.append([node_entry(1, "127.0.0.1:1002")])
        assert [t.location for t in await found.discover(config)] == ["http://127.0.0.1:1001"]
        assert await found.discover(attrs.evolve(config, target_groups=())) == []
        assert [t.location for t in await found.discover(config)] == ["http://127.0.0.1:1002"]


async def test_a_failed_discovery_is_asked_again_before_its_interval(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An RPC that failed once as the tracker started left the group without nodes for the
    # whole interval (5 minutes by default): it is asked again after RETRY_FAILED.
    monkeypatch.setattr(targetset, "RETRY_FAILED", 0.0)
    asked: list[int] = []

    async def handle(request: Request) -> Answer:
        asked.append(1)
        if len(asked) == 1:
            return Answer(503, (), b"starting")
        body = {"jsonrpc": "2.0", "id": 1, "result": [node_entry(0, "127.0.0.1:1001")]}
        return Answer(200, (("content-type", "application/json"),), json.dumps(body).encode())

    rpc = await nursery.start(serve_app, ScriptedApp({"/": handle}))
    config = config_for(rpc, interval=3600.0)
    async with httpx.AsyncClient(trust_env=False, verify=client_tls()) as client:
        found = TargetFinder(lambda _group: client, lambda *_answered: None)
        assert await found.discover(config) == []
        assert [t.location for t in await found.discover(config)] == ["http://127.0.0.1:1001"]
        assert len(asked) == 2


async def test_a_known_source_decides_the_hash(nursery: trio.Nursery) -> None:
    """Two nodes advertise hash B, a known source (configured) and one node hash A: A wins."""
    nodes = Nodes()
    a_name, b_name = full_name(SLOT), full_name(SLOT, archive_hash(7))
    addresses = await nodes.serve(nursery, [Node(b_name), Node(b_name), Node(a_name)])
    [known] = await nodes.serve(nursery, [Node(a_name)])
    rpc = await nursery.start(
        serve_app, rpc_app([[node_entry(n, a) for n, a in enumerate(addresses)]])
    )
    known_url = f"http://{known}"
    trust = Trust(known_sources=(known_url,))
    async with scraper_for(config_for(rpc, trust=trust, known=(known_url,))) as (scraper, index):
        await scraper.scrape_round()
        best = index.best_full(GROUP)
        assert best is not None and best.info.files[0].bare_name == a_name
        keys = index.keys()
        marked = [k.target for k in keys if index.mismatches().get(k)]
        assert sorted(marked) == sorted(f"http://{a}" for a in addresses[:2])


async def test_min_agreeing_sources(nursery: trio.Nursery) -> None:
    """A snapshot only one node advertises is not ranked while two must agree."""
    nodes = Nodes()
    lone, agreed = full_name(SLOT + 5), full_name(SLOT)
    addresses = await nodes.serve(nursery, [Node(lone), Node(agreed), Node(agreed)])
    rpc = await nursery.start(
        serve_app, rpc_app([[node_entry(n, a) for n, a in enumerate(addresses)]])
    )
    trust = Trust(min_agreeing_sources=2)
    async with scraper_for(config_for(rpc, trust=trust)) as (scraper, index):
        await scraper.scrape_round()
        best = index.best_full(GROUP)
        assert best is not None and best.info.files[0].bare_name == agreed


# -- the RPC --------------------------------------------------------------------------------------


async def test_the_rpc_list_fails_over_and_answers_are_bounded(nursery: trio.Nursery) -> None:
    huge = ScriptedApp({"/": Answer(200, (), b"[" + b"1," * (8 * 1024 * 1024) + b"1]")})
    silent = ScriptedApp({"/": _never})
    good = rpc_app([[node_entry(1, "127.0.0.1:8899"), node_entry(2, "bad")]])
    urls = [await nursery.start(serve_app, app) for app in (huge, silent, good)]
    discovery = ClusterDiscovery(rpc=tuple(urls))
    async with httpx.AsyncClient(verify=client_tls()) as client:
        nodes = await cluster_targets(client, discovery, rpc_timeout=1.0, max_answer=1 * MiB)
        assert nodes == [ClusterNode("http://127.0.0.1:8899", "2.2.1")]
        only_bad = ClusterDiscovery(rpc=tuple(urls[:2]))
        with pytest.raises(ProbeError) as info:
            await cluster_targets(client, only_bad, rpc_timeout=1.0, max_answer=1 * MiB)
    assert "exceeds the limit" in str(info.value) and "no answer within 1s" in str(info.value)


async def test_one_machine_under_many_identities_takes_one_place_of_max_targets(
    nursery: trio.Nursery,
) -> None:
    """Gossip identities cost nothing: one host advertising its RPC on many ports, and one
    IPv6 machine on many addresses of its /64, each under the lowest public keys, took as
    many places of ``max_targets`` and the honest hosts past them were never chosen. A
    machine takes one place (its lowest key's node); distinct hosts, and IPv6 hosts of
    other /64s, keep theirs."""
    ports = [node_entry(n, f"127.0.0.5:{1000 + n}") for n in range(5)]
    prefix = [node_entry(10 + n, f"[2001:db8:0:1::{n + 1}]:8899") for n in range(5)]
    honest = [node_entry(20 + n, f"127.1.0.{n + 1}:8899") for n in range(3)]
    honest.append(node_entry(30, "[2001:db8:0:2::1]:8899"))  # another /64: another machine
    rpc = await nursery.start(serve_app, rpc_app([[*ports, *prefix, *honest]]))
    discovery = ClusterDiscovery(rpc=(rpc,), max_targets=6)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        nodes = await cluster_targets(client, discovery)
    assert [n.url for n in nodes] == [
        "http://127.0.0.5:1000",
        "http://[2001:db8:0:1::1]:8899",
        "http://127.1.0.1:8899",
        "http://127.1.0.2:8899",
        "http://127.1.0.3:8899",
        "http://[2001:db8:0:2::1]:8899",
    ]


async def _never(request: Request) -> Answer:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


# -- measured throughput ---------------------------------------------------------------------------


async def test_the_faster_source_ranks_first_after_one_download_from_each() -> None:
    name = full_name(SLOT)
    data = archive_bytes(4 * MiB, seed=61)
    slow = FakeUpstream(files={name: data}, behaviour={name: Behaviour(rate=8 * MiB)})
    # three times faster, and still the pace of its relay: a source at loopback speed read
    # by a Python client on a loaded host is paced by that client, which measures nothing
    # (docs/ranking.md, "Failed transfers")
    fast = FakeUpstream(files={name: data}, behaviour={name: Behaviour(rate=24 * MiB)})
    config = make_config(None, target_groups=(TargetGroup(group=GROUP),))
    async with serving(slow), serving(fast), running_tracker(config) as t:
        advertise(t.index, slow.base, [(name, slow.url(name), len(data))])
        assert (await get(t.url(name))).content == data  # the only source: measured slow
        advertise(t.index, fast.base, [(name, fast.url(name), len(data))])
        # Unmeasured, the new source is assumed typical and wins on recency: measured next.
        assert t.index.find_file(GROUP, name)[0][1].key.target == fast.base
        assert (await get(t.url(name))).content == data
        order = [s.key.target for _f, s in t.index.find_file(GROUP, name)]
        assert order == [fast.base, slow.base]
        # The JSON (proxy mode: targets are the tracker) lists both, the faster first.
        listing = (await get(f"{t.base}/v1/snapshots")).json()
        speeds = [s["throughput_bps"] for s in listing]
        assert len(speeds) == 2 and speeds[0] > speeds[1] > 0
    keys = t.index.keys()
    assert TargetKey(GROUP, fast.base) in keys


async def test_the_lean_head_client_answers_and_fails_like_httpx(nursery: trio.Nursery) -> None:
    """The probes of discovered nodes go through ``HeadClient``: status and headers as an
    httpx response, headers sent as given, httpx's exceptions for transport failures."""
    app = ScriptedApp({"/a": Answer(303, (("location", "/b"),))})
    base = await nursery.start(serve_app, app)
    client = HeadClient(timeout=2.0)
    response = await client.head(f"{base}/a", headers={"x-probe": "1"})
    assert (response.status_code, response.headers["location"]) == (303, "/b")
    [request] = app.requests
    assert (request.method, request.headers["x-probe"]) == ("HEAD", "1")
    assert request.headers["accept-encoding"] == "identity"
    with pytest.raises(httpx.ConnectError):
        await client.head(f"http://{REFUSED}/", headers={})


async def test_the_cluster_slot_from_rpc_keeps_a_bogus_slot_out(nursery: trio.Nursery) -> None:
    """With ``rpc`` set, the slot ``getSlot`` reports reaches the index every interval: a
    snapshot more than ``max_slot_ahead`` above it is never ranked (docs/http-api.md#trust)."""

    async def get_slot(request: Request) -> Answer:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": SLOT}).encode()
        return Answer(200, (("content-type", "application/json"),), body)

    rpc = await nursery.start(serve_app, ScriptedApp({"/": get_slot}))
    config = make_config(None, rpc=rpc, target_groups=(TargetGroup(group=GROUP),))
    index = Index()
    apply_trust(index, config)
    good, bogus = full_name(SLOT - 10), full_name(SLOT + 101)
    advertise(index, f"http://{REFUSED}", [(good, f"http://{REFUSED}/a", 10)])
    advertise(index, "http://127.0.0.1:2", [(bogus, "http://127.0.0.1:2/b", 10)])
    best = index.best_full(GROUP)
    assert best is not None and best.info.files[0].bare_name == bogus  # no slot known yet
    async with httpx.AsyncClient(verify=client_tls()) as client:
        health = HealthChecker(lambda: config, index, client)
        track = partial(
            track_snapshot_age,
            health,
            Metrics(process=False),
            lambda: config,
            index.set_cluster_slots,
        )
        nursery.start_soon(track)
        with trio.fail_after(10):
            while (best := index.best_full(GROUP)) is not None and best.info.slot != SLOT - 10:
                await trio.sleep(0.01)
    assert best is not None and best.info.files[0].bare_name == good


# -- hostile answers: they cost that answer, never the tracker ---------------------------------


def scripted_rpc(bodies: list[bytes]) -> ScriptedApp:
    """A JSON-RPC node answering every call with ``bodies[-1]`` (tests append)."""

    async def handle(request: Request) -> Answer:
        return Answer(200, (("content-type", "application/json"),), bodies[-1])

    return ScriptedApp({"/": handle})


async def targets_of(base: str) -> dict[str, dict[str, Any]]:
    answer = await get(f"{base}/v1/targets")
    assert answer.status_code == 200
    return {entry["target"]: entry for entry in answer.json()}


async def test_hostile_cluster_answers_cost_the_answer_not_the_tracker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A node whose ``rpc`` port is ``²`` (``isdigit`` but not ``int``) is skipped; an
    answer nested 5,000 deep marks the RPC failed (its ``/v1/targets`` entry) and the
    nodes found before stay; a ``getSlot`` answer nested as deep makes ``/v1/health`` 502.
    The tracker (scrape loop, slot tracking, API) keeps running throughout."""
    nodes = Nodes()
    good, other = await nodes.serve(nursery, [Node(full_name(SLOT)) for _ in range(2)])
    entries = [node_entry(1, good), node_entry(2, "127.0.0.1:²"), node_entry(3, other)]
    bodies = [nodes_answer(entries)]
    rpc = await nursery.start(serve_app, scripted_rpc(bodies))
    slot_rpc = await nursery.start(serve_app, scripted_rpc([NESTED]))
    settings = {
        # Scrapes and discovery get their time on a loaded machine (the timeout is the
        # interval, at most 10 s): only the nested answers may mark anything down.
        "scrape_interval": "2s",
        "rpc": slot_rpc,
        "egress": {"allow": ["127.0.0.0/8"]},
        "target_groups": [
            {"group": GROUP, "cluster_discovery": {"rpc": [rpc], "interval": "10ms"}}
        ],
    }
    [base] = await start_tracker(nursery, write_config(tmp_path, settings))
    node_url = f"http://{good}"

    async def node_up() -> bool:
        entry = (await targets_of(base)).get(node_url)
        return entry is not None and entry["health"] == "up"

    await wait_until(node_up)
    shown = await targets_of(base)
    assert sorted(shown) == sorted([node_url, f"http://{other}", rpc])  # not port "²"
    assert shown[rpc]["kind"] == "cluster" and shown[rpc]["health"] == "up"
    health = await get(f"{base}/v1/health")
    assert health.status_code == 502
    assert health.json()["Health"] == "rpc unhealthy"
    assert health.json()["Detail"] == "rpc unreachable: JSON nested too deeply"

    bodies.append(NESTED)

    async def rpc_failed() -> bool:
        return (await targets_of(base))[rpc]["health"] == "down"

    await wait_until(rpc_failed)
    shown = await targets_of(base)
    assert shown[rpc]["last_error"] == "entry 0: JSON nested too deeply"
    assert shown[rpc]["consecutive_failures"] >= 1 and shown[rpc]["snapshots"] == 0
    assert shown[node_url]["health"] == "up"  # the last good list is kept
    assert (await get(f"{base}/v1/snapshots")).status_code == 200


# -- big answers: parsed as a stream, off the event loop ---------------------------------------


async def test_the_api_answers_while_a_32_mib_answer_is_parsed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """While the tracker reads and parses the 32 MiB answer, /v1/targets keeps answering:
    no poll waits half the time the answer took. Parsed on the event loop, one poll waited
    for the whole parse, most of that time, however fast or loaded the host; a bound in
    seconds measured the host instead (0.93 s at -n 4 beside two CPU hogs), and a quarter
    failed on one slow poll of a fast parse (34 ms of 135 ms, under load)."""
    asked = trio.Event()

    async def handle(request: Request) -> Answer:
        asked.set()
        return Answer(200, (("content-type", "application/json"),), empty_nodes())

    rpc = await nursery.start(serve_app, ScriptedApp({"/": handle}))
    settings = {
        "scrape_interval": "30s",
        "egress": {"allow": ["127.0.0.0/8"]},
        "target_groups": [{"group": GROUP, "cluster_discovery": {"rpc": [rpc]}}],
    }
    [base] = await start_tracker(nursery, write_config(tmp_path, settings))
    with trio.fail_after(20):
        await asked.wait()
    began = trio.current_time()
    slowest, polls = 0.0, 0
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=20) as client:
        with trio.fail_after(60):
            while True:
                start = trio.current_time()
                answer = await client.get(f"{base}/v1/targets")
                slowest = max(slowest, trio.current_time() - start)
                polls += 1
                entries = {e["target"]: e for e in answer.json()}
                if rpc in entries:  # the answer was read and parsed
                    break
    took = trio.current_time() - began
    print(f"\n32 MiB answer: {took:.3f}s, {polls} polls, slowest {slowest:.3f}s")
    assert polls >= 5, polls  # the parse took a while: the API answered meanwhile
    assert slowest < 0.5 * took
    assert entries[rpc]["health"] == "down"
    assert entries[rpc]["last_error"] == f"more than {MAX_NODES} entries"


async def test_one_discovered_node_cannot_make_a_bogus_slot_the_best(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Default trust, no ``rpc``: a node advertising slot 2^64-1 does not win
    ``/v1/snapshot.tar.bz2`` over two nodes that agree on SLOT."""
    nodes = Nodes()
    good, bogus = full_name(SLOT), full_name(2**64 - 1)
    addresses = await nodes.serve(nursery, [Node(good), Node(bogus), Node(good)])
    answer = [node_entry(n, a) for n, a in enumerate(addresses)]
    rpc = await nursery.start(serve_app, rpc_app([answer]))
    settings = {
        "scrape_interval": "30s",
        "egress": {"allow": ["127.0.0.0/8"]},
        "target_groups": [{"group": GROUP, "cluster_discovery": {"rpc": [rpc]}}],
    }
    [base] = await start_tracker(nursery, write_config(tmp_path, settings))

    async def all_up() -> bool:
        shown = await targets_of(base)
        return all(shown.get(f"http://{a}", {}).get("health") == "up" for a in addresses)

    await wait_until(all_up)
    redirect = await get(f"{base}/v1/snapshot.tar.bz2")
    assert redirect.status_code == 303
    assert redirect.headers["location"].endswith(f"/{good}")


async def test_discovered_nodes_carry_their_version_and_the_filter_applies(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A real getClusterNodes answer: the nodes whose version matches ``versions`` become
    targets, and their version shows in /v1/targets, /v1/snapshots and /v1/best_snapshots;
    a configured target's sources (no version known) carry none."""
    nodes = Nodes()
    good = full_name(SLOT)
    addresses = await nodes.serve(nursery, [Node(good) for _ in range(3)])
    versions = ["2.2.1", "2.3.0-beta.1", "1.18.26"]
    answer = [node_entry(n, a, v) for n, (a, v) in enumerate(zip(addresses, versions, strict=True))]
    old = addresses[2]
    [known] = await nodes.serve(nursery, [Node(good)])
    rpc = await nursery.start(serve_app, rpc_app([answer]))
    known_url = f"http://{known}"
    settings = {
        "scrape_interval": "30s",
        "egress": {"allow": ["127.0.0.0/8"]},
        "target_groups": [
            {
                "group": GROUP,
                "cluster_discovery": {"rpc": [rpc], "versions": ["2.*"]},
                "http_targets": {"targets": [known_url]},
            }
        ],
    }
    [base] = await start_tracker(nursery, write_config(tmp_path, settings))
    expected = {f"http://{a}": v for a, v in zip(addresses[:2], versions, strict=False)}

    async def all_up() -> bool:
        shown = await targets_of(base)
        return all(shown.get(t, {}).get("health") == "up" for t in [*expected, known_url])

    await wait_until(all_up)
    shown = await targets_of(base)
    assert f"http://{old}" not in shown  # 1.18.26 matches no glob of ``versions``
    assert {t: e.get("version") for t, e in shown.items() if t != rpc} == {
        **expected,
        known_url: None,
    }
    for route in ("/v1/snapshots", "/v1/best_snapshots"):
        listed = (await get(f"{base}{route}")).json()
        assert {s["target"]: s.get("version") for s in listed} == {
            **expected,
            known_url: None,
        }, route


async def test_an_rpc_answer_failing_as_no_rule_foresaw_costs_that_groups_question_only(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What no rule of ``getClusterNodes``'s reading names (here a library's ValueError on
    junk) raised out of the round's discovery: no target of any group was probed while the
    RPC answered so. It costs that group's question now: logged with its traceback, the
    group keeps the nodes it found last, and they are probed (docs/architecture.md,
    "Failures")."""
    nodes = Nodes()
    served = [Node(full_name(SLOT))]
    addresses = await nodes.serve(nursery, served)
    rpc = await nursery.start(serve_app, rpc_app([[node_entry(0, addresses[0])]]))
    config = config_for(rpc)

    def unforeseen(*_args: object) -> list[ClusterNode]:
        raise ValueError("a library's own complaint")

    async with scraper_for(config) as (scraper, index):
        await scraper.scrape_round()
        first = served[0].requests
        monkeypatch.setattr(cluster_module, "parse_answer", unforeseen)
        with caplog.at_level(logging.ERROR, logger="tracker"):
            await scraper.scrape_round()  # raised ValueError out of the round
        assert served[0].requests > first  # the node found last is probed again
        assert [k.target for k in index.keys()] == [f"http://{addresses[0]}"]  # noqa: SIM118
    (failed,) = [record_fields(r)[1] for r in caplog.records if r.msg == "cluster_discovery_error"]
    assert failed["group"] == GROUP
    assert failed["error"] == "ValueError: a library's own complaint"
