"""No test binds a port of its own choosing: an operator may run the quickstart (public 8458,
internal 8457) beside the suite. The helpers that start a tracker check its listeners here."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Sequence

import attrs

from tracker.config.loading import load_config
from tracker.config.schema import Config
from tracker.config.values import parse_address
from tracker.errors import ConfigError

#: A loopback port that refuses every connection ("nothing listens here"): bound by this test
#: process and never listened on, for as long as it runs, so no server of the machine (a
#: discard service on 9, another worker's) can be there. Bound on import: one a process.
_HELD = socket.socket()
_HELD.bind(("127.0.0.1", 0))
REFUSED_PORT: int = _HELD.getsockname()[1]
#: ``127.0.0.1:{REFUSED_PORT}``: a source, a target or a proxy that refuses every connection.
REFUSED = f"127.0.0.1:{REFUSED_PORT}"

#: The ports the product listens on by default (and the quickstart uses).
DEFAULT_PORTS = frozenset(
    parse_address(field.default)[1]
    for field in (attrs.fields(Config).listen, attrs.fields(Config).internal_listen)
)


def fixed_ports(listen: str, internal_listen: str) -> list[str]:
    """The listeners among ``listen``/``internal_listen`` that would bind a default port."""
    named = {"listen": listen, "internal_listen": internal_listen}
    return [
        f"{address} ({key})"
        for key, address in named.items()
        if address and parse_address(address)[1] in DEFAULT_PORTS
    ]


def assert_free_ports(config_path: str | os.PathLike[str], args: Sequence[str] = ()) -> None:
    """Fail the test if the tracker from ``config_path`` (with ``serve``'s ``--listen`` /
    ``--internal-listen`` in ``args``) would bind a default port; a config that does not load
    is left to the test (the tracker refuses it before binding)."""
    try:
        config = load_config(config_path)
    except ConfigError:
        return
    listen, internal = config.listen, config.internal_listen
    for flag, value in itertools.pairwise(args):
        if flag == "--listen":
            listen = value
        elif flag == "--internal-listen":
            internal = value
    bound = fixed_ports(listen, internal)
    assert not bound, f"a test must listen on port 0, not on {', '.join(bound)}"
