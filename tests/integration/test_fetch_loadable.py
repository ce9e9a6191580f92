"""``snapshot-tracker fetch --loadable-by agave`` (docs/fetch.md, docs/http-api.md "Proven
archives"): a copy with several account storages for one slot, as Firedancer writes them,
never enters the ledger (exit 1, one line with the reason); without the flag it does; the
flag without ``--verify`` is a usage error before any download."""

from __future__ import annotations

from typing import TYPE_CHECKING

from archives import build_archive
from helpers_upstream import FakeUpstream
from test_fetch import fetch_command, ledger_of, run_cli, the_error_line
from test_fetch_sources import tracker_of

if TYPE_CHECKING:
    from pathlib import Path

SLOT = 42_000
NAME, FIREDANCER = build_archive(SLOT, accounts=2, layout="firedancer")
AGAVE = build_archive(SLOT, accounts=2)[1]


async def fetch(tmp_path: Path, data: bytes, *flags: str) -> tuple[int, str, Path]:
    ledger = ledger_of(tmp_path)
    async with tracker_of([FakeUpstream(files={NAME: data})]) as tracker:
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true", *flags)
        done = await run_cli(*command)
    return done.returncode, the_error_line(done) if done.returncode == 1 else "", ledger


async def test_a_copy_agave_cannot_load_never_enters_the_ledger(tmp_path: Path) -> None:
    code, line, ledger = await fetch(tmp_path, FIREDANCER, "--loadable-by", "agave")
    assert code == 1
    assert (
        f"trust.loadable_by agave: agave cannot load it: 2 account storages for slot {SLOT}"
    ) in line, line
    assert list(ledger.iterdir()) == []


async def test_the_agave_copy_is_fetched_and_without_the_flag_either(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "f").mkdir()
    code, _line, ledger = await fetch(tmp_path / "a", AGAVE, "--loadable-by", "agave")
    assert code == 0 and (ledger / NAME).read_bytes() == AGAVE
    code, _line, ledger = await fetch(tmp_path / "f", FIREDANCER)
    assert code == 0 and (ledger / NAME).read_bytes() == FIREDANCER


async def test_without_verify_it_is_a_usage_error(tmp_path: Path) -> None:
    code, _line, ledger = await fetch(tmp_path, AGAVE, "--loadable-by", "agave", "--verify=false")
    assert code == 2
    assert list(ledger.iterdir()) == []
