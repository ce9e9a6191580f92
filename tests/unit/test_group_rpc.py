"""Each group's own cluster RPC (docs/configuration.md, the top-level ``rpc`` and the group's
``rpc``): which RPC a group's slot, health and votes come from, the slot each group is told,
the config's checks and ``check-config``'s warning when groups share one RPC.

One top-level ``rpc`` gave every group the same cluster slot: a fleet with a mainnet ``rpc``
and a testnet group had testnet's newer archives screened out by mainnet's slot."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_config import load, problem_at, problems

from tracker.config.loading import load_config
from tracker.config.schema import ClusterProof, Config, TargetGroup
from tracker.config.warnings import config_warnings, shared_rpcs
from tracker.reporting import group_slots, rpc_failures, rpcs_up

MAIN, TEST, DEV = "http://127.0.0.1:8899", "http://127.0.0.1:8898", "http://127.0.0.1:8897"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def fleet(top: str, *groups: tuple[str, str], witnesses: tuple[str, ...] = ()) -> Config:
    """A config of ``groups`` (name, own rpc), with the top-level ``rpc`` ``top``."""
    made = tuple(TargetGroup(group=name, rpc=rpc) for name, rpc in groups)
    return Config(rpc=top, target_groups=made, cluster_proof=ClusterProof(also_rpc=witnesses))


@pytest.mark.parametrize(
    ("config", "group", "rpc"),
    [
        # one cluster, as every config before: the top-level rpc for every group
        (fleet(MAIN, ("mainnet", "")), "mainnet", MAIN),
        (fleet(MAIN, ("mainnet", ""), ("testnet", TEST)), "mainnet", MAIN),
        # a group with its own: that one, whatever the top-level says
        (fleet(MAIN, ("mainnet", ""), ("testnet", TEST)), "testnet", TEST),
        (fleet("", ("mainnet", ""), ("testnet", TEST)), "testnet", TEST),
        # none anywhere: none (the health cannot say, nothing is screened)
        (fleet("", ("mainnet", ""), ("testnet", TEST)), "mainnet", ""),
        # no group named (fetch, the top-level voter) or one not configured: the top-level
        (fleet(MAIN, ("testnet", TEST)), None, MAIN),
        (fleet(MAIN, ("testnet", TEST)), "gone", MAIN),
    ],
)
def test_the_rpc_of_a_group(config: Config, group: str | None, rpc: str) -> None:
    assert config.group_rpc(group) == rpc


@pytest.mark.parametrize(
    ("config", "by_url"),
    [
        (fleet(MAIN, ("a", ""), ("b", "")), {MAIN: ("a", "b")}),
        (fleet(MAIN, ("a", ""), ("b", TEST)), {MAIN: ("a",), TEST: ("b",)}),
        # the top-level rpc no group uses is not asked
        (fleet(MAIN, ("a", TEST), ("b", DEV)), {TEST: ("a",), DEV: ("b",)}),
        (fleet("", ("a", ""), ("b", TEST)), {TEST: ("b",)}),
        (fleet("", ("a", "")), {}),
    ],
)
def test_each_rpc_is_read_once_for_its_groups(
    config: Config, by_url: dict[str, tuple[str, ...]]
) -> None:
    assert config.slot_rpcs() == by_url


@pytest.mark.parametrize(
    ("config", "answered", "slots"),
    [
        # each group its own cluster's slot: testnet's is no bound on mainnet's, nor back
        (
            fleet(MAIN, ("mainnet", ""), ("testnet", TEST)),
            {MAIN: 370_000_050, TEST: 372_000_000},
            {"mainnet": 370_000_050, "testnet": 372_000_000},
        ),
        # testnet's RPC has no slot: testnet is unbounded, never held to mainnet's
        (
            fleet(MAIN, ("mainnet", ""), ("testnet", TEST)),
            {MAIN: 370_000_050, TEST: None},
            {"mainnet": 370_000_050, "testnet": None},
        ),
        (fleet("", ("mainnet", ""), ("testnet", TEST)), {TEST: 9}, {"mainnet": None, "testnet": 9}),
        (fleet(MAIN, ("a", ""), ("b", "")), {MAIN: 5}, {"a": 5, "b": 5}),
    ],
)
def test_each_group_is_told_its_own_clusters_slot(
    config: Config, answered: dict[str, int | None], slots: dict[str, int | None]
) -> None:
    assert group_slots(config, answered) == slots


@pytest.mark.parametrize(
    ("config", "asked", "answered", "up"),
    [
        # one rpc for both: answered, failed
        (fleet(MAIN, ("a", ""), ("b", "")), {MAIN}, {MAIN: 5}, {"a": True, "b": True}),
        (fleet(MAIN, ("a", ""), ("b", "")), {MAIN}, {}, {"a": False, "b": False}),
        # each its own: one cluster's RPC down is that group's alone
        (fleet("", ("a", MAIN), ("b", TEST)), {MAIN, TEST}, {TEST: 9}, {"a": False, "b": True}),
        # no rpc at all: nothing to be down (no series)
        (fleet("", ("a", ""), ("b", TEST)), {TEST}, {TEST: 9}, {"a": None, "b": True}),
        # a reload moved b to an RPC the read did not ask: not failed, left as it was
        (fleet(MAIN, ("a", ""), ("b", DEV)), {MAIN}, {MAIN: 5}, {"a": True}),
    ],
)
def test_whether_each_groups_rpc_answered(
    config: Config, asked: set[str], answered: dict[str, int], up: dict[str, bool | None]
) -> None:
    assert rpcs_up(config, asked, answered) == up


@pytest.mark.parametrize(
    ("config", "failed", "notes"),
    [
        # one rpc for both: each group names it, with why
        (fleet(MAIN, ("a", ""), ("b", "")), {}, {}),
        (
            fleet(MAIN, ("a", ""), ("b", "")),
            {MAIN: "HTTP 503"},
            {"a": (MAIN, "HTTP 503"), "b": (MAIN, "HTTP 503")},
        ),
        # each its own: the failed one's group alone
        (
            fleet("", ("a", MAIN), ("b", TEST)),
            {MAIN: "cannot connect"},
            {"a": (MAIN, "cannot connect")},
        ),
        # no rpc: nothing to fail
        (fleet("", ("a", ""), ("b", TEST)), {MAIN: "x"}, {}),
        # a reload moved b to DEV during the read: MAIN's failure is not b's
        (fleet(MAIN, ("a", ""), ("b", DEV)), {MAIN: "x"}, {"a": (MAIN, "x")}),
    ],
)
def test_the_groups_whose_rpc_failed_and_why(
    config: Config, failed: dict[str, str], notes: dict[str, tuple[str, str]]
) -> None:
    """The status page's note (docs/http-api.md, "The status page"): the groups whose RPC
    failed the read, each with its RPC and the reason."""
    assert rpc_failures(config, failed) == notes


@pytest.mark.parametrize(
    ("config", "group", "asked"),
    [
        # without its own rpc: the top-level rpc and its witnesses, as before
        (fleet(MAIN, ("mainnet", ""), witnesses=(DEV,)), "mainnet", (MAIN, DEV)),
        (fleet(MAIN, ("mainnet", ""), witnesses=(DEV,)), None, (MAIN, DEV)),
        # with its own: that one alone, never mainnet's witnesses
        (fleet(MAIN, ("testnet", TEST), witnesses=(DEV,)), "testnet", (TEST,)),
        (fleet("", ("mainnet", "")), "mainnet", ()),
    ],
)
def test_the_rpcs_asked_for_a_groups_votes(
    config: Config, group: str | None, asked: tuple[str, ...]
) -> None:
    assert config.cluster_rpcs(group) == asked


def test_a_groups_own_witnesses_are_asked_with_its_rpc() -> None:
    group = TargetGroup(group="testnet", rpc=TEST, also_rpc=(DEV, TEST + "/"))
    config = Config(rpc=MAIN, target_groups=(group,), cluster_proof=ClusterProof(also_rpc=(MAIN,)))
    assert config.cluster_rpcs("testnet") == (TEST, DEV)  # the same RPC twice is one witness


MAIN_CERTS, TEST_CERTS = MAIN + "/certificates", TEST + "/certificates"


def certified(*groups: TargetGroup) -> Config:
    """A config of ``groups`` whose top-level cluster (:data:`MAIN`) has its certificates
    at :data:`MAIN_CERTS`."""
    return Config(
        rpc=MAIN, target_groups=groups, cluster_proof=ClusterProof(certificates=MAIN_CERTS)
    )


@pytest.mark.parametrize(
    ("config", "group", "prefix"),
    [
        # without its own rpc: the top-level cluster's certificates, as before
        (certified(TargetGroup(group="mainnet")), "mainnet", MAIN_CERTS),
        (certified(TargetGroup(group="mainnet")), None, MAIN_CERTS),
        (certified(TargetGroup(group="testnet", rpc=TEST)), "gone", MAIN_CERTS),
        # with its own rpc and its own certificates: those, never the top-level cluster's
        (
            certified(TargetGroup(group="testnet", rpc=TEST, certificates=TEST_CERTS)),
            "testnet",
            TEST_CERTS,
        ),
        # its own rpc and none of its own: the top-level ones (another RPC of the same
        # cluster; another cluster's certificate verifies against none of its stakes)
        (certified(TargetGroup(group="testnet", rpc=TEST)), "testnet", MAIN_CERTS),
        # the top-level ones stay the groups' without their own rpc beside it
        (
            certified(
                TargetGroup(group="mainnet"),
                TargetGroup(group="testnet", rpc=TEST, certificates=TEST_CERTS),
            ),
            "mainnet",
            MAIN_CERTS,
        ),
        (Config(target_groups=(TargetGroup(group="mainnet"),)), "mainnet", ""),
    ],
)
def test_the_certificates_read_for_a_group(config: Config, group: str | None, prefix: str) -> None:
    assert config.group_certificates(group) == ((prefix,) if prefix else ())


def test_a_group_rpc_loads_and_is_checked_as_the_top_level_one(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"""
        rpc: {MAIN}
        target_groups:
          - group: mainnet
          - group: testnet
            rpc: {TEST}
            also_rpc: [{DEV}]
            certificates: {TEST_CERTS}
        """,
    )
    assert [g.rpc for g in config.target_groups] == ["", TEST]
    assert config.target_groups[1].also_rpc == (DEV,)
    assert config.group_certificates("testnet") == (TEST_CERTS,)
    assert TEST not in repr(config)  # it may carry an API key, as the top-level one


@pytest.mark.parametrize(
    ("entry", "path", "message"),
    [
        ("rpc: ftp://127.0.0.1/", "target_groups[0].rpc", "http"),
        ("rpc: 'http://127.0.0.1:8899/#x'", "target_groups[0].rpc", "must not have a fragment"),
        ("rpc: 5", "target_groups[0].rpc", "not an absolute http(s) URL: '5'"),
        ("also_rpc: ['ftp://x/']", "target_groups[0].also_rpc[0]", "http"),
        (f"also_rpc: ['{DEV}']", "target_groups[0].also_rpc", "needs the group's own rpc"),
        ("certificates: 'ftp://x/'", "target_groups[0].certificates", "http"),
        (f"certificates: '{DEV}/c'", "target_groups[0].certificates", "needs the group's own rpc"),
        (
            f"certificates: ['{DEV}/c']",
            "target_groups[0].certificates",
            "needs the group's own rpc",
        ),
        (
            f"rpc: {TEST}\n    certificates: ['{DEV}/c', '{DEV}/c/']",
            "target_groups[0].certificates[1]",
            "the same relay as certificates[0]",
        ),
        (
            f"rpc: {TEST}\n    certificates: ['{DEV}/c', 'ftp://x/']",
            "target_groups[0].certificates[1]",
            "http",
        ),
    ],
)
def test_a_bad_group_rpc_names_its_key(tmp_path: Path, entry: str, path: str, message: str) -> None:
    found = problems(tmp_path, f"target_groups:\n  - group: g\n    {entry}\n")
    assert message in problem_at(found, path)


def test_entries_of_one_group_must_name_one_rpc(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        f"target_groups:\n  - {{group: g, rpc: '{MAIN}'}}\n  - {{group: g, rpc: '{TEST}'}}\n",
    )
    assert "a group has one rpc" in problem_at(found, "target_groups[1].rpc")


@pytest.mark.parametrize(
    ("config", "shared"),
    [
        # the bug's config: a mainnet rpc and a testnet group without its own
        (fleet(MAIN, ("mainnet", ""), ("testnet", "")), [(MAIN, ("mainnet", "testnet"))]),
        # one RPC written twice is one RPC
        (fleet(MAIN, ("a", ""), ("b", MAIN + "/")), [(MAIN, ("a", "b"))]),
        (fleet("", ("a", TEST), ("b", TEST), ("c", DEV)), [(TEST, ("a", "b"))]),
        # each its own, or one group: nothing to say
        (fleet(MAIN, ("mainnet", ""), ("testnet", TEST)), []),
        (fleet(MAIN, ("mainnet", "")), []),
        (fleet("", ("a", ""), ("b", "")), []),
    ],
)
def test_groups_that_share_an_rpc(
    config: Config, shared: list[tuple[str, tuple[str, ...]]]
) -> None:
    assert shared_rpcs(config) == shared


def test_check_config_warns_once_naming_the_groups_that_share_an_rpc() -> None:
    warnings = config_warnings(fleet(MAIN, ("mainnet", ""), ("testnet", ""), ("devnet", DEV)))
    [line] = [w for w in warnings if "own `rpc`" in w]
    assert line.startswith("target_groups: the groups mainnet, testnet all take")
    assert MAIN in line and "devnet" not in line
    assert not any("own `rpc`" in w for w in config_warnings(fleet(MAIN, ("a", ""), ("b", TEST))))


def test_the_fleet_example_gives_testnet_its_own_rpc() -> None:
    config = load_config(EXAMPLES / "fleet.yml")
    assert config.group_rpc("mainnet") == config.rpc
    assert config.group_rpc("testnet") not in ("", config.rpc)
    assert shared_rpcs(config) == []


@pytest.mark.parametrize(
    ("need", "sidecars", "rpcs", "warned"),
    [
        # a sidecar and its validator's RPC: one machine, two targets
        (2, ["10.0.0.1:8080"], ["http://10.0.0.1:8899"], "10.0.0.1"),
        (2, ["[2001:db8:1::5]:8080"], ["http://[2001:db8:1::6]:8899"], "2001:db8:1::/48"),
        (1, ["10.0.0.1:8080"], ["http://10.0.0.1:8899"], ""),  # one target is enough anyway
        (2, ["10.0.0.1:8080"], ["http://10.0.0.2:8899"], ""),  # two machines
    ],
)
def test_check_config_warns_of_one_machines_targets_meeting_the_agreement(
    need: int, sidecars: list[str], rpcs: list[str], warned: str
) -> None:
    """``min_agreeing_sources`` counts targets: one machine listed as its sidecar and its
    RPC meets 2 alone, which an operator reading "agreeing sources" may not expect."""
    from tracker.config.schema import HttpTargets, StaticTargets, Trust

    group = TargetGroup(
        group="mainnet",
        static_targets=StaticTargets(targets=tuple(sidecars)),
        http_targets=HttpTargets(targets=tuple(rpcs)),
        trust=Trust(min_agreeing_sources=need),
    )
    found = [w for w in config_warnings(Config(target_groups=(group,))) if "one machine" in w]
    if not warned:
        assert found == []
        return
    [line] = found
    assert line.startswith("target_groups[0].trust.min_agreeing_sources: 2: ")
    assert f"are one machine ({warned}) and count as 2 targets" in line
