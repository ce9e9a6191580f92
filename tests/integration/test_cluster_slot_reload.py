"""A reload reaches the cluster's slot the index screens archives with (``trust.max_slot_ahead``,
docs/http-api.md, "Public routes", and docs/configuration.md, a group's ``rpc``): the slot
loop reads the RPCs of the new config at once, not once the old ``scrape_interval`` ended,
and a group the reload moved to another RPC is never screened by its old cluster's slot.
A real tracker (hypercorn on 127.0.0.1), a sidecar and fake JSON-RPC nodes on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio
from fakes import Rpc, Sidecar, sidecar_info
from helpers_server import serve_app
from helpers_sources import Answer, Request, ScriptedApp
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from names import full_name

#: The archive's slot is more than max_slot_ahead (100) above LOW, below HIGH.
LOW, HIGH = 10_000, 50_000
NAME = full_name(HIGH - 10)


class Tracked:
    """A tracker whose group ``g`` lists :data:`NAME` from one sidecar; its config rewritten
    and reloaded by :meth:`reload`."""

    def __init__(self, tmp_path: Path, sidecar: str) -> None:
        self.tmp_path, self.sidecar = tmp_path, sidecar
        self.public = self.internal = ""

    def write(self, rpc: str, interval: str) -> Path:
        target = self.sidecar.removeprefix("http://")
        group = {"group": "g", "rpc": rpc, "static_targets": {"targets": [target]}}
        settings = {
            "scrape_interval": interval,
            "internal_listen": "127.0.0.1:0",
            "verify_archives": False,
            "target_groups": [group],
        }
        return write_config(self.tmp_path, settings)

    async def start(self, nursery: trio.Nursery, rpc: str, interval: str = "10m") -> None:
        self.public, self.internal = await start_tracker(nursery, self.write(rpc, interval))

    async def reload(self, rpc: str, interval: str = "10m") -> None:
        self.write(rpc, interval)
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
            assert (await client.post(f"{self.internal}/reload")).status_code == 200

    async def listed(self) -> bool:
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
            answer = await client.get(f"{self.public}/v1/snapshots", params={"group": "g"})
        return bool(answer.json())

    async def screened(self) -> bool:
        """The sidecar's archive is in the index (counted), and kept out of the ranking: a
        slot below it by more than max_slot_ahead is known."""
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
            [target] = (await client.get(f"{self.public}/v1/targets")).json()
        return target["snapshots"] == 1 and not await self.listed()


class HeldRpc(ScriptedApp):
    """A JSON-RPC node answering ``getSlot`` with ``slot``: the first ``free`` calls at once,
    every later one once :attr:`release` is set."""

    def __init__(self, slot: int, free: int = 0) -> None:
        super().__init__({"/": self.get_slot})
        self.slot, self.free, self.release = slot, free, trio.Event()

    async def get_slot(self, _request: Request) -> Answer:
        if len(self.requests) > self.free:
            await self.release.wait()
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": self.slot}).encode()
        return Answer(200, (("content-type", "application/json"),), body)

    async def asked(self, times: int = 1) -> bool:
        """Whether ``getSlot`` was asked ``times`` (its answer held back or not)."""
        return len(self.requests) >= times


async def tracked(nursery: trio.Nursery, tmp_path: Path) -> Tracked:
    sidecar = await nursery.start(serve_app, Sidecar([sidecar_info((NAME, 10))]).app())
    return Tracked(tmp_path, sidecar)


async def test_a_reload_moving_a_group_to_another_rpc_reads_its_slot_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The slot loop slept out the old scrape_interval: the group was screened against the
    # old cluster's slot that long (here ten minutes).
    high_rpc = await nursery.start(serve_app, Rpc(slot=HIGH).app())
    low = Rpc(slot=LOW)
    low_rpc = await nursery.start(serve_app, low.app())
    t = await tracked(nursery, tmp_path)
    await t.start(nursery, high_rpc)
    await wait_until(t.listed)
    await t.reload(low_rpc)
    await wait_until(t.screened)
    assert low.seen


async def test_a_reload_moving_a_group_to_another_rpc_drops_the_old_clusters_slot(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Until the new RPC answers, the group has no cluster slot (as an RPC that failed for
    # long): the old cluster's slot is no bound on what the group advertises.
    low_rpc = await nursery.start(serve_app, Rpc(slot=LOW).app())
    held = HeldRpc(HIGH)
    held_rpc = await nursery.start(serve_app, held)
    t = await tracked(nursery, tmp_path)
    await t.start(nursery, low_rpc)
    await wait_until(t.screened)
    await t.reload(held_rpc)
    assert await t.listed()  # at once: the reload's answer came after the old slot went
    held.release.set()
    await wait_until(held.asked)
    assert await t.listed()


async def test_a_read_going_on_across_the_reload_screens_no_group_it_moved(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # A read of the old RPC that the reload found going on was told to the index by the
    # groups of the old config: the moved group was screened by its old cluster's slot
    # again, until the next read.
    old = HeldRpc(LOW, free=1)  # its second read waits
    new = HeldRpc(HIGH)  # never answers here: the group's slot stays unknown
    old_rpc = await nursery.start(serve_app, old)
    new_rpc = await nursery.start(serve_app, new)
    t = await tracked(nursery, tmp_path)
    await t.start(nursery, old_rpc, interval="200ms")
    await wait_until(t.screened)
    await wait_until(lambda: old.asked(2))  # the read the reload will find going on
    await t.reload(new_rpc, interval="200ms")
    assert await t.listed()
    old.release.set()  # its answer told, the loop reads the new RPC (woken by the reload)
    await wait_until(new.asked)
    assert await t.listed()


async def test_a_reload_shortening_the_scrape_interval_reaches_the_slot_loop(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The loop read the cluster's slot again only once the old interval (ten minutes) ended.
    rpc = Rpc(slot=LOW)
    url = await nursery.start(serve_app, rpc.app())
    t = await tracked(nursery, tmp_path)
    await t.start(nursery, url, interval="10m")
    await wait_until(t.screened)
    await t.reload(url, interval="200ms")
    asked = len(rpc.seen)
    await wait_until(lambda: _more(rpc, asked))  # the read the reload starts
    rpc.slot = HIGH  # only a read after it, 200 ms later, sees this
    await wait_until(t.listed)


async def _more(rpc: Rpc, than: int) -> bool:
    return len(rpc.seen) > than
