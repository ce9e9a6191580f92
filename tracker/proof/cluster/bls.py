"""BLS12-381 signatures as Alpenglow uses them, through ``py_arkworks_bls12381`` (the
arkworks curve, compiled): the one place the library is used (docs/http-api.md, "The
cluster level").

The scheme is the IETF draft's minimal-pubkey-size variant with proofs of possession:
public keys in G1 (48 bytes compressed in a vote account), signatures in G2 (96 bytes
compressed in a block footer's ``FinalCertificate``), messages hashed to G2 with
the tag :data:`DST` (anza-xyz/solana-sdk ``bls-signatures/src/hash.rs``
``HASH_TO_POINT_DST``; Firedancer ``src/choreo/votor/ag_bls.c`` ``AG_BLS_DST``). An aggregate
of votes on one message checks as ``e(sum of the signers' keys, H(m)) == e(G1, sigma)``
(the draft's FastAggregateVerify; rogue keys are ruled out by the proof of possession the
vote program checked when each key was registered).

Assumptions on the library, each with a canary test in ``tests/unit/test_bls.py``:
``from_compressed_bytes`` refuses bytes off the curve or outside the subgroup (the IETF
``KeyValidate``/``signature_subgroup_check``); ``hash_to_curve(msg, dst)`` is RFC 9380's
``BLS12381G2_XMD:SHA-256_SSWU_RO_`` (signatures made by ``py_ecc``'s
``G2ProofOfPossession`` verify); ``G1Point()`` is the generator.
Blocking and CPU-bound: the callers run these in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from py_arkworks_bls12381 import GT, G1Point, G2Point

#: Compressed keys and their points (None: a key that does not decode).
Points = dict[bytes, "G1Point | None"]

#: The hash-to-curve tag of Alpenglow's vote signatures.
DST = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
_FP = 48


class PublicKeys:
    """The rank map's keys decoded once (a key that does not decode is None); ``known``
    holds keys decoded before (:func:`decode_all`)."""

    def __init__(
        self, compressed: Sequence[bytes], known: Mapping[bytes, G1Point | None] | None = None
    ) -> None:
        known = known or {}
        self._points = [known[key] if key in known else _g1(key) for key in compressed]

    def __len__(self) -> int:
        return len(self._points)

    def aggregate(self, ranks: Sequence[int]) -> G1Point | None:
        """The sum of the keys at ``ranks`` (None when any does not decode or none is named)."""
        total: G1Point | None = None
        for rank in ranks:
            point = self._points[rank]
            if point is None:
                return None
            total = point if total is None else total + point
        return total


def _go_on() -> None:
    return None


def decode_all(keys: Iterable[bytes], checkpoint: Callable[[], None] = _go_on) -> Points:
    """Each compressed key decoded (None: off the curve, outside the subgroup, infinity);
    ``checkpoint()`` is called before each key and may raise to stop the decoding
    (``trio.from_thread.check_cancelled``: a hostile RPC's 20,000 keys take seconds)."""
    points: Points = {}
    for key in keys:
        checkpoint()
        points[key] = _g1(key)
    return points


def valid_key(compressed: bytes) -> bool:
    """True when ``compressed`` is a G1 point in the subgroup, not the identity."""
    return _g1(compressed) is not None


def _g1(compressed: bytes) -> G1Point | None:
    if len(compressed) != _FP:
        return None
    try:
        point = G1Point.from_compressed_bytes(compressed)
    except ValueError:
        return None
    if point == G1Point.identity() or not point.is_in_subgroup():
        return None
    return point


def signature_point(compressed: bytes) -> G2Point | None:
    """A signature from its 96 compressed bytes; None when it is no point of the subgroup
    (or the identity)."""
    if len(compressed) != 2 * _FP:
        return None
    try:
        point = G2Point.from_compressed_bytes(compressed)
    except ValueError:
        return None
    if point == G2Point.identity() or not point.is_in_subgroup():
        return None
    return point


def verify(keys: PublicKeys, ranks: Sequence[int], message: bytes, signature: bytes) -> bool:
    """True when ``signature`` aggregates signatures of ``message`` by the keys at ``ranks``."""
    aggregate = keys.aggregate(ranks)
    sigma = signature_point(signature)
    if aggregate is None or sigma is None or aggregate == G1Point.identity():
        return False
    hashed = G2Point.hash_to_curve(message, DST)
    return bool(GT.pairing_check([aggregate, -G1Point()], [hashed, sigma]))
