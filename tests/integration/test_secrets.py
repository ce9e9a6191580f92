"""Secrets stay private, against real servers: a daemon configured with credentials in URLs
never shows them, and a source that needs credentials is proxied even in redirect mode."""

from __future__ import annotations

import base64
import functools
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from fakes import Rpc
from helpers_bytes import archive_bytes, sha256
from helpers_ports import REFUSED
from helpers_process import start_serve
from helpers_proxy import GROUP, advertise, make_config, running_tracker
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name, incremental_name

from tracker.config.schema import BasicAuth, BearerAuth, TargetGroup
from tracker.discovery.sidecar import probe_sidecar
from tracker.errors import ProbeError
from tracker.net.httpclients import auth_headers, build_client

SECRET = "PW-s3cr3t"
API_KEY = "KEY-4p1k3y"


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def validator(name: str, prefix: str) -> FakeUpstream:
    """A validator-like server under ``prefix``: the full alias redirects to ``name``."""
    data = archive_bytes(200_000, seed=1)
    return FakeUpstream(
        files={name: data},
        behaviour={"snapshot.tar.bz2": Behaviour(redirect_to=f"{prefix}/{name}")},
    )


async def test_a_running_daemon_never_shows_a_configured_secret(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    name = full_name(500)
    up = validator(name, "/KEY")
    await nursery.start(up.run)
    # A second source redirects with a Location that names no archive: its probe fails with
    # an error quoting that Location (credentials included) into last_error and the log.
    bad = FakeUpstream(
        behaviour={
            "snapshot.tar.bz2": Behaviour(redirect_to=f"http://u:{SECRET}@{REFUSED}/nothing")
        }
    )
    await nursery.start(bad.run)
    rpc_node = Rpc(slot=600)
    rpc = await nursery.start(serve_app, rpc_node.app())
    port = up.base.rsplit(":", 1)[1]
    target = f"http://user:{SECRET}@127.0.0.1:{port}/KEY"
    dead = f"http://user:{SECRET}@127.0.0.1:{closed_port()}/KEY"
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "internal_listen": "127.0.0.1:0",
                "scrape_interval": "200ms",
                "rpc": f"{rpc}/?api-key={API_KEY}",
                "target_groups": [
                    {"group": "g", "http_targets": {"targets": [target, dead, bad.base + "/B"]}}
                ],
            }
        )
    )
    # Debug: httpx logs every request URL, the RPC's API key and the userinfo included.
    serve = await start_serve("--config", str(config), "--log-level", "debug")
    shown: list[str] = []
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        with trio.fail_after(15):
            while not (await client.get(f"{serve.base}/v1/snapshots")).json():
                await trio.sleep(0.05)
            # The RPC was asked (debug: its URL is logged) and a failed probe was logged.
            while not rpc_node.seen or "probe_failed" not in serve.log:
                await trio.sleep(0.05)
        for path in ("/v1/snapshots", "/v1/best_snapshots", "/v1/targets", "/v1/health"):
            response = await client.get(serve.base + path)
            shown.append(response.text)
        targets = (await client.get(f"{serve.base}/v1/targets")).json()
        assert {t["health"] for t in targets} == {"up", "down"}
        assert any("Location" in t["last_error"] for t in targets)
        for path in ("/snapshot.tar.bz2", "/v1/snapshot.tar.bz2", f"/{name}", f"/v1/{name}"):
            for method in ("HEAD", "GET"):
                response = await client.request(method, serve.base + path)
                shown.append(f"{response.status_code} {response.headers} {response.text[:200]}")
        alias = await client.head(f"{serve.base}/snapshot.tar.bz2")
        proxied = await client.get(f"{serve.base}/{name}")
        assert serve.internal is not None
        metrics = await client.get(f"{serve.internal}/metrics")
        shown.append(metrics.text)
    assert await serve.stop() == 0
    shown.append(serve.log)
    everything = "\n".join(shown)
    assert SECRET not in everything and API_KEY not in everything
    # Not vacuous: the masked forms are there.
    assert f"http://***@127.0.0.1:{port}/KEY" in shown[2]  # /v1/targets
    assert 'target="http://***@127.0.0.1' in metrics.text
    assert "?***" in serve.log and "***@127.0.0.1" in serve.log
    # The credentialed source is proxied: the alias points at the tracker's own route.
    assert alias.status_code == 303 and alias.headers["location"] == f"/{name}"
    assert proxied.status_code == 200 and sha256(proxied.content) == sha256(up.files[name])


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_masks_urls_in_its_messages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        yaml.safe_dump(
            {
                "rpc": f"http://127.0.0.1:8899/?api-key={API_KEY}#x",
                "target_groups": [
                    {
                        "group": "g",
                        "http_targets": {"targets": [f"http://user:{SECRET}@{REFUSED}/K?a=b"]},
                        "static_targets": {"targets": [f"http://user:{SECRET}@{REFUSED}"]},
                    }
                ],
            }
        )
    )
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    out = result.stdout + result.stderr
    assert "rpc: URL must not have a fragment: 'http://127.0.0.1:8899/?***'" in out
    assert "target_groups[0].http_targets.targets[0]:" in out
    assert "target_groups[0].static_targets.targets[0]:" in out
    assert f"'http://***@{REFUSED}/K?***'" in out
    assert SECRET not in out and API_KEY not in out
    good = tmp_path / "good.yml"
    good.write_text("target_groups: [{group: g}]\n")
    flag = run_cli("serve", "--config", str(good), "--rpc", f"ftp://u:{SECRET}@h/?k={API_KEY}")
    assert flag.returncode == 2 and "--rpc" in flag.stderr
    assert SECRET not in flag.stderr and API_KEY not in flag.stderr


async def test_redirect_mode_proxies_a_source_that_needs_credentials(
    client: httpx.AsyncClient,
) -> None:
    full, incr = full_name(700), incremental_name(700, 750)
    data = {full: archive_bytes(300_000, seed=7), incr: archive_bytes(50_000, seed=8)}
    open_full = full_name(690)
    open_data = archive_bytes(10_000, seed=9)
    private = TargetGroup(group=GROUP, basic_auth=BasicAuth(username="u", password=SECRET))
    config = make_config(
        None,
        proxy_snapshot_downloads=False,
        target_groups=(private, TargetGroup(group="open")),
    )
    async with (
        serving(FakeUpstream(files=data)) as up,
        serving(FakeUpstream(files={open_full: open_data})) as open_up,
        running_tracker(config) as tracker,
    ):
        advertise(tracker.index, up.base, [(n, up.url(n), len(b)) for n, b in data.items()])
        open_url = open_up.url(open_full)
        advertise(tracker.index, open_up.base, [(open_full, open_url, 10_000)], group="open")
        base = tracker.base
        expected = {
            "/snapshot.tar.bz2": f"/{full}",
            "/incremental-snapshot.tar.bz2": f"/{incr}",
            "/v1/snapshot.tar.zst": f"/v1/{GROUP}/{full}",
            f"/v1/incremental-snapshot.tar.bz2?group={GROUP}": f"/v1/{GROUP}/{incr}",
            f"/v1/{full}?group={GROUP}": None,  # the concrete route itself: no redirect
        }
        for path, location in expected.items():
            response = await client.head(base + path)
            if location is None:
                assert response.status_code == 200
                continue
            assert (response.status_code, response.headers["location"]) == (303, location)
            got = await client.get(base + location)
            assert got.status_code == 200
            name = location.split("?")[0].rsplit("/", 1)[1]
            assert sha256(got.content) == sha256(data[name])
        auth = "Basic " + base64.b64encode(f"u:{SECRET}".encode()).decode()
        assert up.gets() and all(s.headers.get("authorization") == auth for s in up.gets())
        # Listings: the private source's files point at the tracker, the open one's upstream.
        listed: list[dict[str, Any]] = (await client.get(f"{base}/v1/snapshots")).json()
        by_group = {s["group"]: s for s in listed if s["slot"] in (750, 690)}
        assert [f["file_name"] for f in by_group[GROUP]["files"]] == [
            f"{base}/v1/{GROUP}/{incr}",
            f"{base}/v1/{GROUP}/{full}",
        ]
        assert by_group[GROUP]["target"] == up.base
        assert by_group["open"]["files"][0]["file_name"] == open_url
        # The group without credentials keeps redirecting to its upstream.
        for path in ("/v1/snapshot.tar.bz2?group=open", f"/v1/{open_full}?group=open"):
            response = await client.get(base + path)
            assert (response.status_code, response.headers["location"]) == (303, open_url)
        assert "authorization" not in {k for s in open_up.seen for k in s.headers}


async def test_userinfo_in_public_url_is_not_handed_to_clients(client: httpx.AsyncClient) -> None:
    name = full_name(800)
    config = make_config(None, public_url=f"http://u:{SECRET}@{REFUSED}/pre")
    async with serving(FakeUpstream(files={name: b"x"})) as up, running_tracker(config) as tracker:
        advertise(tracker.index, up.base, [(name, up.url(name), 1)])
        response = await client.get(f"{tracker.base}/v1/snapshots")
        assert SECRET not in response.text
        [source] = response.json()
        assert source["target"] == f"http://***@{REFUSED}/pre"
        assert source["files"][0]["file_name"].startswith(f"http://***@{REFUSED}/pre/v1/")


async def test_short_redirects_keep_the_path_prefix_of_public_url(
    client: httpx.AsyncClient,
) -> None:
    """Behind a reverse proxy serving the tracker under ``/tracker``: the short redirect to
    an archive the tracker serves itself points under the prefix, as the listing's URL does
    (a bare ``/v1/...`` left it: a 404 for wget, curl and aria2c); the root aliases stay at
    the root, where validators' clients ask."""
    name = full_name(900)
    data = archive_bytes(50_000, seed=9)
    config = make_config(None, public_url="http://tracker.invalid/tracker")
    async with serving(FakeUpstream(files={name: data})) as up, running_tracker(config) as tracker:
        advertise(tracker.index, up.base, [(name, up.url(name), len(data))])
        [listed] = (await client.get(f"{tracker.base}/v1/snapshots")).json()
        path = listed["files"][0]["file_name"].removeprefix("http://tracker.invalid")
        assert path == f"/tracker/v1/{GROUP}/{name}"
        short = await client.get(f"{tracker.base}/v1/snapshot.tar.bz2")
        assert (short.status_code, short.headers["location"]) == (303, path)
        # what the reverse proxy sends on, the prefix stripped: the archive
        served = await client.get(tracker.base + path.removeprefix("/tracker"))
        assert (served.status_code, served.content) == (200, data)
        alias = await client.get(f"{tracker.base}/snapshot.tar.bz2")
        assert (alias.status_code, alias.headers["location"]) == (303, f"/{name}")


async def _echoing_auth_proxy(stream: trio.SocketStream) -> None:
    """An auth proxy answering 401 with the ``Authorization`` it received in its body, as
    some do (and debugging setups)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    lines = data.split(b"\r\n")
    sent = next(
        (
            v
            for k, _, v in (line.partition(b":") for line in lines)
            if k.lower() == b"authorization"
        ),
        b"",
    )
    body = b"rejected credentials " + sent.strip()
    head = b"HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    await stream.send_all(head + b"content-length: %d\r\n\r\n" % len(body) + body)
    await stream.aclose()


@pytest.mark.parametrize("token", [True, False], ids=["with-token", "without"])
async def test_a_sidecars_echo_of_its_credential_is_not_its_error(
    nursery: trio.Nursery, token: bool
) -> None:
    """A sidecar behind an auth proxy that quotes the credential it refused: the group's
    token went into the target's ``last_error`` (the public ``/v1/targets``, the status
    page, the log). A request that carried a credential has its error body left out; one
    that carried none keeps it (it says why)."""
    group = TargetGroup(group="g", bearer_auth=BearerAuth(token=SECRET) if token else None)
    [listener] = await nursery.start(
        functools.partial(trio.serve_tcp, _echoing_auth_proxy, 0, host="127.0.0.1")
    )
    base = f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
    client = build_client(group, connect_timeout=5, read_timeout=5, max_connections=2)
    try:
        with pytest.raises(ProbeError) as failed:
            await probe_sidecar(client, base, headers=auth_headers(group, base))
    finally:
        await client.aclose()
    reason = str(failed.value)
    assert SECRET not in reason and reason.startswith("HTTP 401 Unauthorized"), reason
    assert ("rejected credentials" in reason) is not token, reason
