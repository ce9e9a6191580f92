"""Bad manifests get one clear reason, in bounded memory and time, never a crash: agave's own
manifest truncated at every offset, bit-flipped, given huge lengths (docs/architecture.md,
"Proven archives")."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc

import pytest
from archives import build_archive, compress, make_tar, snapshot_entries
from hypothesis import given, settings
from hypothesis import strategies as st
from test_manifest import MANIFEST, NAME_HASH, decode

from tracker.errors import ArchiveInvalid
from tracker.proof.archive.archivecheck import check_stream
from tracker.proof.formats.bankhash import NO_LATTICE_HASH, prove_manifest
from tracker.proof.levels import Level, Proof


def outcome(data: bytes) -> Proof | str:
    """The proof of ``data`` as the manifest of slot 100, or the one-line reason."""
    try:
        return prove_manifest(decode(data), slot=100, base_slot=0, name_hash=NAME_HASH)
    except ArchiveInvalid as exc:
        reason = exc.reason
    assert "\n" not in reason
    assert reason.startswith("manifest: ")
    return reason


def test_truncated_at_every_offset() -> None:
    ends = {}
    for cut in range(len(MANIFEST)):
        ends[cut] = outcome(MANIFEST[:cut])
    assert ends[0] == "manifest: the data ends inside the blockhash queue at byte 0"
    passed = {cut: v for cut, v in ends.items() if not isinstance(v, str)}
    # Only a cut at the end of a field that is optional at the end of the data (agave's
    # default_on_eof) passes: after the bank hash info (1,941 bytes here), after each of the
    # historical roots' two vectors, after lamports_per_signature, the persistence's and the
    # epoch accounts hash's Option tags, after the versioned epoch stakes, and after the
    # lattice hash (before the block id). Without the lattice hash: structure, said so.
    lattice_end = len(MANIFEST) - 33
    stakes_end = lattice_end - 1 - 2048
    db_end = 1941
    expected = [db_end, db_end + 8, db_end + 16, db_end + 24, db_end + 25, db_end + 26]
    assert sorted(passed) == [*expected, stakes_end, lattice_end]
    for cut, proof in passed.items():
        assert isinstance(proof, Proof)
        if cut == lattice_end:
            assert proof.level == Level.MANIFEST
        else:
            assert (proof.level, proof.note) == (Level.STRUCTURE, NO_LATTICE_HASH)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(MANIFEST) * 8 - 1))
def test_any_bit_flip_is_a_reason_or_a_proof(bit: int) -> None:
    flipped = bytearray(MANIFEST)
    flipped[bit // 8] ^= 1 << (bit % 8)
    outcome(bytes(flipped))


#: Offsets of the u64 counts of agave's manifest (blockhash queue, ancestors, hard forks).
COUNTS = (41, 0xA9, 0xF9)


@pytest.mark.parametrize("at", COUNTS)
@pytest.mark.parametrize("count", [2**64 - 1, 2**63, 10**12, 1_000_000])
def test_huge_lengths_are_refused_at_once(at: int, count: int) -> None:
    data = bytearray(MANIFEST)
    data[at : at + 8] = struct.pack("<Q", count)
    tracemalloc.start()
    started = time.process_time()  # CPU, not wall: the host's load does not count
    reason = outcome(bytes(data))
    used = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(reason, str) and " elements of " in reason and "bytes left" in reason
    assert time.process_time() - started < 0.5
    assert used < 1 << 20


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(MANIFEST) - 8), st.integers(0, 2**64 - 1))
def test_any_u64_anywhere_is_a_reason_or_a_proof(at: int, value: int) -> None:
    data = bytearray(MANIFEST)
    data[at : at + 8] = struct.pack("<Q", value)
    started = time.process_time()
    outcome(bytes(data))
    assert time.process_time() - started < 1.0


def test_a_truncated_manifest_member_rejects_the_archive() -> None:
    name = build_archive(400)[0]
    entries = snapshot_entries(400, accounts=1, account_size=1024, seed=0)
    entries = [(n, d[:-3000] if n == "snapshots/400/400" and d else d) for n, d in entries]
    archive = compress(make_tar(entries), "zst")
    with pytest.raises(ArchiveInvalid) as caught:
        check_stream(io.BytesIO(archive).read, name)
    assert caught.value.reason.startswith("manifest: the data ends inside ")


def with_hard_forks(forks: list[tuple[int, int]]) -> bytes:
    """agave's manifest with ``forks`` in place of its own hard forks."""
    at = COUNTS[2]
    own = struct.unpack_from("<Q", MANIFEST, at)[0]
    packed = b"".join(struct.pack("<QQ", slot, count) for slot, count in forks)
    return MANIFEST[:at] + struct.pack("<Q", len(forks)) + packed + MANIFEST[at + 8 + 16 * own :]


def test_millions_of_hard_forks_are_read_in_runs() -> None:
    # Forks at or before the parent slot (99) are counted, not kept; zeros compress to
    # nothing, and one take per fork cost a Python step per 16 bytes (a minute for 30
    # million in an archive of 83 KB). Two million here: seconds of CPU before, now a blink.
    forks = [(0, 0)] * 1_000_000 + [(100, 2)] + [(99, 7)] * 1_000_000 + [(101, 5)]
    data = with_hard_forks(forks)
    started = time.process_time()  # CPU, not wall: the host's load does not count
    m = decode(data)
    assert time.process_time() - started < 0.5
    assert m.counts["hard_forks"] == len(forks)
    assert m.hard_forks == ((100, 2), (101, 5))


def test_hard_forks_after_the_parent_slot_are_kept_up_to_their_bound() -> None:
    kept = [(100 + i, 1) for i in range(65_536)]
    assert decode(with_hard_forks(kept)).hard_forks == tuple(kept)
    with pytest.raises(ArchiveInvalid, match="more than 65536 hard forks after the parent slot"):
        decode(with_hard_forks([*kept, (0, 1), (200_000, 1)]))
