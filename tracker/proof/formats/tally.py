"""The cluster's votes for one slot, read from RPC answers and weighed by stake (pure;
docs/architecture.md, "The cluster level").

A ``getBlock`` answer with ``"encoding": "json"`` gives each transaction as agave's
``EncodedTransactionWithStatusMeta`` (anza-xyz/agave, ``transaction-status-client-types/
src/lib.rs``): ``{"transaction": {"signatures": [...], "message": {"accountKeys": [base58,
...], "instructions": [{"programIdIndex": n, "accounts": [n, ...], "data": base58}, ...],
...}}, "meta": {"err": null | ..., "loadedAddresses": {"writable": [...], "readonly":
[...]}, ...}, "version": "legacy" | 0}``. The instruction data is raw (base58 of the bytes
the vote program ran), decoded here by :func:`tracker.proof.formats.votes.decode_vote`; the vote
account is the instruction's first account. Only transactions that succeeded (``err``
null) count: the vote program checked the vote account's authorized voter signed them.

``getVoteAccounts`` gives ``current`` and ``delinquent`` lists of ``{"votePubkey",
"activatedStake", ...}``: the stake of the current epoch, never the archive's own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

import attrs
import base58

from tracker.errors import VoteInvalid
from tracker.proof.formats.votes import MAX_DATA, VOTE_PROGRAM, decode_vote

#: The longest base58 text of an instruction's data decoded (1,232 bytes are ~1,685).
MAX_DATA_CHARS = 2 * MAX_DATA
#: Account keys (static and loaded) one transaction may name (a u8 index).
MAX_KEYS = 256
#: Instructions of one transaction looked at (a 1,232-byte packet holds far fewer).
MAX_INSTRUCTIONS = 256
#: The longest public key text accepted (base58 of 32 bytes is at most 44 characters).
MAX_KEY_CHARS = 64
#: Voters that hold no stake remembered per slot (they count nothing; the note counts them).
MAX_UNKNOWN_VOTERS = 10_000
_U64_MAX = 2**64 - 1


@attrs.frozen
class VoteSeen:
    """A vote of ``voter`` (a vote account) for ``hash`` (32 bytes) at ``slot``."""

    voter: str
    slot: int
    hash: bytes


def transaction_votes(entry: object) -> list[VoteSeen]:
    """The votes of one transaction of a ``getBlock`` answer (json encoding); [] for a
    transaction that failed or holds no vote. Raises VoteInvalid (one line) for an entry
    that is not one or a vote instruction whose data does not decode."""
    if not isinstance(entry, dict):
        raise VoteInvalid("a transaction that is not an object")
    meta = entry.get("meta")
    if not isinstance(meta, dict) or meta.get("err") is not None:
        return []  # failed (or no status: nothing says it ran)
    transaction = entry.get("transaction")
    message = transaction.get("message") if isinstance(transaction, dict) else None
    if not isinstance(message, dict):
        raise VoteInvalid("a transaction without a message (not the json encoding)")
    keys = _keys(message.get("accountKeys"), meta.get("loadedAddresses"))
    instructions = message.get("instructions")
    if not isinstance(instructions, list) or len(instructions) > MAX_INSTRUCTIONS:
        raise VoteInvalid("a message without a list of instructions")
    votes = []
    for instruction in instructions:
        seen = _instruction_vote(instruction, keys)
        if seen is not None:
            votes.append(seen)
    return votes


def _keys(static: object, loaded: object) -> list[str]:
    keys = _key_list(static)
    if isinstance(loaded, dict):  # v0: the keys its lookup tables loaded, writable first
        keys += _key_list(loaded.get("writable", [])) + _key_list(loaded.get("readonly", []))
    if len(keys) > MAX_KEYS:
        raise VoteInvalid(f"a transaction of {len(keys)} account keys")
    return keys


def _key_list(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_KEYS:
        raise VoteInvalid("account keys that are not a list of at most 256")
    if not all(isinstance(k, str) and 0 < len(k) <= MAX_KEY_CHARS for k in value):
        raise VoteInvalid("an account key that is not a public key")
    return list(value)


def _index(value: object, keys: list[str]) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < len(keys):
        raise VoteInvalid(f"an account index {str(value)[:20]} out of the account keys")
    return keys[value]


def _instruction_vote(instruction: object, keys: list[str]) -> VoteSeen | None:
    if not isinstance(instruction, dict):
        raise VoteInvalid("an instruction that is not an object")
    if _index(instruction.get("programIdIndex"), keys) != VOTE_PROGRAM:
        return None
    accounts, data = instruction.get("accounts"), instruction.get("data")
    if not isinstance(accounts, list) or not accounts:
        raise VoteInvalid("a vote instruction without accounts")
    voter = _index(accounts[0], keys)
    if not isinstance(data, str) or len(data) > MAX_DATA_CHARS:
        raise VoteInvalid("vote instruction data that is not base58 of at most 1232 bytes")
    try:
        raw = base58.b58decode(data)
    except ValueError as exc:
        raise VoteInvalid("vote instruction data that is not base58") from exc
    voted = decode_vote(raw)
    return None if voted is None else VoteSeen(voter, voted.slot, voted.hash)


def stake_entry(entry: object) -> tuple[str, int] | None:
    """(vote account, activated stake) of one ``getVoteAccounts`` entry; None for an entry
    that is not one (it counts nothing)."""
    if not isinstance(entry, dict):
        return None
    key, stake = entry.get("votePubkey"), entry.get("activatedStake")
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS:
        return None
    if not isinstance(stake, int) or isinstance(stake, bool) or not 0 <= stake <= _U64_MAX:
        return None
    return key, stake


@attrs.frozen
class Tally:
    """The stake behind the votes for one slot: ``voted`` for the bank hash asked about,
    ``other`` for another hash only, of ``total`` active stake; ``unknown`` vote accounts
    that voted but hold no stake in ``getVoteAccounts`` (they count nothing)."""

    voted: int
    other: int
    total: int
    unknown: int = 0

    @property
    def fraction(self) -> float:
        """``voted`` as a fraction of ``total`` (0 when nothing is staked)."""
        return self.voted / self.total if self.total else 0.0

    @property
    def other_fraction(self) -> float:
        """``other`` as a fraction of ``total``."""
        return self.other / self.total if self.total else 0.0

    @property
    def supermajority(self) -> bool:
        """True when ``voted`` is at least 2/3 of ``total`` (compared in integers)."""
        return self.total > 0 and 3 * self.voted >= 2 * self.total

    @property
    def needed(self) -> str:
        """What :attr:`supermajority` asks for, in words."""
        return "2/3 needed"

    def describe(self) -> str:
        """One line: how much stake voted the hash, another hash, and unknown voters."""
        text = f"{self.fraction:.1%} of the stake voted the bank hash"
        if self.other:
            text += f", {self.other_fraction:.1%} voted another hash"
        if self.unknown:
            text += f", {self.unknown} voters hold no stake"
        return text


def tally(
    votes: Iterable[VoteSeen], slot: int, bank_hash: bytes, stakes: Mapping[str, int]
) -> Tally:
    """Weigh the votes for ``slot`` by ``stakes``: each vote account counts once, for
    ``bank_hash`` when its votes carry it, for another hash when they carry only others; one
    that voted both counts nothing (no evidence for either); at most
    :data:`MAX_UNKNOWN_VOTERS` voters without stake are counted."""
    seen = SlotVotes(slot, bank_hash, stakes)
    seen.add(votes)
    return seen.tally()


class SlotVotes:
    """The votes for one slot read so far, as :func:`tally` weighs them: each voter kept once
    per side (the bank hash, another hash), however often the blocks repeat its vote, and at
    most :data:`MAX_UNKNOWN_VOTERS` voters without stake. What it holds is bounded by the
    stakes, not by the votes read: a liar's 64 MiB block repeats one vote ~500,000 times.
    One block is folded into its own (:meth:`for_block`) as it is decoded, and merged
    (:meth:`merge`) only once it was read whole. :meth:`add` and :meth:`merge` may be
    called from several worker threads at once."""

    def __init__(self, slot: int, bank_hash: bytes, stakes: Mapping[str, int]) -> None:
        self._slot, self._bank_hash, self._stakes = slot, bank_hash, stakes
        #: The voters kept for the bank hash, for another hash, and those without stake
        #: (read by :meth:`merge` of another fold; changed only under the lock).
        self.for_hash: set[str] = set()
        self.for_other: set[str] = set()
        self.unknown_voters: set[str] = set()
        self._lock = threading.Lock()

    def for_block(self) -> SlotVotes:
        """An empty fold of the same slot, bank hash and stakes, for one block's votes: a
        block's votes are never held as a list (a liar's 64 MiB block holds ~500,000, some
        100 MiB of objects while it is decoded), and what of a block that fails to parse
        was read counts nothing until :meth:`merge` (docs/http-api.md, "Limits")."""
        return SlotVotes(self._slot, self._bank_hash, self._stakes)

    def merge(self, block: SlotVotes) -> None:
        """Count in a block's fold (:meth:`for_block`, read whole) as :meth:`add` would its
        votes: its voters without stake kept while fewer than :data:`MAX_UNKNOWN_VOTERS`
        are (those past it would count nothing)."""
        with self._lock:
            dropped: set[str] = set()
            for voter in block.unknown_voters - self.unknown_voters:
                if len(self.unknown_voters) < MAX_UNKNOWN_VOTERS:
                    self.unknown_voters.add(voter)
                else:
                    dropped.add(voter)
            self.for_hash |= block.for_hash - dropped
            self.for_other |= block.for_other - dropped

    def add(self, votes: Iterable[VoteSeen]) -> None:
        """Count ``votes`` in (those for other slots are passed over)."""
        with self._lock:
            for vote in votes:
                if vote.slot != self._slot:
                    continue
                voter = vote.voter
                if voter not in self._stakes and voter not in self.unknown_voters:
                    if len(self.unknown_voters) >= MAX_UNKNOWN_VOTERS:
                        continue  # it would count nothing; the note's count stops here
                    self.unknown_voters.add(voter)
                (self.for_hash if vote.hash == self._bank_hash else self.for_other).add(voter)

    @property
    def voters(self) -> int:
        """The voters kept (on either side)."""
        with self._lock:
            return len(self.for_hash | self.for_other)

    def tally(self) -> Tally:
        """The stake behind the votes added so far."""
        with self._lock:
            both = self.for_hash & self.for_other
            for_hash, for_other = self.for_hash - both, self.for_other - both
        stakes = self._stakes
        return Tally(
            voted=sum(stakes.get(v, 0) for v in for_hash),
            other=sum(stakes.get(v, 0) for v in for_other),
            total=sum(stakes.values()),
            unknown=sum(1 for v in for_hash | for_other if v not in stakes),
        )
