"""Shared fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that does not follow redirects (tests look at them)."""
    async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
        yield c
