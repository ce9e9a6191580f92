"""What a refresh from several sources at once adds to a refresh (:class:`GaplessWrites`, a
base of :class:`tracker.cache.refresh.Refresh`): its pieces are written at their offsets
through the temp file's descriptor, and the refresh is told the gapless prefix as it grows;
its readers, and the archive check, follow that prefix, never a byte past a gap. When the
copy fails its check, its readers are cut off (a reader that has read a liar's bytes must
never get a complete body), the copy is repaired and checked again from its first byte
(docs/architecture.md, "A refresh from several sources").
"""

from __future__ import annotations

import collections
from typing import Any

import trio

from tracker.cache.checked import Checking
from tracker.cache.tempfile import Writeback
from tracker.errors import CacheError
from tracker.multisource.sources import Source
from tracker.proof.archive.archivecheck import FollowingCheck


class GaplessWrites:
    """The part of a refresh that pieces written out of order use; the attributes are the
    refresh's own (set by its ``__init__``)."""

    name: str
    size: int
    written: int
    ended: trio.Event
    _fd: int | None
    _checking: Checking
    _check: FollowingCheck | None
    _writes: collections.deque[Any]
    _queued: int
    _writeback: Writeback
    verified: bool
    #: Readers cut off: the copy failed its check and is being repaired.
    _cut: bool = False
    #: How many times readers were cut off (:meth:`cut_readers`): an upload following the
    #: file that read bytes before the last cut starts again once the copy passed its
    #: check (:func:`tracker.objectstore.upload.upload_following`).
    repairs: int = 0
    #: The sources of a refresh from several at once, the first one first (their shares:
    #: the status page); empty for a refresh from one source.
    piece_sources: tuple[Source, ...] = ()
    #: When the check failed before the last byte: a prefix holding every byte it read (the
    #: bad ones are among them); 0: not known (the whole file is suspect).
    failed_within: int = 0

    @property
    def checked(self) -> bool:
        """True when the archive is checked before its readers get their last bytes: the
        gate that lets a refresh take pieces from several sources (docs/http-api.md#trust)."""
        return self._checking.verify

    @property
    def proves_accounts(self) -> bool:
        """True when the check proves a full to ``accounts`` (what vouches for every byte of
        a full from several sources without a trusted digest: :mod:`tracker.cache.mixedcopy`)."""
        return self._checking.verify and self._checking.prove_accounts is not None

    def descriptor(self) -> int:
        """The open temp file, for pieces written at their offsets (through a duplicate:
        ``abort`` may close this one meanwhile). CacheError when the refresh is not open or
        was written in order already."""
        if self._fd is None or self._writes or self._queued:
            raise CacheError("refresh is not open, or written in order already")
        return self._fd

    def landed(self, prefix: int) -> None:
        """The first ``prefix`` bytes of the temp file are written without a gap (pieces
        beyond them may be too): readers may follow up to there, the archive check reads
        on. Never moves back; ignored once the refresh ended."""
        if prefix <= self.written or self.ended.is_set():
            return
        check = self._check
        if check is not None and check.done() and not self.failed_within:
            # It passes only once told the end: ended before, it failed on bytes it had
            # read, all of them before this prefix (what a repair compares).
            self.failed_within = self.written
        self.written = min(prefix, self.size)
        self._notify()
        if self._fd is not None:
            self._writeback.advance(self._fd, self.written)

    def cut_readers(self) -> None:
        """End every reader's stream in error now and refuse new ones until the refresh
        passes its check (docs/http-api.md, "Verified archives")."""
        self._cut = True
        self.repairs += 1
        self._notify()

    @property
    def repairing(self) -> bool:
        """True while the readers are cut off and the copy is neither checked good again
        nor given up (the refresh ended)."""
        return self._cut and not self.verified and not self.ended.is_set()

    async def recheck(self) -> None:
        """Check the complete temp file again from its first byte (after a repair), as
        ``verify`` does; raises what it raises."""
        if self._fd is None or self.written != self.size:
            raise CacheError(f"refresh ended at byte {self.written} of {self.size}")
        self._check = FollowingCheck.start(self._fd, self.name, self._checking.prove_accounts)
        self._check.advance(self.size)
        await self.verify()

    def _notify(self) -> None:
        raise NotImplementedError  # the refresh's own

    async def verify(self) -> None:
        """The refresh's own (:meth:`tracker.cache.refresh.Refresh.verify`)."""
        raise NotImplementedError
