"""Tests of tracker.config: loading, every validation rule with its key path, parsers."""

from __future__ import annotations

import base64
import os
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker.config.loading import load_config
from tracker.config.overrides import with_overrides
from tracker.config.schema import (
    BasicAuth,
    BearerAuth,
    Config,
    ConsulSDConfig,
    LocalTargets,
    TargetGroup,
    check_target,
    format_address,
    parse_address,
    parse_duration,
)
from tracker.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data" / "config"


def write(tmp_path: Path, text: str, name: str = "tracker.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def problem_at(found: list[str], path: str) -> str:
    """The one problem reported at exactly ``path``."""
    matching = [line for line in found if line.startswith(f"{path}: ")]
    assert len(matching) == 1, f"expected one problem at {path!r}, got {found}"
    return matching[0]


# --- Go tracker compatibility -------------------------------------------------------------


def test_go_example_config_loads() -> None:
    config = load_config(DATA / "go-example.yml")
    assert config.scrape_interval == 15.0
    assert config.scrape_timeout == 10.0
    assert config.default_group == "mainnet"
    (group,) = config.target_groups
    assert group.group == "mainnet"
    assert group.scheme == "http"
    assert group.static_targets is not None
    assert group.static_targets.targets == (
        "solana-mainnet-1.example.org:8899",
        "solana-mainnet-2.example.org:8899",
        "solana-mainnet-3.example.org:8899",
    )
    assert group.authorization is None
    assert config.config_path == str(DATA / "go-example.yml")


def test_go_consul_example_loads() -> None:
    config = load_config(DATA / "go-consul.yml")
    consul = config.target_groups[0].consul_sd_config
    assert consul == ConsulSDConfig(host="localhost:8500", service="solana-sidecar-mainnet")
    assert config.warnings == ()


def test_every_go_key_loads_including_yaml_v3_tls_keys() -> None:
    config = load_config(DATA / "go-every-key.yml")
    group = config.target_groups[0]
    assert group.scheme == "https"
    assert group.api_path == "/sidecar"
    assert group.tls_config is not None
    assert group.tls_config.ca_file == str(DATA / "ca.pem")
    assert group.tls_config.cert_file == str(DATA / "client.pem")
    assert group.tls_config.key_file == str(DATA / "client.key")
    assert group.tls_config.insecure_skip_verify is True
    assert group.file_targets is not None
    assert group.file_targets.path == str(DATA / "targets.txt")
    # Go sets the bearer header after the basic one: the bearer token wins.
    assert group.authorization == "Bearer t0ken"
    assert config.proxy_snapshot_downloads is True
    assert config.proxy_snapshot_cache_dir == str(DATA / "cache")
    assert config.group_named("testnet") is config.target_groups[1]
    assert config.group_named("devnet") is None


def test_go_tls_key_and_its_alias_together_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    found = problems(
        tmp_path,
        """
        target_groups:
          - group: g
            tls_config: {ca_file: ca.pem, cafile: ca.pem}
        """,
    )
    assert "give only one" in problem_at(found, "target_groups[0].tls_config.cafile")


def test_null_values_mean_the_key_is_absent(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        scrape_interval:
        listen:
        target_groups:
          - group: g
            scheme:
            basic_auth:
            http_targets:
              targets:
        """,
    )
    assert config.scrape_interval == 15.0
    assert config.listen == ":8458"
    group = config.target_groups[0]
    assert group.scheme == "http"
    assert group.basic_auth is None
    assert group.http_targets is not None
    assert group.http_targets.targets == ()


# --- the spec's full example and defaults --------------------------------------------------


def test_spec_example_loads(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (tmp_path / "targets.txt").write_text("10.0.0.9:13080\n")
    config = load(
        tmp_path,
        f"""
        scrape_interval: 15s
        scrape_timeout: 10s
        listen: ":8458"
        internal_listen: "127.0.0.1:8457"
        rpc: "http://localhost:8899"
        max_snapshot_age: 1000
        default_group: mainnet
        public_url: ""
        proxy_snapshot_downloads: false
        proxy_snapshot_cache_dir: ""
        cache_complete_on_disconnect: true
        max_target_failures: 3
        scrape_concurrency: 64
        shutdown_grace: 30s
        cache_share_inflight: true
        cache_prefetch: true
        cache_prefetch_concurrency: 2
        target_groups:
          - group: mainnet
            scheme: http
            api_path: ""
            basic_auth: {{username: u, password: p}}
            tls_config: {{ca_file: "", cert_file: "", key_file: "", insecure_skip_verify: false}}
            static_targets: {{targets: ["10.0.0.1:13080"]}}
            file_targets: {{path: targets.txt}}
            http_targets: {{targets: ["https://rpc.example.org"]}}
            local_targets: {{paths: ["{ledger}"]}}
        """,
    )
    assert config.rpc == "http://localhost:8899"
    assert config.shutdown_grace == 30.0
    assert (config.cache_share_inflight, config.cache_prefetch) == (True, True)
    assert config.cache_prefetch_concurrency == 2
    group = config.target_groups[0]
    assert group.authorization == "Basic " + base64.b64encode(b"u:p").decode()
    assert group.local_targets is not None
    assert group.local_targets.paths == (str(ledger),)
    assert config.warnings == ()


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "target_groups: [{group: a}, {group: b}]\n")
    assert config.scrape_interval == 15.0
    assert config.scrape_timeout == 10.0
    assert config.listen == ":8458"
    assert config.internal_listen == "127.0.0.1:8457"
    assert config.default_group == "a"
    assert config.max_snapshot_age == 1000
    assert config.max_target_failures == 3
    assert config.scrape_concurrency == 64
    assert config.shutdown_grace == 30.0
    assert config.cache_complete_on_disconnect is True


def test_source_limits_default_to_no_cap_and_load_as_written(tmp_path: Path) -> None:
    """No cap unless configured: a tracker whose operator set nothing answers no 503 it did
    not answer before (docs/http-api.md, "Source limits")."""
    config = load(tmp_path, "target_groups: [{group: a}]\n")
    limits = config.target_groups[0].source_limits
    assert (limits.max_transfers, limits.max_rate) == (0, 0)
    text = "target_groups:\n  - group: a\n    source_limits: {max_transfers: 4, max_rate: 50MB/s}\n"
    limits = load(tmp_path, text).target_groups[0].source_limits
    assert (limits.max_transfers, limits.max_rate) == (4, 50_000_000)
    for bad, key in (("max_transfers: -1", "max_transfers"), ("max_rate: fast", "max_rate")):
        text = f"target_groups:\n  - group: a\n    source_limits: {{{bad}}}\n"
        assert problem_at(problems(tmp_path, text), f"target_groups[0].source_limits.{key}")


def test_scrape_timeout_defaults_to_the_interval_when_shorter_than_10s(tmp_path: Path) -> None:
    config = load(tmp_path, "scrape_interval: 4s\ntarget_groups: [{group: a}]\n")
    assert config.scrape_timeout == 4.0


def test_zero_groups_are_valid_with_a_warning(tmp_path: Path) -> None:
    config = load(tmp_path, "scrape_interval: 15s\n")
    assert config.target_groups == ()
    assert config.default_group == ""
    assert any(w.startswith("target_groups: ") for w in config.warnings)


def test_explicit_default_group_is_kept(tmp_path: Path) -> None:
    config = load(tmp_path, "default_group: b\ntarget_groups: [{group: a}, {group: b}]\n")
    assert config.default_group == "b"


def test_yaml_1_1_boolean_words_are_booleans_as_in_go(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        proxy_snapshot_downloads: 'y'
        cache_prefetch: "on"
        cache_complete_on_disconnect: 'N'
        target_groups: [{group: g, tls_config: {insecure_skip_verify: yes}}]
        """,
    )
    assert config.proxy_snapshot_downloads is True
    assert config.cache_prefetch is True
    assert config.cache_complete_on_disconnect is False
    assert config.target_groups[0].tls_config is not None
    assert config.target_groups[0].tls_config.insecure_skip_verify is True


def test_values_are_normalised(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        public_url: https://tracker.example.org/snap/
        target_groups:
          - group: a
            scheme: HTTPS
            api_path: api/v0/
            http_targets: {targets: ["https://rpc.example.org/", "http://h:8899/x/"]}
          - group: b
            scheme: ""
            api_path: /
        """,
    )
    assert config.public_url == "https://tracker.example.org/snap"
    a, b = config.target_groups
    assert (a.scheme, a.api_path) == ("https", "/api/v0")
    assert a.http_targets is not None
    assert a.http_targets.targets == ("https://rpc.example.org", "http://h:8899/x")
    assert (b.scheme, b.api_path) == ("http", "")


# --- file-level errors ----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yml")
    assert info.value.problems == [
        f"{tmp_path / 'nope.yml'}: cannot read the config file: No such file or directory"
    ]


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    found = problems(tmp_path, "scrape_interval: 15s\ntarget_groups: [\n  - group: a\n")
    assert len(found) == 1
    assert "invalid YAML at line 3" in found[0]


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    found = problems(tmp_path, "scrape_interval: 15s\nlisten: ':1'\nscrape_interval: 5s\n")
    assert len(found) == 1
    assert "line 3, column 1: duplicate key 'scrape_interval'" in found[0]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    found = problems(tmp_path, "- group: a\n")
    assert found == [f"{tmp_path / 'tracker.yml'}: expected a mapping of settings, got a list"]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    assert problems(tmp_path, text) == [f"{tmp_path / 'tracker.yml'}: the config file is empty"]


# --- one case per validation rule: (YAML, key path, part of the message) ---------------------

GROUP = "target_groups:\n  - group: g\n"

RULES = [
    ("scrap_interval: 15s\n", "scrap_interval", "unknown key (did you mean 'scrape_interval'?)"),
    (GROUP + "    colour: red\n", "target_groups[0].colour", "unknown key"),
    (
        GROUP + "    basic_auth: {username: u, pass: x}\n",
        "target_groups[0].basic_auth.pass",
        "unknown",
    ),
    (
        GROUP + "    static_targets: {targets: [], extra: 1}\n",
        "target_groups[0].static_targets.extra",
        "unknown key",
    ),
    (
        GROUP + "    basic_auth: {username: u, resolved_password: x}\n",
        "target_groups[0].basic_auth.resolved_password",
        "unknown key",
    ),
    ("config_path: /x\n", "config_path", "unknown key"),
    ("target_groups:\n  - scheme: http\n", "target_groups[0].group", "required key missing"),
    (
        GROUP + "    file_targets: {}\n",
        "target_groups[0].file_targets.path",
        "required key missing",
    ),
    ("listen: true\n", "listen", "expected a string, got a boolean (true)"),
    ("rpc: 5\n", "rpc", "expected a string, got an integer (5)"),
    (GROUP + "    scheme: [http]\n", "target_groups[0].scheme", "expected a string, got a list"),
    (
        "proxy_snapshot_downloads: 'sure'\n",
        "proxy_snapshot_downloads",
        "expected true or false, got a string",
    ),
    ("max_snapshot_age: 10.5\n", "max_snapshot_age", "expected an integer, got a number (10.5)"),
    ("max_snapshot_age: true\n", "max_snapshot_age", "expected an integer, got a boolean"),
    ("target_groups: {group: g}\n", "target_groups", "expected a list, got a mapping"),
    (
        GROUP + "    static_targets: {targets: '10.0.0.1:1'}\n",
        "target_groups[0].static_targets.targets",
        "expected a list, got a string",
    ),
    (
        GROUP + "    basic_auth: admin\n",
        "target_groups[0].basic_auth",
        "expected a mapping, got a string",
    ),
    ("scrape_interval: 0s\n", "scrape_interval", "must be a positive duration"),
    ("scrape_interval: -5s\n", "scrape_interval", "must not be negative"),
    ("scrape_interval: soon\n", "scrape_interval", "expected a duration"),
    ("scrape_interval: true\n", "scrape_interval", "got a boolean"),
    ("scrape_timeout: 0\n", "scrape_timeout", "must be a positive duration"),
    (
        "scrape_interval: 5s\nscrape_timeout: 6s\n",
        "scrape_timeout",
        "must not be longer than scrape_interval (6s > 5s)",
    ),
    (
        "scrape_timeout: 20s\n",
        "scrape_timeout",
        "must not be longer than scrape_interval (20s > 15s)",
    ),
    ("shutdown_grace: 0s\n", "shutdown_grace", "must be a positive duration"),
    ("first_byte_timeout: 0s\n", "first_byte_timeout", "must be a positive duration"),
    ("first_byte_timeout: '2'\n", "first_byte_timeout", "missing unit"),
    ("serve_user_agents: Firedancer\n", "serve_user_agents", "expected a list"),
    ("serve_user_agents: ['']\n", "serve_user_agents[0]", "must not be empty"),
    ('serve_user_agents: [a, "b\\tc"]\n', "serve_user_agents[1]", "printable ASCII"),
    (
        "target_groups:\n  - group: 'main net'\n",
        "target_groups[0].group",
        "must match [A-Za-z0-9_.-]+",
    ),
    ("target_groups:\n  - group: ''\n", "target_groups[0].group", "must match"),
    # The group name is a directory of the cache: "." and ".." would leave it, and names
    # starting with a dot are the cache's own temp files.
    ("target_groups:\n  - group: '.'\n", "target_groups[0].group", "must not start with"),
    ("target_groups:\n  - group: '..'\n", "target_groups[0].group", "must not start with"),
    ("target_groups:\n  - group: .hidden\n", "target_groups[0].group", "must not start with"),
    (f"target_groups:\n  - group: {'g' * 129}\n", "target_groups[0].group", "at most 128"),
    (
        GROUP + "  - group: g\n",
        "target_groups[1].group",
        "duplicate group name 'g' (also target_groups[0])",
    ),
    (GROUP + "    scheme: ftp\n", "target_groups[0].scheme", "scheme must be 'http' or 'https'"),
    (GROUP + "    api_path: '/a?b'\n", "target_groups[0].api_path", "must be a URL path"),
    (
        GROUP + "    static_targets: {targets: ['http://10.0.0.1:1']}\n",
        "target_groups[0].static_targets.targets[0]",
        "not a host:port target",
    ),
    (
        GROUP + "    static_targets: {targets: ['10.0.0.1:70000']}\n",
        "target_groups[0].static_targets.targets[0]",
        "port must be a number from 1 to 65535",
    ),
    (
        GROUP + "    static_targets: {targets: [':13080']}\n",
        "target_groups[0].static_targets.targets[0]",
        "missing host",
    ),
    (
        GROUP + "    static_targets: {targets: ['fe80::1:13080']}\n",
        "target_groups[0].static_targets.targets[0]",
        "needs brackets",
    ),
    (
        GROUP + "    http_targets: {targets: [foo]}\n",
        "target_groups[0].http_targets.targets[0]",
        "not an absolute http(s) URL: 'foo'",
    ),
    (
        GROUP + "    http_targets: {targets: ['ftp://h/']}\n",
        "target_groups[0].http_targets.targets[0]",
        "not an absolute http(s) URL",
    ),
    (
        GROUP + "    http_targets: {targets: ['http:///x']}\n",
        "target_groups[0].http_targets.targets[0]",
        "not an absolute http(s) URL",
    ),
    (
        GROUP + "    http_targets: {targets: ['http://h:99999']}\n",
        "target_groups[0].http_targets.targets[0]",
        "not an absolute http(s) URL",
    ),
    (
        GROUP + "    http_targets: {targets: ['http://h/?a=1']}\n",
        "target_groups[0].http_targets.targets[0]",
        "must not have a query or fragment",
    ),
    (
        GROUP + "    http_targets: {targets: ['http://h/#top']}\n",
        "target_groups[0].http_targets.targets[0]",
        "must not have a query or fragment",
    ),
    (
        GROUP + "    basic_auth: {password: p}\n",
        "target_groups[0].basic_auth.username",
        "needs a username",
    ),
    (
        GROUP + "    basic_auth: {username: u, password: p, password_file: secret.txt}\n",
        "target_groups[0].basic_auth",
        "either password or password_file, not both",
    ),
    (
        GROUP + "    basic_auth: {username: u, password_file: missing.txt}\n",
        "target_groups[0].basic_auth.password_file",
        "cannot read '{dir}/missing.txt': No such file or directory",
    ),
    (
        GROUP + "    bearer_auth: {token: t, token_file: secret.txt}\n",
        "target_groups[0].bearer_auth",
        "either token or token_file, not both",
    ),
    (GROUP + "    bearer_auth: {}\n", "target_groups[0].bearer_auth", "set token or token_file"),
    (
        GROUP + "    bearer_auth: {token_file: missing.txt}\n",
        "target_groups[0].bearer_auth.token_file",
        "cannot read '{dir}/missing.txt'",
    ),
    (
        GROUP + "    bearer_auth: {token_file: empty.txt}\n",
        "target_groups[0].bearer_auth.token_file",
        "is empty",
    ),
    (
        GROUP + "    consul_sd_config: {token: t, token_file: secret.txt}\n",
        "target_groups[0].consul_sd_config",
        "not both",
    ),
    (
        GROUP + "    consul_sd_config: {token_file: missing.txt}\n",
        "target_groups[0].consul_sd_config.token_file",
        "cannot read",
    ),
    (
        GROUP + "    tls_config: {ca_file: missing.pem}\n",
        "target_groups[0].tls_config.ca_file",
        "cannot read '{dir}/missing.pem'",
    ),
    (
        GROUP + "    tls_config: {ca_file: subdir}\n",
        "target_groups[0].tls_config.ca_file",
        "Is a directory",
    ),
    (
        GROUP + "    tls_config: {cert_file: missing.pem, key_file: secret.txt}\n",
        "target_groups[0].tls_config.cert_file",
        "cannot read",
    ),
    (
        GROUP + "    tls_config: {cert_file: secret.txt, key_file: missing.key}\n",
        "target_groups[0].tls_config.key_file",
        "cannot read",
    ),
    (
        GROUP + "    tls_config: {cert_file: secret.txt}\n",
        "target_groups[0].tls_config.key_file",
        "required when cert_file is set",
    ),
    (
        GROUP + "    tls_config: {key_file: secret.txt}\n",
        "target_groups[0].tls_config.cert_file",
        "required when key_file is set",
    ),
    (
        GROUP + "    tls_config: {insecure_skip_verify: 1}\n",
        "target_groups[0].tls_config.insecure_skip_verify",
        "expected true or false",
    ),
    (
        GROUP + "    file_targets: {path: ''}\n",
        "target_groups[0].file_targets.path",
        "must not be empty",
    ),
    (
        GROUP + "    file_targets: {path: subdir}\n",
        "target_groups[0].file_targets.path",
        "Is a directory",
    ),
    (
        GROUP + "    file_targets: {path: bad-targets.txt}\n",
        "target_groups[0].file_targets.path",
        "bad-targets.txt line 2: not host:port",
    ),
    (
        GROUP + "    local_targets: {paths: [missing-dir]}\n",
        "target_groups[0].local_targets.paths[0]",
        "no such directory: '{dir}/missing-dir'",
    ),
    (
        GROUP + "    local_targets: {paths: [subdir, secret.txt]}\n",
        "target_groups[0].local_targets.paths[1]",
        "not a directory: '{dir}/secret.txt'",
    ),
    (
        GROUP + "    local_targets: {paths: ['']}\n",
        "target_groups[0].local_targets.paths[0]",
        "must not be empty",
    ),
    ("default_group: nope\n" + GROUP, "default_group", "no target group is named 'nope'"),
    ("default_group: nope\n", "default_group", "no target group is named 'nope'"),
    ("listen: '8458'\n", "listen", "not a valid address"),
    ("listen: ''\n", "listen", "not a valid address"),
    ("internal_listen: 'localhost:http'\n", "internal_listen", "port must be a number"),
    ("rpc: localhost:8899\n", "rpc", "not an absolute http(s) URL"),
    ("rpc: 'http://h/#x'\n", "rpc", "must not have a fragment"),
    ("public_url: tracker.example.org\n", "public_url", "not an absolute http(s) URL"),
    (
        "public_url: 'https://ops:s3cret@t.example.org/'\n",
        "public_url",
        "must not carry credentials (user:password@), got 'https://***@t.example.org/'",
    ),
    (
        "public_url: 'https://t.example.org/?x=1'\n",
        "public_url",
        "must be an origin with an optional path",
    ),
    ("max_target_failures: 0\n", "max_target_failures", "must be at least 1, got 0"),
    ("scrape_concurrency: 0\n", "scrape_concurrency", "must be from 1 to 10000, got 0"),
    ("scrape_concurrency: 10001\n", "scrape_concurrency", "must be from 1 to 10000, got 10001"),
    ("max_snapshot_age: -1\n", "max_snapshot_age", "must be at least 0, got -1"),
    ("cache_prefetch_concurrency: 0\n", "cache_prefetch_concurrency", "must be at least 1, got 0"),
    (
        "proxy_snapshot_cache_dir: secret.txt\nproxy_snapshot_downloads: true\n",
        "proxy_snapshot_cache_dir",
        "not a directory",
    ),
]


@pytest.mark.parametrize(("text", "path", "message"), RULES, ids=[r[1] + "|" + r[2] for r in RULES])
def test_each_rule_reports_its_key_path(tmp_path: Path, text: str, path: str, message: str) -> None:
    (tmp_path / "secret.txt").write_text("s3cret\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad-targets.txt").write_text("10.0.0.1:13080\nhttp://10.0.0.2\n")
    (tmp_path / "subdir").mkdir()
    line = problem_at(problems(tmp_path, text), path)
    assert message.format(dir=tmp_path) in line


def test_many_problems_are_reported_together(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        scrape_interval: 15s
        scrape_timeout: 1m
        listen: nowhere
        scrape_concurrency: 0
        bogus: 1
        default_group: missing
        target_groups:
          - group: a
            scheme: gopher
            http_targets: {targets: ["https://ok.example.org", "foo", "bar"]}
            basic_auth: {username: u, password_file: /nonexistent/pw}
          - group: a
            static_targets: {targets: ["10.0.0.1:13080", "x:0"]}
            unknown: true
          - 42
        """,
    )
    expected_paths = [
        "scrape_timeout",
        "listen",
        "scrape_concurrency",
        "bogus",
        "default_group",
        "target_groups[0].scheme",
        "target_groups[0].http_targets.targets[1]",
        "target_groups[0].http_targets.targets[2]",
        "target_groups[0].basic_auth.password_file",
        "target_groups[1].group",
        "target_groups[1].static_targets.targets[1]",
        "target_groups[1].unknown",
        "target_groups[2]",
    ]
    for path in expected_paths:
        problem_at(found, path)
    assert len(found) == len(expected_paths)
    assert "target_groups[0].http_targets.targets[1]: not an absolute http(s) URL: 'foo'" in found
    assert (
        "target_groups[0].basic_auth.password_file: "
        "cannot read '/nonexistent/pw': No such file or directory"
    ) in found
    assert "target_groups[2]: expected a mapping, got an integer (42)" in found


def test_config_error_message_is_one_line_per_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "listen: x\nrpc: y\n")
    assert str(info.value).splitlines() == info.value.problems
    assert len(info.value.problems) == 2


# --- paths, secrets, warnings ------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    (conf_dir / "ledger").mkdir(parents=True)
    (conf_dir / "pw").write_text("pw\n")
    (conf_dir / "ca.pem").write_text("ca")
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
            consul_sd_config: {host: "localhost:8500", token_file: tok}
          - group: b
            basic_auth: {username: user, password_file: pw}
            bearer_auth: {token: inline-token-654}
            consul_sd_config: {token: consul-token-987}
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


# --- parsers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("15s", 15.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("2h45m", 9900.0),
        ("300us", 0.0003),
        ("300µs", 0.0003),
        ("300μs", 0.0003),
        ("1500000ns", 0.0015),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("1h1m1s1ms", 3661.001),
        ("+3s", 3.0),
        ("0", 0.0),
        ("-0s", 0.0),
        (15, 15.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds, rel=1e-12, abs=0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1s", "must not be negative"),
        (-1, "must not be negative"),
        (-0.5, "must not be negative"),
        ("15", "missing unit in duration '15'"),
        ("1.5", "missing unit"),
        ("", "expected a duration"),
        ("s", "expected a duration"),
        ("1x", "expected a duration"),
        ("1s ", "expected a duration"),
        ("1 s", "expected a duration"),
        ("1m-5s", "expected a duration"),
        ("1d", "expected a duration"),
        (".s", "expected a duration"),
        ("+", "expected a duration"),
        (True, "got a boolean"),
        (None, "got null"),
        ([1], "got a list"),
        (float("nan"), "expected a duration"),
        (float("inf"), "expected a duration"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(value)


@given(st.integers(0, 100), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_parse_duration_adds_up_components(h: int, m: int, s: int, ms: int) -> None:
    expected = h * 3600 + m * 60 + s + ms / 1000
    assert parse_duration(f"{h}h{m}m{s}s{ms}ms") == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":8458", ("", 8458)),
        ("127.0.0.1:8457", ("127.0.0.1", 8457)),
        ("localhost:0", ("localhost", 0)),
        ("tracker.example.org:65535", ("tracker.example.org", 65535)),
        ("[::1]:8458", ("::1", 8458)),
        ("[::]:80", ("::", 80)),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert format_address(*expected) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "8458",
        "localhost",
        "localhost:",
        "localhost:http",
        "localhost:65536",
        "localhost:-1",
        "::1:8458",
        "[::1]",
        "[::1]8458",
        "[not-v6]:80",
        "[::1:80",
        "http://localhost:80",
        "bad host:80",
        "-host:80",
    ],
)
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a valid address") as info:
        parse_address(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    "text", ["10.0.0.1:13080", "node-1.example.org:1", "node", "[2001:db8::1]:13080", "[::1]"]
)
def test_check_target_accepts(text: str) -> None:
    assert check_target(text) == text


@pytest.mark.parametrize(
    "text", ["", ":13080", "h:0", "h:65536", "h:x", "http://h:1", "h:1/path", "::1", "a b:1"]
)
def test_check_target_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a host:port target"):
        check_target(text)


# --- command-line overrides -------------------------------------------------------------------


def test_overrides_apply(tmp_path: Path) -> None:
    config = load(tmp_path, "target_groups: [{group: g}]\n")
    changed = with_overrides(
        config,
        listen="127.0.0.1:9000",
        internal_listen="",
        rpc="https://rpc.example.org",
        max_snapshot_age=50,
    )
    assert changed.listen == "127.0.0.1:9000"
    assert changed.internal_listen == ""
    assert changed.rpc == "https://rpc.example.org"
    assert changed.max_snapshot_age == 50
    assert changed.target_groups == config.target_groups
    assert config.listen == ":8458"  # the original is untouched


def test_overrides_none_means_not_given() -> None:
    config = Config(listen=":1")
    assert with_overrides(config, listen=None, rpc=None) == config


def test_overrides_accept_the_flag_text_for_integers() -> None:
    assert with_overrides(Config(), max_snapshot_age="7").max_snapshot_age == 7


def test_invalid_overrides_name_their_flags() -> None:
    with pytest.raises(ConfigError) as info:
        with_overrides(
            Config(), listen="nope", internal_listen="x:y", rpc="ftp://x", max_snapshot_age=-3
        )
    found = info.value.problems
    assert len(found) == 4
    for flag in ("--listen: ", "--internal-listen: ", "--rpc: ", "--max-snapshot-age: "):
        assert any(line.startswith(flag) for line in found), (flag, found)


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="scrape_interval"):
        with_overrides(Config(), scrape_interval=3)


def test_client_settings_have_defaults_and_can_be_set(tmp_path: Path) -> None:
    """README.md#clients: ``serve_user_agents`` defaults to Firedancer, ``[]`` turns it off;
    ``first_byte_timeout`` defaults to 2 s."""
    default = load(tmp_path, "target_groups: [{group: g}]\n")
    assert default.serve_user_agents == ("Firedancer",)
    assert default.first_byte_timeout == 2.0
    custom = load(
        tmp_path,
        "first_byte_timeout: 750ms\nserve_user_agents: []\ntarget_groups: [{group: g}]\n",
    )
    assert (custom.first_byte_timeout, custom.serve_user_agents) == (0.75, ())


# --- trust.known_sources ------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["foo", "foo.example", "http//h:1", "h:²", "h:0", "", "~/ledger"])
def test_a_known_source_that_names_no_target_is_refused(tmp_path: Path, entry: str) -> None:
    found = problems(
        tmp_path, f"target_groups: [{{group: g, trust: {{known_sources: ['{entry}']}}}}]\n"
    )
    assert "expected a target URL (http://host:port), host:port or a path" in problem_at(
        found, "target_groups[0].trust.known_sources[0]"
    )


def test_known_sources_are_kept_as_the_targets_are_named(tmp_path: Path) -> None:
    (tmp_path / "ledger").mkdir()
    config = load(
        tmp_path,
        """
        target_groups:
          - group: g
            static_targets: {targets: ["10.0.0.1:13080"]}
            http_targets: {targets: ["http://10.0.0.2:8899/"]}
            local_targets: {paths: [ledger]}
            trust:
              known_sources: ["10.0.0.1:13080", "http://10.0.0.2:8899/", "./ledger", "[::1]:80"]
        """,
    )
    known = config.target_groups[0].trust.known_sources
    assert known == ("10.0.0.1:13080", "http://10.0.0.2:8899", f"{tmp_path}/ledger", "[::1]:80")
    # Each but the last names a configured target; the last warns.
    assert config.warnings == (
        "target_groups[0].trust.known_sources[3]: '[::1]:80' matches no configured target of"
        " the group, so it trusts nothing",
    )


def test_an_unmatched_known_source_warns_with_discovery_in_mind(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        rpc: http://127.0.0.1:1
        target_groups:
          - group: g
            cluster_discovery: {rpc: ["http://127.0.0.1:8899"]}
            trust: {known_sources: ["http://10.9.9.9:8899"]}
        """,
    )
    [warning] = config.warnings
    assert warning.startswith("target_groups[0].trust.known_sources[0]: 'http://10.9.9.9:8899'")
    assert warning.endswith("(unless Consul or cluster discovery finds it)")
