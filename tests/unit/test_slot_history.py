"""The status cache's slot deltas held to the SlotHistory sysvar as agave's
``verify_slot_deltas_with_history`` holds them (tracker.proof.formats.slothistory)."""

from __future__ import annotations

import struct

import pytest

from tracker.errors import ArchiveInvalid
from tracker.proof.formats.parsing import run
from tracker.proof.formats.slothistory import (
    check_slot_deltas,
    decode_slot_history,
)
from tracker.proof.formats.statuscache import SlotDeltas, status_cache_parser
from tracker.proof.formats.writing import write_slot_history, write_status_cache

SLOT = 500
_Q = struct.Struct("<Q")


def history(slots: list[int], bank_slot: int = SLOT) -> bytes:
    return write_slot_history(slots, bank_slot + 1)


def deltas(*slots: int) -> SlotDeltas:
    return SlotDeltas(SLOT, frozenset(slots))


def reason(call: object) -> str:
    with pytest.raises(ArchiveInvalid) as caught:
        call()  # type: ignore[operator]
    return caught.value.reason


# -- the rule, as a table -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache", "rooted", "why"),
    [
        ((SLOT, 499, 497, 0), [0, 497, 499, SLOT], None),
        ((SLOT,), [SLOT], None),
        ((SLOT, 498), [497, SLOT], "slot 498 has an entry but is not a root"),
        ((SLOT, 499), [497, 499, SLOT], "no entry for slot 497, a root in"),
        # only the history's newest 300 roots need an entry
        ((SLOT, *range(SLOT - 299, SLOT)), list(range(100, SLOT + 1)), None),
        ((SLOT, *range(SLOT - 298, SLOT)), list(range(100, SLOT + 1)), "no entry for slot 201"),
    ],
)
def test_the_slot_deltas_are_held_to_the_history(
    cache: tuple[int, ...], rooted: list[int], why: str | None
) -> None:
    slot_history = decode_slot_history(history(rooted))
    if why is None:
        check_slot_deltas(deltas(*cache), slot_history)
    else:
        assert why in reason(lambda: check_slot_deltas(deltas(*cache), slot_history))


def test_a_history_whose_newest_slot_is_not_the_banks_is_refused() -> None:
    older = decode_slot_history(write_slot_history([SLOT - 1], SLOT))
    assert "newest slot is 499, not the bank's slot 500" in reason(
        lambda: check_slot_deltas(deltas(SLOT), older)
    )


def test_a_slot_past_the_historys_window_is_not_in_it() -> None:
    late = 3 * 1024 * 1024
    slot_history = decode_slot_history(write_slot_history([late, 5], late + 1))
    assert "slot 5 has an entry but is not a root" in reason(
        lambda: check_slot_deltas(SlotDeltas(late, frozenset({late, 5})), slot_history)
    )


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "ends inside the bits' tag"),
        (b"\x02", "the bits' tag is 2"),
        (b"\x01" + _Q.pack(2**61), "words of bits, more than its"),
        (b"\x01" + _Q.pack(1) + bytes(8) + _Q.pack(64), "ends inside next_slot"),
    ],
)
def test_a_history_bincode_cannot_read_is_refused(data: bytes, why: str) -> None:
    assert why in reason(lambda: decode_slot_history(data))


def test_bits_past_the_historys_length_are_refused() -> None:
    short = b"\x01" + _Q.pack(1) + _Q.pack(2**63) + _Q.pack(8) + _Q.pack(SLOT + 1)
    assert "lies past its 8 bits" in reason(
        lambda: check_slot_deltas(deltas(SLOT), decode_slot_history(short))
    )


def test_the_status_cache_hands_on_the_slots_it_read() -> None:
    read: list[SlotDeltas] = []
    cache = write_status_cache([SLOT, 499, 0])
    run(status_cache_parser(len(cache), SLOT, read.append), cache)
    assert read == [SlotDeltas(SLOT, frozenset({SLOT, 499, 0}))]
    assert decode_slot_history(history([0, 499, SLOT])).next_slot == SLOT + 1
