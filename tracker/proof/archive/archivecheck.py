"""The check of a snapshot archive: compression layer, tar stream, entries, SHA-256.

:func:`check_stream` reads an archive's raw bytes once and returns their SHA-256, with what
the same pass proved (``tracker.proof``: the manifest decoded and checked against the name,
docs/architecture.md "Proven archives"), when

1. the compression layer named by the extension decodes to its end, checksums verified, with
   nothing after it (``tracker.proof.archive.decoders``);
2. the tar stream is well formed up to its end-of-archive blocks
(``tracker.proof.archive.tarwalk``); 3. it holds ``version``, ``snapshots/status_cache`` and
``snapshots/{S}/{S}``, S being the
   slot in the archive's name;
4. its manifest proves it (``tracker.proof.formats.prover``);

else it raises :class:`~tracker.errors.ArchiveInvalid` with a one-line reason. The reading and
hashing run in a thread of their own, the decoding and the tar walk in the caller's, so that
two cores share the work (hashlib, the decompressors and ``os.pread`` release the GIL).

:func:`check_file` checks a file on disk. :class:`GrowingFile` reads a file another task is
still writing, and :class:`FollowingCheck` runs the check over one from trio, so that the check
of a download ends shortly after its last byte (docs/architecture.md, "Verified archives").
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING

from tracker.core.digests import Verified
from tracker.core.snapshots import parse_archive_name
from tracker.errors import ArchiveInvalid, CopyCutShort, interruption_in, own_shortage
from tracker.proof.accounts.budget import AccountsLimits, FrameThreads, decodes_ahead
from tracker.proof.archive.binding import BlockDigests
from tracker.proof.archive.checklimits import CANCELLED, Budget
from tracker.proof.archive.decoders import decode_zstd, decoder_for
from tracker.proof.archive.framedecode import DecodeAhead, decode_zstd_frames
from tracker.proof.archive.reread import Handover, accounts_prover, proving
from tracker.proof.archive.tarwalk import BLOCK, Header, UnboundExtent, walk_tar
from tracker.proof.formats.prover import AccountsProver, ArchiveProver
from tracker.proof.formats.streamparse import Feeder

if TYPE_CHECKING:
    from tracker.proof.accounts.accountsprover import StoragesProver
    from tracker.serving.threads import Background

Read = Callable[[int], bytes]

#: Raw bytes asked of ``read`` at once: a chunk SHA-256 reads while the copy from the page
#: cache still lies in the core's cache (4 MiB chunks took the reading thread 1.14-1.18 CPU-s
#: a GiB, 1 MiB 0.87-0.95; docs/architecture.md, "The accounts level" → "Every core").
READ_SIZE = 1024 * 1024
#: The name of a following check's worker thread while it runs.
THREAD_NAME = "archive-check"
#: Raw chunks read and hashed ahead of the decoder (memory: this many READ_SIZE chunks).
PREFETCH_DEPTH = 8
#: Whether the raw chunks' SHA-256 runs in a thread of its own behind the reading one, which
#: then hands each chunk on as soon as it is read (at most :data:`SHA_BEHIND` chunks wait
#: for the hash). Off: on 16 cores the first read's walk waited ~3.9 s of ~6.1 for the raw
#: chunks of a thread that reads and hashes each (docs/architecture.md, "Every core"), but
#: this is not measured there yet (``bench/accounts.py --set archive.archivecheck.SHA_APART=1``;
#: two cores with the 16-core settings: the walk's wait for raw chunks 0.13-0.39 s instead
#: of 0.77-0.90, the proof 2.79-2.80 s instead of 2.91-2.92); on two cores hashing each chunk
#: while the copy lies in the core's cache costs less. Made the default, the chunks waiting
#: for the hash (:data:`SHA_BEHIND` MiB) are to be counted in ``budget.CHECK_COST``.
SHA_APART = False
#: Raw chunks read and handed on, not hashed yet, at most (:data:`SHA_APART`).
SHA_BEHIND = 32


def required_entries(slot: int) -> tuple[str, ...]:
    """The entries every agave/Firedancer snapshot archive of ``slot`` holds."""
    return ("version", "snapshots/status_cache", f"snapshots/{slot}/{slot}")


def check_stream(
    read: Read,
    name: str,
    *,
    prefetch: bool = True,
    unblock: Callable[[], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    accounts: AccountsProver | None = None,
    prover: ArchiveProver | None = None,
    seen: Callable[[Header, int], None] | None = None,
    decoders: int = 1,
    decode_ahead: bool = False,
    first_read: Callable[[Verified], None] | None = None,
    unbound: UnboundExtent | None = None,
) -> Verified:
    """Check the archive whose raw bytes ``read(n)`` returns (``b""`` at the end) under its
    file name ``name``; returns the lower-case hex SHA-256 of the raw bytes and what the
    same pass proved (``tracker.proof.formats.prover``: the manifest, and the account storages
    with ``accounts``; docs/architecture.md, "Proven archives").

    Raises ArchiveInvalid (one-line ``reason``) when the archive fails, whatever part of the
    check it failed in (:func:`as_rejection`); what ``read`` raises (OSError, a local I/O
    error, or ArchiveInvalid("check cancelled")) goes through, and the tracker's own
    shortage (a thread it cannot start, memory it cannot get) is raised as OSError too.
    ``read`` is called from a thread of its own, which has always ended when this returns or
    raises (so the caller may close what it reads); when the check fails before the end,
    ``unblock()`` (if given) is called first, to end a ``read`` that may wait
    (GrowingFile.cancel). ``cancelled()`` is polled between decoded pieces: once true, the
    check stops with ArchiveInvalid("check cancelled") within one piece. ``prefetch=False``
    reads and hashes in the calling thread too (one core). ``prover`` replaces the archive's
    own (``proof.archive.headproof``). ``seen`` is told each member the tar walk took
    (:func:`~tracker.proof.archive.tarwalk.walk_tar`). ``decoders``: threads that decode a
    multi-frame ``.tar.zst``'s frames in parallel
    (:mod:`tracker.proof.archive.framedecode`); with one, ``decode_ahead`` runs the serial
    decoder in a thread of its own (``framedecode.DecodeAhead``; with ``prefetch`` only).
    ``first_read`` (if given) is told what the read of the file proved before the accounts
    level's second read starts (the SHA-256 and the manifest's level: a refresh's readers
    may end there, docs/architecture.md "Two reads"). ``unbound`` (if given) is told each
    member with the raw bytes the decoder had taken (:class:`UnboundExtent`).
    """
    parsed = parse_archive_name(name)
    if parsed is None:
        raise ArchiveInvalid(f"not a snapshot archive name: {name!r}")
    wanted = required_entries(parsed.slot)
    budget = Budget(cancelled) if cancelled is not None else Budget()
    if unbound is not None:
        seen = _telling(unbound, budget, seen)
    switch = accounts.binds if accounts is not None else None  # .binding: when to BLAKE3
    source = _Prefetch(read, unblock, switch) if prefetch else _Inline(read, switch)
    failed: list[BaseException] = []  # what reading raised: not the archive's fault
    # a thread of its own decodes only where the source stops when the check does (prefetch)
    ahead = DecodeAhead() if decode_ahead and decoders <= 1 and prefetch else None
    try:
        with source:

            def chunks() -> bytes:
                if pending:
                    return pending.pop()
                try:
                    data = source.next()
                except BaseException as exc:
                    failed.append(exc)
                    raise
                budget.took(len(data))
                return data

            pending: list[bytes] = []
            found: set[str] = set()
            try:
                first = chunks()
                if not first:
                    raise ArchiveInvalid("empty file")
                pending.append(first)
                if prover is None:
                    prover = ArchiveProver(parsed.slot, parsed.base_slot, parsed.hash, accounts)
                walk = walk_tar(parsed.slot, found, budget.members_allowed, prover, seen)
                tar = Feeder(walk)

                def sink(piece: memoryview) -> None:
                    budget.spend(len(piece))
                    tar.feed(piece)

                decode = decoder_for(parsed.ext)
                if parsed.ext == ".tar.zst" and unbound is not None:
                    # where each frame's output begins: the extent's tail starts at a frame
                    # (frames decoded apart tell none: the tail is then the whole archive)
                    decode = partial(decode_zstd, starts=unbound.frame)
                if parsed.ext == ".tar.zst" and decoders > 1:
                    decode_zstd_frames(chunks, sink, decoders)
                elif ahead is not None:
                    ahead.run(decode, chunks, sink)
                else:
                    decode(chunks, sink)
                tar.finish()
                if unbound is not None:
                    unbound.ended(budget.raw)
                if accounts is not None:
                    accounts.settle()  # a storage scanned apart may have refused
            except Exception as exc:
                if failed and exc is failed[0]:
                    raise
                if (interrupt := interruption_in(exc)) is not None:
                    raise interrupt from None  # before any storage's refusal: no verdict
                if accounts is not None:
                    # a storage the stream went past before this failure refuses first, as
                    # when the reading thread scans them (docs/architecture.md, "Every core")
                    try:
                        accounts.settle()
                    except Exception as earlier:
                        raise as_rejection(earlier) from None
                raise as_rejection(exc) from None
            digest = source.hexdigest()
            blocks = source.blocks()
    except RuntimeError as exc:  # before the walk: the reading thread's start
        if (short := own_shortage(exc)) is not None:
            raise short from exc
        raise
    finally:
        if ahead is not None:
            ahead.close()  # after the source stopped: its decoder may have waited on it
    missing = [entry for entry in wanted if entry not in found]
    if missing:
        raise ArchiveInvalid(f"tar: missing {', '.join(missing)}")
    if accounts is not None:  # its second read must read these bytes (.binding)
        accounts.first_read(blocks.digests(), blocks.size, blocks.sha_blocks)
    try:
        if first_read is not None:
            first_read(Verified(digest, prover.first_proof()))
        return Verified(digest, prover.proof())
    except Exception as exc:
        raise as_rejection(exc) from None


def _telling(
    unbound: UnboundExtent, budget: Budget, seen: Callable[[Header, int], None] | None
) -> Callable[[Header, int], None]:
    """``seen`` that also tells ``unbound`` each member, with the raw bytes the decoder had
    taken by its header (``budget.raw``: never fewer than those its data was decoded from)."""

    def told(header: Header, data_at: int) -> None:
        following = data_at + -(-header.size // BLOCK) * BLOCK  # the next header's offset
        unbound.header(header.name, budget.raw, data_at - BLOCK, following)
        if seen is not None:
            seen(header, data_at)

    return told


def as_rejection(exc: Exception) -> ArchiveInvalid:
    """What a failure of the check other than reading means: the copy is rejected.

    The check's own reasons pass as they are; anything else a decoder or the tar walk raised
    on hostile bytes (a library's error the decoders do not know, a ValueError) rejects the
    copy with a one-line reason, so that every caller treats it as a bad copy (deleted, its
    source held back) instead of crashing on it.

    The tracker's own shortage is no verdict (:func:`tracker.errors.own_shortage`): a thread
    it cannot start (a pids limit) is raised as the OSError a local read error is, so that
    every caller keeps the copy and tries again later. A MemoryError rejects: what the check
    allows is bounded (docs/architecture.md, "Bounded memory and time").

    An interrupt is no verdict: a signal's KeyboardInterrupt raised while a compiled kernel
    (numba's dispatcher) or another C function ran comes back as a SystemError ("returned a
    result with an exception set") whose cause is the interrupt; that interrupt is raised
    again here, so the caller is interrupted (``verify``: exit 130 or 143, one line), never
    told the copy is bad."""
    interrupt = interruption_in(exc)
    if interrupt is not None:
        raise interrupt
    short = own_shortage(exc)
    if short is not None:
        raise short from exc
    if isinstance(exc, ArchiveInvalid):
        return exc
    detail = " ".join(str(exc).split())[:200]
    return ArchiveInvalid(f"check failed: {type(exc).__name__}{': ' if detail else ''}{detail}")


def check_file(
    path: str,
    name: str | None = None,
    *,
    prove_accounts: AccountsLimits | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Verified:
    """:func:`check_stream` of the regular file at ``path`` (``name`` defaults to its
    basename); raises OSError when it cannot be opened or read, or is not a regular file (a
    FIFO, a device, a directory: never opened in a way that could block or read forever).
    ``prove_accounts`` (its memory budget, temporary directory, optional bound) proves a full
    to ``accounts``; its frame threads (``FrameThreads``, as many as its budget pays for and
    are free) decode a ``.tar.zst`` in both reads. Once ``cancelled()`` (asked before each
    read) is true the check raises ArchiveInvalid("check cancelled"): a caller that stops
    waiting (a signal) does not leave a thread reading 100 GB."""
    fd = _open_regular(path)
    name = name or os.path.basename(path)
    frames = FrameThreads(prove_accounts)
    try:
        with open(fd, "rb", buffering=0) as file:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            accounts = accounts_prover(
                name, prove_accounts, f"/proc/self/fd/{fd}", decoders=frames.count
            )
            read = file.read if cancelled is None else _stopping(file.read, cancelled)
            with proving(accounts):  # its worker process lives as long as the check
                return check_stream(
                    read,
                    name,
                    accounts=accounts,
                    decoders=frames.count,
                    decode_ahead=decodes_ahead(prove_accounts, frames.count),
                )
    finally:
        frames.release()


def _stopping(
    read: Callable[[int], bytes], cancelled: Callable[[], bool]
) -> Callable[[int], bytes]:
    """``read`` that raises ArchiveInvalid("check cancelled") once ``cancelled()``."""

    def checked(size: int) -> bytes:
        if cancelled():
            raise ArchiveInvalid(CANCELLED)
        return read(size)

    return checked


def _open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at ``path`` (a symbolic link followed):
    its type is checked before it is opened and again, on the descriptor, after; opened
    non-blocking so that a FIFO put there meanwhile cannot block the open."""
    _refuse_unless_regular(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        _refuse_unless_regular(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refuse_unless_regular(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file")


class _Inline:
    """Reads and hashes in the calling thread."""

    def __init__(self, read: Read, switch: threading.Event | None) -> None:
        self._read = read
        self._sha = BlockDigests(switch)

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def next(self) -> bytes:
        data = self._read(READ_SIZE)
        self._sha.update(data)
        return data

    def hexdigest(self) -> str:
        return self._sha.sha.hexdigest()

    def blocks(self) -> BlockDigests:
        return self._sha


class _Prefetch:
    """Reads and hashes in a thread of its own, up to PREFETCH_DEPTH chunks ahead.

    On exit the thread is told to stop, ``unblock`` ends a ``read`` that may wait, and the
    thread is joined: it stops after the ``read`` it may be in (never waiting on the consumer
    once stopped), so no read is left running on a descriptor its owner then closes.
    """

    def __init__(
        self,
        read: Read,
        unblock: Callable[[], None] | None = None,
        switch: threading.Event | None = None,
    ) -> None:
        self._read = read
        self._unblock = unblock
        self._sha = BlockDigests(switch, apart=True)
        self._ready: collections.deque[bytes] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._ended = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="archive-check-read", daemon=True)
        #: the chunks read and not hashed yet, and the thread that hashes them (SHA_APART)
        self._unhashed: Handover[bytes] | None = None
        self._hashing: threading.Thread | None = None
        if SHA_APART:
            self._unhashed = Handover(SHA_BEHIND)
            self._hashing = threading.Thread(
                target=self._hash, name="archive-check-sha", daemon=True
            )

    def __enter__(self) -> _Prefetch:
        self._thread.start()
        if self._hashing is not None:
            try:
                self._hashing.start()
            except BaseException as exc:  # a pids limit: the reading thread ends, not left
                self._hashing = None
                self.__exit__(type(exc), exc, exc.__traceback__)
                raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._cond:
            self._stopped = True
            self._ready.clear()
            self._cond.notify_all()
            running = not self._ended and self._error is None
        if running and self._unblock is not None:
            self._unblock()
        if self._unhashed is not None:
            self._unhashed.stop()  # a reading thread waiting for room, the hashing one, end
        self._thread.join()
        self._join_hashing()
        self._sha.close()  # its thread apart (.binding), given nothing more now

    def _run(self) -> None:
        try:
            while True:
                data = self._read(READ_SIZE)
                if self._unhashed is not None:
                    if not self._unhashed.put(data or None):  # stopped meanwhile
                        return
                elif data:
                    self._sha.update(data)
                with self._cond:
                    while len(self._ready) >= PREFETCH_DEPTH and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                    if not data:
                        self._ended = True
                    else:
                        self._ready.append(data)
                    self._cond.notify_all()
                if not data:
                    return
        except BaseException as exc:
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def next(self) -> bytes:
        """The next chunk; ``b""`` at the end; raises what ``read`` raised, and
        ArchiveInvalid("check cancelled") once stopped (a decoder in a thread of its own may
        still ask: ``DecodeAhead``)."""
        with self._cond:
            while not (self._ready or self._ended or self._error or self._stopped):
                self._cond.wait()
            if self._ready:
                data = self._ready.popleft()
                self._cond.notify_all()
                return data
            if self._error is not None:
                raise self._error
            if self._stopped:
                raise ArchiveInvalid(CANCELLED)
            return b""

    def hexdigest(self) -> str:
        """The SHA-256 of every byte read (call after :meth:`next` returned ``b""``)."""
        self._thread.join()
        self._join_hashing()
        if self._error is not None:  # the hashing thread's (a read's raised in next)
            raise self._error
        return self._sha.sha.hexdigest()

    def _hash(self) -> None:
        """The hashing thread (:data:`SHA_APART`): each chunk in the order read, until the
        end or a stop; what it raises is the reader's, as a read's."""
        assert self._unhashed is not None
        try:
            while (data := self._unhashed.take()) is not None:
                self._sha.update(data)
        except BaseException as exc:
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _join_hashing(self) -> None:
        """Wait for the hashing thread, if any: it ends at the end or once stopped."""
        if self._hashing is not None and self._hashing.is_alive():
            self._hashing.join()

    def blocks(self) -> BlockDigests:
        """The digests of the blocks read (after :meth:`hexdigest`; :mod:`.binding`)."""
        return self._sha


class GrowingFile:
    """Reads a file that someone else is still writing, for one reading thread.

    It reads its own descriptor of the file open at ``fd`` (a duplicate; for a write-only
    ``fd``, the file opened again read-only through ``/proc/self/fd``), closed when done,
    with ``os.pread``, never past what :meth:`advance` said is written. :meth:`read` blocks
    until there are bytes, the end (:meth:`finish`), :meth:`stop_short` or :meth:`cancel`.
    ``advance``, ``finish``, ``stop_short`` and ``cancel`` never block for long: call them
    from the trio thread.
    """

    def __init__(self, fd: int) -> None:
        self._fd = _readable(fd)
        self._cond = threading.Condition()
        self._offset = 0
        self._written = 0
        self._size: int | None = None
        self._cancelled = False
        self._short = False
        self._reading = False
        self._closed = False

    def advance(self, written: int) -> None:
        """``written`` bytes of the file are on disk (it never shrinks)."""
        with self._cond:
            if written > self._written:
                self._written = written
                self._cond.notify_all()

    def finish(self, size: int) -> None:
        """The file is complete at ``size`` bytes: reads end there."""
        with self._cond:
            self._size = size
            self._written = max(self._written, size)
            self._cond.notify_all()

    def stop_short(self) -> None:
        """No byte past what :meth:`advance` said comes (the writer's sources failed): a read
        there raises CopyCutShort instead of waiting, so that the check ends with its verdict
        on the bytes written (it reads each of them first)."""
        with self._cond:
            self._short = True
            self._cond.notify_all()

    def cancel(self) -> None:
        """A pending or later :meth:`read` raises ArchiveInvalid("check cancelled")."""
        self._cancelled = True  # read at once by the decode loop (``cancelled``)
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
            self._close_unless_reading()

    @property
    def reopen_path(self) -> str:
        """A path that opens the file again with an offset of its own (the accounts proof's
        second read, while the check runs)."""
        return f"/proc/self/fd/{self._fd}"

    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called (any thread may ask)."""
        return self._cancelled

    @property
    def closed(self) -> bool:
        """True once the descriptor is closed."""
        return self._closed

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes from where the last read ended; ``b""`` at the end."""
        with self._cond:
            while True:
                if self._cancelled:
                    raise ArchiveInvalid(CANCELLED)
                limit = self._written if self._size is None else self._size
                if self._offset < limit:
                    break
                if self._size is not None:
                    self._close_unless_reading()
                    return b""
                if self._short:
                    raise CopyCutShort(f"the copy stops at byte {limit}, short of its end")
                self._cond.wait()
            self._reading = True
            offset, count = self._offset, min(size, limit - self._offset)
        try:
            data = os.pread(self._fd, count, offset)
        finally:
            with self._cond:
                self._reading = False
                if self._cancelled:
                    self._close_unless_reading()
        if not data:
            raise OSError(f"the file ends at byte {offset}, before the {limit} bytes written")
        with self._cond:
            self._offset += len(data)
        return data

    def _close_unless_reading(self) -> None:
        if not self._reading and not self._closed:
            self._closed = True
            os.close(self._fd)


def _readable(fd: int) -> int:
    """A new descriptor reading the file open at ``fd``."""
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    return os.dup(fd)


#: Seconds a cancelled check's thread is waited for (:meth:`FollowingCheck.stopped`).
STOP_WITHIN = 10.0


class FollowingCheck:
    """:func:`check_stream` over a file being written, in a worker thread, from trio.

    The owner reports progress with :meth:`advance` and the end with :meth:`finish`, or stops
    the check with :meth:`cancel`; one of the last two must come in every path (the thread
    waits for bytes until then). :meth:`result` is the SHA-256 and the proof, or raises
    ArchiveInvalid (OSError when the file could not be read, or the tracker ran short);
    :meth:`first_read` is what the read of the file proved, before the accounts level's
    second read.
    """

    def __init__(
        self, growing: GrowingFile, name: str, prove_accounts: AccountsLimits | None = None
    ) -> None:
        self._growing = growing
        again: int | None = None
        accounts: StoragesProver | None = None
        try:
            # the accounts proof's second read needs the file after the check has read it to
            # its end (when the growing file's own descriptor closes): one of its own
            if prove_accounts is not None:
                again = os.open(growing.reopen_path, os.O_RDONLY)
                path = f"/proc/self/fd/{again}"
                accounts = accounts_prover(name, prove_accounts, path, growing.cancelled)
            self._begin(growing, name, prove_accounts, again, accounts)
        except BaseException as exc:
            # nothing started (descriptors short, no thread): what was opened goes now,
            # the caller's own descriptor stays the caller's
            growing.cancel()
            if accounts is not None:
                accounts.close()
            if again is not None:
                os.close(again)
            if (short := own_shortage(exc)) is not None:
                raise short from exc  # as a descriptor short: no verdict, tried again
            raise

    def _begin(
        self,
        growing: GrowingFile,
        name: str,
        prove_accounts: AccountsLimits | None,
        again: int | None,
        accounts: StoragesProver | None,
    ) -> None:
        """Start the check's thread, which closes ``again`` and ``accounts`` at its end."""
        # Imported here: `verify` of a file checks it without the event loop's library
        # (a tenth of a second of its start-up).
        import trio

        from tracker.serving.threads import Background

        token = trio.lowlevel.current_trio_token()
        #: What the read of the file proved, once it has (before the second read).
        self._first: Verified | None = None
        #: Set once the first read passed or the check ended.
        self._early = trio.Event()
        #: How far the members no level binds go (read once :meth:`result` returned).
        self.unbound = UnboundExtent()

        def told(verified: Verified) -> None:
            self._first = verified
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._early.set)

        def run() -> Verified:
            try:
                with proving(accounts):  # its worker process lives as long as the check
                    return check_stream(
                        growing.read,
                        name,
                        unblock=growing.cancel,
                        cancelled=growing.cancelled,
                        accounts=accounts,
                        first_read=told,
                        unbound=self.unbound,
                        # one decoder: frames decoded apart only once whole would hold back
                        # the verdict on a bad frame until the source sends all of it; where
                        # the hashing keeps pace, in a thread of its own, decoding as the bytes
                        # come (docs/architecture.md, "Every core")
                        decode_ahead=decodes_ahead(prove_accounts, 1),
                    )
            finally:
                growing.cancel()  # closes the descriptor in every case
                if again is not None:
                    os.close(again)

        self._background: Background[Verified] = Background(
            run, on_done=lambda _ended: self._early.set(), name=THREAD_NAME
        )

    @classmethod
    def start(
        cls, fd: int, name: str, prove_accounts: AccountsLimits | None = None
    ) -> FollowingCheck:
        """Start checking the file open at ``fd`` (duplicated: the caller keeps its own) as the
        archive ``name``, a full to ``accounts`` within ``prove_accounts``; call
        from trio."""
        return cls(GrowingFile(fd), name, prove_accounts)

    def advance(self, written: int) -> None:
        """``written`` bytes are on disk."""
        self._growing.advance(written)

    def finish(self, size: int) -> None:
        """Every byte is on disk: the file is ``size`` bytes long."""
        self._growing.finish(size)

    def cancel(self) -> None:
        """Stop the check: :meth:`result` raises ArchiveInvalid("check cancelled") unless the
        check had ended already."""
        self._growing.cancel()

    def done(self) -> bool:
        """True once the check has ended (passed or failed)."""
        return self._background.done()

    async def fails_short_of_end(self, written: int) -> bool:
        """The writer stopped short of the end (a download whose sources all failed): whether
        the ``written`` bytes on disk fail the check. The check reads them and no further
        (:meth:`GrowingFile.stop_short`: a read past them ends it with CopyCutShort instead
        of waiting), and this waits for its end: as long as the check takes to read those of
        them it had not read yet. True when it ended on those bytes (:meth:`result` raises
        why: they fail it, or could not be read), also when it had ended before; False when
        they passed as far as they go (CopyCutShort: no verdict), or when it passed, which it
        never does untold of the end (:meth:`finish`)."""
        self._growing.advance(written)
        self._growing.stop_short()
        await self._background.wait()
        failure = self._background.failure()
        return failure is not None and not isinstance(failure, CopyCutShort)

    async def stopped(self, within: float = STOP_WITHIN) -> None:
        """:meth:`cancel` the check and wait (shielded, at most ``within`` seconds: its
        decode loop looks every few MiB) until its thread has ended. A task cancelled as the
        tracker stops returned at once while the thread still wrote its proof's spilled runs:
        the interpreter's exit removed their directory under it, and gigabytes of runs stayed
        behind."""
        import trio

        self.cancel()
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + within
            await self._background.wait()

    async def result(self) -> Verified:
        """Wait for the check: the SHA-256's hex digest and the proof, or ArchiveInvalid."""
        return await self._background.result()

    async def first_read(self) -> Verified:
        """Wait until the check has read the whole file and passed all but the accounts
        level: the SHA-256 and what that read proved (``manifest`` at most), while the
        accounts level's second read may still run (:meth:`result` waits for it). Raises
        what :meth:`result` raises when the check failed or ended before."""
        await self._early.wait()
        if self._first is not None:
            return self._first
        return await self.result()
