"""Shared fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from helpers_process import RUNNING


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that does not follow redirects (tests look at them)."""
    async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
        yield c


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """Kill every ``serve`` subprocess a test started and did not stop."""
    yield
    while RUNNING:
        RUNNING.pop().kill()
