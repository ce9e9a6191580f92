"""What agave refuses at load, said in the proof and on the status page before anyone loads the
archive (docs/http-api.md, "Proven archives", "What agave refuses at load"): a real tracker in
proxy mode caches an archive whose manifest lists several account storages for one slot (as
Firedancer writes them: the tests' archive builder's ``layout="firedancer"``) with
``unloadable`` in its ``proof`` and "(agave cannot load it)" beside its level; the same
builder's archive as agave writes it (one storage a slot, its default) carries neither."""

from __future__ import annotations

from pathlib import Path

import httpx
from archives import build_archive
from helpers_tls import client_tls
from helpers_tracker import wait_until
from helpers_wire import raw_request
from test_proven import ACCOUNT, wait_until_proof
from test_verified import GROUP, fleet, sources_of


async def listed(base: str, name: str) -> bool:
    return bool(await sources_of(base, name))


async def cached_proof_and_page(
    tmp_path: Path, name: str, data: bytes
) -> tuple[dict[str, object], str]:
    async with fleet(tmp_path, name, data, data) as f:
        await wait_until(lambda: listed(f.public, name))
        answer = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert answer.status == 200 and answer.body == data
        proof = await wait_until_proof(f.public, name)
        async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
            page = (await client.get(f"{f.internal}/")).text
    return proof, page


async def test_several_storages_of_a_slot_are_said_unloadable_by_agave(tmp_path: Path) -> None:
    name, data = build_archive(2100, seed=41, account_size=ACCOUNT, layout="firedancer")
    proof, page = await cached_proof_and_page(tmp_path, name, data)
    assert proof["level"] == "accounts"
    assert proof["unloadable"] == (
        "agave cannot load it: 3 account storages for slot 2100 (agave loads one a slot;"
        " Firedancer writes several)"
    )
    assert '<span class="meta">accounts (agave cannot load it)</span>' in page


async def test_one_storage_a_slot_is_loadable(tmp_path: Path) -> None:
    name, data = build_archive(2200, seed=42, account_size=ACCOUNT)
    proof, page = await cached_proof_and_page(tmp_path, name, data)
    assert proof["level"] == "accounts" and "unloadable" not in proof
    assert '<span class="meta">accounts</span>' in page
