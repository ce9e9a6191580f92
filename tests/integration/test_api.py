"""The public API against a real tracker and real upstreams, one golden test per source kind."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fakes import Rpc, Sidecar, Validator, sidecar_info
from helpers_ports import REFUSED
from helpers_server import serve_app
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_wire import raw_request
from names import full_name, incremental_name

TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


async def tracker_with(nursery: trio.Nursery, tmp_path: Path, **settings: Any) -> str:
    settings.setdefault("scrape_interval", "200ms")
    path = write_config(tmp_path, settings)
    return (await start_tracker(nursery, path))[0]


async def snapshots_of(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    return body


async def wait_for_snapshots(client: httpx.AsyncClient, base: str, count: int = 1) -> None:
    async def ready() -> bool:
        return len(await snapshots_of(client, f"{base}/v1/snapshots")) >= count

    await wait_until(ready)


async def test_golden_sidecar(nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient):
    full, incr = full_name(200), incremental_name(200, 300)
    # The sidecar lists the chain oldest first: the tracker must reorder it newest first.
    info = sidecar_info((incr, 1000), (full, 5000))
    info["files"].reverse()
    sidecar = Sidecar(body=[info])
    upstream = await nursery.start(serve_app, sidecar.app())
    host = upstream.removeprefix("http://")
    base = await tracker_with(
        nursery,
        tmp_path,
        target_groups=[{"group": "mainnet", "static_targets": {"targets": [host]}}],
    )
    await wait_for_snapshots(client, base)
    [source] = await snapshots_of(client, f"{base}/v1/snapshots")
    updated = source.pop("updated_at")
    assert TIME_RE.fullmatch(updated)
    # The probe's duration, behind the ranking (docs/http-api.md#trust; no throughput measured yet).
    assert isinstance(source.pop("latency_ms"), int) and "throughput_bps" not in source
    parts = incr.split("-")
    assert source == {
        "slot": 300,
        "base_slot": 200,
        "hash": parts[4].split(".")[0],
        "files": [
            {
                "file_name": incr,
                "slot": 300,
                "base_slot": 200,
                "hash": parts[4].split(".")[0],
                "ext": ".tar.zst",
                "mod_time": "2026-11-21T10:00:00Z",
                "size": 1000,
                # Where this source's copy is (the sidecar's file route), for every mode.
                "url": f"{upstream}/v1/snapshot/{incr}",
            },
            {
                "file_name": full,
                "slot": 200,
                "hash": full.split("-")[2].split(".")[0],
                "ext": ".tar.zst",
                "mod_time": "2026-11-21T10:00:00Z",
                "size": 5000,
                "url": f"{upstream}/v1/snapshot/{full}",
            },
        ],
        "size": 6000,
        "target": upstream,
        "group": "mainnet",
    }
    # The short redirect points at the sidecar's own file URL (redirect mode).
    response = await client.get(f"{base}/v1/incremental-snapshot.tar.bz2")
    assert response.status_code == 303
    assert response.headers["location"] == f"{upstream}/v1/snapshot/{incr}"
    assert "location" in [k.decode() for k, _ in response.headers.raw]


async def test_golden_http_target(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    full, incr = full_name(1000, ext=".tar.bz2"), incremental_name(1000, 1100)
    # Sizes come from one HEAD of each archive URL (README.md#clients): the full's is answered.
    validator = Validator(full=full, incremental=incr, sizes={full: 96_636_764_160})
    upstream = await nursery.start(serve_app, validator.app())
    base = await tracker_with(
        nursery,
        tmp_path,
        target_groups=[{"group": "testnet", "http_targets": {"targets": [upstream]}}],
    )
    await wait_for_snapshots(client, base, 2)

    async def sized() -> bool:  # a HEAD cut short on a loaded host is asked again next round
        return all(s["size"] for s in await snapshots_of(client, f"{base}/v1/snapshots"))

    await wait_until(sized)
    sources = await snapshots_of(client, f"{base}/v1/snapshots?group=testnet")
    for s in sources:
        assert TIME_RE.fullmatch(s.pop("updated_at"))
        assert isinstance(s.pop("latency_ms"), int)
    fhash, ihash = full.split("-")[2].split(".")[0], incr.split("-")[4].split(".")[0]
    full_file = {
        "file_name": f"{upstream}/{full}",
        "slot": 1000,
        "hash": fhash,
        "ext": ".tar.bz2",
        "size": 96_636_764_160,
        "url": f"{upstream}/{full}",
    }
    assert sources == [
        {
            "slot": 1100,
            "base_slot": 1000,
            "hash": ihash,
            "files": [
                {
                    "file_name": f"{upstream}/{incr}",
                    "slot": 1100,
                    "base_slot": 1000,
                    "hash": ihash,
                    "ext": ".tar.zst",
                    "url": f"{upstream}/{incr}",
                },
                full_file,
            ],
            "size": 96_636_764_160,
            "target": upstream,
            "group": "testnet",
        },
        {
            "slot": 1000,
            "base_slot": 1000,
            "hash": fhash,
            "files": [full_file],
            "size": 96_636_764_160,
            "target": upstream,
            "group": "testnet",
        },
    ]
    # A full's own info has base_slot = its slot: slot=1000 lists what applies on top of it.
    at = await snapshots_of(client, f"{base}/v1/snapshots?slot=1000")
    assert [s["slot"] for s in at] == [1100, 1000]
    assert await snapshots_of(client, f"{base}/v1/snapshots?slot=999") == []

    # 0 or nothing is no filter, as the Go tracker reads it (its clients send slot=0)
    # (a scrape round may run between two listings: its time and latency are no part of it)
    def listed(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in s.items() if k not in ("updated_at", "latency_ms")} for s in snapshots
        ]

    every = listed(await snapshots_of(client, f"{base}/v1/snapshots"))
    assert every  # (slot=0 listed none: no base_slot is 0)
    for query in ("slot=0", "slot="):
        assert listed(await snapshots_of(client, f"{base}/v1/snapshots?{query}")) == every
    response = await client.head(f"{base}/v1/snapshot.tar.zst?group=testnet")
    assert response.status_code == 303
    assert response.headers["location"] == f"{upstream}/{full}"


async def test_golden_local(nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient):
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    full, incr = full_name(50), incremental_name(50, 70)
    (ledger / full).write_bytes(b"F" * 300)
    (ledger / incr).write_bytes(b"I" * 30)
    (ledger / "not-a-snapshot.txt").write_text("x")
    base = await tracker_with(
        nursery,
        tmp_path,
        target_groups=[{"group": "local", "local_targets": {"paths": ["ledger"]}}],
        verify_archives=False,  # random blobs (a failed check keeps a local file out)
    )
    await wait_for_snapshots(client, base, 2)
    [incr_src, full_src] = await snapshots_of(client, f"{base}/v1/best_snapshots")
    assert incr_src["target"] == str(ledger)
    assert [f["file_name"] for f in incr_src["files"]] == [incr, full]
    assert [f["size"] for f in incr_src["files"]] == [30, 300]
    assert all(TIME_RE.fullmatch(f["mod_time"]) for f in incr_src["files"])
    assert incr_src["size"] == 330 and full_src["slot"] == 50
    # A local copy is fetched from the tracker's own route: its absolute URL is the file's url.
    urls = [f["url"] for f in incr_src["files"]]
    assert urls == [f"{base}/v1/local/{incr}", f"{base}/v1/local/{full}"]
    # Local files are served by the tracker itself: relative redirects.
    response = await client.get(f"{base}/v1/snapshot.tar.bz2")
    assert response.headers["location"] == f"/v1/local/{full}"
    response = await client.get(f"{base}/snapshot.tar.bz2")
    assert response.headers["location"] == f"/{full}"
    response = await client.get(f"{base}/incremental-snapshot.tar.zst")
    assert response.headers["location"] == f"/{incr}"
    body = await client.get(f"{base}/{incr}")
    assert body.content == b"I" * 30 and body.headers["content-length"] == "30"


@pytest.fixture
async def two_groups(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> tuple[str, Sidecar, str]:
    full, incr = full_name(200), incremental_name(200, 300)
    old_full = full_name(100)
    sidecar = Sidecar(
        body=[
            sidecar_info((incr, 10), (full, 100)),
            sidecar_info((full, 100)),
            sidecar_info((old_full, 90)),
        ]
    )
    upstream = await nursery.start(serve_app, sidecar.app())
    host = upstream.removeprefix("http://")
    empty = Sidecar(body=[])
    empty_up = await nursery.start(serve_app, empty.app())
    base = await tracker_with(
        nursery,
        tmp_path,
        default_group="main",
        target_groups=[
            {"group": "main", "static_targets": {"targets": [host]}},
            {"group": "empty", "static_targets": {"targets": [empty_up.removeprefix("http://")]}},
        ],
    )
    await wait_for_snapshots(client, base, 3)
    return base, sidecar, upstream


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("ext", ["tar.bz2", "tar.zst"])
async def test_short_redirects(
    two_groups: tuple[str, Sidecar, str], client: httpx.AsyncClient, method: str, ext: str
) -> None:
    base, _, upstream = two_groups
    for path, slot in ((f"snapshot.{ext}", 200), (f"incremental-snapshot.{ext}", 300)):
        for url in (f"{base}/v1/{path}", f"{base}/v1/{path}?group=main"):
            response = await client.request(method, url)
            assert response.status_code == 303, url
            assert f"-{slot}-" in response.headers["location"]
            assert response.headers["location"].startswith(f"{upstream}/v1/snapshot/")
        # A root alias points at the tracker's own root concrete route (README.md#clients), which
        # redirects to the source in redirect mode.
        alias = await client.request(method, f"{base}/{path}")
        location = alias.headers["location"]
        assert alias.status_code == 303 and location.startswith("/") and f"-{slot}-" in location
        concrete = await client.request(method, base + location)
        assert concrete.status_code == 303
        assert concrete.headers["location"] == f"{upstream}/v1/snapshot{location}"
        # A group with nothing: 202 on /v1/, 404 with an empty body on root aliases.
        none = await client.request(method, f"{base}/v1/{path}?group=empty")
        assert none.status_code == 202
        unknown = await client.request(method, f"{base}/v1/{path}?group=nope")
        assert unknown.status_code == 404


async def test_root_alias_404_has_empty_body(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    empty = Sidecar(body=[])
    up = await nursery.start(serve_app, empty.app())
    base = await tracker_with(
        nursery, tmp_path, target_groups=[{"group": "g", "static_targets": {"targets": [up[7:]]}}]
    )
    for path in ("snapshot.tar.bz2", "incremental-snapshot.tar.bz2", "snapshot.tar.zst"):
        response = await client.get(f"{base}/{path}")
        assert response.status_code == 404 and response.content == b""
        assert (await client.get(f"{base}/v1/{path}")).text == "no snapshot available\n"


async def test_a_tracker_with_no_group_answers_no_snapshot_not_a_bad_group(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """``check-config`` accepts a config with no target group (and warns). Its requests that
    named no group were answered 400 "malformed group name", blaming a group the client
    never sent: monitoring reading ``Health`` got an answer it did not know."""
    base = await tracker_with(nursery, tmp_path, target_groups=[])
    for path in ("snapshot.tar.bz2", "incremental-snapshot.tar.zst"):
        answer = await client.get(f"{base}/v1/{path}")
        assert (answer.status_code, answer.text) == (202, "no snapshot available\n")
    health = await client.get(f"{base}/v1/health")
    assert health.status_code == 500 and health.json()["Health"] == "no snapshots found"
    assert (await client.get(f"{base}/v1/{full_name(7)}")).status_code == 404
    assert (await client.get(f"{base}/v1/snapshot.tar.bz2?group=nope")).status_code == 404


async def test_concrete_route_redirects_to_source(
    two_groups: tuple[str, Sidecar, str], client: httpx.AsyncClient
) -> None:
    base, sidecar, upstream = two_groups
    name = sidecar.body[2]["files"][0]["file_name"]
    for url in (f"{base}/v1/{name}", f"{base}/v1/{name}?group=main", f"{base}/{name}"):
        response = await client.head(url)
        assert response.status_code == 303
        assert response.headers["location"] == f"{upstream}/v1/snapshot/{name}"
    assert (await client.get(f"{base}/v1/{name}?group=empty")).status_code == 404
    assert (await client.get(f"{base}/v1/{full_name(7)}")).status_code == 404


async def test_a_doubled_slash_inside_a_path_is_a_404_not_a_redirect_built_from_host(
    two_groups: tuple[str, Sidecar, str],
) -> None:
    """werkzeug answered ``/v1//snapshots`` (and any route with ``//`` inside) with a 308:
    an HTML page, and a ``location`` made of the request's own ``Host`` (neither
    ``public_url`` nor ``X-Forwarded-*``: ``http://`` behind a TLS proxy, the path prefix
    lost) that kept the query string. No route has an empty segment: 404, in its words."""
    base, sidecar, _ = two_groups
    name = sidecar.body[2]["files"][0]["file_name"]
    forwarded = [("x-forwarded-proto", "https"), ("x-forwarded-host", "tracker.example")]
    for path, body in [
        ("/v1//snapshots?group=main", b'{"error":"not found"}'),
        ("/v1//snapshot.tar.bz2?group=main", b"not found\n"),
        (f"/v1/main//{name}", b"not found\n"),
    ]:
        for method in ("GET", "HEAD"):
            wire = await raw_request(base, path, method=method, headers=forwarded)
            assert (wire.status, wire.header("location")) == (404, None), (path, wire.headers)
            assert wire.body == (b"" if method == "HEAD" else body), path
    # One slash too many in front is no empty segment: the route itself, as before.
    assert (await raw_request(base, "//v1/snapshots?group=main")).status == 200


async def test_best_snapshots_and_max(
    two_groups: tuple[str, Sidecar, str], client: httpx.AsyncClient
) -> None:
    base, _, _ = two_groups
    best = await snapshots_of(client, f"{base}/v1/best_snapshots")
    assert [s["slot"] for s in best] == [300, 200, 100]
    assert [s["slot"] for s in await snapshots_of(client, f"{base}/v1/best_snapshots?max=1")] == [
        300
    ]
    for outside in ("0", "26", "-3"):
        got = await snapshots_of(client, f"{base}/v1/best_snapshots?max={outside}")
        assert len(got) == 3
    assert await snapshots_of(client, f"{base}/v1/best_snapshots?group=empty") == []
    assert (await client.get(f"{base}/v1/best_snapshots?group=nope")).status_code == 404


@pytest.mark.parametrize(
    "query",
    ["max=abc", "max=1.5", "max=" + "9" * 30],
)
async def test_bad_max_is_400(
    two_groups: tuple[str, Sidecar, str], client: httpx.AsyncClient, query: str
) -> None:
    response = await client.get(f"{two_groups[0]}/v1/best_snapshots?{query}")
    assert response.status_code == 400
    assert "max" in response.json()["error"]


@pytest.mark.parametrize("slot", ["-1", "abc", "9" * 30, "18446744073709551616"])
async def test_bad_slot_is_400(
    two_groups: tuple[str, Sidecar, str], client: httpx.AsyncClient, slot: str
) -> None:
    response = await client.get(f"{two_groups[0]}/v1/snapshots?slot={slot}")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert "slot" in response.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/..%2f..%2fetc%2fpasswd",
        "/v1/snapshot-1-..%2F..%2Fetc.tar",
        "/v1/%2e%2e",
        "/v1/snapshot-100-abc%00.tar.zst",
        "/snapshot-100-abc%00.tar.zst",
        "/v1/" + "a" * 10_000,
        "/" + "snapshot-1-" + "1" * 10_000 + ".tar",
        "/v1/snapshot.tar.bz2?group=..%2F..",
        "/v1/snapshot.tar.bz2?group=a%00b",
    ],
)
async def test_bad_names_are_4xx(
    two_groups: tuple[str, Sidecar, str], client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(two_groups[0] + path)
    assert response.status_code in (400, 404), response.status_code
    assert "Traceback" not in response.text


async def test_targets_and_health(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    sidecar = Sidecar(body=[sidecar_info((full_name(1000), 1))])
    up = await nursery.start(serve_app, sidecar.app())
    rpc = Rpc(slot=1500)
    rpc_url = await nursery.start(serve_app, rpc.app())
    base = await tracker_with(
        nursery,
        tmp_path,
        rpc=rpc_url,
        max_snapshot_age=600,
        target_groups=[{"group": "g", "static_targets": {"targets": [up[7:], f"{REFUSED}"]}}],
    )
    await wait_for_snapshots(client, base)
    targets = (await client.get(f"{base}/v1/targets")).json()
    by_target = {t["target"]: t for t in targets}
    assert by_target[up]["health"] == "up" and by_target[up]["snapshots"] == 1
    dead = by_target[f"http://{REFUSED}"]
    assert dead["health"] in ("down", "unknown")
    assert set(dead) >= {
        "group",
        "target",
        "health",
        "last_error",
        "last_scrape",
        "last_duration_ms",
        "snapshots",
    }
    health = await client.get(f"{base}/v1/health")
    assert health.status_code == 200
    assert health.json() == {"MaxSnapshot": 1000, "CurrentSlot": 1500, "Health": "healthy"}
    assert rpc.seen[-1]["method"] == "getSlot"
    assert rpc.seen[-1]["params"] == [{"commitment": "finalized"}]
    rpc.slot = 1700
    too_old = await client.get(f"{base}/v1/health")
    # the Go tracker's body word for word (scripts compare Health), the detail beside it
    assert too_old.status_code == 503
    assert too_old.json() == {
        "MaxSnapshot": 1000,
        "CurrentSlot": 1700,
        "Health": "snapshot too old",
        "Detail": "snapshot is 700 slots old",
    }
    rpc.status = 500
    unhealthy = await client.get(f"{base}/v1/health")
    assert unhealthy.status_code == 502
    assert unhealthy.json() == {
        "MaxSnapshot": 1000,
        "CurrentSlot": 0,
        "Health": "rpc unhealthy",
        "Detail": "rpc unreachable: HTTP 500",
    }
    sidecar.body = []

    async def emptied() -> bool:
        return (await client.get(f"{base}/v1/health")).status_code == 500

    await wait_until(emptied)
    none = (await client.get(f"{base}/v1/health")).json()
    assert none == {"MaxSnapshot": 0, "CurrentSlot": 0, "Health": "no snapshots found"}


async def test_redirect_headers_are_lower_case_on_the_wire(
    two_groups: tuple[str, Sidecar, str],
) -> None:
    base = two_groups[0]
    host, port = base.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"GET /snapshot.tar.bz2 HTTP/1.1\r\nhost: x\r\n\r\n")
        raw = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in raw:
                raw += await stream.receive_some(4096)
    head = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"HTTP/1.1 303 See Other"  # the reason phrase too (curl -I shows it)
    names = [line.split(b":", 1)[0] for line in head[1:]]
    assert b"location" in names
    assert all(name == name.lower() for name in names), names


@pytest.mark.parametrize(
    "path",
    [
        "/v1/snapshots",
        "/v1/best_snapshots",
        "/v1/targets",
        "/v1/health",
        "/v1/snapshot.tar.bz2",
        "/v1/incremental-snapshot.tar.zst",
    ],
)
async def test_unknown_group_is_404_everywhere(
    two_groups: tuple[str, Sidecar, str], client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(f"{two_groups[0]}{path}?group=nope")
    assert response.status_code == 404
    assert "nope" in response.text


async def test_archive_answers_name_the_archive(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    full = full_name(50)
    (ledger / full).write_bytes(b"F" * 100)
    base = await tracker_with(
        nursery,
        tmp_path,
        target_groups=[{"group": "l", "local_targets": {"paths": ["ledger"]}}],
        verify_archives=False,
    )
    await wait_for_snapshots(client, base)
    response = await client.get(f"{base}/snapshot.tar.bz2", follow_redirects=True)
    assert response.headers["content-disposition"] == f'attachment; filename="{full}"'
    ranged = await client.get(f"{base}/{full}", headers={"range": "bytes=0-9"})
    assert ranged.status_code == 206 and "content-disposition" in ranged.headers


async def test_health_caps_what_it_reads_from_the_rpc_node(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    from quart_trio import QuartTrio

    huge = QuartTrio(__name__)

    @huge.post("/")
    async def endless() -> Any:
        import quart

        async def body() -> Any:
            for _ in range(1024):  # 1 GiB claimed and streamed: must be cut off, not buffered
                yield b" " * (1024 * 1024)

        response = quart.Response(body(), content_type="application/json")
        response.headers["content-length"] = str(1024 * 1024 * 1024)
        return response

    rpc_url = await nursery.start(serve_app, huge)
    sidecar = Sidecar(body=[sidecar_info((full_name(1000), 1))])
    up = await nursery.start(serve_app, sidecar.app())
    base = await tracker_with(
        nursery,
        tmp_path,
        rpc=rpc_url,
        target_groups=[{"group": "g", "static_targets": {"targets": [up[7:]]}}],
    )
    await wait_for_snapshots(client, base)
    with trio.fail_after(5):
        health = await client.get(f"{base}/v1/health")
    assert health.status_code == 502
    assert health.json()["Health"] == "rpc unhealthy" and "limit" in health.json()["Detail"]


async def test_query_free_archive_route(
    two_groups: tuple[str, Sidecar, str], client: httpx.AsyncClient
) -> None:
    """``/v1/{group}/{name}`` answers like ``/v1/{name}?group={group}`` (README.md#clients)."""
    base, sidecar, upstream = two_groups
    name = sidecar.body[2]["files"][0]["file_name"]
    response = await client.head(f"{base}/v1/main/{name}")
    assert response.status_code == 303
    assert response.headers["location"] == f"{upstream}/v1/snapshot/{name}"
    assert (await client.get(f"{base}/v1/empty/{name}")).status_code == 404
    unknown = await client.get(f"{base}/v1/nope/{name}")
    assert (unknown.status_code, unknown.text) == (404, "unknown group 'nope'\n")
    assert (await client.get(f"{base}/v1/a%00b/{name}")).status_code == 400
    assert (await client.get(f"{base}/v1/main/not-an-archive.txt")).status_code == 404
