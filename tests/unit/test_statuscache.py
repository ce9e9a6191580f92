"""``version`` and ``snapshots/status_cache`` read as agave reads them when it loads a snapshot
(docs/architecture.md, "Proven archives" → "Version and status cache"): a version agave does
not know, and a status cache that agave's ``deserialize_status_cache`` cannot read or its
``verify_slot_deltas`` refuses, refuse the archive with one line, whatever the level.

The archive is the one agave's own serializer wrote (tests/data/agave-snapshot/), proven to
``accounts`` as it is; each row changes only its ``version`` or its status cache.
"""

from __future__ import annotations

import random
import struct
import tempfile
import time

import pytest
from forgeries import AGAVE, AT, NAME, PLAIN, member, tar_of

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import check_stream
from tracker.proof.archive.reread import accounts_prover, proving
from tracker.proof.formats import kernels, statuscache
from tracker.proof.formats.parsing import run
from tracker.proof.formats.statuscache import (
    MAX_CACHE_ENTRIES,
    status_cache_parser,
    version_parser,
)
from tracker.proof.formats.writing import CUSTOM_ERROR, OK_RESULT, write_status_cache

SLOT = 100  # the shipped archive's
CACHE = "snapshots/status_cache"
REAL_CACHE = dict(AGAVE)[CACHE]
assert REAL_CACHE is not None
_Q = struct.Struct("<Q")


def checked(version: bytes | None = None, cache: bytes | None = None) -> str:
    """``ok LEVEL`` or the reason, for the shipped archive with ``version`` or its status
    cache replaced, proven as ``verify`` proves it (to ``accounts``)."""
    parts = list(PLAIN)
    if version is not None:
        parts[AT["version"]] = member("version", version)
    if cache is not None:
        parts[AT[CACHE]] = member(CACHE, cache)
    with tempfile.TemporaryFile() as file:
        file.write(tar_of(*parts))
        file.seek(0)
        limits = AccountsLimits(max_accounts=1000)
        accounts = accounts_prover(NAME, limits, f"/proc/self/fd/{file.fileno()}")
        try:
            with proving(accounts):
                verified = check_stream(file.read, NAME, accounts=accounts)
        except ArchiveInvalid as exc:
            reason = exc.reason
        else:
            return f"ok {verified.proof.level.label}"
    assert "\n" not in reason
    return reason


def test_the_shipped_archive_is_loaded_as_it_is() -> None:
    assert checked() == "ok accounts"
    assert checked(cache=REAL_CACHE) == "ok accounts"
    # slots 100, 99 and 0, each rooted, with an Ok and an InstructionError(Custom) status
    assert REAL_CACHE[:8] == _Q.pack(3)


# --- version -----------------------------------------------------------------------------------

VERSIONS_LOADED = [b"1.2.0", b"v1.2.0", b"V1.2.0", b"1.2.0\n", b" 1.2.0\t", b"1.2.0\r\n"]
VERSIONS_REFUSED = [
    (b"", "version: '' is not a snapshot version agave loads (1.2.0)"),
    (b"1.2.1", "version: '1.2.1' is not a snapshot version agave loads (1.2.0)"),
    (b"1.3.0", "version: '1.3.0' is not a snapshot version agave loads (1.2.0)"),
    (b"vv1.2.0", "version: 'vv1.2.0' is not a snapshot version agave loads (1.2.0)"),
    (b"1.2.0\0", "version: '1.2.0\\x00' is not a snapshot version agave loads (1.2.0)"),
    (b"\xff\xfe\x00", "version: not UTF-8 (b'\\xff\\xfe\\x00')"),
    (b" 1.2.0   ", "version: 9 bytes, agave reads a version file of at most 8"),
    (bytes(4096), "version: 4096 bytes, agave reads a version file of at most 8"),
]


@pytest.mark.parametrize("version", VERSIONS_LOADED)
def test_a_version_agave_knows_is_loaded(version: bytes) -> None:
    assert checked(version=version) == "ok accounts"


@pytest.mark.parametrize(("version", "reason"), VERSIONS_REFUSED)
def test_a_version_agave_does_not_know_refuses_the_archive(version: bytes, reason: str) -> None:
    assert checked(version=version) == reason


# --- the status cache --------------------------------------------------------------------------


def delta(slot: int, root: bool = True, statuses: bytes = _Q.pack(0)) -> bytes:
    """One BankSlotDelta's bincode: slot, is_root, the blockhash map (``statuses``)."""
    return _Q.pack(slot) + (b"\x01" if root else b"\x00") + statuses


def deltas(*items: bytes) -> bytes:
    return _Q.pack(len(items)) + b"".join(items)


def one_blockhash(*results: bytes) -> bytes:
    """A blockhash map of one blockhash holding a status per result."""
    body = b"".join(bytes([i]) * 20 + r for i, r in enumerate(results))
    return _Q.pack(1) + b"\x41" * 32 + _Q.pack(0) + _Q.pack(len(results)) + body


def error(variant: int, fields: bytes = b"") -> bytes:
    return struct.pack("<II", 1, variant) + fields


#: The roots of the archive's SlotHistory sysvar (slots 0, 99 and the bank's): agave loads a
#: status cache that has an entry for each of them and for no other slot.
ROOTS = [SLOT, 99, 0]
CACHES_LOADED = [
    ("the history's roots", write_status_cache(ROOTS)),
    ("trailing bytes after it", write_status_cache(ROOTS) + random.Random(1).randbytes(500)),
    ("oldest first", write_status_cache(ROOTS[::-1])),
    ("every status kind", write_status_cache(ROOTS, [(b"k" * 20, OK_RESULT)] * 2)),
    (
        "errors with fields",
        deltas(
            delta(
                SLOT,
                statuses=one_blockhash(
                    CUSTOM_ERROR,
                    error(8, b"\x02" + struct.pack("<I", 54)),  # InstructionError(2, BailOut)
                    error(30, b"\x01"),  # DuplicateInstruction(1)
                    error(31, b"\x01"),  # InsufficientFundsForRent
                    error(35, b"\x07"),  # ProgramExecutionTemporarilyRestricted
                    error(38),  # CommitCancelled
                ),
            ),
            delta(99),
            delta(0),
        ),
    ),
]


@pytest.mark.parametrize(("row", "cache"), CACHES_LOADED, ids=[r for r, _ in CACHES_LOADED])
def test_a_status_cache_agave_loads_passes(row: str, cache: bytes) -> None:
    assert checked(cache=cache) == "ok accounts"


RANDOM = random.Random(7).randbytes(2048)
CACHES_REFUSED = [
    ("empty", b"", "status cache: the data ends inside the count of slot deltas at byte 0"),
    (
        "random",
        RANDOM,
        f"status cache: the count of slot deltas: {_Q.unpack(RANDOM[:8])[0]} elements of 17 "
        "bytes at byte 0, 2040 bytes left",
    ),
    ("no slot delta", _Q.pack(0), f"status cache: no entry for the bank's slot {SLOT}"),
    (
        "another slot's (before)",
        write_status_cache([SLOT - 1, SLOT - 2]),
        f"status cache: no entry for the bank's slot {SLOT}",
    ),
    (
        "another slot's (after)",
        write_status_cache([SLOT + 1, SLOT]),
        f"status cache: slot {SLOT + 1} is after the bank's slot {SLOT}",
    ),
    (
        "the bank's slot alone (agave's verify_slot_deltas_with_history)",
        write_status_cache([SLOT]),
        "status cache: no entry for slot 99, a root in the SlotHistory sysvar (of its newest "
        "300, agave wants every one)",
    ),
    (
        "a slot the history has no root for",
        write_status_cache([*ROOTS, 3]),
        "status cache: slot 3 has an entry but is not a root in the SlotHistory sysvar",
    ),
    (
        "more than MAX_CACHE_ENTRIES",
        write_status_cache(range(MAX_CACHE_ENTRIES + 1)),  # the count is read first
        f"status cache: {MAX_CACHE_ENTRIES + 1} slot deltas, agave loads at most "
        f"{MAX_CACHE_ENTRIES}",
    ),
    (
        "not a root",
        deltas(delta(SLOT), delta(7, root=False)),
        "status cache: slot 7 is not a root (slot delta 1)",
    ),
    (
        "a slot twice",
        deltas(delta(SLOT), delta(7), delta(7)),
        "status cache: slot 7 has more than one entry",
    ),
    (
        "a bool that is not one",
        _Q.pack(1) + _Q.pack(SLOT) + b"\x02" + _Q.pack(0),
        "status cache: slot delta 0: a tag of 2 at byte 16",
    ),
    (
        "a result that is neither Ok nor Err",
        deltas(delta(SLOT, statuses=one_blockhash(struct.pack("<I", 2)))),
        f"status cache: slot {SLOT}: a transaction's result of variant 2 at byte 93",
    ),
    (
        "an unknown transaction error",
        deltas(delta(SLOT, statuses=one_blockhash(error(39)))),
        f"status cache: slot {SLOT}: a transaction error of unknown variant 39 at byte 97",
    ),
    (
        "an unknown instruction error",
        deltas(delta(SLOT, statuses=one_blockhash(error(8, b"\x00" + struct.pack("<I", 55))))),
        f"status cache: slot {SLOT}: an instruction error of unknown variant 55 at byte 102",
    ),
    (
        "cut inside a status",
        write_status_cache([SLOT], [(b"k" * 20, CUSTOM_ERROR)])[:-3],
        f"status cache: the data ends inside a transaction status of slot {SLOT} at byte 107",
    ),
    (
        "a huge count of statuses",
        deltas(delta(SLOT, statuses=_Q.pack(1) + bytes(40) + _Q.pack(1 << 60))),
        f"status cache: the statuses of slot {SLOT}: 1152921504606846976 elements of 24 bytes "
        "at byte 65, 0 bytes left",
    ),
]


@pytest.mark.parametrize(
    ("row", "cache", "reason"), CACHES_REFUSED, ids=[r for r, _, _ in CACHES_REFUSED]
)
def test_a_status_cache_agave_refuses_refuses_the_archive(
    row: str, cache: bytes, reason: str
) -> None:
    assert checked(cache=cache) == reason


def test_the_parsers_read_only_what_they_need() -> None:
    # run() drives a parser over bytes in memory: the trailing bytes agave allows are not read
    assert run(status_cache_parser(len(REAL_CACHE), SLOT), REAL_CACHE + bytes(100)) is None
    assert run(version_parser(5), b"1.2.0") is None
    with pytest.raises(ArchiveInvalid, match="no entry for the bank's slot 101"):
        run(status_cache_parser(len(REAL_CACHE), 101), REAL_CACHE)


MIXED = [
    (bytes([i]) * 20, result)
    for i, result in enumerate(
        [
            OK_RESULT,
            CUSTOM_ERROR,
            error(8, b"\x02" + struct.pack("<I", 54)),
            error(30, b"\x01"),
            error(31, b"\x01"),
            error(35, b"\x07"),
            error(38),
            OK_RESULT,
        ]
    )
]


@pytest.mark.parametrize("piece", [1, 37, 100, 1 << 20])
def test_statuses_read_in_pieces_of_any_size(monkeypatch: pytest.MonkeyPatch, piece: int) -> None:
    # Every status kind across every piece boundary; a piece never reads past the statuses
    # (the next slot delta follows them), and a bad one is named at its byte whatever the cut.
    monkeypatch.setattr(statuscache, "PIECE", piece)
    cache = write_status_cache([SLOT, 7, 3], MIXED * 3)
    assert run(status_cache_parser(len(cache), SLOT), cache + b"trailing") is None
    bad = write_status_cache([SLOT], [*MIXED, (b"z" * 20, error(39))])
    with pytest.raises(ArchiveInvalid) as caught:
        run(status_cache_parser(len(bad), SLOT), bad)
    at = len(bad) - 4  # the unknown variant's index: the last 4 bytes
    assert caught.value.reason == (
        f"status cache: slot {SLOT}: a transaction error of unknown variant 39 at byte {at}"
    )


def test_a_large_status_cache_is_read_by_the_compiled_kernel() -> None:
    # 16,000 statuses a slot, each slot's in pieces the compiled kernel reads.
    kernels.load()
    assert type(kernels.skip_status).__name__ == "CPUDispatcher"
    cache = write_status_cache(range(SLOT - 2, SLOT + 1), MIXED * 2000)
    assert run(status_cache_parser(len(cache), SLOT), cache) is None
    bad = bytearray(cache)
    bad[-4:] = struct.pack("<I", 1)  # the last status, Ok, made an Err whose error is cut
    with pytest.raises(ArchiveInvalid) as caught:
        run(status_cache_parser(len(bad), SLOT), bytes(bad))
    assert caught.value.reason == (
        f"status cache: the data ends inside a transaction status of slot {SLOT} at byte {len(bad)}"
    )
    bad[-4:] = struct.pack("<I", 2)
    with pytest.raises(ArchiveInvalid) as caught:
        run(status_cache_parser(len(bad), SLOT), bytes(bad))
    assert caught.value.reason == (
        f"status cache: slot {SLOT}: a transaction's result of variant 2 at byte {len(bad) - 4}"
    )


@pytest.mark.parametrize("piece", [100, 1 << 20])
def test_a_million_blockhashes_are_read_by_the_kernel(
    monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    # Blockhashes with no status are zeros (48 bytes each) that compress to nothing: read one
    # Python step each, a million cost 13 s of a core (an archive of 70 KB). The kernel walks
    # them with their statuses, across any piece boundary.
    monkeypatch.setattr(statuscache, "PIECE", piece)
    count = 1_000_000 if piece > 100 else 2_000
    entry = bytes(48)
    one = b"\x42" * 32 + _Q.pack(0) + _Q.pack(1) + b"k" * 20 + OK_RESULT
    cache = _Q.pack(1) + _Q.pack(SLOT) + b"\x01" + _Q.pack(count + 1) + entry * count + one
    started = time.process_time()  # CPU, not wall: the host's load does not count
    assert run(status_cache_parser(len(cache), SLOT), cache) is None
    assert time.process_time() - started < 1.0
    cut = cache[:-1]
    with pytest.raises(ArchiveInvalid) as caught:
        run(status_cache_parser(len(cut), SLOT), cut)
    at = len(cut) - 20 - len(OK_RESULT) - 8 + 1  # the last blockhash's count of statuses
    assert caught.value.reason == (
        f"status cache: the statuses of slot {SLOT}: 1 elements of 24 bytes at byte {at}, "
        "23 bytes left"
    )
