"""The cluster level of held copies (docs/architecture.md, "The cluster level"): what a
check shows of a group's level, which proofs the votes may lift, and what a refresh of a
group requiring ``cluster`` needs of them, as tables."""

from __future__ import annotations

import pytest
import trio
from names import full_name, incremental_name

from tracker.cache.checked import Checking
from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.cluster.lifting import (
    liftable,
    lifted,
    required_proof,
    unlifted,
    votes_tally,
)
from tracker.proof.levels import Level, Proof, checked_for

FULL = full_name(500)
INCREMENTAL = incremental_name(400, 500)
BANK = "FF2m56Z7VbuL5fhNTfNzzH41ZP45CYzxZGocL9RqmRck"
ACCOUNTS = Proof(Level.ACCOUNTS, "s", BANK)
MANIFEST = Proof(Level.MANIFEST, "s", BANK)


@pytest.mark.parametrize(
    ("required", "checked"),
    [
        (Level.STRUCTURE, Level.STRUCTURE),
        (Level.MANIFEST, Level.MANIFEST),
        (Level.ACCOUNTS, Level.ACCOUNTS),
        (Level.CLUSTER, Level.ACCOUNTS),
    ],
)
def test_what_a_check_shows_of_a_level(required: Level, checked: Level) -> None:
    assert checked_for(required) == checked


@pytest.mark.parametrize(
    ("proof", "name", "expected"),
    [
        pytest.param(ACCOUNTS, FULL, True, id="a full at accounts"),
        pytest.param(MANIFEST, INCREMENTAL, True, id="an incremental at manifest"),
        pytest.param(MANIFEST, FULL, False, id="a full whose storages were not proven"),
        pytest.param(Proof(Level.STRUCTURE), FULL, False, id="structure: no bank hash"),
        pytest.param(Proof(Level.ACCOUNTS, "s"), FULL, False, id="no bank hash"),
        pytest.param(Proof(Level.CLUSTER, "s", BANK, 0.9), FULL, False, id="lifted already"),
        pytest.param(Proof(Level.ACCOUNTS, "s", BANK, 0.3), FULL, False, id="a tally: final"),
        pytest.param(
            Proof(Level.ACCOUNTS, "s", BANK, note="cluster not proven: x (asked again in 9s)"),
            FULL,
            True,
            id="an RPC that failed: asked again",
        ),
        pytest.param(ACCOUNTS, "not-an-archive.tar", False, id="not an archive name"),
    ],
)
def test_which_proofs_the_votes_may_lift(proof: Proof, name: str, expected: bool) -> None:
    assert liftable(proof, name) is expected


class FixedVotes:
    """A voter whose answer is fixed (what ClusterVotes' lift returns; ``holding``: what
    its ``holds`` says of a tally); counts its calls."""

    def __init__(
        self,
        answer: Proof | None,
        holding: bool = True,
        urls: tuple[str, ...] = ("http://127.0.0.1:1/",),
    ) -> None:
        self.answer = answer
        self.holding = holding
        self.urls = urls
        self.asked: list[int] = []
        self.lifted: list[Proof] = []
        self.weighed: list[Proof] = []

    def rpcs(self) -> tuple[str, ...]:
        return self.urls

    def of(self, group: str) -> FixedVotes:
        return self  # one cluster: every group's votes are these

    async def lift(self, slot: int, proof: Proof) -> Proof:
        self.asked.append(slot)
        self.lifted.append(proof)
        assert self.answer is not None
        return self.answer

    async def holds(self, slot: int, proof: Proof) -> bool:
        self.weighed.append(proof)
        return self.holding


LIFTED = Proof(Level.CLUSTER, "s", BANK, 0.7)
MINORITY = Proof(Level.ACCOUNTS, "s", BANK, 0.3, "cluster not proven: 30.0% ..., 2/3 needed")
FAILED = Proof(Level.ACCOUNTS, "s", BANK, note="cluster not proven: rpc: getBlock: timed out")


@pytest.mark.parametrize(
    ("require", "proof", "answer", "outcome", "asked"),
    [
        pytest.param(Level.ACCOUNTS, ACCOUNTS, None, ACCOUNTS, False, id="accounts: no votes"),
        pytest.param(Level.MANIFEST, ACCOUNTS, None, ACCOUNTS, False, id="manifest: no votes"),
        pytest.param(Level.CLUSTER, ACCOUNTS, LIFTED, LIFTED, True, id="cluster: 2/3 voted"),
        pytest.param(
            Level.CLUSTER,
            ACCOUNTS,
            MINORITY,
            "proven to accounts, cluster required: cluster not proven: 30.0% ..., 2/3 needed",
            True,
            id="cluster: a minority",
        ),
        pytest.param(
            Level.CLUSTER,
            ACCOUNTS,
            FAILED,
            "proven to accounts, cluster required: cluster not proven: rpc: getBlock: timed out",
            True,
            id="cluster: the RPC failed",
        ),
        pytest.param(
            Level.CLUSTER,
            MANIFEST,
            LIFTED,
            "proven to manifest, accounts required",
            False,
            id="cluster: a full below accounts is refused before any vote",
        ),
    ],
)
def test_what_a_refresh_needs_of_the_votes(
    require: Level, proof: Proof, answer: Proof | None, outcome: Proof | str, asked: bool
) -> None:
    votes = FixedVotes(answer)
    checking = Checking(
        verify=True, require=require, prove_accounts=AccountsLimits(max_accounts=1000), voter=votes
    )

    async def main() -> Proof | str:
        try:
            return await required_proof(checking, FULL, proof)
        except ArchiveInvalid as exc:
            return exc.reason

    assert trio.run(main) == outcome
    assert votes.asked == ([500] if asked else [])


BY_VOTES = Proof(Level.CLUSTER, "s", BANK, 0.9, cluster_proof="votes")
BY_CERTIFICATE = Proof(Level.CLUSTER, "s", BANK, 0.9, cluster_proof="certificate")
SHORT_CERTIFICATE = Proof(Level.ACCOUNTS, "s", BANK, 0.5, cluster_proof="certificate")


@pytest.mark.parametrize(
    ("proof", "expected"),
    [
        pytest.param(BY_VOTES, True, id="cluster by votes"),
        pytest.param(Proof(Level.CLUSTER, "s", BANK, 0.9), True, id="a proof file before kinds"),
        pytest.param(MINORITY, True, id="a minority of votes"),
        pytest.param(BY_CERTIFICATE, False, id="cluster by a certificate"),
        pytest.param(SHORT_CERTIFICATE, False, id="a certificate short of its stake"),
        pytest.param(ACCOUNTS, False, id="no tally"),
        pytest.param(FAILED, False, id="an RPC that failed"),
    ],
)
def test_which_proofs_rest_on_a_tally_of_votes(proof: Proof, expected: bool) -> None:
    assert votes_tally(proof) is expected


@pytest.mark.parametrize(
    ("proof", "is_full", "expected"),
    [
        pytest.param(BY_VOTES, True, ACCOUNTS, id="a full at cluster: accounts"),
        pytest.param(BY_VOTES, False, MANIFEST, id="an incremental at cluster: manifest"),
        pytest.param(MINORITY, True, ACCOUNTS, id="a full's minority: its level, no tally"),
        pytest.param(
            Proof(Level.MANIFEST, "s", BANK, 0.3, "cluster not proven: 30.0%"),
            False,
            MANIFEST,
            id="an incremental's minority",
        ),
    ],
)
def test_a_proof_its_tally_taken_away_is_what_the_check_proved(
    proof: Proof, is_full: bool, expected: Proof
) -> None:
    assert unlifted(proof, is_full=is_full) == expected


@pytest.mark.parametrize(
    ("name", "proof", "holding", "outcome", "lifted_from"),
    [
        pytest.param(FULL, BY_VOTES, True, BY_VOTES, None, id="a tally that holds: as it is"),
        pytest.param(FULL, BY_VOTES, False, LIFTED, ACCOUNTS, id="one that falls: weighed again"),
        pytest.param(
            INCREMENTAL, BY_VOTES, False, LIFTED, MANIFEST, id="an incremental's: from manifest"
        ),
        pytest.param(FULL, MINORITY, False, LIFTED, ACCOUNTS, id="a minority that falls"),
        pytest.param(FULL, BY_CERTIFICATE, False, BY_CERTIFICATE, None, id="a certificate's"),
    ],
)
def test_a_tally_of_votes_is_weighed_again_once_it_no_longer_holds(
    name: str, proof: Proof, holding: bool, outcome: Proof, lifted_from: Proof | None
) -> None:
    votes = FixedVotes(LIFTED, holding)
    assert trio.run(lifted, votes, name, proof) == outcome
    assert votes.weighed == ([proof] if votes_tally(proof) else [])
    assert votes.lifted == ([] if lifted_from is None else [lifted_from])


def test_a_tally_of_votes_stands_where_no_rpc_is_asked() -> None:
    votes = FixedVotes(LIFTED, holding=False, urls=())
    assert trio.run(lifted, votes, FULL, BY_VOTES) == BY_VOTES
    assert votes.weighed == [] and votes.lifted == []
    assert trio.run(lifted, None, FULL, BY_VOTES) == BY_VOTES
