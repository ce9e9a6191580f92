"""Redirect mode hands clients a discovered node's archive only at the node's own address
(docs/http-api.md, "Trust"): a real tracker on 127.0.0.1, a fake ``getClusterNodes`` RPC,
and nodes that are real HTTP servers, each on a loopback address of its own.

A node (anyone can be one) answered ``Location: http://localhost:PORT/...``: the tracker
checked the name's addresses by the egress policy and handed the URL to clients, who
resolve the name themselves, perhaps to another address (DNS rebinding, split horizon).
Agave answers ``Location: /{name}``, its own origin: such a node is listed and handed out as
before. Configured targets keep their rule (the operator chose them), and in proxy mode only
the tracker connects, through the egress check: another origin's archive is taken there.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from cluster_answers import node_entry
from helpers_server import serve_app
from helpers_sources import Answer, ScriptedApp
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from names import full_name
from test_cluster import rpc_app

FULL_PATH, INCR_PATH = "/snapshot.tar.bz2", "/incremental-snapshot.tar.bz2"
#: The configured target's full, the agave-like node's and the newest: the one whose node
#: sends clients to another origin.
CONFIGURED, HOME, AWAY = full_name(200), full_name(300), full_name(400)
ELSEWHERE = "not at the node's own address: in redirect mode a discovered node's archives"


def redirect(location: str) -> Answer:
    return Answer(303, (("location", location),))


def write(tmp_path: Path, rpc: str, configured: str, *, proxy: bool) -> Path:
    settings: dict[str, Any] = {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "60s",  # rounds at the start and at each reload only
        "verify_archives": False,
        "proxy_snapshot_downloads": proxy,
        "egress": {"allow": ["127.0.0.0/8", "::1/128"]},
        "target_groups": [
            {
                "group": "g",
                "http_targets": {"targets": [configured]},
                "cluster_discovery": {"rpc": [rpc]},
            }
        ],
    }
    return write_config(tmp_path, settings)


async def test_redirect_mode_sends_clients_only_to_a_discovered_nodes_own_address(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    elsewhere = await nursery.start(serve_app, ScriptedApp())
    port = elsewhere.rsplit(":", 1)[1]
    home = ScriptedApp({FULL_PATH: redirect(f"/{HOME}"), INCR_PATH: Answer(404)})  # agave's
    away = ScriptedApp({FULL_PATH: redirect(f"http://localhost:{port}/{AWAY}")})
    configured = ScriptedApp({FULL_PATH: redirect(f"http://localhost:{port}/{CONFIGURED}")})
    # two of each: an archive only discovered nodes advertise needs two hosts to be ranked
    home_url, home_too = [
        await nursery.start(partial(serve_app, home, host=f"127.0.0.{n}")) for n in (2, 3)
    ]
    away_url, away_too = [
        await nursery.start(partial(serve_app, away, host=f"127.0.0.{n}")) for n in (4, 5)
    ]
    configured_url = await nursery.start(serve_app, configured)
    urls = (home_url, home_too, away_url, away_too)
    nodes = [node_entry(n, url.removeprefix("http://")) for n, url in enumerate(urls)]
    rpc = await nursery.start(serve_app, rpc_app([nodes]))
    config = write(tmp_path, rpc, configured_url, proxy=False)
    public, internal = await start_tracker(nursery, config)

    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:

        async def targets() -> dict[str, dict[str, Any]]:
            answer = await client.get(f"{public}/v1/targets?group=g")
            return {t["target"]: t for t in answer.json()}

        async def listed() -> set[str]:
            answer = await client.get(f"{public}/v1/snapshots?group=g")
            return {f["file_name"].rsplit("/", 1)[-1] for s in answer.json() for f in s["files"]}

        async def probed(health: str) -> bool:
            found = await targets()
            if not all(url in found for url in (configured_url, *urls)):
                return False
            healths = [found[url]["health"] for url in (configured_url, *urls)]
            return healths == ["up", "up", "up", health, health]

        await wait_until(lambda: probed("down"))
        assert ELSEWHERE in (await targets())[away_url]["last_error"]
        assert await listed() == {CONFIGURED, HOME}, await listed()
        best = await client.get(f"{public}/v1/snapshot.tar.bz2?group=g")
        # the newest archive a client may be sent to: the node's own address, never the
        # name the other node gave (its AWAY is newer still)
        assert best.status_code == 303
        assert best.headers["location"] in (f"{home_url}/{HOME}", f"{home_too}/{HOME}")
        assert (await client.get(f"{public}/v1/g/{AWAY}")).status_code == 404

        # proxy mode: only the tracker connects, through the egress check: taken
        write(tmp_path, rpc, configured_url, proxy=True)
        assert (await client.post(f"{internal}/reload")).status_code == 200
        await wait_until(lambda: probed("up"))
        await wait_until(lambda: listed_is(listed, {CONFIGURED, HOME, AWAY}))

        # back to redirect mode: what the node listed in proxy mode goes with the reload,
        # not max_target_failures rounds later
        write(tmp_path, rpc, configured_url, proxy=False)
        assert (await client.post(f"{internal}/reload")).status_code == 200
        await wait_until(lambda: probed("down"))
        assert AWAY not in await listed()


async def listed_is(listed: Any, names: set[str]) -> bool:
    return bool(await listed() == names)
