"""Sidecar probe against real servers: valid lists, strict validation, bounded reads (the list's
validation on its own: tests/unit/test_sources_sidecar_unit.py)."""

from __future__ import annotations

import itertools
import json
import socket
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import trio
from helpers_ports import REFUSED
from helpers_server import serve_app
from helpers_sources import HASHES, Answer, ScriptedApp, file_json, info_json, read_head, serve_raw
from helpers_tls import client_tls

from tracker.discovery.sidecar import probe_sidecar
from tracker.errors import ProbeError

H0, H1, H2 = HASHES[:3]
MiB = 1024 * 1024


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=client_tls(), timeout=5) as c:
        yield c


FULL = file_json(100, H0, size=1000, mod_time="2026-11-21T10:00:00.123456789Z")
INCR = file_json(150, H1, base=100, size=10, mod_time="2026-11-21T12:00:00+02:00")


def json_answer(value: Any) -> Answer:
    body = json.dumps(value).encode()
    return Answer(200, (("content-type", "application/json"),), body)


async def serve_list(
    nursery: trio.Nursery, value: Any, prefix: str = ""
) -> tuple[str, ScriptedApp]:
    app = ScriptedApp({f"{prefix}/v1/snapshots": json_answer(value)})
    return await nursery.start(serve_app, app) + prefix, app


async def test_valid_list_is_parsed_chained_and_given_urls(nursery, client) -> None:
    # The incremental's chain is listed full first: the probe reorders it newest first.
    incr_info = info_json(FULL, INCR) | {"slot": 150, "base_slot": 100, "hash": H1}
    listed = [info_json(FULL | {"download_url": "ignored"}), incr_info]
    base, app = await serve_list(nursery, listed, prefix="/api")

    infos = await probe_sidecar(client, base, headers={"authorization": "Bearer t"})

    full, incr = infos
    assert (full.slot, full.base_slot, full.hash, full.size) == (100, 100, H0, 1000)
    assert (incr.slot, incr.base_slot, incr.hash, incr.size) == (150, 100, H1, 1010)
    assert [f.file_name for f in incr.files] == [INCR["file_name"], FULL["file_name"]]
    assert incr.files[1].url == f"{base}/v1/snapshot/{FULL['file_name']}"
    assert incr.files[0].mod_time == datetime(2026, 11, 21, 10, tzinfo=UTC)
    assert full.files[0].mod_time == datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC)
    (request,) = app.requests
    assert (request.method, request.path) == ("GET", "/api/v1/snapshots")
    assert request.headers["authorization"] == "Bearer t"
    assert request.headers["accept-encoding"] == "identity"


async def test_empty_list_is_up_with_no_snapshots(nursery, client) -> None:
    base, _ = await serve_list(nursery, [])
    assert await probe_sidecar(client, base + "/") == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[{", "invalid JSON at character 2"),
        (b'["\xff"]', "body is not UTF-8 (byte 2)"),
        # One entry holding 300 KiB of tiny objects is not decoded whole.
        (b'[{"files": [' + b"{}," * 100_000 + b"{}]}]", "entry 0: larger than 16384 characters"),
    ],
)
async def test_malformed_answers_are_one_line_probe_errors(nursery, client, body, reason) -> None:
    app = ScriptedApp({"/v1/snapshots": Answer(200, (), body)})
    base = await nursery.start(serve_app, app)
    with pytest.raises(ProbeError) as info:
        await probe_sidecar(client, base)
    assert str(info.value).startswith(reason)


async def test_a_redirect_to_the_sidecars_own_origin_is_followed(nursery, client) -> None:
    """A sidecar behind a proxy that moved its path: the Go tracker's probe follows the
    redirect, and its configs' sidecars were down here ("redirect not followed"). Followed
    on the sidecar's own origin, with its credentials; a loop ends."""
    listed = [info_json(FULL)]
    app = ScriptedApp(
        {
            "/old/v1/snapshots": Answer(308, (("location", "/new/v1/snapshots"),)),
            "/new/v1/snapshots": json_answer(listed),
            "/loop/v1/snapshots": Answer(302, (("location", "/loop/v1/snapshots"),)),
        }
    )
    base = await nursery.start(serve_app, app)
    [full] = await probe_sidecar(client, base + "/old", headers={"authorization": "Bearer t"})
    assert full.slot == 100
    assert full.files[0].url == f"{base}/old/v1/snapshot/{FULL['file_name']}"
    asked = [(r.path, r.headers.get("authorization")) for r in app.requests]
    assert asked == [("/old/v1/snapshots", "Bearer t"), ("/new/v1/snapshots", "Bearer t")]
    with pytest.raises(ProbeError, match=r"^HTTP 302 .*not followed"):
        await probe_sidecar(client, base + "/loop")
    assert app.paths().count("/loop/v1/snapshots") == 6  # the first ask and 5 hops


async def test_too_many_entries(nursery, client) -> None:
    entries = [info_json(file_json(slot, H0)) for slot in range(1, 10_002)]
    base, _ = await serve_list(nursery, entries)
    with pytest.raises(ProbeError, match=r"^more than 10000 entries$"):
        await probe_sidecar(client, base)
    assert len(await probe_sidecar(client, base, max_entries=10_001)) == 10_001


async def test_status_redirect_and_encoding_errors(nursery, client) -> None:
    app = ScriptedApp(
        {
            "/a/v1/snapshots": Answer(500, (), b"disk\non fire\x00"),
            "/b/v1/snapshots": Answer(301, (("location", f"http://{REFUSED}/elsewhere"),)),
            "/c/v1/snapshots": Answer(200, (("content-encoding", "gzip"),), b"[]"),
            "/e/v1/snapshots": Answer(502, (), b"upstream down " * 100_000),
        }
    )
    base = await nursery.start(serve_app, app)
    with pytest.raises(ProbeError, match=r"^HTTP 500 Internal Server Error: disk on fire$"):
        await probe_sidecar(client, base + "/a")
    with pytest.raises(ProbeError, match=r"^HTTP 301 .*redirect to '.*/elsewhere' not followed"):
        await probe_sidecar(client, base + "/b")  # another origin
    with pytest.raises(ProbeError, match=r"^unsupported content-encoding 'gzip'$"):
        await probe_sidecar(client, base + "/c")
    with pytest.raises(ProbeError, match=r"^HTTP 404 Not Found"):
        await probe_sidecar(client, base + "/d")
    with pytest.raises(ProbeError) as info:  # only the start of a long error body is read
        await probe_sidecar(client, base + "/e")
    assert str(info.value) == "HTTP 502 Bad Gateway: " + ("upstream down " * 15)[:200].strip()
    assert "/elsewhere" not in app.paths()


def endless_body(head: bytes, sent: list[int], done: trio.Event):
    """A raw server sending ``head`` and then JSON-looking bytes until the peer hangs up."""
    chunk = b'{"slot": 1, "hash": "x"},' * 2600  # ~64 KiB

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await read_head(stream)
            await stream.send_all(head)
            for data in itertools.chain([b"["], itertools.repeat(chunk)):
                framed = b"%x\r\n%s\r\n" % (len(data), data) if b"chunked" in head else data
                await stream.send_all(framed)
                sent[0] += len(framed)
        finally:
            done.set()

    return handler


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n", "body of 1073741824 bytes"),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", "body exceeds the limit of"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "body exceeds the limit of"),
    ],
)
async def test_huge_body_fails_fast_with_bounded_memory(nursery, client, head, reason) -> None:
    sent, done = [0], trio.Event()
    base = await nursery.start(serve_raw, endless_body(head, sent, done))
    tracemalloc.start()
    try:
        with pytest.raises(ProbeError, match=f"^{reason}"), trio.fail_after(10):
            await probe_sidecar(client, base, max_body=1 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with trio.fail_after(5):
        await done.wait()  # the probe hung up instead of draining the rest
    assert peak < 8 * MiB
    assert sent[0] < 64 * MiB


@pytest.mark.parametrize("head", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[{"])
async def test_hanging_server_is_left_to_the_callers_timeout(nursery, client, head) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(head)
        await trio.sleep_forever()

    base = await nursery.start(serve_raw, handler)
    with pytest.raises(trio.TooSlowError), trio.fail_after(0.3):
        await probe_sidecar(client, base)


async def test_transport_failures(nursery, client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ProbeError, match=r"^cannot connect: Connection refused$"):
        await probe_sidecar(client, f"http://127.0.0.1:{port}")

    async def plain(stream: trio.SocketStream) -> None:
        await stream.send_all(b"garbage\r\n\r\n")

    base = await nursery.start(serve_raw, plain)
    with pytest.raises(ProbeError, match=r"^malformed HTTP answer"):
        await probe_sidecar(client, base)
    with pytest.raises(ProbeError, match=r"^TLS handshake failed: \[SSL"):
        await probe_sidecar(client, base.replace("http://", "https://"))
    with pytest.raises(ProbeError, match=r"^invalid URL: Request URL has an unsupported protocol"):
        await probe_sidecar(client, f"ftp://{REFUSED}")


async def test_an_archive_at_two_sizes_in_one_answer_fails_the_probe(nursery, client) -> None:
    """A sidecar that lists its full at one size on its own and at another as its
    incremental's base contradicts itself: each size was taken for its own pair, the
    incremental's priced and served by the other. The probe fails now, naming both (which
    one is the lie the tracker cannot tell)."""
    incr_info = info_json(INCR, FULL | {"size": 1}) | {"slot": 150, "base_slot": 100, "hash": H1}
    base, _ = await serve_list(nursery, [info_json(FULL), incr_info])
    with pytest.raises(ProbeError) as info:
        await probe_sidecar(client, base)
    assert str(info.value) == f"entry 1: {FULL['file_name']}: size 1, entry 0 listed size 1000"
