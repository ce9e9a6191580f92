"""Vote transactions and RPC answers shaped as agave writes them, for the cluster level's tests.

The encoders mirror the formats read in anza-xyz/solana-sdk (``vote-interface/src/
instruction.rs``: the ``VoteInstruction`` variants; ``state/vote_instruction_data.rs``: ``Vote``,
``VoteStateUpdate``, ``TowerSync``; ``state/mod.rs``: the compact lockouts, ``short-vec`` and
``serde-varint``) and anza-xyz/agave (``transaction-status-client-types/src/lib.rs``: a
transaction of a ``getBlock`` answer in the json encoding). :class:`VoteRpc` is a fake JSON-RPC
node serving them (a real quart-trio app, served on 127.0.0.1 by ``serve_app``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Collection
from typing import Any

import attrs
import base58
import quart
import trio
from quart_trio import QuartTrio

VOTE_PROGRAM = "Vote111111111111111111111111111111111111111"


def key(name: str) -> str:
    """A deterministic base58 public key for ``name``."""
    return base58.b58encode(hashlib.sha256(name.encode()).digest()).decode()


def hash_of(name: str) -> bytes:
    """A deterministic 32-byte hash for ``name``."""
    return hashlib.sha256(b"hash:" + name.encode()).digest()


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def option_i64(value: int | None) -> bytes:
    return b"\0" if value is None else b"\1" + struct.pack("<q", value)


def varint(n: int) -> bytes:
    """serde-varint's LEB128 of a u64."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def short_len(n: int) -> bytes:
    """short_vec's length (a u16 in 1 to 3 LEB128 bytes)."""
    return varint(n)


def vote(
    slots: list[int], voted: bytes, *, switch: bytes | None = None, ts: int | None = 1
) -> bytes:
    """``Vote(Vote)`` (2), or ``VoteSwitch(Vote, Hash)`` (6) with ``switch``."""
    body = u64(len(slots)) + b"".join(u64(s) for s in slots) + voted + option_i64(ts)
    return u32(2 if switch is None else 6) + body + (switch or b"")


def update(
    lockouts: list[tuple[int, int]],
    voted: bytes,
    *,
    root: int | None = None,
    switch: bytes | None = None,
) -> bytes:
    """``UpdateVoteState(VoteStateUpdate)`` (8) or its switch (9): plain bincode lockouts."""
    body = u64(len(lockouts)) + b"".join(u64(s) + u32(c) for s, c in lockouts)
    body += (b"\0" if root is None else b"\1" + u64(root)) + voted + option_i64(1)
    return u32(8 if switch is None else 9) + body + (switch or b"")


def compact(
    lockouts: list[tuple[int, int]],
    voted: bytes,
    *,
    root: int | None = None,
    tower: bool = False,
    switch: bytes | None = None,
) -> bytes:
    """``CompactUpdateVoteState`` (12/13) or ``TowerSync`` (14/15): the compact form."""
    previous = 0 if root is None else root
    offsets = b""
    for slot, confirmations in lockouts:
        offsets += varint(slot - previous) + bytes([confirmations])
        previous = slot
    body = u64(2**64 - 1 if root is None else root) + short_len(len(lockouts)) + offsets
    body += voted + option_i64(1700000000)
    if tower:
        body += hash_of("block id")
        tag = 14 if switch is None else 15
    else:
        tag = 12 if switch is None else 13
    return u32(tag) + body + (switch or b"")


def tower(lockouts: list[tuple[int, int]], voted: bytes, **kw: Any) -> bytes:
    """``TowerSync`` (or ``TowerSyncSwitch`` with ``switch``)."""
    return compact(lockouts, voted, tower=True, **kw)


def vote_transaction(
    voter: str, data: bytes, *, err: Any = None, loaded: bool = False
) -> dict[str, Any]:
    """One transaction of a getBlock answer (json encoding), as agave's RPC writes it: the
    authority signs and pays, the vote account is the instruction's first account. With
    ``loaded`` (a v0 transaction) the vote account comes from a lookup table."""
    authority = key("authority of " + voter)
    static = [authority, voter, VOTE_PROGRAM] if not loaded else [authority, VOTE_PROGRAM]
    loaded_writable = [voter] if loaded else []
    voter_index = 1 if not loaded else 2
    program_index = 2 if not loaded else 1
    message: dict[str, Any] = {
        "accountKeys": static,
        "header": {
            "numReadonlySignedAccounts": 0,
            "numReadonlyUnsignedAccounts": 1,
            "numRequiredSignatures": 1,
        },
        "instructions": [
            {
                "accounts": [voter_index, 0],
                "data": base58.b58encode(data).decode(),
                "programIdIndex": program_index,
                "stackHeight": None,
            }
        ],
        "recentBlockhash": key("blockhash"),
    }
    if loaded:
        message["addressTableLookups"] = [
            {"accountKey": key("table"), "writableIndexes": [0], "readonlyIndexes": []}
        ]
    meta = {
        "computeUnitsConsumed": 2100,
        "err": err,
        "fee": 5000,
        "innerInstructions": [],
        "loadedAddresses": {"readonly": [], "writable": loaded_writable},
        "logMessages": [
            f"Program {VOTE_PROGRAM} invoke [1]",
            f"Program {VOTE_PROGRAM} success",
        ],
        "postBalances": [999995000, 27074400, 1],
        "postTokenBalances": [],
        "preBalances": [1000000000, 27074400, 1],
        "preTokenBalances": [],
        "rewards": None,
        "status": {"Ok": None} if err is None else {"Err": err},
    }
    signature = base58.b58encode(hashlib.sha512(data + voter.encode()).digest()).decode()
    return {
        "meta": meta,
        "transaction": {"message": message, "signatures": [signature]},
        "version": 0 if loaded else "legacy",
    }


def block_answer(slot: int, transactions: list[dict[str, Any]]) -> dict[str, Any]:
    """A getBlock answer (json encoding, ``rewards: false``)."""
    return {
        "jsonrpc": "2.0",
        "result": {
            "blockHeight": slot - 100,
            "blockTime": 1700000000 + slot,
            "blockhash": key(f"block {slot}"),
            "parentSlot": slot - 1,
            "previousBlockhash": key(f"block {slot - 1}"),
            "transactions": transactions,
        },
        "id": 1,
    }


def skipped_answer(slot: int) -> dict[str, Any]:
    """agave's answer to getBlock of a skipped slot (SLOT_SKIPPED, -32007)."""
    message = f"Slot {slot} was skipped, or missing due to ledger jump to recent snapshot"
    return {"jsonrpc": "2.0", "error": {"code": -32007, "message": message}, "id": 1}


def vote_account(voter: str, stake: int) -> dict[str, Any]:
    """One entry of getVoteAccounts."""
    return {
        "activatedStake": stake,
        "commission": 5,
        "epochCredits": [[700, 1000, 500], [701, 1500, 1000]],
        "epochVoteAccount": True,
        "lastVote": 5000,
        "nodePubkey": key("node of " + voter),
        "rootSlot": 4968,
        "votePubkey": voter,
    }


def vote_accounts_answer(
    current: dict[str, int],
    delinquent: dict[str, int] | None = None,
    outside: Collection[str] = (),
) -> dict[str, Any]:
    """A getVoteAccounts answer; the accounts in ``outside`` are staked but not in the current
    epoch's stakes (``epochVoteAccount`` false: not admitted to it)."""

    def entry(voter: str, stake: int) -> dict[str, Any]:
        return vote_account(voter, stake) | {"epochVoteAccount": voter not in outside}

    return {
        "jsonrpc": "2.0",
        "result": {
            "current": [entry(v, s) for v, s in current.items()],
            "delinquent": [entry(v, s) for v, s in (delinquent or {}).items()],
        },
        "id": 1,
    }


def epoch_info(epoch: int, first: int, slots: int) -> dict[str, Any]:
    """getEpochInfo's result, the current slot 100 into the epoch."""
    return {
        "absoluteSlot": first + 100,
        "blockHeight": first,
        "epoch": epoch,
        "slotIndex": 100,
        "slotsInEpoch": slots,
        "transactionCount": 1,
    }


def accounts_answer(
    accounts: dict[str, bytes],
    keys: list[str],
    data_slice: dict[str, int],
    owners: dict[str, str] | None = None,
) -> dict[str, Any]:
    """getMultipleAccounts' answer (base64, the slice asked), as agave writes it; each
    account owned by the vote program unless ``owners`` names another."""
    at, length = data_slice["offset"], data_slice["length"]
    value = [
        None
        if k not in accounts
        else {
            "data": [base64.b64encode(accounts[k][at : at + length]).decode(), "base64"],
            "executable": False,
            "lamports": 27074400,
            "owner": (owners or {}).get(k, VOTE_PROGRAM),
            "rentEpoch": 2**64 - 1,
            "space": len(accounts[k]),
        }
        for k in keys
    ]
    return {"jsonrpc": "2.0", "result": {"context": {"slot": 1}, "value": value}, "id": 1}


@attrs.define
class VoteRpc:
    """A fake JSON-RPC node: ``blocks[slot]`` is the block's transactions (a slot not in it
    is skipped), ``stakes`` the current vote accounts, ``slot`` what ``getSlot`` answers
    (the health check and the snapshots' age ask it); ``raw`` answers a method with fixed
    bytes instead (an answer too large, malformed), ``stall`` methods never answer, ``hold``
    methods only once their event is set."""

    blocks: dict[int, list[dict[str, Any]]] = attrs.Factory(dict)
    stakes: dict[str, int] = attrs.Factory(dict)
    #: getAgGenesisCert's answer: "unsupported" (-32601, agave before 4.3), None (not
    #: migrated) or the certificate object (migrated).
    genesis: Any = "unsupported"
    #: getEpochInfo's current epoch: (epoch, first slot, slots in it).
    epoch: tuple[int, int, int] = (11, 4752000, 432000)
    #: The vote accounts' data getMultipleAccounts gives (an account not in it: null).
    accounts: dict[str, bytes] = attrs.Factory(dict)
    #: The program owning an account of ``accounts`` other than the vote program.
    owners: dict[str, str] = attrs.Factory(dict)
    #: The certificate documents served at GET /certificates/{slot}.json.
    documents: dict[int, bytes] = attrs.Factory(dict)
    delinquent: dict[str, int] = attrs.Factory(dict)
    #: Staked vote accounts outside the current epoch's stakes (``epochVoteAccount`` false).
    outside: set[str] = attrs.Factory(set)
    raw: dict[str, bytes] = attrs.Factory(dict)
    stall: set[str] = attrs.Factory(set)
    slot: int = 1_000_000
    calls: list[tuple[str, Any]] = attrs.Factory(list)
    stalled: trio.Event = attrs.Factory(trio.Event)
    #: Methods answered only once their event is set (the answer held back meanwhile).
    hold: dict[str, trio.Event] = attrs.Factory(dict)

    def app(self) -> QuartTrio:
        """The quart-trio app of this RPC node."""
        app = QuartTrio(__name__)

        @app.post("/")
        async def rpc() -> quart.Response:
            body = await quart.request.get_json()
            method, params = body["method"], body.get("params")
            self.calls.append((method, params))
            if method in self.stall:
                self.stalled.set()
                await trio.sleep_forever()
            if method in self.hold:
                await self.hold[method].wait()
            if method in self.raw:
                return quart.Response(self.raw[method], content_type="application/json")
            if method == "getBlock":
                slot = params[0]
                answer = (
                    block_answer(slot, self.blocks[slot])
                    if slot in self.blocks
                    else skipped_answer(slot)
                )
            elif method == "getVoteAccounts":
                answer = vote_accounts_answer(self.stakes, self.delinquent, self.outside)
            elif method == "getSlot":
                answer = {"jsonrpc": "2.0", "result": self.slot, "id": 1}
            elif method == "getAgGenesisCert" and self.genesis != "unsupported":
                answer = {"jsonrpc": "2.0", "result": self.genesis, "id": 1}
            elif method == "getEpochInfo":
                answer = {"jsonrpc": "2.0", "result": epoch_info(*self.epoch), "id": 1}
            elif method == "getMultipleAccounts":
                answer = accounts_answer(
                    self.accounts, params[0], params[1]["dataSlice"], self.owners
                )
            else:
                answer = {"jsonrpc": "2.0", "error": {"code": -32601}, "id": 1}
            return quart.Response(json.dumps(answer), content_type="application/json")

        @app.get("/certificates/<int:slot>.json")
        async def certificate(slot: int) -> quart.Response:
            self.calls.append(("certificate", slot))
            if slot not in self.documents:
                return quart.Response("no such certificate", status=404)
            return quart.Response(self.documents[slot], content_type="application/json")

        return app

    def block_calls(self) -> list[int]:
        """The slots asked with getBlock, in order."""
        return [p[0] for m, p in self.calls if m == "getBlock"]
