"""Which objects of a group may go once a newer archive is complete, and when (pure logic).

Retention keeps the newest ``1 + keep_previous`` archives of each group and kind, and the
newest incremental of every full still served (:func:`tracker.ordering.keeping.newest_incrementals`:
a node that spent its time on an older full still finds an incremental on it);
:func:`superseded` names the others; of those, one handed out less than ``direct_serve_ttl``
(and a margin) ago is held back until its last URL has expired (:func:`retirement`), and the
tier runs retention again at that moment.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping

import attrs

from tracker.core.snapshots import parse_archive_name
from tracker.ordering.keeping import newest_incrementals


def superseded(
    names: Iterable[str], *, full: bool, keep_previous: int, served: Collection[int] = ()
) -> list[str]:
    """The archive names of one kind (``full`` or incremental) beyond the newest
    ``1 + keep_previous`` by slot, newest first; names that are not archives are ignored.
    Incrementals that are the newest on a full slot of ``served`` (the fulls still served,
    the bucket's own among them) are kept too."""
    names = list(names)
    kept = set() if full else newest_incrementals(names, {*served, *_full_slots(names)})
    ranked = []
    for name in names:
        parsed = parse_archive_name(name)
        if parsed is not None and parsed.is_full == full and parsed.file_name == name:
            ranked.append((parsed.slot, parsed.base_slot, name))
    ranked.sort(reverse=True)
    return [name for _slot, _base, name in ranked[1 + keep_previous :] if name not in kept]


def _full_slots(names: Iterable[str]) -> set[int]:
    """The slots of the full archives among ``names``."""
    parsed = (parse_archive_name(name) for name in names)
    return {p.slot for p in parsed if p is not None and p.is_full}


@attrs.frozen
class Retirement:
    """What retention does with superseded archives: ``delete`` them now, and look again in
    ``wait`` seconds, when the next one held back may go (None: none is held back)."""

    delete: tuple[str, ...]
    wait: float | None


def retirement(handed: Mapping[str, float | None], *, hold: float) -> Retirement:
    """The superseded archives ``handed`` (name -> seconds since a URL of it was last handed
    out, None: never) split into those that may go now and the wait for the others: an
    archive handed out less than ``hold`` seconds ago (``direct_serve_ttl`` and a margin)
    may still be downloaded through a URL that has not expired."""
    delete: list[str] = []
    waits: list[float] = []
    for name, age in handed.items():
        if age is None or age >= hold:
            delete.append(name)
        else:
            waits.append(hold - age)
    return Retirement(tuple(delete), min(waits) if waits else None)


#: What the hand-out mark of an older version said of its replica's clock: how many whole
#: seconds it ran ahead of the store's (:func:`clock_ahead`). Marks are no longer written
#: with it: a URL is signed to expire on the store's clock instead (:func:`url_life`).
AHEAD = "ahead"
#: The most a mark may say (metadata is read from the bucket: any replica, any value); past
#: it the hold would keep a superseded archive for hours on one replica's broken clock.
MAX_AHEAD = 3600


def ahead_of(ours: float, store: float) -> int:
    """Whole seconds our clock (``ours``, Unix seconds) runs ahead of the store's
    (``store``, from its ``Date``: whole seconds, so rounded up), 0 when behind, at most
    :data:`MAX_AHEAD`. Pure."""
    return min(MAX_AHEAD, max(0, math.ceil(ours - store)))


def url_life(ttl: float, ahead: int) -> float | None:
    """The seconds to sign a URL for, on a clock ``ahead`` seconds ahead of the store's, so
    that the store holds it expired ``ttl`` seconds after now on its own clock (the one the
    hand-out mark is dated by): ``ttl`` less ``ahead``. None when that is less than half of
    ``ttl``: a clock that far off hands out no URL (the tracker serves the bytes itself).

    A presigned URL expires ``ttl`` after the time its replica signed it at, by that
    replica's clock, but the store judges it by its own. Signed for ``ttl`` on a clock 30 s
    ahead, it stayed valid 30 s longer than the mark's age said, and a replica with a
    slower clock writing the next mark took those 30 s away from retention's hold: each
    URL's life is cut to what the mark covers, whichever replica writes it last. Pure."""
    life = ttl - ahead
    return life if life >= ttl / 2 else None


def clock_ahead(metadata: Mapping[str, str]) -> int:
    """What a hand-out mark of an older version says of its replica's clock
    (:data:`AHEAD`): 0 when it says nothing or no whole number of 0 to :data:`MAX_AHEAD`.

    Such a replica signed its URLs for the whole ``direct_serve_ttl`` on its own clock:
    one whose clock ran ahead handed out URLs that stay valid that much longer than the
    mark's age (on the store's clock) says, so retention holds the archive that much longer
    (a fleet upgraded one replica at a time). Pure."""
    text = metadata.get(AHEAD, "")
    if not (text.isascii() and text.isdigit() and len(text) <= 4):
        return 0
    return min(int(text), MAX_AHEAD)


def gone(seen: Mapping[str, float | None], listed: Collection[str], *, before: float) -> list[str]:
    """The keys of ``seen`` (key -> when this replica last saw its object in the bucket,
    trio's clock; None: only its digest or URL is known) that a listing shows gone: not in
    ``listed`` and not seen at or after ``before``, the listing's start less
    :data:`~tracker.objectstore.known.KNOWN_FOR`. An object this replica completed (or saw)
    since is kept: the listing may have begun before it landed, or a store's listing may
    not show a write that recent yet; the next listing decides. Pure."""
    listed = set(listed)
    return [
        key for key, when in seen.items() if key not in listed and (when is None or when < before)
    ]


def stray_sides(
    sides: Mapping[str, str],
    archives: Collection[str],
    *,
    full: bool,
    keep_previous: int,
    served: Collection[int] = (),
) -> list[str]:
    """The side objects (``sides``: key -> the archive name it is beside, of one group) whose
    archive is not among ``archives`` (the listing's, of that group) and would be superseded
    if it were there (:func:`superseded`, ``full``'s kind only): left by a replica that wrote
    one after another replica's retention deleted the archive, or by an upload that never
    completed. The side objects of an archive that would be kept are not strays: its upload
    may be under way (they are written before it completes). Pure."""
    absent = {name for name in sides.values() if name not in archives}
    if not absent:
        return []
    old = set(
        superseded({*archives, *absent}, full=full, keep_previous=keep_previous, served=served)
    )
    return [key for key, name in sides.items() if name in absent and name in old]


def side_expired(age: float, archive_there: bool, *, settle: float) -> bool:
    """Whether a stray side object (:func:`stray_sides`) ``age`` seconds old on the store's
    clock may be deleted: its archive is not there when asked again (``archive_there``: a
    HEAD just before), and it was written at least ``settle`` seconds (``lock_ttl``) ago:
    one being written now belongs to an upload about to complete. Pure."""
    return not archive_there and age >= settle
