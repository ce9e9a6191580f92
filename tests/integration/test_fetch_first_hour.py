"""``snapshot-tracker fetch`` as a new operator meets it: a tracker URL copied with its
``/v1`` is answered with the base URL it meant (exit 2), a server that answers an HTML page
is quoted in a few plain words, and ``--progress bar`` on a terminal that has no size shows
progress lines (tqdm draws nothing there)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import trio
from helpers_bytes import MiB, archive_bytes
from helpers_fileserver import file_server
from helpers_ports import REFUSED
from helpers_proxy import GROUP, advertise, make_config, running_tracker
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name

from tracker.config.schema import TargetGroup
from tracker.net.limits import HTML_REASON, html_reason

FULL = full_name(30_000)


def fetch(*args: str, stderr: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tracker", "fetch", *args]
    return subprocess.run(command, stderr=stderr, stdout=subprocess.PIPE, text=True, timeout=120)


def test_a_tracker_url_with_v1_is_answered_with_the_base_url(tmp_path: Path) -> None:
    for url, base in [
        ("http://127.0.0.1:8458/v1", "http://127.0.0.1:8458"),
        ("http://127.0.0.1:8458/v1/", "http://127.0.0.1:8458"),
        ("http://h:1/tracker/v1/best_snapshots?group=a", "http://h:1/tracker"),
    ]:
        done = fetch("--ledger", str(tmp_path / "ledger"), "--tracker", url)
        assert done.returncode == 2, done.stderr
        [line] = [line for line in done.stderr.splitlines() if "error:" in line]
        assert "base URL" in line and f"did you mean {base}?" in line, line
        assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing asked, nothing written


def test_an_html_error_page_is_quoted_in_a_few_plain_words(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "ledger").mkdir()
    with file_server(tmp_path / "www") as base:
        done = fetch("--ledger", str(tmp_path / "ledger"), "--tracker", base)
    assert done.returncode == 1, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "fetch_failed" in line]
    assert "HTTP 404" in line and "File not found" in line, line
    assert "<" not in line and "DOCTYPE" not in line, line


def test_html_reason_keeps_the_words_and_drops_the_markup() -> None:
    nginx = (
        "<html><head><title>404 Not Found</title><style>b{}</style></head><body><center>"
        "<h1>404 Not Found</h1></center><hr><center>nginx</center></body></html>"
    )
    assert html_reason(nginx) == "404 Not Found nginx"
    assert html_reason("<p>a &amp; b</p><scr") == "a & b"
    assert html_reason("<html><head><title>cut") == ""
    assert len(html_reason("<p>" + "word " * 100)) == HTML_REASON


async def test_progress_bar_on_a_terminal_without_a_size_shows_progress_lines(
    tmp_path: Path,
) -> None:
    data = archive_bytes(6 * MiB, seed=61)
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: Behaviour(rate=2 * MiB)})
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    main, terminal = os.openpty()  # a new pseudo-terminal: 0 columns, 0 rows
    assert os.get_terminal_size(terminal).columns == 0
    config = make_config(None, target_groups=(TargetGroup(group=GROUP),))
    try:
        async with serving(up), running_tracker(config) as t:
            advertise(t.index, up.base, [(FULL, up.url(FULL), len(data))])
            command = [sys.executable, "-m", "tracker", "fetch", "--ledger", str(ledger)]
            command += ["--tracker", t.base, "--incremental=false", "--verify=false"]
            command += ["--min-speed", "0", "--progress", "bar", "--progress-every", "100ms"]
            with trio.fail_after(120):
                done = await trio.run_process(command, stderr=terminal, check=False)
        os.close(terminal)
        shown = b""
        while chunk := _read(main):
            shown += chunk
    finally:
        os.close(main)
    assert done.returncode == 0
    lines = shown.decode(errors="replace").splitlines()
    assert len([line for line in lines if "fetch_progress" in line]) >= 2, lines
    assert any("fetch_done" in line for line in lines), lines


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the terminal's other side is closed and everything was read
        return b""


def test_request_timeout_bounds_the_listing_and_the_sources_answers(tmp_path: Path) -> None:
    # A tracker or a source that takes the connection and never answers held fetch for the
    # 30 s of a body's read whatever --request-timeout said (an ExecStartPre= waited so).
    (tmp_path / "ledger").mkdir()
    with socket.socket() as silent:  # its backlog takes the connection; nothing answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        for flag, reason in (
            ("--tracker", "no answer within 1s"),
            ("--source", "no answer within 1s"),
        ):
            done = fetch("--ledger", str(tmp_path / "ledger"), flag, url, "--request-timeout", "1s")
            assert done.returncode == 1, done.stderr
            [line] = [line for line in done.stderr.splitlines() if "fetch_failed" in line]
            assert reason in line, line


def test_no_snapshot_says_what_each_source_said(tmp_path: Path) -> None:
    # A plain file server as a --source, beside one that refuses the connection: fetch said
    # only "no snapshot is available", naming neither.
    (tmp_path / "www").mkdir()
    (tmp_path / "ledger").mkdir()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}"
        with file_server(tmp_path / "www") as plain:
            done = fetch(
                "--ledger", str(tmp_path / "ledger"), "--source", refused, "--source", plain
            )
    assert done.returncode == 1, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "fetch_failed" in line]
    assert "no snapshot is available: " in line, line
    assert f"{plain}: its aliases lead to no archive" in line, line
    assert refused in line, line


async def test_no_snapshot_at_a_slot_says_what_the_tracker_was_asked(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    config = make_config(None, target_groups=(TargetGroup(group=GROUP),))
    async with running_tracker(config) as t:
        advertise(t.index, f"http://{REFUSED}", [(FULL, f"http://{REFUSED}/{FULL}", 100)])
        command = [sys.executable, "-m", "tracker", "fetch", "--ledger", str(ledger)]
        command += ["--tracker", t.base, "--group", GROUP, "--slot", "999"]
        with trio.fail_after(120):
            done = await trio.run_process(command, capture_stderr=True, check=False)
    assert done.returncode == 1
    [line] = [x for x in done.stderr.decode().splitlines() if "fetch_failed" in x]
    assert f"lists none of group {GROUP} on the full at slot 999" in line, line
