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

import threading
from collections.abc import Callable

import attrs

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.accounthash import Summer
from tracker.proof.accounts.accountsproof import AccountsProof, Reread
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.accounts.sysvars import SysvarWatch
from tracker.proof.formats.manifest import STORAGE_NAME, Manifest, StorageLengths
from tracker.proof.formats.parsing import Parser
from tracker.proof.formats.slothistory import check_slot_deltas, decode_slot_history
from tracker.proof.formats.statuscache import SlotDeltas
from tracker.proof.levels import Level, Proof

#: What the note says when the manifest carries no lattice hash (made before SIMD-0215).
NO_LT_HASH = "not proven: the manifest has no accounts lattice hash"
#: Bytes of storages (the valid lengths the manifest lists) from which the check holds the
#: second read by each block's BLAKE3 rather than by the SHA-256 of each prefix: then the
#: second read reads most of a large file, and the BLAKE3 of the first read (~0.17 s a GB)
#: costs less than the SHA-256 of the second saves (~0.43 s a GB; proof.archive.binding).
BLAKE3_FROM = 256 * 1024 * 1024
MISMATCH = (
    "accounts: the lattice hash recomputed from the account storages differs from the "
    "manifest's accounts_lt_hash"
)


@attrs.define
class StoragesProver:
    """The accounts level of one full archive; ``reread(first)`` makes the second read's
    source (the verified file on disk, held to the check's read ``first``: its blocks'
    digests and size, from :meth:`first_read`), asked at the end, closed by the caller;
    ``summer()`` makes where the accounts are hashed (``tracker.proof.accounts.hashworker``: a
    worker process; in the caller's thread when None), made with the proof at the first storage;
    ``cancelled()`` ends a wait for the memory budget's room or on the scan processes.
    :meth:`close` once the check is over, whichever way it ended."""

    limits: AccountsLimits
    reread: Callable[[tuple[bytes, int, int] | None], Reread] | None = None
    summer: Callable[[], Summer] | None = None
    cancelled: Callable[[], bool] | None = None
    _proof: AccountsProof | None = None
    _lengths: StorageLengths | None = None
    _first: tuple[bytes, int, int] | None = None
    _sysvars: SysvarWatch = attrs.field(factory=SysvarWatch)
    binds: threading.Event = attrs.field(factory=threading.Event)
    #: The first storage member the manifest does not list ("": none), read or not.
    stray: str = attrs.field(default="", init=False)

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
        match = STORAGE_NAME.fullmatch(name)
        if match is None:
            return None
        if self._lengths is None:
            self._lengths = StorageLengths(manifest.storages)
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
        slot, ident = int(match[1]), int(match[2])
        # A manifest with a lattice hash that lists no storage (Firedancer v26.08's): each
        # storage is valid to its end, as Firedancer's own loader reads it
        # (docs/architecture.md, "The accounts level" → "Fulls as today's producers write them").
        unlisted = not manifest.storages and manifest.accounts_lt_hash is not None
        valid = size if unlisted else self._lengths.get(slot, ident)
        if valid is None and not self.stray and manifest.storages:
            self.stray = name  # not read (the list gives no length), but agave stops on it
        if self._proof is not None and self._proof.stopped:
            # the archive stays at ``manifest`` whatever comes: its storages are not read
            # (that level says nothing of them), and no second read needs the blocks' BLAKE3
            # (docs/architecture.md, "The accounts level" → "Bounded memory")
            self.binds.clear()
            return None
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
