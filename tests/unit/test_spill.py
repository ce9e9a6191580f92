"""The accounts proof within a memory budget: the spilled, partitioned pubkey index."""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

import attrs
import numpy as np
import pytest
from agave_storages import feed
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_proof_accounts import (
    built,
    key,
    model,
    reread_from,
    second_read_by_way,  # noqa: F401 (autouse: its second reads as test_proof_accounts')
    states,
)

from tracker.errors import ArchiveInvalid, NoRoom
from tracker.observability.metrics import Metrics
from tracker.proof.accounts import spill as spill_module
from tracker.proof.accounts.accountsproof import AccountsProof
from tracker.proof.accounts.budget import (
    LOCKLESS_GRACE,
    PREFIX,
    AccountsLimits,
    BudgetShare,
    MemoryBudget,
    clean_leftovers,
    running,
)
from tracker.proof.accounts.spill import SpillDir, SpillIndex, superseded_of
from tracker.proof.formats import storages as storage_format
from tracker.proof.formats.writing import Account

pytestmark = pytest.mark.usefixtures("bookkeeping_both_ways")

ZERO_KEY = np.zeros(4, dtype=np.uint64)  # every fingerprint the same: all collide


def versions_of(rnd: list[tuple[int, int, bool]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys (n, 4), locators and storage slots of versions (pubkey number, slot, counts):
    storage number = slot, offset = the version's index."""
    keys = np.zeros((len(rnd), 4), dtype=np.uint64)
    locators = np.zeros(len(rnd), dtype=np.uint64)
    for i, (pubkey, slot, counts) in enumerate(rnd):
        keys[i] = [pubkey % 3, 7, pubkey // 3, pubkey]  # keys sharing words
        locators[i] = (slot << 32) | (i << 1) | int(counts)
    storage_slots = np.arange(64, dtype=np.uint64)
    return keys, locators, storage_slots


def model_superseded(rnd: list[tuple[int, int, bool]]) -> tuple[set[int], bool]:
    """The dict model: per pubkey its versions; all but the newest that count are
    superseded; a pubkey twice in a slot is refused."""
    by_key: dict[int, list[tuple[int, int, bool]]] = {}
    for i, (pubkey, slot, counts) in enumerate(rnd):
        by_key.setdefault(pubkey, []).append((slot, i, counts))
    twice = False
    found: set[int] = set()
    for versions in by_key.values():
        slots = [slot for slot, _, _ in versions]
        twice |= len(set(slots)) < len(slots)
        newest = max(slots)
        found |= {i for slot, i, counts in versions if slot < newest and counts}
    return found, twice


_versions = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 63), st.booleans()), max_size=300)


@pytest.mark.one_bookkeeping
@settings(max_examples=200, deadline=None)
@given(_versions, st.booleans())
def test_dedup_of_a_partition_matches_a_dict(
    rnd: list[tuple[int, int, bool]], colliding: bool
) -> None:
    keys, locators, storage_slots = versions_of(rnd)
    mults = ZERO_KEY if colliding else spill_module.draw_multipliers()
    counted, twice_at = superseded_of(keys, locators, storage_slots, mults)
    expected, twice = model_superseded(rnd)
    assert (twice_at is not None) == twice
    if twice_at is None:
        got = {int(loc >> np.uint64(1)) & 0x7FFFFFFF for loc in counted}
        assert got == expected
    else:  # the version named shares its pubkey and slot with another
        pubkey, slot, _ = rnd[twice_at]
        assert sum(1 for p, s, _ in rnd if (p, s) == (pubkey, slot)) > 1


@pytest.mark.one_bookkeeping
def test_colliding_fingerprints_never_make_two_accounts_one() -> None:
    # two pubkeys whose versions interleave by slot, all fingerprints equal: a forgery that
    # relied on a collision (the older version of A hidden by B's newer one) is seen
    rnd = [(1, 5, True), (2, 6, True), (1, 7, True), (2, 3, True)]
    keys, locators, storage_slots = versions_of(rnd)
    counted, twice_at = superseded_of(keys, locators, storage_slots, ZERO_KEY)
    assert twice_at is None
    assert {int(loc >> np.uint64(1)) & 0x7FFFFFFF for loc in counted} == {0, 3}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _versions.filter(lambda r: not model_superseded(r)[1]), st.booleans(), st.sampled_from([1, 3])
)
# one partition of 30 versions: over one share of 20, within the 60 of three: one thread
@pytest.mark.one_bookkeeping
@example(rnd=[(key, 5, True) for key in range(30)], colliding=True, threads=3)
@example(rnd=[(key, 5, True) for key in range(61)], colliding=True, threads=3)
def test_the_spilled_index_matches_a_dict_through_splits(
    tmp_path_factory: pytest.TempPathFactory,
    rnd: list[tuple[int, int, bool]],
    colliding: bool,
    threads: int,
) -> None:
    # partitions deduplicated one at a time or by three threads, each within its share
    root = tmp_path_factory.mktemp("spill")
    keys, locators, storage_slots = versions_of(rnd)
    directory = SpillDir(str(root))
    index = SpillIndex(directory, 64 * 80, ZERO_KEY if colliding else None)  # 64 staged
    for at in range(0, len(rnd), 37):
        index.add(np.column_stack((keys[at : at + 37], locators[at : at + 37])))

    def twice(key: np.ndarray, locator: int) -> None:
        raise AssertionError("no pubkey is twice in a slot here")

    # 20 records' worth a thread: as many threads as keep the largest partition in a share
    # (at least 20 records' worth, a tracker's a MiB), one when it passes all of it: then it
    # is split
    memory = 20 * spill_module.DEDUP_COST * threads
    small_shares = mock.patch.object(spill_module, "MIN_SHARE", 20 * spill_module.DEDUP_COST)
    if colliding and len(rnd) > 20 * threads:  # one partition whatever the bits: no split
        with small_shares, pytest.raises(NoRoom, match="pass the memory of the proof"):
            index.superseded_runs(storage_slots, memory, twice, threads)
        directory.remove()
        return
    with small_shares:
        index.superseded_runs(storage_slots, memory, twice, threads)
    pieces = list(index.superseded_in_order(64, 16 * 10))  # pieces of at most ~10 locators
    got = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint64)
    assert (np.diff(got.astype(np.int64)) > 0).all()  # sorted across pieces: storage order
    assert {int(loc >> np.uint64(1)) & 0x7FFFFFFF for loc in got} == model_superseded(rnd)[0]
    directory.remove()
    assert os.listdir(root) == []


@pytest.mark.one_bookkeeping
@pytest.mark.parametrize(
    ("workers", "memory_mib", "threads"),
    [(2, 512, 2), (16, 512, 16), (128, 512, 64), (16, 4, 4), (16, 1, 1), (16, 0, 1)],
)
def test_partitions_are_deduplicated_by_as_many_threads_as_keep_a_share_each(
    workers: int, memory_mib: int, threads: int
) -> None:
    # a small budget is not cut in more pieces on more cores: a proof that passes on two
    # cores passes on sixteen (one pubkey's versions must fit a share)
    assert spill_module.dedup_threads(workers, memory_mib * 1024**2) == threads


MIB = 1024**2
#: the records whose sort takes one MiB
PER_MIB = MIB // spill_module.DEDUP_COST * spill_module.RECORD


@pytest.mark.one_bookkeeping
@pytest.mark.parametrize(
    ("workers", "memory_mib", "largest_mib_of_sort", "threads"),
    [
        (16, 268, 0, 16),  # nothing known of the partitions: the share's floor alone
        (16, 268, 29, 9),  # 16 million accounts in the default budget on 16 cores
        (16, 268, 16, 16),
        (2, 268, 29, 2),
        (16, 268, 300, 1),  # the largest does not fit even alone: split, in one thread
        (16, 4096, 29, 16),
    ],
)
def test_no_more_threads_than_the_largest_partition_fits_in_the_shares_of(
    workers: int, memory_mib: int, largest_mib_of_sort: int, threads: int
) -> None:
    largest = largest_mib_of_sort * PER_MIB
    assert spill_module.dedup_threads(workers, memory_mib * MIB, largest) == threads


@pytest.mark.one_bookkeeping
def test_partitions_that_fit_a_share_of_fewer_threads_are_not_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every partition fits the memory of one of two threads, none one of sixteen's: the
    # deduplication takes fewer threads rather than writing each partition again in pieces
    monkeypatch.setattr(spill_module, "MIN_SHARE", spill_module.DEDUP_COST)
    index = SpillIndex(SpillDir(str(tmp_path)), 1 << 20)
    rows = np.zeros((20_000, 5), dtype=np.uint64)
    rows[:, :4] = np.random.default_rng(7).integers(0, 2**63, size=(20_000, 4), dtype=np.uint64)
    rows[:, 4] = (np.arange(20_000, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
    index.add(rows)
    index.seal()
    split: list[str] = []
    pieces = spill_module.SpillDir.pieces

    def counted(self: SpillDir, name: str, step: int) -> Any:
        split.append(name)
        return pieces(self, name, step)

    def twice(key: np.ndarray, locator: int) -> None:
        raise AssertionError("no pubkey is twice in a slot here")

    monkeypatch.setattr(spill_module.SpillDir, "pieces", counted)
    sizes = [index.dir.size(f"p{part:02d}") for part in range(spill_module.FANOUT)]
    largest = max(sizes) // spill_module.RECORD * spill_module.DEDUP_COST
    assert largest * 2 < min(sizes) // spill_module.RECORD * spill_module.DEDUP_COST * 16
    index.superseded_runs(np.zeros(1, dtype=np.uint64), largest * 2, twice, 16)
    assert split == []
    assert index.dir.size("s") == 0  # every pubkey once: nothing superseded
    index.dir.remove()


def tiny(tmp_path: Path, room: int = 4096) -> AccountsLimits:
    """Limits whose budget has ``room`` accounted bytes: the index spills at once."""
    return AccountsLimits(temp_dir=str(tmp_path), budget=MemoryBudget(room, room=room))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states(), st.randoms())
def test_a_proof_past_its_budget_spills_and_gives_the_models_hash(
    tmp_path_factory: pytest.TempPathFactory, slots: dict[int, list[Account]], rnd: object
) -> None:
    root = tmp_path_factory.mktemp("proof")
    order = list(slots)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    made = built(slots, order)
    proof = AccountsProof(tiny(root))  # not even the index's first table fits
    for storage in made:
        feed(proof, storage, 64)
    proof.settle()
    versions = sum(len(accounts) for accounts in slots.values())
    # on disk, but for versions that all fit in its staging buffer, held within the budget
    assert proof.index.on_disk or versions <= proof.index.staged_bytes // spill_module.RECORD
    assert proof.held.peak <= 4096
    assert proof.finish(reread_from({s.name: s.data for s in made})) == (model(slots), None)
    assert os.listdir(root) == []  # removed at the end


#: The second read's pieces in the spill and budget tests, whose point is not the chunking
#: (records still cross their ends): ``reread_from``'s 5 bytes made one lane job each,
#: 470,000 for three proofs.
PIECE = 4099


def many(count: int, slot: int, lamports: int = 1, start: int = 0) -> list[Account]:
    return [
        Account(n.to_bytes(4, "big") * 8, lamports, b"d" * (n % 5)) for n in range(start, count)
    ]


def test_a_proof_of_more_accounts_than_its_memory_holds_is_proven_and_reports_its_spill(
    tmp_path: Path,
) -> None:
    slots = {3: many(3000, 3), 5: many(2000, 5, lamports=2), 9: many(1500, 9, start=1000)}
    made = built(slots, [5, 3, 9])  # older slot after newer: both paths of superseding
    limits = tiny(tmp_path, room=64 * 1024)
    proof = AccountsProof(limits)
    spilled_dir: list[str] = []
    for storage in made:
        feed(proof, storage, 1 << 20)
        proof.settle()  # its batches in the index (a lane may still hold them)
        if proof.index.on_disk and not spilled_dir:
            spilled_dir = os.listdir(tmp_path)
            assert proof.progress in running()  # counted among the running proofs
            exported = Metrics(process=False).render()[0].decode().splitlines()
            values = dict(line.split() for line in exported if not line.startswith("#"))
            assert float(values["snapshot_tracker_accounts_proofs_running"]) >= 1
            assert float(values["snapshot_tracker_accounts_proof_spill_bytes"]) > 0
    assert spilled_dir and spilled_dir[0].startswith(PREFIX)
    assert proof.held.peak <= 64 * 1024  # the budget held
    assert proof.finish(reread_from({s.name: s.data for s in made}, PIECE)) == (model(slots), None)
    assert proof.spilled > 3000 * spill_module.RECORD
    assert os.listdir(tmp_path) == []
    assert limits.shared().used == 0  # every byte given back


def test_a_forgery_is_refused_when_spilled_and_the_files_go(tmp_path: Path) -> None:
    slots = {3: many(500, 3), 5: many(500, 5)}
    made = built(slots, [3, 5])
    twice = built({5: many(300, 5, start=200)}, [5])[0]
    proof = AccountsProof(tiny(tmp_path))
    for storage in (*made, twice):
        feed(proof, storage, 4096)
    with pytest.raises(ArchiveInvalid, match=r"is stored twice in slot 5$"):
        proof.finish(reread_from({s.name: s.data for s in made}))
    assert os.listdir(tmp_path) == []


def test_a_proof_closed_in_the_middle_removes_its_files(tmp_path: Path) -> None:
    proof = AccountsProof(tiny(tmp_path))
    for storage in built({3: many(400, 3)}, [3]):
        feed(proof, storage, 4096)
    proof.settle()
    assert proof.index.on_disk and os.listdir(tmp_path)
    proof.close()  # the check cancelled: its prover is closed
    assert os.listdir(tmp_path) == []


@pytest.mark.one_bookkeeping
def test_leftovers_of_a_killed_proof_go_at_the_next_start_and_a_running_ones_stay(
    tmp_path: Path,
) -> None:
    left = tmp_path / f"{PREFIX}dead"
    left.mkdir()
    (left / "lock").write_bytes(b"")  # nobody holds its lock: the process is gone
    (left / "p00").write_bytes(b"x" * 80)
    alive = SpillDir(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(alive.path)]  # cleaned at start
    assert clean_leftovers(str(tmp_path)) == 0  # a running proof's are kept
    alive.remove()
    assert os.listdir(tmp_path) == []


@pytest.mark.one_bookkeeping
def test_a_spill_directory_let_go_of_without_remove_is_removed(tmp_path: Path) -> None:
    # a signal's interrupt between two statements of whoever holds it (made, not yet handed
    # to the index): the directory goes with the last reference, its lock file closed
    directory = SpillDir(str(tmp_path))
    directory.append("p00", np.zeros(5, dtype=np.uint64))
    path = directory.path
    assert os.listdir(tmp_path) == [os.path.basename(path)]
    del directory
    assert os.listdir(tmp_path) == []


@pytest.mark.one_bookkeeping
def test_an_interrupt_as_the_index_moves_to_disk_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the interrupt lands once every run is copied, as the runs held in memory go: the
    # directory is the index's already, and its close removes it
    index = SpillIndex(spill_module.MemoryRuns(), 1 << 20)
    rows = np.zeros((1000, 5), dtype=np.uint64)
    rows[:, :4] = np.random.default_rng(5).integers(0, 2**63, size=(1000, 4), dtype=np.uint64)
    index.add(rows)
    index.flush()

    def interrupted(self: spill_module.MemoryRuns) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(spill_module.MemoryRuns, "remove", interrupted)
    with pytest.raises(KeyboardInterrupt):
        index.to_disk(SpillDir(str(tmp_path)))
    monkeypatch.undo()
    assert index.on_disk
    index.dir.remove()
    assert os.listdir(tmp_path) == []


@pytest.mark.one_bookkeeping
def test_a_directory_without_its_lock_is_left_alone_while_it_may_be_starting(
    tmp_path: Path,
) -> None:
    starting = tmp_path / f"{PREFIX}starting"  # mkdtemp done, lock file not made yet
    starting.mkdir()
    assert clean_leftovers(str(tmp_path)) == 0 and starting.exists()
    old = time.time() - 2 * LOCKLESS_GRACE
    os.utime(starting, (old, old))  # long since: a killed process's half-made directory
    assert clean_leftovers(str(tmp_path)) == 1 and not starting.exists()


@pytest.mark.one_bookkeeping
def test_a_proof_starting_while_another_cleans_keeps_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # another proof cleans leftovers in the very moment between this one's making its lock
    # file and locking it (three proofs starting at once hit it): the directory stays
    real = fcntl.flock
    cleaned: list[int] = []

    def flock(fd: int, operation: int) -> None:
        if not cleaned:
            cleaned.append(clean_leftovers(str(tmp_path)))
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    directory = SpillDir(str(tmp_path))
    monkeypatch.undo()
    assert cleaned == [0] and os.path.isdir(directory.path)
    assert clean_leftovers(str(tmp_path)) == 0  # locked now: kept
    directory.append("p00", np.zeros(5, dtype=np.uint64))
    directory.remove()
    assert os.listdir(tmp_path) == []


@pytest.mark.one_bookkeeping
def test_a_spill_directory_gone_in_the_middle_stops_the_proof_not_the_check(
    tmp_path: Path,
) -> None:
    directory = SpillDir(str(tmp_path))
    shutil.rmtree(directory.path)  # removed under the proof (an operator, a full disk's fsck)
    with pytest.raises(NoRoom, match="is unusable"):
        directory.need(40)
    directory.remove()


def test_an_unusable_temporary_directory_leaves_the_archive_at_manifest(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_bytes(b"")  # a file where the directory should be
    proof = AccountsProof(AccountsLimits(temp_dir=str(blocked), budget=MemoryBudget(4096, 4096)))
    for storage in built({3: many(400, 3)}, [3]):
        feed(proof, storage, 4096)
    lt_hash, note = proof.finish(None)
    assert lt_hash is None and note is not None
    assert note.startswith(f"not proven: the temporary directory {str(blocked)!r} is unusable")


def test_short_of_temporary_space_the_proof_says_how_much(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SpillDir, "free", lambda self: 1000)
    proof = AccountsProof(tiny(tmp_path))
    for storage in built({3: many(400, 3)}, [3]):
        feed(proof, storage, 4096)
    lt_hash, note = proof.finish(None)
    assert lt_hash is None
    assert note is not None
    assert note.startswith("not proven: ")
    assert "bytes of temporary space needed plus a 16 MiB margin, 1000 free" in note
    assert proof.local_cause  # the tracker's shortage: never booked against a source
    assert os.listdir(tmp_path) == []


def test_only_the_trackers_own_shortage_is_its_own_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator's bound on the accounts stops the proof too, but for the archive's size:
    # any copy of it stops there, its source's as well as another's.
    bounded = AccountsProof(AccountsLimits(max_accounts=100, temp_dir=str(tmp_path)))
    for storage in built({3: many(400, 3)}, [3]):
        feed(bounded, storage, 4096)
    lt_hash, note = bounded.finish(None)
    assert lt_hash is None and note is not None and "over the bound of 100" in note
    assert not bounded.local_cause
    monkeypatch.setattr(SpillDir, "free", lambda self: 10 * 1024**2)
    limits = attrs.evolve(tiny(tmp_path), keep_free=64 * 1024**2 + 1)
    short = AccountsProof(limits)
    for storage in built({3: many(400, 3)}, [3]):
        feed(short, storage, 4096)
    lt_hash, note = short.finish(None)
    assert lt_hash is None and note is not None and short.local_cause
    assert f"plus a {64 * 1024**2 + 1} bytes margin, {10 * 1024**2} free" in note


def test_the_spill_leaves_the_room_its_caller_keeps_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SpillDir, "free", lambda self: 100 * 1024**2)
    limits = AccountsLimits(temp_dir=str(tmp_path), budget=MemoryBudget(4096, 4096))
    for keep_free, proven in ((0, True), (200 * 1024**2, False)):  # the cache's min_free
        proof = AccountsProof(attrs.evolve(limits, keep_free=keep_free))
        made = built({3: many(400, 3)}, [3])
        for storage in made:
            feed(proof, storage, 4096)
        lt_hash, note = proof.finish(reread_from({s.name: s.data for s in made}))
        assert (lt_hash is not None) is proven
        assert proven or (note is not None and note.endswith(f"{100 * 1024**2} free"))
    assert os.listdir(tmp_path) == []


def test_the_spill_leaves_free_what_a_download_beside_it_still_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fetch`` spills beside its download: each write leaves free what the download's
    temp file still lacks on disk (asked at that write: it shrinks as the bytes land), so
    the proof stops short of room, never the download (docs/fetch.md, "Safely")."""
    monkeypatch.setattr(SpillDir, "free", lambda self: 100 * 1024**2)
    limits = AccountsLimits(temp_dir=str(tmp_path), budget=MemoryBudget(4096, 4096))
    for lacking, proven in ((0, True), (99 * 1024**2, False)):
        asked: list[int] = []

        def reserve(lacking: int = lacking, asked: list[int] = asked) -> int:
            asked.append(lacking)
            return lacking

        proof = AccountsProof(attrs.evolve(limits, reserve=reserve))
        made = built({3: many(400, 3)}, [3])
        for storage in made:
            feed(proof, storage, 4096)
        lt_hash, note = proof.finish(reread_from({s.name: s.data for s in made}))
        assert asked  # asked at the spill's writes
        assert (lt_hash is not None) is proven
        beside = f"and {99 * 1024**2} bytes the download beside it still needs"
        assert proven or (note is not None and beside in note), note
    assert os.listdir(tmp_path) == []


@pytest.mark.one_bookkeeping
def test_the_count_bound_is_an_option_not_the_default() -> None:
    assert AccountsLimits().max_accounts is None


@pytest.mark.one_bookkeeping
def test_a_proof_waits_for_the_room_another_holds() -> None:
    budget = MemoryBudget(1 << 20, room=1 << 20)
    first = BudgetShare(budget)
    assert first.start() and first.grow_to(1 << 20)
    second = BudgetShare(budget)
    started = threading.Event()
    waited: list[bool] = []

    def wait() -> None:
        started.set()
        waited.append(second.start())

    thread = threading.Thread(target=wait)
    thread.start()
    started.wait()
    assert not waited and budget.used == 1 << 20  # never over the budget
    first.release()
    thread.join(10)
    assert waited == [True] and budget.used == second.floor


def test_a_wait_for_room_ends_when_the_check_is_cancelled() -> None:
    budget = MemoryBudget(1 << 20, room=1 << 20)
    assert budget.wait_for(1 << 20)
    proof = AccountsProof(AccountsLimits(budget=budget), cancelled=lambda: True)
    for storage in built({3: [Account(key(1), 1)]}, [3]):
        feed(proof, storage, 4096)
    assert proof.finish(None) == (
        None,
        "not proven: the check was cancelled while it waited for memory",
    )


@pytest.mark.parametrize("piece", [160, 400, 1000])
def test_the_records_of_small_pieces_keep_their_pubkeys_and_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    # pieces that start at any offset modulo 8 of the storage: pubkeys are read as words
    monkeypatch.setattr(storage_format, "PIECE", piece)
    accounts = [
        Account(key(n), n + 1, bytes([n]) * (1001 if n % 4 == 0 else n % 7)) for n in range(40)
    ]
    slots = {3: accounts, 4: [Account(key(n), 9, b"z" * (n * 5)) for n in range(30, 50)]}
    made = built(slots, [4, 3])
    for chunk in (1, 7, 4096):
        proof = AccountsProof(tiny(tmp_path))
        for storage in made:
            feed(proof, storage, chunk)
        assert proof.finish(reread_from({s.name: s.data for s in made})) == (model(slots), None)


def test_concurrent_proofs_share_one_budget_and_never_pass_it(tmp_path: Path) -> None:
    room = 1024 * 1024  # three floors of 256 KiB and a little more: some proofs must spill
    budget = MemoryBudget(room, room=room)
    spilled: list[int] = []
    together = threading.Barrier(3)
    limits = AccountsLimits(temp_dir=str(tmp_path), budget=budget)
    results: list[tuple[bytes | None, str | None]] = []
    expected = []
    jobs = []
    for seed in range(3):
        first = seed * 5000  # each proof its own accounts
        slots = {3: many(first + 3000, 3, start=first), 5: many(first + 2500, 5, 2, start=first)}
        made = built(slots, [3, 5])
        expected.append((model(slots), None))

        def prove(made: list = made) -> None:  # type: ignore[type-arg]
            proof = AccountsProof(limits)  # its floor taken
            together.wait(120)  # every proof holds its floor: the rest is shared
            for storage in made:
                feed(proof, storage, 1 << 20)
            results.append(proof.finish(reread_from({s.name: s.data for s in made}, PIECE)))
            spilled.append(proof.spilled)

        jobs.append(threading.Thread(target=prove))
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
    assert sorted(results, key=repr) == sorted(expected, key=repr)
    assert 0 < budget.peak <= room  # shared, never over
    assert any(spilled)
    assert budget.used == 0 and os.listdir(tmp_path) == []


@pytest.mark.one_bookkeeping
@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 4)), min_size=0, max_size=300),
    st.booleans(),
)
def test_the_partitions_order_is_lexsorts(pairs: list[tuple[int, int]], wide: bool) -> None:
    # the dedup's order (by fingerprint, then slot, then locator: which copy of a pubkey
    # stored twice in a slot is named, whatever order the lanes added them in) is exactly
    # np.lexsort's, ties of both kinds included
    prints = np.array([p * (2**60 if wide else 1) for p, _ in pairs], dtype=np.uint64)
    slots = np.array([s for _, s in pairs], dtype=np.uint64)
    locators = np.random.default_rng(len(pairs)).permutation(len(pairs)).astype(np.uint64)
    expected = np.lexsort((locators, slots, prints))
    got = spill_module._by_print_then_slot(prints, slots, locators)
    assert got.tolist() == expected.tolist()


@pytest.mark.one_bookkeeping
def test_a_pubkey_twice_in_a_slot_is_named_by_its_first_copy_whatever_the_rows_order() -> None:
    # three copies in one slot, added in every order: the one named is the first in the
    # stream (the lowest locator), as the serial reading adds it first
    keys = np.array([[7, 7, 7, 7]] * 3 + [[1, 2, 3, 4]], dtype=np.uint64)
    locators = np.array([(2 << 32) | 9, (0 << 32) | 41, (1 << 32) | 3, 5 << 32], dtype=np.uint64)
    storage_slots = np.array([8, 8, 8, 4, 4, 4], dtype=np.uint64)
    for mults, order in itertools.product(
        (spill_module.draw_multipliers(), ZERO_KEY), itertools.permutations(range(4))
    ):
        picked = list(order)
        _, twice_at = superseded_of(keys[picked], locators[picked], storage_slots, mults)
        assert twice_at is not None and int(locators[picked][twice_at]) == 41


def test_the_partitions_sort_within_what_the_proof_holds_beside_its_runs_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the runs still in memory are part of what the proof holds: the sort gets the rest
    slots = {3: many(3000, 3), 5: many(2000, 5, lamports=2), 9: many(1500, 9, start=1000)}
    made = built(slots, [5, 3, 9])
    seen: list[tuple[int, int, int]] = []
    real = spill_module.SpillIndex.superseded_runs

    def superseded_runs(self: SpillIndex, slots: Any, memory: int, *rest: Any) -> None:
        self.seal()  # the runs whole (idempotent): what they hold in memory
        seen.append((memory, self.dir.written, proof.held.bytes))
        real(self, slots, memory, *rest)

    monkeypatch.setattr(spill_module.SpillIndex, "superseded_runs", superseded_runs)
    proof = AccountsProof(AccountsLimits(temp_dir=str(tmp_path)))
    for storage in made:
        feed(proof, storage, 1 << 20)
    proof.settle()
    assert not proof.index.on_disk  # the default budget holds them all
    assert proof.finish(reread_from({s.name: s.data for s in made}, PIECE)) == (model(slots), None)
    ((memory, resident, held),) = seen
    assert resident > 0 and memory + resident <= held


@pytest.mark.one_bookkeeping
def test_concurrent_proofs_each_pay_for_their_checks_buffers() -> None:
    # the budget bounds the process tree however many proofs run at once: each holds its
    # check's buffers (CHECK_COST) beside its index, so the default 512 MiB runs three at
    # once, not eight (six concurrent proofs took a tree to 585 MiB before)
    from tracker.proof.accounts.budget import CHECK_COST, FIXED_COST, shared_limits

    budget, _, _ = shared_limits(512 * 1024**2, 2)
    started: list[BudgetShare] = []
    while True:
        held = BudgetShare(budget)
        if not held.start(cancelled=lambda: True):
            break
        started.append(held)
    assert [h.reserved for h in started] == [CHECK_COST] * len(started) == [CHECK_COST] * 3
    assert budget.used == sum(h.bytes + h.reserved for h in started) <= budget.room
    assert FIXED_COST + budget.room <= budget.total
    for held in started:
        held.release()
    assert budget.used == 0
    # a budget below what the processes need bounds the index only: nothing reserved
    small, _, _ = shared_limits(64 * 1024**2, 2)
    assert BudgetShare(small).reserved == 0


@pytest.mark.one_bookkeeping
def test_a_shared_temporary_directory_costs_nothing_of_anyone_elses(tmp_path: Path) -> None:
    # fetch, verify and a daemon without a cache spill to the system's temporary directory:
    # the clean-up followed a planted link's lock file and blocked on a FIFO there (a proof
    # that spilled never ended), and removed every user's unlocked leftovers.
    outside = tmp_path / "outside"
    (outside / f"{PREFIX}kept").mkdir(parents=True)
    shared = tmp_path / "tmp"
    shared.mkdir()
    (shared / f"{PREFIX}link").symlink_to(outside / f"{PREFIX}kept")
    fifo = shared / f"{PREFIX}fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "lock")
    linked = shared / f"{PREFIX}linked-lock"
    linked.mkdir()
    (linked / "lock").symlink_to(outside / "elsewhere")
    (outside / "elsewhere").write_bytes(b"")
    old = time.time() - 2 * LOCKLESS_GRACE
    for path in (fifo, linked):
        os.utime(path, (old, old))
    cleaned: list[int] = []
    cleaning = threading.Thread(target=lambda: cleaned.append(clean_leftovers(str(shared))))
    cleaning.daemon = True
    cleaning.start()
    cleaning.join(10)
    if cleaning.is_alive():  # blocked opening the FIFO: a writer lets it go
        os.close(os.open(fifo / "lock", os.O_WRONLY | os.O_NONBLOCK))
        cleaning.join(10)
    assert cleaned == [0] and not cleaning.is_alive()
    assert sorted(os.listdir(shared)) == sorted(
        [f"{PREFIX}link", f"{PREFIX}fifo", f"{PREFIX}linked-lock"]
    )
    assert (outside / f"{PREFIX}kept").is_dir()


@pytest.mark.one_bookkeeping
@pytest.mark.skipif(os.geteuid() != 0, reason="making another user's directory needs root")
def test_another_users_leftovers_are_not_removed(tmp_path: Path) -> None:
    theirs = tmp_path / f"{PREFIX}theirs"
    theirs.mkdir()
    (theirs / "lock").write_bytes(b"")
    os.chown(theirs, 65534, 65534)  # nobody's
    assert clean_leftovers(str(tmp_path)) == 0 and theirs.is_dir()
    os.chown(theirs, os.geteuid(), os.getegid())
    assert clean_leftovers(str(tmp_path)) == 1 and not theirs.exists()


async def test_a_check_cancelled_while_it_spills_is_over_with_its_spill(tmp_path: Path) -> None:
    """A check cancelled as the tracker stopped returned at once while its thread still
    wrote its spilled runs; the interpreter's exit then removed their directory under it,
    and runs were left behind (gigabytes on a mainnet full). The cancelled task returns
    only once the thread has ended and its spill is gone."""
    import trio
    from archives import many_accounts_archive

    from tracker.cache.checked import check_opened, open_copy

    name, data = many_accounts_archive(2000, 200_000)
    path = tmp_path / name
    path.write_bytes(data)
    spill = tmp_path / "spill"
    spill.mkdir()
    limits = AccountsLimits(
        temp_dir=str(spill), budget=MemoryBudget(1 << 20, room=1 << 20), max_accounts=10**6
    )

    def spilling() -> bool:
        return any(f.is_file() for f in spill.rglob("*"))

    fd, st = await open_copy(str(path))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check_opened, fd, st, name, limits)
        with trio.fail_after(60):
            while not await trio.to_thread.run_sync(spilling):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert not await trio.to_thread.run_sync(lambda: list(spill.iterdir()))


def test_one_account_stored_again_and_again_in_one_slot_is_refused_not_our_shortage(
    tmp_path: Path,
) -> None:
    """One pubkey stored 30,000 times in one storage: its versions share every fingerprint,
    so no split of the index makes them fit the budget, and the proof stopped short "for a
    cause of ours" (``local_cause``: the copy kept and checked again and again, its source
    never held back), though a few kilobytes of archive asked for it. The pubkey stored
    twice in one slot refuses the archive, whatever the budget."""
    from archives import VERSION, compress, make_tar

    from tracker.proof.archive.archivecheck import check_file
    from tracker.proof.formats.writing import (
        archive_hash_of,
        lattice_of_slots,
        padded,
        write_manifest,
        write_status_cache,
        write_storage,
    )

    slot, one = 5000, Account(b"\x07" * 32, 1000, b"")
    data = write_storage([one] * 30_000)
    lattice = lattice_of_slots({slot: [one]})
    entries = [
        ("version", VERSION),
        ("snapshots", None),
        (f"snapshots/{slot}", None),
        (f"snapshots/{slot}/{slot}", write_manifest(slot, lattice, [(slot, 0, len(data))])),
        ("snapshots/status_cache", write_status_cache([slot])),
        (f"accounts/{slot}.0", padded(data)),
    ]
    path = tmp_path / f"snapshot-{slot}-{archive_hash_of(lattice)}.tar.zst"
    path.write_bytes(compress(make_tar(entries), "zst"))
    spill = tmp_path / "spill"
    spill.mkdir()
    with pytest.raises(ArchiveInvalid, match=f"is stored twice in slot {slot}"):
        check_file(str(path), prove_accounts=tiny(spill, 1 << 20))
