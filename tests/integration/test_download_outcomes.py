"""A client that resets while the tracker sends an answer's last bytes that are not a
zero-copy piece (under 64 KiB, sent plainly after the splice; a refresh's reader's tail,
read from the file once every check passed): hypercorn keeps the failed send to itself, and
the download was logged ``outcome=complete`` with every byte counted. Real parts: the
tracker's own components on 127.0.0.1 with its zero-copy server, a real upstream, a raw
socket for the client that leaves at a precise byte."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

import pytest
import trio
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import FAST, GROUP, advertise, proxy_tracker, wait_for
from helpers_upstream import FakeUpstream, serving
from helpers_wire import read_body_to
from names import full_name

from tracker.observability.logs import record_fields

NAME = full_name(1000)
TAIL = 60_000  # the last bytes, past the last whole zero-copy piece
DATA = archive_bytes(4 * MiB + TAIL, seed=3)


async def leave_in_the_tail(base: str, target: str) -> int:
    """Ask ``target``, read its body up to one byte into its tail, then reset; the body
    bytes read."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket()
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # the tail's send blocks
        await sock.connect((host, int(port)))
        await sock.send(f"GET {target} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
        head, body = await read_body_to(sock, len(DATA) - TAIL + 1)
        assert head.startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return body


@pytest.mark.parametrize("cache", [False, True], ids=["spliced relay", "refresh reader"])
async def test_a_client_gone_in_the_last_bytes_is_never_a_complete_download(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cache: bool
) -> None:
    caplog.set_level(logging.INFO, logger="tracker.download")
    async with serving(FakeUpstream(files={NAME: DATA})) as up:
        cache_dir = tmp_path / "cache" if cache else None
        async with proxy_tracker(cache_dir, settings=FAST) as t:
            advertise(t.index, up.base, [(NAME, up.url(NAME), len(DATA))])
            read = await leave_in_the_tail(t.base, f"/v1/{GROUP}/{NAME}")

            def downloads() -> list[dict[str, object]]:
                return [record_fields(r)[1] for r in caplog.records if r.getMessage() == "download"]

            await wait_for(lambda: len(downloads()) == 1)
    [line] = downloads()
    assert line["outcome"] == "client_gone", line
    # what went of the failed send is not known: the bytes before it, never the whole
    assert int(str(line["bytes"])) == len(DATA) - TAIL < read, (read, line)
