"""Tests of tracker.config: paths, secret files and warnings."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from helpers_config import load, problem_at, problems, write
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.config.loading import load_config
from tracker.config.schema import (
    BasicAuth,
    BearerAuth,
    ConsulSDConfig,
    LocalTargets,
    TargetGroup,
)
from tracker.config.warnings import similar_group_names

DATA = Path(__file__).parent.parent / "data" / "config"

# --- paths, secrets, warnings ------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    (conf_dir / "ledger").mkdir(parents=True)
    (conf_dir / "pw").write_text("pw\n")
    (conf_dir / "ca.pem").write_bytes((DATA / "ca.pem").read_bytes())
    (conf_dir / "targets.txt").write_text("h:1\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # resolution must not depend on the working directory
    path = write(
        conf_dir,
        """
        proxy_snapshot_downloads: true
        proxy_snapshot_cache_dir: cache/../cache
        target_groups:
          - group: g
            basic_auth: {username: u, password_file: pw}
            tls_config: {ca_file: ./ca.pem}
            file_targets: {path: targets.txt}
            local_targets: {paths: [ledger]}
        """,
    )
    config = load_config(os.path.relpath(path))
    group = config.target_groups[0]
    assert config.config_path == str(path)
    assert config.proxy_snapshot_cache_dir == str(conf_dir / "cache")
    assert group.basic_auth is not None
    assert group.basic_auth.password_file == str(conf_dir / "pw")
    assert group.tls_config is not None
    assert group.tls_config.ca_file == str(conf_dir / "ca.pem")
    assert group.file_targets is not None
    assert group.file_targets.path == str(conf_dir / "targets.txt")
    assert group.local_targets is not None
    assert group.local_targets.paths == (str(conf_dir / "ledger"),)


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    config = load(
        tmp_path, f"target_groups: [{{group: g, local_targets: {{paths: ['{ledger}']}}}}]"
    )
    assert config.target_groups[0].local_targets == LocalTargets(paths=(str(ledger),))


def test_secret_files_are_read_at_load(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("p@ss\n\n")  # only one trailing newline is stripped
    (tmp_path / "token").write_bytes(b"abc\r\n")
    (tmp_path / "cr").write_bytes(b"pw\r")
    (tmp_path / "acl").write_text("consul-acl\n")
    config = load(
        tmp_path,
        """
        target_groups:
          - group: basic
            basic_auth: {username: user, password_file: pw}
          - group: bearer
            bearer_auth: {token_file: token}
          - group: cr
            basic_auth: {username: u, password_file: cr}
            consul_sd_config: {host: "localhost:8500", service: s, token_file: acl}
        """,
    )
    basic, bearer, cr = config.target_groups
    assert cr.consul_sd_config is not None
    assert cr.consul_sd_config.resolved_token == "consul-acl"
    assert cr.basic_auth is not None
    assert cr.basic_auth.resolved_password == "pw\r"
    assert basic.authorization == "Basic " + base64.b64encode(b"user:p@ss\n").decode()
    assert bearer.authorization == "Bearer abc"


def test_secrets_never_appear_in_repr(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("file-password-123\n")
    (tmp_path / "tok").write_text("file-token-456\n")
    config = load(
        tmp_path,
        """
        rpc: https://rpc.example.org/?api-key=rpc-key-789
        target_groups:
          - group: a
            basic_auth: {username: user, password: inline-password-321}
            consul_sd_config: {host: "localhost:8500", service: s, token_file: tok}
          - group: b
            basic_auth: {username: user, password_file: pw}
            bearer_auth: {token: inline-token-654}
            consul_sd_config: {service: s, token: consul-token-987}
          - group: c
            bearer_auth: {token_file: tok}
        """,
    )
    text = repr(config) + str(config)
    secrets = ["file-password-123", "file-token-456", "rpc-key-789", "inline-password-321"]
    secrets += ["inline-token-654", "consul-token-987"]
    for secret in secrets:
        assert secret not in text
    assert "user" in text  # the username is not a secret
    assert config.target_groups[2].authorization == "Bearer file-token-456"


def test_authorization_of_hand_built_groups() -> None:
    assert TargetGroup(group="g").authorization is None
    basic = TargetGroup(group="g", basic_auth=BasicAuth(username="a", password="b"))
    assert basic.authorization == "Basic YTpi"
    from_file = BasicAuth(username="a", password_file="/f", resolved_password="c")
    assert TargetGroup(group="g", basic_auth=from_file).authorization == "Basic YTpj"
    bearer = TargetGroup(group="g", bearer_auth=BearerAuth(token="t"))
    assert bearer.authorization == "Bearer t"
    assert ConsulSDConfig(token="acl").resolved_token == "acl"


def test_warnings_for_valid_but_suspicious_settings(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        proxy_snapshot_cache_dir: /var/cache/tracker
        target_groups:
          - group: a
            file_targets: {path: later.txt}
          - group: b
            basic_auth: {username: u, password: p}
            bearer_auth: {token: t}
            http_targets: {targets: ["https://h"]}
          - group: c
        """,
    )
    prefixes = [w.split(": ", 1)[0] for w in config.warnings]
    assert prefixes == [
        "proxy_snapshot_cache_dir",
        "target_groups[0].file_targets.path",
        "target_groups[1]",
        "target_groups[2]",
    ]
    assert "does not exist yet" in config.warnings[1]


@pytest.mark.parametrize(
    "content", ["# fleet\n\n  10.0.0.1:13080  \n[::1]:13080\n", '["10.0.0.1:13080", "h:1"]\n']
)
def test_file_targets_file_is_checked_when_present(tmp_path: Path, content: str) -> None:
    (tmp_path / "t.txt").write_text(content)
    config = load(tmp_path, "target_groups: [{group: g, file_targets: {path: t.txt}}]\n")
    assert config.warnings == ()


def test_a_local_directory_not_there_yet_is_a_warning(tmp_path: Path) -> None:
    """A ledger on a mount not up yet at boot (missing, or a link to it that leads nowhere
    yet): ``serve`` starts and lists it every scrape (a refusal, exit 2, was never retried
    by systemd); something else than a directory there stays an error."""
    (tmp_path / "ledger").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "mnt" / "ledger")
    config = load(
        tmp_path, "target_groups: [{group: g, local_targets: {paths: [ledger, link, mnt/l]}}]\n"
    )
    assert config.warnings == (
        f"target_groups[0].local_targets.paths[1]: '{tmp_path}/link' does not exist yet"
        " (listed every scrape: its target shows failing until it appears)",
        f"target_groups[0].local_targets.paths[2]: '{tmp_path}/mnt/l' does not exist yet"
        " (listed every scrape: its target shows failing until it appears)",
    )
    (tmp_path / "file").write_text("")
    text = "target_groups: [{group: g, local_targets: {paths: [file]}}]\n"
    [problem] = problems(tmp_path, text)
    assert problem == f"target_groups[0].local_targets.paths[0]: not a directory: '{tmp_path}/file'"


@pytest.mark.parametrize(
    ("names", "similar"),
    [
        (["mainnet", "mainet"], [(1, 0)]),  # a letter left out
        (["mainet", "testnet", "mainnet"], [(2, 0)]),
        (["mainnet", "Mainnet"], [(1, 0)]),  # case only
        (["MAINNET", "mainnet", "mainnnet"], [(1, 0), (2, 0)]),  # each once
        (["main", "mains"], [(1, 0)]),
        (["mainnet", "testnet", "devnet"], []),
        (["a", "b", "A"], [(2, 0)]),  # case only, however short
        (["eu", "eus"], []),  # shorter than SIMILAR_FROM: a name of its own
        (["eu-1", "eu-2", "node-a", "node-b"], []),  # a different letter or digit: regions
        (["testnet", "testnet2"], []),  # a digit more: a second one
        (["mainnet", "mainnet-"], []),
        (["mainnet", "mainnat"], []),
    ],
)
def test_similar_group_names(names: list[str], similar: list[tuple[int, int]]) -> None:
    assert similar_group_names(names) == similar


def pairwise_similar(names: list[str]) -> list[tuple[int, int]]:
    """The rule of :func:`similar_group_names` as it reads, every pair compared (what it
    did: minutes for the 20,000 groups of a 1.2 MB file)."""
    from tracker.config.warnings import SIMILAR_FROM

    def one_letter_apart(one: str, other: str) -> bool:
        short, long = sorted((one, other), key=len)
        if len(long) != len(short) + 1 or len(short) < SIMILAR_FROM:
            return False
        at = next(
            (i for i, (a, b) in enumerate(zip(short, long, strict=False)) if a != b), len(short)
        )
        return long[at].isalpha() and long[:at] + long[at + 1 :] == short

    found = []
    folded = [name.casefold() for name in names]
    for later, name in enumerate(folded):
        for earlier, other in enumerate(folded[:later]):
            if name == other or one_letter_apart(name, other):
                found.append((later, earlier))
                break
    return found


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="abnAB1-é", min_size=0, max_size=7), unique=True, max_size=12))
def test_similar_group_names_by_lookups_are_the_pairs_rule(names: list[str]) -> None:
    assert similar_group_names(names) == pairwise_similar(names)


def test_similar_group_names_of_thousands_of_groups_take_no_time() -> None:
    import time

    names = [f"group-{n:05d}" for n in range(20_000)] + ["grup-00000", "Group-00001"]
    started = time.process_time()
    found = similar_group_names(names)
    assert time.process_time() - started < 2.0  # every pair: minutes
    assert found == [(20_000, 0), (20_001, 1)]


def test_a_group_name_one_letter_or_a_case_away_is_warned(tmp_path: Path) -> None:
    """Entries of one name make one group (the Go tracker's way to mix static targets with
    Consul's): an entry whose name is mistyped made a second group silently."""
    config = load(
        tmp_path,
        """
        target_groups:
          - {group: mainnet, static_targets: {targets: ["10.0.0.1:13080"]}}
          - {group: testnet, static_targets: {targets: ["10.0.0.2:13080"]}}
          - {group: mainet, static_targets: {targets: ["10.0.0.3:13080"]}}
          - {group: Mainnet, static_targets: {targets: ["10.0.0.4:13080"]}}
          - {group: mainnet, static_targets: {targets: ["10.0.0.5:13080"]}}
        """,
    )
    assert config.warnings == (
        "target_groups[2].group: 'mainet' differs from 'mainnet' (target_groups[0]) only by"
        " one letter: they are two groups (entries merge into one only under the same"
        " name); if they are one cluster, give them one name",
        "target_groups[3].group: 'Mainnet' differs from 'mainnet' (target_groups[0]) only in"
        " case: they are two groups (entries merge into one only under the same name); if"
        " they are one cluster, give them one name",
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("proxy_snapshot_cache_dir", "/tmp/a\\0b"),
        ("proxy_snapshot_cache_dir", "/tmp/\\ud800"),
        ("prove_accounts_temp_dir", "/tmp/a\\0b"),
    ],
)
def test_a_path_no_file_system_call_takes_is_a_config_error(
    tmp_path: Path, key: str, value: str
) -> None:
    # os.path.exists says False for it where open raises: it passed check-config and the
    # daemon died at start with a traceback (a reload of a file target's: at its next round).
    found = problems(tmp_path, f'proxy_snapshot_downloads: true\n{key}: "{value}"\n')
    assert problem_at(found, key).split(": ", 1)[1].startswith("a path ")


def test_a_file_targets_path_with_a_nul_is_a_config_error(tmp_path: Path) -> None:
    text = 'target_groups:\n- group: g\n  file_targets: {path: "t\\0"}\n'
    found = problems(tmp_path, text)
    assert problem_at(found, "target_groups[0].file_targets.path").endswith(
        "a path cannot hold a NUL character"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://a\\0b/", "a URL cannot hold a control character"),
        ("http://\\u2603.com:8899", "host is not a valid internationalised name"),
        ("http://[fe80::1%25v0]:8461", "write the zone id as %eth0"),
        ("http://2001:db8::3:8899", "an IPv6 address needs brackets: http://[2001:db8::3]:8899"),
    ],
)
def test_a_url_httpx_would_refuse_later_is_a_config_error(
    tmp_path: Path, url: str, problem: str
) -> None:
    text = f'target_groups:\n- group: g\n  http_targets: {{targets: ["{url}"]}}\n'
    assert problem in problem_at(
        problems(tmp_path, text), "target_groups[0].http_targets.targets[0]"
    )


@pytest.mark.parametrize("key", ["allow", "deny"])
def test_an_egress_network_with_a_zone_is_a_config_error_naming_its_key(
    tmp_path: Path, key: str
) -> None:
    """``fe80::%eth0/64`` was taken, its zone silently ignored (an address checked after
    resolution has none)."""
    found = problems(tmp_path, f'egress:\n  {key}: ["10.0.0.0/8", "fe80::%eth0/64"]\n')
    assert "has no zone id" in problem_at(found, f"egress.{key}[1]")


def test_groups_are_found_by_name_without_scanning_thousands() -> None:
    # The load asks group_named of every group (its checks and warnings): a scan each,
    # 20,000 groups (a file of 1.2 MB) took minutes.
    import time

    from tracker.config.schema import Config, TargetGroup

    groups = tuple(TargetGroup(group=f"g{n}") for n in range(20_000))
    config = Config(target_groups=groups)
    started = time.process_time()
    assert all(config.group_named(g.group) is g for g in groups)
    assert time.process_time() - started < 2.0  # scans: ~20 s
    assert config.group_named("absent") is None
    few = Config(target_groups=groups[:3])
    assert few.group_named("g2") is groups[2] and few.group_named("g3") is None
