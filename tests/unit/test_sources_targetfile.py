"""file_targets files: both formats, comments, and one clear error for a bad entry; what an
unreadable file leaves a group (the list that group last read from that path only)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from tracker.config.schema import BearerAuth, Config, FileTargets, TargetGroup
from tracker.config.targetfile import is_host_port, read_target_file
from tracker.discovery.targetset import TargetFinder, file_hosts_named
from tracker.errors import ProbeError


def write(tmp_path: Path, data: str | bytes) -> str:
    path = tmp_path / "targets"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def test_lines_with_comments_blanks_and_duplicates(tmp_path: Path) -> None:
    text = (
        "\ufeff# fleet\r\n"
        "10.0.0.1:13080\r\n"
        "\n"
        "  node-2.example.org:13080   # the second node\n"
        "[fe80::1%eth0]:13080\n"
        "10.0.0.1:13080\n"
        "   \t\n"
    )
    assert read_target_file(write(tmp_path, text)) == [
        "10.0.0.1:13080",
        "node-2.example.org:13080",
        "[fe80::1%eth0]:13080",
    ]


@pytest.mark.parametrize(
    "text",
    ["[fd00::1]:13080\n10.0.0.3:13080\n", "  [::1]\n10.0.0.3:13080", "[fd00::1]:13080"],
)
def test_a_line_file_whose_first_target_is_ipv6_is_read_as_lines(tmp_path: Path, text: str) -> None:
    """A line file may begin with ``[``: an IPv6 target (the Go tracker reads any file as
    lines). It was read as JSON and refused whole; only ``["`` or ``[]`` is JSON."""
    assert read_target_file(write(tmp_path, text)) == [
        line.strip() for line in text.split("\n") if line.strip()
    ]


def test_json_array_of_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "\n " + json.dumps(["a:1", "[::1]:2", "a:1"]))
    assert read_target_file(path) == ["a:1", "[::1]:2"]


def test_a_target_without_a_port_is_the_schemes_as_in_static_targets(tmp_path: Path) -> None:
    """The Go tracker takes any line of the file as a target, a host alone too (the scheme's
    port); refused, one such line failed the whole file at load."""
    assert read_target_file(write(tmp_path, "sidecar-a.example.org\nb:2\n")) == [
        "sidecar-a.example.org",
        "b:2",
    ]
    assert read_target_file(write(tmp_path, '["[::1]", "c"]')) == ["[::1]", "c"]


def test_empty_file_has_no_targets(tmp_path: Path) -> None:
    assert read_target_file(write(tmp_path, "# nothing yet\n")) == []
    assert read_target_file(write(tmp_path, "[]")) == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("a:1\n\nb:2\nhttp://c:3\n", "line 4: not host or host:port: 'http://c:3'"),
        ("a:1\nb:\n", "line 2: not host or host:port: 'b:'"),
        ('["a:1", 7]', ": [1]: not host or host:port: 7"),
        ('["a:1", "b:0"]', ": [1]: not host or host:port: 'b:0'"),
        # credentials never shown (the daemon logged this line at every scrape)
        ("admin:hunter2@10.0.0.1:8899\n", "line 1: not host or host:port: '***@10.0.0.1:8899'"),
        ('["u:pw@h:1"]', ": [0]: not host or host:port: '***@h:1'"),
        ('["a:1",', ": invalid JSON: Expecting value: line 1 column 8 (char 7)"),
        ("[" * 100_000, ": JSON nested too deeply"),
        (b"a:1\n\xff\n", ": not UTF-8 text (byte 4)"),
    ],
)
def test_bad_entry_fails_the_file_naming_it(tmp_path: Path, data, reason) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ProbeError) as info:
        read_target_file(path)
    assert str(info.value).startswith(path)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_a_fifo_is_refused_at_once_and_a_link_of_the_operator_followed(tmp_path: Path) -> None:
    # Read in the scrape's event loop: a FIFO's plain open would wait for a writer forever.
    os.mkfifo(tmp_path / "fifo")
    errors: list[Exception] = []

    def read() -> None:
        try:
            read_target_file(str(tmp_path / "fifo"))
        except Exception as exc:
            errors.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert errors, "the read of a FIFO blocked"
    assert isinstance(errors[0], ProbeError)
    assert str(errors[0]).endswith(": not a regular file: a FIFO")
    # Kubernetes mounts a ConfigMap's files as links: the operator's own, followed.
    (tmp_path / "link").symlink_to(write(tmp_path, "a:1\n"))
    assert read_target_file(str(tmp_path / "link")) == ["a:1"]


def test_unreadable_or_too_large_file(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match=r"^cannot read .*/missing: No such file or directory$"):
        read_target_file(str(tmp_path / "missing"))
    with pytest.raises(ProbeError, match=r"^cannot read .*: not a regular file: a directory$"):
        read_target_file(str(tmp_path))
    path = write(tmp_path, "a:1\n" * 100)
    with pytest.raises(ProbeError, match=r"larger than 200 bytes$"):
        read_target_file(path, max_bytes=200)
    assert len(read_target_file(path, max_bytes=400)) == 1


@pytest.mark.parametrize(
    "text",
    ["a:1", "10.0.0.1:65535", "node_2.svc.local:8080", "[::1]:80", "[2001:db8::1]:13080"],
)
def test_host_port_accepted(text: str) -> None:
    assert is_host_port(text)


@pytest.mark.parametrize(
    "text",
    [
        "a",
        "a:",
        ":80",
        "a:0",
        "a:65536",
        "a:+80",
        "a: 80",
        "a:\u0668\u0660",  # Arabic-Indic digits
        "::1:80",
        "[::1]",
        "[nothost]:80",
        "a:80:90",
        "-a:80",
        "a b:80",
        "http://a:80",
        "a/b:80",
    ],
)
def test_host_port_refused(text: str) -> None:
    assert not is_host_port(text)


def files(*reads: tuple[str, str], token: str = "") -> Config:
    """A config whose groups read ``file_targets`` as ``reads`` says: ``(group, path)``."""
    auth = BearerAuth(token=token) if token else None
    return Config(
        target_groups=tuple(
            TargetGroup(group=group, bearer_auth=auth, file_targets=FileTargets(path))
            for group, path in reads
        )
    )


KEPT = {("a", "/p"): ["10.0.0.1:8899"], ("b", "/q"): ["10.0.0.2:8899"]}


@pytest.mark.parametrize(
    ("config", "still"),
    [
        (files(("a", "/p"), ("b", "/q")), {("a", "/p"), ("b", "/q")}),  # nothing changed
        (files(("a", "/p"), ("b", "/q"), token="rotated"), {("a", "/p"), ("b", "/q")}),
        (files(("b", "/q")), {("b", "/q")}),  # group a retired
        (files(("c", "/p"), ("b", "/q")), {("b", "/q")}),  # a retired, c reads its path
        (files(("b", "/p"), ("a", "/q")), set()),  # the groups swapped their files
        (files(("a", "/r"), ("b", "/q")), {("b", "/q")}),  # a moved to another path
        (Config(target_groups=(TargetGroup(group="a"), TargetGroup(group="b"))), set()),
        (Config(), set()),
    ],
    ids=["same", "credentials", "retired", "new-group", "swapped", "moved", "no-files", "empty"],
)
def test_a_files_last_list_stays_only_with_the_group_reading_that_path(
    config: Config, still: set[tuple[str, str]]
) -> None:
    assert file_hosts_named(KEPT, config) == {read: KEPT[read] for read in still}


def finder() -> TargetFinder:
    # Files only: no Consul nor cluster client is asked for.
    return TargetFinder(lambda _group: None, lambda *_answered: None)


async def sidecars(found: TargetFinder, config: Config, group: str) -> list[str]:
    return [t.location for t in await found.discover(config) if t.key.group == group]


async def test_an_unreadable_file_keeps_its_groups_last_list(tmp_path: Path) -> None:
    """An operator's typo or a file being replaced must not empty a group: the list the group
    last read from that path stays, credentials rotated or not."""
    file = tmp_path / "targets"
    file.write_text("127.0.0.1:13080\n")
    path = str(file)
    found = finder()
    assert await sidecars(found, files(("a", path)), "a") == ["http://127.0.0.1:13080"]
    file.write_text("not a host port\n")
    assert await sidecars(found, files(("a", path)), "a") == ["http://127.0.0.1:13080"]
    file.unlink()
    rotated = files(("a", path), token="rotated")
    assert await sidecars(found, rotated, "a") == ["http://127.0.0.1:13080"]


async def test_a_new_group_on_a_missing_path_gets_nothing_of_the_old_groups_list(
    tmp_path: Path,
) -> None:
    """A reload retires group a and adds b on a's path, not written yet: b has no sidecar of
    a's, where it probed them with its own token, listed and served them until the file came
    back (docs/configuration.md, ``file_targets.path``)."""
    file = tmp_path / "targets"
    file.write_text("127.0.0.1:13080\n")
    path = str(file)
    found = finder()
    assert await sidecars(found, files(("a", path)), "a") == ["http://127.0.0.1:13080"]
    file.unlink()
    assert await sidecars(found, files(("b", path), token="secret-of-b"), "b") == []
    # Nor does a, back on its path while the file is missing: its list went with the reload.
    assert await sidecars(found, files(("a", path)), "a") == []
    file.write_text("127.0.0.1:13081\n")
    assert await sidecars(found, files(("b", path)), "b") == ["http://127.0.0.1:13081"]


async def test_a_group_moved_away_and_back_gets_nothing_of_its_old_list(tmp_path: Path) -> None:
    """A group moved to path Q, then back to P while P is missing, has no sidecar of what P
    listed before the move: the operator took them away with the move."""
    file = tmp_path / "p"
    file.write_text("127.0.0.1:13080\n")
    p, q = str(file), str(tmp_path / "q")
    found = finder()
    assert await sidecars(found, files(("a", p)), "a") == ["http://127.0.0.1:13080"]
    file.unlink()
    assert await sidecars(found, files(("a", q)), "a") == []
    assert await sidecars(found, files(("a", p)), "a") == []


#: How long the fake hung mount holds a read unless released: far beyond any bound here.
HELD = 30.0


async def test_a_targets_file_on_a_hung_mount_keeps_its_list_and_never_holds_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The scrape read ``file_targets`` on the event loop: a file on a hung mount froze the
    whole daemon (every client, every download's event-loop side) at each round. It is read
    in a thread within ``scrape_timeout``: a round goes on with the group's last list (its
    sidecars are reached over the network, not through the mount), said once; the rounds
    after it start no second thread while the first hangs (the hang is the test's, at the
    read's executor seam, released at the end)."""
    import logging

    import attrs
    import trio

    import tracker.discovery.targetset as targetset

    caplog.set_level(logging.INFO, logger="tracker.scrape")
    file = tmp_path / "targets"
    file.write_text("127.0.0.1:13080\n")
    path = str(file)
    config = attrs.evolve(files(("a", path)), scrape_timeout=0.2)
    found = finder()
    assert await sidecars(found, config, "a") == ["http://127.0.0.1:13080"]
    answers, read = threading.Event(), threading.Event()
    asked: list[str] = []
    real = targetset.read_target_file

    def hung(at: str) -> list[str]:
        asked.append(at)
        answers.wait(HELD)  # the mount hangs
        try:
            return real(at)
        finally:
            read.set()

    monkeypatch.setattr(targetset, "read_target_file", hung)
    try:
        for _round in range(3):
            assert await sidecars(found, config, "a") == ["http://127.0.0.1:13080"]
        assert not read.is_set()  # each round ended while the read still hung
        assert asked == [path]  # one thread, however many rounds ask
        said = [r.getMessage() for r in caplog.records if r.name == "tracker.scrape"]
        assert said == ["file_targets_unanswered"]  # once, not each round
    finally:
        answers.set()
    assert await trio.to_thread.run_sync(read.wait, HELD)
    file.write_text("127.0.0.1:13081\n")
    with trio.fail_after(HELD):  # its thread's end is told to the loop: then read again
        while await sidecars(found, config, "a") != ["http://127.0.0.1:13081"]:
            await trio.sleep(0.01)
    said = [r.getMessage() for r in caplog.records if r.name == "tracker.scrape"]
    assert said == ["file_targets_unanswered", "file_targets_answered"]
