"""What one Alpenglow finality certificate costs the cluster level (docs/http-api.md, "The
cluster level"): ``.venv/bin/python bench/certificate.py [--ranks N ...] [--runs N]``.

For rank maps of ``--ranks`` validators (default 500, 1,000 and 2,000: the admission cap),
keys and signatures made with the library itself (scalar multiples: fast, and not what is
measured), it times what the tracker does, each step alone, best of ``--runs``:

- building the rank map's keys (:class:`tracker.proof.cluster.bls.PublicKeys`: every
  compressed key decoded and checked in the subgroup, once per RPC and epoch);
- verifying a fast-finalize certificate signed by 80% of the ranks
  (:func:`tracker.proof.cluster.finality.weigh` over :func:`bls.verify`: the bitmap's keys
  summed, the message hashed to G2, one pairing check);
- a slow one (two aggregates, finalize and notarize, each by 65%);
- against the yardstick of the same pairing check with one key (the part no certificate
  avoids), so the ratio says what the signers add.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from py_arkworks_bls12381 import G1Point, G2Point, Scalar

from tracker.proof.cluster import bls
from tracker.proof.cluster.finality import weigh
from tracker.proof.formats.alpenglow import (
    FINALIZE,
    NOTARIZE,
    Aggregate,
    FinalCertificate,
    RankMap,
    vote_payload,
)

BLOCK = b"\x33" * 32
SLOT = 459_700_000
SHRED = 50093


def best(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def signed(secrets: list[int], ranks: tuple[int, ...], message: bytes) -> bytes:
    hashed = G2Point.hash_to_curve(message, bls.DST)
    total = G2Point.identity()
    for rank in ranks:
        total = total + hashed * Scalar(secrets[rank])
    return total.to_compressed_bytes()


def measure(count: int, runs: int) -> None:
    secrets = [1000 + 7919 * n for n in range(count)]
    keys = [(G1Point() * Scalar(s)).to_compressed_bytes() for s in secrets]
    ranks = RankMap(tuple(keys), tuple(10**9 for _ in keys), tuple(str(n) for n in range(count)))
    built = best(runs, lambda: bls.PublicKeys(keys))
    public = bls.PublicKeys(keys)

    def verify(r: tuple[int, ...], message: bytes, signature: bytes) -> bool:
        return bls.verify(public, r, message, signature)

    fast_ranks = tuple(range(count * 8 // 10))
    fast = FinalCertificate(
        SLOT,
        BLOCK,
        Aggregate(
            signed(secrets, fast_ranks, vote_payload(NOTARIZE, SLOT, BLOCK, SHRED)), fast_ranks
        ),
        None,
    )
    slow_ranks = tuple(range(count * 65 // 100))
    slow = FinalCertificate(
        SLOT,
        BLOCK,
        Aggregate(
            signed(secrets, slow_ranks, vote_payload(FINALIZE, SLOT, None, SHRED)), slow_ranks
        ),
        Aggregate(
            signed(secrets, slow_ranks, vote_payload(NOTARIZE, SLOT, BLOCK, SHRED)), slow_ranks
        ),
    )
    assert weigh(fast, ranks.stakes, ranks.total, SHRED, verify).supermajority
    assert weigh(slow, ranks.stakes, ranks.total, SHRED, verify).supermajority
    one = (0,)
    single = signed(secrets, one, vote_payload(NOTARIZE, SLOT, BLOCK, SHRED))
    message = vote_payload(NOTARIZE, SLOT, BLOCK, SHRED)
    yardstick = best(runs, lambda: bls.verify(public, one, message, single))
    fast_s = best(runs, lambda: weigh(fast, ranks.stakes, ranks.total, SHRED, verify))
    slow_s = best(runs, lambda: weigh(slow, ranks.stakes, ranks.total, SHRED, verify))
    print(
        f"ranks {count:5d}: rank map keys {built * 1e3:7.1f} ms;"
        f" fast certificate {fast_s * 1e3:6.2f} ms ({fast_s / yardstick:4.2f}x one signer);"
        f" slow {slow_s * 1e3:6.2f} ms ({slow_s / yardstick:4.2f}x);"
        f" one signer {yardstick * 1e3:5.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for count in args.ranks:
        measure(count, args.runs)


if __name__ == "__main__":
    main()
