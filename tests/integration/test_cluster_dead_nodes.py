"""A cluster whose advertised RPC ports accept connections and never answer (on mainnet a
firewall makes many look so) must not hold back the operator's own targets
(docs/architecture.md, "Scrape rounds"): a real tracker, a fake ``getClusterNodes`` RPC
listing hundreds of such nodes (listening sockets on 127.3.x.y that never accept: their
backlog completes the handshake) and one configured node whose listing changes."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
from cluster_answers import node_entry
from helpers_server import serve_app
from helpers_tracker import start_tracker, wait_until, write_config
from names import full_name
from test_cluster import SLOT, Node, Nodes, get, raise_fd_limit, rpc_app, targets_of

GROUP = "mainnet"


def dead_host(n: int) -> str:
    """The host of the ``n``-th dead node: one of its own (127.3.x.y), as discovery keeps
    one node a machine."""
    return f"127.3.{n // 250}.{n % 250 + 1}"


#: Probes at once, and their timeout: one round of every dead node takes
#: 300 / 2 x 0.5 s = 75 s, where the interval is 1 s.
DEAD, CONCURRENCY, TIMEOUT = 300, 2, 0.5


@contextmanager
def silent_listeners(count: int) -> Iterator[list[str]]:
    """``count`` listening sockets that never accept; their ``ip:port`` addresses."""
    sockets: list[socket.socket] = []
    try:
        for n in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind((dead_host(n), 0))
            sock.listen(64)
        yield [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def slot_of(base: str, target: str) -> int | None:
    """The slot of ``target``'s snapshot as ``/v1/snapshots`` lists it (it lists one full
    snapshot, no incremental)."""
    listed = (await get(f"{base}/v1/snapshots")).json()
    slots = [s["slot"] for s in listed if s["target"] == target]
    return slots[0] if slots else None


async def test_hanging_nodes_do_not_hold_back_the_configured_target(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    raise_fd_limit()
    own = Node(full_name(SLOT))
    [address] = await Nodes().serve(nursery, [own])
    configured = f"http://{address}"
    with silent_listeners(DEAD) as dead:
        entries = [node_entry(n, a) for n, a in enumerate(dead)]
        rpc = await nursery.start(serve_app, rpc_app([entries]))
        settings = {
            "scrape_interval": "1s",
            "scrape_timeout": f"{TIMEOUT}s",
            "scrape_concurrency": CONCURRENCY,
            "max_target_failures": 1,
            "egress": {"allow": ["127.0.0.0/8"]},
            "target_groups": [
                {
                    "group": GROUP,
                    "http_targets": {"targets": [configured]},
                    # asked again each round until it answers (a loaded host's
                    # getClusterNodes may outlast the 0.5 s), not 5 minutes later
                    "cluster_discovery": {"rpc": [rpc], "interval": "1s"},
                }
            ],
        }
        [base] = await start_tracker(nursery, write_config(tmp_path, settings))

        def listed(slot: int) -> Callable[[], Awaitable[bool]]:
            async def shows() -> bool:
                return await slot_of(base, configured) == slot

            return shows

        async def discovered() -> bool:
            shown = await targets_of(base)
            return all(f"http://{a}" in shown for a in dead)

        await wait_until(discovered, timeout=30)
        await wait_until(listed(SLOT), timeout=30)
        # Seen early (the 300 nodes take ~75 rounds to be probed once, the listings below a
        # few): some probed, the others left for later rounds.
        early = await targets_of(base)
        early_nodes = [early[f"http://{a}"] for a in dead]
        assert any(n["last_scrape"] is None for n in early_nodes)
        # Each new listing is seen at the next round, within an interval and a timeout
        # (1.5 s; 20 s leaves a loaded host room); waiting for every dead node's probe, the
        # next round began 75 s later.
        for step in range(1, 4):
            own.full = full_name(SLOT + step)
            began = trio.current_time()
            await wait_until(listed(SLOT + step), timeout=20)
            print(f"\nnew listing {step} seen after {trio.current_time() - began:.2f} s")

        shown = await targets_of(base)
        assert shown[configured]["health"] == "up"
        nodes = [shown[f"http://{a}"] for a in dead]
        probed = [n for n in nodes if n["last_scrape"] is not None]
        assert probed
        for entry in probed:  # down once: dropped and backed off, shown as its last probe left it
            assert entry["health"] == "down", entry
            assert entry["last_error"] == f"timed out after {TIMEOUT:g}s", entry
            assert entry["consecutive_failures"] >= 1 and entry["snapshots"] == 0, entry
        for entry in (n for n in early_nodes if n["last_scrape"] is None):  # not probed yet
            assert (entry["health"], entry["consecutive_failures"]) == ("unknown", 0), entry
