"""The one rule of host names and ``host:port`` text, wherever the tracker reads one (the
config's addresses and targets, target files, the ``Host`` header it echoes into URLs), and
whose word a URL is (:func:`voice_of`). Pure.

A host is a DNS name or an IPv4 address: letters, digits, ``_``, ``.`` and ``-``, at most 253
characters, starting and ending with a letter, digit or ``_`` (container and service names
use underscores), or a bracketed IPv6 address where a port may follow.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Collection, Iterable, Sequence
from urllib.parse import urlsplit

from tracker.core.untrusted import port_number

_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")


def is_host_name(text: str) -> bool:
    """True for a DNS name or an IPv4 address (not an IPv6 one: see :func:`is_authority`)."""
    return _HOST_NAME.fullmatch(text) is not None


#: A zone id as an interface names it (``fe80::1%eth0``): the standard library takes any
#: text without ``%`` or ``/``, and a ``#``, ``?`` or a lone surrogate there made a URL that
#: no URL parser splits again (docs/configuration.md, ``static_targets``).
_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def ipv6_problem(text: str) -> str:
    """Why ``text`` is no IPv6 address written without brackets (a zone id, where there is
    one, an interface's name); "" when it is one. Pure."""
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return "not an IPv6 address"
    zone = address.scope_id
    if zone is None:
        return ""
    if zone.startswith("25") and not zone.isdigit():
        # RFC 6874 writes the % of a zone as %25 in a URL; httpx and the resolver do not
        # decode it, so "fe80::1%25eth0" asks for an interface "25eth0" that is not there
        # and never connects: the one form that reaches the interface is refused (a zone
        # of digits only is an interface's index, 25 or 250 as much as 7)
        # (docs/configuration.md, ``static_targets``).
        return "write the zone id as %eth0, not %25eth0 (RFC 6874's %25 is not decoded)"
    if _ZONE.fullmatch(zone) is None:
        return "a zone id must be an interface's name (letters, digits, _ . -)"
    return ""


def is_ipv6(text: str) -> bool:
    """True for an IPv6 address written without brackets (a zone id, where there is one,
    an interface's name: :func:`ipv6_problem`)."""
    return not ipv6_problem(text)


def is_authority(text: str, *, port_required: bool = False) -> bool:
    """True for ``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` with a port from 1 to
    65535 (``port_required``: the port must be there)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        host_ok = bool(bracket) and is_ipv6(host)
    else:
        host, colon, port = text.partition(":")
        host_ok = is_host_name(host)
        rest = colon + port
    if not host_ok:
        return False
    if not rest:
        return not port_required
    return rest.startswith(":") and port_number(rest[1:]) is not None


def bracketed(authority: str) -> str | None:
    """``authority`` (``host[:port]``) as it was meant when it holds an IPv6 address without
    brackets, the address bracketed: ``2001:db8::3:8899`` is ``[2001:db8::3]:8899`` (a last
    group that reads as a port is taken for one), ``2001:db8::1`` is ``[2001:db8::1]``; None
    when it holds none (one ``:`` at most, a bracket already, or no address). Pure."""
    if "[" in authority or authority.count(":") < 2:
        return None
    host, _colon, port = authority.rpartition(":")
    if port_number(port) is not None and is_ipv6(host):
        return f"[{host}]:{port}"
    return f"[{authority}]" if is_ipv6(authority) else None


@functools.lru_cache(maxsize=65_536)  # hosts are few and stable; asked per transfer
def canonical_host(host: str) -> str:
    """One machine's one spelling of ``host`` (a URL's host, brackets or not): an IP address
    as :mod:`ipaddress` writes it, an IPv4-mapped IPv6 address as its IPv4 one
    (``[2001:0db8::6]`` and ``2001:db8::6``, ``[::ffff:10.0.0.6]`` and ``10.0.0.6`` are one
    host); a name lower-cased. A zone id stays: ``fe80::1%eth0`` and ``fe80::1%eth1`` are
    two machines on two links. What counts one host once (voices, a source's limits,
    ``trust.known_sources``, ``object_store.replicas``) compares hosts with it. Pure."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return host.lower()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


#: The IPv6 prefix one machine is routinely given whole (SLAAC, a hosting provider's /64 a
#: server): it may answer on as many of its addresses as it likes.
MACHINE_PREFIX = 64

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64's
    well-known prefix), if any: the destination it reaches, which the egress policy judges
    and whose machine it is where sources are counted. Pure."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@functools.lru_cache(maxsize=65_536)  # hosts are few and stable; every re-rank asks each
def machine_of(host: str) -> str:
    """The machine a host of the network (as :func:`canonical_host` writes it) is at the
    most: an IPv6 address as its /64 (``2001:db8::6`` and ``2001:db8::7`` are
    ``2001:db8::/64``), anything else as it is: discovery keeps one node of a machine, and
    a machine's measured throughput is kept for it. Gossip identities cost nothing, and one
    machine advertising its RPC on a thousand addresses of its /64 took a thousand places
    of ``max_targets`` (docs/configuration.md, ``cluster_discovery``). Pure."""
    return _ipv6_block(host, 0)


#: The blocks one operator is routinely given whole: an IPv4 /24 (the smallest block routed
#: between networks, a hosting provider's rack) and an IPv6 /48 (a site's allocation, RFC
#: 6177: a tunnel broker hands one out free, 65,536 /64s).
NETWORK_PREFIX_V4 = 24
NETWORK_PREFIX_V6 = 48


def network_of(host: str) -> str:
    """The network a host of the network (as :func:`canonical_host` writes it) is in: an
    IPv4 address as its /24, an IPv6 one as its /48 (``2001:db8:1:2::6`` is
    ``2001:db8:1::/48``); a name, or an address with a zone id (a link's own host), as it
    is. Where the machines of one network could take every place of a bound
    (``cluster_discovery.max_targets``), each network's first comes before any network's
    second (:class:`tracker.discovery.nodes.Chooser`). Pure."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name
    return host if getattr(address, "scope_id", None) else machine_and_network(address)[1]


def machine_and_network(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[str, str]:
    """:func:`machine_of` and :func:`network_of` of an address without a zone id, from its
    bits: for the up to 100,000 nodes of a ``getClusterNodes`` answer, parsed once and kept
    in no cache (they would flush what the re-ranks keep in :func:`machine_of`'s). An IPv6
    address that carries an IPv4 one (6to4, NAT64: :func:`embedded_ipv4`) is that IPv4
    address's machine: whoever holds an IPv4 address holds its 6to4 /48, and one machine
    was up to three voices under its three forms. Pure."""
    address = embedded_ipv4(address) or address
    value = int(address)
    if isinstance(address, ipaddress.IPv4Address):
        low = value >> (32 - NETWORK_PREFIX_V4) << (32 - NETWORK_PREFIX_V4)
        return str(address), f"{ipaddress.IPv4Address(low)}/{NETWORK_PREFIX_V4}"
    machine = value >> (128 - MACHINE_PREFIX) << (128 - MACHINE_PREFIX)
    network = value >> (128 - NETWORK_PREFIX_V6) << (128 - NETWORK_PREFIX_V6)
    return (
        f"{ipaddress.IPv6Address(machine)}/{MACHINE_PREFIX}",
        f"{ipaddress.IPv6Address(network)}/{NETWORK_PREFIX_V6}",
    )


@functools.lru_cache(maxsize=65_536)  # hosts are few and stable; every re-rank asks each
def party_of(host: str) -> str:
    """Whose word a discovered node on ``host`` (as :func:`canonical_host` writes it) is
    where sources are counted: an IPv6 address's /48 (:func:`network_of`), anything else
    as it is. A /48 is what one site is given (a tunnel broker hands one out free): counted
    by its /64s, one holder was 65,536 voices, enough for any ``min_agreeing_sources`` and
    any slot's majority (docs/http-api.md#trust). An IPv4 address costs each its own. Pure."""
    return _ipv6_block(host, 1)


def _ipv6_block(host: str, which: int) -> str:
    """The block of :func:`machine_and_network` (``which``: 0 the machine's /64, 1 the
    network's /48) an IPv6 address ``host`` is in; a name, an IPv4 address or an address
    with a zone id (a link's own host, :func:`canonical_host`) as it is, and an IPv6 one
    that carries an IPv4 address (:func:`embedded_ipv4`) as that IPv4 address. Pure."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name
    if isinstance(address, ipaddress.IPv4Address) or address.scope_id is not None:
        return host
    inner = embedded_ipv4(address)
    if inner is not None:
        return str(inner)
    return machine_and_network(address)[which]


def machine_voices(hosts: Sequence[str], discovered: Collection[int]) -> list[str]:
    """Whose word each source on ``hosts`` (as :func:`voice_of` writes them) is where
    sources are counted, ``discovered`` the indices of discovered nodes' (cluster
    discovery), as trust counts them (docs/http-api.md#trust): a configured source's host
    as it is (the operator listed it); a discovered node's party (:func:`party_of`: an
    IPv6 address counts as its /48), or a configured source's host where it is in that
    source's party (a validator's gossip RPC beside its sidecar is that machine's one
    voice, under any of its addresses' forms). Gossip
    identities cost nothing: a holder of a /48 on a thousand of its addresses was a
    thousand voices in the sizes ranked and the pieces compared. Pure."""
    configured = configured_parties(h for n, h in enumerate(hosts) if n not in discovered)
    return [
        configured.get(party_of(host), party_of(host)) if n in discovered else host
        for n, host in enumerate(hosts)
    ]


def configured_parties(hosts: Iterable[str]) -> dict[str, str]:
    """The voice a discovered node in each party of configured sources' ``hosts``
    (:func:`party_of`) is: that source's host, the least of them where several are in one
    party (whatever their order). A node in a configured source's party (its machine under
    another form of its address, 6to4 or NAT64, or another address of its /48) is that
    source's voice, not a second one. Pure."""
    parties: dict[str, str] = {}
    for host in hosts:
        party = party_of(host)
        if party not in parties or host < parties[party]:
            parties[party] = host
    return parties


def canonical_authority(authority: str) -> str:
    """``host[:port]`` or ``[v6][:port]`` (a ``userinfo@`` before it dropped) with its host
    as :func:`canonical_host` writes it (an IPv6 one bracketed), the port as written. Pure."""
    hostport = authority.rpartition("@")[2]
    if hostport.startswith("["):
        host, _bracket, rest = hostport[1:].partition("]")
    else:
        host, colon, port = hostport.partition(":")
        rest = colon + port
    canonical = canonical_host(host)
    return (f"[{canonical}]" if ":" in canonical else canonical) + rest


@functools.lru_cache(maxsize=65_536)  # targets are few and stable; ranked again and again
def voice_of(target: str) -> str:
    """Whose word a target's listing or a source's bytes are: the host its URL names (two
    ports of one machine, a sidecar and its validator's RPC, hold what that machine holds
    and count once), a local target's path its own. The ranking's prices and a refresh's
    piece comparison count voices with it: one host however its URL spells it
    (:func:`canonical_host`), so a machine listed twice gets one vote. Pure."""
    try:
        host = urlsplit(target).hostname
    except ValueError:  # a malformed URL is its own voice
        host = None
    return canonical_host(host) if host else target  # a path as it is
