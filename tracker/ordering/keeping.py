"""Which archives the tracker keeps for the nodes that still need them (pure logic).

A node that spent twenty minutes downloading a full archive needs an incremental on that
full, even once every source moved on to a newer full: so the newest incremental of every
full still served is kept (disk cache and bucket) and listed (docs/http-api.md, "Kept
incrementals"). A full is *served* while a source advertises it or the tracker holds it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from tracker.core.snapshots import ArchiveName, parse_archive_name


def _archives(names: Iterable[str]) -> list[ArchiveName]:
    """The canonical archive names among ``names`` (anything else is ignored)."""
    out = []
    for name in names:
        parsed = parse_archive_name(name)
        if parsed is not None and parsed.file_name == name:
            out.append(parsed)
    return out


def newest_incrementals(names: Iterable[str], served: Collection[int]) -> set[str]:
    """Of the incremental archives among ``names``, the newest on each full slot in
    ``served`` (the fulls still served)."""
    newest: dict[int, ArchiveName] = {}
    for archive in _archives(names):
        if archive.is_full or archive.base_slot not in served:
            continue
        best = newest.get(archive.base_slot)
        if best is None or archive.order_key() > best.order_key():
            newest[archive.base_slot] = archive
    return {archive.file_name for archive in newest.values()}


def cache_keeps(names: Iterable[str], promoted: str, served: Collection[int]) -> set[str]:
    """What stays in a group's cache directory holding ``names`` once ``promoted`` is in
    place: one full (``promoted`` when it is one, else the fulls already there), ``promoted``
    itself, and the newest incremental of every full still served (``served``, plus the
    fulls kept here)."""
    archives = _archives([*names, promoted])
    new = parse_archive_name(promoted)
    if new is not None and new.is_full:
        fulls = {promoted}
    else:
        fulls = {a.file_name for a in archives if a.is_full}
    bases = {*served, *(a.slot for a in archives if a.file_name in fulls)}
    return {promoted, *fulls, *newest_incrementals((a.file_name for a in archives), bases)}


def worth_keeping(name: str, held: Iterable[str], served: Collection[int]) -> bool:
    """Whether a complete, checked incremental ``name`` is worth storing beside the archives
    ``held``: its full is still served (``served``) and no incremental held on that full is
    newer, so the cache would keep it. A refresh of an incremental that a newer one made no
    longer the best ended thrown away, and on a slow link (an incremental outlasting the
    minute or two between two) none was ever kept for the nodes still on that full. Pure."""
    parsed = parse_archive_name(name)
    if parsed is None or parsed.is_full or parsed.base_slot not in served:
        return False
    return name in newest_incrementals([*held, name], {parsed.base_slot})
