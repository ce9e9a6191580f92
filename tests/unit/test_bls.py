"""The BLS library's assumptions (tracker/proof/cluster/bls.py), each with its canary: the
hash to G2 and pairing check verify what ``py_ecc``'s ``G2ProofOfPossession`` (the IETF
draft's scheme with Alpenglow's tag) signs, aggregates included; keys off the curve,
outside the subgroup or at infinity are refused; ``G1Point()`` is the generator."""

from __future__ import annotations

import sys

from py_arkworks_bls12381 import G1Point
from pyecc import G2ProofOfPossession as Pop

from tracker.proof.cluster import bls

# The BLS12-381 base field's prime.
P = int(
    "1a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffaaab",
    16,
)
SECRETS = [Pop.KeyGen(bytes([n]) * 32) for n in range(1, 5)]
KEYS = [bytes(Pop.SkToPk(s)) for s in SECRETS]
MESSAGE = b"\x01" + (7).to_bytes(8, "little") + b"\x33" * 32 + (50093).to_bytes(2, "little")


def test_the_tag_is_the_one_py_ecc_signs_with() -> None:
    assert bls.DST == Pop.DST == b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"


def test_an_aggregate_py_ecc_made_verifies_and_nothing_else_does() -> None:
    keys = bls.PublicKeys(KEYS)
    signature = bytes(Pop.Aggregate([Pop.Sign(s, MESSAGE) for s in SECRETS[:3]]))
    assert bls.verify(keys, [0, 1, 2], MESSAGE, signature)
    assert not bls.verify(keys, [0, 1, 3], MESSAGE, signature)  # another signer named
    assert not bls.verify(keys, [0, 1], MESSAGE, signature)  # one left out
    assert not bls.verify(keys, [0, 1, 2], MESSAGE[:-1] + b"\x00", signature)  # another message
    assert not bls.verify(keys, [], MESSAGE, signature)
    assert not bls.verify(keys, [0, 1, 2], MESSAGE, bytes(96))
    assert not bls.verify(keys, [0, 1, 2], MESSAGE, b"\xc0" + bytes(95))  # infinity


def _off_subgroup_key() -> bytes:
    """A compressed point of the curve y^2 = x^3 + 4 outside the r-order subgroup."""
    for x in range(1, 1000):
        rhs = (x**3 + 4) % P
        y = pow(rhs, (P + 1) // 4, P)
        if y * y % P == rhs:
            flags = 0x80 | (0x20 if y > P - y else 0)
            raw = bytearray(x.to_bytes(48, "big"))
            raw[0] |= flags
            return bytes(raw)
    raise AssertionError("no point found")


def test_keys_off_the_curve_outside_the_subgroup_or_at_infinity_are_refused() -> None:
    assert all(bls.valid_key(k) for k in KEYS)
    assert not bls.valid_key(b"\xc0" + bytes(47))  # infinity
    assert not bls.valid_key(bytes(48))  # no compression flag
    assert not bls.valid_key(KEYS[0][:47])
    assert not bls.valid_key(_off_subgroup_key())
    keys = bls.PublicKeys([KEYS[0], _off_subgroup_key()])
    assert keys.aggregate([0]) is not None and keys.aggregate([0, 1]) is None


def test_the_generator_is_the_default_point() -> None:
    generator = bytes.fromhex(
        "97f1d3a73197d7942695638c4fa9ac0fc3688c4f9774b905a14e3a3f171bac586c55e83ff97a1aeffb3af00adb22c6bb"
    )
    assert G1Point() == G1Point.from_compressed_bytes(generator)


def test_importing_the_tests_signer_leaves_the_recursion_limit_alone() -> None:
    # py_ecc raises it to 100,000 at import; tests/pyecc.py puts it back (deeply nested
    # JSON in other tests must raise RecursionError, not overflow the C stack).
    assert sys.getrecursionlimit() < 100_000
