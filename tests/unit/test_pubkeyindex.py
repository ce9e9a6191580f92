"""The packed pubkey index of the accounts proof: a table over batches of keys."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.proof.accounts.pubkeyindex import PubkeyIndex


def keys_of(numbers: list[int], shared: int = 0) -> np.ndarray:
    """Keys whose first three words are ``shared`` and whose last word is each number (keys
    an archive could craft to collide in a weak hash)."""
    keys = np.full((len(numbers), 4), shared, dtype=np.uint64)
    keys[:, 3] = numbers
    return keys


def check_against_dict(index: PubkeyIndex, batches: list[list[int]], shared: int = 0) -> None:
    model: dict[int, int] = {}
    for batch in batches:
        entry, made = index.find(keys_of(batch, shared))
        seen_here: set[int] = set()
        for number, got, new in zip(batch, entry.tolist(), made.tolist(), strict=True):
            if number in model:
                assert (got, new) == (model[number], False)
            else:
                assert new and number not in seen_here
                model[number] = got
            seen_here.add(number)
    assert index.count == len(model)
    assert sorted(model.values()) == list(range(len(model)))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3000), max_size=600), max_size=6), st.integers(0, 3))
def test_entries_match_a_dict(batches: list[list[int]], shared: int) -> None:
    check_against_dict(PubkeyIndex(10**6), batches, shared)


def test_a_key_many_times_in_one_batch_finds_one_entry() -> None:
    index = PubkeyIndex(1000)
    entry, made = index.find(keys_of([5] * 40 + [6] * 3 + [5]))
    assert set(entry.tolist()) == {0, 1} and made.sum() == 2 and index.count == 2


def test_many_keys_sharing_their_first_words_grow_the_table() -> None:
    numbers = list(range(200_000))
    check_against_dict(
        PubkeyIndex(10**6), [numbers[i : i + 30_000] for i in range(0, 200_000, 30_000)], shared=7
    )


def test_the_index_costs_at_most_64_bytes_a_pubkey() -> None:
    index = PubkeyIndex(10**7)
    rng = np.random.default_rng(3)
    for _ in range(40):
        index.find(rng.integers(0, 2**63, size=(10_000, 4), dtype=np.int64).astype(np.uint64))
        assert index.nbytes() / index.count <= 64
    assert index.count == 400_000


def test_capacity_is_checked_before_a_batch() -> None:
    index = PubkeyIndex(10)
    assert index.fits(10) and not index.fits(11)
    index.find(keys_of(list(range(8))))
    assert index.fits(2) and not index.fits(3)
    with pytest.raises(ValueError, match="capacity"):
        PubkeyIndex(0)


def test_a_reserved_table_takes_its_keys_without_doubling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index = PubkeyIndex(10**6)
    index.reserve(100_000)
    reserved = index.table_bytes_for(100_000)
    assert index.nbytes() == reserved  # the table alone, sized once
    doublings: list[int] = []
    grow = index._grow
    monkeypatch.setattr(index, "_grow", lambda bits=None: doublings.append(1) or grow(bits))
    numbers = list(range(100_000))
    check_against_dict(index, [numbers[i : i + 7_000] for i in range(0, 100_000, 7_000)])
    assert doublings == []
    index.find(keys_of(list(range(100_000, 160_000))))  # past what was reserved: it grows
    assert doublings
    entry, made = index.find(keys_of(list(range(0, 160_000, 3))))  # every one found again
    assert not made.any() and entry.tolist() == list(range(0, 160_000, 3))
