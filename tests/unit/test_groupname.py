"""The one rule of a group's name (tracker.core.cachedirs), and that the config, the
requests and the disk cache all apply it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracker.cache.store import Cache
from tracker.config.schema import Config, TargetGroup
from tracker.config.values import group_name
from tracker.core.cachedirs import group_name_problem, is_group_name
from tracker.errors import RequestError
from tracker.web.queries import known_group

ROWS = [
    ("mainnet", ""),
    ("main-net_1.x", ""),
    ("a" * 128, ""),
    ("a" * 129, "at most 128"),
    ("", "must match"),
    (".", "must not start with '.'"),
    ("..", "must not start with '.'"),
    (".hidden", "must not start with '.'"),
    ("a/b", "must match"),
    ("a b", "must match"),
    ("a\0b", "must match"),
    ("grüppe", "must match"),
]


@pytest.mark.parametrize(("name", "problem"), ROWS)
def test_the_rule(name: str, problem: str) -> None:
    found = group_name_problem(name)
    assert (problem in found) if problem else found == ""
    assert is_group_name(name) == (not problem)


@pytest.mark.parametrize(("name", "problem"), ROWS)
def test_the_config_the_requests_and_the_cache_apply_it(
    tmp_path: Path, name: str, problem: str
) -> None:
    config = Config(target_groups=(TargetGroup(group=name),))
    cache = Cache(str(tmp_path))
    if problem:
        with pytest.raises(ValueError, match="group name"):
            group_name(name)
        with pytest.raises(RequestError) as asked:
            known_group(config, name)
        assert asked.value.status == 400
        with pytest.raises(RequestError) as cached:
            cache.group_dir(name)
        assert cached.value.status == 400
    else:
        assert group_name(name) == name
        assert known_group(config, name) == name
        assert cache.group_dir(name) == str(tmp_path / name)
