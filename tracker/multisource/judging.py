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
    their operators). Only a source ``busy`` all the window long is judged: one that waited
    for a piece (the window ahead of the readers was full) sent nothing by right. A judged
    source that sent nothing is dropped (stalled) while another live source sent bytes or
    waited for a piece (it may well wait behind the stalled one's claim); one that sent less
    than ``share`` of the fastest live source's rate is dropped too. Its pieces go to the
    others; when every live source stalled together, none is: the read timeouts decide."""
    judged = [on and asked for on, asked in zip(live, busy, strict=True)]
    fastest = max((r for r, on in zip(rates, live, strict=True) if on), default=0.0)
    reasons = []
    for index, rate in enumerate(rates):
        others = [
            i for i, on in enumerate(live) if on and i != index and (rates[i] > 0 or not busy[i])
        ]
        if not judged[index]:
            reasons.append("")
        elif rate == 0 and others:
            reasons.append("stalled: sent nothing while another source could take its pieces")
        elif 0 < rate < share * fastest:
            reasons.append(f"{rate:.0f} bytes/s, under {share:.0%} of the fastest ({fastest:.0f})")
        else:
            reasons.append("")
    return reasons
