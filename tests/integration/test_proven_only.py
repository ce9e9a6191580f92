"""Redirect mode with ``trust.require`` set ranks a copy only once its head read proved it
(docs/http-api.md, "Proven archives"): a real tracker (hypercorn on 127.0.0.1), sidecars that
are real HTTP servers, a fake JSON-RPC node (``tests/helpers_cluster.py``). While the head
read of the only copy is held back by its source (or, for ``cluster``, while the RPC holds
its ``getBlock`` answers) that copy is in no listing, no redirect and no best snapshot, and
``/v1/targets`` and the status page say why; once proven it is handed out. A reload that
lowers the level brings back a copy refused only for being below the old one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from archives import build_archive
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
from helpers_tls import client_tls
from helpers_tracker import wait_until
from helpers_upstream import Behaviour, sidecar_listing
from helpers_votes import VoteRpc
from test_proven import ACCOUNT
from test_verified import GROUP, Fleet, fleet

from tracker.ordering.screens import NOT_YET
from tracker.web.wire import DISPROVEN

pytestmark = pytest.mark.usefixtures("quick_vote_retries")


async def short_redirect(f: Fleet) -> httpx.Response:
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        return await client.get(f"{f.public}/v1/snapshot.tar.bz2?group={GROUP}")


async def assert_nothing_handed_out(f: Fleet, name: str) -> None:
    """No route hands ``name`` out, and its source's line says why."""
    assert await best_urls(f) == []
    assert await get_json(f"{f.public}/v1/snapshots?group={GROUP}") == []
    answer = await short_redirect(f)
    assert answer.status_code == 202 and "location" not in answer.headers
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        by_name = await client.get(f"{f.public}/v1/{GROUP}/{name}")
    assert by_name.status_code == 404
    await wait_until(lambda: error_is(f, f"{DISPROVEN}{name}: {NOT_YET}"), timeout=20)
    await wait_until(lambda: shown(f, NOT_YET), timeout=20)


async def assert_handed_out(f: Fleet, name: str) -> None:
    url = f"{f.bad.base}/v1/snapshot/{name}"
    assert (await best_urls(f))[0] == url
    answer = await short_redirect(f)
    assert answer.status_code == 303 and answer.headers["location"] == url
    assert await nothing_refused(f)


async def test_a_copy_whose_head_read_is_held_back_is_never_redirected_to(
    tmp_path: Path,
) -> None:
    name, data = build_archive(4000, seed=41, account_size=ACCOUNT)
    held = Behaviour(pause_at=0)  # the answer's head, then nothing until resume is set
    settings = {"trust": {"require": "manifest"}, **REDIRECT}
    async with fleet(tmp_path, name, data, data, how=held, **settings) as f:
        await wait_until(lambda: _asked(f, name), timeout=20)  # the head read waits now
        await assert_nothing_handed_out(f, name)
        held.resume.set()

        async def proven() -> bool:
            return bool(await best_urls(f))

        await wait_until(proven, timeout=20)
        await assert_handed_out(f, name)
        assert len(f.bad.gets(name)) == 1  # read once


async def _asked(f: Fleet, name: str) -> bool:
    return bool(f.bad.gets(name))


async def test_a_held_back_head_read_holds_back_no_other_copy(tmp_path: Path) -> None:
    """A second source listed while the first one's head read is held back is read, proven
    and redirected to meanwhile; the first is handed out once its read ends."""
    name, data = build_archive(4300, seed=44, account_size=ACCOUNT)
    held = Behaviour(pause_at=0)
    settings = {"trust": {"require": "manifest"}, **REDIRECT}
    async with fleet(tmp_path, name, data, data, how=held, **settings) as f:
        await wait_until(lambda: _asked(f, name), timeout=20)
        f.good.listing = sidecar_listing({name: data})
        good, bad = f"{f.good.base}/v1/snapshot/{name}", f"{f.bad.base}/v1/snapshot/{name}"

        async def other_proven() -> bool:
            return await best_urls(f) == [good]

        await wait_until(other_proven, timeout=20)
        answer = await short_redirect(f)
        assert answer.status_code == 303 and answer.headers["location"] == good
        assert f.bad.gets(name)[0].body_sent == 0  # still held
        held.resume.set()

        async def both() -> bool:
            return sorted(await best_urls(f)) == sorted([good, bad])

        await wait_until(both, timeout=20)


async def test_with_cluster_required_a_copy_is_out_while_the_rpc_holds_its_votes(
    tmp_path: Path,
) -> None:
    name, data, bank = an_archive(tmp_path, 4100, 42)
    votes = trio.Event()
    node = VoteRpc(blocks=votes_for(4100, bank, majority=True), stakes=STAKES)
    node.hold["getBlock"] = votes
    async with cluster(tmp_path, name, data, node, trust={"require": "cluster"}, **REDIRECT) as f:

        async def asked() -> bool:  # the head read proved the manifest: the votes are asked
            return 4101 in node.block_calls()

        await wait_until(asked, timeout=20)
        await assert_nothing_handed_out(f, name)
        votes.set()

        async def voted() -> bool:
            return bool(await best_urls(f))

        await wait_until(voted, timeout=20)
        await assert_handed_out(f, name)


@pytest.mark.parametrize("lowered", [{"require": "manifest"}, {}], ids=["to manifest", "unset"])
async def test_a_reload_lowering_the_level_brings_back_a_copy_refused_for_it(
    tmp_path: Path, lowered: dict[str, str]
) -> None:
    name, data, bank = an_archive(tmp_path, 4200, 43)
    node = VoteRpc(blocks=votes_for(4200, bank, majority=False), stakes=STAKES)
    async with cluster(tmp_path, name, data, node, trust={"require": "cluster"}, **REDIRECT) as f:
        reason = f"{DISPROVEN}{name}: proven to manifest, cluster required: {MINORITY}"

        async def refused() -> bool:
            return await last_error(f) == reason

        await wait_until(refused, timeout=20)
        assert await best_urls(f) == []
        await reload(f, tmp_path, rpc=node_url(f, node), trust=lowered, **REDIRECT)

        async def back() -> bool:
            return bool(await best_urls(f))

        await wait_until(back, timeout=20)
        await assert_handed_out(f, name)
        assert len(f.bad.gets(name)) == 1  # brought back with the proof it had: not read again


async def test_a_head_read_failing_as_no_rule_foresaw_costs_that_copy_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One copy's read raising what no rule names ended the round's nursery: the reads
    beside it were cancelled, and every round met it again. It is that copy's failure
    now (tried again later); the other copy is proven and handed out."""
    import tracker.proof.background.heads as heads

    name, data = build_archive(4400, seed=45, account_size=ACCOUNT)
    settings = {"trust": {"require": "manifest"}, **REDIRECT}
    prove = heads.prove_copy

    async def failing(clients: object, group: object, read: Any, *args: object) -> Any:
        if read.file.url.startswith(bad_base):
            raise ValueError("unforeseen")
        return await prove(clients, group, read, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(heads, "prove_copy", failing)
    async with fleet(tmp_path, name, data, data, **settings) as f:
        bad_base = f.bad.base
        f.good.listing = sidecar_listing({name: data})
        good = f"{f.good.base}/v1/snapshot/{name}"

        async def good_proven() -> bool:
            return await best_urls(f) == [good]

        await wait_until(good_proven, timeout=20)
        assert any(r.msg == "head_read_error" for r in caplog.records)
