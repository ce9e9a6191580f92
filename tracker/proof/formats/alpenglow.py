"""Alpenglow's certificates, signer bitmaps, block footers, vote payloads and rank maps,
decoded and built as agave and Firedancer read and write them (pure; docs/http-api.md,
"The cluster level", where each source file is cited with its commit).

- **Signer bitmap** (anza-xyz/solana-sdk ``signer-store/src/lib.rs``): a u8 version (0:
  base 2, 1: base 3), the bit count as a u16 little endian (at most the rank map's size),
  then for base 2 exactly ``ceil(bits / 8)`` bytes, bit ``i`` in byte ``i // 8`` at bit
  ``i % 8`` (least significant first), the padding bits zero. A finality certificate is
  base 2 only (agave's ``ValidatedBlockFinalizationCert::try_from_footer`` refuses base 3).
- **Finality certificate** (SIMD-0402's ``FinalCertificate``, agave
  ``entry/src/block_component.rs`` ``BlockFinalizationCert``; Firedancer
  ``src/choreo/votor/ag_cert_serde.h``): ``slot`` u64, ``block_id`` 32 bytes,
  ``final_aggregate``, then ``notar_aggregate: Option<VotesAggregate>`` (a u8 tag); a
  ``VotesAggregate`` is a 96-byte compressed BLS signature and a bitmap with a u16 length.
  Without ``notar_aggregate`` it is a fast finalization: ``final_aggregate`` aggregates
  notarize votes of >= 80% of the stake. With it, a slow one: ``final_aggregate`` holds
  finalize votes and ``notar_aggregate`` notarize votes, each of >= 60%.
- **Block footer** (SIMD-0298/0307, ``VersionedBlockFooter``): a u8 version (1), then
  ``bank_hash`` (32 bytes), ``block_producer_time_nanos`` (u64), the user agent (u8
  length, at most 255 bytes), then the optional certificates.
- **Vote payload** signed (agave ``votor-messages/src/wire.rs``, ``VotePayloadToSign``):
  a u8 tag (1 notarize, 2 finalize, 6 genesis), the block (``slot`` u64 and ``block_id``)
  or the slot alone for a finalize vote, then the cluster's ``shred_version`` (u16).
- **BLS key of a vote account** (solana-sdk ``vote-interface/src/state/vote_state_v4.rs``):
  ``VoteStateVersions`` is a u32 tag, 3 for ``V4``, whose fields start ``node_pubkey``,
  ``authorized_withdrawer``, two collectors (32 bytes each), two u16 commissions,
  ``pending_delegator_rewards`` (u64), then ``bls_pubkey_compressed: Option<[u8; 48]>``.
  Older versions carry no BLS key.
- **Rank map** (agave ``runtime/src/epoch_stakes.rs`` ``BLSPubkeyToRankMap::new``;
  Firedancer ``src/choreo/votor/ag_epoch_info.c``): the vote accounts with stake and a BLS
  key that decodes; every copy of a BLS key or node identity listed twice dropped; ranked by
  stake descending, ties by the compressed key ascending; the total is the ranked stake.
  The vote accounts are those of the epoch's stakes (``epoch_stakes(E)``, taken as epoch
  E-1 began), which a snapshot's manifest holds (:class:`EpochVoters`) and no RPC serves.

Everything here is hostile input: lengths are checked before they are read and a decoder
that does not end exactly where its data ends refuses it (:class:`CertificateInvalid`).
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from collections.abc import Callable, Iterable

import attrs
import base58

from tracker.errors import CertificateInvalid

#: Bytes of a compressed BLS signature (G2) and of the affine one in a ``Certificate``.
SIGNATURE_COMPRESSED = 96
SIGNATURE_AFFINE = 192
#: Bytes of a compressed BLS public key (G1).
PUBKEY_COMPRESSED = 48
#: Validators a rank map holds at most: the Validator Admission Ticket admits 2,000
#: (SIMD-0357; Firedancer ``AG_VAT_MAX``, ``AG_BLS_MAX_SIGNERS``).
MAX_RANKS = 2000
#: Stake fractions a certificate needs, in percent (agave ``votor-messages/src/
#: certificate.rs``, ``CertificateType::limits_and_vote_types``).
FAST_FINALIZE_PERCENT = 80
FINALIZE_PERCENT = 60
NOTARIZE_PERCENT = 60
GENESIS_PERCENT = 82
#: ``VotePayloadToSign`` tags.
NOTARIZE = 1
FINALIZE = 2
GENESIS = 6
#: ``VoteStateVersions::V4``'s tag and the offset of its BLS key's option tag.
VOTE_STATE_V4 = 3
BLS_KEY_AT = 4 + 4 * 32 + 2 + 2 + 8
#: The bytes of a vote account read to find its node and BLS key.
VOTE_PREFIX = BLS_KEY_AT + 1 + PUBKEY_COMPRESSED


@attrs.frozen
class Aggregate:
    """One aggregate of a certificate: the compressed signature and the ranks that signed."""

    signature: bytes
    ranks: tuple[int, ...]


@attrs.frozen
class FinalCertificate:
    """A decoded ``FinalCertificate``: fast when ``notar`` is None."""

    slot: int
    block_id: bytes
    final: Aggregate
    notar: Aggregate | None

    @property
    def fast(self) -> bool:
        """True for a fast finalization (notarize votes of >= 80% in ``final``)."""
        return self.notar is None


@attrs.frozen
class RankMap:
    """The epoch's ranked BLS keys (compressed) and their stakes; ``total`` their sum."""

    keys: tuple[bytes, ...]
    stakes: tuple[int, ...]
    votes: tuple[str, ...]

    @property
    def total(self) -> int:
        """The stake the thresholds are fractions of."""
        return sum(self.stakes)

    def __len__(self) -> int:
        return len(self.keys)


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.at = 0
        self.what = what

    def take(self, count: int) -> bytes:
        if count > len(self.data) - self.at:
            raise CertificateInvalid(f"{self.what} ends at byte {len(self.data)}")
        self.at += count
        return self.data[self.at - count : self.at]

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def flag(self) -> bool:
        tag = self.uint(1)
        if tag > 1:
            raise CertificateInvalid(f"{self.what}: option tag {tag}")
        return tag == 1

    def end(self) -> None:
        if self.at != len(self.data):
            raise CertificateInvalid(f"{self.what}: {len(self.data) - self.at} bytes after it")


def decode_bitmap(data: bytes, ranks: int) -> tuple[int, ...]:
    """The ranks a base-2 signer bitmap names, for a rank map of ``ranks`` validators.
    Raises CertificateInvalid for another version, more bits than ranks, a payload of
    another length or padding bits set."""
    if len(data) < 3:
        raise CertificateInvalid("the signer bitmap is shorter than its header")
    version = data[0]
    bits = int.from_bytes(data[1:3], "little")
    if version != 0:
        raise CertificateInvalid(f"the signer bitmap is not base 2 (version {version})")
    if bits > ranks:
        raise CertificateInvalid(
            f"the signer bitmap names {bits} ranks, the rank map holds {ranks}"
        )
    payload = data[3:]
    if len(payload) != (bits + 7) // 8:
        raise CertificateInvalid(f"the signer bitmap has {len(payload)} bytes for {bits} bits")
    if bits % 8 and payload[-1] >> (bits % 8):
        raise CertificateInvalid("the signer bitmap has padding bits set")
    return tuple(i for i in range(bits) if payload[i >> 3] >> (i & 7) & 1)


def encode_bitmap(ranks: Iterable[int], bits: int) -> bytes:
    """The base-2 signer bitmap of ``ranks`` over ``bits`` bits (the inverse of
    :func:`decode_bitmap`)."""
    payload = bytearray((bits + 7) // 8)
    for rank in ranks:
        if not 0 <= rank < bits:
            raise ValueError(f"rank {rank} outside {bits} bits")
        payload[rank >> 3] |= 1 << (rank & 7)
    return bytes([0]) + bits.to_bytes(2, "little") + bytes(payload)


def _aggregate(reader: _Reader, ranks: int) -> Aggregate:
    signature = reader.take(SIGNATURE_COMPRESSED)
    length = reader.uint(2)
    return Aggregate(signature, decode_bitmap(reader.take(length), ranks))


def decode_final_certificate(data: bytes, ranks: int) -> FinalCertificate:
    """A ``FinalCertificate`` (the bytes a block footer carries), its bitmaps read for a
    rank map of ``ranks`` validators. Raises CertificateInvalid (one line)."""
    reader = _Reader(data, "the finality certificate")
    slot = reader.uint(8)
    block_id = reader.take(32)
    final = _aggregate(reader, ranks)
    notar = _aggregate(reader, ranks) if reader.flag() else None
    reader.end()
    return FinalCertificate(slot, block_id, final, notar)


def encode_final_certificate(cert: FinalCertificate, ranks: int) -> bytes:
    """The bytes of ``cert`` as a footer carries them (tests and tools write them)."""

    def aggregate(agg: Aggregate) -> bytes:
        bitmap = encode_bitmap(agg.ranks, ranks)
        return agg.signature + len(bitmap).to_bytes(2, "little") + bitmap

    out = struct.pack("<Q", cert.slot) + cert.block_id + aggregate(cert.final)
    return out + (b"\0" if cert.notar is None else b"\1" + aggregate(cert.notar))


def footer_bank_hash(data: bytes) -> bytes:
    """The ``bank_hash`` of a ``VersionedBlockFooter`` (SIMD-0298). Raises
    CertificateInvalid for another version or a footer that ends in its first fields."""
    reader = _Reader(data, "the block footer")
    version = reader.uint(1)
    if version != 1:
        raise CertificateInvalid(f"the block footer has version {version}, not 1")
    bank_hash = reader.take(32)
    reader.take(8)  # block_producer_time_nanos
    reader.take(reader.uint(1))  # block_user_agent
    return bank_hash


def vote_payload(tag: int, slot: int, block_id: bytes | None, shred_version: int) -> bytes:
    """The bytes a validator signs for a vote (``VotePayloadToSign``, wincode): ``tag``,
    the block (or the slot alone for a finalize vote), the shred version."""
    block = struct.pack("<Q", slot) + (block_id if block_id is not None else b"")
    return bytes([tag]) + block + struct.pack("<H", shred_version)


def vote_account_keys(data: bytes) -> tuple[bytes, bytes | None]:
    """``(node_pubkey, compressed BLS key or None)`` of a vote account's data (its first
    :data:`VOTE_PREFIX` bytes suffice); None for a version before V4 or a V4 without a key.
    Raises CertificateInvalid for data too short or an option tag that is not 0 or 1."""
    if len(data) < 4 + 32:
        raise CertificateInvalid(f"a vote account of {len(data)} bytes")
    version = int.from_bytes(data[:4], "little")
    node = data[4:36]
    if version != VOTE_STATE_V4:
        return node, None
    if len(data) < BLS_KEY_AT + 1:
        raise CertificateInvalid("a V4 vote account that ends before its BLS key")
    tag = data[BLS_KEY_AT]
    if tag == 0:
        return node, None
    if tag != 1 or len(data) < VOTE_PREFIX:
        raise CertificateInvalid("a V4 vote account whose BLS key does not decode")
    return node, data[BLS_KEY_AT + 1 : VOTE_PREFIX]


@attrs.frozen
class Candidate:
    """One vote account as the rank map weighs it."""

    vote: str
    node: bytes
    stake: int
    bls_key: bytes | None


#: Staked vote accounts with a BLS key kept at most of one epoch's stakes (a rank map
#: admits :data:`MAX_RANKS`; mainnet's epoch stakes hold ~1,500 staked vote accounts): 1.2
#: MB at most in their kept form.
MAX_EPOCH_VOTERS = 10_000
_VOTERS_HEAD = struct.Struct("<4sQII")
_VOTER = struct.Struct("<32s32sQ48s")
_VOTERS_MAGIC = b"EVS1"


@attrs.frozen
class EpochVoters:
    """The rank map's candidates of one epoch as a snapshot's manifest holds them: the vote
    accounts of its ``epoch_stakes(epoch)`` with stake and a BLS key in their data
    (:func:`vote_account_keys`), in the manifest's order. ``listed`` counts those the
    manifest held; more than :data:`MAX_EPOCH_VOTERS` are not kept (``listed`` then
    exceeds ``len(candidates)``)."""

    epoch: int
    candidates: tuple[Candidate, ...]
    listed: int

    @property
    def complete(self) -> bool:
        """True when every candidate the manifest listed was kept."""
        return self.listed == len(self.candidates)

    def to_bytes(self) -> bytes:
        """The compact form kept beside a cached copy and in a proof (:meth:`from_bytes`
        reads it): a head (magic, epoch, listed, count), then per candidate its vote
        account, node, stake and BLS key (120 bytes)."""
        head = _VOTERS_HEAD.pack(_VOTERS_MAGIC, self.epoch, self.listed, len(self.candidates))
        return head + b"".join(
            _VOTER.pack(base58.b58decode(c.vote), c.node, c.stake, c.bls_key or bytes(48))
            for c in self.candidates
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> EpochVoters:
        """What :meth:`to_bytes` wrote. Raises CertificateInvalid (one line) for anything
        else."""
        if len(data) < _VOTERS_HEAD.size:
            raise CertificateInvalid("the epoch's stakes end in their head")
        magic, epoch, listed, count = _VOTERS_HEAD.unpack_from(data)
        if magic != _VOTERS_MAGIC or count > min(listed, MAX_EPOCH_VOTERS):
            raise CertificateInvalid("the epoch's stakes are not in their kept form")
        if len(data) != _VOTERS_HEAD.size + count * _VOTER.size:
            raise CertificateInvalid(f"the epoch's stakes have {len(data)} bytes for {count}")
        candidates = tuple(
            Candidate(base58.b58encode(vote).decode("ascii"), node, stake, key)
            for vote, node, stake, key in _VOTER.iter_unpack(data[_VOTERS_HEAD.size :])
        )
        if len({c.vote for c in candidates}) != count:
            raise CertificateInvalid("the epoch's stakes list a vote account twice")
        return cls(epoch, candidates, listed)


def voters_digest(data: bytes) -> str:
    """A short name of an epoch's stakes in their kept form (what a verdict is kept by)."""
    return hashlib.sha256(data).hexdigest()[:32]


def rank_map(candidates: Iterable[Candidate], valid: Callable[[bytes], bool]) -> RankMap:
    """The rank map of the epoch's vote accounts (agave's ``BLSPubkeyToRankMap::new``):
    stake above zero and a BLS key that ``valid`` decodes; every copy of a key, node or
    vote account listed twice dropped (a manifest's map holds each account once; a forged
    one must not rank one account twice); stake descending, then the compressed key
    ascending. Raises CertificateInvalid when none is left or more than :data:`MAX_RANKS`
    are."""
    kept = [c for c in candidates if c.stake > 0 and c.bls_key is not None and valid(c.bls_key)]
    keys = Counter(c.bls_key for c in kept)
    nodes = Counter(c.node for c in kept)
    votes = Counter(c.vote for c in kept)
    ranked = sorted(
        (c for c in kept if keys[c.bls_key] == 1 and nodes[c.node] == 1 and votes[c.vote] == 1),
        key=lambda c: (-c.stake, c.bls_key),
    )
    if not ranked:
        raise CertificateInvalid("no vote account with stake has a BLS key")
    if len(ranked) > MAX_RANKS:
        raise CertificateInvalid(f"{len(ranked)} ranked validators, at most {MAX_RANKS} admitted")
    return RankMap(
        tuple(c.bls_key for c in ranked if c.bls_key is not None),
        tuple(c.stake for c in ranked),
        tuple(c.vote for c in ranked),
    )


def meets(stake: int, total: int, percent: int) -> bool:
    """True when ``stake`` is at least ``percent``% of ``total`` (exact integers)."""
    return stake * 100 >= total * percent
