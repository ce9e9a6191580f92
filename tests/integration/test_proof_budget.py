"""The accounts level within its memory budget, end to end (docs/architecture.md, "Bounded
memory"): a real tracker with a budget of 1 MiB proves a full whose pubkey index does not fit
in it (the index spills under the cache directory, removed when the proof ends), and a hostile
full of many empty accounts costs no more than the budget either."""

from __future__ import annotations

from pathlib import Path

from archives import many_accounts_archive
from helpers_proxy import wait_for
from helpers_tracker import wait_until
from helpers_wire import raw_request
from test_proven import wait_until_proof
from test_verified import GROUP, _listed, fleet, metric

from tracker.proof.accounts.budget import CACHE_TEMP, PREFIX

BUDGET = 1024**2  # the smallest prove_accounts_memory


async def proven_within_the_budget(
    tmp_path: Path, name: str, data: bytes, **config: object
) -> None:
    """The tracker caches ``data`` proven to ``accounts``, having spilled; the most a proof
    held of the budget stays within it, and the spilled files are gone."""
    async with fleet(
        tmp_path,
        name,
        data,
        data,
        prove_accounts_memory=BUDGET,
        trust={"require": "accounts"},
        **config,
    ) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        served = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert served.status == 200 and served.body == data
        assert (await wait_until_proof(f.public, name))["level"] == "accounts"
        spilled = await metric(f.internal, "snapshot_tracker_accounts_proof_spill_peak_bytes")
        assert spilled > 0  # the index did not fit: it went to disk
        held = await metric(f.internal, "snapshot_tracker_accounts_proof_memory_peak_bytes")
        assert 0 < held <= BUDGET  # the shared budget, never over
        temp = f.cache / CACHE_TEMP
        await wait_for(lambda: not any(temp.iterdir()))  # removed at the proof's end


async def test_a_full_larger_than_the_memory_budget_is_proven_by_spilling(
    tmp_path: Path,
) -> None:
    name, data = many_accounts_archive(7000, 12_000, seed=1)
    left = tmp_path / "cache" / CACHE_TEMP / f"{PREFIX}killed"
    left.mkdir(parents=True)  # a proof's files whose tracker was killed: its lock not held
    (left / "lock").write_bytes(b"")
    (left / "p00").write_bytes(bytes(400))
    await proven_within_the_budget(tmp_path, name, data)
    assert not left.exists()  # cleaned at the start


async def test_a_full_is_proven_with_the_first_reads_bookkeeping_in_a_thread_apart(
    tmp_path: Path,
) -> None:
    # four proof workers: the index and the hashing ahead in a thread beside the reading one
    # (docs/architecture.md, "Every core"), spilling within the same budget
    name, data = many_accounts_archive(7200, 12_000, seed=2)
    await proven_within_the_budget(tmp_path, name, data, proof_workers=4)


async def test_a_hostile_full_of_empty_accounts_costs_no_more_than_the_budget(
    tmp_path: Path,
) -> None:
    name, data = many_accounts_archive(7100, 200_000, empty=True)
    assert len(data) < 1024**2  # 200,000 accounts in less than the budget
    await proven_within_the_budget(tmp_path, name, data)
