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
from archives import build_archive, huge_pax_size_archive, huge_pax_size_at

from tracker.cli import main

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
    at = huge_pax_size_at(build_archive(SLOT)[1], "zst")
    assert capsys.readouterr().out.splitlines() == [
        f"bad {bad_path}: tar: bad pax size at byte {at}",
        f"ok manifest {hashlib.sha256(good).hexdigest()} {good_path}",
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
        f"ok manifest {hashlib.sha256(good).hexdigest()} {link}",
    ]
