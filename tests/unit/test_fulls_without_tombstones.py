"""Fulls without tombstones (anza-xyz/agave#13851) at the accounts level (docs/architecture.md,
"The accounts level" → "Fulls as today's producers write them").

A tombstone is the zero-lamport record that says an account was closed. agave#13851 (v4.3.0-
beta) left tombstones out of full archives, assuming the account's older versions were left
out too (marked obsolete); agave#14867 put them back, because the obsolete marks can come after
the archiver read a storage: such a full holds an older open version with nothing newer, and
agave's load of it fails ("capitalization mismatch"). The archives here are written the three
ways (``tests/archives.py``, ``closed=``); the bank's state, and so the manifest's lattice hash
and the name, is the same in all three."""

from __future__ import annotations

from pathlib import Path

import pytest
from archives import archive_name, build_archive

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.accountsprover import MISMATCH
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import check_file
from tracker.proof.levels import Level

pytestmark = pytest.mark.usefixtures("bookkeeping_both_ways")

SLOT = 1200
LIMITS = AccountsLimits(max_accounts=1000)


def write(tmp_path: Path, closed: str | None) -> Path:
    name, data = build_archive(SLOT, accounts=3, closed=closed)
    assert name == archive_name(SLOT)  # the same state whichever way it was written
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("closed", ["tombstone", "dropped"])
def test_a_full_with_or_without_its_tombstone_reaches_accounts(tmp_path: Path, closed: str) -> None:
    """The tombstone supersedes the older version and counts nothing; left out with the
    older version (#13851 when consistent), the account is simply absent: the same sum."""
    proof = check_file(str(write(tmp_path, closed)), prove_accounts=LIMITS).proof
    assert (proof.level, proof.note, proof.unloadable) == (Level.ACCOUNTS, None, None)


def test_a_full_that_lost_a_tombstone_but_kept_the_older_version_is_refused(
    tmp_path: Path,
) -> None:
    """The newest version left is the open one: it counts, and the sum is not the bank's."""
    path = write(tmp_path, "stale")
    with pytest.raises(ArchiveInvalid) as caught:
        check_file(str(path), prove_accounts=LIMITS)
    assert caught.value.reason == MISMATCH
    assert check_file(str(path)).proof.level == Level.MANIFEST  # its manifest alone is right
