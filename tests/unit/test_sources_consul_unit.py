"""Consul discovery refuses an empty service name before asking anyone (discovery against a real
Consul catalog: tests/integration/test_sources_consul.py)."""

from __future__ import annotations

import pytest

from tracker.discovery.consul import discover_consul
from tracker.errors import ProbeError


async def test_no_service_name(client) -> None:
    with pytest.raises(ProbeError, match=r"^no Consul service name$"):
        await discover_consul(client, "127.0.0.1:1", "")
