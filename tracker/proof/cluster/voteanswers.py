"""What the RPC's answers to the cluster level say, read as pure blocking functions run in a
worker thread (docs/architecture.md, "The cluster level"): the votes of one ``getBlock``
answer folded for a slot (:func:`block_votes`), each vote account's stake in a
``getVoteAccounts`` answer (:func:`vote_stakes`). Each walks its answer one element at a
time (:func:`~tracker.net.limits.iter_json_members`), as text of a byte a character
(:func:`~tracker.net.limits.narrow_text`), within :data:`MAX_ITEMS` elements; asking the
RPC, the byte budget and the judging are :mod:`tracker.proof.cluster.clustervotes`'s.
"""

from __future__ import annotations

from collections.abc import Callable

from tracker.core.text import one_line
from tracker.errors import ProbeError, RpcError, VoteInvalid
from tracker.net.limits import iter_json_members, narrow_text
from tracker.proof.formats.tally import SlotVotes, stake_entry, transaction_votes

#: The largest transaction (with its status) decoded: logs and inner instructions included.
MAX_TRANSACTION_CHARS = 1024**2
#: Transactions (or vote accounts) of one answer decoded at most.
MAX_ITEMS = 200_000
#: Vote accounts one getVoteAccounts answer may list (mainnet lists ~1,500; Firedancer sizes
#: its runtime for 40,200, ``FD_RUNTIME_MAX_VOTE_ACCOUNTS``): each is kept with its stake for
#: the lift, and a block's fold holds up to as many voters a side.
MAX_VOTE_ACCOUNTS = 20_000
#: getBlock's error codes for a slot that has no block (agave ``rpc-client-api``,
#: ``custom_error.rs``: SLOT_SKIPPED, LONG_TERM_STORAGE_SLOT_SKIPPED).
SKIPPED_CODES = frozenset({-32007, -32009})


def _go_on() -> None:
    return None


def block_votes(
    body: bytes | bytearray, votes: SlotVotes, checkpoint: Callable[[], None] = _go_on
) -> SlotVotes:
    """The votes for ``votes``' slot in one ``getBlock`` answer, folded one transaction at a
    time into a fold of their own (:meth:`SlotVotes.for_block`: each voter once per side,
    whatever the block repeats; ``votes`` is left as it is, the caller merges the block
    once it is read whole); empty for a skipped slot. Raises RpcError (one line) for an
    error answer or a malformed one. Blocking: run it in a worker thread; ``checkpoint()``
    is called before each transaction and may raise to stop the decode
    (``trio.from_thread.check_cancelled``). Walked as
    :func:`~tracker.net.limits.narrow_text` (a ``bytearray`` narrowed in place): no string
    past ASCII counts for a vote."""
    found = votes.for_block()
    block = False
    try:
        members = iter_json_members(
            narrow_text(body),
            {"transactions"},
            within=("result",),
            max_items=MAX_ITEMS,
            max_item_chars=MAX_TRANSACTION_CHARS,
        )
        for name, value in members:
            checkpoint()
            if name == "transactions[]":
                found.add(transaction_votes(value))  # at most 256 votes held at once
            elif name == "transactions":
                block = True
            elif name == "error":
                if _error_code(value) in SKIPPED_CODES:
                    return votes.for_block()
                raise RpcError(one_line(f"getBlock: error {str(value)[:200]}"))
    except (ProbeError, VoteInvalid) as exc:
        raise RpcError(one_line(f"getBlock: {exc}")) from exc
    if not block:
        raise RpcError("getBlock: an answer without a block's transactions")
    return found


def epoch_vote_stakes(
    body: bytes | bytearray, checkpoint: Callable[[], None] = _go_on
) -> dict[str, int]:
    """:func:`vote_stakes` of the vote accounts in the current epoch's stakes only: the rank
    map's candidates at the RPC (docs/http-api.md, "After the migration: finality
    certificates"). getVoteAccounts lists every staked vote account, but an epoch's stakes
    hold only the validators admitted to it (at most 2,000, SIMD-0357): a vote account with
    a BLS key and the least delegation, never admitted, pays no ticket, and 2,000 of them
    (or the cluster's own growth past 2,000) made every RPC's rank map too long to be one."""
    return vote_stakes(body, checkpoint, epoch_only=True)


def _outside_epoch(entry: object) -> bool:
    """True for a getVoteAccounts entry that says it is not in the current epoch's stakes
    (agave's ``epochVoteAccount``; one that does not say is taken to be)."""
    return isinstance(entry, dict) and entry.get("epochVoteAccount") is False


def _error_code(error: object) -> int | None:
    """The ``code`` of a JSON-RPC error when it is a whole number (a hostile one may be a
    list or an object: no code, the answer an error like any other)."""
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def vote_stakes(
    body: bytes | bytearray,
    checkpoint: Callable[[], None] = _go_on,
    *,
    epoch_only: bool = False,
) -> dict[str, int]:
    """Each vote account's activated stake from a ``getVoteAccounts`` answer (``current``
    and ``delinquent``; an account listed twice counts once; at most
    :data:`MAX_VOTE_ACCOUNTS` accounts kept). ``epoch_only``: only those in the current
    epoch's stakes (an entry whose ``epochVoteAccount`` is false is passed over, an entry
    without it kept). Raises RpcError (one line).
    Blocking: run it in a worker thread; ``checkpoint()`` is called before each entry and
    may raise to stop the walk (``trio.from_thread.check_cancelled``: 32 MiB take seconds).
    Walked as :func:`~tracker.net.limits.narrow_text` (a ``bytearray`` narrowed in place)."""
    stakes: dict[str, int] = {}
    lists = 0
    try:
        members = iter_json_members(
            narrow_text(body), {"current", "delinquent"}, within=("result",), max_items=MAX_ITEMS
        )
        for name, value in members:
            checkpoint()
            if name in ("current[]", "delinquent[]"):
                if epoch_only and _outside_epoch(value):
                    continue
                entry = stake_entry(value)
                if entry is not None:
                    stakes[entry[0]] = max(entry[1], stakes.get(entry[0], 0))
                if len(stakes) > MAX_VOTE_ACCOUNTS:
                    # a liar's 200,000 were ~14 MiB of stakes and ~26 MiB of each side of a
                    # fold, per RPC and lift (docs/http-api.md, "Limits")
                    raise RpcError(
                        f"getVoteAccounts: more than {MAX_VOTE_ACCOUNTS} vote accounts listed"
                    )
            elif name in ("current", "delinquent"):
                lists += 1
            elif name == "error":
                raise RpcError(one_line(f"getVoteAccounts: error {str(value)[:200]}"))
    except ProbeError as exc:
        raise RpcError(one_line(f"getVoteAccounts: {exc}")) from exc
    if lists != 2 or not sum(stakes.values()):
        raise RpcError("getVoteAccounts: an answer without current and delinquent stakes")
    return stakes
