"""The proof of one archive, fed by the tar walk of the archive check (one pass).

The tar walk knows nothing of formats: for each regular member it asks the archive's
:class:`MemberProver` ``member(name, size)`` for a parser of that member's bytes (None: skip
them), feeds it the member's data, and asks :meth:`MemberProver.proof` at the end of the
archive. :class:`ArchiveProver` reads ``version`` and ``snapshots/status_cache`` as agave
reads them at load (:mod:`tracker.proof.formats.statuscache`: refused otherwise, whatever the
level), decodes the manifest ``snapshots/{S}/{S}`` (level ``manifest``) and hands each
``accounts/{slot}.{id}`` member to an accounts prover when one is given
(:class:`AccountsProver`, level ``accounts``). docs/architecture.md, "Proven archives".
"""

from __future__ import annotations

import threading
from array import array
from typing import Protocol

import attrs

from tracker.errors import ArchiveInvalid
from tracker.proof.formats.bankhash import EMPTY, STRAY, UNLISTED, prove_manifest
from tracker.proof.formats.manifest import (
    STORAGE_NAME,
    Manifest,
    ManifestDecoder,
    StorageLengths,
    StorageList,
)
from tracker.proof.formats.parsing import Parser
from tracker.proof.formats.statuscache import SlotDeltas, status_cache_parser, version_parser
from tracker.proof.levels import Level, Proof

#: The status cache's member name.
STATUS_CACHE = "snapshots/status_cache"
#: Why an archive whose manifest the walk did not hand over stops at ``structure``.
NOT_READ = "its manifest was not read (not a plain file member)"


class MemberProver(Protocol):
    """What the tar walk asks of an archive's prover."""

    def member(self, name: str, size: int) -> Parser | None:
        """A parser of the data of the regular member ``name`` of ``size`` bytes (names as
        agave's unpacker compares them), or None to skip it. The parser may return before
        the data ends (the rest is skipped); a read past ``size`` is its own error."""
        ...

    def proof(self) -> Proof:
        """What the archive was proven to, once the tar stream ended; ArchiveInvalid when a
        member failed its proof."""
        ...


class AccountsProver(Protocol):
    """The accounts level's part (the account storages), given the decoded manifest."""

    def member(self, name: str, size: int, manifest: Manifest) -> Parser | None:
        """A parser of the account storage ``name`` (``accounts/{slot}.{id}``), or None."""
        ...

    @property
    def stray(self) -> str:
        """The first account storage of the archive its manifest does not list ("" when
        none): agave's loader stops on it (:data:`~tracker.proof.formats.bankhash.STRAY`)."""
        ...

    def settle(self) -> None:
        """Wait for the storages handed so far to parsers running apart (the first read's
        scan lanes); raise the refusal of the first of them in the stream that failed: it
        precedes whatever the reading thread met after it."""
        ...

    @property
    def binds(self) -> threading.Event:
        """Set once the manifest says the second read will read many bytes: the check then
        keeps each block's BLAKE3 from there on (``proof.archive.binding``)."""
        ...

    def first_read(self, digests: bytes, size: int, sha_blocks: int) -> None:
        """The digests of the blocks of the archive's ``size`` raw bytes as the check read them
        (``proof.archive.binding``: the first ``sha_blocks`` of them its prefixes' SHA-256),
        before :meth:`proof`: what the storages' second read must read again."""
        ...

    def proof(self, manifest: Manifest, proven: Proof, deltas: SlotDeltas | None = None) -> Proof:
        """The proof once every storage was fed: ``proven`` (level ``manifest``) raised to
        ``accounts`` when the storages give the manifest's lattice hash (and the status
        cache's slot ``deltas`` agree with the SlotHistory sysvar they hold)."""
        ...


class ArchiveProver:
    """The prover of one archive named with ``slot``, ``base_slot`` and ``name_hash``."""

    def __init__(
        self,
        slot: int,
        base_slot: int,
        name_hash: str,
        accounts: AccountsProver | None = None,
    ) -> None:
        self.slot = slot
        self.base_slot = base_slot
        self.name_hash = name_hash
        self.manifest_name = f"snapshots/{slot}/{slot}"
        self._accounts = accounts
        self._decoder: ManifestDecoder | None = None
        self._manifest: Manifest | None = None
        self._proven: Proof | None = None
        self._deltas: SlotDeltas | None = None  # the status cache's slots, once it was read
        # a storage member came though the manifest, one with a lattice hash, lists none (the
        # empty state's lattice hash: bankhash.unloadable cannot tell from the manifest alone)
        self._unlisted = False
        # the first storage the manifest does not list, and the list's index to tell it (the
        # accounts level keeps its own)
        self._stray = ""
        self._listed: StorageLengths | None = None
        self._empty = ""  # the first account storage of 0 bytes (agave refuses the file)

    @property
    def manifest_done(self) -> bool:
        """True once the manifest's decoder read every field it knows (a head read may
        stop there)."""
        return self._decoder is not None and self._decoder.done

    @property
    def manifest(self) -> Manifest | None:
        """The decoded manifest, once its member ended."""
        self._settle()
        return self._manifest

    def member(self, name: str, size: int) -> Parser | None:
        """The manifest's decoder for ``snapshots/{S}/{S}``; account storages go to the
        accounts prover once the manifest came (agave writes it first); ``version`` and the
        status cache are read as agave reads them at load (:mod:`.statuscache`)."""
        if name == "version":
            return version_parser(size)
        if name == STATUS_CACHE:
            return status_cache_parser(size, self.slot, self._read_deltas)
        if name == self.manifest_name:
            if self._decoder is not None:
                raise ArchiveInvalid(f"manifest: {name} twice in the archive")
            self._decoder = ManifestDecoder(size)
            return self._decoder.parser()
        if name.startswith("accounts/"):
            if size == 0 and not self._empty and STORAGE_NAME.fullmatch(name):
                self._empty = name
            decoder = self._decoder  # a manifest with a lattice hash that lists no storage
            listed = decoder is None or not decoder.complete or bool(decoder.storages)
            if not listed and decoder is not None and "accounts_lt_hash" in decoder.fields:
                self._unlisted = True
            if self._accounts is not None:
                manifest = self.manifest
                if manifest is not None:
                    return self._accounts.member(name, size, manifest)
            elif decoder is not None and decoder.complete and decoder.storages:
                self._note_stray(name, decoder.storages)
        return None

    def _note_stray(self, name: str, storages: array[int]) -> None:
        """Keep ``name`` when it is the first storage the manifest does not list (the
        accounts level, when on, tells its own: it looks each storage up anyway)."""
        match = STORAGE_NAME.fullmatch(name)
        if self._stray or match is None:
            return
        if self._listed is None:
            self._listed = StorageLengths(StorageList(storages))
        if self._listed.get(int(match[1]), int(match[2])) is None:
            self._stray = name

    def proof(self) -> Proof:
        """``manifest`` (or ``accounts``) when proven; ``structure`` when the archive has no
        manifest to prove (its absence is the structure check's rejection)."""
        proven = self.first_proof()
        accounts, manifest = self._accounts, self._manifest
        if accounts is not None and manifest is not None and proven.level >= Level.MANIFEST:
            return accounts.proof(manifest, proven, self._deltas)
        return proven

    def _read_deltas(self, deltas: SlotDeltas) -> None:
        self._deltas = deltas

    def first_proof(self) -> Proof:
        """What the read of the tar stream proved by itself: :meth:`proof` without the
        accounts level (whose second read of the storages :meth:`proof` runs)."""
        self._settle()
        if self._manifest is None or self._proven is None:
            return Proof(Level.STRUCTURE, note=NOT_READ)
        if self._unlisted and self._proven.unloadable is None:
            return attrs.evolve(self._proven, unloadable=UNLISTED)
        stray = self._accounts.stray if self._accounts is not None else self._stray
        if stray and self._proven.unloadable is None:
            return attrs.evolve(self._proven, unloadable=STRAY.format(stray))
        if self._empty and self._proven.unloadable is None:
            return attrs.evolve(self._proven, unloadable=EMPTY.format(self._empty))
        return self._proven

    def _settle(self) -> None:
        if self._decoder is not None and self._manifest is None:
            self._manifest = self._decoder.result()
            self._proven = prove_manifest(
                self._manifest,
                slot=self.slot,
                base_slot=self.base_slot,
                name_hash=self.name_hash,
            )
