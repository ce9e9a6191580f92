"""Account storages agave refuses at load. One the manifest does not list: agave's
``SnapshotStorageRebuilder`` unwraps the list's entry of each storage's slot and id, so it
stops on one the list does not name
(of a slot it does not list) or leaves it aside (of a listed slot, arriving after that slot's
storage). The check says the archive is not loadable by agave, whichever level it proves:
it proved it to ``accounts`` with nothing said (a stray storage is not read: the list gives
no length), and a group with ``trust.loadable_by: agave`` admitted it. One of 0 bytes: its
``AppendVec::sanitize_len_and_size`` refuses the file and the load ends."""

from __future__ import annotations

from pathlib import Path

import pytest
from archives import archive_name, compress, make_tar, snapshot_entries

from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import check_file
from tracker.proof.formats.bankhash import EMPTY, STRAY
from tracker.proof.levels import Level

SLOT = 123_456


@pytest.mark.parametrize(
    ("extra", "stray"),
    [
        ([], None),
        ([(f"accounts/{SLOT - 50}.99", bytes(4096))], f"accounts/{SLOT - 50}.99"),  # no slot
        ([(f"accounts/{SLOT}.7", b"\xff" * 4096)], f"accounts/{SLOT}.7"),  # a listed slot
    ],
)
@pytest.mark.parametrize("accounts", [False, True])
def test_a_storage_the_manifest_does_not_list_makes_it_unloadable_by_agave(
    extra: list[tuple[str, bytes]], stray: str | None, accounts: bool, tmp_path: Path
) -> None:
    entries = snapshot_entries(SLOT, accounts=3, account_size=64 * 1024, seed=0) + extra
    path = tmp_path / archive_name(SLOT)
    path.write_bytes(compress(make_tar(entries), "zst"))
    limits = AccountsLimits() if accounts else None
    proof = check_file(str(path), prove_accounts=limits).proof
    assert proof.level == (Level.ACCOUNTS if accounts else Level.MANIFEST)
    assert proof.unloadable == (STRAY.format(stray) if stray else None)


@pytest.mark.parametrize("accounts", [False, True])
def test_a_storage_of_0_bytes_makes_it_unloadable_by_agave(accounts: bool, tmp_path: Path) -> None:
    # agave's AppendVec::sanitize_len_and_size refuses a storage file of 0 bytes
    # (FileSizeTooSmall) and the load of the snapshot ends there; the check proved such an
    # archive with nothing said. Five storages over the state's four accounts, no spare
    # bytes: the last is listed at length 0 and is an empty member.
    entries = snapshot_entries(SLOT, accounts=5, account_size=0, seed=0)
    empty = [name for name, data in entries if name.startswith("accounts/") and data == b""]
    assert len(empty) == 1
    path = tmp_path / archive_name(SLOT)
    path.write_bytes(compress(make_tar(entries), "zst"))
    limits = AccountsLimits() if accounts else None
    proof = check_file(str(path), prove_accounts=limits).proof
    assert proof.level == (Level.ACCOUNTS if accounts else Level.MANIFEST)
    assert proof.unloadable == EMPTY.format(empty[0])
