"""Which objects of a group may go once a newer archive is complete (pure logic)."""

from __future__ import annotations

from collections.abc import Iterable

from tracker.core.snapshots import parse_archive_name


def superseded(names: Iterable[str], *, full: bool, keep_previous: int) -> list[str]:
    """The archive names of one kind (``full`` or incremental) beyond the newest
    ``1 + keep_previous`` by slot, newest first; names that are not archives are ignored."""
    ranked = []
    for name in names:
        parsed = parse_archive_name(name)
        if parsed is not None and parsed.is_full == full and parsed.file_name == name:
            ranked.append((parsed.slot, parsed.base_slot, name))
    ranked.sort(reverse=True)
    return [name for _slot, _base, name in ranked[1 + keep_previous :]]
