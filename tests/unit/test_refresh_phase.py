"""A refresh's phases as a table (tracker.cache.refresh.next_phase): the one place that
says how its readers, its check and its repair move it; and the cache as the one registry
of refreshes (docs/architecture.md, "One refresh, one owner")."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import trio
from names import full_name

from tracker.cache.refresh import ENDED, Change, Phase, next_phase
from tracker.cache.store import Cache

W, P, R, V, D, F = (
    Phase.WRITING,
    Phase.PROVING,
    Phase.REPAIRING,
    Phase.VERIFIED,
    Phase.DONE,
    Phase.FAILED,
)

TABLE: dict[Phase, dict[str, Phase]] = {
    #          proving  checked  cut  verified  ended
    W: dict(proving=P, checked=W, cut=R, verified=V, ended=F),
    P: dict(proving=P, checked=W, cut=R, verified=V, ended=F),
    R: dict(proving=R, checked=R, cut=R, verified=V, ended=F),
    V: dict(proving=V, checked=V, cut=V, verified=V, ended=D),
    D: dict(proving=D, checked=D, cut=D, verified=D, ended=D),
    F: dict(proving=F, checked=F, cut=F, verified=F, ended=F),
}


@pytest.mark.parametrize(
    ("phase", "change", "expected"),
    [(p, c, TABLE[p][c]) for p in Phase for c in get_args(Change)],
    ids=lambda v: v.value if isinstance(v, Phase) else str(v),
)
def test_next_phase(phase: Phase, change: Change, expected: Phase) -> None:
    assert next_phase(phase, change) is expected


def test_an_ended_refresh_never_moves_again() -> None:
    for phase in ENDED:
        assert {next_phase(phase, c) for c in get_args(Change)} == {phase}


async def test_a_refresh_cut_off_is_failed_until_its_repaired_copy_passes(
    tmp_path: Path,
) -> None:
    cache = Cache(str(tmp_path / "cache"))
    refresh = cache.begin_refresh("g", full_name(100))
    assert refresh is not None and await refresh.open(4)
    await refresh.write(b"abcd")
    await refresh.flush()
    assert refresh.phase is Phase.WRITING and not refresh.failed
    refresh.cut_readers()
    assert refresh.repairing and refresh.failed and refresh.repairs == 1
    await refresh.verify()  # an unchecked cache: the whole copy passes
    assert refresh.phase is Phase.VERIFIED and not refresh.failed and not refresh.repairing
    refresh.cut_readers()  # a verified copy is never cut off again
    assert refresh.verified and refresh.repairs == 2
    refresh.abort()
    assert refresh.phase is Phase.DONE and refresh.ended.is_set() and not refresh.failed


async def test_the_cache_is_the_one_registry_requests_join_a_refresh_through(
    tmp_path: Path,
) -> None:
    cache = Cache(str(tmp_path / "cache"))
    own, shared = full_name(100), full_name(200)
    alone = cache.begin_refresh("g", own)
    joined = cache.begin_refresh("g", shared)
    assert alone is not None and joined is not None
    # begun, not shared yet: nobody may read either
    assert cache.running("g", shared, any_refresh=True) is None
    assert [p.readers for p in cache.refreshes()] == [None, None]
    stop = trio.CancelScope()  # the pump's
    alone.share(stop, keep=True, register=False)  # cache_share_inflight off
    joined.share(stop, keep=False, register=True)
    assert cache.running("g", own) is None  # its starter's only
    assert cache.running("g", own, any_refresh=True) is alone  # a strict level waits on it
    assert cache.running("g", shared) is joined
    joined.reader_joined()
    assert [p.readers for p in cache.refreshes()] == [0, 1]  # by name: the own one first
    joined.reader_left()  # the last reader of a refresh not kept stops it
    assert stop.cancel_called and not joined.joinable
    joined.abort()
    assert cache.running("g", shared, any_refresh=True) is None
    assert [p.name for p in cache.refreshes()] == [own]
