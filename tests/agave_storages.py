"""The account storages of the archive written by agave v4.2's own serializer
(tests/data/agave-snapshot/, PROVENANCE.md there), with what its decoded JSON says of them;
:func:`feed` hands a storage to an accounts proof in chunks."""

from __future__ import annotations

import functools
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import attrs
import zstandard

from tracker.proof.accounts.accountsproof import AccountsProof
from tracker.proof.formats.storages import META, aligned
from tracker.proof.formats.streamparse import MARK, Feeder, Parser, ParserOf

DATA = Path(__file__).parent / "data" / "agave-snapshot"
ARCHIVE = DATA / "test-snapshot-v4.2.0-beta.1.tar.zst"
DECODED = DATA / "test-snapshot-v4.2.0-beta.1.json"


@attrs.frozen
class Storage:
    """One ``accounts/{slot}.{id}`` member: its bytes and its valid length."""

    slot: int
    ident: int
    data: bytes
    current_len: int

    @property
    def name(self) -> str:
        return f"accounts/{self.slot}.{self.ident}"


@functools.cache
def decoded() -> dict[str, Any]:
    """The archive's contents as decoded values."""
    result: dict[str, Any] = json.loads(DECODED.read_text())
    return result


def expected_lt_hash() -> bytes:
    """The manifest's accounts lattice hash (2,048 bytes)."""
    return bytes.fromhex(decoded()["extra_fields"]["accounts_lt_hash"])


@functools.cache
def storages() -> tuple[Storage, ...]:
    """The archive's storages, in archive order. Each one's valid length comes from the
    JSON's entries (their records laid end to end), not from the file's size."""
    lengths: dict[int, int] = {}
    for entry in decoded()["accounts"]["entries"]:
        at = lengths.get(entry["file_id"], 0)
        lengths[entry["file_id"]] = aligned(at) + META + entry["data_len"]
    tar_bytes = zstandard.ZstdDecompressor().stream_reader(ARCHIVE.read_bytes()).read()
    found: list[Storage] = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar:
            if member.name.startswith("accounts/") and member.isfile():
                slot, ident = member.name.removeprefix("accounts/").split(".")
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                found.append(Storage(int(slot), int(ident), data, lengths[int(ident)]))
    return tuple(found)


def _ended(parser: ParserOf[int]) -> Parser:
    yield from parser
    yield MARK


def feed(proof: AccountsProof, storage: Storage, chunk: int, size: int | None = None) -> None:
    """Feed one storage to the proof in chunks of ``chunk`` bytes."""
    data = storage.data
    size = len(data) if size is None else size
    feeder = Feeder(_ended(proof.storage(storage.slot, storage.ident, size, storage.current_len)))
    for at in range(0, len(data), chunk):
        feeder.feed(data[at : at + chunk])
    feeder.finish()
