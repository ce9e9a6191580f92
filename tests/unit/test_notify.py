"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tracker.notify import Notifier, run_watchdog, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket, like systemd's notify socket, and its NOTIFY_SOCKET value."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_messages_arrive_at_a_socket_path(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    assert received(sock) == ["READY=1"]
    assert notifier.status("scraping 3 groups\nsecond line")
    assert received(sock) == ["STATUS=scraping 3 groups second line"]
    assert notifier.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    assert notifier.stopping()
    assert received(sock) == ["STOPPING=1"]


def test_reloading_carries_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier.from_env({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, usec = received(sock)
    assert reloading == "RELOADING=1"
    name, _, value = usec.partition("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_socket_name_with_at_sign() -> None:
    name = f"snapshot-tracker-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready()
        assert received(sock) == ["READY=1"]


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:9"}])
def test_without_a_usable_socket_every_call_is_a_no_op(environ: dict[str, str]) -> None:
    notifier = Notifier.from_env(environ)
    assert not notifier.enabled
    results = [notifier.ready(), notifier.status("x"), notifier.watchdog(), notifier.stopping()]
    assert results == [False] * 4


def test_send_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.WARNING, logger="tracker.notify"):
        assert notifier.ready() is False
    [record] = caplog.records
    assert record.getMessage() == "sd_notify_failed"
    assert "FileNotFoundError" in record.tracker_fields["error"]  # type: ignore[attr-defined]


def test_a_full_socket_does_not_block_the_sender(
    listener: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    # Nobody reads the socket: the queue fills up; sends must then fail at once, not block
    # the loop (a blocking send would wait for ever: the bound is generous on purpose, a
    # loaded host took 11 s for the 2,000 sends and their warnings).
    _, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tracker.notify"):
        results = [notifier.status("x" * 1000) for _ in range(2000)]
    assert time.monotonic() - started < 60
    assert results[0] is True
    assert results[-1] is False
    assert caplog.records[-1].getMessage() == "sd_notify_failed"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "1" + "0" * 400}, None),  # was an OverflowError: serve ended
        ({"WATCHDOG_USEC": str(2**64)}, None),  # past systemd's u64
        ({"WATCHDOG_USEC": " 30000000"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ) == expected


async def test_run_watchdog_pings_at_the_interval(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with receiver:
        await receiver.bind(path)
        interval = watchdog_interval({"WATCHDOG_USEC": "200000"})
        assert interval == 0.1
        notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                started = trio.current_time()
                await nursery.start(run_watchdog, notifier, interval)
                # started() comes after the first ping, so it is already queued.
                assert await receiver.recv(4096) == b"WATCHDOG=1"
                for _ in range(3):
                    assert await receiver.recv(4096) == b"WATCHDOG=1"
                elapsed = trio.current_time() - started
                nursery.cancel_scope.cancel()
    # Ping k goes out after k sleeps of the interval: never sooner (the bound above is the
    # fail_after; a loaded host may be late by seconds).
    assert 3 * interval <= elapsed
