"""bench/accounts.py and bench/hostile_accounts.py run end to end on tiny archives, within a
budget small enough that the index spills, and say so (not a performance test)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# ``bench`` is a package of the checkout, not of the install: importable here whichever
# tests a worker ran before (it was only after one that imports helpers_s3).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bench(script: str, *flags: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *flags],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout


def test_the_accounts_bench_reports_the_peaks_and_the_spill(tmp_path: Path) -> None:
    out = bench(
        "accounts.py",
        "--accounts",
        "20000",
        "--runs",
        "1",
        "--memory",
        "1MiB",
        "--out",
        str(tmp_path),
    )
    assert "level reached: accounts (no note)" in out
    assert "budget 1 MiB, held of it at most 0.2 MiB" in out  # the accounted quarter
    spill = next(line for line in out.splitlines() if line.startswith("peak temporary disk"))
    assert "(0.0 bytes" not in spill  # it spilled
    assert not list((tmp_path / "accounts-20000" / "tmp").iterdir())  # and removed it


def test_the_hostile_bench_proves_empty_accounts_within_the_budget(tmp_path: Path) -> None:
    out = bench(
        "hostile_accounts.py", "--accounts", "30000", "--memory", "1MiB", "--out", str(tmp_path)
    )
    assert "30000 empty accounts" in out and "level accounts (no note)" in out
    assert "held 0 MiB" in out and "spilled 0 MiB at most" not in out


def test_the_accounts_bench_proves_data_heavy_storages(tmp_path: Path) -> None:
    out = bench(
        "accounts.py", "--heavy", "--accounts", "300", "--runs", "1", "--out", str(tmp_path)
    )
    assert "level reached: accounts (no note)" in out
    assert "300 accounts" in out


def test_the_streaming_builder_is_deterministic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.manyaccounts import build_archive

    first = build_archive(tmp_path / "a", 400_000_000, 3, 12_000)
    again = build_archive(tmp_path / "b", 400_000_000, 3, 12_000)
    assert first == again  # the same name: the same lattice hash
    assert first["records"] > first["accounts"] > first["newest_with_lamports"]
    assert not (tmp_path / "a" / "storages.part").exists()
    archive = tmp_path / "a" / str(first["archive"])
    assert archive.read_bytes() == (tmp_path / "b" / str(again["archive"])).read_bytes()


def test_the_hostile_bench_runs_storages_of_one_record_and_concurrent_checks(
    tmp_path: Path,
) -> None:
    out = bench(
        "hostile_accounts.py",
        "--accounts",
        "3000",
        "--per-storage",
        "1",
        "--concurrent",
        "2",
        "--out",
        str(tmp_path),
    )
    assert "3000 empty accounts, 1 a storage, 2 checks at once" in out
    assert "level accounts (no note)" in out and "µs a storage" in out


def test_the_accounts_bench_spreads_the_yardstick_over_processes(tmp_path: Path) -> None:
    """``--spread``: every newest account hashed once in all, however many processes."""
    out = bench("accounts.py", "--accounts", "3000", "--spread", "1,2", "--out", str(tmp_path))
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "XOF loop spread over 1 process(es)",
        "XOF loop spread over 2 process(es)",
    ]
    rates = [float(line.split(", ")[-1].split("x")[0]) for line in lines]
    assert rates[0] == 1.0 and rates[1] > 0  # the second against the first
    hashed = [line.split(" CPU-s (")[1].split(" a million")[0] for line in lines]
    assert all(float(each) > 0 for each in hashed)


def test_the_proof_alone_reports_the_trees_pss_beside_its_peaks(tmp_path: Path) -> None:
    out = bench(
        "accounts.py",
        "--accounts",
        "3000",
        "--proof-only",
        "--runs",
        "1",
        "--out",
        str(tmp_path),
    )
    line = next(each for each in out.splitlines() if each.startswith("proof alone"))
    vmhwm = int(line.split("peak of the tree ")[1].split(" MiB")[0])
    pss = int(line.split("(sum of VmHWM), ")[1].split(" MiB")[0])
    assert 0 < pss <= vmhwm, line


@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is the plain check's yardstick"
)
def test_the_accounts_bench_times_the_plain_check(tmp_path: Path) -> None:
    out = bench(
        "accounts.py", "--accounts", "20000", "--plain", "--runs", "1", "--out", str(tmp_path)
    )
    assert out.startswith("plain check of a ") and "verify --prove-accounts-max 1000" in out


def test_the_kernel_processes_bench_scans_in_a_fresh_and_in_forked_processes() -> None:
    """bench/kernelprocs.py: every process scans every record; the forked ones hold the
    loaded kernels shared (what each holds alone is far less than a fresh process's)."""
    report = json.loads(bench("kernelprocs.py", "--accounts", "20000", "--children", "2"))
    fresh, forked = report["fresh"], report["forked"]
    assert len(forked) == 2
    assert {each["records"] for each in [fresh, *forked]} == {fresh["records"]} != {0}
    assert all(each["uss"] < fresh["uss"] / 2 for each in forked), report


def test_the_busiest_threads_of_a_stage_from_the_timelines_samples() -> None:
    from bench.accounts import PROCESSES, _busiest, _Timeline

    timeline = _Timeline()  # its samples given, not taken
    timeline.samples = [(0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (3.0, 0.0)]
    check, frames = "MainThread", "zstd-frame"
    timeline.threads = [
        {0: (PROCESSES, 0.0), 7: (check, 0.0)},
        {0: (PROCESSES, 0.5), 7: (check, 0.9), 8: (frames, 0.2), 9: (frames, 0.4)},
        {0: (PROCESSES, 1.5), 7: (check, 1.9), 8: (frames, 0.2), 9: (frames, 0.4)},
        {0: (PROCESSES, 1.5), 7: (check, 2.0), 8: (frames, 0.2), 9: (frames, 0.4)},
    ]
    # each name's cores over the stage's wall, the busiest one thread, how many; threads
    # born in the stage count from zero, those idle in it not at all
    assert timeline.busiest(0.0, 2.0) == {
        PROCESSES: (0.75, 0.75, 1),
        check: (0.95, 0.95, 1),
        frames: (pytest.approx(0.3), 0.2, 2),
    }
    assert timeline.busiest(2.0, 3.0) == {check: (pytest.approx(0.1), pytest.approx(0.1), 1)}
    assert timeline.busiest(0.5, 1.5) == {}  # one sample: no wall to share
    line = _busiest("first read", timeline.busiest(0.0, 2.0))
    assert line == (
        "  first read, cores by thread: check's thread 0.95, processes (together) 0.75, "
        "zstd-frame 0.30 (x2, busiest 0.20)"
    )


def test_a_thread_that_ended_keeps_its_cpu_in_the_timeline() -> None:
    from bench.accounts import _Timeline

    timeline = _Timeline()
    done = threading.Event()
    worker = threading.Thread(target=done.wait, name="lane-3")
    worker.start()
    timeline.threads.append(timeline._by_thread(0.0))
    ident = worker.native_id
    assert ident is not None and timeline.threads[-1][ident][0] == "lane"
    done.set()
    worker.join()
    after = timeline._by_thread(0.0)
    assert after[ident] == timeline.threads[-1][ident]  # ended: its last figure stays


def test_the_proof_alone_says_what_the_checks_thread_waited_for_in_each_read(
    tmp_path: Path,
) -> None:
    # the 16-core settings (scan processes): the walk hands pieces to them, so it may wait
    # for a slot as well as for the raw chunks and the decoded frames
    out = bench(
        "accounts.py",
        "--accounts",
        "20000",
        "--proof-only",
        "--runs",
        "1",
        "--workers",
        "16",
        "--memory",
        "2656MiB",
        "--out",
        str(tmp_path),
    )
    waited = {
        line.split(",")[0].strip(): line.split("(s): ")[1]
        for line in out.splitlines()
        if "the check's thread waited (s)" in line
    }
    assert set(waited) == {"first read", "second read"}, out
    first = dict(each.rsplit(" ", 1) for each in waited["first read"].split(", "))
    assert {"raw", "slot"} <= set(first), waited
    assert all(float(seconds) >= 0 for seconds in first.values())
