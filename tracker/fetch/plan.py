"""What a fetch has to download, from what the ledger holds and what is on offer. Pure.

The newest snapshot on offer is wanted. Nothing is fetched when the ledger's newest archive
is within ``min_slots`` of it. The full archive is fetched only when the ledger has no full
within ``min_slots`` of the offered one: with a recent enough full, only an incremental on
top of *that* full is fetched (the caller asks which one, :attr:`Plan.incremental_on`).
"""

from __future__ import annotations

import attrs

from tracker.core.snapshots import SnapshotInfo
from tracker.fetch.listing import RemoteFile, RemoteSnapshot


@attrs.frozen
class Plan:
    """The downloads to make, in order; ``reason`` says why there are none."""

    full: RemoteFile | None = None
    incremental: RemoteFile | None = None
    #: Ask for the newest incremental on the ledger's full at this slot (0: no).
    incremental_on: int = 0
    reason: str = ""
    #: True when there is nothing to do because something is wrong (exit 1).
    failed: bool = False


def plan(
    local: list[SnapshotInfo],
    remote: list[RemoteSnapshot],
    *,
    min_slots: int,
    want_full: bool = True,
    want_incremental: bool = True,
) -> Plan:
    """The plan for a ledger holding ``local`` when ``remote`` (best first) is on offer."""
    complete = [s for s in remote if s.full is not None]
    if not complete:
        return Plan(reason="no snapshot is available", failed=True)
    best = complete[0]
    assert best.full is not None
    slots = [f.name.slot for info in local for f in info.files]
    newest = max(slots, default=0)
    if newest and newest + min_slots > best.slot:
        return Plan(
            reason=f"the ledger's snapshot at slot {newest} is within {min_slots} slots of "
            f"the newest on offer ({best.slot})"
        )
    fulls = sorted({f.name.slot for info in local for f in info.files if f.name.is_full})
    full_slot = best.full.name.slot
    if full_slot in fulls:
        incremental = best.incremental if want_incremental else None
        return Plan(incremental=incremental, reason="" if incremental else "the full is here")
    recent = [slot for slot in fulls if full_slot - slot < min_slots]
    if (recent or not want_full) and want_incremental and fulls:
        return Plan(incremental_on=max(recent or fulls))
    if not want_full:
        if not fulls:
            return Plan(
                reason="the ledger holds no full snapshot to fetch an incremental for, "
                "and --full=false",
                failed=True,
            )
        return Plan(reason="a newer full snapshot exists but --full=false", failed=True)
    return Plan(full=best.full, incremental=best.incremental if want_incremental else None)
