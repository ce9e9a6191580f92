"""Config keys of the disk room and the sources' limits: sizes, defaults, errors by key."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_config import load, problem_at, problems

from tracker.config.values import byte_rate, byte_size

GROUP = "target_groups:\n  - group: mainnet\n"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(0, 0), (4096, 4096), ("1GiB", 1024**3), ("512KiB", 512 * 1024), ("50MB/s", 50_000_000)],
)
def test_sizes(raw: object, expected: int) -> None:
    check = byte_rate if isinstance(raw, str) and raw.endswith("/s") else byte_size
    assert check(raw) == expected


@pytest.mark.parametrize("raw", [-1, True, "lots", "1GiB/h", 1.5])
def test_bad_sizes(raw: object) -> None:
    with pytest.raises(ValueError, match=r"size|must be from|expected"):
        byte_size(raw)


def test_min_free_defaults_to_one_gib_and_takes_sizes(tmp_path: Path) -> None:
    assert load(tmp_path, GROUP).proxy_snapshot_cache_min_free == 1024**3
    config = load(tmp_path, GROUP + "proxy_snapshot_cache_min_free: 20GiB\n")
    assert config.proxy_snapshot_cache_min_free == 20 * 1024**3


def test_a_bad_min_free_names_its_key(tmp_path: Path) -> None:
    found = problems(tmp_path, GROUP + "proxy_snapshot_cache_min_free: plenty\n")
    assert "size" in problem_at(found, "proxy_snapshot_cache_min_free")
