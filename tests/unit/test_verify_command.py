"""``snapshot-tracker verify`` on what is not a good archive: one ``bad`` line per file and on
to the next, whatever the file holds or is (a hostile archive, a FIFO, a link to a device).
No network."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from archives import (
    build_archive,
    compress,
    forged_accounts_archive,
    huge_pax_size_archive,
    huge_pax_size_reason,
    make_tar,
    many_accounts_archive,
)

from tracker.cli import main
from tracker.proof.accounts import spill
from tracker.proof.accounts.accountsprover import MISMATCH
from tracker.proof.formats.writing import (
    Account,
    archive_hash_of,
    lattice_of,
    padded,
    write_manifest,
    write_status_cache,
    write_storage,
)

SLOT = 345_678


def test_an_archive_the_check_cannot_parse_is_one_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, bad = huge_pax_size_archive(SLOT, compression="zst")
    _, good = build_archive(SLOT + 1)
    bad_path = tmp_path / "bad" / name
    bad_path.parent.mkdir()
    bad_path.write_bytes(bad)
    good_path = tmp_path / build_archive(SLOT + 1)[0]
    good_path.write_bytes(good)
    assert main(["verify", str(bad_path), str(good_path)]) == 1
    reason = huge_pax_size_reason(build_archive(SLOT)[1], "zst")
    assert capsys.readouterr().out.splitlines() == [
        f"bad {bad_path}: {reason}",
        f"ok accounts {hashlib.sha256(good).hexdigest()} {good_path}",
    ]


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    # A FIFO would block open() for good, a link to /dev/zero read for good: neither is
    # opened as an archive; a link to a regular archive is checked as that archive.
    name, good = build_archive(SLOT)
    fifo = tmp_path / "snapshot-1-x.tar.zst"
    os.mkfifo(fifo)
    zero = tmp_path / name.replace(".tar.zst", ".tar")
    zero.symlink_to("/dev/zero")
    real = tmp_path / "real"
    real.mkdir()
    (real / name).write_bytes(good)
    link = tmp_path / name
    link.symlink_to(real / name)
    done = subprocess.run(
        [sys.executable, "-m", "tracker", "verify", str(fifo), str(zero), str(link)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (1, "")
    assert done.stdout.splitlines() == [
        f"bad {fifo}: not a regular file",
        f"bad {zero}: not a regular file",
        f"ok accounts {hashlib.sha256(good).hexdigest()} {link}",
    ]


def many_accounts(slot: int, count: int) -> tuple[str, bytes]:
    """(name, bytes) of a full of ``count`` accounts in one storage, whose storages give its
    manifest's lattice hash."""
    accounts = [Account(n.to_bytes(32, "big"), 1) for n in range(count)]
    storage = write_storage(accounts)
    lt_hash = lattice_of(accounts)
    entries: list[tuple[str, bytes | None]] = [
        ("version", b"1.2.0"),
        (f"snapshots/{slot}/{slot}", write_manifest(slot, lt_hash, [(slot, 0, len(storage))])),
        ("snapshots/status_cache", write_status_cache([slot])),
        (f"accounts/{slot}.0", padded(storage)),
    ]
    name = f"snapshot-{slot}-{archive_hash_of(lt_hash)}.tar.zst"
    return name, compress(make_tar(entries), "zst")


def test_verify_proves_fulls_to_accounts_up_to_its_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = [build_archive(SLOT), many_accounts(SLOT + 1, 1001), forged_accounts_archive(SLOT + 2)]
    paths = []
    for name, data in made:
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    sha = [hashlib.sha256(data).hexdigest() for _, data in made]
    assert main(["verify", "--prove-accounts-max", "1000", *map(str, paths)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"ok accounts {sha[0]} {paths[0]}",
        f"ok manifest {sha[1]} {paths[1]} (not proven: 1001 accounts over the bound of 1000)",
        f"bad {paths[2]}: {MISMATCH}",
    ]
    assert main(["verify", str(paths[1])]) == 0  # no bound by default
    assert capsys.readouterr().out == f"ok accounts {sha[1]} {paths[1]}\n"


def test_verify_proves_a_full_larger_than_its_memory_by_spilling_to_its_temp_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, data = many_accounts_archive(SLOT + 3, 12_000)
    path = tmp_path / name
    path.write_bytes(data)
    temp = tmp_path / "spill"
    temp.mkdir()
    seen: list[list[str]] = []
    real = spill.SpillIndex.flush

    def flush(self: spill.SpillIndex) -> None:  # the spill seen as it happens
        real(self)
        if self.on_disk:  # its first runs are held in memory
            seen.append(os.listdir(temp))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spill.SpillIndex, "flush", flush)
        flags = ["--prove-accounts-memory", "1MiB", "--prove-accounts-temp-dir", str(temp)]
        assert main(["verify", *flags, str(path)]) == 0
    sha = hashlib.sha256(data).hexdigest()
    assert capsys.readouterr().out == f"ok accounts {sha} {path}\n"
    assert seen and all(len(names) == 1 for names in seen)  # one directory of the proof's
    assert os.listdir(temp) == []  # removed at the end


def test_a_spill_directory_in_memory_is_said_once_before_the_checks(
    tmp_path: Path, shm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tmpfs spill counts as memory (its cgroup's shmem): verify says so in one line on
    stderr before the checks, only where a full's accounts proof could spill."""
    full, data = build_archive(SLOT + 5)
    (tmp_path / full).write_bytes(data)
    base = int(full.split("-")[1])
    incremental = f"incremental-snapshot-{base}-{base + 10}-{full.split('-')[2]}"
    (tmp_path / incremental).write_bytes(b"")
    flags = ["--prove-accounts-temp-dir", str(shm_dir)]
    main(["verify", *flags, str(tmp_path / full), str(tmp_path / full)])
    err = capsys.readouterr().err.splitlines()
    said = f"snapshot-tracker verify: warning: --prove-accounts-temp-dir {str(shm_dir)!r}"
    assert len(err) == 1 and err[0].startswith(f"{said} is on a memory-backed file system")
    assert "past --prove-accounts-memory; name a directory on disk" in err[0]
    main(["verify", *flags, str(tmp_path / incremental)])  # an incremental never spills
    assert capsys.readouterr().err == ""
