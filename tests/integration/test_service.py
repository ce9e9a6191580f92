"""The daemon under an operator's hands: systemd notify, reload, graceful stop, metrics."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from fakes import Rpc, Sidecar, sidecar_info
from helpers_bytes import MiB, archive_bytes
from helpers_process import Serve, start_serve
from helpers_proxy import wait_for
from helpers_s3 import free_ports
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_upstream import Behaviour, FakeUpstream, sidecar_listing
from names import full_name
from prometheus_client.parser import text_string_to_metric_families

from tracker.config.loading import load_config
from tracker.observability.metrics import Metrics
from tracker.service import run_tracker


def write(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


def local_config(tmp_path: Path, **extra: Any) -> Path:
    ledger = tmp_path / "ledger"
    ledger.mkdir(exist_ok=True)
    settings = {
        "scrape_interval": "200ms",
        "listen": "127.0.0.1:0",
        "internal_listen": "127.0.0.1:0",
        "target_groups": [{"group": "g", "local_targets": {"paths": ["ledger"]}}],
        "verify_archives": False,  # random blobs (a failed check keeps a local file out)
        **extra,
    }
    return write(tmp_path / "config.yml", settings)


def big_archive(tmp_path: Path, size: int) -> tuple[str, bytes]:
    name = full_name(100)
    data = os.urandom(size)
    (tmp_path / "ledger" / name).write_bytes(data)
    return name, data


async def test_notify_ready_status_watchdog_stopping(tmp_path: Path) -> None:
    path = local_config(tmp_path)
    sock_path = str(tmp_path / "notify.sock")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await listener.bind(sock_path)
    env = {**os.environ, "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "200000"}
    serve = await start_serve("--config", str(path), env=env)
    messages: list[str] = []

    async def received(wanted: str) -> None:
        with trio.fail_after(10):
            while not any(wanted in m for m in messages):
                messages.append((await listener.recv(4096)).decode())

    await received("READY=1")
    await received("STATUS=")
    before = sum("WATCHDOG=1" in m for m in messages)
    with trio.fail_after(10):  # pings every 100 ms: three more keep coming
        while sum("WATCHDOG=1" in m for m in messages) < before + 3:
            messages.append((await listener.recv(4096)).decode())
    status = next(m for m in messages if "STATUS=" in m)
    assert "targets up" in status and "best full" in status
    serve.proc.send_signal(signal.SIGTERM)
    await received("STOPPING=1")
    with trio.fail_after(10):
        assert await serve.proc.wait() == 0
    listener.close()


async def test_sighup_adds_a_target_and_keeps_the_index(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    a = await nursery.start(serve_app, Sidecar(body=[sidecar_info((full_name(100), 1))]).app())
    b = await nursery.start(serve_app, Sidecar(body=[sidecar_info((full_name(200), 1))]).app())
    settings: dict[str, Any] = {
        "scrape_interval": "30s",  # only the first round and reloads scrape in this test
        "listen": "127.0.0.1:0",
        "internal_listen": "127.0.0.1:0",
        "target_groups": [{"group": "g", "static_targets": {"targets": [a[7:]]}}],
    }
    path = write(tmp_path / "config.yml", settings)
    serve = await start_serve("--config", str(path))

    async def slots(expected: set[int]) -> bool:
        got = {s["slot"] for s in (await client.get(f"{serve.base}/v1/snapshots")).json()}
        return got == expected

    await wait_until(lambda: slots({100}))
    settings["target_groups"][0]["static_targets"]["targets"].append(b[7:])
    write(path, settings)
    serve.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: slots({100, 200}))
    # An invalid file is refused whole: the process keeps serving with the old config.
    path.write_text("scrape_interval: nope\ntarget_groups: 7\n")
    serve.proc.send_signal(signal.SIGHUP)
    assert serve.internal is not None
    refused = await client.post(f"{serve.internal}/reload")
    assert refused.status_code == 400
    assert "scrape_interval" in refused.text and "target_groups" in refused.text
    assert await slots({100, 200})
    # A value YAML itself cannot build (a date that is none): refused as well, where a
    # SIGHUP ended the daemon with a traceback
    path.write_text("scrape_interval: 2024-02-30\n")
    serve.proc.send_signal(signal.SIGHUP)

    async def refused_twice() -> bool:
        return serve.log.count("reload_refused") >= 2

    await wait_until(refused_twice)
    refused = await client.post(f"{serve.internal}/reload")
    assert refused.status_code == 400 and "line 1, column 18: not a valid timestamp" in refused.text
    assert serve.proc.returncode is None and await slots({100, 200})
    # A valid file through POST /reload drops a target that is no longer configured.
    settings["target_groups"][0]["static_targets"]["targets"] = [b[7:]]
    write(path, settings)
    assert (await client.post(f"{serve.internal}/reload")).status_code == 200
    await wait_until(lambda: slots({200}))
    assert await serve.stop() == 0


async def test_a_reload_that_drops_a_group_drops_its_metrics(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    path = local_config(tmp_path)
    big_archive(tmp_path, 1000)
    settings = yaml.safe_load(path.read_text())
    (tmp_path / "other").mkdir()
    settings["target_groups"].append({"group": "h", "local_targets": {"paths": ["other"]}})
    write(path, settings)
    serve = await start_serve("--config", str(path))
    assert serve.internal is not None

    async def series_of(group: str) -> set[str]:
        text = (await client.get(f"{serve.internal}/metrics")).text
        return {
            s.name
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.labels.get("group") == group
        }

    async def both_reported() -> bool:
        wanted = {"snapshot_tracker_targets", "snapshot_tracker_scrape_errors_total"}
        return wanted <= await series_of("g") and wanted <= await series_of("h")

    await wait_until(both_reported)
    settings["target_groups"] = settings["target_groups"][:1]
    write(path, settings)
    assert (await client.post(f"{serve.internal}/reload")).status_code == 200

    async def h_gone() -> bool:
        return not await series_of("h")

    await wait_until(h_gone)
    assert "snapshot_tracker_targets" in await series_of("g")
    assert await serve.stop() == 0


def group_series(text: str, group: str) -> set[str]:
    """The names of the samples of ``group`` in a ``/metrics`` answer."""
    return {
        s.name
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("group") == group
    }


def refreshes_ended(text: str) -> float:
    """Archive requests counted with a refresh's outcome, whichever it was."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "snapshot_tracker_archive_requests_total"
        and s.labels["outcome"].startswith("refresh_")
    )


async def test_a_refresh_outliving_the_reload_that_dropped_its_group_makes_no_series(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """A refresh of group ``gone`` running across the reload that removed the group: its
    bytes after the reload make no ``upstream_bytes_total{group="gone"}`` (nor any series of
    the group), where they made it again, and nothing ever dropped it; a reload bringing the
    group back reports it again."""
    name = full_name(7000)
    data = archive_bytes(2 * MiB, seed=30)
    keep = FakeUpstream(files={name: data}, listing=sidecar_listing({name: data}))
    gone = FakeUpstream(
        files={name: data},
        listing=sidecar_listing({name: data}),
        behaviour={name: Behaviour(pause_at=MiB)},
    )
    await nursery.start(keep.run)
    await nursery.start(gone.run)

    def settings(*groups: FakeUpstream) -> dict[str, Any]:
        named = {"keep": keep, "gone": gone}
        return {
            "internal_listen": "127.0.0.1:0",
            "scrape_interval": "300ms",
            "verify_archives": False,
            "proxy_snapshot_downloads": True,
            "proxy_snapshot_cache_dir": str(tmp_path / "cache"),
            "proxy_snapshot_cache_min_free": "0",
            "target_groups": [
                {"group": group, "static_targets": {"targets": [up.base.removeprefix("http://")]}}
                for group, up in named.items()
                if up in groups
            ],
        }

    path = write_config(tmp_path, settings(keep, gone))
    public, internal = await start_tracker(nursery, path)

    async def metrics() -> str:
        return (await client.get(f"{internal}/metrics")).text

    async def gone_listed() -> bool:
        answer = await client.get(f"{public}/v1/snapshots", params={"group": "gone"})
        return bool(answer.json())

    await wait_until(gone_listed)
    read: list[bytes] = []

    async def download() -> None:
        async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as own:
            read.append((await own.get(f"{public}/v1/gone/{name}")).content)

    nursery.start_soon(download)

    async def paused() -> bool:
        counting = "snapshot_tracker_upstream_bytes_total" in group_series(await metrics(), "gone")
        return counting and gone.body_sent >= MiB

    await wait_until(paused)
    ended = refreshes_ended(await metrics())
    write_config(tmp_path, settings(keep))
    assert (await client.post(f"{internal}/reload")).status_code == 200
    assert group_series(await metrics(), "gone") == set()
    gone.behaviour[name].resume.set()  # the second MiB moves after the reload

    async def refresh_ended() -> bool:
        return bool(read) and refreshes_ended(await metrics()) > ended

    await wait_until(refresh_ended, timeout=20)
    assert read == [data]
    assert group_series(await metrics(), "gone") == set()
    write_config(tmp_path, settings(keep, gone))  # the group is back: reported again
    assert (await client.post(f"{internal}/reload")).status_code == 200

    async def reported_again() -> bool:
        return "snapshot_tracker_targets" in group_series(await metrics(), "gone")

    await wait_until(reported_again)


class SlowReader:
    """A raw HTTP/1.1 client that reads a download at a set pace (or not at all)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.body = b""
        self.head = b""
        #: Bytes received so far (head included), updated as they arrive.
        self.received = 0

    @classmethod
    async def open(cls, base: str, path: str) -> SlowReader:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        await sock.connect((host, int(port)))
        stream = trio.SocketStream(sock)
        request = f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n"
        await stream.send_all(request.encode())
        return cls(stream)

    async def read(self, rate: float, body_size: int) -> None:
        """Read at ``rate`` bytes/s until the head and ``body_size`` body bytes, or EOF."""
        data = b""
        with trio.fail_after(30):
            while len(data.partition(b"\r\n\r\n")[2]) < body_size:
                chunk = await self.stream.receive_some(64 * 1024)
                if not chunk:
                    break
                data += chunk
                self.received = len(data)
                await trio.sleep(len(chunk) / rate)
        self.head, _, self.body = data.partition(b"\r\n\r\n")


async def test_sigterm_lets_a_slow_download_finish(tmp_path: Path) -> None:
    path = local_config(tmp_path, shutdown_grace="20s")
    name, data = big_archive(tmp_path, 8 * 1024 * 1024)
    serve = await start_serve("--config", str(path))
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        await wait_until(
            lambda: _listed(client, serve.base),
        )
    reader = await SlowReader.open(serve.base, f"/{name}")
    async with trio.open_nursery() as nursery:
        # ~2.5 s at 4 MB/s: SIGTERM arrives while it runs.
        nursery.start_soon(reader.read, 4e6, len(data))
        await wait_for(lambda: reader.received > 1024 * 1024)
        serve.proc.send_signal(signal.SIGTERM)
    await reader.stream.aclose()
    assert hashlib.sha256(reader.body).digest() == hashlib.sha256(data).digest()
    with trio.fail_after(10):
        assert await serve.proc.wait() == 0


async def test_a_grace_raised_by_reload_holds_for_the_downloads_at_the_stop(
    tmp_path: Path,
) -> None:
    """``shutdown_grace`` raised by a reload is the grace of the stop that follows, for the
    listeners' connections too: they were cut at the start's grace (the log said the new
    one). The client stops reading for a while far past the start's grace (0.1 s) and far
    within the reload's (1 h), then reads the rest at once: the whole file arrives. No pace
    of reading to keep: how loaded the machine is changes neither outcome (a slow machine
    only stretches the steps, which the reload's grace and the timeouts cover many times)."""
    path = local_config(tmp_path, shutdown_grace="100ms")
    # Far more than the socket buffers hold while the client reads nothing: the server is
    # still sending at the stop and after it.
    name, data = big_archive(tmp_path, 16 * 1024 * 1024)
    serve = await start_serve("--config", str(path))
    assert serve.internal is not None
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=60) as client:
        await wait_until(lambda: _listed(client, serve.base), timeout=60)
        local_config(tmp_path, shutdown_grace="1h")
        assert (await client.post(f"{serve.internal}/reload")).status_code == 200
    host, port = serve.base.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(f"GET /{name} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
    received = bytearray(await stream.receive_some(1024))  # the download started
    serve.proc.send_signal(signal.SIGTERM)
    await wait_for(lambda: "stopping grace_seconds=3600.0" in serve.log, timeout=60)
    # The client reads nothing for 30 times the start's grace (no event to wait for: the
    # point is that time passes). The start's grace cut the connection meanwhile: what the
    # server had queued still arrived, then the end, half way.
    await trio.sleep(3)
    assert serve.proc.returncode is None  # still in its grace
    with trio.fail_after(300):
        while len(received.partition(b"\r\n\r\n")[2]) < len(data):
            if not (chunk := await stream.receive_some(1024 * 1024)):
                break  # cut short
            received += chunk
    await stream.aclose()
    body = bytes(received.partition(b"\r\n\r\n")[2])
    assert len(body) == len(data) and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    with trio.fail_after(60):
        assert await serve.proc.wait() == 0
    assert "outcome=complete" in serve.log, serve.log_tail()


async def stalled_download(tmp_path: Path, grace: str) -> tuple[Serve, SlowReader]:
    """A ``serve`` of ``shutdown_grace`` ``grace`` and a download of 64 MiB from it that
    started, then stopped reading."""
    path = local_config(tmp_path, shutdown_grace=grace)
    name, _ = big_archive(tmp_path, 64 * 1024 * 1024)
    serve = await start_serve("--config", str(path))
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        await wait_until(lambda: _listed(client, serve.base))
    reader = await SlowReader.open(serve.base, f"/{name}")
    await reader.stream.receive_some(1024)  # the download started; now stop reading
    return serve, reader


async def test_stalled_client_cannot_hold_exit_past_grace(tmp_path: Path) -> None:
    serve, reader = await stalled_download(tmp_path, "1s")
    start = trio.current_time()
    serve.proc.send_signal(signal.SIGTERM)
    with trio.fail_after(60):
        code = await serve.proc.wait()
    elapsed = trio.current_time() - start
    assert code == 0
    # 1 s of grace, then 2 s for the aborted streams to unwind; the rest is margin for a
    # loaded machine. Without the guard the stalled client holds the process forever.
    assert elapsed < 1 + 2 + 12, f"exit took {elapsed:.1f}s with a 1 s grace"
    await reader.stream.aclose()


async def test_signals_during_the_grace_are_the_daemons_own(tmp_path: Path) -> None:
    """While a stalled download holds the grace open: a SIGHUP is not a reload and kills
    nothing (its default action had ended the daemon at once), a second SIGINT ends the
    grace at once with one line (it raised KeyboardInterrupt through trio: a traceback,
    exit 1)."""
    serve, reader = await stalled_download(tmp_path, "60s")
    serve.proc.send_signal(signal.SIGINT)
    await wait_for(lambda: "stopping" in serve.log)
    serve.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: "reload_ignored" in serve.log)
    assert serve.proc.returncode is None  # still in its grace
    serve.proc.send_signal(signal.SIGINT)
    with trio.fail_after(30):  # not the 60 s of grace
        code = await serve.proc.wait()
    assert code == 0, serve.log_tail()
    assert "stop_forced" in serve.log and "Traceback" not in serve.log
    await reader.stream.aclose()


async def _listed(client: httpx.AsyncClient, base: str) -> bool:
    return bool((await client.get(f"{base}/v1/snapshots")).json())


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing"
)
async def test_socket_activation(tmp_path: Path) -> None:
    path = local_config(tmp_path)
    name, data = big_archive(tmp_path, 1000)
    (port,) = free_ports(1)  # outside the ephemeral range: no client takes it meanwhile
    serve = await start_serve(
        "--config",
        str(path),
        prefix=["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=public"],
        knock=("127.0.0.1", port),
    )
    assert serve.base == f"http://127.0.0.1:{port}"
    # Only the public socket passed: the internal one is the config's (it was dropped, and
    # /metrics, /reload and /healthz with it).
    assert serve.internal is not None
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        await wait_until(lambda: _listed(client, serve.base))
        assert (await client.get(f"{serve.base}/{name}")).content == data
        assert (await client.get(f"{serve.internal}/healthz")).status_code == 200
    assert await serve.stop() == 0


def test_sockets_passed_that_cannot_be_used_are_one_line_and_exit_2(tmp_path: Path) -> None:
    """Three sockets passed (LISTEN_PID this very process, as systemd sets it): one line and
    exit 2, as a config's problem (it was a traceback and exit 1: a restart loop)."""
    path = local_config(tmp_path)
    command = f"LISTEN_PID=$$ LISTEN_FDS=3 exec {sys.executable} -m tracker serve --config {path}"
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "startup_failed" in done.stderr and "3 sockets passed" in done.stderr
    assert "Traceback" not in done.stderr


async def test_metrics_are_rendered_off_the_event_loop(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/metrics`` of thousands of targets is megabytes of text, half a second of
    rendering: it ran on the event loop and held every other request meanwhile. A render
    held here until the public API answered shows it runs beside it (on the loop, the API
    answered only once the render gave up its 5 s wait)."""
    entered, released = threading.Event(), threading.Event()
    order: list[str] = []
    render = Metrics.render

    def held(self: Metrics) -> tuple[bytes, str]:
        entered.set()
        released.wait(5)
        order.append("rendered")
        return render(self)

    monkeypatch.setattr(Metrics, "render", held)
    public, internal = await start_tracker(nursery, local_config(tmp_path))
    async with (
        httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=20) as client,
        trio.open_nursery() as scrape,
    ):
        scrape.start_soon(client.get, f"{internal}/metrics")
        await trio.to_thread.run_sync(entered.wait, 10)
        assert (await client.get(f"{public}/v1/snapshots")).status_code == 200
        order.append("answered")
        released.set()
    assert order == ["answered", "rendered"]


async def test_metrics_move_with_traffic(nursery: trio.Nursery, tmp_path: Path) -> None:
    rpc_url = await nursery.start(serve_app, Rpc(slot=150).app())
    path = local_config(tmp_path, rpc=rpc_url)
    name, data = big_archive(tmp_path, 100_000)
    serve = await start_serve("--config", str(path))
    assert serve.internal is not None

    def sample(text: str, metric: str, **labels: str) -> float:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        await wait_until(lambda: _listed(client, serve.base))
        before = (await client.get(f"{serve.internal}/metrics")).text
        assert (await client.get(f"{serve.base}/{name}")).content == data
        await client.get(f"{serve.base}/v1/snapshots")
        assert (await client.get(f"{serve.base}/snapshot.tar.bz2")).status_code == 303
        after = (await client.get(f"{serve.internal}/metrics")).text
        assert (await client.get(f"{serve.internal}/healthz")).status_code == 200
        status = await client.get(f"{serve.internal}/")
        assert status.status_code == 200 and name in status.text  # the status page
    bytes_metric = "snapshot_tracker_served_bytes_total"
    assert sample(after, bytes_metric, source="local") - sample(
        before, bytes_metric, source="local"
    ) == len(data)
    outcomes = "snapshot_tracker_archive_requests_total"
    assert sample(after, outcomes, outcome="local") == sample(before, outcomes, outcome="local") + 1
    assert sample(after, "snapshot_tracker_best_full_slot", group="g") == 100
    assert sample(after, "snapshot_tracker_targets_up", group="g") == 1
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

        async def age_published() -> bool:
            text = (await client.get(f"{serve.internal}/metrics")).text
            return sample(text, "snapshot_tracker_snapshot_age_slots", group="g") == 50

        await wait_until(age_published)
    requests = "snapshot_tracker_http_requests_total"
    assert sample(after, requests, route="/v1/snapshots", status="200") > sample(
        before, requests, route="/v1/snapshots", status="200"
    )
    # Time to the response head, for Quart's routes and the short redirects answered before it.
    durations = "snapshot_tracker_http_request_duration_seconds_count"
    assert sample(after, durations, route="/v1/snapshots") > sample(
        before, durations, route="/v1/snapshots"
    )
    assert sample(after, durations, route="/snapshot.tar.bz2") == 1
    assert await serve.stop() == 0


async def test_download_logs_one_json_line_at_its_end(tmp_path: Path) -> None:
    path = local_config(tmp_path)
    name, data = big_archive(tmp_path, 300_000)
    serve = await start_serve("--config", str(path), "--log-format", "json")
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        await wait_until(lambda: _listed(client, serve.base))
        assert (await client.get(f"{serve.base}/{name}")).content == data
        assert (await client.head(f"{serve.base}/{name}")).status_code == 200
    # The client that goes away mid-way is logged too, with what it got.
    reader = await SlowReader.open(serve.base, f"/{name}")
    await reader.stream.receive_some(1000)
    await reader.stream.aclose()

    def downloads() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in serve.log.splitlines() if line.startswith("{")]
        return [e for e in lines if e["event"] == "download"]

    async def two_logged() -> bool:
        return len(downloads()) == 2

    await wait_until(two_logged)
    done, gone = downloads()
    assert done["outcome"] == "complete" and done["bytes"] == len(data)
    assert done["file"] == name and done["group"] == "g" and done["status"] == 200
    assert {"time", "level", "seconds"} <= set(done)
    assert gone["outcome"] in ("client_gone", "error") and gone["bytes"] < len(data)
    assert await serve.stop() == 0


async def test_reload_keeps_a_running_download(tmp_path: Path) -> None:
    path = local_config(tmp_path, shutdown_grace="20s")
    name, data = big_archive(tmp_path, 8 * 1024 * 1024)
    serve = await start_serve("--config", str(path))
    assert serve.internal is not None
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        await wait_until(lambda: _listed(client, serve.base))
        reader = await SlowReader.open(serve.base, f"/{name}")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.read, 4e6, len(data))  # ~2 s
            await wait_for(lambda: reader.received > 1024 * 1024)
            settings = yaml.safe_load(path.read_text())
            settings["scrape_interval"] = "300ms"
            write(path, settings)
            assert (await client.post(f"{serve.internal}/reload")).status_code == 200
            serve.proc.send_signal(signal.SIGHUP)
        await reader.stream.aclose()
    assert hashlib.sha256(reader.body).digest() == hashlib.sha256(data).digest()
    assert serve.log.count("config_reloaded") == 2
    assert await serve.stop() == 0


class _TermAtReady(logging.Handler):
    """Sends this process SIGTERM the moment the tracker logs its ``listening`` line (when
    it tells systemd ``READY=1``), from inside that call: no task runs in between."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "listening":
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("attempt", range(8))
async def test_a_sigterm_at_ready_stops_it_gracefully(tmp_path: Path, attempt: int) -> None:
    """From the moment the daemon says it is ready (``READY=1``, its listening line), SIGTERM
    is its own: systemd may stop it at once. The signals' task used to be only scheduled by
    then, so a SIGTERM at that moment went to the handler before it (here: the test's; for
    ``serve``: the default, which killed the daemon without its graceful stop). Eight runs:
    the scheduler orders the tasks woken together at random, so one run alone could miss."""
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    handler, logger = _TermAtReady(), logging.getLogger("tracker")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with trio.fail_after(20):  # the tracker stops, so its nursery ends
            async with trio.open_nursery() as nursery:
                await start_tracker(nursery, local_config(tmp_path))
                if received:  # the test's handler took it: the tracker runs on
                    nursery.cancel_scope.cancel()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        signal.signal(signal.SIGTERM, previous)
    assert received == []


@pytest.mark.parametrize("held", [[signal.SIGTERM], [signal.SIGINT], [signal.SIGHUP]])
async def test_signals_held_while_it_started_are_handled_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, held: list[int]
) -> None:
    """Signals that came while the daemon started (the command line holds them until the
    daemon's receiver takes them): a stop stops it gracefully as soon as it runs, a SIGHUP
    is its first reload."""
    path = local_config(tmp_path)
    config = load_config(path)
    caplog.set_level(logging.INFO, logger="tracker")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            run = partial(run_tracker, config, partial(load_config, path), held=held)
            await nursery.start(run)
            if held == [signal.SIGHUP]:
                await wait_until(lambda: _logged(caplog, "config_reloaded"))
                nursery.cancel_scope.cancel()  # it runs on: no stop was held
    stopped = _logged_now(caplog, "stopped")
    assert stopped == (held != [signal.SIGHUP]), caplog.text


def _logged_now(caplog: pytest.LogCaptureFixture, message: str) -> bool:
    return any(record.getMessage() == message for record in caplog.records)


async def _logged(caplog: pytest.LogCaptureFixture, message: str) -> bool:
    return _logged_now(caplog, message)


async def test_a_reload_is_told_to_systemd_as_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, client: httpx.AsyncClient
) -> None:
    """sd_notify(3) for reloads: ``RELOADING=1`` with ``MONOTONIC_USEC`` (CLOCK_MONOTONIC as
    the reload begins) before, ``READY=1`` once it is done, applied or refused, for SIGHUP
    and ``POST /reload`` alike (what ``Type=notify-reload`` waits for; ``Type=notify`` shows
    the unit reloading meanwhile). Nothing was sent: systemd took a reload as done once
    ``kill -HUP`` was. A reload while the tracker starts (a SIGHUP held) is the start's: no
    ``READY=1`` before the start's own."""
    path = local_config(tmp_path)
    caplog.set_level(logging.INFO, logger="tracker")
    sock_path = str(tmp_path / "notify.sock")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await listener.bind(sock_path)

    async def told() -> list[str]:
        """The next notification but the scrape reports' ``STATUS=``, one line each."""
        while True:
            with trio.fail_after(5):  # sent before the reload's answer: here at once
                lines = (await listener.recv(4096)).decode().split("\n")
            if not lines[0].startswith("STATUS="):
                return lines

    def monotonic_usec() -> int:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    environ = {"NOTIFY_SOCKET": sock_path}
    with listener, trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            run = partial(run_tracker, load_config(path), partial(load_config, path))
            _public, internal = await nursery.start(
                partial(run, environ=environ, held=[signal.SIGHUP])
            )
            assert await told() == ["READY=1"]
            await wait_until(lambda: _logged(caplog, "config_reloaded"))  # the held SIGHUP's
            began = monotonic_usec()
            assert (await client.post(f"{internal}/reload")).status_code == 200
            reloading, usec = await told()
            assert reloading == "RELOADING=1"
            assert began <= int(usec.removeprefix("MONOTONIC_USEC=")) <= monotonic_usec()
            assert await told() == ["READY=1"]
            path.write_text("scrape_interval: soon\n")  # refused: the reload is over all the same
            os.kill(os.getpid(), signal.SIGHUP)
            assert (await told())[0] == "RELOADING=1"
            assert await told() == ["READY=1"]
            assert _logged_now(caplog, "reload_refused")
            nursery.cancel_scope.cancel()
