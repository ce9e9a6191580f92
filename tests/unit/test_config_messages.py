"""Config messages that name what they are about: a sidecar shadowing an HTTP target of the
same URL, a reload changing a listener (in force only after a restart), an unusable cache
directory."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from tracker.config.loading import load_config
from tracker.config.schema import Config, ObjectStore
from tracker.config.warnings import RESTART_ONLY, in_force, reload_problems, restart_needed
from tracker.core.cachedirs import unusable_directory


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "tracker.yml"
    path.write_text(text)
    return load_config(path)


def test_a_sidecar_with_the_url_of_an_http_target_is_named_with_it(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "target_groups:\n"
        "  - group: g\n"
        "    static_targets: {targets: ['10.0.0.1:8899', '10.0.0.2:8899']}\n"
        "    http_targets: {targets: ['http://10.0.0.9:8899', 'http://10.0.0.2:8899']}\n",
    )
    [warning] = [w for w in config.warnings if "shadows" in w]
    assert warning == (
        "target_groups[0].static_targets.targets[1]: the sidecar '10.0.0.2:8899' has the URL"
        " of http_targets.targets[1] ('http://10.0.0.2:8899'): one target shadows the other;"
        " keep one of them"
    )


def test_distinct_sidecars_and_http_targets_give_no_warning(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "target_groups:\n"
        "  - group: g\n"
        "    static_targets: {targets: ['10.0.0.1:8899']}\n"
        "    http_targets: {targets: ['http://10.0.0.1:8900']}\n",
    )
    assert not [w for w in config.warnings if "shadows" in w]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, []),
        ({"scrape_interval": 5.0}, []),
        ({"listen": ":9000"}, ["listen: :8458 -> :9000 takes effect at the next restart"]),
        (
            {"internal_listen": ""},
            ["internal_listen: 127.0.0.1:8457 -> (none) takes effect at the next restart"],
        ),
        # The descriptor budget is split once, the bucket's tier built once (a reload was
        # silent on both, and applied the new bucket to the learned state's writes only).
        (
            {"max_connections": 10},
            ["max_connections: 4096 -> 10 takes effect at the next restart"],
        ),
        (
            {"object_store": ObjectStore(endpoint="http://s3:9000", bucket="b")},
            ["object_store: changed; takes effect at the next restart"],
        ),
        # How the disk cache checks its copies is set when it opens: a reload turning
        # verify_archives on said "reloaded" and stored the next archives unchecked.
        (
            {"verify_archives": False},
            ["verify_archives: True -> False takes effect at the next restart"],
        ),
        ({"proof_workers": 3}, ["proof_workers: (none) -> 3 takes effect at the next restart"]),
    ],
)
def test_a_reload_names_what_waits_for_a_restart(
    change: dict[str, object], expected: list[str]
) -> None:
    old = Config()
    new = attrs.evolve(old, **change)
    assert restart_needed(old, new) == expected
    # what the reload applies keeps the values in force, and takes everything else
    applied = in_force(old, attrs.evolve(new, scrape_interval=7.0))
    assert all(getattr(applied, key) == getattr(old, key) for key in RESTART_ONLY)
    assert applied.scrape_interval == 7.0


def test_a_reload_is_refused_where_what_it_puts_in_force_no_start_would_take() -> None:
    store = ObjectStore(endpoint="http://s3:9000", bucket="b")
    old = Config(proxy_snapshot_downloads=True, proxy_snapshot_cache_dir="/c", object_store=store)
    # the bucket waits for a restart; the disk cache it needs goes at once
    off = attrs.evolve(old, proxy_snapshot_downloads=False, object_store=None)
    [problem] = reload_problems(old, off)
    assert problem.startswith("object_store: ")
    assert problem.endswith("(until a restart the config in force keeps its object_store)")
    assert reload_problems(old, attrs.evolve(old, scrape_interval=7.0)) == []
    assert reload_problems(old, attrs.evolve(off, proxy_snapshot_downloads=True)) == []


def test_unusable_directories_say_why(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert unusable_directory(str(tmp_path / "missing" / "cache")) == ""
    assert unusable_directory(str(tmp_path)) == ""
    assert unusable_directory(str(tmp_path / "file")) == f"not a directory: '{tmp_path}/file'"
    assert unusable_directory(str(tmp_path / "file" / "a" / "b")) == (
        f"under a file that is not a directory: '{tmp_path}/file'"
    )
    # a path that can never be created: it was taken for a missing directory (check-config
    # said OK, serve ran uncached)
    long = tmp_path / ("a" * 300) / "cache"
    assert unusable_directory(str(long)) == f"cannot be used: '{long}': File name too long"
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert unusable_directory(str(tmp_path / "loop" / "cache")) == (
        f"cannot be used: '{tmp_path}/loop/cache': Too many levels of symbolic links"
    )


def test_a_cache_dir_without_downloads_is_said_to_be_used_still(tmp_path: Path) -> None:
    # It said "ignored", and the tracker wrote its learned figures there (and would spill
    # the accounts proofs' index there)
    config = load(tmp_path, "proxy_snapshot_cache_dir: cache\n")
    (line,) = [w for w in config.warnings if w.startswith("proxy_snapshot_cache_dir")]
    assert "ignored" not in line and "learned figures" in line and "spill" in line
