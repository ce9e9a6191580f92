"""The second read held to the check's bytes, prefix by prefix (proof.archive.binding)."""

from __future__ import annotations

import hashlib
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.errors import ArchiveInvalid
from tracker.proof.archive import binding
from tracker.proof.archive.binding import CHANGED, PrefixCheck, PrefixDigests

SMALL = 64  # bytes a block in these tests


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=1, max_size=700),
    st.lists(st.integers(0, 700)),
    st.lists(st.integers(0, 700)),
)
def test_the_same_bytes_in_any_pieces_pass_block_by_block(
    data: bytes, first_cuts: list[int], second_cuts: list[int]
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(binding, "BLOCK", SMALL)
        blocks = PrefixDigests()
        for piece in pieces(data, first_cuts):
            blocks.update(piece)
        assert blocks.size == len(data)
        assert len(blocks.digests()) == -(-len(data) // SMALL) * 32
        check = PrefixCheck(blocks.digests(), blocks.size)
        for piece in pieces(data, second_cuts):
            check.update(piece)
        assert check.left_in_block() == 0 and check.read == len(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=2, max_size=700), st.data())
def test_a_changed_byte_is_found_in_its_block_and_bytes_never_read_are_not(
    data: bytes, draw: st.DataObject
) -> None:
    at = draw.draw(st.integers(0, len(data) - 1))
    changed = bytearray(data)
    changed[at] ^= 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(binding, "BLOCK", SMALL)
        blocks = PrefixDigests()
        blocks.update(data)
        check = PrefixCheck(blocks.digests(), blocks.size)
        block_end = min(len(data), (at // SMALL + 1) * SMALL)
        check.update(bytes(changed[: (at // SMALL) * SMALL]))  # the blocks before: the same
        with pytest.raises(ArchiveInvalid, match=CHANGED):
            check.update(bytes(changed[(at // SMALL) * SMALL : block_end]))
        # a second read that stops before the changed block never sees it
        early = PrefixCheck(blocks.digests(), blocks.size)
        early.update(bytes(changed[: (at // SMALL) * SMALL]))
        assert early.left_in_block() == 0


def test_bytes_past_the_checks_read_are_refused_and_the_last_digest_is_the_files() -> None:
    data = os.urandom(1000)
    blocks = PrefixDigests()
    blocks.update(data)
    assert blocks.digests()[-32:] == hashlib.sha256(data).digest() == blocks.sha.digest()
    check = PrefixCheck(blocks.digests(), blocks.size)
    with pytest.raises(ArchiveInvalid, match=CHANGED):
        check.update(data + b"x")
