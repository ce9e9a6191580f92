"""The tracker's own shortage is never a verdict on an archive (docs/architecture.md, "Any
failure is the copy's, unless it is the reading's"): a thread it cannot start (CPython's
``RuntimeError: can't start new thread`` at a pids limit) or memory it cannot get comes out
of the check as the OSError a local read error is, which every caller keeps the copy for
and tries again; anything else the check did not foresee still rejects the copy."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest
from archives import build_archive

from tracker.errors import ArchiveInvalid, own_shortage
from tracker.proof.accounts import accountsproof
from tracker.proof.accounts.budget import AccountsLimits, MemoryBudget, WorkerSlots
from tracker.proof.archive.archivecheck import as_rejection, check_file
from tracker.proof.levels import own_retry_after


@pytest.mark.parametrize(
    ("exc", "shortage"),
    [
        (RuntimeError("can't start new thread"), (errno.EAGAIN, "can't start new thread")),
        (MemoryError(), None),  # the check's memory is bounded: the bytes asked for it
        (RuntimeError("dictionary changed size during iteration"), None),  # a bug: no excuse
        (ValueError("bad bytes"), None),
        (ArchiveInvalid("zstd: corrupted block"), None),
    ],
)
def test_which_failures_are_the_tracker_s_own_shortage(
    exc: BaseException, shortage: tuple[int, str] | None
) -> None:
    found = own_shortage(exc)
    assert (None if found is None else (found.errno, found.strerror)) == shortage


def test_a_shortage_is_raised_as_a_local_failure_anything_else_rejects() -> None:
    with pytest.raises(OSError, match="can't start new thread") as raised:
        as_rejection(RuntimeError("can't start new thread"))
    assert raised.value.errno == errno.EAGAIN
    assert as_rejection(MemoryError()).reason.startswith("check failed: MemoryError")
    assert as_rejection(ValueError("bad")).reason == "check failed: ValueError: bad"
    assert as_rejection(RuntimeError("x")).reason == "check failed: RuntimeError: x"


def test_a_scan_lane_that_cannot_start_is_a_local_failure_and_gives_everything_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read's scan lane cannot start its thread: the check raises OSError (EAGAIN),
    never "check failed: RuntimeError" (a good copy deleted, its source held back); the
    proof's part of the budget and its worker slots are back, no lane thread is left."""
    monkeypatch.setattr(accountsproof, "scan_lanes", lambda limits: 1)
    monkeypatch.setattr(accountsproof, "scan_processes", lambda limits: 0)
    shared, slots = MemoryBudget(1 << 30, room=1 << 30), WorkerSlots(2)
    limits = AccountsLimits(max_accounts=100_000, workers=3, budget=shared, slots=slots)
    name, data = build_archive(1100, accounts=7)
    (tmp_path / name).write_bytes(data)
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == "accounts-scan":
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(OSError, match="can't start new thread") as raised:
        check_file(str(tmp_path / name), prove_accounts=limits)
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert raised.value.errno == errno.EAGAIN
    assert (shared.used, slots.used) == (0, 0)
    assert not [t for t in threading.enumerate() if t.name == "accounts-scan"]


@pytest.mark.parametrize(
    ("tries", "wait"),
    [(0, 60.0), (1, 60.0), (2, 120.0), (3, 240.0), (7, 3600.0), (1000, 3600.0)],
)
def test_the_wait_before_a_check_that_fell_short_is_tried_again(tries: int, wait: float) -> None:
    assert own_retry_after(tries, 60.0) == wait


def test_kernels_that_cannot_be_loaded_are_the_tracker_s_shortage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LLVM's library that cannot be mapped under a memory limit (``OSError: Could not
    find/load shared object file 'libllvmlite.so'``) failed the check of a good full as
    "check failed: OSError": the copy deleted, its source held back, a local file marked
    failed. It is the tracker's own shortage (ENOMEM), and the next load tries again."""
    import sys

    from tracker.errors import KernelsUnavailable
    from tracker.proof.formats import kernels

    monkeypatch.setattr(kernels, "_LOADED", [])
    monkeypatch.setitem(sys.modules, "numba", None)  # its import fails
    with pytest.raises(KernelsUnavailable, match="compiled kernels could not be loaded") as info:
        kernels.load()
    with pytest.raises(OSError, match="compiled kernels") as raised:
        as_rejection(info.value)
    assert raised.value.errno == errno.ENOMEM
    assert kernels._LOADED == []  # not taken as loaded: tried again at the next large call
