"""A source that codes its answer (``content-encoding: gzip``) although the tracker asks for
identity, as a misconfigured nginx (``gzip_static always``) or a CDN does: its bytes are not
the archive's. The relay dropped the header and sent the coded bytes as a complete 200 of
the archive's name (wget, curl and aria2c kept them), and a refresh stored them in the cache.
Such an answer is now a failed source. Real hypercorn tracker and upstream on 127.0.0.1."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import GROUP, advertise, proxy_tracker
from helpers_upstream import Behaviour, FakeUpstream, serving
from helpers_wire import raw_request
from names import full_name

from tracker.errors import FetchError
from tracker.fetch.progress import NoProgress
from tracker.fetch.run import FetchOptions, run_fetch
from tracker.fetch.settings import FetchSettings

NAME = full_name(1000)
DATA = archive_bytes(MiB, seed=1)
CODED = gzip.compress(DATA, compresslevel=1, mtime=0)


def coding(files: dict[str, bytes]) -> FakeUpstream:
    """An upstream that sends ``content-encoding: gzip`` whatever it was asked."""
    behaviour = {name: Behaviour(headers=[("content-encoding", "gzip")]) for name in files}
    return FakeUpstream(files=files, behaviour=behaviour)


@pytest.mark.parametrize("cached", [False, True], ids=["relayed", "cached"])
async def test_a_coded_answer_is_a_failed_source_never_the_archive(
    tmp_path: Path, cached: bool
) -> None:
    up = coding({NAME: CODED})
    async with serving(up), proxy_tracker(tmp_path / "cache" if cached else None) as t:
        advertise(t.index, up.base, [(NAME, up.url(NAME), len(CODED))])
        answer = await raw_request(t.base, f"/v1/{GROUP}/{NAME}")
        assert up.seen and up.seen[0].headers["accept-encoding"] == "identity"
        assert answer.status == 502
        assert "content-encoding 'gzip'" in answer.body.decode()
        assert NAME not in (t.cached() if cached else [])


async def test_fetch_takes_no_coded_source(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    up = coding({NAME: CODED})
    up.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{NAME}")
    async with serving(up):
        options = FetchOptions(
            ledger=str(ledger),
            sources=(up.base,),
            settings=FetchSettings(verify=False),
            incremental=False,
        )
        with pytest.raises(FetchError, match="content-encoding 'gzip'"):
            await run_fetch(options, NoProgress())
    assert [p.name for p in ledger.iterdir() if NAME in p.name] == []
