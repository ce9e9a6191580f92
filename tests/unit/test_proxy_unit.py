"""tracker.proxy.upstream and tracker.proxy.transfers pieces on their own: header whitelists,
the head of a proxied answer, the download clients per TLS setting, Transfers (the download
client's big reads against a real server: tests/integration/test_download_client.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial

import httpx
import pytest
import trio
import trio.testing
from names import full_name

from tracker.config.schema import Config, TLSConfig
from tracker.core.snapshots import SnapshotFile, info_from_files, parse_archive_name
from tracker.errors import UpstreamError
from tracker.observability.logs import record_fields
from tracker.observability.metrics import Metrics
from tracker.ordering.index import Index, SnapshotSource, TargetKey
from tracker.proxy.streamer import ProxyStreamer
from tracker.proxy.transfers import Transfers, plan_head
from tracker.proxy.upstream import (
    DownloadClients,
    ProxySettings,
    UpstreamAnswer,
    client_response_headers,
    upstream_request_headers,
)

NAME = full_name(77)


def test_only_range_and_conditionals_go_upstream() -> None:
    client = [
        ("Range", "bytes=0-1"),
        ("If-Range", '"x"'),
        ("If-Match", '"a"'),
        ("If-None-Match", '"b"'),
        ("If-Modified-Since", "d1"),
        ("If-Unmodified-Since", "d2"),
        ("Authorization", "Basic client"),
        ("Cookie", "c=1"),
        ("Connection", "keep-alive, x-hop"),
        ("X-Hop", "1"),
        ("Accept-Encoding", "gzip"),
        ("Host", "tracker"),
        ("If-Match", '"c"'),  # a repeated header keeps its first value
    ]
    assert upstream_request_headers(client, "Bearer group") == {
        "range": "bytes=0-1",
        "if-range": '"x"',
        "if-match": '"a"',
        "if-none-match": '"b"',
        "if-modified-since": "d1",
        "if-unmodified-since": "d2",
        "authorization": "Bearer group",
    }
    assert "authorization" not in upstream_request_headers(client, None)


@pytest.mark.parametrize(
    ("lines", "forwarded"),
    [
        ([("Range", "bytes=0-1")], "bytes=0-1"),
        ([("Range", "bytes=-500")], "bytes=-500"),
        # Several ranges go on as none, as a file's answer reads them: a source answered
        # multipart/byteranges, taken for a wrong size (502, every source counted failed).
        ([("Range", "bytes=0-1,10-11")], None),
        ([("Range", "bytes=0-1"), ("Range", "bytes=10-11")], None),
        # As a file's answer reads it (serving.ranges.range_spec), written plainly: an empty
        # list element is one range (the relay sent none: a 200 where a file's answer is a
        # 206), an invalid one is none (the source's 416 where a file's answer is a 200).
        ([("Range", "bytes=0-99,")], "bytes=0-99"),
        ([("Range", "BYTES = 0 - 99")], "bytes=0-99"),
        ([("Range", "bytes=5-2")], None),
        ([("Range", "items=0-1")], None),
    ],
)
def test_one_range_goes_upstream_several_go_as_none(
    lines: list[tuple[str, str]], forwarded: str | None
) -> None:
    assert upstream_request_headers(lines, None).get("range") == forwarded


@pytest.mark.parametrize(
    ("lines", "forwarded"),
    [
        # a byte past ASCII (as h11 reads it: latin-1) makes the condition go on as none,
        # as a file's answer ignores a validator it cannot match
        ([("If-None-Match", '"\xe9"')], {}),
        ([("If-Modified-Since", "\xe9")], {}),
        ([("If-Match", "*\xe9")], {}),
        ([("If-None-Match", '"\xe9"'), ("If-None-Match", '"e"')], {}),  # the first value
        ([("If-None-Match", '"e"'), ("If-Match", '"\xff"')], {"if-none-match": '"e"'}),
        # an If-Range that cannot match takes its Range with it: the whole file
        ([("Range", "bytes=0-1"), ("If-Range", '"\xe9"')], {}),
        (
            [("Range", "bytes=0-1"), ("If-Range", '"e"')],
            {"range": "bytes=0-1", "if-range": '"e"'},
        ),
        # a Range goes on as a file's answer reads it, written plainly (ASCII)
        ([("Range", "bytes=0-1\xa0")], {"range": "bytes=0-1"}),
    ],
)
def test_a_header_past_ascii_goes_upstream_as_none(
    lines: list[tuple[str, str]], forwarded: dict[str, str]
) -> None:
    """Sent on, httpx refused to encode it: a 502 for a file a source holds, every source
    counted failed and its throughput lowered by a request of any client's."""
    assert upstream_request_headers(lines, None) == forwarded


def test_only_entity_headers_come_back() -> None:
    upstream = httpx.Headers(
        [
            ("Content-Length", "10"),
            ("Content-Range", "bytes 0-9/20"),
            ("Accept-Ranges", "bytes"),
            ("ETag", '"e"'),
            ("Last-Modified", "d"),
            ("Content-Type", "application/zstd"),
            ("Set-Cookie", "s=1"),
            ("Server", "upstream"),
            ("Connection", "close"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Encoding", "gzip"),
            ("WWW-Authenticate", "Basic"),
        ]
    )
    assert set(client_response_headers(upstream)) == {
        "content-length",
        "content-range",
        "accept-ranges",
        "etag",
        "last-modified",
        "content-type",
    }


def answer(status: int, headers: list[tuple[str, str]]) -> UpstreamAnswer:
    parsed = parse_archive_name(NAME)
    assert parsed is not None
    f = SnapshotFile(name=parsed, file_name=NAME, url="http://u/" + NAME)
    source = SnapshotSource(info_from_files([f]), TargetKey("g", "http://u"), datetime.now(UTC))
    return UpstreamAnswer(httpx.Response(status, headers=headers), f.url, f, source)


@pytest.mark.parametrize(
    ("status", "headers", "method", "known", "expected_length", "body"),
    [
        (200, [("content-length", "100")], "GET", 0, "100", 100),
        (200, [("content-length", "100")], "HEAD", 0, "100", None),
        (200, [], "GET", 55, "55", 55),  # chunked upstream: the index's size
        # a content-length beside a transfer coding says nothing of the body (RFC 9112, 6.3)
        (200, [("content-length", "10"), ("transfer-encoding", "chunked")], "GET", 55, "55", 55),
        (206, [("content-range", "bytes 10-19/100")], "GET", 0, "10", 10),
        (206, [("content-length", "10"), ("content-range", "bytes 0-9/99")], "GET", 5, "10", 10),
        (416, [("content-range", "bytes */100")], "GET", 100, "0", None),
        (412, [], "GET", 100, "0", None),
        (304, [("content-length", "100")], "GET", 100, None, None),
        (200, [("content-length", "0")], "GET", 0, "0", None),
    ],
)
def test_plan_head(
    status: int,
    headers: list[tuple[str, str]],
    method: str,
    known: int,
    expected_length: str | None,
    body: int | None,
) -> None:
    head, length = plan_head(answer(status, headers), method, known)
    assert head.status == status
    assert head.headers.get("content-length") == expected_length
    assert length == body


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, []),
        (200, [("content-length", "-1")]),
        (206, [("content-range", "bytes 5-1/10")]),
        (206, [("content-range", "items 0-1/10")]),
    ],
)
def test_plan_head_refuses_an_archive_without_length(
    status: int, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(UpstreamError, match="content-length"):
        plan_head(answer(status, headers), "GET", 0)


async def test_download_clients_are_shared_per_tls_setting() -> None:
    clients = DownloadClients(ProxySettings())
    tls = TLSConfig(insecure_skip_verify=True)
    assert clients.for_tls(tls) is clients.for_tls(TLSConfig(insecure_skip_verify=True))
    assert clients.for_tls(tls) is not clients.foreign()
    # Other origins get a client of their own: it connects only where the egress policy
    # allows, and it never presents a group's client certificate.
    assert clients.foreign() is not clients.for_tls(None)
    assert clients.foreign() is clients.foreign()
    await clients.aclose()


async def test_transfers_refuse_new_work_once_closed() -> None:
    transfers = Transfers()
    assert not transfers.accepting

    async def job(*, task_status: trio.TaskStatus[int]) -> None:
        task_status.started(1)
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(transfers.run)
            assert transfers.accepting
            assert await transfers.start(job) == 1
            transfers.close(0.05)  # the running job is cancelled after the grace period
            with pytest.raises(UpstreamError, match="stopping"):
                await transfers.start(job)
    assert not transfers.accepting


@pytest.mark.expects_task_failure
async def test_a_background_task_that_raises_is_logged_and_ends_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A spawned task (a prefetch, an upload, a lock's release) that raises what no rule of
    its own caught ends that task: logged once as ``task_failed`` and counted, the transfers
    running on. Raised into the transfers' nursery, an upload's lock release ended the
    daemon; logged alone, it alerted no one."""
    metrics = Metrics(process=False)
    transfers = Transfers(on_failure=partial(metrics.count_internal_error, "task"))
    ran: list[str] = []

    async def release(key: str) -> None:
        raise RuntimeError(f"no rule for {key}")

    async def prefetch(key: str) -> None:
        ran.append(key)

    async def job(*, task_status: trio.TaskStatus[int]) -> None:
        task_status.started(1)
        await trio.sleep_forever()

    with trio.fail_after(5), caplog.at_level(logging.ERROR, logger="tracker"):
        async with trio.open_nursery() as nursery:
            await nursery.start(transfers.run)
            assert await transfers.start(job) == 1  # a transfer that runs meanwhile
            assert transfers.spawn(release, "p/.locks/g/x.lock")
            await trio.testing.wait_all_tasks_blocked()  # the task failed and ended
            assert transfers.accepting and transfers.spawn(prefetch, "g/x")
            await trio.testing.wait_all_tasks_blocked()
            assert ran == ["g/x"]  # the background nursery still runs what is spawned
            transfers.close(0)
    failed = [record_fields(r)[1] for r in caplog.records if r.msg == "task_failed"]
    assert len(failed) == 1
    assert str(failed[0]["task"]).endswith("release")
    assert failed[0]["error"] == "RuntimeError: no rule for p/.locks/g/x.lock"
    assert "Traceback" in str(failed[0]["traceback"])
    counted = metrics.registry.get_sample_value
    assert counted("snapshot_tracker_internal_errors_total", {"where": "task"}) == 1


async def test_a_forced_stop_cancels_running_transfers_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A second SIGTERM ends the grace at once (README.md, "serve"): the running transfers
    (a refresh pulling from its source) are cancelled then, not left running until the
    listeners are cancelled 2 s later (they pulled 16 MB more), nor to the grace's end.
    On the mock clock: no time passes between the cut and their end."""
    transfers = Transfers()
    ended: list[float] = []

    async def job(*, task_status: trio.TaskStatus[int]) -> None:
        task_status.started(1)
        try:
            await trio.sleep_forever()
        finally:
            ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        await nursery.start(transfers.run)
        assert await transfers.start(job) == 1
        transfers.close(60.0)  # the graceful stop: the job may run on
        await trio.sleep(1.0)
        assert ended == [] and not transfers.cut()
        forced = trio.current_time()
        transfers.cut_now()  # a second SIGTERM
    assert ended == [forced] and transfers.cut()


async def test_the_proxy_holds_its_settings_as_a_plain_value() -> None:
    """One value of the tunables, given when the streamer is built: the launcher and the
    download clients hold it, and nothing replaces it afterwards."""
    settings = ProxySettings(read_size=2 * 1024 * 1024)
    streamer = ProxyStreamer(Config, Index(clock=lambda: 0.0), Transfers(), settings=settings)
    assert streamer.launcher.settings is settings
    assert streamer.clients.settings is settings
    assert streamer.settings is settings
    with pytest.raises(AttributeError):
        streamer.settings = ProxySettings()  # type: ignore[misc]
    await streamer.aclose()
