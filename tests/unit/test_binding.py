"""The second read held to the check's bytes, block by block (proof.archive.binding)."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.errors import ArchiveInvalid
from tracker.proof.archive import binding
from tracker.proof.archive.binding import CHANGED, BlockCheck, BlockDigests

SMALL = 64  # bytes a block in these tests


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def kept(data: bytes, cuts: list[int], switch_at: int | None, apart: bool) -> BlockDigests:
    """The check's read of ``data`` in the pieces ``cuts`` make, told to switch to each
    block's BLAKE3 once ``switch_at`` bytes were given (None: never)."""
    switch = threading.Event()
    blocks = BlockDigests(switch, apart=apart)
    given = 0
    for piece in pieces(data, cuts):
        if switch_at is not None and given >= switch_at:
            switch.set()
        blocks.update(piece)
        given += len(piece)
    return blocks


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=1, max_size=700),
    st.lists(st.integers(0, 700)),
    st.lists(st.integers(0, 700)),
    st.one_of(st.none(), st.integers(0, 700)),
    st.booleans(),
)
def test_the_same_bytes_in_any_pieces_pass_block_by_block(
    data: bytes,
    first_cuts: list[int],
    second_cuts: list[int],
    switch_at: int | None,
    apart: bool,
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(binding, "BLOCK", SMALL)
        blocks = kept(data, first_cuts, switch_at, apart)
        digests = blocks.digests()
        assert blocks.size == len(data)
        assert len(digests) == -(-len(data) // SMALL) * 32
        assert blocks.sha.digest() == hashlib.sha256(data).digest()  # the file's, published
        for number in range(-(-len(data) // SMALL)):
            digest = digests[number * 32 : (number + 1) * 32]
            if number < blocks.sha_blocks:  # a prefix's SHA-256
                assert digest == hashlib.sha256(data[: (number + 1) * SMALL]).digest()
            else:  # the block's own BLAKE3, from the first block that began once switched
                assert switch_at is not None and number * SMALL >= switch_at
                assert digest == blake3.blake3(data[number * SMALL : (number + 1) * SMALL]).digest()
        check = BlockCheck(digests, blocks.size, blocks.sha_blocks)
        for piece in pieces(data, second_cuts):
            check.update(piece)
        assert check.left_in_block() == 0 and check.read == len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=2, max_size=700), st.one_of(st.none(), st.integers(0, 700)), st.data())
def test_a_changed_byte_is_found_in_its_block_and_bytes_never_read_are_not(
    data: bytes, switch_at: int | None, draw: st.DataObject
) -> None:
    at = draw.draw(st.integers(0, len(data) - 1))
    changed = bytearray(data)
    changed[at] ^= 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(binding, "BLOCK", SMALL)
        blocks = kept(data, list(range(0, 700, 50)), switch_at, apart=False)
        first = (blocks.digests(), blocks.size, blocks.sha_blocks)
        check = BlockCheck(*first)
        block_end = min(len(data), (at // SMALL + 1) * SMALL)
        check.update(bytes(changed[: (at // SMALL) * SMALL]))  # the blocks before: the same
        with pytest.raises(ArchiveInvalid, match=CHANGED):
            check.update(bytes(changed[(at // SMALL) * SMALL : block_end]))
        # a second read that stops before the changed block never sees it
        early = BlockCheck(*first)
        early.update(bytes(changed[: (at // SMALL) * SMALL]))
        assert early.left_in_block() == 0


def test_bytes_past_the_checks_read_are_refused_either_way() -> None:
    data = os.urandom(1000)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(binding, "BLOCK", SMALL)
        for switch_at in (None, 0, 500):
            blocks = kept(data, [100, 600], switch_at, apart=True)
            check = BlockCheck(blocks.digests(), blocks.size, blocks.sha_blocks)
            with pytest.raises(ArchiveInvalid, match=CHANGED):
                check.update(data + b"x")


def test_a_check_never_switched_keeps_its_prefixes_the_last_one_the_files_sha256() -> None:
    data = os.urandom(3 * binding.BLOCK // 2)
    blocks = BlockDigests(threading.Event(), apart=True)
    blocks.update(data)
    digests = blocks.digests()
    assert blocks.sha_blocks == 2
    assert digests[:32] == hashlib.sha256(data[: binding.BLOCK]).digest()
    assert digests[32:] == hashlib.sha256(data).digest() == blocks.sha.digest()
    assert not [t for t in threading.enumerate() if t.name == "archive-check-bind"]


def test_the_thread_apart_ends_when_the_check_stops_early() -> None:
    switch = threading.Event()
    switch.set()
    blocks = BlockDigests(switch, apart=True)
    blocks.update(os.urandom(binding.BLOCK // 2))
    assert [t for t in threading.enumerate() if t.name == "archive-check-bind"]
    blocks.close()  # a check that failed: no digests asked for
    assert not [t for t in threading.enumerate() if t.name == "archive-check-bind"]


def test_a_switch_cleared_again_stops_the_blocks_blake3_and_binds_nothing() -> None:
    # the proof stopped (over its bound): no second read comes, so the blocks' BLAKE3 is not
    # taken any more, and the digests, left unfinished, hold no read to anything
    data = os.urandom(1000)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(binding, "BLOCK", SMALL)
        switch = threading.Event()
        switch.set()
        blocks = BlockDigests(switch, apart=False)
        blocks.update(data[:200])
        taken = blocks._taken
        assert taken == 200
        switch.clear()
        blocks.update(data[200:])
        assert blocks._taken == taken  # nothing more hashed
        assert blocks.sha.digest() == hashlib.sha256(data).digest()  # the SHA-256 whole
        assert blocks.digests() == b""
        check = BlockCheck(blocks.digests(), blocks.size, blocks.sha_blocks)
        with pytest.raises(ArchiveInvalid, match=CHANGED):
            check.update(data)


def test_blocks_the_second_read_hashes_on_several_threads_are_the_checks() -> None:
    # real 8 MiB blocks in the 4 MiB pieces the second read reads: large enough for the
    # blake3 package to split them over its threads (BlockCheck), against the check's
    # digests taken on one thread (BlockDigests), the last block part of one
    data = os.urandom(2 * binding.BLOCK + binding.BLOCK // 3)
    blocks = kept(data, list(range(0, len(data), 1 << 20)), 0, apart=False)
    digests = blocks.digests()
    assert digests[32:64] == blake3.blake3(data[binding.BLOCK : 2 * binding.BLOCK]).digest()

    def read_again(raw: bytes) -> BlockCheck:
        check = BlockCheck(digests, len(data), blocks.sha_blocks)
        for piece in pieces(raw, list(range(0, len(raw), 4 << 20))):
            check.update(piece)
        return check

    assert read_again(data).read == len(data)
    changed = bytearray(data)
    changed[binding.BLOCK + 12345] ^= 1  # in the second block
    with pytest.raises(ArchiveInvalid, match=CHANGED):
        read_again(bytes(changed))
