"""One connection's unforeseen error costs that connection, never the process
(docs/architecture.md, "Failures"): an exception no rule foresaw, raised in one connection's
handler on either listener, closes that connection, is logged once (``connection_failed``)
and counted (``snapshot_tracker_internal_errors_total{where="connection"}``), while every
other connection, an archive download in the middle of its body included, goes on.

The errors are injected where a connection's code runs: as the listener admits it (the one
part of a connection the accept loop runs), in hypercorn's reader (the request's stream made
from h11's event) and in the request's own task (the app's end reported to its stream); the
last two for the requests of one path only."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_proxy import GROUP
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until
from helpers_upstream import Behaviour, FakeUpstream, serving, sidecar_listing
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from names import full_name

from tracker.observability.logs import record_fields
from tracker.zerocopy.limit import ConnectionLimit
from tracker.zerocopy.stream import ZeroCopyStream

FULL = full_name(7000)
FILES = {FULL: archive_bytes(4 * MiB, seed=41)}
#: The path whose requests meet the injected bug; every other request is served as ever.
BOOM = b"/boom"
BUG = "a bug no rule foresaw"


@pytest.fixture
async def sidecar() -> AsyncIterator[FakeUpstream]:
    async with serving(FakeUpstream(files=dict(FILES), listing=sidecar_listing(FILES))) as up:
        yield up


def inject(monkeypatch: pytest.MonkeyPatch, where: str) -> Callable[[], None]:
    """Make a connection raise RuntimeError in ``where``: ``accept`` (the listener admits
    it: the next connection after each call of the function returned, which does nothing
    for the others), ``reader`` (hypercorn's reader makes the stream of a request to
    :data:`BOOM`) or ``request`` (that request's task reports the app's end to its
    stream)."""
    armed: list[None] = []  # one for each connection to fail as it is admitted
    if where == "accept":
        admit = ConnectionLimit.admit

        def failing_admit(limit: ConnectionLimit, stream: ZeroCopyStream) -> bool:
            if armed:
                armed.pop()
                raise RuntimeError(BUG)
            return admit(limit, stream)

        monkeypatch.setattr(ConnectionLimit, "admit", failing_admit)
    elif where == "reader":
        create_stream = H11Protocol._create_stream

        async def failing_create(protocol: H11Protocol, request: Any) -> None:
            if request.target == BOOM:
                raise RuntimeError(BUG)
            await create_stream(protocol, request)

        monkeypatch.setattr(H11Protocol, "_create_stream", failing_create)
    else:
        app_send = HTTPStream.app_send

        async def failing_send(stream: HTTPStream, message: Any) -> None:
            await app_send(stream, message)
            if message is None and stream.scope["raw_path"] == BOOM:
                raise RuntimeError(BUG)

        monkeypatch.setattr(HTTPStream, "app_send", failing_send)
    return partial(armed.append, None)


async def closed_after(base: str, target: bytes) -> bytes:
    """Send a GET of ``target`` on a fresh connection; what came back once the tracker
    closed the connection (it must, within 10 s)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    async with stream:
        await stream.send_all(b"GET " + target + b" HTTP/1.1\r\nhost: t\r\n\r\n")
        with trio.fail_after(10):
            try:
                while chunk := await stream.receive_some(65536):
                    received += chunk
            except trio.BrokenResourceError:  # a reset: also closed
                pass
    return received


def write_config(tmp_path: Path, sidecar: FakeUpstream) -> Path:
    settings = {
        "listen": "127.0.0.1:0",
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "30s",
        "proxy_snapshot_downloads": True,  # uncached: a download is the upstream's bytes
        "verify_archives": False,  # opaque blobs
        "shutdown_grace": "1s",
        "target_groups": [
            {
                "group": GROUP,
                "static_targets": {"targets": [sidecar.base.removeprefix("http://")]},
            }
        ],
    }
    path = tmp_path / "config.yml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


@pytest.mark.expects_connection_failure
@pytest.mark.parametrize("where", ["accept", "reader", "request"])
async def test_an_unforeseen_error_costs_its_connection_not_the_downloads(
    nursery: trio.Nursery,
    tmp_path: Path,
    sidecar: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    """The error ended the listener's nursery and the tracker (exit status 1): every
    client's download was cut, both listeners closed, by one request of one client."""
    arm = inject(monkeypatch, where)
    sidecar.behaviour[FULL] = Behaviour(pause_at=1 * MiB)
    public, internal = await start_tracker(nursery, write_config(tmp_path, sidecar))
    async with httpx.AsyncClient(verify=client_tls(), timeout=20, trust_env=False) as client:

        async def listed() -> bool:
            return bool((await client.get(f"{public}/v1/snapshots")).json())

        await wait_until(listed)
        got = bytearray()
        async with client.stream("GET", f"{public}/v1/{GROUP}/{FULL}") as download:
            body = download.aiter_raw()
            with trio.fail_after(20):
                while len(got) < 1 * MiB:
                    got += await anext(body)
            assert len(got) == 1 * MiB  # the download is in the middle of its body
            for base in (public, internal):
                arm()
                answer = await closed_after(base, BOOM)
                if where != "request":
                    assert answer == b""  # no request was made of it: nothing to answer
            assert (await client.get(f"{internal}/healthz")).status_code == 200
            assert (await client.get(f"{public}/v1/snapshots")).status_code == 200
            sidecar.behaviour[FULL].resume.set()
            async for chunk in body:
                got += chunk
        assert (download.status_code, sha256(got)) == (200, sha256(FILES[FULL]))
        metrics = (await client.get(f"{internal}/metrics")).text
    assert 'snapshot_tracker_internal_errors_total{where="connection"} 2.0' in metrics
    failed = [record_fields(r)[1] for r in caplog.records if r.msg == "connection_failed"]
    assert [(f["error"], f["listener"]) for f in failed] == [
        (f"RuntimeError: {BUG}", public),
        (f"RuntimeError: {BUG}", internal),
    ]
    assert all(r.levelno == logging.ERROR for r in caplog.records if r.msg == "connection_failed")
    assert all(f"RuntimeError: {BUG}" in str(f["traceback"]) for f in failed)
