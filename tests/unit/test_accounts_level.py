"""Level ``accounts`` in the archive check: the storages' lattice hash against the manifest's."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
from agave_storages import ARCHIVE
from archives import build_archive, compress, make_tar, many_accounts_archive, storage_members

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.accountsprover import MISMATCH
from tracker.proof.accounts.budget import AccountsLimits, MemoryBudget
from tracker.proof.archive.archivecheck import FollowingCheck, check_file
from tracker.proof.formats.writing import (
    Account,
    archive_hash_of,
    lattice_of_slots,
    write_manifest,
    write_status_cache,
)
from tracker.proof.levels import Level

pytestmark = pytest.mark.usefixtures("bookkeeping_both_ways")

SLOT = 500
EXT = {"zst": ".tar.zst", "tar": ".tar"}


def key(n: int) -> bytes:
    return n.to_bytes(4, "big") * 8


#: slot -> the storage of that slot: key 1 stored in 480 and again in 500 (superseded,
#: older version first in the archive), key 2 closed in 490 (zero lamports), key 3 alone.
STATE = {
    480: [Account(key(1), 10, b"old"), Account(key(2), 4, b"open")],
    490: [Account(key(2), 0), Account(key(3), 7, b"three")],
    500: [Account(key(1), 11, b"new", executable=True)],
}


def lattice(state: dict[int, list[Account]]) -> bytes:
    return lattice_of_slots(state)


def write_archive(
    directory: Path,
    state: dict[int, list[Account]],
    *,
    lt_hash: bytes | None = None,
    compression: str = "zst",
    base_slot: int | None = None,
) -> Path:
    lt_hash = lattice(state) if lt_hash is None else lt_hash
    storages, members = storage_members(state)
    entries: list[tuple[str, bytes | None]] = [
        ("version", b"1.2.0"),
        (f"snapshots/{SLOT}/{SLOT}", write_manifest(SLOT, lt_hash, storages)),
        ("snapshots/status_cache", write_status_cache([SLOT])),
        *members,
    ]
    hash_ = archive_hash_of(lt_hash)
    name = (
        f"snapshot-{SLOT}-{hash_}"
        if base_slot is None
        else f"incremental-snapshot-{base_slot}-{SLOT}-{hash_}"
    )
    path = directory / (name + EXT[compression])
    path.write_bytes(compress(make_tar(entries), compression))
    return path


@pytest.mark.parametrize("compression", ["zst", "tar"])
def test_a_full_whose_storages_give_the_manifests_lattice_hash_reaches_accounts(
    tmp_path: Path, compression: str
) -> None:
    path = write_archive(tmp_path, STATE, compression=compression)
    assert (
        check_file(str(path), prove_accounts=AccountsLimits(max_accounts=1000)).proof.level
        == Level.ACCOUNTS
    )
    assert check_file(str(path)).proof.level == Level.MANIFEST  # off: the manifest only


@pytest.mark.parametrize(("compression", "accounts"), [("zst", 3), ("lz4", 1), ("tar", 7)])
def test_the_tests_archives_prove_to_accounts(
    tmp_path: Path, compression: str, accounts: int
) -> None:
    """tests/archives.py's fulls hold real storages whose lattice hash is the manifest's
    (whatever the number of storages), its incrementals stop at ``manifest``."""
    for base in (None, 1000):
        name, data = build_archive(1100, base_slot=base, compression=compression, accounts=accounts)
        path = tmp_path / name
        path.write_bytes(data)
        proof = check_file(str(path), prove_accounts=AccountsLimits(max_accounts=1000)).proof
        assert proof.level == (Level.ACCOUNTS if base is None else Level.MANIFEST), name


def test_agaves_own_archive_reaches_accounts(tmp_path: Path) -> None:
    path = tmp_path / "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
    shutil.copy(ARCHIVE, path)
    proof = check_file(str(path), prove_accounts=AccountsLimits(max_accounts=1000)).proof
    assert (proof.level, proof.note) == (Level.ACCOUNTS, None)


def test_changed_accounts_under_the_manifests_lattice_hash_are_refused(tmp_path: Path) -> None:
    forged = {**STATE, 490: [Account(key(2), 0), Account(key(3), 7_000_000, b"three")]}
    path = write_archive(tmp_path, forged, lt_hash=lattice(STATE))
    with pytest.raises(ArchiveInvalid) as caught:
        check_file(str(path), prove_accounts=AccountsLimits(max_accounts=1000))
    assert caught.value.reason == MISMATCH
    assert "accounts_lt_hash" in MISMATCH
    assert check_file(str(path)).proof.level == Level.MANIFEST  # what the manifest alone shows


@pytest.mark.one_bookkeeping
def test_an_incremental_stays_at_manifest(tmp_path: Path) -> None:
    path = write_archive(tmp_path, STATE, base_slot=400)
    assert (
        check_file(str(path), prove_accounts=AccountsLimits(max_accounts=1000)).proof.level
        == Level.MANIFEST
    )


def storages_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The slots of the storages the proof reads from now on."""
    from tracker.proof.accounts.accountsproof import AccountsProof

    read: list[int] = []
    storage = AccountsProof.storage

    def counted(proof: AccountsProof, slot: int, *args: int) -> Any:
        read.append(slot)
        return storage(proof, slot, *args)

    monkeypatch.setattr(AccountsProof, "storage", counted)
    return read


def test_over_the_bound_the_archive_stays_at_manifest_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bookkeeping_both_ways: str
) -> None:
    state = {480: [Account(key(n), 1) for n in range(5)], 490: STATE[490], 500: STATE[500]}
    path = write_archive(tmp_path, state)
    read = storages_read(monkeypatch)
    proof = check_file(str(path), prove_accounts=AccountsLimits(max_accounts=4)).proof
    assert proof.level == Level.MANIFEST
    # past the bound the storages after are not read (the level says nothing of them); in
    # lanes, those handed on before a lane stopped the proof are
    if bookkeeping_both_ways == "inline":
        assert (read, proof.note) == ([480], "not proven: 5 accounts over the bound of 4")
    else:
        assert read[0] == 480
        assert re.fullmatch(r"not proven: [5-8] accounts over the bound of 4", proof.note or "")


def test_a_bound_the_manifests_storages_pass_reads_no_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # three storages, each at least one version: over a bound of 2 before any is read (the
    # plain check of a large full: `verify --prove-accounts-max 1000`)
    path = write_archive(tmp_path, STATE)
    read = storages_read(monkeypatch)
    budget = MemoryBudget(512 * 1024**2)
    limits = AccountsLimits(max_accounts=2, budget=budget)
    proof = check_file(str(path), prove_accounts=limits).proof
    assert (proof.level, proof.note) == (
        Level.MANIFEST,
        "not proven: at least 3 accounts (the storages the manifest lists) over the bound of 2",
    )
    assert read == [] and budget.peak == 0  # no storage read, no memory held
    assert check_file(str(path), prove_accounts=AccountsLimits(max_accounts=5)).proof.level == (
        Level.ACCOUNTS
    )
    assert read == [480, 490, 500]


async def test_a_following_check_proves_accounts_with_a_second_read(tmp_path: Path) -> None:
    archive = write_archive(tmp_path, STATE)
    data = archive.read_bytes()
    part = tmp_path / "part"
    with open(part, "wb") as f:  # noqa: ASYNC230 (a local temp file, as test_archivecheck's)
        check = FollowingCheck.start(
            f.fileno(), archive.name, prove_accounts=AccountsLimits(max_accounts=1000)
        )
        for at in range(0, len(data), 1000):
            f.write(data[at : at + 1000])
            f.flush()
            check.advance(min(len(data), at + 1000))
            await trio.lowlevel.checkpoint()
        check.finish(len(data))
        with trio.fail_after(30):
            assert (await check.result()).proof.level == Level.ACCOUNTS
    assert not [fd for fd in os.listdir("/proc/self/fd") if _points_to(fd, part)], (
        "a descriptor of the checked file was left open"
    )


@pytest.mark.one_bookkeeping
async def test_a_following_check_that_cannot_start_leaves_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check's setup fails after the file was duplicated and opened again (descriptors
    short: the accounts prover cannot start): OSError to the caller, and neither descriptor
    of the check left open on the archive (each retry leaked two, keeping a deleted
    archive's space taken and the shortage worse)."""
    import errno

    from tracker.proof.archive import archivecheck

    def short(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(archivecheck, "accounts_prover", short)
    archive = write_archive(tmp_path, STATE)
    with open(archive, "rb") as f:  # noqa: ASYNC230 (a local temp file)
        with pytest.raises(OSError, match="Too many open files"):
            FollowingCheck.start(
                f.fileno(), archive.name, prove_accounts=AccountsLimits(max_accounts=1000)
            )
        held = [fd for fd in os.listdir("/proc/self/fd") if _points_to(fd, archive)]
        assert held == [str(f.fileno())], "a descriptor of the check was left open"


def _points_to(fd: str, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except OSError:
        return False


async def test_a_following_check_cancelled_after_its_spill_began_removes_the_files(
    tmp_path: Path,
) -> None:
    name, data = many_accounts_archive(9000, 12_000, seed=3)
    temp = tmp_path / "spill"
    temp.mkdir()
    limits = AccountsLimits(memory=1024**2, temp_dir=str(temp))
    part = tmp_path / name
    with open(part, "wb") as f:  # noqa: ASYNC230 (a local temp file, as test_archivecheck's)
        check = FollowingCheck.start(f.fileno(), name, prove_accounts=limits)
        cut = len(data) * 9 // 10  # the storages mostly there, not the end
        f.write(data[:cut])
        f.flush()
        check.advance(cut)
        with trio.fail_after(30):
            while not os.listdir(temp):  # the index spilled: its directory is there
                await trio.sleep(0.01)
        check.cancel()
        with trio.fail_after(30), pytest.raises(ArchiveInvalid, match="check cancelled"):
            await check.result()
    assert os.listdir(temp) == []
