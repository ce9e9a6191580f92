"""Proven archives end to end (docs/architecture.md, "Proven archives"; docs/http-api.md,
``trust.require``): a real tracker, sidecars that are real HTTP servers, and archives whose
manifests are in agave's format: a forged but well formed copy (its manifest's lattice hash
does not give its name's hash) is never cached, its source is held back with the field
named, and the good copy that is cached carries its ``proof`` in the JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from archives import (
    build_archive,
    compress,
    forged_accounts_archive,
    lattice_hash,
    make_tar,
    snapshot_entries,
)
from helpers_proxy import wait_for
from helpers_tls import client_tls
from helpers_tracker import wait_until
from helpers_upstream import sidecar_listing
from helpers_wire import raw_request
from test_verified import (
    GROUP,
    _listed,
    fleet,
    left_nothing,
    never_complete,
    shows_error,
    sources_of,
)

from tracker.ordering.sourcehistory import PREFIX as REJECTED
from tracker.proof.accounts.accountsprover import MISMATCH
from tracker.proof.formats.bankhash import NO_LATTICE_HASH
from tracker.proof.formats.writing import archive_hash_of, write_manifest
from tracker.web.wire import DISPROVEN

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
        await left_nothing(f.cache)
        name_hash = name.split("-")[2].split(".")[0]
        expected = f"manifest: name hash {name_hash}, lattice hash gives {archive_hash_of(other)}"
        await shows_error(f, lambda error: error == f"{REJECTED}{expected}")
        f.good.listing = sidecar_listing({name: good})
        # the rejected copy is held back, not listed: the good one is the one listed
        await wait_until(lambda: _listed(f.public, name, 1))
        second = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert second.status == 200 and second.body == good
        await wait_for(lambda: (f.cache / GROUP / name).exists())
        proof = await wait_until_proof(f.public, name)
        assert proof["level"] == "accounts" and proof["snapshot_hash"] == name_hash
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
        await left_nothing(f.cache)
        reason = f"{REJECTED}proven to structure, manifest required: {NO_LATTICE_HASH}"
        await shows_error(f, lambda error: error == reason)


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
        async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
            page = (await client.get(f"{f.internal}/")).text
        assert '<span class="meta">structure</span>' in page  # beside its sha256


async def test_a_restart_restores_what_the_check_proved_with_the_digest(tmp_path: Path) -> None:
    name, good = build_archive(1800, seed=24, account_size=ACCOUNT)
    cache = tmp_path / "cache" / GROUP
    async with fleet(tmp_path, name, good, good) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        await raw_request(f.public, f"/v1/{GROUP}/{name}")
        await wait_for(lambda: (cache / f".{name}.sha256").exists())
    assert (cache / f".{name}.proof").exists()
    async with fleet(tmp_path, name, good, good) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        hit = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert hit.body == good and f.bad.gets(name) == []  # a hit at once, not read again
        proof = await wait_until_proof(f.public, name)
        assert proof["level"] == "accounts"
    (cache / f".{name}.proof").unlink()  # gone: the file is checked again before a hit
    async with fleet(tmp_path, name, good, good) as f:
        await wait_for(lambda: (cache / f".{name}.proof").exists())
        assert (await wait_until_proof(f.public, name))["level"] == "accounts"
        assert f.bad.gets(name) == []


async def test_trust_require_accounts_keeps_a_forged_accounts_copy_out_of_the_cache(
    tmp_path: Path,
) -> None:
    """A copy whose name and manifest are the state's but whose storages are not is never
    cached: its source is held back with the field named, the good copy is cached at
    ``accounts``."""
    name, good = build_archive(2000, seed=26, account_size=ACCOUNT)
    bad_name, bad = forged_accounts_archive(2000, seed=26, account_size=ACCOUNT)
    assert bad_name == name and len(bad) > 64 * 1024
    async with fleet(tmp_path, name, bad, good, trust={"require": "accounts"}) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        never_complete(await raw_request(f.public, f"/v1/{GROUP}/{name}", idle=1.0), len(bad))
        await left_nothing(f.cache)
        await shows_error(
            f, lambda error: error == f"{REJECTED}{MISMATCH}" and "accounts_lt_hash" in error
        )
        f.good.listing = sidecar_listing({name: good})
        # the rejected copy is held back, not listed: the good one is the one listed
        await wait_until(lambda: _listed(f.public, name, 1))
        second = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert second.status == 200 and second.body == good
        assert (await wait_until_proof(f.public, name))["level"] == "accounts"


async def test_prove_accounts_false_caches_a_full_at_manifest(tmp_path: Path) -> None:
    name, good = build_archive(2100, seed=27, account_size=ACCOUNT)
    async with fleet(tmp_path, name, good, good, prove_accounts=False) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        assert (await raw_request(f.public, f"/v1/{GROUP}/{name}")).body == good
        assert (await wait_until_proof(f.public, name))["level"] == "manifest"


async def test_redirect_mode_reads_heads_and_keeps_a_forged_copy_out_of_the_ranking(
    tmp_path: Path,
) -> None:
    name, good = build_archive(1900, seed=25, account_size=ACCOUNT)
    other = lattice_hash(998)
    bad = forged(1900, 25, write_manifest(1900, other, [(1900, i, ACCOUNT) for i in range(3)]))
    settings = {"proxy_snapshot_downloads": False, "trust": {"require": "manifest"}}
    async with fleet(tmp_path, name, bad, good, **settings) as f:
        f.good.listing = sidecar_listing({name: good})

        name_hash = name.split("-")[2].split(".")[0]
        reason = f"manifest: name hash {name_hash}, lattice hash gives {archive_hash_of(other)}"
        await shows_error(f, lambda error: error == f"{DISPROVEN}{name}: {reason}", timeout=20)
        assert f.bad.gets(name)  # its head was read
        urls: list[str] = []

        async def listed() -> bool:  # once the good source's head is proven too
            nonlocal urls
            async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as c:
                best = (await c.get(f"{f.public}/v1/best_snapshots?group={GROUP}")).json()
            urls = [file["url"] for source in best for file in source["files"]]
            return bool(urls)

        await wait_until(listed, timeout=20)
        assert all(u.startswith(f.good.base) for u in urls), urls
