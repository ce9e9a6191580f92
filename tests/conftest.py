"""Fixtures of every test, in both layers.

tests/unit holds the tests of pure logic (no network at all: tests/unit/conftest.py), and
tests/integration the tests against real servers and clients on 127.0.0.1. The modules they
share stay here in tests/ (helpers_*.py, fakes.py, names.py, archives.py, ...): pytest puts
this directory on ``sys.path`` for this conftest, so both layers import them by name. Test
module names are unique across the two layers (pytest imports them by their base name).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers_process import RUNNING
from helpers_tls import client_tls

from tracker.observability import folding
from tracker.observability.logs import JsonFormatter, TextFormatter

# Each xdist worker imports every test module, its asserts rewritten by pytest: with
# PYTHONDONTWRITEBYTECODE set (as in many CI images) none of that was kept, so each worker of
# each run rewrote them all again (about 10 s of CPU per worker on two cores). The rewritten
# modules are kept in __pycache__/ (ignored by git), as without that variable.
sys.dont_write_bytecode = False


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that does not follow redirects (tests look at them) and keeps no idle
    connection: this fixture outlives the test's nursery, and a tracker stopped with that
    nursery waits up to 2 s for each idle client to close (a lingering close:
    tracker/zerocopy/README.md, assumption 9)."""
    no_idle = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(
        timeout=10, trust_env=False, limits=no_idle, verify=client_tls()
    ) as c:
        yield c


class _Events(logging.Handler):
    """The log records of one test in the tracker's own text format: its events with their
    fields (pytest's captured log shows an event's name only, so a failure under load said
    ``upstream_failed`` without the reason)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(TextFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


_EVENTS = pytest.StashKey[_Events]()


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory on a memory-backed file system: under /dev/shm, a tmpfs on Linux
    (skipped where there is none), removed after the test."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm here")
    made = Path(tempfile.mkdtemp(prefix="tracker-test-", dir="/dev/shm"))
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(autouse=True)
def _events_with_fields(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keep the test's log records with their fields for its report should it fail."""
    handler = _Events()
    request.node.stash[_EVENTS] = handler
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    yield
    root.removeHandler(handler)
    # A test that ran the command line in this process (``cli.main``: setup_logging) left
    # its handler on the root logger, writing to the stderr of that test (a capture closed
    # since): every warning of a later test in the worker printed a "Logging error"
    # traceback instead, 2,000 of them in one test of failing sends (11 s).
    for left in root.handlers[:]:
        if isinstance(left, logging.StreamHandler) and isinstance(
            left.formatter, (TextFormatter, JsonFormatter)
        ):
            root.removeHandler(left)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _whole_log_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test with the whole budget of the log lines a remote party can multiply (the
    process's, tracker/observability/folding.py): a test that counts ``download`` lines is
    never short of them because the tests before it in this worker spent the window's."""
    monkeypatch.setattr(folding, "FOLDER", folding.LineFolder())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report shows its log records with their fields (:class:`_Events`)
    and the stderr of each ``serve`` subprocess it started."""
    report = yield
    if not report.failed:
        return report
    handler = item.stash.get(_EVENTS, None)
    if handler is not None and handler.lines:
        report.sections.append(("Captured events with their fields", "\n".join(handler.lines)))
    for serve in RUNNING:  # a serve subprocess logs in its own stderr, not in this process
        report.sections.append((f"serve (pid {serve.proc.pid}) stderr", serve.log_tail()))
    return report


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """Kill and reap every ``serve`` subprocess a test started and did not stop, and remove
    the stderr file of each (a failed test's report has shown it by then)."""
    yield
    while RUNNING:
        serve = RUNNING.pop()
        serve.kill()
        serve.discard()


#: The events the tracker logs when it contained what no rule foresaw, each with the marker
#: of the tests that make it on purpose: one connection's handler failed
#: (tracker/zerocopy/server.py), one of its own tasks did (a background loop, a scrape round,
#: a spawned transfer task: docs/architecture.md, "Failures").
CONTAINED = {
    "connection_failed": "expects_connection_failure",
    "task_failed": "expects_task_failure",
}


def contained(event: str, lines: Iterable[str]) -> list[str]:
    """The ``event`` lines of ``lines`` (log lines, text or JSON): the event's name before
    the traceback, whose text may name anything."""
    named = re.compile(rf'(?:^|[ "]){re.escape(event)}(?:[ "]|$)')
    return [
        line
        for line in lines
        if named.search(re.split(r' traceback=|"traceback"', line, maxsplit=1)[0])
    ]


@pytest.fixture(autouse=True)
def _nothing_contained(
    request: pytest.FixtureRequest, _events_with_fields: None, _no_leftover_processes: None
) -> Iterator[None]:
    """Fail a test during which a tracker contained a bug: a connection's handler failed
    (``connection_failed``) or one of its tasks did (``task_failed``), unless the test is
    marked as expecting it (:data:`CONTAINED`). In the field such an error costs that
    connection or that task, not the process: here it is a bug, and must fail the suite as
    it did when it stopped the tracker. Reads the test's own records and the stderr of every
    ``serve`` it started (torn down before the two fixtures that keep them)."""
    yield
    lines = list(request.node.stash[_EVENTS].lines)
    for serve in RUNNING:
        with contextlib.suppress(FileNotFoundError):
            lines += serve.log.splitlines()
    found = [
        line
        for event, marker in CONTAINED.items()
        if request.node.get_closest_marker(marker) is None
        for line in contained(event, lines)
    ]
    assert not found, "the tracker contained a bug:\n" + "\n".join(found)


def _loopback(address: Any) -> bool:
    """True for an address on this machine: 127.0.0.0/8, ::1 (also IPv4-mapped), a unix
    socket path; a host name other than localhost is not (resolving it sends packets)."""
    if not isinstance(address, tuple):
        return True  # AF_UNIX path
    host = str(address[0]).split("%", 1)[0]
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test whose code (in this process) connects a socket off the machine.

    The egress policy is tested by what the tracker refuses to do: a bug there must never
    send a packet to another address, private or public. trio's sockets connect through the
    standard library's ``socket.socket.connect``, so guarding it covers httpx and httpcore.
    """

    def guard(method: Callable[..., Any]) -> Callable[..., Any]:
        def checked(self: socket.socket, *args: Any) -> Any:
            # the address is the last argument of connect, connect_ex, sendto and sendmsg
            # (a connected socket's sendto/sendmsg without one sends where connect allowed)
            address = args[-1] if args else None
            if _names_address(method.__name__, args) and not _loopback(address):
                raise AssertionError(f"a test tried to connect off the machine: {address!r}")
            return method(self, *args)

        return checked

    for name in ("connect", "connect_ex", "sendto", "sendmsg"):
        monkeypatch.setattr(socket.socket, name, guard(getattr(socket.socket, name)))

    def loopback_lookup(name: str) -> Callable[..., Any]:
        real = getattr(socket, name)

        def checked(subject: Any, *args: Any, **kwargs: Any) -> Any:
            address = subject if isinstance(subject, tuple) else (subject, 0)
            if not _loopback(address):
                raise AssertionError(f"a test tried a {name} lookup: {subject!r}")
            return real(subject, *args, **kwargs)

        return checked

    # The old resolver calls may ask a DNS server for any name, or of any address (a reverse
    # lookup): only loopback (the standard library's http.server names its own address)
    for name in ("gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        monkeypatch.setattr(socket, name, loopback_lookup(name))
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        # Resolving a name asks a DNS server off the machine: only localhost and literal
        # addresses (which the system resolves without asking anyone) may be looked up.
        # A numeric-only lookup asks no one either (trio tries one first): it goes through,
        # so that a name the standard library refuses before any lookup (an empty label)
        # fails here as it does in the field.
        flags = kwargs.get("flags", args[4] if len(args) > 4 else 0)
        if flags & socket.AI_NUMERICHOST:
            return real_getaddrinfo(host, *args, **kwargs)
        if isinstance(host, bytes):
            host = host.decode()
        if host is not None and host != "localhost" and not _literal(str(host)):
            raise AssertionError(f"a test tried to resolve a host name: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _names_address(method: str, args: tuple[Any, ...]) -> bool:
    """True when a call of socket ``method`` names an address: connect(address),
    sendto(data, address), sendto(data, flags, address), sendmsg(buffers, ancdata, flags,
    address)."""
    if method == "sendto":
        return len(args) >= 2
    if method == "sendmsg":
        return len(args) >= 4
    return True


def _literal(host: str) -> bool:
    """True for an IP address literal (also in brackets, with a zone, or as an integer)."""
    host = host.strip("[]").split("%", 1)[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.isdigit()  # "2130706433": the resolver reads it as a number, no lookup
    return True
