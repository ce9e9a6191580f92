"""One refresh of one cached file: temp file, overlapping writes, then promotion or removal.

See :mod:`tracker.cache.store` for the life cycle. Writes run in worker threads, up to
:data:`WRITE_WINDOW` at once, each through its own duplicate of the temp file's descriptor
(so that :meth:`Refresh.abort` may close the original meanwhile); ``written`` advances over
the finished prefix, in order, and wakes readers of the growing file. An upstream body still
whole in its socket is moved into the file by ``splice(2)`` instead (:meth:`Refresh.splice_from`):
no byte of it passes through Python. A refresh from several sources at once writes pieces
at their offsets through the temp file's descriptor (:meth:`Refresh.descriptor`) and tells
the gapless prefix as it grows (:meth:`Refresh.landed`): readers follow that prefix, never a
byte past a gap (docs/architecture.md, "A refresh from several sources"). The blocking steps
at both ends (room and the temp file; sync, rename, eviction) are
:mod:`tracker.cache.disk`'s.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from functools import partial
from typing import Literal, Protocol, TypeVar

import attrs
import outcome
import trio

from tracker.cache.checked import UNCHECKED, Checking, own_shortfall
from tracker.cache.disk import (
    NO_ROOM_ERRORS,
    DiskOps,
    Opened,
    OrphanedArchive,
    Writeback,
    disk_full_reason,
    free_aside,
    no_room_reason,
    open_temp,
    os_reason,
    rename_into_place,
    settle,
    sync_temp,
    unlink,
    unopened_reason,
    write_all,
)
from tracker.cache.mixedcopy import Vouching
from tracker.core.digests import Verified
from tracker.errors import CacheError, RequestError
from tracker.multisource.sources import Source
from tracker.net.sourcelimits import UNCAPPED, Pacer
from tracker.observability.folding import log_folded
from tracker.observability.logs import log_event
from tracker.proof.archive.archivecheck import FollowingCheck
from tracker.proof.cluster.lifting import required_proof
from tracker.proof.levels import STRUCTURE_ONLY, Proof
from tracker.serving.threads import HUNG_AFTER, Background, given_way
from tracker.zerocopy.filesplice import Splicer, splice_into_file

log = logging.getLogger("tracker.cache")
T = TypeVar("T")

#: Writes of one refresh in flight at once (each a chunk of up to ProxySettings.read_size).
WRITE_WINDOW = 4
#: Bytes a reader of a refresh being checked gets only once the check passed: enough that no
#: archive format looks complete without them (docs/http-api.md, "Verified archives").
HOLD_BACK = 64 * 1024


class Phase(enum.Enum):
    """Where a refresh stands; it moves only as :func:`next_phase` says
    (docs/architecture.md, "One refresh, one owner")."""

    #: Registered: its temp file and bytes are arriving, readers follow the written prefix.
    WRITING = "writing"
    #: Every byte written and the check's first read passed; the accounts level's second
    #: read runs (the status page says so; readers still wait for its end).
    PROVING = "proving"
    #: Its readers were cut off: the copy failed its check and is being repaired.
    REPAIRING = "repairing"
    #: Every byte written and every check the tracker runs on the copy passed: readers get
    #: the end, promoted or not.
    VERIFIED = "verified"
    #: Ended verified (promoted, unless its commit failed).
    DONE = "done"
    #: Ended without passing its check: its readers' streams break.
    FAILED = "failed"


#: What happens to a refresh: the check's first read passed (``proving``), the check ended
#: either way (``checked``), its readers cut off for a repair (``cut``), every check passed
#: (``verified``), it ended (``ended``, by :meth:`Refresh.abort`).
Change = Literal["proving", "checked", "cut", "verified", "ended"]
#: The phases a refresh never leaves.
ENDED = frozenset({Phase.DONE, Phase.FAILED})


def next_phase(phase: Phase, change: Change) -> Phase:
    """The phase a refresh in ``phase`` moves to on ``change``. Pure; a table in
    tests/unit/test_refresh_phase.py.

    An ended refresh stays as it ended; a verified one is never cut off again, nor proving.
    """
    if phase in ENDED:
        return phase
    match change:
        case "ended":
            return Phase.DONE if phase is Phase.VERIFIED else Phase.FAILED
        case "verified":
            return Phase.VERIFIED
        case "cut":
            return phase if phase is Phase.VERIFIED else Phase.REPAIRING
        case "proving":
            return Phase.PROVING if phase is Phase.WRITING else phase
        case "checked":
            return Phase.WRITING if phase is Phase.PROVING else phase


@attrs.define
class _Write:
    """One write of a refresh: where the file ends once it is done, and its thread."""

    end: int
    finished: bool = False
    background: Background[None] = attrs.field(init=False)


@attrs.define
class _Appender:
    """The sink of a splice into a refresh (:class:`~tracker.zerocopy.filesplice.SpliceSink`):
    the next ``left`` bytes go where ``place`` says (the end of the temp file); each piece
    that landed is told to ``landed``."""

    left: int
    place: Callable[[], tuple[int, int]]
    landed: Callable[[int], None]

    def take(self, most: int) -> int:
        return min(most, self.left)

    def destination(self) -> tuple[int, int]:
        return self.place()

    def moved(self, taken: int, moved: int) -> None:
        if moved:
            self.left -= moved
            self.landed(moved)


def _splice_or_cache_error(
    splice: Splicer, src: int, fd: int, offset: int, count: int, timeout: float, seconds: float
) -> int:
    """``splice`` (in a worker thread), a failing write of the temp file as CacheError."""
    try:
        return splice(src, fd, offset, count, timeout, seconds)
    except OSError as exc:
        reason = os.strerror(exc.errno or errno.EIO)
        raise CacheError(f"cache write failed: {reason}") from exc


class Registry(Protocol):
    """What a refresh tells the cache that registered it (:class:`tracker.cache.store.Cache`)."""

    def reserved_besides(self, refresh: Refresh) -> int:
        """Bytes the other running refreshes will still write."""
        ...

    def release(self, refresh: Refresh) -> None:
        """``refresh`` ended: another may begin."""
        ...

    async def look_at_directory(self) -> None:
        """A refresh could not create its temp file: look (off the event loop) why."""
        ...

    async def in_directory(self, call: Callable[[], T]) -> T:
        """``call()``, blocking on the cache directory, in that directory's own thread
        within :data:`~tracker.serving.threads.HUNG_AFTER` seconds; RequestError(503) when
        it does not answer, or an earlier call there still hangs."""
        ...

    def promoted(
        self,
        group: str,
        name: str,
        sha256: str,
        evicted: list[str],
        proof: Proof = STRUCTURE_ONLY,
        placed: os.stat_result | None = None,
    ) -> None:
        """``refresh`` was renamed into place (``sha256``: its digest when checked, ``proof``
        what its check proved; ``placed``: the file's status after the rename, None when it
        could not be read) and ``evicted`` were removed (files that need not stay beside
        it)."""
        ...

    async def report_size(self) -> None:
        """The cache's size may have changed (listed off the event loop)."""
        ...

    def room(self, group: str, reason: str) -> None:
        """A refresh of ``group`` found room on the disk (``reason`` ""), or not: why."""
        ...

    def served(self, group: str) -> Collection[int]:
        """The slots of ``group``'s fulls still served (which incrementals stay)."""
        ...

    def changing(self, group: str) -> trio.Semaphore:
        """What runs ``group``'s changes one at a time: a promotion (its rename, the
        evictions after it, what the registry is told), the evictions that make room for a
        refresh, a recheck's digest, the removal of a copy that fell short; each decides on
        the files the last one left. A semaphore, not a lock: a refresh that gave up on its
        room hands its turn to the call still making it, which lets it go as it ends."""
        ...

    def making_room(self, call: Callable[[], T], bound: float) -> Background[T]:
        """``call()`` (a refresh's room and temp file, blocking on the cache directory)
        started in a thread of its own counted as a call there: once it has run ``bound``
        seconds the directory counts as hung. RequestError(503) when no thread is started
        (an earlier call there hangs, or none can be had)."""
        ...

    async def promoting(self, call: Callable[[], T]) -> T:
        """``call()`` (a promotion's rename and evictions, blocking on the cache directory)
        in a thread of its own counted as a call there, waited for to its end, cancelled or
        not; TimeoutError (an OSError) when no thread can be had."""
        ...

    def hung(self) -> str | None:
        """Why the cache directory counts as hung now (a call there has not answered for
        :data:`~tracker.serving.threads.HUNG_AFTER` seconds); None when it does not."""
        ...

    def evicted(self, group: str, names: Sequence[str]) -> None:
        """``names`` of ``group`` were evicted to make room for a refresh: their digests
        go."""
        ...

    def configured_groups(self) -> Collection[str] | None:
        """The names of the configured groups (a directory none names holds orphaned
        archives, which a refresh short of room may remove); None: not known. Asked from
        the refresh's worker thread: it reads the config in force, no state of trio's."""
        ...

    def orphans_removed(self, removed: Sequence[OrphanedArchive]) -> None:
        """``removed`` were removed to make room for a refresh."""
        ...


class Refresh:
    """One refresh of one cached file: temp file, writes, then promotion or removal; its
    state in one place, its :class:`Phase` moved only by :func:`next_phase`.

    ``registry`` is the cache that registered it, ``ops`` its disk operations and limits;
    with ``checking.verify`` the archive is checked as it is written (:meth:`verify`), a
    full proven to ``accounts`` with ``checking.prove_accounts``.
    """

    def __init__(
        self,
        registry: Registry,
        ops: DiskOps,
        group: str,
        name: str,
        final: str,
        *,
        checking: Checking = UNCHECKED,
    ) -> None:
        self._registry = registry
        self._ops = ops
        self._checking = checking
        self.group = group
        self.name = name
        self.final = final
        self.temp = ""
        self.size = 0
        self.written = 0
        #: When the refresh began (Unix time), for showing when it started only.
        self.started_at = time.time()
        #: When it began on the monotonic clock: its rate is ``written`` over
        #: :meth:`elapsed`, which a step of the wall clock must not stretch or shrink (the
        #: ``retry-after`` of docs/http-api.md "Archive answers", the status page's rates).
        self._began = time.monotonic()
        self._writeback = Writeback(ops.writeback_every)
        #: Set when ``open`` found too little free disk (as opposed to an unwritable cache).
        self.no_space = False
        #: Where it stands (:func:`next_phase` moves it; see :class:`Phase`).
        self.phase = Phase.WRITING
        #: The SHA-256 of the archive (hex) once it passed its check ("" unchecked), and what
        #: that check proved (docs/architecture.md, "Proven archives").
        self.sha256, self.proof = "", STRUCTURE_ONLY
        #: For a copy taken from several sources at once: what must vouch for every byte
        #: of it before it counts as checked (:mod:`tracker.cache.mixedcopy`; None: one
        #: source's copy, the check alone).
        self.vouching: Vouching | None = None
        #: For such a copy vouched for by its level: what vouches for its bytes that level
        #: does not bind, those of the ranges :attr:`unbound_ranges`, set by the refresh's
        #: owner (``tracker.proxy.cachefill``); it raises when nothing does, and says True
        #: when it rewrote some of them and the copy was checked again (:meth:`recheck`)
        #: (docs/architecture.md, "A refresh from several sources" → "Bytes no level binds").
        self.confirm_unbound: Callable[[list[tuple[int, int]]], Awaitable[bool]] | None = None
        #: The file's raw byte ranges that decode every member no level binds, as the last
        #: check found (``proof.archive.tarwalk.UnboundExtent.ranges``; none: not checked).
        self.unbound_ranges: list[tuple[int, int]] = []
        #: The archive check following the temp file as it grows (None: not checked).
        self._check: FollowingCheck | None = None
        self._hold_back = 1
        #: Set when the refresh is over, whatever its end (by :meth:`abort`).
        self.ended = trio.Event()
        self._progress = trio.Event()
        self._fd: int | None = None
        #: Writes in flight, oldest first (at most WRITE_WINDOW).
        self._writes: collections.deque[_Write] = collections.deque()
        self._queued = 0  # bytes handed to write threads so far
        self._write_error: OSError | None = None
        self._done = False
        self._no_room = ""  # why open() found too little room on the disk
        #: How many times readers were cut off (:meth:`cut_readers`): an upload following the
        #: file that read bytes before the last cut starts again once the copy passed its
        #: check (:func:`tracker.objectstore.upload.upload_following`).
        self.repairs = 0
        #: The sources of a refresh from several at once, the first one first (their shares:
        #: the status page); empty for a refresh from one source.
        self.piece_sources: tuple[Source, ...] = ()
        #: When the check failed before the last byte: a prefix holding every byte it read
        #: (the bad ones are among them); 0: not known (the whole file is suspect).
        self.failed_within = 0
        # -- its readers (docs/architecture.md, "One refresh, one owner") --
        #: Cancels the refresh's pump (:meth:`share`; None: not shared, a test's own).
        self.stop: trio.CancelScope | None = None
        #: False: the refresh is cancelled when its last reader leaves
        #: (``cache_complete_on_disconnect: false``).
        self.keep = True
        #: True: requests of its file join it (:meth:`Cache.running`); else only its
        #: starter reads it (``cache_share_inflight`` off).
        self.registered = False
        #: Set once the refresh is open (:meth:`announce`: size and headers known) or will
        #: never be (:meth:`shut`).
        self.ready = trio.Event()
        #: The client headers of the upstream's 200 (content-length included).
        self.headers: dict[str, str] = {}
        #: Clients reading its temp file now (``tracker.proxy.refreshing.join``).
        self.readers = 0
        self._announced = False

    def elapsed(self) -> float:
        """Seconds since the refresh began, on the monotonic clock."""
        return time.monotonic() - self._began

    def share(self, stop: trio.CancelScope, *, keep: bool, register: bool) -> None:
        """Let clients read the refresh while it runs: ``stop`` cancels its pump, ``keep``
        false stops it when its last reader leaves, ``register`` makes requests of its file
        join it. Synchronous with :meth:`Cache.begin_refresh`: a request arriving next
        finds it."""
        self.stop, self.keep, self.registered = stop, keep, register

    @property
    def joinable(self) -> bool:
        """True while a new reader may join: announced, not ended, not being stopped."""
        return self._announced and not self.ended.is_set()

    def announce(self, headers: dict[str, str]) -> None:
        """The refresh is open: readers may join, with these response headers."""
        self.headers = dict(headers)
        self._announced = True
        self.ready.set()

    def shut(self) -> None:
        """The refresh could not start (or is being stopped): nobody may join."""
        self._announced = False
        self.ready.set()

    def reader_joined(self) -> None:
        self.readers += 1

    def reader_left(self) -> None:
        """A reader is done; the last one stops a refresh that is not to be kept."""
        self.readers -= 1
        if self.readers <= 0 and not self.keep and not self.ended.is_set():
            self.shut()
            if self.stop is not None:
                self.stop.cancel()

    def _move(self, change: Change) -> None:
        """Move to the phase :func:`next_phase` gives for ``change``."""
        self.phase = next_phase(self.phase, change)

    @property
    def verified(self) -> bool:
        """True (by :meth:`verify`) once all ``size`` bytes are written, the upstream body
        was checked complete and the archive passed its check; readers may then send every
        byte, promoted or not."""
        return self.phase in (Phase.VERIFIED, Phase.DONE)

    @property
    def proving(self) -> bool:
        """True (by :meth:`verify`) while the accounts level's second read runs, once the
        check's read of the file passed: what the status page shows. Readers still wait for
        the end of every check the tracker runs on the copy (docs/architecture.md, "The
        release rule")."""
        return self.phase is Phase.PROVING

    @property
    def repairing(self) -> bool:
        """True while the readers are cut off and the copy is neither checked good again
        nor given up (the refresh ended)."""
        return self.phase is Phase.REPAIRING

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

    @property
    def remaining(self) -> int:
        """Announced bytes not written yet."""
        return max(0, self.size - self.written)

    @property
    def failed(self) -> bool:
        """True once the refresh ended without all of its bytes, or its readers were cut
        off (:meth:`cut_readers`) and it has not passed its check since."""
        return self.phase in (Phase.FAILED, Phase.REPAIRING)

    def readable(self) -> int:
        """How many bytes from the start a reader of the temp file may send now.

        Everything once the refresh is verified (every byte written, the upstream body
        checked complete, every check the tracker runs on the copy passed: the accounts
        level's second read, and for a copy from several sources what vouches for each of
        its bytes, included); before that, what was written except the last byte, or the
        last HOLD_BACK bytes while the archive is checked: a reader's end waits until the
        refresh is known good, so that it never completes a body the refresh then finds
        broken (docs/architecture.md, "The release rule"). It does not wait for the fsync
        and rename (a request arriving then waits for them instead:
        :meth:`Cache.wait_promotion`).
        """
        return self.storable()

    def storable(self) -> int:
        """How many bytes from the start may be stored for others (the bucket's upload):
        the same as :meth:`readable`, the end only once the whole check passed."""
        if self.verified:
            return self.size
        return min(self.written, max(0, self.size - self._hold_back))

    @property
    def holds_range_ends(self) -> bool:
        """True while the archive is checked and has not passed its check yet: the last byte
        of every range read from the refresh waits for the whole check
        (:meth:`Refresh.range_end`), so a range that ends before the file's end would wait
        for the rest of the file, not just for its own bytes (what
        :func:`tracker.proxy.decisions.on_miss` asks)."""
        return self._checking.verify and not self.verified

    def range_end(self, end: int) -> int:
        """How far a reader of bytes up to ``end`` (exclusive; a ``Range`` of the file)
        may send now: :meth:`readable`, and while the archive is checked and not verified
        yet (:attr:`holds_range_ends`), never the range's own last byte (a 206 of unchecked
        bytes must not look complete: docs/architecture.md, "The release rule")."""
        limit = min(end, self.readable())
        if self.holds_range_ends:
            limit = min(limit, end - 1)
        return limit

    async def wait_progress(self) -> None:
        """Sleep until more bytes were written or the refresh ended (returns at once if it
        has ended). Cancellation just ends the wait."""
        if not self.ended.is_set():
            await self._progress.wait()

    def _notify(self) -> None:
        if self._check is not None:
            self._check.advance(self.written)
        self._progress.set()
        self._progress = trio.Event()

    async def verify(self) -> None:
        """Record that all ``size`` bytes were written and the upstream body is complete,
        once the archive check (when on) has read them and passed; readers may then finish.

        Raises ArchiveInvalid (the check failed, or a copy from several sources has not the
        digest that vouches for it: the caller rejects or repairs the refresh) or CacheError
        (not every byte was written, a shortfall of the tracker's own, or a copy from
        several sources whose level cannot vouch for it: :mod:`tracker.cache.mixedcopy`, or
        whose bytes that level does not bind nothing vouches for: :attr:`confirm_unbound`).
        Cancellation cancels the check.
        """
        if self.written != self.size or self.ended.is_set():
            raise CacheError(f"refresh ended at byte {self.written} of {self.size}")
        check = self._check
        if check is not None:
            check.finish(self.size)
            try:
                await self._note_first_read(check)
                checked = await check.result()
                self.sha256, self.proof = checked.sha256, checked.proof
                self.unbound_ranges = check.unbound.ranges
            except BaseException as exc:
                # Failed: a reader that has not sent the end yet never will.
                if isinstance(exc, OSError):  # the disk's fault, not the source's
                    reason = os.strerror(exc.errno or errno.EIO)
                    raise CacheError(
                        f"archive check could not read the temp file: {reason}"
                    ) from exc
                raise
            finally:
                # Cancelled while waiting: the check's thread would decode on, unseen (and
                # spill on, as the tracker stops); it is waited for
                await check.stopped()  # at once once it has ended
                self._check = None
                self._move("checked")
        if self.ended.is_set():  # aborted while the check ran
            raise CacheError("refresh aborted")
        if check is not None and (short := own_shortfall(self._checking, self.name, self.proof)):
            raise CacheError(short)  # the tracker's own shortage: no verdict on the source
        if check is not None and self.vouching is not None:
            self.vouching.vouch(self.name, self.sha256, self.proof)  # raises when it does not
            confirm = self.confirm_unbound
            if (
                self.vouching.by_level
                and confirm is not None
                and await confirm(self.unbound_ranges)
            ):
                return  # some rewritten and the copy checked again: verified by that check
        if check is not None:  # trust.require; `cluster`: the readers' end waits for votes
            self.proof = await required_proof(self._checking, self.name, self.proof)
            if self.ended.is_set():  # aborted while the votes were awaited
                raise CacheError("refresh aborted")
        self._move("verified")
        self._notify()

    async def _note_first_read(self, check: FollowingCheck) -> None:
        """Mark the refresh ``proving`` once the check's read of the file passed and the
        accounts level's second read runs on (the status page says so); the readers' end
        still waits for it (docs/architecture.md, "The release rule")."""
        await check.first_read()
        if not check.done() and not self.repairs:  # a repaired copy is never shown proving
            self._move("proving")

    def descriptor(self) -> int:
        """The open temp file, for pieces written at their offsets (through a duplicate:
        ``abort`` may close this one meanwhile). CacheError when the refresh is not open or
        was written in order already."""
        if self._fd is None or self._writes or self._queued:
            raise CacheError("refresh is not open, or written in order already")
        return self._fd

    def landed(self, prefix: int) -> None:
        """The first ``prefix`` bytes of the temp file are written without a gap (pieces
        beyond them may be too; a refresh from several sources): readers may follow up to
        there, the archive check reads on. Never moves back; ignored once the refresh
        ended."""
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
        passes its check (docs/http-api.md, "Verified archives"): a reader that has read a
        liar's bytes must never get a complete body (docs/architecture.md, "A refresh from
        several sources")."""
        self._move("cut")
        self.repairs += 1
        self._notify()

    async def recheck(self) -> None:
        """Check the complete temp file again from its first byte (after a repair), as
        :meth:`verify` does; raises what it raises."""
        if self._fd is None or self.written != self.size:
            raise CacheError(f"refresh ended at byte {self.written} of {self.size}")
        self._check = FollowingCheck.start(self._fd, self.name, self._checking.prove_accounts)
        self._check.advance(self.size)
        await self.verify()

    async def open(self, size: int) -> bool:
        """Make room for ``size`` bytes and create the temp file; False means "stream uncached".

        Not enough free space (after removing stale files of the same group and kind, then
        the oldest orphaned archives of groups no longer configured as needed:
        :func:`~tracker.cache.disk.open_temp`), a cache directory that cannot be written, that
        does not answer a look within its bound or make the room within :data:`ROOM_BOUND`
        (a hung mount: :attr:`no_room` says which) end the refresh (it is released) and
        return False. Cancellation aborts the refresh.
        """
        self.size = size
        # Evictions for room decide on the files a promotion left, never on its half-done
        # changes, and are told before the next change of the group: under its lock.
        turn = self._registry.changing(self.group)
        try:
            # The cache directory looked at first, in its own thread within its bound: on
            # a hung mount the open below (under the group's lock, until the mount answers)
            # held this refresh's clients and the group's next refreshes with it; they
            # stream uncached now, at once once a look there has hung (docs/configuration.md,
            # "Paths on a hung mount").
            await self._registry.in_directory(partial(_answers, os.path.dirname(self.final)))
            # The group's lock, given up once the directory counts as hung: a promotion
            # holding it on a mount that answers a look (NFS, from its attribute cache) but
            # hangs a rename held this refresh's clients, their early head sent, as long.
            await take_turn(turn, self._registry.hung)
            opened = await self._make_room(turn)
        except RequestError as exc:  # no answer within a bound: streamed uncached
            self._no_room = f"{self.name} streamed uncached: {exc.reason}"
            self._registry.room(self.group, self._no_room)
            self.abort()  # nothing of its own made: a room's call still running removes its file
            return False
        except BaseException:
            self.abort()
            raise
        self.temp, self.no_space, self._fd = opened.temp, opened.no_space, opened.fd
        if opened.no_space:
            self._no_room = no_room_reason(self.name, opened.needed, opened.free)
        elif opened.error is not None:
            # a full inode table or quota (ENOSPC, EDQUOT), a read-only or foreign-owned
            # group directory: said as the group's reason like too little room (it was
            # left unsaid, and it cleared an earlier reason as if room had been found)
            self._no_room = unopened_reason(self.name, opened.error)
        try:
            await self._registry.report_size()  # stale files may have been evicted for room
        except BaseException:
            await self.end()
            raise
        self._registry.room(self.group, self._no_room)
        if self._fd is None:
            try:
                if not opened.no_space:  # the directory could not be written: show why
                    await self._registry.look_at_directory()
            finally:
                self.abort()
            return False
        if self._checking.verify:
            self._check = FollowingCheck.start(self._fd, self.name, self._checking.prove_accounts)
            self._hold_back = HOLD_BACK
        return True

    async def _make_room(self, turn: trio.Semaphore) -> Opened:
        """The room and the temp file (:func:`~tracker.cache.disk.open_temp`), made in a
        thread counted in the cache directory while this refresh holds ``turn``, its group's,
        and waited for at most :data:`ROOM_BOUND` seconds. A call that has not answered by
        then (the mount answered the look but hangs a create or an unlink: NFS answering
        lookups from its attribute cache) is left running with the turn, which it lets go
        as it ends, its file removed and its evictions told (:meth:`_room_made_late`);
        RequestError(503) then, the directory counting as hung for the hits and the group's
        next refreshes until it ends (waited for without a bound, it held this refresh's
        clients, an early head sent, and every later refresh of the group as long as the
        mount hung)."""
        handed = False
        try:
            # Read here, not in the worker thread: the registry changes in trio's thread;
            # the configured groups are asked when orphans are looked for, and again before
            # each goes (a reload may configure one's group again meanwhile).
            needed = self.size + self._ops.min_free + self._registry.reserved_besides(self)
            prepare = partial(
                open_temp,
                self.final,
                self.group,
                self.name,
                self.size,
                needed,
                self._ops,
                self._registry.served(self.group),
                self._registry.configured_groups,
            )
            # an Outcome always: a call that raised still lets the turn go (_room_made_late)
            making = self._registry.making_room(partial(outcome.capture, prepare), ROOM_BOUND)
            try:
                with trio.move_on_after(ROOM_BOUND):
                    opened: Opened = (await making.result()).unwrap()
                    self._removed_for_room(opened)
                    return opened
            except BaseException:
                if not making.done():
                    making.abandon(partial(self._room_made_late, turn))
                    handed = True
                raise
            making.abandon(partial(self._room_made_late, turn))
            handed = True
            raise RequestError(503, self._registry.hung() or f"no answer within {ROOM_BOUND:g}s")
        finally:
            if not handed:
                turn.release()

    def _room_made_late(self, turn: trio.Semaphore, made: outcome.Outcome[Opened]) -> None:
        """In trio's thread, once a call :meth:`_make_room` gave up on has ended: its
        evictions are told, the file it made removed (in a thread: the mount only just
        answered), and the group's turn let go."""
        try:
            opened = made.unwrap()
        except Exception as exc:  # said, never raised into trio's thread
            log_event(
                log,
                "error",
                "cache_refresh_unwritable",
                group=self.group,
                file=self.name,
                error=exc,
            )
        else:
            self._removed_for_room(opened)
            if opened.fd is not None:
                try:  # nobody waits for it: the mount only just answered
                    Background(
                        partial(close_and_remove, opened.fd, opened.temp), name="cache temp removal"
                    )
                except RuntimeError as exc:  # no thread to be had: the next start removes it
                    log_event(log, "warning", "cache_unlink_failed", path=opened.temp, error=exc)
        finally:
            turn.release()

    def _removed_for_room(self, opened: Opened) -> None:
        """Tell the registry what :func:`~tracker.cache.disk.open_temp` removed for room."""
        self._registry.evicted(self.group, opened.evicted)
        if opened.orphans_removed:
            self._registry.orphans_removed(opened.orphans_removed)

    @property
    def no_room(self) -> str:
        """Why :meth:`open` could not create the temp file ("" when it did, or was not
        asked): the group's reason for streaming uncached."""
        return self._no_room

    async def write(self, data: bytes) -> None:
        """Append ``data`` to the temp file in a worker thread, overlapping the caller's next
        upstream reads: returns once this write started, waiting first while WRITE_WINDOW
        writes are in flight (so a slow page cache or disk slows the caller, never costs
        unbounded memory). ``written`` grows (and readers wake) as the writes complete, in
        order. Raises CacheError (disk full, I/O error) for an earlier write; the caller then
        aborts."""
        while len(self._writes) >= WRITE_WINDOW:
            await self._writes[0].background.wait()
        self._raise_write_error()
        if self._fd is None:
            raise CacheError("refresh is not open")
        self._writeback.advance(self._fd, self.written)
        offset, self._queued = self._queued, self._queued + len(data)
        # The thread writes through its own descriptor: abort() may close ours meanwhile.
        fd = os.dup(self._fd)
        entry = _Write(self._queued)
        entry.background = Background(
            partial(self._write_chunk, fd, data, offset), on_done=partial(self._wrote, entry)
        )
        self._writes.append(entry)

    async def splice_from(
        self,
        sock: trio.socket.SocketType,
        count: int,
        read_timeout: float,
        on_moved: Callable[[int], None],
        *,
        pacer: Pacer = UNCAPPED,
    ) -> None:
        """Move the next ``count`` bytes arriving on socket ``sock`` to the end of the temp
        file with splice(2), in a worker thread, SPLICE_SECONDS at a time
        (:func:`~tracker.zerocopy.filesplice.splice_into_file`): after each, ``written``
        advances, readers wake and ``on_moved(n)`` is told.

        Why: a refresh that receives, writes and sends every byte in Python filled its cache
        at ~0.65x nginx ``proxy_cache`` on 2 cores; spliced, the only copy is the kernel's
        into the page cache (bench: refresh). Writes queued before go first. Raises
        SourceFailed when the upstream breaks, closes early or sends nothing for
        ``read_timeout`` s (what arrived before is written and counted, so a resume asks
        for the rest); CacheError when the file cannot be written. Cancellation waits for
        the current slice. A rate cap (``pacer``) bounds each slice and pauses after it.
        """
        await self.flush()
        splice = partial(_splice_or_cache_error, self._ops.splice)
        sink = _Appender(count, self._end_of_file, partial(self._spliced, on_moved))
        try:
            await splice_into_file(sock, sink, read_timeout, pacer=pacer, splice=splice)
        except CacheError as exc:
            if isinstance(exc.__cause__, OSError):  # the temp file's write failed
                raise self.write_failed(exc.__cause__) from exc.__cause__
            raise

    def _end_of_file(self) -> tuple[int, int]:
        """The temp file and where the next spliced bytes go in it."""
        if self._fd is None:
            raise CacheError("refresh is not open")
        return self._fd, self._queued

    def _spliced(self, on_moved: Callable[[int], None], moved: int) -> None:
        """``moved`` bytes were spliced at the end of the temp file."""
        self._queued += moved
        if not self.ended.is_set():
            self.written = self._queued
            self._notify()
        on_moved(moved)
        if self._fd is not None:
            self._writeback.advance(self._fd, self.written)

    async def flush(self) -> None:
        """Wait for every write in flight; raises CacheError when one failed."""
        while self._writes:
            await self._writes[0].background.wait()
        self._raise_write_error()

    def _raise_write_error(self) -> None:
        if self._write_error is not None:
            raise self.write_failed(self._write_error) from self._write_error

    def write_failed(self, exc: OSError, what: str = "cache write failed") -> CacheError:
        """The CacheError of a failed write of the temp file (in trio's thread). A full disk
        (ENOSPC, EDQUOT) is also kept as the group's reason for streaming uncached, as
        :meth:`open` keeps too little room (docs/http-api.md#archive-answers): the status page
        and ``/v1/targets`` then say the disk is the problem, not the source, until a
        refresh of the group finds room."""
        reason = os_reason(exc)
        if exc.errno in NO_ROOM_ERRORS:
            self._registry.room(self.group, disk_full_reason(self.name, reason))
        return CacheError(f"{what}: {reason}")

    def _wrote(self, entry: _Write, result: outcome.Outcome[None]) -> None:
        """A write finished (in trio's thread): advance ``written`` over the finished prefix."""
        entry.finished = True
        if isinstance(result, outcome.Error) and self._write_error is None:
            error = result.error
            self._write_error = error if isinstance(error, OSError) else OSError(errno.EIO, "")
        advanced = False
        while self._writes and self._writes[0].finished:
            end = self._writes.popleft().end
            if self._write_error is None and not self.ended.is_set():
                self.written, advanced = end, True
        if advanced:
            self._notify()

    def _write_chunk(self, fd: int, data: bytes, offset: int) -> None:
        try:
            write_all(self._ops.write, fd, data, offset)
        finally:
            os.close(fd)

    async def commit(self, mtime: float | None = None) -> None:
        """Sync the temp file, rename it into place, then remove the group's files that need
        not stay (:func:`~tracker.cache.disk.evict`: one full, the newest incremental of every
        full still served).

        ``mtime`` (the upstream's Last-Modified) is set on the file when given. Raises
        CacheError on an I/O error; the temp file is then removed and nothing promoted.
        """
        if self._fd is None or self._done:
            raise CacheError("refresh is not open")
        aside: list[str] = []
        try:
            await self.flush()
            # The file's own sync before the group's lock: a full's last fsync may take
            # seconds, and the group's other refreshes need not wait for it.
            await trio.to_thread.run_sync(self._sync, mtime, thread_name="cache sync")
            # One promotion of the group at a time, told to the registry before the next:
            # two overlapping ones (both files renamed in before either evicted) would each
            # evict the other's new file (docs/proxy.md, "Proxy mode and the disk cache").
            # In a thread counted as the cache directory's: one that hangs there (NFS
            # answering looks from its cache) makes the directory hung for the hits, the
            # looks and the refreshes waiting for this lock (:func:`take_turn`).
            async with self._registry.changing(self.group):
                served = self._registry.served(self.group)
                evicted, aside, placed = await self._registry.promoting(
                    partial(self._promote, served)
                )
                self._registry.promoted(
                    self.group, self.name, self.sha256, evicted, self.proof, placed
                )
        except OSError as exc:
            raise self.write_failed(exc, "cache commit failed") from exc
        finally:
            # The index told what the cache holds before the refresh is let go: a request
            # that finds no refresh must find the new file listed and the evicted ones not
            # (it was told after the evicted bytes were freed, seconds later for a full).
            # Listed in a thread within its bound, cancelled or not.
            # Promoted: only releases the refresh. Failed or cancelled: also removes the
            # temp file (however the listing ended).
            with trio.CancelScope(shield=True):
                try:
                    await self._registry.report_size()
                finally:
                    await self.end()
            if aside:
                # The evicted files' bytes freed once the refresh and the group's lock are
                # let go: an old full's unlink takes seconds, and neither its readers nor
                # the group's next refresh wait for it. Set aside, they count no more.
                await _within_bound(partial(free_aside, aside), aside, "cache eviction")

    def _sync(self, mtime: float | None) -> None:
        """Sync the temp file and give it ``mtime`` (in a worker thread)."""
        assert self._fd is not None
        sync_temp(self._fd, mtime, self._ops)

    def _promote(
        self, served: Collection[int]
    ) -> tuple[list[str], list[str], os.stat_result | None]:
        """Rename into place, write the digest beside it; the names evicted, where they
        were set aside (:func:`~tracker.cache.disk.settle`), and the file's status after
        the rename (its ctime moved: the identity a hit's opened file must have; read here,
        in this thread, never on the event loop; None when it cannot be read)."""
        assert self._fd is not None
        fd, self._fd = self._fd, None
        rename_into_place(fd, self.temp, self.final)
        self.temp, self._done = "", True
        checked = Verified(self.sha256, self.proof) if self.sha256 else None
        evicted, aside = settle(self.final, self.group, self.name, self.written, checked, served)
        try:
            placed: os.stat_result | None = os.stat(self.final, follow_symlinks=False)
        except OSError:
            placed = None
        return evicted, aside, placed

    def abort(self) -> None:
        """Close and remove the temp file, release the refresh and mark it ended (readers
        wake up). Idempotent, never raises. Readers that opened the temp file keep reading
        their descriptor: after a promotion it is the cached file (a rename keeps the inode).
        Blocking on the temp file where there is one: a refresh that made it ends with
        :meth:`end`, which closes and removes it off the event loop.
        """
        fd, temp = self._let_go()
        close_and_remove(fd, temp)
        self._ended()

    async def end(self) -> None:
        """:meth:`abort`, the temp file closed and removed in a thread of its own: a large
        file's unlink takes seconds, and on a hung mount (or a soft NFS mount timing out
        each call) it held the event loop as long. Waited for at most
        :data:`~tracker.serving.threads.HUNG_AFTER` seconds, cancelled or not: the thread
        goes on and removes it once the mount answers (else the next start-up does), and
        the refresh released after it either way; its readers learn at once that it ended.
        Shielded (bounded), so it can sit in any ``finally``. Idempotent."""
        fd, temp = self._let_go()
        if fd is None and not temp:
            self._ended()
            return
        self._wake_readers()
        try:
            # With no thread to be had its descriptor stays open: closing it on the event
            # loop could hang as the mount that holds the threads does.
            await _within_bound(partial(close_and_remove, fd, temp), temp, "cache temp removal")
        finally:
            self._ended()

    def _let_go(self) -> tuple[int | None, str]:
        """The refresh's own descriptor and temp file, taken from it (its check stopped:
        its thread closes its own descriptor), for :meth:`abort` or :meth:`end` to close
        and remove."""
        fd, self._fd = self._fd, None
        temp, self.temp = self.temp, ""
        check, self._check = self._check, None
        if check is not None:
            check.cancel()
        return fd, temp

    def _ended(self) -> None:
        """Release the refresh and mark it ended (readers wake up)."""
        self._registry.release(self)
        self._wake_readers()

    def _wake_readers(self) -> None:
        """Mark the refresh ended: its readers wake up and learn how it ended."""
        self._move("ended")
        self.ended.set()
        self._notify()


#: Seconds between the looks of a refresh waiting for its group's lock at whether the cache
#: directory counts as hung (:func:`take_turn`).
TURN_LOOK = 0.25

#: Seconds a refresh waits for its room and temp file (:meth:`Refresh._make_room`) before it
#: streams uncached and the cache directory counts as hung: an old full's unlink takes
#: seconds on ext4 (a look's bound, 3 s, would count that as a hang), and a client that
#: got an early head waits this long for its first byte (aria2c gives up after 60 s).
ROOM_BOUND = 30.0


async def take_turn(turn: trio.Semaphore, hung: Callable[[], str | None]) -> None:
    """Acquire ``turn`` (a group's lock: :meth:`Registry.changing`); RequestError(503) with
    ``hung()``'s reason once it says, while waiting, that the cache directory hangs: the
    holder is a call there that may not end before the mount answers. A holder that is
    slow but answers (an eviction's unlink of an old full) is waited for."""
    while True:
        with trio.move_on_after(TURN_LOOK):
            await turn.acquire()
            return
        reason = hung()
        if reason is not None:
            raise RequestError(503, reason)


def _answers(path: str) -> None:
    """Look at ``path`` (blocking): returns once its file system answers, whatever it says
    (the group's directory may not be made yet; the open says what is wrong)."""
    with contextlib.suppress(OSError):
        os.stat(path, follow_symlinks=False)


def close_and_remove(fd: int | None, temp: str) -> None:
    """Close a refresh's descriptor ``fd`` and remove its temp file ``temp`` (either may be
    absent; blocking). Never raises: what cannot be removed is logged."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    if temp:
        unlink(temp)


async def _within_bound(removal: Callable[[], object], left: object, name: str) -> None:
    """``removal()`` (blocking, on the cache directory) in a thread of its own, waited for
    at most :data:`~tracker.serving.threads.HUNG_AFTER` seconds, cancelled or not: it goes
    on (on a hung mount, until the mount answers), and neither a stop nor a cancelled fill
    is held longer by it. With no thread to be had it does not run: ``left`` is said, and
    what it would have removed (temp names) goes at the next start."""
    try:
        with trio.CancelScope(shield=True), trio.move_on_after(HUNG_AFTER):
            await given_way(removal, name=name)
    except TimeoutError as exc:  # no thread to be had
        log_folded(log, "warning", "cache_unreadable", left=left, error=exc)
