"""``trust.require: cluster`` after the Alpenglow migration, end to end (docs/http-api.md,
"The cluster level"): a real tracker (hypercorn on 127.0.0.1) in redirect mode, a sidecar
holding an archive in agave's format (its manifest's bank hash and block id read by the
archive check), and a test RPC that reports the migration before the archive's slot and
serves the vote accounts' BLS keys and a certificate document (``tests/helpers_alpenglow.py``).

A certificate of 90% of the stake for the archive's block: ranked and redirected (redirect
mode), cached with its ``proof`` saying ``cluster`` by ``certificate`` (proxy mode); an
archive with vote transactions of 90% of the stake and no certificate: out, with the
reason."""

from __future__ import annotations

from pathlib import Path

import base58
import pytest
from helpers_alpenglow import (
    BLOCK_ID,
    alpenglow_rpc,
    document,
    fast_certificate,
    ranked,
    validators,
)
from helpers_cluster import (
    REDIRECT,
    an_archive,
    best_urls,
    cluster,
    get_json,
    last_error,
    nothing_refused,
    shown,
)
from helpers_proxy import wait_for
from helpers_tracker import wait_until
from helpers_votes import tower, vote_transaction
from helpers_wire import raw_request
from test_proven import wait_until_proof
from test_verified import GROUP, Fleet

from tracker.web.wire import DISPROVEN

pytestmark = pytest.mark.usefixtures("quick_vote_retries")

ORDER = ranked(validators([300, 250, 150, 100, 200]))


async def test_a_certificate_ranks_an_archive_after_the_migration(tmp_path: Path) -> None:
    name, data, bank = an_archive(tmp_path, 3400, 35)
    node = alpenglow_rpc(ORDER, genesis_slot=3000, epoch=(0, 0, 432_000))
    node.documents[3400] = document(3400, bank, fast_certificate(3400, ORDER[:4], ORDER))
    settings = {"trust": {"require": "cluster"}, **REDIRECT}
    async with cluster(tmp_path, name, data, node, certificates=True, **settings) as f:

        async def ranked_now() -> bool:
            return bool(await best_urls(f)) and await nothing_refused(f)

        await wait_until(ranked_now, timeout=30)
        assert (await best_urls(f))[0] == f"{f.bad.base}/v1/snapshot/{name}"
    assert ("certificate", 3400) in node.calls and node.block_calls() == []


async def test_proxy_mode_caches_it_at_cluster_by_its_certificate(tmp_path: Path) -> None:
    name, data, bank = an_archive(tmp_path, 3450, 37)
    node = alpenglow_rpc(ORDER, genesis_slot=3000, epoch=(0, 0, 432_000))
    node.documents[3450] = document(3450, bank, fast_certificate(3450, ORDER[:4], ORDER))
    async with cluster(
        tmp_path, name, data, node, certificates=True, trust={"require": "cluster"}
    ) as f:
        await wait_until(lambda: _listed(f))
        answer = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert answer.status == 200 and answer.body == data
        # the digest file is written last, after the archive's rename and its proof's file
        await wait_for((f.cache / GROUP / f".{name}.sha256").exists)
        proof = await wait_until_proof(f.public, name)
    assert (proof["level"], proof["cluster_proof"], proof["voted_stake"]) == (
        "cluster",
        "certificate",
        0.9,
    )
    assert proof["block_id"] == base58.b58encode(BLOCK_ID).decode()


async def _listed(f: Fleet) -> bool:
    return bool(await get_json(f"{f.public}/v1/snapshots"))


async def test_vote_transactions_after_the_migration_keep_an_archive_out(tmp_path: Path) -> None:
    name, data, bank = an_archive(tmp_path, 3500, 36)
    votes = {3501: [vote_transaction(v.vote, tower([(3500, 1)], bank)) for v in ORDER[:4]]}
    node = alpenglow_rpc(ORDER, genesis_slot=3000, blocks=votes)
    async with cluster(tmp_path, name, data, node, trust={"require": "cluster"}, **REDIRECT) as f:
        reason = (
            f"{DISPROVEN}{name}: proven to manifest, cluster required: cluster not proven: the"
            " RPC serves no finality certificate for slot 3500"
        )

        async def out() -> bool:
            return await last_error(f) == reason

        await wait_until(out, timeout=30)
        assert await best_urls(f) == []
        await wait_until(lambda: shown(f, reason), timeout=20)
    assert node.block_calls() == []
