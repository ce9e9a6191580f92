"""``py_ecc``'s BLS (the tests sign Alpenglow votes with it), imported without its side
effect: py_ecc raises the interpreter's recursion limit to 100,000 when imported
(``py_ecc/__init__.py``), which lets the deeply nested JSON of other tests overflow the C
stack (a segfault) instead of raising RecursionError. The limit is put back at once; the
signing the tests do needs no deep recursion (canary: tests/unit/test_bls.py)."""

from __future__ import annotations

import sys

_LIMIT = sys.getrecursionlimit()

from py_ecc.bls import G2ProofOfPossession  # noqa: E402

sys.setrecursionlimit(_LIMIT)

__all__ = ["G2ProofOfPossession"]
