"""The accounts proof's BLAKE3 in a worker process, so that a check uses a second core.

The blake3 package holds the GIL while it hashes a message as short as an account's (a few
hundred bytes), so a thread cannot share the accounts level's one unavoidable cost, the BLAKE3
XOF of every account (docs/architecture.md, "The accounts level"). :class:`HashWorker` is the
:class:`~tracker.proof.accounts.accounthash.Summer` of a check: it starts ``python -m
tracker.proof.accounts.hashworker`` (a fresh interpreter: never ``fork`` of a process with threads;
it imports only blake3 and numpy) and writes it the laid-out messages through a pipe; the check's
process meanwhile decompresses, walks the tar, scans the storages and keeps the index. What is
in flight is bounded: the pipe's buffer and one batch. The child sums the
hashes and, asked at the end, writes the 2,048-byte sum back and exits. The pipe is written
without blocking: while the child has not taken the last batch whole, the check's process
hashes the next batch itself, so the two share the hashing as their other work allows (the
check's process also decompresses and walks; a loaded machine gives either less) and neither
waits for the other but at the end.

The child runs at ``nice`` 10 (:data:`NICE`, set by the parent once it started): what it
hashes ahead in the first read takes the CPU the reading thread and the serving leave, never
theirs (docs/architecture.md, "The accounts level" → "Hashing ahead"). Its lifetime is the
check's: ``close()`` (the check's end, whatever the way: done, failed,
cancelled) kills and waits for it; it also exits by itself when the pipe closes (the
tracker gone). A child that fails (killed, out of memory, not startable) costs the proof: the
sum is not made, the archive stays at ``manifest`` with the note, never rejected.

The messages are not copied through the pipe when they fit in a slot of the memory the
two processes share (a ``memfd`` mapped by both, :data:`SLOTS` of :data:`SLOT_BYTES`): the
check lays a batch out there (:meth:`HashWorker.room`, ``kernels.lay_out_into``) and sends
only the frame's header and the messages' ends; the child hashes the slot where it lies and
answers one byte, the slot's number, once it is free again. A data-heavy storage (accounts of
~20 KiB) cost ~4x its bare BLAKE3 when every byte went through the pipe (docs/architecture.md,
"The accounts level" → "Every core"). Batches smaller than :data:`SEND_AT` share a slot: it
is sent once it holds that much (or the next batch does not fit, or at the end), so that the
child is woken once for several. A batch larger than a slot, or a system without
``memfd_create``, goes through the pipe as before.

Frames, parent to child: a header ``<qQQq`` (its kind: 1 a batch to add, 2 a batch to take
out of the sum, 0 the end; the number
of messages; the bytes of the buffer; the shared slot holding them, or -1: they follow in the
pipe), the messages' ends (little-endian i64), the buffer unless in a slot. Child to parent:
a slot's number (one byte) when it is hashed, and the 2,048-byte sum at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import numpy.typing as npt

import tracker
from tracker.proof.formats.lattice import LANES, LT_HASH_BYTES, hash_sum_into

if TYPE_CHECKING:  # the child imports no more than it hashes with (its start-up is a proof's)
    from collections.abc import Callable

    from tracker.proof.accounts.budget import WorkerSlots

_HEADER = struct.Struct("<qQQq")
#: A frame's kind: a batch of messages to add, one to take out (versions the first read
#: hashed ahead that turned out superseded), or the end (the sum is asked for).
_BATCH, _NEGATIVE, _END = 1, 2, 0
#: Slots of the shared memory and their size: a batch is ~4 MiB of a storage's records,
#: their messages no larger. Four slots, not two, let the check hand the child three batches
#: ahead before it hashes one itself: on 2 cores the child then takes ~18% more of the
#: hashing and the check's process ~10% less (bench/accounts.py, 1 M accounts: 1.22-1.29 s
#: against 1.30-1.38 s), for the same 16 MiB shared.
SLOTS = 4
SLOT_BYTES = 4 * 1024 * 1024
#: A slot is sent once it holds this much: smaller batches (a storage of a few large
#: accounts, or of a few hundred small ones) share a slot, so that the child is woken once
#: for several of them (a wake-up through the pipe cost ~90 µs on this host, more than
#: hashing a 250 KB batch).
SEND_AT = 1024 * 1024
#: The most messages and bytes of one frame the child accepts (a batch is one storage
#: piece: ~4 MiB, plus one record of at most 10 MiB).
MAX_MESSAGES = 1 << 22
MAX_BYTES = 1 << 30
#: How much the child lowers its scheduling priority (``nice``) when it starts.
NICE = 10
#: Messages from which the child is started (a tiny proof hashes them here).
START_FROM = 2048
#: Seconds the check waits for the child to take a frame or to answer before it gives up on
#: it (a stuck child costs the proof, never a check that never ends).
STALLED = 60.0
#: Seconds between two looks at the check's ``cancelled()`` while it waits on a child (or a
#: scan process, :mod:`.scanprocs`): a cancelled check ends within about this, not at
#: :data:`STALLED`, whatever its processes do (docs/architecture.md, "Every core"): a stop
#: waits 10 s for a check's thread, and one still waiting then left its child behind.
LOOK_EVERY = 1.0
#: Why a proof whose check was cancelled while it waited on a process is not proven.
CANCELLED = "the check was cancelled"
#: The pipe's buffer asked for (Linux: F_SETPIPE_SZ), so that the parent rarely waits.
PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031
Lanes = npt.NDArray[np.uint16]


def _package_root() -> str:
    """The directory holding the ``tracker`` package, so that the child finds it when the
    tracker runs from a source tree rather than an installed package."""
    return str(Path(tracker.__file__).resolve().parent.parent)


class HashWorker:
    """A :class:`~tracker.proof.accounts.accounthash.Summer` hashing in a child process (see the
    module), started once ``start_from`` messages came (fewer cost less than a process);
    ``close()`` when done. ``cancelled()`` (the check's) ends a wait on the child within
    :data:`LOOK_EVERY`: the proof is then not proven (:data:`CANCELLED`)."""

    def __init__(
        self, start_from: int | None = None, cancelled: Callable[[], bool] | None = None
    ) -> None:
        self._cancelled = cancelled
        self._local = np.zeros(LANES, dtype=np.uint16)
        self.sent = 0  # messages hashed by the child (the rest: here)
        self.in_place = 0  # of them, hashed where they were laid out (a shared slot)
        self.frames = 0  # batches written to the child: a slot's, or one through the pipe
        self._slot_bytes = SLOT_BYTES
        self._start_from = START_FROM if start_from is None else start_from
        self._seen = 0
        self._pending: list[memoryview] = []  # what the pipe has not taken yet of a frame
        self._failure: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._shared: mmap.mmap | None = None
        self._free: list[int] = []  # shared slots the child is done with
        self._lent: int | None = None  # the slot being filled (:meth:`room`), not sent yet
        self._filled = 0  # its bytes laid out so far
        self._lent_ends: list[npt.NDArray[np.int64]] = []  # their messages' ends in it
        self._lent_negative = False  # its messages are taken out of the sum, not added
        self._base = 0  # the address of the shared slots
        self._due = 0  # slots sent, not answered yet

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [_package_root(), *filter(None, [env.get("PYTHONPATH")])]
        )
        # numpy's OpenBLAS starts a thread a core at import, which the child never uses: one
        # thread halves the child's start-up CPU (0.15 -> 0.09 s)
        env["OPENBLAS_NUM_THREADS"] = "1"
        shared = shared_memory(SLOTS * self._slot_bytes)
        args = [sys.executable, "-m", "tracker.proof.accounts.hashworker"]
        try:
            if shared is not None:
                args += [str(shared), str(self._slot_bytes)]
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                close_fds=True,
                pass_fds=() if shared is None else (shared,),
                env=env,
                # a session of its own: a terminal's Ctrl-C or a signal to the command's
                # process group reaches the parent alone, never an interpreter starting up
                # (which would print "Fatal Python error" before it could ignore SIGINT)
                start_new_session=True,
            )
            if shared is not None:
                self._shared = mmap.mmap(shared, SLOTS * self._slot_bytes)
                whole = np.frombuffer(self._shared, dtype=np.uint8)
                self._base = whole.ctypes.data  # where the slots start, in this process
                del whole  # no view left: close() can unmap
                self._free = list(range(SLOTS))
        except (OSError, ValueError, TypeError) as exc:  # no interpreter to start, no fds left
            detail = getattr(exc, "strerror", None) or exc
            self._failure = f"the hashing process could not start: {detail}"
            return
        finally:
            if shared is not None:
                os.close(shared)  # the child has its own; the mapping keeps the memory
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):  # gone already: its failure shows at the first write
            mine = os.getpriority(os.PRIO_PROCESS, 0)
            os.setpriority(os.PRIO_PROCESS, self._proc.pid, min(19, mine + NICE))
        with contextlib.suppress(OSError):  # a smaller pipe: more waits, same result
            fcntl.fcntl(self._proc.stdin.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(self._proc.stdin.fileno(), False)

    def idle(self) -> bool:
        """True when a batch given now goes to the child at once (or starts it): the child
        took the last one whole; False while it is behind or after it failed."""
        if self._failure is not None:
            return False
        if self._proc is None:
            return True
        if not self._flush(wait=False) or self._failure is not None:
            return False
        if self._shared is None:
            return True
        self._answers(wait=False)  # behind while it hashes both slots
        return bool(self._free) and self._failure is None

    def room(self, size: int, negative: bool = False) -> npt.NDArray[np.uint8] | None:
        """See :class:`~tracker.proof.accounts.accounthash.Summer`: a free slot of the shared memory
        when the child runs and the batch fits in the slot being filled (whose messages have
        the same sign), or the child has taken the last frame and a slot is free (the one
        being filled is sent first)."""
        if self._lent is not None and (
            self._filled + size > self._slot_bytes or negative != self._lent_negative
        ):
            self._send_lent()
        if self._lent is None:
            if self._shared is None or size > self._slot_bytes or not self.idle():
                return None
            self._lent, self._filled = self._free.pop(), 0
            self._lent_negative = negative
        assert self._shared is not None  # a slot is lent only from the shared memory
        return np.frombuffer(
            self._shared,
            dtype=np.uint8,
            count=size,
            offset=self._lent * self._slot_bytes + self._filled,
        )

    def _send_lent(self) -> None:
        """Send the slot being filled (its header and its messages' ends; nothing when empty)."""
        lent, self._lent = self._lent, None
        ends, self._lent_ends = self._lent_ends, []
        filled, self._filled = self._filled, 0
        if lent is None:
            return
        if not ends:
            self._free.append(lent)
            return
        self._due += 1
        self.frames += 1
        joined = np.ascontiguousarray(np.concatenate(ends), dtype="<i8")
        kind = _NEGATIVE if self._lent_negative else _BATCH
        header = _HEADER.pack(kind, len(joined), filled, lent)
        self._pending.append(memoryview(header + joined.tobytes()))  # one write: a few KiB
        self._flush(wait=False)

    @property
    def pid(self) -> int | None:
        """The child's process id (None when it could not start)."""
        return None if self._proc is None else self._proc.pid

    def expect(self, count: int) -> None:
        """See :class:`~tracker.proof.accounts.accounthash.Summer`: the child starts once
        ``start_from`` messages are expected."""
        if self._proc is None and self._failure is None and count >= self._start_from:
            self._start()

    def add(
        self, work: npt.NDArray[np.uint8], ends: npt.NDArray[np.int64], negative: bool = False
    ) -> None:
        """Send the messages of ``work`` to be added to the sum (``negative``: taken out of
        it); hash them here instead while the child has not taken the last batch yet (or
        before it starts)."""
        if self._failure is not None:
            return
        self._seen += len(ends)
        lent = self._lent
        at = self._base + (lent or 0) * self._slot_bytes + self._filled
        if lent is not None and work.ctypes.data == at and negative == self._lent_negative:
            # laid out where the slot being filled ends: only the header and the ends go,
            # once the slot holds SEND_AT bytes (or the next batch does not fit, or the end)
            self.sent += len(ends)
            self.in_place += len(ends)
            self._lent_ends.append(np.asarray(ends, dtype=np.int64) + self._filled)
            self._filled += len(work)
            if self._filled >= SEND_AT:
                self._send_lent()
            return
        self.expect(self._seen)
        taken = self._proc is not None and self.idle()
        if self._failure is not None:
            return
        if not taken:  # not started, or behind: this batch is hashed here
            self._local = hash_sum_into(self._local, work, ends, negative)
            return
        self.sent += len(ends)
        self.frames += 1
        ends = np.ascontiguousarray(ends, dtype="<i8")
        header = _HEADER.pack(_NEGATIVE if negative else _BATCH, len(ends), len(work), -1)
        self._pending = [memoryview(header), ends.data.cast("B"), work.data.cast("B")]
        self._flush(wait=False)

    def total(self) -> tuple[Lanes | None, str | None]:
        """The sum of everything sent, and None; or None and why not."""
        if self._failure is None and self._proc is None:
            return self._local.copy(), None  # the child never started
        if self._failure is None and self._proc is not None:
            self._send_lent()
            self._flush(wait=True)
            self._answers(wait=True)  # before the end frame: the sum is all that comes after
            if self._failure is None:
                self._pending = [memoryview(_HEADER.pack(_END, 0, 0, -1))]
                self._flush(wait=True)
        if self._failure is not None or self._proc is None:
            return None, self._note()
        assert self._proc.stdout is not None
        ready = self._wait(self._proc.stdout.fileno(), select.POLLIN)
        answer = _read_exactly(self._proc.stdout, LT_HASH_BYTES) if ready else None
        if answer is None:
            self._failure = self._failure or self._ended()
            return None, self._note()
        return np.frombuffer(answer, dtype="<u2") + self._local, None

    @property
    def stopped(self) -> bool:
        """See :class:`~tracker.proof.accounts.accounthash.Summer`: it failed, or its child
        ended (it ends by itself only once told the end: the sum it held is lost). Asked
        from the walk of the second read while a lane may be handing the child a batch, so
        it only looks (the lane's next write finds the failure)."""
        proc = self._proc
        return self._failure is not None or (proc is not None and proc.poll() is not None)

    def close(self) -> None:
        """Stop the child (if it still runs) and wait for it; close the pipes."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        shared, self._shared = self._shared, None
        if shared is not None:
            with contextlib.suppress(BufferError):  # a batch's view still held: freed with it
                shared.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        self._failure = self._failure or "the hashing process was closed"

    def _flush(self, *, wait: bool) -> bool:
        """Write what is pending of the last frame into the pipe, waiting for the child to
        take it all when ``wait``; True once nothing is pending (or the child failed)."""
        assert self._proc is not None
        assert self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        try:
            while self._pending:
                view = self._pending[0]
                try:
                    written = os.write(fd, view)
                except BlockingIOError:
                    if not wait:
                        return False
                    if not self._wait(fd, select.POLLOUT):
                        if self._failure is not None:  # cancelled: close() kills it
                            self._pending = []
                            return True
                        self._proc.kill()  # stuck: the proof is lost, not the check
                        raise OSError("stalled") from None
                    continue
                if written == len(view):
                    self._pending.pop(0)
                else:
                    self._pending[0] = view[written:]
        except OSError:
            self._failure = self._ended()
            self._pending = []
        return True

    def _answers(self, *, wait: bool) -> None:
        """Take the child's answers for the shared slots it hashed (all of them when
        ``wait``): those slots are free again."""
        assert self._proc is not None
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while self._due and self._failure is None:
            if not (self._wait(fd, select.POLLIN) if wait else _ready(fd, select.POLLIN, 0)):
                # stuck, or the check cancelled: the proof is lost, not the check (close()
                # kills the child)
                if wait:
                    self._failure = self._failure or "the hashing process stopped answering"
                return
            try:
                answer = os.read(fd, self._due)
            except OSError:
                answer = b""
            if not answer or not self._sent_slots(answer):
                self._failure = self._ended() if not answer else "the hashing process misspoke"
                return
            self._free.extend(answer)
            self._due -= len(answer)

    def _sent_slots(self, answer: bytes) -> bool:
        """Whether ``answer`` names only slots sent to the child and not answered yet, each
        once: a slot answered twice would be lent twice, two batches laid out in it."""
        named = set(answer)
        return (
            len(named) == len(answer)
            and all(slot < SLOTS for slot in named)
            and not named & set(self._free)
            and self._lent not in named
        )

    def _wait(self, fd: int, events: int) -> bool:
        """True once ``fd`` is ready for ``events`` within :data:`STALLED` seconds; False when
        it is not, or once the check is cancelled (asked every :data:`LOOK_EVERY` seconds;
        then the failure is :data:`CANCELLED`)."""
        deadline = time.monotonic() + STALLED
        while True:
            if self._cancelled is not None and self._cancelled():
                self._failure = self._failure or CANCELLED
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if _ready(fd, events, min(LOOK_EVERY, left)):
                return True

    def _ended(self) -> str:
        assert self._proc is not None
        try:
            code = self._proc.wait(min(5.0, STALLED))
        except subprocess.TimeoutExpired:
            return "the hashing process stopped answering"
        return f"the hashing process ended ({how_ended(code)})"

    def _note(self) -> str:
        return f"not proven: {self._failure}"


class HashPool:
    """A :class:`~tracker.proof.accounts.accounthash.Summer` over several :class:`HashWorker`
    children (docs/architecture.md, "The accounts level" → "Every core"): each batch goes to
    the slot a child is filling when it fits there, else to the first child that took its last
    one whole, or is hashed here when all are behind. The
    sum is commutative (u16 lanes), so each child sums its own batches and :meth:`total` adds
    the children's partial sums. ``workers`` children at most, taken from ``slots`` (the
    processes a tracker's proofs share; None: as many as asked) and given back at
    :meth:`close`; zero when none is free: the check's process hashes alone. ``cancelled()``:
    the check's, as :class:`HashWorker`'s."""

    def __init__(
        self,
        workers: int,
        slots: WorkerSlots | None = None,
        start_from: int | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        self._slots = slots
        taken = slots.take(workers) if slots is not None else workers
        try:
            self._children = [HashWorker(start_from, cancelled) for _ in range(taken)]
        except BaseException:  # memory short: the slots go back, no pool to close them
            if slots is not None:
                slots.give(taken)
            raise
        self._local = np.zeros(LANES, dtype=np.uint16)
        self._next = 0
        self._lender: HashWorker | None = None

    @property
    def busy(self) -> int:
        """Children running now."""
        return sum(1 for child in self._children if child.pid is not None)

    @property
    def pid(self) -> int | None:
        """A child's process id (None while none runs)."""
        return next((child.pid for child in self._children if child.pid is not None), None)

    def room(self, size: int, negative: bool = False) -> npt.NDArray[np.uint8] | None:
        """See :class:`~tracker.proof.accounts.accounthash.Summer`: room in the slot a child is
        filling, or a free slot of an idle child; the next :meth:`add` goes to that child."""
        self._lender = None
        count = len(self._children)
        for step in range(count):
            child = self._children[(self._next + step) % count]
            room = child.room(size, negative)
            if room is not None:
                self._next = (self._next + step + 1) % count
                self._lender = child
                return room
        return None

    def expect(self, count: int) -> None:
        """See :class:`~tracker.proof.accounts.accounthash.Summer`: every child."""
        for child in self._children:
            child.expect(count)

    def add(
        self, work: npt.NDArray[np.uint8], ends: npt.NDArray[np.int64], negative: bool = False
    ) -> None:
        """See :class:`~tracker.proof.accounts.accounthash.Summer`."""
        lender, self._lender = self._lender, None
        if lender is not None:
            lender.add(work, ends, negative)
            return
        count = len(self._children)
        for step in range(count):
            child = self._children[(self._next + step) % count]
            if child.idle():
                self._next = (self._next + step + 1) % count
                child.add(work, ends, negative)
                return
        self._local = hash_sum_into(self._local, work, ends, negative)

    def total(self) -> tuple[Lanes | None, str | None]:
        """The children's partial sums and this process's, added; or None and the first
        child's note that failed."""
        total = self._local.copy()
        for child in self._children:
            part, note = child.total()
            if part is None:
                return None, note
            total += part
        return total, None

    @property
    def stopped(self) -> bool:
        """See :class:`~tracker.proof.accounts.accounthash.Summer`: a child stopped (its
        partial sum is lost, so is the total)."""
        return any(child.stopped for child in self._children)

    def close(self) -> None:
        """Stop every child; give their slots back."""
        for child in self._children:
            child.close()
        if self._slots is not None:
            self._slots.give(len(self._children))
        self._slots = None


def _ready(fd: int, events: int, timeout: float) -> bool:
    """True once ``fd`` is ready for ``events`` (or closed) within ``timeout`` seconds.
    ``poll``, not ``select``: a tracker serving a thousand connections has descriptors past
    ``select``'s 1,024, and a proof started then must still talk to its processes."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(timeout * 1000))


def _read_exactly(stream: IO[bytes], count: int) -> bytes | None:
    """``count`` bytes of ``stream``, or None when it ends first."""
    parts: list[bytes] = []
    left = count
    while left:
        part = stream.read(left)
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def shared_memory(size: int, name: str = "tracker-hashworker") -> int | None:
    """A file descriptor of ``size`` bytes of memory to share with a child, or None where
    there is no ``memfd_create`` (or no room): what would lie there then goes through the
    pipe."""
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return None
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        return None
    return fd


def serve(
    source: IO[bytes], sink: IO[bytes], shared: mmap.mmap | None = None, slot_bytes: int = 0
) -> int:
    """The child's loop: frames from ``source`` summed until the end frame, whose answer
    (the 2,048-byte sum) goes to ``sink``; a frame in a slot (of ``slot_bytes``) of
    ``shared`` is answered with the slot's number once hashed. Returns the exit status (2: a
    malformed frame)."""
    total = np.zeros(LANES, dtype=np.uint16)
    while True:
        header = _read_exactly(source, _HEADER.size)
        if header is None:
            return 1  # the parent went away
        kind, count, nbytes, slot = _HEADER.unpack(header)
        if kind == _END:
            return 0 if _answer(sink, total.astype("<u2").tobytes()) else 1
        if kind not in (_BATCH, _NEGATIVE) or count > MAX_MESSAGES or nbytes > MAX_BYTES:
            return 2
        if slot != -1 and (shared is None or not 0 <= slot < SLOTS or nbytes > slot_bytes):
            return 2
        raw_ends = _read_exactly(source, 8 * count)
        work: bytes | npt.NDArray[np.uint8] | None
        if slot == -1:
            work = _read_exactly(source, nbytes)
        else:  # hashed where the parent laid it out
            assert shared is not None
            work = np.frombuffer(shared, dtype=np.uint8, count=nbytes, offset=slot * slot_bytes)
        if raw_ends is None or work is None:
            return 1
        ends = np.frombuffer(raw_ends, dtype="<i8")
        if count and (int(ends[-1]) > nbytes or int(ends[0]) < 0 or (np.diff(ends) < 0).any()):
            return 2
        total = hash_sum_into(total, work, ends, kind == _NEGATIVE)
        if slot != -1:
            del work  # the slot is the parent's again
            if not _answer(sink, bytes([slot])):
                return 1


def _answer(sink: IO[bytes], data: bytes) -> bool:
    """Write ``data`` to the parent; False when it went away (the pipe closed: the tracker
    stopped mid-proof), as for an end of ``source``: a traceback on the tracker's stderr."""
    try:
        sink.write(data)
        sink.flush()
    except OSError:
        # what stays in the buffer goes nowhere: flushed at the interpreter's exit into the
        # closed pipe, its BrokenPipeError would be printed after all
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sink.fileno())
            os.close(devnull)
        return False
    return True


def _main(argv: list[str]) -> int:
    if not argv:
        return serve(sys.stdin.buffer, sys.stdout.buffer)
    # the shared memory's file descriptor and its slots' size, passed by the parent
    slot_bytes = int(argv[1])
    shared = mmap.mmap(int(argv[0]), SLOTS * slot_bytes)
    return serve(sys.stdin.buffer, sys.stdout.buffer, shared, slot_bytes)


if __name__ == "__main__":
    # Ctrl-C at a terminal reaches the whole process group: the parent decides when this
    # ends (it kills it, or closes the pipe).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(_main(sys.argv[1:]))


def how_ended(code: int) -> str:
    """How a child process ended, for an operator: its exit status, or the signal that
    killed it by name; a SIGKILL nobody here sent is most often the kernel's OOM killer,
    and the line says so (the fix is memory, not the archive). Pure."""
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        return f"killed by {name}: out of memory? (the kernel's OOM killer sends it)"
    return f"killed by {name}"
