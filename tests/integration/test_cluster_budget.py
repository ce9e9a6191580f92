"""The budget of the RPC answers held at once by the cluster level (docs/http-api.md, "The
cluster level", "Limits") against fake JSON-RPC nodes on 127.0.0.1 (``tests/helpers_votes.py``):
an answer's share is its length once its head is read (its whole cap only without one), and
one RPC holds at most a part of the budget, whatever it draws out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import base58
import httpx
import pytest
import quart
import trio
import trio.testing
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_votes import VoteRpc, hash_of, key, tower, vote_transaction
from quart_trio import QuartTrio

import tracker.proof.cluster.clustervotes as votes_module
from tracker.config.schema import ClusterProof, Config, TargetGroup
from tracker.net.bodyreads import BodyBudget
from tracker.proof.cluster.clustervotes import ClusterVotes
from tracker.proof.levels import Level, Proof

S = 5000
H = hash_of("bank hash at 5000")
PROOF = Proof(Level.MANIFEST, snapshot_hash="x", bank_hash=base58.b58encode(H).decode())
V = [key(f"validator {n}") for n in range(3)]
STAKES = {V[0]: 500, V[1]: 300, V[2]: 200}


def voted() -> VoteRpc:
    """80% of the stake votes (S, H) in S+1."""
    votes = [vote_transaction(v, tower([(S, 1)], H)) for v in V[:2]]
    return VoteRpc(blocks={S + 1: votes}, stakes=STAKES)


def drawn_out(node: VoteRpc, declared: int, sent: trio.Event) -> QuartTrio:
    """``node``'s app, its getBlock answers declaring ``declared`` bytes (Content-Length) of
    which a few are sent, the rest never: an RPC that draws its answers out."""
    app = node.app()

    @app.before_request
    async def draw_out() -> quart.Response | None:
        body = await quart.request.get_json()
        if body["method"] != "getBlock":
            return None
        node.calls.append(("getBlock", body["params"]))

        async def trickle() -> AsyncIterator[bytes]:
            yield b'{"jsonrpc": "2.0", '
            sent.set()
            await trio.sleep_forever()

        headers = {"content-length": str(declared)}
        return quart.Response(trickle(), headers=headers, content_type="application/json")

    return app


async def holding(budget: BodyBudget, total: int) -> None:
    """Wait until the reads hold ``total`` bytes of ``budget`` (each holds its share once its
    head is in: waited for, not guessed; on a loaded host a cushion of quiet passed before
    the heads were read), or fail after 8 s."""
    with trio.fail_after(8):
        while budget.used < total:
            await trio.sleep(0.01)


@asynccontextmanager
async def served(*apps: QuartTrio) -> AsyncIterator[list[str]]:
    async with trio.open_nursery() as nursery:
        urls = [await nursery.start(serve_app, app) for app in apps]
        yield [url + "/" for url in urls]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def cluster_votes(config: Config) -> AsyncIterator[ClusterVotes]:
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
        yield ClusterVotes(lambda: config, client)


async def test_answers_are_asked_many_at_once_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each read took its answer's whole cap (a getBlock's 64 MiB) before it was asked: four
    questions out at once in the whole tracker, whatever the answers' size, and a lift of
    three RPCs answering blocks of 100 kB after 100 ms took 3.6 s where it took 2.3 s before
    the budget (measured). A share is taken once the answer's head is read, its
    Content-Length. Scaled down: a cap of 1 MiB, a budget of two caps, the answers held back
    until the questions out are all in."""
    cap = 1024**2
    budget = BodyBudget(2 * cap)
    monkeypatch.setattr(votes_module, "MAX_BLOCK", cap)
    monkeypatch.setattr(votes_module, "_ANSWERS", budget)
    node = voted()
    release = node.hold["getBlock"] = trio.Event()
    async with served(node.app()) as urls:
        config = Config(rpc=urls[0], cluster_proof=ClusterProof(blocks=4, deadline=20))
        async with cluster_votes(config) as votes, trio.open_nursery() as nursery:
            lifted: list[Proof] = []

            async def lift() -> None:
                lifted.append(await votes.lift(S, PROOF))

            nursery.start_soon(lift)
            await trio.testing.wait_all_tasks_blocked(cushion=0.2)
            asked, held = len(node.block_calls()), budget.used
            release.set()
    assert (asked, held) == (4, 0), f"{asked} blocks asked at once, {held} bytes held"
    assert budget.peak <= budget.total and budget.used == 0
    assert [(p.level, p.voted_stake) for p in lifted] == [(Level.CLUSTER, 0.8)]


async def test_an_answer_without_a_length_holds_its_whole_cap_while_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer sent in chunks says not how long it is: its share is its whole cap while it
    is read (here: its Content-Length, half the cap, dropped), what it did not need given
    back once read."""
    cap = 1024**2
    budget = BodyBudget(4 * cap)
    monkeypatch.setattr(votes_module, "MAX_BLOCK", cap)
    monkeypatch.setattr(votes_module, "_ANSWERS", budget)
    node = voted()
    sent = trio.Event()
    app = drawn_out(node, cap // 2, sent)
    chunked: list[bool] = []

    @app.after_request
    async def without_length(response: quart.Response) -> quart.Response:
        if (await quart.request.get_json())["method"] == "getBlock":
            del response.headers["content-length"]  # sent in chunks
            chunked.append(True)
        return response

    async with served(app) as urls:
        config = Config(rpc=urls[0], cluster_proof=ClusterProof(blocks=1, deadline=20))
        async with cluster_votes(config) as votes, trio.open_nursery() as nursery:
            nursery.start_soon(votes.lift, S, PROOF)
            await sent.wait()
            await holding(budget, cap)
            assert chunked == [True]
            assert budget.used == cap
            nursery.cancel_scope.cancel()
    assert budget.used == 0


async def test_an_rpc_drawing_out_its_answers_leaves_the_others_room() -> None:
    """A lift's four getBlock reads from an RPC that draws its answers out (each declaring
    64 MiB) held the whole budget until its deadline (30 s by default): every other lift's
    reads, of every group and RPC, waited meanwhile. One RPC holds half of it at most; the
    lift of another group's RPC goes on at once. The process's own budget, sizes unscaled."""
    budget = votes_module._ANSWERS
    assert budget.used == 0
    sent = trio.Event()
    slow = drawn_out(voted(), votes_module.MAX_BLOCK, sent)
    honest = voted()
    async with served(slow, honest.app()) as (slow_url, honest_url):
        groups = (TargetGroup(group="other", rpc=honest_url),)
        proof = ClusterProof(blocks=8, deadline=20)
        config = Config(rpc=slow_url, target_groups=groups, cluster_proof=proof)
        async with cluster_votes(config) as votes, trio.open_nursery() as nursery:
            nursery.start_soon(votes.lift, S, PROOF)
            await sent.wait()
            await holding(budget, votes_module.ANSWERS_HELD_BY_ONE)
            drawing = budget.used
            with trio.fail_after(5):  # the drawn-out lift's deadline is 20 s away
                lifted = await votes.lift(S, PROOF, "other")
            nursery.cancel_scope.cancel()
    assert lifted.level == Level.CLUSTER
    assert drawing == votes_module.ANSWERS_HELD_BY_ONE  # two reads of 64 MiB, two waiting
    assert budget.used == 0


async def test_rpcs_drawing_out_their_answers_leave_an_honest_one_room() -> None:
    """Two RPCs drawing out their answers (each getBlock declaring 64 MiB) held the whole
    budget between them, each its half, until their lift's deadline: every other lift, of
    every group and RPC, waited for it (20 s here). A share that another read waits for is
    revoked once its body, at the pace it came so far, would not be in by its read's
    deadline (after a grace of 2 s), and its server's waiting reads refused: the honest
    lift goes on. The process's own budget, sizes unscaled."""
    budget = votes_module._ANSWERS
    assert budget.used == 0
    sent = [trio.Event(), trio.Event()]
    slow = [drawn_out(voted(), votes_module.MAX_BLOCK, event) for event in sent]
    honest = voted()
    async with served(*slow, honest.app()) as (one, two, honest_url):
        groups = (TargetGroup(group="other", rpc=honest_url),)
        proof = ClusterProof(blocks=8, deadline=20, also_rpc=(two,))
        config = Config(rpc=one, target_groups=groups, cluster_proof=proof)
        async with cluster_votes(config) as votes, trio.open_nursery() as nursery:
            nursery.start_soon(votes.lift, S, PROOF)
            for event in sent:
                await event.wait()
            await holding(budget, votes_module.ANSWERS_HELD)
            drawing = budget.used
            with trio.fail_after(8):  # the drawn-out lift's deadline is 20 s away
                lifted = await votes.lift(S, PROOF, "other")
            nursery.cancel_scope.cancel()
    assert drawing == votes_module.ANSWERS_HELD  # two reads of 64 MiB of each RPC
    assert lifted.level == Level.CLUSTER
    assert budget.used == 0
