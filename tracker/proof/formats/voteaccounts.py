"""Whether agave loads a vote account of a manifest's stakes (pure; docs/http-api.md,
"Proven archives", "What agave refuses at load").

Since anza-xyz/agave#13875 (2026-07, in 4.3) a ``VoteAccount`` is deserialized through
``VoteAccount::try_from`` (agave ``vote/src/vote_account.rs``), and an invalid one in a
snapshot is a load error instead of being dropped. It is valid when its owner is the vote
program and its data parses as agave's ``VoteStateView`` (``vote/src/vote_state_view.rs``,
``VoteStateFrame::try_new``; the frames in ``vote/src/vote_state_view/frame_v1_14_11.rs``,
``frame_v3.rs``, ``frame_v4.rs`` and ``field_frames.rs``):

- a u32 version: 0 (``V0_23_5``) and anything past 3 are refused; 1 ``V1_14_11``, 2 ``V3``,
  3 ``V4``;
- V1_14_11 and V3: the node, the withdrawer (32 bytes each) and a u8 commission; V4: the node,
  the withdrawer, two collectors, two u16 commissions, a u64, then the BLS key's option (a tag
  0 or 1, 48 bytes when 1);
- the votes: a u64 count below 256, of 12-byte lockouts (V1_14_11) or 13-byte landed votes;
- the root slot: a tag 0 or 1, 8 bytes when 1;
- the authorized voters: a u64 count below 256, 40 bytes each;
- V1_14_11 and V3: the prior voters' 1,545 bytes;
- the epoch credits: a u64 count below 256, 24 bytes each; the last timestamp's 16 bytes;
- all of it within the data (trailing bytes are allowed).
"""

from __future__ import annotations

import base58

#: The vote program's id (its 32 bytes).
VOTE_PROGRAM_ID = base58.b58decode("Vote111111111111111111111111111111111111111")
_PRIOR_VOTERS = 1545
_TIMESTAMP = 16


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def u64(self) -> int | None:
        if self.at + 8 > len(self.data):
            self.at += 8
            return None
        value = int.from_bytes(self.data[self.at : self.at + 8], "little")
        self.at += 8
        return value

    def tag(self) -> int | None:
        if self.at >= len(self.data):
            self.at += 1
            return None
        value = self.data[self.at]
        self.at += 1
        return value


def vote_state_problem(data: bytes) -> str | None:
    """Why agave's ``VoteStateView::try_new`` refuses ``data`` (one line), None when it
    parses."""
    if len(data) < 4:
        return "its data is too small"
    version = int.from_bytes(data[:4], "little")
    if version == 0:
        return "its vote state is of the old version 0.23.5"
    if version > 3:
        return f"its vote state has the unknown version {version}"
    frame = _Cursor(data)
    if version == 3:
        frame.at = 4 + 4 * 32 + 2 + 2 + 8
        tag = frame.tag()
        if tag is not None and tag > 1:
            return "its BLS key's option tag is not 0 or 1"
        frame.at += 48 if tag == 1 else 0
    else:
        frame.at = 4 + 32 + 32 + 1
    vote_size = 12 if version == 1 else 13
    for name, size in (("votes", vote_size), ("root slot", 0), ("authorized voters", 40)):
        if name == "root slot":
            tag = frame.tag()
            if tag is not None and tag > 1:
                return "its root slot's option tag is not 0 or 1"
            frame.at += 8 if tag == 1 else 0
            continue
        count = frame.u64()
        if count is not None and count > 255:
            return f"its {name} count {count} is past 255"
        frame.at += (count or 0) * size
    if version != 3:
        frame.at += _PRIOR_VOTERS
    count = frame.u64()
    if count is not None and count > 255:
        return f"its epoch credits count {count} is past 255"
    frame.at += (count or 0) * 24 + _TIMESTAMP
    if frame.at > len(data):
        return "its data is too small for its vote state"
    return None


def vote_account_problem(owner: bytes, data: bytes) -> str | None:
    """Why agave refuses a vote account of the stakes with ``owner`` and ``data`` (one line),
    None when it loads it."""
    if owner != VOTE_PROGRAM_ID:
        return f"its owner {base58.b58encode(owner).decode()} is not the vote program"
    return vote_state_problem(data)
