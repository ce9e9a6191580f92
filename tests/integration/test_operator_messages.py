"""What a running ``serve`` tells its operator: a port in use names the address and its key,
a reload changing a listener says it waits for a restart, ``/v1/health`` without ``rpc``
says that, not "unreachable"."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import trio
import yaml
from helpers_process import start_serve
from helpers_proxy import wait_for
from helpers_tls import client_tls
from names import full_name

SETTINGS = {
    "scrape_interval": "200ms",
    "listen": "127.0.0.1:0",
    "internal_listen": "127.0.0.1:0",
    "target_groups": [{"group": "g", "local_targets": {"paths": ["ledger"]}}],
}


def write(tmp_path: Path, **settings: object) -> Path:
    (tmp_path / "ledger").mkdir(exist_ok=True)
    path = tmp_path / "tracker.yml"
    path.write_text(yaml.safe_dump({**SETTINGS, **settings}))
    return path


def test_a_port_in_use_names_the_address_and_the_key(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        address = f"127.0.0.1:{held.getsockname()[1]}"
        command = ["serve", "--config", str(write(tmp_path)), "--internal-listen", address]
        result = subprocess.run(
            [sys.executable, "-m", "tracker", *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"Address already in use: {address} (internal_listen)" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_reload_that_moves_a_listener_warns_and_health_names_the_missing_rpc(
    tmp_path: Path,
) -> None:
    # A one-byte blob, so unchecked: a check would keep it out (it failed the suite whenever
    # the check ended before the first scan listed the file).
    path = write(tmp_path, verify_archives=False)
    serve = await start_serve("--config", str(path))
    try:
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
            # No snapshot yet: 500 before any rpc question; with one, the missing rpc.
            (
                tmp_path / "ledger" / "snapshot-100-11111111111111111111111111111111.tar.zst"
            ).write_bytes(b"x")
            with trio.fail_after(20):
                while (
                    health := await client.get(f"{serve.base}/v1/health?group=g")
                ).status_code == 500:
                    await trio.sleep(0.05)
            assert health.status_code == 503  # "cannot say", not 502 "rpc unreachable"
            assert health.json()["Health"] == "no rpc configured"
            assert health.headers["retry-after"] == "5"
            write(tmp_path, verify_archives=False, listen="127.0.0.1:1")
            assert (await client.post(f"{serve.internal}/reload")).status_code == 200
    finally:
        assert await serve.stop() == 0
    assert "config_needs_restart" in serve.log
    assert "listen: 127.0.0.1:0 -> 127.0.0.1:1 takes effect at the next restart" in serve.log


async def test_a_refused_reload_is_logged_for_post_reload_too(tmp_path: Path) -> None:
    """``POST /reload`` of a bad file answers 400 with the problems and logs them, as SIGHUP
    does (only SIGHUP's was logged: the journal said nothing of a refused reload)."""
    path = write(tmp_path)
    serve = await start_serve("--config", str(path))
    try:
        write(tmp_path, scrape_interval="soon")
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
            refused = await client.post(f"{serve.internal}/reload")
        assert refused.status_code == 400 and "scrape_interval" in refused.text
        await wait_for(lambda: "reload_refused" in serve.log)
        [line] = [line for line in serve.log.splitlines() if "reload_refused" in line]
        assert "scrape_interval" in line
    finally:
        assert await serve.stop() == 0


async def test_a_page_in_a_browser_cannot_reload_the_daemon(tmp_path: Path) -> None:
    """A form posted across sites (no preflight for a POST), or a page under a name of its
    own resolving to the listener (DNS rebinding), reloaded the daemon: each reload starts a
    scrape round, so a page looping POSTs had every source probed again and again."""
    path = write(tmp_path)
    serve = await start_serve("--config", str(path))
    try:
        port = serve.internal.rsplit(":", 1)[1]
        form = {"content-type": "application/x-www-form-urlencoded"}
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
            url = f"{serve.internal}/reload"
            for headers in (
                {**form, "origin": "http://evil.example"},
                {**form, "sec-fetch-site": "cross-site"},
                {**form, "host": f"rebind.evil.example:{port}"},
                {"origin": "null"},
            ):
                refused = await client.post(url, headers=headers)
                assert refused.status_code == 403, headers
                assert refused.text.startswith("reload refused: ") and refused.text.count("\n") == 1
            own = {"origin": f"http://127.0.0.1:{port}", "sec-fetch-site": "same-origin"}
            assert (await client.post(url, headers=own)).status_code == 200
            assert (await client.post(url)).status_code == 200  # curl, a script
            local = await client.post(url, headers={"host": f"localhost:{port}"})
            assert local.status_code == 200
    finally:
        assert await serve.stop() == 0
    assert serve.log.count("config_reloaded") == 3


async def test_a_reload_whose_setting_in_force_no_start_would_take_is_refused(
    tmp_path: Path,
) -> None:
    """``verify_archives: true`` with a group's ``trust.require: cluster``, reloaded over
    ``verify_archives: false``: the file passes its checks, but ``verify_archives`` waits
    for a restart, and ``require: cluster`` with nothing checked (no start takes that) was
    put in force: the group's archives still listed, its require not enforced. Refused."""
    path = write(tmp_path, verify_archives=False)
    (tmp_path / "ledger" / full_name(100)).write_bytes(b"x")
    serve = await start_serve("--config", str(path))
    try:
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
            await wait_for_listed(client, f"{serve.base}/v1/snapshots")
            groups = [{**SETTINGS["target_groups"][0], "trust": {"require": "cluster"}}]
            write(tmp_path, verify_archives=True, target_groups=groups, rpc="http://127.0.0.1:9")
            refused = await client.post(f"{serve.internal}/reload")
            assert refused.status_code == 400, refused.text
            assert "needs verify_archives: true" in refused.text
            assert "until a restart the config in force keeps its verify_archives" in refused.text
            listed = (await client.get(f"{serve.base}/v1/snapshots")).json()
        assert [entry["slot"] for entry in listed] == [100]  # the old config, whole
    finally:
        assert await serve.stop() == 0


async def wait_for_listed(client: httpx.AsyncClient, url: str) -> None:
    """Return once ``url`` lists an archive (the first scrape ended)."""
    with trio.fail_after(20):
        while not (await client.get(url)).json():
            await trio.sleep(0.05)


async def test_a_host_quart_cannot_route_gets_a_400_counted_not_a_500_traceback(
    tmp_path: Path,
) -> None:
    """A ``Host`` whose name IDNA refuses (an empty label, one over 63 letters) made
    werkzeug raise before any handler: a 500 on every Quart route of both listeners, a
    traceback logged at ERROR for each (a log any client could flood), uncounted. It is a
    400 with one line, counted, and the log stays quiet."""
    serve = await start_serve("--config", str(write(tmp_path)))
    try:
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
            for host in ("a..b", ".", "a" * 64 + ".example", "a..b:8458"):
                for base, path in [
                    (serve.base, "/v1/snapshots"),
                    (serve.base, "/v1/targets"),
                    (serve.base, "/snapshot.tar.bz2"),
                    (serve.internal, "/healthz"),
                    (serve.internal, "/metrics"),
                ]:
                    answer = await client.get(base + path, headers={"host": host})
                    assert answer.status_code == 400, (host, path)
                    assert "malformed host header" in answer.text
            assert (await client.get(f"{serve.base}/v1/snapshots")).json() == []
            json_error = await client.get(f"{serve.base}/v1/snapshots", headers={"host": "."})
            assert json_error.json() == {"error": "malformed host header"}
            metrics = (await client.get(f"{serve.internal}/metrics")).text
        [counted] = [
            line
            for line in metrics.splitlines()
            if line.startswith("snapshot_tracker_http_requests_total") and 'status="400"' in line
        ]
        assert float(counted.rsplit(" ", 1)[1]) == 4 * 3 + 1
    finally:
        assert await serve.stop() == 0
    assert "Traceback" not in serve.log and "Error in ASGI" not in serve.log


async def test_the_internal_listener_answers_a_slip_in_one_plain_line(tmp_path: Path) -> None:
    # A GET of /reload (a likely slip) or an unknown path got the framework's HTML page:
    # `fetch --tracker` naming this port by mistake quoted a paragraph of it.
    serve = await start_serve("--config", str(write(tmp_path)))
    try:
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
            for path, status, line in [
                ("/reload", 405, "method not allowed\n"),
                ("/v1/x", 404, "not found\n"),
            ]:
                answer = await client.get(serve.internal + path)
                assert answer.status_code == status, path
                assert answer.headers["content-type"].startswith("text/plain"), path
                assert answer.text == line, path
            # a 405 names the methods the route takes (RFC 9110 says it must; it had none)
            assert (await client.get(serve.internal + "/reload")).headers["allow"] == "POST"
            refused = await client.delete(serve.base + "/v1/snapshots")
            assert refused.status_code == 405
            assert set(refused.headers["allow"].split(", ")) == {"GET", "HEAD"}
    finally:
        assert await serve.stop() == 0


async def upgrade(base: str, path: str, behind: bytes = b"") -> bytes:
    """The head of the answer to a WebSocket upgrade of ``path`` (sent by hand: no client
    of the suite speaks WebSocket), ``behind`` sent in the same packet after it."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
        "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request.encode() + behind)
        answer = b""
        with trio.fail_after(10):
            while not _whole(answer) and (chunk := await stream.receive_some(4096)):
                answer += chunk
    return answer


def _whole(answer: bytes) -> bool:
    """True once ``answer`` holds its head and as many body bytes as its content-length."""
    head, blank, body = answer.partition(b"\r\n\r\n")
    field = b"content-length:"
    lengths = [line[len(field) :] for line in head.split(b"\r\n") if line.lower().startswith(field)]
    if not blank:
        return False
    return len(body) >= int(lengths[0]) if lengths else True


async def test_a_websocket_upgrade_gets_a_400_line_not_a_500_traceback(tmp_path: Path) -> None:
    """No route speaks WebSocket: an upgrade reached Quart, whose error handlers read the
    HTTP request it does not have: a 500 and a traceback logged for each (a log any client
    could flood), uncounted. It is a 400 with one line on both listeners, counted."""
    serve = await start_serve("--config", str(write(tmp_path)))
    try:
        for base, path in [
            (serve.base, "/v1/snapshots"),
            (serve.base, "/snapshot.tar.bz2"),
            (serve.internal, "/healthz"),
        ]:
            answer = await upgrade(base, path)
            assert answer.startswith(b"HTTP/1.1 400 "), (path, answer)
            assert answer.endswith(b"\r\n\r\nthis server does not speak WebSocket\n"), answer
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
            assert (await client.get(f"{serve.base}/v1/snapshots")).json() == []
            metrics = (await client.get(f"{serve.internal}/metrics")).text
        [counted] = [
            line
            for line in metrics.splitlines()
            if line.startswith("snapshot_tracker_http_requests_total") and 'status="400"' in line
        ]
        assert float(counted.rsplit(" ", 1)[1]) == 2  # the public listener's
    finally:
        assert await serve.stop() == 0
    assert "Traceback" not in serve.log and "Error in ASGI" not in serve.log


#: What a client sends behind its upgrade without waiting for the answer: a pipelined
#: request, and an eager first frame (a masked text frame of 5 bytes, its payload unsent).
BEHIND_AN_UPGRADE = {
    "a pipelined request": b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    "a first frame": b"\x81\x85abcd",
}


async def test_bytes_behind_a_websocket_upgrade_cost_no_more_than_its_connection(
    tmp_path: Path,
) -> None:
    """hypercorn gave what came behind an upgrade to its WebSocket stream, whose handshake
    (not accepted) answered it in the middle of the 400: h11 raised, and the error ended
    the listener's nursery and the process, both listeners with it (one packet from any
    client stopped the tracker). The upgrade is refused in one line and its connection
    closed; the tracker answers on."""
    serve = await start_serve("--config", str(write(tmp_path)))
    try:
        for base, path in [(serve.base, "/v1/snapshots"), (serve.internal, "/healthz")]:
            for what, behind in BEHIND_AN_UPGRADE.items():
                answer = await upgrade(base, path, behind)
                assert answer.startswith(b"HTTP/1.1 400 "), (path, what, answer)
                assert answer.endswith(b"\r\n\r\nthis server does not speak WebSocket\n")
                assert b"\r\nconnection: close\r\n" in answer
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
            assert (await client.get(f"{serve.base}/v1/snapshots")).json() == []
            assert (await client.get(f"{serve.internal}/healthz")).status_code == 200
    finally:
        assert await serve.stop() == 0
    assert "Traceback" not in serve.log and "Error in ASGI" not in serve.log


async def test_a_second_tracker_on_a_cache_directory_stops_at_start_touching_nothing(
    tmp_path: Path,
) -> None:
    """Two trackers in one cache directory deleted each other's live temp files at start
    and renamed their copies over each other's (served under the other's digest): the
    second ``serve`` stops at once, names the directory, and leaves it as it was."""
    cache = tmp_path / "cache"
    path = write(tmp_path, proxy_snapshot_downloads=True, proxy_snapshot_cache_dir=str(cache))
    serve = await start_serve("--config", str(path))
    try:
        live = cache / "g" / ".tmp-snapshot-100-11111111111111111111111111111111.tar.zst.x"
        live.parent.mkdir(parents=True, exist_ok=True)
        live.write_bytes(b"a refresh being written")  # the first tracker's, for this test
        second = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "tracker", "serve", "--config", str(path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert second.returncode == 1, second.stderr
        [line] = second.stderr.strip().splitlines()[-1:]
        assert "startup_failed" in line
        assert f"proxy_snapshot_cache_dir {cache}: another tracker uses this cache" in line
        assert "Traceback" not in second.stderr
        assert live.exists()
    finally:
        assert await serve.stop() == 0
