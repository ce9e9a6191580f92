"""The second read held to the first when its reading thread is ahead: a block that differed
was raised in that thread, queued behind chunks no reader took any more, and ``confirm``
(at a block's end: nothing left to read) said nothing. A file rewritten between the two
reads (a forged copy checked, the honest bytes read again) was proven to ``accounts``
under the forged copy's SHA-256."""

from __future__ import annotations

import random
from pathlib import Path

import archives
import attrs
import pytest

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts import accountsprover
from tracker.proof.accounts.budget import AccountsLimits, shared_limits
from tracker.proof.archive.archivecheck import check_file
from tracker.proof.archive.binding import CHANGED
from tracker.proof.formats.writing import (
    Account,
    archive_hash_of,
    lattice_of,
    padded,
    write_manifest,
    write_storage,
)

MiB = 1 << 20
SLOT = 1000


def build(forge: bool) -> tuple[str, bytes]:
    """An archive of about 18 MB whose only difference, forged or not, is one account's
    lamports in the first half of its second 8 MiB block (the second read's BLAKE3 blocks)."""
    state = archives.state_accounts(archives.name_seed(SLOT, 0))
    honest = list(state)
    if forge:
        state = [attrs.evolve(state[0], lamports=state[0].lamports + 1), *state[1:]]
    heavy = [Account(n.to_bytes(4, "big") * 8, 1 + n, bytes([n % 251]) * 8000) for n in range(1000)]
    lt = lattice_of(heavy + honest)
    rnd = random.Random(1)
    members = [
        (SLOT - 2, 0, write_storage(heavy), 400 * 1024),
        (SLOT - 1, 1, write_storage(state), 0),
        (SLOT, 2, write_storage([Account(bytes([9]) * 32, 0)]), 9 * MiB),
    ]
    manifest = write_manifest(SLOT, lt, [(s, i, len(d)) for s, i, d, _ in members])
    entries = [
        ("version", archives.VERSION),
        ("snapshots", None),
        (f"snapshots/{SLOT}", None),
        (f"snapshots/{SLOT}/{SLOT}", manifest),
        ("snapshots/status_cache", archives.status_cache_of(SLOT, rnd)),
    ]
    entries += [(f"accounts/{s}.{i}", padded(d) + rnd.randbytes(n)) for s, i, d, n in members]
    return f"snapshot-{SLOT}-{archive_hash_of(lt)}.tar", archives.make_tar(entries)


def test_a_file_rewritten_between_the_reads_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, honest = build(forge=False)
    _, forged = build(forge=True)
    assert len(honest) == len(forged) and honest != forged
    budget, slots, frames = shared_limits(512 * MiB, 2)
    limits = AccountsLimits(workers=2, budget=budget, slots=slots, frames=frames)
    path = tmp_path / name
    path.write_bytes(forged)
    with pytest.raises(ArchiveInvalid, match="lattice hash"):  # the forgery alone: refused
        check_file(str(path), prove_accounts=limits)
    proof = accountsprover.StoragesProver.proof

    def rewritten(self: accountsprover.StoragesProver, *args: object, **kw: object) -> object:
        path.write_bytes(honest)  # between the first read and the second
        return proof(self, *args, **kw)

    monkeypatch.setattr(accountsprover.StoragesProver, "proof", rewritten)
    path.write_bytes(forged)
    with pytest.raises(ArchiveInvalid) as refused:  # it was proven, the forgery's SHA-256
        check_file(str(path), prove_accounts=limits)
    assert refused.value.reason == CHANGED
