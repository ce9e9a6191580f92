"""What a fetch has to download, from what the ledger holds and what is on offer. Pure.

The two archives are decided apart (docs: README "Fetching a snapshot into a ledger"):

- the **full** is fetched unless the ledger holds a full within ``min_slots`` of the offered
  best one (or ``--full=false``);
- the **incremental** is fetched whenever it is newer than anything the ledger holds, and it
  must build on the full the ledger will hold: the offered one when that is fetched or
  already there, else the ledger's own recent full, for which the caller asks the tracker
  (:attr:`Plan.incremental_on`) and picks with :func:`choose_incremental`.
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
    #: Ask for the incrementals on the ledger's full at this slot, then settle the plan with
    #: :func:`choose_incremental` (0: nothing to ask).
    incremental_on: int = 0
    #: An incremental is wanted only when its slot is above this one (the ledger's newest).
    newer_than: int = 0
    #: The ledger's newest archive is not within ``min_slots`` of the best on offer: finding
    #: no newer incremental on the ledger's full is then a failure, not "up to date".
    behind: bool = False
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
    newest = max((f.name.slot for info in local for f in info.files), default=0)
    fulls = sorted({f.name.slot for info in local for f in info.files if f.name.is_full})
    offered_full = best.full.name.slot
    # A ledger full at the offered slot or newer counts as recent whatever ``min_slots``
    # (with 0, the offered full itself was downloaded again on every run).
    recent = [slot for slot in fulls if slot >= offered_full or offered_full - slot < min_slots]
    if want_full and not recent:
        incremental = best.incremental if want_incremental else None
        if incremental is not None and incremental.file_name in held_names(local):
            incremental = None  # in the ledger already: the full alone
        return Plan(full=best.full, incremental=incremental)
    if not want_incremental:
        return Plan(
            reason=f"the ledger's full at slot {max(recent)} is within {min_slots} slots of "
            f"the one on offer ({offered_full})"
        )
    if not fulls:
        return Plan(
            reason="the ledger holds no full snapshot to fetch an incremental for, "
            "and --full=false",
            failed=True,
        )
    base = offered_full if offered_full in fulls else max(recent or fulls)
    wanted = Plan(
        incremental_on=base,
        newer_than=newest,
        # the ledger holding the newest on offer is never behind (with 0, it was)
        behind=newest < best.slot and newest + min_slots <= best.slot,
        reason=f"the ledger's snapshot at slot {newest} is within {min_slots} slots of the "
        f"newest on offer ({best.slot}) and no newer incremental is on offer for its full",
    )
    if base == offered_full:  # the best snapshot's own incremental builds on it
        return choose_incremental(wanted, [best])
    return wanted


def held_names(local: list[SnapshotInfo]) -> set[str]:
    """The file names of the archives the ledger holds."""
    return {f.file_name for info in local for f in info.files}


def choose_incremental(wanted: Plan, offered: list[RemoteSnapshot]) -> Plan:
    """Settle a plan that asks for an incremental on the ledger's full at
    ``wanted.incremental_on``: the best of ``offered`` (best first) built on that full, when
    it is newer than the ledger's newest archive."""
    on = wanted.incremental_on
    candidate = next(
        (
            s.incremental
            for s in offered
            if s.incremental is not None and s.incremental.name.base_slot == on
        ),
        None,
    )
    if candidate is not None and candidate.name.slot > wanted.newer_than:
        return Plan(incremental=candidate)
    if wanted.behind:
        return Plan(
            reason=f"no incremental snapshot newer than slot {wanted.newer_than} on the "
            f"ledger's full at {on}",
            failed=True,
        )
    return Plan(reason=wanted.reason)
