"""``/v1/health``: is the newest snapshot of a group recent enough against the cluster's slot?"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import trio

from tracker.config.schema import Config
from tracker.core.untrusted import load_json
from tracker.errors import ProbeError, RpcError, TransportError
from tracker.net.exchange import stream
from tracker.net.limits import read_capped
from tracker.ordering.index import Index

RPC_TIMEOUT = 5.0
MAX_RPC_BODY = 64 * 1024


class HealthChecker:
    """Compares a group's newest snapshot slot with ``getSlot`` (finalized) from its
    cluster's RPC (the group's ``rpc``, else the top-level one)."""

    def __init__(
        self, config: Callable[[], Config], index: Index, client: httpx.AsyncClient
    ) -> None:
        self._config = config
        self._index = index
        self._client = client

    def newest_slot(self, group: str) -> int | None:
        """The newest usable snapshot slot: best incremental, else best full."""
        source = self._index.best_incremental(group) or self._index.best_full(group)
        return source.info.slot if source else None

    async def check(self, group: str) -> tuple[int, dict[str, Any]]:
        """(status, body) of ``group`` against its own cluster's slot (the group's ``rpc``,
        else the top-level one: :meth:`Config.group_rpc`): 200 healthy, 500 no snapshot,
        502 RPC unreachable, 503 too old, or no RPC configured (nothing to compare with:
        the tracker cannot say). The body is the Go tracker's, word for word (slots 0 when
        not known, its ``Health`` texts: scripts compare them), what it does not say in
        ``Detail``."""
        newest = self.newest_slot(group)
        body: dict[str, Any] = {"MaxSnapshot": newest or 0, "CurrentSlot": 0}
        if newest is None:
            return 500, {**body, "Health": "no snapshots found"}
        url = self._config().group_rpc(group)
        if not url:
            # Nothing to compare with: "cannot say" (503), never "unreachable" (502), so that
            # alerting tells a broken RPC from none configured.
            return 503, {**body, "Health": "no rpc configured"}
        try:
            current = await self.current_slot(url)
        except RpcError as exc:
            return 502, {**body, "Health": "rpc unhealthy", "Detail": f"rpc unreachable: {exc}"}
        body["CurrentSlot"] = current
        age = current - newest
        if age > self._config().max_snapshot_age:
            detail = f"snapshot is {age} slots old"
            return 503, {**body, "Health": "snapshot too old", "Detail": detail}
        return 200, {**body, "Health": "healthy"}

    async def current_slot(self, url: str) -> int:
        """The finalized slot of the cluster whose RPC is ``url``. Raises RpcError with a
        one-line reason."""
        if not url:
            raise RpcError("no rpc configured")
        payload = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "getSlot",
            "params": [{"commitment": "finalized"}],
        }
        headers = {"accept-encoding": "identity"}
        try:
            with trio.fail_after(RPC_TIMEOUT):
                async with stream(self._client, "POST", url, json=payload, headers=headers) as r:
                    if r.status_code != 200:
                        raise RpcError(f"HTTP {r.status_code}")
                    body = await read_capped(r, MAX_RPC_BODY)
        except (TransportError, trio.TooSlowError, ProbeError) as exc:
            raise RpcError(str(exc) or type(exc).__name__) from exc
        return _slot_from(bytes(body))


def _slot_from(body: bytes) -> int:
    answer = load_json(body, RpcError)
    slot = answer.get("result") if isinstance(answer, dict) else None
    # a slot is a u64: a larger number (JSON allows 4,300 digits) made every age and
    # prediction from it overflow a float, out of the task that tracks the ages
    if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < 2**64:
        raise RpcError("not a getSlot answer")
    return slot
