"""What the tracker learned, as a small JSON document kept across restarts and shared by
replicas (pure; docs/http-api.md#what-the-tracker-learned).

Two things: the measured throughputs of each source (what its speed tests read, and what real
transfers from it achieved: two lists), and the rejected copies held back for
``reject_for``. A restart changes monotonic clocks, so the document holds wall-clock times:
:func:`gather` converts from the running clock, :func:`restore` back to it. Reading is
lenient: a document that is not what this module writes costs the document (StateError),
an entry that is not costs the entry. Everything is bounded: entries, string lengths and
the document's size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

import attrs

from tracker.core.index import Index, TargetKey
from tracker.core.rejections import MAX_REJECTIONS, Rejection, Rejections
from tracker.core.throughputs import KINDS
from tracker.core.untrusted import load_json
from tracker.errors import StateError

VERSION = 1
#: Longest document read back (and written: the newest entries are kept).
MAX_BYTES = 4 * 1024 * 1024
MAX_THROUGHPUTS = 4096
#: Longest target name, archive name and reason kept (longer ones are cut or dropped).
MAX_TEXT = 1024
MAX_REASON = 300

#: Per source: (bytes per second, wall-clock time measured).
Throughputs = Mapping[TargetKey, tuple[float, float]]


@attrs.frozen
class Learned:
    """Throughputs (probed, then achieved by real transfers) and rejections with wall-clock
    times (``Rejection.until`` too)."""

    throughputs: Throughputs = attrs.Factory(dict)
    rejections: tuple[Rejection, ...] = ()
    achieved: Throughputs = attrs.Factory(dict)


def gather(index: Index, rejections: Rejections, *, now: float, wall: float) -> Learned:
    """What ``index`` and ``rejections`` hold now (``now`` on their clock, ``wall`` the wall
    clock at the same moment), rejections that ran out left out."""
    shift = wall - now
    probed, achieved = (
        {key: (rate, at + shift) for key, (rate, at) in index.speeds.measurements(kind).items()}
        for kind in KINDS
    )
    held = tuple(attrs.evolve(r, until=r.until + shift) for r in rejections.held() if r.until > now)
    return Learned(probed, held, achieved)


def restore(
    learned: Learned, index: Index, rejections: Rejections, *, now: float, wall: float
) -> None:
    """Give ``index`` and ``rejections`` what ``learned`` holds (see :func:`gather`); a time
    in the future (another machine's clock) counts as now."""
    shift = now - wall
    for kind, speeds in zip(KINDS, (learned.throughputs, learned.achieved), strict=True):
        for key, (rate, at) in speeds.items():
            index.restore_throughput(key, rate, min(at, wall) + shift, kind)
    for held in learned.rejections:
        if held.until > wall:
            rejections.restore(attrs.evolve(held, until=held.until + shift))


def merge(documents: Iterable[Learned]) -> Learned:
    """One document of several: per source the newest measurement, per copy the rejection
    that lasts longest."""
    speeds: dict[TargetKey, tuple[float, float]] = {}
    achieved: dict[TargetKey, tuple[float, float]] = {}
    held: dict[tuple[TargetKey, str], Rejection] = {}
    for doc in documents:
        _newest(speeds, doc.throughputs)
        _newest(achieved, doc.achieved)
        for r in doc.rejections:
            known = held.get((r.key, r.name))
            if known is None or known.until < r.until:
                held[(r.key, r.name)] = r
    return Learned(speeds, tuple(held.values()), achieved)


def _newest(into: dict[TargetKey, tuple[float, float]], speeds: Throughputs) -> None:
    """Per source of ``speeds``, its measurement into ``into`` unless that one is newer."""
    for key, (rate, at) in speeds.items():
        if key not in into or into[key][1] < at:
            into[key] = (rate, at)


def encode(learned: Learned) -> bytes:
    """The JSON document of ``learned``: the newest entries, at most the bounds above."""
    held = sorted(learned.rejections, key=lambda r: -r.until)
    doc = {
        "version": VERSION,
        "throughputs": _speeds_json(learned.throughputs),
        "achieved": _speeds_json(learned.achieved),
        "rejections": [
            {**_key_json(r.key), "name": r.name, "reason": r.reason[:MAX_REASON], "until": r.until}
            for r in held[:MAX_REJECTIONS]
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(data: bytes) -> Learned:
    """The document ``data`` (lenient, see the module doc); StateError when it is not one."""
    doc = load_json(data, StateError, max_bytes=MAX_BYTES)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise StateError("not a state document of this version")
    speeds, achieved = _speeds_of(doc.get("throughputs")), _speeds_of(doc.get("achieved"))
    held: list[Rejection] = []
    for item in _items(doc.get("rejections"), MAX_REJECTIONS):
        key, until = _key_of(item), _number(item.get("until"))
        name, reason = _text(item.get("name")), _text(item.get("reason"))
        if key is not None and until is not None and name and reason is not None:
            held.append(Rejection(key, name, reason[:MAX_REASON], until))
    return Learned(speeds, tuple(held), achieved)


def _speeds_json(speeds: Throughputs) -> list[dict[str, object]]:
    """The newest :data:`MAX_THROUGHPUTS` of ``speeds`` as JSON entries."""
    newest = sorted(speeds.items(), key=lambda item: -item[1][1])[:MAX_THROUGHPUTS]
    return [{**_key_json(key), "bps": rate, "at": at} for key, (rate, at) in newest]


def _speeds_of(value: object) -> dict[TargetKey, tuple[float, float]]:
    """The throughputs of a JSON list (absent: none, as in a document of an older tracker)."""
    speeds: dict[TargetKey, tuple[float, float]] = {}
    for item in _items(value, MAX_THROUGHPUTS):
        key, rate, at = _key_of(item), _number(item.get("bps")), _number(item.get("at"))
        if key is not None and rate is not None and rate > 0 and at is not None:
            speeds[key] = (rate, at)
    return speeds


def _key_json(key: TargetKey) -> dict[str, object]:
    return {"group": key.group, "target": key.target, "discovered": key.discovered}


def _items(value: object, limit: int) -> list[dict[str, object]]:
    if not isinstance(value, list):
        return []
    return [item for item in value[:limit] if isinstance(item, dict)]


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


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
