"""examples/make_ledger.py as a user runs it: ``--help`` prints its usage and writes nothing
(it once took ``--help`` for the directory and wrote three archives into ``--help/``), a bad
argument is one line and exit 2, and ``--size`` makes a full big enough for a refresh from
several sources, still a real archive the check proves to ``accounts``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import check_file
from tracker.proof.levels import Level

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "make_ledger.py"
LEDGER = ROOT / "examples" / "ledger"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _shipped() -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in LEDGER.iterdir()}


def test_help_prints_the_usage_and_writes_nothing(tmp_path: Path) -> None:
    before = _shipped()
    for flag in ("--help", "-h"):
        done = _run([flag], tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("usage: make_ledger.py") and "--size SIZE" in done.stdout
    assert list(tmp_path.iterdir()) == []
    assert _shipped() == before


def test_a_bad_argument_is_one_usage_line_and_exit_2(tmp_path: Path) -> None:
    for args in (["--bogus"], ["--size", "lots"]):
        done = _run([*args, str(tmp_path / "out")], tmp_path)
        assert done.returncode == 2, done
        assert "Traceback" not in done.stderr and "error:" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_size_makes_a_full_of_at_least_that_size_proven_to_accounts(tmp_path: Path) -> None:
    done = _run([str(tmp_path), "--size", "2MiB"], tmp_path)
    assert done.returncode == 0, done.stderr
    [full] = tmp_path.glob("snapshot-1000-*.tar.zst")
    assert full.stat().st_size >= 2 * 1024**2
    assert len(list(tmp_path.glob("incremental-snapshot-1000-*.tar.zst"))) == 2
    assert full.name not in _shipped()  # its accounts differ, and so its hash
    assert check_file(str(full), prove_accounts=AccountsLimits()).proof.level == Level.ACCOUNTS
