"""Which sources a speed test reads (tracker/measuring/speedtests.py), as a table; and its
config."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from names import full_name, incremental_name

from tracker.config.loading import load_config
from tracker.config.schema import Config
from tracker.core.snapshots import SnapshotFile, SnapshotInfo, info_from_files, parse_archive_name
from tracker.errors import ConfigError
from tracker.measuring.speedtests import probes_due
from tracker.ordering.index import SnapshotSource, TargetKey

MiB = 1024 * 1024
WHEN = datetime(2024, 1, 1, tzinfo=UTC)


def src(
    target: str, *, slot: int = 100, size: int = 100 * MiB, local: bool = False
) -> SnapshotSource:
    """A full archive of ``slot`` offered by ``target`` (over HTTP, or as a local file)."""
    name = full_name(slot)
    parsed = parse_archive_name(name)
    assert parsed is not None
    url = "" if local else f"http://{target}/{name}"
    f = SnapshotFile(parsed, name, size, url=url, path=f"/srv/{name}" if local else "")
    return SnapshotSource(info_from_files([f]), TargetKey("g", target), WHEN)


def incremental(target: str) -> SnapshotSource:
    name = incremental_name(100, 150)
    parsed = parse_archive_name(name)
    assert parsed is not None
    f = SnapshotFile(parsed, name, MiB, url=f"http://{target}/{name}")
    return SnapshotSource(info_from_files([f]), TargetKey("g", target), WHEN)


A, B, C = src("a"), src("b"), src("c")
NOW = 10_000.0

CASES = [
    # (fulls best first, top, last probe/measurement per target, expected (target, length))
    pytest.param([A, B, C], 5, {}, [("a", MiB), ("b", MiB), ("c", MiB)], id="all-new"),
    pytest.param([A, B, C], 2, {}, [("a", MiB), ("b", MiB)], id="top-2"),
    pytest.param([A, B, C], 0, {}, [], id="top-0-off"),
    pytest.param([A, B], 5, {"a": NOW - 599}, [("b", MiB)], id="a-recent"),
    pytest.param([A, B], 5, {"a": NOW - 600}, [("a", MiB), ("b", MiB)], id="a-due-again"),
    # a recently measured leader still counts towards top: c is not among the leading two
    pytest.param([A, B, C], 2, {"a": NOW - 1}, [("b", MiB)], id="measured-counts-in-top"),
    pytest.param([A, src("a", slot=90), B], 2, {}, [("a", MiB), ("b", MiB)], id="distinct"),
    pytest.param([src("l", local=True), A], 1, {}, [("a", MiB)], id="local-skipped"),
    pytest.param([src("s", size=1000)], 5, {}, [("s", 1000)], id="small-archive"),
    pytest.param([src("u", size=0)], 5, {}, [("u", MiB)], id="size-unknown"),
    pytest.param([incremental("i"), A], 5, {}, [("a", MiB)], id="fulls-only"),
]


@pytest.mark.parametrize(("fulls", "top", "last", "expected"), CASES)
def test_probes_due(
    fulls: list[SnapshotSource],
    top: int,
    last: dict[str, float],
    expected: list[tuple[str, int]],
) -> None:
    keys = {TargetKey("g", target): at for target, at in last.items()}
    due = probes_due(fulls, top=top, length=MiB, interval=600, last=keys, now=NOW)
    assert [(p.key.target, p.length) for p in due] == expected
    for p in due:
        assert p.range_header == f"bytes=0-{p.length - 1}"
        assert p.file.name.is_full and p.file.url.startswith("http://")


def _load(tmp_path: Path, ranking: str) -> Config:
    path = tmp_path / "tracker.yml"
    text = f"""\
    target_groups:
      - group: mainnet
        http_targets: {{targets: ["http://127.0.0.1:1"]}}
        ranking:
    {textwrap.indent(textwrap.dedent(ranking), "      ")}
    """
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def test_speed_test_defaults_and_units(tmp_path: Path) -> None:
    path = tmp_path / "tracker.yml"
    path.write_text("target_groups: [{group: mainnet}]\n")
    assert load_config(path).target_groups[0].ranking is None  # by slot: no speed tests
    path.write_text("target_groups: [{group: mainnet, ranking: {}}]\n")
    ranking = load_config(path).target_groups[0].ranking
    assert ranking is not None
    default = ranking.speed_test
    assert (default.bytes, default.top, default.interval) == (16 * MiB, 5, 600.0)
    config = _load(tmp_path, "speed_test: {bytes: 4MiB, top: 2, interval: 1m}")
    ranking = config.target_groups[0].ranking
    assert ranking is not None
    test = ranking.speed_test
    assert (test.bytes, test.top, test.interval) == (4 * MiB, 2, 60.0)


@pytest.mark.parametrize(
    ("ranking", "key"),
    [
        ("speed_test: {bytes: 2GiB}", "bytes"),
        ("speed_test: {bytes: lots}", "bytes"),
        ("speed_test: {top: -1}", "top"),
        ("speed_test: {interval: 1s}", "interval"),
        ("speed_test: {speed: 1}", "speed"),
    ],
)
def test_a_bad_speed_test_names_its_key(tmp_path: Path, ranking: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, ranking)
    [line] = info.value.problems
    assert line.startswith(f"target_groups[0].ranking.speed_test.{key}"), line


def speed_tests(monkeypatch: pytest.MonkeyPatch, measured: Any) -> tuple[Any, Any]:
    """Speed tests of one group ranked by time (five a round, every ten minutes) over an
    index on a still clock, each test's read answered by ``measured``."""
    import tracker.measuring.rangereads as rangereads
    from tracker.config.schema import Ranking, SpeedTest, TargetGroup
    from tracker.ordering.index import Index

    monkeypatch.setattr(rangereads, "speed_test", measured)
    group = TargetGroup(group="g", ranking=Ranking(speed_test=SpeedTest(top=5, interval=600)))
    config = Config(target_groups=(group,))
    index = Index(clock=lambda: 0.0)
    tests = rangereads.SpeedTests(lambda: config, index, clients=None)  # type: ignore[arg-type]
    return tests, index


def node_full(n: int) -> tuple[TargetKey, SnapshotInfo]:
    """Node ``n``'s target and its full at slot 100."""
    name = full_name(100)
    parsed = parse_archive_name(name)
    assert parsed is not None
    file = SnapshotFile(parsed, name, size=100, url=f"http://node{n}/{name}")
    return TargetKey("g", f"http://node{n}"), info_from_files([file])


async def test_a_source_gone_is_forgotten_by_the_speed_tests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # When each target was last probed was kept for every target ever seen (discovered
    # nodes come and go: one entry each, for good, copied every second).
    async def measured(*_args: object, **_kwargs: object) -> tuple[int, float]:
        return 16 * 1024 * 1024, 0.5

    tests, index = speed_tests(monkeypatch, measured)
    for n in range(50):
        key, info = node_full(n)
        index.apply(key, [info], datetime(2026, 11, 28, tzinfo=UTC))
        assert await tests.round() == 1
        index.drop(key)
    await tests.round()
    assert tests._probed == {}


async def test_a_test_failing_as_no_rule_foresaw_costs_that_source_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A source whose test raised what no rule names ended the round; restarted, the loop
    # met it first again, and the sources after it were never measured.
    async def measured(_clients: object, _group: object, probe: Any, *_args: object) -> Any:
        if probe.key.target == "http://node0":
            raise ValueError("unforeseen")
        return 16 * 1024 * 1024, 0.5

    tests, index = speed_tests(monkeypatch, measured)
    for n in range(3):
        key, info = node_full(n)
        index.apply(key, [info], datetime(2026, 11, 28, tzinfo=UTC))
    assert await tests.round() == 2
    assert set(tests._probed) == {TargetKey("g", f"http://node{n}") for n in range(3)}
