"""The size a source advertised and the length its answer announces must agree.

A source whose listing says 8 MiB and whose GET answers a 200 of 4 MiB is failed for that
file (the next source is asked): the short file is never served as the archive, nor cached.
Real hypercorn tracker and real upstreams on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_proxy import advertise, proxy_tracker, wait_for
from helpers_tls import client_tls
from helpers_upstream import FakeUpstream, serving
from names import full_name

FULL = full_name(7300)
DATA = archive_bytes(8 * MiB, seed=73)
HALF_FILE = DATA[: 4 * MiB]


async def test_a_shorter_answer_than_advertised_fails_the_source(tmp_path: Path) -> None:
    async with (
        serving(FakeUpstream(files={FULL: HALF_FILE})) as short,
        proxy_tracker(tmp_path / "cache") as t,
    ):
        advertise(t.index, short.base, [(FULL, short.url(FULL), len(DATA))])
        async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
            head = await client.head(t.url(FULL))
            got = await client.get(t.url(FULL))
        assert head.status_code == 502
        assert got.status_code == 502
        assert "is not the advertised size" in got.text
        assert "\n" not in got.text.strip()
        assert t.cached() == []


@pytest.mark.parametrize("sharing", [False, True], ids=["sharing-off", "sharing-on"])
async def test_the_next_source_of_the_advertised_size_is_taken(
    tmp_path: Path, sharing: bool
) -> None:
    async with (
        serving(FakeUpstream(files={FULL: HALF_FILE})) as short,
        serving(FakeUpstream(files={FULL: DATA})) as right,
        proxy_tracker(tmp_path / "cache", cache_share_inflight=sharing) as t,
    ):
        advertise(t.index, short.base, [(FULL, short.url(FULL), len(DATA))], age=0)
        advertise(t.index, right.base, [(FULL, right.url(FULL), len(DATA))], age=5)
        async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
            got = await client.get(t.url(FULL))
        assert (got.status_code, sha256(got.content)) == (200, sha256(DATA))
        assert len(short.gets(FULL)) == 1  # asked first, refused
        await wait_for(lambda: t.cached() == [FULL])
        assert sha256((t.group_dir() / FULL).read_bytes()) == sha256(DATA)
