"""Proven archives end to end (docs/architecture.md, "Proven archives"; docs/http-api.md,
``trust.require``): a real tracker, sidecars that are real HTTP servers, and archives whose
manifests are in agave's format: a forged but well formed copy (its manifest's lattice hash
does not give its name's hash) is never cached, its source is held back with the field
named, and the good copy that is cached carries its ``proof`` in the JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from archives import build_archive, compress, lattice_hash, make_tar, snapshot_entries
from helpers_proxy import raw_request, sidecar_listing, wait_for
from helpers_tracker import wait_until
from test_verified import GROUP, _listed, fleet, leftovers, never_complete, sources_of, target

from tracker.core.rejections import PREFIX as REJECTED
from tracker.proof.bankhash import NO_LATTICE_HASH
from tracker.proof.writing import archive_hash_of, write_manifest

#: Account files big enough that an archive is more than the bytes held back (64 KiB).
ACCOUNT = 256 * 1024


def forged(slot: int, seed: int, manifest: bytes) -> bytes:
    """The archive ``build_archive(slot, seed=seed, account_size=ACCOUNT)`` with another
    manifest."""
    entries = snapshot_entries(slot, accounts=3, account_size=ACCOUNT, seed=seed)
    swapped = [(n, manifest if n == f"snapshots/{slot}/{slot}" else d) for n, d in entries]
    return compress(make_tar(swapped), "zst")


async def proof_of(base: str, name: str) -> dict[str, Any] | None:
    """The ``proof`` of the first file object of ``name`` that carries one."""
    for file in await sources_of(base, name):
        if "proof" in file:
            return dict(file["proof"])
    return None


async def test_a_forged_copy_is_held_back_naming_the_field_and_the_good_one_is_proven(
    tmp_path: Path,
) -> None:
    name, good = build_archive(1500, seed=21, account_size=ACCOUNT)
    other = lattice_hash(999)  # well formed, but not the state the name says
    bad = forged(1500, 21, write_manifest(1500, other, [(1500, i, ACCOUNT) for i in range(3)]))
    async with fleet(tmp_path, name, bad, good) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        first = await raw_request(f.public, f"/v1/{GROUP}/{name}", idle=1.0)
        never_complete(first, len(bad))
        assert leftovers(f.cache) == []
        name_hash = name.split("-")[2].split(".")[0]
        expected = f"manifest: name hash {name_hash}, lattice hash gives {archive_hash_of(other)}"
        bad_target = await target(f.public, f.bad)
        assert bad_target["last_error"] == f"{REJECTED}{expected}", bad_target
        f.good.listing = sidecar_listing({name: good})
        await wait_until(lambda: _listed(f.public, name, 2))
        second = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert second.status == 200 and second.body == good
        await wait_for(lambda: (f.cache / GROUP / name).exists())
        proof = await wait_until_proof(f.public, name)
        assert proof["level"] == "manifest" and proof["snapshot_hash"] == name_hash
        assert len(proof["bank_hash"]) >= 32


async def wait_until_proof(base: str, name: str) -> dict[str, Any]:
    async def has() -> bool:
        return await proof_of(base, name) is not None

    await wait_until(has)
    found = await proof_of(base, name)
    assert found is not None
    return found


async def test_trust_require_keeps_an_archive_below_it_out_of_the_cache(tmp_path: Path) -> None:
    name, good = build_archive(1600, seed=22, account_size=ACCOUNT)
    old = forged(1600, 22, write_manifest(1600, None, extra=4))  # before SIMD-0220
    async with fleet(tmp_path, name, old, good) as f:  # default: manifest where checked
        await wait_until(lambda: _listed(f.public, name, 1))
        never_complete(await raw_request(f.public, f"/v1/{GROUP}/{name}", idle=1.0), len(old))
        assert leftovers(f.cache) == []
        last_error = (await target(f.public, f.bad))["last_error"]
        assert last_error == f"{REJECTED}proven to structure, manifest required: {NO_LATTICE_HASH}"


async def test_trust_require_structure_caches_it_with_its_level(tmp_path: Path) -> None:
    name, _good = build_archive(1700, seed=23, account_size=ACCOUNT)
    old = forged(1700, 23, write_manifest(1700, None, extra=4))
    async with fleet(tmp_path, name, old, old, trust={"require": "structure"}) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        answer = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert answer.status == 200 and answer.body == old
        proof = await wait_until_proof(f.public, name)
        assert proof == {
            "level": "structure",
            "bank_hash": proof["bank_hash"],
            "note": NO_LATTICE_HASH,
        }
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            page = (await client.get(f"{f.internal}/")).text
        assert '<span class="meta">structure</span>' in page  # beside its sha256
