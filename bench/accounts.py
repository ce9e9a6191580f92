"""The ``accounts`` level's cost: the archive check proving it vs its unavoidable parts.

    .venv/bin/python bench/accounts.py                 # 1,000,000 accounts (~3 minutes)
    .venv/bin/python bench/accounts.py --accounts 200000 --runs 1
    .venv/bin/python bench/accounts.py --accounts 5900000 --plain   # the plain check, 1 GiB

It builds (under ``--out``, ``bench/out/`` by default, kept for later runs) a ``.tar.zst``
snapshot archive whose storages hold ``--accounts`` distinct accounts, written with
:func:`tracker.proof.formats.writing.write_storage` and a manifest listing them with their
lattice hash (its name carries the hash): most with 165 bytes of data (token accounts), one in
ten 0 to 2,000 random bytes; 5% of them stored twice (an older version in an older slot), 2%
closed (their newest version has zero lamports, an older one has some); a storage a slot of
~5,000 accounts, in ascending slot order as agave writes them (so every older version comes
first and needs the second read); a zstd frame every 32 MiB of tar. Then, each in a process of
its own, ``--runs`` times in alternating order (the best of each side is kept):

- ``baseline``: SHA-256 of the archive file, and the BLAKE3 XOF (2,048 bytes) of every newest
  account with lamports, from ready messages, in the fastest tight loop measured (one hasher
  reset a message): what no proof can do without. The loop of earlier figures (a new hasher a
  message, ~11% slower) is timed too, and the ratios against it printed as well;
- ``proof``: ``tracker.proof.archive.archivecheck.check_file(path, prove_accounts=limits)``, with
  ``--memory`` as its budget (``prove_accounts_memory``; the index spills to ``--out``'s
  ``tmp`` past it): the whole check (SHA-256 in its reading thread, zstd, the tar walk, the
  manifest level) with the accounts level and its second read, which must reach
  ``accounts``; its CPU time counts its hash worker process's. What a process pays once
  before its first proof (numba imported, the compiled kernels loaded from numba's cache) is
  timed apart, not in the ratio: the tracker proves many archives in one process.

With ``--paced MBPS``, each run also times what a refresh sees (``paced``): the check
following the archive's bytes as they arrive at MBPS MB/s (``check_stream`` reading the file
at that pace, as it follows a download), and how long after the last byte its first read ends
(a refresh's readers get their last bytes then) and the proof ends (the copy is promoted).
``--per-storage N`` builds storages of N accounts instead of ~5,000 (agave's ancient storages,
~128 MiB, hold ~500,000): storages of many batches, which the first read hashes ahead batch by
batch. ``--workers N`` is the proof's ``proof_workers`` (default: this machine's cores); from
3, the first read scans the storages in scan lanes (threads of their own, with their batches'
bookkeeping) and the frames are decoded apart. It prints the CPU seconds a million accounts of
the first read's reading thread, of its lanes together and of their part under the lock they
share: on a host of many cores, the largest of the reading thread, the lanes' share each and
the locked part is the first read's floor.

``--plain`` times only the plain check: ``snapshot-tracker verify --prove-accounts-max 1000``
of the archive, which stops at ``manifest`` (over the bound), against ``openssl dgst -sha256``
of the file (at 5,900,000 accounts the archive is ~1.07 GB in 33 zstd frames); ``tracker/`` is
byte-compiled first, as an install leaves it.

It prints the ratio proof / baseline (the targets: 1.0 wall, 2.0 CPU) in wall and CPU time, seconds
per million accounts and per GB of storages, the peak memory (VmHWM) of the check's process and of
its hash worker (their sum: the process tree's peak at most), the most the proof held of its
budget, and the peak of its spilled index on disk (docs/architecture.md, "Bounded memory").
For each stage (the first read, the partitions' sort, the second read) it also prints the
cores each thread used, by name, sampled every 50 ms, with the other processes together: a
thread near 1.00 is what holds that stage on a host of more cores.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import blake3
import numpy as np

if __package__ in (None, ""):  # run as a script: make `tests` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.manyaccounts import build_archive, storages
from bench.procwatch import PeakWatch
from bench.procwatch import direct_children as _direct_children
from bench.procwatch import peak_rss as _peak_rss
from tracker.config.values import parse_size
from tracker.proof.accounts import scanprocs
from tracker.proof.accounts.accountsproof import AccountsProof, Reread
from tracker.proof.accounts.budget import (
    AccountsLimits,
    default_memory,
    default_workers,
    scan_processes,
    shared_limits,
)
from tracker.proof.archive.archivecheck import READ_SIZE, check_file, check_stream
from tracker.proof.archive.reread import accounts_prover, proving

SLOT = 400_000_000
#: ``--set`` what-ifs, passed on to the measured processes
SETS: list[str] = []


def _what_if(assignment: str) -> None:
    """``MODULE.NAME=NUMBER``: a constant of ``tracker.proof.MODULE`` set (``--set``), to
    measure what another value would do before it is made the default; ``switchinterval=S``:
    the interpreter's thread switch interval."""
    import importlib

    target, _, value = assignment.partition("=")
    if target == "switchinterval":  # the interpreter's (sys.setswitchinterval), in seconds
        sys.setswitchinterval(float(value))
        return
    module, _, name = target.rpartition(".")
    owner = importlib.import_module(f"tracker.proof.{module}")
    if not hasattr(owner, name):
        raise SystemExit(f"--set: tracker.proof.{module} has no {name}")
    setattr(owner, name, float(value) if "." in value else int(value))


def build(
    out: Path, accounts: int, *, heavy: bool = False, per: int | None = None, processes: int = 1
) -> Path:
    """The archive (``bench/manyaccounts.py``: made storage by storage, in bounded memory, in
    ``processes`` parts at once), built unless there; ``per``: accounts a storage."""
    base = out / f"accounts-{accounts}{'-heavy' if heavy else ''}{f'-per{per}' if per else ''}"
    if (base / "meta.json").exists():
        return base
    t0 = time.perf_counter()
    meta = build_archive(base, SLOT, accounts, accounts, heavy=heavy, per=per, processes=processes)
    meta |= {"heavy": heavy, "seed": accounts, "built_in": time.perf_counter() - t0}
    (base / "meta.json").write_text(json.dumps(meta))
    return base


def _messages(meta: dict[str, Any]) -> Any:
    """The newest accounts' messages and their ends, a storage (made again by the builder's
    generator) or a part of the build (read from the files it left, ``messages`` in
    ``meta``) at a time."""
    if "messages" not in meta:
        for storage in storages(meta["seed"], meta["accounts"], heavy=meta["heavy"]):
            yield storage.messages, storage.ends
        return
    for first in meta["messages"]:
        blob = (meta["base"] / f"messages-{first}.bin").read_bytes()
        yield blob, np.load(meta["base"] / f"ends-{first}.npy")


def baseline(base: Path, one_loop: bool = False) -> dict[str, Any]:
    """SHA-256 of the file, then the tight loop of BLAKE3 XOFs over the newest accounts'
    messages, made again storage by storage by the builder's generator or read from the
    build's files (only the hashing is timed: the messages are in memory, as a proof's are
    after its decoding). ``one_loop``: the earlier loop (a new hasher a message) not timed."""
    meta = json.loads((base / "meta.json").read_text())
    t0, c0 = time.perf_counter(), time.process_time()
    sha = hashlib.sha256()
    with open(base / meta["archive"], "rb", buffering=0) as file:
        while data := file.read(READ_SIZE):
            sha.update(data)
    sha_wall, sha_cpu = time.perf_counter() - t0, time.process_time() - c0
    # The yardstick is the fastest single-thread loop measured: one hasher reset for each
    # message. The loop of the earlier figures, a new hasher a message
    # (``blake3.blake3(view[a:b]).digest(2048)``), ~11% slower, is timed too ("new_hasher").
    hasher = blake3.blake3()
    reset, update, digest = hasher.reset, hasher.update, hasher.digest
    new = blake3.blake3
    wall = cpu = new_wall = new_cpu = 0.0
    hashed = 0
    meta["base"] = base
    for messages, message_ends in _messages(meta):
        view = memoryview(messages)
        ends = message_ends.tolist()
        starts = [0, *ends[:-1]]
        t1, c1 = time.perf_counter(), time.process_time()
        for a, b in zip(starts, ends, strict=True):
            reset()
            update(view[a:b])
            digest(2048)
        t2, c2 = time.perf_counter(), time.process_time()
        for a, b in zip(starts, ends, strict=True) if not one_loop else ():
            new(view[a:b]).digest(2048)
        wall += t2 - t1
        cpu += c2 - c1
        new_wall += time.perf_counter() - t2
        new_cpu += time.process_time() - c2
        hashed += len(ends)
    return {
        "sha256": sha_wall,
        "blake3": wall,
        "cpu": sha_cpu + cpu,
        "blake3_new_hasher": new_wall,
        "cpu_new_hasher": sha_cpu + new_cpu,
        "hashed": hashed,
    }


def prove(base: Path, memory: int, workers: int) -> dict[str, Any]:
    """The archive check with level ``accounts``, timed: its one pass and the second read,
    its CPU time with its hash worker's. First, untimed, what a process pays once: numba
    imported, the compiled kernels loaded (``kernels.warm_up``), and with scan processes
    their forkserver started (``scanprocs.warm``), timed on its own."""
    meta = json.loads((base / "meta.json").read_text())
    path = base / meta["archive"]
    w0 = time.perf_counter()
    from tracker.proof.formats import kernels

    kernels.warm_up()
    if scan_processes(_limits(memory, base, workers)):
        scanprocs.warm()
    once = time.perf_counter() - w0
    watch = PeakWatch()  # in a process of its own: no turn at this one's GIL
    watch.start()
    temp = base / "tmp"
    temp.mkdir(exist_ok=True)
    limits = _limits(memory, temp, workers)
    budget = limits.shared()
    threads = _FirstRead()
    stages = _Stages()
    waits = _Waits()
    timeline = _Timeline()
    timeline.start()
    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
    with threads, stages, waits:
        verified = check_file(str(path), prove_accounts=limits)
    t1, c1, k1 = time.perf_counter(), time.process_time(), _children_cpu()
    watch.stop()
    timeline.stop()
    finish = next((a for stage, a, _b in stages.spans if stage == "finish"), t1)
    by_stage = [("first read", t0, finish)] + [
        (stage, a, b) for stage, a, b in stages.spans if stage in ("sort", "second read")
    ]
    return {
        "timeline": [(t - t0, cores) for t, cores in timeline.cores()],
        "spans": [(stage, a - t0, b - t0) for stage, a, b in stages.spans],
        "busiest": [(stage, timeline.busiest(a, b)) for stage, a, b in by_stage],
        "check": t1 - t0,
        # the scan processes are the forkserver's children, not this process's: they tell
        # their CPU themselves
        "cpu": c1 - c0 + k1 - k0 + threads.scanning,
        "worker_cpu": k1 - k0,
        "scan_cpu": threads.scanning,
        "once": once,
        "level": verified.proof.level.label,
        "note": verified.proof.note,
        "max_rss": _peak_rss("self"),
        "worker_max_rss": watch.peak,
        "tree_pss_peak": watch.pss_peak,
        "workers": len(watch.peaks),
        "budget": memory,
        "held_peak": budget.peak,
        "spill_peak": budget.spilled_peak,
        "workers_limit": workers,
        "first_reading_cpu": threads.reading,
        "first_bookkeeping_cpu": threads.bookkeeping,
        "first_locked_cpu": threads.locked,
        "scan_lanes": threads.lanes,
        "threads_cpu": stages.threads,
        "stages_cpu": stages.stages,
        "waits": waits.table(),
    }


class _Stages(contextlib.AbstractContextManager["_Stages"]):
    """The CPU seconds of each thread of the check by its name (the numbers of a pool's
    threads left out: ``zstd-frame``, ``accounts-dedup`` summed), taken as each thread ends,
    and the check's own thread's split by stage: the first read (up to
    :meth:`AccountsProof.finish`), the partitions' sort (``SpillIndex.superseded_runs``), the
    second read (``hash_newest``: its walk, layout and what it hashes itself), the rest."""

    def __init__(self) -> None:
        self.threads: dict[str, float] = {}
        self.stages: dict[str, float] = {}
        #: (stage, wall start, wall end) of each patched call, in the order they ended
        self.spans: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()
        self._saved: list[tuple[Any, str, Any]] = []

    def _add(self, table: dict[str, float], key: str, cpu: float) -> None:
        with self._lock:
            table[key] = table.get(key, 0.0) + cpu

    def _patch(self, owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        add, stages = self._add, self.stages

        spans = self.spans

        def timed(*args: Any, **kwargs: Any) -> Any:
            start, began = time.thread_time(), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                add(stages, stage, time.thread_time() - start)
                if stage != "hashed here":  # one call each, not one a batch
                    spans.append((stage, began, time.perf_counter()))

        setattr(owner, name, timed)

    def __enter__(self) -> _Stages:
        from tracker.proof.accounts import accountsproof
        from tracker.proof.accounts.spill import SpillIndex

        run = threading.Thread.run
        self._saved.append((threading.Thread, "run", run))
        add, threads = self._add, self.threads

        def counted(thread: threading.Thread) -> None:
            start = time.thread_time()
            try:
                run(thread)
            finally:
                add(threads, thread.name.rstrip("0123456789_-"), time.thread_time() - start)

        threading.Thread.run = counted  # type: ignore[method-assign,assignment]
        self._patch(SpillIndex, "superseded_runs", "sort")
        self._patch(accountsproof, "hash_newest", "second read")
        self._patch(AccountsProof, "finish", "finish")
        from tracker.proof.accounts import accounthash, hashworker

        # what the check's process hashes itself (all hashing processes behind)
        self._patch(accounthash, "hash_sum_into", "hashed here")
        self._patch(hashworker, "hash_sum_into", "hashed here")
        self._start = time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.threads["check (all stages)"] = time.thread_time() - self._start
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)


class _Waits(contextlib.AbstractContextManager["_Waits"]):
    """The wall seconds the check's own thread (the one that walks the archive) waited, in
    each read, for what feeds it and for where it hands on: the raw chunks (``raw``), the
    decoded frames (``decoded``), a free slot of the scan process a piece goes to (``slot``,
    with the room to send under ``scanprocs.UNSENT_BYTES``: ``unsent`` alone). What the
    thread waits for most is what holds a read on a host of many cores."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = {}
        self._second = False
        self._saved: list[tuple[Any, str, Any]] = []
        self._thread = threading.get_ident()

    def _patch(self, owner: Any, name: str, what: str) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        seconds, me = self.seconds, self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != me._thread:
                return original(*args, **kwargs)
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                key = ("second read" if me._second else "first read", what)
                seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - began

        setattr(owner, name, timed)

    def __enter__(self) -> _Waits:
        import queue as queues

        from tracker.proof.accounts import accountsproof, scanprocs
        from tracker.proof.archive import archivecheck, framedecode, reread

        self._thread = threading.get_ident()
        me = self

        class Timed(queues.Queue[object]):
            def get(self, block: bool = True, timeout: float | None = None) -> object:
                if threading.get_ident() != me._thread:
                    return super().get(block, timeout)
                began = time.perf_counter()
                try:
                    return super().get(block, timeout)
                finally:
                    key = ("second read" if me._second else "first read", "decoded")
                    me.seconds[key] = me.seconds.get(key, 0.0) + time.perf_counter() - began

        shim = types.SimpleNamespace(Queue=Timed, Full=queues.Full, Empty=queues.Empty)
        self._saved.append((framedecode, "queue", getattr(framedecode, "queue")))  # noqa: B009
        setattr(framedecode, "queue", shim)  # noqa: B010
        self._patch(archivecheck._Prefetch, "next", "raw")
        self._patch(reread._Frames, "_next", "decoded")
        self._patch(scanprocs._Process, "send_piece", "slot")
        self._patch(scanprocs._Process, "send_storages", "slot")
        self._patch(scanprocs._Unsent, "take", "unsent")
        hash_newest = getattr(accountsproof, "hash_newest")  # noqa: B009
        self._saved.append((accountsproof, "hash_newest", hash_newest))

        def second(*args: Any, **kwargs: Any) -> Any:
            me._second = True
            return hash_newest(*args, **kwargs)

        setattr(accountsproof, "hash_newest", second)  # noqa: B010
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)

    def table(self) -> list[tuple[str, str, float]]:
        """(read, what, wall seconds) of each wait."""
        return [(read, what, wall) for (read, what), wall in sorted(self.seconds.items())]


class _FirstRead(contextlib.AbstractContextManager["_FirstRead"]):
    """The CPU of the first read's threads: the reading thread's (the check's calling thread,
    up to :meth:`AccountsProof.finish`, which it calls once the walk is over), the scan
    lanes' together (``AccountsProof.bookkeeping_cpu``: 0 when they ran in the reading one)
    and their part under the lock they share (``locked_cpu``), how many lanes, and the scan
    processes' CPU where the first read scanned in them (``scan_cpu``)."""

    def __init__(self) -> None:
        self.reading = 0.0
        self.bookkeeping = 0.0
        self.locked = 0.0
        self.lanes = 0
        self.scanning = 0.0  # the scan processes' (``accounts.scanprocs``), when they ran
        self._finish = AccountsProof.finish

    def __enter__(self) -> _FirstRead:
        start = time.thread_time()
        finish = self._finish

        def timed(proof: AccountsProof, reread: Reread | None) -> tuple[bytes | None, str | None]:
            self.reading = time.thread_time() - start
            try:
                return finish(proof, reread)
            finally:
                self.bookkeeping = proof.bookkeeping_cpu
                self.locked = proof.locked_cpu
                self.lanes = proof.lanes
                self.scanning = proof.scan_cpu

        AccountsProof.finish = timed  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        AccountsProof.finish = self._finish  # type: ignore[method-assign]


def paced(base: Path, memory: int, rate: float, workers: int) -> dict[str, Any]:
    """The check following the archive's bytes as they arrive at ``rate`` MB/s: seconds from
    the last byte to the end of its first read and to its verdict (``kernels.warm_up`` first,
    untimed, as in :func:`prove`)."""
    from tracker.proof.formats import kernels

    kernels.warm_up()
    meta = json.loads((base / "meta.json").read_text())
    path = str(base / meta["archive"])
    temp = base / "tmp"
    temp.mkdir(exist_ok=True)
    limits = _limits(memory, temp, workers)
    first: list[float] = []
    last = [0.0]
    with open(path, "rb", buffering=0) as raw:
        sent = 0
        t0 = time.perf_counter()

        def read(size: int) -> bytes:
            nonlocal sent
            wait = t0 + sent / (rate * 1e6) - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            data = raw.read(min(size, 1 << 20))
            sent += len(data)
            if not data:
                last[0] = time.perf_counter()
            return data

        accounts = accounts_prover(meta["archive"], limits, path)
        with proving(accounts):
            verified = check_stream(
                read,
                meta["archive"],
                accounts=accounts,
                first_read=lambda _: first.append(time.perf_counter()),
            )
        done = time.perf_counter()
    return {
        "arrival": last[0] - t0,
        "first_read_after": first[0] - last[0],
        "proven_after": done - last[0],
        "level": verified.proof.level.label,
    }


def _limits(memory: int, temp: Path, workers: int) -> AccountsLimits:
    """The proof's limits as ``verify`` and ``fetch`` make them (``fetch.flags``): one budget
    of ``memory`` bytes with the hashing processes and frame threads it pays for."""
    budget, slots, frames = shared_limits(memory, workers)
    return AccountsLimits(
        memory=memory,
        temp_dir=str(temp),
        workers=workers,
        budget=budget,
        slots=slots,
        frames=frames,
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: The name of the other processes' part in :attr:`_Timeline.threads` (the hashing or scan
#: processes together).
PROCESSES = "processes (together)"
#: The check runs in the bench's main thread.
CHECKS = {"MainThread": "check's thread"}


class _Timeline(threading.Thread):
    """The cores the process tree (this process and its children, the hashing processes)
    used, sampled every 50 ms from /proc: where a proof leaves cores idle, and when; and each
    thread of this process by its name (a pool's numbers left out) with the other processes
    together, at the same samples (:meth:`busiest`: which thread bounds each stage)."""

    def __init__(self) -> None:
        super().__init__(name="bench-timeline", daemon=True)
        self.samples: list[tuple[float, float]] = []
        #: at each sample: each thread's CPU seconds so far, by native id, and its name
        self.threads: list[dict[int, tuple[str, float]]] = []
        self._done = threading.Event()
        self._last: dict[str, int] = {}
        self._ticks = os.sysconf("SC_CLK_TCK")

    def _cpu(self, pid: str) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime

    def run(self) -> None:
        total = children = 0
        while True:
            for pid in ["self", *_direct_children()]:
                with contextlib.suppress(OSError, IndexError, ValueError):  # it ended
                    now = self._cpu(pid)
                    # a child's CPU counts from 0 (it began with the check), this process's
                    # from the first sample
                    step = max(0, now - self._last.get(pid, now if pid == "self" else 0))
                    total += step
                    children += step if pid != "self" else 0
                    self._last[pid] = now
            self.samples.append((time.perf_counter(), total / self._ticks))
            self.threads.append(self._by_thread(children / self._ticks))
            if self._done.wait(0.05):
                return

    def _by_thread(self, children: float) -> dict[int, tuple[str, float]]:
        """Each thread's CPU seconds so far (by native id, with its name; one that ended keeps
        its last figure), and the other processes' (id 0). The bench's own threads are left
        out."""
        seen = dict(self.threads[-1]) if self.threads else {}
        seen[0] = (PROCESSES, children)
        for thread in threading.enumerate():
            if thread.native_id is None or thread.name.startswith("bench-"):
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):  # it ended
                ticks = self._cpu(f"self/task/{thread.native_id}")
                seen[thread.native_id] = (thread.name.rstrip("0123456789_-"), ticks / self._ticks)
        return seen

    def busiest(self, start: float, end: float) -> dict[str, tuple[float, float, int]]:
        """Between ``start`` and ``end`` (perf_counter): each thread name's cores used (its
        threads' CPU over the wall), the busiest one thread's share of the wall, and how many
        threads of that name ran."""
        inside = [i for i, (when, _) in enumerate(self.samples) if start <= when <= end]
        if len(inside) < 2:
            return {}
        first, last = inside[0], inside[-1]
        wall = self.samples[last][0] - self.samples[first][0]
        before, after = self.threads[first], self.threads[last]
        out: dict[str, tuple[float, float, int]] = {}
        for ident, (name, cpu) in after.items():
            used = cpu - before.get(ident, (name, 0.0))[1]
            if used <= 0:
                continue
            cores, top, count = out.get(name, (0.0, 0.0, 0))
            out[name] = (cores + used / wall, max(top, used / wall), count + 1)
        return out

    def cores(self, step: float = 0.5) -> list[tuple[float, float]]:
        """(time, cores used over the ``step`` seconds before it)."""
        out: list[tuple[float, float]] = []
        if not self.samples:
            return out
        t, cpu = self.samples[0]
        for when, used in self.samples[1:]:
            if when - t >= step:
                out.append((when, (used - cpu) / (when - t)))
                t, cpu = when, used
        return out

    def stop(self) -> None:
        self._done.set()
        self.join()


def _child(
    part: str,
    base: Path,
    memory: int,
    rate: float = 0.0,
    workers: int | None = None,
    one_loop: bool = False,
) -> dict[str, Any]:
    answer = subprocess.run(
        [
            sys.executable,
            __file__,
            "--part",
            part,
            "--out",
            str(base),
            "--memory",
            str(memory),
            "--paced",
            str(rate),
            *(["--workers", str(workers)] if workers else []),
            *(["--one-loop"] if one_loop else []),
            *(f"--set={what}" for what in SETS),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(answer.stdout)
    return result


def _by_thread(proof: dict[str, Any], million: float) -> str:
    """Each thread's CPU seconds a million accounts, the check's own by stage, and the serial
    chain's share: the check's thread (first read, sort, second read in it) against all the
    CPU of the tree (docs/architecture.md, "A mainnet full")."""
    threads: dict[str, float] = dict(proof["threads_cpu"])
    own = threads.pop("check (all stages)")
    stages = proof["stages_cpu"]
    first = proof["first_reading_cpu"]
    finish = stages.get("finish", 0.0)
    sort, second = stages.get("sort", 0.0), stages.get("second read", 0.0)
    rows = [
        ("check's thread: first read", first),
        ("check's thread: partitions' sort", sort),
        ("check's thread: second read", second),
        ("check's thread: the rest", own - first - finish + (finish - sort - second)),
        ("  of the check's thread: hashing in it", stages.get("hashed here", 0.0)),
        *sorted(threads.items(), key=lambda item: -item[1]),
        ("hashing processes", proof["worker_cpu"]),
        *([("scan processes", proof["scan_cpu"])] if proof.get("scan_cpu") else []),
    ]
    total = proof["cpu"]
    lines = [f"CPU seconds a million accounts, by thread ({total / million:.3f} in all):"]
    lines += [f"  {name}: {cpu / million:.3f} ({cpu / total:.0%})" for name, cpu in rows]
    serial = own - stages.get("hashed here", 0.0)
    lines.append(
        f"  serial chain (the check's thread less the hashing it took on): "
        f"{serial / million:.3f}, {serial / total:.0%} of the tree's CPU: no host ends the "
        f"proof in less than {serial / million:.2f} s a million"
    )
    return "\n".join(lines)


def _phases(proof: dict[str, Any]) -> str:
    """When each stage of the check's thread ran (seconds from the check's start), the cores
    the tree used, half a second at a time, and in each stage the threads that used the most
    (:func:`_busiest`)."""
    spans = ", ".join(f"{stage} {a:.2f}-{b:.2f}" for stage, a, b in proof["spans"])
    steps = " ".join(f"{cores:.1f}" for _, cores in proof["timeline"])
    lines = [f"stages (s): {spans}", f"cores used a half second: {steps}"]
    for read in ("first read", "second read"):
        waited = [(what, wall) for each, what, wall in proof.get("waits", []) if each == read]
        if waited:
            lines.append(
                f"  {read}, the check's thread waited (s): "
                + ", ".join(f"{what} {wall:.2f}" for what, wall in waited)
            )
    lines += [_busiest(stage, named) for stage, named in proof.get("busiest", []) if named]
    return "\n".join(lines)


def _busiest(stage: str, named: dict[str, Any], most: int = 6) -> str:
    """One stage's threads that used the most cores (``named``: :meth:`_Timeline.busiest`),
    each as its cores and, for several threads of one name, the busiest one's share: a thread
    near 1.00 is what holds the stage on a host of more cores."""
    ranked = sorted(named.items(), key=lambda item: -item[1][0])[:most]
    parts = [
        f"{CHECKS.get(name, name)} {cores:.2f}"
        + (f" (x{count}, busiest {top:.2f})" if count > 1 else "")
        for name, (cores, top, count) in ranked
    ]
    return f"  {stage}, cores by thread: " + ", ".join(parts)


def _spread_part(base: str, ways: int, part: int, barrier: Any, answers: Any) -> None:
    """One of ``spread``'s processes: the yardstick's loop over every ``ways``-th storage
    (or build part) from ``part``, timed from the barrier that all of them pass at once."""
    meta = json.loads((Path(base) / "meta.json").read_text())
    meta["base"] = Path(base)
    mine = [
        (bytes(messages), ends.tolist())
        for index, (messages, ends) in enumerate(_messages(meta))
        if index % ways == part
    ]
    hasher = blake3.blake3()
    reset, update, digest = hasher.reset, hasher.update, hasher.digest
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    hashed = 0
    for messages, message_ends in mine:
        view = memoryview(messages)
        for a, b in zip([0, *message_ends[:-1]], message_ends, strict=True):
            reset()
            update(view[a:b])
            digest(2048)
        hashed += len(message_ends)
    answers.put((t0, time.perf_counter(), time.process_time() - c0, hashed))


def spread(base: Path, ways: list[int]) -> None:
    """The host's hashing floor: the yardstick's loop split over K processes at once (each
    every K-th storage), for each K in ``ways``; wall from the first process's start to the
    last one's end, and how many times the one-process loop's rate that is. On a host whose
    cores share their units (hyperthreads), K processes hash less than K times faster: the
    proof's hashing cannot beat this."""
    context = multiprocessing.get_context("spawn")
    one = 0.0
    for k in ways:
        barrier, answers = context.Barrier(k), context.Queue()
        processes = [
            context.Process(target=_spread_part, args=(str(base), k, i, barrier, answers))
            for i in range(k)
        ]
        for process in processes:
            process.start()
        results = [answers.get() for _ in processes]
        for process in processes:
            process.join()
        wall = max(r[1] for r in results) - min(r[0] for r in results)
        cpu = sum(r[2] for r in results)
        hashed = sum(r[3] for r in results)
        one = one or wall * k if k == 1 else one
        print(
            f"XOF loop spread over {k} process(es): {wall:.2f} s wall, {cpu:.2f} CPU-s "
            f"({cpu / hashed * 1e6:.2f} a million), {hashed / wall / 1e6:.2f} M messages a second"
            + (f", {one / wall:.2f}x the loop in one process" if one else "")
        )


def plain(base: Path, runs: int) -> None:
    """The plain check: ``snapshot-tracker verify --prove-accounts-max 1000`` of the archive
    (it stops at ``manifest``: over the bound) against ``openssl dgst -sha256`` of the file,
    each a process, ``runs`` times in alternating order, from the page cache; wall and CPU
    seconds of each (the tree's), the best of each and their ratio (the target: 1.5)."""
    meta = json.loads((base / "meta.json").read_text())
    path = str(base / meta["archive"])
    commands = {
        "verify": [sys.executable, "-m", "tracker", "verify", "--prove-accounts-max", "1000", path],
        "openssl": ["openssl", "dgst", "-sha256", path],
    }
    with open(path, "rb", buffering=0) as file:  # into the page cache
        while file.read(8 << 20):
            pass
    # The package byte-compiled first, as an install leaves it: a checkout run with
    # PYTHONDONTWRITEBYTECODE=1 compiles each module from source at every start (~0.2 s).
    package = Path(check_file.__code__.co_filename).parents[2]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for run in range(runs):
        for name in list(commands)[:: 1 if run % 2 == 0 else -1]:
            c0, t0 = _children_cpu(), time.perf_counter()
            done = subprocess.run(commands[name], capture_output=True, text=True, check=False)
            wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
            if name == "verify" and "ok manifest" not in done.stdout:
                raise RuntimeError(f"verify: {done.stdout.strip()} {done.stderr.strip()[-300:]}")
            times[name].append((wall, cpu))
    best = {name: min(each) for name, each in times.items()}
    size = os.stat(path).st_size
    print(
        f"plain check of a {size / 2**30:.2f} GiB archive ({meta['accounts']} accounts), "
        f"best of {runs}: verify --prove-accounts-max 1000 {best['verify'][0]:.2f} s "
        f"({best['verify'][1]:.2f} CPU-s), openssl dgst -sha256 {best['openssl'][0]:.2f} s "
        f"({best['openssl'][1]:.2f} CPU-s): {best['verify'][0] / best['openssl'][0]:.2f}x "
        "wall (target 1.5); each run: "
        + ", ".join(
            f"{v[0] / o[0]:.2f}" for v, o in zip(times["verify"], times["openssl"], strict=True)
        )
    )


def main() -> None:
    """Build, measure, print."""
    pin = argparse.ArgumentParser(add_help=False)
    pin.add_argument("--cores", type=int)
    cores = pin.parse_known_args()[0].cores
    if cores:  # before the defaults below are read off this process's cores
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cores", type=int, help="run the bench (and its children) on the first N cores only"
    )
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--memory",
        type=parse_size,
        help="prove_accounts_memory (default: the tracker's for these cores and this memory)",
    )
    parser.add_argument(
        "--build-processes",
        type=int,
        default=default_workers(),
        help="processes that build the archive (default: cores)",
    )
    parser.add_argument(
        "--one-loop",
        action="store_true",
        help="time only the yardstick's loop, not also the earlier one (a new hasher a message)",
    )
    parser.add_argument(
        "--heavy", action="store_true", help="data-heavy storages: every account ~20 KiB"
    )
    parser.add_argument(
        "--paced", type=float, default=0.0, help="also time the check following bytes at MB/s"
    )
    parser.add_argument(
        "--per-storage", type=int, help="accounts a storage (agave's ancient ones: ~500000)"
    )
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="proof_workers (default: cores)"
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="time only the plain check (verify --prove-accounts-max 1000) against openssl",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="MODULE.NAME=NUMBER",
        help="what-if: a constant of tracker.proof.MODULE set in the measured processes "
        "(e.g. accounts.scanlanes.MAX_LANES=8), or switchinterval=SECONDS",
    )
    parser.add_argument(
        "--spread",
        help="time only the yardstick's loop split over K processes at once, for each K of a "
        "comma-separated list (e.g. 1,2,4,8,16): the host's hashing floor",
    )
    parser.add_argument(
        "--proof-only",
        action="store_true",
        help="time the proof alone (no baseline): its wall, cores, threads and stages",
    )
    parser.add_argument("--part", choices=("baseline", "proof", "paced"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    SETS[:] = args.set
    for assignment in SETS:
        _what_if(assignment)
    if args.memory is None:
        args.memory = default_memory(args.workers)
    if args.part:
        parts = {
            "baseline": lambda: baseline(args.out, args.one_loop),
            "proof": lambda: prove(args.out, args.memory, args.workers),
            "paced": lambda: paced(args.out, args.memory, args.paced, args.workers),
        }
        print(json.dumps(parts[args.part]()))
        return
    base = build(
        args.out,
        args.accounts,
        heavy=args.heavy,
        per=args.per_storage,
        processes=args.build_processes,
    )
    if args.plain:
        plain(base, args.runs)
        return
    if args.spread:
        spread(base, [int(k) for k in args.spread.split(",")])
        return
    if args.proof_only:
        meta = json.loads((base / "meta.json").read_text())
        for _ in range(args.runs):
            proof = _child("proof", base, args.memory, workers=args.workers)
            million = meta["accounts"] / 1e6
            print(
                f"proof alone ({' '.join(SETS) or 'as built'}; proof_workers {args.workers}, "
                f"budget {args.memory / 2**20:.0f} MiB): {proof['check']:.2f} s, "
                f"{proof['cpu'] / proof['check']:.1f} cores used, level {proof['level']}; "
                f"peak of the tree {(proof['max_rss'] + proof['worker_max_rss']) / 2**20:.0f} MiB"
                f" (sum of VmHWM), {proof['tree_pss_peak'] / 2**20:.0f} MiB (PSS, polled)"
            )
            print(_by_thread(proof, million))
            print(_phases(proof))
        return
    runs = []
    for run in range(args.runs):  # alternating who goes first: the shared machine is noisy
        first, second = ("baseline", "proof") if run % 2 == 0 else ("proof", "baseline")
        times = {
            first: _child(first, base, args.memory, workers=args.workers, one_loop=args.one_loop)
        }
        times[second] = _child(
            second, base, args.memory, workers=args.workers, one_loop=args.one_loop
        )
        if args.paced:
            times["paced"] = _child("paced", base, args.memory, args.paced, args.workers)
        runs.append(times)
    base_times = min((r["baseline"] for r in runs), key=lambda t: t["sha256"] + t["blake3"])
    proof_times = min((r["proof"] for r in runs), key=lambda t: t["check"])
    meta = json.loads((base / "meta.json").read_text())
    unavoidable = base_times["sha256"] + base_times["blake3"]
    spent = proof_times["check"]
    size = (base / meta["archive"]).stat().st_size
    print(json.dumps({"baseline": base_times, "proof": proof_times}, indent=1))
    print(
        f"archive: {size / 1e6:.0f} MB, {meta['tar_bytes'] / 1e9:.2f} GB of storages in the "
        f"tar, {meta['records']} stored versions, {meta['accounts']} accounts"
    )
    print(f"level reached: {proof_times['level']} ({proof_times['note'] or 'no note'})")
    print(
        f"ratio check with accounts / (sha256 + blake3 tight loop), best of {args.runs}: "
        f"{spent / unavoidable:.2f} wall (target 1.0), "
        f"{proof_times['cpu'] / base_times['cpu']:.2f} CPU time (the hash worker's "
        f"{proof_times['worker_cpu']:.2f} s included)"
    )
    slower = base_times["sha256"] + base_times["blake3_new_hasher"]
    print_slower = print if not args.one_loop else (lambda *_: None)
    print_slower(
        f"against the earlier yardstick (a new hasher a message: {slower:.2f} s): "
        f"{spent / slower:.2f} wall, {proof_times['cpu'] / base_times['cpu_new_hasher']:.2f} CPU"
    )
    per_run = sorted(
        r["proof"]["check"] / (r["baseline"]["sha256"] + r["baseline"]["blake3"]) for r in runs
    )
    print(
        "per run (the two sides back to back): "
        + ", ".join(f"{ratio:.2f}" for ratio in per_run)
        + f" wall; median {per_run[len(per_run) // 2]:.2f}"
    )
    print(
        f"once per process, not in the ratio (numba imported, the kernels loaded from its "
        f"cache): {proof_times['once']:.2f} s; counted in: "
        f"{(spent + proof_times['once']) / unavoidable:.2f} wall"
    )
    million = meta["accounts"] / 1e6
    print(
        f"cores used on average: {proof_times['cpu'] / spent:.1f} of {len(os.sched_getaffinity(0))}"
        f" (proof_workers {args.workers}, budget {args.memory / 2**20:.0f} MiB); wall / the "
        f"single-thread BLAKE3 XOF loop alone: {spent / base_times['blake3']:.2f}"
    )
    print(
        f"seconds per million accounts: {spent / million:.2f} wall, "
        f"{proof_times['cpu'] / million:.2f} CPU; "
        f"per GB of storages: {spent / (meta['tar_bytes'] / 1e9):.2f}"
    )
    print(
        f"the first read's threads (proof_workers {args.workers}), CPU seconds a million "
        f"accounts: reading {proof_times['first_reading_cpu'] / million:.3f}, "
        + (
            f"scan lanes ({proof_times['scan_lanes']}) "
            f"{proof_times['first_bookkeeping_cpu'] / million:.3f} together, "
            f"{proof_times['first_locked_cpu'] / million:.3f} of it under their lock"
            if proof_times["scan_lanes"]
            else "the scan and the bookkeeping in the reading thread"
        )
    )
    print(_by_thread(proof_times, million))
    print(_phases(proof_times))
    tree = proof_times["max_rss"] + proof_times["worker_max_rss"]
    print(
        f"peak memory (VmHWM) of the check: {proof_times['max_rss'] / 2**20:.0f} MiB, "
        f"of its {proof_times['workers']} hash worker(s): "
        f"{proof_times['worker_max_rss'] / 2**20:.0f} MiB, the tree: "
        f"{tree / 2**20:.0f} MiB at most (PSS, polled: "
        f"{proof_times['tree_pss_peak'] / 2**20:.0f} MiB); "
        f"budget {proof_times['budget'] / 2**20:.0f} MiB, "
        f"held of it at most {proof_times['held_peak'] / 2**20:.1f} MiB"
    )
    print(
        f"peak temporary disk (the spilled index): {proof_times['spill_peak'] / 2**20:.1f} MiB"
        f" ({proof_times['spill_peak'] / max(1, meta['records']):.1f} bytes a stored version)"
    )
    if args.paced:
        best = min((r["paced"] for r in runs), key=lambda t: t["proven_after"])
        print(
            f"following the bytes at {args.paced:g} MB/s ({best['arrival']:.2f} s, best of "
            f"{args.runs}): first read ended {best['first_read_after']:.2f} s after the last "
            f"byte, proven ({best['level']}) {best['proven_after']:.2f} s after it "
            f"({best['proven_after'] / million:.2f} s per million accounts); each run: "
            + ", ".join(f"{r['paced']['proven_after']:.2f}" for r in runs)
        )


if __name__ == "__main__":
    main()
