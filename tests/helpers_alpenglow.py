"""Alpenglow's validators, certificates and RPC answers, made for the cluster level's tests
with real BLS keys (``py_ecc``'s ``G2ProofOfPossession``: the Ethereum Foundation's
implementation of the scheme Alpenglow uses, independent of the library the tracker
verifies with).

The formats are those read in agave and Firedancer (docs/http-api.md, "The cluster level"
cites each): a V4 vote account's data (``vote-interface/src/state/vote_state_v4.rs``), the
signed vote payload (``votor-messages/src/wire.rs``), a ``FinalCertificate`` and a block
footer (``entry/src/block_component.rs``), the signer bitmap (``signer-store``) and the
genesis certificate as ``getAgGenesisCert`` answers it. The rank order is written here
again, from agave's ``BLSPubkeyToRankMap::new``: stake descending, then the compressed key.
"""

from __future__ import annotations

import base64
import functools
import json
import struct
from collections.abc import Iterable
from typing import Any

import attrs
import base58
from helpers_votes import VoteRpc, key
from pyecc import G2ProofOfPossession as Pop

from tracker.proof.formats.alpenglow import EpochVoters
from tracker.proof.formats.manifest import ManifestDecoder
from tracker.proof.formats.parsing import run
from tracker.proof.formats.writing import schedule_slot, write_manifest

#: The block id every test archive's manifest carries (tests/archives.py writes it).
BLOCK_ID = b"\x33" * 32
OTHER_BLOCK = b"\x44" * 32
SHRED_VERSION = 50093
NOTARIZE, FINALIZE, GENESIS = 1, 2, 6


@attrs.frozen
class Validator:
    """A vote account with its node, stake and BLS key pair."""

    vote: str
    node: bytes
    stake: int
    secret: int
    #: False: a V4 vote state without a BLS key
    has_key: bool = True

    @property
    def bls_key(self) -> bytes:
        return _public(self.secret)

    def account_data(self) -> bytes:
        """The vote account's data: ``VoteStateVersions::V4`` with its BLS key."""
        out = struct.pack("<I", 3) + self.node + bytes(32) * 3  # withdrawer, collectors
        key = b"\x01" + self.bls_key if self.has_key else b"\x00"
        out += struct.pack("<HHQ", 500, 0, 0) + key
        out += struct.pack("<Q", 0) + b"\x00" + struct.pack("<Q", 0) * 2  # votes, root, ...
        return out + struct.pack("<Qq", 0, 0)  # last_timestamp


@functools.cache
def _public(secret: int) -> bytes:
    return bytes(Pop.SkToPk(secret))


@functools.cache
def _signature(secret: int, message: bytes) -> bytes:
    return bytes(Pop.Sign(secret, message))


def validators(stakes: Iterable[int], *, seed: str = "v") -> list[Validator]:
    """Validators with these stakes (their keys made from ``seed``)."""
    out = []
    for n, stake in enumerate(stakes):
        secret = Pop.KeyGen(f"{seed} {n}".encode().ljust(32, b"\0"))
        node = bytes.fromhex(f"{n + 1:064x}")
        out.append(Validator(key(f"{seed} vote {n}"), node, stake, secret))
    return out


def ranked(vals: list[Validator]) -> list[Validator]:
    """The rank order (agave's): stake descending, then the compressed BLS key."""
    return sorted(vals, key=lambda v: (-v.stake, v.bls_key))


def payload(tag: int, slot: int, block_id: bytes | None, shred: int = SHRED_VERSION) -> bytes:
    """``VotePayloadToSign`` (wincode): the tag, the block or slot, the shred version."""
    return bytes([tag]) + struct.pack("<Q", slot) + (block_id or b"") + struct.pack("<H", shred)


def bitmap(ranks: Iterable[int], bits: int) -> bytes:
    """A base-2 signer bitmap (``signer-store``): version 0, u16 bits, LSB-first bytes."""
    data = bytearray((bits + 7) // 8)
    for rank in ranks:
        data[rank // 8] |= 1 << (rank % 8)
    return b"\x00" + struct.pack("<H", bits) + bytes(data)


def aggregate(signers: list[Validator], message: bytes, order: list[Validator]) -> bytes:
    """A ``VotesAggregate``: the signers' aggregate signature of ``message`` and the bitmap
    of their ranks in ``order``."""
    signature = bytes(Pop.Aggregate([_signature(v.secret, message) for v in signers]))
    ranks = [order.index(v) for v in signers]
    bits = bitmap(ranks, len(order))
    return signature + struct.pack("<H", len(bits)) + bits


def fast_certificate(
    slot: int,
    signers: list[Validator],
    order: list[Validator],
    *,
    block_id: bytes = BLOCK_ID,
    signed_block: bytes | None = None,
) -> bytes:
    """A fast-finalize ``FinalCertificate``: notarize votes of ``signers`` (for
    ``signed_block``, by default the block it names)."""
    message = payload(NOTARIZE, slot, signed_block or block_id)
    return struct.pack("<Q", slot) + block_id + aggregate(signers, message, order) + b"\x00"


def slow_certificate(
    slot: int,
    finalizers: list[Validator],
    notarizers: list[Validator],
    order: list[Validator],
    *,
    block_id: bytes = BLOCK_ID,
) -> bytes:
    """A slow ``FinalCertificate``: finalize votes, then notarize votes."""
    final = aggregate(finalizers, payload(FINALIZE, slot, None), order)
    notar = aggregate(notarizers, payload(NOTARIZE, slot, block_id), order)
    return struct.pack("<Q", slot) + block_id + final + b"\x01" + notar


def footer(bank_hash: bytes) -> bytes:
    """A ``VersionedBlockFooter::V1`` with ``bank_hash`` and no certificates."""
    agent = b"agave/4.3.0"
    return (
        b"\x01"
        + bank_hash
        + struct.pack("<Q", 1_700_000_000_000_000_000)
        + bytes([len(agent)])
        + agent
        + b"\x00\x00\x00"
    )


def document(slot: int, bank_hash: bytes, certificate: bytes, **extra: Any) -> bytes:
    """A certificate document as ``cluster_proof.certificates`` serves it."""
    body = {
        "slot": slot,
        "shred_version": SHRED_VERSION,
        "footer": base64.b64encode(footer(bank_hash)).decode(),
        "certificate": base64.b64encode(certificate).decode(),
        **extra,
    }
    return json.dumps(body).encode()


def genesis_answer(slot: int, block_id: bytes = b"\x07" * 32) -> dict[str, Any]:
    """getAgGenesisCert's result once migrated (``Block`` in camelCase, byte arrays)."""
    return {
        "block": {"slot": slot, "blockId": list(block_id)},
        "signature": {"signature": [7] * 192, "bitmap": [0, 5, 0, 31]},
    }


def manifest_stakes(vals: Iterable[Validator]) -> list[tuple[bytes, int, bytes]]:
    """The vote accounts of an epoch's stakes as a manifest holds them (``write_manifest``'s
    ``epoch_stakes``): pubkey, stake, data."""
    return [(base58.b58decode(v.vote), v.stake, v.account_data()) for v in vals]


def epoch_stakes(vals: Iterable[Validator], epoch: int = 11) -> bytes:
    """What a proof carries of a manifest whose stakes of ``epoch`` are ``vals``: the
    manifest is written, then decoded by the tracker (``Proof.epoch_stakes``)."""
    slot = schedule_slot(epoch)
    data = write_manifest(slot, None, epoch_stakes={epoch: manifest_stakes(vals)})
    decoder = ManifestDecoder(len(data))
    run(decoder.parser(), data)
    found = decoder.result().fields.get("epoch_voters")
    assert isinstance(found, EpochVoters) and found.epoch == epoch, "not the manifest's epoch"
    return found.to_bytes()


def alpenglow_rpc(vals: list[Validator], *, genesis_slot: int = 50, **more: Any) -> VoteRpc:
    """A test RPC of a cluster that migrated at ``genesis_slot``, whose vote accounts are
    ``vals``."""
    return VoteRpc(
        stakes={v.vote: v.stake for v in vals},
        accounts={v.vote: v.account_data() for v in vals},
        genesis=genesis_answer(genesis_slot),
        **more,
    )
