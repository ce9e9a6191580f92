"""Which client connections have a request in flight (an ASGI wrapper).

A graceful stop must let running transfers finish but need not wait for idle keep-alive
connections: hypercorn keeps those open for its whole graceful timeout. Knowing the peers with
a request in flight lets the service close every other connection at once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

Peer = tuple[str, int]


class ActiveRequests:
    """Wraps an ASGI app and counts in-flight HTTP requests per client address."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._peers: Counter[Peer] = Counter()

    def peers(self) -> set[Peer]:
        """Client addresses with at least one request in flight."""
        return set(self._peers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if not client:
            await self.app(scope, receive, send)
            return
        peer = (str(client[0]), int(client[1]))
        self._peers[peer] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._peers[peer] -= 1
            if self._peers[peer] <= 0:
                del self._peers[peer]
