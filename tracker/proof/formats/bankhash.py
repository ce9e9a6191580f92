"""The level ``manifest``: a decoded manifest checked against its archive's name. Pure.

- its slot, and its accounts-db slot, are the slot in the name; an incremental's base slot,
  where the manifest says it (the incremental snapshot persistence of older versions), is
  the base slot in the name;
- the name's hash is base58 of the BLAKE3-256 of its accounts lattice hash (SIMD-0220);
- the bank hash recomputed from its fields with agave's formula equals its ``hash``.

agave's ``Bank::hash_internal_state`` (runtime/src/bank.rs), once the lattice hash replaced
the accounts delta hash (SIMD-0215): SHA-256 of the parent bank hash, the signature count
(u64 little endian) and the last blockhash; then SHA-256 of that and the lattice hash's 2,048
bytes; then, when hard forks fall in ``(parent_slot, slot]`` (``HardForks::get_hash_data``,
sdk hard-forks), SHA-256 of that and their count (u64 little endian). docs/architecture.md,
"Proven archives".
"""

from __future__ import annotations

import hashlib

import base58

from tracker.errors import ArchiveInvalid
from tracker.proof.formats.alpenglow import EpochVoters
from tracker.proof.formats.lattice import LT_HASH_BYTES, checksum
from tracker.proof.formats.manifest import Manifest
from tracker.proof.levels import Level, Proof

#: Why an archive made before SIMD-0220 stops at ``structure``.
NO_LATTICE_HASH = "its manifest has no accounts lattice hash (made before SIMD-0220)"
#: Why agave cannot load an archive whose manifest has a lattice hash but lists no account
#: storage (as Firedancer v26.08's, ``fd_ssmanifest_encoder.c``): agave's
#: ``SnapshotStorageRebuilder`` takes each storage's length from that list and stops at a
#: storage it does not name (docs/architecture.md, "The accounts level" → "Fulls as today's
#: producers write them").
UNLISTED = (
    "agave cannot load it: its manifest lists no account storages (as Firedancer v26.08 "
    "writes a full; agave takes each storage's length from that list)"
)


#: Why agave cannot load an archive holding an account storage its manifest does not list
#: (its ``SnapshotStorageRebuilder`` unwraps the list's entry of the storage's slot and id:
#: it stops there, or, one of a listed slot arriving after that slot's storage, is left
#: aside), ``{}`` the member. Firedancer's loader reads what the list names.
STRAY = "agave cannot load it: {} is an account storage its manifest does not list"

#: Why agave cannot load an archive holding an account storage of 0 bytes: its
#: ``AppendVec::sanitize_len_and_size`` refuses a file of size 0 (``FileSizeTooSmall``) and
#: the error ends the snapshot's load; its writer never makes one (it archives only
#: storages holding live accounts). ``{}`` the member.
EMPTY = "agave cannot load it: {} is an account storage of 0 bytes"


def bank_hash(manifest: Manifest) -> bytes:
    """The bank hash agave computes from ``manifest``'s fields (its lattice hash given)."""
    if manifest.accounts_lt_hash is None:
        raise ValueError("no lattice hash")
    last = manifest.last_blockhash if manifest.last_blockhash is not None else bytes(32)
    signatures = (manifest.signature_count % 2**64).to_bytes(8, "little")
    digest = hashlib.sha256(manifest.parent_hash + signatures + last).digest()
    digest = hashlib.sha256(digest + manifest.accounts_lt_hash).digest()
    forks = sum(
        count for slot, count in manifest.hard_forks if manifest.parent_slot < slot <= manifest.slot
    )
    if forks:
        digest = hashlib.sha256(digest + (forks % 2**64).to_bytes(8, "little")).digest()
    return digest


def prove_manifest(manifest: Manifest, *, slot: int, base_slot: int, name_hash: str) -> Proof:
    """The proof of an archive named with ``slot``, ``base_slot`` (0 for a full) and
    ``name_hash`` (base58) whose manifest is ``manifest``: level ``manifest``, or
    ``structure`` with a note for a manifest made before SIMD-0220; ArchiveInvalid with a
    one-line reason naming the field that differs."""
    if manifest.slot != slot:
        raise ArchiveInvalid(f"manifest: slot {manifest.slot}, the name says {slot}")
    if manifest.accounts_db_slot != slot:
        raise ArchiveInvalid(
            f"manifest: accounts-db slot {manifest.accounts_db_slot}, the name says {slot}"
        )
    if base_slot and manifest.full_slot is not None and manifest.full_slot != base_slot:
        raise ArchiveInvalid(f"manifest: base slot {manifest.full_slot}, the name says {base_slot}")
    entries = manifest.storages.entries
    slots = entries[0::3]  # one array of the slots, not a tuple per storage
    if slots and max(slots) > slot:
        at = next(i for i, s in enumerate(slots) if s > slot)
        raise ArchiveInvalid(
            f"manifest: account storage {slots[at]}.{entries[3 * at + 1]} after the slot {slot}"
        )
    stored = _b58(manifest.bank_hash)
    if manifest.accounts_lt_hash is None:
        return Proof(Level.STRUCTURE, bank_hash=stored, note=NO_LATTICE_HASH)
    snapshot_hash = _b58(checksum(manifest.accounts_lt_hash))
    if snapshot_hash != name_hash:
        raise ArchiveInvalid(f"manifest: name hash {name_hash}, lattice hash gives {snapshot_hash}")
    computed = _b58(bank_hash(manifest))
    if computed != stored:
        raise ArchiveInvalid(f"manifest: bank hash {stored}, its fields give {computed}")
    block_id = manifest.fields.get("block_id")
    voters: EpochVoters | None = manifest.fields.get("epoch_voters")
    return Proof(
        Level.MANIFEST,
        snapshot_hash=snapshot_hash,
        bank_hash=stored,
        block_id=_b58(block_id) if block_id is not None else None,
        unloadable=unloadable(manifest),
        epoch_stakes=voters.to_bytes() if voters is not None else None,
    )


def unloadable(manifest: Manifest) -> str | None:
    """Why agave refuses to load the archive of ``manifest`` though it may be the cluster's
    state (one line), None when nothing in it says so: several account storages for one
    slot (agave's ``SnapshotStorageRebuilder`` takes one a slot; Firedancer writes several,
    firedancer-io/firedancer#10706), no storage listed under a lattice hash of a state that
    holds accounts (:data:`UNLISTED`; the identity is the empty state's), or an invalid vote
    account in its stakes (a load error since agave 4.3, anza-xyz/agave#13875:
    :mod:`tracker.proof.formats.voteaccounts`)."""
    # distinct ids: one storage listed twice is one (agave collects a slot's list into a
    # map of id to length, snapshot_storage_lengths_from_fields); in numpy: a set, a Counter
    # and a sort of Python tuples took ~860 MB and 26 s for the 4 million storages a
    # manifest may list (numpy loaded here, where an archive is checked)
    import numpy as np

    rows = np.frombuffer(manifest.storages.entries, dtype=np.uint64).reshape(-1, 3)[:, :2]
    twice, count = 0, 0
    if len(rows):
        slots, counts = np.unique(np.unique(rows, axis=0)[:, 0], return_counts=True)
        most = int(np.argmax(counts))  # the lowest slot of the most storages
        twice, count = int(slots[most]), int(counts[most])
    if count > 1:
        return (
            f"agave cannot load it: {count} account storages for slot {twice} (agave loads one"
            " a slot; Firedancer writes several)"
        )
    lt_hash = manifest.accounts_lt_hash
    if not manifest.storages and lt_hash is not None and lt_hash != bytes(LT_HASH_BYTES):
        return UNLISTED
    invalid = manifest.fields.get("invalid_vote_account")
    if invalid is not None:
        pubkey, problem = invalid
        return f"agave 4.3 and later refuse to load it: vote account {_b58(pubkey)}: {problem}"
    return None


def _b58(raw: bytes) -> str:
    return base58.b58encode(raw).decode("ascii")
