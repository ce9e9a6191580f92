"""Both reads' scan in processes: each storage's pieces scanned, indexed and hashed in a
process of its own, so that the check's process only decodes, walks the tar and keeps the
index (docs/architecture.md, "The accounts level" → "Every core").

On by default from eight ``proof_workers`` (``budget.scan_processes``), where the budget
holds them: on 16 cores the proof of 16 million accounts took 9.2-11.0 s
with them against 10.3-15.8 without, on 8 cores 12.4 against 13.9; on 2 cores it is slower
(``bench/accounts.py --set accounts.budget.SCAN_PROCESSES=N``; bench/README.md). Without
them the first read scans in the reading thread or in scan lanes (:mod:`.scanlanes`).

The processes are forked from one forkserver (``multiprocessing``'s, a fresh interpreter:
never ``fork`` of a process with threads) that loaded numba and the compiled kernels once
before it forks (:data:`PRELOAD`): each holds ~8 MiB of its own, not ~140, and is ready at
once (``bench/kernelprocs.py``); the forkserver itself holds ~130 MiB, and stays for the
next proof. A :class:`Scanners` is one proof's: a storage is one process's, its pieces sent
in order, each copied into a free one of :data:`IN_FLIGHT` slots of memory the two map (a
``memfd`` sent over the pipe at the start; where there is none, the pieces go through the
pipe). Each process has a sending thread of its own in the check's process that copies and
sends what the thread walking the archive hands it (the pieces waiting keep at most
:data:`UNSENT_BYTES` of decoded archive alive),
so that this thread, the one every piece passes, only walks: on two cores it took 0.08
CPU-s a million accounts instead of 0.30 (bench/README.md). The process scans each piece
(:class:`~tracker.proof.formats.storages.StorageScan`, the one reading of a storage), makes
each batch's index rows and hashes its versions with lamports into a sum of its own (every
one: the second read takes out those superseded), and answers with the rows. What it finds
of the SlotHistory sysvar goes back too. The second read sends each storage it reads again
the same way, after a frame that says what the first read found in it (its records, the
ranges left, its superseded and kept versions: :func:`.newest.second_choice`); the process
parses it again, adds and takes out what that says into the same sum, and answers with
what it added and took out, or refuses a storage that reads otherwise than the first time.
The proof holds :data:`PROCESS_BYTES` of its budget for each, :data:`FORKSERVER_BYTES`
for the forkserver and :data:`UNSENT_BYTES` for the pieces waiting to be sent
(:func:`held_for`), through both reads. What the two say to each other, and the scan
process's loop: :mod:`.scanprocess`.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing import resource_tracker
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from tracker.proof.accounts import scanprocess
from tracker.proof.accounts.hashworker import CANCELLED, LOOK_EVERY, shared_memory
from tracker.proof.accounts.scanprocess import (
    COUNT,
    COUNT_BYTES,
    DONE,
    ENDS,
    FAILED,
    MAX_ANSWER,
    REFUSED,
    REHASHED,
    ROWS,
    ROWS_END,
    SLOT_BYTES,
    SUM,
    SYSVAR,
    U64,
    decode_answer,
    line,
    serve,
    split_ends,
)
from tracker.proof.formats.parsing import BulkPiece, joined

#: The module the forkserver imports before it forks: numba and the kernels loaded.
PRELOAD = "tracker.proof.accounts.scanpreload"
#: Seconds a proof waits for a process's answer before it gives up on it. While it waits
#: it looks at the check's ``cancelled()`` every :data:`~.hashworker.LOOK_EVERY` (a free
#: slot, its answers, its sum), as with the hashing processes: a cancelled check ends within
#: about that, not at the stall bound, whatever its processes do (docs/architecture.md,
#: "Every core"), not proven for :data:`~.hashworker.CANCELLED`.
STALLED = 60.0

_CONTEXT: Any = None
_CONTEXT_LOCK = threading.Lock()


#: What the budget holds for each scan process: its own pages (~8 MiB forked from the
#: forkserver, ``bench/kernelprocs.py``), :data:`IN_FLIGHT` pieces of ~4 MiB in its pipe,
#: a record carried across pieces and a batch's rows.
PROCESS_BYTES = 32 * 1024 * 1024
#: What the budget holds for the forkserver, in each proof that scans in processes: its own
#: pages with numba and the kernels loaded (126 MiB measured, ``bench/kernelprocs.py``). It
#: outlives the proof (the next one forks from it at once), so proofs at once count it
#: each: more than it holds, never less.
FORKSERVER_BYTES = 144 * 1024 * 1024
#: What the pieces of one proof handed to its processes' sending threads, and not copied or
#: sent yet, keep alive at most (the thread that walks the archive waits past it): each
#: counts every buffer it is a view of, whole (a decoded chunk of 4 MiB, a record joined
#: across chunks), so pieces of one chunk count it each (more than they keep, never less).
#: Small storages' pieces wait many to a chunk: a count of pieces had the walk wait at each
#: (~30 CPU µs a storage of 10 accounts, ``bench/accounts.py --per-storage 10``). The
#: budget holds it in each proof that scans in processes.
UNSENT_BYTES = 64 * 1024 * 1024
#: A storage whose valid bytes are one piece of at most :data:`GATHERED_PIECE` is gathered
#: with others, copied, and they go whole to one process in one frame of at most
#: :data:`GATHERED_BYTES` and :data:`GATHERED_MOST` storages, answered in one: each storage
#: of 10 accounts cost the check's process a frame and an answer, ~150 CPU µs in its
#: sending and answers' threads (``bench/accounts.py --per-storage 10``). The budget holds
#: the bytes gathered in each proof that scans in processes.
GATHERED_PIECE = 128 * 1024
GATHERED_BYTES = 1024 * 1024
GATHERED_MOST = 256


def kept_alive(parts: tuple[Any, ...]) -> int:
    """The bytes a piece's ``parts`` keep alive while they wait: every buffer each is a view
    of, whole."""
    total = 0
    for part in parts:
        view = memoryview(part)
        total += memoryview(view.obj).nbytes if view.obj is not None else view.nbytes
    return total


class _Unsent:
    """The bytes the pieces waiting for a proof's sending threads keep alive, held within
    :data:`UNSENT_BYTES` (a piece alone always passes)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.held = 0

    def take(self, size: int, failed: Callable[[], bool]) -> bool:
        """Hold ``size`` more once they fit; False once ``failed()`` (asked each second)."""
        with self._changed:
            while self.held and self.held + size > UNSENT_BYTES:
                if failed():
                    return False
                self._changed.wait(1.0)
            self.held += size
            return True

    def give(self, size: int) -> None:
        """``size`` bytes were sent (or dropped): others may wait no more."""
        with self._changed:
            self.held -= size
            self._changed.notify_all()


def held_for(processes: int) -> int:
    """What a proof's budget holds for ``processes`` scan processes, their forkserver and
    the pieces waiting to be sent to them."""
    if not processes:
        return 0
    return FORKSERVER_BYTES + UNSENT_BYTES + GATHERED_BYTES + processes * PROCESS_BYTES


def _context() -> Any:
    """The forkserver context the scan processes come from, made once a process."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            context = multiprocessing.get_context("forkserver")
            # the main module too: imported once there, not again in each process it forks
            # (a process started this way imports its parent's main module first, unless
            # its forkserver has: ``multiprocessing``'s documented preload of ``__main__``)
            context.set_forkserver_preload(["__main__", PRELOAD])
            _CONTEXT = context
        return _CONTEXT


def start_process(process: Any) -> None:
    """Start ``process`` with SIGINT blocked in this thread meanwhile: the forkserver,
    started with the first process, inherits the mask and keeps SIGINT blocked. A Ctrl-C at
    a terminal reaches the whole process group: while the forkserver started (its
    interpreter, the main module, the imports before the preload's ``SIG_IGN``) it printed
    its KeyboardInterrupt traceback beside the command's one line. The scan processes
    ignore SIGINT anyway; the parent ends them. A SIGINT meanwhile reaches this process's
    other threads, or waits for the unblocking.

    The resource tracker is started first, apart: its start blocks SIGINT and SIGTERM
    around its own spawn and then unblocks them (Python 3.11's ``resource_tracker``), which
    would undo the block before the forkserver's spawn (tests/unit/test_scanprocs.py)."""
    resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def warm() -> None:
    """Start the forkserver now (numba and the kernels loaded in it) rather than at the
    first proof that scans in processes, which would wait for it: what a process pays once
    (``bench/accounts.py`` times it with the kernels' loading, apart from the proof)."""
    process = _context().Process(target=os.getpid, daemon=True)
    start_process(process)
    process.join()


def _never() -> bool:
    """A check never cancelled (``verify``'s, a bench's)."""
    return False


class ScanAnswers(Protocol):
    """What the parent does with a process's answers (the proof's bookkeeping:
    :class:`~tracker.proof.accounts.accountsproof.AccountsProof`), called in the thread that
    reads that process's pipe."""

    def scanned(self, number: int, rows: U64, records: int, hashed: int) -> None:
        """A batch of storage ``number``: its index rows, ``hashed`` of them summed."""

    def found(self, number: int, lamports: int, data: bytes) -> None:
        """A SlotHistory version found in storage ``number``."""

    def counted(self, number: int, count: int) -> None:
        """Storage ``number`` held ``count`` records."""

    def refused(self, number: int, reason: str) -> None:
        """Storage ``number`` is invalid (one line)."""

    def failed(self, reason: str) -> None:
        """A process failed: the proof cannot end."""

    def rehashed(self, number: int, added: int, taken_out: int) -> None:
        """Storage ``number``'s second read is over: ``added`` versions added to the sum,
        ``taken_out`` taken out of it."""


#: Seconds the reading thread is given to see its process's end before the pipe is hung up.
HANG_UP_AFTER = 2.0


class _Process:
    """One scan process, its pipe, the thread sending to it and the thread reading its
    answers."""

    def __init__(
        self, sink: ScanAnswers, unsent: _Unsent, cancelled: Callable[[], bool] | None = None
    ) -> None:
        context = _context()
        self._sink = sink
        # asked while the proof waits on the process: a stuck one holds no cancelled check
        self._cancelled = cancelled if cancelled is not None else _never
        self.conn, theirs = context.Pipe(duplex=True)
        try:
            self.proc = context.Process(target=serve, args=(theirs,), daemon=True)
            start_process(self.proc)
        except BaseException:
            self.conn.close()
            raise
        finally:
            theirs.close()
        self.shared: mmap.mmap | None = None
        self.closing = False
        try:
            self._begin(unsent)
        except BaseException:
            # a step after the process started failed (its threads cannot start at a pids
            # limit, no memory, no descriptor): this half-built one never reaches its
            # Scanners' list, so nothing else would end the process, the thread reading it
            # and the pipe, nor give back what the proof holds for them
            self._abandon()
            raise

    def _begin(self, unsent: _Unsent) -> None:
        """Everything after the process started: the shared slots, the thread reading its
        answers and the one sending to it."""
        # the pieces' slots: memory both map (sent with the first frame), else the pipe; the
        # process maps what it is sent, whole (bench/accounts.py --set may change the count)
        in_flight = scanprocess.IN_FLIGHT
        fd = shared_memory(in_flight * SLOT_BYTES, "tracker-scan")
        try:
            with socket.socket(fileno=os.dup(self.conn.fileno())) as raw:
                socket.send_fds(raw, [b"1" if fd is not None else b"0"], [] if fd is None else [fd])
            if fd is not None:
                self.shared = mmap.mmap(fd, in_flight * SLOT_BYTES)
        finally:
            if fd is not None:
                os.close(fd)  # the mapping (and the process's) keep the memory
        self.slots = list(range(in_flight))  # the free ones
        #: the slot of each storage's last piece: free once the storage's end is answered
        self._last_slots: dict[int, int] = {}
        self.storages: set[int] = set()  # those sent to it, not counted yet
        self.free = threading.Semaphore(in_flight)
        self.pending = 0  # pieces and ends sent, not answered
        self.idle = threading.Condition()
        self.total: npt.NDArray[np.uint16] | None = None
        self.cpu = 0.0  # CPU seconds it used, told with its sum
        self.failure: str | None = None
        self.reader = threading.Thread(target=self._read, name="accounts-scan-answers", daemon=True)
        self.reader.start()
        #: What the sending thread sends, in order (None: it ends), and the bound on the
        #: pieces waiting for it.
        self._outbox: queue.SimpleQueue[tuple[tuple[Any, ...], tuple[Any, ...] | None, int] | None]
        self._outbox = queue.SimpleQueue()
        self._unsent = unsent
        self.sender = threading.Thread(target=self._write, name="accounts-scan-sends", daemon=True)
        self.sender.start()

    def send_piece(
        self,
        number: int,
        name: str,
        valid: int,
        piece: BulkPiece,
        last: bool = False,
        second: tuple[Any, ...] | None = None,
    ) -> None:
        """Send a piece once fewer than :data:`IN_FLIGHT` wait (dropped once it failed:
        the proof has stopped): copied into a free slot of the shared memory when it fits,
        else through the pipe. The copy and the send are the sending thread's
        (:meth:`_write`): the thread that walks the archive (the serial chain of the proof,
        docs/architecture.md, "Every core") only hands the piece over, while at most
        :data:`UNSENT_BYTES` of decoded archive are kept alive by the pieces of the proof's
        processes that wait for theirs. The ``last`` piece of a storage carries its end:
        the end's answer (as to :meth:`send_end`) also frees its slot; the first piece of its
        second read carries what that read needs (``second``, :meth:`Scanners.rescan`)."""
        if not self._free_slot():
            return
        with self.idle:
            slot = self.slots.pop()
            self.storages.add(number)
            if last:
                self._last_slots[number] = slot
        parts = piece if isinstance(piece, tuple) else (piece,)
        size = sum(len(part) for part in parts)
        shared = self.shared is not None and size <= SLOT_BYTES
        frame = ("piece", number, name, valid, last, second, slot, size if shared else -1)
        self._send(frame, parts, 2 if last else 1)

    def send_storages(self, entries: list[tuple[Any, ...]], data: bytearray) -> None:
        """Send small storages whole, their ``entries`` (each ``(number, name, valid,
        second, length)``) and their bytes one after the other, as one frame in one slot
        (as :meth:`send_piece`): one answer ends them all and frees it."""
        if not self._free_slot():
            return
        with self.idle:
            slot = self.slots.pop()
            self.storages.update(entry[0] for entry in entries)
        size = len(data) if self.shared is not None and len(data) <= SLOT_BYTES else -1
        self._send(("storages", entries, slot, size), (data,), len(entries) + 1)

    def _free_slot(self) -> bool:
        """Take a free slot; False once the process failed, or when none came free for
        :data:`STALLED` seconds (a process alive but answering nothing: stopped, stuck),
        which fails it as :meth:`settle` does: the walk never waits on it for ever; nor
        past :data:`LOOK_EVERY` once the check is cancelled (:data:`CANCELLED`)."""
        waited = 0.0
        while not self.free.acquire(timeout=LOOK_EVERY):
            if self.failure is not None:
                return False
            waited += LOOK_EVERY
            if self._cancelled():
                self._failed(CANCELLED)
                return False
            if waited >= STALLED:
                self._failed("the scanning process stalled")
                return False
        return True

    def send_end(self, number: int) -> None:
        """Storage ``number`` is whole (or had no valid byte)."""
        with self.idle:
            self.storages.add(number)
        self._send(("end", number))

    def _send(
        self, frame: tuple[Any, ...], parts: tuple[Any, ...] | None = None, counted: int = 1
    ) -> None:
        """Hand ``frame`` (and a piece's ``parts``) to the sending thread, in order;
        ``counted``: the answers it asks for."""
        if self.failure is not None:
            return
        with self.idle:
            self.pending += counted
        held = kept_alive(parts) if parts is not None else 0
        if held and not self._unsent.take(held, lambda: self.failure is not None):
            return
        self._outbox.put((frame, parts, held))

    def _write(self) -> None:
        """The sending thread: each frame in order, a piece copied into its slot (one copy
        a part; numpy lets go of the GIL) or sent after its frame through the pipe. Once the
        process failed only ``finish`` still goes (its reading thread then ends at once)."""
        while (item := self._outbox.get()) is not None:
            frame, parts, held = item
            # a piece's frame ends with its slot and its size, -1 when it goes by the pipe
            slot, size = frame[-2:] if parts is not None else (0, 0)
            try:
                if self.failure is None or frame[0] == "finish":
                    if parts is not None and size >= 0:
                        self._copy(slot, parts)
                    self.conn.send(frame)
                    if parts is not None and size < 0:
                        self.conn.send_bytes(joined(parts))
            except OSError:  # gone: its reading thread says so (EOF)
                self._failed("the scanning process ended")
            except Exception as exc:  # never a thread left dead with the proof waiting on it
                self._failed(f"a piece could not be sent: {type(exc).__name__}: {exc}")
            finally:
                if held:
                    self._unsent.give(held)

    def _copy(self, slot: int, parts: tuple[Any, ...]) -> None:
        """A piece's ``parts`` one after the other into ``slot`` of the shared memory."""
        assert self.shared is not None
        at = slot * SLOT_BYTES
        for part in parts:
            into = np.frombuffer(self.shared, dtype=np.uint8, count=len(part), offset=at)
            into[:] = np.frombuffer(part, dtype=np.uint8)
            at += len(part)
            del into  # no view left: close() can unmap

    def settle(self) -> None:
        """Wait until every piece and end sent so far is answered (the process fails once
        it answered nothing for :data:`STALLED` seconds, or the check is cancelled)."""
        first, reason = False, ""
        deadline = time.monotonic() + STALLED
        with self.idle:
            seen = self.pending
            while self.pending and self.failure is None:
                if self.pending != seen:  # an answer came: the bound runs from it
                    seen, deadline = self.pending, time.monotonic() + STALLED
                left = deadline - time.monotonic()
                if self._cancelled():
                    reason = CANCELLED
                elif left <= 0:
                    reason = "the scanning process stalled"
                else:
                    self.idle.wait(min(LOOK_EVERY, left))
                    continue
                first = self._fail(reason)
        if first:
            self._sink.failed(reason)

    def finish(self) -> None:
        """Ask for the process's sum; wait for it (at most :data:`STALLED` seconds, and no
        longer once the check is cancelled)."""
        if self.failure is None:
            self._outbox.put((("finish",), None, 0))
        deadline = time.monotonic() + STALLED
        while self.reader.is_alive() and (left := deadline - time.monotonic()) > 0:
            if self._cancelled():
                self._failed(CANCELLED)
                return
            self.reader.join(min(LOOK_EVERY, left))

    def close(self) -> None:
        """End the process (at once unless it gave its sum and ends by itself), then the
        thread reading it, then the pipe (idempotent)."""
        if self.conn.closed:
            return
        self.closing = True
        if self.total is not None:
            self.proc.join(1.0)  # it ends by itself once it gave its sum
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self._outbox.put(None)  # after the process: a send blocked on its pipe fails now
        self.sender.join()
        self.reader.join(HANG_UP_AFTER)  # the pipe's other end is gone: it has read its end
        if self.reader.is_alive():
            # ...unless the forkserver died: it alone could tell this process's end or kill
            # it (is_alive() then says False of a process still waiting for its next frame,
            # and the reading thread waited for its answer for ever, the proof's budget
            # with it). The pipe hung up both ways: the process reads its end and ends, the
            # reading thread wakes.
            with (
                contextlib.suppress(OSError),
                socket.socket(fileno=os.dup(self.conn.fileno())) as raw,
            ):
                raw.shutdown(socket.SHUT_RDWR)
            self.reader.join()
        self.conn.close()
        if self.shared is not None:
            self.shared.close()
            self.shared = None

    def _abandon(self) -> None:
        """Undo a construction that failed after the process started: the process killed
        and waited for, the thread reading its answers (if it started) ended, the pipe
        closed, the shared slots unmapped. No sending thread runs yet."""
        self.closing = True  # the reading thread tells no one of the end it sees
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        reader = getattr(self, "reader", None)
        if isinstance(reader, threading.Thread) and reader.ident is not None:
            # hung up both ways, as :meth:`close` does for a forkserver gone: it wakes
            with (
                contextlib.suppress(OSError),
                socket.socket(fileno=os.dup(self.conn.fileno())) as raw,
            ):
                raw.shutdown(socket.SHUT_RDWR)
            reader.join()
        self.conn.close()
        if self.shared is not None:
            self.shared.close()
            self.shared = None

    def _fail(self, reason: str) -> bool:
        """Note the failure (under ``idle``); True when it is the first, to be told to the
        sink once ``idle`` is let go of (unless the proof closes the process)."""
        first = self.failure is None and not self.closing
        if self.failure is None:
            self.failure = reason
        self.idle.notify_all()
        return first

    def _read(self) -> None:
        """The process's answers, each read whole and bounded, never unpickled: a process
        that read a hostile archive says only what these frames can say."""
        while True:
            try:
                answer = decode_answer(self.conn.recv_bytes(MAX_ANSWER))
            except (EOFError, OSError):
                self._failed("the scanning process ended")
                return
            except ValueError as exc:  # a process that says what it cannot
                self._failed(f"the scanning process answered badly: {exc}")
                return
            try:
                if not self._take(*answer):
                    return
            except ValueError as exc:
                self._failed(f"the scanning process answered badly: {exc}")
                return
            except Exception as exc:  # the proof could not keep it (its disk, its index)
                self._failed(f"a scanned batch could not be kept: {type(exc).__name__}: {exc}")
                return

    def _take(self, kind: int, first: int, second: int, third: int, body: memoryview) -> bool:
        """One answer handed to the proof; False once the process said its last."""
        sink = self._sink
        if kind not in (DONE, SUM, FAILED, ENDS) and first not in self.storages:
            raise ValueError(f"an answer of storage {first}, never sent to it")
        if kind == ROWS:
            rows = np.frombuffer(body, dtype="<u8").reshape(-1, 5)
            sink.scanned(first, rows, second, third)
        elif kind == DONE:
            self._slot_done(first)
            self._answered()
        elif kind == ENDS:  # small storages' ends, then their slot free
            for each in split_ends(body):
                self._take(*each)
            self._slot_done(first)
            self._answered()
        elif kind == ROWS_END:  # the storage's last rows, then its count
            rows = np.frombuffer(body[: -COUNT_BYTES.size], dtype="<u8").reshape(-1, 5)
            sink.scanned(first, rows, second, third)
            (count,) = COUNT_BYTES.unpack(body[-COUNT_BYTES.size :])
            self._ended(COUNT, first, count, 0)
        elif kind in (COUNT, REHASHED):
            self._ended(kind, first, second, third)
        elif kind == SYSVAR:
            sink.found(first, second, bytes(body))
        elif kind == REFUSED:
            sink.refused(first, line(body))
        elif kind == SUM:
            self.total = np.frombuffer(body, dtype="<u2").copy()
            self.cpu = second / 1e6
            return False
        else:  # FAILED
            self._failed(f"the scanning process failed: {line(body)}")
            return False
        return True

    def _ended(self, kind: int, number: int, second: int, third: int) -> None:
        """Storage ``number`` is over in its process: its count, or what its second read
        added and took out; its last piece's slot free with it."""
        with self.idle:
            self.storages.discard(number)
            last = self._last_slots.pop(number, None)
        if last is not None:  # its last piece's slot, done with the storage
            self._slot_done(last)
        if kind == COUNT:
            self._sink.counted(number, second)
        else:
            self._sink.rehashed(number, second, third)
        self._answered(1 if last is None else 2)

    def _slot_done(self, slot: int) -> None:
        """``slot`` is free again (ValueError when it is free already, or is a last piece's,
        which its storage's end frees: a second answer for one piece would let two pieces
        share it)."""
        with self.idle:
            if slot in self.slots or (slot in self._last_slots.values()):
                raise ValueError(f"slot {slot} done, never in use")
            self.slots.append(slot)
        self.free.release()

    def _failed(self, reason: str) -> None:
        with self.idle:
            first = self._fail(reason)
        if first:
            self._sink.failed(reason)

    def _answered(self, count: int = 1) -> None:
        with self.idle:
            self.pending -= count
            if not self.pending:
                self.idle.notify_all()


class Scanners:
    """The scan processes of one proof, both reads (see the module): :meth:`piece` and
    :meth:`end` for each storage (:meth:`rescan` first in the second read), :meth:`settle`
    to send what is gathered and wait for every answer, :meth:`Scanners.totals` for their
    sums at the end, :meth:`close` whatever the way it ended."""

    def __init__(
        self, count: int, sink: ScanAnswers, cancelled: Callable[[], bool] | None = None
    ) -> None:
        self._processes: list[_Process] = []
        self._owner: dict[int, _Process] = {}
        #: what a storage's second read needs, sent with its first piece (:meth:`rescan`)
        self._second: dict[int, tuple[Any, ...]] = {}
        #: the valid bytes of each storage sent so far, and the storages whose last piece
        #: carried their end (one frame a small storage, not two: what many small storages
        #: cost, docs/architecture.md, "Every core"), so :meth:`end` sends none
        self._sent: dict[int, int] = {}
        self._carried: set[int] = set()
        #: small storages gathered to go whole to one process in one frame (:meth:`piece`):
        #: their entries and their bytes, copied (the reading threads of the second read
        #: share it)
        self._gathered: list[tuple[Any, ...]] = []
        self._gathered_bytes = bytearray()
        self._gathering = threading.Lock()
        unsent = _Unsent()
        try:
            for _ in range(count):
                self._processes.append(_Process(sink, unsent, cancelled))
        except BaseException:  # those started end with it
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._processes)

    def piece(self, number: int, name: str, valid: int, piece: BulkPiece) -> None:
        """Send storage ``number``'s next piece to the process that has it (the least busy
        one, at its first piece); the piece that ends its ``valid`` bytes carries its end
        (as :meth:`end`). A storage whose first piece is its last and small
        (:data:`GATHERED_PIECE`) is copied and gathered with others instead (:meth:`_gather`),
        which go at once to one process, in one frame answered once."""
        size = sum(map(len, piece)) if isinstance(piece, tuple) else len(piece)
        first = number not in self._sent
        sent = self._sent.pop(number, 0) + size
        last = sent >= valid
        if first and last and size <= GATHERED_PIECE:  # a small storage whole
            self._carried.add(number)
            self._owner.pop(number, None)  # its second read's process: the frame's instead
            self._gather((number, name, valid, self._second.pop(number, None), size), piece)
            return
        if last:
            self._carried.add(number)
        else:
            self._sent[number] = sent
        process = self._owner.pop(number, None) if last else self._owner.get(number)
        if process is None:
            process = min(self._processes, key=lambda each: each.pending)
            if not last:
                self._owner[number] = process
        process.send_piece(number, name, valid, piece, last, self._second.pop(number, None))

    def _gather(self, entry: tuple[Any, ...], piece: BulkPiece) -> None:
        """A small storage whole, with those gathered before it unless they would pass
        :data:`GATHERED_BYTES` or :data:`GATHERED_MOST` (then they go first)."""
        with self._gathering:
            if (
                len(self._gathered_bytes) + entry[-1] > GATHERED_BYTES
                or len(self._gathered) >= GATHERED_MOST
            ):
                self._send_gathered()
            self._gathered.append(entry)
            for part in piece if isinstance(piece, tuple) else (piece,):
                self._gathered_bytes += part

    def _send_gathered(self) -> None:
        """The storages gathered, to the least busy process (under ``_gathering``)."""
        if self._gathered:
            process = min(self._processes, key=lambda each: each.pending)
            process.send_storages(self._gathered, self._gathered_bytes)
            self._gathered, self._gathered_bytes = [], bytearray()

    def rescan(
        self,
        number: int,
        name: str,
        valid: int,
        records: int,
        left: U64,
        skip: npt.NDArray[np.int64],
        keep: npt.NDArray[np.int64],
    ) -> None:
        """Storage ``number``'s second read begins, in the least busy process: the records
        the first read found in it, the ranges it left (``newest.Stored.left``), the
        offsets of its superseded versions and of those kept (``newest.second_choice``),
        sent with its first piece (a storage the second read reads has a valid byte); its
        pieces and its end follow as in the first read."""
        self._owner[number] = min(self._processes, key=lambda each: each.pending)
        arrays = (left.astype("<u8"), skip.astype("<i8"), keep.astype("<i8"))
        self._second[number] = (records, *(each.tobytes() for each in arrays))

    def end(self, number: int) -> None:
        """Storage ``number`` is whole: its process answers with its count (in the second
        read: what it added and took out); nothing to send when its last piece carried it."""
        if number in self._carried:
            self._carried.discard(number)
            return
        process = self._owner.pop(number, None)
        if process is None:  # no valid byte: its count is 0, asked of any process
            process = min(self._processes, key=lambda each: each.pending)
        process.send_end(number)

    def settle(self) -> None:
        """Send the storages gathered; wait until every process answered all it was sent."""
        with self._gathering:
            self._send_gathered()
        for process in self._processes:
            process.settle()

    @property
    def cpu(self) -> float:
        """CPU seconds the processes used, as each told with its sum (:meth:`Scanners.totals`)."""
        return sum(process.cpu for process in self._processes)

    def totals(self) -> npt.NDArray[np.uint16] | None:
        """The processes' sums added; None when one failed."""
        self.settle()  # the storages gathered too
        total = np.zeros(1024, dtype=np.uint16)
        for process in self._processes:
            process.finish()
            if process.total is None:
                return None
            total += process.total
        return total

    def close(self) -> None:
        """End every process (idempotent)."""
        for process in self._processes:
            process.close()
