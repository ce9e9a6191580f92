"""Which targets a scrape round probes, and in which order: pure decisions, no event loop.

The operator's own targets are probed every round, first. Discovered nodes (thousands, many
of them advertising RPC ports that a firewall leaves hanging) come after them, the least
recently probed first, and those down ``max_target_failures`` times in a row or more are
backed off (docs/configuration.md, ``max_target_failures``): a round is meant to last
about ``scrape_interval``, and the nodes that get no probe slot within it wait for the next
round, at its head (docs/architecture.md, "Scrape rounds").
"""

from __future__ import annotations

from collections.abc import Iterable

from tracker.discovery.roster import TargetHealth

#: A backed-off node is probed again at least every this many rounds.
MAX_BACKOFF_ROUNDS = 32


def backoff_rounds(failures: int, max_failures: int) -> int:
    """Every how many rounds a discovered node that failed ``failures`` times in a row is
    probed: every round below ``max_failures``, then every 2^(failures - max_failures + 1)
    rounds (2, 4, 8, ...), at most every :data:`MAX_BACKOFF_ROUNDS`. Pure."""
    if failures < max_failures:
        return 1
    return min(MAX_BACKOFF_ROUNDS, 1 << min(failures - max_failures + 1, 6))


def due(failures: int, max_failures: int, rounds_since: int | None) -> bool:
    """Whether a discovered node is probed this round: ``rounds_since`` rounds have passed
    since its last probe (None: never probed) and it failed ``failures`` times in a row
    since its last success. Pure."""
    return rounds_since is None or rounds_since >= backoff_rounds(failures, max_failures)


def round_plan(
    healths: Iterable[TargetHealth], round_number: int, max_failures: int
) -> list[TargetHealth]:
    """The targets round ``round_number`` probes, in the order it starts them: every
    configured target first (never backed off, never left for the next round), then the
    discovered nodes that are :func:`due`, never-probed first, then the least recently
    probed (ties keep the given order). Pure."""
    configured: list[TargetHealth] = []
    discovered: list[TargetHealth] = []
    for health in healths:
        if not health.target.key.discovered:
            configured.append(health)
            continue
        last = health.probed_round
        since = None if last is None else round_number - last
        if due(health.failures, max_failures, since):
            discovered.append(health)
    discovered.sort(key=lambda h: -1 if h.probed_round is None else h.probed_round)
    return configured + discovered
