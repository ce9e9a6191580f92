"""Name lookups of discovered nodes' redirects (docs/http-api.md#trust): a node anyone can
advertise in gossip may redirect its aliases to names whose DNS server never answers; each
such lookup holds a thread until the system resolver gives up. Those threads must never be
the ones the operator's own targets look up with. The system resolver is replaced for the
test: the hostile names block until the test ends, the others are loopback literals, so no
query leaves the machine."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from cluster_answers import node_entry
from helpers_proxy import FAST, GROUP, advertise, make_config, running_tracker
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_upstream import FakeUpstream, serving
from names import full_name
from test_cluster import rpc_app, scraper_for

from tracker.config.schema import ClusterDiscovery, Egress, HttpTargets, TargetGroup
from tracker.net.egress import LOOKUPS_AT_ONCE, STRANGERS_LOOKUPS_AT_ONCE, resolve_strangers

SLOT = 5000
#: The name the operator's target redirects to (its CDN), resolved to 127.0.0.1 here.
CDN = "cdn.test"


async def redirector(
    nursery: trio.Nursery, location: str, *, every: bool = False, host: str = "127.0.0.1"
) -> str:
    """A server on ``host`` answering ``/snapshot.tar.bz2`` (``every``: any path) with a 303
    to ``location``, any other path with a 404; its ``host:port``."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    if not (chunk := await stream.receive_some(65536)):
                        return
                    data += chunk
                if every or data.split(b" ")[1] == b"/snapshot.tar.bz2":
                    answer = f"HTTP/1.1 303 See Other\r\nlocation: {location}\r\n"
                else:
                    answer = "HTTP/1.1 404 Not Found\r\n"
                await stream.send_all(f"{answer}content-length: 0\r\n\r\n".encode())
            except trio.BrokenResourceError:
                pass

    [listener] = await trio.open_tcp_listeners(0, host=host)
    nursery.start_soon(trio.serve_listeners, handle, [listener])
    return f"{host}:{listener.socket.getsockname()[1]}"


@pytest.fixture
def hung_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The system resolver, with names under ``.hung.test`` never answered until the test
    ends (the event is set then, and their threads end)."""
    real = socket.getaddrinfo
    ended = threading.Event()

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.endswith(".hung.test"):
            ended.wait()
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real("127.0.0.1" if name == CDN else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield ended
    ended.set()


async def test_hostile_nodes_names_never_take_the_lookups_of_the_operators_targets(
    nursery: trio.Nursery, hung_dns: threading.Event
) -> None:
    """Eight discovered nodes redirecting to names that never resolve held every thread of
    the shared lookups, abandoned at each round's timeout: the operator's target, whose
    validator redirects to its CDN, was down with "timed out" from the second round on, and
    its snapshots dropped after ``max_target_failures``."""
    configured = await redirector(nursery, f"http://{CDN}:8080/{full_name(SLOT)}")
    hostile = [  # each on a host of its own: discovery keeps one node a machine
        await redirector(
            nursery, f"http://n{i}.hung.test/{full_name(SLOT)}", host=f"127.1.1.{i + 1}"
        )
        for i in range(LOOKUPS_AT_ONCE)
    ]
    rpc = await nursery.start(
        serve_app, rpc_app([[node_entry(i, a) for i, a in enumerate(hostile)]])
    )
    group = TargetGroup(
        group=GROUP,
        http_targets=HttpTargets((f"http://{configured}",)),
        cluster_discovery=ClusterDiscovery(rpc=(rpc,)),
    )
    config = make_config(
        None,
        target_groups=(group,),
        egress=Egress(allow=("127.0.0.0/8",)),
        scrape_interval=5.0,
        scrape_timeout=2.0,
        scrape_concurrency=64,
    )
    async with scraper_for(config) as (scraper, _index):
        for _round in range(2):  # the first round's lookups are still held in the second
            await scraper.scrape_round()
            healths = scraper.health.values()
            assert sum(h.target.key.discovered for h in healths) == len(hostile)
            [own] = [h for h in healths if not h.target.key.discovered]
            assert (own.health, own.last_error) == ("up", "")


async def test_the_relay_looks_up_a_discovered_sources_redirect_among_the_strangers_lookups(
    nursery: trio.Nursery, hung_dns: threading.Event
) -> None:
    """The relay followed a discovered source's redirect with the lookups the operator's
    sources use: a hostile node could hold them with names that never resolve. With every
    lookup of the strangers' held, a discovered source's redirect to a CDN waits (the
    download fails) while the operator's source, redirecting to that CDN too, is served;
    once those lookups end, the discovered source is served as well."""
    own_name, node_name = full_name(SLOT), full_name(SLOT + 1)
    data = {own_name: b"own archive", node_name: b"the node's archive"}
    async with (
        serving(FakeUpstream(files=dict(data))) as cdn,
        running_tracker(
            make_config(None, egress=Egress(allow=("127.0.0.0/8",))), settings=FAST
        ) as t,
    ):
        port = cdn.base.rsplit(":", 1)[1]
        for name in data:  # the CDN's URL by its name, which only the lookups resolve
            location = f"http://{CDN}:{port}/files/{name}"
            if name == own_name:
                own = f"http://{await redirector(nursery, location, every=True)}"
                advertise(t.index, own, [(name, f"{own}/{name}", len(data[name]))])
            for host in ("127.1.0.1", "127.1.0.2") if name == node_name else ():
                node = f"http://{await redirector(nursery, location, every=True, host=host)}"
                advertise(
                    t.index, node, [(name, f"{node}/{name}", len(data[name]))], discovered=True
                )
        for n in range(STRANGERS_LOOKUPS_AT_ONCE):  # names that never resolve hold them all
            with trio.move_on_after(0.05):
                await resolve_strangers(f"n{n}.hung.test", 80)
        async with httpx.AsyncClient(trust_env=False, verify=client_tls(), timeout=30) as client:
            assert (await client.get(t.url(node_name))).status_code == 502
            answer = await client.get(t.url(own_name))
            assert (answer.status_code, answer.content) == (200, data[own_name])
            hung_dns.set()  # their DNS server gives up: the strangers' lookups come free
            answer = await client.get(t.url(node_name))
            assert (answer.status_code, answer.content) == (200, data[node_name])
