"""Vote-program instructions decoded to the slot and bank hash they vote for (pure;
docs/architecture.md, "The cluster level").

A vote instruction's data is the bincode of ``VoteInstruction`` (anza-xyz/solana-sdk,
``vote-interface/src/instruction.rs``): a u32 little-endian variant index, then its fields.
The kinds that carry a vote, with the hash they vote for:

- ``Vote(Vote)`` (2) and ``VoteSwitch(Vote, Hash)`` (6): ``Vote { slots: Vec<u64>, hash,
  timestamp: Option<i64> }`` (``vote-interface/src/state/vote_instruction_data.rs``); the
  hash is the bank hash of the last of ``slots``;
- ``UpdateVoteState(VoteStateUpdate)`` (8) and ``UpdateVoteStateSwitch`` (9):
  ``VoteStateUpdate { lockouts: VecDeque<Lockout { slot: u64, confirmation_count: u32 }>,
  root: Option<u64>, hash, timestamp }``; the hash is that of the last lockout's slot;
- ``CompactUpdateVoteState`` (12), ``CompactUpdateVoteStateSwitch`` (13), ``TowerSync``
  (14) and ``TowerSyncSwitch`` (15), always in the compact form (``serde_compact_vote_state_
  update``, ``serde_tower_sync`` in ``vote-interface/src/state/mod.rs``): ``root: u64``
  (``u64::MAX``: none), ``lockout_offsets`` as a ``short_vec`` (a u16 in 1 to 3 LEB128
  bytes, ``short-vec/src/lib.rs``) of ``{offset: varint u64 (serde-varint), confirmation_
  count: u8}`` where each slot is the previous one (first: the root, or 0) plus its offset,
  then ``hash``, ``timestamp: Option<i64>`` and, for a tower sync, ``block_id``.

Bincode: u32/u64 little endian, a ``Vec``/``VecDeque`` length as u64, an ``Option`` a u8 tag
(0 or 1) then the value, a ``Hash`` 32 bytes. The data is hostile: every length is checked
against the bytes left before anything is read, and a vote with no slot, a slot past u64 or
an overlong varint refuse the instruction (:class:`VoteInvalid`). Bytes after the vote are
not read, as the vote program does not read them: it decodes its instruction with
``limited_deserialize`` (``program_utils.rs``: bincode allowing trailing bytes), so a vote
with them lands on chain and counts; refused, one such transaction in a block made every
slot before it unprovable by votes.
"""

from __future__ import annotations

import attrs

from tracker.errors import VoteInvalid

#: The vote program's id.
VOTE_PROGRAM = "Vote111111111111111111111111111111111111111"
#: The largest instruction data a transaction can hold (its packet is 1,232 bytes).
MAX_DATA = 1232
#: Hash-carrying kinds by variant index: (name, form, has a trailing switch hash).
KINDS: dict[int, tuple[str, str, bool]] = {
    2: ("Vote", "vote", False),
    6: ("VoteSwitch", "vote", True),
    8: ("UpdateVoteState", "update", False),
    9: ("UpdateVoteStateSwitch", "update", True),
    12: ("CompactUpdateVoteState", "compact", False),
    13: ("CompactUpdateVoteStateSwitch", "compact", True),
    14: ("TowerSync", "tower", False),
    15: ("TowerSyncSwitch", "tower", True),
}
_U64_MAX = 2**64 - 1


@attrs.frozen
class Voted:
    """One vote: the bank ``hash`` (32 bytes) voted for ``slot`` (the last slot voted)."""

    kind: str
    slot: int
    hash: bytes


class InstructionReader:
    """Bounded bincode reads of one instruction's data."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, count: int) -> bytes:
        """The next ``count`` bytes; VoteInvalid when fewer are left."""
        if count > len(self._data) - self._at:
            raise VoteInvalid(f"ends at byte {len(self._data)}, {count} more wanted")
        self._at += count
        return self._data[self._at - count : self._at]

    def uint(self, size: int) -> int:
        """A little-endian unsigned integer of ``size`` bytes."""
        return int.from_bytes(self.take(size), "little")

    def option(self, size: int) -> int | None:
        """An ``Option`` of a ``size``-byte integer."""
        tag = self.uint(1)
        if tag > 1:
            raise VoteInvalid(f"option tag {tag}")
        return self.uint(size) if tag else None

    def length(self, item_size: int) -> int:
        """A bincode sequence length (u64), checked against the bytes left."""
        count = self.uint(8)
        if count * item_size > len(self._data) - self._at:
            raise VoteInvalid(f"a sequence of {count} items longer than the data")
        return count

    def varint(self) -> int:
        """A ``serde-varint`` u64: LEB128, at most 10 bytes, no trailing zero byte, no bits
        past 64."""
        value = 0
        for shift in range(0, 64, 7):
            byte = self.uint(1)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise VoteInvalid("varint with a trailing zero byte")
                if value > _U64_MAX:
                    raise VoteInvalid("varint past u64")
                return value
        raise VoteInvalid("varint longer than 10 bytes")

    def short_len(self) -> int:
        """A ``short_vec`` length: a u16 in 1 to 3 LEB128 bytes, no alias encodings."""
        value = 0
        for nth in range(3):
            byte = self.uint(1)
            if byte == 0 and nth:
                raise VoteInvalid("short_vec length with a trailing zero byte")
            value |= (byte & 0x7F) << (7 * nth)
            if not byte & 0x80:
                if value > 0xFFFF:
                    raise VoteInvalid("short_vec length past u16")
                return value
        raise VoteInvalid("short_vec length longer than 3 bytes")


def decode_vote(data: bytes) -> Voted | None:
    """The vote ``data`` (a vote-program instruction's data) carries, None for the kinds
    that carry none (authorize, withdraw, ...). Raises VoteInvalid (one line) for data that
    does not decode as its kind."""
    if len(data) > MAX_DATA:
        raise VoteInvalid(f"{len(data)} bytes of instruction data")
    reader = InstructionReader(data)
    kind = KINDS.get(reader.uint(4))
    if kind is None:
        return None
    name, form, switch = kind
    if form == "vote":
        slot = _vote_slots(reader)
    elif form == "update":
        slot = _lockouts(reader)
    else:
        slot = _compact_lockouts(reader)
    voted = reader.take(32)
    reader.option(8)  # timestamp
    if form == "tower":
        reader.take(32)  # block_id
    if switch:
        reader.take(32)  # the switching proof's hash
    # what follows is not read (the module's docstring: trailing bytes land on chain)
    if slot is None:
        raise VoteInvalid(f"{name} votes for no slot")
    return Voted(name, slot, voted)


def _vote_slots(reader: InstructionReader) -> int | None:
    last = None
    for _ in range(reader.length(8)):
        last = reader.uint(8)
    return last


def _lockouts(reader: InstructionReader) -> int | None:
    last = None
    for _ in range(reader.length(12)):
        last = reader.uint(8)
        reader.uint(4)  # confirmation_count
    reader.option(8)  # root
    return last


def _compact_lockouts(reader: InstructionReader) -> int | None:
    root = reader.uint(8)
    slot = 0 if root == _U64_MAX else root
    count = reader.short_len()
    for _ in range(count):
        slot += reader.varint()
        if slot > _U64_MAX:
            raise VoteInvalid("lockout slot past u64")
        reader.uint(1)  # confirmation_count
    return slot if count else None
