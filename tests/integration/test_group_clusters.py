"""Two clusters behind one tracker (docs/configuration.md, a group's ``rpc``): each group's
archives are screened against its own cluster's slot, its ``/v1/health`` and
``snapshot_age_slots`` answered against it, and its archives proven by its own cluster's
votes. Fake RPCs and sidecars on 127.0.0.1.

With one top-level ``rpc`` (mainnet's) for every group, a testnet whose slot is above
mainnet's had every newer archive screened out (``max_slot_ahead``) and its health
answered against mainnet's slot."""

from __future__ import annotations

from pathlib import Path

import base58
import httpx
import trio
from fakes import Rpc, Sidecar, sidecar_info
from helpers_alpenglow import (
    BLOCK_ID,
    alpenglow_rpc,
    document,
    epoch_stakes,
    fast_certificate,
    ranked,
    validators,
)
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_votes import VoteRpc, hash_of, tower, vote_transaction
from names import full_name
from prometheus_client.parser import text_string_to_metric_families

from tracker.config.schema import ClusterProof, Config, TargetGroup
from tracker.proof.cluster.clustervotes import ClusterVotes
from tracker.proof.levels import Level, Proof

#: Mainnet below testnet: mainnet's slot + max_slot_ahead (100) is far below testnet's newest.
MAIN_SLOT, TEST_SLOT = 10_000, 50_000


def age_of(text: str, group: str) -> float | None:
    """``snapshot_tracker_snapshot_age_slots`` of ``group`` in a ``/metrics`` text."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "snapshot_tracker_snapshot_age_slots" and s.labels["group"] == group:
                return s.value
    return None


async def test_each_group_ranks_and_answers_against_its_own_clusters_slot(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    main_rpc = await nursery.start(serve_app, Rpc(slot=MAIN_SLOT).app())
    test_rpc = await nursery.start(serve_app, Rpc(slot=TEST_SLOT).app())
    # mainnet's sidecar also lists an archive far above mainnet's slot (a bogus one): still
    # kept out by mainnet's own slot; testnet's newest is near testnet's slot
    main = Sidecar(
        [
            sidecar_info((full_name(MAIN_SLOT - 10), 10)),
            sidecar_info((full_name(MAIN_SLOT + 500), 10)),
        ]
    )
    test = Sidecar(
        [
            sidecar_info((full_name(TEST_SLOT - 10), 10)),
            sidecar_info((full_name(MAIN_SLOT - 20), 10)),
        ]
    )
    main_url = await nursery.start(serve_app, main.app())
    test_url = await nursery.start(serve_app, test.app())
    settings = {
        "scrape_interval": "200ms",
        "internal_listen": "127.0.0.1:0",
        "rpc": main_rpc,
        "default_group": "mainnet",
        "verify_archives": False,
        "target_groups": [
            {"group": "mainnet", "static_targets": {"targets": [main_url.removeprefix("http://")]}},
            {
                "group": "testnet",
                "rpc": test_rpc,
                "static_targets": {"targets": [test_url.removeprefix("http://")]},
            },
        ],
    }
    public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

        async def best(group: str) -> int | None:
            answer = await client.get(f"{public}/v1/snapshots", params={"group": group})
            slots = [entry["slot"] for entry in answer.json()]
            return max(slots, default=None)

        async def settled() -> bool:
            # both slots known: mainnet's bogus archive gone, testnet's newest ranked
            text = (await client.get(f"{internal}/metrics")).text
            return age_of(text, "mainnet") == 10 and age_of(text, "testnet") == 10

        await wait_until(settled)
        assert await best("mainnet") == MAIN_SLOT - 10
        assert await best("testnet") == TEST_SLOT - 10
        for group, slot in (("mainnet", MAIN_SLOT), ("testnet", TEST_SLOT)):
            answer = await client.get(f"{public}/v1/health", params={"group": group})
            assert answer.status_code == 200, answer.text
            assert answer.json() == {
                "MaxSnapshot": slot - 10,
                "CurrentSlot": slot,
                "Health": "healthy",
            }
        default = await client.get(f"{public}/v1/health")  # default_group: mainnet's own
        assert default.json()["CurrentSlot"] == MAIN_SLOT
        page = (await client.get(f"{internal}/")).text
        assert full_name(TEST_SLOT - 10) in page and full_name(MAIN_SLOT + 500) not in page


BANK = hash_of("bank hash")
SLOT = 4_800_000
VALIDATORS = validators([100, 100, 100, 100])


def voted_by(count: int) -> VoteRpc:
    """An RPC whose next block after :data:`SLOT` holds the votes of ``count`` of 4 equal
    validators (4: the archive is proven, 1: a quarter of the stake)."""
    votes = [vote_transaction(v.vote, tower([(SLOT, 1)], BANK)) for v in VALIDATORS[:count]]
    return VoteRpc(stakes={v.vote: v.stake for v in VALIDATORS}, blocks={SLOT + 1: votes})


async def test_each_groups_archives_are_proven_by_its_own_clusters_votes(
    nursery: trio.Nursery,
) -> None:
    """``trust.require: cluster`` asked the top-level ``rpc`` (mainnet's) for every group's
    archives: testnet's were weighed by mainnet's votes."""
    mainnet, testnet = voted_by(1), voted_by(4)
    main_url = await nursery.start(serve_app, mainnet.app()) + "/"
    test_url = await nursery.start(serve_app, testnet.app()) + "/"
    groups = (TargetGroup(group="mainnet"), TargetGroup(group="testnet", rpc=test_url))
    config = Config(rpc=main_url, target_groups=groups, cluster_proof=ClusterProof(blocks=8))
    proof = Proof(Level.MANIFEST, snapshot_hash="x", bank_hash=base58.b58encode(BANK).decode())
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=30) as client:
        votes = ClusterVotes(lambda: config, client)
        assert votes.of("testnet").rpcs() == (test_url,)
        proven = await votes.of("testnet").lift(SLOT, proof)
        assert proven.level == Level.CLUSTER
        assert mainnet.calls == []  # mainnet's RPC was never asked of testnet's archive
        short = await votes.of("mainnet").lift(SLOT, proof)
    assert short.level == Level.MANIFEST and short.voted_stake == 0.25
    assert mainnet.block_calls()  # mainnet's archive: mainnet's RPC


async def test_each_groups_finality_certificates_are_its_own_clusters(
    nursery: trio.Nursery,
) -> None:
    """After the Alpenglow migration ``cluster_proof.certificates`` (the top-level
    cluster's) was read for every group's archives: a testnet group with its own ``rpc``
    was weighed on mainnet's documents and never proven (docs/http-api.md, "The cluster
    level")."""
    signers = ranked(VALIDATORS)
    testnet_document = document(SLOT, BANK, fast_certificate(SLOT, signers, signers))
    # each cluster's relay serves a document for the slot: only the group's is to be read
    mainnet, testnet = alpenglow_rpc(VALIDATORS), alpenglow_rpc(VALIDATORS)
    mainnet.documents[SLOT] = testnet.documents[SLOT] = testnet_document
    main_url = await nursery.start(serve_app, mainnet.app()) + "/"
    test_url = await nursery.start(serve_app, testnet.app()) + "/"
    own = TargetGroup(group="testnet", rpc=test_url, certificates=test_url + "certificates")
    none = TargetGroup(group="devnet", rpc=test_url)  # its own rpc, no relay of its own
    config = Config(
        rpc=main_url,
        target_groups=(TargetGroup(group="mainnet"), own, none),
        cluster_proof=ClusterProof(certificates=main_url + "certificates"),
    )
    proof = Proof(
        Level.MANIFEST,
        snapshot_hash="x",
        bank_hash=base58.b58encode(BANK).decode(),
        block_id=base58.b58encode(BLOCK_ID).decode(),
        epoch_stakes=epoch_stakes(VALIDATORS),
    )
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=30) as client:
        votes = ClusterVotes(lambda: config, client)
        proven = await votes.of("testnet").lift(SLOT, proof)
        assert (proven.level, proven.cluster_proof) == (Level.CLUSTER, "certificate")
        assert testnet.calls.count(("certificate", SLOT)) == 1
        assert mainnet.calls == []  # a group with its own relay never reads the top-level one
        # its own rpc, no relay of its own (another region's RPC of the top-level cluster):
        # the top-level relay, whose document verifies only against the group's own stakes
        assert (await votes.of("devnet").lift(SLOT, proof)).level == Level.CLUSTER
        assert mainnet.calls.count(("certificate", SLOT)) == 1
        assert testnet.calls.count(("certificate", SLOT)) == 1
        assert (await votes.of("mainnet").lift(SLOT, proof)).level == Level.CLUSTER
    assert mainnet.calls.count(("certificate", SLOT)) >= 1  # mainnet's archive: its own relay
