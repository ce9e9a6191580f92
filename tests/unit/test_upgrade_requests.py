"""Which requests are WebSocket upgrades the listeners refuse in one line
(:func:`tracker.web.shortcuts.asks_websocket`): the rule hypercorn used to pick its WebSocket
stream, read from the HTTP scope the tracker's listeners now give every request."""

from __future__ import annotations

from typing import Any

import pytest

from tracker.web.shortcuts import asks_websocket


def scope(kind: str = "http", method: str = "GET", **headers: str) -> dict[str, Any]:
    pairs = [(name.encode(), value.encode()) for name, value in headers.items()]
    return {"type": kind, "method": method, "headers": pairs}


@pytest.mark.parametrize(
    ("request_scope", "websocket"),
    [
        (scope("websocket"), True),  # a server that still makes WebSocket scopes
        (scope(connection="Upgrade", upgrade="websocket"), True),
        (scope(connection="keep-alive, Upgrade", upgrade=" WebSocket "), True),
        (scope(connection="upgrade", upgrade="h2c"), False),  # answered in HTTP/1.1
        (scope(upgrade="websocket"), False),  # no connection token: a plain request
        (scope(connection="upgraded", upgrade="websocket"), False),
        (scope(method="HEAD", connection="upgrade", upgrade="websocket"), False),
        (scope(), False),
        (scope("lifespan"), False),
    ],
)
def test_a_websocket_upgrade_is_a_get_asking_to_switch_to_it(
    request_scope: dict[str, Any], websocket: bool
) -> None:
    assert asks_websocket(request_scope) is websocket
