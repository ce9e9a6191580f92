"""The first read's scan lanes (``scanlanes.Apart``, ``scan_lanes``): what they run, in
which thread, in which order, and what they raise, drop and leave behind."""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from agave_storages import Storage, expected_lt_hash, feed, storages
from archives import make_tar

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts import accountsproof, scanlanes
from tracker.proof.accounts.accounthash import LocalSum
from tracker.proof.accounts.accountsproof import AccountsProof
from tracker.proof.accounts.accountsprover import StoragesProver
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.accounts.scanlanes import Apart, scan_lanes
from tracker.proof.archive.archivecheck import check_stream
from tracker.proof.formats import storages as storage_format
from tracker.proof.formats.parsing import Bulk
from tracker.proof.formats.writing import (
    Account,
    archive_hash_of,
    lattice_of_slots,
    write_manifest,
    write_status_cache,
    write_storage,
)

# the scan lanes, as a host of many cores would not use them (it scans in processes)
pytestmark = pytest.mark.usefixtures("no_scan_processes")


def reread_from(given: Iterable[Storage]) -> accountsproof.Reread:
    members = {s.name: s.data for s in given}

    def reread(name: str, start: int) -> Iterable[bytes]:
        return [members[name][start:]]

    return reread


@pytest.mark.parametrize(
    ("workers", "memory_mib", "lanes"),
    [
        (1, 512, 0),
        (2, 4096, 0),  # on two, the reading thread, SHA-256's and the hashing keep both busy
        (3, 512, 1),
        (16, 512, 1),  # two hashing processes paid for: one lane keeps pace
        (16, 1024, 2),  # seven
        (16, 2048, 3),  # eleven
        (32, 4096, 4),  # twenty-nine: at most four, past them the lock is the floor
        (64, 8192, 4),
    ],
)
def test_the_storages_are_scanned_in_lanes_from_three_cores(
    workers: int, memory_mib: int, lanes: int
) -> None:
    assert scan_lanes(AccountsLimits(memory=memory_mib << 20, workers=workers)) == lanes


class Watching(LocalSum):
    """A summer that notes the threads it is asked for room in, and holds the first ask
    until ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.asked = threading.Event()
        self.threads: set[str] = set()

    def room(self, size: int, negative: bool = False) -> Any:
        self.threads.add(threading.current_thread().name)
        self.asked.set()
        assert self.gate.wait(10)
        return np.empty(size, dtype=np.uint8)


def test_the_reading_thread_goes_on_while_the_bookkeeping_of_a_batch_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage_format, "PIECE", 1024)  # several batches a storage
    summer = Watching()
    proof = AccountsProof(AccountsLimits(max_accounts=1000), summer, lanes=1)
    given = storages()
    # the first storage's batches are read, while the bookkeeping waits on the first of them
    feed(proof, given[0], 4096)
    assert summer.asked.wait(10)
    assert not summer.gate.is_set()
    summer.gate.set()
    for storage in given[1:]:
        feed(proof, storage, 4096)
    proof.settle()
    assert summer.threads == {"accounts-scan"}  # the first read's asks (the second's: here)
    assert proof.finish(reread_from(given)) == (expected_lt_hash(), None)
    assert proof.bookkeeping_cpu > 0


def test_inline_the_bookkeeping_is_the_reading_threads() -> None:
    summer = Watching()
    summer.gate.set()
    proof = AccountsProof(AccountsLimits(max_accounts=1000), summer, lanes=0)
    given = storages()
    for storage in given:
        feed(proof, storage, 4096)
    assert summer.threads == {threading.current_thread().name}
    assert proof.finish(reread_from(given)) == (expected_lt_hash(), None)
    assert proof.bookkeeping_cpu == 0.0


def test_a_batch_in_a_buffer_the_reader_fills_again_is_copied_before_it_goes_apart() -> None:
    # a view of a buffer that the decoder fills again must not reach the thread: what it
    # reads later would be the next piece's bytes
    accounts = [Account(bytes([n]) * 32, n + 1, bytes([n]) * 40) for n in range(30)]
    data = write_storage(accounts)
    proof = AccountsProof(AccountsLimits(max_accounts=1000), LocalSum(), lanes=1)
    parser = proof.storage(5, 0, len(data), len(data))
    want = next(parser)
    buffer = bytearray(len(data))
    at = 0
    while at < len(data):
        assert isinstance(want, Bulk)
        buffer[:want] = data[at : at + want]
        at += want
        try:
            want = parser.send(memoryview(buffer)[:want])
        except StopIteration:
            want = None
        buffer[:] = bytes(len(buffer))  # filled again: by zeros here
        if want is None:
            break
    storage = Storage(5, 0, data, len(data))
    assert proof.finish(reread_from([storage])) == (lattice_of_slots({5: accounts}), None)


def test_what_a_job_raises_comes_out_of_the_next_put_and_the_rest_is_dropped() -> None:
    apart = Apart()
    ran: list[int] = []
    gate = threading.Event()

    def fail() -> None:
        assert gate.wait(10)
        raise OSError("disk gone")

    apart.put(lambda: ran.append(1))
    apart.put(fail)
    apart.put(lambda: ran.append(2))  # queued before the failure: dropped
    gate.set()
    with pytest.raises(OSError, match="disk gone"):
        apart.settle()
    with pytest.raises(OSError, match="disk gone"):
        apart.put(lambda: ran.append(3))
    apart.close()
    assert ran == [1]


def test_jobs_run_in_order_and_settle_waits_for_them() -> None:
    apart = Apart()
    ran: list[int] = []
    for n in range(50):
        apart.put(lambda n=n: ran.append(n))
    apart.settle()
    assert ran == list(range(50))
    apart.close()


def test_close_drops_what_waits_and_ends_the_thread() -> None:
    apart = Apart()
    gate = threading.Event()
    started = threading.Event()
    ran: list[int] = []
    threads: list[threading.Thread] = []

    def first() -> None:
        threads.append(threading.current_thread())
        started.set()
        assert gate.wait(10)
        ran.append(0)

    apart.put(first)
    assert started.wait(10)
    for n in range(1, Apart.QUEUED + 1):
        apart.put(lambda n=n: ran.append(n))  # waiting: the queue is full now
    closer = threading.Thread(target=apart.close)
    closer.start()
    gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert ran == [0]  # what waited was dropped
    assert not threads[0].is_alive()
    apart.put(lambda: ran.append(99))  # closed: nothing runs any more
    apart.settle()
    assert ran == [0]


def test_an_idle_thread_ends_and_the_next_job_starts_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Apart, "IDLE", 0.01)
    apart = Apart()
    ran: list[threading.Thread] = []
    apart.put(lambda: ran.append(threading.current_thread()))
    apart.settle()
    ran[0].join(10)  # nothing more to do: it ends by itself
    assert not ran[0].is_alive()
    apart.put(lambda: ran.append(threading.current_thread()))
    apart.settle()
    assert ran[1] is not ran[0] and ran[1].name == "accounts-scan"
    apart.close()


def test_a_job_that_settles_does_not_wait_for_itself() -> None:
    apart = Apart()
    done = threading.Event()

    def settling() -> None:
        apart.settle()  # the proof's own code asks for its figures from within a job
        done.set()

    apart.put(settling)
    apart.settle()
    assert done.is_set()
    apart.close()


class Told(AccountsProof):
    """A proof whose storage 0's batches wait in their lane until ``gate`` opens (outside the
    lock the lanes' bookkeeping shares), and that says when a lane kept a refusal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.told = threading.Event()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def _take(self, batch: storage_format.Records, number: int) -> None:
        if number == 0:
            self.entered.set()
            assert self.gate.wait(10)
        super()._take(batch, number)

    def _refuse(self, number: int, exc: BaseException) -> None:
        super()._refuse(number, exc)
        self.told.set()


def bad_late(slot: int, ident: int, count: int, bad_at: int) -> Storage:
    """A storage of ``count`` accounts whose record ``bad_at`` has executable byte 2."""
    accounts = [Account(bytes([slot, n]) * 16, n + 1, bytes(100)) for n in range(count)]
    data = bytearray(write_storage(accounts))
    at = bad_at * storage_format.aligned(storage_format.META + 100)
    data[at + storage_format.EXECUTABLE] = 2
    return Storage(slot, ident, bytes(data), len(data))


def test_the_first_storage_in_the_stream_that_fails_is_the_refusal_whatever_lane_meets_it_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # storage 0 (bad in its second piece) waits in one lane while storage 1 (bad in its first
    # record) fails in the other: the refusal is still storage 0's, the serial reading's
    monkeypatch.setattr(storage_format, "PIECE", 1024)  # four records a piece
    proof = Told(AccountsLimits(max_accounts=1000), LocalSum(), lanes=2)
    first, second = bad_late(7, 0, 8, 6), bad_late(8, 1, 3, 0)  # two pieces: the lane holds them

    def open_once_the_second_failed() -> None:
        assert proof.told.wait(10)
        proof.gate.set()

    opener = threading.Thread(target=open_once_the_second_failed)
    opener.start()
    feed(proof, first, 4096)  # its first batch waits in its lane
    assert proof.entered.wait(10)

    def both() -> None:
        feed(proof, second, 4096)
        proof.settle()

    with pytest.raises(ArchiveInvalid) as caught:
        both()
    opener.join(10)
    assert caught.value.reason == (
        f"accounts/7.0: the record at byte {6 * 240} has executable byte 2 (0 or 1)"
    )
    proof.close()


class GatedProver(StoragesProver):
    """The storages' prover of a check whose lane waits until the check settles it."""

    gate: threading.Event

    def settle(self) -> None:
        self.gate.set()
        super().settle()


def test_a_storage_scanned_apart_refuses_before_what_the_reading_thread_met_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the stream is cut after a bad storage; its lane waits until the reading thread met the
    # cut: the refusal is still the storage's, as when the reading thread scans it
    monkeypatch.setattr(accountsproof, "scan_lanes", lambda limits: 1)
    monkeypatch.setattr(storage_format, "PIECE", 1024)
    storage = bad_late(7, 0, 12, 10)
    lt_hash = bytes(2048)
    entries: list[tuple[str, bytes | None]] = [
        ("version", b"1.2.0"),
        ("snapshots/9/9", write_manifest(9, lt_hash, [(7, 0, len(storage.data))])),
        ("snapshots/status_cache", write_status_cache([9])),
        (storage.name, storage.data),
        ("accounts/8.1", bytes(4096)),
    ]
    tar = make_tar(entries)
    cut = tar[: tar.index(b"accounts/8.1") + 1024]  # inside the member after the storage
    summer = Watching()
    prover = GatedProver(AccountsLimits(max_accounts=1000), summer=lambda: summer)
    prover.gate = summer.gate
    stream = io.BytesIO(cut)
    with pytest.raises(ArchiveInvalid) as caught:
        check_stream(
            stream.read,
            f"snapshot-9-{archive_hash_of(lt_hash)}.tar",
            prefetch=False,
            accounts=prover,
        )
    prover.close()
    assert caught.value.reason == (
        f"accounts/7.0: the record at byte {10 * 240} has executable byte 2 (0 or 1)"
    )


class SeesWrites(LocalSum):
    """A summer that notes a batch laid out while the index's runs were being written."""

    def __init__(self, writing: threading.Event) -> None:
        super().__init__()
        self.writing = writing
        self.beside = threading.Event()

    def room(self, size: int, negative: bool = False) -> Any:
        if self.writing.is_set():
            self.beside.set()
        return super().room(size, negative)


def test_a_lane_writes_the_index_s_full_staging_buffer_while_the_others_go_on(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # storage 0 fills the index's staging buffer (~1,800 records at the smallest floor): its
    # lane writes it, held here; storage 1's batch is still laid out meanwhile, in the other
    # lane: the write holds none of what the lanes share
    writing, gate = threading.Event(), threading.Event()
    real = accountsproof.SpillIndex.write

    def held(self: Any, rows: Any) -> None:
        writing.set()
        assert gate.wait(10)
        real(self, rows)

    monkeypatch.setattr(accountsproof.SpillIndex, "write", held)
    summer = SeesWrites(writing)
    limits = AccountsLimits(memory=1 << 20, temp_dir=str(tmp_path))
    proof = AccountsProof(limits, summer, lanes=2)
    first = Storage(5, 0, write_storage([Account(key(n), 1) for n in range(2000)]), 0)
    first = Storage(5, 0, first.data, len(first.data))
    second = Storage(6, 1, write_storage([Account(key(9000 + n), 1) for n in range(10)]), 0)
    second = Storage(6, 1, second.data, len(second.data))
    try:
        feed(proof, first, 1 << 20)
        assert writing.wait(10)
        feed(proof, second, 1 << 20)
        assert summer.beside.wait(10)
    finally:
        gate.set()
    proof.settle()
    assert proof.records == 2010
    proof.close()


def key(n: int) -> bytes:
    return n.to_bytes(4, "big") * 8


def test_the_switch_interval_is_short_while_a_lane_runs_and_restored_after() -> None:
    # a lane holding the lanes' lock waits for the GIL after each kernel or write: up to the
    # interval; while any lane of any proof runs it is SWITCH_INTERVAL, then the one before
    _no_lane_running()
    before = sys.getswitchinterval()
    assert before > scanlanes.SWITCH_INTERVAL  # Python's 5 ms (no other test keeps it)
    seen: list[float] = []
    first, second = Apart(), Apart()
    try:
        first.put(lambda: seen.append(sys.getswitchinterval()))
        first.settle()
        second.put(lambda: seen.append(sys.getswitchinterval()))
        second.settle()
        first.close()  # the other still runs: still short
        second.put(lambda: seen.append(sys.getswitchinterval()))
        second.settle()
    finally:
        first.close()
        second.close()
    assert seen == [scanlanes.SWITCH_INTERVAL] * 3
    assert sys.getswitchinterval() == before


def test_no_switch_interval_of_its_own_when_set_to_none(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_lane_running()
    monkeypatch.setattr(scanlanes, "SWITCH_INTERVAL", 0)
    before = sys.getswitchinterval()
    seen: list[float] = []
    lane = Apart()
    try:
        lane.put(lambda: seen.append(sys.getswitchinterval()))
        lane.settle()
    finally:
        lane.close()
    assert seen == [before]


def _no_lane_running() -> None:
    """The lanes of earlier tests in this process have ended."""
    assert scanlanes.no_lanes_running(timeout=10 * Apart.IDLE)


class _Watched:
    """A lock that says when a thread first asks for it."""

    def __init__(self) -> None:
        self.real = threading.Lock()
        self.asked = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.asked.set()
        return self.real.acquire(blocking, timeout)

    def release(self) -> None:
        self.real.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_an_idle_lane_never_waits_for_the_lock_its_producer_holds() -> None:
    # The lane's thread, idle past IDLE, asked for the lock to end; the reading thread held
    # it while queueing into a full queue that only the lane empties: both waited for good
    # (the check and its refresh hung).
    lane = Apart(1)
    lane.IDLE = 0.0
    watched = _Watched()
    lane._lock = watched  # type: ignore[assignment]
    watched.real.acquire()  # the producer, queueing
    thread = threading.Thread(target=lane._take_jobs, daemon=True)
    lane._thread = thread
    thread.start()
    assert watched.asked.wait(10)  # idle: it asks for the lock
    try:
        for _ in range(3):  # past the one the queue holds: only the lane can make room
            lane._jobs.put(lambda: None, timeout=10)
    finally:
        watched.real.release()
    lane.close()
    thread.join(10)
    assert not thread.is_alive()
