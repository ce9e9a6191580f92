"""The accounts level: the lattice hash recomputed from account storages as they stream by."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from unittest import mock

import numpy as np
import pytest
from agave_storages import Storage, expected_lt_hash, feed, storages
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts import kepthashes
from tracker.proof.accounts.accounthash import LocalSum
from tracker.proof.accounts.accountsproof import AccountsProof
from tracker.proof.accounts.accountsprover import NO_LT_HASH, StoragesProver
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.formats import storages as storage_format
from tracker.proof.formats.manifest import ManifestDecoder
from tracker.proof.formats.parsing import run
from tracker.proof.formats.writing import (
    Account,
    lattice_of_slots,
    write_manifest,
    write_storage,
)
from tracker.proof.levels import Level, Proof

pytestmark = pytest.mark.usefixtures("bookkeeping_both_ways")

Members = dict[str, bytes]


#: The second read's pieces where the bookkeeping runs in scan lanes (``bookkeeping_both_ways``
#: other than inline): each piece is one lane job, a hand-over between two threads. Records
#: (136 bytes and more) still cross several piece ends each, at every offset modulo 8 (61 is
#: odd), and a storage is still dozens of jobs through its lane's queue of four. In 5-byte
#: pieces every storage read again was hundreds of hand-overs, most of a lane variant's time,
#: for what the inline variant checks of every example: the parser's crossing of every end,
#: the same code whichever thread runs it.
LANE_PIECE = 61
#: The second read's pieces unless a test says (:func:`second_read_by_way` sets it).
_default_piece = [5]


@pytest.fixture(autouse=True)
def second_read_by_way(bookkeeping_both_ways: str) -> Iterator[None]:
    """The second read in 5-byte pieces inline, in :data:`LANE_PIECE` ones in scan lanes
    (:func:`reread_from` without its ``piece``); a module that imports it runs so too."""
    _default_piece[0] = 5 if bookkeeping_both_ways == "inline" else LANE_PIECE
    try:
        yield
    finally:
        _default_piece[0] = 5


def reread_from(
    members: Members, piece: int | None = None
) -> Callable[[str, int], Iterable[bytes]]:
    """The second read of ``members`` in pieces of ``piece`` bytes (default: 5 inline,
    records cross every end, the chunking's own tests; :data:`LANE_PIECE` in scan lanes; the
    spill's and the budget's read larger pieces, each piece being one lane job)."""
    size = _default_piece[0] if piece is None else piece

    def reread(name: str, start: int) -> Iterable[bytes]:
        data = members[name]
        return (data[at : at + size] for at in range(start, len(data), size))

    return reread


class Lending(LocalSum):
    """A summer that has room for a batch when ``lends()`` says so (a hashing process with a
    free slot): the first read hashes ahead what it lends room for; counts what it hashed."""

    def __init__(self, lends: Callable[[], bool] = lambda: True) -> None:
        super().__init__()
        self.lends = lends
        self.added = self.taken_out = 0

    def room(self, size: int, negative: bool = False) -> Any:
        return np.empty(size, dtype=np.uint8) if self.lends() else None

    def add(self, work: Any, ends: Any, negative: bool = False) -> None:
        if negative:
            self.taken_out += len(ends)
        else:
            self.added += len(ends)
        super().add(work, ends, negative)


def prove(
    given_storages: Sequence[Storage],
    chunk: int = 4096,
    max_accounts: int = 1000,
    limits: AccountsLimits | None = None,
    summer: LocalSum | None = None,
) -> tuple[bytes | None, str | None]:
    proof = AccountsProof(limits or AccountsLimits(max_accounts=max_accounts), summer)
    for storage in given_storages:
        feed(proof, storage, chunk)
    return proof.finish(reread_from({s.name: s.data for s in given_storages}))


# --- the archive written by agave -------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 136, 4096, 1 << 20])
def test_agave_storages_give_the_manifests_lattice_hash(chunk: int) -> None:
    assert prove(storages(), chunk) == (expected_lt_hash(), None)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_the_superseded_version_is_left_out_whatever_order_the_storages_come_in(
    order: tuple[int, ...],
) -> None:
    # index 0 (slot 98) is superseded by index 2 (slot 100): same pubkey
    assert prove([storages()[i] for i in order]) == (expected_lt_hash(), None)


def test_without_a_second_read_nothing_is_proven() -> None:
    # the first read indexes, the second hashes: whatever the order of the storages
    for ordered in (storages(), list(reversed(storages()))):
        proof = AccountsProof(AccountsLimits(max_accounts=1000))
        for storage in ordered:
            feed(proof, storage, 4096)
        assert proof.finish(None) == (None, "not proven: 9 accounts need a second read")


def test_the_second_read_hashes_each_newest_version_once_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # slot 98's version of the pubkey that slot 100 stores again is never hashed, in either
    # order: the summer sees exactly the newest versions with lamports (every one of them:
    # none kept, agave's archive holds one large account)
    monkeypatch.setattr(kepthashes, "KEEP_FROM", 1 << 40)
    seen: list[int] = []

    class Counting(LocalSum):
        def add(self, work: Any, ends: Any, negative: bool = False) -> None:
            assert not negative  # nothing was hashed ahead: nothing is taken out
            seen.append(len(ends))
            super().add(work, ends)

    for ordered in (storages(), list(reversed(storages()))):
        seen.clear()
        proof = AccountsProof(AccountsLimits(max_accounts=1000), Counting())
        for storage in ordered:
            feed(proof, storage, 4096)
        assert proof.finish(reread_from({s.name: s.data for s in ordered})) == (
            expected_lt_hash(),
            None,
        )
        assert sum(seen) == newest_with_lamports(ordered) == 8 == proof.progress.hashed


def asking(
    reread: Callable[[str, int], Iterable[bytes]], asked: list[str]
) -> Callable[[str, int], Iterable[bytes]]:
    """``reread`` noting in ``asked`` the members asked of it."""

    def noted(name: str, start: int) -> Iterable[bytes]:
        asked.append(name)
        return reread(name, start)

    return noted


def test_what_the_first_read_hashed_ahead_the_second_reads_again_only_to_take_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every batch hashed ahead: the storage holding the superseded version (slot 98) is read
    # again to take it out; the two others, hashed whole with nothing superseded, are not
    # (none kept: test_large_versions_are_hashed_where_they_lie_and_never_read_again)
    monkeypatch.setattr(kepthashes, "KEEP_FROM", 1 << 40)
    for ordered in (storages(), list(reversed(storages()))):
        asked: list[str] = []
        reread = asking(reread_from({s.name: s.data for s in ordered}), asked)
        summer = Lending()
        proof = AccountsProof(AccountsLimits(max_accounts=1000), summer)
        for storage in ordered:
            feed(proof, storage, 4096)
        proof.settle()
        assert proof.progress.hashed == 9  # every version with lamports, ahead
        assert proof.finish(reread) == (expected_lt_hash(), None)
        assert asked == [s.name for s in ordered if s.slot == 98]
        assert (summer.added, summer.taken_out) == (9, 1)
        assert proof.progress.hashed == newest_with_lamports(ordered) == 8


def test_a_batch_without_room_leaves_only_itself_to_the_second_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one storage of many batches (small pieces): the first finds every process busy, the
    # others find room; they are hashed ahead all the same (an ancient storage of agave's
    # holds dozens of batches), and the second read adds the first batch's only
    monkeypatch.setattr(storage_format, "PIECE", 1024)
    slots = {7: [Account(key(n), n + 1, bytes(100)) for n in range(40)]}
    asks = itertools.count()
    summer = Lending(lambda: next(asks) > 0)
    proof = AccountsProof(AccountsLimits(max_accounts=1000), summer)
    (storage,) = built(slots, [7])
    batches: list[int] = []

    def sink(batch: storage_format.Records) -> None:
        batches.append(len(batch))

    run(
        storage_format.parse_storage(storage.name, len(storage.data), len(storage.data), sink),
        storage.data,
    )
    assert len(batches) > 4
    feed(proof, storage, 4096)
    proof.settle()
    assert proof.progress.hashed == 40 - batches[0]  # every batch but the first, ahead
    assert proof.finish(reread_from({storage.name: storage.data})) == (model(slots), None)
    assert (summer.added, summer.taken_out) == (40, 0)


def test_without_a_lattice_hash_in_the_manifest_nothing_is_hashed() -> None:
    # the storages are still read (their structure checked) and indexed, but nothing hashed
    # ahead and no hashing process started: the level cannot be proven
    data = write_manifest(100, None, [(s.slot, s.ident, s.current_len) for s in storages()])
    decoder = ManifestDecoder(len(data))
    run(decoder.parser(), data)
    manifest = decoder.result()
    assert manifest.accounts_lt_hash is None
    summers: list[Lending] = []

    def lend() -> Lending:
        summers.append(Lending())
        return summers[-1]

    prover = StoragesProver(AccountsLimits(max_accounts=1000), summer=lend)
    for storage in storages():
        parser = prover.member(storage.name, len(storage.data), manifest)
        assert parser is not None
        run(parser, storage.data)
    assert not summers  # none made: no process to start
    assert prover._proof is not None and prover._proof.records == 9  # read and indexed
    assert prover.proof(manifest, Proof(Level.MANIFEST)).note == NO_LT_HASH
    prover.close()


def newest_with_lamports(given: Sequence[Storage]) -> int:
    """How many pubkeys' newest version (by slot) has lamports: read with the storage parser."""
    newest: dict[bytes, int] = {}
    for storage in sorted(given, key=lambda s: s.slot):

        def sink(batch: storage_format.Records) -> None:
            for pubkey, lamports in zip(batch.pubkeys(), batch.lamports(), strict=True):
                newest[pubkey.tobytes()] = int(lamports)

        parser = storage_format.parse_storage(
            storage.name, len(storage.data), storage.current_len, sink
        )
        run(parser, storage.data)
    return sum(1 for lamports in newest.values() if lamports)


def test_a_storage_with_spare_capacity_is_read_to_its_valid_length_only() -> None:
    # accounts/99.2 is 152 bytes with 151 valid; a file of 8 KiB more of zeros is the same
    # (zeros read as records would be refused: the default pubkey with no lamports; 8 KiB
    # spans more than one of the first read's chunks, and the spare is skipped whatever its
    # size, so 64 KiB checked nothing more and cost 13,000 more of the second read's pieces)
    grown = [Storage(s.slot, s.ident, s.data + bytes(8192), s.current_len) for s in storages()]
    assert prove(grown) == (expected_lt_hash(), None)


# --- a model: newest version by slot, zero lamports count nothing ---------------------------


def model(state: dict[int, list[Account]]) -> bytes:
    return lattice_of_slots(state)


def built(slots: dict[int, list[Account]], order: Sequence[int]) -> list[Storage]:
    made = []
    for ident, slot in enumerate(order):
        data = write_storage(slots[slot])
        made.append(Storage(slot, ident, data, len(data)))
    return made


def key(n: int) -> bytes:
    return n.to_bytes(2, "big") * 16


def test_a_record_of_no_lamports_under_the_default_pubkey_is_refused() -> None:
    # agave's scan of a storage stops at such a record ("we passed the last useful
    # account") and refuses the storage; it was taken as the system program's newest
    # version, hid the older one from the lattice hash and proved the archive to accounts.
    system = Account(bytes(32), 1, owner=b"\x02" * 32, executable=True)
    slots = {10: [system, Account(key(1), 5)], 20: [Account(key(3), 7), Account(bytes(32), 0)]}
    with pytest.raises(ArchiveInvalid, match="no lamports and the default pubkey"):
        prove(built(slots, [10, 20]))


def test_a_closed_account_supersedes_its_older_version_and_counts_nothing() -> None:
    slots = {
        5: [Account(key(1), 10, b"old"), Account(key(2), 7, b"kept")],
        9: [Account(key(1), 0)],
    }
    for order in ([5, 9], [9, 5]):
        assert prove(built(slots, order)) == (model(slots), None)
    alone = {5: [Account(key(2), 7, b"kept")]}
    assert model(slots) == model(alone)


def test_an_account_stored_in_three_slots_counts_once() -> None:
    slots = {s: [Account(key(1), s, bytes([s]) * s)] for s in (3, 4, 8)}
    for order in itertools.permutations(slots):
        assert prove(built(slots, order)) == (model({8: slots[8]}), None)


# --- hostile storages ------------------------------------------------------------------------


def one(accounts: list[Account], slot: int = 7, current_len: int | None = None) -> Storage:
    data = write_storage(accounts)
    return Storage(slot, 1, data, len(data) if current_len is None else current_len)


def refused(given_storages: Sequence[Storage], chunk: int = 4096) -> str:
    with pytest.raises(ArchiveInvalid) as caught:
        prove(given_storages, chunk)
    assert "\n" not in caught.value.reason
    return caught.value.reason


@pytest.mark.parametrize("chunk", [1, 50, 4096])
def test_a_pubkey_twice_in_one_storage_is_refused(chunk: int) -> None:
    twice = one([Account(key(1), 1), Account(key(2), 1), Account(key(1), 2)])
    assert refused([twice], chunk) == (
        f"accounts/7.1: pubkey {_b58(key(1))} is stored twice in slot 7"
    )


def test_a_pubkey_twice_in_one_slot_across_pieces_and_storages_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage_format, "PIECE", 200)
    accounts = [Account(key(n), 1, bytes(50)) for n in range(20)]
    assert "stored twice in slot 7" in refused([one([*accounts, Account(key(3), 5)])])
    first, second = one([Account(key(1), 1)]), one([Account(key(1), 2)])
    second = Storage(7, 2, second.data, second.current_len)
    assert "stored twice in slot 7" in refused([first, second])


def test_a_pubkey_twice_in_one_batch_that_was_seen_in_an_older_slot_is_refused() -> None:
    older = one([Account(key(1), 1)], slot=3)
    newer = one([Account(key(1), 2), Account(key(1), 3)], slot=4)
    assert "stored twice in slot 4" in refused([older, newer])


def test_a_storage_that_ends_inside_a_record_is_refused() -> None:
    full = one([Account(key(1), 1, b"abc"), Account(key(2), 1, b"defgh")])
    inside_header = Storage(7, 1, full.data, 160)
    assert refused([inside_header]) == (
        "accounts/7.1: the storage ends inside the record at byte 144 "
        "(16 bytes of its 136-byte header)"
    )
    inside_data = Storage(7, 1, full.data, full.current_len - 1)
    assert refused([inside_data]) == (
        "accounts/7.1: the record at byte 144 has 5 bytes of data, past the storage's "
        f"valid length {full.current_len - 1}"
    )


def test_a_data_length_past_the_file_or_over_agaves_bound_is_refused() -> None:
    record = bytearray(write_storage([Account(key(1), 1, b"abc")]))
    record[8:16] = (1 << 20).to_bytes(8, "little")
    assert "past the storage's valid length 139" in refused([Storage(7, 1, bytes(record), 139)])
    record[8:16] = (1 << 62).to_bytes(8, "little")
    assert refused([Storage(7, 1, bytes(record), 139)]) == (
        f"accounts/7.1: the record at byte 0 claims {1 << 62} bytes of data (at most 10485760)"
    )


def test_an_executable_byte_other_than_0_or_1_is_refused() -> None:
    record = bytearray(write_storage([Account(key(1), 1, b"abc")]))
    record[96] = 2
    assert refused([Storage(7, 1, bytes(record), 139)]) == (
        "accounts/7.1: the record at byte 0 has executable byte 2 (0 or 1)"
    )


def test_a_valid_length_past_the_file_and_a_short_member_are_refused() -> None:
    storage = one([Account(key(1), 1, b"abc")])
    assert refused([Storage(7, 1, storage.data, 500)]) == (
        "accounts/7.1: the manifest's length 500 is past the file's 139 bytes"
    )
    proof = AccountsProof(AccountsLimits(max_accounts=10))
    with pytest.raises(
        ArchiveInvalid, match=r"^accounts/7\.1: the member ends at byte 139 of its 300$"
    ):
        feed(proof, storage, 4096, size=300)


def test_over_the_bound_the_level_stops_and_says_why() -> None:
    slots = {s: [Account(key(s * 100 + n), 1) for n in range(30)] for s in range(1, 5)}
    proof = AccountsProof(AccountsLimits(max_accounts=50))
    for storage in built(slots, sorted(slots)):
        feed(proof, storage, 4096)
    assert proof.finish(None) == (None, "not proven: 120 accounts over the bound of 50")


def test_superseded_versions_past_the_bound_stop_the_level_too() -> None:
    slots = {s: [Account(key(n), s) for n in range(20)] for s in range(1, 5)}
    proof = AccountsProof(AccountsLimits(max_accounts=50))
    for storage in built(slots, sorted(slots)):
        feed(proof, storage, 4096)
    assert proof.finish(None) == (None, "not proven: 80 accounts over the bound of 50")


def test_a_second_read_that_differs_is_refused() -> None:
    slots = {1: [Account(key(1), 5, b"x")], 2: [Account(key(1), 6, b"y"), Account(key(2), 1)]}
    made = built(slots, [1, 2])
    again = {"accounts/1.0": made[0].data, "accounts/2.1": made[1].data}
    for changed, reason in (
        # as many bytes, one record fewer
        (write_storage([Account(key(1), 6, b"y" * 144)]), r"differs from the first \(1 rec"),
        (b"", "the member ends at byte 0"),
    ):
        proof = AccountsProof(AccountsLimits(max_accounts=10))
        for storage in made:
            feed(proof, storage, 4096)
        with pytest.raises(ArchiveInvalid, match=reason):
            proof.finish(reread_from({**again, "accounts/2.1": changed}))


# --- properties ------------------------------------------------------------------------------

_accounts = st.builds(
    Account,
    # not the default pubkey with no lamports: agave never writes it (a scan stops there)
    pubkey=st.integers(1, 13).map(key),
    lamports=st.sampled_from([0, 1, 2**64 - 1, 1234]),
    data=st.one_of(st.binary(max_size=40), st.binary(min_size=140, max_size=700)),
    owner=st.sampled_from([bytes(32), b"\x07" * 32]),
    executable=st.booleans(),
).map(lambda a: a if a.lamports else Account(a.pubkey, 0))  # closed: the default account


@st.composite
def states(draw: st.DrawFn) -> dict[int, list[Account]]:
    slots: dict[int, list[Account]] = {}
    for slot in draw(st.lists(st.integers(1, 50), unique=True, max_size=5)):
        accounts = draw(st.lists(_accounts, max_size=8))
        unique = {a.pubkey: a for a in accounts}
        slots[slot] = list(unique.values())
    return slots


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states(), st.randoms(), st.sampled_from([1, 3, 64, 4096]))
def test_any_order_and_any_chunking_gives_the_models_hash(
    slots: dict[int, list[Account]], rnd: object, chunk: int
) -> None:
    order = list(slots)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    assert prove(built(slots, order), chunk) == (model(slots), None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    states(),
    st.randoms(),
    st.sampled_from([140, 150, 301, 4096]),
    st.lists(st.booleans(), min_size=1, max_size=6),
)
def test_whatever_the_first_read_hashed_ahead_the_hash_is_the_models(
    slots: dict[int, list[Account]], rnd: object, piece: int, lends: list[bool]
) -> None:
    # a hashing process has room for some batches and not others (a storage is hashed ahead
    # up to its first batch without room, small pieces: several batches a storage); the
    # second read adds the rest and takes out what turned out superseded
    order = list(slots)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    pattern = itertools.cycle(lends)
    summer = Lending(lambda: next(pattern))
    with mock.patch.object(storage_format, "PIECE", piece):
        assert prove(built(slots, order), 64, summer=summer) == (model(slots), None)
    newest = newest_with_lamports(built(slots, order))
    assert summer.added - summer.taken_out == newest


@settings(max_examples=100, deadline=None)
@given(states(), st.sampled_from([140, 150, 301, 512]), st.sampled_from([1, 5, 4096]))
def test_any_piece_size_gives_the_models_hash(
    slots: dict[int, list[Account]], piece: int, chunk: int
) -> None:
    with mock.patch.object(storage_format, "PIECE", piece):
        assert prove(built(slots, sorted(slots)), chunk) == (model(slots), None)


@settings(max_examples=300, deadline=None)
@given(
    states(),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 64),
)
def test_mutated_storages_give_a_hash_or_one_line_reason(
    slots: dict[int, list[Account]], flips: list[tuple[int, int]], cut: int
) -> None:
    made = built(slots, sorted(slots))
    mutated = []
    for storage in made:
        data = bytearray(storage.data)
        for at, value in flips:
            if data:
                data[at % len(data)] = value
        current_len = max(0, len(data) - cut)
        mutated.append(Storage(storage.slot, storage.ident, bytes(data), current_len))
    reason = None
    try:
        lt_hash, note = prove(mutated)
    except ArchiveInvalid as exc:
        reason = exc.reason
    if reason is not None:
        assert reason.startswith("accounts/") and "\n" not in reason
    else:
        assert note is None and lt_hash is not None and len(lt_hash) == 2048


def _b58(data: bytes) -> str:
    import base58

    return base58.b58encode(data).decode()


@pytest.mark.parametrize("piece", [160, 400, 1000])
def test_small_pieces_keep_records_aligned_to_the_storage(
    monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    # records larger than a piece are completed by a read that ends at their last data byte
    # (not a multiple of 8): the records after them stay where the storage has them
    monkeypatch.setattr(storage_format, "PIECE", piece)
    accounts = []
    for n in range(40):
        size = 1001 if n % 4 == 0 else n % 7
        accounts.append(Account(key(n), n + 1, bytes([n]) * size))
    slots = {3: accounts, 4: [Account(key(n), 9, b"z" * (n * 5)) for n in range(30, 50)]}
    for chunk in (1, 7, 4096):
        assert prove(built(slots, [3, 4]), chunk) == (model(slots), None)


def test_hundreds_of_storages_keep_their_names_slots_and_counts() -> None:
    # the storage table grows past its first 64 rows: every storage is read again under its
    # own name, and a pubkey twice in a late storage's slot is named with that storage
    slots = {
        s: [Account(key(s), s, b"a" * (s % 9)), Account(key(1000 + s), 1)] for s in range(1, 201)
    }
    made = built(slots, list(slots))
    assert prove(made, max_accounts=10_000) == (model(slots), None)
    assert prove(made, max_accounts=10_000, summer=Lending()) == (model(slots), None)
    twice = Storage(150, 999, made[149].data, made[149].current_len)  # slot 150 again
    proof = AccountsProof(AccountsLimits(max_accounts=10_000), Lending())
    for storage in (*made, twice):
        feed(proof, storage, 4096)
    with pytest.raises(
        ArchiveInvalid, match=r"^accounts/150\.(149|999): pubkey .* twice in slot 150$"
    ):
        proof.finish(reread_from({s.name: s.data for s in (*made, twice)}))


# --- a storage member's cost (docs/architecture.md, "The accounts level" → "Cost") --------


@pytest.mark.one_bookkeeping
def test_a_storage_is_looked_up_by_its_exact_slot_and_id_whatever_their_size() -> None:
    # exact past 2^53 (numpy once cast a Python int and the whole table to float64 at each
    # look-up, where these slots are one number) and past 32 bits (three searches)
    from array import array

    from tracker.proof.formats.manifest import StorageLengths, StorageList

    big = 1 << 53
    listed = [(big, 1, 136), (big + 1, 1, 272), (big + 2, 7, 408), ((1 << 64) - 1, 0, 544)]
    lengths = StorageLengths(StorageList(array("Q", [n for row in reversed(listed) for n in row])))
    for slot, ident, length in listed:
        assert lengths.get(slot, ident) == length
    assert lengths.get(big + 3, 1) is None
    assert lengths.get(big + 2, 1) is None
    assert lengths.get(1 << 64, 0) is None  # past u64: no storage agave lists


@pytest.mark.one_bookkeeping
def test_a_list_of_32_bit_slots_and_ids_is_looked_up_by_one_key() -> None:
    # every real list: slot and id packed in one u64 key, found exactly, never a neighbour's
    # (the slot of one and the id of another), a look-up past 32 bits found nowhere
    from array import array

    from tracker.proof.formats.manifest import StorageLengths, StorageList

    top = (1 << 32) - 1
    listed = [(5, 2, 136), (6, 1, 272), (6, 9, 408), (top, top, 544), (0, 0, 680)]
    lengths = StorageLengths(StorageList(array("Q", [n for row in reversed(listed) for n in row])))
    assert lengths._keys is not None  # the one-key look-up
    for slot, ident, length in listed:
        assert lengths.get(slot, ident) == length
    for slot, ident in [(5, 1), (6, 2), (5, 9), (7, 0), (top, top - 1), (1 << 32, 0), (0, 1 << 32)]:
        assert lengths.get(slot, ident) is None
    empty = StorageLengths(StorageList(array("Q")))
    assert empty.get(5, 2) is None


@pytest.mark.one_bookkeeping
def test_a_storage_look_up_never_calls_numpy() -> None:
    # numpy's searchsorted lets go of the GIL at each call: the check's thread, which every
    # storage passes, then waits behind the proof's other threads for its turn (docs
    # architecture, "What a storage costs the check's process"); the look-up is bisect's
    import sys
    from array import array
    from types import FrameType

    from tracker.proof.formats.manifest import StorageLengths, StorageList

    called: list[str] = []

    def hook(_frame: FrameType, event: str, arg: object) -> None:
        if event == "c_call":
            called.append(f"{getattr(arg, '__module__', None)}.{getattr(arg, '__qualname__', arg)}")

    for big in (1, 1 << 40):  # one packed key, and three searches
        listed = [(5 * big, 2, 136), (6 * big, 1, 272), (6 * big, 9, 408)]
        lengths = StorageLengths(StorageList(array("Q", [n for row in listed for n in row])))
        sys.setprofile(hook)
        try:
            found = [lengths.get(slot, ident) for slot, ident, _ in listed]
            missing = lengths.get(7 * big, 0)
        finally:
            sys.setprofile(None)
        assert found == [136, 272, 408] and missing is None
    assert called and not [name for name in called if "numpy" in name or "ndarray" in name], called


def test_a_proof_of_many_storages_compiles_its_kernels_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a storage of a few records costs an interpreted call more than a compiled one: past
    # KERNELS_FROM storages the proof loads the compiled kernels, once, whatever their size
    from tracker.proof.accounts import accountsproof

    loads: list[int] = []
    monkeypatch.setattr(accountsproof, "KERNELS_FROM", 5)
    monkeypatch.setattr(accountsproof.kernels, "load", lambda: loads.append(len(loads)))
    slots = {s: [Account(key(s), s + 1)] for s in range(12)}
    made = built(slots, list(slots))
    proof = AccountsProof(AccountsLimits(max_accounts=1000), LocalSum())
    for at, storage in enumerate(made):
        feed(proof, storage, 4096)
        assert len(loads) == (at >= 5)
    assert proof.finish(reread_from({s.name: s.data for s in made})) == (model(slots), None)


def test_the_second_read_parses_in_the_lanes_and_refuses_the_first_storage_that_differs(
    monkeypatch: pytest.MonkeyPatch, bookkeeping_both_ways: str
) -> None:
    # with scan lanes the second read's calling thread only walks: each storage is parsed
    # in a lane (its serial chain, docs/architecture.md "Every core"); of two storages that
    # differ, the refusal names the first, as the serial reading would
    import threading

    from tracker.proof.accounts import newest

    parsed_in: set[str] = set()
    feed_one = newest._StorageHash.feed

    def feed_seen(self: Any, chunk: Any) -> None:
        parsed_in.add(threading.current_thread().name)
        feed_one(self, chunk)

    monkeypatch.setattr(newest._StorageHash, "feed", feed_seen)
    slots = {s: [Account(key(s), s, b"x" * s), Account(key(100), s)] for s in range(1, 9)}
    made = built(slots, list(slots))
    again = {s.name: s.data for s in made}
    assert prove(made, max_accounts=100) == (model(slots), None)
    caller = threading.current_thread().name
    lanes = bookkeeping_both_ways != "inline"
    assert parsed_in == ({"accounts-scan"} if lanes else {caller})
    for first in (2, 5):
        # as many bytes, one record fewer (its data over where the second one lay)
        one = write_storage([Account(key(first), first, b"z" * (-(-(136 + first) // 8) * 8))])
        assert len(one) == len(made[first].data)
        changed = {**again, made[first].name: one, made[7].name: b""}
        proof = AccountsProof(AccountsLimits(max_accounts=100))
        for storage in made:
            feed(proof, storage, 4096)
        with pytest.raises(ArchiveInvalid, match=rf"^{made[first].name}: the second read differ"):
            proof.finish(reread_from(changed))


# --- large accounts: hashed where they lie, their hashes kept --------------------------------


def large(n: int, lamports: int, size: int = kepthashes.KEEP_FROM) -> Account:
    return Account(key(n), lamports, bytes([n % 251]) * size + bytes([lamports % 256]))


def test_large_versions_are_hashed_where_they_lie_and_never_read_again() -> None:
    # every version of KEEP_FROM bytes of data or more is hashed in the first read and kept:
    # the superseded ones (slot 5's key 1 and 2: a newer version, a closed one) are taken out
    # from memory, so no storage is read again, and no batch goes to a summer
    slots = {
        5: [large(1, 10), large(2, 7), large(3, 4)],
        9: [large(1, 11), Account(key(2), 0)],
    }
    for order in ([5, 9], [9, 5]):
        asked: list[str] = []
        given = built(slots, order)
        summer = Lending()
        proof = AccountsProof(AccountsLimits(max_accounts=1000), summer)
        for storage in given:
            feed(proof, storage, 4096)
        reread = asking(reread_from({s.name: s.data for s in given}), asked)
        assert proof.finish(reread) == (model(slots), None)
        assert asked == []
        assert (summer.added, summer.taken_out) == (0, 0)
        assert proof.progress.hashed == newest_with_lamports(given) == 2


def test_kept_and_laid_out_versions_mix_in_one_storage() -> None:
    # small versions beside large ones, a batch left to the second read: it adds the small
    # ones it holds and never the kept ones, which lie in its range too
    slots = {
        3: [large(1, 5), Account(key(2), 6, b"small"), large(3, 7)],
        4: [Account(key(1), 8, b"newer, small"), large(2, 9)],
    }
    for order in ([3, 4], [4, 3]):
        summer = Lending(lambda: False)  # no room: every batch's small versions are left
        assert prove(built(slots, order), summer=summer) == (model(slots), None)
        assert (summer.added, summer.taken_out) == (1, 0)  # slot 4's key 1: key 2 at 3 superseded


def test_past_its_share_of_the_budget_a_large_version_goes_as_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the budget's share for kept hashes holds none: every version is laid out for a summer
    # as before, and the second read takes out the superseded one hashed ahead
    monkeypatch.setattr(kepthashes, "KEEP_SHARE", 1 << 62)
    slots = {5: [large(1, 10), large(2, 7)], 9: [large(1, 11)]}
    summer = Lending()
    assert prove(built(slots, [5, 9]), summer=summer) == (model(slots), None)
    assert (summer.added, summer.taken_out) == (3, 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    states(),
    st.randoms(),
    st.sampled_from([140, 150, 301, 4096]),
    st.lists(st.booleans(), min_size=1, max_size=6),
    st.sampled_from([1, 41, 200]),
)
def test_whatever_is_kept_or_hashed_ahead_the_hash_is_the_models(
    slots: dict[int, list[Account]], rnd: object, piece: int, lends: list[bool], keep_from: int
) -> None:
    # versions of ``keep_from`` bytes of data or more kept, the others hashed ahead or left
    order = list(slots)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    pattern = itertools.cycle(lends)
    summer = Lending(lambda: next(pattern))
    with (
        mock.patch.object(storage_format, "PIECE", piece),
        mock.patch.object(kepthashes, "KEEP_FROM", keep_from),
    ):
        assert prove(built(slots, order), 64, summer=summer) == (model(slots), None)


@pytest.mark.one_bookkeeping
def test_kept_hashes_are_summed_held_and_taken_out_by_locator() -> None:
    kept = kepthashes.KeptHashes()
    rows = np.arange(3 * 1024, dtype=np.uint16).reshape(3, 1024)
    room = 4 * kepthashes.KEEP_SHARE * kepthashes.KEPT_BYTES  # room for four in their share
    assert kept.fits(3, room) and not kept.fits(5, room)
    kept.add(np.array([9 << 32, 2 << 32], dtype=np.uint64), rows[:2])
    kept.add(np.array([5 << 32], dtype=np.uint64), rows[2:])
    assert (kept.count, kept.bytes) == (3, 3 * kepthashes.KEPT_BYTES)
    assert not kept.fits(2, room) and kept.fits(1, room)
    assert (kept.total == rows.sum(axis=0, dtype=np.uint16)).all()
    locators, order = kept.in_order()
    assert locators.tolist() == [2 << 32, 5 << 32, 9 << 32] and order.tolist() == [1, 2, 0]
    taken: list[int] = []
    superseded = [
        np.array([1 << 32, 2 << 32], dtype=np.uint64),
        np.array([9 << 32], dtype=np.uint64),
    ]
    left = [each.tolist() for each in kept.taken_out(superseded, locators, order, taken.append)]
    assert left == [[1 << 32], []] and taken == [1, 1]  # the two kept ones taken out here
    assert (kept.total == rows[2]).all()  # only the one at 5 << 32 is still in the sum
    kept.keeping = False
    assert not kept.fits(0, room)


def test_a_check_cancelled_before_its_partitions_are_sorted_sorts_none_of_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The partitions' sort at ``finish`` (minutes of a mainnet full's spilled runs, in
    threads a stopping interpreter waits for) looks at the cancellation before each one: a
    check cancelled then (the download cancelled, the tracker stopping) ends as the second
    read's would, not after the whole sort."""
    from tracker.proof.accounts import spill
    from tracker.proof.archive.checklimits import CANCELLED

    sorted_ = []
    real = spill.superseded_of

    def superseded_of(keys: Any, *rest: Any) -> Any:
        sorted_.append(len(keys))
        return real(keys, *rest)

    monkeypatch.setattr(spill, "superseded_of", superseded_of)
    given = storages()
    stop = False
    proof = AccountsProof(AccountsLimits(max_accounts=1000), None, lambda: stop)
    for storage in given:
        feed(proof, storage, 4096)
    stop = True
    with pytest.raises(ArchiveInvalid, match=CANCELLED):
        proof.finish(reread_from({s.name: s.data for s in given}))
    assert sorted_ == []


@pytest.mark.one_bookkeeping
def test_the_sorts_cancellation_says_the_checks_own_reason() -> None:
    from tracker.proof.accounts import spill
    from tracker.proof.archive.checklimits import CANCELLED

    assert spill.CANCELLED == CANCELLED  # callers tell a cancelled check by these words
