"""The RPC's getSlot answer (the cluster's slot the health, the ages and the ranking use),
as a table: a slot is a u64."""

from __future__ import annotations

import pytest

from tracker.errors import RpcError
from tracker.web.healthcheck import _slot_from


@pytest.mark.parametrize(
    ("body", "slot"),
    [
        (b'{"jsonrpc": "2.0", "result": 320000000, "id": 1}', 320_000_000),
        (b'{"result": 18446744073709551615}', 2**64 - 1),
        (b'{"result": 18446744073709551616}', None),
        # 400 digits: every age and time-to-running prediction from it overflowed a float,
        # out of the task that tracks the snapshots' ages (the service ended)
        (b'{"result": 1' + b"0" * 400 + b"}", None),
        (b'{"result": -1}', None),
        (b'{"result": true}', None),
        (b'{"result": "5"}', None),
        (b"[5]", None),
    ],
)
def test_a_getslot_answer(body: bytes, slot: int | None) -> None:
    if slot is None:
        with pytest.raises(RpcError, match="not a getSlot answer"):
            _slot_from(body)
    else:
        assert _slot_from(body) == slot
