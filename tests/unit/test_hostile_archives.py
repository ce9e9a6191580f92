"""Hostile archives: the readers fuzzed from real archives (docs/architecture.md, "Verified
archives", "Proven archives", "What no level binds"; docs/formats.md).

Each test starts from agave's own archive (tests/data/agave-snapshot/) and a full that
tests/archives.py builds, mutates it at one layer (the compressed bytes, the tar headers,
a member's data in a well-formed tar, the tar stream's bytes) and drives the entry points the
tracker uses: the structure and manifest check (``check_stream``), a head proof
(``prove_head``) and ``verify``'s reader proving accounts inline (``check_file``). Whatever
the bytes, only the check's own rejection escapes, one line, never the words the check gives
a failure no rule foresaw (``archivecheck.as_rejection``: ``check failed: IndexError ...``),
within bounded time and memory; and a flip that passes as the original lies in bytes no level
binds.

The compiled kernels are loaded first, as in a daemon that proves accounts: there a number
past their int64 fails, where the interpreted ones would take it. Compiled, they check no index,
so these tests would not see one read past its buffer: tests/helpers_bounds.py runs hostile
inputs through them compiled with numba's bounds checks, in a process of its own.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import tarfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from archives import archive_name, compress, snapshot_entries
from forgeries import AGAVE, GNU, OLD, USTAR, header, long_name, member, pax, sparse, tar_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts import accountsproof
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import check_file, check_stream
from tracker.proof.archive.checklimits import MAX_UNPACKED_SIZE
from tracker.proof.archive.headproof import prove_head
from tracker.proof.formats import kernels
from tracker.proof.formats.manifest import Manifest, ManifestDecoder
from tracker.proof.formats.parsing import run
from tracker.proof.formats.slothistory import MAX_ENTRIES, decode_slot_history
from tracker.proof.levels import Proof

Entries = list[tuple[str, bytes | None]]

#: What ``as_rejection`` makes of an exception no rule of the check foresaw.
UNFORESEEN = "check failed: "
#: The Python allocations one check of these small archives may make at most.
MEMORY = 32 * 1024 * 1024
#: CPU seconds one check of these small archives may take at most (a hang fails sooner).
CPU = 5.0
#: A head proof's raw bytes (``manifest_read``).
HEAD_READ = 1 << 20


def _built() -> tuple[str, Entries]:
    # a full of three storages, each with spare capacity after its valid length
    name = archive_name(400, compression="tar").removesuffix(".tar")
    return name, snapshot_entries(400, accounts=3, account_size=2048, seed=0)


BASES: dict[str, tuple[str, Entries]] = {
    "agave": ("snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb", AGAVE),
    "built": _built(),
}
EXTENSIONS = {"tar": ".tar", "zst": ".tar.zst", "gz": ".tar.gz", "bz2": ".tar.bz2"}
EXTENSIONS |= {"lz4": ".tar.lz4", "xz": ".tar.xz"}


def tar_bytes(entries: Entries) -> bytes:
    """The tar agave's writer makes of ``entries`` (ustar headers, each member padded)."""
    return tar_of(*(member(name, data) for name, data in entries))


TARS = {base: tar_bytes(entries) for base, (_, entries) in BASES.items()}


@pytest.fixture(scope="module", autouse=True)
def _compiled_and_inline(files: Path) -> Iterator[None]:
    """The compiled kernels, and the accounts proof's first read in the reading thread. Each
    entry point checks each original archive once first, untimed: numba compiles a kernel for
    each argument type at its first call, ~5 s of CPU in all where its cache holds none (a
    fresh checkout, kernels.py edited), which the first check's bound of :data:`CPU` counted."""
    kernels.load()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(accountsproof, "scan_lanes", lambda limits: 0)
        patch.setattr(accountsproof, "scan_processes", lambda limits: 0)
        for base, (name, _) in BASES.items():
            for entry in ENTRY_POINTS.values():
                entry(files, name + ".tar", TARS[base])
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def structure(directory: Path, name: str, data: bytes) -> Proof:
    """The structure and manifest check of a download or a cached copy."""
    return check_stream(io.BytesIO(data).read, name, prefetch=False).proof


def frames(directory: Path, name: str, data: bytes) -> Proof:
    """The same check decoding a ``.tar.zst``'s frames on two threads apart."""
    return check_stream(io.BytesIO(data).read, name, decoders=2).proof


def head(directory: Path, name: str, data: bytes) -> Proof:
    """Redirect mode's proof of a copy from its head."""
    return prove_head(io.BytesIO(data).read, name, HEAD_READ)


def verify(directory: Path, name: str, data: bytes) -> Proof:
    """``verify``'s reader, proving accounts."""
    path = directory / name
    path.write_bytes(data)
    return check_file(str(path), prove_accounts=AccountsLimits(max_accounts=10_000)).proof


ENTRY_POINTS: dict[str, Callable[[Path, str, bytes], Proof]] = {
    "structure": structure,
    "frames": frames,
    "head": head,
    "verify": verify,
}


def verdict(entry: str, directory: Path, name: str, data: bytes) -> Proof | str:
    """What ``entry`` makes of the archive ``data`` named ``name``: its proof, or the one-line
    reason it was refused for; any other exception goes through (the test fails)."""
    tracemalloc.start()
    started = time.process_time()  # CPU, not wall: the host's load does not count
    try:
        result: Proof | str = ENTRY_POINTS[entry](directory, name, data)
    except ArchiveInvalid as exc:
        result = exc.reason
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.process_time() - started < CPU
    assert peak < MEMORY, peak
    if isinstance(result, str):
        assert "\n" not in result
        assert not result.startswith(UNFORESEEN), result
    return result


# --- the compressed bytes --------------------------------------------------------------------


def edited(data: bytes, kind: str, at: int, value: bytes) -> bytes:
    """``data`` with one edit at ``at`` (taken modulo its length)."""
    at = at % max(len(data), 1)
    if kind == "flip" and data:
        return data[:at] + bytes([data[at] ^ (value[0] | 1)]) + data[at + 1 :]
    if kind == "insert":
        return data[:at] + value + data[at:]
    if kind == "delete":
        return data[:at] + data[at + len(value) :]
    if kind == "overwrite":
        return data[:at] + value + data[at + len(value) :]
    if kind == "truncate":
        return data[:at]
    return data + value  # "append"


EDIT_KINDS = ("flip", "insert", "delete", "overwrite", "truncate", "append")


def anywhere(size: int) -> st.SearchStrategy[int]:
    """An offset into ``size`` bytes, evenly: drawn from a seed (hypothesis's integers and
    randoms lean to small numbers, which all fall in the first header)."""
    return st.integers(0, 2**32).map(lambda seed: random.Random(seed).randrange(max(size, 1)))


def offsets(size: int) -> st.SearchStrategy[int]:
    """An offset into ``size`` bytes: anywhere, or among the first 64 (a frame's or a
    stream's header)."""
    return anywhere(size) | st.integers(0, min(size, 64))


#: Lengths inflated past anything real, as fields of every width read them.
HUGE = [2**63, 2**64 - 1, 2**63 - 1, 2**32, 2**31, 10**12, 0, 1, 301]
VALUES = st.one_of(
    st.binary(min_size=1, max_size=48),
    st.sampled_from(HUGE).map(lambda n: struct.pack("<Q", n)),
    st.sampled_from([2**32 - 1, 2**31, 39, 55]).map(lambda n: struct.pack("<I", n)),
)
COMPRESSED = {
    (base, compression, pieces): compress(tar, compression, pieces=pieces)
    for base, tar in TARS.items()
    for compression in ("zst", "gz", "bz2", "lz4", "xz")
    for pieces in (1, 3)
}


@settings(max_examples=150, deadline=None)
@given(
    archive=st.sampled_from(sorted(COMPRESSED)),
    entry=st.sampled_from(["structure", "frames"]),
    edits=st.integers(1, 3),
    data=st.data(),
)
def test_compressed_bytes_mutated_cost_only_that_archive(
    archive: tuple[str, str, int], entry: str, edits: int, data: st.DataObject
) -> None:
    base, compression, _ = archive
    raw = COMPRESSED[archive]
    for _ in range(edits):
        kind = data.draw(st.sampled_from(EDIT_KINDS))
        raw = edited(raw, kind, data.draw(offsets(len(raw))), data.draw(VALUES))
    verdict(entry, Path(), BASES[base][0] + EXTENSIONS[compression], raw)


# --- the tar headers -------------------------------------------------------------------------

#: Header fields (offset, width) and values a forger writes there, its checksum then made right.
FIELDS: dict[str, tuple[int, int, list[bytes]]] = {
    "size": (
        124,
        12,
        [b"\x80" + n.to_bytes(11, "big") for n in [*HUGE, MAX_UNPACKED_SIZE + 1]]
        + [b"%011o\0" % n for n in (0, 1, 511, 513, 8**11 - 1)]
        + [bytes(12), b" " * 12, b"+0000000001\0", b"\xff" * 12],
    ),
    "kind": (156, 1, [bytes([k]) for k in b"0123456789ADKLMNSVgxX\0\xff"]),
    "magic": (257, 8, [USTAR, GNU, OLD, b"ustar\0  ", b"ustar \0\0", b"\xff" * 8]),
    "name": (
        0,
        100,
        [
            n.ljust(100, b"\0")
            for n in [
                b"version",
                b"./version",
                b"accounts/18446744073709551616.0",
                b"accounts/0.99999999999999999999",
                b"snapshots/1/1",
                b"snapshots/status_cache/",
                b"accounts/../version",
                b"\xff\xfe",
                bytes(100),
            ]
        ],
    ),
    "prefix": (345, 155, [b"accounts".ljust(155, b"\0"), b"\xff" * 155]),
    "checksum": (148, 8, [b"        ", bytes(8), b"7777777\0"]),
}


def with_field(block: bytes, field: str, value: bytes) -> bytes:
    """``block`` with ``value`` in ``field``, its checksum computed again (unless the field is
    the checksum itself)."""
    start, width, _ = FIELDS[field]
    changed = bytearray(block)
    changed[start : start + width] = value[:width].ljust(width, b"\0")
    if field != "checksum":
        changed[148:156] = b" " * 8
        changed[148:155] = b"%06o\0" % sum(changed)
    return bytes(changed)


FIELD_EDITS = st.sampled_from(["size", *sorted(FIELDS)]).flatmap(
    lambda field: st.tuples(st.just(field), st.sampled_from(FIELDS[field][2]))
)
#: Members a forger puts before one: long names, pax records (nested, repeated), sparse.
EXTRAS: list[Callable[[str, bytes | None], bytes]] = [
    lambda name, data: long_name(name.encode()),
    lambda name, data: long_name(b"version") + long_name(name.encode()),
    lambda name, data: pax({"path": name, "size": "99999999999999999999"}),
    lambda name, data: pax({"path": "version"}) + pax({"size": str(2**63)}),
    lambda name, data: header(b"././@PaxHeader", 2**64 - 1, b"x"),
    lambda name, data: header(b"pax_global_header", 0, b"g"),
    lambda name, data: sparse(name, data or b""),
    lambda name, data: member(name, data),  # the member twice
]


@settings(max_examples=250, deadline=None)
@given(
    base=st.sampled_from(sorted(BASES)),
    entry=st.sampled_from(["structure", "verify"]),
    compression=st.sampled_from(["tar", "tar", "zst"]),
    index=st.integers(0, 20),
    fields=st.lists(FIELD_EDITS, max_size=2),
    extra=st.none() | st.sampled_from(range(len(EXTRAS))),
)
def test_tar_headers_rewritten_cost_only_that_archive(
    files: Path,
    base: str,
    entry: str,
    compression: str,
    index: int,
    fields: list[tuple[str, bytes]],
    extra: int | None,
) -> None:
    name, entries = BASES[base]
    parts = [member(n, d) for n, d in entries]
    at = index % len(parts)
    block = parts[at][:512]
    for field, value in fields:
        block = with_field(block, field, value)
    parts[at] = block + parts[at][512:]
    if extra is not None:
        parts.insert(at, EXTRAS[extra](*entries[at]))
    data = compress(tar_of(*parts), compression)
    verdict(entry, files, name + EXTENSIONS[compression], data)


SIZES = [2**64 - 1, 2**64 - 512, 2**63, 2**63 - 1, 2**62, 2**40, MAX_UNPACKED_SIZE + 1]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    ("base", "index"),
    [(base, i) for base, (_, entries) in BASES.items() for i in range(len(entries))],
)
def test_every_member_given_a_huge_size_costs_only_that_archive(
    files: Path, base: str, index: int, size: int
) -> None:
    # the stream then ends inside it, or the bytes after it are read as its data
    name, entries = BASES[base]
    parts = [member(n, d) for n, d in entries]
    size_field = b"\x80" + size.to_bytes(11, "big")
    parts[index] = with_field(parts[index][:512], "size", size_field) + parts[index][512:]
    data = tar_of(*parts)
    for entry in ("structure", "head", "verify"):
        verdict(entry, files, name + ".tar", data)


# --- a member's data, in a well-formed tar ---------------------------------------------------

MEMBER_EDIT_KINDS = ("flip", "insert", "delete", "overwrite", "truncate", "aligned", "aligned")


def edited_member(data: bytes, kind: str, at: int, value: bytes) -> bytes:
    """A member's ``data`` with one edit; ``aligned``: a u64 overwritten at a multiple of 8
    (a bincode length, a record's data length or lamports)."""
    if kind == "aligned":
        at = at % max(len(data), 1) & ~7
        return data[:at] + value[:8].ljust(8, b"\0") + data[at + 8 :]
    return edited(data, kind, at, value)


@settings(max_examples=250, deadline=None)
@given(
    base=st.sampled_from(sorted(BASES)),
    entry=st.sampled_from(["structure", "head", "verify"]),
    index=st.integers(0, 20),
    edits=st.integers(1, 3),
    reorder=st.sampled_from(["none", "none", "drop", "twice", "swap"]),
    other=st.integers(0, 20),
    data=st.data(),
)
def test_member_data_mutated_costs_only_that_archive(
    files: Path,
    base: str,
    entry: str,
    index: int,
    edits: int,
    reorder: str,
    other: int,
    data: st.DataObject,
) -> None:
    name, entries = BASES[base]
    members = list(entries)
    files_at = [i for i, (_, content) in enumerate(members) if content is not None]
    at = files_at[index % len(files_at)]
    member_name, member_data = members[at]
    assert member_data is not None
    for _ in range(edits):
        kind = data.draw(st.sampled_from(MEMBER_EDIT_KINDS))
        where = data.draw(offsets(len(member_data)))
        member_data = edited_member(member_data, kind, where, data.draw(VALUES))
    members[at] = (member_name, member_data)
    moved = other % len(members)
    if reorder == "drop":
        del members[moved]
    elif reorder == "twice":
        members.insert(moved, members[at])
    elif reorder == "swap":
        members[at], members[moved] = members[moved], members[at]
    verdict(entry, files, name + ".tar", tar_bytes(members))


# --- what passes as the original -------------------------------------------------------------

#: A record's fields no level binds (agave's append_vec.rs: write_version, rent_epoch, the
#: padding after executable, the obsolete hash); the lattice hash covers lamports, data,
#: executable, owner and pubkey (docs/architecture.md, "Which version counts").
UNBOUND_RECORD = [(0, 8), (56, 64), (97, 104), (104, 136)]


def _records(storage: bytes, valid: int) -> Iterator[tuple[int, int, bytes]]:
    """(offset, length with its alignment, pubkey) of each record of a storage's valid bytes."""
    at = 0
    while at + 136 <= valid:
        (data_len,) = struct.unpack_from("<Q", storage, at + 8)
        length = -(-(136 + data_len) // 8) * 8
        yield at, length, storage[at + 16 : at + 48]
        at += length


def _manifest(data: bytes) -> Manifest:
    decoder = ManifestDecoder(len(data))
    run(decoder.parser(), data)
    return decoder.result()


def bound_fields(manifest: Manifest) -> tuple[object, ...]:
    """What the name and the bank hash bind of a manifest (docs/formats.md, "The bank hash")."""
    m = manifest
    forks = sum(count for slot, count in m.hard_forks if m.parent_slot < slot <= m.slot)
    return (
        m.slot,
        m.bank_hash,
        m.parent_hash,
        m.signature_count,
        m.last_blockhash,
        m.accounts_lt_hash,
        forks,
    )


def unbound_bytes(tar: bytes) -> tuple[set[int], tuple[int, int]]:
    """The offsets of the plain tar ``tar`` no level binds (a header's checksum field, which
    reads the same when a flip keeps its value; padding; the status cache; spare capacity;
    unbound record fields; superseded records), and where the manifest's data lies."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as opened:
        members = list(opened)
    by_name = {m.name: tar[m.offset_data : m.offset_data + m.size] for m in members}
    manifest_member = next(m for m in members if m.name.count("/") == 2)
    storages = _manifest(by_name[manifest_member.name]).storages.items()
    valid = {f"accounts/{slot}.{ident}": length for slot, ident, length in storages}
    newest: dict[bytes, int] = {}  # pubkey -> the highest slot storing it
    for name, length in valid.items():
        slot = int(name.split("/")[1].split(".")[0])
        for _, _, pubkey in _records(by_name[name], length):
            newest[pubkey] = max(newest.get(pubkey, -1), slot)
    unbound: set[int] = set()
    for m in members:
        unbound.update(range(m.offset + 148, m.offset + 156))
        end = m.offset_data + m.size
        unbound.update(range(end, end + -m.size % 512))
        if m.name == "snapshots/status_cache":
            unbound.update(range(m.offset_data, end))
        if m.name in valid:
            slot = int(m.name.split("/")[1].split(".")[0])
            unbound.update(range(m.offset_data + valid[m.name], end))  # spare capacity
            for at, length, pubkey in _records(by_name[m.name], valid[m.name]):
                start = m.offset_data + at
                if newest[pubkey] > slot:  # a superseded version counts nothing
                    unbound.update(range(start, start + length))
                    continue
                for first, last in UNBOUND_RECORD:
                    unbound.update(range(start + first, start + last))
                (data_len,) = struct.unpack_from("<Q", tar, start + 8)
                unbound.update(range(start + 136 + data_len, start + length))
    start = manifest_member.offset_data
    return unbound, (start, start + manifest_member.size)


UNBOUND = {base: unbound_bytes(tar) for base, tar in TARS.items()}


@pytest.fixture(scope="module")
def originals(files: Path) -> dict[str, Proof | str]:
    return {base: verdict("verify", files, BASES[base][0] + ".tar", TARS[base]) for base in TARS}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(sorted(BASES)), bit=st.integers(0, 7), data=st.data())
def test_a_flip_that_passes_as_the_original_is_in_bytes_no_level_binds(
    files: Path, originals: dict[str, Proof | str], base: str, bit: int, data: st.DataObject
) -> None:
    name, _ = BASES[base]
    tar = TARS[base]
    at = data.draw(anywhere(len(tar)))
    flipped = bytearray(tar)
    flipped[at] ^= 1 << bit
    proof = verdict("verify", files, name + ".tar", bytes(flipped))
    original = originals[base]
    assert isinstance(original, Proof)
    if isinstance(proof, str) or (proof.level, proof.bank_hash) != (
        original.level,
        original.bank_hash,
    ):
        return
    unbound, (start, end) = UNBOUND[base]
    if start <= at < end:  # the manifest: only fields the bank hash leaves out
        assert bound_fields(_manifest(bytes(flipped[start:end]))) == bound_fields(
            _manifest(tar[start:end])
        )
    else:
        assert at in unbound, f"a flip at byte {at} passes as the original"


# --- the regressions the fuzzing found -------------------------------------------------------


def with_size(entries: Entries, name: str, size: int) -> bytes:
    """The plain tar of ``entries`` with ``name``'s header giving ``size`` (base-256), the
    stream then ending inside it."""
    parts = [member(n, d) for n, d in entries]
    at = next(i for i, (n, _) in enumerate(entries) if n == name)
    size_field = b"\x80" + size.to_bytes(11, "big")
    parts[at] = with_field(parts[at][:512], "size", size_field) + parts[at][512:]
    return tar_of(*parts)


@pytest.mark.parametrize(
    ("member_name", "size", "at"),
    [
        # a status cache or manifest of 2^64 - 1 bytes reached the compiled kernels' int64
        # (``check failed: OverflowError: int too big to convert``)
        ("snapshots/status_cache", 2**64 - 1, 1536),
        ("snapshots/100/100", 2**64 - 1, 3072),
        ("snapshots/100/100", 2**63, 3072),
        ("version", MAX_UNPACKED_SIZE + 1, 0),
    ],
)
def test_a_member_past_the_size_agave_unpacks_is_refused_at_its_header(
    files: Path, member_name: str, size: int, at: int
) -> None:
    name = BASES["agave"][0] + ".tar"
    data = with_size(AGAVE, member_name, size)
    expected = (
        f"tar: {member_name!r} at byte {at} takes the members' sizes past the "
        f"{MAX_UNPACKED_SIZE} bytes agave unpacks (too large archive)"
    )
    for entry in ("structure", "head", "verify"):
        assert verdict(entry, files, name, data) == expected


def test_a_slot_history_of_ten_mib_costs_no_more_than_agaves() -> None:
    # Only its first MAX_ENTRIES bits are read: a bool a bit of 10 MiB of words held 84 MB
    # and peaked at 178 MB (of a few KB of archive), agave's own history 1 MB.
    words = (10 * 1024 * 1024 - 25) // 8
    slot = 5 * MAX_ENTRIES
    data = b"\x01" + struct.pack("<Q", words) + b"\xff" * (8 * words)
    data += struct.pack("<QQ", 64 * words, slot + 1)
    tracemalloc.start()
    history = decode_slot_history(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * MAX_ENTRIES
    assert len(history.bits) == MAX_ENTRIES and history.bits.all()
    assert (history.length, history.next_slot) == (64 * words, slot + 1)


#: Hostile inputs for each of the kernels' callers, each way (~6 s of CPU in all, numba's
#: compiling with bounds checks ~3 s of it).
BOUNDS_EXAMPLES = 3000


def test_the_kernels_read_nothing_past_their_buffers_with_bounds_checks_on(tmp_path: Path) -> None:
    # Compiled, a kernel reading past an archive's bytes reads other memory (a wrong answer,
    # or a segfault that ends the daemon), which the tests above cannot tell. In a process of
    # its own, numba checks every index (NUMBA_BOUNDSCHECK=1) in a cache of its own: numba's
    # cache keys no compile option, so kernels cached without the checks would be loaded
    # instead (the helper exits 3 then). An out-of-range read is an IndexError there.
    helper = Path(__file__).parents[1] / "helpers_bounds.py"
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_DISABLE_JIT", None)
    done = subprocess.run(
        [sys.executable, str(helper), str(BOUNDS_EXAMPLES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,  # a hang's bound only: it takes seconds
    )
    assert done.returncode != 3, "the compiled kernels were not bounds-checked"
    assert done.returncode == 0, done.stderr[-6000:]
    outcomes = json.loads(done.stdout)
    for way in ("interpreted", "compiled"):
        found = outcomes[way]
        # each caller read inputs through to the end and refused others (not a vacuous run)
        assert {"storage scanned", "status cache read", "manifest read"} <= found.keys()
        for refused in ("accounts/", "status cache: ", "manifest: "):
            assert any(outcome.startswith(refused) for outcome in found), (way, refused)
