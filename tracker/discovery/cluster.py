"""Cluster discovery (SPEC §11): every RPC node of the cluster, from ``getClusterNodes``.

The RPC URLs are asked in turn until one answers (each under a timeout, the answer read up to
a size cap). Every node with an ``rpc`` address (``ip:port``) becomes an HTTP target
``http://{rpc}``; a node whose address is malformed is skipped, one whose version matches
none of the ``versions`` globs too, and at most ``max_targets`` are kept (by public key, a
stable choice between rounds). The addresses came from the network: the scrape loop checks
each against the egress policy before any connection (:mod:`tracker.discovery.scrape`).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Callable, Sequence

import httpx
import trio

from tracker.core.config import ClusterDiscovery
from tracker.core.redact import redact_url
from tracker.core.text import one_line
from tracker.core.untrusted import load_json, port_number
from tracker.errors import ProbeError
from tracker.net.limits import read_capped, status_reason, transport_reason

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
) -> list[str]:
    """The HTTP target URLs of the cluster's RPC nodes. Raises ProbeError (one line, every
    RPC URL's reason) when none of ``discovery.rpc`` gave a usable answer; ``report`` hears
    of each URL asked, in turn, whether it answered."""
    reasons = []
    for url in discovery.rpc:
        start = trio.current_time()
        try:
            with trio.fail_after(rpc_timeout):
                nodes = await _ask(client, url, max_answer)
        except trio.TooSlowError:
            reason = f"no answer within {rpc_timeout:g}s"
        except ProbeError as exc:
            reason = str(exc)
        else:
            report(url, "", trio.current_time() - start)
            return select(nodes, discovery.versions, discovery.max_targets)
        report(url, reason, trio.current_time() - start)
        reasons.append(f"{redact_url(url)}: {reason}")
    raise ProbeError(one_line("getClusterNodes failed: " + "; ".join(reasons)))


async def _ask(client: httpx.AsyncClient, url: str, max_answer: int) -> list[object]:
    headers = {"accept-encoding": "identity", "content-type": "application/json"}
    try:
        async with client.stream("POST", url, json=_REQUEST, headers=headers) as response:
            if response.status_code != 200:
                raise ProbeError(status_reason(response))
            body = await read_capped(response, max_answer)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ProbeError(transport_reason(exc)) from exc
    answer = load_json(body, ProbeError)
    result = answer.get("result") if isinstance(answer, dict) else None
    if not isinstance(result, list):
        raise ProbeError("not a getClusterNodes answer")
    return result


def select(nodes: Sequence[object], versions: Sequence[str], max_targets: int) -> list[str]:
    """``http://{rpc}`` of each usable node, at most ``max_targets``, by public key."""
    chosen: dict[str, str] = {}
    for node in nodes:
        if not isinstance(node, dict):
            continue
        address = _rpc_address(node.get("rpc"))
        pubkey = node.get("pubkey")
        version = node.get("version")
        if address is None or not isinstance(pubkey, str):
            continue
        if versions and not (
            isinstance(version, str) and any(fnmatch.fnmatchcase(version, v) for v in versions)
        ):
            continue
        chosen.setdefault(pubkey, f"http://{address}")
    return [chosen[key] for key in sorted(chosen)[:max_targets]]


def _rpc_address(value: object) -> str | None:
    """A node's ``rpc`` (``ip:port`` or ``[v6]:port``) as a URL authority, or None."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    host, sep, port_text = value.rpartition(":")
    port = port_number(port_text)
    if not sep or port is None:
        return None
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return None  # getClusterNodes gives IP addresses; a name is not one
    if address.version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"
