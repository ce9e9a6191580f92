"""Write the quickstart's archives into examples/ledger/ (or the directory given).

Real snapshot archives, small, in agave's formats (``tracker.proof.formats.writing``): a tar with
``version``, ``snapshots/status_cache``, the manifest ``snapshots/{S}/{S}`` and account
storages ``accounts/{slot}.{id}`` in agave's AppendVec format, one a slot as agave writes them
(agave refuses to load several storages of one slot), zstd-compressed in independent
frames as agave writes its fulls (a frame every 32 MiB of tar; at least two here, so that
every reader of the examples meets a multi-frame archive). Each name's
hash is that of the accounts lattice hash of the state at its slot (SIMD-0220: a full's own
accounts; an incremental's, its full's accounts overlaid with its own), and the manifest's
bank hash is agave's formula over its fields, so that ``snapshot-tracker verify`` proves them
to ``manifest`` (and the storages give the lattice hash: level ``accounts``). The output is
the same bytes on every run (fixed seeds and mtimes): run it again after changing it and
commit the result.

    python3 examples/make_ledger.py [DIR] [--size SIZE]

``--size 3MiB`` gives the full snapshot more account storages, of incompressible data, until
it holds at least that many bytes (the incrementals are written on it): an archive big enough
for a refresh from several sources (at least 2 MiB, docs/architecture.md, "A refresh from
several sources"). Its names differ from the quickstart's, since its accounts do.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.archives import compress, make_tar  # noqa: E402
from tracker.config.values import parse_size  # noqa: E402
from tracker.proof.formats.writing import (  # noqa: E402
    SNAPSHOT_VERSION,
    Account,
    archive_hash_of,
    lattice_of,
    padded,
    write_manifest,
    write_status_cache,
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
#: The data of each account of the storages ``--size`` adds to the full (random: it does not
#: compress, so each such storage adds ~PER_STORAGE * BIG_DATA bytes to the archive).
BIG_DATA = 64 * 1024


def extra_storages(size: int) -> int:
    """How many storages of big accounts the full needs on top of its own to hold at least
    ``size`` bytes (0 for the quickstart's own archives)."""
    return -(-size // (PER_STORAGE * BIG_DATA)) if size > 0 else 0


def big_accounts(extra: int) -> list[list[Account]]:
    """The ``extra`` storages of big accounts the full gets (pubkeys past the 32 the
    incrementals change, so those stay as they are)."""
    storages = []
    for storage in range(extra):
        rnd = random.Random(f"ledger-big-{storage}")
        accounts = [
            Account(
                pubkey=random.Random(f"pubkey-big-{storage}-{n}").randbytes(32),
                lamports=1_000_000 + rnd.randrange(1_000_000),
                data=rnd.randbytes(BIG_DATA),
                owner=SYSTEM,
                rent_epoch=2**64 - 1,
            )
            for n in range(PER_STORAGE)
        ]
        storages.append(accounts)
    return storages


def accounts_of(slot: int, extra: int = 0) -> list[list[Account]]:
    """The accounts written at ``slot``, one list per storage: the full creates 32 accounts
    (and ``extra`` storages of big ones); each later slot changes some (new lamports and
    data) and closes one (zero lamports)."""
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
                    # a closed account is the default one (agave refuses any other at load)
                    rent_epoch=0 if closed else 2**64 - 1,
                )
            )
        storages.append(accounts)
    return storages + big_accounts(extra) if slot == FULL else storages


def archive_of(slot: int, base: int | None, extra: int = 0) -> tuple[str, bytes]:
    """The name and bytes of the full (``base`` None) or incremental archive of ``slot``
    (on a full with ``extra`` storages of big accounts)."""
    slots = [FULL] if base is None else [s for s in INCREMENTALS if s <= slot]
    state = [FULL, *slots] if base is not None else slots  # the accounts the state holds
    written = {s: accounts_of(s, extra) for s in state}
    lattice = lattice_of(a for s in state for storage in written[s] for a in storage)
    entries: list[tuple[str, bytes | None]] = []
    storages: list[tuple[int, int, int]] = []
    ident = 0
    for slot_written in slots:
        for number, accounts in enumerate(written[slot_written]):
            # One storage a slot, as agave writes them (its loader refuses several for one
            # slot): a slot's next storages go to the slots just below it, still above the
            # slot written before it, so the newest version of each account stays the same.
            storage_slot = slot_written - number
            data = padded(write_storage(accounts))
            entries.append((f"accounts/{storage_slot}.{ident}", data))
            storages.append((storage_slot, ident, len(data)))
            ident += 1
    head: list[tuple[str, bytes | None]] = [
        ("version", SNAPSHOT_VERSION),
        ("snapshots", None),
        (f"snapshots/{slot}", None),
        (f"snapshots/{slot}/{slot}", write_manifest(slot, lattice, storages)),
        ("snapshots/status_cache", write_status_cache([slot])),  # the slot rooted
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


def archives(size: int = 0) -> list[tuple[str, bytes]]:
    """Every archive of the quickstart: the full and its incrementals (the full of at least
    ``size`` bytes when given)."""
    extra = extra_storages(size)
    return [archive_of(FULL, None, extra)] + [archive_of(s, FULL, extra) for s in INCREMENTALS]


#: The largest ``--size``: the full's storages take one slot each, below slot 1000.
MAX_SIZE = 256 * 1024**2


def _size(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"at most 256MiB (one storage a slot), got {text}")
    return size


def parser() -> argparse.ArgumentParser:
    """The script's arguments (``--help`` prints them and writes nothing)."""
    default = Path(__file__).resolve().parent / "ledger"
    parser = argparse.ArgumentParser(
        prog="make_ledger.py",
        description="Write a full snapshot at slot 1000 and two incrementals on it, real "
        "archives in agave's formats, the same bytes every run.",
    )
    parser.add_argument(
        "directory", nargs="?", type=Path, default=default,
        help=f"where to write them (created if missing; default: {default})",
    )  # fmt: skip
    parser.add_argument(
        "--size", type=_size, default=0, metavar="SIZE",
        help="make the full at least SIZE bytes (e.g. 3MiB), with more accounts; other "
        "names than the quickstart's (default: the quickstart's archives, ~35-68 KB)",
    )  # fmt: skip
    return parser


def main(argv: list[str]) -> int:
    """Write every archive into the directory given (default: examples/ledger)."""
    args = parser().parse_args(argv)
    out: Path = args.directory
    out.mkdir(parents=True, exist_ok=True)
    for name, data in archives(args.size):
        (out / name).write_bytes(data)
        print(out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
