"""The cluster level (docs/architecture.md, "The cluster level") against a fake JSON-RPC node on
127.0.0.1 serving getBlock and getVoteAccounts answers shaped as agave's RPC writes them
(``tests/helpers_votes.py``): the votes after an archive's slot weighed by the current stake,
skipped slots, votes for another hash and of unknown voters, hostile and silent RPCs, the
cache, several RPCs that must agree, and ``trust.require: cluster`` in redirect mode's head
reads."""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import base58
import httpx
import pytest
import trio
import trio.testing
from helpers_bytes import archive_bytes
from helpers_proxy import GROUP, advertise_files
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_upstream import FakeUpstream, serving
from helpers_votes import (
    VoteRpc,
    block_answer,
    compact,
    hash_of,
    key,
    tower,
    update,
    vote,
    vote_transaction,
)
from names import full_name

import tracker.proof.background.heads as heads_module
import tracker.proof.cluster.clustervotes as votes_module
import tracker.proof.cluster.voteanswers as voteanswers
from tracker.config.schema import ClusterProof, Config, TargetGroup, Trust
from tracker.net.bodyreads import BodyBudget
from tracker.ordering.index import Index, TargetKey
from tracker.proof.background.heads import HeadProofs
from tracker.proof.cluster.clustervotes import ClusterVotes
from tracker.proof.formats.tally import VoteSeen
from tracker.proof.levels import Level, Proof
from tracker.proxy.upstream import DownloadClients, ProxySettings

S = 5000
H = hash_of("bank hash at 5000")
OTHER = hash_of("a forged bank hash")
PROOF = Proof(Level.MANIFEST, snapshot_hash="x", bank_hash=base58.b58encode(H).decode())
V = [key(f"validator {n}") for n in range(6)]
STAKES = {V[0]: 300, V[1]: 250, V[2]: 150, V[3]: 100, V[4]: 200}  # total 1000


def majority() -> VoteRpc:
    """Votes for (S, H) of 80% of the stake in every kind agave accepts, S+2 skipped,
    another hash from 10%, a voter that holds no stake, and a vote for S-1 that counts
    nothing."""
    return VoteRpc(
        blocks={
            S + 1: [
                vote_transaction(V[0], tower([(S - 1, 2), (S, 1)], H, root=S - 40)),
                vote_transaction(V[1], compact([(S, 1)], H)),
                vote_transaction(V[3], vote([S - 1, S], OTHER)),
                vote_transaction(V[5], tower([(S, 1)], H)),  # not in getVoteAccounts
            ],
            S + 3: [
                vote_transaction(V[2], update([(S, 1)], H), loaded=True),
                vote_transaction(V[4], vote([S], H, switch=hash_of("switch"))),
                vote_transaction(V[3], tower([(S - 1, 1)], H)),  # another slot
            ],
        },
        stakes={k: v for k, v in STAKES.items() if k != V[4]},
        delinquent={V[4]: STAKES[V[4]]},
    )


def minority() -> VoteRpc:
    """30% for H, 55% for another hash."""
    return VoteRpc(
        blocks={
            S + 1: [
                vote_transaction(V[0], tower([(S, 1)], H)),
                vote_transaction(V[1], tower([(S, 1)], OTHER)),
                vote_transaction(V[4], tower([(S, 1)], OTHER)),
                vote_transaction(V[3], tower([(S, 1)], OTHER)),
            ],
        },
        stakes=STAKES,
    )


@asynccontextmanager
async def rpcs(*nodes: VoteRpc) -> AsyncIterator[list[str]]:
    async with trio.open_nursery() as nursery:
        urls = [await nursery.start(serve_app, node.app()) for node in nodes]
        yield [url + "/" for url in urls]
        nursery.cancel_scope.cancel()


def settings(urls: list[str], *, blocks: int = 8, deadline: float = 20.0, **more: Any) -> Config:
    proof = ClusterProof(blocks=blocks, deadline=deadline, also_rpc=tuple(urls[1:]))
    return Config(rpc=urls[0], cluster_proof=proof, **more)


@asynccontextmanager
async def cluster_votes(config: Config, **options: Any) -> AsyncIterator[ClusterVotes]:
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
        yield ClusterVotes(lambda: config, client, **options)


async def test_the_stake_behind_the_votes_lifts_an_archive_to_cluster() -> None:
    node = majority()
    async with rpcs(node) as urls, cluster_votes(settings(urls, blocks=8)) as votes:
        proof = await votes.lift(S, PROOF)
    # V0 (TowerSync), V1 (CompactUpdateVoteState), V2 (UpdateVoteState, v0 transaction),
    # V4 (VoteSwitch, delinquent): 300 + 250 + 150 + 200 of 1000.
    assert (proof.level, proof.voted_stake, proof.note) == (Level.CLUSTER, 0.9, None)
    # The first batch of 4 blocks held 2/3: no more are read (skipped slots cost a call).
    assert sorted(node.block_calls()) == list(range(S + 1, S + 5))
    assert proof.to_json()["voted_stake"] == 0.9


async def test_a_minority_leaves_the_archive_at_manifest_with_the_stake_shown() -> None:
    node = minority()
    async with rpcs(node) as urls, cluster_votes(settings(urls, blocks=10)) as votes:
        proof = await votes.lift(S, PROOF)
    assert sorted(node.block_calls()) == list(range(S + 1, S + 11))  # at most `blocks`
    assert (proof.level, proof.voted_stake) == (Level.MANIFEST, 0.3)
    assert proof.note == (
        "cluster not proven: 30.0% of the stake voted the bank hash, 55.0% voted another hash,"
        " 2/3 needed"
    )


class CountedCalls(list[tuple[str, Any]]):
    """An RPC's calls, counting the votes read and kept (``VoteSeen`` objects alive, beyond
    those alive when the first block was asked) when the first block from ``at`` on is
    asked: the batches before were read by then, none after them answered yet."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.before: int | None = None
        self.kept: int | None = None

    def append(self, call: tuple[str, Any]) -> None:
        if call[0] == "getBlock" and self.before is None:
            self.before = alive(VoteSeen)
        if call[0] == "getBlock" and call[1][0] >= self.at and self.kept is None:
            self.kept = alive(VoteSeen) - (self.before or 0)
        super().append(call)


def alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


async def test_votes_a_block_repeats_are_kept_once() -> None:
    """Every vote instruction read was kept until the archive's check ended: a liar's
    blocks repeating one vote (~500,000 in a 64 MiB answer) grew the tracker's memory with
    each block read, up to ``cluster_proof.blocks`` of them within the deadline (an hour at
    most), and each batch's tally walked all of them on the event loop. A voter is kept once
    per side (the bank hash, another hash)."""
    repeated = vote_transaction(V[3], tower([(S, 1)], H))  # 10%: every block is read
    repeated["transaction"]["message"]["instructions"] *= 250
    counted = CountedCalls(S + 5)
    node = VoteRpc(
        blocks={S + n: [repeated] * 4 for n in range(1, 9)}, stakes=STAKES, calls=counted
    )
    async with rpcs(node) as urls, cluster_votes(settings(urls, blocks=8)) as votes:
        proof = await votes.lift(S, PROOF)
    assert (proof.level, proof.voted_stake) == (Level.MANIFEST, 0.1)
    assert sorted(node.block_calls()) == list(range(S + 1, S + 9))
    assert counted.kept is not None and counted.kept < 10  # not 4 blocks of 1,000 votes


def invented_voters(names: list[str]) -> dict[str, Any]:
    """One transaction of a vote for (S, H) by each of ``names``' vote accounts (none of
    them staked), the most keys a transaction may name."""
    entry = vote_transaction(V[0], tower([(S, 1)], H))
    message = entry["transaction"]["message"]
    instruction = message["instructions"][0]
    program = message["accountKeys"][2]
    message["accountKeys"] = [message["accountKeys"][0], program] + [key(n) for n in names]
    message["instructions"] = [
        {**instruction, "programIdIndex": 1, "accounts": [2 + n, 0]} for n in range(len(names))
    ]
    return entry


async def test_a_block_is_folded_as_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block's votes were all held at once while it was decoded, before they were
    folded: a liar's 64 MiB block holds ~500,000 (one vote repeated, or invented voters
    with no stake), ~100 MiB of objects (170 to 230 bytes each, tracemalloc) in each of
    the two parse threads, past the answers' budget. A block is folded one transaction
    at a time: at most one transaction's votes are held; the tally is the same."""
    repeated = vote_transaction(V[3], tower([(S, 1)], H))  # 10%: the block counts
    repeated["transaction"]["message"]["instructions"] *= 250
    invented = [invented_voters([f"invented {t} {n}" for n in range(250)]) for t in range(8)]
    node = VoteRpc(blocks={S + 1: [repeated] * 8 + invented}, stakes=STAKES)
    before = alive(VoteSeen)
    peak = [0]
    decode = voteanswers.transaction_votes

    def counted(entry: object) -> list[VoteSeen]:
        found = decode(entry)
        peak[0] = max(peak[0], alive(VoteSeen) - before)
        return found

    monkeypatch.setattr(voteanswers, "transaction_votes", counted)
    async with rpcs(node) as urls, cluster_votes(settings(urls, blocks=1)) as votes:
        proof = await votes.lift(S, PROOF)
    assert (proof.level, proof.voted_stake) == (Level.MANIFEST, 0.1)
    assert proof.note is not None and "2000 voters hold no stake" in proof.note
    assert 250 <= peak[0] <= 256, f"{peak[0]} votes held at once"  # one transaction's


async def test_a_tally_is_kept_per_slot_and_hash() -> None:
    node = majority()
    async with rpcs(node) as urls, cluster_votes(settings(urls)) as votes:
        first = await votes.lift(S, PROOF)
        calls = len(node.calls)
        again = await votes.lift(S, attrs.evolve(PROOF, snapshot_hash="another archive"))
        assert len(node.calls) == calls  # the second ask makes no RPC call
        other = await votes.lift(S, attrs.evolve(PROOF, bank_hash=base58.b58encode(OTHER).decode()))
        assert len(node.calls) > calls  # another hash is another question
    assert again.level == first.level == Level.CLUSTER
    assert (other.level, other.voted_stake) == (Level.MANIFEST, 0.1)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            b'{"jsonrpc":"2.0","result":{"transactions":[' + b" " * (1024 * 1024),
            "exceeds the limit",
        ),
        (b'{"jsonrpc":"2.0","result":{"transactions":[{"meta":{"err":null},', "invalid JSON"),
        (b'{"jsonrpc":"2.0","error":{"code":-32005,"message":"Node is behind"},"id":1}', "-32005"),
    ],
)
async def test_an_rpc_that_fails_leaves_the_archive_at_manifest(
    raw: bytes, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(votes_module, "MAX_BLOCK", 64 * 1024)  # the answer is 16x past it
    node = majority()
    node.raw["getBlock"] = raw
    async with rpcs(node) as urls, cluster_votes(settings(urls)) as votes:
        proof = await votes.lift(S, PROOF)
        calls = len(node.calls)
        again = await votes.lift(S, PROOF)  # within the back-off: no call, the reason kept
        assert len(node.calls) == calls
    assert proof.level == Level.MANIFEST and proof.voted_stake is None
    assert proof.note is not None and reason in proof.note and urls[0] in proof.note
    assert "getBlock" in proof.note
    assert again.note is not None and "asked again in" in again.note


async def test_a_silent_rpc_is_given_up_at_the_deadline_then_asked_again() -> None:
    node = majority()
    node.stall.add("getVoteAccounts")
    async with rpcs(node) as urls, cluster_votes(settings(urls, deadline=1), retry_after=0) as cv:
        proof = await cv.lift(S, PROOF)
        assert node.stalled.is_set()
        assert proof.level == Level.MANIFEST
        assert proof.note == "cluster not proven: the votes were not read within 1s"
        node.stall.clear()  # the RPC recovers: asked again after the back-off (0 here)
        assert (await cv.lift(S, PROOF)).level == Level.CLUSTER


async def test_the_answers_held_at_once_stay_within_one_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lift held up to 4 getBlock answers of up to 64 MiB per RPC at once, each read whole
    before a parse thread was free, and lifts run at once (the head reads' four, the held
    copies', a refresh's), each of every RPC: two lifts of two RPCs held 1 GiB, measured.
    The answers in flight share one budget of the process (docs/http-api.md, "Limits").
    Scaled down here: answers of 0.9 MiB, a budget of two of them, the parse threads held
    until nothing more can be read."""
    cap = 1024**2
    budget = BodyBudget(2 * cap)
    monkeypatch.setattr(votes_module, "MAX_BLOCK", cap)
    monkeypatch.setattr(votes_module, "_ANSWERS", budget)
    filler = vote_transaction(V[0], tower([(S - 1, 1)], H))  # votes for no slot asked
    filler["meta"]["logMessages"].append("x" * 100_000)
    node = majority()
    node.raw["getBlock"] = json.dumps(block_answer(S + 1, [filler] * 9)).encode()
    assert 0.8 * cap < len(node.raw["getBlock"]) < 0.9 * cap
    held = {"now": 0, "peak": 0}
    counting = threading.Lock()
    parse = threading.Event()
    block_votes = votes_module.block_votes

    def held_back(body: bytearray, slot: int, checkpoint: Any) -> list[VoteSeen]:
        parse.wait(30)  # until every answer that can be read is read
        found = block_votes(body, slot, checkpoint)
        with counting:
            held["now"] -= len(body)
        return found

    monkeypatch.setattr(votes_module, "block_votes", held_back)
    async with rpcs(node) as urls, cluster_votes(settings(urls, blocks=4)) as votes:
        call = votes._call

        async def counted(
            url: str, payload: dict[str, Any] | None, max_body: int, *share: Any
        ) -> bytearray:
            body = await call(url, payload, max_body, *share)
            if payload is not None and payload["method"] == "getBlock":
                with counting:
                    held["now"] += len(body)
                    held["peak"] = max(held["peak"], held["now"])
            return body

        votes._call = counted  # type: ignore[method-assign]
        lifted: list[Proof] = []

        async def lift(slot: int) -> None:
            lifted.append(await votes.lift(slot, PROOF))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lift, S)
                nursery.start_soon(lift, S + 100)
                await trio.testing.wait_all_tasks_blocked(cushion=0.2)
                at_rest = held["peak"]
                parse.set()
        finally:
            parse.set()
    assert at_rest <= 2 * cap, f"{at_rest / cap:.1f} MiB of answers held at once"
    assert held["peak"] <= 2 * cap
    assert len(node.block_calls()) == 8  # every block of both read in turn
    assert [p.level for p in lifted] == [Level.MANIFEST] * 2
    assert budget.used == 0


async def test_several_rpcs_must_agree() -> None:
    async with rpcs(majority(), minority()) as urls, cluster_votes(settings(urls)) as votes:
        proof = await votes.lift(S, PROOF)
    assert (proof.level, proof.voted_stake) == (Level.MANIFEST, 0.3)
    assert proof.note is not None and "the RPCs disagree" in proof.note
    async with rpcs(majority(), majority()) as urls, cluster_votes(settings(urls)) as votes:
        assert (await votes.lift(S, PROOF)).level == Level.CLUSTER


async def test_a_reload_of_the_rpcs_asks_the_ones_in_force() -> None:
    """The tallies are kept by the RPCs that gave them: a reload that replaces a lying RPC
    asks its successor (the liar's verdict stood, the successor never asked), and one that
    adds an RPC to two that disagreed asks all three (a ValueError out of the judging of
    the kept answers against the new list, which ended the daemon)."""
    liar, honest, third = majority(), minority(), majority()
    async with rpcs(liar, honest, third) as urls:
        config = {"now": settings(urls[:1])}
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
            votes = ClusterVotes(lambda: config["now"], client)
            assert (await votes.lift(S, PROOF)).level == Level.CLUSTER  # the liar alone
            config["now"] = settings(urls[1:2])  # replaced by the honest one
            replaced = await votes.lift(S, PROOF)
            assert honest.calls and replaced.level == Level.MANIFEST
            config["now"] = settings(urls[:2])  # the two disagree
            assert "the RPCs disagree" in (await votes.lift(S, PROOF)).note
            config["now"] = settings(urls)  # a third one added
            three = await votes.lift(S, PROOF)
    assert third.calls and "the RPCs disagree" in three.note


async def test_without_rpc_or_bank_hash_nothing_is_asked() -> None:
    async with cluster_votes(Config()) as votes:
        proof = await votes.lift(S, PROOF)
        assert proof.level == Level.MANIFEST and proof.note is not None
        assert "no rpc configured" in proof.note
        structure = Proof(Level.STRUCTURE)
        assert await votes.lift(S, structure) == structure
        assert votes.calls == 0


def prove_as(proof: Proof) -> Any:
    def prove(read: Any, name: str, limit: int) -> Proof:
        read(1024)  # the head of the archive, as the manifest's proof reads it
        return proof

    return prove


async def test_require_cluster_keeps_a_copy_out_until_the_votes_carry_it() -> None:
    name = full_name(S)
    files = {name: archive_bytes(64 * 1024)}
    node = minority()
    up = FakeUpstream(files=files)
    async with serving(up), rpcs(node) as urls:
        group = TargetGroup(group=GROUP, trust=Trust(require=Level.CLUSTER))
        config = settings(urls, target_groups=(group,))
        index = Index()
        advertise_files(index, up, files)
        key_ = TargetKey(GROUP, up.base)
        clients = DownloadClients(ProxySettings())
        async with cluster_votes(config, retry_after=0) as cv:
            heads = HeadProofs(lambda: config, index, clients, prove_as(PROOF), votes=cv)
            assert await heads.round() == 1  # a minority: refused for good
            assert index.best_full(GROUP) is None
            reason = index.disproven()[key_][name]
            assert reason.startswith("proven to manifest, cluster required: cluster not proven")
            assert "30.0% of the stake voted the bank hash" in reason

            node.raw["getBlock"] = b"{}"  # another archive, an RPC that fails: asked again
            name2 = full_name(S + 100)
            files[name2] = archive_bytes(64 * 1024)
            advertise_files(index, up, files)
            assert await heads.round() == 0
            assert index.best_full(GROUP) is None
            assert "getBlock" in index.disproven()[key_][name2]
            node.raw.clear()
            node.blocks = {S + 101: majority().blocks[S + 1] + majority().blocks[S + 3]}
            for entry in node.blocks[S + 101]:  # the same voters, voting for S + 100
                entry["transaction"]["message"]["instructions"][0]["data"] = base58.b58encode(
                    tower([(S + 100, 1)], H)
                ).decode()
            assert await heads.round() == 1
        await clients.aclose()
    best = index.best_full(GROUP)
    assert best is not None and best.info.slot == S + 100
    assert name2 not in index.disproven().get(key_, {})
    assert heads.proven[(key_, name2)].level == Level.CLUSTER
    assert len(up.gets(name2)) == 1  # the head was read once; the votes were asked twice


@asynccontextmanager
async def heads_of_two_copies(
    ups: list[FakeUpstream], files: dict[str, bytes], node: VoteRpc, prove: Any
) -> AsyncIterator[tuple[HeadProofs, Index]]:
    """Head reads of a group requiring ``cluster`` over two upstreams holding ``files``,
    asking ``node``."""
    async with serving(ups[0]), serving(ups[1]), rpcs(node) as urls:
        group = TargetGroup(group=GROUP, trust=Trust(require=Level.CLUSTER))
        config = settings(urls, target_groups=(group,))
        index = Index()
        for up in ups:
            advertise_files(index, up, files)
        clients = DownloadClients(ProxySettings())
        async with cluster_votes(config, retry_after=0) as cv:
            yield HeadProofs(lambda: config, index, clients, prove, votes=cv), index
        await clients.aclose()


async def test_epoch_stakes_past_the_bytes_held_are_let_go_and_their_head_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Copies awaiting the votes keep their manifest's epoch stakes; forged copies each
    bring their own (up to ~1.2 MB), so past ``MAX_HELD_STAKES`` bytes the least recently
    seen are let go, and a copy whose stakes went is read again before the cluster is asked
    of it (never lifted without them)."""
    monkeypatch.setattr(heads_module, "MAX_HELD_STAKES", 1000)
    name = full_name(S)
    files = {name: archive_bytes(64 * 1024)}
    node = minority()
    node.raw["getBlock"] = b"{}"  # an RPC that fails: the copies await the votes
    ups = [FakeUpstream(files=files), FakeUpstream(files=files)]  # two copies of it
    reads = iter(range(100))

    def prove(read: Any, name: str, limit: int) -> Proof:
        read(1024)
        return attrs.evolve(PROOF, epoch_stakes=bytes([next(reads)]) * 600)  # each its own

    async with heads_of_two_copies(ups, files, node, prove) as (heads, index):
        assert await heads.round() == 0  # both read, 1,200 bytes of stakes: one let go
        assert [len(up.gets(name)) for up in ups] == [1, 1]
        # The one let go is read again (its new stakes let the other's go), and so on: a
        # copy is never weighed without its stakes, and no more than 1,000 bytes held
        assert await heads.round() == 0
        assert sorted(len(up.gets(name)) for up in ups) == [1, 2]
        assert await heads.round() == 0
        assert [len(up.gets(name)) for up in ups] == [2, 2]
    assert index.best_full(GROUP) is None


async def test_refusals_past_the_kept_ones_leave_the_index_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The head reads keep ``MAX_KEPT`` refusals; one forgotten past them stayed in the
    index's refusals for good (one entry per refused copy, ever: ``/v1/targets`` renders
    them all): it leaves both, to be read again when due."""
    monkeypatch.setattr(heads_module, "MAX_KEPT", 1)
    name = full_name(S)
    files = {name: archive_bytes(64 * 1024)}
    ups = [FakeUpstream(files=files), FakeUpstream(files=files)]
    async with heads_of_two_copies(ups, files, minority(), prove_as(PROOF)) as (heads, index):
        assert await heads.round() == 2  # both refused: a minority
    reasons = sorted(r for names in index.disproven().values() for r in names.values())
    assert len(reasons) == 2  # the one forgotten: unproven, to be read again
    assert reasons[0].startswith("not proven yet")
    assert reasons[1].startswith("proven to manifest, cluster required: cluster not proven")


async def test_require_cluster_without_the_votes_executor_says_why() -> None:
    name = full_name(S)
    files = {name: archive_bytes(64 * 1024)}
    up = FakeUpstream(files=files)
    async with serving(up):
        group = TargetGroup(group=GROUP, trust=Trust(require=Level.CLUSTER))
        config = Config(target_groups=(group,))
        index = Index()
        advertise_files(index, up, files)
        clients = DownloadClients(ProxySettings())
        heads = HeadProofs(lambda: config, index, clients, prove_as(PROOF))
        assert await heads.round() == 0  # no tally: asked again each round
        await clients.aclose()
    assert index.best_full(GROUP) is None
    reason = index.disproven()[TargetKey(GROUP, up.base)][name]
    assert reason == "proven to manifest, cluster required: cluster not proven: no votes read here"
