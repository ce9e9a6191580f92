"""``py_ecc``'s BLS (the tests sign Alpenglow votes with it), imported without its side
effect: py_ecc raises the interpreter's recursion limit to 100,000 when imported
(``py_ecc/__init__.py``), which lets the deeply nested JSON of other tests overflow the C
stack (a segfault) instead of raising RecursionError. The limit is put back at once; the
signing the tests do needs no deep recursion (canary: tests/unit/test_bls.py)."""

from __future__ import annotations

import sys

_LIMIT = sys.getrecursionlimit()

from py_ecc.bls import G2ProofOfPossession  # noqa: E402
from py_ecc.bls.g2_primitives import G1_to_pubkey, pubkey_to_G1  # noqa: E402
from py_ecc.optimized_bls12_381 import G1, add, multiply, neg  # noqa: E402

sys.setrecursionlimit(_LIMIT)


def rogue_key(secret: int, others: list[bytes]) -> bytes:
    """The compressed key ``secret*G`` less the keys ``others``: their aggregate with it is
    ``secret*G``, which ``secret`` alone signs for (the rogue-key attack a proof of
    possession rules out)."""
    point = multiply(G1, secret)
    for key in others:
        point = add(point, neg(pubkey_to_G1(key)))
    return bytes(G1_to_pubkey(point))


__all__ = ["G2ProofOfPossession", "rogue_key"]
