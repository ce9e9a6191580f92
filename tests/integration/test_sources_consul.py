"""Consul catalog discovery against a tiny fake Consul on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from helpers_server import serve_app
from helpers_sources import Answer, ScriptedApp

from tracker.discovery.consul import CatalogQuery, discover_consul
from tracker.errors import ProbeError

CATALOG = "/v1/catalog/service/solana-sidecar"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as c:
        yield c


def node(address: Any, port: Any, **extra: Any) -> dict[str, Any]:
    """A catalog entry the way Consul answers it (node Address, service address and port)."""
    entry = {"ID": "x", "Node": "n", "Datacenter": "dc1", "ServiceName": "solana-sidecar"}
    return entry | {"Address": address, "ServiceAddress": "10.9.9.9", "ServicePort": port} | extra


def catalog(entries: list[dict[str, Any]]) -> Answer:
    return Answer(200, (("content-type", "application/json"),), json.dumps(entries).encode())


async def test_every_instance_is_a_target_like_the_go_tracker(nursery, client) -> None:
    entries = [node("10.0.0.1", 13080), node("fe80::1", 13081), node("10.0.0.1", 13080)]
    app = ScriptedApp({CATALOG: catalog(entries)})
    base = await nursery.start(serve_app, app)

    query = CatalogQuery(
        base, "solana-sidecar", token="secret", datacenter="dc1", filter='Node != "x"'
    )
    targets = await discover_consul(client, query)

    # Node Address + ServicePort (not ServiceAddress), IPv6 bracketed, duplicates dropped.
    assert targets == ["10.0.0.1:13080", "[fe80::1]:13081"]
    (request,) = app.requests
    assert (request.method, request.path) == ("GET", CATALOG)
    assert parse_qs(request.query) == {"dc": ["dc1"], "filter": ['Node != "x"']}
    assert request.headers["x-consul-token"] == "secret"


async def test_host_without_scheme_and_no_options(nursery, client) -> None:
    app = ScriptedApp({CATALOG: catalog([])})
    base = await nursery.start(serve_app, app)
    assert (
        await discover_consul(
            client, CatalogQuery(base.removeprefix("http://") + "/", "solana-sidecar")
        )
        == []
    )
    (request,) = app.requests
    assert request.query == ""
    assert "x-consul-token" not in request.headers


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Answer(403, (), b"ACL not found"), "HTTP 403 Forbidden: ACL not found"),
        (catalog([node("10.0.0.1", 0)]), "entry 0: ServicePort: not a port number: 0"),
        (catalog([node("10.0.0.1", "80")]), "entry 0: ServicePort: not a port number: '80'"),
        (catalog([node("a", 1), node(None, 1)]), "entry 1: Address: not a string: None"),
        (catalog([node("bad host", 1)]), "entry 0: Address: not a host name or IP: 'bad host'"),
        (catalog([node("", 1)]), "entry 0: Address: not a host name or IP: ''"),
        (Answer(200, (), b'{"a": 1}'), "answer is not a JSON array"),
        (catalog([["x"]]), "entry 0: not a JSON object: ['x']"),
    ],
)
async def test_bad_answers_are_probe_errors(nursery, client, answer, reason) -> None:
    base = await nursery.start(serve_app, ScriptedApp({CATALOG: answer}))
    with pytest.raises(ProbeError) as info:
        await discover_consul(client, CatalogQuery(base, "solana-sidecar"))
    assert str(info.value) == reason


async def test_too_many_instances(nursery, client) -> None:
    entries = [node(f"10.0.{i // 250}.{i % 250}", 13080) for i in range(11)]
    base = await nursery.start(serve_app, ScriptedApp({CATALOG: catalog(entries)}))
    with pytest.raises(ProbeError, match=r"^more than 10 entries$"):
        await discover_consul(client, CatalogQuery(base, "solana-sidecar"), max_entries=10)
    assert (
        len(await discover_consul(client, CatalogQuery(base, "solana-sidecar"), max_entries=11))
        == 11
    )
