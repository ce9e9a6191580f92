"""Both reads' scan in processes (tracker.proof.accounts.scanprocs, off by default): the
same hash, the same refusals and the same notes as the scan in the reading thread; the
budget and the worker slots held; a process that dies costs the proof, never the check;
no process left behind."""

from __future__ import annotations

import contextlib
import os
import runpy
import shutil
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from agave_storages import ARCHIVE, Storage, feed
from archives import build_archive, many_accounts_archive
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_proof_accounts import built, key, model, reread_from, states
from test_spill import many, tiny

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts import accountsproof, budget, newest, scanprocess, scanprocs
from tracker.proof.accounts.accountsproof import AccountsProof
from tracker.proof.accounts.budget import AccountsLimits, MemoryBudget, scan_processes
from tracker.proof.archive.archivecheck import FollowingCheck, check_file
from tracker.proof.formats import storages as storage_format
from tracker.proof.formats.slothistory import SLOT_HISTORY_ID
from tracker.proof.formats.writing import Account, write_storage
from tracker.proof.levels import Level


def roomy(max_accounts: int = 1000) -> AccountsLimits:
    """Limits whose budget has room for two scan processes and their forkserver (the
    default's of two cores has none: ``scanprocs.held_for``)."""
    return AccountsLimits(max_accounts=max_accounts, budget=MemoryBudget(1 << 30, room=1 << 30))


def outcome(
    storages: list[Storage], scanners: int, chunk: int = 4096, limits: AccountsLimits | None = None
) -> tuple[bytes | None, str | None] | str:
    """The proof's (hash, note), or the reason it refused the storages with."""
    proof = AccountsProof(limits or roomy(), scanners=scanners, lanes=0)
    try:
        for storage in storages:
            feed(proof, storage, chunk)
        return proof.finish(reread_from({s.name: s.data for s in storages}))
    except ArchiveInvalid as exc:
        return exc.reason
    finally:
        proof.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states(), st.randoms(), st.sampled_from([1, 64, 4096]))
def test_scan_processes_give_the_models_hash(
    slots: dict[int, list[Account]], rnd: object, chunk: int
) -> None:
    order = list(slots)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    assert outcome(built(slots, order), 2, chunk) == (model(slots), None)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    states(),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 200),
)
def test_mutated_storages_are_refused_for_the_reason_the_serial_reading_gives(
    slots: dict[int, list[Account]], flips: list[tuple[int, int]], cut: int
) -> None:
    mutated = []
    for storage in built(slots, sorted(slots)):
        data = bytearray(storage.data)
        for at, value in flips:
            if data:
                data[at % len(data)] = value
        mutated.append(Storage(storage.slot, storage.ident, bytes(data), max(0, len(data) - cut)))
    assert outcome(mutated, 2) == outcome(mutated, 0)


class NoSum:
    """A summer that fails the test if anything is handed to it: with scan processes, both
    reads hash in them."""

    def room(self, size: int, negative: bool = False) -> None:
        raise AssertionError("a batch was laid out for the proof's summer")

    def expect(self, count: int) -> None:
        raise AssertionError("the proof's summer was told to start a process")

    def add(self, *_args: object, **_kwargs: object) -> None:
        raise AssertionError("a batch was hashed in the proof's summer")

    def total(self) -> tuple[Any, None]:
        return np.zeros(1024, dtype=np.uint16), None

    def close(self) -> None:
        pass


@pytest.mark.parametrize("chunk", [1, 64, 4096])
def test_the_second_read_parses_and_hashes_in_the_scan_processes(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each storage but the last holds versions that a later one supersedes, hashed ahead in
    # a process: the second read takes them out there too; the proof's thread only walks,
    # its summer is never handed a batch
    slots = {s: [Account(key(s), s, b"x" * s), Account(key(100 + s % 3), s)] for s in range(1, 9)}
    made = built(slots, list(slots))
    parsed: list[object] = []
    monkeypatch.setattr(newest._StorageHash, "feed", lambda *_: parsed.append(_))
    proof = AccountsProof(roomy(100), summer=NoSum(), scanners=2, lanes=0)
    for storage in made:
        feed(proof, storage, chunk)
    assert proof.finish(reread_from({s.name: s.data for s in made})) == (model(slots), None)
    assert parsed == [] and proof.progress.hashed == len({a.pubkey for a in model_accounts(slots)})


def model_accounts(slots: dict[int, list[Account]]) -> list[Account]:
    """Each pubkey's newest version with lamports."""
    newest_of: dict[bytes, tuple[int, Account]] = {}
    for slot, accounts in slots.items():
        for account in accounts:
            if account.pubkey not in newest_of or newest_of[account.pubkey][0] < slot:
                newest_of[account.pubkey] = (slot, account)
    return [account for _, account in newest_of.values() if account.lamports]


@pytest.mark.parametrize("processes", [0, 2])
def test_a_second_read_that_differs_is_refused_as_the_serial_reading_refuses_it(
    processes: int,
) -> None:
    slots = {s: [Account(key(s), s, b"x" * s), Account(key(100), s)] for s in range(1, 9)}
    made = built(slots, list(slots))
    again = {s.name: s.data for s in made}
    for first in (2, 5):
        # as many bytes, one record fewer (its data over where the second one lay); a later
        # storage cut short: the refusal names the first
        one = write_storage([Account(key(first), first, b"z" * (-(-(136 + first) // 8) * 8))])
        changed = {**again, made[first].name: one, made[7].name: b""}
        proof = AccountsProof(roomy(100), scanners=processes, lanes=0)
        for storage in made:
            feed(proof, storage, 4096)
        with pytest.raises(ArchiveInvalid, match=rf"^{made[first].name}: the second read differ"):
            proof.finish(reread_from(changed))
    proof = AccountsProof(roomy(100), scanners=processes, lanes=0)
    for storage in made:
        feed(proof, storage, 4096)
    with pytest.raises(ArchiveInvalid, match="the member ends at byte 0"):
        proof.finish(reread_from({**again, made[3].name: b""}))


@pytest.mark.parametrize(
    ("at", "counts", "left", "skip", "keep", "chosen", "taken_out", "found"),
    [
        # nothing left, nothing superseded: all hashed ahead, nothing to do
        ([0, 8, 16], [1, 1, 1], [], [], [], [], [], 0),
        # all left: each with lamports added
        ([0, 8, 16], [1, 0, 1], [(0, 16)], [], [], [0, 2], [], 0),
        # superseded and hashed ahead: taken out; superseded and left: neither
        ([0, 8, 16], [1, 1, 1], [(16, 16)], [8, 16], [], [], [1], 2),
        # superseded without lamports: met, never taken out
        ([0, 8], [0, 1], [], [0], [], [], [], 1),
        # kept (hashed where it lay): neither added nor taken out, even when left
        ([0, 8, 16], [1, 1, 1], [(0, 16)], [], [8], [0, 2], [], 0),
        ([0, 8, 16], [1, 1, 1], [], [8], [8], [], [], 1),
    ],
)
def test_the_second_reads_choice(
    at: list[int],
    counts: list[int],
    left: list[tuple[int, int]],
    skip: list[int],
    keep: list[int],
    chosen: list[int],
    taken_out: list[int],
    found: int,
) -> None:
    got = newest.second_choice(
        np.array(at, dtype=np.int64),
        np.array(counts, dtype=bool),
        np.array(left, dtype=np.uint64).reshape(-1, 2),
        np.array(skip, dtype=np.int64),
        np.array(keep, dtype=np.int64),
    )
    assert (got[0].tolist(), got[1].tolist(), got[2]) == (chosen, taken_out, found)


def test_the_index_spills_within_the_budget_as_it_does_without_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what the processes hold made small (the budget's part for them is held as any other:
    # test_the_budget_holds_them_and_has_it_all_back), so that the index has only its floor
    monkeypatch.setattr(scanprocs, "PROCESS_BYTES", 16 * 1024)
    monkeypatch.setattr(scanprocs, "FORKSERVER_BYTES", 16 * 1024)
    monkeypatch.setattr(scanprocs, "UNSENT_BYTES", 16 * 1024)
    slots = {3: many(3000, 3), 5: many(2000, 5, lamports=2), 9: many(1500, 9, start=1000)}
    made = built(slots, [5, 3, 9])
    room = budget.MIN_FLOOR + scanprocs.held_for(2)  # the proof's floor, and theirs
    limits = tiny(tmp_path, room=room)
    proof = AccountsProof(limits, scanners=2, lanes=0)
    assert proof._scanners is not None and len(proof._scanners) == 2
    for storage in made:
        feed(proof, storage, 1 << 20)
    assert proof.finish(reread_from({s.name: s.data for s in made})) == (model(slots), None)
    assert proof.spilled > 0 and proof.held.peak <= room
    assert os.listdir(tmp_path) == [] and limits.shared().used == 0


def test_the_budget_holds_them_and_has_it_all_back() -> None:
    limits = roomy()
    slots_of = {5: [Account(key(1), 4, b"a")], 9: [Account(key(1), 3), Account(key(2), 1)]}
    made = built(slots_of, [5, 9])
    proof = AccountsProof(limits, scanners=2, lanes=0)
    assert proof.held.bytes >= scanprocs.held_for(2) > 2 * scanprocs.PROCESS_BYTES
    for storage in made:
        feed(proof, storage, 7)
    assert proof.finish(reread_from({s.name: s.data for s in made})) == (model(slots_of), None)
    assert limits.shared().used == 0
    small = AccountsLimits(
        budget=MemoryBudget(scanprocs.PROCESS_BYTES, room=scanprocs.PROCESS_BYTES)
    )
    proof = AccountsProof(small, scanners=2, lanes=0)  # room for none beside its floor
    assert proof._scanners is None
    proof.close()


def test_the_slot_history_found_in_a_process_is_told_to_the_watch() -> None:
    history = Account(SLOT_HISTORY_ID, 7, b"h" * 40)
    made = built({4: [history, Account(key(1), 1)], 6: [Account(key(2), 2)]}, [4, 6])
    seen: list[tuple[int, int, bytes]] = []
    proof = AccountsProof(roomy(100), scanners=2, lanes=0)
    proof.watch = lambda number, lamports, data: seen.append((number, lamports, data))
    for storage in made:
        feed(proof, storage, 4096)
    proof.settle()
    assert seen == [(0, 7, b"h" * 40)]
    proof.close()


def test_over_the_bound_the_note_is_the_serial_readings() -> None:
    made = built({4: many(30, 4)}, [4])
    limits = roomy(10)
    assert outcome(made, 2, limits=limits) == outcome(made, 0, limits=limits)


def test_a_process_that_dies_costs_the_proof_a_note_and_leaves_nothing_running() -> None:
    made = built({3: many(500, 3), 5: many(400, 5)}, [3, 5])
    proof = AccountsProof(roomy(10_000), scanners=2, lanes=0)
    scanners = proof._scanners  # the processes, to kill one
    assert scanners is not None
    processes = [each.proc for each in scanners._processes]
    assert all(each.shared is not None for each in scanners._processes)  # pieces in slots
    feed(proof, made[0], 4096)
    proof.settle()
    os.kill(processes[0].pid, signal.SIGKILL)
    feed(proof, made[1], 4096)
    lt_hash, note = proof.finish(reread_from({s.name: s.data for s in made}))
    assert lt_hash is None and note is not None and note.startswith("not proven: the scanning")
    assert proof.local_cause  # the tracker's, not the archive's
    assert all(each.exitcode is not None for each in processes)


def _parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no parent of {pid}")


def test_a_proof_whose_forkserver_died_closes_and_leaves_nothing_running() -> None:
    """The forkserver (it alone reaps the scan processes and tells their end) is killed
    (the OOM killer: it is the largest child) while a proof's processes wait for their next
    frame; the proof is then closed (cancelled). ``is_alive()`` said False of processes
    still waiting, none was killed, and the close waited for ever on the thread reading
    them, the proof's budget and slots with it. It ends, and so do they."""
    made = built({3: many(500, 3), 5: many(400, 5)}, [3, 5])
    proof = AccountsProof(roomy(10_000), scanners=2, lanes=0)
    scanners = proof._scanners
    assert scanners is not None
    pids = [each.proc.pid for each in scanners._processes]
    feed(proof, made[0], 4096)
    proof.settle()
    forkserver = _parent_of(pids[0])
    os.kill(forkserver, signal.SIGKILL)  # (reaped by multiprocessing at its next start)
    closing = threading.Thread(target=proof.close, daemon=True)
    closing.start()
    closing.join(30)
    if closing.is_alive():  # hung: the scan processes let go so that the test can end
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        closing.join(30)
        pytest.fail("the proof's close waited for scan processes no one could see end")
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)  # (orphans now: init reaps them once they end)
    assert not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    """True while process ``pid`` exists and has not ended (a zombie has)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_proofs_at_once_fork_from_the_one_forkserver_and_each_gets_its_hash() -> None:
    # a tracker proves several archives at once: each proof's processes are its own
    import threading

    states_of = [{s: many(300, s, start=s * 50 + k) for s in range(3, 7)} for k in range(3)]
    results: list[object] = [None] * len(states_of)

    def prove(at: int) -> None:
        made = built(states_of[at], list(states_of[at]))
        results[at] = outcome(made, 2, 4096, roomy(10_000))

    threads = [threading.Thread(target=prove, args=(at,)) for at in range(len(states_of))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [(model(each), None) for each in states_of]


def _ignores_sigint(pid: int) -> bool:
    """True once process ``pid`` ignores SIGINT (its ``SigIgn`` mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & 1 << (signal.SIGINT - 1))
    return False


def _spied(
    monkeypatch: pytest.MonkeyPatch, made: list[Storage], slots: dict[int, list[Account]]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int, int]:
    """The proof of ``made`` (the model's hash, asserted) in two scan processes, fed 4 KiB at
    a time: every frame sent to them, every answer taken (those an ``ENDS`` holds too), and
    how many of each the first read had."""
    frames: list[tuple[Any, ...]] = []
    answers: list[tuple[Any, ...]] = []
    real_send, real_take = scanprocs._Process._send, scanprocs._Process._take

    def send(self: Any, frame: tuple[Any, ...], *args: Any) -> None:
        frames.append(frame)
        real_send(self, frame, *args)

    def take(self: Any, kind: int, first: int, *rest: Any) -> bool:
        answers.append((kind, first, *rest))
        return bool(real_take(self, kind, first, *rest))

    monkeypatch.setattr(scanprocs._Process, "_send", send)
    monkeypatch.setattr(scanprocs._Process, "_take", take)
    proof = AccountsProof(roomy(10_000), scanners=2, lanes=0)
    try:
        for storage in made:
            feed(proof, storage, 4096)
        proof.settle()
        firsts = len(frames), len(answers)
        assert proof.finish(reread_from({s.name: s.data for s in made})) == (model(slots), None)
        assert proof._scanners is None  # closed, each process's slots had come back
    finally:
        proof.close()
    return frames, answers, *firsts


def test_a_storages_pieces_carry_its_end_and_its_second_reads_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one frame for a storage of one piece, not two (what many small storages cost: mainnet
    # holds hundreds of thousands); a storage of no valid byte still sends its end alone,
    # and one of many pieces ends with its last; the hash is the model's either way
    # slot 6 holds newer versions of ten of slot 5's accounts: slot 5 is read again
    slots = {3: many(20, 3), 4: [], 5: many(210, 5, start=190), 6: many(700, 6, start=200)}
    made = built(slots, list(slots))
    monkeypatch.setattr(storage_format, "PIECE", 8192)  # storage 6 in nine pieces
    monkeypatch.setattr(scanprocs, "GATHERED_PIECE", 0)  # none gathered with others
    assert [-(-each.current_len // 8192) for each in made] == [1, 0, 1, 9]
    sent, answers, sent_first, answered_first = _spied(monkeypatch, made, slots)
    first = [(f[0], f[4] if f[0] == "piece" else False) for f in sent[:sent_first]]
    frames = [f[0] for f in sent]
    seconds = [f[1] for f in sent if f[0] == "piece" and f[5] is not None]
    answered = [(k, n) for k, n, *_ in answers[:answered_first] if k != scanprocess.DONE]
    # and its process answers with its last rows and its count at once, one answer for a
    # storage of one piece (the empty one: its count alone)
    numbers = range(len(made))
    ends = {number: [k for k, n in answered if n == number][-1] for number in numbers}
    assert ends == {0: scanprocess.ROWS_END, 1: scanprocess.COUNT} | {
        number: scanprocess.ROWS_END for number in (2, 3)
    }
    assert [k for k, n in answered if n in (0, 2)] == [scanprocess.ROWS_END] * 2
    assert [k for k, n in answered if n == 3] == [scanprocess.ROWS] * 8 + [scanprocess.ROWS_END]
    # the second read of slot 5's storage starts with the piece it sends, never a frame of
    # its own
    assert set(frames) == {"piece", "end"}
    assert seconds == [2]
    assert first.count(("end", False)) == 1  # storage 4's
    assert first.count(("piece", True)) == 3  # each other storage's last piece
    assert first.count(("piece", False)) == 8  # storage 6's pieces before its last


def test_a_scan_process_ignores_sigint_from_the_moment_it_is_forked() -> None:
    # the forkserver ignores SIGINT, and each child it forks puts back the handlers the
    # forkserver had before: a SIGINT between the fork and the process's own SIG_IGN (in
    # ``serve``) would end it; here it is ignored from the fork on (exit status 0, where
    # Python's handler would raise KeyboardInterrupt: 1)
    process = scanprocs._context().Process(
        target=signal.raise_signal, args=(signal.SIGINT,), daemon=True
    )
    scanprocs.start_process(process)
    try:
        process.join(30)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            process.join()


def _signal_mask(pid: int, field: str) -> int:
    """A signal mask of process ``pid`` (``SigBlk``, ``SigIgn``: /proc's status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_the_forkserver_keeps_sigint_blocked_from_its_start() -> None:
    # Ctrl-C reaches the whole process group: a forkserver still starting (its interpreter,
    # the main module, the imports before the preload's SIG_IGN) printed its
    # KeyboardInterrupt traceback beside the command's one line (5 runs in 40)
    scanprocs.warm()
    servers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
            if parent == os.getpid() and b"forkserver" in (stat.parent / "cmdline").read_bytes():
                servers.append(int(stat.parent.name))
    assert servers, "no forkserver among this process's children"
    for pid in servers:
        assert _signal_mask(pid, "SigBlk") & 1 << (signal.SIGINT - 1), pid


def test_ctrl_c_at_a_terminal_is_the_proofs_process_to_answer_not_theirs() -> None:
    # the terminal sends SIGINT to the whole process group: the scan processes go on
    slots = {3: many(500, 3), 5: many(400, 5, start=100)}
    made = built(slots, [3, 5])
    proof = AccountsProof(roomy(10_000), scanners=2, lanes=0)
    assert proof._scanners is not None
    feed(proof, made[0], 4096)
    proof.settle()
    for each in proof._scanners._processes:
        # once it ignores SIGINT (a process that was sent nothing yet may still be starting)
        deadline = time.monotonic() + 10
        while not _ignores_sigint(each.proc.pid):
            assert time.monotonic() < deadline, "a scan process never ignored SIGINT"
            time.sleep(0.01)
        os.kill(each.proc.pid, signal.SIGINT)
    feed(proof, made[1], 4096)
    assert proof.finish(reread_from({s.name: s.data for s in made})) == (model(slots), None)


@pytest.mark.parametrize("spilled", [False, True])
def test_processes_that_die_in_the_second_read_cost_the_proof_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spilled: bool
) -> None:
    # killed once the second read began: its note is theirs (not the index's files, which
    # the proof let go of when it stopped), nothing is left running nor on disk
    monkeypatch.setattr(scanprocs, "PROCESS_BYTES", 16 * 1024)
    monkeypatch.setattr(scanprocs, "FORKSERVER_BYTES", 16 * 1024)
    monkeypatch.setattr(scanprocs, "UNSENT_BYTES", 16 * 1024)
    slots = {s: many(1200, s, start=s % 2 * 600) for s in range(3, 9)}
    made = built(slots, list(slots))
    room = budget.MIN_FLOOR + scanprocs.held_for(2)
    limits = tiny(tmp_path, room=room) if spilled else roomy(10_000)
    proof = AccountsProof(limits, scanners=2, lanes=0)
    scanners = proof._scanners
    assert scanners is not None
    processes = [each.proc for each in scanners._processes]
    for storage in made:
        feed(proof, storage, 1 << 20)
    reread = reread_from({s.name: s.data for s in made})

    def killing(name: str, start: int) -> Iterable[bytes]:
        for each in processes:
            if each.exitcode is None:
                each.kill()
                each.join()
        return reread(name, start)

    assert proof.spilled > 0 if spilled else proof.spilled == 0
    lt_hash, note = proof.finish(killing)
    assert lt_hash is None and note is not None and note.startswith("not proven: the scanning")
    assert proof.local_cause
    assert all(each.exitcode is not None for each in processes)
    assert os.listdir(tmp_path) == [] and limits.shared().used == 0


def test_a_second_read_stops_once_a_scan_process_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A process that failed decides the proof (not proven, the note its): the second read
    # still read every storage left to it to the archive's end, decoding it all again from
    # disk only to drop each piece, before the check wrote its note.
    slots = {s: many(1200, s, start=s % 2 * 600) for s in range(3, 9)}
    made = built(slots, list(slots))
    proof = AccountsProof(roomy(10_000), scanners=2, lanes=0)
    scanners = proof._scanners
    assert scanners is not None
    processes = [each.proc for each in scanners._processes]
    told = threading.Event()
    failed = proof.failed

    def noted(reason: str) -> None:
        failed(reason)
        told.set()

    monkeypatch.setattr(proof, "failed", noted)  # the processes' reading threads tell it
    for storage in made:
        feed(proof, storage, 1 << 20)
    reread = reread_from({s.name: s.data for s in made}, piece=1024)
    asked: list[str] = []
    after = [0]  # chunks the second read took once the proof knew

    def killing(name: str, start: int) -> Iterable[bytes]:
        asked.append(name)
        if len(asked) == 1:
            for each in processes:
                each.kill()
                each.join()
            assert told.wait(30)
        for chunk in reread(name, start):
            after[0] += 1
            yield chunk

    lt_hash, note = proof.finish(killing)
    assert lt_hash is None and note is not None and note.startswith("not proven: the scanning")
    assert proof.local_cause
    assert asked == [made[0].name]  # no storage after it asked for
    assert after[0] <= 1  # of its 1,024-byte chunks, none past the one in hand
    assert all(each.exitcode is not None for each in processes)


@pytest.mark.parametrize("chunk", [1, 4096])
def test_no_process_outlives_its_proof(chunk: int) -> None:
    made = built({3: many(50, 3)}, [3])
    proof = AccountsProof(roomy(1000), scanners=2, lanes=0)
    scanners = proof._scanners
    assert scanners is not None
    processes = [each.proc for each in scanners._processes]
    feed(proof, made[0], chunk)
    proof.close()  # cancelled part way: no finish
    assert all(each.exitcode is not None for each in processes)


def test_without_shared_memory_the_pieces_go_through_the_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scanprocs, "shared_memory", lambda size, name: None)  # no memfd
    slots = {3: many(300, 3), 5: many(200, 5, lamports=2)}
    made = built(slots, [5, 3])
    proof = AccountsProof(roomy(10_000), scanners=2, lanes=0)
    assert proof._scanners is not None
    assert all(each.shared is None for each in proof._scanners._processes)
    for storage in made:
        feed(proof, storage, 1000)
    assert proof.finish(reread_from({s.name: s.data for s in made})) == (model(slots), None)


@pytest.mark.parametrize("compression", ["zst", "tar"])
def test_a_real_archive_proves_to_accounts_with_scan_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    """The whole check (decoded chunks, pieces across them, the second read from the file)
    with the first read's scan in two processes: agave's own archive and the tests' of
    several storages reach ``accounts``; changed accounts are refused."""
    monkeypatch.setattr(budget, "SCAN_PROCESSES", 2)
    started: list[scanprocs.Scanners] = []

    class Counted(scanprocs.Scanners):
        def __init__(self, count: int, sink: scanprocs.ScanAnswers, *rest: Any) -> None:
            super().__init__(count, sink, *rest)
            started.append(self)

    monkeypatch.setattr(accountsproof, "Scanners", Counted)
    limits = AccountsLimits(
        max_accounts=100_000, workers=3, budget=MemoryBudget(1 << 30, room=1 << 30)
    )
    agave = tmp_path / "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
    shutil.copy(ARCHIVE, agave)
    name, data = build_archive(1100, compression=compression, accounts=7)
    (tmp_path / name).write_bytes(data)
    for path in (agave, tmp_path / name):
        proof = check_file(str(path), prove_accounts=limits).proof
        assert (proof.level, proof.note) == (Level.ACCOUNTS, None), path.name
    assert scan_processes(limits) == 2 and [len(each) for each in started] == [2, 2]


@pytest.mark.parametrize(
    ("setting", "workers", "memory", "asked"),
    [
        # by default: from eight proof_workers, as many as the hashing processes
        (-1, 2, 8 << 30, 0),
        (-1, 7, 8 << 30, 0),
        (-1, 8, 8 << 30, 7),
        (-1, 16, 8 << 30, 15),
        (-1, 64, 32 << 30, 15),  # at most SCAN_MOST, the most measured
        (-1, 16, 512 << 20, 2),  # as many as the budget pays hashing processes for
        # set: none, or at most that many
        (0, 16, 8 << 30, 0),
        (4, 16, 8 << 30, 4),
        (4, 2, 8 << 30, 1),
    ],
)
def test_how_many_scan_processes_a_proof_asks_for(
    monkeypatch: pytest.MonkeyPatch, setting: int, workers: int, memory: int, asked: int
) -> None:
    monkeypatch.setattr(budget, "SCAN_PROCESSES", setting)
    assert scan_processes(AccountsLimits(workers=workers, memory=memory)) == asked


def test_the_command_lines_main_module_runs_nothing_when_imported_again() -> None:
    # a forkserver's process imports its parent's main module under another name first:
    # ``python -m tracker`` must not run the command line again there
    runpy.run_module("tracker.__main__", run_name="__mp_main__")


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "an answer of 0 bytes"),
        (scanprocess.answer(11, 0), "an answer of kind 11"),
        (scanprocess.answer(10, 0), "an answer of kind 10, 0, and 0 bytes"),  # ends nothing
        (scanprocess.answer(10, 4, 0, 0, b"x"), "an answer of kind 10, 4"),  # no such slot
        (scanprocess.answer(9, 0, 1, 1, b"x" * 40), "an answer of kind 9, 0, and 40 bytes"),
        (scanprocess.answer(1, 0, 1, 1, b"x" * 41), "an answer of kind 1, 0, and 41 bytes"),
        (scanprocess.answer(2, scanprocess.IN_FLIGHT), "an answer of kind 2, 4"),
        (scanprocess.answer(2, -1), "an answer of kind 2, -1"),
        (scanprocess.answer(3, 0, 1, 0, b"x"), "an answer of kind 3, 0, and 1 bytes"),
        (scanprocess.answer(6, 0, 0, 0, b"\0" * 2047), "an answer of kind 6, 0, and 2047"),
        (scanprocess.answer(8, 0, 1, 0, b"x"), "an answer of kind 8, 0, and 1 bytes"),
    ],
)
def test_an_answer_no_scan_process_sends_is_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        scanprocess.decode_answer(raw)


def test_the_answers_a_scan_process_sends_are_read_back() -> None:
    rows = bytes(range(80))
    assert scanprocess.decode_answer(scanprocess.answer(1, 7, 2, 1, rows))[:4] == (1, 7, 2, 1)
    assert bytes(scanprocess.decode_answer(scanprocess.answer(1, 7, 2, 1, rows))[4]) == rows
    assert scanprocess.decode_answer(scanprocess.answer(2, 3))[:2] == (2, 3)
    assert scanprocess.decode_answer(scanprocess.answer(4, 5, 2**64 - 1, 0, b"d"))[2] == 2**64 - 1


def _ends(*answers: bytes) -> memoryview:
    return memoryview(b"".join(scanprocess.ENDS_LENGTH.pack(len(a)) + a for a in answers))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (_ends(scanprocess.answer(1, 7, 1, 1, b"x" * 40)), "an end of kind 1"),  # rows alone
        (_ends(scanprocess.answer(2, 0)), "an end of kind 2"),  # a piece done
        (_ends(scanprocess.answer(3, 7))[:-1], "an end of 25 bytes past the answer's 28"),
        (_ends(scanprocess.answer(3, 7))[:3], "an end's length cut at byte 0"),
        (_ends(scanprocess.answer(3, 7), scanprocess.answer(8, 7, 0, 0, b"x")), "kind 8, 7"),
    ],
)
def test_an_answer_of_ends_that_no_scan_process_sends_is_refused(
    body: memoryview, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        scanprocess.split_ends(body)


def test_the_ends_a_scan_process_sends_at_once_are_read_back() -> None:
    rows = bytes(range(40)) + scanprocess.COUNT_BYTES.pack(3)
    body = _ends(
        scanprocess.answer(scanprocess.ROWS_END, 7, 3, 1, rows),
        scanprocess.answer(scanprocess.COUNT, 8, 5),
        scanprocess.answer(scanprocess.REHASHED, 9, 2, 1),
    )
    raw = scanprocess.answer(scanprocess.ENDS, 2, 0, 0, bytes(body))
    kind, slot, _, _, decoded = scanprocess.decode_answer(raw)
    assert (kind, slot) == (scanprocess.ENDS, 2)
    ends = scanprocess.split_ends(decoded)
    assert [each[:4] for each in ends] == [(9, 7, 3, 1), (3, 8, 5, 0), (8, 9, 2, 1)]
    assert bytes(ends[0][4]) == rows


def test_small_storages_go_whole_many_to_a_frame_and_end_in_one_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # storages of one small piece are copied and gathered, at most GATHERED_MOST (here 4)
    # and GATHERED_BYTES to a frame, in both reads (the second's start with its storage);
    # one answer ends those of a frame and frees its slot. A storage of many pieces and one
    # of no valid byte go as before. The hash is the model's.
    slots = {s: many(6 * s + 12, s, start=6 * s) for s in range(1, 12)}  # half the last anew
    slots[20] = many(1500, 20, start=1000)
    slots[21] = []
    made = built(slots, list(slots))
    monkeypatch.setattr(storage_format, "PIECE", 8192)  # storage 20 in nine pieces
    monkeypatch.setattr(scanprocs, "GATHERED_MOST", 4)
    frames, answers, sent_first, _ = _spied(monkeypatch, made, slots)
    first = frames[:sent_first]
    ends = [
        [e[1] for e in scanprocess.split_ends(a[-1])] for a in answers if a[0] == scanprocess.ENDS
    ]
    gathered = [f for f in first if f[0] == "storages"]
    assert [[entry[0] for entry in f[1]] for f in gathered] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10],
    ]
    assert all(f[-1] == sum(entry[-1] for entry in f[1]) for f in gathered)  # bytes, in a slot
    assert [f[1] for f in first if f[0] == "piece"] == [11] * 9 and ("end", 12) in first
    # one answer a frame ends them
    assert sorted(n for each in ends[:3] for n in each) == list(range(11))
    # the second read: storages 0-9 hold superseded versions, read again whole, gathered
    again = [e for f in frames[len(first) :] if f[0] == "storages" for e in f[1]]
    assert sorted(e[0] for e in again) == list(range(10))
    assert all(e[3] is not None for e in again)  # each with its second read's start


def test_gathered_storages_keep_within_the_bytes_of_a_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slots = {s: many(100 * s + 10, s, start=100 * s) for s in range(1, 9)}
    made = built(slots, list(slots))
    size = max(each.current_len for each in made)
    monkeypatch.setattr(scanprocs, "GATHERED_BYTES", 3 * size)
    sizes: list[int] = []
    real = scanprocs._Process.send_storages

    def send(self: Any, entries: list[tuple[Any, ...]], data: bytearray) -> None:
        sizes.append(len(data))
        real(self, entries, data)

    monkeypatch.setattr(scanprocs._Process, "send_storages", send)
    assert outcome(made, 2) == (model(slots), None)
    assert sum(sizes) == sum(each.current_len for each in made) and len(sizes) >= 3
    assert max(sizes) <= 3 * size


def test_an_answer_the_proof_cannot_keep_costs_the_proof_not_its_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = built({3: many(200, 3)}, [3])
    proof = AccountsProof(roomy(), scanners=2, lanes=0)

    def broken(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(proof, "scanned", broken)  # what the pipes' threads call
    assert proof._scanners is not None
    for each in proof._scanners._processes:
        each._sink = proof  # the patched method, as the proof's own
    feed(proof, made[0], 4096)
    lt_hash, note = proof.finish(reread_from({s.name: s.data for s in made}))
    assert lt_hash is None and note is not None and "could not be kept" in note
    assert proof.local_cause


def test_the_scan_processes_tell_their_cpu() -> None:
    made = built({3: many(2000, 3)}, [3])
    proof = AccountsProof(roomy(10_000), scanners=2, lanes=0)
    feed(proof, made[0], 4096)
    assert proof.finish(reread_from({s.name: s.data for s in made}))[0] is not None
    assert 0 < proof.scan_cpu < 60  # both processes' seconds, as each told with its sum


def test_the_walking_thread_hands_pieces_over_and_waits_past_what_they_keep_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the copies and the sends are the sending threads' (one a process): the thread that
    # walks the archive hands pieces over before any is copied while what they keep alive
    # fits UNSENT_BYTES (here each storage is fed as one chunk of its own, which its piece
    # keeps alive: three of them fit), then waits for the next until one is copied; what it
    # handed over still gives the model's hash
    slots = {s: many(200 * s, s, start=100 * s) for s in range(1, 9)}
    made = built(slots, list(slots))
    monkeypatch.setattr(scanprocs, "UNSENT_BYTES", sum(len(each.data) for each in made[:3]))
    monkeypatch.setattr(scanprocs, "GATHERED_PIECE", 0)  # none gathered with others
    gate, enough = threading.Event(), threading.Event()
    handed, copied = [0], [0]
    real_copy, real_send = scanprocs._Process._copy, scanprocs._Process.send_piece

    def gated_copy(self: Any, slot: int, parts: tuple[Any, ...]) -> None:
        assert gate.wait(30)
        real_copy(self, slot, parts)
        copied[0] += 1

    def counted_send(self: Any, *args: Any) -> None:
        real_send(self, *args)
        handed[0] += 1
        if handed[0] == 3:
            enough.set()

    monkeypatch.setattr(scanprocs._Process, "_copy", gated_copy)
    monkeypatch.setattr(scanprocs._Process, "send_piece", counted_send)
    proof = AccountsProof(roomy(10_000), scanners=2, lanes=0)
    walking = threading.Thread(target=lambda: [feed(proof, each, 1 << 20) for each in made])
    try:
        walking.start()
        assert enough.wait(30) and copied[0] == 0
        walking.join(0.3)  # it stays at the next piece while none of those is copied
        assert walking.is_alive() and handed[0] == 3
    finally:
        gate.set()
        walking.join(30)
    assert handed[0] == len(made)
    assert proof.finish(reread_from({s.name: s.data for s in made})) == (model(slots), None)


def test_a_waiting_piece_counts_every_buffer_it_keeps_alive_whole() -> None:
    chunk, other = bytes(4096), bytes(1000)
    view = memoryview(chunk)[100:200]  # a piece of a decoded chunk keeps all of it alive
    assert scanprocs.kept_alive((view,)) == 4096
    assert scanprocs.kept_alive((view, memoryview(other)[:10])) == 5096  # across two chunks
    assert scanprocs.kept_alive((b"x" * 300,)) == 300  # a piece of its own
    assert scanprocs.kept_alive((memoryview(bytearray(700)).toreadonly(),)) == 700


def test_a_piece_that_cannot_be_sent_costs_the_proof_a_note_never_a_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_args: object) -> None:
        raise ValueError("no such slot")

    monkeypatch.setattr(scanprocs._Process, "_copy", broken)
    slots = {s: many(100 * s, s) for s in range(1, 9)}  # more pieces than the unsent hold
    made = built(slots, list(slots))
    proof = AccountsProof(roomy(10_000), scanners=2, lanes=0)
    assert proof._scanners is not None
    senders = [each.sender for each in proof._scanners._processes]
    for storage in made:
        feed(proof, storage, 1 << 20)
    lt_hash, note = proof.finish(reread_from({s.name: s.data for s in made}))
    assert lt_hash is None and note is not None
    assert "a piece could not be sent: ValueError: no such slot" in note
    assert not any(each.is_alive() for each in senders)  # ended with their processes


def test_a_last_pieces_slot_is_freed_by_its_storages_end_alone() -> None:
    # the slot of a storage's last piece is free once its end is answered: an answer that
    # says that piece is done on its own would free it twice (two pieces in one slot)
    proof = AccountsProof(roomy(), scanners=1, lanes=0)
    try:
        assert proof._scanners is not None
        process = proof._scanners._processes[0]
        with process.idle:  # as send_piece leaves it for the last piece of storage 7
            slot = process.slots.pop()
            process.storages.add(7)
            process._last_slots[7] = slot
            process.pending += 2
        with pytest.raises(ValueError, match=f"slot {slot} done, never in use"):
            process._take(scanprocess.DONE, slot, 0, 0, memoryview(b""))
        assert process._take(scanprocess.COUNT, 7, 0, 0, memoryview(b""))
        assert slot in process.slots and process.pending == 0 and 7 not in process.storages
    finally:
        proof.close()


def test_a_piece_answered_twice_costs_the_proof_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    # a process that says a slot is done twice (it is free by then) would let two pieces
    # share a slot and its count of pieces go below zero: the second answer is refused as
    # any other it cannot send, and the proof stops with a note
    real_take, twice = scanprocs._Process._take, []

    def doubled(self: Any, kind: int, *rest: Any) -> bool:
        if kind == scanprocess.DONE and not twice:
            twice.append(real_take(self, kind, *rest))  # the one it owed, then once more
        return real_take(self, kind, *rest)

    monkeypatch.setattr(scanprocs._Process, "_take", doubled)
    monkeypatch.setattr(storage_format, "PIECE", 1024)  # pieces before the last are answered
    made = built({3: many(200, 3)}, [3])
    proof = AccountsProof(roomy(), scanners=1, lanes=0)
    feed(proof, made[0], 4096)
    lt_hash, note = proof.finish(reread_from({s.name: s.data for s in made}))
    assert twice and lt_hash is None and note is not None
    assert "the scanning process answered badly: slot" in note and "never in use" in note


def test_a_scan_process_that_answers_nothing_stalls_the_proof_never_hangs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scan process alive but stopped (SIGSTOP: stuck, swapped out): the walk waited for a
    free slot of it for ever, the stall bound never asked. Past it (2 s here), the proof is
    not proven, with the reason."""
    monkeypatch.setattr(scanprocs, "STALLED", 2.0)
    slots = {s: many(1500, s) for s in range(3, 13)}
    made = built(slots, list(range(3, 13)))
    proof = AccountsProof(roomy(10_000), scanners=1, lanes=0)
    result: list[object] = []
    try:
        assert proof._scanners is not None
        [process] = proof._scanners._processes
        os.kill(process.proc.pid, signal.SIGSTOP)

        def run() -> None:
            for storage in made:
                feed(proof, storage, 4096)
            result.append(proof.finish(reread_from({s.name: s.data for s in made})))

        walk = threading.Thread(target=run, daemon=True)
        walk.start()
        walk.join(120)  # 2 s of stall and the unwinding; the bound only keeps a hang out
        assert not walk.is_alive(), "the walk hangs on a stopped scan process"
    finally:
        proof.close()  # kills the stopped process and reaps it
    assert result == [(None, "not proven: the scanning process stalled")]


def test_a_forkserver_gone_leaves_the_proof_to_its_lanes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The forkserver killed (OOM) while a proof starts its scan processes: EOFError from
    its pipe. The proof goes on without them and gives the state's hash (it was a refusal of
    an honest archive, "check failed: EOFError", and its budget share never given back)."""

    def gone(*_args: object, **_kw: object) -> None:
        raise EOFError("unexpected EOF")

    monkeypatch.setattr(accountsproof, "Scanners", gone)
    slots = {s: many(50, s) for s in range(3, 8)}
    made = built(slots, list(range(3, 8)))
    limits = roomy(10_000)
    proof = AccountsProof(limits, scanners=2, lanes=0)
    try:
        for storage in made:
            feed(proof, storage, 4096)
        assert proof.finish(reread_from({s.name: s.data for s in made})) == (model(slots), None)
    finally:
        proof.close()
    assert limits.budget is not None and limits.budget.used == 0


@pytest.mark.parametrize("thread", ["accounts-scan-answers", "accounts-scan-sends"])
def test_a_scan_thread_that_cannot_start_costs_no_verdict_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thread: str
) -> None:
    """A scan process's thread that cannot start (``RuntimeError: can't start new thread``,
    as CPython says at a pids limit: the tracker's own shortage, not the archive's). The
    check rejected a good archive ("check failed: RuntimeError: ..."), and the half-built
    process, its reading thread, its pipe, the proof's part of the shared budget and its
    hashing processes' worker slots were never given back. The proof goes on in the reading
    thread (no thread to spare) and proves it; everything is back."""
    monkeypatch.setattr(budget, "SCAN_PROCESSES", 2)
    shared, slots = MemoryBudget(1 << 30, room=1 << 30), budget.WorkerSlots(2)
    limits = AccountsLimits(max_accounts=100_000, workers=3, budget=shared, slots=slots)
    name, data = build_archive(1100, accounts=7)
    (tmp_path / name).write_bytes(data)
    processes: list[Any] = []
    start_process = scanprocs.start_process

    def started(process: Any) -> None:
        start_process(process)
        processes.append(process)

    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == thread:
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(scanprocs, "start_process", started)
    monkeypatch.setattr(threading.Thread, "start", start)
    try:
        proof = check_file(str(tmp_path / name), prove_accounts=limits).proof
        monkeypatch.setattr(threading.Thread, "start", real_start)
        assert (proof.level, proof.note) == (Level.ACCOUNTS, None)
        assert (shared.used, slots.used) == (0, 0)
        assert len(processes) == 1  # the first one's thread failed: no second was started
        assert all(each.exitcode is not None for each in processes)  # killed and waited for
        assert not [t for t in threading.enumerate() if t.name.startswith("accounts-scan")]
    finally:
        for each in processes:  # however the test ends, none is left running
            if each.exitcode is None:
                each.kill()
                each.join()


async def test_a_check_cancelled_while_its_walk_waits_on_a_stuck_scan_process_ends_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real archive's check in one scan process that answers nothing (stopped: a stuck
    process, a spinning one), its walk waiting for a free slot of it, is cancelled (the
    refresh aborted, the tracker stopping). The walk heeded only the stall bound (60 s),
    past the 10 s the stop waits for the check's thread: the interpreter's exit went on
    under it, its proof never closed. It ends within a second or two of the cancel now, no
    verdict, every process killed and reaped, nothing held."""
    monkeypatch.setattr(budget, "SCAN_PROCESSES", 1)
    monkeypatch.setattr(storage_format, "PIECE", 4096)  # each storage in many pieces
    monkeypatch.setattr(scanprocs, "GATHERED_PIECE", 0)
    shared, slots = MemoryBudget(1 << 30, room=1 << 30), budget.WorkerSlots(2)
    limits = AccountsLimits(max_accounts=100_000, workers=3, budget=shared, slots=slots)
    name, data = many_accounts_archive(7_000, 2_000, seed=5)
    processes: list[Any] = []
    start_process = scanprocs.start_process

    def stopped_at_start(process: Any) -> None:
        start_process(process)
        processes.append(process)
        os.kill(process.pid, signal.SIGSTOP)

    blocked = threading.Event()
    free_slot = scanprocs._Process._free_slot

    def waiting(self: Any) -> bool:
        if not self.slots:  # every slot holds a piece it never answers: the walk waits
            blocked.set()
        return bool(free_slot(self))

    monkeypatch.setattr(scanprocs, "start_process", stopped_at_start)
    monkeypatch.setattr(scanprocs._Process, "_free_slot", waiting)
    with open(tmp_path / "part", "wb") as f:  # noqa: ASYNC230 (a local temp file)
        check = FollowingCheck.start(f.fileno(), name, prove_accounts=limits)
        try:
            f.write(data)
            f.flush()
            check.advance(len(data))
            check.finish(len(data))
            assert await trio.to_thread.run_sync(blocked.wait, 30), "the walk never waited"
            started = trio.current_time()
            await check.stopped()  # cancels, then waits (at most 10 s) for the thread
            assert check.done(), "the check's thread waited on for the stall bound"
            assert trio.current_time() - started < 5
            with pytest.raises(ArchiveInvalid, match=r"^check cancelled$"):
                await check.result()
        finally:
            for each in processes:  # however the test ends, none is left running
                if each.exitcode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(each.pid, signal.SIGKILL)
            await check.stopped(within=60)
    assert len(processes) == 1 and all(each.exitcode is not None for each in processes)
    assert (shared.used, slots.used) == (0, 0)
    assert not [t for t in threading.enumerate() if t.name.startswith("accounts-scan")]


def test_a_proof_cancelled_while_it_waits_for_a_stuck_scan_processs_answers_ends_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The proof's end waits for every answer of its scan process, which answers nothing
    (stopped); the check is cancelled meanwhile. The wait heeded only the stall bound (60
    s); it ends within a second or two now, not proven for the tracker's own cause."""
    made = built({3: many(20, 3)}, [3])  # one piece: the walk never waits for a slot
    cancel, sent = threading.Event(), threading.Event()
    real_send = scanprocs._Process._send

    def send(self: Any, *args: Any) -> None:
        real_send(self, *args)
        sent.set()

    monkeypatch.setattr(scanprocs._Process, "_send", send)
    proof = AccountsProof(roomy(), scanners=1, lanes=0, cancelled=cancel.is_set)
    assert proof._scanners is not None
    [process] = proof._scanners._processes
    os.kill(process.proc.pid, signal.SIGSTOP)
    result: list[object] = []

    def run() -> None:
        feed(proof, made[0], 1 << 20)
        result.append(proof.finish(reread_from({s.name: s.data for s in made})))

    walk = threading.Thread(target=run, daemon=True)
    try:
        walk.start()
        assert sent.wait(30), "nothing was sent to the process"
        cancel.set()  # the walk waits (or is about to) for the answers
        walk.join(5)
        assert not walk.is_alive(), "the proof waited on for the stall bound"
    finally:
        if walk.is_alive():  # the test ends however it went: the process let go
            os.kill(process.proc.pid, signal.SIGKILL)
            walk.join(30)
        proof.close()
    assert result == [(None, "not proven: the check was cancelled")]
    assert proof.local_cause and process.proc.exitcode is not None
