"""Digests and rejections of verified archives: the pure rules, as tables."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from tracker.cache.checked import digest_matches
from tracker.core.digests import (
    Digests,
    Verified,
    is_sha256_hex,
    parse_sha256sum_line,
    repr_digest,
    sha256sum_line,
)
from tracker.ordering.index import TargetKey
from tracker.ordering.sourcehistory import PREFIX, Rejections
from tracker.proof.levels import STRUCTURE_ONLY, Level, Proof

NAME = "snapshot-100-7jMmeXZSNcWPrB2RsTdeXfXrsyW5c1BfPjqoLW2X5T7V.tar.zst"
HEX = hashlib.sha256(b"archive").hexdigest()


def test_the_sha256sum_line_round_trips_and_is_what_sha256sum_writes() -> None:
    line = sha256sum_line(HEX, NAME)
    assert line == f"{HEX}  {NAME}\n"
    assert parse_sha256sum_line(line, NAME) == HEX


@pytest.mark.parametrize(
    "text",
    [
        f"{HEX}  other.tar.zst\n",  # another archive's line
        f"{HEX} {NAME}\n",  # one space
        f"{HEX}  {NAME}",  # no newline: cut short
        f"{HEX.upper()}  {NAME}\n",  # not the lower-case form this tracker writes
        f"{HEX[:-1]}  {NAME}\n",  # 63 digits
        f"{HEX}  {NAME}\n{HEX}  {NAME}\n",  # two lines
        f"{'²' * 64}  {NAME}\n",  # not ASCII hex
        "",
    ],
)
def test_a_digest_line_that_is_not_exactly_this_archive_s_is_refused(text: str) -> None:
    assert parse_sha256sum_line(text, NAME) is None


def test_repr_digest_is_rfc_9530_base64_of_the_raw_digest() -> None:
    raw = base64.b64encode(hashlib.sha256(b"archive").digest()).decode()
    assert repr_digest(HEX) == f"sha-256=:{raw}:"


def test_each_holder_keeps_its_own_digest() -> None:
    digests = Digests()
    digests.put("cache", "g", NAME, HEX)
    digests.put("bucket", "g", NAME, HEX)
    version = digests.version
    digests.drop("cache", "g", NAME)  # the cache evicted it: the bucket still holds it
    assert digests.get("g", NAME) == HEX and digests.version > version
    digests.drop("bucket", "g", NAME)
    assert digests.get("g", NAME) is None
    digests.drop("bucket", "g", NAME)  # idempotent
    assert digests.get("other", NAME) is None


OTHER = hashlib.sha256(b"other bytes of the archive").hexdigest()
MANIFEST = Proof(Level.MANIFEST, "s", "b")
CLUSTER = Proof(Level.CLUSTER, "s", "b", 0.9)


@pytest.mark.parametrize(
    ("held", "served"),
    [
        # the cache's copy is the one served: its digest, however the bucket's other bytes
        # are proven (a wget GET is no longer sent to them)
        ({"cache": (HEX, MANIFEST), "bucket": (OTHER, CLUSTER)}, (HEX, Level.MANIFEST)),
        ({"bucket": (OTHER, CLUSTER), "cache": (HEX, MANIFEST)}, (HEX, Level.MANIFEST)),
        # the same bytes: the best proof held of them
        ({"cache": (HEX, MANIFEST), "bucket": (HEX, CLUSTER)}, (HEX, Level.CLUSTER)),
        ({"cache": (HEX, CLUSTER), "bucket": (HEX, MANIFEST)}, (HEX, Level.CLUSTER)),
        # no cache copy: the bucket's
        ({"bucket": (OTHER, MANIFEST)}, (OTHER, Level.MANIFEST)),
        # a local file is served by its own route, never as the cache's or the bucket's
        ({"local:/ledger/a": (HEX, CLUSTER), "bucket": (OTHER, MANIFEST)}, (OTHER, Level.MANIFEST)),
        ({"local:/ledger/a": (HEX, CLUSTER)}, None),
        ({}, None),
    ],
)
def test_the_copy_served_is_the_cache_s_else_the_bucket_s(
    held: dict[str, tuple[str, Proof]], served: tuple[str, Level] | None
) -> None:
    digests = Digests()
    for holder, (sha, proof) in held.items():
        digests.put(holder, "g", NAME, sha, proof)
    copy = digests.served("g", NAME)
    assert (copy.sha256, copy.proof.level) == served if copy is not None else served is None


def _stat(mtime: int, ctime: int) -> os.stat_result:
    # st_mode .. st_ctime, then the float and ns fields os.stat_result accepts.
    fields = [0o100644, 1, 1, 1, 0, 0, 10, 0, mtime, ctime]
    return os.stat_result((*fields, 0.0, float(mtime), float(ctime), 0, mtime, ctime))


@pytest.mark.parametrize(
    ("archive", "digest", "matches"),
    [
        ((100, 200), (100, 250), True),  # written after the archive's last change
        ((100, 200), (100, 200), True),  # in the same tick
        ((100, 300), (100, 250), False),  # the archive changed after its digest was written
        ((101, 200), (100, 250), False),  # another mtime: another file
    ],
)
def test_a_digest_file_describes_its_archive_only_while_the_archive_did_not_change(
    archive: tuple[int, int], digest: tuple[int, int], matches: bool
) -> None:
    assert digest_matches(_stat(*archive), _stat(*digest)) is matches


def test_a_rejection_holds_one_source_back_for_one_archive_until_it_runs_out() -> None:
    bad, good = TargetKey("g", "http://bad"), TargetKey("g", "http://good")
    rejections = Rejections()
    rejections.reject(bad, NAME, "zstd: corrupt", now=10.0, hold=600.0)
    held = rejections.rejected(bad, NAME, 11.0)
    assert held is not None and held.reason == "zstd: corrupt"
    assert rejections.rejected(bad, "other.tar.zst", 11.0) is None  # only that archive
    assert rejections.rejected(good, NAME, 11.0) is None  # only that source
    assert rejections.errors(11.0) == {bad: PREFIX + "zstd: corrupt"}
    version = rejections.sweep(11.0)
    assert rejections.rejected(bad, NAME, 610.0) is None
    assert rejections.sweep(610.0) != version  # renderings keyed on it render again
    assert rejections.errors(610.0) == {}


def test_rejections_are_bounded_whatever_a_source_does() -> None:
    rejections = Rejections(max_entries=3)
    key = TargetKey("g", "http://bad")
    for slot in range(10):
        rejections.reject(key, f"snapshot-{slot}-x.tar.zst", "bad", now=0.0, hold=60.0)
    assert rejections.rejected(key, "snapshot-9-x.tar.zst", 1.0) is not None
    assert rejections.rejected(key, "snapshot-0-x.tar.zst", 1.0) is None


@pytest.mark.parametrize(
    ("value", "taken"),
    [
        ("ab" * 32, True),
        ("0123456789abcdef" * 4, True),
        ("AB" * 32, False),  # the tracker writes lower case only
        ("ab" * 31, False),
        ("ab" * 33, False),
        ("ab" * 31 + "g0", False),
        ("ab" * 32 + "\n", False),
        ("\u0660" * 64, False),  # Arabic-Indic digits: str.isdigit() is True for them
        (b"ab" * 32, False),
        (None, False),
    ],
)
def test_one_rule_says_what_a_sha256_is(value: object, taken: bool) -> None:
    assert is_sha256_hex(value) is taken


def test_a_new_proof_of_the_same_copy_keeps_its_size_and_check_time() -> None:
    digests = Digests()
    digests.hold("cache", "g", NAME, Verified(HEX, STRUCTURE_ONLY, 10, 5.0))
    lifted = Proof(Level.CLUSTER, "h", "b", 0.9)
    digests.put("cache", "g", NAME, HEX, lifted)  # a lift: what a statement says changes
    assert digests.verified("g", NAME) == Verified(HEX, lifted, 10, 5.0)
    other = hashlib.sha256(b"other").hexdigest()
    digests.put("cache", "g", NAME, other, lifted)  # another copy: nothing of the old one
    assert digests.verified("g", NAME) == Verified(other, lifted)
    assert [(g, n, h) for g, n, h, _v in digests.held()] == [("g", NAME, "cache")]


def test_a_proof_file_nested_past_the_parser_is_no_proof(tmp_path: Path) -> None:
    # 4 KiB of "[" is deeper than the JSON parser goes: its RecursionError left the cache's
    # start-up, and the service failed to start while the file lay beside its archive.
    from tracker.cache.checked import _restored_proof
    from tracker.cache.disk import PROOF, digest_path

    archive = tmp_path / NAME
    archive.write_bytes(b"archive")
    side = digest_path(str(archive), PROOF)
    with open(side, "w") as out:
        out.write("[" * 4000)
    os.chmod(side, 0o644)
    mtime = archive.stat().st_mtime_ns
    os.utime(side, ns=(mtime, mtime))  # it describes the archive: only its content is bad
    assert _restored_proof(str(archive)) is None
