"""file_response without a server: descriptors released when a response is dropped unsent,
bodies read through Quart, empty files, errors, FIFOs, the chunk budget shared between streams
(the same responses served over real connections: tests/integration/test_fileresponse.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio
from helpers_fds import open_fds

from tracker.serving.fileresponse import PlainRequest, content_disposition, file_response
from tracker.serving.ranges import parse_http_date
from tracker.web.delivery import to_response


async def test_unsent_response_releases_the_fd(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    response = await file_response(str(path), PlainRequest("GET", {}))
    assert open_fds(path) == 1
    del response
    assert open_fds(path) == 0


async def test_body_via_quart_and_a_plain_request(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    sent: list[int] = []
    answer = await file_response(
        str(path), PlainRequest("GET", [("Range", "bytes=2-8")]), chunk_size=3, on_bytes=sent.append
    )
    response = to_response(answer)
    assert response.status_code == 206
    assert await response.get_data() == b"2345678"
    assert sent == [3, 3, 1]
    assert response.timeout is None
    assert open_fds(path) == 0


async def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.touch()
    response = to_response(await file_response(str(path), PlainRequest("GET", {})))
    assert (response.status_code, response.headers["content-length"]) == (200, "0")
    assert await response.get_data() == b""
    assert open_fds(path) == 0


async def test_a_file_touched_in_the_future_is_last_modified_no_later_than_now(
    tmp_path: Path,
) -> None:
    """RFC 9110 8.8.2.1 (docs/http-api.md, "Archive answers"): its Last-Modified is the
    time of the answer, and a client revalidating with it gets 304."""
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    ahead = time.time() + 3600
    os.utime(path, (ahead, ahead))
    head = await file_response(str(path), PlainRequest("HEAD", {}))
    last_modified = parse_http_date(head.headers["last-modified"])
    assert last_modified is not None and last_modified <= time.time()
    since = {"if-modified-since": head.headers["last-modified"]}
    assert (await file_response(str(path), PlainRequest("HEAD", since))).status == 304


async def test_errors(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        await file_response(str(tmp_path / "missing"), PlainRequest("GET", {}))
    with pytest.raises(IsADirectoryError):
        await file_response(str(tmp_path), PlainRequest("GET", {}))
    with pytest.raises(ValueError, match="POST"):
        await file_response(str(path), PlainRequest("POST", {}))
    with pytest.raises(ValueError, match="chunk_size"):
        await file_response(str(path), PlainRequest("GET", {}), chunk_size=0)
    with pytest.raises(ValueError, match="file name"):
        content_disposition('a"b')
    assert open_fds(path) == 0


async def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with trio.fail_after(5), pytest.raises(OSError, match="not a regular file"):
        await file_response(str(fifo), PlainRequest("GET", {}))
    assert open_fds(fifo) == 0


def test_chunk_budget_shares_memory_between_streams() -> None:
    from tracker.serving.fileresponse import ChunkBudget

    mib = 1024 * 1024
    budget = ChunkBudget(total=32 * mib, smallest=mib, largest=2 * mib)
    assert budget.chunk() == 2 * mib  # one stream reads big chunks
    budget.streams = 8
    assert budget.chunk() == 2 * mib
    budget.streams = 16
    assert budget.chunk() == mib
    budget.streams = 200
    assert budget.chunk() == mib  # never below the smallest useful read


@pytest.mark.parametrize(
    ("streams", "chunk"),
    [(0, 1024), (1, 1024), (4, 1024), (8, 512), (16, 256), (64, 64), (1000, 64)],
)
def test_chunk_budget_counts_every_chunk_a_stream_holds(streams: int, chunk: int) -> None:
    from tracker.serving.fileresponse import ChunkBudget

    budget = ChunkBudget(total=28 * 1024, smallest=64, largest=1024, per_stream=7)
    budget.streams = streams
    assert budget.chunk() == chunk


async def test_a_hung_last_check_gives_way_to_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look at the file before its last bytes go (``unchanged``: its ``fstat``, its
    name's ``stat``) hangs on a hung mount. A cancelled body (its client gone, the stop's
    grace over) ends at once: the look goes on in a thread of its own, on a duplicate of the
    descriptor (the body's own is closed), and holds none of trio's shared worker threads.
    Waited for, it held the connection and the stop for as long as the mount hung."""
    import threading

    import tracker.serving.fileresponse as fileresponse

    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    asked, answers, ended = threading.Event(), threading.Event(), threading.Event()

    def hung(*_: object) -> None:
        asked.set()
        answers.wait(30.0)  # released below; the bound only ends a thread a failure left
        ended.set()

    monkeypatch.setattr(fileresponse, "unchanged", hung)
    response = to_response(await file_response(str(path), PlainRequest("GET", {})))
    done = trio.Event()
    try:
        async with trio.open_nursery() as nursery:

            async def download(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                with trio.CancelScope() as scope:
                    task_status.started(scope)
                    await response.get_data()
                done.set()

            scope = await nursery.start(download)
            assert await trio.to_thread.run_sync(asked.wait, 30.0)
            assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
            scope.cancel()
            await done.wait()
            assert not ended.is_set()  # ended while the look still hung
            assert open_fds(path) == 1  # the look's own duplicate, and only it
    finally:
        answers.set()


@pytest.mark.parametrize("hung_in", ["open", "pread"])
async def test_a_hung_open_or_read_gives_way_to_cancellation(
    hung_in: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open of a file to answer (``os.open``, then its ``fstat``) and the reads of its
    bytes hang on a hung mount. They ran in trio's shared worker threads and were waited
    for on cancellation (the open's thread, the read ahead's shielded ``settle``): a client
    that left held its request, and a shared thread, for as long as the mount hung. Each
    runs in a thread of its own that its caller leaves at once (the read on a duplicate of
    the descriptor), and closes what it holds itself once the file system answers."""
    import threading

    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    asked, answers, ended = threading.Event(), threading.Event(), threading.Event()
    real = getattr(os, hung_in)

    def hung(*args: object) -> object:
        if hung_in == "open" and args[0] != str(path):
            return real(*args)
        asked.set()
        answers.wait(30.0)  # released below; the bound only ends a thread a failure left
        try:
            return real(*args)
        finally:
            ended.set()

    monkeypatch.setattr(os, hung_in, hung)
    done = trio.Event()
    try:
        async with trio.open_nursery() as nursery:

            async def download(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                with trio.CancelScope() as scope:
                    task_status.started(scope)
                    answer = await file_response(str(path), PlainRequest("GET", {}))
                    await to_response(answer).get_data()
                done.set()

            scope = await nursery.start(download)
            assert await trio.to_thread.run_sync(asked.wait, 30.0)
            assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
            scope.cancel()
            await done.wait()
            assert not ended.is_set()  # ended while the open or read still hung
            assert open_fds(path) == (hung_in == "pread")  # the read's own duplicate only
    finally:
        answers.set()
    assert await trio.to_thread.run_sync(ended.wait, 30.0)
    with trio.fail_after(10):
        # what the thread opened or read through, closed by it (polling: /proc has nothing
        # to wait on)
        while open_fds(path):
            await trio.sleep(0.01)
