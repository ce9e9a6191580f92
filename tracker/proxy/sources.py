"""The sources a stream of an archive may use: a pure decision from the index's sources
and those held back after a failed check (docs/http-api.md, "Verified archives"), beside
the byte path's plan (:mod:`tracker.proxy.plan`)."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from tracker.core.rejections import PREFIX as REJECTED
from tracker.proxy.plan import Found


@attrs.frozen
class Sources:
    """The sources a stream may use, best first, and what it may promise."""

    found: Found
    #: The index's size of the file (0: unknown): the length of a 200 that states none.
    size: int = 0
    #: The size an early head may promise (0: none): a plain request, a known size.
    early: int = 0
    #: Why no source is left, when every one is held back (empty otherwise).
    refusal: str = ""


def choose_sources(plain: bool, found: Found, held: Sequence[str | None]) -> Sources:
    """The sources of ``found`` whose copy is not held back (``held``: each one's reason,
    None when it is not held back) after a failed check (docs/http-api.md, "Verified
    archives"). With none left the answer is 502 with the latest reason. A plain request of
    a file of known size may get an early head (docs/http-api.md, "Archive answers"): then
    only sources of that size (or of unknown size, checked when they answer) may follow it.
    """
    kept = [pair for pair, reason in zip(found, held, strict=True) if reason is None]
    latest = next((reason for reason in reversed(held) if reason is not None), "")
    size = kept[0][0].size if kept else 0
    early = size if plain and size > 0 else 0
    if early:
        kept = [(f, s) for f, s in kept if f.size in (0, early)]
    return Sources(kept, size, early, REJECTED + latest if not kept and latest else "")
