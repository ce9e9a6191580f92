"""Hostile bytes for the proof's compiled kernels (tracker/proof/formats/kernels.py), seeded,
through the three callers that hand them an archive's bytes: a storage's scan in pieces of any
size (``StorageScan``, then each batch's index rows and laid-out messages), the status cache's
statuses (``status_cache_parser``) and the manifest's epoch-stakes nodes (``ManifestDecoder``).

numba checks no index: a kernel that reads past its buffer reads other memory, a wrong answer or
a segfault (docs/architecture.md, "The accounts level" → "Cost"). So :func:`main` runs these
inputs in a process of its own (tests/unit/test_hostile_archives.py starts it), first through
the interpreted kernels (a small proof's: numpy raises IndexError past an array), then compiled
with ``NUMBA_BOUNDSCHECK=1`` (numba raises IndexError too); a canary first makes sure the
compiled kernels do check (numba's cache keys no compile option: a cache written without the
checks would be loaded with them asked for, hence a ``NUMBA_CACHE_DIR`` of the process's own).
Only the check's own one-line refusal may come out of a caller; anything else ends the process
with its traceback.
"""

from __future__ import annotations

import json
import random
import re
import struct
import sys
from collections import Counter
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from forgeries import AGAVE

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.accounthash import LocalSum, lane_sum, lane_sum_in_room
from tracker.proof.formats import kernels, statuscache
from tracker.proof.formats import manifest as manifest_module
from tracker.proof.formats.manifest import ManifestDecoder
from tracker.proof.formats.parsing import run
from tracker.proof.formats.statuscache import status_cache_parser
from tracker.proof.formats.storages import (
    EXECUTABLE,
    LAMPORTS,
    MAX_DATA,
    META,
    Records,
    StorageScan,
)

_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
#: Lengths and counts past anything real, and those at the edges of a record and a bound.
HUGE = [2**64 - 1, 2**63, 2**63 - 1, 2**32, 2**31, 10**12, MAX_DATA, MAX_DATA + 1]
EDGES = [0, 1, 7, 8, 9, 24, 32, 48, 136, 137]
#: The u32 variants the status kernel branches on (Ok, Err, InstructionError, Custom, the
#: one-byte errors, the last known of each and the first unknown).
VARIANTS = [0, 1, 2, 8, 25, 30, 31, 35, 38, 39, 54, 55, 2**31, 2**32 - 1]
#: Piece sizes the callers are made to read in (each module's ``PIECE``), record sizes among
#: them, so that every field of a record or a status lies across a piece's end somewhere.
PIECES = [1, 7, 8, 24, 37, 48, 100, 136, 137, 500, 1 << 20]
SLOT = 100  # the shipped archive's bank slot
MANIFEST = dict(AGAVE)[f"snapshots/{SLOT}/{SLOT}"]
#: The shipped manifest's count of the nodes of epoch 2's stakes and the nodes' bytes
#: (tests/unit/test_manifest_nodes.py, ``with_nodes``).
NODES_AT, NODES_BYTES = 4011, 160


def hostile(rng: random.Random, data: bytes, edits: int) -> bytes:
    """``data`` with ``edits`` u64s or u32s overwritten (at a multiple of 8 or anywhere) with
    lengths, counts and variants a forger writes, then cut short at times."""
    out = bytearray(data)
    for _ in range(edits):
        if len(out) < 8:
            break
        at = rng.randrange(len(out) - 7)
        if rng.random() < 0.5:
            at &= ~7
        if rng.random() < 0.5:
            out[at : at + 8] = _Q.pack(rng.choice(HUGE + EDGES))
        else:
            out[at : at + 4] = _I.pack(rng.choice(VARIANTS))
    if rng.random() < 0.3:
        del out[rng.randint(0, len(out)) :]
    return bytes(out)


def storage(rng: random.Random) -> bytes:
    """A storage's valid bytes: records of random data lengths (agave's layout,
    tracker/proof/formats/storages.py), lamports, executable bytes and pubkeys, a few of them
    hostile."""
    out = bytearray()
    for _ in range(rng.randint(0, 12)):
        out += bytes(-len(out) % 8)
        head = bytearray(rng.randbytes(META))
        data_len = rng.choice([0, 0, 1, 5, 8, 13, 64, 200])
        head[8:16] = _Q.pack(data_len)
        head[EXECUTABLE] = rng.choice([0, 1] * 20 + [2, 255])
        if rng.random() < 0.05:  # no lamports: the default account only
            head[LAMPORTS : LAMPORTS + 8] = bytes(8)
            if rng.random() < 0.5:
                head[LAMPORTS + 8 : LAMPORTS + 48] = bytes(40)
                head[8:16], head[EXECUTABLE] = bytes(8), 0
                data_len = 0
        out += head + rng.randbytes(data_len)
    return hostile(rng, bytes(out), rng.randint(0, 2))


class _Room(LocalSum):
    """A summer that lends room for each batch's messages (``kernels.lay_out_into``, as a
    hashing process's slot), a few bytes more than they take."""

    def room(self, size: int, negative: bool = False) -> npt.NDArray[np.uint8]:
        return np.zeros(size + 8, dtype=np.uint8)


def _laid_out(batch: Records) -> None:
    """What the first read does with a batch: its index rows, its messages laid out (in a
    new buffer and in lent room) and hashed."""
    _, counts = batch.index_rows(7 << 32)
    chosen = np.flatnonzero(counts)
    lane_sum(batch, chosen, LocalSum())
    assert lane_sum_in_room(batch, chosen, _Room())
    batch.lamports()


def scan_storage(rng: random.Random) -> str:
    """One hostile storage scanned in pieces of random sizes; its outcome."""
    data = storage(rng)
    valid = len(data) if rng.random() < 0.8 else rng.randint(0, len(data) + 64)
    scan = StorageScan("accounts/1.1", valid, _laid_out)
    read = 0
    while read < min(valid, len(data)):
        piece = data[read : min(read + rng.choice(PIECES), valid)]
        scan.take(memoryview(piece) if rng.random() < 0.5 else piece)
        read += len(piece)
    return "storage scanned"


def status_cache(rng: random.Random) -> bytes:
    """A status cache of a few slots, each of a few blockhashes with statuses of every kind
    (tracker/proof/formats/statuscache.py has the layout), a few fields hostile."""
    results = [
        _I.pack(0),
        _I.pack(1) + _I.pack(rng.randrange(39)),
        _I.pack(1) + _I.pack(8) + b"\x03" + _I.pack(rng.randrange(55)),
        _I.pack(1) + _I.pack(8) + b"\x03" + _I.pack(25) + _I.pack(7),
        _I.pack(1) + _I.pack(rng.choice([30, 31, 35])) + b"\x02",
    ]
    slots = [SLOT, *rng.sample(range(SLOT), rng.randint(0, 2))]
    out = bytearray(_Q.pack(len(slots)))
    for slot in slots:
        hashes = rng.randint(0, 3)
        out += _Q.pack(slot) + b"\x01" + _Q.pack(hashes)
        for _ in range(hashes):
            statuses = rng.randint(0, 4)
            out += rng.randbytes(32) + _Q.pack(rng.randrange(300)) + _Q.pack(statuses)
            for _ in range(statuses):
                out += rng.randbytes(20) + rng.choice(results)
    return hostile(rng, bytes(out), rng.randint(0, 2))


def read_status_cache(rng: random.Random) -> str:
    """One hostile status cache read in pieces of a random size; its outcome."""
    data = status_cache(rng)
    statuscache.PIECE = rng.choice(PIECES)
    run(status_cache_parser(len(data), SLOT), data)
    return "status cache read"


def read_nodes(rng: random.Random) -> str:
    """The shipped manifest with hostile nodes (node ids, lists of vote accounts, total
    stakes) read in pieces of a random size; its outcome."""
    assert _Q.unpack_from(MANIFEST, NODES_AT)[0] == 2  # the layout the offsets assume
    nodes = rng.randint(0, 5)
    records = b"".join(
        rng.randbytes(32) + _Q.pack(votes) + rng.randbytes(32 * votes) + _Q.pack(10**9)
        for votes in (rng.choice([0, 1, 3, 40]) for _ in range(nodes))
    )
    records = hostile(rng, _Q.pack(nodes) + records, rng.randint(0, 2))
    data = MANIFEST[:NODES_AT] + records + MANIFEST[NODES_AT + 8 + NODES_BYTES :]
    manifest_module.PIECE = rng.choice(PIECES)
    decoder = ManifestDecoder(len(data))
    run(decoder.parser(), data)
    decoder.result()
    return "manifest read"


CALLERS: list[Callable[[random.Random], str]] = [scan_storage, read_status_cache, read_nodes]


def fuzz(examples: int, seed: int) -> Counter[str]:
    """``examples`` hostile inputs for each caller, from ``seed``: how many had each outcome
    (the refusal's words, numbers left out)."""
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    for _ in range(examples):
        for caller in CALLERS:
            try:
                outcome = caller(rng)
            except ArchiveInvalid as exc:
                outcome = exc.reason
            assert "\n" not in outcome, outcome  # a refusal is one line
            outcomes[re.sub(r"\d+", "N", outcome)[:70]] += 1
    return outcomes


def bounds_checked() -> bool:
    """True when the compiled kernels check their indexes (``NUMBA_BOUNDSCHECK=1``, compiled
    here rather than read from a cache compiled without it): a read past 4 bytes raises."""
    try:
        kernels._word(np.zeros(4, dtype=np.uint8), 0)
    except IndexError:
        return True
    return False


def main() -> None:
    """``python helpers_bounds.py EXAMPLES``: the inputs through the interpreted kernels, then
    through the compiled ones with bounds checks (exit 3 when they have none); one JSON line of
    each way's outcomes on stdout."""
    examples = int(sys.argv[1])
    kernels.COMPILE_FROM = kernels.INTERPRETED_AT_MOST = 1 << 62  # never loaded: interpreted
    interpreted = fuzz(examples, seed=1)
    assert not kernels._LOADED
    kernels.load()
    if not bounds_checked():
        sys.exit(3)
    compiled = fuzz(examples, seed=2)
    print(json.dumps({"interpreted": interpreted, "compiled": compiled}))


if __name__ == "__main__":
    main()
