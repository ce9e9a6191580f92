"""The levels an archive is proven to, and the value that says what was proven. Pure.

Each level implies the ones before it (docs/architecture.md, "Proven archives"):

- ``structure``: well formed (the archive check: compression, tar stream, entries);
- ``manifest``: the manifest ``snapshots/{S}/{S}`` decodes; its slot (and an incremental's
  base slot) match the name; the name's hash is base58(BLAKE3-256 of its accounts lattice
  hash); the bank hash recomputed from its fields equals its ``hash``;
- ``accounts``: the lattice hash recomputed from the archive's account storages equals the
  manifest's (fulls only: an incremental's lattice hash is that of the whole state);
- ``cluster``: votes of at least 2/3 of the cluster's active stake carry the bank hash
  (TowerBFT), or a finality certificate of the epoch's stake is for the manifest's block id
  (Alpenglow, after the migration).
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

import attrs


class Level(enum.IntEnum):
    """What an archive is proven to be; a higher level implies every lower one."""

    STRUCTURE = 1
    MANIFEST = 2
    ACCOUNTS = 3
    CLUSTER = 4

    @property
    def label(self) -> str:
        """The level's name as the config, the JSON and the command line spell it."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Level | None:
        """The level named ``text`` (``structure``, ``manifest``, ...), None for anything else."""
        for level in cls:
            if level.label == text:
                return level
        return None


#: The level names, lowest first (config values and command-line choices).
LEVEL_NAMES = tuple(level.label for level in Level)
#: What can lift an archive to ``cluster`` (docs/http-api.md, "The cluster level"): the votes
#: of TowerBFT, or an Alpenglow finality certificate.
CLUSTER_PROOFS = ("votes", "certificate")
#: The validators a group may require its archives to be loadable by (``trust.loadable_by``,
#: docs/http-api.md, "Proven archives"): those whose load-time refusals the manifest shows.
LOADERS = ("agave",)
#: How a refusal for ``trust.loadable_by`` starts (:func:`not_loadable`).
NOT_LOADABLE = "trust.loadable_by "


def required_for(required: Level, *, is_full: bool) -> Level:
    """The level an archive must reach for a group's ``trust.require``: ``accounts`` means
    ``accounts`` for a full and ``manifest`` for an incremental (its own storages cannot prove
    the whole state's lattice hash)."""
    if required == Level.ACCOUNTS and not is_full:
        return Level.MANIFEST
    return required


def checked_for(required: Level) -> Level:
    """The part of ``required`` a check of the bytes shows: ``cluster`` is ``accounts``
    (a full; :func:`required_for` makes it ``manifest`` for an incremental) plus the
    cluster's votes, which no check reads but the RPC's tally adds (docs/architecture.md,
    "The cluster level")."""
    return min(required, Level.ACCOUNTS)


#: The largest :attr:`Proof.epoch_stakes` read back from a file (its kept form of the most
#: vote accounts a manifest's epoch stakes are read for is ~1.2 MB).
MAX_EPOCH_STAKES_BYTES = 4 * 1024**2


@attrs.frozen
class Proof:
    """What was proven of one archive.

    ``snapshot_hash`` is base58(BLAKE3-256 of the manifest's lattice hash) and ``bank_hash``
    the manifest's bank hash, both None below ``manifest``; ``voted_stake`` the fraction of
    the cluster's active stake whose votes carry the bank hash (None when not asked);
    ``note`` says why the archive stops at its level when it could go higher (e.g. "not
    proven: 12000000 accounts over the bound of 10000000"), None otherwise; ``block_id`` the
    manifest's block id (base58, SIMD-0333; None when it has none); ``cluster_proof`` what
    lifted it to ``cluster``: ``votes`` (TowerBFT) or ``certificate`` (an Alpenglow finality
    certificate), None below it but for a certificate short of its stake (``certificate``,
    with the stake behind it: read again, :attr:`tallied`); ``unloadable`` why agave refuses
    to load the archive though it is proven (several account storages for one slot, as
    Firedancer writes them; an invalid vote account in its stakes), None when nothing in it
    says so; ``local_cause`` True when what ``note`` says stopped the proof is this
    tracker's own shortage (its temporary space, its hashing process, its memory), not the
    archive nor its source: the copy is not booked against its source (never written to a
    proof file: a copy read again may be proven); ``epoch_stakes`` the rank map's candidates
    of the manifest's own epoch (the compact form of
    :class:`tracker.proof.formats.alpenglow.EpochVoters`: what a finality certificate of its
    slot is weighed by), None when the manifest holds none; never in the JSON (a cached copy
    keeps it in a file of its own)."""

    level: Level
    snapshot_hash: str | None = None
    bank_hash: str | None = None
    voted_stake: float | None = None
    note: str | None = None
    block_id: str | None = None
    cluster_proof: str | None = None
    unloadable: str | None = None
    local_cause: bool = False
    epoch_stakes: bytes | None = attrs.field(default=None, eq=False, repr=False)

    def meets(self, required: Level, *, is_full: bool) -> bool:
        """True when this proof reaches ``required`` (see :func:`required_for`)."""
        return self.level >= required_for(required, is_full=is_full)

    @property
    def tallied(self) -> bool:
        """True when the cluster's answer for this copy is final: ``cluster``, or a tally of
        the votes below it (a minority stays one). A finality certificate short of its stake
        (``cluster_proof`` ``certificate`` below ``cluster``) is not: one that holds may
        follow, and it is read again after the wait (docs/http-api.md, "The cluster level")."""
        if self.voted_stake is None:
            return False
        return self.level == Level.CLUSTER or self.cluster_proof != "certificate"

    @classmethod
    def from_json(cls, body: object) -> Proof | None:
        """The proof :meth:`to_json` wrote (a file the tracker kept), None for anything
        else: a level it knows, strings of bounded length, a stake in [0, 1]."""
        if not isinstance(body, dict):
            return None
        label = body.get("level")
        level = Level.parse(label) if isinstance(label, str) else None
        keys = ("snapshot_hash", "bank_hash", "note", "block_id", "unloadable")
        texts = [body.get(k) for k in keys]
        if level is None or any(t is not None and not _short(t) for t in texts):
            return None
        stake = body.get("voted_stake")
        if stake is not None and not (isinstance(stake, float) and 0.0 <= stake <= 1.0):
            return None
        kind = body.get("cluster_proof")
        if kind is not None and kind not in CLUSTER_PROOFS:
            return None
        return cls(level, texts[0], texts[1], stake, texts[2], texts[3], kind, texts[4])

    def to_json(self) -> dict[str, Any]:
        """The wire form (``proof`` in the JSON entries; additive keys)."""
        body: dict[str, Any] = {"level": self.level.label}
        if self.snapshot_hash is not None:
            body["snapshot_hash"] = self.snapshot_hash
        if self.bank_hash is not None:
            body["bank_hash"] = self.bank_hash
        if self.voted_stake is not None:
            body["voted_stake"] = self.voted_stake
        if self.note is not None:
            body["note"] = self.note
        if self.block_id is not None:
            body["block_id"] = self.block_id
        if self.cluster_proof is not None:
            body["cluster_proof"] = self.cluster_proof
        if self.unloadable is not None:
            body["unloadable"] = self.unloadable
        return body


def _short(text: object) -> bool:
    return isinstance(text, str) and len(text) <= 400


#: What a check that proves nothing beyond the structure says.
STRUCTURE_ONLY = Proof(Level.STRUCTURE)


def not_loadable(proof: Proof, loadable_by: str | None) -> str | None:
    """Why a group whose validators are ``loadable_by`` (its ``trust.loadable_by``; None:
    any archive goes) refuses the archive proven to ``proof`` (one line), None when it does
    not: ``agave`` refuses what the proof says agave cannot load (``Proof.unloadable``, read
    from the manifest: a proof below ``manifest`` says nothing of it)."""
    if loadable_by == "agave" and proof.unloadable is not None:
        return f"{NOT_LOADABLE}agave: {proof.unloadable}"
    return None


def shortfall(
    proof: Proof, required: Level, *, is_full: bool, loadable_by: str | None = None
) -> str | None:
    """Why a group that requires ``required`` (its ``trust.require``) and archives its
    validators can load (``loadable_by``, :func:`not_loadable`) refuses an archive proven to
    ``proof`` (one line: what its validators cannot load, else the level and the note that
    says why it stops there), None when it takes it: the one decision of every place that
    holds a copy to its group's trust (ranking, cache, local files, ``fetch``)."""
    refused = not_loadable(proof, loadable_by)
    if refused is not None:
        return refused
    if proof.meets(required, is_full=is_full):
        return None
    needed = required_for(required, is_full=is_full)
    why = f": {proof.note}" if proof.note else ""
    return f"proven to {proof.level.label}, {needed.label} required{why}"


class Voter(Protocol):
    """Who asks the cluster's votes (:class:`tracker.proof.cluster.clustervotes.ClusterVotes`)."""

    def rpcs(self) -> tuple[str, ...]:
        """The RPC URLs asked (empty: none is configured, nothing is asked)."""
        ...

    async def lift(self, slot: int, proof: Proof) -> Proof:
        """``proof`` at ``cluster`` when 2/3 of the stake voted (``slot``, its bank hash),
        else with ``voted_stake`` (a tally) or a note saying why not."""
        ...

    async def holds(self, slot: int, proof: Proof) -> bool:
        """True while the tally of votes ``proof`` carries still proves what it did (the
        Alpenglow migration leaves the blocks it was read from as they were)."""
        ...


class Voters(Protocol):
    """Who asks the cluster's votes for each group's archives
    (:class:`tracker.proof.cluster.clustervotes.ClusterVotes`): groups may be different
    clusters, each proven by its own cluster's RPCs only."""

    def of(self, group: str) -> Voter:
        """The voter of ``group``'s archives: it asks that group's cluster's RPCs
        (:meth:`tracker.config.schema.Config.cluster_rpcs`)."""
        ...


#: The longest wait before a copy whose checks keep stopping short for the tracker's own
#: cause is checked again (:func:`own_retry_after`).
OWN_RETRY_MOST = 3600.0


def own_retry_after(tries: int, first: float, most: float = OWN_RETRY_MOST) -> float:
    """Seconds before a copy whose last ``tries`` checks in a row stopped short for the
    tracker's own cause (:attr:`Proof.local_cause`: its hashing process killed, its
    temporary space short; or it could not be read) is checked again: ``first`` after one,
    doubled for each after it, at most ``most`` (never less than ``first``). Each try reads
    the whole archive: a shortage that lasts (the OOM killer at every try of a mainnet full)
    is not met with a whole read every minute, and one that passes is tried again soon. Pure."""
    doublings = min(max(tries - 1, 0), 32)
    return max(first, min(most, first * float(2**doublings)))
