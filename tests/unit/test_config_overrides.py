"""Tests of tracker.config: command-line overrides and client settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_config import load

from tracker.config.overrides import with_overrides
from tracker.config.schema import ClusterProof, Config
from tracker.errors import ConfigError

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


@pytest.mark.parametrize(
    ("given", "rpc", "also"),
    [
        ("https://a.example", "https://a.example", ("https://file.example",)),
        (["https://a.example"], "https://a.example", ("https://file.example",)),
        (
            ["https://a.example", "https://b.example", "https://c.example"],
            "https://a.example",
            ("https://b.example", "https://c.example"),
        ),
    ],
    ids=["one URL", "--rpc once", "--rpc three times: the others must agree"],
)
def test_rpc_repeated_sets_the_rpcs_that_must_agree(
    given: str | list[str], rpc: str, also: tuple[str, ...]
) -> None:
    config = Config(cluster_proof=ClusterProof(also_rpc=("https://file.example",)))
    changed = with_overrides(config, rpc=given)
    assert (changed.rpc, changed.cluster_proof.also_rpc) == (rpc, also)
    assert changed.cluster_proof.blocks == config.cluster_proof.blocks


def test_a_bad_repeated_rpc_names_its_flag() -> None:
    with pytest.raises(ConfigError) as info:
        with_overrides(Config(), rpc=["https://a.example", "ftp://b"])
    assert [p.split(":")[0] for p in info.value.problems] == ["--rpc"]


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


@pytest.mark.parametrize(
    ("file", "flags", "named"),
    [
        ("listen: '127.0.0.1:9000'\n", {"internal_listen": "127.0.0.1:9000"}, "--internal-listen"),
        ("internal_listen: ':9000'\n", {"listen": "127.0.0.1:9000"}, "--listen"),
        ("", {"listen": ":9000", "internal_listen": ":9000"}, "--internal-listen / --listen"),
    ],
)
def test_listeners_the_flags_give_are_checked_as_the_files_are(
    tmp_path: Path, file: str, flags: dict[str, str], named: str
) -> None:
    # The file's clash is refused by check-config; one the flags made got past it, and
    # serve failed binding the second listener (exit 1, a restart loop under systemd).
    config = load(tmp_path, file + "target_groups: [{group: g}]\n")
    with pytest.raises(ConfigError) as caught:
        with_overrides(config, **flags)
    assert caught.value.problems[0].startswith(f"{named}: binds the port of listen")
