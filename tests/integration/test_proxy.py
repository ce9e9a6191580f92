"""Proxy mode without the disk cache, against a real hypercorn tracker and real upstreams.

Upstreams are :class:`FakeUpstream` servers on 127.0.0.1:0; the tracker runs the public app
with the proxy streamer. httpx checks what a client sees, :func:`raw_request` the wire.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_proxy import (
    EARLY,
    FAST,
    GROUP,
    TOKEN,
    TrackerUnderTest,
    advertise,
    proxy_tracker,
    wait_for,
)
from helpers_tls import client_tls
from helpers_upstream import UPSTREAM_ETAG, Behaviour, FakeUpstream
from helpers_wire import raw_request
from names import full_name, incremental_name

from tracker.config.schema import Egress

NAME = full_name(1000)
DATA = archive_bytes(3 * MiB, seed=1)


#: What the ``upstream`` fixture (tests/integration/conftest.py) serves.
UPSTREAM_FILES = {NAME: DATA}


@pytest.fixture(params=["splice", "channel"])
async def tracker(
    upstream: FakeUpstream, request: pytest.FixtureRequest
) -> AsyncIterator[TrackerUnderTest]:
    # splice: the tracker's server, plain streams go socket to socket
    # (tracker/proxy/passthrough.py);
    # channel: plain hypercorn, every byte through the pump's channel.
    async with proxy_tracker(None, upstream, plain=request.param == "channel") as t:
        yield t


async def test_proxied_bytes_are_identical_with_content_length(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    async with httpx.AsyncClient(verify=client_tls()) as client:
        response = await client.get(tracker.url(NAME))
    assert response.status_code == 200
    assert sha256(response.content) == sha256(DATA)
    # kept open 0.3 s past the body: a server that closes a complete answer's connection does
    wire = await raw_request(tracker.base, f"/v1/{NAME}?group={GROUP}", idle=0.3)
    assert wire.status == 200
    assert wire.header("content-length") == str(len(DATA))
    assert wire.header("transfer-encoding") is None
    assert sha256(wire.body) == sha256(DATA)
    assert not wire.closed  # a complete response keeps the connection
    # Counted as the server finishes each response, which may trail the client a little.
    await wait_for(lambda: tracker.counter("snapshot_tracker_active_streams") == 0)
    served = tracker.counter("snapshot_tracker_served_bytes_total", source="upstream")
    read = tracker.counter("snapshot_tracker_upstream_bytes_total", group=GROUP, kind="full")
    assert served == read == 2 * len(DATA)
    assert tracker.outcome("proxy") == 2


async def test_head_sends_headers_only(tracker: TrackerUnderTest, upstream: FakeUpstream) -> None:
    wire = await raw_request(tracker.base, f"/v1/{NAME}?group={GROUP}", method="HEAD")
    assert wire.status == 200
    assert wire.header("content-length") == str(len(DATA))
    assert wire.header("transfer-encoding") is None
    assert wire.body == b""
    assert [s.method for s in upstream.seen] == ["HEAD"]


async def test_short_endpoint_redirects_to_own_route(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    wire = await raw_request(tracker.base, "/v1/snapshot.tar.bz2", method="HEAD")
    assert wire.status == 303
    assert ("location", f"/v1/{GROUP}/{NAME}") in wire.headers
    wire = await raw_request(tracker.base, "/snapshot.tar.bz2")
    assert ("location", f"/{NAME}") in wire.headers
    assert upstream.seen == []


async def test_credentials_go_upstream_client_secrets_do_not(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    upstream.behaviour[NAME] = Behaviour(
        headers=[
            ("set-cookie", "session=upstream"),
            ("x-upstream-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("connection", "keep-alive"),
        ]
    )
    client_headers = [
        ("authorization", "Basic Y2xpZW50OnNlY3JldA=="),
        ("cookie", "session=client"),
        ("x-custom", "client"),
        ("proxy-authorization", "Basic eDp5"),
        ("te", "trailers"),
        ("if-modified-since", "Sat, 21 Nov 2020 10:00:00 GMT"),
    ]
    wire = await raw_request(tracker.base, f"/v1/{NAME}?group={GROUP}", headers=client_headers)
    assert wire.status == 200
    assert sha256(wire.body) == sha256(DATA)
    [seen] = upstream.seen
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["if-modified-since"] == "Sat, 21 Nov 2020 10:00:00 GMT"
    for name in ("cookie", "x-custom", "proxy-authorization", "te"):
        assert name not in seen.headers
    names = {k.lower() for k, _ in wire.headers}
    assert "set-cookie" not in names
    assert "x-upstream-secret" not in names
    assert "keep-alive" not in names
    assert wire.header("server") != "fake-upstream"
    assert wire.header("etag") == UPSTREAM_ETAG


async def test_range_and_conditionals_are_forwarded(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    async with httpx.AsyncClient(verify=client_tls()) as client:
        part = await client.get(tracker.url(NAME), headers={"range": "bytes=100-199"})
        suffix = await client.get(tracker.url(NAME), headers={"range": "bytes=-100"})
        past = await client.get(tracker.url(NAME), headers={"range": f"bytes={len(DATA)}-"})
        same = await client.get(tracker.url(NAME), headers={"if-none-match": UPSTREAM_ETAG})
    assert part.status_code == 206
    assert part.content == DATA[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(DATA)}"
    assert suffix.status_code == 206
    assert suffix.content == DATA[-100:]
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{len(DATA)}"
    assert same.status_code == 304
    assert same.content == b""
    assert [s.headers.get("range") for s in upstream.seen[:3]] == [
        "bytes=100-199",
        "bytes=-100",
        f"bytes={len(DATA)}-",
    ]


async def test_a_condition_past_ascii_is_ignored_not_blamed_on_the_source(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    """A client's conditional header with a byte past ASCII (which HTTP lets it send) was
    passed on as text httpx would not encode: a 502 for a file the source holds, the source
    counted failed and a failed transfer recorded against it, for any client that sends one.
    It goes on as none, as a file's answer ignores it; an If-Range so ignored takes its Range
    with it (the whole file)."""
    async with httpx.AsyncClient(verify=client_tls()) as client:
        whole = await client.get(tracker.url(NAME), headers={"if-none-match": b'"\xe9"'})
        ranged = await client.get(
            tracker.url(NAME), headers={"range": "bytes=0-9", "if-range": b'"\xe9"'}
        )
    assert whole.status_code == 200 and whole.content == DATA
    assert ranged.status_code == 200 and ranged.content == DATA
    assert [dict(s.headers).get("if-none-match") for s in upstream.seen] == [None, None]
    assert [dict(s.headers).get("range") for s in upstream.seen] == [None, None]
    assert tracker.outcome("proxy") == 2
    assert tracker.counter("snapshot_tracker_source_failures_total", group=GROUP) == 0


def _dead_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/files/{NAME}"


async def test_failover_to_the_next_source_before_any_byte(upstream: FakeUpstream) -> None:
    broken = FakeUpstream(files={NAME: DATA}, behaviour={NAME: Behaviour(status=503)})
    missing = FakeUpstream()
    async with trio.open_nursery() as nursery:
        for up in (broken, missing):
            await nursery.start(up.run)
        async with proxy_tracker() as t:
            # Most recently scraped first: dead, then 503, then 404, then the good one.
            dead = _dead_url()
            advertise(t.index, dead.rsplit("/files/", 1)[0], [(NAME, dead, len(DATA))], age=0)
            advertise(t.index, broken.base, [(NAME, broken.url(NAME), len(DATA))], age=1)
            advertise(t.index, missing.base, [(NAME, missing.url(NAME), len(DATA))], age=2)
            advertise(t.index, upstream.base, [(NAME, upstream.url(NAME), len(DATA))], age=3)
            async with httpx.AsyncClient(verify=client_tls()) as client:
                response = await client.get(t.url(NAME))
            assert response.status_code == 200
            assert sha256(response.content) == sha256(DATA)
            assert len(broken.seen) == len(missing.seen) == len(upstream.seen) == 1
            # Three failovers (dead, 503, 404), counted for the dashboard.
            assert t.counter("snapshot_tracker_source_failures_total", group=GROUP) == 3
        nursery.cancel_scope.cancel()


async def test_all_sources_failing_is_a_502_with_one_line() -> None:
    broken = FakeUpstream(files={NAME: DATA}, behaviour={NAME: Behaviour(status=500)})
    async with trio.open_nursery() as nursery:
        await nursery.start(broken.run)
        async with proxy_tracker() as t:
            dead = _dead_url()
            advertise(t.index, dead.rsplit("/files/", 1)[0], [(NAME, dead, len(DATA))], age=0)
            advertise(t.index, broken.base, [(NAME, broken.url(NAME), len(DATA))], age=1)
            async with httpx.AsyncClient(verify=client_tls()) as client:
                response = await client.get(t.url(NAME))
            assert response.status_code == 502
            assert response.headers["content-type"].startswith("text/plain")
            text = response.text
            assert text.endswith("\n") and text.count("\n") == 1
            assert "source 1: cannot connect" in text and "source 2: HTTP 500" in text
            assert "127.0.0.1" not in text  # where archives come from stays in the log
            assert t.outcome("upstream_failed") == 1
            assert t.counter("snapshot_tracker_source_failures_total", group=GROUP) == 2
        nursery.cancel_scope.cancel()


async def test_redirects_keep_credentials_on_the_same_origin_only(upstream: FakeUpstream) -> None:
    hop = FakeUpstream()
    async with trio.open_nursery() as nursery:
        await nursery.start(hop.run)
        # hop: /same/NAME -> /files/NAME on hop itself (has no file: 404 would fail) ...
        hop.files[NAME] = DATA
        hop.behaviour["first"] = Behaviour(redirect_to=f"/files/{NAME}")
        # ... and upstream: /away/NAME -> another origin.
        upstream.behaviour["away"] = Behaviour(redirect_to=hop.url("first"))
        # Another origin is reachable only where the egress policy allows: loopback here.
        async with proxy_tracker(egress=Egress(allow=("127.0.0.0/8",))) as t:
            advertise(t.index, upstream.base, [(NAME, f"{upstream.base}/x/away", len(DATA))])
            async with httpx.AsyncClient(verify=client_tls()) as client:
                response = await client.get(t.url(NAME))
            assert response.status_code == 200
            assert sha256(response.content) == sha256(DATA)
        [first] = upstream.seen
        assert first.headers["authorization"] == f"Bearer {TOKEN}"
        assert [s.target for s in hop.seen] == ["/files/first", f"/files/{NAME}"]
        assert all("authorization" not in s.headers for s in hop.seen)
        nursery.cancel_scope.cancel()


async def test_the_settings_a_tracker_is_built_with_reach_the_download_clients(
    upstream: FakeUpstream,
) -> None:
    """One value of the proxy's settings, given when the tracker is built (the context is
    frozen): its download clients follow no redirect, and wait less, as it says."""
    upstream.behaviour["hop"] = Behaviour(redirect_to=f"/files/{NAME}")
    upstream.behaviour["slow"] = Behaviour(delay=3.0)
    strict = attrs.evolve(FAST, max_redirects=0, answer_timeout=0.2)
    async with proxy_tracker(None, settings=strict) as t:
        assert t.parts.streamer.clients.settings is strict
        advertise(t.index, upstream.base, [(NAME, f"{upstream.base}/files/hop", len(DATA))])
        async with httpx.AsyncClient(verify=client_tls()) as client:
            response = await client.get(t.url(NAME))
            assert response.status_code == 502
            assert "more than 0 redirects" in response.text
            advertise(t.index, upstream.base, [(NAME, f"{upstream.base}/files/slow", len(DATA))])
            with trio.fail_after(2.5):  # FAST's answer_timeout (5 s) would still wait
                response = await client.get(t.url(NAME))
            assert response.status_code == 502


@pytest.mark.parametrize(
    "behaviour",
    [Behaviour(drop_after=1 * MiB), Behaviour(short_by=1000)],
    ids=["drop-mid-body", "short-200"],
)
async def test_broken_upstream_body_breaks_the_client_connection(
    tracker: TrackerUnderTest, upstream: FakeUpstream, behaviour: Behaviour
) -> None:
    upstream.behaviour[NAME] = behaviour
    wire = await raw_request(tracker.base, f"/v1/{NAME}?group={GROUP}")
    assert wire.status == 200
    assert wire.header("content-length") == str(len(DATA))
    assert len(wire.body) < len(DATA)  # short ...
    assert wire.closed  # ... and the connection closed: never a silently short 200
    with pytest.raises(httpx.RemoteProtocolError):
        async with httpx.AsyncClient(verify=client_tls()) as client:
            await client.get(tracker.url(NAME))


async def test_answer_without_length_uses_the_index_size(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    upstream.behaviour[NAME] = Behaviour(chunked=True)
    wire = await raw_request(tracker.base, f"/v1/{NAME}?group={GROUP}")
    assert wire.header("content-length") == str(len(DATA))
    assert wire.header("transfer-encoding") is None
    assert sha256(wire.body) == sha256(DATA)


async def test_answer_without_any_known_length_is_a_502(upstream: FakeUpstream) -> None:
    upstream.behaviour[NAME] = Behaviour(chunked=True)
    async with proxy_tracker() as t:
        advertise(t.index, upstream.base, [(NAME, upstream.url(NAME), 0)])
        async with httpx.AsyncClient(verify=client_tls()) as client:
            response = await client.get(t.url(NAME))
        assert response.status_code == 502
        assert "without content-length" in response.text


@pytest.mark.parametrize("cached", [False, True])
async def test_a_206_to_a_whole_file_request_is_no_answer(
    upstream: FakeUpstream, tmp_path: Path, cached: bool
) -> None:
    """A source answering a plain GET with 206 and its first bytes, the index knowing no
    size to tell them from the file: the client got those 11 bytes as its whole answer
    (206, a status it took for success), relayed or from a refresh. The source failed."""
    body = b"status 206\n"
    upstream.behaviour[NAME] = Behaviour(
        status=206, headers=[("content-range", f"bytes 0-{len(body) - 1}/{len(DATA)}")]
    )
    async with proxy_tracker(tmp_path / "cache" if cached else None) as t:
        advertise(t.index, upstream.base, [(NAME, upstream.url(NAME), 0)])
        async with httpx.AsyncClient(verify=client_tls()) as client:
            response = await client.get(t.url(NAME))
        assert response.status_code == 502
        assert upstream.gets(NAME)


async def test_index_size_that_lies_breaks_the_stream(upstream: FakeUpstream) -> None:
    upstream.behaviour[NAME] = Behaviour(chunked=True)
    async with proxy_tracker() as t:
        advertise(t.index, upstream.base, [(NAME, upstream.url(NAME), len(DATA) + 10)])
        wire = await raw_request(t.base, f"/v1/{NAME}?group={GROUP}")
        assert wire.header("content-length") == str(len(DATA) + 10)
        assert len(wire.body) <= len(DATA)
        assert wire.closed


@pytest.mark.parametrize("plain", [False, True])
async def test_an_index_size_below_a_longer_body_never_looks_complete(
    upstream: FakeUpstream, plain: bool
) -> None:
    # A body framed by chunks and longer than the index's size was cut at that size: the
    # client had every byte its content-length promised, then a close, as after any
    # complete answer; the surplus was seen only after. The last byte now waits for the
    # upstream's end.
    small = len(DATA) - 64 * 1024  # a chunk boundary of the upstream
    upstream.behaviour[NAME] = Behaviour(chunked=True)
    async with proxy_tracker(None, plain=plain) as t:
        advertise(t.index, upstream.base, [(NAME, upstream.url(NAME), small)])
        wire = await raw_request(t.base, f"/v1/{NAME}?group={GROUP}")
    assert wire.status == 200 and wire.header("content-length") == str(small)
    assert len(wire.body) < small and wire.closed


@pytest.mark.parametrize("plain", [False, True])
async def test_an_early_head_then_a_longer_body_never_looks_complete(
    upstream: FakeUpstream, plain: bool
) -> None:
    small = len(DATA) - 64 * 1024
    upstream.behaviour[NAME] = Behaviour(chunked=True, delay=3.0)  # long after the early head
    async with proxy_tracker(None, plain=plain, settings=EARLY) as t:
        advertise(t.index, upstream.base, [(NAME, upstream.url(NAME), small)])
        wire = await raw_request(t.base, f"/v1/{NAME}?group={GROUP}")
    assert wire.header("etag") is None  # an early head: it carries no validator
    assert wire.status == 200 and wire.header("content-length") == str(small)
    assert len(wire.body) < small and wire.closed


async def test_slow_client_slows_the_upstream_read(upstream: FakeUpstream) -> None:
    big = archive_bytes(48 * MiB, seed=2)
    name = full_name(2000)
    upstream.files[name] = big
    async with proxy_tracker() as t:
        advertise(t.index, upstream.base, [(name, upstream.url(name), len(big))])
        host, port = t.base.removeprefix("http://").rsplit(":", 1)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        await sock.connect((host, int(port)))
        stream = trio.SocketStream(sock)
        async with stream:
            await stream.send_all(f"GET /v1/{name} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            await stream.receive_some(65536)
            await wait_for(lambda: bool(upstream.gets(name)))
            await trio.sleep(1.0)  # the client reads nothing meanwhile
            sent = upstream.gets(name)[0].body_sent
            # Socket buffers on both hops plus 4 chunks of 1 MiB: far less than the file.
            assert sent < 24 * MiB, sent
            received = 0
            while received < 2 * MiB:
                received += len(await stream.receive_some(65536))
        # The client left: the upstream connection is closed, not drained.
        await wait_for(lambda: upstream.gets(name)[0].aborted, timeout=5)
        assert upstream.gets(name)[0].body_sent < len(big)
        await wait_for(lambda: t.counter("snapshot_tracker_active_streams") == 0, timeout=5)


async def stalled_client(base: str, target: str) -> trio.SocketStream:
    """A connection that asks for ``target``, takes the response head and reads no more."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    await stream.send_all(f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 200")
    return stream


async def settled(read: Callable[[], float], quiet: float = 0.5, timeout: float = 30) -> float:
    """``read()`` once it has not changed for ``quiet`` seconds."""
    with trio.fail_after(timeout):
        last = read()
        while True:
            await trio.sleep(quiet)
            if (now := read()) == last:
                return now
            last = now


async def test_slow_clients_of_the_channel_share_a_bounded_memory(upstream: FakeUpstream) -> None:
    """Streams passed through Python (TLS upstreams, HTTP/2 clients: plain hypercorn here)
    hold at most the channel budget between them, however slowly their clients read: each
    held several MiB (read-ahead, queued pieces of 2 MiB), ~7 MB per stalled client."""
    big = archive_bytes(24 * MiB, seed=5)
    name = full_name(2000)
    upstream.files[name] = big
    upstream.chunk = MiB  # a source on a fast link: reads return what they ask for
    # Every stream has started before any body byte flows: each reads its share of all.
    upstream.behaviour[name] = Behaviour(pause_at=0)
    budget = 4 * MiB
    # the early head gets each client its head while the source holds its body back
    settings = attrs.evolve(EARLY, channel_budget=budget)
    clients = 8
    async with proxy_tracker(settings=settings, plain=True) as t:
        advertise(t.index, upstream.base, [(name, upstream.url(name), len(big))])
        stalled = [await stalled_client(t.base, f"/v1/{name}") for _ in range(clients)]
        upstream.behaviour[name].resume.set()
        read = partial(t.counter, "snapshot_tracker_upstream_bytes_total", group=GROUP, kind="full")
        served = partial(t.counter, "snapshot_tracker_served_bytes_total", source="upstream")
        upstream_bytes = await settled(read)
        held = upstream_bytes - served()  # read from the sources, not handed to the server
        for stream in stalled:
            await stream.aclose()
    assert upstream_bytes < clients * len(big)  # they did stall
    assert 0 < held <= budget, f"{held / MiB:.1f} MiB held by {clients} stalled streams"


async def test_client_leaving_while_the_upstream_stalls_closes_it_at_once(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    upstream.behaviour[NAME] = Behaviour(pause_at=1 * MiB)  # then stalls, never resumed
    wire = await raw_request(tracker.base, f"/v1/{NAME}?group={GROUP}", read_limit=64 * 1024)
    assert wire.status == 200
    await wait_for(lambda: upstream.seen[0].aborted, timeout=5)
    await wait_for(lambda: tracker.counter("snapshot_tracker_active_streams") == 0)


async def test_no_framework_timeout_cuts_a_long_download(upstream: FakeUpstream) -> None:
    upstream.behaviour[NAME] = Behaviour(rate=2 * MiB)  # 3 MiB: 1.5 s
    async with proxy_tracker(app_config={"RESPONSE_TIMEOUT": 0.5}) as t:
        advertise(t.index, upstream.base, [(NAME, upstream.url(NAME), len(DATA))])
        async with httpx.AsyncClient(verify=client_tls(), timeout=10) as client:
            response = await client.get(t.url(NAME))
        assert sha256(response.content) == sha256(DATA)


async def test_incremental_counts_as_incremental_upstream_bytes(upstream: FakeUpstream) -> None:
    name = incremental_name(1000, 1100)
    upstream.files[name] = DATA[: 1 * MiB]
    async with proxy_tracker() as t:
        advertise(t.index, upstream.base, [(name, upstream.url(name), 1 * MiB)])
        async with httpx.AsyncClient(verify=client_tls()) as client:
            response = await client.get(t.url(name))
        assert response.content == DATA[: 1 * MiB]
        kind = t.counter("snapshot_tracker_upstream_bytes_total", group=GROUP, kind="incremental")
        assert kind == 1 * MiB


async def first_bytes_then_rest(url: str, pause: Behaviour, count: int) -> bytes:
    """GET ``url``; the first ``count`` body bytes must arrive while the upstream is paused
    after them (nothing else could push them out), then the rest after ``pause.resume``."""
    got = bytearray()
    async with (
        httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client,
        client.stream("GET", url) as response,
    ):
        chunks = response.aiter_raw()
        with trio.fail_after(3):
            while len(got) < count:
                got += await chunks.__anext__()
        pause.resume.set()
        async for chunk in chunks:
            got += chunk
    return bytes(got)


async def test_body_bytes_go_out_as_soon_as_they_arrive(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    pause = Behaviour(pause_at=100 * 1024)
    upstream.behaviour[NAME] = pause
    got = await first_bytes_then_rest(tracker.url(NAME), pause, 100 * 1024)
    assert sha256(got) == sha256(DATA)


async def test_a_refresh_passes_body_bytes_on_as_soon_as_they_arrive(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    pause = Behaviour(pause_at=100 * 1024)
    upstream.behaviour[NAME] = pause
    async with proxy_tracker(tmp_path / "cache") as t:
        advertise(t.index, upstream.base, [(NAME, upstream.url(NAME), len(DATA))])
        got = await first_bytes_then_rest(t.url(NAME), pause, 100 * 1024)
        assert sha256(got) == sha256(DATA)
        await wait_for(lambda: t.cached() == [NAME])


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("plain", [False, True])
async def test_an_early_head_then_an_unsized_body_of_the_right_length_is_whole(
    upstream: FakeUpstream, tmp_path: Path, plain: bool, cached: bool
) -> None:
    upstream.behaviour[NAME] = Behaviour(chunked=True, delay=1.0)  # after the early head
    cache = tmp_path / "cache" if cached else None
    async with proxy_tracker(cache, plain=plain, settings=EARLY) as t:
        advertise(t.index, upstream.base, [(NAME, upstream.url(NAME), len(DATA))])
        # kept open past the body: a broken one would be closed (not wire.closed below)
        wire = await raw_request(t.base, f"/v1/{NAME}?group={GROUP}", idle=0.3)
    assert wire.header("etag") is None  # an early head: it carries no validator
    assert wire.status == 200 and wire.header("content-length") == str(len(DATA))
    assert sha256(wire.body) == sha256(DATA) and not wire.closed
