"""file_targets files: both formats, comments, and one clear error for a bad entry."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from tracker.config.targetfile import is_host_port, read_target_file
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
