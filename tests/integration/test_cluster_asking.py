"""How the cluster level asks (tracker/proof/cluster/clustervotes.py): one deadline for
the whole check, each question asked once while it is out, back-offs and verdicts that a
reload of the RPCs or of the certificates' relay asks again, a certificate short of its
stake read again, and one RPC written twice counted once. Fake RPCs on 127.0.0.1 (the
deadline's test: a fake call on trio's clock, no network)."""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import base58
import httpx
import pytest
import trio
import trio.testing
from helpers_alpenglow import (
    BLOCK_ID,
    alpenglow_rpc,
    document,
    epoch_stakes,
    fast_certificate,
    genesis_answer,
    ranked,
    validators,
)
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_votes import VoteRpc, hash_of, key, tower, vote_transaction

from tracker.config.schema import ClusterProof, Config, TargetGroup, Trust
from tracker.config.warnings import config_warnings
from tracker.proof.cluster import bls, voteanswers
from tracker.proof.cluster.clustervotes import ClusterVotes
from tracker.proof.levels import Level, Proof

BANK = hash_of("bank hash")
VALIDATORS = validators([300, 250, 150, 100, 200])
ORDER = ranked(VALIDATORS)
SLOT = 4_800_000


def manifest_proof() -> Proof:
    return Proof(
        Level.MANIFEST,
        snapshot_hash="x",
        bank_hash=base58.b58encode(BANK).decode(),
        block_id=base58.b58encode(BLOCK_ID).decode(),
        epoch_stakes=epoch_stakes(VALIDATORS),
    )


def voted_by(count: int) -> VoteRpc:
    """An RPC before the migration whose next block holds the votes of ``count`` validators."""
    votes = [vote_transaction(v.vote, tower([(SLOT, 1)], BANK)) for v in ORDER[:count]]
    return VoteRpc(stakes={v.vote: v.stake for v in VALIDATORS}, blocks={SLOT + 1: votes})


def slowed(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    """``module.name`` slowed by 5 ms a call (in the worker thread that runs it), in place of
    thousands of real entries; the calls made, one item each."""
    calls: list[int] = []
    real = getattr(module, name)

    def slowly(*args: object) -> Any:
        calls.append(1)
        time.sleep(0.005)
        return real(*args)

    monkeypatch.setattr(module, name, slowly)
    return calls


async def test_one_deadline_bounds_the_whole_check(autojump_clock: trio.testing.MockClock) -> None:
    """Each question had its own ``cluster_proof.deadline``, one after the other: an RPC
    answering each just under it made one archive's check take twice the deadline (three
    times by certificate), and readers waiting on it wait as long."""
    config = Config(rpc="http://rpc.invalid/", cluster_proof=ClusterProof(deadline=2.0))
    async with httpx.AsyncClient(verify=client_tls()) as client:
        voter = ClusterVotes(lambda: config, client, retry_after=0)

        async def slow(
            url: str, payload: dict[str, Any] | None, max_body: int, *share: Any
        ) -> bytearray:
            assert payload is not None
            if payload["method"] == "getAgGenesisCert":  # not migrated, just in time
                await trio.sleep(1.6)
                answer = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "no"}}
                return bytearray(json.dumps(answer).encode())
            await trio.sleep(3600)  # the votes never come
            raise AssertionError("unreachable")

        voter._call = slow  # type: ignore[method-assign]
        began = trio.current_time()
        lifted = await voter.lift(SLOT, manifest_proof())
    assert trio.current_time() - began == pytest.approx(2.0)
    assert lifted.level == Level.MANIFEST
    assert lifted.note == "cluster not proven: the votes were not read within 2s"


async def test_the_deadline_stops_a_block_being_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A block whose votes take long to decode (a liar's, near the answer's size bound:
    minutes of decoding) was decoded to its end past ``cluster_proof.deadline``, holding
    the parse threads every lift shares, and its tally then kept as if in time. The decode
    stops at the deadline: the lift ends there, the votes not read. Each vote's decode is
    slowed here (5 ms) instead of a block of tens of MB."""

    from helpers_votes import block_answer, vote_accounts_answer

    from tracker.proof.cluster import voteanswers

    config = Config(rpc="http://rpc.invalid/", cluster_proof=ClusterProof(deadline=1.0))
    many = 3000  # 15 s of decoding
    votes = [vote_transaction(ORDER[0].vote, tower([(SLOT, 1)], BANK))] * many
    answers = {
        "getVoteAccounts": vote_accounts_answer({v.vote: v.stake for v in VALIDATORS}, {}),
        "getBlock": block_answer(SLOT + 1, votes),
        "getAgGenesisCert": {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601}},
    }
    decoded = slowed(monkeypatch, voteanswers, "transaction_votes")
    async with httpx.AsyncClient(verify=client_tls()) as client:
        voter = ClusterVotes(lambda: config, client, retry_after=0)

        async def call(
            url: str, payload: dict[str, Any] | None, max_body: int, *share: Any
        ) -> bytearray:
            assert payload is not None
            answer = answers.get(payload["method"], {"jsonrpc": "2.0", "id": 1, "result": None})
            return bytearray(json.dumps(answer).encode())

        voter._call = call  # type: ignore[method-assign]
        lifted = await voter.lift(SLOT, manifest_proof())
    assert lifted.level == Level.MANIFEST
    assert lifted.note == "cluster not proven: the votes were not read within 1s"
    assert len(decoded) < many


def keyed_account(n: int) -> bytes:
    """The first bytes of a V4 vote account holding a BLS key of its own (48 bytes that need
    not be a point: what is timed is their decoding)."""
    node = struct.pack(">Q", n + 1).rjust(32, b"\0")
    bls_key = struct.pack(">Q", n + 1).rjust(48, b"\x11")
    return struct.pack("<I", 3) + node + bytes(96) + struct.pack("<HHQ", 0, 0, 0) + b"\1" + bls_key


async def test_the_deadline_stops_a_rank_map_being_decoded(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An RPC listing thousands of staked vote accounts with a BLS key (a hostile one lists up
    to 20,000: seconds of decoding before the rank map is refused) had every key decoded
    past ``cluster_proof.deadline``, in one of the parse threads every lift shares, and the
    lift (a refresh's readers under ``require: cluster``) waited for it. The decode stops at
    the deadline. Each key's decoding is slowed here (5 ms) instead of 20,000 real keys."""
    many = 3000  # 15 s of decoding
    accounts = {key(f"keyed {n}"): keyed_account(n) for n in range(many)}
    node = VoteRpc(stakes=dict.fromkeys(accounts, 1), accounts=accounts, genesis=genesis_answer(50))
    # only its block is read before the rank map: no signature is made
    node.documents[SLOT] = document(SLOT, BANK, struct.pack("<Q", SLOT) + BLOCK_ID)
    decoded = slowed(monkeypatch, bls, "_g1")
    url = await nursery.start(serve_app, node.app()) + "/"
    proof = ClusterProof(deadline=4.0, certificates=url + "certificates")
    config = Config(rpc=url, cluster_proof=proof)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=30) as client:
        voter = ClusterVotes(lambda: config, client, retry_after=0)
        lifted = await voter.lift(SLOT, manifest_proof())
    assert lifted.level == Level.MANIFEST
    assert lifted.note == "cluster not proven: the certificate were not read within 4s"
    assert 0 < len(decoded) < many  # its decoding began, and stopped at the deadline


async def test_the_deadline_stops_the_vote_accounts_being_read(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``getVoteAccounts`` answer near its 32 MiB bound takes seconds to walk (200,000
    entries); the walk went on past ``cluster_proof.deadline``. It stops there. Each entry's
    reading is slowed here (5 ms) instead of 32 MiB."""
    many = 3000  # 15 s of reading
    node = VoteRpc(stakes={key(f"staked {n}"): 1 for n in range(many)})
    read = slowed(monkeypatch, voteanswers, "stake_entry")
    url = await nursery.start(serve_app, node.app()) + "/"
    config = Config(rpc=url, cluster_proof=ClusterProof(deadline=2.0))
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=30) as client:
        voter = ClusterVotes(lambda: config, client, retry_after=0)
        lifted = await voter.lift(SLOT, manifest_proof())
    assert lifted.level == Level.MANIFEST
    assert lifted.note == "cluster not proven: the votes were not read within 2s"
    assert 0 < len(read) < many


async def test_a_reload_to_another_rpc_asks_it_at_once(nursery: trio.Nursery) -> None:
    """A failure's back-off was kept by (slot, hash) alone: after a reload replaced a broken
    ``rpc`` by a working one, the broken one's failure was said again, the new RPC not asked,
    for up to an hour (the wait doubles)."""
    good, broken = voted_by(4), voted_by(4)
    broken.raw["getVoteAccounts"] = b"not json"
    good_url = await nursery.start(serve_app, good.app()) + "/"
    broken_url = await nursery.start(serve_app, broken.app()) + "/"
    config = {"now": Config(rpc=broken_url, cluster_proof=ClusterProof(blocks=8))}
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=30) as client:
        voter = ClusterVotes(lambda: config["now"], client)  # waits 60 s after a failure
        failed = await voter.lift(SLOT, manifest_proof())
        assert failed.level == Level.MANIFEST and "not a JSON object" in (failed.note or "")
        config["now"] = Config(rpc=good_url, cluster_proof=ClusterProof(blocks=8))
        lifted = await voter.lift(SLOT, manifest_proof())
    assert lifted.level == Level.CLUSTER
    assert good.block_calls()


async def test_a_certificate_short_of_its_stake_is_read_again(nursery: trio.Nursery) -> None:
    """A certificate that verifies but carries too little stake (a fast one of 75%) was a
    verdict kept for good: once the relay served the right one, it was never read again
    (and the copy refused for good); a certificate whose signature failed was read again."""
    node = alpenglow_rpc(VALIDATORS, genesis_slot=50)
    node.documents[SLOT] = document(SLOT, BANK, fast_certificate(SLOT, ORDER[:3], ORDER))
    url = await nursery.start(serve_app, node.app()) + "/"
    proof = ClusterProof(blocks=8, certificates=url + "certificates")
    config = Config(rpc=url, cluster_proof=proof)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=30) as client:
        voter = ClusterVotes(lambda: config, client, retry_after=0)
        short = await voter.lift(SLOT, manifest_proof())
        assert short.level == Level.MANIFEST
        assert short.note == (
            "cluster not proven: the fast-finalize certificate carries 75.0% of the stake,"
            " 80% needed"
        )
        node.documents[SLOT] = document(SLOT, BANK, fast_certificate(SLOT, ORDER[:4], ORDER))
        lifted = await voter.lift(SLOT, manifest_proof())
    assert lifted.level == Level.CLUSTER and lifted.voted_stake == pytest.approx(0.9)


async def test_the_same_question_out_is_asked_once(nursery: trio.Nursery) -> None:
    """Four lifts of one (slot, hash) at once (one archive several sources list: the head
    reads run four at once) each asked the RPC the whole question: four ``getVoteAccounts``
    of up to 32 MiB, and every block four times."""
    node = voted_by(4)
    url = await nursery.start(serve_app, node.app()) + "/"
    config = Config(rpc=url, cluster_proof=ClusterProof(blocks=8))
    lifted: list[Proof] = []
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=30) as client:
        voter = ClusterVotes(lambda: config, client)

        async def lift() -> None:
            lifted.append(await voter.lift(SLOT, manifest_proof()))

        async with trio.open_nursery() as asking:
            for _ in range(4):
                asking.start_soon(lift)
    assert [p.level for p in lifted] == [Level.CLUSTER] * 4
    assert sum(1 for method, _ in node.calls if method == "getVoteAccounts") == 1
    assert len(node.block_calls()) == len(set(node.block_calls()))


@pytest.mark.parametrize(
    "again", ["http://127.0.0.1:8899", "http://127.0.0.1:8899/", "HTTP://127.0.0.1:8899"]
)
def test_one_rpc_written_twice_is_one_witness(again: str) -> None:
    """``also_rpc`` naming ``rpc`` again (or ``--rpc URL --rpc URL``) silenced the warning
    that ``require: cluster`` rests on one RPC's word, and its one answer counted as two
    RPCs that agree."""
    group = TargetGroup(group="g", trust=Trust(require=Level.CLUSTER))
    config = Config(
        rpc="http://127.0.0.1:8899",
        cluster_proof=ClusterProof(also_rpc=(again,)),
        target_groups=(group,),
    )
    assert config.cluster_rpcs() == ("http://127.0.0.1:8899",)
    assert any("rests on one RPC's word" in warning for warning in config_warnings(config))
    other = Config(rpc="http://127.0.0.1:8899", cluster_proof=ClusterProof(also_rpc=(
        "http://127.0.0.1:8898",
    )))  # fmt: skip
    assert other.cluster_rpcs() == ("http://127.0.0.1:8899", "http://127.0.0.1:8898")


async def test_a_rank_map_that_keeps_failing_is_read_again_after_a_doubling_wait(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """An RPC whose rank map fails (here: no vote account holds a BLS key; a hostile one
    lists 20,000 keys that decode, seconds of a parse thread, before the map is refused) was
    read again a fixed ``retry_after`` after each failure, by the next archive's question:
    with new archives listed every minute, its keys decoded every minute for good. Its wait
    doubles as every other failure's. ``mock_clock``: trio's clock moves only when told."""
    node = VoteRpc(stakes={v.vote: v.stake for v in VALIDATORS}, genesis=genesis_answer(50))
    slots = [SLOT + n for n in range(5)]
    for slot in slots:
        node.documents[slot] = document(slot, BANK, struct.pack("<Q", slot) + BLOCK_ID)
    url = await nursery.start(serve_app, node.app()) + "/"
    config = Config(rpc=url, cluster_proof=ClusterProof(certificates=url + "certificates"))

    def rank_map_reads() -> int:
        return sum(1 for method, _ in node.calls if method == "getEpochInfo")

    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=30) as client:
        voter = ClusterVotes(lambda: config, client, retry_after=10)
        seen = []
        # each a new archive (its own question, not backed off): the rank map's wait decides
        for slot, after in zip(slots, [0, 10, 15, 5, 39], strict=True):
            mock_clock.jump(after)
            lifted = await voter.lift(slot, manifest_proof())
            assert lifted.level == Level.MANIFEST
            seen.append(rank_map_reads())
        # read at 0 and 10 (the first wait), not at 25 (20 after the second failure), at 30,
        # not at 69 (40 after the third)
        assert seen == [1, 2, 2, 3, 3]
        assert "no vote account with stake has a BLS key (read again in 1s)" in (lifted.note or "")


async def test_a_rank_map_cut_by_the_deadline_waits_as_a_failure(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank map whose reading the deadline cut (a hostile RPC's thousands of keys, or its
    answers drawn out) was no failure of the rank map: the next archive's question read it
    all again at once, each new archive another deadline of a parse thread. It waits as a
    failure does. Each key's decoding is slowed (5 ms) instead of 20,000 real keys."""
    many = 3000  # 15 s of decoding
    accounts = {key(f"keyed {n}"): keyed_account(n) for n in range(many)}
    node = VoteRpc(stakes=dict.fromkeys(accounts, 1), accounts=accounts, genesis=genesis_answer(50))
    for slot in (SLOT, SLOT + 1):
        node.documents[slot] = document(slot, BANK, struct.pack("<Q", slot) + BLOCK_ID)
    slowed(monkeypatch, bls, "_g1")
    url = await nursery.start(serve_app, node.app()) + "/"
    proof = ClusterProof(deadline=1.0, certificates=url + "certificates")
    config = Config(rpc=url, cluster_proof=proof)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=30) as client:
        voter = ClusterVotes(lambda: config, client, retry_after=60)
        cut = await voter.lift(SLOT, manifest_proof())
        assert cut.note == "cluster not proven: the certificate were not read within 1s"
        other = await voter.lift(SLOT + 1, manifest_proof())
    assert sum(1 for method, _ in node.calls if method == "getEpochInfo") == 1
    assert other.note is not None and "the rank map was not read within 1s (read again in" in (
        other.note
    )
