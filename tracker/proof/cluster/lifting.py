"""The cluster level of the copies the cache holds (docs/architecture.md, "The cluster level").

A copy's check proves at most ``accounts`` (``manifest`` for an incremental); the cluster's
votes for its slot and bank hash lift it to ``cluster``. They are asked of the one voter
the composition root passes in (:class:`tracker.proof.cluster.clustervotes.ClusterVotes`, its
tallies and back-off shared with the head reads), of the copy's group's own cluster's RPCs
(``ClusterVotes.of``), never while a refresh waits, except where its
group requires ``cluster``: there a refresh's readers get their last bytes only once the
votes carry the copy (:meth:`tracker.cache.refresh.Refresh.verify`).

:func:`keep_levels` runs for as long as the cache: it checks the files start-up found
unchecked, and then, every :data:`KEEP_EVERY` seconds, checks again the copies a reload put
below their group's level, and asks the votes of each held copy that has no tally yet (a
failure is asked again after the voter's back-off). A tally is recorded with the copy's
digest (the JSON's ``proof``) and kept in its proof file; one that leaves a copy of a group
requiring ``cluster`` below it removes the copy, like a failed check. A held copy's tally of
votes (read back from its proof file after a restart too) is weighed again, and its proof
file written again, once the Alpenglow migration the RPCs report no longer leaves the blocks
it was read from (:func:`lifted`; docs/http-api.md, "Two consensus kinds").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import trio

from tracker.core.digests import below_required
from tracker.core.snapshots import parse_archive_name
from tracker.errors import ArchiveInvalid, RequestError
from tracker.proof.levels import Level, Proof, Voter, Voters, checked_for, required_for
from tracker.proof.records.localcopies import FileIdentity


class GroupRequirement(Protocol):
    """What a refresh's check knows of its group (the cache's
    :class:`tracker.cache.checked.Checking`): the level it requires, who is asked and the
    validators that must be able to load it."""

    @property
    def require(self) -> Level: ...

    @property
    def voter(self) -> Voter | None: ...

    @property
    def loadable_by(self) -> str | None: ...


class HeldCopies(Protocol):
    """The copies a cache holds, as the lifting needs them (the cache's
    :class:`tracker.cache.checked.CheckedFiles`; its methods say what each does)."""

    @property
    def voter(self) -> Voters | None: ...

    def held(self) -> list[tuple[str, str, Proof]]: ...

    def recheck_below(self) -> None: ...

    async def confirm_held(
        self, identities: Callable[[str, list[str]], Awaitable[dict[str, FileIdentity | None]]]
    ) -> None: ...

    async def recheck(
        self,
        path_for: Callable[[str, str], Awaitable[str]],
        report_size: Callable[[], Awaitable[None]],
    ) -> None: ...

    async def relevel(self, group: str, name: str, proof: Proof, path: str, was: Proof) -> bool: ...


#: How often the held copies are looked at (seconds).
KEEP_EVERY = 1.0


def votes_tally(proof: Proof) -> bool:
    """True when ``proof`` carries a tally of the votes for its slot (TowerBFT: ``cluster``
    by votes, or a minority): a fact that holds only while the Alpenglow migration leaves
    the blocks it was read from (docs/http-api.md, "Two consensus kinds"). Pure."""
    return proof.voted_stake is not None and proof.cluster_proof != "certificate"


def unlifted(proof: Proof, *, is_full: bool) -> Proof:
    """``proof`` as the archive's check left it, its tally of votes taken away: at most
    ``accounts`` for a full, ``manifest`` for an incremental (what the votes lifted it from,
    :func:`liftable`). Pure."""
    level = min(proof.level, required_for(Level.ACCOUNTS, is_full=is_full))
    return attrs.evolve(proof, level=level, voted_stake=None, note=None, cluster_proof=None)


def liftable(proof: Proof, name: str) -> bool:
    """True when the votes may lift ``proof`` of the archive ``name`` and were not counted
    yet: it reaches what a check shows of ``cluster`` (``accounts``; ``manifest`` for an
    incremental), has a bank hash, and no final tally (:attr:`Proof.tallied`). Pure."""
    parsed = parse_archive_name(name)
    if parsed is None or proof.bank_hash is None or proof.tallied:
        return False
    needed = required_for(checked_for(Level.CLUSTER), is_full=parsed.is_full)
    return needed <= proof.level < Level.CLUSTER


async def lifted(voter: Voter | None, name: str, proof: Proof) -> Proof:
    """``proof`` of the archive ``name`` after the cluster's votes (as it is when they
    cannot lift it; with the voter's note when no RPC is configured). A tally of votes it
    carries (:func:`votes_tally`, a cached copy's read back from its proof file too) is
    weighed again from what the check proved once the migration no longer leaves its
    blocks as read (``voter.holds``)."""
    parsed = parse_archive_name(name)
    if voter is None or parsed is None:
        return proof
    if votes_tally(proof) and voter.rpcs():
        if await voter.holds(parsed.slot, proof):
            return proof
        proof = unlifted(proof, is_full=parsed.is_full)
    if not liftable(proof, name):
        return proof
    return await voter.lift(parsed.slot, proof)


async def required_proof(checking: GroupRequirement, name: str, proof: Proof) -> Proof:
    """``proof`` of a refresh of ``name`` that passed its check, once it meets its group's
    ``trust.require`` (``checking.require``) and its ``trust.loadable_by``; ArchiveInvalid
    (one line) when it does not. For ``cluster``, past what the check shows, the votes are
    asked first (within ``cluster_proof.deadline``): anything but a tally of 2/3 (a
    minority, an RPC that failed) leaves it below."""
    require, loadable_by = checking.require, checking.loadable_by
    below = below_required(proof, checked_for(require), name, loadable_by=loadable_by)
    if below is None and require > checked_for(require):
        proof = await lifted(checking.voter, name, proof)
        below = below_required(proof, require, name, loadable_by=loadable_by)
    if below is not None:
        raise ArchiveInvalid(below)
    return proof


async def keep_levels(
    checked: HeldCopies,
    path_for: Callable[[str, str], Awaitable[str]],
    identities: Callable[[str, list[str]], Awaitable[dict[str, FileIdentity | None]]],
    report_size: Callable[[], Awaitable[None]],
    *,
    every: float = KEEP_EVERY,
) -> None:
    """Forget the held copies gone or replaced since their checks, check the files
    start-up found unchecked, then keep every held copy at its group's level (the
    module's docstring), until cancelled (``path_for(group, name)``: the copy's
    path, RequestError when it may not be read; ``identities``: as
    :meth:`HeldCopies.confirm_held` takes it; both look at the directory off the event
    loop; ``report_size()``: a copy was removed)."""
    while True:
        await checked.confirm_held(identities)  # a copy gone or replaced: checked again
        checked.recheck_below()
        await checked.recheck(path_for, report_size)
        await lift_held(checked, path_for, report_size)
        await trio.sleep(every)


async def lift_held(
    checked: HeldCopies,
    path_for: Callable[[str, str], Awaitable[str]],
    report_size: Callable[[], Awaitable[None]],
) -> None:
    """Ask the votes of every held copy they may lift, of its group's cluster's RPCs (one
    after another: the voter keeps its tallies per slot and bank hash, and backs off a
    failure), and weigh again each whose tally of votes the migration no longer leaves
    (:func:`lifted`); a copy whose tally is below its group's level now is removed."""
    voters = checked.voter
    for group, name, proof in checked.held():
        # each copy's votes are its group's own cluster's (its rpc, else the top-level one)
        voter = voters.of(group) if voters is not None else None
        asks = voter is not None and bool(voter.rpcs())
        if not proof.tallied and not (asks and liftable(proof, name)):
            continue
        now = await lifted(voter, name, proof)
        try:
            path = await path_for(group, name)
        except RequestError:  # refused, or the directory hangs: the next round again
            continue
        # ``proof``: what the copy held was; another promoted meanwhile is not told
        if not await checked.relevel(group, name, now, path, proof):
            await report_size()
