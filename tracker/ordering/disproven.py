"""Copies a proof showed below their group's level, kept out of the ranking (pure;
docs/architecture.md, "Proven archives").

A copy is one target's copy of one archive: another target's copy of the same name may be
fine (archives of one slot and hash made by different nodes are different bytes). A chain
that needs a refused copy goes with it: an incremental is of no use without its full.
"""

from __future__ import annotations

from collections.abc import Mapping

from tracker.core.snapshots import SnapshotInfo
from tracker.core.snapshotsources import TargetKey


class Disproven:
    """The refused copies, by target, each with its reason."""

    def __init__(self) -> None:
        self._held: dict[TargetKey, dict[str, str]] = {}

    def set(self, key: TargetKey, name: str, reason: str | None) -> bool:
        """``key``'s copy of ``name`` is refused for ``reason`` (None: it is not);
        True when that changed anything."""
        held = self._held.get(key, {})
        if held.get(name) == reason:
            return False
        if reason is None:
            held.pop(name, None)
        else:
            held[name] = reason
        if held:
            self._held[key] = held
        else:
            self._held.pop(key, None)
        return True

    def view(self) -> Mapping[TargetKey, Mapping[str, str]]:
        """Every refused copy, by target, with its reason (do not modify)."""
        return self._held

    def screen(
        self,
        infos: Mapping[TargetKey, tuple[SnapshotInfo, ...]],
        kept: dict[TargetKey, tuple[SnapshotInfo, ...]],
    ) -> None:
        """Drop from ``kept`` (what each target may contribute; a target not in it keeps
        all of ``infos``) every info whose chain holds a refused copy of that target."""
        for key, names in self._held.items():  # few: only copies a proof refused
            if key in infos:
                mine = kept.get(key, infos[key])
                kept[key] = tuple(i for i in mine if not any(f.bare_name in names for f in i.files))
