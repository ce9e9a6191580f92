"""Consul discovery refuses an empty service name before asking anyone; what a failed query
leaves a group (discovery against a real Consul catalog:
tests/integration/test_sources_consul.py)."""

from __future__ import annotations

import pytest

from tracker.discovery.consul import CatalogQuery, discover_consul
from tracker.discovery.targetset import consul_hosts_kept
from tracker.errors import ProbeError

ASKED = CatalogQuery("consul:8500", "solana", "token", "dc1", 'Node != "x"')


async def test_no_service_name(client) -> None:
    with pytest.raises(ProbeError, match=r"^no Consul service name$"):
        await discover_consul(client, CatalogQuery("127.0.0.1:1", ""))


async def test_the_catalog_is_parsed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to 8 MiB of catalog JSON: parsed in a worker thread, not on trio's."""
    import json
    import threading

    import httpx

    from tracker.discovery import consul

    entries = [{"Address": f"10.0.{n // 256}.{n % 256}", "ServicePort": 8899} for n in range(3000)]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(json.dumps(entries).encode()))

    threads: list[threading.Thread] = []
    parse = consul.parse_catalog

    def recorded(body: bytes, max_entries: int) -> tuple[list[str], list[str]]:
        threads.append(threading.current_thread())
        return parse(body, max_entries)

    monkeypatch.setattr(consul, "parse_catalog", recorded)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        targets = await discover_consul(client, CatalogQuery("consul.invalid:8500", "solana"))
    assert targets[:2] == ["10.0.0.0:8899", "10.0.0.1:8899"] and len(targets) == 3000
    assert threads and threads[0] is not threading.main_thread()


@pytest.mark.parametrize(
    "now",
    [
        CatalogQuery("other-consul:8500", "solana", "token", "dc1", 'Node != "x"'),
        CatalogQuery("consul:8500", "other", "token", "dc1", 'Node != "x"'),
        CatalogQuery("consul:8500", "solana", "token", "dc2", 'Node != "x"'),
        CatalogQuery("consul:8500", "solana", "token", "dc1", ""),
    ],
    ids=["host", "service", "datacenter", "filter"],
)
def test_a_failed_query_keeps_only_its_own_last_answer(now: CatalogQuery) -> None:
    last = (ASKED, ["10.0.0.1:8899"])
    assert consul_hosts_kept(last, ASKED) == ["10.0.0.1:8899"]  # Consul down a while
    assert consul_hosts_kept(last, now) == []  # a reload changed the query meanwhile
    assert consul_hosts_kept(None, ASKED) == []  # never answered


def test_a_rotated_token_keeps_the_last_answer_of_the_same_question() -> None:
    rotated = CatalogQuery("consul:8500", "solana", "rotated", "dc1", 'Node != "x"')
    assert consul_hosts_kept((ASKED, ["10.0.0.1:8899"]), rotated) == ["10.0.0.1:8899"]
