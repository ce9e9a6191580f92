"""A ``getClusterNodes`` answer decoded one node at a time, never held whole.

A 32 MiB answer of ``{}`` elements is 11 million dicts to ``json.loads`` (about 960 MB, and
seconds of an event loop held). Here the nodes of ``result`` are decoded one by one, each
from at most :data:`MAX_NODE_CHARS` characters
(:func:`tracker.net.limits.iter_json_member`), and the nodes chosen so far are at most ``2 *
max_targets`` (network by network, then by public key, so the choice is the same as sorting
every node; one machine, a host whatever its ports and an IPv6 one's /64, is one node, its
node on agave's RPC port of the lowest key, else its lowest key's; each network's first
machine comes before any network's second:
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

import bisect
import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence

import attrs

from tracker.core.hosts import machine_and_network, machine_of
from tracker.core.untrusted import port_number
from tracker.net.limits import decode_text, iter_json_member

#: Elements of ``result`` read at most (mainnet has about 5,000 nodes).
MAX_NODES = 100_000
#: The largest node decoded (a node is a flat object of about 600 characters).
MAX_NODE_CHARS = 8 * 1024
#: Longest public key kept (base58 of 32 bytes is at most 44 characters).
MAX_PUBKEY = 64
#: agave's default JSON-RPC port: of one machine's nodes, one there comes first.
AGAVE_RPC_PORT = 8899
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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
    ``max_targets`` chosen network by network (:class:`Chooser`), by public key. Raises
    ProbeError (one line) for an answer that is not one or breaks a limit (see the
    module)."""
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
    """The ``max_targets`` machines (:func:`machine_of_address`) chosen network by network,
    each with its node on agave's RPC port (:data:`AGAVE_RPC_PORT`) of the lowest public
    key, else its node of the lowest key (of a key listed twice on one machine, the first),
    in at most ``2 * max_targets`` entries; a machine's key is its node's, those on that
    port before the others.

    A machine's *place* is how many machines of its network (an IPv4 /24, an IPv6 /48:
    :func:`tracker.core.hosts.network_of`) have a lower key; the machines of the lowest
    (place, key) are chosen: every network's lowest-keyed machine before any network's
    second, and so on. With room for every machine offered, that is all of them; without,
    the ten thousand machines of one network (a tunnel broker hands out a /48, 65,536 /64s,
    free; public keys that sort first take minutes to grind) take places only after every
    other network's first, not the honest nodes' (docs/configuration.md,
    ``cluster_discovery``)."""

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
        #: Per network: the (key, machine) of its machines held, sorted; a machine's index
        #: there is its place.
        self._networks: dict[str, list[tuple[str, str]]] = {}
        #: Once pruned: the highest (place, key, machine) kept. A place only grows as
        #: machines come, so one past it can never be among the chosen; nor can the
        #: machines of its network with higher keys, whose places are higher still.
        self._ceiling: tuple[int, str, str] | None = None

    def offer(self, node: Mapping[str, object]) -> None:
        """Consider one node (a mapping of its fields)."""
        socket = _rpc_socket(node.get("rpc"))
        pubkey = node.get("pubkey")
        if socket is None or not isinstance(pubkey, str) or len(pubkey) > MAX_PUBKEY:
            return
        # Of one machine's nodes, one on agave's RPC port comes first, then the lowest key:
        # gossip identities cost nothing, and a liar's lower keys with their `rpc` on an
        # honest machine's address at a port nothing answers on took that machine's place,
        # its node never probed (on 8899 the liar's URL is the honest node's own).
        pubkey = ("0" if socket[1] == AGAVE_RPC_PORT else "1") + pubkey
        ceiling = self._ceiling
        if ceiling is not None and ceiling[0] == 0 and pubkey > ceiling[1]:
            return  # past the ceiling at place 0, the lowest there is
        if self._versions and not self._matches(node.get("version")):
            return
        machine, network = machine_and_network(socket[0])
        held = self._chosen.get(machine)
        if held is not None and held[0] <= pubkey:
            return
        members = self._networks.setdefault(network, [])
        if held is not None:  # its lower key moves it down its network
            members.pop(bisect.bisect_left(members, (held[0], machine)))
            del self._chosen[machine]
        place = bisect.bisect_left(members, (pubkey, machine))
        if ceiling is not None and (place, pubkey, machine) > ceiling:
            # Never among the chosen. Left out of its network, it lowers no place that
            # counts: every machine of its network above it is past the ceiling too.
            if not members:
                del self._networks[network]
            return
        members.insert(place, (pubkey, machine))
        self._chosen[machine] = (
            pubkey,
            Node(f"http://{_authority(*socket)}", shown_version(node.get("version"))),
        )
        if len(self._chosen) >= 2 * self._max:
            self._prune()

    def _prune(self) -> None:
        """Keep the ``max_targets`` machines of the lowest (place, key): each one dropped
        has at least that many below it, and the count below a (place, key) never falls."""
        ordered = self._in_order()
        self._ceiling = ordered[self._max - 1]
        for _place, _key, machine in ordered[self._max :]:
            del self._chosen[machine]
        networks = {}
        for network, members in self._networks.items():
            kept = [member for member in members if member[1] in self._chosen]
            if kept:
                networks[network] = kept
        self._networks = networks

    def _in_order(self) -> list[tuple[int, str, str]]:
        """The (place, key, machine) of every machine held, lowest first."""
        return sorted(
            (place, key, machine)
            for members in self._networks.values()
            for place, (key, machine) in enumerate(members)
        )

    def _matches(self, version: object) -> bool:
        return isinstance(version, str) and any(
            fnmatch.fnmatchcase(version, glob) for glob in self._versions
        )

    def chosen(self) -> list[Node]:
        """The nodes chosen, by public key."""
        # by the public key itself, past the mark of agave's RPC port put before it
        kept = sorted((key[1:], machine) for _place, key, machine in self._in_order()[: self._max])
        return [self._chosen[machine][1] for _key, machine in kept]


def rpc_address(value: object) -> str | None:
    """A node's ``rpc`` (``ip:port`` or ``[v6]:port``) as a URL authority, or None."""
    socket = _rpc_socket(value)
    return None if socket is None else _authority(*socket)


def _rpc_socket(value: object) -> tuple[IPAddress, int] | None:
    """A node's ``rpc`` as its address (an IPv4-mapped one as IPv4) and port, or None."""
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
    return address, port


def _authority(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def machine_of_address(address: str) -> str:
    """The machine an :func:`rpc_address` (``ip:port``, ``[v6]:port``) is on: its host,
    an IPv6 one as its /64 (:func:`tracker.core.hosts.machine_of`); the port is not part
    of it. Pure."""
    host = address.rpartition(":")[0]
    return machine_of(host.removeprefix("[").removesuffix("]"))
