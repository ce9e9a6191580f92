"""The accounts level inside an archive's prover: storages in, the lattice hash compared. Pure.

:class:`StoragesProver` is the :class:`~tracker.proof.formats.prover.AccountsProver` of one full
archive (docs/architecture.md, "Proven archives" → "The accounts level"): the tar walk hands
it each ``accounts/{slot}.{id}`` member with the decoded manifest, it hands the member to
:class:`~tracker.proof.accounts.accountsproof.AccountsProof` with the storage's valid length from
the manifest's storage list, and at the end it compares the recomputed lattice hash with the
manifest's ``accounts_lt_hash``: equal raises the proof to ``accounts``; different rejects
the archive, naming the field; not computed (over the bound, no second read) leaves it at
``manifest`` with the proof's note. A member the manifest does not list is not a storage
agave would load (it needs the valid length from the manifest): it is skipped.
"""

from __future__ import annotations

import re
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable

import attrs
import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.accounthash import Summer
from tracker.proof.accounts.accountsproof import AccountsProof, Reread
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.accounts.sysvars import SysvarWatch
from tracker.proof.formats.manifest import Manifest, StorageList
from tracker.proof.formats.parsing import Parser
from tracker.proof.formats.slothistory import check_slot_deltas, decode_slot_history
from tracker.proof.formats.statuscache import SlotDeltas
from tracker.proof.formats.storages import MAX_DATA, META, aligned
from tracker.proof.levels import Level, Proof

_STORAGE = re.compile(r"accounts/([0-9]{1,20})\.([0-9]{1,20})")
#: What the note says when the manifest carries no lattice hash (made before SIMD-0215).
NO_LT_HASH = "not proven: the manifest has no accounts lattice hash"
#: Bytes of storages (the valid lengths the manifest lists) from which the check holds the
#: second read by each block's BLAKE3 rather than by the SHA-256 of each prefix: then the
#: second read reads most of a large file, and the BLAKE3 of the first read (~0.17 s a GB)
#: costs less than the SHA-256 of the second saves (~0.43 s a GB; proof.archive.binding).
BLAKE3_FROM = 256 * 1024 * 1024
_PACKED = 1 << 32
#: The largest record of a storage: its header and the most data agave stores, aligned.
_LARGEST = aligned(META + MAX_DATA)
MISMATCH = (
    "accounts: the lattice hash recomputed from the account storages differs from the "
    "manifest's accounts_lt_hash"
)


class _Lengths:
    """The storage list sorted once, looked up by (slot, id) in O(log n).

    The look-up is the standard library's ``bisect`` over ``array("Q")`` columns, never
    numpy's ``searchsorted``: that one lets go of the GIL at each call, and the check's
    thread, which every storage passes, then waits for its turn behind the proof's other
    threads (its scan processes' sending and answers' threads: ~40 µs a look-up with one busy
    thread beside it, against ~0.6; docs/architecture.md, "What a storage costs the check's
    process")."""

    def __init__(self, storages: StorageList) -> None:
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
        # at most _LARGEST bytes
        self.records = int(((clipped + np.uint64(_LARGEST - 1)) // np.uint64(_LARGEST)).sum())

    def get(self, slot: int, ident: int) -> int | None:
        """The valid length the list gives storage ``slot``.``ident``; None when it lists
        none."""
        if self._keys is not None:
            if slot >= _PACKED or ident >= _PACKED:
                return None
            packed = slot << 32 | ident
            at = bisect_left(self._keys, packed)
            if at < len(self._keys) and self._keys[at] == packed:
                return self._lengths[at]
            return None
        lo = bisect_left(self._slots, slot)
        hi = bisect_right(self._slots, slot, lo)
        at = bisect_left(self._ids, ident, lo, hi)
        if at < hi and self._ids[at] == ident:
            return self._lengths[at]
        return None


@attrs.define
class StoragesProver:
    """The accounts level of one full archive; ``reread(first)`` makes the second read's
    source (the verified file on disk, held to the check's read ``first``: its blocks'
    digests and size, from :meth:`first_read`), asked at the end, closed by the caller;
    ``summer()`` makes where the accounts are hashed (``tracker.proof.accounts.hashworker``: a
    worker process; in the caller's thread when None), made with the proof at the first storage;
    ``cancelled()`` ends a wait for the memory budget's room.
    :meth:`close` once the check is over, whichever way it ended."""

    limits: AccountsLimits
    reread: Callable[[tuple[bytes, int, int] | None], Reread] | None = None
    summer: Callable[[], Summer] | None = None
    cancelled: Callable[[], bool] | None = None
    _proof: AccountsProof | None = None
    _lengths: _Lengths | None = None
    _first: tuple[bytes, int, int] | None = None
    _sysvars: SysvarWatch = attrs.field(factory=SysvarWatch)
    binds: threading.Event = attrs.field(factory=threading.Event)

    def first_read(self, digests: bytes, size: int, sha_blocks: int) -> None:
        """The digests of the blocks of the archive's ``size`` raw bytes as the check read
        them (the first ``sha_blocks`` its prefixes' SHA-256): the second read is held to
        them."""
        self._first = (digests, size, sha_blocks)

    def settle(self) -> None:
        """See :class:`~tracker.proof.formats.prover.AccountsProver`."""
        if self._proof is not None:
            self._proof.settle()

    def close(self) -> None:
        """Let go of the proof (its index, its summer's process); idempotent."""
        if self._proof is not None:
            self._proof.close()

    def member(self, name: str, size: int, manifest: Manifest) -> Parser | None:
        """The parser of the storage ``name``; None for a member the manifest does not list."""
        match = _STORAGE.fullmatch(name)
        if match is None:
            return None
        if self._lengths is None:
            self._lengths = _Lengths(manifest.storages)
            # no lattice hash to compare: the storages are read and indexed, and no hashing
            # process is started (the summer of the caller's thread lends no room ahead); a
            # bound the storage list already passes: none is read (the plain check), and
            # neither memory nor a hashing process is taken
            bound = self.limits.max_accounts
            over = bound is not None and self._lengths.records > bound
            summer = self.summer if manifest.accounts_lt_hash is not None and not over else None
            self._proof = AccountsProof(
                self.limits,
                summer() if summer is not None else None,
                self.cancelled,
                at_least=self._lengths.records,
            )
            self._proof.watch = self._sysvars.keep
            if summer is not None and self._lengths.total >= BLAKE3_FROM:
                # a long second read may follow: from the first storage it will read again
                # (none when every version was hashed where it lay and kept, nor without a
                # lattice hash to compare), the check holds it by each block's BLAKE3
                self._proof.rereads = self.binds
        if self._proof is not None and self._proof.stopped:
            # the archive stays at ``manifest`` whatever comes: its storages are not read
            # (that level says nothing of them), and no second read needs the blocks' BLAKE3
            # (docs/architecture.md, "The accounts level" → "Bounded memory")
            self.binds.clear()
            return None
        slot, ident = int(match[1]), int(match[2])
        # A manifest with a lattice hash that lists no storage (Firedancer v26.08's): each
        # storage is valid to its end, as Firedancer's own loader reads it
        # (docs/architecture.md, "The accounts level" → "Fulls as today's producers write them").
        unlisted = not manifest.storages and manifest.accounts_lt_hash is not None
        valid = size if unlisted else self._lengths.get(slot, ident)
        if valid is None or self._proof is None:
            return None
        return self._parse(slot, ident, size, valid)

    def _parse(self, slot: int, ident: int, size: int, valid: int) -> Parser:
        assert self._proof is not None
        self._sysvars.storage(slot)  # numbered as the proof numbers it, when it begins
        yield from self._proof.storage(slot, ident, size, valid)

    def proof(self, manifest: Manifest, proven: Proof, deltas: SlotDeltas | None = None) -> Proof:
        """``proven`` raised to ``accounts`` when the storages give the manifest's lattice
        hash; ArchiveInvalid naming the field when they give another, or when the status
        cache's slot ``deltas`` disagree with the SlotHistory sysvar the storages hold."""
        proof = self._proof or AccountsProof(self.limits, None, self.cancelled)  # no summer
        if manifest.accounts_lt_hash is None:
            proof.close()
            return attrs.evolve(proven, note=NO_LT_HASH)
        # stopped: its note is the verdict, no second read (its blocks' digests not all taken)
        reread = self.reread if not proof.stopped else None
        source = reread(self._first) if reread is not None else None
        try:
            lt_hash, note = proof.finish(source)
            confirm = getattr(source, "confirm", None)
            if lt_hash is not None and confirm is not None:
                confirm()
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        if lt_hash is None:
            return attrs.evolve(proven, note=note, local_cause=proof.local_cause)
        if lt_hash != manifest.accounts_lt_hash:
            raise ArchiveInvalid(MISMATCH)
        self._check_slot_history(deltas)
        return attrs.evolve(proven, level=Level.ACCOUNTS)

    def _check_slot_history(self, deltas: SlotDeltas | None) -> None:
        """agave's ``verify_slot_deltas_with_history`` on the newest SlotHistory version
        (:mod:`tracker.proof.formats.slothistory`); a state without one is not held to it
        (docs/architecture.md, "What no level binds")."""
        newest = self._sysvars.newest
        if deltas is None or newest is None:
            return
        lamports, data = newest
        if not lamports:  # closed: agave's bank has no SlotHistory to load with
            raise ArchiveInvalid("accounts: the SlotHistory sysvar is closed (zero lamports)")
        check_slot_deltas(deltas, decode_slot_history(data))
