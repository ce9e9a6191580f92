"""Each target's health as ``/v1/targets`` shows it, and the roster of every target.

:class:`Roster` holds the health of every target and of every ``getClusterNodes`` RPC URL,
with the counters the API keys its rendered bodies on (``roster``: a target came or went;
``shown``: what ``/v1/targets`` shows may have changed). The ``mark_*`` functions record a
probe's outcome on one :class:`TargetHealth`; what happens to the index is the scrape
loop's decision (:mod:`tracker.discovery.scrape`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

import attrs

from tracker.ordering.index import TargetKey

#: ``cluster``: a ``getClusterNodes`` RPC URL of ``cluster_discovery`` (asked, not probed).
Kind = Literal["sidecar", "http", "local", "cluster"]


@attrs.frozen
class Target:
    """One source to probe: ``location`` is a base URL (sidecar, http) or a directory."""

    key: TargetKey
    kind: Kind
    location: str
    #: A discovered node's ``version`` from ``getClusterNodes`` ("": unknown, configured).
    version: str = ""


@attrs.define
class TargetHealth:
    """What the operator sees of a target in ``/v1/targets``."""

    target: Target
    #: ``blocked``: a discovered node the egress policy refuses (never connected to).
    health: Literal["up", "down", "unknown", "blocked"] = "unknown"
    last_error: str = ""
    last_scrape: datetime | None = None
    last_duration: float | None = None
    failures: int = 0
    #: The scrape round that last gave it a probe slot (None: never): the order and the
    #: back-off of discovered nodes (:func:`tracker.discovery.schedule.round_plan`). Not
    #: shown: ``last_scrape`` is when it was last probed.
    probed_round: int | None = None


#: Why a target that answers lists no snapshot, by its kind (docs/http-api.md, ``note``).
NOTHING_LISTED = {
    "http": "lists no snapshot: HEAD /snapshot.tar.bz2 and /incremental-snapshot.tar.bz2 "
    "answered 404 or 202; a validator redirects them to its newest archives, a plain file "
    "server has no such routes (serve its directory with local_targets instead)",
    "sidecar": "lists no snapshot: its /v1/snapshots answered an empty list",
    "local": "lists no snapshot: no file in the directory is named as agave names its archives, "
    "or none that the tracker's user may read (the log names each: local_archive_unreadable)",
}


def nothing_listed(kind: str, health: str, snapshots: int) -> str:
    """Why a target that is up lists no snapshot ("" when it lists some, or is not up: its
    ``last_error`` says why). Pure."""
    if health != "up" or snapshots:
        return ""
    return NOTHING_LISTED.get(kind, "")


def mark_up(health: TargetHealth) -> datetime:
    """A probe succeeded: the target is up; returns the time it was scraped."""
    now = datetime.now(UTC)
    health.health, health.last_error, health.failures = "up", "", 0
    health.last_scrape = now
    return now


def mark_down(health: TargetHealth, reason: str) -> None:
    """A probe failed for ``reason``: the target is down, one more failure in a row."""
    health.health, health.last_error = "down", reason
    health.last_scrape = datetime.now(UTC)
    health.failures += 1


def mark_deferred(health: TargetHealth, reason: str) -> None:
    """The probe failed for want of this process's own descriptors or memory, not the
    target's fault: its last result stands (health, snapshots, failure count); only
    ``last_error`` says what happened."""
    health.last_error = f"{reason} (the last result is kept)"


def mark_blocked(health: TargetHealth, reason: str) -> None:
    """The egress policy refuses a discovered node: it is ``blocked``, never connected to."""
    health.health, health.last_error = "blocked", reason
    health.last_scrape = datetime.now(UTC)


#: Records of discovered nodes gone from the target set kept at least (see :class:`Roster`).
GONE_KEPT = 1024


class Roster:
    """Every target's health and every cluster RPC URL's, and when they changed."""

    def __init__(self) -> None:
        self.health: dict[TargetKey, TargetHealth] = {}
        #: The records of discovered nodes that failed their last probe and left the target
        #: set, oldest first, each taken back when its node is listed again: a node leaving
        #: ``getClusterNodes`` and coming back came back never probed, its failures at 0,
        #: and one that flaps was probed whenever listed, never backed off
        #: (docs/configuration.md, ``max_target_failures``). At most as many as the targets
        #: now, at least :data:`GONE_KEPT`, the oldest forgotten first.
        self._gone: dict[TargetKey, TargetHealth] = {}
        #: The ``getClusterNodes`` RPC URLs of each group, as asked last (``/v1/targets``
        #: shows them beside the targets; they hold no snapshots).
        self.rpc_health: dict[TargetKey, TargetHealth] = {}
        #: Bumped whenever a target comes or goes (what :meth:`in_order` keeps depends on it).
        self.roster = 0
        #: Bumped whenever what ``/v1/targets`` shows may have changed: after each probe,
        #: but during a round once per batch (APPLY_EVERY), like the index; a listing of
        #: thousands of targets is then rendered a few times a second, not per request.
        self.shown = 0
        self._ordered: tuple[int, list[TargetHealth]] = (-1, [])

    def adopt(self, current: Iterable[Target]) -> list[TargetKey]:
        """Make ``current`` the target set (a target whose kind or location changed starts
        afresh; a discovered node that reports another version keeps its record, its
        back-off too: an RPC flipping a failing node's version must not have it probed every
        round again, nor a node down that leaves the cluster's list and comes back: see
        ``_gone``); returns the keys of the targets that are gone."""
        targets = {t.key: t for t in current}
        gone = [k for k in self.health if k not in targets]
        for key in gone:
            left = self.health.pop(key)
            if key.discovered and left.failures:
                self._gone[key] = left
            self.roster += 1
        for key, target in targets.items():
            kept = self.health.get(key)
            came = kept is None
            if came:
                kept = self._gone.pop(key, None)  # a node down, listed again: its back-off
            if kept is None or (kept.target.kind, kept.target.location) != (
                target.kind,
                target.location,
            ):
                self.health[key] = TargetHealth(target)
                self.roster += 1
            elif came or kept.target != target:  # back, or another version: listings show it
                self.health[key] = kept
                kept.target = target
                self.roster += 1
        # Bounded: the oldest go first (a cluster's nodes also leave for good).
        excess = len(self._gone) - max(GONE_KEPT, len(targets))
        for key in list(self._gone)[: max(0, excess)]:
            del self._gone[key]
        return gone

    def rpc_answered(self, group: str, url: str, reason: str, seconds: float) -> None:
        """Record how a ``getClusterNodes`` RPC URL answered (its ``/v1/targets`` entry)."""
        key = TargetKey(group, url)
        health = self.rpc_health.get(key)
        if health is None:
            health = self.rpc_health[key] = TargetHealth(Target(key, "cluster", url))
            self.roster += 1
        health.health = "down" if reason else "up"
        health.last_error = reason
        health.failures = health.failures + 1 if reason else 0
        health.last_scrape = datetime.now(UTC)
        health.last_duration = seconds
        self.touch()

    def touch(self) -> None:
        """What ``/v1/targets`` shows may have changed."""
        self.shown += 1

    def retire_rpcs(self, current: set[TargetKey]) -> None:
        """Forget the RPC URLs a reload removed (``current``: those configured now)."""
        for key in [k for k in self.rpc_health if k not in current]:
            del self.rpc_health[key]
            self.roster += 1

    def in_order(self) -> list[TargetHealth]:
        """Every target's health and every cluster RPC URL's, by group and target name
        (``/v1/targets``' order); kept
        until a target comes or goes: sorting thousands on every request showed in the
        API's latency during a cluster round. Do not modify the list."""
        roster, ordered = self._ordered
        if roster != self.roster:
            # Plain string tuples sort far faster than comparisons of whole keys.
            everyone = [*self.health.values(), *self.rpc_health.values()]
            ordered = sorted(everyone, key=_display_order)
            self._ordered = (self.roster, ordered)
        return ordered


def _display_order(health: TargetHealth) -> tuple[str, str]:
    return (health.target.key.group, health.target.key.target)
