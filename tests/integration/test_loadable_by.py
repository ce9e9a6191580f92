"""A group of agave validators refuses what agave cannot load (``trust.loadable_by: agave``,
docs/http-api.md, "Proven archives"): a real tracker, sidecars that are real HTTP servers, and
two copies of one archive (same name, same state): one with several account storages for the
snapshot's slot, as Firedancer writes them, one with a storage a slot, as agave does.

In redirect mode the Firedancer copy is never ranked (its source shows why in ``/v1/targets``
and on the status page) and the agave copy is; in proxy mode with a disk cache it is never
cached nor handed out complete, its source held back with the reason. A group without the key
ranks and serves the Firedancer copy (proxy mode: tests/integration/test_unloadable.py). A
reload that sets the key refuses a copy already proven; one that drops it brings the copy back
(under ``require: cluster``, once the votes carry it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from archives import build_archive
from helpers_cluster import (
    REDIRECT,
    STAKES,
    bank_hash,
    cluster,
    error_is,
    node_url,
    reload,
    shown,
    votes_for,
)
from helpers_proxy import wait_for
from helpers_tls import client_tls
from helpers_tracker import wait_until
from helpers_upstream import sidecar_listing
from helpers_votes import VoteRpc
from helpers_wire import raw_request
from test_proven import ACCOUNT, wait_until_proof
from test_verified import (
    GROUP,
    _listed,
    fleet,
    left_nothing,
    never_complete,
    shows_error,
    target,
)

from tracker.ordering.sourcehistory import PREFIX as REJECTED
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import check_file
from tracker.proof.levels import Level
from tracker.web.wire import DISPROVEN

#: The quickstart's archives (examples/make_ledger.py writes them).
EXAMPLE_LEDGER = Path(__file__).resolve().parents[2] / "examples" / "ledger"


def refused_for(slot: int) -> str:
    """Why a group with ``trust.loadable_by: agave`` refuses the Firedancer copy of ``slot``."""
    return (
        f"trust.loadable_by agave: agave cannot load it: 3 account storages for slot {slot}"
        " (agave loads one a slot; Firedancer writes several)"
    )


def copies(slot: int, seed: int) -> tuple[str, bytes, bytes]:
    """The name, the Firedancer copy and the agave copy of one archive of ``slot``."""
    name, firedancer = build_archive(slot, seed=seed, account_size=ACCOUNT, layout="firedancer")
    same, agave = build_archive(slot, seed=seed, account_size=ACCOUNT)
    assert same == name and agave != firedancer
    return name, firedancer, agave


async def best_urls(base: str) -> list[str]:
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        best = (await client.get(f"{base}/v1/best_snapshots?group={GROUP}")).json()
    return [file["url"] for source in best for file in source["files"]]


async def test_redirect_mode_ranks_only_the_copy_agave_loads(tmp_path: Path) -> None:
    name, firedancer, agave = copies(2300, 51)
    # loadable_by alone: the group reads heads as with `require: manifest`.
    settings: dict[str, Any] = {"proxy_snapshot_downloads": False}
    async with fleet(
        tmp_path, name, firedancer, agave, trust={"loadable_by": "agave"}, **settings
    ) as f:
        f.good.listing = sidecar_listing({name: agave})
        expected = f"{DISPROVEN}{name}: {refused_for(2300)}"

        async def refused() -> bool:
            return bool((await target(f.public, f.bad))["last_error"] == expected)

        await wait_until(refused, timeout=20)
        assert f.bad.gets(name)  # its head was read

        async def agave_ranked() -> bool:
            urls = await best_urls(f.public)
            return bool(urls) and all(u.startswith(f.good.base) for u in urls)

        await wait_until(agave_ranked, timeout=20)
        await wait_until(lambda: shown(f, refused_for(2300)), timeout=20)


async def test_redirect_mode_without_the_key_ranks_the_firedancer_copy(tmp_path: Path) -> None:
    name, firedancer, _agave = copies(2400, 52)
    settings: dict[str, Any] = {"proxy_snapshot_downloads": False}
    async with fleet(
        tmp_path, name, firedancer, _agave, trust={"require": "manifest"}, **settings
    ) as f:

        async def ranked() -> bool:
            urls = await best_urls(f.public)
            return bool(urls) and all(u.startswith(f.bad.base) for u in urls)

        await wait_until(ranked, timeout=20)
        assert f.bad.gets(name)  # proven by its head read, not ranked unread
        await shows_error(f, lambda error: not error)  # not refused (a timed-out scrape aside)


async def test_proxy_mode_never_caches_nor_hands_out_what_agave_cannot_load(
    tmp_path: Path,
) -> None:
    name, firedancer, agave = copies(2500, 53)
    async with fleet(tmp_path, name, firedancer, agave, trust={"loadable_by": "agave"}) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        first = await raw_request(f.public, f"/v1/{GROUP}/{name}", idle=1.0)
        never_complete(first, len(firedancer))
        await left_nothing(f.cache)
        expected = f"{REJECTED}{refused_for(2500)}"
        await wait_until(lambda: error_is(f, expected), timeout=20)
        await wait_until(lambda: shown(f, refused_for(2500)), timeout=20)
        # The agave copy, listed now, is cached and handed out.
        f.good.listing = sidecar_listing({name: agave})
        # the rejected copy is held back, not listed: the good one is the one listed
        await wait_until(lambda: _listed(f.public, name, 1))
        second = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert second.status == 200 and second.body == agave
        await wait_for(lambda: (f.cache / GROUP / name).exists())
        proof = await wait_until_proof(f.public, name)
        assert proof["level"] == "accounts" and "unloadable" not in proof


async def test_a_reload_drops_and_sets_the_key_in_redirect_mode(tmp_path: Path) -> None:
    name, firedancer, _agave = copies(2600, 54)
    bank = bank_hash(tmp_path, name, firedancer)
    node = VoteRpc(blocks=votes_for(2600, bank, majority=True), stakes=STAKES)
    require: dict[str, Any] = {"require": "cluster"}
    refusing = {**require, "loadable_by": "agave"}
    async with cluster(tmp_path, name, firedancer, node, trust=refusing, **REDIRECT) as f:
        bad, expected = (
            f"{f.bad.base}/v1/snapshot/{name}",
            f"{DISPROVEN}{name}: {refused_for(2600)}",
        )

        async def refused() -> bool:
            out = await best_urls(f.public) == []
            return out and (await target(f.public, f.bad))["last_error"] == expected

        async def ranked() -> bool:
            return await best_urls(f.public) == [bad]

        await wait_until(refused, timeout=20)
        assert 2601 not in node.block_calls()  # refused before any vote was asked
        rpc = node_url(f, node)
        await reload(f, tmp_path, rpc=rpc, trust=require, **REDIRECT)
        await wait_until(ranked, timeout=20)  # decided again: the votes carry it
        await reload(f, tmp_path, rpc=rpc, trust=refusing, **REDIRECT)
        await wait_until(refused, timeout=20)
        assert len(f.bad.gets(name)) == 1  # decided with the proof its head read gave


def test_the_quickstart_archives_are_loadable_by_agave() -> None:
    """examples/ledger/ stands for agave's archives: one storage a slot (make_ledger.py)."""
    names = sorted(p.name for p in EXAMPLE_LEDGER.iterdir() if p.name.endswith(".tar.zst"))
    assert len(names) == 3, names
    limits = AccountsLimits(max_accounts=1_000_000)
    for name in names:
        proof = check_file(str(EXAMPLE_LEDGER / name), name, prove_accounts=limits).proof
        assert proof.level >= Level.MANIFEST and proof.unloadable is None, (name, proof)
