"""The JSON wire form of files, snapshots and targets' health (docs/http-api.md, "Wire
format"), written in one module (tracker.web.wire), as tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from names import full_name, incremental_name

from tracker.core.snapshots import SnapshotFile, TargetKey, info_from_files, parse_archive_name
from tracker.discovery.roster import Target, TargetHealth
from tracker.web.wire import file_to_json, health_json, info_to_json, measured_time, wire_time

FULL = full_name(100)
INCR = incremental_name(100, 150)
WHEN = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)


def _file(name: str, **kw: Any) -> SnapshotFile:
    parsed = parse_archive_name(name)
    assert parsed is not None
    return SnapshotFile(parsed, name, **kw)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (WHEN, "2026-11-21T10:00:00Z"),
        (WHEN.replace(microsecond=1500), "2026-11-21T10:00:00.001500Z"),
        # Another offset is written in UTC.
        (
            datetime(2026, 11, 21, 12, 0, tzinfo=timezone(timedelta(hours=2))),
            "2026-11-21T10:00:00Z",
        ),
    ],
)
def test_wire_time(value: datetime, expected: str) -> None:
    assert wire_time(value) == expected


@pytest.mark.parametrize(
    ("file", "file_name", "expected_keys"),
    [
        # A full with nothing known beyond its name: no base_slot, mod_time or size.
        (_file(FULL), None, {"file_name", "slot", "hash", "ext"}),
        (
            _file(FULL, size=7, mod_time=WHEN),
            None,
            {"file_name", "slot", "hash", "ext", "size", "mod_time"},
        ),
        # An incremental carries its base slot.
        (_file(INCR), None, {"file_name", "slot", "base_slot", "hash", "ext"}),
        # The listing may name the file otherwise (a URL at the tracker).
        (_file(FULL), "http://t/x", {"file_name", "slot", "hash", "ext"}),
    ],
)
def test_file_to_json(file: SnapshotFile, file_name: str | None, expected_keys: set[str]) -> None:
    out = file_to_json(file, file_name=file_name)
    assert set(out) == expected_keys
    assert out["file_name"] == (file_name or file.file_name)
    assert out["slot"] == file.name.slot and out["hash"] == file.name.hash
    assert out.get("base_slot", 0) == file.name.base_slot
    assert out.get("size", 0) == file.size
    assert out.get("mod_time") == (wire_time(file.mod_time) if file.mod_time else None)


@pytest.mark.parametrize("renamed", [None, ["a", "b"]])
def test_info_to_json(renamed: list[str] | None) -> None:
    info = info_from_files([_file(INCR, size=3), _file(FULL, size=10)])
    out = info_to_json(info, renamed)
    assert {k: out[k] for k in ("slot", "base_slot", "hash", "size")} == {
        "slot": 150,
        "base_slot": 100,
        "hash": info.hash,
        "size": 13,
    }
    assert [f["file_name"] for f in out["files"]] == (renamed or [INCR, FULL])


def _health(target: str, *, discovered: bool = False, version: str = "", **kw: Any) -> TargetHealth:
    key = TargetKey("g", target, discovered)
    return TargetHealth(Target(key, "http", target, version), **kw)


@pytest.mark.parametrize(
    ("health", "mismatch", "expected"),
    [
        # Never scraped: nulls, not absent keys.
        (
            _health("http://n1"),
            "",
            {"health": "unknown", "last_error": "", "last_scrape": None, "last_duration_ms": None},
        ),
        # Scraped: the time in UTC with a Z, the duration rounded up to a millisecond.
        (
            _health("http://n1", health="up", last_scrape=WHEN, last_duration=0.0101),
            "",
            {"last_scrape": "2026-11-21T10:00:00Z", "last_duration_ms": 11},
        ),
        # A probe that succeeded shows why the index holds snapshots back ...
        (_health("http://n1", health="up"), "hash mismatch", {"last_error": "hash mismatch"}),
        # ... but the probe's own failure comes first.
        (
            _health("http://n1", health="down", last_error="timed out"),
            "hash mismatch",
            {"last_error": "timed out"},
        ),
        # Secrets in the target's URL and in the error are masked.
        (
            _health("http://u:pw@n1/?token=s", last_error="GET http://u:pw@n1/ failed"),
            "",
            {"target": "http://***@n1/?***", "last_error": "GET http://***@n1/ failed"},
        ),
        # A discovered node: its origin and version.
        (
            _health("http://n2", discovered=True, version="2.1.0"),
            "",
            {"source": "discovered", "version": "2.1.0"},
        ),
        (
            _health("http://n3"),
            "",
            {"source": "configured", "kind": "http", "group": "g", "snapshots": 4},
        ),
    ],
)
def test_health_json(health: TargetHealth, mismatch: str, expected: dict[str, object]) -> None:
    out = health_json(health, 4, mismatch)
    assert {k: out.get(k, "absent") for k in expected} == expected
    assert ("version" in out) == bool(health.target.version)


@pytest.mark.parametrize(
    ("at", "now", "wall", "expected"),
    [
        (100.0, 160.0, WHEN.timestamp() + 60, "2026-11-21T10:00:00Z"),  # a minute ago
        (100.0, 100.0, WHEN.timestamp(), "2026-11-21T10:00:00Z"),  # just now
        (100.0, 10_900.0, WHEN.timestamp() + 10_800, "2026-11-21T10:00:00Z"),  # 3 h ago
        # to the second: a rendering a fraction later shows the same time
        (100.0, 160.4, WHEN.timestamp() + 60.4, "2026-11-21T10:00:00Z"),
        (100.0, 160.0, WHEN.timestamp() + 60.6, "2026-11-21T10:00:01Z"),
    ],
)
def test_a_measurement_s_time_is_shown_on_the_wall_clock(
    at: float, now: float, wall: float, expected: str
) -> None:
    assert measured_time(at, now, wall) == expected
