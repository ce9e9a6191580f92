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
from tracker.proof.formats.bincode import Reader
from tracker.proof.formats.manifest import MAX_EPOCHS, MAX_STORAGES
from tracker.proof.formats.parsing import ParserOf
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


def count_at(field: str) -> int:
    """Where agave's manifest holds the count read for ``field`` (the reader's name of it)."""
    seen: dict[str, int] = {}
    real = Reader.count

    def count(self: Reader, element: int, bound: int | None = None) -> ParserOf[int]:
        seen.setdefault(self.field, self.at)
        return (yield from real(self, element, bound))

    Reader.count = count  # type: ignore[method-assign]
    try:
        decode(MANIFEST)
    finally:
        Reader.count = real  # type: ignore[method-assign]
    return seen[field]


def with_more(field: str, added: int, element: bytes) -> bytes:
    """agave's manifest with ``added`` more ``element`` s at the start of the sequence whose
    count is read for ``field``."""
    at = count_at(field)
    own = struct.unpack_from("<Q", MANIFEST, at)[0]
    return MANIFEST[:at] + struct.pack("<Q", own + added) + element * added + MANIFEST[at + 8 :]


def test_slots_of_no_storage_are_bounded_as_storages() -> None:
    # Each slot of the storage list is a Python step, and one listing no storage (16 zero
    # bytes) counted against nothing: 30 million in an archive of 15 KB took 49 s of a core
    # and passed. As many slots as storages at most.
    data = with_more("the account storage list", MAX_STORAGES, bytes(16))
    started = time.process_time()
    with pytest.raises(ArchiveInvalid, match=f"at most {MAX_STORAGES}"):
        decode(data)
    assert time.process_time() - started < 0.5  # refused at its count


@pytest.mark.parametrize(
    "field", ["the epoch stakes", "the versioned epoch stakes", "the stakes' vote accounts"]
)
def test_epochs_and_vote_accounts_are_bounded(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty epoch is 72 zero bytes a dozen Python steps read (7 million in an archive of
    # 16 KB took 141 s of a core), an empty vote account 97 (a million: 5 s). Epochs are
    # bounded each, vote accounts in all of a manifest's stakes.
    import tracker.proof.formats.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "MAX_VOTE_ACCOUNTS", 40)
    element = {"the stakes' vote accounts": bytes(97), "the epoch stakes": bytes(72)}
    if field == "the versioned epoch stakes":  # an epoch, its variant 0, empty stakes
        element[field] = bytes(8 + 4 + 64)
    added = MAX_EPOCHS + 1 if "epoch" in field else 41
    with pytest.raises(ArchiveInvalid, match=r"elements at byte \d+, at most"):
        decode(with_more(field, added, element[field]))
    assert decode(with_more(field, 1, element[field])).slot == 100  # within the bound


def test_storages_agave_loads_one_a_slot_of_are_found_in_bounded_time() -> None:
    # A set, a Counter and a sort of Python tuples took ~860 MB and 26 s for the 4 million
    # storages a manifest may list (a forger names the archive by the lattice hash it
    # wrote). In numpy: the slot with the most distinct storages, the lowest of a tie.
    from array import array

    import attrs

    from tracker.proof.formats.bankhash import unloadable
    from tracker.proof.formats.manifest import StorageList

    base = decode(MANIFEST)

    def said(storages: list[tuple[int, int, int]]) -> str | None:
        entries = array("Q", [v for storage in storages for v in storage])
        return unloadable(attrs.evolve(base, storages=StorageList(entries)))

    assert said([(5, 1, 10), (5, 1, 20), (3, 1, 10)]) is None  # listed twice: one
    assert said([(7, 1, 1), (7, 2, 1), (3, 1, 1), (3, 2, 1)]) == (
        "agave cannot load it: 2 account storages for slot 3 (agave loads one a slot;"
        " Firedancer writes several)"
    )
    import numpy as np

    rows = np.zeros((1_000_001, 3), dtype=np.uint64)  # a million slots, one storage each
    rows[:-1, 0] = np.arange(1_000_000)
    rows[-1] = (999_999, 1, 1)  # and a second one in the last slot
    manifest = attrs.evolve(base, storages=StorageList(array("Q", rows.tobytes())))
    started = time.process_time()
    reason = unloadable(manifest)
    assert time.process_time() - started < 2.0  # the Python sets took ~6 s here
    assert reason is not None and "2 account storages for slot 999999" in reason
