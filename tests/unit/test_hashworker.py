"""Level accounts' hashing in a worker process, and its compiled loops
(tracker.proof.formats.kernels).

The worker is a real child process (no network): its sum must be the calling thread's, a crash
of it must cost the proof and never reject the archive, and no check may leave it behind.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import trio
from agave_storages import Storage, expected_lt_hash, feed, storages
from hypothesis import given, settings
from hypothesis import strategies as st
from test_accounts_level import STATE, write_archive
from test_proof_accounts import (
    built,
    reread_from,
    second_read_by_way,  # noqa: F401 (autouse: its second reads as test_proof_accounts')
)
from test_spill import many

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts import hashworker
from tracker.proof.accounts.accounthash import LocalSum
from tracker.proof.accounts.accountsproof import AccountsProof
from tracker.proof.accounts.budget import AccountsLimits, WorkerSlots
from tracker.proof.accounts.hashworker import HashPool, HashWorker
from tracker.proof.archive.archivecheck import FollowingCheck, check_file
from tracker.proof.formats import kernels
from tracker.proof.formats.storages import EXECUTABLE, LAMPORTS, MAX_DATA, META, PUBKEY, Records
from tracker.proof.formats.storages import scan as storages_scan
from tracker.proof.formats.writing import Account, write_storage
from tracker.proof.levels import Level

pytestmark = pytest.mark.usefixtures("bookkeeping_both_ways")

WORKER = "tracker.proof.accounts.hashworker"
#: The note of a proof whose hashing process the OOM killer took.
KILLED = (
    "not proven: the hashing process ended"
    " (killed by SIGKILL: out of memory? (the kernel's OOM killer sends it))"
)


def workers() -> list[int]:
    """This process's children that run the hash worker (alive or not yet waited for)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and WORKER.encode() in cmdline:
            found.append(int(pid))
    return found


def batch(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    lens = rng.integers(73, 400, size=count)
    ends = np.cumsum(lens).astype(np.int64)
    work = rng.integers(0, 256, size=int(ends[-1]), dtype=np.uint8)
    return work, ends


@pytest.mark.one_bookkeeping
def test_the_worker_process_sums_what_the_calling_thread_sums() -> None:
    rng = np.random.default_rng(5)
    worker, here = HashWorker(start_from=0), LocalSum()
    try:
        for count in (3000, 1, 2000, 5000):
            work, ends = batch(rng, count)
            worker.add(work, ends)
            here.add(work, ends)
        total, note = worker.total()
        assert note is None and total is not None
        assert worker.sent > 0  # the child hashed some of them
        assert np.array_equal(total, here.total()[0])
    finally:
        worker.close()
    assert not workers()


@pytest.mark.one_bookkeeping
def test_the_worker_process_is_reached_past_a_thousand_descriptors() -> None:
    # a tracker serving a thousand connections holds descriptors past select()'s 1,024: a
    # proof started then still talks to its process (each wait is a poll)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this system allows {hard} descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held: list[int] = []
    rng = np.random.default_rng(6)
    worker, here = HashWorker(start_from=0), LocalSum()
    try:
        while not held or held[-1] < 1100:  # the worker's pipes come after these
            held.append(os.open(os.devnull, os.O_RDONLY))
        for count in (3000, 2000):
            work, ends = batch(rng, count)
            worker.add(work, ends)
            here.add(work, ends)
        total, note = worker.total()
        assert note is None and total is not None
        assert worker.sent > 0
        assert np.array_equal(total, here.total()[0])
    finally:
        worker.close()
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.one_bookkeeping
@pytest.mark.parametrize("free", [3, 1, 0])
def test_a_pool_of_workers_sums_what_the_calling_thread_sums_with_the_slots_it_got(
    free: int,
) -> None:
    rng = np.random.default_rng(6)
    slots = WorkerSlots(free)
    pool, here = HashPool(3, slots, start_from=0), LocalSum()
    assert slots.used == free  # as many children as slots were free, never more
    try:
        for count in (3000, 1, 2000, 5000, 4000, 300):
            work, ends = batch(rng, count)
            pool.add(work, ends)
            here.add(work, ends)
        assert pool.busy == free  # every child it got took batches (partial sums)
        total, note = pool.total()
        assert note is None and total is not None
        assert np.array_equal(total, here.total()[0])
    finally:
        pool.close()
    assert slots.used == 0  # given back
    assert not workers()


def begun() -> tuple[HashWorker, AccountsProof, list[Storage]]:
    """A proof hashed by a worker process, its first storage fed and the worker started."""
    worker = HashWorker(start_from=0)
    proof = AccountsProof(AccountsLimits(max_accounts=1000), worker)
    given = storages()
    feed(proof, given[0], 4096)
    proof.settle()  # its bookkeeping done: the worker started
    return worker, proof, given


def test_a_killed_worker_costs_the_proof_never_the_archive() -> None:
    worker, proof, given = begun()
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    for storage in given[1:]:
        feed(proof, storage, 4096)
    lt_hash, note = proof.finish(reread_from({s.name: s.data for s in given}))
    assert lt_hash is None
    assert note is not None and note.startswith("not proven: the hashing process ended")
    assert proof.local_cause  # this machine's failure: never booked against a source
    assert not workers()


def test_a_second_read_stops_once_the_hashing_process_failed() -> None:
    # A hashing process that failed decides the proof (not proven, its note): the second
    # read still read every storage left to it to the archive's end, decoding it all again
    # from disk and laying it out, only for the sum to be dropped, before the check wrote
    # its note (inline, in one lane and in three: the module's fixture).
    slots = {s: many(1200, s, start=s % 2 * 600) for s in range(3, 9)}
    made = built(slots, list(slots))
    worker = HashWorker(start_from=0)
    proof = AccountsProof(AccountsLimits(max_accounts=10_000), worker)
    for storage in made:
        feed(proof, storage, 1 << 20)
    reread = reread_from({s.name: s.data for s in made}, piece=1024)
    asked: list[str] = []
    after = [0]  # chunks the second read took once the process was gone

    def killing(name: str, start: int) -> Iterable[bytes]:
        asked.append(name)
        if len(asked) == 1:
            pid = worker.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, left to its owner
        for chunk in reread(name, start):
            after[0] += 1
            yield chunk

    lt_hash, note = proof.finish(killing)
    assert lt_hash is None
    assert note is not None and note.startswith("not proven: the hashing process ended")
    assert proof.local_cause
    assert asked == [made[0].name]  # no storage after it asked for
    assert after[0] <= 1  # of its 1,024-byte chunks, none past the one in hand
    assert not workers()


def test_a_stuck_worker_costs_the_proof_never_a_check_that_never_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hashworker, "STALLED", 0.3)
    worker, proof, given = begun()
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGSTOP)
    for storage in given[1:]:
        feed(proof, storage, 4096)
    assert proof.finish(reread_from({s.name: s.data for s in given})) == (
        None,
        "not proven: the hashing process stopped answering",
    )
    assert not workers()


def test_a_proof_hashed_by_the_worker_gives_the_manifests_lattice_hash() -> None:
    proof = AccountsProof(AccountsLimits(max_accounts=1000), HashWorker(start_from=0))
    given = storages()
    for storage in given:
        feed(proof, storage, 4096)
    assert proof.finish(reread_from({s.name: s.data for s in given})) == (expected_lt_hash(), None)
    assert not workers()


@pytest.mark.parametrize("shared", ["slots", "too small", "none"])
def test_batches_laid_out_in_shared_memory_prove_what_the_pipe_proves(
    shared: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages laid out in the worker's shared slots (no copy through the pipe) are
    hashed where they lie; a batch larger than a slot, or no memfd, goes through the pipe."""
    if shared == "too small":
        monkeypatch.setattr(hashworker, "SLOT_BYTES", 64)
    if shared == "none":
        monkeypatch.setattr(hashworker, "shared_memory", lambda size, name="": None)
    worker = HashWorker(start_from=0)
    proof = AccountsProof(AccountsLimits(max_accounts=1000), worker)
    given = storages()
    for storage in given:
        feed(proof, storage, 4096)
    assert proof.finish(reread_from({s.name: s.data for s in given})) == (expected_lt_hash(), None)
    assert worker.sent > 0
    assert (worker.in_place > 0) == (shared == "slots")
    assert not workers()


def add_through_slots(
    summer: HashWorker | HashPool, rng: np.random.Generator, counts: tuple[int, ...]
) -> tuple[int, LocalSum]:
    """Random batches of ``counts`` messages added to ``summer``, each laid out in the room it
    lends when it lends some (as ``accounthash.lane_sum`` does); how many were, and the same
    batches summed here."""
    lent, here = 0, LocalSum()
    for count in counts:
        work, ends = batch(rng, count)
        room = summer.room(len(work))
        if room is not None:
            room[:] = work
            work, lent = room, lent + 1
        summer.add(work, ends)
        here.add(work, ends)
    return lent, here


@pytest.mark.one_bookkeeping
@pytest.mark.parametrize(
    "make", [lambda: HashWorker(start_from=0), lambda: HashPool(2, start_from=0)]
)
def test_batches_taken_out_leave_the_sum_of_the_others(make: object) -> None:
    # the first read hashes ahead, the second takes the superseded versions out again: in a
    # slot (small and large batches, the sign switching the slot being filled) or by the pipe
    summer = make()  # type: ignore[operator]
    rng = np.random.default_rng(13)
    made = [batch(rng, count) for count in (3000, 120, 90, 4000, 150, 7, 2000, 60)]
    kept = LocalSum()
    try:
        for work, ends in made:
            room = summer.room(len(work))
            if room is not None:
                room[:] = work
            summer.add(work if room is None else room, ends)
        for n, (work, ends) in enumerate(made):
            if n % 3 == 1:
                kept.add(work, ends)
                continue
            room = summer.room(len(work), negative=True) if n % 2 else None
            if room is not None:
                room[:] = work
            summer.add(work if room is None else room, ends, negative=True)
        total, note = summer.total()
        assert note is None and total is not None
        assert np.array_equal(total, kept.total()[0])
    finally:
        summer.close()
    assert not workers()


@pytest.mark.one_bookkeeping
def test_the_child_hashes_at_a_lower_priority_than_the_check() -> None:
    worker = HashWorker(start_from=0)
    try:
        worker.expect(1)
        assert worker.pid is not None
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == min(19, mine + hashworker.NICE)
    finally:
        worker.close()


@pytest.mark.one_bookkeeping
def test_a_negative_frame_in_a_slot_is_taken_out_by_the_child() -> None:
    worker = HashWorker(start_from=0)
    rng = np.random.default_rng(17)
    try:
        worker.expect(1)  # started: every batch is laid out in a slot
        work, ends = batch(rng, 40)
        for negative in (False, False, True):
            room = worker.room(len(work), negative=negative)
            assert room is not None
            room[:] = work
            worker.add(room, ends, negative=negative)
        total, note = worker.total()
        assert note is None and total is not None
        once = LocalSum()
        once.add(work, ends)
        assert np.array_equal(total, once.total()[0])
        assert worker.in_place == 120 and worker.frames == 2  # the sign ended the first slot
    finally:
        worker.close()
    assert not workers()


@pytest.mark.one_bookkeeping
def test_a_pool_lends_its_childrens_slots_and_sums_what_the_calling_thread_sums() -> None:
    pool = HashPool(2, start_from=0)
    try:
        lent, here = add_through_slots(
            pool, np.random.default_rng(7), (3000, 200, 5000, 4000, 300) * 3
        )
        total, note = pool.total()
        assert note is None and total is not None
        assert np.array_equal(total, here.total()[0])
    finally:
        pool.close()
    assert lent > 0
    assert not workers()


@pytest.mark.one_bookkeeping
def test_small_batches_share_a_slot_and_sum_what_the_calling_thread_sums() -> None:
    worker = HashWorker(start_from=0)
    try:
        # ~10-40 KB each: dozens to a slot
        counts = (120, 90, 150, 3, 110) * 12
        batches, here = add_through_slots(worker, np.random.default_rng(11), counts)
        total, note = worker.total()
        assert note is None and total is not None
        assert np.array_equal(total, here.total()[0])
        assert batches > 40 and worker.in_place > 0
        assert worker.frames * 8 < batches  # the child woken once for many of them
        assert len(worker._free) == hashworker.SLOTS  # every slot back
    finally:
        worker.close()
    assert not workers()


@pytest.mark.one_bookkeeping
def test_a_slot_lent_but_not_used_is_free_again_and_the_batch_goes_by_the_pipe() -> None:
    worker, here = HashWorker(start_from=0), LocalSum()
    rng = np.random.default_rng(9)
    try:
        for _ in range(6):  # more than the slots: none may be lost
            work, ends = batch(rng, 50)
            assert worker.room(len(work)) is not None or worker.pid is None
            worker.add(work, ends)  # a buffer of its own, not the slot lent
            here.add(work, ends)
        total, note = worker.total()
        assert note is None and total is not None
        assert np.array_equal(total, here.total()[0])
        assert worker.in_place == 0 and worker.sent > 0
        assert len(worker._free) == hashworker.SLOTS  # every slot back
    finally:
        worker.close()
    assert not workers()


@pytest.mark.one_bookkeeping
def test_a_worker_killed_while_it_hashes_a_slot_costs_the_proof() -> None:
    worker = HashWorker(start_from=0)
    try:
        work, ends = batch(np.random.default_rng(8), 10)
        assert worker.room(len(work)) is None  # not started yet: the first batch starts it
        worker.add(work, ends)
        assert worker.pid is not None
        room = worker.room(len(work))
        assert room is not None
        room[:] = work
        worker.add(room, ends)
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.total() == (None, KILLED)
    finally:
        worker.close()
    assert not workers()


def test_a_check_leaves_no_worker_behind_whether_it_passes_or_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashworker, "START_FROM", 0)
    good = write_archive(tmp_path, STATE)
    assert (
        check_file(str(good), prove_accounts=AccountsLimits(max_accounts=1000)).proof.level
        == Level.ACCOUNTS
    )
    assert not workers()
    forged = {**STATE, 490: [Account(b"\2" * 32, 0), Account(b"\3" * 32, 7, b"x")]}
    (tmp_path / "bad").mkdir()
    bad = write_archive(tmp_path / "bad", forged, lt_hash=bytes(2048))
    with pytest.raises(ArchiveInvalid):
        check_file(str(bad), prove_accounts=AccountsLimits(max_accounts=1000))
    assert not workers()


async def test_a_cancelled_check_stops_its_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashworker, "START_FROM", 0)
    archive = write_archive(tmp_path, STATE, compression="tar")
    data = archive.read_bytes()
    part = tmp_path / "part"
    with open(part, "wb") as f:  # noqa: ASYNC230 (a local temp file, as test_archivecheck's)
        check = FollowingCheck.start(
            f.fileno(), archive.name, prove_accounts=AccountsLimits(max_accounts=1000)
        )
        f.write(data[:-1024])  # the storages, not the tar's end: the check waits for more
        f.flush()
        check.advance(len(data) - 1024)
        with trio.fail_after(10):
            while not workers():  # started once the check hashed the storages
                await trio.sleep(0.01)
        check.cancel()
        with trio.fail_after(10), pytest.raises(ArchiveInvalid, match=r"^check cancelled$"):
            await check.result()
    assert not workers()


async def test_a_check_cancelled_while_its_proof_waits_on_a_stuck_worker_ends_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real archive's check whose hashing process answers nothing (stopped: hung, as an
    OOM-thrashing or frozen one is), its proof at the end waiting for the child's sum, is
    cancelled (the refresh aborted, the tracker stopping). The wait heeded only the stall
    bound (60 s), past the 10 s a stop waits for the check's thread: ``serve`` took 11 s to
    stop and left the stopped child behind, an orphan. It ends within a second or two of
    the cancel now, no verdict on the archive, the child killed and reaped."""
    monkeypatch.setattr(hashworker, "START_FROM", 0)
    archive = write_archive(tmp_path, STATE, compression="tar")
    data = archive.read_bytes()
    children: list[int] = []
    start, total = HashWorker._start, HashWorker.total
    waiting = threading.Event()

    def stopped_at_start(self: HashWorker) -> None:
        start(self)
        if self.pid is not None:
            children.append(self.pid)
            os.kill(self.pid, signal.SIGSTOP)

    def waited_on(self: HashWorker) -> tuple[object, str | None]:
        waiting.set()  # the proof's end: it waits for the child's sum now
        return total(self)

    monkeypatch.setattr(HashWorker, "_start", stopped_at_start)
    monkeypatch.setattr(HashWorker, "total", waited_on)
    limits = AccountsLimits(max_accounts=1000, workers=2)  # one hashing process
    with open(tmp_path / "part", "wb") as f:  # noqa: ASYNC230 (a local temp file)
        check = FollowingCheck.start(f.fileno(), archive.name, prove_accounts=limits)
        try:
            f.write(data)
            f.flush()
            check.advance(len(data))
            check.finish(len(data))
            assert await trio.to_thread.run_sync(waiting.wait, 30), "the proof never ended"
            assert children, "no hashing process started"
            began = trio.current_time()
            await check.stopped()  # cancels, then waits (at most 10 s) for the thread
            assert check.done(), "the check's thread waited on for the stall bound"
            assert trio.current_time() - began < 5
            proof = (await check.result()).proof  # not proven, for the tracker's own cause
            assert (proof.level, proof.note, proof.local_cause) == (
                Level.MANIFEST,
                "not proven: the check was cancelled",
                True,
            )
        finally:
            for pid in children:  # however the test ends, none is left stopped
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await check.stopped(within=90)
    assert not workers()


def interpreted(name: str) -> kernels._Kernel:
    return kernels._Kernel(kernels._RAW[name], None, 1)


@pytest.fixture(params=["interpreted", "compiled"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every kernel interpreted (as a small proof runs them), or compiled."""
    if request.param == "compiled":
        kernels.load()
    else:
        for name in kernels._RAW:
            monkeypatch.setattr(kernels, name, interpreted(name))
    return str(request.param)


@pytest.mark.parametrize("chunk", [7, 4096])
def test_kernels_interpreted_and_compiled_prove_the_same(mode: str, chunk: int) -> None:
    given = storages()
    for order in (given, given[::-1]):
        proof = AccountsProof(AccountsLimits(max_accounts=1000))
        for storage in order:
            feed(proof, storage, chunk)
        assert proof.finish(reread_from({s.name: s.data for s in given})) == (
            expected_lt_hash(),
            None,
        ), mode


@pytest.mark.one_bookkeeping
def test_a_small_proof_loads_no_numba(tmp_path: Path) -> None:
    """numba and its compiled code cost a process ~170 MB of RSS: a proof of a few accounts
    (verify's of a small archive, the tests' archives) runs the kernels interpreted."""
    path = write_archive(tmp_path, STATE)
    code = (
        "import sys; from tracker.proof.archive.archivecheck import check_file; "
        "from tracker.proof.accounts.budget import AccountsLimits; "
        f"print(check_file({str(path)!r}, prove_accounts=AccountsLimits()).proof.level.label, "
        "'numba' in sys.modules)"
    )
    answer = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert answer.stdout.split() == ["accounts", "False"]


@pytest.mark.one_bookkeeping
def test_numba_disabled_keeps_the_kernels_interpreted(tmp_path: Path) -> None:
    """Under NUMBA_DISABLE_JIT=1 (numba's switch for debugging) njit hands the bare function
    back, and loading the kernels failed on it: a proof of many storages, which loads them
    (``accountsproof.KERNELS_FROM``, here from the first), rejected a good archive with
    ``check failed: AttributeError: 'function' object has no attribute 'enable_caching'``."""
    path = write_archive(tmp_path, STATE)
    code = (
        "from tracker.proof.accounts import accountsproof; accountsproof.KERNELS_FROM = 0; "
        "from tracker.proof.archive.archivecheck import check_file; "
        "from tracker.proof.accounts.budget import AccountsLimits; "
        "from tracker.proof.formats import kernels; "
        f"print(check_file({str(path)!r}, prove_accounts=AccountsLimits()).proof.level.label, "
        "kernels._LOADED, type(kernels.scan).__name__)"
    )
    answer = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NUMBA_DISABLE_JIT": "1"},
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert answer.stdout.split() == ["accounts", "[True]", "_Kernel"]


def reference_scan(buf: bytes, start: int, end: int, at: int) -> tuple[list[int], list[int], int]:
    """The scan as the storage format says it (the former Python loop)."""
    offsets, lens, off = [], [], start
    while off + META <= end:
        (data_len,) = struct.unpack_from("<Q", buf, off + 8)
        if data_len > MAX_DATA:
            return offsets, lens, -off - 1
        stop = off + META + data_len
        if stop > end:
            break
        if buf[off + EXECUTABLE] > 1:  # a whole record's flag: neither false nor true
            return offsets, lens, -off - 1
        lamports, rent_epoch = struct.unpack_from("<QQ", buf, off + LAMPORTS)
        owner = buf[off + LAMPORTS + 16 : off + LAMPORTS + 48]
        default = not data_len and not buf[off + EXECUTABLE] and not rent_epoch and not any(owner)
        if lamports == 0 and not default:  # agave's sanitize_lamports
            return offsets, lens, -off - 1
        if lamports == 0 and not any(buf[off + PUBKEY : off + PUBKEY + 32]):  # agave stops
            return offsets, lens, -off - 1
        offsets.append(off)
        lens.append(data_len)
        off = stop + (-(at + stop) & 7)
    return offsets, lens, off


@pytest.mark.one_bookkeeping
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1, 7, 165, 300, MAX_DATA, MAX_DATA + 1, 2**63, 2**64 - 1]),
            st.sampled_from([0, 0, 1, 2, 255]),
            st.sampled_from([1, 1, 0]),  # lamports
            st.sampled_from([0, 0, 3]),  # rent epoch
            st.sampled_from([0, 0, 9]),  # an owner's last byte
            st.sampled_from([5, 5, 0]),  # a pubkey's first byte (0: the default pubkey)
        )
    ),
    st.integers(0, 7),
    st.integers(0, 64),
    st.booleans(),
)
def test_the_scan_is_the_formats_scan(
    records: list[tuple[int, int, int, int, int, int]], at: int, cut: int, compiled: bool
) -> None:
    """Compiled and interpreted, hostile lengths included (past the buffer, past 10 MiB, past
    i64), executable bytes neither 0 nor 1, records of no lamports that are not the default
    account and those of the default pubkey: the same records, the same stop, the same
    refusal."""
    parts = bytearray()
    for data_len, flag, lamports, rent_epoch, owner, key in records:
        record = bytearray(META + min(data_len, 200))
        record[PUBKEY] = key
        struct.pack_into("<QQ", record, LAMPORTS, lamports, rent_epoch)
        record[LAMPORTS + 47] = owner
        struct.pack_into("<Q", record, 8, data_len)
        record[EXECUTABLE] = flag
        parts += record + bytes(-len(record) % 8)
    buf = bytes(parts)
    end = max(0, len(buf) - cut)
    if compiled:
        kernels.load()
    scan = kernels.scan if compiled else interpreted("scan")
    offsets, got_lens, stop, bad = scan(
        np.frombuffer(buf, dtype=np.uint8), 0, end, at, META, MAX_DATA, EXECUTABLE, LAMPORTS, PUBKEY
    )
    want_offsets, want_lens, want_stop = reference_scan(buf, 0, end, at)
    assert offsets.tolist() == want_offsets and got_lens.tolist() == want_lens
    assert (int(stop), int(bad)) == (
        (-want_stop - 1, -want_stop - 1) if want_stop < 0 else (want_stop, -1)
    )


@pytest.mark.one_bookkeeping
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 63), max_size=3000), st.integers(1, 5), st.booleans())
def test_grouped_rows_are_a_stable_sort_by_group(
    groups: list[int], width: int, compiled: bool
) -> None:
    """The index's flush (SpillIndex._write): every row once, grouped in group order, in
    their order within a group, and the groups' bounds; compiled and interpreted."""
    rows = np.arange(len(groups) * width, dtype=np.uint64).reshape(len(groups), width)
    numbers = np.array(groups, dtype=np.uint8)
    if compiled:
        kernels.load()
    group_rows = kernels.group_rows if compiled else interpreted("group_rows")
    got, bounds = group_rows(rows, numbers, 64)
    order = np.argsort(numbers, kind="stable")
    assert got.tolist() == rows[order].tolist()
    assert bounds.tolist() == np.searchsorted(numbers[order], np.arange(65)).tolist()


@pytest.mark.one_bookkeeping
@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 2**64 - 1), min_size=5, max_size=5), max_size=3000),
    st.lists(st.integers(0, 2**64 - 1), min_size=4, max_size=4),
    st.booleans(),
)
def test_the_fingerprints_are_the_multiply_shift_of_the_keys(
    rows: list[list[int]], mults: list[int], compiled: bool
) -> None:
    """The index's fingerprint of each pubkey (spill.fingerprints): the four words times
    the key's multipliers, summed, times the golden ratio, u64 wrapping; of the keys as a
    view of the index's (n, 5) rows, compiled and interpreted."""
    table = np.array(rows, dtype=np.uint64).reshape(-1, 5)
    keys = np.array(mults, dtype=np.uint64)
    golden = 0x9E3779B97F4A7C15
    if compiled:
        kernels.load()
    fingerprint_keys = kernels.fingerprint_keys if compiled else interpreted("fingerprint_keys")
    got = fingerprint_keys(table[:, :4], keys, np.uint64(golden))
    expected = [
        (sum(int(w) * m for w, m in zip(row[:4], mults, strict=True)) * golden) % 2**64
        for row in rows
    ]
    assert got.dtype == np.uint64 and got.tolist() == expected


@pytest.mark.one_bookkeeping
@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(min_size=32, max_size=32), st.sampled_from([0, 1, 2**64 - 1])).filter(
            lambda a: any(a[0]) or a[1] > 0  # agave's scan of a storage stops at any other
        )
    ),
    st.integers(0, 2**31),
    st.booleans(),
)
def test_the_index_rows_are_the_records_pubkeys_and_locators(
    accounts: list[tuple[bytes, int]], number: int, compiled: bool
) -> None:
    """Compiled and interpreted: each record's pubkey words and its locator (the storage's
    number, the offset / 8, whether its lamports count), as numpy's gathers made them."""
    data = write_storage(
        [Account(key, lamports, b"x" * 9 if lamports else b"") for key, lamports in accounts]
    )
    buf = np.frombuffer(data, dtype=np.uint8)
    offsets, lens, _, _ = kernels.scan(
        buf, 0, len(buf), 0, META, MAX_DATA, EXECUTABLE, LAMPORTS, PUBKEY
    )
    batch = Records(buf, offsets, lens, 4096)
    if compiled:
        kernels.load()
    index_rows = kernels.index_rows if compiled else interpreted("index_rows")
    words = np.frombuffer(data, dtype="<u8", count=len(data) // 8)
    rows, counts = index_rows(words, offsets, 0, 4096, np.uint64(number << 32), np.array([16, 48]))
    assert counts.tolist() == [lamports != 0 for _, lamports in accounts]
    assert [row[:4].astype("<u8").tobytes() for row in rows] == [key for key, _ in accounts]
    want = [
        (number << 32) | ((4096 + int(off)) >> 3 << 1) | int(lamports != 0)
        for off, (_, lamports) in zip(offsets, accounts, strict=True)
    ]
    assert rows[:, 4].tolist() == want
    assert batch.lamports().tolist() == [lamports for _, lamports in accounts]


@pytest.mark.one_bookkeeping
@pytest.mark.parametrize("compiled", [False, True])
def test_an_index_row_outside_its_buffer_is_refused(compiled: bool) -> None:
    if compiled:
        kernels.load()
    index_rows = kernels.index_rows if compiled else interpreted("index_rows")
    words = np.zeros(17, dtype=np.uint64)  # 136 bytes
    fields = np.array([16, 48])
    with pytest.raises(ValueError, match="a record lies outside its buffer"):
        index_rows(words, np.array([0, 104]), 0, 0, np.uint64(0), fields)
    with pytest.raises(ValueError, match="not where its piece's records start"):
        index_rows(words, np.array([0, 12]), 0, 0, np.uint64(0), fields)


@pytest.mark.one_bookkeeping
@pytest.mark.parametrize("compiled", [False, True])
def test_a_group_past_the_count_is_refused_before_a_row_is_written(compiled: bool) -> None:
    if compiled:
        kernels.load()
    group_rows = kernels.group_rows if compiled else interpreted("group_rows")
    with pytest.raises(ValueError, match="a group past the count"):
        group_rows(np.zeros((3, 5), dtype=np.uint64), np.array([1, 64, 2], dtype=np.uint8), 64)


def large_state(accounts: int) -> dict[int, list[Account]]:
    """Three storages of ``accounts`` each, every pubkey of the first stored again in the
    third (superseded, its older version first), a few closed there."""
    rng = np.random.default_rng(11)
    keys = [rng.bytes(32) for _ in range(2 * accounts)]
    return {
        480: [Account(k, 5 + i, rng.bytes(165)) for i, k in enumerate(keys[:accounts])],
        490: [Account(k, 7, rng.bytes(i % 300)) for i, k in enumerate(keys[accounts:])],
        500: [
            Account(k, 9, b"new") if i % 50 else Account(k, 0)  # closed: the default account
            for i, k in enumerate(keys[:accounts])
        ],
    }


async def test_a_following_check_of_a_large_full_proves_it_with_a_worker(tmp_path: Path) -> None:
    """Large enough for the compiled kernels and the worker (the daemon's refresh path): the
    superseded versions taken out, the closed ones counting nothing, no worker left."""
    archive = write_archive(tmp_path, large_state(3000))
    data = archive.read_bytes()
    part = tmp_path / "part"
    step = len(data) // 7 + 1
    with open(part, "wb") as f:  # noqa: ASYNC230 (a local temp file, as test_archivecheck's)
        check = FollowingCheck.start(
            f.fileno(), archive.name, prove_accounts=AccountsLimits(max_accounts=100_000)
        )
        for at in range(0, len(data), step):
            f.write(data[at : at + step])
            f.flush()
            check.advance(min(len(data), at + step))
            await trio.lowlevel.checkpoint()
        check.finish(len(data))
        with trio.fail_after(60):
            proof = (await check.result()).proof
    assert (proof.level, proof.note) == (Level.ACCOUNTS, None)
    assert kernels._LOADED
    assert not workers()


def test_a_worker_that_cannot_start_costs_the_proof(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashworker.sys, "executable", "/nonexistent/python")
    proof = AccountsProof(AccountsLimits(max_accounts=1000), HashWorker(start_from=0))
    given = storages()
    for storage in given:
        feed(proof, storage, 4096)
    lt_hash, note = proof.finish(reread_from({s.name: s.data for s in given}))
    assert lt_hash is None
    assert note is not None and note.startswith("not proven: the hashing process could not start")


@pytest.mark.one_bookkeeping
def test_the_worker_is_started_with_the_directory_that_holds_the_package() -> None:
    # run from a source tree (no installed package), the child finds ``tracker`` only by the
    # PYTHONPATH entry the parent adds: the directory above the package, wherever the
    # module lies inside it
    root = Path(hashworker._package_root())
    assert (root / "tracker" / "proof" / "accounts" / "hashworker.py").is_file()


@pytest.mark.one_bookkeeping
def test_the_compiled_copy_copies_what_a_slice_copies() -> None:
    # the canary of the one use of numba below its documented API (kernels._compile_copy):
    # the layout compiled with memcpy gives the interpreted layout's bytes, and refuses a
    # record or a message outside its buffer rather than copying past it
    rng = np.random.default_rng(7)
    lens = rng.integers(1, 3000, 500)
    sizes = META + ((lens + 7) & ~7)
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    buf = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
    chosen = np.flatnonzero(rng.random(500) < 0.7).astype(np.int64)
    fields = np.array([48, 96, 64, 16, META], dtype=np.int64)
    kernels.load()
    compiled = kernels.lay_out(buf, offsets, lens.astype(np.int64), chosen, fields)
    laid = np.zeros(len(compiled[0]), dtype=np.uint8)
    _, ends = interpreted("lay_out_into")(buf, offsets, lens.astype(np.int64), chosen, fields, laid)
    assert compiled[0].tobytes() == laid.tobytes()
    assert compiled[2].tolist() == ends.tolist()
    short = np.zeros(int(compiled[2][-1]) - 1, dtype=np.uint8)
    with pytest.raises(ValueError, match="pass the end"):
        kernels.lay_out_into(buf, offsets, lens.astype(np.int64), chosen, fields, short)
    beyond = offsets.copy()
    beyond[chosen[-1]] = len(buf) - META
    with pytest.raises(ValueError, match="outside its buffer"):
        kernels.lay_out(buf, beyond, lens.astype(np.int64), chosen, fields)


@pytest.mark.one_bookkeeping
def test_the_child_starts_with_what_it_hashes_with_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # its start-up is paid by every proof: no budget module (attrs and the rest) in the child,
    # and one OpenBLAS thread (numpy's import starts one a core otherwise, never used here)
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tracker.proof.accounts.hashworker;"
            "print(sorted(m for m in sys.modules if m.startswith(('tracker', 'attr'))))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": hashworker._package_root()},
    ).stdout
    assert "tracker.proof.accounts.budget" not in loaded and "'attr'" not in loaded
    started: list[dict[str, str]] = []
    real = subprocess.Popen

    def popen(*args: object, **kwargs: object) -> object:
        started.append(kwargs["env"])  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(hashworker.subprocess, "Popen", popen)
    worker = HashWorker(start_from=0)
    try:
        worker.add(np.zeros(73, dtype=np.uint8), np.array([73], dtype=np.int64))
    finally:
        worker.close()
    assert started and started[0]["OPENBLAS_NUM_THREADS"] == "1"


def test_a_worker_that_answers_a_slot_twice_costs_the_proof(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a slot named again once free would be lent twice (two batches laid out in it): the
    # answer is taken as the child misspeaking, the proof stops, the archive is not judged
    # (the child's answers waited for as long as the check waits for them: on a loaded host
    # a child may answer after a shortened wait, and the proof would stop for that instead)
    worker, proof, given = begun()
    assert worker._proc is not None and worker._proc.stdout is not None
    answers, real_read, doubled = worker._proc.stdout.fileno(), os.read, []

    def read(fd: int, size: int) -> bytes:
        data = real_read(fd, size)
        if fd == answers and data and not doubled:
            doubled.append(data)
            return data + data[:1]
        return data

    monkeypatch.setattr(hashworker.os, "read", read)
    for storage in given[1:]:
        feed(proof, storage, 4096)
    lt_hash, note = proof.finish(reread_from({s.name: s.data for s in given}))
    assert doubled and (lt_hash, note) == (None, "not proven: the hashing process misspoke")
    assert not workers()


@pytest.mark.one_bookkeeping
@pytest.mark.parametrize(
    "closed",
    [
        Account(b"\x05" * 32, 0, b"hidden"),
        Account(b"\x05" * 32, 0, owner=b"\x07" * 32),
        Account(b"\x05" * 32, 0, rent_epoch=3),
        Account(b"\x05" * 32, 0, executable=True),
    ],
    ids=["data", "owner", "rent-epoch", "executable"],
)
def test_a_record_of_no_lamports_must_be_the_default_account(closed: Account) -> None:
    # agave's sanitize_lamports refuses the storage at load; such a record counts nothing
    # in the lattice hash, so anything hidden in it left the proof at accounts
    data = np.frombuffer(write_storage([Account(b"\x01" * 32, 5, b"ok"), closed]), np.uint8)
    with pytest.raises(ArchiveInvalid, match="has no lamports but is not the default account"):
        storages_scan(data, 0, len(data), 0, "accounts/9.0")
    fine = np.frombuffer(write_storage([Account(b"\x05" * 32, 0)]), np.uint8)
    assert storages_scan(fine, 0, len(fine), 0, "accounts/9.0")[0].tolist() == [0]


@pytest.mark.one_bookkeeping
def test_many_small_calls_compile_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only a call of COMPILE_FROM items (or 4,096 storages) compiled them: an archive of
    # storages of a few records each ran interpreted, ~13 times the CPU, until a flush.
    loads: list[bool] = []
    monkeypatch.setattr(kernels, "_LOADED", [])
    monkeypatch.setattr(kernels, "_INTERPRETED", [0])
    monkeypatch.setattr(kernels, "load", lambda: loads.append(True))

    def probe(items: list[int]) -> str:
        return "interpreted"

    monkeypatch.setattr(kernels, "probe", lambda items: "compiled", raising=False)
    kernel = kernels._Kernel(probe, 0, 1)
    small = [0] * 100
    runs = [kernel(small) for _ in range(kernels.INTERPRETED_AT_MOST // 100 + 2)]
    assert runs[0] == "interpreted" and runs[-1] == "compiled" and loads
    assert runs.count("interpreted") == -(-kernels.INTERPRETED_AT_MOST // 100)


#: A parent that goes away (the tracker stopping mid-proof) while its hashing child hashes a
#: slot: the child's answer goes to a closed pipe.
_PARENT_GONE = """
import os
import numpy as np
from tracker.proof.accounts.hashworker import HashWorker, SEND_AT
worker = HashWorker(start_from=0)
worker.expect(1)
room = worker.room(SEND_AT)
room[:] = 7
worker.add(room, np.arange(200, SEND_AT + 1, 200, dtype=np.int64))
print(worker.pid, flush=True)
os._exit(0)
"""


@pytest.mark.one_bookkeeping
def test_a_child_whose_parent_went_away_ends_without_a_word() -> None:
    """The tracker stopped while its hashing child hashed a slot: the child's answer went to
    a closed pipe, and its BrokenPipeError was a whole traceback on the tracker's stderr
    (the journal). It ends as when its input ends, silently."""
    done = subprocess.run(
        [sys.executable, "-c", _PARENT_GONE],
        capture_output=True,
        text=True,
        timeout=60,  # (read to the end: the child keeps stderr open until it ends)
        env={**os.environ, "PYTHONPATH": str(Path(hashworker.__file__).parents[3])},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().isdigit()
    assert done.stderr == ""
