"""A refresh's readers get the end only once every check passed, end to end
(docs/architecture.md, "The release rule"): a client of a real tracker gets every byte of a
full but the last ones while the accounts level's second read runs, and the rest once it
passed, whatever the group's ``trust.require``; the bucket (a real SeaweedFS) gets it only
then too."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
import trio
from archives import many_accounts_archive
from helpers_proxy import wait_for
from helpers_replicas import idle, replica
from helpers_s3 import Weed
from helpers_secondread import hold_second_read
from helpers_tls import client_tls
from helpers_tracker import wait_until
from helpers_upstream import FakeUpstream, serving
from helpers_wire import Wire, raw_request
from test_proven import wait_until_proof
from test_verified import GROUP, _listed, fleet

from tracker.proof.levels import Level

HASHED = "snapshot_tracker_accounts_proof_hashed "


async def test_a_client_gets_the_end_of_the_full_once_its_second_read_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = hold_second_read(monkeypatch)
    name, data = many_accounts_archive(7200, 3000, seed=2)
    try:
        async with (
            fleet(tmp_path, name, data, data, trust={"require": "manifest"}) as f,
            trio.open_nursery() as nursery,
        ):
            await wait_until(lambda: _listed(f.public, name, 1))
            answers: list[Wire] = []

            async def client() -> None:
                answers.append(await raw_request(f.public, f"/v1/{GROUP}/{name}"))

            nursery.start_soon(client)
            await held.wait_started()
            assert answers == []  # the second read is held: no client has the end
            # docs/architecture.md, "Hashing ahead": the hashing process has hashed accounts
            # while the bytes came, before the second read (a first read that hashed
            # nothing read 0 here)
            async with httpx.AsyncClient(
                verify=client_tls(), timeout=10, trust_env=False
            ) as client:
                metrics = (await client.get(f"{f.internal}/metrics")).text
            (line,) = [x for x in metrics.splitlines() if x.startswith(HASHED)]
            assert float(line.split()[-1]) > 0
            held.go()
            proof = await wait_until_proof(f.public, name)
            assert proof["level"] == Level.ACCOUNTS.label
        [served] = answers
        assert served.status == 200 and served.body == data
    finally:
        held.go()


async def test_the_bucket_gets_the_full_only_once_its_accounts_are_proven(
    weed: Weed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = hold_second_read(monkeypatch)
    name, data = many_accounts_archive(7300, 3000, seed=4)
    prefix = f"r-{secrets.token_hex(4)}/"
    key = f"{prefix}{GROUP}/{name}"
    try:
        async with (
            serving(FakeUpstream(files={name: data})) as up,
            replica(weed, up, tmp_path, prefix) as t,
        ):
            async with trio.open_nursery() as nursery:
                answers: list[Wire] = []

                async def client() -> None:
                    answers.append(await raw_request(t.base, f"/v1/{GROUP}/{name}"))

                nursery.start_soon(client)
                await held.wait_started()
                assert answers == []  # the readers wait for the proof
                assert key not in weed.objects(prefix)  # not stored for others yet
                await wait_for(lambda: bool(weed.uploads(prefix)), timeout=30)  # it waits too
                held.go()
            [served] = answers
            assert served.status == 200 and served.body == data
            await wait_for(lambda: key in weed.objects(prefix), timeout=30)
            await idle(t)
            proven = t.parts.streamer.digests.verified(GROUP, name)
            assert proven is not None and proven.proof.level == Level.ACCOUNTS
    finally:
        held.go()
