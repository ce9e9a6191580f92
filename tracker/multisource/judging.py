"""Which sources of a download are too slow to keep: pure functions, one per policy.

Each takes the bytes per second every source delivered over the last window, whether it is
still in use and whether it had a request running all the window long, and gives the
reason to drop each ("" to keep it). Never the last source in use: a slow source is better
than none.
"""

from __future__ import annotations


def slower_than(
    least: int, rates: list[float], live: list[bool], _busy: list[bool] | None = None
) -> list[str]:
    """``fetch``'s rule: a source slower than ``least`` bytes/s (``--min-speed``) is dropped
    while another one is left (in order: of two slow sources the second stays)."""
    left = list(live)
    reasons = []
    for index, rate in enumerate(rates):
        others = any(on for i, on in enumerate(left) if i != index)
        if left[index] and others and rate < least:
            reasons.append(f"slower than {least} bytes/s ({rate:.0f})")
            left[index] = False
        else:
            reasons.append("")
    return reasons


#: A refresh drops a source delivering less than this share of the fastest one's rate.
LAGGARD_SHARE = 0.1


def laggards(
    rates: list[float], live: list[bool], busy: list[bool], share: float = LAGGARD_SHARE
) -> list[str]:
    """The refresh's rule (docs/architecture.md, "A refresh from several sources"): sources
    are compared with each other, not with a fixed speed (a fleet's peers are capped by
    their operators): one that sent nothing over the window (stalled), or less than
    ``share`` of the fastest live source's rate, is dropped while a faster one is left; its
    pieces go to the others. Only a source ``busy`` all the window long is judged: one
    that waited for a piece (the window ahead of the readers was full) sent nothing by
    right."""
    fastest = max((r for r, on in zip(rates, live, strict=True) if on), default=0.0)
    if fastest <= 0:
        return ["" for _ in rates]  # nobody delivered: the read timeouts decide
    reasons = []
    for rate, on, asked in zip(rates, live, busy, strict=True):
        if not (on and asked) or rate >= share * fastest:
            reasons.append("")
        elif rate == 0:
            reasons.append("stalled: sent nothing while the other sources did")
        else:
            reasons.append(f"{rate:.0f} bytes/s, under {share:.0%} of the fastest ({fastest:.0f})")
    return reasons
