"""``fetch``'s spill beside the ledger, on real files (docs/fetch.md, "Safely"): what an
earlier fetch's proofs left in ``.accounts-proof`` goes, and only that (never through a
link, never a running proof's, never another's file); and the room a download beside the
spill still needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracker.fetch.ledger import tidy_spill
from tracker.fetch.space import not_on_disk, same_file_system
from tracker.proof.accounts.budget import CACHE_TEMP, PREFIX
from tracker.proof.accounts.spill import SpillDir


def _leftover(root: Path, name: str) -> Path:
    """A proof's directory whose fetch was killed: its lock file, held by nobody."""
    left = root / f"{PREFIX}{name}"
    left.mkdir(parents=True)
    (left / "lock").write_bytes(b"")
    (left / "p00").write_bytes(bytes(400))
    return left


def test_an_earlier_fetchs_spill_goes_and_the_empty_directory_with_it(tmp_path: Path) -> None:
    _leftover(tmp_path / CACHE_TEMP, "killed")
    tidy_spill(str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    tidy_spill(str(tmp_path))  # nothing there: nothing to do


def test_a_running_proofs_spill_and_anything_else_are_kept(tmp_path: Path) -> None:
    root = tmp_path / CACHE_TEMP
    running = SpillDir(str(root))  # holds its lock
    try:
        tidy_spill(str(tmp_path))
        assert os.path.isdir(running.path)
    finally:
        running.remove()
    (root / "notes.txt").write_text("the operator's")
    tidy_spill(str(tmp_path))
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]  # not empty: kept


def test_a_link_in_its_place_is_removed_never_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    left = _leftover(elsewhere, "not-ours-to-judge")
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / CACHE_TEMP).symlink_to(elsewhere)
    tidy_spill(str(ledger))
    assert list(ledger.iterdir()) == []
    assert left.exists() and (left / "p00").exists()


def test_what_a_temp_file_lacks_on_disk(tmp_path: Path) -> None:
    size = 8 * 1024**2
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as file:
        file.truncate(size)  # a resumed or unpreallocated temp file: a hole
        file.write(bytes(1024**2))  # its first MiB landed
        file.flush()
        os.fsync(file.fileno())
    lacking = not_on_disk(str(sparse), size)
    assert size - 1024**2 - 64 * 1024 <= lacking <= size - 1024**2
    whole = tmp_path / "whole"
    whole.write_bytes(bytes(size))
    assert not_on_disk(str(whole), size) == 0
    assert not_on_disk(str(tmp_path / "renamed-into-place"), size) == 0


def test_whether_the_spill_is_on_the_ledgers_file_system(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    assert same_file_system(str(ledger / CACHE_TEMP), str(ledger))  # not made yet
    assert same_file_system(str(tmp_path / "a" / "b"), str(ledger))
    assert not same_file_system(str(ledger), str(tmp_path / "missing-ledger"))
    if os.path.isdir("/proc/self") and os.stat("/proc").st_dev != os.stat(ledger).st_dev:
        assert not same_file_system("/proc/self", str(ledger))


@pytest.mark.parametrize("name", ["file", "dangling"])
def test_something_else_in_its_place_is_left(tmp_path: Path, name: str) -> None:
    spill = tmp_path / CACHE_TEMP
    if name == "file":
        spill.write_text("the operator's")
        tidy_spill(str(tmp_path))
        assert spill.read_text() == "the operator's"
    else:
        spill.symlink_to(tmp_path / "nowhere")
        tidy_spill(str(tmp_path))
        assert not os.path.lexists(spill)
