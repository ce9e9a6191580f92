"""The ``ranking`` section: its defaults, its forms and a clear error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracker.config.loading import load_config
from tracker.config.schema import Ranking, SpeedTest
from tracker.errors import ConfigError


def load(tmp_path: Path, ranking: str) -> Ranking | None:
    path = tmp_path / "tracker.yml"
    path.write_text(f"target_groups:\n  - group: g\n{ranking}")
    return load_config(str(path)).target_groups[0].ranking


def test_without_the_section_the_group_ranks_by_slot(tmp_path: Path) -> None:
    assert load(tmp_path, "") is None


def test_the_documented_example(tmp_path: Path) -> None:
    ranking = load(
        tmp_path,
        "    ranking: {replay_slots_per_second: 30, slot_seconds: 0.4,"
        " assumed_throughput: 50MB/s, speed_test: {bytes: 16MiB, top: 5, interval: 10m},"
        " switch_margin: 10%}\n",
    )
    assert ranking == Ranking(
        by="time_to_running",
        replay_slots_per_second=30,
        assumed_throughput=50e6,
        speed_test=SpeedTest(bytes=16 * 2**20, top=5, interval=600),
        switch_margin=0.1,
    )
    assert load(tmp_path, "    ranking: {by: slot, switch_margin: 0.25}\n") == Ranking(
        by="slot", switch_margin=0.25
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{by: fastest}", "ranking.by: must be one of time_to_running, slot, got 'fastest'"),
        ("{switch_margin: 150%}", "ranking.switch_margin: must be from 0% to below 100%"),
        ("{assumed_throughput: 50MB}", "ranking.assumed_throughput: expected a speed like"),
        ("{replay_slots_per_second: 0}", "ranking.replay_slots_per_second: must be above 0"),
        ("{speed_test: {bytes: 0}}", "ranking.speed_test.bytes: "),
        ("{speed_test: {top: 101}}", "ranking.speed_test.top: "),
        ("{fastest: true}", "ranking.fastest"),
    ],
)
def test_a_bad_value_names_its_key(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, f"    ranking: {value}\n")
    assert f"target_groups[0].{message}" in str(raised.value)
