"""A ``getClusterNodes`` answer decoded one node at a time, never held whole.

A 32 MiB answer of ``{}`` elements is 11 million dicts to ``json.loads`` (about 960 MB, and
seconds of an event loop held). Here the nodes of ``result`` are decoded one by one, each
from at most :data:`MAX_NODE_CHARS` characters
(:func:`tracker.net.limits.iter_json_member`), and the nodes chosen so far are at most ``2 *
max_targets`` (by public key, so the choice is the same as sorting every node; one machine,
a host whatever its ports and an IPv6 one's /64, is one node, its lowest key's:
:class:`Chooser`). Hostile shapes fail the answer with a one-line :class:`ProbeError`:
more than :data:`MAX_NODES` elements, a node larger than :data:`MAX_NODE_CHARS` or nested
too deep, invalid JSON. A node that is only malformed (not
an object, no usable ``rpc``, no ``pubkey``) is skipped. Each node chosen keeps its
``version`` when it is a plain version string (else it is unknown, ``""``). Blocking and
CPU-bound: run it in a worker thread.

(ijson would stream the events instead, but its C backend crashed the interpreter
(segmentation fault) on a 5,000-digit number: not a parser for hostile input.)
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence

import attrs

from tracker.core.hosts import machine_of
from tracker.core.untrusted import port_number
from tracker.net.limits import decode_text, iter_json_member

#: Elements of ``result`` read at most (mainnet has about 5,000 nodes).
MAX_NODES = 100_000
#: The largest node decoded (a node is a flat object of about 600 characters).
MAX_NODE_CHARS = 8 * 1024
#: Longest public key kept (base58 of 32 bytes is at most 44 characters).
MAX_PUBKEY = 64
#: What a shown version may look like (``2.2.1``, ``0.505.20216``, ``2.3.0-beta+abc``).
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}")


@attrs.frozen
class Node:
    """A node chosen: its target URL ``http://{rpc}`` and its ``version`` ("": unknown)."""

    url: str
    version: str = ""


def shown_version(value: object) -> str:
    """A node's ``version`` as the API may show it: a short plain version string, else ""
    (the value came from the network)."""
    if isinstance(value, str) and _VERSION.fullmatch(value):
        return value
    return ""


def parse_answer(
    body: bytes | bytearray,
    versions: Sequence[str],
    max_targets: int,
    *,
    max_nodes: int = MAX_NODES,
) -> list[Node]:
    """Each usable node (``http://{rpc}``, its version) of a ``getClusterNodes`` answer, at most
    ``max_targets``, by public key. Raises ProbeError (one line) for an answer that is not
    one or breaks a limit (see the module)."""
    nodes = iter_json_member(
        decode_text(body), "result", max_items=max_nodes, max_item_chars=MAX_NODE_CHARS
    )
    return select(nodes, versions, max_targets)


def select(nodes: Iterable[object], versions: Sequence[str], max_targets: int) -> list[Node]:
    """:func:`parse_answer` for nodes already decoded (objects that are not dicts skipped)."""
    chooser = Chooser(versions, max_targets)
    for node in nodes:
        if isinstance(node, dict):
            chooser.offer(node)
    return chooser.chosen()


class Chooser:
    """The ``max_targets`` machines (:func:`machine_of_address`) whose lowest public keys are
    the lowest among the usable nodes offered, each with the node of that key (of a key
    listed twice on one machine, the first), in at most ``2 * max_targets`` entries."""

    def __init__(self, versions: Sequence[str], max_targets: int) -> None:
        self._versions = versions
        self._max = max_targets
        #: Per machine, its lowest public key offered and that key's node. Keyed by machine,
        #: not by key or address: gossip identities cost nothing, and one machine advertising
        #: its RPC under thousands of low keys (on one address, on many ports, on many
        #: addresses of its IPv6 /64) took as many places of ``max_targets``, and the honest
        #: nodes past them none. Every count of sources counts a machine once
        #: (docs/http-api.md#trust): a second node of one machine would add no voice, only
        #: take another machine's place.
        self._chosen: dict[str, tuple[str, Node]] = {}
        #: Once pruned: the highest (key, machine) kept. A higher one can no longer be among
        #: the lowest.
        self._ceiling: tuple[str, str] | None = None

    def offer(self, node: Mapping[str, object]) -> None:
        """Consider one node (a mapping of its fields)."""
        address = rpc_address(node.get("rpc"))
        pubkey = node.get("pubkey")
        if address is None or not isinstance(pubkey, str) or len(pubkey) > MAX_PUBKEY:
            return
        if self._ceiling is not None and pubkey > self._ceiling[0]:
            return
        if self._versions and not self._matches(node.get("version")):
            return
        machine = machine_of_address(address)
        if self._ceiling is not None and (pubkey, machine) > self._ceiling:
            return
        held = self._chosen.get(machine)
        if held is not None and held[0] <= pubkey:
            return
        self._chosen[machine] = (
            pubkey,
            Node(f"http://{address}", shown_version(node.get("version"))),
        )
        if len(self._chosen) >= 2 * self._max:
            kept = self._in_order()[: self._max]
            self._chosen = {machine: self._chosen[machine] for machine in kept}
            self._ceiling = (self._chosen[kept[-1]][0], kept[-1])

    def _in_order(self) -> list[str]:
        """The machines chosen, by their key (then by machine: one key on two machines)."""
        return sorted(self._chosen, key=lambda machine: (self._chosen[machine][0], machine))

    def _matches(self, version: object) -> bool:
        return isinstance(version, str) and any(
            fnmatch.fnmatchcase(version, glob) for glob in self._versions
        )

    def chosen(self) -> list[Node]:
        """The nodes chosen, by public key."""
        return [self._chosen[machine][1] for machine in self._in_order()[: self._max]]


def rpc_address(value: object) -> str | None:
    """A node's ``rpc`` (``ip:port`` or ``[v6]:port``) as a URL authority, or None."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    host, sep, port_text = value.rpartition(":")
    port = port_number(port_text)
    if not sep or port is None:
        return None
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return None  # getClusterNodes gives IP addresses; a name is not one
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None  # a zone id names an interface of the machine that wrote it, not ours
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # one socket, one spelling (one target)
    if address.version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def machine_of_address(address: str) -> str:
    """The machine an :func:`rpc_address` (``ip:port``, ``[v6]:port``) is on: its host,
    an IPv6 one as its /64 (:func:`tracker.core.hosts.machine_of`); the port is not part
    of it. Pure."""
    host = address.rpartition(":")[0]
    return machine_of(host.removeprefix("[").removesuffix("]"))
