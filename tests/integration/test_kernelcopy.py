"""The blocking zero-copy loops (tracker/zerocopy/kernelcopy.py) over real loopback sockets."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tracker.errors import SourceFailed
from tracker.zerocopy.kernelcopy import SocketSplice, send_file, splice_to_file

MiB = 1024 * 1024


def splice_sockets(src: int, out: int, count: int, read_timeout: float) -> None:
    """Blocking: move the next ``count`` bytes of socket ``src`` to socket ``out`` through
    a SocketSplice, one second's wait at a time (both sockets non-blocking)."""
    splice = SocketSplice(count)
    try:
        while splice.move(src, out, 1.0) is not None:
            splice.check(read_timeout)
    finally:
        splice.close()


@contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two connected TCP sockets on 127.0.0.1 (sender, receiver)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.socket()
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sender.connect(server.getsockname())
        receiver, _ = server.accept()
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    with sender, receiver:
        yield sender, receiver


def test_a_slow_client_costs_no_cpu_while_the_pipe_is_full() -> None:
    """The upstream sends in small segments (a pipe holds 256 segments, however small, so
    it fills long before 1 MiB) and the client takes nothing for a while: the splicing
    thread must wait for the client, not spin on an upstream that is always readable."""
    data = os.urandom(6 * MiB)
    pause = 1.0
    # The upstream: a Unix stream socket, whose small writes stay separate segments (TCP on
    # loopback may merge them, as it did not for the pieces of a file nginx sent).
    up_tx, up_rx = socket.socketpair()
    with up_tx, up_rx, tcp_pair() as (out_tx, out_rx):
        up_rx.setblocking(False)
        out_tx.setblocking(False)
        # Small client buffers: the client's side is full within the first megabyte.
        out_tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)

        def upstream() -> None:
            view = memoryview(data)
            while view:
                sent = up_tx.send(view[:1400])  # one small segment per send
                view = view[sent:]

        cpu: list[float] = []
        errors: list[BaseException] = []

        def splicer() -> None:
            try:
                splice_sockets(up_rx.fileno(), out_tx.fileno(), len(data), read_timeout=30)
            except BaseException as exc:  # reported below
                errors.append(exc)
            cpu.append(time.thread_time())

        threads = [threading.Thread(target=f, daemon=True) for f in (upstream, splicer)]
        for thread in threads:
            thread.start()
        time.sleep(pause)  # the client takes nothing meanwhile
        received = bytearray()
        out_rx.settimeout(30)
        while len(received) < len(data):
            chunk = out_rx.recv(MiB)
            assert chunk, "the splice ended early"
            received += chunk
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    # Spinning, the thread burns about the whole pause; waiting, a few milliseconds.
    assert cpu[0] < pause / 4, f"splicing thread used {cpu[0]:.2f} s of CPU"


def test_splice_to_file_writes_at_the_offset_and_reports_what_it_moved(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 123)
    path = tmp_path / "file"
    path.write_bytes(b"\0" * (len(data) + 10))
    with tcp_pair() as (tx, rx), open(path, "r+b") as f:
        rx.setblocking(False)
        sender = threading.Thread(target=tx.sendall, args=(data,), daemon=True)
        sender.start()
        moved = 0
        while moved < len(data):  # as the fetch calls it: a bounded time per call
            moved += splice_to_file(rx.fileno(), f.fileno(), 10 + moved, len(data) - moved, 5, 0.01)
        sender.join(10)
    assert path.read_bytes() == b"\0" * 10 + data


def test_splice_to_file_fails_on_a_closed_or_silent_source(tmp_path: Path) -> None:
    with tcp_pair() as (tx, rx), open(tmp_path / "file", "wb") as f:
        rx.setblocking(False)
        tx.sendall(b"x" * 1000)
        tx.shutdown(socket.SHUT_WR)
        # What arrived before the end is on disk and counted first; the next call fails.
        assert splice_to_file(rx.fileno(), f.fileno(), 0, 2000, 5, 10) == 1000
        with pytest.raises(SourceFailed, match="closed the connection mid-body"):
            splice_to_file(rx.fileno(), f.fileno(), 1000, 1000, 5, 10)
    with tcp_pair() as (tx, rx), open(tmp_path / "file", "wb") as f:
        rx.setblocking(False)
        started = time.monotonic()
        with pytest.raises(SourceFailed, match="sent nothing"):
            splice_to_file(rx.fileno(), f.fileno(), 0, 2000, 0.5, 10)
        assert time.monotonic() - started < 15  # not the 30 s read timeout


def test_splice_to_file_returns_what_arrived_while_the_source_pauses(tmp_path: Path) -> None:
    # A refresh accounts its progress between calls: readers of the growing file must see
    # the bytes that arrived before the source paused, not wait for the pause to end.
    with tcp_pair() as (tx, rx), open(tmp_path / "file", "wb") as f:
        rx.setblocking(False)
        tx.sendall(b"y" * 5000)
        started = time.monotonic()
        assert splice_to_file(rx.fileno(), f.fileno(), 0, 10_000, 30, 0.2) == 5000
        assert time.monotonic() - started < 15  # not the 30 s timeout
        # Nothing more comes: the call still returns (the caller may have been cancelled:
        # a stopping service waits for this thread), and the caller keeps the silence.
        started = time.monotonic()
        assert splice_to_file(rx.fileno(), f.fileno(), 5000, 5000, 30, 0.2) == 0
        assert time.monotonic() - started < 15
    assert (tmp_path / "file").read_bytes() == b"y" * 5000


@pytest.mark.parametrize(("crowded", "mark"), [(False, 16 * 1024), (True, -1)])
def test_the_low_water_mark_follows_the_crowd(tmp_path: Path, crowded: bool, mark: int) -> None:
    """A file sent alone keeps trio's 16 KiB ``TCP_NOTSENT_LOWAT`` (the socket stays full);
    sent while others are, none (fewer wake-ups of the threads sharing the CPU)."""
    path = tmp_path / "file"
    path.write_bytes(os.urandom(256 * 1024))
    with tcp_pair() as (tx, rx), open(path, "rb") as f:
        tx.setblocking(False)
        reader = threading.Thread(
            target=lambda: rx.recv(256 * 1024, socket.MSG_WAITALL), daemon=True
        )
        reader.start()
        send_file(tx.fileno(), f.fileno(), 0, 256 * 1024, crowded=crowded)
        reader.join(10)
        assert tx.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == mark


@pytest.mark.parametrize("fallback", [False, True])
def test_a_client_that_leaves_mid_call_gets_its_bytes_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallback: bool
) -> None:
    """A client that took 1 MiB and reset its connection while a call was sending: the call
    returns what went (the download's log line counts it), and the next call raises the
    client's failure. Before, the call raised and its bytes were lost to the count. The same
    holds where the file system cannot sendfile (pread and write instead)."""
    if fallback:

        def no_sendfile(*args: object) -> int:
            raise OSError(errno.EINVAL, "sendfile not supported here")

        monkeypatch.setattr(os, "sendfile", no_sendfile)
    path = tmp_path / "file"
    path.write_bytes(os.urandom(16 * MiB))
    with tcp_pair() as (tx, rx), open(path, "rb") as f:
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        tx.setblocking(False)
        taken = bytearray()

        def take_then_reset() -> None:
            while len(taken) < MiB:
                taken.extend(rx.recv(MiB - len(taken)))
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            rx.close()  # unread bytes: a reset

        reader = threading.Thread(target=take_then_reset, daemon=True)
        reader.start()
        sent = send_file(tx.fileno(), f.fileno(), 0, 16 * MiB)
        reader.join(10)
        assert MiB <= sent < 16 * MiB
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            send_file(tx.fileno(), f.fileno(), sent, 16 * MiB - sent)
