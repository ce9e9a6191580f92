"""The first read's scan lanes: the threads a proof scans its storages in beside the reading
thread (docs/architecture.md, "The accounts level" → "Every core"). :func:`scan_lanes` says
how many a proof's limits give; an :class:`Apart` is one lane, running a storage's jobs in
order in a thread of its own; while any lane runs, the process's thread switch interval is
:data:`SWITCH_INTERVAL`. What a lane runs (the scan, the batches' bookkeeping under the lock
the lanes share) is :class:`tracker.proof.accounts.accountsproof.AccountsProof`'s."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable

from tracker.proof.accounts.budget import AccountsLimits

#: Hashing processes a scan lane keeps busy (:func:`scan_lanes`): measured in
#: bench/accounts.py, a lane takes ~0.2 CPU-s a million accounts, a hashing process ~1.15.
HASHERS_PER_LANE = 4
#: The most scan lanes of a check: past them, the lock their bookkeeping shares and a spilled
#: index's one writer are the floor (~0.03-0.04 and ~0.08 s a million; docs "Every core").
MAX_LANES = 4


def scan_lanes(limits: AccountsLimits) -> int:
    """The threads the first read scans storages in (:class:`Apart`, each with its batches'
    bookkeeping: the index, the hashing ahead), 0 for none: on two cores (``proof_workers``)
    the reading thread, the SHA-256's and the hashing process keep both busy already, and a
    fourth thread only takes turns with them; from three, one lane, and one more for each
    :data:`HASHERS_PER_LANE` hashing processes the budget pays for, up to :data:`MAX_LANES`
    (docs/architecture.md, "The accounts level" → "Every core")."""
    if limits.workers <= 2:
        return 0
    return min(MAX_LANES, max(1, -(-limits.hash_workers // HASHERS_PER_LANE)))


class Apart:
    """Jobs run in order in a thread of their own, at most :data:`QUEUED` waiting: a scan
    lane of the first read (the pieces of the storages it was given, scanned, and their
    batches' bookkeeping), so that the reading thread (the tar walk, which must follow the
    stream) does only what must be serial. What a job raises is raised by the next
    :meth:`put` or :meth:`settle`; the jobs after it are dropped. The thread ends once it has
    had nothing to do for :data:`IDLE` seconds (the next job starts another) and at
    :meth:`close`, which drops what waits."""

    #: Jobs waiting at most (unless told): each holds a storage's piece (~4 MiB).
    QUEUED = 4
    #: Seconds the thread waits for a job before it ends.
    IDLE = 1.0

    def __init__(self, queued: int | None = None) -> None:
        self._jobs: queue.Queue[Callable[[], None] | threading.Event | None] = queue.Queue(
            self.QUEUED if queued is None else queued
        )
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self.cpu = 0.0  # CPU seconds its threads used, added as each ends (bench/accounts.py)

    @property
    def waiting(self) -> int:
        """Jobs queued now (approximately: the thread takes them meanwhile)."""
        return self._jobs.qsize()

    def put(self, job: Callable[[], None]) -> None:
        """Queue ``job`` (waits while :data:`QUEUED` wait)."""
        self._raise()
        self._queue(job)

    def settle(self) -> None:
        """Wait until every job queued so far has run (at once in the thread itself)."""
        if threading.current_thread() is not self._thread:
            done = threading.Event()
            if self._queue(done):
                done.wait()
        self._raise()

    def close(self) -> None:
        """Drop the jobs that wait, end the thread (idempotent)."""
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._jobs.put(None)  # the thread drops what waits before it, then ends
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _queue(self, item: Callable[[], None] | threading.Event) -> bool:
        """Queue ``item`` with a thread to take it; False when closed."""
        with self._lock:
            if self._closed:
                return False
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="accounts-scan", daemon=True)
                thread.start()  # a pids limit raises here: no thread for close() to join
                self._thread = thread
            # under the lock: the thread ends only under it, when nothing is queued (a full
            # queue never waits on the lock: its thread is busy, not ending)
            self._jobs.put(item)
        return True

    def _raise(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        start = time.thread_time()
        try:
            with _QUICK_SWITCHES:
                self._take_jobs()
        finally:
            self.cpu += time.thread_time() - start

    def _take_jobs(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE)
            except queue.Empty:
                # Never wait for the lock here: its holder may be queueing into a full queue
                # that only this thread empties (both would wait for good). Held: a job is
                # on its way, take it.
                if not self._lock.acquire(blocking=False):
                    continue
                try:
                    if self._jobs.empty():
                        self._thread = None
                        return
                finally:
                    self._lock.release()
                continue
            if job is None:
                return
            if isinstance(job, threading.Event):
                job.set()  # every job before it has run (or was dropped)
            elif self._failure is None and not self._closed:
                try:
                    job()
                except BaseException as exc:  # raised in the reading thread (put, settle)
                    self._failure = exc


#: The interpreter's thread switch interval while scan lanes run, in seconds (Python's own is
#: 5 ms; 0: left as it is). A lane that took the lock the lanes share and let go of the GIL
#: (a compiled kernel, a copy, a write to a hashing process) waits for it again to go on: up
#: to the whole interval while another thread runs Python, the lock held all the while
#: (docs/architecture.md, "The accounts level" → "Every core").
SWITCH_INTERVAL = 0.0005


class _QuickSwitches:
    """The process's switch interval at :data:`SWITCH_INTERVAL` while one scan lane or more
    runs (process-wide, counted across proofs), the one it had back once none does."""

    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._running = 0
        self._saved = sys.getswitchinterval()

    def __enter__(self) -> None:
        with self._idle:
            if not self._running:
                self._saved = sys.getswitchinterval()
                if SWITCH_INTERVAL:
                    sys.setswitchinterval(min(self._saved, SWITCH_INTERVAL))
            self._running += 1

    def __exit__(self, *exc: object) -> None:
        with self._idle:
            self._running -= 1
            if not self._running:
                sys.setswitchinterval(self._saved)
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no lane runs; False if one still does after ``timeout`` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._running, timeout)


_QUICK_SWITCHES = _QuickSwitches()


def no_lanes_running(timeout: float) -> bool:
    """Wait until no scan lane of any proof runs in this process (each ends once idle for
    :attr:`Apart.IDLE` seconds, or when its proof is closed); False if one still does after
    ``timeout`` seconds."""
    return _QUICK_SWITCHES.wait_idle(timeout)
