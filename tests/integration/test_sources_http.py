"""HTTP-server probe against real servers: redirects read, never followed; chains; errors."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio
from helpers_server import local_config, serve_app
from helpers_sources import HASHES, Answer, Request, ScriptedApp
from helpers_tls import client_tls

from tracker.clientwire.transport import HeadClient
from tracker.config.schema import TargetGroup
from tracker.core.snapshots import MAX_URL
from tracker.discovery.http import SizeMemo, probe_http
from tracker.errors import ProbeError
from tracker.net.egress import EgressPolicy
from tracker.net.httpclients import build_client

H0, H1 = HASHES[:2]
FULL = f"snapshot-100-{H0}.tar.zst"
INCR = f"incremental-snapshot-100-150-{H1}.tar.zst"
FULL_PATH, INCR_PATH = "/snapshot.tar.bz2", "/incremental-snapshot.tar.bz2"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=client_tls(), timeout=5) as c:
        yield c


def redirect(location: str, status: int = 303) -> Answer:
    return Answer(status, (("location", location),))


async def test_redirects_name_archives_and_the_incremental_chains_to_its_full(
    nursery, client
) -> None:
    other_app = ScriptedApp()
    other = await nursery.start(serve_app, other_app)
    app = ScriptedApp(
        {FULL_PATH: redirect(f"/{FULL}"), INCR_PATH: redirect(f"{other}/dl/{INCR}", 302)}
    )
    base = await nursery.start(serve_app, app)

    # The other origin is on loopback: reachable only where the egress policy allows it.
    loopback = EgressPolicy.from_lists(["127.0.0.0/8"], [])
    full, incr = await probe_http(
        client, base, headers={"authorization": "Basic eDp5"}, policy=loopback
    )

    assert (full.slot, full.base_slot, full.hash, full.size) == (100, 100, H0, 0)
    assert full.files[0].file_name == full.files[0].url == f"{base}/{FULL}"
    assert (incr.slot, incr.base_slot, incr.hash) == (150, 100, H1)
    assert [f.file_name for f in incr.files] == [f"{other}/dl/{INCR}", f"{base}/{FULL}"]
    assert [f.bare_name for f in incr.files] == [INCR, FULL]
    assert sorted((r.method, r.path) for r in app.requests) == [
        ("HEAD", INCR_PATH),
        ("HEAD", FULL_PATH),
    ]
    assert {r.headers.get("authorization") for r in app.requests} == {"Basic eDp5"}
    assert other_app.requests == []  # redirects are not followed


async def test_relative_location_resolves_against_a_prefixed_target(nursery, client) -> None:
    incr_90 = f"incremental-snapshot-90-150-{H1}.tar.zst"  # base 90: not the full's slot
    app = ScriptedApp(
        {"/rpc" + FULL_PATH: redirect(FULL), "/rpc" + INCR_PATH: redirect(incr_90, 307)}
    )
    base = await nursery.start(serve_app, app)

    full, incr = await probe_http(client, f"{base}/rpc/?api-key=k")

    assert full.files[0].url == f"{base}/rpc/{FULL}"
    assert [f.url for f in incr.files] == [f"{base}/rpc/{incr_90}"]
    assert {r.query for r in app.requests} == {"api-key=k"}


@pytest.mark.parametrize(
    ("full_answer", "incr_answer", "slots"),
    [
        (Answer(404), Answer(404), []),
        (Answer(202, (), b"no snapshot available"), Answer(202), []),
        (Answer(404), redirect(f"/{INCR}"), [[150]]),
        (redirect(f"/{FULL}"), Answer(202), [[100]]),
    ],
)
async def test_404_and_202_mean_none(nursery, client, full_answer, incr_answer, slots) -> None:
    app = ScriptedApp({FULL_PATH: full_answer, INCR_PATH: incr_answer})
    base = await nursery.start(serve_app, app)
    infos = await probe_http(client, base)
    assert [[f.name.slot for f in info.files] for info in infos] == slots


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Answer(500), "HTTP 500 Internal Server Error"),
        (Answer(200), "HTTP 200 OK: expected a redirect to a named archive"),
        (Answer(302), "HTTP 302 Found: no Location header"),
        (Answer(304), "HTTP 304 Not Modified: no Location header"),
        (redirect("/snapshot-latest.tar.zst"), "Location '/snapshot-latest.tar.zst' does not"),
        (redirect(f"/{FULL}.tmp"), "does not name a snapshot archive"),
        (redirect(f"ftp://h/{FULL}"), "does not name a snapshot archive"),
        (redirect(f"/{INCR}"), f"Location '/{INCR}' names an incremental snapshot"),
        # httpx refuses it while reading the answer, before our own parsing.
        (redirect("http://[::1/x"), "malformed HTTP answer: Invalid URL in location header"),
    ],
)
async def test_bad_answers_fail_naming_the_alias(nursery, client, answer, reason) -> None:
    app = ScriptedApp({FULL_PATH: answer, INCR_PATH: Answer(404)})
    base = await nursery.start(serve_app, app)
    with pytest.raises(ProbeError) as info:
        await probe_http(client, base)
    assert str(info.value).startswith("snapshot.tar.bz2: ")
    assert reason in str(info.value)


async def test_full_alias_naming_an_incremental_is_refused_the_other_way_too(
    nursery, client
) -> None:
    app = ScriptedApp({FULL_PATH: Answer(404), INCR_PATH: redirect(f"/{FULL}")})
    base = await nursery.start(serve_app, app)
    with pytest.raises(ProbeError, match=r"^incremental-snapshot\.tar\.bz2: .* names a full"):
        await probe_http(client, base)


async def test_both_aliases_are_asked_at_once(nursery, client) -> None:
    arrived: list[str] = []
    both = trio.Event()

    async def wait_for_both(request: Request) -> Answer:
        arrived.append(request.path)
        if len(arrived) == 2:
            both.set()
        with trio.fail_after(2):  # asked one after the other: 500 after 2 s
            await both.wait()
        return Answer(404)

    app = ScriptedApp({FULL_PATH: wait_for_both, INCR_PATH: wait_for_both})
    base = await nursery.start(serve_app, app)
    assert await probe_http(client, base) == []


async def test_one_failure_does_not_wait_for_the_other_alias(nursery, client) -> None:
    async def hang(request: Request) -> Answer:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    app = ScriptedApp({FULL_PATH: Answer(503), INCR_PATH: hang})
    base = await nursery.start(partial(serve_app, app, config=local_config(graceful_timeout=0.1)))
    with trio.fail_after(2), pytest.raises(ProbeError, match=r"^snapshot\.tar\.bz2: HTTP 503"):
        await probe_http(client, base)


async def test_hanging_server_is_left_to_the_callers_timeout(nursery, client) -> None:
    async def hang(request: Request) -> Answer:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    app = ScriptedApp({FULL_PATH: hang, INCR_PATH: hang})
    base = await nursery.start(partial(serve_app, app, config=local_config(graceful_timeout=0.1)))
    with pytest.raises(trio.TooSlowError), trio.fail_after(0.3):
        await probe_http(client, base)


async def test_transport_and_target_errors(client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = r"^(incremental-)?snapshot\.tar\.bz2: cannot connect: Connection refused$"
    with pytest.raises(ProbeError, match=refused):
        await probe_http(client, f"http://127.0.0.1:{port}")
    with pytest.raises(ProbeError, match=r"^target is not an absolute http"):
        await probe_http(client, "rpc.example.org")
    with pytest.raises(ProbeError, match=r"^target is not an absolute http"):
        await probe_http(client, "ftp://rpc.example.org")
    with pytest.raises(ProbeError, match=r"^invalid target URL"):
        await probe_http(client, "http://[::1")


async def test_sizes_are_learned_by_one_head_of_each_new_archive_url(nursery, client) -> None:
    """README.md#clients: the redirect carries no size; one HEAD of each newly seen concrete URL on
    the
    target's own origin gives it (with the target's credentials); a URL on another origin is
    not asked, and a URL already asked is not asked again."""
    other_app = ScriptedApp({f"/dl/{INCR}": Answer(200, (("content-length", "77"),))})
    other = await nursery.start(serve_app, other_app)
    app = ScriptedApp(
        {
            FULL_PATH: redirect(f"/{FULL}"),
            INCR_PATH: redirect(f"{other}/dl/{INCR}"),
            f"/{FULL}": Answer(200, (("content-length", "123456789"),)),
        }
    )
    base = await nursery.start(serve_app, app)
    loopback = EgressPolicy.from_lists(["127.0.0.0/8"], [])
    sizes = SizeMemo()
    probe = partial(
        probe_http, client, base, headers={"authorization": "Bearer t"}, policy=loopback
    )
    for _ in range(3):
        full, incr = await probe(sizes=sizes)
        assert full.files[0].size == 123456789
        assert [f.size for f in incr.files] == [0, 123456789]  # the other origin: unknown
    heads = [r for r in app.requests if r.path == f"/{FULL}"]
    assert len(heads) == 1 and heads[0].method == "HEAD"
    assert heads[0].headers.get("authorization") == "Bearer t"
    assert other_app.requests == []


async def test_a_location_longer_than_a_listing_keeps_fails_the_probe(nursery, client) -> None:
    """A discovered node's answer head may hold a 16 KiB ``Location`` (all the probe's
    client reads): kept, its archive URL was held as many KiB in the index, the sizes memo
    and every listing (and ``fetch`` refuses a listed URL over 4,096 characters). Over
    MAX_URL it fails the probe in one line, asking nothing more; one of MAX_URL is kept."""
    long = "/" + "a" * 16_000 + f"/{FULL}"
    app = ScriptedApp({FULL_PATH: redirect(long), INCR_PATH: Answer(404)})
    base = await nursery.start(serve_app, app)
    for heads in (client, HeadClient(5.0)):  # a configured target's client, a node's
        with pytest.raises(ProbeError) as info:
            await probe_http(heads, base, sizes=SizeMemo())
        assert str(info.value) == (
            f"snapshot.tar.bz2: Location names a URL of {len(base + long)} characters, "
            f"over {MAX_URL}"
        )
    assert set(app.paths()) == {FULL_PATH, INCR_PATH}  # no HEAD of the archive's size
    fits = "/" + "a" * (MAX_URL - len(base) - len(FULL) - 2) + f"/{FULL}"
    app.routes[FULL_PATH] = redirect(fits)
    [full] = await probe_http(HeadClient(5.0), base)
    assert full.files[0].url == base + fits and len(full.files[0].url) == MAX_URL


@pytest.mark.parametrize(
    "answer",
    [
        Answer(404),
        Answer(200, (("content-length", "12x"),)),
        Answer(302, (("location", "/elsewhere"), ("content-length", "5"))),
    ],
)
async def test_a_head_without_a_usable_length_leaves_the_size_unknown(
    nursery, client, answer: Answer
) -> None:
    app = ScriptedApp({FULL_PATH: redirect(f"/{FULL}"), f"/{FULL}": answer})
    base = await nursery.start(serve_app, app)
    sizes = SizeMemo()
    for _ in range(2):
        [full] = await probe_http(client, base, sizes=sizes)
        assert full.files[0].size == 0
    assert [r.path for r in app.requests].count(f"/{FULL}") == 1  # remembered as unknown


async def test_a_size_head_that_hangs_costs_the_size_not_the_source(nursery, client) -> None:
    """The aliases answer, the archive's HEAD (a size hint for the proxy) never does: the
    probe took the whole scrape_timeout and failed, the target down every round, dropped
    after max_target_failures. It answers within its time, the size unknown, and the size
    is asked again at the next probe (a hang is not remembered)."""

    async def hang(_request: Request) -> Answer:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    app = ScriptedApp({FULL_PATH: redirect(f"/{FULL}"), f"/{FULL}": hang})
    base = await nursery.start(serve_app, app)
    sizes = SizeMemo()
    for _ in range(2):
        with trio.fail_after(2):  # the probe's deadline (scrape_timeout): half for the size
            [full] = await probe_http(client, base, sizes=sizes)
        assert full.files[0].name.file_name == FULL and full.files[0].size == 0
    assert [r.path for r in app.requests].count(f"/{FULL}") == 2


class ClosingAfterOne:
    """A real HTTP/1.1 server on 127.0.0.1 that answers the first request of each
    connection (keep-alive) and, when the next one arrives, closes without answering: the
    moment a server's keep-alive timeout ends a connection as a request goes out on it."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []

    async def start(self, nursery: trio.Nursery) -> str:
        """Serve in ``nursery``; its base URL."""
        [listener] = await nursery.start(partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1"))
        return f"http://127.0.0.1:{listener.socket.getsockname()[1]}"

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buffered = b""
        answered = False
        async with stream:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffered += chunk
                while b"\r\n\r\n" in buffered:  # the requests here carry no body
                    head, buffered = buffered.split(b"\r\n\r\n", 1)
                    self.requests.append(head.split(b" ", 1)[0])
                    if answered:
                        return  # closed: no answer
                    answered = True
                    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


def probe_client() -> httpx.AsyncClient:
    """A group's probe client, as discovery builds it (``Probes``)."""
    return build_client(
        TargetGroup(group="g"), connect_timeout=5, read_timeout=5, max_connections=2
    )


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_a_keep_alive_connection_closed_as_a_probe_goes_out_is_asked_again(
    nursery: trio.Nursery, method: str
) -> None:
    server = ClosingAfterOne()
    url = f"{await server.start(nursery)}/snapshot.tar.bz2"
    async with probe_client() as c:
        for _ in range(3):
            assert (await c.request(method, url)).status_code == 200
    # 1st on connection 1; 2nd closed there, asked again on connection 2; 3rd the same.
    assert server.requests == [method.encode()] * 5 and server.connections == 3


async def test_a_post_on_a_closed_connection_is_not_sent_again(nursery: trio.Nursery) -> None:
    server = ClosingAfterOne()
    url = f"{await server.start(nursery)}/"
    async with probe_client() as c:
        assert (await c.post(url)).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await c.post(url)  # not idempotent: the caller decides
    assert server.requests == [b"POST", b"POST"] and server.connections == 1
