"""The cluster level on both consensus kinds (docs/http-api.md, "The cluster level") against
test RPCs on 127.0.0.1 that answer ``getAgGenesisCert`` (a certificate, ``null``, -32601),
``getEpochInfo``, ``getVoteAccounts``, ``getMultipleAccounts`` (V4 vote accounts with BLS
keys) and ``getBlock``, and serve certificate documents whose certificates are really signed
(``tests/helpers_alpenglow.py``, keys made with ``py_ecc``) over the rank map of their vote
accounts.

Before the migration a slot is proven by votes, from the blocks up to the genesis only;
after it vote transactions count for nothing and only a finality certificate of the
manifest's block id, fast (>= 80%) or slow (finalize and notarize >= 60%), verified over
the signers its bitmap names in each RPC's rank map, lifts an archive."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import base58
import httpx
import pytest
import trio
from helpers_alpenglow import (
    BLOCK_ID,
    OTHER_BLOCK,
    Validator,
    alpenglow_rpc,
    bitmap,
    document,
    epoch_stakes,
    fast_certificate,
    genesis_answer,
    payload,
    ranked,
    slow_certificate,
    validators,
)
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_votes import VoteRpc, hash_of, key, tower, vote_transaction
from names import full_name

import tracker.proof.cluster.clustervotes as clustervotes_module
import tracker.proof.cluster.finality as finality_module
from tracker.cache.checked import CheckedFiles, write_checked
from tracker.config.schema import ClusterProof, Config
from tracker.core.digests import Verified
from tracker.proof.cluster.clustervotes import ClusterVotes
from tracker.proof.cluster.lifting import lift_held
from tracker.proof.formats.alpenglow import voters_digest as finality_digest
from tracker.proof.levels import Level, Proof


async def told() -> None:
    """The cache's size told (nothing to tell here)."""


H = hash_of("bank hash")
S = 4_800_000  # in the test RPC's epoch 11 (slots 4,752,000 to 5,183,999)
VALS = validators([300, 250, 150, 100, 200])  # 1,000 in all
ORDER = ranked(VALS)  # 300, 250, 200, 150, 100
V300, V250, V200, V150, V100 = ORDER


def proof_of(
    bank: bytes = H,
    block_id: bytes | None = BLOCK_ID,
    epoch: list[Validator] | None = VALS,
    epoch_number: int = 11,
) -> Proof:
    """A manifest's proof whose stakes of its epoch (``epoch_number``) are ``epoch``."""
    return Proof(
        Level.MANIFEST,
        snapshot_hash="x",
        bank_hash=base58.b58encode(bank).decode(),
        block_id=None if block_id is None else base58.b58encode(block_id).decode(),
        epoch_stakes=None if epoch is None else epoch_stakes(epoch, epoch_number),
    )


@asynccontextmanager
async def rpcs(*nodes: VoteRpc) -> AsyncIterator[list[str]]:
    async with trio.open_nursery() as nursery:
        urls = [await nursery.start(serve_app, node.app()) for node in nodes]
        yield [url + "/" for url in urls]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def voter(
    urls: list[str], *, certificates: bool = True, retry_after: float = 0, **more: Any
) -> AsyncIterator[ClusterVotes]:
    proof = ClusterProof(
        blocks=8,
        deadline=20.0,
        also_rpc=tuple(urls[1:]),
        certificates=urls[0] + "certificates" if certificates else "",
    )
    config = Config(rpc=urls[0], cluster_proof=proof, **more)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
        yield ClusterVotes(lambda: config, client, retry_after=retry_after)


def majority_votes(slot: int, at: int) -> dict[int, list[dict[str, Any]]]:
    """Votes for (slot, H) of 90% of the stake in block ``at``."""
    return {at: [vote_transaction(v.vote, tower([(slot, 1)], H)) for v in ORDER[:4]]}


async def lift(node: VoteRpc, slot: int, proof: Proof | None = None, **options: Any) -> Proof:
    async with rpcs(node) as urls, voter(urls, **options) as cv:
        return await cv.lift(slot, proof or proof_of())


# --- which consensus -------------------------------------------------------------------------


async def test_vote_transactions_after_the_migration_never_count() -> None:
    # The case: the RPC reports the migration at slot 50 and serves vote
    # transactions of 90% of the stake for the archive's slot 100.
    node = alpenglow_rpc(VALS, genesis_slot=50, blocks=majority_votes(100, 101))
    proof = await lift(node, 100, certificates=False)
    assert proof.level == Level.MANIFEST and proof.voted_stake is None
    assert proof.note == "cluster not proven: the RPC serves no finality certificate for slot 100"
    assert node.block_calls() == []  # no block after the migration is even read


async def test_before_the_migration_votes_prove_as_they_did() -> None:
    for genesis in (None, "unsupported"):  # not migrated; an RPC older than agave 4.3
        node = alpenglow_rpc(VALS, blocks=majority_votes(100, 101))
        node.genesis = genesis
        proof = await lift(node, 100)
        assert (proof.level, proof.voted_stake, proof.cluster_proof) == (
            Level.CLUSTER,
            0.9,
            "votes",
        )
        assert proof.to_json()["cluster_proof"] == "votes"


async def test_the_genesis_is_the_last_towerbft_block() -> None:
    # Votes for slot 100 land in block 101 (a minority, 30%) and 103 (60% more).
    blocks = {
        101: [vote_transaction(V300.vote, tower([(100, 1)], H))],
        103: [vote_transaction(v.vote, tower([(100, 1)], H)) for v in (V250, V200, V150)],
    }
    # Migrated after 103: both blocks count.
    node = alpenglow_rpc(VALS, genesis_slot=103, blocks=dict(blocks))
    assert (await lift(node, 100)).level == Level.CLUSTER
    # Migrated at 102: block 103 is an Alpenglow slot; its votes count for nothing.
    node = alpenglow_rpc(VALS, genesis_slot=102, blocks=dict(blocks))
    proof = await lift(node, 100)
    assert (proof.level, proof.voted_stake) == (Level.MANIFEST, 0.3)
    assert sorted(node.block_calls()) == [101, 102]
    # The genesis itself: its votes would be in blocks after it.
    node = alpenglow_rpc(VALS, genesis_slot=100, blocks=dict(blocks))
    proof = await lift(node, 100)
    assert proof.level == Level.MANIFEST and node.block_calls() == []
    assert proof.note is not None and "slot 100 is the last TowerBFT block" in proof.note
    # The slot right after it: a certificate's, not the votes'.
    node = alpenglow_rpc(VALS, genesis_slot=99, blocks=dict(blocks))
    proof = await lift(node, 100, certificates=False)
    assert proof.note == "cluster not proven: the RPC serves no finality certificate for slot 100"


async def test_the_migration_is_asked_once_it_is_reported() -> None:
    node = alpenglow_rpc(VALS, genesis_slot=50)
    node.documents[S] = document(S, H, fast_certificate(S, ORDER[:4], ORDER))
    async with rpcs(node) as urls, voter(urls) as cv:
        assert (await cv.lift(S, proof_of())).level == Level.CLUSTER
        other = proof_of(bank=hash_of("another"))
        await cv.lift(S, other)
    assert [m for m, _ in node.calls].count("getAgGenesisCert") == 1


async def test_a_tally_kept_before_the_migration_proves_no_slot_past_its_genesis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Slot 100 was voted for while the RPC said the cluster had not migrated; then it
    # reports the genesis at 50: the TowerBFT blocks after 50 were cleared, so the tally
    # kept for (100, H) proves nothing now, for this copy or another of the same bank hash.
    monkeypatch.setattr(clustervotes_module, "NOT_MIGRATED_FOR", 0.0)
    node = alpenglow_rpc(VALS, blocks=majority_votes(100, 101))
    node.genesis = None
    async with rpcs(node) as urls, voter(urls, certificates=False) as cv:
        assert (await cv.lift(100, proof_of())).level == Level.CLUSTER
        node.genesis = genesis_answer(50)
        proof = await cv.lift(100, proof_of())
    assert proof.level == Level.MANIFEST
    assert proof.note == "cluster not proven: the RPC serves no finality certificate for slot 100"


_FAILING = b'{"jsonrpc":"2.0","error":{"code":-32005,"message":"behind"},"id":1}'


async def test_a_kept_tally_stands_while_the_rpc_cannot_tell_the_migration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Slot 100 was proven by the votes kept for (100, H); then the RPC fails getAgGenesisCert:
    # this tracker's outage changes nothing the tally rested on, and another copy of the same
    # bank hash (another source's) is proven by it as the first was.
    monkeypatch.setattr(clustervotes_module, "NOT_MIGRATED_FOR", 0.0)
    node = alpenglow_rpc(VALS, blocks=majority_votes(100, 101))
    node.genesis = None
    async with rpcs(node) as urls, voter(urls, certificates=False) as cv:
        assert (await cv.lift(100, proof_of())).level == Level.CLUSTER
        read = node.block_calls()
        node.raw["getAgGenesisCert"] = _FAILING
        again = await cv.lift(100, proof_of())
    assert (again.level, again.voted_stake, again.cluster_proof) == (Level.CLUSTER, 0.9, "votes")
    assert [m for m, _ in node.calls].count("getAgGenesisCert") == 2  # asked again: it failed
    assert node.block_calls() == read  # the votes were read once


async def test_a_kept_tally_falls_once_an_rpc_reports_the_genesis_whoever_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The other side of the rule above: one RPC reports the genesis at 50 while the other
    # fails; the report is a fact the tally rested on changing, whatever the other says.
    monkeypatch.setattr(clustervotes_module, "NOT_MIGRATED_FOR", 0.0)
    reports, failing = (alpenglow_rpc(VALS, blocks=majority_votes(100, 101)) for _ in "ab")
    reports.genesis = failing.genesis = None
    async with rpcs(reports, failing) as urls, voter(urls, certificates=False) as cv:
        assert (await cv.lift(100, proof_of())).level == Level.CLUSTER
        reports.genesis = genesis_answer(50)
        failing.raw["getAgGenesisCert"] = _FAILING
        proof = await cv.lift(100, proof_of())
    assert proof.level == Level.MANIFEST and proof.voted_stake is None
    assert proof.note is not None and "-32005" in proof.note


@pytest.mark.parametrize(
    ("slot", "genesis", "level", "note"),
    [
        pytest.param(
            100,
            50,
            Level.ACCOUNTS,
            "cluster not proven: the RPC serves no finality certificate for slot 100",
            id="the genesis before its slot: weighed again",
        ),
        pytest.param(30, 50, Level.CLUSTER, None, id="its blocks all before the genesis: stands"),
        pytest.param(100, None, Level.CLUSTER, None, id="not migrated: stands"),
        pytest.param(100, "failing", Level.CLUSTER, None, id="the RPC cannot say: stands"),
    ],
)
async def test_a_proof_by_votes_in_a_proof_file_holds_while_the_migration_leaves_its_blocks(
    tmp_path: Path, slot: int, genesis: int | str | None, level: Level, note: str | None
) -> None:
    # A cached full proven by the votes for its slot (its proof file says so) while the
    # cluster had not migrated; after a restart the RPC reports the genesis (or cannot
    # say). Votes past the genesis prove nothing: the TowerBFT blocks after it were cleared.
    name = full_name(slot)
    group = tmp_path / "mainnet"
    group.mkdir()
    path = group / name
    path.write_bytes(b"archive")
    bank = base58.b58encode(H).decode()
    block_id = base58.b58encode(BLOCK_ID).decode()
    saved = Proof(Level.CLUSTER, "x", bank, 0.9, block_id=block_id, cluster_proof="votes")
    write_checked(str(path), Verified("a" * 64, saved), name)
    node = alpenglow_rpc(VALS, blocks=majority_votes(slot, slot + 1))
    if genesis is None:
        node.genesis = None
    elif genesis == "failing":
        node.raw["getAgGenesisCert"] = _FAILING
    else:
        node.genesis = genesis_answer(int(genesis))

    def restarted(cv: ClusterVotes | None) -> CheckedFiles:
        checked = CheckedFiles(True, required=lambda _g: Level.CLUSTER, voter=cv)
        checked.restore(str(group), "mainnet", list(os.scandir(group)))
        return checked

    async def path_for(_group: str, archive: str) -> str:
        return str(group / archive)

    async with rpcs(node) as urls, voter(urls, certificates=False) as cv:
        checked = restarted(cv)
        assert checked.proof("mainnet", name) == saved  # restored as it was saved
        await lift_held(checked, path_for, told)
    now = checked.proof("mainnet", name)
    assert now is not None and (now.level, now.note) == (level, note)
    assert checked.servable("mainnet", name) is (level == Level.CLUSTER)
    assert node.block_calls() == []  # no vote past the genesis read, nor any kept one again
    again = restarted(None).proof("mainnet", name)  # the proof file says what holds now
    assert again is not None and again.level == level


async def test_rpcs_that_disagree_on_the_migration_prove_nothing() -> None:
    migrated = alpenglow_rpc(VALS, genesis_slot=50)
    not_yet = alpenglow_rpc(VALS, blocks=majority_votes(100, 101))
    not_yet.genesis = None
    async with rpcs(not_yet, migrated) as urls, voter(urls) as cv:
        proof = await cv.lift(100, proof_of())
    assert proof.level == Level.MANIFEST
    assert proof.note is not None
    assert proof.note.startswith("cluster not proven: the RPCs disagree on the Alpenglow migration")
    assert "not migrated" in proof.note and "slot 50" in proof.note


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"jsonrpc":"2.0","result":{"block":{"slot":-1}},"id":1}', "without a block slot"),
        (
            b'{"jsonrpc":"2.0","result":{"block":{"slot":5,"blockId":[1,2]}},"id":1}',
            "blockId is not 32 bytes",
        ),
        (b'{"jsonrpc":"2.0","result":', "getAgGenesisCert"),
        (b'{"jsonrpc":"2.0","error":{"code":-32005,"message":"behind"},"id":1}', "-32005"),
    ],
)
async def test_a_malformed_migration_answer_proves_nothing(raw: bytes, reason: str) -> None:
    node = alpenglow_rpc(VALS, blocks=majority_votes(100, 101))
    node.raw["getAgGenesisCert"] = raw
    proof = await lift(node, 100)
    assert proof.level == Level.MANIFEST and proof.note is not None
    assert proof.note.startswith("cluster not proven: http://127.0.0.1")
    assert reason in proof.note


# --- after the migration: finality certificates ------------------------------------------------


async def test_a_fast_finalization_lifts_an_archive_to_cluster() -> None:
    node = alpenglow_rpc(VALS)
    node.documents[S] = document(S, H, fast_certificate(S, [V300, V250, V200, V150], ORDER))
    proof = await lift(node, S)
    assert (proof.level, proof.voted_stake, proof.note) == (Level.CLUSTER, 0.9, None)
    assert proof.cluster_proof == "certificate"
    assert proof.to_json()["cluster_proof"] == "certificate"
    assert node.block_calls() == []  # no vote transaction read


async def test_a_slow_finalization_lifts_an_archive_to_cluster() -> None:
    node = alpenglow_rpc(VALS)
    cert = slow_certificate(S, [V300, V250, V100], [V300, V250, V200], ORDER)  # 65%, 75%
    node.documents[S] = document(S, H, cert)
    proof = await lift(node, S)
    assert (proof.level, proof.voted_stake, proof.cluster_proof) == (
        Level.CLUSTER,
        0.65,
        "certificate",
    )


def _wrong_bitmap() -> bytes:
    # Signed by V300, V250, V200, V150; the bitmap names V300, V250, V200, V100.
    cert = bytearray(fast_certificate(S, [V300, V250, V200, V150], ORDER))
    bits = bitmap([0, 1, 2, 4], 5)
    cert[40 + 96 + 2 : 40 + 96 + 2 + len(bits)] = bits
    return bytes(cert)


def _outside_the_rank_map() -> bytes:
    cert = fast_certificate(S, [V300, V250, V200, V150], ORDER)
    bits = bitmap([0, 1, 2, 3, 7], 8)  # 8 ranks named, 5 in the map
    return cert[:136] + len(bits).to_bytes(2, "little") + bits + b"\x00"


def _another_epochs_rank_map() -> bytes:
    # Last epoch's stakes ranked V100 first: the same signers, their ranks in that order
    # (1 to 4, which name V250, V200, V150 and V100 in this epoch's map).
    last_epoch = [V100, V300, V250, V200, V150]
    return fast_certificate(S, [V300, V250, V200, V150], last_epoch)


@pytest.mark.parametrize(
    ("certificate", "reason", "stake"),
    # each certificate made by the test that uses it: signing in pure Python at import would
    # cost every xdist worker that collects this module, not only the one that runs it
    [
        (
            lambda: fast_certificate(S, [V300, V250, V200], ORDER),
            "cluster not proven: the fast-finalize certificate carries 75.0% of the stake,"
            " 80% needed",
            0.75,
        ),
        (
            lambda: slow_certificate(S, [V300, V250], [V300, V250, V200], ORDER),
            "cluster not proven: the finalize and notarize certificate carries 55.0% of the"
            " stake, 60% finalize and 60% notarize needed",
            0.55,
        ),
        (
            lambda: fast_certificate(S, ORDER[:4], ORDER, block_id=OTHER_BLOCK),
            "cluster not proven: the finality certificate is for block id "
            f"{base58.b58encode(OTHER_BLOCK).decode()}, the manifest's is "
            f"{base58.b58encode(BLOCK_ID).decode()}",
            None,
        ),
        (
            lambda: fast_certificate(S, ORDER[:4], ORDER, signed_block=OTHER_BLOCK),  # forged
            "the notarize aggregate does not verify over the 4 signers its bitmap names",
            None,
        ),
        (
            _wrong_bitmap,
            "the notarize aggregate does not verify over the 4 signers its bitmap names",
            None,
        ),
        (
            _outside_the_rank_map,
            "the signer bitmap names 8 ranks, the rank map holds 5",
            None,
        ),
        (
            _another_epochs_rank_map,
            "the notarize aggregate does not verify over the 4 signers its bitmap names",
            None,
        ),
    ],
    ids=[
        "fast-below-80",
        "slow-below-60",
        "another-block-id",
        "forged-aggregate",
        "wrong-bitmap",
        "bitmap-outside-rank-map",
        "another-epochs-rank-map",
    ],
)
async def test_a_certificate_that_does_not_hold_is_refused_with_its_reason(
    certificate: Callable[[], bytes], reason: str, stake: float | None
) -> None:
    node = alpenglow_rpc(VALS)
    node.documents[S] = document(S, H, certificate())
    proof = await lift(node, S)
    # a certificate weighed short of its stake says so, and is read again (no final tally)
    kind = "certificate" if stake is not None else None
    assert (proof.level, proof.voted_stake, proof.cluster_proof) == (Level.MANIFEST, stake, kind)
    assert not proof.tallied
    assert proof.note is not None and proof.note.startswith("cluster not proven: ")
    assert reason in proof.note
    assert "\n" not in proof.note


async def test_a_slot_of_the_epoch_before_is_weighed_two_epochs_back_is_not() -> None:
    # The RPC's stakes are epoch 11's; an archive of epoch 10 (the newest full snapshot just
    # after the boundary) is weighed by its own epoch's stakes, bounded by those.
    node = alpenglow_rpc(VALS)
    last = 4_700_000  # epoch 10
    node.documents[last] = document(last, H, fast_certificate(last, ORDER[:4], ORDER))
    proof = await lift(node, last, proof_of(epoch_number=10))
    assert (proof.level, proof.voted_stake) == (Level.CLUSTER, 0.9)
    older = 4_200_000  # epoch 9
    node.documents[older] = document(older, H, fast_certificate(older, ORDER[:4], ORDER))
    proof = await lift(node, older, proof_of(epoch_number=9))
    assert proof.level == Level.MANIFEST and proof.note is not None
    assert (
        "slot 4200000 (epoch 9 by the manifest's schedule) is neither in the RPC's epoch 11"
        " (slots 4752000 to 5183999) nor in the one before it"
    ) in proof.note
    # A manifest whose schedule puts a slot of the RPC's epoch in another one
    node.documents[S] = document(S, H, fast_certificate(S, ORDER[:4], ORDER))
    proof = await lift(node, S, proof_of(epoch_number=10))
    assert proof.level == Level.MANIFEST and proof.note is not None
    assert f"slot {S} (epoch 10 by the manifest's schedule) is neither" in proof.note


async def test_the_footer_must_carry_the_manifests_bank_hash() -> None:
    node = alpenglow_rpc(VALS)
    node.documents[S] = document(S, hash_of("another bank"), fast_certificate(S, ORDER[:4], ORDER))
    proof = await lift(node, S)
    assert proof.level == Level.MANIFEST and proof.note is not None
    assert proof.note.startswith("cluster not proven: the block footer's bank hash is ")


async def test_without_a_block_id_or_a_certificate_nothing_is_proven() -> None:
    node = alpenglow_rpc(VALS)
    proof = await lift(node, S, proof_of(block_id=None))
    assert proof.note == (
        f"cluster not proven: slot {S} is after the Alpenglow migration (slot 50) and the"
        " manifest has no block id"
    )
    proof = await lift(node, S)  # a certificates URL, but none for this slot
    assert proof.level == Level.MANIFEST and proof.note is not None
    assert f"/certificates/{S}.json" in proof.note and "404" in proof.note


async def test_several_rpcs_must_each_hold_the_certificate() -> None:
    cert = fast_certificate(S, [V300, V250, V200, V150], ORDER)
    agreeing = alpenglow_rpc(VALS)
    agreeing.documents[S] = document(S, H, cert)
    # Another RPC's stakes: V100 holds 700 there, so the same signers weigh 900 of its 1,600
    other_vals = [*ORDER[:4], attrs.evolve(V100, stake=700)]
    other = alpenglow_rpc(other_vals)
    async with rpcs(agreeing, other) as urls, voter(urls) as cv:
        proof = await cv.lift(S, proof_of())
    assert (proof.level, proof.voted_stake) == (Level.MANIFEST, 900 / 1600)
    assert proof.note == (
        f"cluster not proven: the RPCs disagree ({urls[0]}: the fast-finalize certificate"
        f" carries 90.0% of the stake; {urls[1]}: the fast-finalize certificate carries 56.2%"
        " of the stake)"
    )
    async with rpcs(agreeing, agreeing) as urls, voter(urls) as cv:
        assert (await cv.lift(S, proof_of())).level == Level.CLUSTER


async def test_rpcs_whose_stakes_weigh_a_certificate_differently_disagree() -> None:
    # Signed by V300, V250, V200 and V100: 85% of the epoch's stakes; the other RPC's stakes
    # (V200 240, V150 230: 1,120 in all) bound them at 850 of 1,120 (75.9%), below 80%.
    cert = fast_certificate(S, [V300, V250, V200, V100], ORDER)
    here = alpenglow_rpc(VALS)
    here.documents[S] = document(S, H, cert)
    stakes = {V300: 300, V250: 250, V200: 240, V150: 230, V100: 100}
    there = alpenglow_rpc([attrs.evolve(v, stake=stakes[v]) for v in ORDER])
    async with rpcs(here, there) as urls, voter(urls) as cv:
        proof = await cv.lift(S, proof_of())
    assert (proof.level, proof.voted_stake) == (Level.MANIFEST, 850 / 1120)
    assert proof.note == (
        f"cluster not proven: the RPCs disagree ({urls[0]}: the fast-finalize certificate"
        f" carries 85.0% of the stake; {urls[1]}: the fast-finalize certificate carries 75.9%"
        " of the stake)"
    )


# --- the epoch's rank map: the archive's stakes, bounded by the RPCs' ----------------------------


async def test_the_rank_map_is_the_epochs_not_the_rpcs_current_stakes() -> None:
    # agave reads a certificate in the rank map of epoch_stakes(E), taken as E-1 began; the
    # RPC's stakes moved since: V150 fell to 95 and V100 rose to 105, which swaps their
    # ranks. Signed by the first four of the epoch's order (V150 at rank 3): read in the
    # RPC's current order, rank 3 would name V100 and the aggregate would not verify.
    now = {V300: 300, V250: 250, V200: 200, V150: 95, V100: 105}
    node = alpenglow_rpc([attrs.evolve(v, stake=now[v]) for v in ORDER])
    node.documents[S] = document(S, H, fast_certificate(S, [V300, V250, V200, V150], ORDER))
    proof = await lift(node, S)
    # each signer at the lesser of its two stakes (V150: 95), of the greater total (1,000)
    assert (proof.level, proof.voted_stake, proof.cluster_proof) == (
        Level.CLUSTER,
        845 / 1000,
        "certificate",
    )


async def test_stakes_a_manifest_inflates_weigh_what_the_rpc_says() -> None:
    # A forger's archive of a minority's block: its epoch stakes give V150 and V100 (250 of
    # the RPC's 1,000) 4,000 each, 94% of its own 8,750; their real aggregate over that map.
    inflated = {V300: 300, V250: 250, V200: 200, V150: 4000, V100: 4000}
    forged = [attrs.evolve(v, stake=inflated[v]) for v in ORDER]
    order = ranked(forged)
    signers = [v for v in order if v.vote in (V150.vote, V100.vote)]
    node = alpenglow_rpc(VALS)
    node.documents[S] = document(S, H, fast_certificate(S, signers, order))
    proof = await lift(node, S, proof_of(epoch=forged))
    assert (proof.level, proof.voted_stake) == (Level.MANIFEST, 250 / 8750)
    assert proof.note == (
        "cluster not proven: the fast-finalize certificate carries 2.9% of the stake, 80% needed"
    )


async def test_a_signers_key_the_rpc_does_not_confirm_is_refused() -> None:
    # The manifest gives V150's vote account a key of the forger's (a rogue key could cancel
    # the others' in the aggregate): only the keys the RPC's vote accounts hold are used.
    rogue = attrs.evolve(V150, secret=validators([1], seed="forger")[0].secret)
    epoch = [rogue if v is V150 else v for v in ORDER]
    node = alpenglow_rpc(VALS)
    node.documents[S] = document(S, H, fast_certificate(S, [V300, V250, V200, rogue], epoch))
    proof = await lift(node, S, proof_of(epoch=epoch))
    assert proof.level == Level.MANIFEST and proof.note is not None
    assert proof.note.endswith(
        f"the signer at rank 3 (vote account {V150.vote}) holds another BLS key at the RPC than"
        " in the manifest's stakes of epoch 11"
    )


@attrs.frozen
class _Forged(Validator):
    """An account whose data holds a V4 vote state with a key of the forger's choosing."""

    key: bytes = b""

    @property
    def bls_key(self) -> bytes:
        return self.key


async def test_a_key_from_an_account_the_vote_program_does_not_own_counts_nothing() -> None:
    # A forged manifest lists, beside the honest validators, an account the RPC does not
    # stake, whose data (written by a program of the forger's, no proof of possession)
    # holds a rogue key: x*G less the honest keys. The aggregate over every rank is then
    # x*G, and x alone signs a notarize of the manifest's block for all of them; the honest
    # stake counted though no honest validator signed. Only the vote program's accounts
    # hold a key that counts.
    from pyecc import G2ProofOfPossession as Pop
    from pyecc import rogue_key

    secret = 123_456_789
    forged = _Forged(
        key("a program's account"),
        b"\x99" * 32,
        1,
        0,
        key=rogue_key(secret, [v.bls_key for v in VALS]),
    )
    epoch = [*VALS, forged]
    order = ranked(epoch)
    signed = bytes(Pop.Sign(secret, payload(1, S, BLOCK_ID)))  # notarize
    bits = bitmap(range(len(order)), len(order))
    certificate = S.to_bytes(8, "little") + BLOCK_ID + signed
    certificate += len(bits).to_bytes(2, "little") + bits + b"\x00"
    node = alpenglow_rpc(VALS)
    node.accounts[forged.vote] = forged.account_data()
    node.owners[forged.vote] = key("the forger's program")
    node.documents[S] = document(S, H, certificate)
    proof = await lift(node, S, proof_of(epoch=epoch))
    assert proof.level == Level.MANIFEST and proof.note is not None
    rank = order.index(forged)
    assert proof.note.endswith(
        f"the signer at rank {rank} (vote account {forged.vote}) holds no BLS key at the RPC"
        " than in the manifest's stakes of epoch 11"
    )
    # the same account as the vote program's (which would have checked its possession):
    # the key counts, the aggregate verifies; the proof of possession is what rules it out
    del node.owners[forged.vote]
    proof = await lift(node, S, proof_of(epoch=epoch))
    assert proof.level == Level.CLUSTER


async def test_a_signer_the_rpc_no_longer_stakes_counts_nothing() -> None:
    # V100 signed; its stake is gone at the RPC (not in getVoteAccounts): its key is read
    # from its account all the same, and it weighs nothing.
    node = alpenglow_rpc(VALS)
    del node.stakes[V100.vote]
    node.documents[S] = document(S, H, fast_certificate(S, ORDER, ORDER))
    proof = await lift(node, S)
    assert (proof.level, proof.voted_stake) == (Level.CLUSTER, 0.9)
    asked = [p[0] for m, p in node.calls if m == "getMultipleAccounts"]
    assert [V100.vote] in asked
    # only the signers' accounts are read: V150 unstaked too, but it did not sign
    del node.stakes[V150.vote]
    node.calls.clear()
    node.documents[S] = document(S, H, fast_certificate(S, [V300, V250, V200, V100], ORDER))
    proof = await lift(node, S)
    assert proof.voted_stake == 0.75
    asked = [p[0] for m, p in node.calls if m == "getMultipleAccounts"]
    assert [V100.vote] in asked and not any(V150.vote in a for a in asked)
    node.stakes[V150.vote] = V150.stake
    # its account closed: no key to verify the aggregate with
    del node.accounts[V100.vote]
    proof = await lift(node, S)
    assert proof.level == Level.MANIFEST and proof.note is not None
    assert proof.note.endswith(
        f"the signer at rank 4 (vote account {V100.vote}) holds no BLS key at the RPC than in"
        " the manifest's stakes of epoch 11"
    )


async def test_an_account_the_rpcs_rank_map_drops_weighs_nothing() -> None:
    # The attacker's vote account A (900) shares its node with another of its accounts at
    # the RPC, so the RPC's rank map (agave's) ranks neither: its total is the honest 1,000.
    # A forged manifest lists A alone under a node of its own: A's own aggregate, over that
    # map, read at A's RPC stake (900 of 1,000) would have been 90%.
    a, a2 = validators([900, 1], seed="attacker")
    a2 = attrs.evolve(a2, node=a.node)
    node = alpenglow_rpc([*VALS, a, a2])
    node.documents[S] = document(S, H, fast_certificate(S, [a], [a]))
    proof = await lift(node, S, proof_of(epoch=[a]))
    assert (proof.level, proof.voted_stake) == (Level.MANIFEST, 0.0)
    assert proof.note == (
        "cluster not proven: the fast-finalize certificate carries 0.0% of the stake, 80% needed"
    )


async def test_staked_vote_accounts_outside_the_epochs_stakes_leave_the_rank_map_as_it_is() -> None:
    # The admission ticket caps an epoch's stakes at 2,000 validators (SIMD-0357), but
    # getVoteAccounts lists every staked vote account, admitted or not (epochVoteAccount
    # false): one with a BLS key and the least delegation, never admitted, pays no ticket.
    # 1,996 of them beside the cluster's 5 refused every certificate at that RPC ("2001
    # ranked validators, at most 2000 admitted").
    # (secrets small enough that py_ecc makes 1,996 keys in a second)
    outsiders = [
        attrs.evolve(v, node=bytes.fromhex(f"{n + 1000:064x}"), secret=n + 1000)
        for n, v in enumerate(validators([1] * 1996, seed="outsider"))
    ]
    node = alpenglow_rpc([*VALS, *outsiders])
    node.outside = {v.vote for v in outsiders}
    node.documents[S] = document(S, H, fast_certificate(S, [V300, V250, V200, V150], ORDER))
    proof = await lift(node, S)
    assert (proof.level, proof.voted_stake, proof.note) == (Level.CLUSTER, 0.9, None)
    # nor are their accounts read: only the epoch's
    asked = {v for m, p in node.calls if m == "getMultipleAccounts" for v in p[0]}
    assert asked == {v.vote for v in VALS}


async def test_a_vote_account_listed_twice_costs_the_lift_not_the_service() -> None:
    # A forged manifest lists one vote account the RPC does not stake twice (two nodes, two
    # keys, the two greatest stakes: ranks 0 and 1), and the relay's certificate names
    # both: the look-up of its keys at the RPC raised a ValueError out of the lift, and the
    # task that asked (a refresh's recheck, a head read's round) ended the service.
    ghost = validators([10_000, 9_000], seed="ghost")
    ghost = [
        attrs.evolve(g, vote=ghost[0].vote, node=bytes([0xAA + n]) * 32)
        for n, g in enumerate(ghost)
    ]
    listed = [*VALS, *ghost]
    node = alpenglow_rpc(VALS)
    node.documents[S] = document(S, H, fast_certificate(S, ghost, ranked(listed)))
    proof = await lift(node, S, proof_of(epoch=listed))
    assert proof.level == Level.MANIFEST and proof.note is not None
    assert proof.note.startswith("cluster not proven: ")


@pytest.mark.parametrize(
    "raised",
    [ValueError("unforeseen"), ExceptionGroup("a nursery's", [ValueError("unforeseen")])],
)
async def test_an_unforeseen_failure_of_one_answer_costs_the_lift_not_the_service(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raised: Exception
) -> None:
    # The last guard: whatever an answer or an archive's stakes make fail that no rule
    # names is that RPC's failure, logged with its traceback; nothing leaves the lift. The
    # note names the error, not the nursery's group around it.
    def fails(*_args: object) -> None:
        raise raised

    monkeypatch.setattr(clustervotes_module, "judge_rpc", fails)
    node = alpenglow_rpc(VALS)
    node.documents[S] = document(S, H, fast_certificate(S, ORDER[:4], ORDER))
    proof = await lift(node, S)
    assert proof.level == Level.MANIFEST and proof.note is not None
    assert proof.note.endswith(": not weighed: ValueError")
    assert any(r.msg == "cluster_proof_error" and r.exc_info for r in caplog.records)


async def test_a_lift_backing_off_hashes_its_stakes_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every lift hashed the epoch's stakes (a megabyte on mainnet) for its verdict's key,
    # even one that backed off at once: a head read re-decides each copy awaiting its tally
    # every second. Copies of one epoch share one stakes object: hashed once. And what
    # failed is forgotten past MAX_KEPT (a key a forger's stakes make each).
    hashed: list[int] = []

    def counting(data: bytes) -> str:
        hashed.append(len(data))
        return finality_digest(data)

    monkeypatch.setattr(clustervotes_module, "voters_digest", counting)
    monkeypatch.setattr(clustervotes_module, "MAX_KEPT", 3)
    node = alpenglow_rpc(VALS)  # it serves no certificate document: the lift fails
    proof = proof_of()
    async with rpcs(node) as urls:
        config = Config(rpc=urls[0], cluster_proof=ClusterProof(certificates=urls[0] + "c"))
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
            cv = ClusterVotes(lambda: config, client, retry_after=600)
            for _ in range(3):
                lifted = await cv.lift(S, proof)
                assert lifted.level == Level.MANIFEST and lifted.note is not None
            assert "asked again in" in lifted.note and len(hashed) == 1
            for n in range(5):  # five other stakes: five failures kept, the oldest go
                other = proof_of(epoch=validators([300 + n, 250, 150, 100, 200]))
                await cv.lift(S, other)
            assert len(cv._failed) == 3


async def test_without_the_epochs_stakes_nothing_is_weighed() -> None:
    node = alpenglow_rpc(VALS)
    node.documents[S] = document(S, H, fast_certificate(S, ORDER[:4], ORDER))
    proof = await lift(node, S, proof_of(epoch=None))
    assert proof.note == (
        f"cluster not proven: the manifest holds no stakes of slot {S}'s epoch (the rank map"
        " its certificate is read in)"
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "the certificate document is not JSON"),
        (b'{"slot": 1}', f"the certificate document is for slot 1, not {S}"),
        (
            b'{"slot": %d, "shred_version": 7, "footer": "AA==", "certificate": "%%%%"}' % S,
            "the certificate document's certificate is not base64",
        ),
        (b" " * (70 * 1024), "body exceeds the limit of 65536 bytes"),
    ],
    ids=["not-json", "another-slot", "not-base64", "oversized"],
)
async def test_a_malformed_or_oversized_document_is_refused(body: bytes, reason: str) -> None:
    node = alpenglow_rpc(VALS)
    node.documents[S] = body
    proof = await lift(node, S)
    assert proof.level == Level.MANIFEST and proof.note is not None
    assert proof.note.startswith("cluster not proven: ") and reason in proof.note


async def test_a_documents_slot_is_shown_shortened() -> None:
    # A relay's {"slot": "AAAA…"} of 60 KB went whole into the note, the back-off reason
    # and the log line (one kept per copy a head read watches).
    node = alpenglow_rpc(VALS)
    node.documents[S] = b'{"slot": "%s"}' % (b"A" * 60_000)
    proof = await lift(node, S)
    assert proof.note is not None and "the certificate document is for slot 'AAA" in proof.note
    assert len(proof.note) < 300


async def test_an_oversized_accounts_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finality_module, "MAX_ACCOUNTS", 1024)
    node = alpenglow_rpc(VALS)
    node.documents[S] = document(S, H, fast_certificate(S, ORDER[:4], ORDER))
    node.raw["getMultipleAccounts"] = b'{"jsonrpc":"2.0","result":{"value":[' + b" " * 4096
    proof = await lift(node, S)
    assert proof.level == Level.MANIFEST and proof.note is not None
    assert "getMultipleAccounts: body exceeds the limit of 1024 bytes" in proof.note


async def test_a_vote_account_without_a_bls_key_is_outside_the_rank_map() -> None:
    # V100 held no BLS key as the epoch began: the rank map is the four others (900).
    keyless = attrs.evolve(V100, has_key=False)
    node = alpenglow_rpc(VALS)
    node.accounts[V100.vote] = b"\x02\x00\x00\x00" + V100.node + bytes(200)
    four = [V300, V250, V200, V150]
    node.documents[S] = document(S, H, fast_certificate(S, [V300, V250, V200], four))
    proof = await lift(node, S, proof_of(epoch=[*four, keyless]))
    assert (proof.level, proof.voted_stake) == (Level.CLUSTER, 750 / 900)


def test_the_payloads_are_agaves() -> None:
    # VotePayloadToSign::Notar { block: Block { slot, block_id }, shred_version } in
    # wincode: tag 1, u64 slot, 32 bytes, u16; Finalize has no block.
    notar = payload(1, 0x0102, b"\xaa" * 32, 0x0304)
    assert notar == b"\x01" + b"\x02\x01" + bytes(6) + b"\xaa" * 32 + b"\x04\x03"
    assert payload(2, 7, None, 9) == b"\x02\x07" + bytes(7) + b"\x09\x00"
    assert genesis_answer(5)["block"]["slot"] == 5


# --- what is asked again ------------------------------------------------------------------------
# A copy the cluster level cannot lift now is lifted again every second (lifting.KEEP_EVERY).


async def test_an_rpc_that_cannot_tell_the_migration_is_not_asked_at_every_lift() -> None:
    # An also_rpc older than 4.3 (no getAgGenesisCert) beside one that migrated, and no
    # certificates to read: each lift of each held copy asked it again, every second.
    migrated, old = alpenglow_rpc(VALS), alpenglow_rpc(VALS)
    old.genesis = "unsupported"
    async with rpcs(migrated, old) as urls, voter(urls, certificates=False) as cv:
        for bank in ("a", "b", "c"):
            proof = await cv.lift(S, proof_of(bank=hash_of(bank)))
            assert proof.note is not None and "serves no finality certificate" in proof.note
    assert [m for m, _ in old.calls].count("getAgGenesisCert") == 1


async def test_rpcs_that_disagree_on_the_migration_are_asked_again_after_a_back_off() -> None:
    migrated, not_yet = alpenglow_rpc(VALS), alpenglow_rpc(VALS)
    not_yet.genesis = None
    async with rpcs(not_yet, migrated) as urls, voter(urls, retry_after=60) as cv:
        first = await cv.lift(S, proof_of())
        again = await cv.lift(S, proof_of(bank=hash_of("another")))
    assert first.note is not None and "disagree on the Alpenglow migration" in first.note
    assert again.note is not None and "disagree on the Alpenglow migration" in again.note
    assert "asked again in 60s" in again.note


async def test_a_genesis_the_other_rpcs_contradict_is_asked_again() -> None:
    # One answer of an also_rpc that another cluster's node gave (a load balancer's wrong
    # backend) was kept for good: the RPCs disagreed at every lift, and no archive after the
    # migration was proven again until a restart.
    honest, misrouted = alpenglow_rpc(VALS), alpenglow_rpc(VALS)
    misrouted.genesis = genesis_answer(40, b"\x09" * 32)
    honest.documents[S] = document(S, H, fast_certificate(S, ORDER[:4], ORDER))
    async with rpcs(honest, misrouted) as urls, voter(urls) as cv:
        first = await cv.lift(S, proof_of())
        misrouted.genesis = genesis_answer(50)  # its own cluster's node again
        again = await cv.lift(S, proof_of())
        later = await cv.lift(S, proof_of(bank=hash_of("another")))
    assert first.note is not None and "disagree on the Alpenglow migration" in first.note
    assert (again.level, again.note) == (Level.CLUSTER, None)
    assert later.level == Level.MANIFEST  # (another bank hash: its footer does not say it)
    # both asked again once they disagreed, then kept for good once they agreed
    for node in (honest, misrouted):
        assert [m for m, _ in node.calls].count("getAgGenesisCert") == 2


async def test_a_rank_map_that_cannot_be_read_is_not_read_for_every_archive() -> None:
    # A hostile also_rpc's rank map costs seconds to decode before it is refused (20,000
    # keyed accounts); one that failed was read again for every archive lifted.
    honest, failing = alpenglow_rpc(VALS), alpenglow_rpc(VALS)
    failing.raw["getVoteAccounts"] = b'{"jsonrpc":"2.0","error":{"code":-32005},"id":1}'
    async with rpcs(honest, failing) as urls, voter(urls, retry_after=60) as cv:
        for bank in ("a", "b"):
            honest.documents[S] = document(S, hash_of(bank), fast_certificate(S, ORDER[:4], ORDER))
            proof = await cv.lift(S, proof_of(bank=hash_of(bank)))
            assert proof.level == Level.MANIFEST and proof.note is not None
            assert "-32005" in proof.note
    assert [m for m, _ in failing.calls].count("getVoteAccounts") == 1
    assert "read again in 60s" in proof.note
