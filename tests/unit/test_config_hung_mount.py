"""A ``local_targets`` directory on a hung mount (a stuck NFS or FUSE server) when the config
is loaded: each stat of it blocked, three per load (a 3 s-blocking stat made a load take
9 s), and a mount hung for good held ``check-config``, ``serve``'s start and every reload
queued behind it forever. Each path is looked at once per load, in a thread of its own,
within :data:`~tracker.config.bounded.LOOK_BOUND`: a hung one is a warning naming its key, and
its thread is never doubled by the loads that follow while it hangs.

Every other path a load stats or opens (the cache and spill directories, a targets file, a
secret, a TLS file, the signing key, the config file itself) held the load the same way:
each is read within the bound too, a warning or an error naming its key."""

from __future__ import annotations

import contextlib
import os
import stat
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_config import load
from helpers_statements import keypair_json

import tracker.config.files as files
from tracker.config.bounded import LOOK_BOUND, no_answer, not_ready
from tracker.config.files import PathLooks, Seen, TargetsRead, seen, signing
from tracker.config.loading import load_config
from tracker.config.schema import Attest, Config, LocalTargets, TargetGroup
from tracker.config.sections import local_problems
from tracker.config.warnings import directory_warning, targets_warning
from tracker.errors import ConfigError, ConfigNotReady

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


@contextlib.contextmanager
def hung_mount(monkeypatch: pytest.MonkeyPatch, mount: Path) -> Iterator[list[str]]:
    """Every stat, lstat, access and open of a path under ``mount`` blocks until the block
    ends (or :data:`HELD`): a hung NFS or FUSE mount, without root. Yields the calls held;
    at the end the mount answers and every look's thread is joined."""
    answers = threading.Event()
    asked: list[str] = []

    def hanging(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(str(mount)):
                asked.append(f"{real.__name__} {os.fspath(path)}")
                answers.wait(HELD)
            return real(path, *args, **kwargs)

        return call

    for name in ("stat", "lstat", "access", "open"):
        monkeypatch.setattr(os, name, hanging(getattr(os, name)))
    try:
        yield asked
    finally:
        answers.set()
        monkeypatch.undo()
        for thread in threading.enumerate():  # the looks' threads, reaped
            if thread.name.startswith("config look "):
                thread.join(HELD)


def _files_on(mount: Path) -> None:
    mount.mkdir()
    (mount / "cache").mkdir()
    (mount / "ca.pem").write_text("not read\n")
    (mount / "password").write_text("secret\n")
    (mount / "targets").write_text("127.0.0.1:9\n")
    (mount / "key.json").write_bytes(keypair_json(bytes([7]) * 32))
    os.chmod(mount / "key.json", 0o600)


#: Each path a config names, on the hung mount, and what its load says: an error where
#: the tracker needs what is there now, a warning where a missing one is one too.
HUNG_KEYS = [
    pytest.param(
        "proxy_snapshot_downloads: true\nproxy_snapshot_cache_dir: mount/cache\n",
        "proxy_snapshot_cache_dir: {p}",
        "mount/cache",
        id="cache_dir",
    ),
    pytest.param(
        "prove_accounts_temp_dir: mount/cache\n",
        "prove_accounts_temp_dir: {p}",
        "mount/cache",
        id="spill_dir",
    ),
    pytest.param(
        "target_groups:\n  - {group: g, static_targets: {targets: ['127.0.0.1:9']},"
        " tls_config: {ca_file: mount/ca.pem}}\n",
        "target_groups[0].tls_config.ca_file: {p}",
        "mount/ca.pem",
        id="tls_file",
    ),
    pytest.param(
        "target_groups:\n  - {group: g, static_targets: {targets: ['127.0.0.1:9']},"
        " basic_auth: {username: u, password_file: mount/password}}\n",
        "target_groups[0].basic_auth.password_file: {p}",
        "mount/password",
        id="secret",
    ),
    pytest.param(
        "attest: {key: mount/key.json}\n", "attest.key: {p}", "mount/key.json", id="attest_key"
    ),
    pytest.param(
        "target_groups:\n  - {group: g, file_targets: {path: mount/targets}}\n",
        "warning target_groups[0].file_targets.path: {p}: not checked; re-read every scrape",
        "mount/targets",
        id="targets_file",
    ),
]


@pytest.mark.parametrize(("text", "said", "where"), HUNG_KEYS)
def test_each_path_on_a_hung_mount_costs_the_load_one_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, said: str, where: str
) -> None:
    """Each of these blocked the load for as long as the mount hung (the cache directory's
    lstat, the secret's or the key's open...): it answers within the bound now."""
    _files_on(tmp_path / "mount")
    expected = said.format(p=no_answer(str(tmp_path / where), LOOK_BOUND))
    with hung_mount(monkeypatch, tmp_path / "mount") as asked:
        began = time.monotonic()
        ready = True
        try:
            found = [f"warning {line}" for line in load(tmp_path, text).warnings]
        except ConfigError as exc:
            found = exc.problems
            ready = not isinstance(exc, ConfigNotReady)
        took = time.monotonic() - began
        assert found == [expected]
        # an error is not ready, not wrong: serve exits 75, which the systemd unit retries
        assert ready is said.startswith("warning")
        assert asked  # the mount was asked, and held
        assert took < HELD / 2  # within the bound, not the mount's hang


def test_a_config_file_on_a_hung_mount_is_an_error_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file itself: check-config, serve and every reload waited for its open."""
    mount = tmp_path / "mount"
    mount.mkdir()
    path = mount / "tracker.yml"
    path.write_text("scrape_interval: 15s\n")
    with hung_mount(monkeypatch, mount), pytest.raises(ConfigNotReady) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: the config file did not answer within {LOOK_BOUND:g}s (a hung mount?)"
    ]


def test_tls_files_that_hang_their_load_are_an_error_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ssl module opens a CA file with a blocking open of its own, after the check read
    it: a mount that hangs in between held the load there (held at the executor seam)."""
    from helpers_tls import issue

    ca = issue(tmp_path, "test-ca").cert
    answers = threading.Event()
    real = files.tls_context

    def hanging(*args: Any) -> Any:
        answers.wait(HELD)
        return real(*args)

    monkeypatch.setattr(files, "tls_context", hanging)
    text = f"""
        target_groups:
          - group: g
            static_targets: {{targets: ['127.0.0.1:9']}}
            tls_config: {{ca_file: {ca}}}
        """
    try:
        began = time.monotonic()
        with pytest.raises(ConfigError) as info:
            load(tmp_path, text)
        assert time.monotonic() - began < HELD / 2
    finally:
        answers.set()
    hung = no_answer(str(ca), LOOK_BOUND)
    assert info.value.problems == [
        f"target_groups[0].tls_config.ca_file: does not load as TLS: {hung}"
    ]
    assert isinstance(info.value, ConfigNotReady)  # the machine's, not the file's


def test_the_signing_key_read_again_at_a_reload_answers_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``signing`` reads the key again at start and at each reload (the service's)."""
    mount = tmp_path / "mount"
    _files_on(mount)
    key = str(mount / "key.json")
    began = time.monotonic()
    with hung_mount(monkeypatch, mount), pytest.raises(ConfigNotReady) as info:
        signing(Attest(key=key))
    assert time.monotonic() - began < HELD / 2
    assert info.value.problems == [f"attest.key: {no_answer(key, LOOK_BOUND)}"]


def test_the_cache_directory_s_real_path_is_looked_at_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check of a cache directory holding a ledger took its real path with a plain
    ``realpath``: a cache on a hung mount held it (one that answered its own check a moment
    before included). Not compared now, never waited for."""
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    config = Config(
        proxy_snapshot_cache_dir=str(tmp_path / "mount" / "cache"),
        target_groups=(TargetGroup(group="g", local_targets=LocalTargets(paths=(str(ledger),))),),
    )
    (tmp_path / "mount").mkdir()
    with hung_mount(monkeypatch, tmp_path / "mount") as asked:
        began = time.monotonic()
        assert local_problems(config, PathLooks()) == []
        assert time.monotonic() - began < HELD / 2
        assert asked


@pytest.mark.parametrize(
    ("read", "warned"),
    [
        (TargetsRead(hosts=("127.0.0.1:9",)), []),
        (TargetsRead(error="bad line"), []),  # an error of its own, never a warning
        (TargetsRead(missing=True), ["'/t' does not exist yet (re-read every scrape)"]),
        (
            TargetsRead(hung=True),
            ["'/t' did not answer within 3s (a hung mount?): not checked; re-read every scrape"],
        ),
    ],
)
def test_the_warning_of_each_targets_file_read(read: TargetsRead, warned: list[str]) -> None:
    assert targets_warning("/t", read, 3.0) == warned


def test_a_known_source_a_hung_targets_file_may_list_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _files_on(tmp_path / "mount")
    text = """
        target_groups:
          - group: g
            file_targets: {path: mount/targets}
            trust: {known_sources: ["127.0.0.1:9"]}
        """
    with hung_mount(monkeypatch, tmp_path / "mount"):
        warnings = load(tmp_path, textwrap.dedent(text)).warnings
    assert warnings[1:] == (
        "target_groups[0].trust.known_sources[0]: '127.0.0.1:9' matches no configured target"
        " of the group, so it trusts nothing (unless file_targets.path, which did not answer,"
        " lists it)",
    )


HUNG_LINE = no_answer("/m/cache", 3.0)


@pytest.mark.parametrize(
    ("problems", "unanswered", "expected"),
    [
        ([HUNG_LINE], {HUNG_LINE}, True),
        ([f"does not load as TLS: {HUNG_LINE}"], {HUNG_LINE}, True),  # told inside a line
        ([HUNG_LINE, "unknown key"], {HUNG_LINE}, False),  # a real problem beside it
        (["unknown key"], set(), False),
        ([HUNG_LINE], set(), False),  # said by no look of this load: a problem of the file
        ([], {HUNG_LINE}, False),  # no problem at all
    ],
    ids=["hung", "tls", "beside-a-problem", "problem", "not-looked", "none"],
)
def test_a_load_refused_for_paths_that_did_not_answer_only_is_not_ready(
    problems: list[str], unanswered: set[str], expected: bool
) -> None:
    assert not_ready(problems, unanswered) is expected


def test_a_hung_path_beside_a_real_problem_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retrying cannot fix the typo: exit 2 as before, the hung path's line with it."""
    _files_on(tmp_path / "mount")
    text = "proxy_snapshot_downloads: true\nproxy_snapshot_cache_dir: mount/cache\nscrape: 1\n"
    with hung_mount(monkeypatch, tmp_path / "mount"), pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert not isinstance(info.value, ConfigNotReady)
    assert len(info.value.problems) == 2


def test_check_config_of_a_cache_on_a_hung_mount_exits_75(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cache directory hung (or late) at boot exited 2, which the systemd unit's
    ``RestartPreventExitStatus=2`` never restarts: the fleet had no tracker until someone
    started it again. The machine is not ready, the config is right: 75 (EX_TEMPFAIL),
    retried, with the same line naming the key; 2 stays the config errors'."""
    from tracker.cli import EXIT_NOT_READY, main

    _files_on(tmp_path / "mount")
    path = tmp_path / "tracker.yml"
    path.write_text("proxy_snapshot_downloads: true\nproxy_snapshot_cache_dir: mount/cache\n")
    with hung_mount(monkeypatch, tmp_path / "mount"):
        code = main(["check-config", "--config", str(path)])
    assert code == EXIT_NOT_READY == 75
    hung = no_answer(str(tmp_path / "mount" / "cache"), LOOK_BOUND)
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: not ready, a path it names did not answer:",
        f"  proxy_snapshot_cache_dir: {hung}",
    ]
