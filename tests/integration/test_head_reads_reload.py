"""Redirect mode's head reads across a reload (docs/http-api.md, "Proven archives"): a round
starts every read due, at most ``READS_AT_ONCE`` in flight, the others waiting for their
turn; a reload while they wait changes the credentials they are to be sent and the sources
they may go to (docs/configuration.md: credentials go to the group's configured sources
only). Real upstreams on 127.0.0.1; the proof itself is a stand-in (the manifest's level)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import attrs
import base58
import pytest
import trio
from helpers_bytes import archive_bytes
from helpers_proxy import GROUP, TOKEN, advertise_files, wait_for
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name

import tracker.proof.background.heads as heads_module
from tracker.config.schema import BearerAuth, Config, TargetGroup, Trust
from tracker.ordering.index import Index, TargetKey
from tracker.proof.background.heads import HeadProofs
from tracker.proof.levels import Level, Proof
from tracker.proxy.upstream import DownloadClients, ProxySettings

NAME = full_name(6000)
DATA = archive_bytes(64 * 1024, seed=60)
PROOF = Proof(Level.MANIFEST, snapshot_hash="x", bank_hash=base58.b58encode(b"h" * 32).decode())


def _prove(read: Any, name: str, limit: int) -> Proof:
    read(1024)  # the head of the archive, as the manifest's proof reads it
    return PROOF


async def test_a_head_read_waiting_its_turn_asks_as_the_config_says_when_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One read at a time: while the first is held back by its source, a reload rotates the
    group's token and removes another source. The source the reload kept is read with the
    new token, the one it removed is not read at all."""
    monkeypatch.setattr(heads_module, "READS_AT_ONCE", 1)
    files = {NAME: DATA}
    ups = [FakeUpstream(files=files, behaviour={NAME: Behaviour(pause_at=0)}) for _ in range(3)]
    group = TargetGroup(
        group=GROUP, bearer_auth=BearerAuth(TOKEN), trust=Trust(require=Level.MANIFEST)
    )
    config = Config(target_groups=(group,))
    index = Index()
    clients = DownloadClients(ProxySettings())
    heads = HeadProofs(lambda: config, index, clients, _prove)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(clients.aclose)
        for up in ups:
            await stack.enter_async_context(serving(up))
            advertise_files(index, up, files)
        async with trio.open_nursery() as nursery:
            await heads.round(nursery)  # each read started, one let in at a time
            await wait_for(lambda: any(up.gets(NAME) for up in ups))
            [running] = [up for up in ups if up.gets(NAME)]
            kept, removed = [up for up in ups if up is not running]
            # The reload: the new token in force, the removed source out of the index (as
            # the scrape round the reload starts drops it).
            config = attrs.evolve(
                config, target_groups=(attrs.evolve(group, bearer_auth=BearerAuth("rotated")),)
            )
            index.drop(TargetKey(GROUP, removed.base))
            for up in ups:
                up.behaviour[NAME].resume.set()
    assert removed.gets(NAME) == []
    [seen] = kept.gets(NAME)
    assert seen.headers["authorization"] == "Bearer rotated"
    assert running.gets(NAME)[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert set(heads.proven) == {(TargetKey(GROUP, up.base), NAME) for up in (running, kept)}
