"""The parse and choice of a ``getClusterNodes`` answer (tracker.discovery.nodes) on its own:
versions, limits, malformed and hostile answers, bounded memory, the streamed choice against a
plain sort (discovery against real loopback nodes: tests/integration/test_cluster.py)."""

from __future__ import annotations

import random
import tracemalloc
from urllib.parse import urlsplit

import pytest
from cluster_answers import NESTED, empty_nodes, node_entry, nodes_answer
from helpers_bytes import MiB

from tracker.core.hosts import machine_of, network_of
from tracker.discovery.nodes import (
    MAX_NODES,
    Node,
    machine_of_address,
    parse_answer,
    rpc_address,
    select,
    shown_version,
)
from tracker.discovery.targetset import RETRY_FAILED, asked_again_at
from tracker.errors import ProbeError


@pytest.mark.parametrize(
    ("rpc", "address"),
    [
        ("10.0.0.1:8899", "10.0.0.1:8899"),
        ("[2a00:1450:4001::1]:8899", "[2a00:1450:4001::1]:8899"),
        # an IPv4 address written as IPv4-mapped IPv6: one socket, one target
        ("[::ffff:203.0.113.6]:8899", "203.0.113.6:8899"),
        ("[::ffff:cb00:7106]:8899", "203.0.113.6:8899"),
        ("[2a00:1450:4001:0:0:0:0:1]:8899", "[2a00:1450:4001::1]:8899"),
        # a zone id names an interface of the node's machine: skipped, whatever it holds
        ("[fe80::1%eth0]:8899", None),
        ("[fe80::1%a#b]:8899", None),
        ("[2a00:1450:4001::1%\ud800]:8899", None),
        ("node.example:8899", None),
    ],
)
def test_a_nodes_rpc_address(rpc: str, address: str | None) -> None:
    assert rpc_address(rpc) == address


def test_select_versions_limits_and_malformed_addresses() -> None:
    nodes = [
        node_entry(3, "127.0.0.3:80", "2.2.1"),
        node_entry(1, "127.0.0.1:80", "2.1.0"),
        node_entry(2, "[::1]:8899", "2.2.0"),
        node_entry(4, "127.0.0.4:0", "2.2.0"),
        node_entry(5, "localhost:80", "2.2.0"),
        {"rpc": "127.0.0.6:80"},
        "not a node",
    ]
    assert select(nodes, ["2.2.*"], 10) == [
        Node("http://[::1]:8899", "2.2.0"),
        Node("http://127.0.0.3:80", "2.2.1"),
    ]
    assert select(nodes, [], 2) == [
        Node("http://127.0.0.1:80", "2.1.0"),
        Node("http://[::1]:8899", "2.2.0"),
    ]


@pytest.mark.parametrize(
    ("version", "shown"),
    [
        ("2.2.1", "2.2.1"),
        ("0.505.20216", "0.505.20216"),
        ("2.3.0-beta.1+abc_1", "2.3.0-beta.1+abc_1"),
        (None, ""),
        (221, ""),
        ("", ""),
        ("2" * 33, ""),  # longer than any version
        ("2.2.1<script>", ""),
        ("2.2.1\n", ""),
        (" 2.2.1", ""),
        ("\u0662.\u0662.\u0661", ""),  # Arabic-Indic digits: not a plain version
    ],
)
def test_a_node_version_is_shown_only_when_it_is_a_plain_version(
    version: object, shown: str
) -> None:
    assert shown_version(version) == shown
    node = {"pubkey": "a", "rpc": "127.0.0.1:80", "version": version}
    assert select([node], [], 1) == [Node("http://127.0.0.1:80", shown)]


def test_a_32_mib_answer_is_parsed_in_bounded_memory() -> None:
    """The parse's peak (tracemalloc, every allocation of the parse) is the answer's text
    and a few MiB for the 32 MiB answer of empty nodes (json.loads: ~960 MB), and a few MiB
    for 20,000 real nodes of which 100 are kept."""
    # the answers are made before the tracing: their making is no part of the parse (and
    # traced, it took most of the test's time)
    empty = empty_nodes()
    entries = [node_entry(n, f"127.0.{n // 250 % 250}.{n % 250 + 1}:8899") for n in range(20_000)]
    body = nodes_answer(entries)
    tracemalloc.start()
    try:
        with pytest.raises(ProbeError, match=f"^more than {MAX_NODES} entries$"):
            parse_answer(empty, [], 3000)
        empty_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        chosen = parse_answer(body, [], 100)
        real_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert chosen == select(entries, [], 100)
    assert empty_peak < len(empty) + 8 * MiB, empty_peak
    assert real_peak < 8 * MiB, real_peak


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (NESTED, "entry 0: JSON nested too deeply"),
        (b'{"result": [{"x": "' + b"a" * 9000 + b'"}]}', "entry 0: larger than 8192 characters"),
        (b'{"x": [' + b"0," * 5000 + b'0], "result": []}', "member 'x': larger than 8192"),
        (b'{"result": [' + b"0," * 200 + b"0]}", "more than 100 entries"),
        (b'{"result": [{"a": ' + b"9" * 5000 + b"}]}", "entry 0: invalid JSON: Exceeds the limit"),
        (b'{"result": [NaN]}', "entry 0: invalid JSON: NaN is not valid JSON"),
        (b'{"result": []} []', "invalid JSON at character 15: data after the object"),
        (b'{"result": [', "invalid JSON at character 12: Expecting value"),
        (b'{"result": [] "id": 1}', "invalid JSON at character 14: expected ',' or '}'"),
        (b"{1: []}", "invalid JSON at character 2: expected a member name and ':'"),
        (b'{"error": {"code": -32601}}', "no 'result' array in the answer"),
        (b'{"result": {}}', "no 'result' array in the answer"),
        (b"[]", "answer is not a JSON object"),
        (b'"x"', "answer is not a JSON object"),
        (b"\xff", "body is not UTF-8"),
    ],
)
def test_hostile_answer_shapes_fail_the_answer_in_one_line(body: bytes, reason: str) -> None:
    with pytest.raises(ProbeError) as info:
        parse_answer(body, [], 10, max_nodes=100)
    assert str(info.value).startswith(reason) and "\n" not in str(info.value)


def test_the_streamed_choice_is_the_sorted_choice_and_skips_malformed_nodes() -> None:
    """Nodes in a shuffled order, duplicates and malformed ones: the parse keeps what
    sorting every node by public key would (the chooser prunes as it goes)."""
    rng = random.Random(7)
    entries: list[object] = [
        node_entry(rng.randrange(5000), f"127.0.0.{n % 250 + 1}:{1000 + n}") for n in range(3000)
    ]
    # one machine (7 hosts, 11 ports each) under many public keys: one node, the lowest key's
    entries += [node_entry(5000 + n, f"127.0.0.{n % 7 + 1}:{1000 + n % 11}") for n in range(400)]
    entries += [
        "not a node",
        {"pubkey": "x", "rpc": "127.0.0.1:²"},
        {"pubkey": 5, "rpc": "1.2.3.4:1"},
    ]
    entries.append({"pubkey": "y" * 65, "rpc": "127.0.0.1:80"})
    entries.append({"pubkey": "nested", "rpc": "127.0.0.1:80", "extra": {"deep": [1, [2]]}})
    rng.shuffle(entries)
    expected = naive_select(entries, 50)
    assert parse_answer(nodes_answer(entries), [], 50) == expected == select(entries, [], 50)
    everything = parse_answer(nodes_answer(entries), [], 5000)
    assert everything == naive_select(entries, 5000)
    assert "http://127.0.0.1:80" in [n.url for n in everything]


def naive_select(entries: list[object], max_targets: int) -> list[Node]:
    """Of every usable node, per machine (a host whatever its ports, an IPv6 one's /64) the
    node of its lowest public key (of a key listed twice there, the first); each machine's
    place is how many machines of its network (an IPv4 /24, an IPv6 /48) have a lower key;
    the machines of the lowest (place, key) chosen, listed by key."""
    best: dict[str, tuple[str, Node]] = {}
    networks: dict[str, str] = {}
    for node in entries:
        if isinstance(node, dict) and isinstance(node.get("pubkey"), str):
            address = rpc_address(node.get("rpc"))
            if address is not None and len(node["pubkey"]) <= 64:
                host = urlsplit(f"http://{address}").hostname
                assert host is not None
                # a machine's node on agave's RPC port first, then the lowest key
                port = "0" if address.endswith(":8899") else "1"
                machine, pubkey = machine_of(host), port + node["pubkey"]
                networks[machine] = network_of(host)
                if machine not in best or pubkey < best[machine][0]:
                    version = shown_version(node.get("version"))
                    best[machine] = (pubkey, Node(f"http://{address}", version))
    by_key = sorted(best, key=lambda machine: (best[machine][0], machine))
    seen: dict[str, int] = {}
    places = {}
    for machine in by_key:
        places[machine] = seen.get(networks[machine], 0)
        seen[networks[machine]] = places[machine] + 1
    order = sorted(best, key=lambda machine: (places[machine], best[machine][0], machine))
    kept = set(order[:max_targets])
    listed = sorted(kept, key=lambda machine: (best[machine][0][1:], machine))
    return [best[machine][1] for machine in listed]


def test_the_streamed_choice_across_networks_is_the_sorted_choice() -> None:
    """Machines in a few /24s and /48s, several per network, keys shuffled, machines
    listed again under lower and higher keys: the pruning chooser keeps what the sort of
    every machine by (place in its network, key) keeps, at every bound."""
    rng = random.Random(11)
    hosts = [f"198.51.{rng.randrange(6)}.{rng.randrange(1, 40)}" for _ in range(300)]
    hosts += [
        f"[2001:db8:{rng.randrange(4)}:{rng.randrange(30):x}::{rng.randrange(3)}]"
        for _ in range(300)
    ]
    entries: list[object] = [
        node_entry(rng.randrange(20_000), f"{rng.choice(hosts)}:{rng.choice((1000, 1001, 8899))}")
        for _ in range(4000)
    ]
    for max_targets in (1, 2, 7, 40, 150, 1000):
        expected = naive_select(entries, max_targets)
        assert parse_answer(nodes_answer(entries), [], max_targets) == expected
        assert select(entries, [], max_targets) == expected


def test_one_network_of_many_machines_takes_places_only_after_every_other_networks_first() -> None:
    """Ten thousand machines of one IPv6 /48 (a tunnel broker's free /48 is 65,536 /64s),
    each under a public key ground to sort first: sorted by key alone, they took every
    place of ``max_targets`` and no honest node was probed; chosen network by network,
    each honest network's first machine comes first, and the /48 takes what is left."""
    honest = [node_entry(50_000 + n, f"198.51.{n}.{n % 7 + 1}:8899") for n in range(100)]
    # an honest network of three machines keeps them while there is room
    honest += [node_entry(60_000 + n, f"203.0.113.{n + 1}:8899") for n in range(3)]
    flood = [node_entry(n, f"[2001:db8:77:{n:x}::1]:8899") for n in range(10_000)]
    entries: list[object] = [*flood, *honest]
    random.Random(4).shuffle(entries)
    urls = {n["rpc"] for n in honest}
    chosen = parse_answer(nodes_answer(entries), [], 150)
    assert {n.url.removeprefix("http://") for n in chosen} >= urls
    assert len(chosen) == 150  # the /48 fills the room left: 47 of its machines
    assert chosen == select(entries, [], 150) == naive_select(entries, 150)
    # with less room than networks: every network's first, the /48's one among them
    few = parse_answer(nodes_answer(entries), [], 60)
    assert len(few) == 60 and sum(n.url.startswith("http://[2001:db8:77:") for n in few) == 1


@pytest.mark.parametrize(
    ("interval", "failed", "kept", "after"),
    [
        (300.0, False, True, 300.0),  # answered: the whole interval
        (300.0, False, False, 300.0),  # answered an empty list: the same
        (300.0, True, False, RETRY_FAILED),  # failed with no list: soon
        (300.0, True, True, 300.0),  # failed with a list: it serves; a hung RPC holds rounds
        (10.0, True, False, 10.0),  # never later than the interval
        (0.001, False, True, 0.001),
    ],
)
def test_when_cluster_discovery_asks_again(
    interval: float, failed: bool, kept: bool, after: float
) -> None:
    assert asked_again_at(1000.0, interval, failed=failed, kept=kept) == 1000.0 + after


def test_one_address_under_many_public_keys_takes_one_of_max_targets() -> None:
    """Gossip identities are free: a node advertising one RPC address under many low
    public keys took as many of ``max_targets``' places, all one target once keyed by URL,
    and the honest nodes past them were never chosen."""
    liar = [node_entry(n, "203.0.113.9:8899") for n in range(5)]
    # the same socket spelled as IPv4-mapped IPv6 is the same address
    liar.append(node_entry(5, "[::ffff:203.0.113.9]:8899"))
    honest = [node_entry(10 + n, f"198.51.100.{n + 1}:8899") for n in range(3)]
    chosen = select([*liar, *honest], [], 3)
    assert [n.url for n in chosen] == [
        "http://203.0.113.9:8899",
        "http://198.51.100.1:8899",
        "http://198.51.100.2:8899",
    ]
    # streamed with pruning, shuffled: the same choice
    entries: list[object] = [*liar, *honest] * 3
    random.Random(3).shuffle(entries)
    assert parse_answer(nodes_answer(entries), [], 3) == chosen == select(entries, [], 3)


def test_a_liars_identities_on_honest_machines_dead_ports_take_no_machine_s_place() -> None:
    """Gossip identities are free: for each honest machine a liar gossiped one of a lower
    key with its ``rpc`` on that machine's address at a port nothing answers on. One node
    a machine, the lowest key's: the liar's, probed and down, and the honest node never
    probed (two of three gone, a group of discovered nodes had no snapshot). A machine's
    node on agave's RPC port comes first."""
    honest = [node_entry(10 + n, f"198.51.100.{n + 1}:8899") for n in range(3)]
    liar = [node_entry(n, f"198.51.100.{n + 1}:1") for n in range(3)]
    liar.append(node_entry(9, "203.0.113.9:8899"))
    chosen = select([*liar, *honest], [], 10)
    assert [n.url for n in chosen] == [
        "http://203.0.113.9:8899",
        "http://198.51.100.1:8899",
        "http://198.51.100.2:8899",
        "http://198.51.100.3:8899",
    ]
    entries: list[object] = [*liar, *honest] * 3
    random.Random(7).shuffle(entries)
    assert parse_answer(nodes_answer(entries), [], 10) == chosen == select(entries, [], 10)


@pytest.mark.parametrize(
    ("address", "machine"),
    [
        ("203.0.113.9:8899", "203.0.113.9"),
        ("203.0.113.9:1", "203.0.113.9"),  # another port: the same machine
        ("[2001:db8:0:1::1]:8899", "2001:db8:0:1::/64"),
        ("[2001:db8:0:1:ffff::9]:80", "2001:db8:0:1::/64"),  # another address of its /64
        ("[2001:db8:0:2::1]:8899", "2001:db8:0:2::/64"),  # another /64: another machine
    ],
)
def test_the_machine_of_a_nodes_address(address: str, machine: str) -> None:
    assert machine_of_address(address) == machine


def test_one_machine_on_many_ports_or_addresses_takes_one_of_max_targets() -> None:
    """One host on many ports, one IPv6 machine on many addresses of its /64: one place
    each (the lowest key's), streamed with pruning as sorted."""
    ports = [node_entry(n, f"203.0.113.9:{1000 + n}") for n in range(5)]
    prefix = [node_entry(10 + n, f"[2001:db8:0:1::{n + 1}]:8899") for n in range(5)]
    honest = [node_entry(20 + n, f"198.51.100.{n + 1}:8899") for n in range(3)]
    chosen = select([*ports, *prefix, *honest], [], 4)
    assert [n.url for n in chosen] == [
        "http://203.0.113.9:1000",
        "http://[2001:db8:0:1::1]:8899",
        "http://198.51.100.1:8899",
        "http://198.51.100.2:8899",
    ]
    entries: list[object] = [*ports, *prefix, *honest] * 3
    random.Random(5).shuffle(entries)
    assert parse_answer(nodes_answer(entries), [], 4) == chosen == select(entries, [], 4)
