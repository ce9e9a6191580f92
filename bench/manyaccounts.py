"""A full of many accounts, made storage by storage (bench/accounts.py's archives).

Deterministic (every storage from a generator seeded with the seed and its slot) and bounded
in memory whatever the number of accounts: a storage and its messages, 32 MiB of tar, the
newer versions still to be written (5% of eight storages). The manifest, which agave writes
before the storages, carries their lengths and the lattice hash of the newest versions: the
storages' part of the tar is compressed into a temporary file as it is made (a zstd frame
every 32 MiB), the lattice hash summed as each storage comes, and the archive is then the
manifest's frame followed by that file's frames, copied in the kernel (``copy_file_range``):
zstd frames are independent, tar members are 512-aligned, so the two parts join as one.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import blake3
import numpy as np
import numpy.typing as npt
import zstandard

from tracker.proof.formats.lattice import LtHash
from tracker.proof.formats.writing import (
    SNAPSHOT_VERSION,
    archive_hash_of,
    write_manifest,
    write_status_cache,
)

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

MTIME = 1_767_225_600
#: Accounts whose home is a storage (their first version is written there), about 5,000
#: records with the newer versions of earlier homes (agave's storages hold thousands).
PER_STORAGE = 4_750
#: A newer version is written 1 to this many storages after its older one.
REACH = 8
FRAME = 32 * 1024 * 1024
TOKEN_PROGRAM = b"\x06\xdd\xf6\xe1\xd7\x65\xa1\x93\xd9\xcb\xe1\x46\xce\xeb\x79\xac" * 2
HEAVY_DATA = 20 * 1024
_HEAD = np.dtype(
    [
        ("write_version", "<u8"),
        ("data_len", "<u8"),
        ("pubkey", "V32"),
        ("lamports", "<u8"),
        ("rent_epoch", "<u8"),
        ("owner", "V32"),
        ("executable", "u1"),
        ("rest", "V39"),
    ]
)
assert _HEAD.itemsize == 136


class Records(NamedTuple):
    """Stored versions: pubkeys, lamports, owners, data lengths and their data end to end."""

    pubkeys: U8  # (n, 32)
    lamports: npt.NDArray[np.uint64]
    owners: U8  # (n, 32)
    lens: I64
    blob: U8

    @staticmethod
    def join(parts: list[Records]) -> Records:
        """One set of the records of ``parts`` in order."""
        return Records(*(np.concatenate([getattr(p, f) for p in parts]) for f in Records._fields))

    def take(self, mask: npt.NDArray[np.bool_]) -> Records:
        """The records ``mask`` selects, their data with them."""
        starts = _starts(self.lens)
        keep = self.lens[mask]
        picks = _positions(starts[mask], keep)
        return Records(
            self.pubkeys[mask], self.lamports[mask], self.owners[mask], keep, self.blob[picks]
        )


class Storage(NamedTuple):
    """One storage as the builder makes it, with the messages of its newest versions."""

    slot: int
    data: bytes  # the AppendVec's valid bytes
    messages: U8  # the BLAKE3 messages of its newest versions with lamports, end to end
    ends: I64
    records: int


def _starts(lens: I64) -> I64:
    starts = np.zeros(len(lens), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    return starts


def _positions(starts: I64, lens: I64) -> I64:
    """Every index of the runs ``[starts[i], starts[i] + lens[i])``, in order."""
    total = int(lens.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    within = np.arange(total, dtype=np.int64) - np.repeat(_starts(lens), lens)
    return np.repeat(starts, lens) + within


def _rows(buf: U8, at: I64, rows: U8) -> None:
    if len(at):
        buf[at[:, None] + np.arange(rows.shape[1])] = rows


def _u64(values: npt.NDArray[np.uint64]) -> U8:
    return values.astype("<u8").view(np.uint8).reshape(-1, 8)


def storage_bytes(records: Records) -> bytes:
    """The AppendVec of ``records`` (tracker.proof.formats.writing.write_storage's layout, made at
    once): a 136-byte header and the data, each record at a multiple of 8."""
    sizes = 136 + records.lens
    at = _starts((sizes + 7) & ~7)
    buf = np.zeros(int(at[-1] + sizes[-1]), dtype=np.uint8)
    head = np.zeros(len(sizes), dtype=_HEAD)
    head["data_len"] = records.lens
    head["pubkey"] = records.pubkeys.view("V32").ravel()
    head["lamports"] = records.lamports
    head["owner"] = records.owners.view("V32").ravel()
    _rows(buf, at, head.view(np.uint8).reshape(-1, 136))
    buf[_positions(at + 136, records.lens)] = records.blob
    return buf.tobytes()


def messages_of(records: Records) -> tuple[U8, I64]:
    """The BLAKE3 messages of ``records`` (lamports, data, executable, owner, pubkey:
    tracker.proof.formats.lattice.account_lt_hash's order) end to end, and their ends."""
    sizes = records.lens + 73
    at = _starts(sizes)
    buf = np.zeros(int(sizes.sum()), dtype=np.uint8)
    _rows(buf, at, _u64(records.lamports))
    buf[_positions(at + 8, records.lens)] = records.blob
    _rows(buf, at + 9 + records.lens, records.owners)
    _rows(buf, at + 41 + records.lens, records.pubkeys)
    return buf, at + sizes


def _homes(rng: np.random.Generator, count: int, heavy: bool) -> Records:
    """``count`` accounts as first written: 80% token accounts (165 bytes: a mint of 64, 40
    random bytes, zeros), 10% wallets (no data), 10% 0 to 2,000 random bytes of one of 16
    programs; ``heavy``: all of ~20 KiB of random bytes."""
    pubkeys = rng.integers(0, 256, size=(count, 32), dtype=np.uint8)
    kind = rng.random(count)
    if heavy:
        lens = rng.integers(HEAVY_DATA - 1024, HEAVY_DATA + 1024, size=count).astype(np.int64)
        blob = rng.integers(0, 256, size=int(lens.sum()), dtype=np.uint8)
        owners = np.repeat(rng.integers(0, 256, size=(1, 32), dtype=np.uint8), count, axis=0)
        lamports = rng.integers(1, 10**12, size=count).astype(np.uint64)
        return Records(pubkeys, lamports, owners, lens, blob)
    token, other = kind < 0.8, kind >= 0.9
    lens = np.where(token, 165, np.where(other, rng.integers(0, 2000, size=count), 0))
    lens = lens.astype(np.int64)
    starts = _starts(lens)
    blob = np.zeros(int(lens.sum()), dtype=np.uint8)
    mints = np.random.default_rng(0).integers(0, 256, size=(64, 32), dtype=np.uint8)
    programs = np.random.default_rng(1).integers(0, 256, size=(16, 32), dtype=np.uint8)
    tokens = np.zeros((int(token.sum()), 165), dtype=np.uint8)
    tokens[:, :32] = mints[rng.integers(0, 64, size=len(tokens))]
    tokens[:, 32:72] = rng.integers(0, 256, size=(len(tokens), 40), dtype=np.uint8)
    _rows(blob, starts[token], tokens)
    picks = _positions(starts[other], lens[other])
    blob[picks] = rng.integers(0, 256, size=len(picks), dtype=np.uint8)
    owners = np.zeros((count, 32), dtype=np.uint8)
    owners[token] = np.frombuffer(TOKEN_PROGRAM, dtype=np.uint8)
    owners[other] = programs[rng.integers(0, 16, size=int(other.sum()))]
    lamports = np.where(token, 2_039_280, rng.integers(890_880, 10**12, size=count)).astype(
        np.uint64
    )
    return Records(pubkeys, lamports, owners, lens, blob)


def storage_count(accounts: int, *, heavy: bool = False, per: int | None = None) -> int:
    """How many storages :func:`storages` makes."""
    per = per or (12 if heavy else PER_STORAGE)
    return max(2, -(-accounts // per))


def storages(
    seed: int,
    accounts: int,
    *,
    heavy: bool = False,
    per: int | None = None,
    first: int = 0,
    stop: int | None = None,
) -> Iterator[Storage]:
    """The storages of a state of ``accounts`` accounts, in ascending slots as agave writes
    them. Each storage homes ``per`` new accounts (default ``PER_STORAGE``; heavy: 12; agave's
    ancient storages of ~128 MiB hold ~500,000); 5% of them are written
    again (newer) 1 to ``REACH`` storages later, a fifth of those closed (zero lamports, no
    data, no owner): the older version is then superseded, so a proof needs its second read.
    ``first``, ``stop``: only the storages of those slots (the ``REACH`` before ``first`` are
    made again, unwritten, for the newer versions they leave to it): a part of the same
    storages, which builders in several processes make apart."""
    per = per or (12 if heavy else PER_STORAGE)
    count = max(2, -(-accounts // per))
    stop = count if stop is None else min(stop, count)
    later: dict[int, list[Records]] = {}
    for slot in range(max(0, first - REACH), stop):
        rng = np.random.default_rng([seed, slot])
        homed = accounts // count + (1 if slot < accounts % count else 0)
        homes = _homes(rng, homed, heavy)
        again = (rng.random(homed) < 0.05) & (slot < count - 1)
        closed = again & (rng.random(homed) < 0.2)
        reach = np.minimum(rng.integers(1, REACH + 1, size=homed), count - 1 - slot)
        older = homes._replace(lamports=homes.lamports + np.uint64(1))
        for step in np.unique(reach[again]):
            pick = again & (reach == step)
            newer = homes.take(pick & ~closed)
            gone = pick & closed
            n = int(gone.sum())
            shut = Records(
                homes.pubkeys[gone],
                np.zeros(n, dtype=np.uint64),
                np.zeros((n, 32), dtype=np.uint8),
                np.zeros(n, dtype=np.int64),
                np.zeros(0, dtype=np.uint8),
            )
            later.setdefault(slot + int(step), []).extend([newer, shut])
        if slot < first:  # made again for what it leaves to later slots only
            later.pop(slot, None)
            continue
        newest = Records.join([homes.take(~again), *later.pop(slot, [])])
        stored = Records.join([older.take(again), newest])
        messages, ends = messages_of(newest.take(newest.lamports > 0))
        yield Storage(slot, storage_bytes(stored), messages, ends, len(stored.lens))


def lattice_sum(messages: U8, ends: I64, into: LtHash) -> None:
    """Add the lattice hashes of the messages to ``into`` (BLAKE3 XOF of 2,048 bytes each)."""
    view = memoryview(messages)  # type: ignore[arg-type]
    starts = [0, *ends[:-1].tolist()]
    hasher = blake3.blake3
    for first in range(0, len(starts), 4096):
        into.add(
            b"".join(
                hasher(view[a:b]).digest(2048)
                for a, b in zip(
                    starts[first : first + 4096], ends[first : first + 4096].tolist(), strict=True
                )
            )
        )


def _member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, MTIME
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


class _Frames:
    """Tar bytes into a file as zstd frames of ``FRAME`` bytes of tar each (agave's
    framing), each with its content checksum."""

    def __init__(self, path: Path, threads: int = 2) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._zstd = zstandard.ZstdCompressor(level=1, write_checksum=True, threads=threads)
        self._pending = bytearray()
        self.tar_bytes = 0

    def write(self, data: bytes) -> None:
        self._pending += data
        self.tar_bytes += len(data)
        while len(self._pending) >= FRAME:
            self._file.write(self._zstd.compress(bytes(self._pending[:FRAME])))
            del self._pending[:FRAME]

    def close(self) -> None:
        if self._pending:
            self._file.write(self._zstd.compress(bytes(self._pending)))
        self._file.close()


def _build_part(
    base: Path,
    seed: int,
    accounts: int,
    heavy: bool,
    per: int | None,
    first: int,
    stop: int,
    threads: int,
) -> dict[str, Any]:
    """The tar of the storages of slots [``first``, ``stop``) as zstd frames into
    ``storages-FIRST.part`` (and their newest messages into ``messages-FIRST.bin``, their ends
    into ``ends-FIRST.npy``, for the baseline's loop), and what they are: the part's lattice
    sum, its storages' list, counts."""
    frames = _Frames(base / f"storages-{first}.part", threads)
    lt = LtHash()
    listed: list[tuple[int, int, int]] = []
    records = newest = 0
    ends: list[I64] = []
    with open(base / f"messages-{first}.bin", "wb") as messages:
        at = 0
        for storage in storages(seed, accounts, heavy=heavy, per=per, first=first, stop=stop):
            lattice_sum(storage.messages, storage.ends, lt)
            messages.write(memoryview(storage.messages))  # type: ignore[arg-type]
            ends.append(storage.ends + at)
            at += len(storage.messages)
            newest += len(storage.ends)
            records += storage.records
            listed.append((storage.slot, storage.slot, len(storage.data)))
            body = storage.data + bytes(-len(storage.data) % 4096)  # the file's spare room
            frames.write(_member(f"accounts/{storage.slot}.{storage.slot}", len(body)))
            frames.write(body + bytes(-len(body) % 512))
    np.save(base / f"ends-{first}.npy", np.concatenate(ends) if ends else np.zeros(0, np.int64))
    frames.close()
    return {
        "first": first,
        "lt": lt.value(),
        "listed": listed,
        "records": records,
        "newest": newest,
        "tar_bytes": frames.tar_bytes,
    }


def build_archive(
    base: Path,
    slot: int,
    seed: int,
    accounts: int,
    *,
    heavy: bool = False,
    per: int | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Write the full of ``storages(seed, accounts, per=per)`` at ``slot`` into ``base``; what
    it is. ``processes``: the storages are made in that many parts at once, each a process
    (the same archive but for where a zstd frame ends: each part's last frame is short)."""
    base.mkdir(parents=True, exist_ok=True)
    count = storage_count(accounts, heavy=heavy, per=per)
    parts = max(1, min(processes, count))
    bounds = [count * k // parts for k in range(parts + 1)]
    jobs = [
        (base, seed, accounts, heavy, per, a, b, 2 if parts == 1 else 0)
        for a, b in itertools.pairwise(bounds)
    ]
    if parts == 1:
        done = [_build_part(*jobs[0])]
    else:
        # fork: the builder's process runs no thread of its own yet
        with multiprocessing.get_context("fork").Pool(parts) as pool:
            done = pool.starmap(_build_part, jobs)
    lt = LtHash()
    listed: list[tuple[int, int, int]] = []
    for part in done:
        lt.add(part["lt"])
        listed += part["listed"]
    last = base / f"storages-{done[-1]['first']}.part"
    with open(last, "ab") as tail:  # the tar's end
        tail.write(zstandard.ZstdCompressor(level=1, write_checksum=True).compress(bytes(1024)))
    manifest = write_manifest(slot, lt.value(), listed)
    head = bytearray()
    for name, data in (
        ("version", SNAPSHOT_VERSION),
        (f"snapshots/{slot}/{slot}", manifest),
        ("snapshots/status_cache", write_status_cache([slot])),
    ):
        head += _member(name, len(data)) + data + bytes(-len(data) % 512)
    archive = base / f"snapshot-{slot}-{archive_hash_of(lt.value())}.tar.zst"
    with open(archive, "wb") as out:
        out.write(zstandard.ZstdCompressor(level=1, write_checksum=True).compress(bytes(head)))
        out.flush()  # before the kernel copies after it
        for part in done:
            out_start = out.seek(0, os.SEEK_END)
            path = base / f"storages-{part['first']}.part"
            with open(path, "rb") as src:
                try:
                    left = os.fstat(src.fileno()).st_size
                    while left:
                        left -= os.copy_file_range(src.fileno(), out.fileno(), min(left, 1 << 30))
                except OSError:  # a file system without it: copied through this process
                    src.seek(out.tell() - out_start)
                    shutil.copyfileobj(src, out, 1 << 24)
                    out.flush()
            path.unlink()
    return {
        "archive": archive.name,
        "accounts": accounts,
        "records": sum(part["records"] for part in done),
        "newest_with_lamports": sum(part["newest"] for part in done),
        "storages": len(listed),
        "tar_bytes": sum(part["tar_bytes"] for part in done) + 1024,
        "messages": [part["first"] for part in done],
    }
