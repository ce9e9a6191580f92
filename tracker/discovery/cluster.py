"""Cluster discovery (docs/http-api.md#trust): every RPC node of the cluster, from
``getClusterNodes``.

The RPC URLs are asked in turn until one answers (each under a timeout, the answer read up to
a size cap and parsed as a stream in a worker thread, :mod:`tracker.discovery.nodes`). Every
node with an ``rpc`` address (``ip:port``) becomes an HTTP target ``http://{rpc}`` (with its
``version``, shown in the JSON of its sources); a node
whose address is malformed is skipped, one whose version matches none of the ``versions``
globs too, and at most ``max_targets`` are kept (by public key, a stable choice between
rounds; one machine under several keys, on several ports or addresses of its IPv6 /64, is
one node, its lowest key's; every IPv4 /24's or IPv6 /48's first machine before any one's
second: docs/configuration.md, ``cluster_discovery``). The addresses
came from the network:
the scrape loop checks each against the egress policy before any connection
(:mod:`tracker.discovery.scrape`).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import trio

from tracker.config.schema import ClusterDiscovery
from tracker.core.text import one_line
from tracker.discovery.nodes import Node, parse_answer
from tracker.errors import ProbeError, TransportError
from tracker.net.exchange import stream
from tracker.net.limits import read_capped, status_reason
from tracker.observability.redact import redact_url

#: The biggest getClusterNodes answer read (mainnet's is about 2 MB for 5,000 nodes).
MAX_ANSWER = 32 * 1024 * 1024
#: How long one RPC URL may take to answer completely.
RPC_TIMEOUT = 10.0

_REQUEST = {"jsonrpc": "2.0", "id": 1, "method": "getClusterNodes"}

#: Told of each RPC URL asked: (url, "" when it answered usably else the one-line reason,
#: seconds it took).
Report = Callable[[str, str, float], None]


def _ignore(url: str, reason: str, seconds: float) -> None:
    pass


async def cluster_targets(
    client: httpx.AsyncClient,
    discovery: ClusterDiscovery,
    *,
    rpc_timeout: float = RPC_TIMEOUT,
    max_answer: int = MAX_ANSWER,
    report: Report = _ignore,
) -> list[Node]:
    """The cluster's RPC nodes (their HTTP target URLs and versions). Raises ProbeError (one
    line, every RPC URL's reason) when none of ``discovery.rpc`` gave a usable answer;
    ``report`` hears of each URL asked, in turn, whether it answered."""
    reasons = []
    for url in discovery.rpc:
        start = trio.current_time()
        try:
            with trio.fail_after(rpc_timeout):
                body = await _ask(client, url, max_answer)
            # Off the event loop, and not abandoned on cancellation (MAX_NODES bounds it).
            nodes = await trio.to_thread.run_sync(
                parse_answer, body, discovery.versions, discovery.max_targets
            )
        except trio.TooSlowError:
            reason = f"no answer within {rpc_timeout:g}s"
        except ProbeError as exc:
            reason = str(exc)
        else:
            report(url, "", trio.current_time() - start)
            return nodes
        report(url, reason, trio.current_time() - start)
        reasons.append(f"{redact_url(url)}: {reason}")
    raise ProbeError(one_line("getClusterNodes failed: " + "; ".join(reasons)))


async def _ask(client: httpx.AsyncClient, url: str, max_answer: int) -> bytearray:
    headers = {"accept-encoding": "identity", "content-type": "application/json"}
    try:
        async with stream(client, "POST", url, json=_REQUEST, headers=headers) as response:
            if response.status_code != 200:
                raise ProbeError(status_reason(response))
            return await read_capped(response, max_answer)
    except TransportError as exc:
        raise ProbeError(str(exc)) from exc
