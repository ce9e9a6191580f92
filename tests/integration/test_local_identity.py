"""A local file changed in place is another file (issue: a local copy's identity and a
transfer of it).

- Its identity includes the ctime: a file whose bytes were changed in place and whose mtime
  was set back (``os.utime``, ``touch -d``) is checked again, never served as proven with
  its old ``sha256``.
- A transfer of a file overwritten in place while it is sent breaks before its last byte,
  never a complete 200 of mixed or new bytes: through the real server (zero-copy pieces) and
  through the read path (no zero-copy connection).

Real parts: the tracker on 127.0.0.1 (``run_tracker``) over a local directory; the
quickstart's real full archive."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import httpx
import pytest
import trio
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config

from tracker.errors import TrackerError
from tracker.serving.fileresponse import PlainRequest, file_response
from tracker.serving.responsebodies import Body

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FULL = next(p.name for p in (EXAMPLES / "ledger").iterdir() if p.name.startswith("snapshot-"))


def change_in_place_keeping_mtime(path: Path, offset: int) -> None:
    """Flip one byte at ``offset`` in place, then set the mtime back as it was."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


async def test_a_file_changed_in_place_with_its_mtime_set_back_is_checked_again(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    shutil.copy(EXAMPLES / "ledger" / FULL, ledger / FULL)
    config = write_config(
        tmp_path,
        {"scrape_interval": "300ms", "target_groups": [
            {"group": "local", "local_targets": {"paths": [str(ledger)]}}
        ]},
    )  # fmt: skip
    [base] = await start_tracker(nursery, config)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

        async def state() -> dict[str, str]:
            [target] = (await client.get(f"{base}/v1/targets")).json()
            return {f["file_name"]: f for f in target["local_files"]}.get(FULL, {})

        async def checked() -> bool:
            return (await state()).get("state") == "checked"

        await wait_until(checked, timeout=30)
        old = (await state())["sha256"]
        assert (await client.get(f"{base}/v1/local/{FULL}.sha256")).text.startswith(old)
        change_in_place_keeping_mtime(ledger / FULL, (ledger / FULL).stat().st_size // 2)

        async def checked_again() -> bool:
            return (await state()).get("state") == "failed"

        await wait_until(checked_again, timeout=30)
        assert (await client.get(f"{base}/v1/local/{FULL}.sha256")).status_code == 404
        listing = (await client.get(f"{base}/v1/snapshots")).json()
        assert old not in str(listing)


def overwrite_in_place(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(data)


async def _raw_get(base: str, path: str) -> trio.SocketStream:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
    return stream


async def test_a_download_of_a_file_overwritten_in_place_breaks_before_its_end(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    size = 32 * 1024 * 1024
    (ledger / FULL).write_bytes(os.urandom(size))  # an opaque blob: served unchecked
    config = write_config(
        tmp_path,
        {"scrape_interval": "300ms", "verify_archives": False, "target_groups": [
            {"group": "local", "local_targets": {"paths": [str(ledger)]}}
        ]},
    )  # fmt: skip
    [base] = await start_tracker(nursery, config)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

        async def listed() -> bool:
            return bool((await client.get(f"{base}/v1/snapshots")).json())

        await wait_until(listed, timeout=30)
    stream = await _raw_get(base, f"/v1/local/{FULL}")
    data = b""
    with trio.fail_after(60):
        while len(data) < 1024 * 1024:
            data += await stream.receive_some(64 * 1024)
        head, _, _ = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and f"content-length: {size}".encode() in head
        overwrite_in_place(ledger / FULL, os.urandom(size))  # same size, same inode
        while chunk := await stream.receive_some(1024 * 1024):
            data += chunk
    await stream.aclose()
    body = data.partition(b"\r\n\r\n")[2]
    assert len(body) < size  # cut short: never a complete 200


@pytest.mark.parametrize("what", ["overwritten", "mtime set back", "mtime set back, linked"])
async def test_the_read_path_refuses_the_last_chunk_of_a_changed_file(
    tmp_path: Path, what: str
) -> None:
    path = tmp_path / "file"
    path.write_bytes(os.urandom(6 * 1024 * 1024))
    answer = await file_response(str(path), PlainRequest("GET"), chunk_size=1024 * 1024)
    assert answer.status == 200 and isinstance(answer.body, Body)
    got = 0

    async def read_all(body: Body) -> None:
        nonlocal got
        async with body as chunks:
            async for chunk in chunks:
                if not got:
                    if what == "overwritten":
                        overwrite_in_place(path, os.urandom(6 * 1024 * 1024))
                    else:
                        change_in_place_keeping_mtime(path, 5 * 1024 * 1024)
                    if what.endswith("linked"):
                        # a link added moves the link count as an unlink does: it passed
                        # for one, and the changed bytes went as a complete 200
                        os.link(path, tmp_path / "another-name")
                got += len(chunk)

    with pytest.raises(TrackerError, match="changed while being sent"):
        await read_all(answer.body)
    assert got < 6 * 1024 * 1024


@pytest.mark.parametrize("what", ["unlinked", "renamed over"])
async def test_the_read_path_sends_a_file_that_was_unlinked_meanwhile(
    tmp_path: Path, what: str
) -> None:
    """Its bytes stay what they were (an old archive deleted, or one renamed over it)."""
    path = tmp_path / "file"
    data = os.urandom(3 * 1024 * 1024)
    path.write_bytes(data)
    answer = await file_response(str(path), PlainRequest("GET"), chunk_size=1024 * 1024)
    assert isinstance(answer.body, Body)
    got = b""
    async with answer.body as chunks:
        async for chunk in chunks:
            if not got and what == "unlinked":
                path.unlink()
            elif not got:
                (tmp_path / "new").write_bytes(os.urandom(len(data)))
                os.replace(tmp_path / "new", path)
            got += chunk
    assert got == data
