"""Consul catalog discovery against a tiny fake Consul on 127.0.0.1: the catalog query, what a
failed query leaves a group (the last answer to that same query only), through the tracker too."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import trio
from fakes import Sidecar, sidecar_info
from helpers_bytes import MiB, archive_bytes
from helpers_server import serve_app
from helpers_sources import Answer, ScriptedApp, read_head, serve_raw
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_upstream import FakeUpstream, sidecar_listing
from names import full_name

from tracker.config.schema import Config, ConsulSDConfig, StaticTargets, TargetGroup
from tracker.discovery import consul as consul_module
from tracker.discovery.consul import CatalogQuery, discover_consul
from tracker.discovery.scrape import Scraper
from tracker.discovery.targetset import TargetFinder
from tracker.errors import ProbeError
from tracker.observability.logs import record_fields
from tracker.ordering.index import Index

CATALOG = "/v1/catalog/service/solana-sidecar"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=client_tls(), timeout=5) as c:
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
        (catalog([node(None, 1)]), "entry 0: Address: not a string: None"),
        # none usable: the first one's reason
        (
            catalog([node("", 1), node("10.0.0.1", 0)]),
            "entry 0: Address: not a host name or IP: ''",
        ),
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


async def test_an_unusable_registration_costs_itself_not_the_answer(
    nursery, client, caplog: pytest.LogCaptureFixture
) -> None:
    """One instance registered without a port (Consul gives 0) or with a name that is no
    host: it failed the whole answer, so no new sidecar was added while it was registered,
    and after a start or a reload the group had none of Consul's. It is skipped and
    logged; the others are the answer."""
    entries = [node("10.0.0.1", 13080), node("10.6.6.6", 0), node("evil host", 1)]
    entries.append(node("10.0.0.2", 13080))
    base = await nursery.start(serve_app, ScriptedApp({CATALOG: catalog(entries)}))
    targets = await discover_consul(client, CatalogQuery(base, "solana-sidecar"))
    assert targets == ["10.0.0.1:13080", "10.0.0.2:13080"]
    [skipped] = [r for r in caplog.records if r.getMessage() == "consul_entry_skipped"]
    fields = getattr(skipped, "tracker_fields", {})
    assert fields["count"] == 2 and fields["reason"] == (
        "entry 1: ServicePort: not a port number: 0"
    ), fields


async def test_too_many_instances(nursery, client) -> None:
    entries = [node(f"10.0.{i // 250}.{i % 250}", 13080) for i in range(11)]
    base = await nursery.start(serve_app, ScriptedApp({CATALOG: catalog(entries)}))
    with pytest.raises(ProbeError, match=r"^more than 10 entries$"):
        await discover_consul(client, CatalogQuery(base, "solana-sidecar"), max_entries=10)
    assert (
        len(await discover_consul(client, CatalogQuery(base, "solana-sidecar"), max_entries=11))
        == 11
    )


def consul_config(consul: str, **changed: str) -> Config:
    """One group ``g`` of Consul's sidecars: ``solana-sidecar`` of Consul at ``consul``,
    with a token, a datacenter and a filter, but for what ``changed`` says."""
    settings = {
        "host": consul,
        "service": "solana-sidecar",
        "token": "t",
        "datacenter": "dc1",
        "filter": 'Node != "x"',
    }
    sd = ConsulSDConfig(**(settings | changed))  # built anew: resolved_token follows token
    return Config(target_groups=(TargetGroup(group="g", consul_sd_config=sd),))


def finder(client: httpx.AsyncClient) -> TargetFinder:
    return TargetFinder(lambda _group: client, lambda *_answered: None)


async def sidecars(found: TargetFinder, config: Config) -> list[str]:
    return [t.location for t in await found.discover(config)]


async def test_a_failed_query_keeps_its_own_last_answer(nursery, client) -> None:
    """A Consul that stops answering does not empty the group: the same query's last list
    stays (a timeout or an ACL hiccup must not take every sidecar away)."""
    app = ScriptedApp({CATALOG: catalog([node("10.0.0.1", 13080)])})
    base = await nursery.start(serve_app, app)
    found = finder(client)
    assert await sidecars(found, consul_config(base)) == ["http://10.0.0.1:13080"]
    app.routes[CATALOG] = Answer(500, (), b"rpc error")
    assert await sidecars(found, consul_config(base)) == ["http://10.0.0.1:13080"]
    assert len(app.requests) == 2  # asked, and failed


@pytest.mark.parametrize(
    "changed",
    [
        {"host": "another Consul"},
        {"service": "another-sidecar"},
        {"datacenter": "dc2"},
        {"filter": 'Node == "x"'},
    ],
    ids=lambda changed: next(iter(changed)),
)
async def test_a_failed_query_a_reload_changed_keeps_nothing_of_the_old_one(
    nursery, client, changed: dict[str, str]
) -> None:
    """After a reload that changed the query, the old query's sidecars are another
    service's (or another Consul's view): a failure of the new query leaves the group none,
    where they stayed as long as it failed, probed, ranked, served and sent the group's
    credentials (docs/configuration.md, ``consul_sd_config``)."""
    app = ScriptedApp({CATALOG: catalog([node("10.0.0.1", 13080)])})
    base = await nursery.start(serve_app, app)
    found = finder(client)
    assert await sidecars(found, consul_config(base)) == ["http://10.0.0.1:13080"]
    app.routes[CATALOG] = Answer(500, (), b"rpc error")  # whatever is asked now fails
    if "host" in changed:
        changed = {"host": await nursery.start(serve_app, ScriptedApp())}  # 404 to all
    assert await sidecars(found, consul_config(base, **changed)) == []
    # Back to the old query, failing too: its answer was the other query's; none kept.
    assert await sidecars(found, consul_config(base)) == []


async def test_a_group_removed_and_added_again_keeps_nothing_of_its_old_answer(
    nursery, client
) -> None:
    """A reload that removes a group drops its Consul answer: added again later, with
    Consul failing, the group has no sidecar of a list answered before it was gone."""
    app = ScriptedApp({CATALOG: catalog([node("10.0.0.1", 13080)])})
    base = await nursery.start(serve_app, app)
    found = finder(client)
    assert await sidecars(found, consul_config(base)) == ["http://10.0.0.1:13080"]
    assert await sidecars(found, Config(target_groups=())) == []
    app.routes[CATALOG] = Answer(500, (), b"rpc error")
    assert await sidecars(found, consul_config(base)) == []


async def test_a_group_removed_and_added_again_within_one_round_keeps_nothing(
    nursery, client
) -> None:
    """Two reloads while one round goes on (the group removed, then added again) drop the
    group's Consul answer, and an answer that comes for it after the removal is not kept:
    with Consul failing, the group added again has no sidecar of before."""
    app = ScriptedApp({CATALOG: catalog([node("10.0.0.1", 13080)])})
    base = await nursery.start(serve_app, app)
    found = finder(client)
    assert await sidecars(found, consul_config(base)) == ["http://10.0.0.1:13080"]
    found.use(Config(target_groups=()))  # a reload removes the group
    found.use(consul_config(base))  # and another adds it again
    app.routes[CATALOG] = Answer(500, (), b"rpc error")
    assert await sidecars(found, consul_config(base)) == []

    asked, answer = trio.Event(), trio.Event()

    async def slow_consul(_request: Any) -> Answer:
        asked.set()
        await answer.wait()
        return catalog([node("10.0.0.2", 13080)])

    app.routes[CATALOG] = slow_consul
    late: list[str] = []

    async def round_under_the_old_config() -> None:
        late.extend(await sidecars(found, consul_config(base)))

    async with trio.open_nursery() as round_:
        round_.start_soon(round_under_the_old_config)
        await asked.wait()
        found.use(Config(target_groups=()))  # a reload removes the group meanwhile
        answer.set()
    assert late == ["http://10.0.0.2:13080"]  # that round's own list
    app.routes[CATALOG] = Answer(500, (), b"rpc error")
    assert await sidecars(found, consul_config(base)) == []


FULL = full_name(345_600_000)
DATA = archive_bytes(MiB, seed=5)


async def test_a_reload_to_another_service_drops_the_old_services_sidecars(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Through the tracker: a reload to a Consul service that fails leaves the group
    without the old service's sidecar (``/v1/targets``, ``/v1/snapshots``), which is never
    probed again; it stayed, and was probed with the group's credentials, as long as the
    new query failed."""
    up = FakeUpstream(files={FULL: DATA}, listing=sidecar_listing({FULL: DATA}))
    await nursery.start(up.run)
    port = int(up.base.rsplit(":", 1)[1])
    app = ScriptedApp(
        {
            "/v1/catalog/service/svc-a": catalog([node("127.0.0.1", port)]),
            "/v1/catalog/service/svc-b": Answer(500, (), b"no such service here"),
        }
    )
    consul = await nursery.start(serve_app, app)

    def settings(service: str) -> dict[str, Any]:
        return {
            "internal_listen": "127.0.0.1:0",
            "scrape_interval": "300ms",
            "verify_archives": False,
            "target_groups": [
                {
                    "group": "g",
                    "bearer_auth": {"token": "group-token"},
                    "consul_sd_config": {"host": consul, "service": service},
                }
            ],
        }

    def asked_b() -> int:
        return app.paths().count("/v1/catalog/service/svc-b")

    async def rounds_asked_b(count: int) -> bool:
        return asked_b() >= count

    path = write_config(tmp_path, settings("svc-a"))
    public, internal = await start_tracker(nursery, path)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

        async def listed() -> bool:
            return bool((await client.get(f"{public}/v1/snapshots")).json())

        await wait_until(listed)
        write_config(tmp_path, settings("svc-b"))
        assert (await client.post(f"{internal}/reload")).status_code == 200
        # A round's discovery comes after the previous round's probes: from the second
        # question of svc-b on, the round before was one under the new config.
        await wait_until(lambda: rounds_asked_b(2))
        probes = len(up.seen)
        await wait_until(lambda: rounds_asked_b(3))
        targets = (await client.get(f"{public}/v1/targets")).json()
        snapshots = (await client.get(f"{public}/v1/snapshots")).json()
    assert [t["target"] for t in targets if t["group"] == "g"] == []
    assert snapshots == []
    assert up.seen[probes:] == []  # no probe, no token sent


async def test_an_answer_failing_as_no_rule_foresaw_costs_that_groups_question_only(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What no rule of the catalog's reading names (here a library's ValueError on junk)
    raised out of the round's discovery: the round of every group ended there, each round
    while Consul answered so, and no target of any group was probed. It costs that group's
    question now: logged with its traceback, the group keeps the sidecars its last answer
    to the same query listed, and every group is probed (docs/architecture.md,
    "Failures")."""
    listed = Sidecar(body=[sidecar_info((full_name(100), 1))])
    listed_up = await nursery.start(serve_app, listed.app())
    other = Sidecar(body=[sidecar_info((full_name(200), 1))])
    other_up = await nursery.start(serve_app, other.app())
    app = ScriptedApp({CATALOG: catalog([node("127.0.0.1", int(listed_up.rsplit(":", 1)[1]))])})
    consul = await nursery.start(serve_app, app)
    sd = ConsulSDConfig(host=consul, service="solana-sidecar")
    config = Config(
        target_groups=(
            TargetGroup(group="c", consul_sd_config=sd),
            TargetGroup(group="s", static_targets=StaticTargets((other_up[7:],))),
        )
    )

    def unforeseen(_body: bytes | bytearray, _max_entries: int) -> list[str]:
        raise ValueError("a library's own complaint")

    index = Index()
    scraper = Scraper(config, index)
    try:
        await scraper.scrape_round()
        monkeypatch.setattr(consul_module, "parse_catalog", unforeseen)
        with caplog.at_level(logging.ERROR, logger="tracker"):
            await scraper.scrape_round()
    finally:
        await scraper.aclose()
    assert len(app.requests) == 2  # asked in both rounds
    assert (len(listed.requests), len(other.requests)) == (2, 2)  # both groups probed twice
    assert {key.group for key in index.keys()} == {"c", "s"}  # noqa: SIM118 (an Index)
    (failed,) = [record_fields(r)[1] for r in caplog.records if r.msg == "consul_discovery_error"]
    assert failed["group"] == "c"
    assert failed["error"] == "ValueError: a library's own complaint"


async def test_every_groups_consul_is_asked_at_once(nursery: trio.Nursery) -> None:
    """Two groups whose Consuls never answer: the second was asked only once the first had
    timed out, so a round's probes, every group's, waited for the sum of their timeouts
    (three groups of one Consul that hangs: 30 s a round at a 15 s interval). Every group's
    discovery now runs at once: a round waits for the slowest, once."""
    asked, both = [0], trio.Event()

    async def hanging_consul(stream: trio.SocketStream) -> None:
        await read_head(stream)
        asked[0] += 1
        if asked[0] == 2:
            both.set()
        await trio.sleep_forever()

    groups = []
    for name in ("a", "b"):
        host = await nursery.start(serve_raw, hanging_consul)
        sd = ConsulSDConfig(host=host, service="solana-sidecar")
        groups.append(TargetGroup(group=name, consul_sd_config=sd))
    config = Config(scrape_interval=60, scrape_timeout=60, target_groups=tuple(groups))
    async with httpx.AsyncClient(timeout=None) as client, trio.open_nursery() as round_:
        round_.start_soon(finder(client).discover, config)
        with trio.fail_after(5):  # far below the 60 s each question may take
            await both.wait()
        round_.cancel_scope.cancel()
