"""Real snapshot archives for tests: good ones in every compression, and bad ones of the same
name and size.

``build_archive`` writes a real tar (GNU format, as agave's tar-rs writes) holding ``version``,
``snapshots/status_cache``, ``snapshots/{S}/{S}`` and the account storages, compressed as its
extension says. The storages are laid out as agave writes them, one a slot (storage ``i`` is
``accounts/{S-i}.{i}``), or with ``layout="firedancer"`` as Firedancer v26 writes them, every
one of the snapshot's slot (``accounts/{S}.{i}``: agave cannot load it, firedancer-io/
firedancer#10706). The state is a few accounts drawn from the name's seed
(:func:`state_accounts`), dealt over the storages in agave's AppendVec format
(``tracker.proof.formats.writing``); after each storage's valid length comes spare capacity of
random bytes interleaved with zero runs (about 3x compressible, like account data), which no loader
reads. The manifest (agave's format) lists the storages with their valid lengths and carries
the state's lattice hash, and the name's hash is that lattice hash's (SIMD-0220): a full
proves to ``accounts``, an incremental to ``manifest``.
``bad_variants`` makes the archives a check must refuse; ``build_big_archive`` streams a
~1 GiB one to disk for the bench.

Self-contained (no import of other test helpers): the bench imports it as ``tests.archives``.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import lzma
import os
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import lz4.frame
import zstandard

from tracker.core.snapshots import parse_archive_name
from tracker.proof.formats.writing import (
    CUSTOM_ERROR,
    OK_RESULT,
    Account,
    archive_hash_of,
    lattice_of,
    lattice_of_slots,
    padded,
    write_manifest,
    write_status_cache,
    write_storage,
)

COMPRESSIONS = ("zst", "lz4", "bz2", "gz", "xz", "tar")
EXTENSIONS = {
    "zst": ".tar.zst",
    "lz4": ".tar.lz4",
    "bz2": ".tar.bz2",
    "gz": ".tar.gz",
    "xz": ".tar.xz",
    "tar": ".tar",
}
MTIME = 1_767_225_600  # 2026-01-01: fixed, so that archives are the same bytes every run
VERSION = b"1.2.0"
#: How the storages are laid out (:func:`storage_slots`): as agave writes them, or Firedancer.
LAYOUTS = ("agave", "firedancer")


#: Accounts in an archive's state: a few, so that the lattice hash costs microseconds.
STATE_ACCOUNTS = 4


def state_accounts(seed: int) -> list[Account]:
    """The accounts of the state of ``seed`` (distinct pubkeys, some data, none closed)."""
    rnd = random.Random(f"accounts-{seed}")
    return [
        Account(
            pubkey=rnd.randbytes(32),
            lamports=1 + rnd.randrange(10**12),
            data=rnd.randbytes(rnd.randrange(0, 200)),
            owner=rnd.randbytes(32),
            rent_epoch=2**64 - 1,
        )
        for _ in range(STATE_ACCOUNTS)
    ]


@functools.lru_cache(maxsize=4096)
def lattice_hash(seed: int) -> bytes:
    """The 2,048-byte accounts lattice hash of the state of ``seed``."""
    return lattice_of(state_accounts(seed))


def archive_hash(seed: int) -> str:
    """The base58 hash a name carries for the lattice hash of ``seed`` (SIMD-0220)."""
    return archive_hash_of(lattice_hash(seed))


def name_seed(slot: int, seed: int) -> int:
    """The seed of the lattice hash of the archive of ``slot`` built with ``seed``."""
    return seed * 1_000_003 + slot


def archive_name(
    slot: int, base_slot: int | None = None, compression: str = "zst", seed: int = 0
) -> str:
    """The canonical archive name of a full (``base_slot`` None) or incremental snapshot."""
    ext = EXTENSIONS[compression]
    hash_ = archive_hash(name_seed(slot, seed))
    if base_slot is None:
        return f"snapshot-{slot}-{hash_}{ext}"
    return f"incremental-snapshot-{base_slot}-{slot}-{hash_}{ext}"


def account_bytes(rnd: random.Random, size: int) -> bytes:
    """``size`` bytes of random runs and zero runs (about 1:2): compresses about 3x."""
    out = bytearray()
    while len(out) < size:
        out += rnd.randbytes(rnd.randrange(64, 2048))
        out += bytes(rnd.randrange(128, 4096))
    return bytes(out[:size])


def storage_slots(slot: int, count: int, layout: str = "agave") -> list[int]:
    """The slot of each of ``count`` storages of a snapshot of ``slot``: agave writes one
    storage a slot (storage ``i`` of slot ``slot - i``, never below 0), Firedancer v26 names
    every storage with the snapshot's slot (several storages of one slot, which agave's
    loader refuses)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout: {layout}")
    if layout == "firedancer":
        return [slot] * count
    return [max(slot - i, 0) for i in range(count)]


def closed_versions(slot: int, seed: int, closed: str | None) -> dict[int, list[Account]]:
    """The versions of an account closed before the snapshot, by storage index (0: the
    snapshot's slot, the last: the oldest), as a full written with ``closed`` holds them:

    - None: no closed account;
    - ``"tombstone"``: its older open version in the oldest storage and its tombstone (zero
      lamports, the newest version) in the first, as agave writes a full since
      anza-xyz/agave#14867 (tombstones always kept);
    - ``"dropped"``: neither, as a full of anza-xyz/agave#13851 is written when the older
      version was marked obsolete (tombstones left out of fulls, v4.3.0-beta);
    - ``"stale"``: the older open version without its tombstone, the state #13851 wrote when
      the obsolete mark came after the storage was read (#14867: agave's load then fails,
      "capitalization mismatch"): the account comes back to life.

    The bank's state never holds the account: the manifest's lattice hash is the same."""
    if closed is None or closed == "dropped":
        return {}
    rnd = random.Random(f"closed-{seed}-{slot}")
    pubkey, owner = rnd.randbytes(32), rnd.randbytes(32)
    older = Account(
        pubkey, 1 + rnd.randrange(10**9), rnd.randbytes(40), owner, rent_epoch=2**64 - 1
    )
    if closed == "stale":
        return {-1: [older]}
    if closed == "tombstone":
        return {-1: [older], 0: [Account(pubkey, 0)]}
    raise ValueError(f"unknown closed: {closed}")


def snapshot_entries(
    slot: int,
    *,
    accounts: int,
    account_size: int,
    seed: int,
    layout: str = "agave",
    closed: str | None = None,
    listed: bool = True,
    epoch_stakes: Mapping[int, Sequence[tuple[bytes, int, bytes]]] | None = None,
) -> list[tuple[str, bytes | None]]:
    """The (name, data) entries of a snapshot tar in agave's order; None data: a directory.
    ``layout``: the storages as agave writes them, or as Firedancer does (:func:`storage_slots`);
    ``closed``: an account closed before the snapshot, its versions kept as
    :func:`closed_versions` says (agave's layout, two storages at least); ``listed=False``:
    the manifest lists no storage and the status cache comes last, as Firedancer v26.08
    writes a full (``src/discof/backup/fd_ssmanifest_encoder.c``, ``fd_snapmk_tile.c``);
    ``epoch_stakes``: the manifest's (:func:`~tracker.proof.formats.writing.write_manifest`)."""
    rnd = random.Random(f"{seed}-{slot}")
    state = state_accounts(name_seed(slot, seed))
    # The state's accounts dealt over the storages: storage i holds every accounts-th one.
    dealt = [state[i::accounts] for i in range(accounts)]
    if closed is not None and (accounts < 2 or layout != "agave"):
        raise ValueError("a closed account needs agave's layout and two storages")
    for at, versions in closed_versions(slot, seed, closed).items():
        dealt[at] = dealt[at] + versions
    valid = [write_storage(held) for held in dealt]
    slots = storage_slots(slot, accounts, layout)
    storages = [(slots[i], i, len(data)) for i, data in enumerate(valid)] if listed else []
    lattice = lattice_hash(name_seed(slot, seed))
    manifest = write_manifest(slot, lattice, storages, epoch_stakes=epoch_stakes)
    status_cache = ("snapshots/status_cache", status_cache_of(slot, rnd))
    entries: list[tuple[str, bytes | None]] = [
        ("version", VERSION),
        ("snapshots", None),
        (f"snapshots/{slot}", None),
        (f"snapshots/{slot}/{slot}", manifest),
    ]
    if listed:
        entries.append(status_cache)
    for i, data in enumerate(valid):
        data = padded(data)
        spare = account_bytes(rnd, max(account_size - len(data), 0)) if listed else b""
        entries.append((f"accounts/{slots[i]}.{i}", data + spare))
    if not listed:
        entries.append(status_cache)
    return entries


def status_cache_of(slot: int, rnd: random.Random) -> bytes:
    """A status cache as agave writes one at ``slot``: the slot and the two before it rooted,
    each with a transaction that succeeded and one that failed."""
    statuses = [(rnd.randbytes(20), OK_RESULT), (rnd.randbytes(20), CUSTOM_ERROR)]
    return write_status_cache([slot, *range(max(slot - 2, 0), slot)], statuses)


def storage_members(
    state: dict[int, list[Account]],
) -> tuple[list[tuple[int, int, int]], list[tuple[str, bytes | None]]]:
    """Each slot's accounts as one storage, as agave writes them: the manifest's storage list
    ``(slot, id, length)`` and the tar members ``accounts/{slot}.{id}``, padded to 4 KiB."""
    storages: list[tuple[int, int, int]] = []
    members: list[tuple[str, bytes | None]] = []
    for ident, slot in enumerate(sorted(state)):
        data = write_storage(state[slot])
        storages.append((slot, ident, len(data)))
        members.append((f"accounts/{slot}.{ident}", data + bytes(-len(data) % 4096)))
    return storages, members


def make_tar(entries: list[tuple[str, bytes | None]], mtime: int = MTIME) -> bytes:
    """A GNU-format tar of ``entries`` (end blocks and record padding as tarfile writes)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def compress(data: bytes, compression: str, *, pieces: int = 1) -> bytes:
    """``data`` compressed as ``compression``; ``pieces`` > 1 splits it into that many
    frames / members / streams (they decode to the concatenation; agave reads them all of
    zstd only: of lz4, gzip and bz2 the first unit)."""
    if compression == "tar":
        return data
    step = -(-len(data) // pieces) if data else 1
    parts = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    return b"".join(_compress_one(part, compression) for part in parts)


def _compress_one(data: bytes, compression: str) -> bytes:
    if compression == "zst":
        return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)
    if compression == "lz4":
        return bytes(lz4.frame.compress(data, content_checksum=True))
    if compression == "bz2":
        return bz2.compress(data, 9)
    if compression == "gz":
        return gzip.compress(data, mtime=0)
    if compression == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ)
    raise ValueError(f"unknown compression: {compression}")


def build_archive(
    slot: int,
    *,
    base_slot: int | None = None,
    compression: str = "zst",
    accounts: int = 3,
    account_size: int = 64 * 1024,
    seed: int = 0,
    layout: str = "agave",
    closed: str | None = None,
    listed: bool = True,
    epoch_stakes: Mapping[int, Sequence[tuple[bytes, int, bytes]]] | None = None,
) -> tuple[str, bytes]:
    """(canonical archive name, archive bytes) of a real snapshot archive of ``slot``, its
    storages laid out as agave writes them (``layout="firedancer"``: as Firedancer does;
    ``closed``, ``listed`` and ``epoch_stakes``: :func:`snapshot_entries`)."""
    name = archive_name(slot, base_slot, compression, seed)
    entries = snapshot_entries(
        slot,
        accounts=accounts,
        account_size=account_size,
        seed=seed,
        layout=layout,
        closed=closed,
        listed=listed,
        epoch_stakes=epoch_stakes,
    )
    return name, compress(make_tar(entries), compression)


def forged_accounts_archive(
    slot: int, *, accounts: int = 3, account_size: int = 64 * 1024, seed: int = 0
) -> tuple[str, bytes]:
    """(name, bytes) of ``build_archive(slot, ...)``'s full (``.tar.zst``) with the lamports
    of the first account of its last storage changed: well formed, its manifest and name
    its state's (proven to ``manifest``), but its storages do not give the manifest's
    ``accounts_lt_hash`` (refused at ``accounts``)."""
    name = archive_name(slot, seed=seed)
    entries = snapshot_entries(slot, accounts=accounts, account_size=account_size, seed=seed)
    member, data = entries[-1]
    assert member.startswith("accounts/") and data, member
    changed = bytearray(data)
    changed[48] ^= 0x01  # the record's lamports: after StoredMeta's 48 bytes
    return name, compress(make_tar([*entries[:-1], (member, bytes(changed))]), "zst")


# --- bad archives ------------------------------------------------------------------------------

#: What the check reports for each bad variant, by compression: a regular expression of the
#: start of the reason (tests/unit/test_archivecheck.py holds the check to it).
#: The reason of the ``missing_status_cache`` variant.
MISSING_STATUS_CACHE = (
    r"tar: file 'snapshots/status_c[a-z_]+' at byte \d+ is not an entry agave writes in this "
    r"archive$"
)
EXPECTED_REASONS: dict[str, dict[str, str]] = {
    "flipped_byte": {
        "zst": r"zstd: (frame checksum mismatch|data corruption detected) in the frame at byte 0$",
        "lz4": r"lz4: frame checksum mismatch in the frame at byte 0$",
        "bz2": r"bz2: invalid data stream in the stream at byte 0$",
        "gz": r"gzip: (incorrect data check|invalid .*) in the member at byte 0$",
        "xz": r"xz: corrupt input data in the stream at byte 0$",
        "tar": r"tar: bad header checksum at byte \d+$",
    },
    "other_slot": {
        c: r"tar: 'snapshots/(\d+)' at byte \d+ is of slot \1, not the slot \d+ the archive's "
        "name says$"
        for c in COMPRESSIONS
    },
    "not_tar": {c: r"tar: bad header checksum at byte 0$" for c in COMPRESSIONS},
    "truncated_zero_padded": {
        # The zeros after the cut are read as empty blocks (zstd), or decoded into garbage
        # that the tar walk refuses before zlib notices (gzip).
        "zst": r"zstd: (a run of empty blocks at byte \d+ \(zero-filled data\?\)"
        r"|data corruption detected in the frame at byte 0|stream truncated at byte \d+)",
        "lz4": r"lz4: decompression failed in the frame at byte 0$",
        "bz2": r"bz2: invalid data stream in the stream at byte 0$",
        "gz": r"(gzip: .* in the member at byte 0|tar: bad header checksum at byte \d+)$",
        "xz": r"xz: corrupt input data in the stream at byte 0$",
        "tar": r"tar: bad header checksum at byte \d+$",
    },
    "trailing_bytes": {
        **{c: r"trailing bytes after the compressed stream at byte \d+$" for c in COMPRESSIONS},
        **{
            c: rf"trailing bytes after the compressed stream at byte \d+ \(agave reads the first"
            rf" {unit} only\)$"
            for c, unit in (("lz4", "lz4 frame"), ("gz", "gzip member"), ("bz2", "bz2 stream"))
        },
        "tar": r"tar: data after the end-of-archive blocks? at byte \d+$",
    },
    # Renamed to keep its size: the new name is one agave does not write.
    "missing_status_cache": {c: MISSING_STATUS_CACHE for c in COMPRESSIONS},
}
#: How many variants may not reach the exact size of the good archive (none, with the
#: defaults of build_archive: checked by the tests).
_SEARCH = 400


def bad_variants(name: str, good: bytes) -> Mapping[str, bytes]:
    """Bad archives of the same name and the same size as ``good`` (built by build_archive):

    - ``flipped_byte``: one byte flipped in the middle of the compressed data (for ``.tar``,
      which has no checksum over member data, in the first account's header);
    - ``other_slot``: a valid archive of another slot of as many digits;
    - ``not_tar``: a valid compressed stream of random bytes (for ``.tar``: random bytes; for
      ``.tar.bz2`` two streams, which the check reads as one);
    - ``truncated_zero_padded``: cut at 60% and filled up with zeros, as a sparse file whose
      download stopped (for ``.tar``: cut 200 bytes into an account's header, else the zeros
      would read as the end-of-archive blocks and the tar would pass: a plain tar has no
      checksum over its data);
    - ``trailing_bytes``: a valid, slightly smaller archive followed by non-zero bytes;
    - ``missing_status_cache``: a valid archive whose ``snapshots/status_cache`` is renamed.

    The same size is reached by searching over a free parameter (another slot, the mtime of
    a header, a length of random data); a variant that found no exact fit in the search is
    still bad and as close as found (never the case for build_archive's defaults).
    """
    return _Variants(name, good)


#: The kinds of :func:`bad_variants`, in its order.
BAD_KINDS = (
    "flipped_byte",
    "other_slot",
    "not_tar",
    "truncated_zero_padded",
    "trailing_bytes",
    "missing_status_cache",
)


class _Variants(Mapping[str, bytes]):
    """The bad variants of one archive, each built when first asked for (a size search
    recompresses the archive: a test that needs one variant pays for that one)."""

    def __init__(self, name: str, good: bytes) -> None:
        self._name = name
        self._good = good

    def __getitem__(self, kind: str) -> bytes:
        if kind not in BAD_KINDS:
            raise KeyError(kind)
        return _bad_variant(self._name, self._good, kind)

    def __iter__(self) -> Iterator[str]:
        return iter(BAD_KINDS)

    def __len__(self) -> int:
        return len(BAD_KINDS)


@functools.lru_cache(maxsize=64)
def _bad_variant(name: str, good: bytes, kind: str) -> bytes:
    parsed = parse_archive_name(name)
    assert parsed is not None, name
    compression = next(c for c, ext in EXTENSIONS.items() if ext == parsed.ext)
    size = len(good)
    if kind == "not_tar":
        return _not_tar(compression, size)
    tar = _tar_of(good, compression)
    if kind == "flipped_byte":
        return _flipped(good, tar, compression)
    if kind == "truncated_zero_padded":
        return _truncated(good, tar, compression)
    entries = list(_entries_of(good, compression))
    if kind == "other_slot":
        return _other_slot(entries, parsed.slot, compression, size)
    if kind == "trailing_bytes":
        return _trailing(good, entries, compression)
    return _missing_status_cache(entries, compression, size)


@functools.lru_cache(maxsize=8)
def _tar_of(good: bytes, compression: str) -> bytes:
    return _decompress(good, compression)


@functools.lru_cache(maxsize=8)
def _entries_of(good: bytes, compression: str) -> tuple[tuple[str, bytes | None], ...]:
    return tuple(_entries(_tar_of(good, compression)))


def _decompress(data: bytes, compression: str) -> bytes:
    if compression == "zst":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if compression == "lz4":
        return bytes(lz4.frame.decompress(data))
    if compression == "bz2":
        return bz2.decompress(data)
    if compression == "gz":
        return gzip.decompress(data)
    if compression == "xz":
        return lzma.decompress(data)
    return data


def _entries(tar: bytes) -> list[tuple[str, bytes | None]]:
    entries: list[tuple[str, bytes | None]] = []
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive:
            file = archive.extractfile(member) if member.isfile() else None
            entries.append((member.name, file.read() if file else None))
    return entries


def _member_offsets(tar: bytes) -> dict[str, int]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {member.name: member.offset for member in archive}


def _flipped(good: bytes, tar: bytes, compression: str) -> bytes:
    if compression == "tar":
        at = next(o for n, o in _member_offsets(tar).items() if n.startswith("accounts/")) + 10
    else:
        at = len(good) // 2
    out = bytearray(good)
    out[at] ^= 0x55
    return bytes(out)


def _fit(size: int, candidates: Iterator[bytes]) -> bytes:
    """The first candidate of exactly ``size`` bytes, else the closest one seen."""
    best = b""
    for data in candidates:
        if len(data) == size:
            return data
        if not best or abs(len(data) - size) < abs(len(best) - size):
            best = data
    return best


def _renamed(
    entries: list[tuple[str, bytes | None]], rename: Callable[[str], str]
) -> list[tuple[str, bytes | None]]:
    return [(rename(n), d) for n, d in entries]


def _moved(name: str, slot: int, other: int) -> str:
    """``name`` of an archive of ``slot`` in the archive of ``other``: a storage moves with
    the snapshot's slot (``accounts/{S-i}.{i}`` becomes ``accounts/{O-i}.{i}``)."""
    if name.startswith("accounts/"):
        storage_slot, _, ident = name.removeprefix("accounts/").partition(".")
        return f"accounts/{int(storage_slot) - slot + other}.{ident}"
    return name.replace(str(slot), str(other))


def _other_slot(
    entries: list[tuple[str, bytes | None]], slot: int, compression: str, size: int
) -> bytes:
    def candidates() -> Iterator[bytes]:
        digits = len(str(slot))
        for other in range(slot + 1, slot + _SEARCH):
            if len(str(other)) != digits:
                break
            renamed = _renamed(entries, lambda n, o=other: _moved(n, slot, o))
            yield compress(make_tar(renamed), compression)

    return _fit(size, candidates())


def _missing_status_cache(
    entries: list[tuple[str, bytes | None]], compression: str, size: int
) -> bytes:
    # Renamed to a name of the same length, so that the tar keeps its size.
    def candidates() -> Iterator[bytes]:
        for other in ("snapshots/status_cach_", "snapshots/status_cac_e", "snapshots/status_ca_he"):
            renamed = _renamed(
                entries, lambda n, o=other: o if n == "snapshots/status_cache" else n
            )
            for i in range(_SEARCH):
                yield compress(make_tar(renamed, MTIME + i), compression)

    return _fit(size, candidates())


def _not_tar(compression: str, size: int) -> bytes:
    if compression == "tar":
        return random.Random(size).randbytes(size)
    if compression == "bz2" and size > 1024:
        fitted = _fit(size, _bz2_streams(size))
        if len(fitted) == size:
            return fitted

    def candidates(pool: bytes) -> Iterator[bytes]:
        length = max(1, size - 64)
        for _ in range(16):  # compressed random data grows about a byte a byte: aim
            data = compress(pool[:length], compression)
            yield data
            length = max(1, min(len(pool), length + size - len(data)))
        for step in range(1, _SEARCH // 2):  # then walk around where the aim ended
            for candidate in (length - step, length + step):
                if 0 < candidate <= len(pool):
                    yield compress(pool[:candidate], compression)

    def pools() -> Iterator[bytes]:  # another pool of random bytes when one cannot fit
        for attempt in range(4):
            yield from candidates(random.Random(size + attempt).randbytes(size + 4096))

    return _fit(size, pools())


def _bz2_streams(size: int) -> Iterator[bytes]:
    """Random bytes as two bz2 streams (bzip2 and the check read concatenated streams): a
    byte more of input moves bz2's size of random bytes by tens of bytes either way, so a
    size search over one stream compresses the whole hundreds of times (11 s for 76 KB).
    The first stream is aimed ~180 bytes short of ``size``; small second streams, cheap to
    compress, are tried until one fills the rest."""
    pool = random.Random(size).randbytes(size + 4096)
    length = size - 180
    for _ in range(8):
        first = compress(pool[:length], "bz2")
        rest = size - len(first)
        if 120 <= rest <= 240:
            break
        length = max(1, min(len(pool), length + rest - 180))
    else:
        return
    tails = random.Random(rest)
    for _ in range(8):
        for m in range(max(1, rest - 130), rest - 50):
            yield first + compress(tails.randbytes(m), "bz2")


def _truncated(good: bytes, tar: bytes, compression: str) -> bytes:
    if compression == "tar":
        accounts = [o for n, o in _member_offsets(tar).items() if n.startswith("accounts/")]
        cut = accounts[len(accounts) // 2] + 200
    else:
        cut = len(good) * 6 // 10
    return good[:cut] + bytes(len(good) - cut)


def _trailing(good: bytes, entries: list[tuple[str, bytes | None]], compression: str) -> bytes:
    if compression == "tar":  # the end blocks and record padding stay; the last bytes change
        return good[:-8] + b"TRAILING"
    name, data = entries[-1]
    assert data is not None
    shorter = compress(make_tar([*entries[:-1], (name, data[: len(data) // 2])]), compression)
    assert len(shorter) < len(good)
    junk = b"TRAILING" * (len(good) // 8 + 1)
    return shorter + junk[: len(good) - len(shorter)]


def huge_pax_size_archive(
    slot: int, compression: str = "zst", *, digits: int = 5000, seed: int = 0
) -> tuple[str, bytes]:
    """(name, bytes) of a snapshot archive whose last account file has a pax ``size`` of
    ``digits`` digits (more than Python converts to an int: 4300), as a hostile source may
    send: every check must refuse it with a reason, never crash on it."""
    name, good = build_archive(slot, compression=compression, seed=seed)
    tar = _decompress(good, compression)
    at = max(_member_offsets(tar).values())
    return name, compress(tar[:at] + _huge_pax_size(digits) + tar[at:], compression)


def huge_pax_size_reason(good: bytes, compression: str) -> str:
    """Why the check refuses :func:`huge_pax_size_archive`'s archive (made of ``good``): the
    pax header itself, before its records are read (agave writes none)."""
    at = max(_member_offsets(_decompress(good, compression)).values())
    return (
        f"tar: '././@PaxHeader' at byte {at} is a pax header; agave writes only regular "
        "files and directories"
    )


def huge_pax_size_tar(name: str, good: bytes, *, digits: int = 5000) -> bytes:
    """A bad copy of the plain ``.tar`` archive ``good`` of the same size: a pax header with
    a ``size`` of ``digits`` digits before its last member (the tail cut to keep the size)."""
    parsed = parse_archive_name(name)
    assert parsed is not None and parsed.ext == ".tar", name
    at = max(_member_offsets(good).values())
    return (good[:at] + _huge_pax_size(digits) + good[at:])[: len(good)]


def _huge_pax_size(digits: int) -> bytes:
    body = b" size=" + b"9" * digits + b"\n"
    length = len(body) + len(str(len(body) + len(str(len(body)))))
    record = str(length).encode() + body
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size, pax.mtime = tarfile.XHDTYPE, len(record), MTIME
    return pax.tobuf(tarfile.USTAR_FORMAT) + record + bytes(-len(record) % 512)


# --- the bench's big archive -------------------------------------------------------------------


def big_archive_name(slot: int = 300_000_000) -> str:
    """The name of the bench's big archive."""
    return archive_name(slot, compression="zst", seed=7)


def build_big_archive(path: str, *, size: int = 1 << 30, level: int = 1, threads: int = 2) -> str:
    """Write a real ``.tar.zst`` snapshot archive of about ``size`` compressed bytes to
    ``path`` (its basename a valid archive name: see big_archive_name), unless it is there.

    Streamed in bounded memory: account files of 1-8 MiB written through a multi-threaded
    zstd compressor, a new frame every 32 MiB of tar (as agave writes them), content
    checksums on. Written to a temp file and renamed, so a file at ``path`` is complete.
    """
    if os.path.exists(path):
        return path
    parsed = parse_archive_name(os.path.basename(path))
    assert parsed is not None and parsed.ext == ".tar.zst", path
    slot = parsed.slot
    rnd = random.Random(slot)
    temp = f"{path}.part"
    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=threads, write_checksum=True
    )
    with open(temp, "wb") as raw:
        writer = zstandard.ZstdCompressor(compression_params=params).stream_writer(
            raw, closefd=False
        )
        frames = _FrameEvery(writer, 32 * 1024 * 1024)
        with tarfile.open(fileobj=frames, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            # The state's storage first (named in the manifest: the archive proves to
            # `accounts`); then storages the manifest does not name, which the check skips.
            for name, data in snapshot_entries(slot, accounts=1, account_size=0, seed=7):
                _add(tar, name, data)
            i = 1
            while raw.tell() < size:
                _add(tar, f"accounts/{slot}.{i}", account_bytes(rnd, rnd.randrange(1, 9) << 20))
                i += 1
        writer.flush(zstandard.FLUSH_FRAME)
        writer.close()
    os.replace(temp, path)
    return path


def write_framed_snapshot(
    path: Path, slot: int, manifest: bytes, storages: Iterable[tuple[str, bytes]], level: int
) -> None:
    """Write a full of ``slot`` to ``path`` as agave lays it out (``version``, the manifest,
    the status cache, then each ``(name, data)`` of ``storages`` as they come), a zstd frame
    every 32 MiB of tar, streamed: the storages may be made as they are written."""
    params = zstandard.ZstdCompressionParameters.from_level(level, threads=2, write_checksum=True)
    with open(path, "wb") as raw:
        writer = zstandard.ZstdCompressor(compression_params=params).stream_writer(
            raw, closefd=False
        )
        frames = _FrameEvery(writer, 32 * 1024 * 1024)
        with tarfile.open(fileobj=frames, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            _add(tar, "version", b"1.2.0")
            _add(tar, f"snapshots/{slot}/{slot}", manifest)
            _add(tar, "snapshots/status_cache", write_status_cache([slot]))
            for name, data in storages:
                _add(tar, name, data)
        writer.flush(zstandard.FLUSH_FRAME)
        writer.close()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


class _FrameEvery(io.RawIOBase):
    """A writable that ends the zstd frame every ``frame`` bytes written through it."""

    def __init__(self, writer: zstandard.ZstdCompressionWriter, frame: int) -> None:
        self._writer = writer
        self._frame = frame
        self._in_frame = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._writer.write(data)
        self._in_frame += len(data)
        if self._in_frame >= self._frame:
            self._writer.flush(zstandard.FLUSH_FRAME)
            self._in_frame = 0
        return len(data)


# --- fulls of many accounts (the accounts proof past its memory) ------------------------------


@functools.lru_cache(maxsize=32)  # built once a worker: the lanes run each test three times
def many_accounts_archive(
    slot: int, count: int, *, seed: int = 0, empty: bool = False, pieces: int = 4
) -> tuple[str, bytes]:
    """(name, bytes) of a full (``.tar.zst`` of ``pieces`` zstd frames, as agave writes) of
    ``count`` accounts over four storages of slots ``slot - 3`` to ``slot``, every tenth with
    an older version in an earlier storage; its name carries the state's lattice hash.
    ``empty``: every account closed, no data, pubkeys counted up (a hostile archive: millions
    of them compress to a few MiB, and their lattice hash is the empty state's)."""
    rnd = random.Random(f"many-{seed}-{slot}")
    stored: dict[int, list[Account]] = {slot - i: [] for i in range(4)}
    for n in range(count):
        # counted from 1: agave's scan of a storage stops at the default pubkey
        pubkey = (n + 1).to_bytes(32, "big") if empty else rnd.randbytes(32)
        lamports = 0 if empty else 1 + rnd.randrange(10**9)
        data = b"" if empty else rnd.randbytes(rnd.randrange(0, 120))
        newest = slot - (n % 3)
        stored[newest].append(Account(pubkey, lamports, data))
        if n % 10 == 0 and not empty:
            stored[newest - 1].append(Account(pubkey, lamports + 1, b"older"))
    lattice = lattice_of_slots(stored)
    valid = {s: write_storage(accounts) for s, accounts in stored.items()}
    storages = [(s, i, len(data)) for i, (s, data) in enumerate(sorted(valid.items()))]
    entries: list[tuple[str, bytes | None]] = [
        ("version", VERSION),
        ("snapshots", None),
        (f"snapshots/{slot}", None),
        (f"snapshots/{slot}/{slot}", write_manifest(slot, lattice, storages)),
        ("snapshots/status_cache", write_status_cache([slot])),
    ]
    for (s, data), (_, ident, _) in zip(sorted(valid.items()), storages, strict=True):
        entries.append((f"accounts/{s}.{ident}", padded(data)))
    name = f"snapshot-{slot}-{archive_hash_of(lattice)}.tar.zst"
    return name, compress(make_tar(entries), "zst", pieces=pieces)
