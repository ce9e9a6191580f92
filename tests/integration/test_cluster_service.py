"""``trust.require: cluster`` end to end (docs/http-api.md, "The cluster level"): a real tracker
(hypercorn on 127.0.0.1), sidecars that are real HTTP servers holding archives in agave's
format, and a fake JSON-RPC node on 127.0.0.1 (``tests/helpers_votes.py``) answering
``getBlock``, ``getVoteAccounts`` and ``getSlot`` as agave's RPC does, whose votes carry the
archive's own bank hash (read from its manifest by the archive check).

In redirect mode (head reads) and in proxy mode (the cache's refresh and the copies it
holds): 2/3 of the stake voted -> ranked, redirected or cached at ``cluster``; a minority
-> out, with the reason in ``/v1/targets`` and on the status page; the RPC failing -> out
with the reason, and proven once it answers again; a reload that raises ``trust.require``
takes what is held below the new level out."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from helpers_cluster import (
    MINORITY,
    REDIRECT,
    STAKES,
    an_archive,
    best_urls,
    cluster,
    error_is,
    get_json,
    last_error,
    node_url,
    nothing_refused,
    reload,
    shown,
    votes_for,
)
from helpers_proxy import wait_for
from helpers_tls import client_tls
from helpers_tracker import wait_until
from helpers_votes import VoteRpc
from helpers_wire import raw_request
from test_proven import proof_of, wait_until_proof
from test_verified import GROUP, Fleet, fleet, left_nothing, never_complete

from tracker.ordering.sourcehistory import PREFIX as REJECTED
from tracker.web.wire import DISPROVEN

pytestmark = pytest.mark.usefixtures("quick_vote_retries")


async def test_redirect_mode_ranks_and_redirects_an_archive_2_3_voted(tmp_path: Path) -> None:
    name, data, bank = an_archive(tmp_path, 3000, 31)
    node = VoteRpc(blocks=votes_for(3000, bank, majority=True), stakes=STAKES)
    async with (
        cluster(tmp_path, name, data, node, trust={"require": "cluster"}, **REDIRECT) as f,
        httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client,
    ):
        expected = f"{f.bad.base}/v1/snapshot/{name}"
        seen: list[tuple[list[str], int, str]] = []

        async def voted() -> bool:  # asked (without the votes: out, "no votes read here")
            # Listing and redirect read together, until both show it: a scrape past the
            # fleet's 0.2 s timeout (a loaded host) takes the source out until the next one.
            urls = await best_urls(f)
            if not (3001 in node.block_calls() and urls and await nothing_refused(f)):
                return False
            answer = await client.get(f"{f.public}/v1/snapshot.tar.bz2?group={GROUP}")
            seen.append((urls, answer.status_code, answer.headers.get("location", "")))
            return answer.status_code == 303

        await wait_until(voted, timeout=20)
        urls, status, location = seen[-1]
        assert (urls[0], status, location) == (expected, 303, expected)


async def test_redirect_mode_keeps_a_minority_out_with_the_reason(tmp_path: Path) -> None:
    name, data, bank = an_archive(tmp_path, 3100, 32)
    node = VoteRpc(blocks=votes_for(3100, bank, majority=False), stakes=STAKES)
    async with cluster(tmp_path, name, data, node, trust={"require": "cluster"}, **REDIRECT) as f:
        reason = f"{DISPROVEN}{name}: proven to manifest, cluster required: {MINORITY}"

        async def out() -> bool:
            return await last_error(f) == reason

        await wait_until(out, timeout=20)
        assert await best_urls(f) == []
        await wait_until(lambda: shown(f, reason), timeout=20)


async def test_redirect_mode_rpc_failing_keeps_it_out_until_it_answers(tmp_path: Path) -> None:
    name, data, bank = an_archive(tmp_path, 3200, 33)
    node = VoteRpc(blocks=votes_for(3200, bank, majority=True), stakes=STAKES)
    node.raw["getBlock"] = b'{"jsonrpc":"2.0","error":{"code":-32005,"message":"behind"},"id":1}'
    async with cluster(tmp_path, name, data, node, trust={"require": "cluster"}, **REDIRECT) as f:
        seen: list[str] = []

        async def failing() -> bool:
            seen.append(await last_error(f))
            return "-32005" in seen[-1]

        await wait_until(failing, timeout=20)
        error = seen[-1]
        assert error.startswith(f"{DISPROVEN}{name}: proven to manifest, cluster required: ")
        assert "getBlock" in error and await best_urls(f) == []
        await wait_until(lambda: shown(f, "-32005"), timeout=20)
        node.raw.clear()  # the RPC answers again: asked after the back-off, then ranked

        async def ranked() -> bool:
            return bool(await best_urls(f))

        await wait_until(ranked, timeout=20)
        assert await nothing_refused(f)


async def test_proxy_mode_caches_an_archive_2_3_voted_at_cluster(tmp_path: Path) -> None:
    name, data, bank = an_archive(tmp_path, 3300, 34)
    node = VoteRpc(blocks=votes_for(3300, bank, majority=True), stakes=STAKES)
    async with cluster(tmp_path, name, data, node, trust={"require": "cluster"}) as f:
        await wait_until(lambda: _listed(f))
        answer = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert answer.status == 200 and answer.body == data
        # the digest file is written last, after the archive's rename and its proof's file
        await wait_for((f.cache / GROUP / f".{name}.sha256").exists)
        proof = await wait_until_proof(f.public, name)
        assert proof["level"] == "cluster"
        assert proof["voted_stake"] == 0.7 and "note" not in proof
        kept = (f.cache / GROUP / f".{name}.proof").read_text()
        assert '"level": "cluster"' in kept
        hit = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert hit.body == data and len(f.bad.gets(name)) == 1  # a hit: not read again


async def _listed(f: Fleet) -> bool:
    listing = await get_json(f"{f.public}/v1/snapshots")
    return bool(listing)


async def test_proxy_mode_never_caches_a_minority_and_says_why(tmp_path: Path) -> None:
    name, data, bank = an_archive(tmp_path, 3400, 35)
    node = VoteRpc(blocks=votes_for(3400, bank, majority=False), stakes=STAKES)
    async with cluster(tmp_path, name, data, node, trust={"require": "cluster"}) as f:
        await wait_until(lambda: _listed(f))
        never_complete(await raw_request(f.public, f"/v1/{GROUP}/{name}", idle=1.0), len(data))
        await left_nothing(f.cache)
        reason = f"proven to accounts, cluster required: {MINORITY}"
        await wait_until(lambda: error_is(f, f"{REJECTED}{reason}"), timeout=20)
        await wait_until(lambda: shown(f, reason), timeout=20)  # the rejected archives


async def test_proxy_mode_rpc_failing_rejects_then_caches_once_it_answers(
    tmp_path: Path,
) -> None:
    name, data, bank = an_archive(tmp_path, 3500, 36)
    node = VoteRpc(blocks=votes_for(3500, bank, majority=True), stakes=STAKES)
    node.raw["getVoteAccounts"] = b'{"jsonrpc":"2.0","error":{"code":-32005},"id":1}'
    # reject_for long enough that the rejection is read well within it on a loaded machine.
    settings = {"trust": {"require": "cluster"}, "reject_for": "5s"}
    async with cluster(tmp_path, name, data, node, **settings) as f:
        await wait_until(lambda: _listed(f))
        never_complete(await raw_request(f.public, f"/v1/{GROUP}/{name}", idle=1.0), len(data))
        await left_nothing(f.cache)

        seen: list[str] = []

        async def rejected() -> bool:
            seen.append(await last_error(f))
            return seen[-1].startswith(REJECTED)

        await wait_until(rejected)
        error = seen[-1]
        assert error.startswith(f"{REJECTED}proven to accounts, cluster required: cluster not")
        assert "getVoteAccounts" in error and "-32005" in error
        node.raw.clear()  # the RPC answers again; the source is used again after reject_for

        async def served() -> bool:
            # asked until then: a 502 while the source is still held back (a target's last
            # error cannot tell: a scrape that timed out shows its own over the rejection)
            answer = await raw_request(f.public, f"/v1/{GROUP}/{name}")
            return answer.status == 200 and answer.body == data

        await wait_until(served, timeout=20)
        assert await nothing_refused(f)
        proof = await wait_until_proof(f.public, name)  # promoted just after the last byte
        assert proof["level"] == "cluster"


async def test_a_held_copy_is_lifted_in_the_background_once_the_rpc_answers(
    tmp_path: Path,
) -> None:
    """A group that does not require ``cluster`` caches at ``accounts`` at once; the votes
    lift the held copy later, asked again after the back-off while the RPC fails."""
    name, data, bank = an_archive(tmp_path, 3600, 37)
    node = VoteRpc(blocks=votes_for(3600, bank, majority=True), stakes=STAKES)
    node.stall.add("getVoteAccounts")
    async with cluster(tmp_path, name, data, node, cluster_proof={"deadline": "1s"}) as f:
        await wait_until(lambda: _listed(f))
        answer = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert answer.status == 200 and answer.body == data  # the refresh did not wait

        async def noted() -> bool:
            proof = await proof_of(f.public, name)
            return proof is not None and "not read within 1s" in proof.get("note", "")

        await wait_until(noted)
        assert (await proof_of(f.public, name) or {})["level"] == "accounts"
        node.stall.clear()

        async def lifted() -> bool:
            return (await proof_of(f.public, name) or {}).get("level") == "cluster"

        await wait_until(lifted)
        assert (await proof_of(f.public, name) or {})["voted_stake"] == 0.7


async def test_a_reload_raising_the_level_takes_a_proven_copy_out_of_the_ranking(
    tmp_path: Path,
) -> None:
    name, data, bank = an_archive(tmp_path, 3700, 38)
    node = VoteRpc(blocks=votes_for(3700, bank, majority=False), stakes=STAKES)
    async with cluster(tmp_path, name, data, node, trust={"require": "manifest"}, **REDIRECT) as f:

        async def ranked() -> bool:
            return bool(await best_urls(f)) and bool(f.bad.gets(name))  # read and proven

        await wait_until(ranked, timeout=20)
        assert not any(m == "getBlock" for m, _ in node.calls)  # manifest: no votes asked
        url = node_url(f, node)
        await reload(f, tmp_path, rpc=url, trust={"require": "cluster"}, **REDIRECT)
        reason = f"{DISPROVEN}{name}: proven to manifest, cluster required: {MINORITY}"

        async def out() -> bool:
            return await last_error(f) == reason

        await wait_until(out, timeout=20)
        assert await best_urls(f) == [] and len(f.bad.gets(name)) == 1  # its head read once


async def test_a_reload_raising_the_level_removes_a_cached_copy_the_votes_refuse(
    tmp_path: Path,
) -> None:
    name, data, bank = an_archive(tmp_path, 3800, 39)
    node = VoteRpc(blocks=votes_for(3800, bank, majority=False), stakes=STAKES)
    async with cluster(tmp_path, name, data, node) as f:  # trust.require: manifest
        await wait_until(lambda: _listed(f))
        assert (await raw_request(f.public, f"/v1/{GROUP}/{name}")).body == data

        async def tallied() -> bool:
            return (await proof_of(f.public, name) or {}).get("voted_stake") == 0.3

        await wait_until(tallied)
        proof = await proof_of(f.public, name) or {}
        assert proof["level"] == "accounts" and proof["note"] == MINORITY  # kept: not required
        cached = f.cache / GROUP / name
        assert cached.exists()
        await reload(f, tmp_path, rpc=node_url(f, node), trust={"require": "cluster"})
        await wait_for(lambda: not cached.exists())
        assert await proof_of(f.public, name) is None
        reason = f"proven to accounts, cluster required: {MINORITY}"
        await wait_until(lambda: shown(f, reason), timeout=20)
        never_complete(await raw_request(f.public, f"/v1/{GROUP}/{name}", idle=1.0), len(data))


async def test_a_restart_requiring_cluster_keeps_a_copy_cached_at_accounts_and_lifts_it(
    tmp_path: Path,
) -> None:
    """What a check shows of ``cluster`` is ``accounts``: a copy kept at it is neither checked
    again nor removed at start-up; it is served once the votes lift it."""
    name, data, bank = an_archive(tmp_path, 3900, 40)
    async with fleet(tmp_path, name, data, data) as f:  # no rpc: cached at accounts
        await wait_until(lambda: _listed(f))
        assert (await raw_request(f.public, f"/v1/{GROUP}/{name}")).body == data
        await wait_for(lambda: (f.cache / GROUP / f".{name}.proof").exists())
    node = VoteRpc(blocks=votes_for(3900, bank, majority=True), stakes=STAKES)
    async with cluster(tmp_path, name, data, node, trust={"require": "cluster"}) as f:

        async def lifted() -> bool:
            return (await proof_of(f.public, name) or {}).get("level") == "cluster"

        await wait_until(lifted)
        hit = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert hit.status == 200 and hit.body == data
        assert f.bad.gets(name) == []  # the kept copy, not read again
