"""The accounts level holds the status cache's slot deltas to the newest SlotHistory sysvar of
a full's storages (tracker.proof.accounts.sysvars, tracker.proof.formats.slothistory)."""

from __future__ import annotations

from pathlib import Path

import base58
import pytest
from archives import compress, make_tar, storage_members

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import check_file
from tracker.proof.formats.slothistory import SLOT_HISTORY_ID
from tracker.proof.formats.writing import (
    Account,
    archive_hash_of,
    lattice_of_slots,
    write_manifest,
    write_slot_history,
    write_status_cache,
    write_storage,
)
from tracker.proof.levels import Level

pytestmark = pytest.mark.usefixtures("bookkeeping_both_ways")

SLOT = 500
SYSVAR_OWNER = base58.b58decode("Sysvar1111111111111111111111111111111111111")


def history(slots: list[int], bank_slot: int = SLOT) -> bytes:
    return write_slot_history(slots, bank_slot + 1)


def sysvar(data: bytes, lamports: int = 1_141_440) -> Account:
    return Account(SLOT_HISTORY_ID, lamports, data, SYSVAR_OWNER, rent_epoch=2**64 - 1)


def reason(call: object) -> str:
    with pytest.raises(ArchiveInvalid) as caught:
        call()  # type: ignore[operator]
    return caught.value.reason


def write_archive(
    directory: Path, cache: list[int], rooted: list[int] | None, lamports: int = 1_141_440
) -> Path:
    """A full of SLOT whose status cache has ``cache`` and whose state holds a SlotHistory
    with ``rooted`` and ``lamports`` (an older version of it, in an older slot, says
    otherwise); its manifest and name carry the state's lattice hash, the sysvar included."""
    state = {
        480: [Account(b"\x07" * 32, 10, b"old")],
        490: [sysvar(history([490], 490))],
        SLOT: [Account(b"\x09" * 32, 11, b"new")],
    }
    if rooted is not None:
        newest = sysvar(history(rooted), lamports)
        # a closed account is the default one, as agave stores it (no data, owner zero)
        state[SLOT].append(newest if lamports else Account(newest.pubkey, 0))
    lt_hash = lattice_of_slots(state)
    storages, members = storage_members(state)
    entries: list[tuple[str, bytes | None]] = [
        ("version", b"1.2.0"),
        (f"snapshots/{SLOT}/{SLOT}", write_manifest(SLOT, lt_hash, storages)),
        ("snapshots/status_cache", write_status_cache(cache)),
        *members,
    ]
    path = directory / f"snapshot-{SLOT}-{archive_hash_of(lt_hash)}.tar.zst"
    path.write_bytes(compress(make_tar(entries), "zst"))
    return path


def proof_level(path: Path) -> Level:
    return check_file(str(path), prove_accounts=AccountsLimits(max_accounts=1000)).proof.level


def test_a_status_cache_that_agrees_with_the_slot_history_reaches_accounts(
    tmp_path: Path,
) -> None:
    path = write_archive(tmp_path, [SLOT, 499, 497], [497, 499, SLOT])
    assert proof_level(path) == Level.ACCOUNTS


def test_a_status_cache_slot_missing_from_the_slot_history_is_refused(tmp_path: Path) -> None:
    path = write_archive(tmp_path, [SLOT, 499, 498], [497, 499, SLOT])
    assert reason(lambda: proof_level(path)) == (
        "status cache: slot 498 has an entry but is not a root in the SlotHistory sysvar"
    )
    assert check_file(str(path)).proof.level == Level.MANIFEST  # the manifest alone shows none


def test_a_slot_history_root_missing_from_the_status_cache_is_refused(tmp_path: Path) -> None:
    path = write_archive(tmp_path, [SLOT, 499], [497, 499, SLOT])
    assert reason(lambda: proof_level(path)).startswith(
        "status cache: no entry for slot 497, a root in the SlotHistory sysvar"
    )


def test_the_newest_version_of_the_sysvar_is_the_one_held(tmp_path: Path) -> None:
    # the older version (slot 490's) alone would say the newest slot is 490
    path = write_archive(tmp_path, [SLOT], [SLOT])
    assert proof_level(path) == Level.ACCOUNTS
    (tmp_path / "older").mkdir()
    older_only = write_archive(tmp_path / "older", [SLOT], None)
    assert "newest slot is 490, not the bank's slot 500" in reason(lambda: proof_level(older_only))


def test_a_closed_slot_history_is_refused(tmp_path: Path) -> None:
    path = write_archive(tmp_path, [SLOT], [SLOT], lamports=0)
    assert reason(lambda: proof_level(path)) == (
        "accounts: the SlotHistory sysvar is closed (zero lamports)"
    )


def test_a_full_without_a_slot_history_is_not_held_to_one(tmp_path: Path) -> None:
    # agave could not load it (its bank has no SlotHistory); the accounts level proves the
    # lattice hash and leaves the status cache as the structural checks left it
    state = {SLOT: [Account(b"\x09" * 32, 11, b"new")]}
    lt_hash = lattice_of_slots(state)
    data = write_storage(state[SLOT])
    entries: list[tuple[str, bytes | None]] = [
        ("version", b"1.2.0"),
        (f"snapshots/{SLOT}/{SLOT}", write_manifest(SLOT, lt_hash, [(SLOT, 0, len(data))])),
        ("snapshots/status_cache", write_status_cache([SLOT])),
        (f"accounts/{SLOT}.0", data + bytes(-len(data) % 4096)),
    ]
    path = tmp_path / f"snapshot-{SLOT}-{archive_hash_of(lt_hash)}.tar.zst"
    path.write_bytes(compress(make_tar(entries), "zst"))
    assert proof_level(path) == Level.ACCOUNTS
