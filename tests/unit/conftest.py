"""The unit layer: pure logic, no network at all.

Every test here must pass in a network namespace with no interface up (``unshare -n``, as
.ci/run runs this layer). So that a test that needs the network fails loudly here even on a
machine that has one, an IP socket (IPv4 or IPv6) may not connect, bind or send: not even to
loopback. Unix sockets and socket pairs stay allowed; a little I/O goes through trio's memory
streams or ``httpx.MockTransport``. A test that needs a real server belongs in
tests/integration.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any IPv4 or IPv6 connect, bind or send of this process (httpx, httpcore and trio
    all reach the standard library's socket methods)."""

    def guard(name: str) -> Callable[..., Any]:
        method = getattr(socket.socket, name)

        def checked(self: socket.socket, *args: Any) -> Any:
            if self.family in IP_FAMILIES:
                raise AssertionError(
                    f"a unit test tried to use the network ({name} {args[-1]!r}): "
                    "it belongs in tests/integration"
                )
            return method(self, *args)

        return checked

    for name in ("connect", "connect_ex", "bind", "sendto", "sendmsg"):
        monkeypatch.setattr(socket.socket, name, guard(name))


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """SIGINT as a terminal starts a command (a suite started in the background may pass
    it on ignored), for a test that sends it to the command line in this process."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def no_scan_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accounts proof's first read in its own process whatever this machine's cores (a
    host of many cores scans in processes: ``budget.scan_processes``), for the tests of
    the ways it has without them."""
    from tracker.proof.accounts import accountsproof

    monkeypatch.setattr(accountsproof, "scan_processes", lambda limits: 0)


@pytest.fixture(scope="module", params=["inline", "one lane", "three lanes"])
def bookkeeping_both_ways(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a module's tests of the accounts proof with the first read's scan and bookkeeping
    in the reading thread, in one scan lane and in three (``accountsproof.scan_lanes``:
    lanes from three cores), whatever this machine's cores: never in scan processes, which
    a host of many cores would use (``budget.scan_processes``; tests/unit/test_scanprocs.py
    holds them to the same outcomes). Opted into with ``pytestmark``; module-wide, so that
    hypothesis's examples share it. A test of such a module that never reaches the scan
    (its own lanes given, no first read) is marked ``one_bookkeeping`` and runs inline only:
    the three ways would be one (:func:`_bookkeeping_reached` holds the marks true)."""
    from tracker.proof.accounts import accountsproof

    lanes = {"inline": 0, "one lane": 1, "three lanes": 3}[request.param]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(accountsproof, "scan_lanes", lambda limits: lanes)
        patch.setattr(accountsproof, "scan_processes", lambda limits: 0)
        yield str(request.param)


@pytest.hookimpl(tryfirst=True)  # before the fixture's own params are applied
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``one_bookkeeping`` runs with the inline bookkeeping only."""
    if "bookkeeping_both_ways" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "one_bookkeeping"
    ):
        # as a mark: the fixture's own params then give way to it (pytest's rule)
        only = pytest.mark.parametrize(
            "bookkeeping_both_ways", ["inline"], indirect=True, scope="module"
        )
        metafunc.definition.add_marker(only)


@pytest.fixture(autouse=True)
def _bookkeeping_reached(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test run the three ways of :func:`bookkeeping_both_ways` must reach the scan the
    three ways differ in (``accountsproof.scan_lanes`` asked): one that never does is three
    runs of one test, and must be marked ``one_bookkeeping``."""
    if "bookkeeping_both_ways" not in request.fixturenames or request.node.get_closest_marker(
        "one_bookkeeping"
    ):
        yield
        return
    from tracker.proof.accounts import accountsproof

    request.getfixturevalue("bookkeeping_both_ways")  # its lanes patched in first
    chosen = accountsproof.scan_lanes
    asked: list[None] = []

    def counted(limits: object) -> int:
        asked.append(None)
        return chosen(limits)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(accountsproof, "scan_lanes", counted)
        yield
    if not asked:
        pytest.fail(
            f"{request.node.name} runs three ways but never reaches the first read's scan:"
            " mark it one_bookkeeping"
        )
