"""Tests of tracker.config: trust.known_sources."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_config import load, problem_at, problems

# --- trust.known_sources ------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["foo", "foo.example", "http//h:1", "h:²", "h:0", "", "~/ledger"])
def test_a_known_source_that_names_no_target_is_refused(tmp_path: Path, entry: str) -> None:
    found = problems(
        tmp_path, f"target_groups: [{{group: g, trust: {{known_sources: ['{entry}']}}}}]\n"
    )
    assert "expected a target URL (http://host:port), host:port or a path" in problem_at(
        found, "target_groups[0].trust.known_sources[0]"
    )


def test_a_refused_known_source_is_shown_without_its_credentials(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "target_groups: [{group: g, trust: {known_sources: ['admin:hunter2@10.0.0.1:8899']}}]\n",
    )
    reason = problem_at(found, "target_groups[0].trust.known_sources[0]")
    assert "hunter2" not in reason and "***@10.0.0.1:8899" in reason


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
