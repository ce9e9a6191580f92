"""What vouches for a copy from several sources (tracker.cache.mixedcopy), as tables."""

from __future__ import annotations

import pytest

from tracker.cache.mixedcopy import Vouching, plan, trusted_digest
from tracker.core.digests import covers
from tracker.errors import ArchiveInvalid, CacheError
from tracker.proof.levels import Level, Proof

FULL = "snapshot-100-7jMmeXZSNcWPrB2RsTdeXfXrsyW5c1BfPjqoLW2X5T7V.tar.zst"
INCREMENTAL = "incremental-snapshot-90-100-7jMmeXZSNcWPrB2RsTdeXfXrsyW5c1BfPjqoLW2X5T7V.tar.zst"
A, B = "a" * 64, "b" * 64
KNOWN = frozenset({"http://known:1", "other:2"})


@pytest.mark.parametrize(
    ("published", "trusted"),
    [
        ([("http://known:1", A)], (A, "http://known:1")),
        ([("http://other:2/x", A)], (A, "http://other:2/x")),  # its host:port is known
        ([("http://stranger:3", A)], ("", "")),  # a digest from an unknown source: none
        ([("http://known:1", "")], ("", "")),
        ([("http://known:1", A), ("http://other:2", A)], (A, "http://known:1")),
        ([("http://known:1", A), ("http://other:2", B)], ("", "")),  # known ones disagree
        ([("http://known:1", A), ("http://stranger:3", B)], (A, "http://known:1")),
    ],
)
def test_the_trusted_digest_is_the_one_known_sources_publish(
    published: list[tuple[str, str]], trusted: tuple[str, str]
) -> None:
    assert trusted_digest(published, KNOWN) == trusted


@pytest.mark.parametrize(
    ("name", "trusted", "first", "accounts", "expected"),
    [
        (INCREMENTAL, (A, "k"), "", False, Vouching(A, "k")),
        (INCREMENTAL, (A, "k"), A, False, Vouching(A, "k")),
        (INCREMENTAL, ("", ""), "", True, "an incremental"),  # manifest: one source
        (INCREMENTAL, (A, "k"), B, True, "the first source publishes"),
        (FULL, ("", ""), "", True, Vouching()),  # accounts vouches for every byte
        (FULL, ("", ""), A, True, Vouching()),  # its published digest: a claim, not trusted
        (FULL, ("", ""), "", False, "a full not proven to accounts"),
        (FULL, (A, "k"), "", False, Vouching(A, "k")),
    ],
)
def test_a_copy_from_several_sources_is_planned_only_where_something_vouches(
    name: str, trusted: tuple[str, str], first: str, accounts: bool, expected: Vouching | str
) -> None:
    got = plan(name, trusted, first, accounts)
    if isinstance(expected, str):
        assert isinstance(got, str) and got.startswith(expected), got
    else:
        assert got == expected


def test_the_copy_must_have_the_trusted_digest() -> None:
    Vouching(A, "k").vouch(INCREMENTAL, A, Proof(Level.MANIFEST))
    with pytest.raises(ArchiveInvalid, match=f"sha256 {B} of the copy from several sources"):
        Vouching(A, "k").vouch(INCREMENTAL, B, Proof(Level.MANIFEST))


def test_without_a_digest_the_accounts_level_must_cover_the_copy() -> None:
    Vouching().vouch(FULL, A, Proof(Level.ACCOUNTS))
    Vouching().vouch(FULL, A, Proof(Level.CLUSTER))
    short = Proof(Level.MANIFEST, note="not proven: over the bound")
    with pytest.raises(CacheError, match="proven to manifest: not proven: over the bound"):
        Vouching().vouch(FULL, A, short)
    assert not covers(INCREMENTAL, Proof(Level.CLUSTER))  # its storages are not the state
