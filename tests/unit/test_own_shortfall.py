"""``cache.checked.own_shortfall``: which copies below their group's level fall short for the
tracker's own cause (never booked against their source), as a table."""

from __future__ import annotations

import pytest

from tracker.cache.checked import Checking, own_shortfall
from tracker.proof.levels import Level, Proof

FULL = "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
INCREMENTAL = "incremental-snapshot-90-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
SHORT = "not proven: 604800 bytes of temporary space needed plus a 16 MiB margin, 8388608 free"
BOUND = "not proven: 2000 accounts over the bound of 1000"

ROWS = [
    # (require, name, proof, the failure or None)
    (
        Level.ACCOUNTS,
        FULL,
        Proof(Level.MANIFEST, note=SHORT, local_cause=True),
        f"archive not proven here: proven to manifest, accounts required: {SHORT}",
    ),
    (Level.ACCOUNTS, FULL, Proof(Level.MANIFEST, note=BOUND), None),  # the archive's size
    (Level.MANIFEST, FULL, Proof(Level.MANIFEST, note=SHORT, local_cause=True), None),  # met
    (Level.ACCOUNTS, INCREMENTAL, Proof(Level.MANIFEST, note=SHORT, local_cause=True), None),
    (
        Level.CLUSTER,  # what a check shows of cluster is accounts
        FULL,
        Proof(Level.MANIFEST, note=SHORT, local_cause=True),
        f"archive not proven here: proven to manifest, accounts required: {SHORT}",
    ),
    (Level.ACCOUNTS, FULL, Proof(Level.ACCOUNTS), None),
]


@pytest.mark.parametrize(("require", "name", "proof", "failure"), ROWS)
def test_own_shortfall(require: Level, name: str, proof: Proof, failure: str | None) -> None:
    assert own_shortfall(Checking(verify=True, require=require), name, proof) == failure
