"""Consul service discovery: sidecar targets from the Consul catalog (``consul_sd_config``).

Same meaning as the Go tracker (rpcpool/solana-cluster, internal/discovery/consul.go):
``GET /v1/catalog/service/{service}`` with ``dc`` and ``filter`` when set and the token in
``X-Consul-Token``; every registered instance is a target, healthy or not (the catalog does
not look at health checks; a dead node is caught by its own probe failing), named
``{node Address}:{ServicePort}``. IPv6 addresses are bracketed, which Go's ``%s:%d`` forgot.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import attrs
import httpx
import trio

from tracker.config.sections import DEFAULT_CONSUL
from tracker.config.targetfile import is_host_port
from tracker.core.text import quoted
from tracker.errors import ProbeError
from tracker.net.limits import decode_text, fetch_capped, iter_json_array
from tracker.observability.folding import log_folded

log = logging.getLogger("tracker.scrape")

DEFAULT_MAX_BODY = 8 * 1024 * 1024
DEFAULT_MAX_ENTRIES = 10_000
# Catalog entries carry node and service metadata: allow more per element than a sidecar's.
_MAX_ENTRY_CHARS = 64 * 1024


@attrs.frozen
class CatalogQuery:
    """What is asked of Consul's catalog: ``service`` at ``host`` (``host:port`` or
    ``http(s)://host:port``; empty: ``127.0.0.1:8500``), with ``token``, ``datacenter`` and
    ``filter`` when set (a group's ``consul_sd_config``)."""

    host: str
    service: str
    token: str = ""
    datacenter: str = ""
    filter: str = ""


async def discover_consul(
    client: httpx.AsyncClient,
    query: CatalogQuery,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> list[str]:
    """The ``host:port`` sidecar targets registered in Consul for ``query.service``, in
    catalog order.

    An instance without a usable ``Address``/``ServicePort`` (a service registered without a
    port has 0 there) is skipped and logged (``consul_entry_skipped``): one registration
    costs itself, not the other sidecars of the answer. Raises :class:`ProbeError` (one
    line) on a transport/TLS failure, a non-200 status (with the start of Consul's error
    text, e.g. ``ACL not found``), a body over ``max_body``, more than ``max_entries``
    instances, invalid JSON, or when no instance of a non-empty answer is usable (the
    first one's reason). Cancellation propagates; the caller owns the timeout.
    """
    if not query.service:
        raise ProbeError("no Consul service name")
    url = f"{_origin(query.host)}/v1/catalog/service/{quote(query.service, safe='')}"
    wanted = (("dc", query.datacenter), ("filter", query.filter))
    params = {key: value for key, value in wanted if value}
    headers = {"x-consul-token": query.token} if query.token else {}
    body = await fetch_capped(client, url, headers=headers, params=params, max_body=max_body)
    # Up to max_body (8 MiB) of JSON would hold the event loop for a good part of a second:
    # parsed in a worker thread, not abandoned on cancellation (max_entries bounds it).
    targets, skipped = await trio.to_thread.run_sync(parse_catalog, body, max_entries)
    if skipped and not targets:
        raise ProbeError(skipped[0])
    if skipped:
        log_folded(
            log, "warning", "consul_entry_skipped",
            service=query.service, count=len(skipped), reason=skipped[0],
        )  # fmt: skip
    return targets


def parse_catalog(body: bytes | bytearray, max_entries: int) -> tuple[list[str], list[str]]:
    """The distinct ``host:port`` targets of a Consul catalog answer, in its order, and why
    each entry left out was (naming it); raises ProbeError when the answer itself cannot be
    read."""
    entries = iter_json_array(
        decode_text(body), max_items=max_entries, max_item_chars=_MAX_ENTRY_CHARS
    )
    targets: dict[str, None] = {}
    skipped: list[str] = []
    for index, raw in enumerate(entries):
        try:
            targets[_target(raw, index)] = None
        except ProbeError as exc:
            skipped.append(str(exc))
    return list(targets), skipped


def _origin(host: str) -> str:
    host = host.strip().rstrip("/") or DEFAULT_CONSUL
    return host if "://" in host else f"http://{host}"


def _target(raw: object, index: int) -> str:
    if not isinstance(raw, dict):
        raise ProbeError(f"entry {index}: not a JSON object: {quoted(raw)}")
    address, port = raw.get("Address"), raw.get("ServicePort")
    if type(port) is not int or not 0 < port < 65536:
        raise ProbeError(f"entry {index}: ServicePort: not a port number: {quoted(port)}")
    if not isinstance(address, str):
        raise ProbeError(f"entry {index}: Address: not a string: {quoted(address)}")
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    if not is_host_port(target):
        raise ProbeError(f"entry {index}: Address: not a host name or IP: {quoted(address)}")
    return target
