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
from tracker.proof.cluster.lifting import liftable, required_proof
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
    """A voter whose answer is fixed (what ClusterVotes' lift returns); counts its calls."""

    def __init__(self, answer: Proof | None) -> None:
        self.answer = answer
        self.asked: list[int] = []

    def rpcs(self) -> tuple[str, ...]:
        return ("http://127.0.0.1:1/",)

    def of(self, group: str) -> FixedVotes:
        return self  # one cluster: every group's votes are these

    async def lift(self, slot: int, proof: Proof) -> Proof:
        self.asked.append(slot)
        assert self.answer is not None
        return self.answer


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
