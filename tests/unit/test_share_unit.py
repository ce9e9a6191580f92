"""A shared refresh on disk without a server: it holds back its last byte until the file is
verified, and a refresh that ends short is refused (sharing over real connections:
tests/integration/test_share.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from helpers_proxy import GROUP
from names import full_name, incremental_name

from tracker.cache.store import Cache
from tracker.errors import CacheError

FULL = full_name(8000)
INCR = incremental_name(8000, 8100)


async def test_a_refresh_holds_back_its_last_byte_until_it_is_verified(
    tmp_path: Path,
) -> None:
    cache = Cache(str(tmp_path / "cache"))
    refresh = cache.begin_refresh(GROUP, FULL)
    assert refresh is not None
    assert await refresh.open(10)
    await refresh.write(b"0123456789")
    await refresh.flush()  # write() returns once the write started
    assert refresh.readable() == 9  # the end is not known yet
    await refresh.verify()
    assert refresh.readable() == 10  # every byte is there: the fsync and rename need not wait
    await refresh.commit()
    assert refresh.ended.is_set() and not refresh.failed
    assert refresh.readable() == 10
    broken = cache.begin_refresh(GROUP, INCR)
    assert broken is not None
    assert await broken.open(10)
    await broken.write(b"01234")
    await broken.flush()
    with pytest.raises(CacheError):
        await broken.verify()  # not every byte: refused
    assert broken.readable() == 5
    broken.abort()
    assert broken.failed
    with trio.fail_after(1):
        await broken.wait_progress()  # returns at once: it ended
