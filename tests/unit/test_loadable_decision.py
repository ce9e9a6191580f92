"""A group's ``trust.loadable_by`` (docs/http-api.md, "Proven archives"): the one decision
every holder of copies asks (:func:`tracker.proof.levels.shortfall`), as a table; the level it
asks for by itself (``Trust.asked``); where local files use it; the config's answer to a bad
value (its key path, exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from archives import archive_name
from helpers_config import load, problem_at, problems, write

from tracker.cli import main
from tracker.config.schema import Trust
from tracker.core.digests import Verified, below_required
from tracker.proof.levels import Level, Proof, not_loadable, shortfall
from tracker.proof.records.localcopies import Checked, admission, standing

STORAGES = "agave cannot load it: 3 account storages for slot 7 (agave loads one a slot; ...)"
VOTE = "agave 4.3 and later refuse to load it: vote account X: its owner is not the vote program"
FIREDANCER = Proof(Level.ACCOUNTS, "h", "b", unloadable=STORAGES)
INVALID_VOTE = Proof(Level.MANIFEST, "h", "b", unloadable=VOTE)
LOADABLE = Proof(Level.ACCOUNTS, "h", "b")


@pytest.mark.parametrize(
    ("proof", "required", "loadable_by", "is_full", "expected"),
    [
        # Without the key nothing is refused for what a loader refuses (as before).
        (FIREDANCER, Level.MANIFEST, None, True, None),
        (FIREDANCER, Level.ACCOUNTS, None, True, None),
        # With it, what the proof says agave cannot load, whatever the level reached.
        (FIREDANCER, Level.MANIFEST, "agave", True, f"trust.loadable_by agave: {STORAGES}"),
        (FIREDANCER, Level.STRUCTURE, "agave", True, f"trust.loadable_by agave: {STORAGES}"),
        (INVALID_VOTE, Level.MANIFEST, "agave", False, f"trust.loadable_by agave: {VOTE}"),
        # Before the level: a copy agave cannot load is refused for that, not for its level.
        (INVALID_VOTE, Level.ACCOUNTS, "agave", True, f"trust.loadable_by agave: {VOTE}"),
        # A loadable copy is held to its level only.
        (LOADABLE, Level.ACCOUNTS, "agave", True, None),
        (LOADABLE, Level.CLUSTER, "agave", True, "proven to accounts, cluster required"),
        (Proof(Level.MANIFEST), Level.ACCOUNTS, "agave", False, None),
        # A proof below `manifest` says nothing of loading: its level decides.
        (
            Proof(Level.STRUCTURE),
            Level.MANIFEST,
            "agave",
            True,
            "proven to structure, manifest required",
        ),
    ],
)
def test_the_decision_of_every_holder(
    proof: Proof, required: Level, loadable_by: str | None, is_full: bool, expected: str | None
) -> None:
    assert shortfall(proof, required, is_full=is_full, loadable_by=loadable_by) == expected
    name = archive_name(7) if is_full else archive_name(7, base_slot=5)
    assert below_required(proof, required, name, loadable_by=loadable_by) == expected


def test_only_agave_refuses() -> None:
    assert not_loadable(FIREDANCER, None) is None
    assert not_loadable(LOADABLE, "agave") is None
    assert not_loadable(FIREDANCER, "agave") == f"trust.loadable_by agave: {STORAGES}"


@pytest.mark.parametrize(
    ("trust", "asked"),
    [
        (Trust(), None),
        (Trust(loadable_by="agave"), Level.MANIFEST),
        (Trust(require=Level.ACCOUNTS, loadable_by="agave"), Level.ACCOUNTS),
        (Trust(require=Level.CLUSTER), Level.CLUSTER),
    ],
)
def test_loadable_by_alone_asks_for_the_manifest(trust: Trust, asked: Level | None) -> None:
    assert trust.asked == asked


def test_a_local_file_agave_cannot_load_is_kept_out() -> None:
    identity = (1, 2, 3, 4, 5)
    done = Checked(identity, Verified("ab" * 32, FIREDANCER))
    name = archive_name(7)
    assert standing(done, Level.MANIFEST, name).proven
    refused = standing(done, Level.MANIFEST, name, "agave")
    assert not refused.proven and refused.refused == f"trust.loadable_by agave: {STORAGES}"
    assert admission(done, identity, Level.MANIFEST, name, "agave") == (refused.refused, "")


def test_the_key_is_read(tmp_path: Path) -> None:
    config = load(tmp_path, "target_groups: [{group: g, trust: {loadable_by: agave}}]\n")
    assert config.target_groups[0].trust.loadable_by == "agave"
    assert (
        load(tmp_path, "target_groups: [{group: g}]\n").target_groups[0].trust.loadable_by is None
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "target_groups: [{group: g, trust: {loadable_by: firedancer}}]\n",
            "must be one of agave, got 'firedancer'",
        ),
        (
            "target_groups: [{group: g, trust: {loadable_by: [agave]}}]\n",
            "must be one of agave, got a list",
        ),
        (
            "verify_archives: false\ntarget_groups: [{group: g, trust: {loadable_by: agave}}]\n",
            "needs verify_archives: true",
        ),
        (
            "target_groups: [{group: g, trust: {loadable_by: agave, require: structure}}]\n",
            "needs trust.require manifest or above",
        ),
    ],
)
def test_a_bad_value_names_its_key(tmp_path: Path, text: str, reason: str) -> None:
    assert reason in problem_at(problems(tmp_path, text), "target_groups[0].trust.loadable_by")


def test_check_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "target_groups: [{group: g, trust: {loadable_by: solana}}]\n")
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "target_groups[0].trust.loadable_by: must be one of agave, got 'solana'" in err
    assert "Traceback" not in err
