"""``snapshot-tracker fetch --require LEVEL`` (docs/architecture.md, "Proven archives"): an
archive its check does not prove to LEVEL never enters the ledger (exit 1, one line); one
whose manifest contradicts its name is refused whatever the level asked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import trio
from archives import (
    build_archive,
    compress,
    forged_accounts_archive,
    lattice_hash,
    make_tar,
    many_accounts_archive,
    snapshot_entries,
)
from helpers_cluster import MINORITY, STAKES, bank_hash, votes_for
from helpers_server import serve_app
from helpers_upstream import FakeUpstream
from helpers_votes import VoteRpc
from test_fetch import fetch_command, ledger_of, run_cli, the_error_line
from test_fetch_sources import tracker_of

from tracker.proof.accounts.accountsprover import MISMATCH
from tracker.proof.formats.bankhash import NO_LATTICE_HASH
from tracker.proof.formats.writing import archive_hash_of, write_manifest

SLOT = 41_000
NAME = f"snapshot-{SLOT}-{archive_hash_of(lattice_hash(SLOT))}.tar.zst"


def archive(manifest: bytes) -> bytes:
    entries = snapshot_entries(SLOT, accounts=2, account_size=64 * 1024, seed=0)
    swapped = [(n, manifest if n == f"snapshots/{SLOT}/{SLOT}" else d) for n, d in entries]
    return compress(make_tar(swapped), "zst")


OLD = archive(write_manifest(SLOT, None, extra=4))  # made before SIMD-0220
FORGED = archive(write_manifest(SLOT, lattice_hash(1)))
GOOD = build_archive(SLOT, accounts=2)[1]
FORGED_ACCOUNTS = forged_accounts_archive(SLOT, accounts=2)[1]  # its manifest is the name's


async def fetch(tmp_path: Path, data: bytes, *flags: str) -> tuple[int, str, Path]:
    ledger = ledger_of(tmp_path)
    async with tracker_of([FakeUpstream(files={NAME: data})]) as tracker:
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true")
        done = await run_cli(*command, *flags)
    return done.returncode, the_error_line(done) if done.returncode else "", ledger


async def test_require_manifest_refuses_an_archive_below_it(tmp_path: Path) -> None:
    code, line, ledger = await fetch(tmp_path, OLD, "--require", "manifest")
    assert code == 1
    assert f"proven to structure, manifest required: {NO_LATTICE_HASH}" in line, line
    assert list(ledger.iterdir()) == []


async def test_without_require_the_same_archive_is_fetched(tmp_path: Path) -> None:
    code, _line, ledger = await fetch(tmp_path, OLD)
    assert code == 0
    assert (ledger / NAME).read_bytes() == OLD


async def test_a_manifest_that_contradicts_the_name_is_refused(tmp_path: Path) -> None:
    code, line, ledger = await fetch(tmp_path, FORGED)
    assert code == 1
    name_hash = NAME.split("-")[2].removesuffix(".tar.zst")
    assert f"manifest: name hash {name_hash}, lattice hash gives " in line, line
    assert list(ledger.iterdir()) == []


async def test_require_accounts_refuses_a_full_whose_storages_are_not_its_manifests(
    tmp_path: Path,
) -> None:
    code, line, ledger = await fetch(tmp_path, FORGED_ACCOUNTS, "--require", "accounts")
    assert code == 1
    assert MISMATCH in line and "\n" not in line, line
    assert list(ledger.iterdir()) == []


async def test_require_accounts_fetches_a_full_whose_storages_prove(tmp_path: Path) -> None:
    code, _line, ledger = await fetch(tmp_path, GOOD, "--require", "accounts")
    assert code == 0
    assert (ledger / NAME).read_bytes() == GOOD


async def test_require_cluster_without_rpc_exits_2_before_any_download(tmp_path: Path) -> None:
    """Without ``--rpc`` no archive could reach ``cluster``: refused up front (exit 2, the
    one line), nothing asked of the tracker or the source."""
    ledger = ledger_of(tmp_path)
    up = FakeUpstream(files={NAME: GOOD})
    async with tracker_of([up]) as tracker:
        command = fetch_command(ledger, tracker.base, "--progress", "none")
        done = await run_cli(*command, "--require", "cluster")
        assert tracker.seen == [] and up.seen == []
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.splitlines()[-1] == (
        "snapshot-tracker fetch: error: --require cluster needs --rpc URL: the cluster's "
        "votes are asked of an RPC"
    )
    assert list(ledger.iterdir()) == []


async def fetch_with_rpc(
    tmp_path: Path, node: VoteRpc
) -> tuple[subprocess.CompletedProcess[bytes], Path]:
    """``fetch --require cluster --rpc`` of GOOD, ``node`` the fake RPC on 127.0.0.1."""
    ledger = ledger_of(tmp_path)
    async with trio.open_nursery() as nursery:
        rpc = await nursery.start(serve_app, node.app())
        async with tracker_of([FakeUpstream(files={NAME: GOOD})]) as tracker:
            command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true")
            done = await run_cli(*command, "--require", "cluster", "--rpc", rpc + "/")
        nursery.cancel_scope.cancel()
    return done, ledger


async def test_require_cluster_with_an_rpc_whose_votes_carry_the_archive(tmp_path: Path) -> None:
    """With ``--rpc`` fetch weighs the votes itself: 70% of the stake voted the archive's
    bank hash in the block after its slot, so it enters the ledger at ``cluster``."""
    bank = bank_hash(tmp_path, NAME, GOOD)
    node = VoteRpc(blocks=votes_for(SLOT, bank, majority=True), stakes=STAKES)
    done, ledger = await fetch_with_rpc(tmp_path, node)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert (ledger / NAME).read_bytes() == GOOD
    [line] = [line for line in err.splitlines() if f"fetch_done file={NAME}" in line]
    assert "proven=cluster" in line, line
    assert SLOT + 1 in node.block_calls()
    assert any(method == "getVoteAccounts" for method, _params in node.calls)


async def test_require_cluster_refuses_an_archive_a_minority_voted(tmp_path: Path) -> None:
    bank = bank_hash(tmp_path, NAME, GOOD)
    node = VoteRpc(blocks=votes_for(SLOT, bank, majority=False), stakes=STAKES)
    done, ledger = await fetch_with_rpc(tmp_path, node)
    line = the_error_line(done)
    assert f"proven to accounts, cluster required: {MINORITY}" in line, line
    assert list(ledger.iterdir()) == []


async def test_require_accounts_says_an_incremental_stops_at_manifest(tmp_path: Path) -> None:
    """``--require accounts`` takes the incremental at ``manifest`` (its storages cannot
    prove the whole state) and its ``fetch_done`` line says so; the full's says ``accounts``."""
    incremental, data = build_archive(SLOT + 100, base_slot=SLOT, accounts=2)
    ledger = ledger_of(tmp_path)
    async with tracker_of([FakeUpstream(files={NAME: GOOD, incremental: data})]) as tracker:
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true")
        done = await run_cli(*command, "--incremental=true", "--require", "accounts")
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert sorted(p.name for p in ledger.iterdir()) == sorted([incremental, NAME])
    [full_line] = [line for line in err.splitlines() if f"fetch_done file={NAME}" in line]
    [inc_line] = [line for line in err.splitlines() if f"fetch_done file={incremental}" in line]
    assert "proven=accounts" in full_line, full_line
    note = "incremental: proven to manifest, the most an incremental can reach"
    assert note in inc_line, inc_line


async def test_require_accounts_short_of_temporary_space_blames_no_source(
    tmp_path: Path,
) -> None:
    """The proof cannot spill here (its temporary directory is a file): the copy is not
    proven for this machine's cause, so no source is blamed (not "failed verification")
    and the fetch stops there rather than take another source's copy to meet the same
    shortage (exit 1, the one line, nothing in the ledger)."""
    name, data = many_accounts_archive(SLOT + 7, 40_000, seed=2)
    blocked = tmp_path / "not-a-directory"
    blocked.write_bytes(b"")
    ledger = ledger_of(tmp_path)
    first, second = FakeUpstream(files={name: data}), FakeUpstream(files={name: data})
    async with tracker_of([first, second]) as tracker:
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true")
        done = await run_cli(
            *command,
            *("--require", "accounts", "--prove-accounts-memory", "1MiB"),
            *("--prove-accounts-temp-dir", str(blocked)),
        )
    line = the_error_line(done)
    assert f"{name}: archive not proven here: proven to manifest, accounts required: " in line
    assert f"the temporary directory {str(blocked)!r} is unusable" in line, line
    assert "failed verification" not in line
    assert list(ledger.iterdir()) == []
