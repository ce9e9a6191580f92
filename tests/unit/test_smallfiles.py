"""The one bounded reader and the one atomic writer of small files (tracker/core/smallfiles.py):
what lies under the name is hostile (a link, a FIFO, a directory, a device, a huge file)."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tracker.core import smallfiles
from tracker.core.smallfiles import read_small, read_small_file, write_atomically

LIMIT = 64


def _link_to_secret(path: Path) -> None:
    secret = path.parent / "secret"
    secret.write_bytes(b"not yours")
    path.symlink_to(secret)


def _dangling_link(path: Path) -> None:
    path.symlink_to(path.parent / "nothing")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _oversize(path: Path) -> None:
    path.write_bytes(b"x" * (LIMIT + 1))


def _socket(path: Path) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


REFUSED: list[tuple[str, Callable[[Path], None], int, str]] = [
    ("a link to a file", _link_to_secret, errno.ELOOP, "symbolic link"),
    ("a dangling link", _dangling_link, errno.ELOOP, "symbolic link"),
    ("a FIFO", _fifo, errno.EINVAL, "a FIFO"),
    ("a directory", _directory, errno.EINVAL, "a directory"),
    ("a socket (open refuses it)", _socket, errno.ENXIO, "No such device"),
    ("a file over the bound", _oversize, errno.EFBIG, f"more than {LIMIT}"),
]


@pytest.mark.parametrize(("what", "plant", "code", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_reader_refuses_what_is_not_a_small_regular_file_without_blocking(
    tmp_path: Path, what: str, plant: Callable[[Path], None], code: int, words: str
) -> None:
    path = tmp_path / "state.json"
    plant(path)
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            outcome.append(read_small(str(path), LIMIT))
        except BaseException as exc:
            outcome.append(exc)

    # A FIFO's plain open() blocks until a writer comes: the read must return on its own.
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert outcome, f"the read of {what} blocked"
    error = outcome[0]
    assert isinstance(error, OSError), error
    assert error.errno == code
    assert words in str(error) and "\n" not in str(error)


def test_a_loop_of_links_the_operator_named_is_said_as_such(tmp_path: Path) -> None:
    # A path the operator names (--config, file_targets) is followed: ELOOP is then a loop,
    # which read "a symbolic link, not followed" (as for a file the tracker keeps).
    loop = tmp_path / "config.yml"
    loop.symlink_to(loop)
    with pytest.raises(OSError, match="symbolic links in a loop") as caught:
        read_small(str(loop), LIMIT, follow=True)
    assert caught.value.errno == errno.ELOOP
    with pytest.raises(OSError, match="a symbolic link, not followed"):
        read_small(str(loop), LIMIT)


def test_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="a character device"):
        read_small("/dev/zero", LIMIT)


def test_the_reader_reads_a_small_regular_file_and_its_status(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * LIMIT)  # exactly the bound: read
    data, info = read_small_file(str(path), LIMIT)
    assert data == b"x" * LIMIT and info.st_ino == path.stat().st_ino
    with pytest.raises(FileNotFoundError):
        read_small(str(tmp_path / "missing"), LIMIT)


def test_the_writer_replaces_the_file_whole_with_the_mode_given(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        write_atomically(str(path), b"new", mode=0o644, mtime_ns=1_000_000_000)
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.stat().st_mtime_ns == 1_000_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp left


def test_a_link_at_the_path_is_replaced_never_written_through(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    _link_to_secret(path)
    write_atomically(str(path), b"new")
    assert (tmp_path / "secret").read_bytes() == b"not yours"
    assert not path.is_symlink() and path.read_bytes() == b"new"


def test_a_link_planted_at_the_temp_name_is_removed_never_followed(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"not yours")
    (tmp_path / "state.json.new").symlink_to(tmp_path / "secret")
    write_atomically(str(tmp_path / "state.json"), b"new", temp_name="state.json.new")
    assert (tmp_path / "secret").read_bytes() == b"not yours"
    assert (tmp_path / "state.json").read_bytes() == b"new"
    assert not (tmp_path / "state.json.new").exists()


def test_a_write_that_fails_midway_is_never_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    real_write = os.write
    calls = []

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])  # a short write first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(smallfiles.os, "write", half_then_full)
    with pytest.raises(OSError, match="No space"):
        write_atomically(str(path), b"0123456789")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert calls == [10, 5]  # the short write was continued, not taken for the whole


def test_a_failed_write_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``write(2)`` names no file: a full disk's error said "No space left on device" and not
    which file (a fetch's state, in its one error line)."""
    path = tmp_path / "state.json"

    def full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(smallfiles.os, "write", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        write_atomically(str(path), b"0123456789")
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(path)
    assert str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_at_the_path_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomically(str(tmp_path / "state.json"), b"new")
    assert (tmp_path / "state.json").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_temp_name_must_be_a_name() -> None:
    with pytest.raises(ValueError, match="not a path"):
        write_atomically("/tmp/x", b"", temp_name="../y")


@pytest.mark.parametrize("name", ["k" * 245, "k" * 255, "é" * 127])
def test_a_name_as_long_as_a_file_may_have_is_written(tmp_path: Path, name: str) -> None:
    """The temp file beside it is ``.tmp-{name}.{random}``: for a name of 242 to 255 bytes
    that was longer than any file name (``keygen --out`` of such a name: "File name too
    long"). The name is cut in the temp file's name, not in the file's."""
    path = tmp_path / name
    write_atomically(str(path), b"key")
    assert path.read_bytes() == b"key"
    assert [p.name for p in tmp_path.iterdir()] == [name]
