"""Write the quickstart's archives into examples/ledger/ (or the directory given).

Real snapshot archives, small, in agave's formats (``tracker.proof.formats.writing``): a tar with
``version``, ``snapshots/status_cache``, the manifest ``snapshots/{S}/{S}`` and account
storages ``accounts/{slot}.{id}`` in agave's AppendVec format, zstd-compressed in independent
frames as agave writes its fulls (a frame every 32 MiB of tar; at least two here, so that
every reader of the examples meets a multi-frame archive). Each name's
hash is that of the accounts lattice hash of the state at its slot (SIMD-0220: a full's own
accounts; an incremental's, its full's accounts overlaid with its own), and the manifest's
bank hash is agave's formula over its fields, so that ``snapshot-tracker verify`` proves them
to ``manifest`` (and the storages give the lattice hash: level ``accounts``). The output is
the same bytes on every run (fixed seeds and mtimes): run it again after changing it and
commit the result.

    python3 examples/make_ledger.py [DIR]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.archives import compress, make_tar  # noqa: E402
from tracker.proof.formats.writing import (  # noqa: E402
    SNAPSHOT_VERSION,
    Account,
    archive_hash_of,
    lattice_of,
    padded,
    write_manifest,
    write_storage,
)

#: Bytes of tar a zstd frame holds at most (agave's fulls: ~32 MiB a frame).
FRAME = 32 * 1024**2
#: The full snapshot's slot and its incrementals' slots.
FULL = 1000
INCREMENTALS = (1100, 1200)
#: Account storages per slot written and accounts per storage.
STORAGES = {FULL: 4, 1100: 2, 1200: 2}
PER_STORAGE = 8
SYSTEM = bytes(32)


def accounts_of(slot: int) -> list[list[Account]]:
    """The accounts written at ``slot``, one list per storage: the full creates 32 accounts;
    each later slot changes some (new lamports and data) and closes one (zero lamports)."""
    rnd = random.Random(f"ledger-{slot}")
    count = STORAGES[slot] * PER_STORAGE
    # One version of an account per slot: the pubkeys a slot writes are distinct.
    indices = list(range(count)) if slot == FULL else rnd.sample(range(32), count)
    storages = []
    for storage in range(STORAGES[slot]):
        accounts = []
        for n in range(PER_STORAGE):
            index = indices[storage * PER_STORAGE + n]
            closed = slot != FULL and n == 0
            accounts.append(
                Account(
                    pubkey=random.Random(f"pubkey-{index}").randbytes(32),
                    lamports=0 if closed else 1_000_000 + rnd.randrange(1_000_000),
                    data=b"" if closed else rnd.randbytes(rnd.randrange(64, 4096)),
                    owner=SYSTEM,
                    rent_epoch=2**64 - 1,
                )
            )
        storages.append(accounts)
    return storages


def archive_of(slot: int, base: int | None) -> tuple[str, bytes]:
    """The name and bytes of the full (``base`` None) or incremental archive of ``slot``."""
    slots = [FULL] if base is None else [s for s in INCREMENTALS if s <= slot]
    state = [FULL, *slots] if base is not None else slots  # the accounts the state holds
    lattice = lattice_of(a for s in state for storage in accounts_of(s) for a in storage)
    entries: list[tuple[str, bytes | None]] = []
    storages: list[tuple[int, int, int]] = []
    ident = 0
    for storage_slot in slots:
        for accounts in accounts_of(storage_slot):
            data = padded(write_storage(accounts))
            entries.append((f"accounts/{storage_slot}.{ident}", data))
            storages.append((storage_slot, ident, len(data)))
            ident += 1
    head: list[tuple[str, bytes | None]] = [
        ("version", SNAPSHOT_VERSION),
        ("snapshots", None),
        (f"snapshots/{slot}", None),
        (f"snapshots/{slot}/{slot}", write_manifest(slot, lattice, storages)),
        ("snapshots/status_cache", bytes(8)),  # an empty Vec<BankSlotDelta>
        ("accounts", None),
    ]
    hash_ = archive_hash_of(lattice)
    name = (
        f"snapshot-{slot}-{hash_}.tar.zst"
        if base is None
        else f"incremental-snapshot-{base}-{slot}-{hash_}.tar.zst"
    )
    tar = make_tar(head + entries)
    return name, compress(tar, "zst", pieces=max(2, -(-len(tar) // FRAME)))


def archives() -> list[tuple[str, bytes]]:
    """Every archive of the quickstart: the full and its incrementals."""
    return [archive_of(FULL, None)] + [archive_of(s, FULL) for s in INCREMENTALS]


def main(argv: list[str]) -> int:
    """Write every archive into ``argv[0]`` (default: examples/ledger)."""
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent / "ledger"
    out.mkdir(parents=True, exist_ok=True)
    for name, data in archives():
        (out / name).write_bytes(data)
        print(out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
