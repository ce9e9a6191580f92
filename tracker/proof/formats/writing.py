"""Writers of agave's snapshot formats, for examples and tests (never used to serve). Pure.

The one place that writes what :mod:`tracker.proof.formats.manifest` reads: a manifest
(``snapshots/{S}/{S}``, snapshot format 1.2.0, bincode of agave's bank fields, accounts-db
fields and extra fields) whose bank hash is agave's formula over its fields, and account
storages (``accounts/{slot}.{id}``) in agave's AppendVec format. ``examples/make_ledger.py``
and the tests' archives use them, so that their archives prove (docs/architecture.md,
"Proven archives").
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Mapping, Sequence

import attrs
import base58

from tracker.proof.formats.bankhash import bank_hash
from tracker.proof.formats.lattice import LtHash, account_lt_hash, checksum
from tracker.proof.formats.manifest import Manifest, StorageList, slot_epoch
from tracker.proof.formats.voteaccounts import VOTE_PROGRAM_ID

#: The ``version`` file of every archive.
SNAPSHOT_VERSION = b"1.2.0"
#: The extra fields after the accounts-db fields, in order (``extra`` counts them).
EXTRA_FIELDS = (
    "lamports_per_signature",
    "incremental_snapshot_persistence",
    "epoch_accounts_hash",
    "versioned_epoch_stakes",
    "accounts_lt_hash",
    "block_id",
)

_Q = struct.Struct("<Q")
_U32 = struct.Struct("<I")
#: A record's header: StoredMeta, AccountMeta and the obsolete hash (136 bytes).
_HEAD = struct.Struct("<QQ32sQQ32sB7x32x")
_SCHEDULE = struct.Struct("<QQ?QQ").pack(432_000, 432_000, True, 14, 524_256)
_SCHEDULE_FIELDS = {
    "epoch_schedule.slots_per_epoch": 432_000,
    "epoch_schedule.first_normal_epoch": 14,
    "epoch_schedule.first_normal_slot": 524_256,
}


def schedule_slot(epoch: int) -> int:
    """The first slot of ``epoch`` by the schedule :func:`write_manifest` writes (mainnet's:
    a warmup of epochs from 32 slots doubling up to epoch 14, then 432,000 slots each)."""
    if epoch < 14:
        return 32 * ((1 << epoch) - 1)
    return 524_256 + (epoch - 14) * 432_000


@attrs.frozen
class Account:
    """One stored version of an account."""

    pubkey: bytes
    lamports: int
    data: bytes = b""
    owner: bytes = bytes(32)
    executable: bool = False
    rent_epoch: int = 0
    write_version: int = 0

    def lt_hash(self) -> bytes:
        """Its 2,048-byte lattice hash (:func:`tracker.proof.formats.lattice.account_lt_hash`)."""
        return account_lt_hash(self.lamports, self.data, self.executable, self.owner, self.pubkey)


def write_storage(accounts: Iterable[Account]) -> bytes:
    """The bytes of an AppendVec holding ``accounts`` in order (agave's
    accounts-db/src/append_vec.rs; the format is in :mod:`tracker.proof.formats.storages`): per
    account StoredMeta{write_version u64, data_len u64, pubkey}, AccountMeta{lamports u64,
    rent_epoch u64, owner, executable u8, 7 bytes of padding}, the obsolete 32-byte hash
    (zeroed), the data; each record at a multiple of 8. The result's length is the storage's
    ``accounts_current_len`` (the last record's data ends there, unpadded); agave's file is
    that padded to 8 (:func:`padded`), a file with spare capacity ``.ljust(size, b"\\0")``."""
    out = bytearray()
    for account in accounts:
        out += bytes(-len(out) % 8)
        out += _HEAD.pack(
            account.write_version,
            len(account.data),
            account.pubkey,
            account.lamports,
            account.rent_epoch,
            account.owner,
            1 if account.executable else 0,
        )
        out += account.data
    return bytes(out)


def padded(storage: bytes) -> bytes:
    """A storage's bytes padded to a multiple of 8, as agave's files of them end."""
    return storage + bytes(-len(storage) % 8)


#: One transaction's result in a status cache: Ok, or a TransactionError's bincode.
OK_RESULT = b"\0\0\0\0"
#: ``Err(InstructionError(0, Custom(1)))``.
CUSTOM_ERROR = _U32.pack(1) + _U32.pack(8) + b"\0" + _U32.pack(25) + _U32.pack(1)


def write_status_cache(
    slots: Iterable[int],
    statuses: Sequence[tuple[bytes, bytes]] = (),
    blockhash: bytes = b"\x41" * 32,
) -> bytes:
    """A status cache (``snapshots/status_cache``, bincode of agave's ``Vec<BankSlotDelta>``:
    :mod:`tracker.proof.formats.statuscache`) with one rooted entry per slot of ``slots``,
    each holding ``statuses`` (``(20-byte key, result)``: :data:`OK_RESULT`, :data:`CUSTOM_ERROR`)
    under ``blockhash``, none when it is empty. agave loads an archive of slot S only when S
    has an entry."""
    listed = list(slots)
    out = bytearray(_Q.pack(len(listed)))
    for slot in listed:
        out += _Q.pack(slot) + b"\x01"
        if not statuses:
            out += _Q.pack(0)
            continue
        out += _Q.pack(1) + blockhash + _Q.pack(0) + _Q.pack(len(statuses))
        for key, result in statuses:
            out += key + result
    return bytes(out)


def write_slot_history(slots: Iterable[int], next_slot: int) -> bytes:
    """The data of a SlotHistory sysvar (:mod:`tracker.proof.formats.slothistory`) whose
    history holds ``slots`` (each within its newest ``MAX_ENTRIES`` before ``next_slot``),
    as agave writes it: all 1,048,576 bits."""
    entries = 1024 * 1024
    bits = bytearray(entries // 8)
    for slot in slots:
        bits[slot % entries // 8] |= 1 << (slot % 8)
    return b"\x01" + _Q.pack(entries // 64) + bytes(bits) + _Q.pack(entries) + _Q.pack(next_slot)


def lattice_of(accounts: Iterable[Account]) -> bytes:
    """The lattice hash of a state holding ``accounts`` (newest version of each pubkey
    last in the iteration; zero lamports count nothing)."""
    newest = {account.pubkey: account for account in accounts}
    total = LtHash()
    for account in newest.values():
        total.add(account.lt_hash())
    return total.value()


def lattice_of_slots(slots: Mapping[int, Iterable[Account]]) -> bytes:
    """The lattice hash of the state stored as ``slots`` (slot -> the accounts it stores):
    the version of each pubkey in the highest slot counts, as agave's index generation keeps
    it (docs/architecture.md, "The accounts level")."""
    return lattice_of(a for slot in sorted(slots) for a in slots[slot])


def archive_hash_of(lt_hash: bytes) -> str:
    """The hash an archive's name carries for a state of lattice hash ``lt_hash``."""
    return base58.b58encode(checksum(lt_hash)).decode("ascii")


def write_manifest(
    slot: int,
    lt_hash: bytes | None,
    storages: Sequence[tuple[int, int, int]] = (),
    *,
    parent_hash: bytes = b"\x22" * 32,
    last_blockhash: bytes = b"\x41" * 32,
    signature_count: int = 0,
    extra: int = len(EXTRA_FIELDS),
    epoch_stakes: Mapping[int, Sequence[tuple[bytes, int, bytes]]] | None = None,
) -> bytes:
    """A manifest of ``slot`` listing ``storages`` (``(slot, id, valid bytes)``) with the
    lattice hash ``lt_hash``; its bank hash is agave's formula over these fields. ``extra``
    writes only that many extra fields (an older manifest; the lattice hash is the fifth).
    ``epoch_stakes`` are the versioned epoch stakes, each epoch's vote accounts as
    ``(pubkey, stake, data)`` (owned by the vote program); the bank's epoch is its slot's by
    the manifest's schedule (mainnet's: :func:`schedule_slot` gives an epoch's first slot)."""
    lt = lt_hash if extra > EXTRA_FIELDS.index("accounts_lt_hash") else None
    parent_slot = max(slot - 1, 0)
    fields = Manifest(
        slot=slot,
        parent_slot=parent_slot,
        bank_hash=b"",
        parent_hash=parent_hash,
        signature_count=signature_count,
        last_blockhash=last_blockhash,
        hard_forks=(),
        accounts_db_slot=slot,
        storages=StorageList(_array(storages)),
        accounts_lt_hash=lt,
        full_slot=None,
        fields={},
        counts={},
    )
    hash_ = bank_hash(fields) if lt is not None else b"\x55" * 32
    out = bytearray()
    # DeserializableVersionedBank (runtime/src/serde_snapshot.rs)
    out += _Q.pack(1) + b"\x01" + last_blockhash  # blockhash queue: last index, last hash
    out += _Q.pack(1) + last_blockhash + struct.pack("<QQQ", 5000, 1, 1_700_000_000_000)
    out += _Q.pack(300)  # max_age
    out += _Q.pack(1) + struct.pack("<QQ", slot, 0)  # ancestors
    out += hash_ + parent_hash + _Q.pack(parent_slot)
    out += _Q.pack(0)  # hard forks
    tick = (slot + 1) * 64
    out += struct.pack("<5Q", 0, tick, signature_count, 1_000_000, tick)
    out += b"\x01" + _Q.pack(12_500)  # hashes_per_tick
    out += _Q.pack(64) + (400_000_000).to_bytes(16, "little")
    epoch = slot_epoch({"slot": slot, **_SCHEDULE_FIELDS})
    out += struct.pack("<qdQQQQ", 1_700_000_000, 78_892_314.98630137, 0, slot, epoch, slot)
    out += bytes(32) + _Q.pack(0)  # collector id, collector fees
    out += struct.pack("<QQQQQB", 0, 5000, 20_000, 2500, 50_000, 50)  # fees
    out += _Q.pack(0)  # collected rent
    out += _Q.pack(0) + _SCHEDULE + struct.pack("<dQdB", 78_892_314.98630137, 3480, 2.0, 50)
    out += _SCHEDULE + struct.pack("<6d", 0.08, 0.015, 0.15, 0.05, 7.0, 0.0)
    out += _Q.pack(0) + _Q.pack(0) + _Q.pack(0) + _Q.pack(0) + _Q.pack(0)  # stakes
    out += _Q.pack(0) * 3  # unused accounts
    out += _Q.pack(0)  # epoch stakes
    out += b"\x01"  # is_delta
    # AccountsDbFields
    by_slot: dict[int, list[tuple[int, int]]] = {}
    for storage_slot, ident, length in storages:
        by_slot.setdefault(storage_slot, []).append((ident, length))
    out += _Q.pack(len(by_slot))
    for storage_slot, entries in by_slot.items():
        out += _Q.pack(storage_slot) + _Q.pack(len(entries))
        for ident, length in entries:
            out += _Q.pack(ident) + _Q.pack(length)
    out += _Q.pack(0) + _Q.pack(slot) + bytes(104) + _Q.pack(0) + _Q.pack(0)
    # ExtraFieldsToDeserialize, each optional at the end
    parts = (
        _Q.pack(5000),
        b"\x00",
        b"\x00",
        write_epoch_stakes(epoch_stakes or {}),
        (b"\x01" + lt) if lt is not None else b"\x00",
        b"\x01" + b"\x33" * 32,
    )
    for part in parts[:extra]:
        out += part
    return bytes(out)


def write_epoch_stakes(epochs: Mapping[int, Sequence[tuple[bytes, int, bytes]]]) -> bytes:
    """agave's ``versioned_epoch_stakes`` (``HashMap<Epoch, VersionedEpochStakes>``, each
    ``Current``: ``SerializableEpochStakes`` (the vote accounts, no delegations, the unused
    u64, the epoch, no stake history), the total stake, the nodes' vote accounts and the
    authorized voters); each vote account ``(pubkey, stake, data)`` an ``Account`` of the
    vote program."""
    out = bytearray(_Q.pack(len(epochs)))
    for epoch, accounts in epochs.items():
        out += _Q.pack(epoch) + _U32.pack(0) + _Q.pack(len(accounts))
        nodes: dict[bytes, list[tuple[bytes, int]]] = {}
        for pubkey, stake, data in accounts:
            out += pubkey + _Q.pack(stake) + _Q.pack(1_000_000) + _Q.pack(len(data)) + data
            out += VOTE_PROGRAM_ID + b"\x00" + _Q.pack(0)
            if stake:
                nodes.setdefault(data[4:36], []).append((pubkey, stake))
        out += _Q.pack(0) + _Q.pack(0) + _Q.pack(epoch) + _Q.pack(0)
        out += _Q.pack(sum(stake for _, stake, _ in accounts)) + _Q.pack(len(nodes))
        for node, votes in nodes.items():
            out += node + _Q.pack(len(votes)) + b"".join(v for v, _ in votes)
            out += _Q.pack(sum(stake for _, stake in votes))
        out += _Q.pack(0)  # the authorized voters
    return bytes(out)


def _array(storages: Sequence[tuple[int, int, int]]) -> array[int]:
    values = array("Q")
    for entry in storages:
        values.extend(entry)
    return values
