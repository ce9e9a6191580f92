"""The archives the tracker itself holds (disk cache, bucket), per group.

They are listed, served from where they are held, once no source advertises them any more
(docs/http-api.md, "Kept incrementals"), and their fulls count as served when deciding which
incrementals are kept (:mod:`tracker.ordering.keeping`). No event loop, no I/O: the cache and the
bucket tell what they hold after every change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import attrs

from tracker.core.snapshots import SnapshotFile, info_from_files, parse_archive_name
from tracker.core.snapshotsources import SnapshotSource, TargetKey

#: The target name of an archive listed because the tracker holds it (no source has it).
HELD_TARGET = "(held by the tracker)"


@attrs.frozen
class Held:
    """One archive held complete: its file (no ``url``, no ``path``: the tracker serves it
    from where it is held) and when it was stored."""

    file: SnapshotFile
    stored_at: datetime


class Holdings:
    """What each origin (``"cache"``, ``"bucket"``) holds of each group."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], dict[str, Held]] = {}

    def put(self, origin: str, group: str, files: Iterable[tuple[str, int, float]]) -> bool:
        """``origin`` now holds ``files`` (name, bytes, Unix time stored) of ``group``; names
        that are not canonical archive names are ignored. True when that changed anything."""
        held: dict[str, Held] = {}
        for name, size, stored in files:
            parsed = parse_archive_name(name)
            if parsed is None or parsed.file_name != name:
                continue
            when = datetime.fromtimestamp(max(0.0, stored), UTC)
            held[name] = Held(SnapshotFile(name=parsed, file_name=name, size=size), when)
        key = (origin, group)
        if self._held.get(key, {}) == held:
            return False
        if held:
            self._held[key] = held
        else:
            self._held.pop(key, None)
        return True

    def groups(self) -> list[str]:
        """Every group something is held of, by name."""
        return sorted({group for _origin, group in self._held})

    def of(self, group: str) -> dict[str, Held]:
        """Every archive held of ``group`` by name (the newest copy when several origins
        hold one)."""
        found: dict[str, Held] = {}
        for (_origin, held_group), held in sorted(self._held.items()):
            if held_group != group:
                continue
            for name, one in held.items():
                if name not in found or one.stored_at > found[name].stored_at:
                    found[name] = one
        return found

    def full_slots(self, group: str) -> frozenset[int]:
        """The slots of the fulls held of ``group``."""
        return frozenset(h.file.name.slot for h in self.of(group).values() if h.file.name.is_full)


def held_sources(
    holdings: Holdings, groups: Iterable[str], advertised: Callable[[str], list[SnapshotSource]]
) -> list[SnapshotSource]:
    """The archives ``holdings`` has of ``groups`` that no source of ``advertised(group)``
    lists any more, newest first, grouped by group: each a source of its own, target
    :data:`HELD_TARGET`, its file with neither URL nor path."""
    out: list[SnapshotSource] = []
    for name in groups:
        listed = {f.bare_name for s in advertised(name) for f in s.info.files}
        key = TargetKey(name, HELD_TARGET)
        for archive, held in holdings.of(name).items():
            if archive not in listed:
                out.append(SnapshotSource(info_from_files([held.file]), key, held.stored_at))
    out.sort(key=lambda s: s.info.rank_key(), reverse=True)
    out.sort(key=lambda s: s.key.group)
    return out
