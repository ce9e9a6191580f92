"""Tests of tracker.config: the Go tracker's config files load as they are."""

from __future__ import annotations

from pathlib import Path

from helpers_config import DATA, load, problem_at, problems

from tracker.config.loading import load_config
from tracker.config.schema import (
    ConsulSDConfig,
)

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
