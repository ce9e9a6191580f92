"""Several certificate relays (docs/http-api.md, "After the migration: finality
certificates"): real relays on 127.0.0.1 beside a test RPC of a migrated cluster, the
certificates really signed (``tests/helpers_alpenglow.py``).

The attack: a relay that lies serves block N's real certificate beside a footer of its own
whose bank hash is a forged archive's (its manifest names N's slot and block id). The
certificate verifies against the RPC's stakes, and the footer is the relay's word: with the
liar alone configured the forged archive is lifted to ``cluster``; beside an honest relay
the two disagree and nothing is lifted; an honest relay that is down or silent leaves the
archive not proven now, never the liar's to decide."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import base58
import httpx
import pytest
import quart
import trio
from helpers_alpenglow import (
    BLOCK_ID,
    OTHER_BLOCK,
    Validator,
    alpenglow_rpc,
    document,
    epoch_stakes,
    fast_certificate,
    ranked,
    validators,
)
from helpers_ports import REFUSED
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_votes import hash_of
from quart_trio import QuartTrio

import tracker.proof.cluster.clustervotes as clustervotes_module
from tracker.config.schema import ClusterProof, Config
from tracker.net.bodyreads import BodyBudget
from tracker.net.httpclients import origin
from tracker.proof.cluster.clustervotes import ClusterVotes
from tracker.proof.levels import Level, Proof

S = 4_800_000  # in the test RPC's epoch 11
H = hash_of("the cluster's bank")
FORGED = hash_of("a forger's bank")
VALS = validators([300, 250, 150, 100, 200])
ORDER = ranked(VALS)
#: Block S's real certificate (90% of the stake, fast): the one both relays serve.
CERTIFICATE = fast_certificate(S, ORDER[:4], ORDER)


def proof_of(bank: bytes, epoch: list[Validator] = VALS) -> Proof:
    """An archive's manifest proof at slot S of the real block id and ``bank``."""
    return Proof(
        Level.MANIFEST,
        snapshot_hash="x",
        bank_hash=base58.b58encode(bank).decode(),
        block_id=base58.b58encode(BLOCK_ID).decode(),
        epoch_stakes=epoch_stakes(epoch),
    )


@attrs.define
class Relay:
    """A certificate relay: ``documents[slot]`` at ``/certificates/{slot}.json`` (404 for
    another slot); with ``held`` set, an answer only once it is set."""

    documents: dict[int, bytes] = attrs.Factory(dict)
    held: trio.Event | None = None
    reads: int = 0
    asked: trio.Event = attrs.Factory(trio.Event)

    def app(self) -> QuartTrio:
        app = QuartTrio(__name__)

        @app.get("/certificates/<int:slot>.json")
        async def certificate(slot: int) -> quart.Response:
            self.reads += 1
            self.asked.set()
            if self.held is not None:
                await self.held.wait()
            if slot not in self.documents:
                return quart.Response("no such certificate", status=404)
            return quart.Response(self.documents[slot], content_type="application/json")

        return app


def relay(bank: bytes) -> Relay:
    """A relay serving block S's real certificate beside a footer of ``bank``."""
    return Relay({S: document(S, bank, CERTIFICATE)})


@asynccontextmanager
async def serving(*relays: Relay) -> AsyncIterator[tuple[str, list[str]]]:
    """The test RPC's URL and each relay's certificates prefix, all on 127.0.0.1."""
    node = alpenglow_rpc(VALS)
    async with trio.open_nursery() as nursery:
        rpc = await nursery.start(serve_app, node.app())
        bases = [await nursery.start(serve_app, r.app()) for r in relays]
        yield rpc + "/", [base + "/certificates" for base in bases]
        for r in relays:
            if r.held is not None:
                r.held.set()
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def voter(
    rpc: str, relays: Sequence[str], *, deadline: float = 20.0
) -> AsyncIterator[ClusterVotes]:
    proof = ClusterProof(deadline=deadline, certificates=tuple(relays))
    config = Config(rpc=rpc, cluster_proof=proof)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
        yield ClusterVotes(lambda: config, client, retry_after=0)


async def test_one_lying_relay_lifts_a_forged_archive_two_do_not() -> None:
    liar, honest = relay(FORGED), relay(H)
    async with serving(liar, honest) as (rpc, (lying, truthful)):
        # the liar alone: the forged archive reaches cluster on its word
        async with voter(rpc, [lying]) as cv:
            forged = await cv.lift(S, proof_of(FORGED))
        assert (forged.level, forged.cluster_proof) == (Level.CLUSTER, "certificate")
        # beside an honest relay: they disagree, and neither archive is lifted
        async with voter(rpc, [lying, truthful]) as cv:
            forged = await cv.lift(S, proof_of(FORGED))
            real = await cv.lift(S, proof_of(H))
    said = (
        f"cluster not proven: the certificate relays disagree ({lying}: bank hash"
        f" {base58.b58encode(FORGED).decode()}; {truthful}: bank hash"
        f" {base58.b58encode(H).decode()})"
    )
    assert (forged.level, forged.note) == (Level.MANIFEST, said)
    assert (real.level, real.note) == (Level.MANIFEST, said)
    assert liar.reads == 3 and honest.reads == 2  # every relay read for every question


async def test_honest_relays_that_agree_lift_the_real_archive() -> None:
    first, second = relay(H), relay(H)
    async with serving(first, second) as (rpc, prefixes), voter(rpc, prefixes) as cv:
        real = await cv.lift(S, proof_of(H))
        forged = await cv.lift(S, proof_of(FORGED))
    assert (real.level, real.voted_stake, real.note) == (Level.CLUSTER, 0.9, None)
    assert forged.level == Level.MANIFEST and forged.note == (
        f"cluster not proven: the block footer's bank hash is {base58.b58encode(H).decode()},"
        f" the manifest's is {base58.b58encode(FORGED).decode()}"
    )
    assert (first.reads, second.reads) == (2, 2)


async def test_a_relay_down_leaves_the_archive_not_proven_now() -> None:
    honest = relay(H)
    down = f"http://{REFUSED}/certificates"
    async with serving(honest) as (rpc, (truthful,)), voter(rpc, [truthful, down]) as cv:
        proof = await cv.lift(S, proof_of(H))
        assert proof.level == Level.MANIFEST and proof.note is not None
        assert proof.note.startswith(f"cluster not proven: {down}/{S}.json: GET: ")
        # asked again after the back-off (0 s here), the relay still down: still not proven
        again = await cv.lift(S, proof_of(H))
    assert again.level == Level.MANIFEST and honest.reads == 2


async def test_a_silent_relay_costs_the_lift_its_deadline_not_the_liars_word() -> None:
    # The honest relay holds its answer past the lift's deadline: the liar, which answered,
    # does not decide alone.
    liar, silent = relay(FORGED), relay(H)
    silent.held = trio.Event()
    async with (
        serving(liar, silent) as (rpc, (lying, quiet)),
        voter(rpc, [lying, quiet], deadline=1.0) as cv,
    ):
        forged = await cv.lift(S, proof_of(FORGED))
    assert forged.level == Level.MANIFEST
    assert forged.note == f"cluster not proven: {quiet}/{S}.json: not read within the deadline"
    assert silent.asked.is_set() and liar.reads == 1


async def test_every_relays_certificate_must_verify() -> None:
    # Both relays say the same of block S and its bank hash, but the second one's
    # certificate is signed over another block: its word vouches for nothing, so nothing
    # is lifted (each distinct certificate is weighed at every RPC).
    honest = relay(H)
    unsigned = Relay(
        {S: document(S, H, fast_certificate(S, ORDER[:4], ORDER, signed_block=OTHER_BLOCK))}
    )
    async with serving(honest, unsigned) as (rpc, prefixes), voter(rpc, prefixes) as cv:
        proof = await cv.lift(S, proof_of(H))
    assert proof.level == Level.MANIFEST and proof.note is not None
    assert proof.note.endswith(
        "the notarize aggregate does not verify over the 4 signers its bitmap names"
    )


async def test_each_relay_is_held_to_the_document_bound() -> None:
    # One relay answers 70 KB: that relay fails (64 KiB at most), whatever the other says.
    honest, oversized = relay(H), Relay({S: b" " * (70 * 1024)})
    async with serving(honest, oversized) as (rpc, prefixes), voter(rpc, prefixes) as cv:
        proof = await cv.lift(S, proof_of(H))
    assert proof.note == (
        f"cluster not proven: {prefixes[1]}/{S}.json: GET: body exceeds the limit of 65536 bytes"
    )


async def test_a_relays_document_is_held_within_the_answers_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The documents are read within the budget every RPC answer shares, each relay's server
    # within its own part: a server whose part is held (here by this test) has its document
    # wait for room, to the lift's deadline, while the RPC's answers go on in theirs.
    budget = BodyBudget(1024**2, per_owner=64 * 1024)
    monkeypatch.setattr(clustervotes_module, "_ANSWERS", budget)
    waiting = relay(H)
    async with serving(waiting) as (rpc, prefixes), voter(rpc, prefixes, deadline=1.0) as cv:
        async with budget.held(64 * 1024, owner=origin(prefixes[0])):
            proof = await cv.lift(S, proof_of(H))
        assert proof.note == (
            f"cluster not proven: {prefixes[0]}/{S}.json: not read within the deadline"
        )
        assert waiting.reads == 1  # asked, its answer never taken in
        lifted = await cv.lift(S, proof_of(H))  # its room given back (the back-off is 0 s)
    assert lifted.level == Level.CLUSTER
