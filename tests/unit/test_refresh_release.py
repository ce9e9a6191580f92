"""A refresh's readers get their last bytes only once every check the tracker runs on the
copy passed, whatever the group's ``trust.require``: never while the accounts level's second
read runs (docs/architecture.md, "The release rule"); the copy is promoted, and stored for
others, only then too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from helpers_secondread import SecondRead, hold_second_read
from test_accounts_level import STATE, key, lattice, write_archive

from tracker.cache.checked import CheckedFiles
from tracker.cache.refresh import HOLD_BACK, Refresh
from tracker.cache.store import Cache
from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.accountsprover import MISMATCH
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.formats.writing import Account
from tracker.proof.levels import Level

GROUP = "mainnet"


@pytest.fixture
def second_read(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecondRead]:
    held = hold_second_read(monkeypatch)
    yield held
    held.go()  # never leave a check's thread waiting


def cache_requiring(root: Path, level: Level) -> Cache:
    cache = Cache(str(root))
    cache.checked = CheckedFiles(
        verify=True,
        required=lambda _group: level,
        prove_accounts=AccountsLimits(max_accounts=1000),
    )
    return cache


async def refresh_of(cache: Cache, data: bytes, name: str) -> Refresh:
    refresh = cache.begin_refresh(GROUP, name)
    assert refresh is not None
    assert await refresh.open(len(data))
    await refresh.write(data)
    await refresh.flush()
    return refresh


@pytest.mark.parametrize("require", [Level.STRUCTURE, Level.MANIFEST, Level.ACCOUNTS])
async def test_readers_wait_for_the_second_read_whatever_the_groups_level(
    tmp_path: Path, second_read: SecondRead, require: Level
) -> None:
    archive = write_archive(tmp_path, STATE)
    data = archive.read_bytes()
    cache = cache_requiring(tmp_path / "cache", require)
    refresh = await refresh_of(cache, data, archive.name)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(refresh.verify)
        await second_read.wait_started()
        with trio.fail_after(30):  # the status page says why it still runs
            while not cache.refreshes()[0].proving:
                await trio.sleep(0.01)
        # The first read passed, the second one runs: no reader gets the end, nor the
        # last byte of any range.
        assert refresh.readable() == max(0, len(data) - HOLD_BACK)
        assert refresh.range_end(1) == 0  # a range of its first byte alone
        assert refresh.holds_range_ends  # what the route asks before a Range joins it
        assert not refresh.verified and not refresh.failed
        assert refresh.storable() < len(data)  # the bucket gets the end after the proof
        second_read.go()
    assert refresh.verified and refresh.proof.level == Level.ACCOUNTS
    assert refresh.storable() == refresh.readable() == len(data)
    assert not refresh.holds_range_ends and refresh.range_end(1) == 1
    await refresh.commit()
    assert cache.checked.proof(GROUP, archive.name) == refresh.proof


async def test_a_copy_the_second_read_refuses_never_reaches_its_readers_end(
    tmp_path: Path, second_read: SecondRead
) -> None:
    forged = {**STATE, 490: [Account(key(2), 0), Account(key(3), 7_000_000, b"three")]}
    archive = write_archive(tmp_path, forged, lt_hash=lattice(STATE))
    data = archive.read_bytes()
    cache = cache_requiring(tmp_path / "cache", Level.MANIFEST)
    refresh = await refresh_of(cache, data, archive.name)
    failure: list[ArchiveInvalid] = []

    async def verify() -> None:
        try:
            await refresh.verify()
        except ArchiveInvalid as exc:
            failure.append(exc)
            refresh.abort()  # as the refresh's owner does with a rejected copy

    async with trio.open_nursery() as nursery:
        nursery.start_soon(verify)
        await second_read.wait_started()
        # The first read passed (the manifest is the name's): its readers still wait.
        assert refresh.readable() < len(data)
        second_read.go()
    assert [exc.reason for exc in failure] == [MISMATCH]
    # A reader that had not sent the end yet never will: the refresh failed.
    assert refresh.failed and refresh.readable() < len(data)
    assert cache.checked.proof(GROUP, archive.name) is None
