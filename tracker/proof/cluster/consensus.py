"""Which consensus proved a slot, and the answers that say so (pure; docs/http-api.md, "The
cluster level", "Two consensus kinds").

``getAgGenesisCert`` (agave >= 4.3) answers ``null`` while the cluster runs TowerBFT, the
Alpenglow genesis certificate once it migrated (``{"block": {"slot", "blockId": [32
bytes]}, "signature": {"signature": [192 bytes], "bitmap": [...]}}``, agave
``votor-messages``' ``Block`` in camelCase), and error -32601 on an older node, which can
only be following a TowerBFT cluster. The certificate's slot G is the last TowerBFT block:
agave's ``MigrationPhase::is_alpenglow_block`` is ``slot > genesis_cert.cert_type.slot()``
(``votor-messages/src/migration.rs``), the TowerBFT blocks after G are cleared when the
cluster enables Alpenglow, and Alpenglow blocks carry no vote transactions. So a slot at or
before G is proven by the votes in the blocks after it up to G, never past G; a slot after
G only by a finality certificate.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import attrs

from tracker.core.text import one_line
from tracker.errors import ProbeError, RpcError
from tracker.net.limits import decode_text, iter_json_members
from tracker.observability.redact import redact_url

#: JSON-RPC's "method not found": a node older than agave 4.3.
METHOD_NOT_FOUND = -32601
#: The largest getAgGenesisCert answer read (a certificate's arrays are ~2 KB of JSON).
MAX_GENESIS_ANSWER = 256 * 1024


@attrs.frozen
class Genesis:
    """The Alpenglow genesis an RPC reports: the last TowerBFT block."""

    slot: int
    block_id: bytes


#: What an RPC older than 4.3 answers (it can only serve a TowerBFT cluster).
UNSUPPORTED = "unsupported"


def genesis_answer(body: bytes | bytearray) -> Genesis | str | None:
    """A ``getAgGenesisCert`` answer: the genesis, None (not migrated) or
    :data:`UNSUPPORTED`. Raises RpcError (one line) for another error or a malformed one.
    Blocking: run it in a worker thread."""
    result: object = None
    seen = False
    try:
        for name, value in iter_json_members(decode_text(body), (), max_items=16):
            if name == "result":
                result, seen = value, True
            elif name == "error":
                code = value.get("code") if isinstance(value, dict) else None
                if code == METHOD_NOT_FOUND:
                    return UNSUPPORTED
                raise RpcError(one_line(f"getAgGenesisCert: error {str(value)[:200]}"))
    except ProbeError as exc:
        raise RpcError(one_line(f"getAgGenesisCert: {exc}")) from exc
    if not seen:
        raise RpcError("getAgGenesisCert: an answer without a result")
    if result is None:
        return None
    block = result.get("block") if isinstance(result, dict) else None
    slot = block.get("slot") if isinstance(block, dict) else None
    block_id = block.get("blockId") if isinstance(block, dict) else None
    if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < 2**64:
        raise RpcError("getAgGenesisCert: a certificate without a block slot")
    if not (
        isinstance(block_id, list)
        and len(block_id) == 32
        and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in block_id)
    ):
        raise RpcError("getAgGenesisCert: a certificate whose blockId is not 32 bytes")
    return Genesis(slot, bytes(block_id))


def migration_of(answers: Mapping[str, Genesis | str | None]) -> Genesis | None:
    """The genesis the RPCs' answers agree on (None: none migrated). An RPC older than 4.3
    says nothing against one that reports the migration; two that report different
    genesis blocks, or one that reports it while another (>= 4.3) answers null, disagree:
    RpcError (one line). Pure."""
    reported = {url: g for url, g in answers.items() if isinstance(g, Genesis)}
    if not reported:
        return None
    first = next(iter(reported.values()))
    unmigrated = [url for url, g in answers.items() if g is None]
    if any(g != first for g in reported.values()) or unmigrated:
        seen = "; ".join(
            f"{redact_url(url)}: "
            + (
                f"slot {g.slot}"
                if isinstance(g, Genesis)
                else ("not migrated" if g is None else "no getAgGenesisCert")
            )
            for url, g in answers.items()
        )
        raise RpcError(one_line(f"the RPCs disagree on the Alpenglow migration ({seen})"))
    return first


def vote_blocks(slot: int, blocks: int, genesis: Genesis | None) -> range:
    """The slots whose blocks may carry the votes for ``slot``: the ``blocks`` after it,
    none past the genesis (the last TowerBFT block). Pure."""
    end = slot + 1 + blocks
    if genesis is not None:
        end = min(end, genesis.slot + 1)
    return range(slot + 1, max(end, slot + 1))


def by_certificate(slot: int, genesis: Genesis | None) -> bool:
    """True when ``slot`` is proven by a finality certificate (after the genesis), False
    when by votes. Pure."""
    return genesis is not None and slot > genesis.slot


def tally_holds(slot: int, blocks: int, then: Genesis | None, now: Genesis | None) -> bool:
    """True when a tally of the votes for ``slot`` (``blocks`` after it), read while the
    RPCs reported the genesis ``then``, still proves what it did now that they report
    ``now``: it was read from exactly the blocks that count now. A tally read before the
    migration counted blocks past the genesis, which the cluster cleared when it enabled
    Alpenglow, and proves no slot at or after the genesis. Pure."""
    if by_certificate(slot, now) or (now is not None and slot == now.slot):
        return False
    return vote_blocks(slot, blocks, then) == vote_blocks(slot, blocks, now)


def migration_known(then: Genesis | None, reported: Collection[Genesis]) -> Genesis | None:
    """The migration a tally read while the RPCs reported ``then`` is judged by when they
    cannot say now (one failed, or they disagree): a genesis one of them ever reported
    (``reported``: kept for good, it never changes; the earliest, should two differ), else
    ``then``. This tracker's own outage changes no fact the tally rested on; a report of the
    migration does. Pure."""
    if not reported:
        return then
    return min(reported, key=lambda g: g.slot)
