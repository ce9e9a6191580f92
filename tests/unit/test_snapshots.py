"""Archive names: parsing, formatting, total order (Hypothesis properties)."""

from __future__ import annotations

import base58
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker.core.snapshots import (
    EXTENSIONS,
    U64_MAX,
    ArchiveName,
    SnapshotFile,
    chains_from_files,
    decode_hash,
    parse_archive_name,
)

hashes = st.binary(min_size=32, max_size=32).map(lambda b: base58.b58encode(b).decode())
slots = st.integers(min_value=1, max_value=U64_MAX)
exts = st.sampled_from(EXTENSIONS)


@st.composite
def archive_names(draw: st.DrawFn) -> ArchiveName:
    slot = draw(slots)
    full = slot == 1 or draw(st.booleans())
    base = 0 if full else draw(st.integers(min_value=1, max_value=slot - 1))
    return ArchiveName(slot=slot, base_slot=base, hash=draw(hashes), ext=draw(exts))


@given(archive_names())
def test_round_trip(name: ArchiveName) -> None:
    assert parse_archive_name(name.file_name) == name


@given(archive_names(), archive_names())
def test_order_agrees_with_slot_then_full_then_base_then_hash(a: ArchiveName, b: ArchiveName):
    ka, kb = a.order_key(), b.order_key()
    if a.slot != b.slot:
        assert (ka < kb) == (a.slot < b.slot)
    elif a.is_full != b.is_full:
        assert (ka > kb) == a.is_full
    elif a.base_slot != b.base_slot:
        assert (ka < kb) == (a.base_slot < b.base_slot)
    elif a.hash != b.hash:
        assert (ka < kb) == (decode_hash(a.hash) < decode_hash(b.hash))  # type: ignore[operator]
    else:
        assert (ka < kb) == (a.ext < b.ext)


@given(archive_names(), archive_names())
def test_order_is_total(a: ArchiveName, b: ArchiveName) -> None:
    assert (a.order_key() == b.order_key()) == (a == b)


H = base58.b58encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    "name",
    [
        f"snapshot-0-{H}.tar.zst",  # slot 0 cannot be a snapshot we would serve
        f"snapshot-100-{H}.tar.rar",
        f"snapshot-100-{H}.tar.zst.tmp",
        f"snapshot-0100-{H}.tar.zst",
        f"snapshot-100-{H[:-1]}0.tar.zst",  # 0 is not base58
        f"snapshot-100-{base58.b58encode(bytes(31)).decode()}.tar.zst",
        f"incremental-snapshot-200-200-{H}.tar.zst",
        f"incremental-snapshot-300-200-{H}.tar.zst",
        f"snapshot-{U64_MAX + 1}-{H}.tar",
        f"../snapshot-100-{H}.tar",
        f"snapshot-100-{H}.tar/",
        "snapshot.tar.bz2",
        "",
        "x" * 10_000,
    ],
)
def test_rejects(name: str) -> None:
    assert parse_archive_name(name) is None


def test_chain_links_incremental_to_its_full() -> None:
    full = parse_archive_name(f"snapshot-100-{H}.tar.zst")
    incr = parse_archive_name(f"incremental-snapshot-100-150-{H}.tar.zst")
    other = parse_archive_name(f"incremental-snapshot-90-160-{H}.tar.zst")
    assert full and incr and other
    files = [SnapshotFile(n, n.file_name, size=10) for n in (incr, full, other)]
    infos = {i.slot: i for i in chains_from_files(files)}
    assert [f.name for f in infos[150].files] == [incr, full]
    assert infos[150].size == 20 and infos[150].base_slot == 100
    assert [f.name for f in infos[160].files] == [other]
    assert infos[100].base_slot == 100 and infos[100].is_full
