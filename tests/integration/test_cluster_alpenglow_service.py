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
    manifest_stakes,
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
from test_proven import proof_of, wait_until_proof
from test_verified import GROUP, Fleet, fleet

from tracker.web.wire import DISPROVEN

pytestmark = pytest.mark.usefixtures("quick_vote_retries")

ORDER = ranked(validators([300, 250, 150, 100, 200]))
#: The manifests' stakes of epoch 6 (slots 2,016 to 4,063 by their schedule) and the test
#: RPC's current epoch.
STAKES = {6: manifest_stakes(ORDER)}
EPOCH = (6, 2016, 2048)


async def test_a_certificate_ranks_an_archive_after_the_migration(tmp_path: Path) -> None:
    name, data, bank = an_archive(tmp_path, 3400, 35, STAKES)
    node = alpenglow_rpc(ORDER, genesis_slot=3000, epoch=EPOCH)
    node.documents[3400] = document(3400, bank, fast_certificate(3400, ORDER[:4], ORDER))
    settings = {"trust": {"require": "cluster"}, **REDIRECT}
    async with cluster(tmp_path, name, data, node, certificates=True, **settings) as f:

        async def ranked_now() -> bool:
            return bool(await best_urls(f)) and await nothing_refused(f)

        await wait_until(ranked_now, timeout=30)
        assert (await best_urls(f))[0] == f"{f.bad.base}/v1/snapshot/{name}"
    assert ("certificate", 3400) in node.calls and node.block_calls() == []


async def test_proxy_mode_caches_it_at_cluster_by_its_certificate(tmp_path: Path) -> None:
    name, data, bank = an_archive(tmp_path, 3450, 37, STAKES)
    node = alpenglow_rpc(ORDER, genesis_slot=3000, epoch=EPOCH)
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


async def test_a_restart_keeps_the_epochs_stakes_beside_a_cached_copy(tmp_path: Path) -> None:
    """A copy cached at ``accounts`` before the RPC was configured is lifted after a restart
    by its certificate: the stakes of its manifest's epoch, what the certificate is read in,
    are kept beside it (``.{name}.stakes``), not read from the archive again."""
    name, data, bank = an_archive(tmp_path, 3480, 38, STAKES)
    async with fleet(tmp_path, name, data, data) as f:  # no rpc: cached at accounts
        await wait_until(lambda: _listed(f))
        assert (await raw_request(f.public, f"/v1/{GROUP}/{name}")).body == data
        await wait_for((f.cache / GROUP / f".{name}.sha256").exists)
    assert (f.cache / GROUP / f".{name}.stakes").stat().st_size == 20 + 5 * 120
    node = alpenglow_rpc(ORDER, genesis_slot=3000, epoch=EPOCH)
    node.documents[3480] = document(3480, bank, fast_certificate(3480, ORDER[:4], ORDER))
    async with cluster(
        tmp_path, name, data, node, certificates=True, trust={"require": "cluster"}
    ) as f:

        async def lifted() -> bool:
            return (await proof_of(f.public, name) or {}).get("level") == "cluster"

        await wait_until(lifted, timeout=30)
        hit = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert hit.status == 200 and hit.body == data
        assert f.bad.gets(name) == []  # the kept copy, not read again


@pytest.mark.parametrize("require", ["cluster", "accounts"])
async def test_a_certificate_short_of_its_stake_is_read_again(tmp_path: Path, require: str) -> None:
    """A copy cached at ``accounts``, then a relay serving a certificate short of its stake
    (75%), then the one that holds: a short certificate was taken as a final tally (the
    copy removed under ``require: cluster``, its 75% written beside it and never asked
    again under ``accounts``). It is read again after the wait, and lifts the copy."""
    name, data, bank = an_archive(tmp_path, 3490, 39, STAKES)
    async with fleet(tmp_path, name, data, data) as f:  # no rpc: cached at accounts
        await wait_until(lambda: _listed(f))
        assert (await raw_request(f.public, f"/v1/{GROUP}/{name}")).body == data
        await wait_for((f.cache / GROUP / f".{name}.sha256").exists)
    node = alpenglow_rpc(ORDER, genesis_slot=3000, epoch=EPOCH)
    node.documents[3490] = document(3490, bank, fast_certificate(3490, ORDER[:3], ORDER))
    async with cluster(
        tmp_path, name, data, node, certificates=True, trust={"require": require}
    ) as f:

        async def asked() -> bool:
            return ("certificate", 3490) in node.calls

        await wait_until(asked, timeout=30)
        node.documents[3490] = document(3490, bank, fast_certificate(3490, ORDER[:4], ORDER))

        async def lifted() -> bool:
            return (await proof_of(f.public, name) or {}).get("level") == "cluster"

        await wait_until(lifted, timeout=30)
        hit = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert hit.status == 200 and hit.body == data
        assert f.bad.gets(name) == []  # the kept copy, never removed
