"""Which sources of a download are too slow to keep: pure functions, one per policy.

Each takes the bytes per second every source delivered over the last window, whether it is
still in use, whether it had a request running all the window long and its bytes per second
since the download began, and gives the reason to drop each ("" to keep it). Never the
last source in use: a slow source is better than none.
"""

from __future__ import annotations


def slower_than(
    least: int,
    rates: list[float],
    live: list[bool],
    busy: list[bool] | None = None,
    _overall: list[float] | None = None,
) -> list[str]:
    """``fetch``'s rule: a source slower than ``least`` bytes/s (``--min-speed``) is dropped
    while another one is left (in order: of two slow sources the second stays). Only a
    source ``busy`` all the window long is judged (None: all were): one not asked (more
    sources than connections, the end of the download) sent nothing by right, and stays
    for when the others fail."""
    judged = busy if busy is not None else [True] * len(rates)
    left = list(live)
    reasons = []
    for index, rate in enumerate(rates):
        others = any(on for i, on in enumerate(left) if i != index)
        if left[index] and judged[index] and others and rate < least:
            reasons.append(f"slower than {least} bytes/s ({rate:.0f})")
            left[index] = False
        else:
            reasons.append("")
    return reasons


#: A refresh drops a source delivering less than this share of another one's rate.
LAGGARD_SHARE = 0.1
#: A refresh drops a busy source delivering less than this (bytes/s) while another one can
#: take its pieces, whatever the others' rates: a source that answers and then drips a byte
#: at a time is no source (an archive of a few GB would take days).
FLOOR_RATE = 64 * 1024


def laggards(
    rates: list[float],
    live: list[bool],
    busy: list[bool],
    overall: list[float] | None = None,
    share: float = LAGGARD_SHARE,
) -> list[str]:
    """The refresh's rule (docs/architecture.md, "A refresh from several sources"): sources
    are compared with each other, not with a fixed speed (a fleet's peers are capped by
    their operators), down to a floor. Only a source ``busy`` all the window long is judged:
    one that waited for a piece (the window ahead of the readers was full) sent nothing by
    right. A judged source is dropped while another live source sent bytes or waited for a
    piece (it may well wait behind the judged one's claim) when it sent nothing (stalled),
    less than FLOOR_RATE, or less than ``share`` of another live source's rate, that source's
    best of the window's rate and its rate over the whole refresh (``overall``, bytes/s
    since the refresh began): the others may be idle now, waiting behind its claim, and a
    rate of 0 says nothing about what they can do. Its pieces go to the others; when every
    live source stalled together, none is: the read timeouts decide. Never the last live
    source (of several slow ones, in order, the last stays)."""
    means = overall if overall is not None else rates
    left = list(live)
    reasons = []
    for index, rate in enumerate(rates):
        others = [
            i for i, on in enumerate(left) if on and i != index and (rates[i] > 0 or not busy[i])
        ]
        best = max((max(rates[i], means[i]) for i in others), default=0.0)
        reason = ""
        if not (left[index] and busy[index] and others):
            pass
        elif rate == 0:
            reason = "stalled: sent nothing while another source could take its pieces"
        elif rate < FLOOR_RATE:
            reason = f"{rate:.0f} bytes/s, under the floor of {FLOOR_RATE} bytes/s"
        elif rate < share * best:
            reason = f"{rate:.0f} bytes/s, under {share:.0%} of another source's ({best:.0f})"
        if reason:
            left[index] = False
        reasons.append(reason)
    return reasons
