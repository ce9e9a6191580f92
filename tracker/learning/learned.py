"""What the tracker learned, as a small JSON document kept across restarts and shared by
replicas (pure; docs/http-api.md#what-the-tracker-learned).

Two things: the measured throughputs of each source (what its speed tests read, and what real
transfers from it achieved: two lists), and the rejected copies held back for
``reject_for``. A restart changes monotonic clocks, so the document holds wall-clock times:
:func:`gather` converts from the running clock, :func:`restore` back to it. Reading is
lenient: a document that is not what this module writes costs the document (StateError),
an entry that is not costs the entry (counted: :attr:`Learned.dropped`). Everything is
bounded: entries, string lengths, numbers (compared with their bounds before any conversion)
and the document's size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping

import attrs

from tracker.core.untrusted import load_json
from tracker.errors import StateError
from tracker.observability.redact import redact_text
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.sourcehistory import KINDS, MAX_REJECTIONS, Kind, Rejection, Rejections

VERSION = 1
#: Longest document read back (and written: the newest entries are kept).
MAX_BYTES = 4 * 1024 * 1024
MAX_THROUGHPUTS = 4096
#: Longest target name, archive name and reason kept (longer ones are cut or dropped).
MAX_TEXT = 1024
MAX_REASON = 300
#: Largest wall-clock time read back (2286-11-20): later ones are not times this writes.
MAX_WALL = 1e10
#: Largest throughput read back (1 TB/s): a larger one was not measured.
MAX_BPS = 1e12

#: Per source: (bytes per second, wall-clock time measured).
Speeds = Mapping[TargetKey, tuple[float, float]]


@attrs.frozen
class Learned:
    """Throughputs (probed, then achieved by real transfers) and rejections with wall-clock
    times (``Rejection.until`` too)."""

    throughputs: Speeds = attrs.Factory(dict)
    rejections: tuple[Rejection, ...] = ()
    achieved: Speeds = attrs.Factory(dict)
    #: Entries of the document read that were not kept (not what :func:`encode` writes).
    dropped: int = 0


def gather(index: Index, rejections: Rejections, *, now: float, wall: float) -> Learned:
    """What ``index`` and ``rejections`` hold now (``now`` on their clock, ``wall`` the wall
    clock at the same moment), rejections that ran out left out; in the order
    :func:`encode` keeps them: the measurements of the index's targets first, then those of
    targets it does not have (another replica's, say), each part newest first; the
    rejections made here first, then those taken from elsewhere. What was read never takes
    the place of what this tracker holds."""
    shift = wall - now
    targets = set(index.keys())

    def ordered(kind: Kind) -> dict[TargetKey, tuple[float, float]]:
        measured = index.speeds.measurements(kind).items()
        first = sorted(measured, key=lambda item: (item[0] not in targets, -item[1][1]))
        return {key: (rate, at + shift) for key, (rate, at) in first}

    held = tuple(attrs.evolve(r, until=r.until + shift) for r in rejections.held() if r.until > now)
    return Learned(ordered("probed"), held, ordered("achieved"))


def restore(
    learned: Learned,
    index: Index,
    rejections: Rejections,
    *,
    now: float,
    wall: float,
    longest_hold: float = math.inf,
    named: Iterable[TargetKey] = (),
) -> None:
    """Give ``index`` and ``rejections`` what ``learned`` holds (see :func:`gather`); a time
    in the future (another machine's clock) counts as now, a rejection holds at most
    ``longest_hold`` seconds from now (``reject_for``: what this tracker would hold).

    The document names targets without their credentials (:func:`as_written`): an entry is
    taken for the target of that name among ``named`` (the targets the config names) and
    the index's; one of another (another replica's, a target not found yet) keeps it."""
    shift = now - wall
    live = {as_written(key): key for key in (*named, *index.keys())}

    def target(key: TargetKey) -> TargetKey:
        written = as_written(key)  # a document of an older version held them in clear
        return live.get(written, written)

    for kind, speeds in zip(KINDS, (learned.throughputs, learned.achieved), strict=True):
        for key, (rate, at) in speeds.items():
            index.restore_throughput(target(key), rate, min(at, wall) + shift, kind)
    for held in learned.rejections:
        if held.until > wall:
            until = min(held.until, wall + longest_hold)
            rejections.restore(attrs.evolve(held, key=target(held.key), until=until + shift))


def as_written(key: TargetKey) -> TargetKey:
    """``key`` as the document names it: the userinfo and query of a target's URL masked
    (``http://***@host/path?***``). The document is a file anyone who reads the cache
    directory reads, and an object of a bucket other replicas' operators read: credentials
    never go there. Two targets that differ only in them share what was learned."""
    return key._replace(target=redact_text(key.target))


#: How far ahead of this machine's clock another replica's times may be and still count
#: (clocks kept by NTP agree far better); past it an entry is dropped, never taken for now.
CLOCK_AHEAD = 300.0


def plausible(learned: Learned, *, wall: float, longest_hold: float = math.inf) -> Learned:
    """``learned`` without what no replica's clock could have written: a measurement more
    than :data:`CLOCK_AHEAD` in the future (taken for now, it beat this tracker's own
    measurements at every read), a rejection held past ``longest_hold`` (``reject_for``)
    from now by more than that (renewed to ``reject_for`` at every read, it never ended;
    one another replica holds longer by its own ``reject_for`` is not taken either: this
    tracker asks the source again after its own). Each dropped entry is counted in
    ``dropped``. Pure."""
    ahead = wall + CLOCK_AHEAD

    def recent(speeds: Speeds) -> Speeds:
        return {key: (rate, at) for key, (rate, at) in speeds.items() if at <= ahead}

    held = tuple(r for r in learned.rejections if r.until <= ahead + longest_hold)
    kept = Learned(recent(learned.throughputs), held, recent(learned.achieved))
    lost = sum(
        len(before) - len(after)
        for before, after in (
            (learned.throughputs, kept.throughputs),
            (learned.achieved, kept.achieved),
            (learned.rejections, kept.rejections),
        )
    )
    return attrs.evolve(kept, dropped=learned.dropped + lost)


def merge(documents: Iterable[Learned]) -> Learned:
    """One document of several: per source the newest measurement, per copy the rejection
    that lasts longest; the entries they dropped, summed."""
    speeds: dict[TargetKey, tuple[float, float]] = {}
    achieved: dict[TargetKey, tuple[float, float]] = {}
    held: dict[tuple[TargetKey, str], Rejection] = {}
    dropped = 0
    for doc in documents:
        dropped += doc.dropped
        _newest(speeds, doc.throughputs)
        _newest(achieved, doc.achieved)
        for r in doc.rejections:
            known = held.get((r.key, r.name))
            if known is None or known.until < r.until:
                held[(r.key, r.name)] = r
    return Learned(speeds, tuple(held.values()), achieved, dropped)


def _newest(into: dict[TargetKey, tuple[float, float]], speeds: Speeds) -> None:
    """Per source of ``speeds``, its measurement into ``into`` unless that one is newer."""
    for key, (rate, at) in speeds.items():
        if key not in into or into[key][1] < at:
            into[key] = (rate, at)


#: Bytes each of the document's three lists may take: what is written is read back whole
#: (:data:`MAX_BYTES`), by this tracker after a restart and by every replica.
LIST_BYTES = (MAX_BYTES - 1024) // 3


def encode(learned: Learned) -> bytes:
    """The JSON document of ``learned``: of each list, the first entries in the order given
    (:func:`gather`'s: what this tracker holds first) within the bounds above, in entries and
    in bytes (texts of 1,024 characters make 4,096 entries far more than 4 MiB: a document
    this tracker could not read back, nor any replica). A rejection's end is written no
    later than :data:`MAX_WALL` (a ``reject_for`` of centuries: read back as the latest
    time a document holds, not dropped)."""
    doc = {
        "version": VERSION,
        "throughputs": _first(_speeds_json(learned.throughputs), MAX_THROUGHPUTS),
        "achieved": _first(_speeds_json(learned.achieved), MAX_THROUGHPUTS),
        "rejections": _first(
            (
                {
                    **_key_json(r.key),
                    "name": r.name,
                    "reason": redact_text(r.reason)[:MAX_REASON],
                    "until": min(r.until, MAX_WALL),
                }
                for r in learned.rejections
            ),
            MAX_REJECTIONS,
        ),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _first(entries: Iterable[dict[str, object]], count: int) -> list[dict[str, object]]:
    """The first ``count`` of ``entries`` whose JSON takes at most :data:`LIST_BYTES`."""
    kept: list[dict[str, object]] = []
    size = 0
    for entry in entries:
        size += len(json.dumps(entry, separators=(",", ":"))) + 1  # ASCII: escaped
        if len(kept) >= count or size > LIST_BYTES:
            break
        kept.append(entry)
    return kept


def decode(data: bytes) -> Learned:
    """The document ``data`` (lenient, see the module doc); StateError when it is not one.
    Each entry that is not what :func:`encode` writes is dropped alone and counted in
    :attr:`Learned.dropped`."""
    doc = load_json(data, StateError, max_bytes=MAX_BYTES)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise StateError("not a state document of this version")
    speeds: dict[TargetKey, tuple[float, float]] = {}
    achieved: dict[TargetKey, tuple[float, float]] = {}
    held: list[Rejection] = []
    dropped = 0
    for field, limit, read in (
        ("throughputs", MAX_THROUGHPUTS, _throughput),
        ("achieved", MAX_THROUGHPUTS, _throughput),
        ("rejections", MAX_REJECTIONS, _rejection),
    ):
        items, lost = _items(doc.get(field), limit)
        dropped += lost
        for item in items:
            try:
                entry = read(item)
            except (TypeError, ValueError, ArithmeticError):  # bounds below make it unlikely
                entry = None
            if isinstance(entry, Rejection):
                held.append(entry)
            elif entry is not None:
                (achieved if field == "achieved" else speeds)[entry[0]] = entry[1]
            else:
                dropped += 1
    return Learned(speeds, tuple(held), achieved, dropped)


def _speeds_json(speeds: Speeds) -> Iterator[dict[str, object]]:
    """``speeds`` as JSON entries, in their order."""
    return ({**_key_json(key), "bps": rate, "at": at} for key, (rate, at) in speeds.items())


def _throughput(item: object) -> tuple[TargetKey, tuple[float, float]] | None:
    if not isinstance(item, dict):
        return None
    key = _key_of(item)
    rate, at = _number(item.get("bps"), 0.0, MAX_BPS), _number(item.get("at"), 0.0, MAX_WALL)
    if key is None or rate is None or rate <= 0 or at is None:
        return None
    return key, (rate, at)


def _rejection(item: object) -> Rejection | None:
    if not isinstance(item, dict):
        return None
    key, until = _key_of(item), _number(item.get("until"), 0.0, MAX_WALL)
    name, reason = _text(item.get("name")), _text(item.get("reason"))
    if key is None or until is None or not name or reason is None:
        return None
    return Rejection(key, name, reason[:MAX_REASON], until)


def _key_json(key: TargetKey) -> dict[str, object]:
    return {"group": key.group, "target": as_written(key).target, "discovered": key.discovered}


def _items(value: object, limit: int) -> tuple[list[object], int]:
    """The first ``limit`` entries of a list, and how many are lost (past the limit, or one
    for a value that is not a list)."""
    if value is None:
        return [], 0
    if not isinstance(value, list):
        return [], 1
    return value[:limit], max(0, len(value) - limit)


def _key_of(item: Mapping[str, object]) -> TargetKey | None:
    group, target, discovered = (
        _text(item.get("group")),
        _text(item.get("target")),
        item.get("discovered"),
    )
    if not group or not target or not isinstance(discovered, bool):
        return None
    return TargetKey(group, target, discovered)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and len(value) <= MAX_TEXT else None


def _number(value: object, low: float, high: float) -> float | None:
    """A JSON number within ``[low, high]``, or None. An integer is compared before it is
    converted: ``float()`` of one with hundreds of digits raises OverflowError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not low <= value <= high:  # NaN too: every comparison with it is false
        return None
    return float(value)
