"""The manifest ``snapshots/{S}/{S}`` of an agave snapshot archive, decoded as a stream.

Snapshot format 1.2.0 (since 2020): bincode of agave's ``DeserializableVersionedBank``, then
``AccountsDbFields``, then the extra fields appended over time, each optional at the end of
the data (agave's ``default_on_eof``): ``lamports_per_signature``, the incremental snapshot
persistence, the epoch accounts hash, the versioned epoch stakes, the accounts lattice hash
(SIMD-0215) and the block id (v4.2's 33 bytes: an ``Option<Hash>``). The layout, with the
agave source files it comes from, is in docs/architecture.md, "Proven archives".

:class:`ManifestDecoder` is a parser of :mod:`tracker.proof.formats.parsing` over one tar member of
known size: it keeps the fields that prove the archive and counts the rest (a mainnet
manifest is hundreds of MB, mostly fixed-size stake records, skipped by length). It keeps the
account storage list (slot, id, valid bytes) compactly for the accounts proof.
"""

from __future__ import annotations

import re
import struct
from array import array
from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING, Any

import attrs
import base58

if TYPE_CHECKING:
    import numpy.typing as npt

from tracker.errors import CertificateInvalid
from tracker.proof.formats.alpenglow import (
    MAX_EPOCH_VOTERS,
    Candidate,
    EpochVoters,
    vote_account_keys,
)
from tracker.proof.formats.bincode import Reader
from tracker.proof.formats.parsing import ParserOf
from tracker.proof.formats.voteaccounts import vote_account_problem

#: Bytes of a lattice hash.
LT_HASH_BYTES = 2048
#: Account storages kept at most (mainnet: ~450k); 24 bytes each.
MAX_STORAGES = 4_000_000
#: Hard forks after the parent slot kept at most (real clusters: a handful in all).
MAX_HARD_FORKS = 65_536
#: Epochs of stakes a bank's and the versioned map may hold each (agave keeps a handful:
#: the leader schedule's). An empty one is 72 zero bytes a dozen Python steps read: seven
#: million, in an archive of 16 KB, took 141 s of a core.
MAX_EPOCHS = 64
#: Vote accounts read in all of a manifest's stakes (the bank's and each epoch's; mainnet:
#: a few thousand each). Each is a Python step (~5 us); a million of zeros is 3.5 KB.
MAX_VOTE_ACCOUNTS = 1_000_000
#: The bytes of a vote account's data read to check it as agave loads it (a vote state's
#: frame ends within ~23 KB whatever its lists hold; the rest is skipped).
VOTE_DATA_READ = 64 * 1024

_BANK_MIDDLE = struct.Struct("<5Q")  # transaction_count .. max_tick_height
_BANK_TIMES = struct.Struct("<Q16sqdQQQQ")  # ticks_per_slot .. block_height
_FEES = struct.Struct("<QQQQQB")  # fee calculator, fee rate governor
_SCHEDULE = struct.Struct("<QQ?QQ")
_INFLATION = struct.Struct("<6d")
_STORAGE = struct.Struct("<QQ")
#: Hard forks read at once (1 MiB).
_FORKS_AT_ONCE = 65_536
#: Bytes of an epoch's nodes read at once (a kernel's piece).
PIECE = 1024 * 1024
# The names of the decoded fields (agave's, the structs' own dotted before them).
_MIDDLE_NAMES = "transaction_count tick_height signature_count capitalization max_tick_height"
_TIMES_NAMES = "ticks_per_slot ns_per_slot genesis_creation_time slots_per_year "
_TIMES_NAMES += "accounts_data_len slot epoch block_height"
_FEE_NAMES = tuple(
    f"fee_rate_governor.{n}"
    for n in (
        "target_lamports_per_signature",
        "target_signatures_per_slot",
        "min_lamports_per_signature",
        "max_lamports_per_signature",
        "burn_percent",
    )
)
_SCHEDULE_NAMES = tuple(
    f"epoch_schedule.{n}"
    for n in (
        "slots_per_epoch",
        "leader_schedule_slot_offset",
        "warmup",
        "first_normal_epoch",
        "first_normal_slot",
    )
)
_INFLATION_NAMES = tuple(
    f"inflation.{n}"
    for n in ("initial", "terminal", "taper", "foundation", "foundation_term", "unused")
)

# Fixed sizes of skipped records (bincode of agave's types).
_HASH_AGE = 32 + 24  # Hash -> HashAge{fee_calculator, hash_index, timestamp}
_DELEGATION = 32 + 64  # Pubkey -> Delegation{voter, stake, activation, deactivation, rate}
_STAKE = _DELEGATION + 8  # Pubkey -> Stake{delegation, credits_observed}
_RENT_COLLECTOR = 8 + _SCHEDULE.size + 8 + 17
_BANK_HASH_INFO = 32 + 32 + 40
_PERSISTENCE = 8 + 32 + 8 + 32 + 8


@attrs.frozen
class StorageList:
    """The account storages a manifest lists: ``(slot, id, valid bytes)`` each, in the
    manifest's order (an ``accounts/{slot}.{id}`` member's valid length)."""

    entries: array[int] = attrs.field(eq=False, repr=False)

    def __len__(self) -> int:
        return len(self.entries) // 3

    def items(self) -> list[tuple[int, int, int]]:
        """Every storage as ``(slot, id, accounts_current_len)``."""
        e = self.entries
        return [(e[i], e[i + 1], e[i + 2]) for i in range(0, len(e), 3)]

    def valid_length(self, slot: int, ident: int) -> int | None:
        """The valid bytes of storage ``accounts/{slot}.{ident}``, None when not listed (the
        last entry where it is listed twice: agave collects the list into a map)."""
        e = self.entries
        for i in range(len(e) - 3, -1, -3):
            if e[i] == slot and e[i + 1] == ident:
                return e[i + 2]
        return None

    def by_slot(self) -> dict[int, list[tuple[int, int]]]:
        """``slot -> [(id, accounts_current_len)]`` (what agave's loader builds)."""
        out: dict[int, list[tuple[int, int]]] = {}
        for slot, ident, length in self.items():
            out.setdefault(slot, []).append((ident, length))
        return out


#: An account storage's member name, ``accounts/{slot}.{id}``.
STORAGE_NAME = re.compile(r"accounts/([0-9]{1,20})\.([0-9]{1,20})")
_PACKED = 1 << 32


class StorageLengths:
    """A storage list sorted once, looked up by (slot, id) in O(log n): the valid length
    of each storage, None for a member the list does not name.

    The look-up is the standard library's ``bisect`` over ``array("Q")`` columns, never
    numpy's ``searchsorted``: that one lets go of the GIL at each call, and the check's
    thread, which every storage passes, then waits for its turn behind the proof's other
    threads (its scan processes' sending and answers' threads: ~40 µs a look-up with one busy
    thread beside it, against ~0.6; docs/architecture.md, "What a storage costs the check's
    process")."""

    def __init__(self, storages: StorageList) -> None:
        # numpy here, not at the module's import: the service's config imports this module,
        # and a tracker that proves nothing loads no heavy library (tests/unit/test_idle_imports.py)
        import numpy as np

        from tracker.proof.formats.storages import MAX_DATA, META, aligned

        # the largest record of a storage: its header and the most data agave stores, aligned
        largest = aligned(META + MAX_DATA)

        rows: npt.NDArray[np.uint64] = np.frombuffer(storages.entries, dtype=np.uint64).reshape(
            -1, 3
        )
        order = np.lexsort((rows[:, 1], rows[:, 0]))
        slots, ids = rows[order, 0], rows[order, 1]
        self._lengths: array[int] = array("Q", rows[order, 2].tobytes())
        # slots and ids that fit 32 bits each (every real list: slots ~4·10^8, agave's ids
        # u32) are one sorted key, ``slot << 32 | id``: one search a storage, not three
        self._keys: array[int] | None = None
        self._slots: array[int] = array("Q")
        self._ids: array[int] = array("Q")
        if not len(rows) or max(int(slots.max()), int(ids.max())) < _PACKED:
            self._keys = array("Q", (slots << np.uint64(32) | ids).tobytes())
        else:
            self._slots, self._ids = array("Q", slots.tobytes()), array("Q", ids.tobytes())
        # the bytes they hold (each clipped past any storage agave loads: no sum wraps)
        clipped = np.minimum(rows[:, 2], np.uint64(1 << 36))
        self.total = int(clipped.sum(dtype=np.uint64))
        # the fewest records they can hold: a storage's valid bytes are whole records, each
        # at most `largest` bytes
        self.records = int(((clipped + np.uint64(largest - 1)) // np.uint64(largest)).sum())

    def get(self, slot: int, ident: int) -> int | None:
        """The valid length the list gives storage ``slot``.``ident``; None when it lists
        none. Listed twice, the last entry's (agave collects the list into a hash map: the
        last insert wins; the sort keeps the list's order among equal keys)."""
        if self._keys is not None:
            if slot >= _PACKED or ident >= _PACKED:
                return None
            packed = slot << 32 | ident
            at = bisect_right(self._keys, packed) - 1
            if at >= 0 and self._keys[at] == packed:
                return self._lengths[at]
            return None
        lo = bisect_left(self._slots, slot)
        hi = bisect_right(self._slots, slot, lo)
        at = bisect_right(self._ids, ident, lo, hi) - 1
        if at >= lo and self._ids[at] == ident:
            return self._lengths[at]
        return None


@attrs.frozen
class Manifest:
    """What a manifest holds that proves its archive, and counts of what was skipped.

    ``fields`` holds the decoded scalar fields by agave's names (hashes in bytes), ``counts``
    the element counts of the skipped collections; ``accounts_lt_hash`` is None for a manifest
    made before SIMD-0215/0220 (it ends before it), ``last_blockhash`` None when the queue
    has none (agave then hashes ``Hash::default()``).
    """

    slot: int
    parent_slot: int
    bank_hash: bytes
    parent_hash: bytes
    signature_count: int
    last_blockhash: bytes | None
    hard_forks: tuple[tuple[int, int], ...]
    accounts_db_slot: int
    storages: StorageList
    accounts_lt_hash: bytes | None
    full_slot: int | None
    fields: dict[str, Any] = attrs.field(eq=False, repr=False)
    counts: dict[str, int] = attrs.field(eq=False, repr=False)


class ManifestDecoder:
    """Decodes one manifest member of ``size`` bytes: :meth:`parser` is fed its bytes;
    :meth:`result` is the :class:`Manifest` once the member ended (ArchiveInvalid when it
    ended inside a required field, or was refused on the way)."""

    def __init__(self, size: int) -> None:
        self.r = Reader(size, "manifest")
        self.fields: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.storages: array[int] = array("Q")
        self.forks: list[tuple[int, int]] = []
        self.complete = False  # every required field came
        self.done = False  # the parser read every field it knows
        # the rank map's candidates of the bank's own epoch's stakes, while they are read
        self._voters: dict[str, Candidate] | None = None
        self._listed = 0
        self._vote_accounts = 0  # read in all stakes so far (MAX_VOTE_ACCOUNTS)

    def parser(self) -> ParserOf[None]:
        """The parser of the member's bytes (ends when the known fields are read)."""
        yield from self._bank()
        yield from self._accounts_db()
        self.complete = True
        yield from self._extra()
        self.done = True

    def result(self) -> Manifest:
        """The decoded manifest; ArchiveInvalid when it is incomplete."""
        if not self.complete:
            raise self.r.ended()
        f = self.fields
        return Manifest(
            slot=f["slot"],
            parent_slot=f["parent_slot"],
            bank_hash=f["hash"],
            parent_hash=f["parent_hash"],
            signature_count=f["signature_count"],
            last_blockhash=f["blockhash_queue.last_hash"],
            hard_forks=tuple(self.forks),
            accounts_db_slot=f["accounts_db.slot"],
            storages=StorageList(self.storages),
            accounts_lt_hash=f.get("accounts_lt_hash"),
            full_slot=f.get("incremental_snapshot_persistence.full_slot"),
            fields=f,
            counts=self.counts,
        )

    # -- the bank (DeserializableVersionedBank) ------------------------------------------

    def _bank(self) -> ParserOf[None]:
        r, f = self.r, self.fields
        r.field = "the blockhash queue"
        f["blockhash_queue.last_hash_index"] = yield from r.u64()
        has_last = yield from r.flag()
        f["blockhash_queue.last_hash"] = (yield from r.take(32)) if has_last else None
        self.counts["blockhash_queue.hashes"] = yield from r.skip_seq(_HASH_AGE)
        f["blockhash_queue.max_age"] = yield from r.u64()
        r.field = "the ancestors"
        self.counts["ancestors"] = yield from r.skip_seq(16)
        r.field = "the bank hash"
        head = yield from r.take(72)
        f["hash"], f["parent_hash"] = head[:32], head[32:64]
        f["parent_slot"] = struct.unpack_from("<Q", head, 64)[0]
        yield from self._hard_forks()
        r.field = "the bank's counters"
        middle = _BANK_MIDDLE.unpack((yield from r.take(_BANK_MIDDLE.size)))
        f.update(zip(_MIDDLE_NAMES.split(), middle, strict=True))
        has_hpt = yield from r.flag()
        f["hashes_per_tick"] = (yield from r.u64()) if has_hpt else None
        times = _BANK_TIMES.unpack((yield from r.take(_BANK_TIMES.size)))
        f.update(zip(_TIMES_NAMES.split(), times, strict=True))
        f["ns_per_slot"] = int.from_bytes(f["ns_per_slot"], "little")
        r.field = "the fee fields"
        f["collector_id"] = yield from r.take(32)
        f["collector_fees"] = yield from r.u64()
        fees = _FEES.unpack((yield from r.take(_FEES.size)))
        f["fee_calculator.lamports_per_signature"] = fees[0]
        f.update(zip(_FEE_NAMES, fees[1:], strict=True))
        f["collected_rent"] = yield from r.u64()
        r.field = "the rent collector"
        yield from r.skip(_RENT_COLLECTOR)
        r.field = "the epoch schedule"
        schedule = _SCHEDULE.unpack((yield from r.take(_SCHEDULE.size)))
        f.update(zip(_SCHEDULE_NAMES, schedule, strict=True))
        r.field = "the inflation"
        inflation = _INFLATION.unpack((yield from r.take(_INFLATION.size)))
        f.update(zip(_INFLATION_NAMES, inflation, strict=True))
        yield from self._stakes("stakes", _DELEGATION)
        r.field = "the unused accounts"
        for element in (32, 32, 40):
            yield from r.skip_seq(element)
        r.field = "the epoch stakes"
        epochs = yield from r.count(8, bound=MAX_EPOCHS)
        self.counts["epoch_stakes"] = epochs
        for _ in range(epochs):
            epoch = yield from r.u64()
            yield from self._epoch_stakes("epoch_stakes", _DELEGATION, epoch)
        r.field = "is_delta"
        f["is_delta"] = yield from r.flag()

    def _hard_forks(self) -> ParserOf[None]:
        # Only forks after the parent slot can count in the bank hash (agave's
        # HardForks::get_hash_data): those are kept, bounded; the others are counted.
        r = self.r
        r.field = "the hard forks"
        n = yield from r.count(16)
        self.counts["hard_forks"] = n
        parent = self.fields["parent_slot"]
        # numpy loaded here, where an archive is checked (tests/unit/test_idle_imports.py)
        import numpy as np

        left = n
        while left:
            # read in runs, filtered by numpy: one take per fork cost a Python step per 16
            # bytes (30 million forks of zeros, 83 KB compressed: a minute of a core)
            run = min(left, _FORKS_AT_ONCE)
            left -= run
            pairs = np.frombuffer((yield from r.take(16 * run)), dtype="<u8").reshape(run, 2)
            after = pairs[pairs[:, 0] > parent]
            if len(self.forks) + len(after) > MAX_HARD_FORKS:
                raise r.fail(f"more than {MAX_HARD_FORKS} hard forks after the parent slot")
            self.forks.extend((int(slot), int(count)) for slot, count in after.tolist())

    def _stakes(self, name: str, delegation: int) -> ParserOf[None]:
        r = self.r
        r.field = f"the {name}' vote accounts"
        votes = yield from r.count(
            32 + 8 + 8 + 8 + 32 + 1 + 8, bound=MAX_VOTE_ACCOUNTS - self._vote_accounts
        )
        self._vote_accounts += votes
        for _ in range(votes):  # pubkey, stake, Account{lamports, data, owner, exec, rent}
            head = yield from r.take(48)
            length = yield from r.count(1)
            data = (yield from r.take(min(length, VOTE_DATA_READ))) if length else b""
            yield from r.skip(length - len(data))
            tail = yield from r.take(41)
            if "invalid_vote_account" not in self.fields:
                problem = vote_account_problem(tail[:32], data)
                if problem is not None:  # the first one found is reported
                    self.fields["invalid_vote_account"] = (head[:32], problem)
            if self._voters is not None:
                self._keep_voter(head, data)
        r.field = f"the {name}' delegations"
        self.counts[f"{name}.vote_accounts"] = votes
        self.counts[f"{name}.stake_delegations"] = yield from r.skip_seq(delegation)
        yield from r.skip(16)  # unused, epoch
        r.field = f"the {name}' stake history"
        self.counts[f"{name}.stake_history"] = yield from r.skip_seq(32)

    def _keep_voter(self, head: bytes, data: bytes) -> None:
        """Keep a vote account of the bank's epoch's stakes as the rank map weighs it: with
        stake and a BLS key in its data (docs/http-api.md, "After the migration")."""
        if self._voters is None:
            return
        stake = _u64_at(head, 32)
        vote = base58.b58encode(head[:32]).decode("ascii")
        key: bytes | None = None
        if stake:
            try:
                node, key = vote_account_keys(data)
            except CertificateInvalid:  # data agave's vote state view does not read
                key = None
        if vote in self._voters:
            # listed twice (agave's map is keyed by the vote account: the last one read
            # stays, ranked or not); never two candidates of one account
            if key is None:
                del self._voters[vote]
                self._listed -= 1
            else:
                self._voters[vote] = Candidate(vote, node, stake, key)
            return
        if key is None:
            return
        self._listed += 1
        if len(self._voters) < MAX_EPOCH_VOTERS:
            self._voters[vote] = Candidate(vote, node, stake, key)

    def _epoch_stakes(self, name: str, delegation: int, epoch: int) -> ParserOf[None]:
        r = self.r
        # The rank map of a certificate for this bank's slot is that of the slot's epoch by
        # the bank's schedule (agave's ``get_key_to_rank_map``); the versioned map, read
        # after the bank's, wins where both hold one
        own = epoch == slot_epoch(self.fields)
        if own:
            self._voters, self._listed = {}, 0
        yield from self._stakes(name, delegation)
        if own and self._voters is not None:
            # in one order whatever the producer's hash map's: equal stakes, equal bytes
            voters = tuple(sorted(self._voters.values(), key=lambda c: c.vote))
            self.fields["epoch_voters"] = EpochVoters(epoch, voters, self._listed)
            self._voters = None
        r.field = f"the {name}"
        yield from r.skip(8)  # total_stake
        nodes = yield from r.count(32 + 8 + 8)
        yield from self._nodes(nodes)
        yield from r.skip_seq(64)  # epoch_authorized_voters

    def _nodes(self, nodes: int) -> ParserOf[None]:
        """Read past ``nodes`` entries of ``node id -> NodeVoteAccounts{vote_accounts,
        total_stake}`` in pieces of at most :data:`PIECE` bytes walked by a compiled kernel
        (``kernels.skip_nodes``), never more than what is left takes at least (48 a node, 8
        a total stake), so that a piece never reaches into what follows; a list of vote
        accounts that passes a piece is skipped unread. One Python step a node cost ~3 µs,
        and nodes of zeros compress to nothing (a million in an archive of kilobytes)."""
        # numpy and the kernels loaded here, where an archive is checked
        # (tests/unit/test_idle_imports.py)
        import numpy as np

        from tracker.proof.formats.kernels import skip_nodes

        r = self.r
        votes, tail, carry, need = 0, 0, b"", 0
        while nodes or votes or tail:
            if votes:  # the rest of a list that passed the piece: skipped unread
                yield from r.skip(32 * votes - len(carry))
                votes, carry, need = 0, b"", 0
                continue
            least = 48 * nodes + 8 * tail - len(carry)
            wanted = max(need, min(PIECE, least))
            # the bytes left when fewer (at least one): the kernel then finds a count past
            # the end where one lies there, refused in the words Reader.count says
            data = yield from r.take(min(wanted, max(r.size - r.at, 1)))
            piece = carry + data if carry else data
            left = r.size - r.at + len(piece)  # the member's bytes from the piece
            found = skip_nodes(
                np.frombuffer(piece, dtype=np.uint8), 0, len(piece), nodes, 0, tail, left
            )
            pos, nodes, votes, tail, wrong, need = (int(value) for value in found)
            if wrong:  # as Reader.count words it
                at = r.at - len(piece) + pos + 32  # where the count lies
                raise r.fail(
                    f"{r.field}: {_u64_at(piece, pos + 32)} elements of 32 bytes at byte "
                    f"{at}, {r.size - at - 8} bytes left"
                )
            carry = piece[pos:]

    # -- AccountsDbFields ------------------------------------------------------------------

    def _accounts_db(self) -> ParserOf[None]:
        r, f = self.r, self.fields
        r.field = "the account storage list"
        # as many slots as storages at most (agave lists each slot with its storage): each
        # is a Python step, and empty ones of zeros cost nothing to send (30 million, in an
        # archive of 15 KB, took 49 s of a core)
        slots = yield from r.count(16, bound=MAX_STORAGES)
        storages = self.storages
        for _ in range(slots):
            slot, n = _STORAGE.unpack((yield from r.take(16)))
            if n * 16 > r.size - r.at:
                raise r.fail(f"the storages of slot {slot}: {n} elements past the data")
            if len(storages) // 3 + n > MAX_STORAGES:
                raise r.fail(f"more than {MAX_STORAGES} account storages")
            while n:  # read in pieces of at most 64k entries (1 MiB)
                piece = min(n, 65536)
                data = yield from r.take(16 * piece)
                for ident, length in _STORAGE.iter_unpack(data):
                    storages.extend((slot, ident, length))
                n -= piece
        self.counts["storages"] = len(storages) // 3
        r.field = "the accounts-db fields"
        f["accounts_db.write_version"] = yield from r.u64()
        f["accounts_db.slot"] = yield from r.u64()
        yield from r.skip(_BANK_HASH_INFO)
        for key, element in (("historical_roots", 8), ("historical_roots_with_hash", 40)):
            # Optional at the end (default_on_eof), as the extra fields below.
            if r.at == r.size:
                return
            r.field = f"the {key.replace('_', ' ')}"
            self.counts[key] = yield from r.skip_seq(element)

    # -- ExtraFieldsToDeserialize: each optional at the end of the data ----------------------

    def _extra(self) -> ParserOf[None]:
        r, f = self.r, self.fields
        if not (yield from self._more("lamports_per_signature")):
            return
        f["lamports_per_signature"] = yield from r.u64()
        if not (yield from self._more("the incremental snapshot persistence")):
            return
        if (yield from r.flag()):
            persistence = yield from r.take(_PERSISTENCE)
            f["incremental_snapshot_persistence.full_slot"] = _u64_at(persistence, 0)
        if not (yield from self._more("the epoch accounts hash")):
            return
        if (yield from r.flag()):
            yield from r.skip(32)
        if not (yield from self._more("the versioned epoch stakes")):
            return
        epochs = yield from r.count(8 + 4, bound=MAX_EPOCHS)
        self.counts["versioned_epoch_stakes"] = epochs
        for _ in range(epochs):
            epoch = yield from r.u64()
            variant = struct.unpack("<I", (yield from r.take(4)))[0]
            if variant != 0:
                raise r.fail(f"versioned epoch stakes: unknown variant {variant}")
            yield from self._epoch_stakes("versioned_epoch_stakes", _STAKE, epoch)
        if not (yield from self._more("the accounts lattice hash")):
            return
        if (yield from r.flag()):
            if r.size - r.at < LT_HASH_BYTES:
                raise r.fail(
                    f"the accounts lattice hash has {r.size - r.at} bytes, not {LT_HASH_BYTES}"
                )
            f["accounts_lt_hash"] = yield from r.take(LT_HASH_BYTES)
        if not (yield from self._more("the block id")):
            return
        if (yield from r.flag()):
            f["block_id"] = yield from r.take(32)
        # Anything after is a field this decoder does not know yet: agave reads with
        # allow_trailing_bytes, and so does the tar walk (it skips the rest).

    def _more(self, field: str) -> ParserOf[bool]:
        """False at the end of the data (the field and every later one absent); a field
        the data ends inside is refused by the read itself (the size is known)."""
        if False:  # pragma: no cover - a generator, for ``yield from`` in one style
            yield None
        r = self.r
        r.field = field
        return r.at < r.size


#: The shortest epoch of a schedule's warmup (agave's ``MINIMUM_SLOTS_PER_EPOCH``).
MINIMUM_SLOTS_PER_EPOCH = 32


def slot_epoch(fields: dict[str, Any]) -> int | None:
    """The epoch of the bank's slot by the bank's epoch schedule (solana-sdk
    ``epoch-schedule`` ``EpochSchedule::get_epoch``: during the warmup, epochs of 32 slots
    doubling; then ``slots_per_epoch`` each from ``first_normal_slot``); None for a schedule
    of epochs of no slots. Pure."""
    slot: int = fields["slot"]
    first_normal: int = fields["epoch_schedule.first_normal_slot"]
    if slot < first_normal:
        # (slot + 33).next_power_of_two().trailing_zeros() - 5 - 1, saturating
        zeros = (slot + MINIMUM_SLOTS_PER_EPOCH).bit_length()
        return max(zeros - MINIMUM_SLOTS_PER_EPOCH.bit_length(), 0)
    per_epoch = fields["epoch_schedule.slots_per_epoch"]
    if per_epoch == 0:
        return None
    epoch: int = fields["epoch_schedule.first_normal_epoch"] + (slot - first_normal) // per_epoch
    return epoch


def _u64_at(data: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<Q", data, offset)[0]
    return value
