"""The accounts level's second read held until a test lets it run (a check's thread waits in
it): what happens meanwhile is what a slow second read of a large full shows."""

from __future__ import annotations

import threading

import pytest
import trio

from tracker.proof.accounts import accountsprover
from tracker.proof.formats.manifest import Manifest
from tracker.proof.formats.statuscache import SlotDeltas
from tracker.proof.levels import Proof


class SecondRead:
    """Holds the second read of every accounts proof from :func:`hold_second_read` on,
    until :meth:`go`."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.allowed = threading.Event()

    def go(self) -> None:
        """Let every held second read, and every later one, run."""
        self.allowed.set()

    async def wait_started(self) -> None:
        """Wait (at most 30 s) until a check's second read began, and waits."""
        with trio.fail_after(30):
            while not self.started.is_set():
                await trio.to_thread.run_sync(self.started.wait, 0.5)


def hold_second_read(monkeypatch: pytest.MonkeyPatch) -> SecondRead:
    """Hold every accounts proof's second read (until the test's end at most: call ``go``)."""
    held = SecondRead()
    proof = accountsprover.StoragesProver.proof

    def waiting(
        self: accountsprover.StoragesProver,
        manifest: Manifest,
        proven: Proof,
        deltas: SlotDeltas | None = None,
    ) -> Proof:
        held.started.set()
        held.allowed.wait(60)
        return proof(self, manifest, proven, deltas)

    monkeypatch.setattr(accountsprover.StoragesProver, "proof", waiting)
    return held
