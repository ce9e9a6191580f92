"""The first read's bookkeeping in a thread of its own (``accountsproof.Apart``): what it runs,
in which thread, in which order, and what it raises, drops and leaves behind."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from agave_storages import Storage, expected_lt_hash, feed, storages

from tracker.proof.accounts import accountsproof
from tracker.proof.accounts.accounthash import LocalSum
from tracker.proof.accounts.accountsproof import AccountsProof, Apart, parse_apart
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.formats import storages as storage_format
from tracker.proof.formats.parsing import Bulk
from tracker.proof.formats.writing import Account, lattice_of_slots, write_storage


def reread_from(given: Iterable[Storage]) -> accountsproof.Reread:
    members = {s.name: s.data for s in given}

    def reread(name: str, start: int) -> Iterable[bytes]:
        return [members[name][start:]]

    return reread


@pytest.mark.parametrize(
    ("workers", "apart"),
    [(1, False), (2, False), (3, True), (16, True)],
)
def test_the_bookkeeping_goes_apart_from_three_cores(workers: int, apart: bool) -> None:
    # on two, the reading thread, SHA-256's and the hashing process keep both busy already
    assert parse_apart(AccountsLimits(workers=workers)) is apart


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
    proof = AccountsProof(AccountsLimits(max_accounts=1000), summer, apart=True)
    given = storages()
    # the first storage's batches are read, while the bookkeeping waits on the first of them
    feed(proof, given[0], 4096)
    assert summer.asked.wait(10)
    assert not summer.gate.is_set()
    summer.gate.set()
    for storage in given[1:]:
        feed(proof, storage, 4096)
    proof.settle()
    assert summer.threads == {"accounts-index"}  # the first read's asks (the second's: here)
    assert proof.finish(reread_from(given)) == (expected_lt_hash(), None)
    assert proof.bookkeeping_cpu > 0


def test_inline_the_bookkeeping_is_the_reading_threads() -> None:
    summer = Watching()
    summer.gate.set()
    proof = AccountsProof(AccountsLimits(max_accounts=1000), summer, apart=False)
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
    proof = AccountsProof(AccountsLimits(max_accounts=1000), LocalSum(), apart=True)
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
    assert ran[1] is not ran[0] and ran[1].name == "accounts-index"
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
