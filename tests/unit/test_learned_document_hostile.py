"""The reader of what the tracker learned (tracker/learning/learned.py) under mutated documents:
huge numbers, wrong types, deep nesting, NaN/Infinity, duplicate keys, roots that are not
objects. A file or an object is read from disk or another replica: hostile. Whatever it
holds, reading it raises StateError (the document is lost) or drops entries (each counted);
nothing else, and what is kept is bounded (docs/http-api.md#what-the-tracker-learned)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker.errors import StateError
from tracker.learning.learned import (
    MAX_BPS,
    MAX_WALL,
    Learned,
    decode,
    encode,
    gather,
    merge,
    restore,
)
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.sourcehistory import Rejections

HUGE = 10**400  # 401 digits: float() of it raises OverflowError
WALL = 1_800_000_000.0

#: Values that are not what the writer puts anywhere.
HOSTILE = st.one_of(
    st.sampled_from([HUGE, -HUGE, 2**1100, 1e308, -1e308, 0, -1]),
    st.integers(min_value=-(10**450), max_value=10**450),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)
GOOD = {
    "group": st.sampled_from(["g", "h"]),
    "target": st.sampled_from(["http://a", "http://b"]),
    "discovered": st.booleans(),
    "bps": st.floats(min_value=1.0, max_value=1e10),
    "at": st.floats(min_value=0.0, max_value=WALL),
    "name": st.sampled_from(["snapshot-1-x.tar.zst", "n"]),
    "reason": st.text(max_size=20),
    "until": st.floats(min_value=0.0, max_value=2 * WALL),
}
FIELDS = sorted(GOOD)


def _object(pairs: list[tuple[str, str]]) -> str:
    """A JSON object of ``pairs`` of (key, JSON text), keys possibly given twice."""
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"


@st.composite
def entry(draw: st.DrawFn) -> str:
    """One entry: mostly the writer's fields, some of them hostile, given twice, or nested
    deep; sometimes no object at all."""
    if draw(st.integers(0, 9)) == 0:
        return json.dumps(draw(HOSTILE))
    pairs = []
    for field in FIELDS:
        choice = draw(st.integers(0, 9))
        if choice == 0:
            continue  # missing
        value = draw(HOSTILE) if choice == 1 else draw(GOOD[field])
        pairs.append((field, json.dumps(value)))
        if choice == 2:  # given twice: the last one counts
            pairs.append((field, json.dumps(draw(HOSTILE))))
        if choice == 3:
            depth = draw(st.integers(1, 3000))
            pairs.append((field, "[" * depth + "]" * depth))
    return _object(pairs)


@st.composite
def document(draw: st.DrawFn) -> str:
    """A document of the writer's shape, mutated; or something else entirely."""
    kind = draw(st.integers(0, 19))
    if kind == 0:  # a root that is not an object
        return json.dumps(draw(HOSTILE))
    if kind == 1:  # deep nesting at the root
        depth = draw(st.integers(1, 100_000))
        return "[" * depth + "]" * depth
    if kind == 2:  # not JSON: NaN and Infinity are no JSON numbers
        bad = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        return '{"version":1,"throughputs":[{"bps":' + bad + "}]}"
    version = json.dumps(draw(HOSTILE)) if kind == 3 else "1"
    pairs = [("version", version)]
    for field in ("throughputs", "rejections"):
        if draw(st.integers(0, 9)) == 0:
            pairs.append((field, json.dumps(draw(HOSTILE))))
        else:
            pairs.append((field, "[" + ",".join(draw(st.lists(entry(), max_size=8))) + "]"))
    if draw(st.booleans()):
        pairs.append(("version", version))  # a key given twice at the root
    return _object(pairs)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document(), st.floats(min_value=0.0, max_value=1e6))
def test_a_mutated_document_costs_itself_or_its_entries_never_more(text: str, now: float) -> None:
    try:
        learned = decode(text.encode())
    except StateError as exc:
        reason = str(exc)
        assert "\n" not in reason
        return
    for key, (rate, at) in learned.throughputs.items():
        assert isinstance(key, TargetKey)
        assert 0 < rate <= MAX_BPS and 0 <= at <= MAX_WALL
    for held in learned.rejections:
        assert 0 <= held.until <= MAX_WALL and len(held.reason) <= 300
    assert learned.dropped >= 0
    # What it kept goes into the running state and out again as a document.
    index, rejections = Index(), Rejections()
    restore(merge([learned]), index, rejections, now=now, wall=WALL, longest_hold=600.0)
    for held in rejections.held():
        assert held.until <= now + 600.0 + 1e-3  # floats of wall-clock size
    written = decode(encode(gather(index, rejections, now=now, wall=WALL)))
    assert written.dropped == 0


@given(st.lists(st.fixed_dictionaries(GOOD), max_size=10))
def test_a_document_of_the_writer_loses_nothing(entries: list[dict[str, object]]) -> None:
    doc = {"version": 1, "throughputs": entries, "rejections": entries}
    learned = decode(json.dumps(doc).encode())
    assert learned.dropped == 0
    assert len(learned.rejections) == len(entries)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bps", HUGE),
        ("at", HUGE),
        ("bps", -HUGE),
        ("at", -1),
        ("bps", 1e13),
        ("at", 1e11),
        ("bps", "7"),
        ("at", None),
        ("bps", True),
        ("at", [1]),
    ],
)
def test_an_out_of_bounds_throughput_costs_its_entry(field: str, value: object) -> None:
    good = {"group": "g", "target": "http://a", "discovered": False, "bps": 7.0, "at": 1.0}
    other = {**good, "target": "http://b", field: value}
    learned = decode(json.dumps({"version": 1, "throughputs": [good, other]}).encode())
    assert learned.throughputs == {TargetKey("g", "http://a"): (7.0, 1.0)}
    assert learned.dropped == 1


@pytest.mark.parametrize("until", [HUGE, -HUGE, 1e11, -1, "9", False])
def test_an_out_of_bounds_rejection_costs_its_entry(until: object) -> None:
    good = {"group": "g", "target": "http://a", "discovered": False, "name": "n", "reason": "r"}
    doc = {"version": 1, "rejections": [{**good, "until": 9.0}, {**good, "until": until}]}
    learned = decode(json.dumps(doc).encode())
    assert [r.until for r in learned.rejections] == [9.0]
    assert learned.dropped == 1


def test_fields_of_the_wrong_type_and_entries_past_the_bound_are_counted() -> None:
    doc = {"version": 1, "throughputs": {"not": "a list"}, "rejections": ["junk"] * 5000}
    learned = decode(json.dumps(doc).encode())
    assert learned == Learned(dropped=1 + 5000)


def test_a_rejection_from_far_ahead_holds_no_longer_than_reject_for() -> None:
    key = TargetKey("g", "http://a")
    doc = {
        "version": 1,
        "rejections": [
            {"group": "g", "target": "http://a", "discovered": False, "name": "n", "reason": "r"}
            | {"until": MAX_WALL}
        ],
    }
    rejections = Rejections()
    restore(
        decode(json.dumps(doc).encode()), Index(), rejections, now=5.0, wall=WALL, longest_hold=600
    )
    assert rejections.rejected(key, "n", 5.0 + 599) is not None
    assert rejections.rejected(key, "n", 5.0 + 601) is None
    assert math.isfinite(rejections.held()[0].until)
