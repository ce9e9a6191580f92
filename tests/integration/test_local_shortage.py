"""A ``not proven`` of the tracker's own making is never booked against the source
(docs/architecture.md, "Bounded memory"; docs/http-api.md, "The accounts level"): under
``trust.require: accounts``, a refresh whose accounts proof lacks temporary space ends as the
tracker's failure (its client cut, nothing cached), the honest source is not held back, and
the next client, once there is room again, gets the archive. The note counts the margin the
spill keeps free. A real tracker service, a real sidecar, a real full whose proof spills.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from archives import many_accounts_archive
from helpers_tracker import wait_until
from helpers_wire import raw_request
from test_verified import GROUP, _listed, fleet, left_nothing, never_complete, target

from tracker.ordering.sourcehistory import PREFIX as REJECTED
from tracker.proof.accounts.spill import SpillDir

FREE = 8 * 1024**2  # what the spill's file system says it has free, the test's shortage


def _reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ``reason`` field of every ``stream_failed`` event logged."""
    fields = [getattr(r, "tracker_fields", {}) for r in caplog.records if r.msg == "stream_failed"]
    return [str(f.get("reason")) for f in fields]


async def test_a_proof_short_of_temporary_space_never_holds_the_source_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name, good = many_accounts_archive(9_000, 40_000, seed=3)
    free = SpillDir.free
    monkeypatch.setattr(SpillDir, "free", lambda self: FREE)
    async with fleet(
        tmp_path,
        name,
        good,
        good,
        trust={"require": "accounts"},
        prove_accounts_memory="1MiB",
        prove_accounts_temp_dir=str(tmp_path / "spill"),
    ) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        first = await raw_request(f.public, f"/v1/{GROUP}/{name}", idle=5.0)
        never_complete(first, len(good))
        await left_nothing(f.cache)
        source = await target(f.public, f.bad)
        assert not (source["last_error"] or "").startswith(REJECTED), source
        [reason] = _reasons(caplog)
        assert reason.startswith(
            "archive not proven here: proven to manifest, accounts required: not proven: "
        ), reason
        assert reason.endswith(f"bytes of temporary space needed plus a 16 MiB margin, {FREE} free")
        # Room again: the next client's refresh from the same source proves and completes.
        monkeypatch.setattr(SpillDir, "free", free)
        with trio.fail_after(60):
            second = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert second.status == 200, second.body[:300]
        assert second.body == good
        assert len(f.bad.gets(name)) == 2
