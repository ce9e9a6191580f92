"""The egress policy on its own: which addresses a URL that came from the network may reach.

Pure checks of :mod:`tracker.net.egress` and of the connection backend that applies them; no
test here sends a packet anywhere (addresses off the machine are refused before a connect,
and the conftest guard would fail the test if one were attempted).
"""

from __future__ import annotations

import ipaddress

import httpcore
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tracker.core.hosts import embedded_ipv4
from tracker.errors import EgressRefused
from tracker.net.egress import (
    CheckingBackend,
    EgressPolicy,
    as_ipv4_network,
    category,
    checked_addresses,
    parse_networks,
    translated_ipv4,
)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "private"),  # documentation range
        # what the standard library takes for global (3.11) and IANA does not
        ("fec0::1", "site-local"),
        ("3fff::1", "reserved"),  # documentation (RFC 9637): global to Python 3.11
        ("3fff:fff:ffff::1", "reserved"),
        ("3fff:1000::1", None),  # past the /20: global unicast as any other
        ("192.0.0.11", "reserved"),  # IETF protocol assignments, past their first /29
        ("192.0.0.170", "private"),  # NAT64 discovery (the standard library knows it)
        # IPv6 forms that carry a refused IPv4 address
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        # public unicast
        ("8.8.8.8", None),
        ("192.0.0.9", None),  # PCP anycast: globally reachable (IANA)
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_categories(address: str, kind: str | None) -> None:
    assert category(ipaddress.ip_address(address)) == kind
    refusal = EgressPolicy().refusal(ipaddress.ip_address(address))
    assert (refusal is None) == (kind is None)
    if kind is not None:
        assert refusal == f"{ipaddress.ip_address(address)} is a {kind} address"


def test_allow_lets_a_range_through_and_deny_always_wins() -> None:
    policy = EgressPolicy.from_lists(["127.0.0.0/8", "fd00::/8"], ["127.0.0.3/32", "8.8.8.0/24"])
    assert policy.refusal(ipaddress.ip_address("127.0.0.2")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:127.0.0.2")) is None  # mapped form
    assert policy.refusal(ipaddress.ip_address("fd00::5")) is None
    assert policy.refusal(ipaddress.ip_address("127.0.0.3")) == "127.0.0.3 is denied by egress.deny"
    assert policy.refusal(ipaddress.ip_address("::ffff:127.0.0.3")) is not None
    assert policy.refusal(ipaddress.ip_address("8.8.8.8")) is not None  # public, but denied
    assert policy.refusal(ipaddress.ip_address("10.0.0.1")) is not None  # not allowed


def test_embedded_ipv4() -> None:
    assert embedded_ipv4(ipaddress.ip_address("::ffff:10.0.0.1")) == ipaddress.ip_address(
        "10.0.0.1"
    )
    assert embedded_ipv4(ipaddress.ip_address("10.0.0.1")) is None
    assert embedded_ipv4(ipaddress.ip_address("2606:4700::1")) is None


@pytest.mark.parametrize(
    ("network", "meant"),
    [
        ("::ffff:10.0.0.5/128", "10.0.0.5/32"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        # NAT64 reaches an IPv4 address through a translator: not the same destination
        ("64:ff9b::a00:5/128", "64:ff9b::a00:5/128"),
        ("64:ff9b::/96", "64:ff9b::/96"),
        ("::ffff:0:0/95", "::fffe:0:0/95"),  # wider than the prefix: more than IPv4
        ("64:ff9b::/64", "64:ff9b::/64"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("10.0.0.0/8", "10.0.0.0/8"),
    ],
)
def test_an_ipv4_network_in_an_ipv6_form_is_that_ipv4_network(network: str, meant: str) -> None:
    assert as_ipv4_network(ipaddress.ip_network(network, strict=False)) == ipaddress.ip_network(
        meant
    )


#: (allow, deny, address, refused): egress.deny and egress.allow in any form an address
#: takes (docs/configuration.md, "egress").
@pytest.mark.parametrize(
    ("allow", "deny", "address", "refused"),
    [
        (["10.0.0.0/8"], ["::ffff:10.0.0.5/128"], "10.0.0.5", True),
        (["10.0.0.0/8"], ["::ffff:10.0.0.5/128"], "::ffff:10.0.0.5", True),
        (["10.0.0.0/8"], ["::ffff:10.0.0.5/128"], "10.0.0.6", False),
        (["10.0.0.0/8"], ["64:ff9b::a00:5/128"], "64:ff9b::a00:5", True),
        (["10.0.0.0/8"], ["64:ff9b::a00:5/128"], "10.0.0.5", False),
        # a NAT64 entry in allow admits no plain IPv4 address (loopback, metadata)
        (["64:ff9b::/96"], [], "127.0.0.1", True),
        (["64:ff9b::/96"], [], "169.254.169.254", True),
        (["::/0"], ["64:ff9b::/96"], "8.8.8.8", False),
        (["::ffff:10.0.0.0/104"], [], "10.0.0.7", False),
        (["::/0"], ["10.0.0.0/8"], "64:ff9b::a00:1", True),
        (["::/0"], ["10.0.0.0/8"], "::ffff:10.0.0.1", True),
        # a local translator's prefixes: denied as the IPv4 address they may reach
        (["::/0"], ["10.0.0.0/8"], "64:ff9b:1::a00:1", True),
        (["::/0"], ["10.0.0.0/8"], "64:ff9b:1:2::a00:1", True),
        (["::/0"], ["10.0.0.0/8"], "::ffff:0:a00:1", True),
        (["::/0"], ["10.0.0.0/8"], "64:ff9b:1::808:808", False),
        # ... but judged by their own range otherwise: not public, refused unless allowed
        ([], [], "64:ff9b:1::808:808", True),
        ([], [], "::ffff:0:808:808", True),
    ],
)
def test_allow_and_deny_in_every_form(
    allow: list[str], deny: list[str], address: str, refused: bool
) -> None:
    policy = EgressPolicy.from_lists(allow, deny)
    assert (policy.refusal(ipaddress.ip_address(address)) is not None) is refused


@pytest.mark.parametrize(
    ("address", "ipv4"),
    [
        ("64:ff9b:1::a00:1", "10.0.0.1"),
        ("::ffff:0:a00:1", "10.0.0.1"),
        ("64:ff9b::a00:1", None),  # the well-known prefix: embedded_ipv4's
        ("::ffff:10.0.0.1", None),
        ("2001:db8::a00:1", None),
        ("10.0.0.1", None),
    ],
)
def test_translated_ipv4(address: str, ipv4: str | None) -> None:
    expected = None if ipv4 is None else ipaddress.IPv4Address(ipv4)
    assert translated_ipv4(ipaddress.ip_address(address)) == expected


def test_bad_networks_are_named() -> None:
    with pytest.raises(ValueError, match="not a CIDR network: 'x'"):
        parse_networks(["10.0.0.0/8", "x"])


ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)


@given(ipv4)
def test_deny_everything_refuses_everything(address: ipaddress.IPv4Address) -> None:
    policy = EgressPolicy.from_lists(["0.0.0.0/0"], ["0.0.0.0/0"])
    assert policy.refusal(address) is not None
    assert policy.refusal(ipaddress.IPv6Address(f"::ffff:{address}")) is not None


@given(ipv4)
def test_without_allow_only_public_unicast_passes(address: ipaddress.IPv4Address) -> None:
    allowed = EgressPolicy().refusal(address) is None
    assert allowed == (address.is_global and not address.is_multicast)


async def test_a_name_is_checked_after_resolution() -> None:
    table = {"metadata.example": ["169.254.169.254"], "mixed.example": ["10.0.0.1", "8.8.8.8"]}

    async def resolve(host: str, port: int) -> list[str]:
        return table[host]

    with pytest.raises(EgressRefused, match=r"metadata.example refused.*link-local"):
        await checked_addresses(EgressPolicy(), "metadata.example", 80, resolve)
    # Only the allowed addresses are kept: the connection goes to one of them.
    assert await checked_addresses(EgressPolicy(), "mixed.example", 80, resolve) == ["8.8.8.8"]
    with pytest.raises(EgressRefused, match="loopback"):
        await checked_addresses(EgressPolicy(), "[::ffff:127.0.0.1]", 80, resolve)


class Recorder(httpcore.AsyncNetworkBackend):
    """An inner backend that records where it was asked to connect (and never connects)."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        self.connects.append((host, port))
        raise httpcore.ConnectError("recorder")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


async def test_the_backend_connects_to_the_checked_address_only() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return {"rebind.example": ["127.0.0.1", "127.0.0.2"], "meta.example": ["169.254.1.1"]}[host]

    inner = Recorder()
    policy = EgressPolicy.from_lists(["127.0.0.0/8"], ["127.0.0.1/32"])
    backend = CheckingBackend(lambda: policy, inner, resolve)
    with pytest.raises(httpcore.ConnectError, match="recorder"):
        await backend.connect_tcp("rebind.example", 8080, timeout=2)
    assert inner.connects == [("127.0.0.2", 8080)]  # the address checked, not the name
    with pytest.raises(httpcore.ConnectError, match="refused by the egress policy"):
        await backend.connect_tcp("meta.example", 80, timeout=2)
    assert inner.connects == [("127.0.0.2", 8080)]  # nothing more was attempted


async def test_the_test_guard_refuses_name_lookups() -> None:
    """Resolving a name sends a DNS query: tests inject a resolver instead."""
    with pytest.raises(AssertionError, match="resolve a host name"):
        await trio.socket.getaddrinfo("metadata.example", 80)


async def test_lookups_that_never_end_keep_to_their_own_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Names whose server never answers (a discovered node's redirect to one): each lookup
    holds its thread until the system resolver gives up, after its caller left. They took
    trio's shared pool whole (40 threads), and file answers and parsers stalled. At most
    LOOKUPS_AT_ONCE are in threads, none of the shared pool's."""
    import socket
    import threading

    from tracker.net import egress

    answered = threading.Event()
    started: list[object] = []

    def never(host: object, *_args: object, **_kwargs: object) -> list[object]:
        started.append(host)
        answered.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "temporary failure")

    monkeypatch.setattr(socket, "getaddrinfo", never)
    shared = trio.to_thread.current_default_thread_limiter()
    try:
        for n in range(50):  # more than the shared pool holds
            with trio.move_on_after(0.01):
                await egress.resolve(f"n{n}.slow.example", 80)
        assert shared.borrowed_tokens == 0
        assert len(started) <= egress.LOOKUPS_AT_ONCE
        # the shared pool answers at once meanwhile
        with trio.fail_after(5):
            assert await trio.to_thread.run_sync(lambda: 7) == 7
    finally:
        answered.set()
