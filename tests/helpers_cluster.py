"""Set-ups of the service-level tests of the proven levels (docs/http-api.md, "Proven
archives", "The cluster level"): a real tracker (hypercorn on 127.0.0.1) over sidecars that
are real HTTP servers (``test_verified.fleet``) with a fake JSON-RPC node
(``helpers_votes.VoteRpc``) as its ``rpc``; the votes of a block after an archive's slot;
what the tracker's JSON routes, its ``/v1/targets`` and its status page say; a reload."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import base58
import httpx
import trio
import yaml
from archives import build_archive
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_votes import VoteRpc, hash_of, key, tower, vote_transaction
from test_proven import ACCOUNT
from test_verified import GROUP, Fleet, _config, fleet, target

from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import check_file

V = [key(f"validator {n}") for n in range(5)]
STAKES = {V[0]: 300, V[1]: 250, V[2]: 150, V[3]: 100, V[4]: 200}  # total 1000
REDIRECT = {"proxy_snapshot_downloads": False}
OTHER = hash_of("another bank hash")
MINORITY = (
    "cluster not proven: 30.0% of the stake voted the bank hash, 55.0% voted another hash,"
    " 2/3 needed"
)


def bank_hash(tmp_path: Path, name: str, data: bytes) -> bytes:
    """The bank hash of the archive's manifest, as the tracker's check reads it."""
    path = tmp_path / f"read-{name}"
    path.write_bytes(data)
    proof = check_file(str(path), name, prove_accounts=AccountsLimits(max_accounts=1_000_000)).proof
    path.unlink()
    assert proof.bank_hash is not None
    return base58.b58decode(proof.bank_hash)


def votes_for(slot: int, bank: bytes, *, majority: bool) -> dict[int, list[dict[str, Any]]]:
    """The block after ``slot``: 70% of the stake (V0, V1, V2) votes ``bank`` and 30% another
    hash (a majority), or 30% (V0) votes it while 55% votes another hash."""
    for_bank = {V[0], V[1], V[2]} if majority else {V[0]}
    voters = [V[0], V[1], V[2], V[3], V[4]] if majority else [V[0], V[1], V[3], V[4]]
    return {
        slot + 1: [
            vote_transaction(v, tower([(slot - 1, 2), (slot, 1)], bank if v in for_bank else OTHER))
            for v in voters
        ]
    }


@asynccontextmanager
async def cluster(
    tmp_path: Path,
    name: str,
    data: bytes,
    node: VoteRpc,
    *,
    certificates: bool = False,
    **extra: Any,
) -> AsyncIterator[Fleet]:
    """A tracker whose one sidecar lists ``name`` at once, with ``node`` as its ``rpc`` (and,
    with ``certificates``, its certificate documents as ``cluster_proof.certificates``)."""
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_app, node.app())
        proof: dict[str, Any] = {"blocks": 4, "deadline": "10s"}
        if certificates:
            proof["certificates"] = url + "/certificates"
        settings = {"rpc": url + "/", "cluster_proof": proof, **extra}
        async with fleet(tmp_path, name, data, data, **settings) as f:
            yield f
        nursery.cancel_scope.cancel()


async def get_json(url: str) -> Any:
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        answer = await client.get(url)
        assert answer.status_code == 200, answer.text
        return answer.json()


async def shown(f: Fleet, text: str) -> bool:
    """Whether the status page shows ``text``. Ask it in a wait (``wait_until``): a scrape
    that outlasts the fleet's 0.2 s timeout on a loaded host writes its own error over the
    target's last one for a round (see ``nothing_refused``)."""
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        return text in (await client.get(f"{f.internal}/")).text


async def error_is(f: Fleet, expected: str) -> bool:
    """Whether the bad sidecar's target shows ``expected`` as its last error (asked in a
    wait, as ``shown``)."""
    return await last_error(f) == expected


async def best_urls(f: Fleet) -> list[str]:
    best = await get_json(f"{f.public}/v1/best_snapshots?group={GROUP}")
    return [file["url"] for source in best for file in source["files"]]


async def last_error(f: Fleet) -> str:
    return str((await target(f.public, f.bad))["last_error"])


async def nothing_refused(f: Fleet) -> bool:
    """The bad sidecar's target holds no error, or only a scrape that took longer than the
    fleet's 0.2 s (``scrape_interval`` 200ms, the timeout with it: a loaded host's, which
    says nothing of what these tests check: no archive of it refused)."""
    error = await last_error(f)
    return error == "" or error.startswith("timed out after")


def an_archive(
    tmp_path: Path,
    slot: int,
    seed: int,
    epoch_stakes: Mapping[int, Sequence[tuple[bytes, int, bytes]]] | None = None,
) -> tuple[str, bytes, bytes]:
    """A real archive of ``slot`` (its manifest's stakes of each epoch ``epoch_stakes``),
    its bytes and its bank hash."""
    name, data = build_archive(slot, seed=seed, account_size=ACCOUNT, epoch_stakes=epoch_stakes)
    return name, data, bank_hash(tmp_path, name, data)


async def reload(f: Fleet, tmp_path: Path, **extra: Any) -> None:
    """Write the config again with ``extra`` and have the tracker reload it."""
    hosts = [f.bad.base.removeprefix("http://"), f.good.base.removeprefix("http://")]
    _config(tmp_path, hosts, **extra)
    async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client:
        assert (await client.post(f"{f.internal}/reload")).status_code == 200


def node_url(f: Fleet, node: VoteRpc) -> str:
    """The ``rpc`` the tracker was configured with (the config file keeps it)."""
    return str(yaml.safe_load((f.cache.parent / "config.yml").read_text())["rpc"])
