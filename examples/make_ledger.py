"""Write the quickstart's archives into examples/ledger/ (or the directory given).

Real snapshot-shaped archives, small: a tar with ``version``, ``snapshots/status_cache``,
``snapshots/{S}/{S}`` and a few account files, zstd-compressed as their names say, so that
``snapshot-tracker verify`` and ``fetch`` accept them. The output is the same bytes on every
run (fixed seeds and mtimes): run it again after changing it and commit the result.

    python3 examples/make_ledger.py [DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.archives import compress, make_tar, snapshot_entries  # noqa: E402

#: The names the README and examples/local.yml use: a full snapshot at slot 1000 and two
#: incrementals on it.
NAMES = (
    "snapshot-1000-5F6R7uy1cTGwN9tU2KU9RFs3LbjgjLbrhgrtcLhMteLx.tar.zst",
    "incremental-snapshot-1000-1100-Cuj7oZNuuyZf29dxCHz1LPbJkNiuzmmMko5UQ3MPbvM9.tar.zst",
    "incremental-snapshot-1000-1200-A2b4kX7kpQDXhiPMnCbVAHpL3ZchBe8MFdNo5puHdHAU.tar.zst",
)
#: Account files per archive and their size: a full snapshot holds more than an incremental.
ACCOUNTS = {"snapshot": (4, 32 * 1024), "incremental": (2, 16 * 1024)}


def slot_of(name: str) -> int:
    """The slot an archive is of (an incremental's is its second number)."""
    numbers = name.split("-")
    return int(numbers[3] if name.startswith("incremental-") else numbers[1])


def archive(name: str) -> bytes:
    """The bytes of the archive called ``name``."""
    accounts, size = ACCOUNTS[name.split("-")[0]]
    entries = snapshot_entries(slot_of(name), accounts=accounts, account_size=size, seed=7)
    return compress(make_tar(entries), "zst")


def main(argv: list[str]) -> int:
    """Write every archive of :data:`NAMES` into ``argv[0]`` (default: examples/ledger)."""
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent / "ledger"
    out.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        (out / name).write_bytes(archive(name))
        print(out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
