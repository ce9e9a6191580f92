"""Which passed socket is which listener, without a socket: systemd's LISTEN_FDS, LISTEN_PID
and LISTEN_FDNAMES read into roles, and what is refused (sockets bound, served and passed by
systemd: tests/integration/test_listeners.py)."""

from __future__ import annotations

import os
import socket

import pytest

from tracker.errors import ConfigError
from tracker.web.listeners import assign_roles, listen_fds, socket_address


@pytest.mark.parametrize(
    ("count", "names", "expected"),
    [
        (0, [], {}),
        (1, ["public"], {"public": 0}),
        (2, ["internal", "public"], {"internal": 0, "public": 1}),
        (1, [], {"public": 0}),
        (2, [], {"public": 0, "internal": 1}),
        (2, ["unknown", "unknown"], {"public": 0, "internal": 1}),
        # A named socket keeps its role; an unnamed one takes the role still free.
        (2, ["snapshot-tracker.socket", "public"], {"public": 1, "internal": 0}),
        (1, ["internal"], {"internal": 0}),
    ],
)
def test_assign_roles(count: int, names: list[str], expected: dict[str, int]) -> None:
    assert assign_roles(count, names) == expected


@pytest.mark.parametrize(
    ("count", "names", "message"),
    [
        (3, [], "3 sockets passed"),
        (2, ["public", "public"], "more than one socket named 'public'"),
    ],
)
def test_assign_roles_refuses_what_it_cannot_use(
    count: int, names: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        assign_roles(count, names)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"LISTEN_FDS": "1"},  # no LISTEN_PID: not for us
        {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "public"},  # another process
    ],
)
def test_listen_fds_ignores_sockets_meant_for_another_process(environ: dict[str, str]) -> None:
    assert listen_fds(environ) == {}


def test_listen_fds_refuses_a_malformed_count() -> None:
    with pytest.raises(ConfigError, match="LISTEN_FDS"):
        listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "two"})


LO = socket.if_nametoindex("lo")  # every network namespace has it, even one with none up


@pytest.mark.parametrize(
    ("family", "host", "address"),
    [
        (socket.AF_INET, "127.0.0.1", ("127.0.0.1", 8461)),
        (socket.AF_INET6, "::1", ("::1", 8461, 0, 0)),
        (socket.AF_INET6, "::", ("::", 8461, 0, 0)),
        # the zone id is the interface's index: (host, port) would bind scope id 0 (EINVAL)
        (socket.AF_INET6, "fe80::1%lo", ("fe80::1", 8461, 0, LO)),
        (socket.AF_INET6, f"fe80::1%{LO}", ("fe80::1", 8461, 0, LO)),
    ],
)
def test_a_bind_address_carries_the_zone_as_its_scope_id(
    family: socket.AddressFamily, host: str, address: tuple[object, ...]
) -> None:
    assert socket_address(family, host, 8461) == address


def test_a_zone_that_names_no_interface_is_an_oserror() -> None:
    with pytest.raises(socket.gaierror):
        socket_address(socket.AF_INET6, "fe80::1%no-such-if0", 8461)
