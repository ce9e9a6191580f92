"""A ``local_targets`` directory on a hung mount (a stuck NFS or FUSE server) when the config
is loaded: each stat of it blocked, three per load (a 3 s-blocking stat made a load take
9 s), and a mount hung for good held ``check-config``, ``serve``'s start and every reload
queued behind it forever. Each path is looked at once per load, in a thread of its own,
within :data:`~tracker.config.files.LOOK_BOUND`: a hung one is a warning naming its key, and
its thread is never doubled by the loads that follow while it hangs."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers_config import load

from tracker.config.files import LOOK_BOUND, Seen, seen
from tracker.config.warnings import directory_warning

#: How long the fake mount holds a stat unless released: far beyond any bound here, so a
#: load that returns before it did not wait for the stat.
HELD = 60.0


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        (None, Seen.MISSING),  # nothing there, a link to nothing, no permission to look
        (stat.S_IFDIR | 0o755, Seen.DIRECTORY),
        (stat.S_IFREG | 0o644, Seen.OTHER),
        (stat.S_IFIFO | 0o600, Seen.OTHER),
        (stat.S_IFSOCK | 0o600, Seen.OTHER),
    ],
)
def test_what_a_stat_says_a_path_is(mode: int | None, kind: Seen) -> None:
    assert seen(mode) is kind


@pytest.mark.parametrize(
    ("kind", "warned"),
    [
        (Seen.DIRECTORY, []),
        (Seen.OTHER, []),  # an error of its own (not a directory), never a warning
        (
            Seen.MISSING,
            [
                "'/l' does not exist yet (listed every scrape: its target shows failing until"
                " it appears)"
            ],
        ),
        (
            Seen.HUNG,
            [
                "'/l' did not answer within 3s (a hung mount?): not checked; listed every"
                " scrape, its target shows failing until it answers"
            ],
        ),
    ],
)
def test_the_warning_of_each_answer(kind: Seen, warned: list[str]) -> None:
    assert directory_warning("/l", kind, 3.0) == warned


def test_a_hung_directory_costs_one_bounded_look_and_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = tmp_path / "mount"
    ledger = tmp_path / "ledger"
    for directory in (mount, ledger, tmp_path / "cache"):
        directory.mkdir()
    answers = threading.Event()
    asked: list[str] = []
    real_stat, real_lstat = os.stat, os.lstat

    def hanging(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if os.fspath(path) == str(mount):  # the mount's root: stat and realpath's lstat
                asked.append(real.__name__)
                answers.wait(HELD)
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "stat", hanging(real_stat))
    monkeypatch.setattr(os, "lstat", hanging(real_lstat))
    text = """
        proxy_snapshot_downloads: true
        proxy_snapshot_cache_dir: cache
        target_groups:
          - {group: g, local_targets: {paths: [ledger]}}
          - {group: h, local_targets: {paths: [ledger2, mount]}}
        """
    (tmp_path / "ledger2").mkdir()
    hung = (
        f"target_groups[1].local_targets.paths[1]: '{mount}' did not answer within"
        f" {LOOK_BOUND:g}s (a hung mount?): not checked; listed every scrape, its target"
        " shows failing until it answers"
    )
    try:
        began = time.monotonic()
        config = load(tmp_path, text)
        took = time.monotonic() - began
        assert config.warnings == (hung,)
        # within the bound (the stat is held far longer): the margin is for a slow machine
        assert took < HELD / 2
        assert asked == ["stat"]  # one look per load: the warnings and the cache's check too
        # the next load while it still hangs: answered at once, no second thread
        began = time.monotonic()
        assert load(tmp_path, text).warnings == (hung,)
        took = time.monotonic() - began
        assert asked == ["stat"]
        assert took < LOOK_BOUND
    finally:
        answers.set()
        for thread in threading.enumerate():  # the look's thread, reaped
            if thread.name.startswith("config look "):
                thread.join(HELD)
    # once the mount answers, it is looked at again and is a directory like the others
    assert load(tmp_path, text).warnings == ()
