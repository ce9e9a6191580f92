"""Download slots are not kept by clients that take nothing: when every slot is taken, the
one whose client has read nothing for a while goes to a new download.

The tracker's own components on 127.0.0.1 (a local archive, served with sendfile) and raw
sockets for the clients that never read; the slot choice on its own:
tests/unit/test_exhaustion_unit.py.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

import httpx
import trio
from helpers_proxy import GROUP, proxy_tracker
from helpers_tls import client_tls
from test_exhaustion import stalled_reader

from tracker.core.snapshots import SnapshotFile, chains_from_files, parse_archive_name
from tracker.ordering.index import Index, TargetKey
from tracker.serving.fileresponse import TAIL

NAME = "snapshot-700-" + "3" * 44 + ".tar.zst"
DATA = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than the sockets' buffers hold
SLOTS = 4


def local_archive(tmp_path: Path) -> Index:
    """An index listing NAME as a file of a local target (its bytes: DATA)."""
    path = tmp_path / NAME
    path.write_bytes(DATA)
    parsed = parse_archive_name(NAME)
    assert parsed is not None
    f = SnapshotFile(name=parsed, file_name=NAME, size=len(DATA), path=str(path))
    index = Index()
    index.apply(TargetKey(GROUP, "local"), chains_from_files([f]), datetime.now(UTC))
    return index


async def test_clients_that_never_read_do_not_keep_a_new_download_from_its_bytes(
    tmp_path: Path,
) -> None:
    """Every slot held by a client that took the head and then nothing: a new download got
    503 until the stalled ones hit the stall timeout (300 s). Now the slot of the longest
    stalled one goes to it once that one has taken nothing for ``reclaim_after``."""
    async with proxy_tracker(index=local_archive(tmp_path)) as t:
        slots = t.parts.delivery.slots
        slots.limit, slots.reclaim_after = SLOTS, 0.5
        host, port = t.base.removeprefix("http://").rsplit(":", 1)
        readers = [await stalled_reader(host, int(port), f"/{NAME}") for _ in range(SLOTS)]
        try:
            assert slots.taken == SLOTS
            async with httpx.AsyncClient(
                verify=client_tls(), timeout=10, trust_env=False
            ) as client:
                with trio.fail_after(15):
                    while (answer := await client.get(f"{t.base}/{NAME}")).status_code == 503:
                        await trio.sleep(0.1)  # paces the retries until a reader stalled long
        finally:
            for reader in readers:
                await reader.aclose()
    assert answer.status_code == 200
    assert answer.content == DATA
    assert slots.reclaimed >= 1


async def test_a_slow_reader_keeps_its_slot(tmp_path: Path) -> None:
    """A client that takes a little at a time is not stalled: however long its socket has
    no room for the next piece, its slot stays its own, and it gets every byte."""
    async with proxy_tracker(index=local_archive(tmp_path)) as t:
        slots = t.parts.delivery.slots
        slots.limit, slots.reclaim_after = 1, 1.0
        host, port = t.base.removeprefix("http://").rsplit(":", 1)
        reader = await trio.open_tcp_stream(host, int(port))
        await reader.send_all(f"GET /{NAME} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
        received = b""
        refused = trio.Event()

        async def read_slowly() -> None:
            # its own task: its pace does not wait on the other client's answers (slow on
            # a loaded machine), only on its own sleep
            nonlocal received
            while not refused.is_set():
                received += await reader.receive_some(8192)  # its buffers stay full
                await trio.sleep(0.05)  # the slow reader's pace, on purpose

        async with (
            reader,
            httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_slowly)
                start = trio.current_time()
                while trio.current_time() - start < 3:  # three times reclaim_after
                    answer = await client.get(f"{t.base}/{NAME}")
                    assert answer.status_code == 503
                    await trio.sleep(0.05)
                refused.set()  # the slow reader ends before the rest is read here
            with trio.fail_after(20):
                while len(received.partition(b"\r\n\r\n")[2]) < len(DATA):
                    chunk = await reader.receive_some(1024 * 1024)
                    assert chunk, "the slow reader's download was cut"
                    received += chunk
    assert received.partition(b"\r\n\r\n")[2] == DATA
    assert slots.reclaimed == 0


async def reader_stopped_in_the_last_bytes(host: str, port: int) -> trio.SocketStream:
    """A client that reads NAME up to one byte into its last 64 KiB (which the tracker reads
    and sends as plain bytes, not as a zero-copy piece), then nothing more, through a
    receive buffer of a few KiB: the tracker's send of those bytes blocks."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    await sock.connect((host, port))
    stream = trio.SocketStream(sock)
    await stream.send_all(f"GET /{NAME} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        received += await stream.receive_some(1024)
    body = len(received.partition(b"\r\n\r\n")[2])
    while body < len(DATA) - TAIL + 1:
        body += len(await stream.receive_some(min(4096, len(DATA) - TAIL + 1 - body)))
    return stream


async def test_a_client_stopped_in_the_last_bytes_gives_its_slot_up(tmp_path: Path) -> None:
    """The last 64 KiB of a file go out as plain bytes: a client that stopped reading there
    kept its slot (no stall was measured, nothing could take the slot back) until the
    kernel dropped the connection, and its download was logged complete."""
    async with proxy_tracker(index=local_archive(tmp_path)) as t:
        slots = t.parts.delivery.slots
        slots.limit, slots.reclaim_after = 1, 0.5
        host, port = t.base.removeprefix("http://").rsplit(":", 1)
        reader = await reader_stopped_in_the_last_bytes(host, int(port))
        async with (
            reader,
            httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client,
        ):
            assert slots.taken == 1
            with trio.fail_after(15):
                while (answer := await client.get(f"{t.base}/{NAME}")).status_code == 503:
                    await trio.sleep(0.1)  # paces the retries until the reader stalled long
            assert answer.status_code == 200
            assert answer.content == DATA
            # the stopped client's answer ended short of its length: the connection is cut
            with trio.fail_after(10):
                while await reader.receive_some(65536):
                    pass
    assert slots.reclaimed == 1
