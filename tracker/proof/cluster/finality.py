"""The cluster level after the Alpenglow migration: a finality certificate for the
manifest's ``(slot, block_id)`` read in the rank map of the slot's epoch, bounded by each
RPC (docs/http-api.md, "The cluster level", "After the migration: finality certificates").

No JSON-RPC method serves a finality certificate: ``getBlock`` gives no block footer
(agave's ``UiConfirmedBlock``) and ``getAgGenesisCert`` only the genesis. Block footers,
each with the ``FinalCertificate`` of a recent block, reach Geyser plugins (agave's
``geyser-plugin-interface`` ``block_footer``). So the certificate comes from the operator:
``cluster_proof.certificates`` (or a group's own
``certificates``: :meth:`~tracker.config.schema.Config.group_certificates`) are URL
prefixes, the certificate relays, under each of which ``{slot}.json`` is the
:class:`Document` of a slot (its block's footer and a certificate for it, base64), checked
here as agave checks a footer's certificate once every relay's agrees
(:mod:`tracker.proof.cluster.certrelays`); without one the level says the RPC serves none.

agave reads a certificate in the rank map of ``epoch_stakes(E)`` (the stakes and vote
accounts as epoch E-1 began), which no RPC serves and the archive's manifest holds, but
unbound by its bank hash: the rank order and stakes are the manifest's
(:class:`~tracker.proof.formats.alpenglow.EpochVoters`), each signer's BLS key must be the
one its vote account holds at each RPC (``getMultipleAccounts``, the first bytes only) and
counts at the lesser of its two stakes against the greater of the two totals (the RPC's
``getVoteAccounts``, of its current epoch: the slot must lie in it or in the one before).
The aggregates are verified in a worker thread (:mod:`tracker.proof.cluster.bls`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import base58
import trio

from tracker.core.text import one_line, quoted
from tracker.errors import CertificateInvalid, ProbeError, RpcError
from tracker.net.limits import decode_text, iter_json_members
from tracker.proof.cluster import bls
from tracker.proof.formats.alpenglow import (
    FAST_FINALIZE_PERCENT,
    FINALIZE,
    FINALIZE_PERCENT,
    MAX_EPOCH_VOTERS,
    NOTARIZE,
    NOTARIZE_PERCENT,
    VOTE_PREFIX,
    Aggregate,
    Candidate,
    EpochVoters,
    FinalCertificate,
    RankMap,
    decode_final_certificate,
    footer_bank_hash,
    meets,
    rank_map,
    vote_account_keys,
    vote_payload,
)
from tracker.proof.formats.votes import VOTE_PROGRAM

#: The largest certificate document read (a real one is ~1 KB: 2,000 ranks are 250 bytes
#: of bitmap per aggregate).
MAX_DOCUMENT = 64 * 1024
#: The largest getEpochInfo and getMultipleAccounts answers read.
MAX_EPOCH_INFO = 64 * 1024
MAX_ACCOUNTS = 4 * 1024**2
#: Accounts asked per getMultipleAccounts call (agave's limit, ``MAX_MULTIPLE_ACCOUNTS``).
ACCOUNTS_PER_CALL = 100
#: Vote accounts with stake read at most from getVoteAccounts.
MAX_VOTE_ACCOUNTS = 20_000
#: BLS keys of a manifest's epoch stakes decoded at most beyond those of the vote accounts
#: the RPC stakes (validators whose stake went in one epoch: a handful; a forged manifest's
#: keys each cost ~0.2 ms of a worker thread).
MAX_UNKNOWN_KEYS = 200

_T = TypeVar("_T")


class ReadAnswer(Protocol):
    """``parse(body)`` of ``payload``'s answer from ``url``, at most ``max_body`` bytes, in a
    worker thread, the answer held within the budget of the answers at once (the cluster's
    :meth:`~tracker.proof.cluster.clustervotes.ClusterVotes._answer`); RpcError (one line)."""

    def __call__(
        self, url: str, payload: dict[str, Any], max_body: int, parse: Callable[[bytearray], _T]
    ) -> Awaitable[_T]: ...


@attrs.frozen
class Document:
    """A slot's certificate document: the block's footer and a ``FinalCertificate``."""

    slot: int
    shred_version: int
    footer: bytes
    certificate: bytes


@attrs.frozen
class Finality:
    """What one RPC's rank map says of a certificate: the stake behind it (the least of its
    aggregates for a slow finalization) and whether that reaches its thresholds."""

    fast: bool
    fraction: float
    supermajority: bool
    needed: str

    def describe(self) -> str:
        """One line: the certificate's kind and the stake behind it."""
        kind = "fast-finalize" if self.fast else "finalize and notarize"
        return f"the {kind} certificate carries {self.fraction:.1%} of the stake"


def document(body: bytes | bytearray, slot: int) -> Document:
    """The certificate document of ``slot`` (JSON: ``slot``, ``shred_version``, ``footer``
    and ``certificate`` in base64). Raises CertificateInvalid (one line)."""
    try:
        data = json.loads(decode_text(body))
    except (ValueError, ProbeError, RecursionError) as exc:
        raise CertificateInvalid(one_line(f"the certificate document is not JSON: {exc}")) from exc
    if not isinstance(data, dict):
        raise CertificateInvalid("the certificate document is not a JSON object")
    at, shred = data.get("slot"), data.get("shred_version")
    if not isinstance(at, int) or isinstance(at, bool) or at != slot:
        raise CertificateInvalid(f"the certificate document is for slot {quoted(at)}, not {slot}")
    if not isinstance(shred, int) or isinstance(shred, bool) or not 0 <= shred < 2**16:
        raise CertificateInvalid("the certificate document has no shred_version (a u16)")
    return Document(slot, shred, _base64(data, "footer"), _base64(data, "certificate"))


def _base64(data: dict[str, Any], key: str) -> bytes:
    text = data.get(key)
    if not isinstance(text, str):
        raise CertificateInvalid(f"the certificate document has no {key}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CertificateInvalid(f"the certificate document's {key} is not base64") from exc


def check_block(doc: Document, slot: int, block_id: bytes, bank_hash: bytes) -> None:
    """What the document says before any stake is weighed: its certificate is for
    (``slot``, ``block_id``) and its footer's bank hash is ``bank_hash``. Raises
    CertificateInvalid (one line) naming what differs. Pure."""
    head = doc.certificate[:40]
    if len(head) < 40:
        raise CertificateInvalid("the finality certificate ends in its block")
    at = int.from_bytes(head[:8], "little")
    if at != slot:
        raise CertificateInvalid(f"the finality certificate is for slot {at}, not {slot}")
    if head[8:40] != block_id:
        raise CertificateInvalid(
            f"the finality certificate is for block id {_b58(head[8:40])}, "
            f"the manifest's is {_b58(block_id)}"
        )
    footer_hash = footer_bank_hash(doc.footer)
    if footer_hash != bank_hash:
        raise CertificateInvalid(
            f"the block footer's bank hash is {_b58(footer_hash)}, "
            f"the manifest's is {_b58(bank_hash)}"
        )


def weigh(
    cert: FinalCertificate,
    stakes: Sequence[int],
    total: int,
    shred_version: int,
    verify: Callable[[tuple[int, ...], bytes, bytes], bool],
) -> Finality:
    """The stake behind ``cert``: each rank's stake in ``stakes``, the thresholds fractions
    of ``total``; each aggregate verified by ``verify(ranks, message, signature)``
    (CertificateInvalid, one line, for one that does not verify). Pure but for
    ``verify``."""
    block_id = cert.block_id
    checks: list[tuple[str, Aggregate, int, bytes | None, int]]
    if cert.notar is None:
        checks = [("notarize", cert.final, NOTARIZE, block_id, FAST_FINALIZE_PERCENT)]
    else:
        checks = [
            ("finalize", cert.final, FINALIZE, None, FINALIZE_PERCENT),
            ("notarize", cert.notar, NOTARIZE, block_id, NOTARIZE_PERCENT),
        ]
    fractions: list[float] = []
    met = True
    for name, agg, tag, block, percent in checks:
        _verified(name, agg, vote_payload(tag, cert.slot, block, shred_version), verify)
        stake = sum(stakes[r] for r in agg.ranks)
        fractions.append(stake / total)
        met = met and meets(stake, total, percent)
    needed = (
        f"{FAST_FINALIZE_PERCENT}% needed"
        if cert.fast
        else f"{FINALIZE_PERCENT}% finalize and {NOTARIZE_PERCENT}% notarize needed"
    )
    return Finality(cert.fast, min(fractions), met, needed)


def _verified(
    name: str,
    agg: Aggregate,
    message: bytes,
    verify: Callable[[tuple[int, ...], bytes, bytes], bool],
) -> None:
    if not agg.ranks:
        raise CertificateInvalid(f"the {name} aggregate names no signer")
    if not verify(agg.ranks, message, agg.signature):
        raise CertificateInvalid(
            f"the {name} aggregate does not verify over the {len(agg.ranks)} signers "
            "its bitmap names"
        )


def epoch_window(body: bytes | bytearray) -> tuple[int, int, int]:
    """``(epoch, first slot, last slot)`` of the current epoch from ``getEpochInfo``.
    Raises RpcError (one line)."""
    values: dict[str, int] = {}
    try:
        members = iter_json_members(decode_text(body), (), within=("result",), max_items=64)
        for name, value in members:
            if name == "error":
                raise RpcError(one_line(f"getEpochInfo: error {str(value)[:200]}"))
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                values[name] = value
    except ProbeError as exc:
        raise RpcError(one_line(f"getEpochInfo: {exc}")) from exc
    try:
        epoch, index = values["epoch"], values["slotIndex"]
        absolute, length = values["absoluteSlot"], values["slotsInEpoch"]
    except KeyError as exc:
        raise RpcError(f"getEpochInfo: an answer without {exc.args[0]}") from exc
    if index > absolute or length == 0:
        raise RpcError("getEpochInfo: a slot index past the absolute slot")
    first = absolute - index
    return epoch, first, first + length - 1


def accounts_data(body: bytes | bytearray, count: int) -> list[bytes | None]:
    """The data of each account a ``getMultipleAccounts`` answer gives (base64, the slice
    asked), None for an account that does not exist or that the vote program does not own.
    Raises RpcError (one line).

    Only the vote program's accounts hold a BLS key the cluster's rank map weighs: it takes
    one with its proof of possession. Any program's account can hold the bytes of a V4
    vote state, and a key read from one could be a rogue key (``x*G`` less the honest
    signers' keys: their aggregate with it is ``x*G``, which ``x`` alone signs for any
    block); a forged manifest listing such an account, unstaked at the RPC, made the honest
    stake count for a block nobody signed."""
    found: list[bytes | None] = []
    listed = False
    try:
        members = iter_json_members(
            decode_text(body), {"value"}, within=("result",), max_items=count + 1
        )
        for name, value in members:
            if name == "value[]":
                found.append(None if value is None else _account(value))
            elif name == "value":
                listed = True
            elif name == "error":
                raise RpcError(one_line(f"getMultipleAccounts: error {str(value)[:200]}"))
    except ProbeError as exc:
        raise RpcError(one_line(f"getMultipleAccounts: {exc}")) from exc
    if not listed or len(found) != count:
        raise RpcError(f"getMultipleAccounts: {len(found)} accounts for the {count} asked")
    return found


def _account(value: object) -> bytes | None:
    if isinstance(value, dict) and value.get("owner") != VOTE_PROGRAM:
        return None  # not a vote account: no key of its counts (accounts_data)
    data = value.get("data") if isinstance(value, dict) else None
    if not (isinstance(data, list) and len(data) == 2 and data[1] == "base64"):
        raise RpcError("getMultipleAccounts: an account without base64 data")
    text = data[0]
    if not isinstance(text, str) or len(text) > 4 * VOTE_PREFIX:
        raise RpcError("getMultipleAccounts: an account's data longer than the slice asked")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RpcError("getMultipleAccounts: an account's data is not base64") from exc


def candidates(stakes: dict[str, int], data: list[bytes | None]) -> list[Candidate]:
    """The vote accounts as the rank map weighs them (``data`` in ``stakes``' order); an
    account whose data does not decode holds no BLS key. Pure."""
    out = []
    for (vote, stake), raw in zip(stakes.items(), data, strict=True):
        node, key = b"", None
        if raw is not None:
            try:
                node, key = vote_account_keys(raw)
            except CertificateInvalid:
                node, key = b"", None
        out.append(Candidate(vote, node, stake, key))
    return out


def get_epoch_info() -> dict[str, Any]:
    """The ``getEpochInfo`` request (finalized)."""
    return _request("getEpochInfo", [{"commitment": "finalized"}])


def get_accounts(votes: list[str]) -> dict[str, Any]:
    """The ``getMultipleAccounts`` request of ``votes``' first :data:`VOTE_PREFIX` bytes."""
    config = {
        "encoding": "base64",
        "dataSlice": {"offset": 0, "length": VOTE_PREFIX},
        "commitment": "finalized",
    }
    return _request("getMultipleAccounts", [votes, config])


def _request(method: str, params: list[Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


@attrs.frozen
class EpochRanks:
    """One RPC's current epoch: its window, the stake and BLS key (None: none that decodes
    as V4's) of each staked vote account in the epoch's stakes, the rank map they make (its
    total bounds the epoch's from below) and the keys decoded."""

    epoch: int
    first: int
    last: int
    ranks: RankMap
    stakes: dict[str, int] = attrs.field(eq=False, repr=False)
    keys: dict[str, bytes | None] = attrs.field(eq=False, repr=False)
    points: bls.Points = attrs.field(eq=False, repr=False)


async def epoch_ranks(
    read: ReadAnswer,
    url: str,
    stakes_of: Callable[[bytes | bytearray, Callable[[], None]], dict[str, int]],
    max_vote_accounts: int,
    limiter: trio.CapacityLimiter,
) -> EpochRanks:
    """``url``'s current epoch and its rank map (RpcError, one line, when it cannot be
    read or built), each answer asked and parsed by ``read``. The answers' walk and the
    keys' decoding, in worker threads (the decoding: one of ``limiter``'s), stop when the
    caller is cancelled (its deadline): ``stakes_of(body, checkpoint)``, the stakes of the
    vote accounts in the epoch's stakes (``voteanswers.epoch_vote_stakes``: not every one
    getVoteAccounts lists), calls ``checkpoint()`` as it goes."""
    epoch, first, last = await read(url, get_epoch_info(), MAX_EPOCH_INFO, epoch_window)

    def stakes_read(body: bytearray) -> dict[str, int]:
        return stakes_of(body, trio.from_thread.check_cancelled)

    vote_accounts = _request("getVoteAccounts", [{"commitment": "finalized"}])
    stakes = await read(url, vote_accounts, max_vote_accounts, stakes_read)
    staked = {v: s for v, s in stakes.items() if s > 0}
    if len(staked) > MAX_VOTE_ACCOUNTS:
        raise RpcError(f"getVoteAccounts: {len(staked)} staked vote accounts")
    data = await vote_accounts_data(read, url, list(staked))

    def build() -> EpochRanks:
        accounts = candidates(staked, data)
        # up to 20,000 keys of a hostile RPC: seconds of a parse thread every lift shares,
        # stopped at the lift's deadline (docs/http-api.md, "After the migration")
        keyed = (c.bls_key for c in accounts if c.bls_key is not None)
        points = bls.decode_all(keyed, trio.from_thread.check_cancelled)
        try:
            ranks = rank_map(accounts, lambda key: points.get(key) is not None)
        except CertificateInvalid as exc:
            raise RpcError(str(exc)) from exc
        keys = {c.vote: c.bls_key for c in accounts}
        return EpochRanks(epoch, first, last, ranks, staked, keys, points)

    return await trio.to_thread.run_sync(build, limiter=limiter)


async def vote_accounts_data(read: ReadAnswer, url: str, votes: list[str]) -> list[bytes | None]:
    """The first :data:`VOTE_PREFIX` bytes of each vote account of ``votes`` at ``url``
    (None: no such account), :data:`ACCOUNTS_PER_CALL` a call. Raises RpcError."""
    data: list[bytes | None] = []
    for at in range(0, len(votes), ACCOUNTS_PER_CALL):
        part = votes[at : at + ACCOUNTS_PER_CALL]

        parsed = functools.partial(accounts_data, count=len(part))
        data += await read(url, get_accounts(part), MAX_ACCOUNTS, parsed)
    return data


def epoch_rank_map(voters: EpochVoters, rpc: EpochRanks) -> tuple[RankMap, bls.Points]:
    """The rank map of the archive's epoch (agave's, over the manifest's ``epoch_stakes``
    of it) and every key it holds decoded. Raises CertificateInvalid (one line) when the
    manifest held more candidates than were kept, or the map cannot be built. Blocking
    (the keys' decoding): run it in a worker thread."""
    if not voters.complete:
        raise CertificateInvalid(
            f"the manifest's stakes of epoch {voters.epoch} hold {voters.listed} staked vote"
            f" accounts with a BLS key, more than the {MAX_EPOCH_VOTERS} read"
        )
    points = dict(rpc.points)
    new = {c.bls_key for c in voters.candidates if c.bls_key is not None} - points.keys()
    if len(new) > MAX_UNKNOWN_KEYS:  # each costs a decompression; the RPC's are decoded
        raise CertificateInvalid(
            f"the manifest's stakes of epoch {voters.epoch} hold {len(new)} BLS keys no vote"
            f" account the RPC stakes holds, more than {MAX_UNKNOWN_KEYS}"
        )
    points.update(bls.decode_all(new))
    return rank_map(voters.candidates, lambda key: points.get(key) is not None), points


def signers(doc: Document, ranks: RankMap) -> set[int]:
    """The ranks ``doc``'s certificate names in ``ranks`` (CertificateInvalid, one line,
    for one that does not decode or fit)."""
    cert = decode_final_certificate(doc.certificate, len(ranks))
    return {*cert.final.ranks, *(cert.notar.ranks if cert.notar is not None else ())}


def in_epoch(slot: int, epoch: int, rpc: EpochRanks) -> None:
    """Raises CertificateInvalid (one line) unless ``slot``, in ``epoch`` by the manifest's
    schedule, lies in the RPC's current epoch or in the one before it: the stakes the RPC
    answers bound the signers' from above only while they are that epoch's or the next's.
    Pure."""
    length = rpc.last - rpc.first + 1  # the epoch before as long (past the warmup)
    if (epoch == rpc.epoch and rpc.first <= slot <= rpc.last) or (
        epoch + 1 == rpc.epoch and rpc.first - length <= slot < rpc.first
    ):
        return
    raise CertificateInvalid(
        f"slot {slot} (epoch {epoch} by the manifest's schedule) is neither in the RPC's epoch"
        f" {rpc.epoch} (slots {rpc.first} to {rpc.last}) nor in the one before it"
    )


def judge_rpc(
    doc: Document,
    voters: EpochVoters,
    ranks: RankMap,
    points: bls.Points,
    rpc: EpochRanks,
    more_keys: dict[str, bytes | None],
) -> Finality:
    """The finality ``doc``'s certificate shows by one RPC (docs/http-api.md, "After the
    migration: finality certificates"): its bitmaps read in the archive's epoch rank map
    (``ranks``, ``points``: :func:`epoch_rank_map`), each signer's BLS key the one its vote
    account holds at the RPC (``rpc.keys``, ``more_keys`` for those it does not stake), each
    signer weighed at the lesser of its stake in the epoch and at the RPC, against the
    greater of the two totals. Raises CertificateInvalid (one line) for a slot outside the
    epochs the RPC weighs, a bitmap that does not fit, a key the RPC does not confirm or an
    aggregate that does not verify. Blocking (the pairings): run it in a worker thread."""
    in_epoch(doc.slot, voters.epoch, rpc)
    cert = decode_final_certificate(doc.certificate, len(ranks))
    keys = bls.PublicKeys(ranks.keys, points)

    def verify(named: tuple[int, ...], message: bytes, signature: bytes) -> bool:
        for rank in named:
            vote = ranks.votes[rank]
            held = rpc.keys[vote] if vote in rpc.keys else more_keys.get(vote)
            if held != ranks.keys[rank]:
                other = "no BLS key" if held is None else "another BLS key"
                raise CertificateInvalid(
                    f"the signer at rank {rank} (vote account {vote}) holds {other} at the"
                    f" RPC than in the manifest's stakes of epoch {voters.epoch}"
                )
        return bls.verify(keys, named, message, signature)

    # a signer's stake at the RPC is that of its rank map: an account it does not rank (a
    # node or key listed twice there) weighs nothing, as it is not in the RPC's total either
    at_rpc = dict(zip(rpc.ranks.votes, rpc.ranks.stakes, strict=True))
    stakes = [min(s, at_rpc.get(v, 0)) for v, s in zip(ranks.votes, ranks.stakes, strict=True)]
    total = max(ranks.total, rpc.ranks.total)
    return weigh(cert, stakes, total, doc.shred_version, verify)


def _b58(raw: bytes) -> str:
    return base58.b58encode(raw).decode("ascii")
