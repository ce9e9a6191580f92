"""A local archive swapped for something else between two scrapes is never served.

The index lists a regular file; before the next scrape the name is replaced by a symlink (to a
secret file), a FIFO or a directory. The open refuses all of them (``O_NOFOLLOW`` and a
regular-file check on the open descriptor): the client gets a 404, never the other bytes.
Real hypercorn tracker on 127.0.0.1, index fed by a real scan of the directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers_proxy import GROUP, proxy_tracker
from helpers_wire import raw_request
from names import full_name

from tracker.discovery.local import scan_local
from tracker.ordering.index import TargetKey

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
