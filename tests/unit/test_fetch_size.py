"""Which size ``fetch`` takes for an archive, and how many reasons one error line names.
Pure, no network."""

from __future__ import annotations

import pytest

from tracker.fetch.download import chosen_size, summary

ARCHIVE, PAGE = 6_291_456, 31_744


@pytest.mark.parametrize(
    ("listed", "offered", "size"),
    [
        # The listing's size wins, whatever the sources say.
        (ARCHIVE, [PAGE, PAGE, PAGE], ARCHIVE),
        (ARCHIVE, [], ARCHIVE),
        # No size listed: the one most sources announce, not the first answer's.
        (0, [PAGE, ARCHIVE, ARCHIVE], ARCHIVE),
        (0, [ARCHIVE, PAGE, ARCHIVE, PAGE, ARCHIVE], ARCHIVE),
        (0, [PAGE, PAGE, ARCHIVE], PAGE),
        # A tie goes to the better source (the listing's order).
        (0, [PAGE, ARCHIVE], PAGE),
        (0, [ARCHIVE, PAGE], ARCHIVE),
        (0, [ARCHIVE], ARCHIVE),
        (0, [], 0),
        # An empty answer is never the archive, however many sources give it.
        (0, [0, 0, ARCHIVE], ARCHIVE),
        (0, [0], 0),
    ],
)
def test_chosen_size(listed: int, offered: list[int], size: int) -> None:
    assert chosen_size(listed, offered) == size


def test_an_error_line_names_a_few_sources_and_counts_the_others() -> None:
    assert summary(["a: 500"]) == "a: 500"
    reasons = [f"http://s{n}/x: no answer within 3s" for n in range(1000)]
    line = summary(reasons)
    assert line.count("no answer") == 4 and line.endswith("; and 996 more")
