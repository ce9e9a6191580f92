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

import pytest
import trio
from cluster_answers import node_entry
from helpers_proxy import GROUP, make_config
from helpers_server import serve_app
from names import full_name
from test_cluster import rpc_app, scraper_for

from tracker.config.schema import ClusterDiscovery, Egress, HttpTargets, TargetGroup
from tracker.net.egress import LOOKUPS_AT_ONCE

SLOT = 5000
#: The name the operator's target redirects to (its CDN), resolved to 127.0.0.1 here.
CDN = "cdn.test"


async def redirector(nursery: trio.Nursery, location: str) -> str:
    """A server answering ``/snapshot.tar.bz2`` with a 303 to ``location`` (and 404 to any
    other path, the HEAD of a file on another origin included); its ``host:port``."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    if not (chunk := await stream.receive_some(65536)):
                        return
                    data += chunk
                if data.split(b" ")[1] == b"/snapshot.tar.bz2":
                    answer = f"HTTP/1.1 303 See Other\r\nlocation: {location}\r\n"
                else:
                    answer = "HTTP/1.1 404 Not Found\r\n"
                await stream.send_all(f"{answer}content-length: 0\r\n\r\n".encode())
            except trio.BrokenResourceError:
                pass

    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handle, [listener])
    return f"127.0.0.1:{listener.socket.getsockname()[1]}"


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
    hostile = [
        await redirector(nursery, f"http://n{i}.hung.test/{full_name(SLOT)}")
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
