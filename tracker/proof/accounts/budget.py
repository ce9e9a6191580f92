"""The memory budget of the accounts proofs, and what a running proof reports. Pure.

Level ``accounts`` keeps an index of every pubkey of a full (docs/architecture.md, "The
accounts level" → "Bounded memory"). Its memory is bounded by a budget in bytes
(``prove_accounts_memory``): :class:`MemoryBudget` is one budget, shared by every proof of a
process (the daemon's concurrent checks: groups, refreshes, the restore at start), and
:class:`BudgetShare` is one proof's part of it. A proof first waits for its floor (:func:`floor_of`:
what it needs to run at all, its run buffers), so that a check waits for room rather than
going over; past the floor it grows only while the budget has room, and spills to disk when it
has none, never waiting for another proof (two proofs waiting on each other would never end).

:class:`AccountsLimits` is what a check is given: the budget, the temporary directory, the
operator's optional bound on the accounts, the worker processes. :class:`ProofCounters` is what a
running proof reports (the status page and the metrics read :func:`running`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import threading
import time
import weakref
from collections.abc import Callable

import attrs

from tracker.proof.accounts.machine import (
    cgroup_cores,
    cgroup_memory,
    usable_cores,
    usable_memory,
)

#: The default budget of all accounts proofs of a process (``prove_accounts_memory``).
DEFAULT_MEMORY = 512 * 1024**2
#: Bytes of a proof that do not grow with the archive and are not in the accounted part: the
#: check's process (the interpreter, numpy, numba and the compiled kernels: ~190 MiB), its
#: hashing process (~35 MiB), the serial decoder's buffers (where it decodes ahead in a thread
#: of its own, :func:`decodes_ahead`, two decoded pieces more: ~18 MiB measured), the first
#: read's pieces waiting in its scan lanes (from three ``proof_workers``: four with one lane,
#: two a lane with more, each ~4 MiB or the decoded chunks it lies in: 14-29 MiB with one,
#: ~26 MiB more with four at 10 million accounts, docs/architecture.md "Every core"), the
#: raw chunks waiting for the blocks' BLAKE3 of a long second read's binding (at most three
#: of 4 MiB, ``proof.archive.binding``; the peaks measured the same with them at 1 and 10
#: million accounts); taken off the budget before the index's room (measured in
#: bench/accounts.py, 85 MiB to spare at 10 million accounts; docs/architecture.md,
#: "Bounded memory").
FIXED_COST = 320 * 1024**2
#: The smallest budget that bounds the proving processes too (:func:`bounds_the_process`):
#: its room, past a quarter of it, leaves :data:`FIXED_COST` (4/3 of it, 427 MiB).
PROCESS_MINIMUM = -(-FIXED_COST * 4 // 3 // 1024**2) * 1024**2
#: What each hashing process past the first costs (:data:`FIXED_COST` counts one): its
#: interpreter with blake3 and numpy (~37 MiB) and its four shared slots (16 MiB), measured in
#: bench/accounts.py.
WORKER_COST = 56 * 1024**2
#: What each thread decoding a check's zstd frames apart holds (the serial decoder, the one
#: thread of a check without them, is in :data:`FIXED_COST`): its frame's compressed bytes (at
#: most ``framedecode.MAX_FRAME``, 64 MiB; agave's ~15-30 MB), the decoder's window (at most
#: 8 MiB), its decoded pieces of 4 MiB (a frame of up to 32 MiB compressed keeps ten ready,
#: a larger one two: ``framedecode.queued_for``, at most 84 MiB in all either way), the
#: allocator's slack. Measured 60-77 MiB a thread with agave-sized frames and two pieces
#: ready (bench/accounts.py, ``--workers``: the check's VmHWM); ten ready took the check's
#: VmHWM on 16 cores from 1,017 to 1,115 MiB with three threads, ~33 MiB more a thread
#: (bench/README.md, "Level `accounts` on 16 cores again").
FRAME_THREAD_COST = 128 * 1024**2
#: The most threads a check decodes frames on: with two or three, decoding (~0.1 CPU-s a
#: million accounts a thread) is off the first read's floor, its reading thread (~0.14);
#: more would only hold memory (docs/architecture.md, "The accounts level" → "Every core").
MAX_FRAME_THREADS = 3
#: The hashing processes a budget pays for before any frame thread: as many as keep pace with
#: a first read whose frames are decoded apart (~1.15 CPU-s of hashing a million accounts
#: against ~0.15 s of the first read's reading thread; docs/architecture.md, "A mainnet
#: full"); past them, frame threads shorten the proof more than more hashing does.
PACED_HASHERS = 8
#: The hashing processes from which a check that decodes serially runs its decoder ahead in a
#: thread of its own (:func:`decodes_ahead`): six share a million accounts' ~1.15 CPU-s of
#: BLAKE3 in ~0.19 s, less than the first read's reading thread takes to decode and walk them
#: serially (~0.22 s), which is then its floor; with fewer the hashing is, and a thread more
#: only costs CPU (forced with two, 50 million accounts on two cores took 3.00 CPU-s a
#: million instead of 2.31).
AHEAD_FROM_HASHERS = 6
#: What each running check holds beside its index and is in no other cost: its raw chunks
#: read ahead (8 MiB), its decoder's window and pieces, its scan lanes' waiting pieces, its
#: second read's chunks and decoder. :data:`FIXED_COST` counts one check's; with several at
#: once (the tracker's groups, refreshes, local files) each holds this much of the budget
#: while it runs, so that the budget bounds the process tree however many run (six
#: concurrent hostile proofs took a tree to 585 MiB in 512 before; docs/architecture.md,
#: "The accounts level" → "Bounded memory"). Held only where the budget bounds the process
#: (:func:`bounds_the_process`).
CHECK_COST = 40 * 1024**2
#: The smallest floor of a proof: run buffers of a few thousand records.
MIN_FLOOR = 256 * 1024
#: The share of the machine's memory that ``prove_accounts_memory``'s default takes at most
#: (:func:`default_memory`).
MEMORY_SHARE = 8
#: The start of the name of a proof's spill directory (tracker.proof.accounts.spill).
PREFIX = "accounts-proof-"
#: The daemon's temporary directory of the proofs, inside its cache directory (a dot
#: directory: never a group's), and ``fetch``'s inside the ledger (which agave and
#: Firedancer, who purge only archive names and their own ``tmp-snapshot-archive-*``, leave
#: alone).
CACHE_TEMP = ".accounts-proof"
#: Seconds a spill directory without its lock file is left alone (a proof making it now).
LOCKLESS_GRACE = 60.0
#: The seconds between two looks at ``cancelled`` while a proof waits for room.
_POLL = 0.2


#: Processes a proof scans in: -1, as many as it has hashing processes from
#: :data:`SCAN_FROM_WORKERS` ``proof_workers`` on, none below; 0: none (the reading thread or
#: scan lanes scan, the hashing processes hash); N: at most N.
SCAN_PROCESSES = -1
#: ``proof_workers`` from which a proof scans in processes (``proof.accounts.scanprocs``) by
#: default: measured faster on 8 and 16 cores, slower on 2 (docs/architecture.md, "The
#: accounts level" → "Every core").
SCAN_FROM_WORKERS = 8
#: The most a proof scans in by default: on 16 cores the check's process fed 15 at 9-11 cores
#: in all; more were not measured, and each costs the budget its part and a start.
SCAN_MOST = 15


def floor_of(room: int) -> int:
    """The bytes a proof holds from its start in a budget whose accounted part is ``room``:
    an eighth of it (so that eight proofs can run at once), at least :data:`MIN_FLOOR`, at
    most the room."""
    return min(room, max(MIN_FLOOR, room // 8))


def bounds_the_process(total: int) -> bool:
    """True when a budget of ``total`` bytes bounds the proving processes, not only the
    index: its accounted room (:func:`room_of`) and :data:`FIXED_COST` fit in it. Below
    :data:`PROCESS_MINIMUM` the room is a quarter of the budget, and the interpreter, numpy,
    numba and the hashing process come on top of it (docs/architecture.md, "Bounded
    memory")."""
    return room_of(total) + FIXED_COST <= total


def room_of(total: int, hash_workers: int = 1, frame_threads: int = 0) -> int:
    """The accounted bytes of a budget of ``total`` whose proofs run ``hash_workers``
    hashing processes and decode on ``frame_threads`` threads apart: the budget less
    :data:`FIXED_COST`, :data:`WORKER_COST` for each process past the first and
    :data:`FRAME_THREAD_COST` for each frame thread, but never less than a quarter of it (a
    small budget, as in tests, still proves)."""
    paid = FIXED_COST + max(0, hash_workers - 1) * WORKER_COST + frame_threads * FRAME_THREAD_COST
    return max(total - paid, total // 4, MIN_FLOOR)


def paid_within(total: int, workers: int) -> tuple[int, int]:
    """The hashing processes and the frame threads apart a budget of ``total`` bytes pays
    for, for ``workers`` (``proof_workers``, the check's own process included): what they
    cost (:data:`WORKER_COST` each past the first, which :data:`FIXED_COST` counts;
    :data:`FRAME_THREAD_COST` each) takes at most half of what the budget leaves past
    :data:`FIXED_COST`, the other half staying the index's, so that the budget bounds the
    whole process tree on any number of cores (docs/architecture.md, "Bounded memory").

    In that half: hashing processes first, up to :data:`PACED_HASHERS`; then two or three
    frame threads (:data:`MAX_FRAME_THREADS`, one less than the workers: SHA-256 keeps a
    core; fewer than two: none, each check decodes serially); then the other hashing
    processes, up to one less than the workers (at least one)."""
    spare = max(0, total - FIXED_COST) // 2
    wanted = max(1, workers - 1)
    hashers = min(wanted, PACED_HASHERS, 1 + spare // WORKER_COST)
    spare -= (hashers - 1) * WORKER_COST
    frames = min(workers - 1, MAX_FRAME_THREADS, spare // FRAME_THREAD_COST)
    frames = frames if frames >= 2 else 0
    spare -= frames * FRAME_THREAD_COST
    hashers += min(wanted - hashers, spare // WORKER_COST)
    return max(1, hashers), frames


def shared_limits(total: int, workers: int) -> tuple[MemoryBudget, WorkerSlots, WorkerSlots]:
    """The one budget of ``total`` bytes, the hashing processes and the frame threads the
    proofs of a process share, for ``workers`` at most (``proof_workers``, the checks' own
    included)."""
    hash_workers, frames = paid_within(total, workers)
    budget = MemoryBudget(total, room_of(total, hash_workers, frames))
    return budget, WorkerSlots(hash_workers), WorkerSlots(frames)


class MemoryBudget:
    """``total`` bytes shared by the proofs of a process, of which ``room`` (default
    :func:`room_of`) are accounted; thread-safe."""

    def __init__(self, total: int, room: int | None = None) -> None:
        self.total = total
        self.room = room if room is not None else room_of(total)
        self._used = 0
        self._waiting = 0
        self._cond = threading.Condition()
        #: The most its proofs held at once, and the most one of them spilled at once.
        self.peak = 0
        self.spilled_peak = 0

    @property
    def used(self) -> int:
        """Bytes held by proofs now."""
        return self._used

    @property
    def waiting(self) -> int:
        """Proofs waiting for room now."""
        return self._waiting

    def wait_for(self, count: int, cancelled: Callable[[], bool] | None = None) -> bool:
        """Take ``count`` bytes (at most the room), waiting until they are free; False when
        ``cancelled()`` came true first (nothing taken)."""
        count = min(count, self.room)
        with self._cond:
            self._waiting += 1
            try:
                while self._used + count > self.room:
                    if cancelled is not None and cancelled():
                        return False
                    self._cond.wait(_POLL)
                self._used += count
                self.peak = max(self.peak, self._used)
                return True
            finally:
                self._waiting -= 1

    def try_take(self, count: int) -> bool:
        """Take ``count`` bytes if they are free now."""
        with self._cond:
            if self._used + count > self.room:
                return False
            self._used += count
            self.peak = max(self.peak, self._used)
            return True

    def give_back(self, count: int) -> None:
        """Free ``count`` bytes taken before."""
        with self._cond:
            self._used = max(0, self._used - count)
            self._cond.notify_all()


class BudgetShare:
    """One proof's part of a :class:`MemoryBudget`: :meth:`start` waits for the floor and
    the check's own :data:`CHECK_COST` (:attr:`reserved`, where the budget bounds the
    process), :meth:`grow_to` asks for more without waiting, :meth:`release` gives it all
    back. :attr:`bytes` is the index's part."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.floor = floor_of(budget.room)
        self.bytes = 0
        self.peak = 0
        reserved = CHECK_COST if bounds_the_process(budget.total) else 0
        #: the check's buffers, held apart from the index while the proof runs
        self.reserved = min(reserved, max(0, budget.room - self.floor))
        self._started = False

    def start(self, cancelled: Callable[[], bool] | None = None) -> bool:
        """Wait for the floor and the reserve; False when cancelled first."""
        if self._started:
            return True
        if not self.budget.wait_for(self.floor + self.reserved, cancelled):
            return False
        self._started = True
        self.bytes = min(self.floor, self.budget.room)
        self.peak = max(self.peak, self.bytes)
        return True

    def grow_to(self, count: int) -> bool:
        """Hold at least ``count`` bytes; False (nothing more taken) when the budget has no
        room for them now."""
        if count <= self.bytes:
            return True
        more = count - self.bytes
        if not self.budget.try_take(more):
            return False
        self.bytes = count
        self.peak = max(self.peak, count)
        return True

    def shrink_to(self, count: int) -> None:
        """Hold at most ``max(count, floor)`` bytes."""
        keep = max(count, min(self.floor, self.bytes))
        if keep < self.bytes:
            self.budget.give_back(self.bytes - keep)
            self.bytes = keep

    def release(self) -> None:
        """Give back everything held (idempotent)."""
        if self._started:
            self.budget.give_back(self.bytes + self.reserved)
            self.bytes = 0
            self._started = False


class FrameThreads:
    """The threads one check (or one second read) decodes zstd frames on (:attr:`count`),
    taken from the frame threads its limits' budget pays for (``limits.frames``, shared by
    the process's checks; none: its own), never waited for, and given back by
    :meth:`release` (idempotent). With fewer than two free: one, the serial decoder."""

    def __init__(self, limits: AccountsLimits | None) -> None:
        self.count = 1
        self._slots = limits.frames if limits is not None else None
        self._taken = 0
        wanted = limits.frame_threads if limits is not None else 0
        if wanted < 2:
            return
        taken = self._slots.take(wanted) if self._slots is not None else wanted
        if taken < 2:
            self._give(taken)
            return
        self.count = self._taken = taken

    def release(self) -> None:
        """Give the threads back."""
        self._give(self._taken)
        self._taken = 0

    def _give(self, count: int) -> None:
        if self._slots is not None and count:
            self._slots.give(count)


def scan_processes(limits: AccountsLimits) -> int:
    """The scan processes a proof within ``limits`` asks for (:data:`SCAN_PROCESSES`; by
    default at most :data:`SCAN_MOST`), at most its hashing processes' number
    (``proof_workers`` less one, less where the budget pays for fewer): both reads' hashing
    is theirs, the hashing processes then hash nothing. The budget may hold fewer still
    (``AccountsProof``)."""
    if SCAN_PROCESSES < 0:
        return min(limits.hash_workers, SCAN_MOST) if limits.workers >= SCAN_FROM_WORKERS else 0
    return min(SCAN_PROCESSES, limits.hash_workers)


def decodes_ahead(limits: AccountsLimits | None, frame_threads: int) -> bool:
    """Whether a check proving accounts within ``limits`` runs its serial decoder in a thread
    of its own, ahead of its reading thread (``framedecode.DecodeAhead``): when it decodes no
    frames apart (``frame_threads`` below two: a following check, or a budget that pays for
    none) and its budget pays for :data:`AHEAD_FROM_HASHERS` hashing processes or more, so
    that its reading thread, not the hashing, is the first read's floor (with fewer, the
    thread only takes turns with the others and costs CPU: docs/architecture.md, "The
    accounts level" → "Every core")."""
    return limits is not None and frame_threads < 2 and limits.hash_workers >= AHEAD_FROM_HASHERS


class WorkerSlots:
    """The worker processes the proofs of a process may run at once (``proof_workers`` less
    one: the check's own process is the first); thread-safe. A proof takes what is free now
    and never waits: with none, it hashes in its own process."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Slots taken now."""
        return self._used

    def take(self, want: int) -> int:
        """Up to ``want`` slots, as many as are free."""
        with self._lock:
            got = max(0, min(want, self.total - self._used))
            self._used += got
            return got

    def give(self, count: int) -> None:
        """Free ``count`` slots taken before."""
        with self._lock:
            self._used = max(0, self._used - count)


@attrs.define(eq=False, weakref_slot=True)
class ProofCounters:
    """What one running proof has done so far (read by other threads: plain counters)."""

    records: int = 0
    bytes: int = 0
    hashed: int = 0
    spilled: int = 0
    held: int = 0
    workers_busy: int = 0


_RUNNING: weakref.WeakSet[ProofCounters] = weakref.WeakSet()
_RUNNING_LOCK = threading.Lock()


def track(progress: ProofCounters) -> None:
    """Count ``progress`` among the running proofs until :func:`untrack`."""
    with _RUNNING_LOCK:
        _RUNNING.add(progress)


def untrack(progress: ProofCounters) -> None:
    """The proof of ``progress`` ended."""
    with _RUNNING_LOCK:
        _RUNNING.discard(progress)


def running() -> list[ProofCounters]:
    """The proofs running in this process now."""
    with _RUNNING_LOCK:
        return list(_RUNNING)


def beyond_the_machine(memory: int, usable: int | None = None) -> str:
    """Why ``memory`` cannot be the proofs' budget here ("" when it can): more than this
    process may use (``usable``; default :func:`.machine.usable_memory`, the machine's or
    its container's limit; not known: no bound). A budget the machine cannot give made a
    proof's first allocation fail, and that MemoryError was the archive's rejection: a good
    copy deleted as bad."""
    usable = usable_memory() if usable is None else usable
    if usable and memory > usable:
        return f"more than the {usable // 1024**2} MiB of memory this process may use"
    return ""


def default_memory(workers: int | None = None, ram: int | None = None) -> int:
    """``prove_accounts_memory``'s default on a machine of ``workers`` cores (default: this
    one's, :func:`default_workers`) and ``ram`` bytes of memory (default: what this process
    may use, a container's limit included: :func:`.machine.usable_memory`): the
    smallest budget that pays (:func:`paid_within`) for a hashing process on every core but
    the check's own and for the frame threads (two or three, one less than the cores), with
    as much again for the index; at least :data:`DEFAULT_MEMORY`, at most a
    :data:`MEMORY_SHARE`-th of the memory (but never below :data:`DEFAULT_MEMORY`). 512 MiB
    on 2 cores, 1,312 MiB on 4, 2,656 MiB on 16 (docs/architecture.md, "The accounts level"
    → "Bounded memory")."""
    cores = workers if workers is not None else default_workers()
    hashers = max(1, cores - 1)
    frames = min(MAX_FRAME_THREADS, cores - 1) if cores - 1 >= 2 else 0
    paid = (hashers - 1) * WORKER_COST + frames * FRAME_THREAD_COST
    wanted = FIXED_COST + 2 * paid
    memory = ram if ram is not None else usable_memory()
    share = memory // MEMORY_SHARE if memory else wanted
    mib = 1024**2
    return max(DEFAULT_MEMORY, -(-min(wanted, share) // mib) * mib)


#: What the tracker needs beside its proofs' budget (serving, the scrape, their buffers):
#: README.md's figures measured 88 MB of peak RSS serving 200 downloads at once and 100 MB
#: with 3,000 discovered nodes; this leaves room to spare.
BESIDE_PROOFS = 256 * 1024**2


def limit_problem(budget: int, limit: int | None) -> str:
    """Why a proofs' ``budget`` may take the tracker past its cgroup's memory ``limit``
    (None: no limit), where the kernel kills it: less than :data:`BESIDE_PROOFS` is left
    beside it ("" when the limit leaves that)."""
    if limit is None or budget + BESIDE_PROOFS <= limit:
        return ""
    mib = 1024**2
    return (
        f"{budget // mib} MiB leaves the tracker less than {BESIDE_PROOFS // mib} MiB of its"
        f" cgroup's {limit // mib} MiB memory limit: a proof can take it past the limit,"
        " where the kernel kills it; give the cgroup more memory or set a smaller"
        " prove_accounts_memory"
    )


def derived_from(workers: int) -> str:
    """What the defaults were derived from, as ``check-config`` and the daemon's start say
    it: ``workers`` cores and the memory this process may use, and the limits of its
    cgroup that bounded them (a container's: :mod:`.machine`)."""
    bounds = [
        what
        for what, limit in (("CPU quota", cgroup_cores()), ("memory limit", cgroup_memory()))
        if limit is not None
    ]
    within = f", within its cgroup's {' and '.join(bounds)}" if bounds else ""
    cores = f"{workers} core{'' if workers == 1 else 's'}"
    return f"{cores} and {usable_memory() / 1024**3:.0f} GiB of memory{within}"


def default_workers() -> int:
    """``proof_workers``'s default: the cores this process may use (its CPU affinity's, at
    most what its container's CPU quota is worth: :func:`.machine.usable_cores`)."""
    return usable_cores()


@attrs.frozen
class AccountsLimits:
    """How a check proves a full's accounts (docs/architecture.md, "The accounts level"):
    ``budget`` (shared by the process's proofs; None: one of ``memory`` bytes for this proof
    alone), ``temp_dir`` (where the index spills; None: the system's temporary directory),
    ``max_accounts`` (the operator's bound: over it the archive stays at ``manifest``; None:
    no bound), ``workers`` (``proof_workers``: processes at most, the check's own included),
    ``slots`` (the worker processes shared by the process's proofs; None: this proof's own),
    ``keep_free`` (bytes the spill leaves free on its file system: the cache's
    ``proxy_snapshot_cache_min_free`` when it spills there), ``frames`` (the threads apart
    that the process's checks decode zstd frames on, shared; None: this check's own),
    ``reserve`` (asked before each write of the spill: bytes more it leaves free, those a
    download on its file system has still to put on disk, as ``fetch``'s beside the ledger's
    archive; None: none)."""

    memory: int = DEFAULT_MEMORY
    max_accounts: int | None = None
    temp_dir: str | None = None
    workers: int = attrs.field(factory=default_workers)
    budget: MemoryBudget | None = attrs.field(default=None, eq=False)
    slots: WorkerSlots | None = attrs.field(default=None, eq=False)
    keep_free: int = 0
    frames: WorkerSlots | None = attrs.field(default=None, eq=False)
    reserve: Callable[[], int] | None = attrs.field(default=None, eq=False)

    @property
    def hash_workers(self) -> int:
        """Hashing processes a proof may start: ``workers`` less the check's own, at least
        one (on one core the child still halves the check's wait), as many as its budget
        pays for (:func:`paid_within`)."""
        return paid_within(self._total, self.workers)[0]

    @property
    def frame_threads(self) -> int:
        """Threads apart a check may decode zstd frames on (0: serially), as many as its
        budget pays for (:func:`paid_within`)."""
        return paid_within(self._total, self.workers)[1]

    @property
    def _total(self) -> int:
        """The bytes of the budget its proofs share."""
        return self.budget.total if self.budget is not None else self.memory

    def shared(self) -> MemoryBudget:
        """The budget a proof takes its part of."""
        if self.budget is not None:
            return self.budget
        return MemoryBudget(
            self.memory, room_of(self.memory, self.hash_workers, self.frame_threads)
        )


def clean_leftovers(root: str) -> int:
    """Delete the spill directories under ``root`` that no running proof holds (left by a
    process killed in the middle); returns how many. Only this user's own directories, not
    links, and their lock files opened without following a link or waiting (``root`` may
    be the system's shared temporary directory: another user's directory, or a lock file
    made a FIFO, must cost nothing)."""
    removed = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(PREFIX):
            continue
        path = os.path.join(root, name)
        try:
            found = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid():
            continue
        try:
            fd = os.open(
                os.path.join(path, "lock"),
                os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
            )
        except FileNotFoundError:
            # made and not locked yet (another proof starting now), or half removed
            if _younger_than(path, LOCKLESS_GRACE):
                continue
            fd = -1
        except OSError:
            continue
        try:
            if fd >= 0 and not stat.S_ISREG(os.fstat(fd).st_mode):
                continue  # no lock a proof of ours made: not ours to remove
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a running proof holds it
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        finally:
            if fd >= 0:
                os.close(fd)
    return removed


def _younger_than(path: str, seconds: float) -> bool:
    """True when ``path`` changed within ``seconds`` (or is gone already)."""
    try:
        return time.time() - os.stat(path).st_mtime < seconds
    except OSError:
        return True
