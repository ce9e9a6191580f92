"""The one rule of host names and host:port text (core.hosts), as a table."""

from __future__ import annotations

import pytest

from tracker.core.hosts import (
    bracketed,
    canonical_authority,
    canonical_host,
    is_authority,
    is_host_name,
    machine_of,
    network_of,
    voice_of,
)
from tracker.ordering.pricing import priced_sizes


@pytest.mark.parametrize(
    ("text", "name", "authority", "with_port"),
    [
        ("validator.example", True, True, False),
        ("10.0.0.1", True, True, False),
        ("rpc_1", True, True, False),  # container and service names
        ("_svc", True, True, False),
        ("node:8899", False, True, True),
        ("[::1]:8899", False, True, True),
        ("[::1]", False, True, False),
        ("[::1", False, False, False),
        ("::1", False, False, False),
        ("[zz::1]:80", False, False, False),
        ("node:0", False, False, False),
        ("node:65536", False, False, False),
        ("node:\uff18\uff10", False, False, False),  # full-width digits: str.isdigit() is True
        ("node:", False, False, False),
        ("-node", False, False, False),
        ("node-", False, False, False),
        ("a" * 253, True, True, False),
        ("a" * 254, False, False, False),
        ("", False, False, False),
        ("no de", False, False, False),
        ("user@node:80", False, False, False),
        ("node:80/path", False, False, False),
        # a zone id: an interface's name only (the standard library took any text without
        # % or /, and "#", "?" or a lone surrogate there made a URL no parser splits again)
        ("[fe80::1%eth0]:8899", False, True, True),
        ("[fe80::1%a#b]:8899", False, False, False),
        ("[fe80::1%a?b]:8899", False, False, False),
        ("[fe80::1%\ud800]:8899", False, False, False),
        ("[fe80::1%]:8899", False, False, False),
        ("[fe80::1%25eth0]:8899", False, False, False),  # RFC 6874's %25: never connects
        ("[fe80::1%25]:8899", False, True, True),  # an interface's index, 25
        ("[fe80::1%250]:8899", False, True, True),
    ],
)
def test_one_host_rule(text: str, name: bool, authority: bool, with_port: bool) -> None:
    assert is_host_name(text) is name
    assert is_authority(text) is authority
    assert is_authority(text, port_required=True) is with_port


@pytest.mark.parametrize(
    ("target", "voice"),
    [
        ("http://10.0.0.1:8899", "10.0.0.1"),
        ("http://10.0.0.1:9000/snapshots", "10.0.0.1"),  # another port of one machine
        ("https://User@RPC.example:443", "rpc.example"),
        ("http://[::1]:8899", "::1"),
        ("/var/ledger", "/var/ledger"),  # a local directory is its own
        ("http://[::1", "http://[::1"),  # malformed: its own, never an error
        # one host however the URL spells it
        ("http://[2001:0db8:0:0::6]:13080", "2001:db8::6"),
        ("http://[2001:DB8::6]:8899", "2001:db8::6"),
        ("http://[::ffff:10.0.0.6]:8899", "10.0.0.6"),
        ("http://[::ffff:a00:6]:8899", "10.0.0.6"),
        ("http://[fe80::1%eth0]:8899", "fe80::1%eth0"),  # a link's own machine
    ],
)
def test_voice_of(target: str, voice: str) -> None:
    assert voice_of(target) == voice


@pytest.mark.parametrize(
    ("authority", "meant"),
    [
        ("2001:db8::3:8899", "[2001:db8::3]:8899"),  # a last group that reads as a port
        ("::1:8458", "[::1]:8458"),
        ("2001:db8::1", "[2001:db8::1]"),  # no other reading
        ("fe80::1%eth0:80", "[fe80::1%eth0]:80"),
        ("::1", "[::1]"),
        ("[::1]:8458", None),  # already bracketed
        ("host:8458", None),
        ("a:b:c", None),  # no address at all
    ],
)
def test_bracketed(authority: str, meant: str | None) -> None:
    assert bracketed(authority) == meant


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("2001:0db8::6", "2001:db8::6"),
        ("[2001:0db8:0:0::6]", "2001:db8::6"),
        ("2001:DB8::6", "2001:db8::6"),
        ("::ffff:10.0.0.6", "10.0.0.6"),
        ("[::ffff:a00:6]", "10.0.0.6"),
        ("fe80::1%eth0", "fe80::1%eth0"),  # the zone stays: another link, another machine
        ("[fe80:0::1%eth1]", "fe80::1%eth1"),
        ("10.0.0.6", "10.0.0.6"),
        ("::1", "::1"),
        ("Node.Example", "node.example"),
        ("rpc_1", "rpc_1"),
        ("", ""),
    ],
)
def test_canonical_host(host: str, canonical: str) -> None:
    assert canonical_host(host) == canonical


@pytest.mark.parametrize(
    ("host", "machine"),
    [
        ("2001:db8:1:2::6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::6", "2001:db8:1:3::/64"),  # another /64: another machine
        ("10.0.0.6", "10.0.0.6"),  # IPv4 (an IPv4-mapped one is canonical_host's IPv4)
        # an IPv6 address carrying an IPv4 one is that machine: its 6to4 /48 is its
        # holder's, and NAT64 reaches it (one machine was three voices)
        ("2002:102:304::1", "1.2.3.4"),
        ("2002:102:304:ffff::9", "1.2.3.4"),
        ("64:ff9b::102:304", "1.2.3.4"),
        ("fe80::1%eth0", "fe80::1%eth0"),  # a link's own host
        ("node.example", "node.example"),
        ("", ""),
    ],
)
def test_machine_of(host: str, machine: str) -> None:
    assert machine_of(host) == machine


@pytest.mark.parametrize(
    ("host", "network"),
    [
        ("203.0.113.9", "203.0.113.0/24"),
        ("203.0.113.255", "203.0.113.0/24"),
        ("203.0.114.9", "203.0.114.0/24"),  # another /24: another network
        ("2001:db8:1:2::6", "2001:db8:1::/48"),
        ("2001:db8:1:ffff:ffff:ffff:ffff:ffff", "2001:db8:1::/48"),  # another /64 of its /48
        ("2001:db8:2::6", "2001:db8:2::/48"),
        ("::1", "::/48"),
        ("2002:102:304::1", "1.2.3.0/24"),
        ("64:ff9b::102:305", "1.2.3.0/24"),
        ("fe80::1%eth0", "fe80::1%eth0"),  # a link's own host
        ("node.example", "node.example"),
        ("", ""),
    ],
)
def test_network_of(host: str, network: str) -> None:
    assert network_of(host) == network


def test_one_link_local_address_on_two_links_is_two_hosts() -> None:
    assert voice_of("http://[fe80::1%eth0]:8899") != voice_of("http://[fe80::1%eth1]:8899")
    assert canonical_host("[fe80::1%eth0]") != canonical_host("fe80::1%eth1")


@pytest.mark.parametrize(
    ("authority", "canonical"),
    [
        ("[2001:0db8::6]:8899", "[2001:db8::6]:8899"),
        ("[::ffff:10.0.0.6]:8899", "10.0.0.6:8899"),
        ("[2001:0db8::6]", "[2001:db8::6]"),
        ("u:p@Node.Example:80", "node.example:80"),
        ("10.0.0.6", "10.0.0.6"),
    ],
)
def test_canonical_authority(authority: str, canonical: str) -> None:
    assert canonical_authority(authority) == canonical


@pytest.mark.parametrize("twice", ["http://[2001:db8::6]:13080", "http://[2001:0db8:0:0::6]:13080"])
def test_a_machine_listed_twice_is_one_vote(twice: str) -> None:
    """One machine's sidecar and RPC, however their URLs spell its address, hold one price
    against another machine's (the lower median of the voices' sizes)."""
    name = "snapshot-1000-x.tar.zst"
    listed = [
        (name, True, 10**11, voice_of("http://[2001:db8::9]:8899")),
        (name, True, 10**15, voice_of("http://[2001:db8::6]:8899")),
        (name, True, 10**15, voice_of(twice)),
    ]
    assert priced_sizes(listed)[name] == 10**11
