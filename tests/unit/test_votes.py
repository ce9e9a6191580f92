"""The cluster level's pure parts (docs/architecture.md, "The cluster level"): vote
instructions of every kind decoded to (slot, hash), hostile data refused, the tally by
stake, RPC answers read, and the verdict over several RPCs, as tables."""

from __future__ import annotations

import json

import base58
import pytest
from helpers_votes import (
    block_answer,
    compact,
    hash_of,
    key,
    skipped_answer,
    tower,
    u32,
    u64,
    update,
    vote,
    vote_accounts_answer,
    vote_transaction,
)

from tracker.errors import RpcError, VoteInvalid
from tracker.proof.cluster import voteanswers
from tracker.proof.cluster.clustervotes import MAX_BACKOFF, backoff_wait, judged
from tracker.proof.cluster.voteanswers import block_votes, epoch_vote_stakes, vote_stakes
from tracker.proof.formats import tally as tally_module
from tracker.proof.formats.tally import (
    MAX_UNKNOWN_VOTERS,
    SlotVotes,
    Tally,
    VoteSeen,
    tally,
    transaction_votes,
)
from tracker.proof.formats.votes import decode_vote
from tracker.proof.levels import Level, Proof

H = hash_of("H")
OTHER = hash_of("other")
SWITCH = hash_of("switch")


@pytest.mark.parametrize(
    ("data", "kind", "slot"),
    [
        (vote([98, 99, 100], H), "Vote", 100),
        (vote([100], H, ts=None), "Vote", 100),
        (vote([99, 100], H, switch=SWITCH), "VoteSwitch", 100),
        (update([(97, 3), (99, 2), (100, 1)], H, root=90), "UpdateVoteState", 100),
        (update([(100, 1)], H), "UpdateVoteState", 100),
        (update([(99, 2), (100, 1)], H, switch=SWITCH), "UpdateVoteStateSwitch", 100),
        (compact([(97, 3), (99, 2), (100, 1)], H, root=90), "CompactUpdateVoteState", 100),
        (compact([(100, 1)], H), "CompactUpdateVoteState", 100),
        (compact([(100, 1)], H, switch=SWITCH), "CompactUpdateVoteStateSwitch", 100),
        (tower([(99, 2), (100, 1)], H, root=68), "TowerSync", 100),
        (tower([(2**40, 1)], H), "TowerSync", 2**40),  # a varint of six bytes
        (tower([(99, 2), (100, 1)], H, switch=SWITCH), "TowerSyncSwitch", 100),
    ],
)
def test_every_vote_kind_gives_its_last_slot_and_hash(data: bytes, kind: str, slot: int) -> None:
    voted = decode_vote(data)
    assert voted is not None
    assert (voted.kind, voted.slot, voted.hash) == (kind, slot, H)


@pytest.mark.parametrize(
    "data",
    [
        u32(3) + u64(1000),  # Withdraw
        u32(5) + b"\x05",  # UpdateCommission
        u32(4),  # UpdateValidatorIdentity
        u32(99),  # a variant from the future
    ],
)
def test_kinds_without_a_vote_give_none(data: bytes) -> None:
    assert decode_vote(data) is None


GOOD = tower([(99, 2), (100, 1)], H)


@pytest.mark.parametrize(
    "data",
    [
        tower([(99, 2), (100, 1)], H),
        vote([100], H),
        vote([100], H, ts=None),
        u32(8) + u64(1) + u64(100) + u32(1) + b"\0" + H + b"\0",  # UpdateVoteState
    ],
)
@pytest.mark.parametrize("after", [b"\0", b"\xff" * 7, b"\1" * 500])
def test_bytes_after_a_vote_are_not_read_as_the_vote_program_reads_none(
    data: bytes, after: bytes
) -> None:
    """The vote program decodes its instruction allowing trailing bytes (agave's
    ``limited_deserialize``): such a vote lands on chain and counts. Refused here, one
    transaction of a vote account with them in each block after a slot (a few thousand
    lamports) made the slot unprovable by votes."""
    assert decode_vote(data + after) == decode_vote(data) is not None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (GOOD[:-1], "ends at byte"),
        (u32(2) + u64(2**40) + H, "longer than the data"),  # slots past the data
        (u32(8) + u64(10**6) + u64(1), "longer than the data"),
        (u32(2) + u64(0) + H + b"\0", "votes for no slot"),
        (vote([100], H, ts=None)[:-1] + b"\2", "option tag 2"),
        (u32(14) + u64(5) + b"\x01" + b"\x80\x00" + b"\1", "trailing zero"),  # varint alias
        (u32(14) + u64(5) + b"\x01" + b"\xff" * 10 + b"\1", "varint"),  # past 10 bytes
        (u32(14) + u64(5) + b"\x80\x00", "short_vec length with a trailing zero"),
        (u32(14) + u64(5) + b"\xff\xff\x7f", "past u16"),
        (u32(14) + u64(2**64 - 2) + b"\x01\x05\x01", "past u64"),  # root + offset overflow
        (GOOD + b"\0" * 2000, "bytes of instruction data"),
        (b"\x02\x00", "ends at byte"),
    ],
)
def test_hostile_vote_data_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(VoteInvalid, match=reason):
        decode_vote(data)


A, B, C, D, E = (key(n) for n in "abcde")


def seen(voter: str, slot: int, voted: bytes) -> VoteSeen:
    return VoteSeen(voter, slot, voted)


STAKES = {A: 40, B: 30, C: 20, D: 10}


@pytest.mark.parametrize(
    ("votes", "expected"),
    [
        ([seen(A, 100, H), seen(B, 100, H)], Tally(70, 0, 100)),
        ([seen(A, 100, H), seen(B, 100, H), seen(A, 100, H)], Tally(70, 0, 100)),  # once
        ([seen(A, 100, H), seen(B, 100, OTHER)], Tally(40, 30, 100)),
        ([seen(A, 100, H), seen(A, 100, OTHER)], Tally(0, 0, 100)),  # both: no evidence
        ([seen(A, 101, H), seen(B, 99, H)], Tally(0, 0, 100)),  # another slot
        ([seen(E, 100, H), seen(A, 100, H)], Tally(40, 0, 100, unknown=1)),
        ([], Tally(0, 0, 100)),
    ],
)
def test_tally_weighs_each_voter_once_by_stake(votes: list[VoteSeen], expected: Tally) -> None:
    assert tally(votes, 100, H, STAKES) == expected
    # read one block at a time, the votes weigh the same
    read = SlotVotes(100, H, STAKES)
    for one in votes:
        read.add([one])
    assert read.tally() == expected


def test_the_votes_read_are_kept_per_voter_not_per_vote() -> None:
    """A liar's blocks repeat votes, vary the hash and invent voters: what is kept is each
    staked voter once per side and at most MAX_UNKNOWN_VOTERS others (counted up to there)."""
    read = SlotVotes(100, H, STAKES)
    for n in range(50):  # 50 blocks
        read.add([seen(A, 100, H)] * 1000 + [seen(B, 100, bytes([n]) * 32)] * 1000)
        read.add(seen(f"invented {n} {i}", 100, H) for i in range(1000))
    assert read.voters == 2 + MAX_UNKNOWN_VOTERS
    assert read.tally() == Tally(40, 30, 100, unknown=MAX_UNKNOWN_VOTERS)


@pytest.mark.parametrize(
    ("result", "supermajority", "described"),
    [
        (Tally(67, 0, 100), True, "67.0% of the stake voted the bank hash"),
        (Tally(2, 0, 3), True, "66.7%"),  # exactly 2/3, in integers
        (Tally(66, 30, 100), False, "66.0% of the stake voted the bank hash, 30.0% voted another"),
        (Tally(0, 0, 0), False, "0.0%"),
        (Tally(10, 0, 100, unknown=3), False, "3 voters hold no stake"),
    ],
)
def test_two_thirds_and_the_words(result: Tally, supermajority: bool, described: str) -> None:
    assert result.supermajority is supermajority
    assert described in result.describe()


def test_a_transaction_gives_its_votes_and_a_failed_one_none() -> None:
    assert transaction_votes(vote_transaction(A, tower([(100, 1)], H))) == [seen(A, 100, H)]
    loaded = vote_transaction(A, tower([(100, 1)], H), loaded=True)
    assert transaction_votes(loaded) == [seen(A, 100, H)]  # v0: the key from a lookup table
    failed = vote_transaction(A, tower([(100, 1)], H), err={"InstructionError": [0, "X"]})
    assert transaction_votes(failed) == []
    withdraw = vote_transaction(A, u32(3) + u64(5))
    assert transaction_votes(withdraw) == []


def mangled(change: str) -> object:
    entry = vote_transaction(A, tower([(100, 1)], H))
    instruction = entry["transaction"]["message"]["instructions"][0]
    if change == "program index":
        instruction["programIdIndex"] = 7
    elif change == "no accounts":
        instruction["accounts"] = []
    elif change == "data":
        instruction["data"] = "0OIl"
    elif change == "bad vote":
        instruction["data"] = base58.b58encode(u32(14) + b"\1").decode()
    elif change == "keys":
        entry["transaction"]["message"]["accountKeys"] = [7]
    elif change == "message":
        entry["transaction"] = ["AAAA", "base64"]
    elif change == "not an object":
        return [entry]
    return entry


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("program index", "account index 7 out of the account keys"),
        ("no accounts", "without accounts"),
        ("data", "not base58"),
        ("bad vote", "ends at byte"),
        ("keys", "not a public key"),
        ("message", "not the json encoding"),
        ("not an object", "not an object"),
    ],
)
def test_a_malformed_transaction_is_refused(change: str, reason: str) -> None:
    with pytest.raises(VoteInvalid, match=reason):
        transaction_votes(mangled(change))


def body(answer: object) -> bytes:
    return json.dumps(answer).encode()


def test_a_block_answer_gives_the_votes_for_the_slot() -> None:
    transactions = [
        vote_transaction(A, tower([(100, 1)], H)),
        vote_transaction(B, vote([99], OTHER)),  # another slot: dropped here
        vote_transaction(C, update([(100, 1)], OTHER)),
    ]
    read = SlotVotes(100, H, STAKES)
    found = block_votes(body(block_answer(101, transactions)), read)
    assert (found.tally(), found.voters) == (Tally(40, 20, 100), 2)  # A for H, C another
    assert read.voters == 0  # the block is the caller's to merge
    skipped = block_votes(body(skipped_answer(102)), read)
    assert (skipped.tally(), skipped.voters) == (Tally(0, 0, 100), 0)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            b'{"jsonrpc":"2.0","error":{"code":-32004,"message":"Block not available"},"id":1}',
            "-32004",
        ),
        (b'{"jsonrpc":"2.0","result":null,"id":1}', "without a block"),
        (b'{"jsonrpc":"2.0","error":{"code":[1]},"id":1}', "getBlock: error"),  # no code
        (b'{"jsonrpc":"2.0","error":{"code":{"a":1}},"id":1}', "getBlock: error"),
        (b'{"jsonrpc":"2.0","error":{"code":true},"id":1}', "getBlock: error"),
        (
            b'{"jsonrpc":"2.0","result":{"transactions":[{"meta":{"err":1}}',
            "getBlock: invalid JSON",
        ),
        (b"[1]", "not a JSON object"),
        (b'{"result":{"transactions":[' + b"[" * 100_000 + b"]}}", "getBlock"),
        (
            body(block_answer(101, [{"meta": {"err": None}, "transaction": {}}])),
            "without a message",
        ),
    ],
)
def test_a_bad_block_answer_fails_with_a_reason(answer: bytes, reason: str) -> None:
    with pytest.raises(RpcError, match=reason):
        block_votes(answer, SlotVotes(100, H, STAKES))


F, G = key("f"), key("g")


@pytest.mark.parametrize(
    ("blocks", "voters", "expected"),
    [
        ([[seen(A, 100, H)], [seen(A, 100, H), seen(B, 100, H)]], 2, Tally(70, 0, 100)),
        ([[seen(A, 100, H)], [seen(A, 100, OTHER)]], 1, Tally(0, 0, 100)),  # both sides
        ([[seen(A, 100, OTHER), seen(B, 101, H)], []], 1, Tally(0, 40, 100)),
        # the voters without stake: at most 2 here, whichever block brought them
        ([[seen(E, 100, H), seen(F, 100, H)], [seen(G, 100, H)]], 2, Tally(0, 0, 100, 2)),
        ([[seen(E, 100, H)], [seen(F, 100, H), seen(G, 100, H)]], 2, Tally(0, 0, 100, 2)),
        # E voted both sides: kept, counted nowhere
        ([[seen(E, 100, H)], [seen(F, 100, H), seen(E, 100, OTHER)]], 2, Tally(0, 0, 100, 1)),
        ([[seen(E, 100, H), seen(F, 100, H)], [seen(E, 100, OTHER)]], 2, Tally(0, 0, 100, 1)),
        ([[seen(E, 100, H), seen(A, 100, H)], [seen(F, 100, H)]], 3, Tally(40, 0, 100, 2)),
        # past the cap in one block, and a voter kept before past it in a later block
        ([[seen(E, 100, H), seen(F, 100, H), seen(G, 100, H)]], 2, Tally(0, 0, 100, 2)),
        (
            [[seen(E, 100, H)], [seen(F, 100, H), seen(G, 100, H), seen(E, 100, H)]],
            2,
            Tally(0, 0, 100, 2),
        ),
    ],
)
def test_blocks_folded_apart_then_merged_weigh_as_their_votes_read_in_one(
    blocks: list[list[VoteSeen]],
    voters: int,
    expected: Tally,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tally_module, "MAX_UNKNOWN_VOTERS", 2)
    merged = SlotVotes(100, H, STAKES)
    for votes in blocks:
        block = merged.for_block()
        block.add(votes)
        merged.merge(block)
    assert (merged.tally(), merged.voters) == (expected, voters)
    assert merged.tally() == tally([v for votes in blocks for v in votes], 100, H, STAKES)


def test_a_block_is_folded_as_it_is_decoded_and_counts_only_read_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A block's votes were all held as a list while it was decoded: a liar's 64 MiB block
    repeating one vote, or inventing ~500,000 voters with no stake, held ~100 MiB of them.
    The block is folded one transaction at a time (each voter once per side, at most
    MAX_UNKNOWN_VOTERS without stake), and a block that fails to parse counts nothing of
    what was read before the failure."""
    monkeypatch.setattr(tally_module, "MAX_UNKNOWN_VOTERS", 100)
    repeated = vote_transaction(A, tower([(100, 1)], H))
    repeated["transaction"]["message"]["instructions"] *= 200
    invented = [vote_transaction(f"invented {n}", tower([(100, 1)], H)) for n in range(500)]
    answer = body(block_answer(101, [repeated] * 5 + invented))
    seen_alive: list[int] = []
    decode = voteanswers.transaction_votes

    def counted(entry: object) -> list[VoteSeen]:
        found = decode(entry)
        seen_alive.append(len(found))
        return found

    monkeypatch.setattr(voteanswers, "transaction_votes", counted)
    read = SlotVotes(100, H, STAKES)
    block = block_votes(answer, read)
    assert sum(seen_alive) == 1500  # every vote decoded ...
    assert block.voters == 1 + 100  # ... A once, and the first 100 voters without stake
    assert block.tally() == Tally(40, 0, 100, unknown=100)
    read.merge(block)
    assert read.tally() == Tally(40, 0, 100, unknown=100)
    mangled_last = body(block_answer(101, [vote_transaction(B, tower([(100, 1)], H)), []]))
    with pytest.raises(RpcError, match="not an object"):
        block_votes(mangled_last, read)
    assert read.tally() == Tally(40, 0, 100, unknown=100)  # B's vote counts nothing


def test_stakes_come_from_current_and_delinquent() -> None:
    answer = vote_accounts_answer({A: 40, B: 30}, {C: 20})
    answer["result"]["current"].append({"votePubkey": D, "activatedStake": -5})  # ignored
    answer["result"]["current"].append({"votePubkey": A, "activatedStake": 10})  # twice: max
    assert vote_stakes(body(answer)) == {A: 40, B: 30, C: 20}
    with pytest.raises(RpcError, match="without current and delinquent"):
        vote_stakes(b'{"jsonrpc":"2.0","result":{"current":[]},"id":1}')
    with pytest.raises(RpcError, match="error"):
        vote_stakes(b'{"jsonrpc":"2.0","error":{"code":-32005},"id":1}')


@pytest.mark.parametrize(
    ("epoch_vote_account", "kept_by_epoch"),
    [
        (True, True),
        (False, False),  # staked, not admitted to the epoch's stakes (SIMD-0357)
        (None, True),  # an RPC that does not say
        ("false", True),  # nor one that says it as no boolean
    ],
)
def test_the_epochs_stakes_are_those_the_rpc_says_are_its(
    epoch_vote_account: object, kept_by_epoch: bool
) -> None:
    """The rank map's candidates at an RPC are the accounts of the current epoch's stakes
    (``epoch_vote_stakes``); the votes are weighed by every staked account (``vote_stakes``)."""
    answer = vote_accounts_answer({A: 40}, {C: 20})
    entry = answer["result"]["delinquent"][0]
    if epoch_vote_account is None:
        del entry["epochVoteAccount"]
    else:
        entry["epochVoteAccount"] = epoch_vote_account
    assert vote_stakes(body(answer)) == {A: 40, C: 20}
    assert epoch_vote_stakes(body(answer)) == ({A: 40, C: 20} if kept_by_epoch else {A: 40})


def test_accounts_outside_the_epochs_stakes_are_not_kept_nor_counted() -> None:
    """Listed past the bound, they are passed over: only the epoch's are kept."""
    outside = ",".join(
        f'{{"votePubkey":"{key(f"o{n}")}","activatedStake":1,"epochVoteAccount":false}}'
        for n in range(voteanswers.MAX_VOTE_ACCOUNTS + 1)
    )
    listed = f'{{"votePubkey":"{A}","activatedStake":40}},{outside}'
    answer = f'{{"result":{{"current":[{listed}],"delinquent":[]}},"id":1}}'.encode()
    assert epoch_vote_stakes(answer) == {A: 40}
    with pytest.raises(RpcError, match="more than 20000 vote accounts"):
        vote_stakes(answer)


def stakes_answer(voters: list[str]) -> bytes:
    """A getVoteAccounts answer listing ``voters`` (1 lamport each), entries cut to the two
    fields read."""
    entries = ",".join(f'{{"votePubkey":"{v}","activatedStake":1}}' for v in voters)
    return f'{{"jsonrpc":"2.0","result":{{"current":[{entries}],"delinquent":[]}},"id":1}}'.encode()


@pytest.mark.parametrize(
    ("listed", "kept"),
    [
        (voteanswers.MAX_VOTE_ACCOUNTS, voteanswers.MAX_VOTE_ACCOUNTS),
        (voteanswers.MAX_VOTE_ACCOUNTS + 1, None),  # refused
        (-(voteanswers.MAX_VOTE_ACCOUNTS + 1), 1),  # one account listed that often: once
    ],
)
def test_an_answer_of_more_vote_accounts_than_a_cluster_holds_is_refused(
    listed: int, kept: int | None
) -> None:
    """A lying getVoteAccounts listed up to 200,000 accounts (its item cap), each kept with
    its stake for the lift, and a block's fold held as many voters: measured 14 MiB of
    stakes and 26 MiB a side of the fold at that bound (one RPC, one lift; two parse
    threads fold two blocks at once). Mainnet lists ~1,500; at most 20,000 are read."""
    voters = [key(f"v{n}") for n in range(abs(listed))] if listed > 0 else [A] * -listed
    if kept is None:
        with pytest.raises(RpcError, match="more than 20000 vote accounts"):
            vote_stakes(stakes_answer(voters))
    else:
        assert len(vote_stakes(stakes_answer(voters))) == kept


def test_a_wide_character_leaves_the_text_of_an_answer_its_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One character past U+FFFF in a getBlock answer (an emoji in a memo's log) made the
    text the answer is walked in 4 bytes a character: a 64 MiB answer 256 MiB, in each parse
    thread. The text is one byte a character (a character past ASCII, in a string no vote
    reads, read as ``?``); the votes are read as before, and so are the stakes."""
    texts: list[str] = []
    walk = voteanswers.iter_json_members

    def walked(text: str, *args: object, **kwargs: object) -> object:
        texts.append(text)
        return walk(text, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(voteanswers, "iter_json_members", walked)
    memo = vote_transaction(B, tower([(99, 1)], H))
    memo["meta"]["logMessages"].append('Program log: Memo (len 4): "\U0001f600 gm"')
    answer = block_answer(101, [vote_transaction(A, tower([(100, 1)], H)), memo])
    wide = json.dumps(answer, ensure_ascii=False).encode()
    found = block_votes(bytearray(wide), SlotVotes(100, H, STAKES))
    assert (found.tally(), found.voters) == (Tally(40, 0, 100), 1)  # A's vote, B's for 99
    stakes = vote_accounts_answer({A: 40})
    stakes["result"]["current"][0]["nodePubkey"] = "\u00e9\U0001f600"
    assert vote_stakes(json.dumps(stakes, ensure_ascii=False).encode()) == {A: 40}
    assert len(texts) == 2 and all(text.isascii() for text in texts)
    assert len(texts[0]) == len(wide)


@pytest.mark.parametrize(
    ("previous", "wait"),
    [
        (None, 60.0),  # the first failure: the first wait
        (60.0, 120.0),
        (120.0, 240.0),
        (2400.0, MAX_BACKOFF),  # doubled past the most: the most
        (MAX_BACKOFF, MAX_BACKOFF),
    ],
)
def test_a_failure_asked_again_waits_twice_as_long_up_to_the_most(
    previous: float | None, wait: float
) -> None:
    """The waits after failures in a row (a question's, an RPC's rank map's)."""
    assert backoff_wait(previous, 60.0) == wait


MANIFEST = Proof(Level.MANIFEST, snapshot_hash="s", bank_hash="b")
URLS = ("http://one/", "http://two/")


@pytest.mark.parametrize(
    ("tallies", "level", "voted", "note"),
    [
        ((Tally(80, 0, 100), Tally(70, 0, 100)), Level.CLUSTER, 0.7, None),
        ((Tally(80, 0, 100), Tally(10, 60, 100)), Level.MANIFEST, 0.1, "the RPCs disagree"),
        ((Tally(30, 60, 100), Tally(20, 60, 100)), Level.MANIFEST, 0.2, "60.0% voted another"),
    ],
)
def test_the_verdict_needs_every_rpc(
    tallies: tuple[Tally, ...], level: Level, voted: float, note: str | None
) -> None:
    proof = judged(MANIFEST, tallies, URLS)
    assert (proof.level, proof.voted_stake) == (level, voted)
    assert (proof.note is None) if note is None else (note in (proof.note or ""))
