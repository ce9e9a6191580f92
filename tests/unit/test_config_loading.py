"""Tests of tracker.config: the contract's full example, the defaults, and file-level errors."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from helpers_config import load, problem_at, problems

from tracker.config.loading import load_config
from tracker.errors import ConfigError

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


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'listen: ":8458"\n\xff\xfe bad\n', "invalid YAML at line 2: invalid start byte (byte"),
        (b"scrape_interval: 5s\x00\n", "invalid YAML at line 1: special characters"),
    ],
)
def test_a_file_that_is_no_text_is_one_line_naming_where(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    # its problem ran over two lines, with a byte position of "<byte string>"
    path = tmp_path / "tracker.yml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert "\n" not in problem and reason in problem, problem


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # each at its line (it named neither line nor key), never with the value: an
        # unquoted password that reads as a date is a secret
        (
            "scrape_interval: 2024-02-30\n",
            "line 1, column 18: not a valid timestamp (quote it for text): day is out of range",
        ),
        (
            "target_groups:\n  - group: g\n    basic_auth: {username: u, password: 2024-02-30}\n",
            "line 3, column 41: not a valid timestamp (quote it for text): day is out of range",
        ),
        ("max_connections: !!int abc\n", "line 1, column 18: not a valid int"),
        ("max_connections: !!float x\n", "line 1, column 18: not a valid float"),
        # a number Python would refuse in words about its own settings
        (f"max_connections: {'9' * 5000}\n", "line 1, column 18: a number of 5000 characters"),
    ],
)
def test_a_value_yaml_cannot_build_is_a_problem_not_a_traceback(
    tmp_path: Path, text: str, reason: str
) -> None:
    # PyYAML's constructors raise ValueError for these (a traceback, exit 1; a SIGHUP with
    # such a file ended the daemon)
    found = problems(tmp_path, text)
    assert len(found) == 1 and reason in found[0], found
    assert "2024-02-30" not in found[0] and "set_int_max_str_digits" not in found[0]


def test_a_key_that_is_no_plain_value_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    """A key made of a chain of aliases, each 30 lists deep (within the nesting bound as
    written): built recursively, it ended in a RecursionError traceback, exit 1, and a
    reload with it logged a traceback."""
    lines, last = [], None
    for n in range(9):
        inner = f"*a{last}" if last is not None else "x"
        lines.append(f"a{n}: &a{n} " + "[" * 30 + inner + "]" * 30)
        last = n
    found = problems(tmp_path, "\n".join([*lines, "? *a8", ": 1"]) + "\n")
    assert len(found) == 1
    assert "a key must be a plain value, not a list or a mapping" in found[0]


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
