"""The level ``manifest`` (docs/architecture.md, "Proven archives"): agave v4.2's own archive
decoded field by field and proven under its SIMD-0220 name; older manifests; mismatches."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from pathlib import Path

import attrs
import base58
import pytest
import zstandard
from archives import build_archive, compress, make_tar, snapshot_entries

from tracker.errors import ArchiveInvalid
from tracker.proof.archive.archivecheck import check_stream
from tracker.proof.formats.bankhash import NO_LATTICE_HASH, bank_hash, prove_manifest
from tracker.proof.formats.manifest import Manifest, ManifestDecoder
from tracker.proof.formats.parsing import run
from tracker.proof.formats.writing import (
    EXTRA_FIELDS,
    Account,
    archive_hash_of,
    lattice_of,
    padded,
    write_manifest,
    write_storage,
)
from tracker.proof.levels import Level

DATA = Path(__file__).parent.parent / "data" / "agave-snapshot"
ARCHIVE = (DATA / "test-snapshot-v4.2.0-beta.1.tar.zst").read_bytes()
DECODED = json.loads((DATA / "test-snapshot-v4.2.0-beta.1.json").read_text())
NAME_HASH = "7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb"
NAME = f"snapshot-100-{NAME_HASH}.tar.zst"
BANK_HASH = "FF2m56Z7VbuL5fhNTfNzzH41ZP45CYzxZGocL9RqmRck"


def members(archive: bytes) -> dict[str, bytes]:
    tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive)).read()
    with tarfile.open(fileobj=io.BytesIO(tar)) as opened:
        return {m.name: opened.extractfile(m).read() for m in opened if m.isfile()}  # type: ignore[union-attr]


MANIFEST = members(ARCHIVE)["snapshots/100/100"]


def decode(data: bytes) -> Manifest:
    decoder = ManifestDecoder(len(data))
    run(decoder.parser(), data)
    return decoder.result()


def b58(raw: bytes) -> str:
    return base58.b58encode(raw).decode()


def test_agave_archive_proves_to_manifest_under_its_simd_0220_name() -> None:
    checked = check_stream(io.BytesIO(ARCHIVE).read, NAME)
    assert checked.sha256 == hashlib.sha256(ARCHIVE).hexdigest()
    assert checked.proof.level == Level.MANIFEST
    assert (checked.proof.snapshot_hash, checked.proof.bank_hash) == (NAME_HASH, BANK_HASH)


def test_agave_archive_under_another_hash_is_refused_naming_both() -> None:
    other = "11111111111111111111111111111111"
    with pytest.raises(ArchiveInvalid) as caught:
        check_stream(io.BytesIO(ARCHIVE).read, f"snapshot-100-{other}.tar.zst")
    assert caught.value.reason == f"manifest: name hash {other}, lattice hash gives {NAME_HASH}"


def test_every_field_of_agave_manifest_is_the_decoded_json() -> None:
    m = decode(MANIFEST)
    bank, extra = DECODED["bank_fields"], DECODED["extra_fields"]
    f = m.fields
    for key in (
        "slot",
        "parent_slot",
        "block_height",
        "transaction_count",
        "signature_count",
        "tick_height",
        "max_tick_height",
        "ticks_per_slot",
        "hashes_per_tick",
        "ns_per_slot",
        "slots_per_year",
        "genesis_creation_time",
        "accounts_data_len",
        "capitalization",
        "is_delta",
    ):
        assert f[key] == bank[key], key
    assert (b58(f["hash"]), b58(f["parent_hash"])) == (bank["hash"], bank["parent_hash"])
    assert b58(f["collector_id"]) == bank["leader_id"]
    for group in ("fee_rate_governor", "epoch_schedule", "inflation"):
        for key, value in bank[group].items():
            if group == "fee_rate_governor" and key == "lamports_per_signature":
                continue  # serde(skip): set from the blockhash queue on load, not stored
            assert f[f"{group}.{key}"] == value, (group, key)
    # The stored epoch is 0 (v4.2 writes it unused); the JSON's is the schedule's epoch of
    # slot 100 (warmup: 32 slots, then 64, then 128).
    assert (f["epoch"], bank["epoch"]) == (0, 2)
    queue = bank["blockhash_queue"]
    assert f["blockhash_queue.last_hash_index"] == queue["last_hash_index"]
    assert b58(f["blockhash_queue.last_hash"]) == queue["last_hash"]
    assert f["blockhash_queue.max_age"] == queue["max_age"]
    counts = m.counts
    assert counts["blockhash_queue.hashes"] == len(queue["hashes"])
    assert counts["hard_forks"] == len(bank["hard_forks"])
    assert m.hard_forks == ()  # none after the parent slot 99: the hash is not extended
    stakes = bank["stakes"]
    assert counts["stakes.vote_accounts"] == len(stakes["vote_accounts"])
    assert counts["stakes.stake_delegations"] == len(stakes["stake_delegations"])
    assert counts["stakes.stake_history"] == len(stakes["stake_history"])
    assert counts["versioned_epoch_stakes"] == len(extra["versioned_epoch_stakes"])
    assert f["lamports_per_signature"] == extra["lamports_per_signature"]
    assert b58(f["block_id"]) == extra["block_id"]
    assert m.accounts_lt_hash is not None
    assert m.accounts_lt_hash.hex() == extra["accounts_lt_hash"]
    assert "incremental_snapshot_persistence.full_slot" not in f  # None in the JSON
    files = DECODED["accounts"]["files"]
    assert m.storages.items() == [(e["slot"], e["id"], e["on_disk_size"]) for e in files]
    by_slot: dict[int, list[tuple[int, int]]] = {}
    for e in files:
        by_slot.setdefault(e["slot"], []).append((e["id"], e["on_disk_size"]))
    assert m.storages.by_slot() == by_slot
    newest = max(files, key=lambda e: e["slot"])
    assert m.storages.valid_length(newest["slot"], newest["id"]) == newest["on_disk_size"]
    assert m.storages.valid_length(newest["slot"], newest["id"] + 1) is None
    assert b58(bank_hash(m)) == BANK_HASH


def test_the_bank_hash_extends_with_hard_forks_in_its_slot() -> None:
    m = decode(MANIFEST)
    forked = attrs.evolve(m, hard_forks=((100, 2), (101, 5)))
    first = hashlib.sha256(m.parent_hash + struct.pack("<Q", 6789) + m.last_blockhash).digest()  # type: ignore[operator]
    second = hashlib.sha256(first + m.accounts_lt_hash).digest()  # type: ignore[operator]
    assert bank_hash(m) == second
    assert bank_hash(forked) == hashlib.sha256(second + struct.pack("<Q", 2)).digest()


@pytest.mark.parametrize("extra", range(len(EXTRA_FIELDS) + 1))
def test_manifests_ending_after_any_extra_field_decode(extra: int) -> None:
    accounts = [Account(bytes([i]) * 32, 1000 + i, b"data") for i in range(3)]
    lt = lattice_of(accounts)
    data = write_manifest(7, lt, [(7, 0, len(write_storage(accounts)))], extra=extra)
    proof = prove_manifest(decode(data), slot=7, base_slot=0, name_hash=archive_hash_of(lt))
    if extra > EXTRA_FIELDS.index("accounts_lt_hash"):
        assert proof.level == Level.MANIFEST
    else:  # made before SIMD-0220: no lattice hash, said so
        assert (proof.level, proof.note) == (Level.STRUCTURE, NO_LATTICE_HASH)


def test_an_archive_before_simd_0220_verifies_at_structure_with_its_note() -> None:
    entries = snapshot_entries(300, accounts=1, account_size=1024, seed=0)
    entries = [
        (n, write_manifest(300, None, extra=4) if n == "snapshots/300/300" else d)
        for n, d in entries
    ]
    name = build_archive(300)[0]
    checked = check_stream(io.BytesIO(compress(make_tar(entries), "zst")).read, name)
    assert (checked.proof.level, checked.proof.note) == (Level.STRUCTURE, NO_LATTICE_HASH)


@pytest.mark.parametrize(
    ("slot", "base", "reason"),
    [
        (101, 0, "manifest: slot 100, the name says 101"),
        (99, 0, "manifest: slot 100, the name says 99"),
    ],
)
def test_a_manifest_of_another_slot_is_refused(slot: int, base: int, reason: str) -> None:
    with pytest.raises(ArchiveInvalid) as caught:
        prove_manifest(decode(MANIFEST), slot=slot, base_slot=base, name_hash=NAME_HASH)
    assert caught.value.reason == reason


def test_a_bank_hash_its_fields_do_not_give_is_refused() -> None:
    changed = bytearray(MANIFEST)
    at = MANIFEST.index(base58.b58decode(BANK_HASH))
    changed[at] ^= 1
    with pytest.raises(ArchiveInvalid) as caught:
        prove_manifest(decode(bytes(changed)), slot=100, base_slot=0, name_hash=NAME_HASH)
    assert caught.value.reason.startswith("manifest: bank hash ")
    assert caught.value.reason.endswith(f", its fields give {BANK_HASH}")


def test_a_lattice_hash_of_the_wrong_size_is_refused() -> None:
    cut = MANIFEST[: len(MANIFEST) - 33 - 100]  # ends 100 bytes before the lattice hash's end
    with pytest.raises(ArchiveInvalid) as caught:
        decode(cut)
    assert caught.value.reason == "manifest: the accounts lattice hash has 1948 bytes, not 2048"


def test_the_readme_archives_prove_to_accounts(capsys: pytest.CaptureFixture[str]) -> None:
    """The quickstart's full reaches ``accounts`` in ``verify``, its incrementals
    ``manifest`` (the highest an incremental reaches)."""
    from tracker.cli import main
    from tracker.proof.archive.archivecheck import check_file

    ledger = Path(__file__).parent.parent.parent / "examples" / "ledger"
    paths = sorted(ledger.glob("*.tar.zst"))
    assert len(paths) == 3
    for path in paths:
        proof = check_file(str(path)).proof
        assert proof.snapshot_hash == path.name.rsplit("-", 1)[1].removesuffix(".tar.zst")
    assert main(["verify", *(str(p) for p in paths)]) == 0
    levels = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    full = [p.name.startswith("snapshot-") for p in paths]
    assert levels == ["accounts" if f else "manifest" for f in full]


def test_written_storages_are_agave_own_bytes() -> None:
    """The AppendVec writer, given the accounts the JSON lists, writes agave's storages."""
    stored = members(ARCHIVE)
    for file in DECODED["accounts"]["files"]:
        entries = [
            e
            for e in DECODED["accounts"]["entries"]
            if (e["slot"], e["file_id"]) == (file["slot"], file["id"])
        ]
        accounts = [
            Account(
                base58.b58decode(e["pubkey"]),
                e["lamports"],
                bytes.fromhex(e["data_hex"]),
                base58.b58decode(e["owner"]),
                e["executable"],
                e["rent_epoch"],
            )
            for e in entries
        ]
        assert padded(write_storage(accounts)) == stored[file["path"]], file["path"]
    live = [
        e
        for e in DECODED["accounts"]["entries"]
        if e["index"] in DECODED["accounts"]["live_indices"]
    ]
    assert len(live) == DECODED["accounts"]["live_count"]


def test_verify_prints_the_level_and_why_it_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tracker.cli import main

    good = tmp_path / NAME
    good.write_bytes(ARCHIVE)
    entries = snapshot_entries(300, accounts=1, account_size=1024, seed=0)
    entries = [
        (n, write_manifest(300, None, extra=4) if n == "snapshots/300/300" else d)
        for n, d in entries
    ]
    old = tmp_path / build_archive(300)[0]
    old.write_bytes(compress(make_tar(entries), "zst"))
    forged = tmp_path / "snapshot-100-11111111111111111111111111111111.tar.zst"
    forged.write_bytes(ARCHIVE)
    assert main(["verify", str(good), str(old), str(forged)]) == 1
    sha = hashlib.sha256
    assert capsys.readouterr().out.splitlines() == [
        f"ok accounts {sha(ARCHIVE).hexdigest()} {good}",
        f"ok structure {sha(old.read_bytes()).hexdigest()} {old} ({NO_LATTICE_HASH})",
        f"bad {forged}: manifest: name hash 11111111111111111111111111111111, lattice hash "
        f"gives {NAME_HASH}",
    ]


def test_an_account_storage_after_the_slot_is_refused() -> None:
    data = write_manifest(7, lattice_of([]), [(7, 0, 136), (8, 1, 136)])
    with pytest.raises(ArchiveInvalid) as caught:
        prove_manifest(decode(data), slot=7, base_slot=0, name_hash=archive_hash_of(lattice_of([])))
    assert caught.value.reason == "manifest: account storage 8.1 after the slot 7"


@pytest.mark.parametrize(
    ("changes", "base", "reason"),
    [
        ({"accounts_db_slot": 99}, 0, "manifest: accounts-db slot 99, the name says 100"),
        ({"full_slot": 40}, 50, "manifest: base slot 40, the name says 50"),
    ],
)
def test_the_manifest_slots_are_the_names(changes: dict[str, int], base: int, reason: str) -> None:
    changed = attrs.evolve(decode(MANIFEST), **changes)
    with pytest.raises(ArchiveInvalid) as caught:
        prove_manifest(changed, slot=100, base_slot=base, name_hash=NAME_HASH)
    assert caught.value.reason == reason
    # An incremental whose manifest does not say its base (v4.2's) is not refused for it.
    assert prove_manifest(decode(MANIFEST), slot=100, base_slot=50, name_hash=NAME_HASH).level


@pytest.mark.parametrize("packed", [True, False])
def test_a_storage_listed_twice_has_the_last_entrys_length(packed: bool) -> None:
    # agave collects the list into a hash map: the last entry of a (slot, id) wins; the
    # first was taken, and the bytes past it were never read
    from array import array

    from tracker.proof.formats.manifest import StorageLengths, StorageList

    big = 0 if packed else 1 << 40  # past 32 bits: the unpacked look-up
    entries = array("Q", [500 + big, 0, 100, 7, 1, 50, 500 + big, 0, 300, 500 + big, 1, 9])
    listed = StorageList(entries)
    lengths = StorageLengths(listed)
    assert lengths.get(500 + big, 0) == 300 and listed.valid_length(500 + big, 0) == 300
    assert lengths.get(500 + big, 1) == 9 and lengths.get(7, 1) == 50
    assert lengths.get(500 + big, 2) is None and listed.valid_length(8, 0) is None
