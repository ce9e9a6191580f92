"""A local archive swapped for something else between two scrapes is never served.

The index lists a regular file; before the next scrape the name is replaced by a symlink (to a
secret file), a FIFO or a directory. The open refuses all of them (``O_NOFOLLOW`` and a
regular-file check on the open descriptor): the client gets a 404, never the other bytes.
Real hypercorn tracker on 127.0.0.1, index fed by a real scan of the directory.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers_proxy import GROUP, TrackerUnderTest, proxy_tracker
from helpers_wire import raw_request
from names import full_name
from test_attestations import attest

from tracker.core.digests import Verified
from tracker.discovery.local import scan_local
from tracker.ordering.index import TargetKey
from tracker.proof.levels import Level, Proof
from tracker.proof.records.localcopies import holder
from tracker.proof.statements import parse_document

FULL = full_name(4200)
SECRET = b"root:$6$not-an-archive:19000:0:99999:7:::\n"


def to_symlink(path: Path, secret: Path) -> None:
    path.unlink()
    path.symlink_to(secret)


def to_fifo(path: Path, _secret: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def to_directory(path: Path, _secret: Path) -> None:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize("swap", [to_symlink, to_fifo, to_directory])
async def test_a_swapped_local_archive_is_refused(
    tmp_path: Path, swap: Callable[[Path, Path], None]
) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / FULL).write_bytes(b"a real archive")
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    async with proxy_tracker(proxy_snapshot_downloads=False) as t:
        t.index.apply(TargetKey(GROUP, str(ledger)), scan_local(str(ledger)), datetime.now(UTC))
        wire = await raw_request(t.base, f"/{FULL}")
        assert (wire.status, wire.body) == (200, b"a real archive")
        swap(ledger / FULL, secret)  # before the next scrape
        for method in ("GET", "HEAD"):
            wire = await raw_request(t.base, f"/{FULL}", method=method)
            assert wire.status == 404
            assert SECRET not in wire.body


async def two_local_copies(t: TrackerUnderTest, datas: dict[Path, bytes]) -> Path:
    """Write each of ``datas`` as :data:`FULL` in its ledger directory, scanned into the
    index as a local source of the group; the directory of the copy the archive route
    serves."""
    for directory, data in datas.items():
        await trio.Path(directory).mkdir()
        await trio.Path(directory / FULL).write_bytes(data)
        t.index.apply(
            TargetKey(GROUP, str(directory)), scan_local(str(directory)), datetime.now(UTC)
        )
    [(served, _source), _other] = t.index.find_file(GROUP, FULL)
    return Path(served.path).parent


def hold(t: TrackerUnderTest, directory: Path, data: bytes, proof: Proof, **more: Any) -> None:
    """Hold the local copy of :data:`FULL` in ``directory`` (``data``) as checked."""
    held = Verified(hashlib.sha256(data).hexdigest(), proof, len(data), **more)
    t.streamer.digests.hold(holder(str(directory / FULL)), GROUP, FULL, held)


async def test_the_sha256_route_names_the_copy_the_archive_route_serves(
    tmp_path: Path,
) -> None:
    """One group, two ledger directories holding one name with other bytes each (the same
    archive compressed twice), both checked: the ``.sha256`` route gave the digest of the
    best proven copy whatever the archive route served (a ``sha256sum -c`` failure half of
    the time). It names the served copy now, and a copy replaced since its check (another
    size) is no digest at all."""
    one, two = tmp_path / "one", tmp_path / "two"
    datas = {one: b"the first copy", two: b"the other copy, longer"}
    async with proxy_tracker(proxy_snapshot_downloads=False) as t:
        served_dir = await two_local_copies(t, datas)
        for directory, data in datas.items():
            hold(t, directory, data, Proof(Level.MANIFEST if directory == one else Level.STRUCTURE))
        body = (await raw_request(t.base, f"/v1/{GROUP}/{FULL}")).body
        assert body == datas[served_dir]
        line = (await raw_request(t.base, f"/v1/{GROUP}/{FULL}.sha256")).body
        assert line == f"{hashlib.sha256(body).hexdigest()}  {FULL}\n".encode()
        # both replaced by files of other sizes since their checks (the next round forgets
        # them): neither's digest is that of the file listed now
        for directory in datas:
            await trio.Path(directory / FULL).write_bytes(b"replaced")
            t.index.apply(
                TargetKey(GROUP, str(directory)), scan_local(str(directory)), datetime.now(UTC)
            )
        assert (await raw_request(t.base, f"/v1/{GROUP}/{FULL}.sha256")).status == 404


async def test_the_attestation_route_names_the_copy_the_archive_route_serves(
    tmp_path: Path,
) -> None:
    """Two local copies of one name, other bytes each, both checked and signed; the copy
    the archive route does not serve is proven further: the ``.attestation`` route served
    its statement (the best proven), which a client checking it against the bytes it got
    refused. It serves the statement of the served copy now."""
    one, two = tmp_path / "one", tmp_path / "two"
    datas = {one: b"the first copy", two: b"the other copy, longer"}
    async with proxy_tracker(proxy_snapshot_downloads=False, attest=attest(tmp_path)) as t:
        served_dir = await two_local_copies(t, datas)
        for directory, data in datas.items():
            level = Level.STRUCTURE if directory == served_dir else Level.MANIFEST
            hold(t, directory, data, Proof(level), checked_at=time.time())
        body = (await raw_request(t.base, f"/v1/{GROUP}/{FULL}")).body
        assert body == datas[served_dir]
        answer = await raw_request(t.base, f"/v1/{GROUP}/{FULL}.attestation")
        assert answer.status == 200
        statement = parse_document(answer.body).statement
        assert (statement.sha256, statement.size) == (hashlib.sha256(body).hexdigest(), len(body))
