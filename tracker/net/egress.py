"""Which addresses a URL that came from the network may reach (``egress`` in the config).

What a source says is data, not authority: a ``Location`` it answers (at a probe or while
proxying) could point at the tracker's own internal listener, a cloud metadata service
(169.254.169.254) or anything else on the operator's private network. So an address that came
from the network is checked *after* resolution and *before* any connection, and the
connection goes to the very address that was checked (no second lookup a DNS server could
answer differently):

- refused: loopback, private (RFC 1918, RFC 4193), link-local, shared (CGNAT, RFC 6598),
  multicast, unspecified, reserved and every other address that is not public unicast, also
  in their IPv4-mapped, IPv4-compatible, 6to4 and NAT64 IPv6 forms;
- unless listed in ``egress.allow`` (CIDRs); ``egress.deny`` (CIDRs) always refuses, an
  address of a local translation prefix too by the IPv4 address it may reach
  (:func:`translated_ipv4`).

Addresses the operator configured (targets, ``rpc``) are trusted as typed and never checked.
:class:`CheckingBackend` applies the policy to every connection of an httpcore pool.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

import attrs
import httpcore
import idna
import trio

from tracker.config.schema import Egress
from tracker.core.hosts import embedded_ipv4
from tracker.errors import EgressRefused
from tracker.net.limits import run_limiter

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``resolve(host, port)``: the addresses a host name stands for (tests inject their own).
Resolver = Callable[[str, int], Awaitable[list[str]]]

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
# What the standard library (3.11) takes for global and IANA does not: IPv6 site-local
# (RFC 3879 deprecated it; still routed inside sites that use it), and the IETF protocol
# assignments of 192.0.0.0/24 beyond their first /29, but for the two anycast addresses
# IANA lists as globally reachable.
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
# IPv6's second documentation prefix (RFC 9637, 2024): not globally reachable (IANA), and
# the standard library (3.11) takes it for global (2001:db8::/32, the first, for private).
_DOCUMENTATION = ipaddress.ip_network("3fff::/20")
_IETF_PROTOCOL = ipaddress.ip_network("192.0.0.0/24")
_IETF_GLOBAL = frozenset(map(ipaddress.ip_address, ("192.0.0.9", "192.0.0.10")))


def parse_networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (``10.0.0.0/8``, ``::1/128``, or a bare address) as networks, each IPv4 one
    written in its IPv4-mapped form as the IPv4 network it is (:func:`as_ipv4_network`);
    ValueError names the first one that is not."""
    networks: list[IPNetwork] = []
    for text in texts:
        try:
            networks.append(as_ipv4_network(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"not a CIDR network: {text!r}") from None
    return tuple(networks)


#: IPv4-mapped addresses (RFC 4291 2.5.5.2): an IPv4 address in their last 32 bits, the very
#: same destination. NAT64's (RFC 6052) are not: they reach it through a translator, another
#: machine, so a NAT64 entry stays the IPv6 network it is (``allow: [64:ff9b::/96]`` would
#: otherwise admit every IPv4 address, loopback and metadata included).
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def as_ipv4_network(network: IPNetwork) -> IPNetwork:
    """``network`` as the IPv4 network it stands for when it lies within the IPv4-mapped
    ``/96`` (``::ffff:10.0.0.5/128`` is ``10.0.0.5/32``); else as it is. An address is
    checked in its IPv4 form too (:meth:`EgressPolicy.refusal`), against networks of its
    own version: a mapped ``egress.deny`` entry kept as IPv6 denied nothing of IPv4
    (docs/configuration.md, ``egress``). Pure."""
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.subnet_of(_MAPPED)
    ):
        low = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((low, network.prefixlen - 96))
    return network


#: IPv6 prefixes whose translation to IPv4 is a local choice: RFC 8215's local-use NAT64
#: prefix (its /96 form, RFC 6052 2.2) and SIIT's IPv4-translated addresses (RFC 2765,
#: ``::ffff:0:a.b.c.d``). Where a translator serves one, an address there reaches the IPv4
#: address of its last 32 bits: ``egress.deny`` of that one denies it. Otherwise the address
#: is judged by its own range (not public: refused unless allowed), never as that IPv4
#: address, since nothing says a translator is there.
_LOCAL_TRANSLATIONS = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
)


def translated_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address of a local translation prefix may reach
    (``64:ff9b:1::a00:1``, ``::ffff:0:a00:1``: 10.0.0.1), if it is one. Pure."""
    if isinstance(address, ipaddress.IPv6Address) and any(
        address in prefix for prefix in _LOCAL_TRANSLATIONS
    ):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def category(address: IPAddress) -> str | None:
    """What kind of non-public address ``address`` is (``"loopback"``, ...); None for a
    public unicast address."""
    # An IPv6 form that carries an IPv4 address (mapped, 6to4, NAT64...) reaches that IPv4
    # address: it is judged as that address (its IPv6 range alone reads as "reserved").
    embedded = embedded_ipv4(address)
    return _kind(embedded if embedded is not None else address)


def _kind(address: IPAddress) -> str | None:
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "shared (CGNAT)"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if isinstance(address, ipaddress.IPv6Address) and address in _SITE_LOCAL:
        return "site-local"
    if isinstance(address, ipaddress.IPv6Address) and address in _DOCUMENTATION:
        return "reserved"
    if address in _IETF_PROTOCOL and address not in _IETF_GLOBAL:
        return "reserved"
    if not address.is_global:
        return "non-public"
    return None


@attrs.frozen
class EgressPolicy:
    """``allow`` and ``deny`` networks; see the module doc for the rule."""

    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_lists(cls, allow: Iterable[str], deny: Iterable[str]) -> EgressPolicy:
        """The policy of the config's ``egress.allow`` / ``egress.deny`` (valid CIDRs)."""
        return cls(parse_networks(allow), parse_networks(deny))

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached (one line); None when it may."""
        forms = [address, *filter(None, [embedded_ipv4(address)])]
        # deny: every IPv4 address it may reach, a local translator's too (deny wins)
        denied = [*forms, *filter(None, [translated_ipv4(address)])]
        if any(a in n for a in denied for n in self.deny if a.version == n.version):
            return f"{address} is denied by egress.deny"
        if any(a in n for a in forms for n in self.allow if a.version == n.version):
            return None
        kind = category(address)
        return None if kind is None else f"{address} is a {kind} address"


@functools.lru_cache(maxsize=8)
def policy_of(egress: Egress) -> EgressPolicy:
    """The policy of a config's ``egress`` section (parsed once per distinct section)."""
    return EgressPolicy.from_lists(egress.allow, egress.deny)


#: Name lookups at once: each runs in a thread the system resolver holds until it gives
#: up (tens of seconds for a name whose server never answers) after its caller left. Their
#: own threads: names from the network (a discovered node's redirect) took trio's shared
#: pool whole, and file answers and parsers, which need it, stalled.
LOOKUPS_AT_ONCE = 8
_lookups: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("tracker_lookups")
#: The lookups of names that discovered nodes gave (their redirects), in threads of their
#: own: a hostile node's name whose server never answers holds one of these until the system
#: resolver gives up, never one that the operator's targets and the relay look up with.
STRANGERS_LOOKUPS_AT_ONCE = 4
_strangers: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar(
    "tracker_strangers_lookups"
)


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for a TCP connection (the system resolver, at
    most :data:`LOOKUPS_AT_ONCE` at a time). Raises OSError (``socket.gaierror``) when it
    does not resolve or is no host name."""
    return await _looked_up(host, port, run_limiter(_lookups, LOOKUPS_AT_ONCE))


async def resolve_strangers(host: str, port: int) -> list[str]:
    """:func:`resolve` for a name a discovered node gave, in lookups of their own (at most
    :data:`STRANGERS_LOOKUPS_AT_ONCE`)."""
    return await _looked_up(host, port, run_limiter(_strangers, STRANGERS_LOOKUPS_AT_ONCE))


async def _looked_up(host: str, port: int, limiter: trio.CapacityLimiter) -> list[str]:
    """The addresses of ``host`` looked up in a thread of ``limiter``'s."""
    try:
        # The name encoded as trio's own lookup does (an ASCII one by the standard
        # library's codec, which refuses an empty or over-long label before any query; any
        # other by IDNA 2008), its lookup in a thread of our own
        name = host.encode("idna") if host.isascii() else idna.encode(host, uts46=True)
        infos = await trio.to_thread.run_sync(
            functools.partial(socket.getaddrinfo, name, port, type=socket.SOCK_STREAM),
            abandon_on_cancel=True,
            limiter=limiter,
        )
    except UnicodeError as exc:
        # A name from the network that IDNA refuses before any lookup (an empty or
        # over-long label: the standard library; ``xn--zz``: trio's ``idna.IDNAError``,
        # a UnicodeError too) is a name that does not resolve, not a crash.
        raise socket.gaierror(socket.EAI_NONAME, f"not a host name ({exc})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_addresses(
    policy: EgressPolicy, host: str, port: int, resolver: Resolver = resolve
) -> list[str]:
    """The addresses of ``host`` that ``policy`` allows, in resolver order.

    Raises EgressRefused when there is none (naming the host and why), OSError when the name
    does not resolve. The caller bounds the time (cancellation ends the lookup).
    """
    literal = _literal(host)
    addresses = [str(literal)] if literal is not None else await resolver(host, port)
    allowed: list[str] = []
    reasons: list[str] = []
    for text in addresses:
        reason = policy.refusal(ipaddress.ip_address(text.split("%", 1)[0]))
        if reason is None:
            allowed.append(text)
        else:
            reasons.append(reason)
    if not allowed:
        why = reasons[0] if reasons else "no address"
        raise EgressRefused(f"{host} refused by the egress policy: {why}")
    return allowed


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# ``timeout`` parameters below (ruff ASYNC109) are httpcore's interface, not our choice.


class WrappingBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that opens its connections through ``inner``.

    A wrapper changes where a connection goes (:meth:`_tcp_host`, :meth:`_unix_path`, which
    may refuse it) or what its stream is (:meth:`_stream`); httpcore's interface is
    implemented here once for every wrapper (the egress check, the big reads of
    :mod:`tracker.clientwire.transport`).
    """

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """A TCP connection to ``_tcp_host(host)``, through ``inner``, as ``_stream``."""
        address = await self._tcp_host(host, port, timeout)
        stream = await self._inner.connect_tcp(
            address, port, timeout, local_address, socket_options
        )
        return self._stream(stream, tcp=True)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """A unix socket connection to ``_unix_path(path)``, through ``inner``, as
        ``_stream``."""
        stream = await self._inner.connect_unix_socket(
            self._unix_path(path), timeout, socket_options
        )
        return self._stream(stream, tcp=False)

    async def sleep(self, seconds: float) -> None:
        """``inner``'s sleep."""
        await self._inner.sleep(seconds)

    async def _tcp_host(
        self,
        host: str,
        port: int,
        timeout: float | None,  # noqa: ASYNC109
    ) -> str:
        """Where a TCP connection to ``host`` goes (``host`` itself unless overridden)."""
        return host

    def _unix_path(self, path: str) -> str:
        """Where a unix socket connection to ``path`` goes (``path`` itself unless
        overridden)."""
        return path

    def _stream(
        self, stream: httpcore.AsyncNetworkStream, *, tcp: bool
    ) -> httpcore.AsyncNetworkStream:
        """The stream a connection is handed out as (its own unless overridden)."""
        return stream


class CheckingBackend(WrappingBackend):
    """An httpcore network backend that connects only to addresses the policy allows.

    ``policy()`` is read per connection (a reload applies at once). The host name is resolved
    once, every address is checked, and the connection goes to an allowed address (TLS still
    verifies and sends the host name: httpcore passes it to ``start_tls`` separately). A
    refused host raises ``httpcore.ConnectError`` with the reason; no packet is sent to it.
    """

    def __init__(
        self,
        policy: Callable[[], EgressPolicy],
        inner: httpcore.AsyncNetworkBackend,
        resolver: Resolver = resolve,
    ) -> None:
        super().__init__(inner)
        self._policy = policy
        self._resolver = resolver

    async def _tcp_host(
        self,
        host: str,
        port: int,
        timeout: float | None,  # noqa: ASYNC109
    ) -> str:
        """The first allowed address of ``host``; httpcore.ConnectError (ConnectTimeout)
        when the policy refuses it or it does not resolve (in time)."""
        try:
            with trio.fail_after(timeout if timeout is not None else 30.0):
                addresses = await checked_addresses(self._policy(), host, port, self._resolver)
        except EgressRefused as exc:
            raise httpcore.ConnectError(str(exc)) from None
        except trio.TooSlowError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from None
        return addresses[0]

    def _unix_path(self, path: str) -> str:
        raise httpcore.ConnectError("unix sockets are not reachable from the network")
