"""The sources a stream may use, as a table (tracker/proxy/decisions.py ``choose_sources``):
sources held back after a failed check, and the early head (docs/http-api.md, "Archive
answers"). No sockets, no event loop."""

from __future__ import annotations

import pytest
from test_plan import GET, RANGE, SIZE, _found, _hosts

from tracker.ordering.sourcehistory import PREFIX
from tracker.proxy.decisions import choose_sources


@pytest.mark.parametrize(
    ("plain", "sizes", "held", "hosts", "size", "early", "refusal"),
    [
        pytest.param(
            True, (SIZE, SIZE), (None, None), [1, 2], SIZE, SIZE, "", id="plain: an early head"
        ),
        pytest.param(
            False, (SIZE, SIZE), (None, None), [1, 2], SIZE, 0, "", id="Range: no early head"
        ),
        pytest.param(True, (0, 0), (None, None), [1, 2], 0, 0, "", id="size unknown: none"),
        pytest.param(
            True,
            (SIZE, 7, 0),
            (None, None, None),
            [1, 3],
            SIZE,
            SIZE,
            "",
            id="an early head: only sources of that size (or unknown) may follow it",
        ),
        pytest.param(
            False,
            (SIZE, 7),
            (None, None),
            [1, 2],
            SIZE,
            0,
            "",
            id="no early head: every source (the answer's own length is checked)",
        ),
        pytest.param(
            True,
            (SIZE, SIZE),
            ("bad tar", None),
            [2],
            SIZE,
            SIZE,
            "",
            id="verified: a source held back after a failed check is not asked",
        ),
        pytest.param(
            True,
            (SIZE, SIZE),
            ("bad tar", "truncated"),
            [],
            0,
            0,
            PREFIX + "truncated",
            id="verified: none left: 502 with the latest reason",
        ),
    ],
)
def test_the_sources_a_stream_may_use(
    plain: bool,
    sizes: tuple[int, ...],
    held: tuple[str | None, ...],
    hosts: list[int],
    size: int,
    early: int,
    refusal: str,
) -> None:
    kept, known, promised, why = choose_sources(GET if plain else RANGE, _found(*sizes), held)
    assert _hosts(kept) == [f"http://127.0.0.{i}" for i in hosts]
    assert (known, promised, why) == (size, early, refusal)
