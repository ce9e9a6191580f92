"""Sources whose copy of an archive failed its check, held back for ``reject_for``.

One bad source must not become fifty failed validator restarts (docs/http-api.md, "Verified
archives"): when the copy a source delivered fails the archive check, that source is not used
for that archive until ``reject_for`` has passed, and ``/v1/targets`` shows why. Times are
monotonic seconds passed in by the caller, so the rules are tested without a clock.
"""

from __future__ import annotations

import attrs

from tracker.ordering.index import TargetKey

#: Rejections kept at once; the oldest go first (bounded whatever a hostile source does).
MAX_REJECTIONS = 4096
#: What ``/v1/targets`` shows as a rejected source's ``last_error``.
PREFIX = "archive failed verification: "


@attrs.frozen
class Rejection:
    """One source's copy of one archive that failed, and until when it is not used."""

    key: TargetKey
    name: str
    reason: str
    until: float


class Rejections:
    """The rejections in force; see the module doc."""

    def __init__(self, max_entries: int = MAX_REJECTIONS) -> None:
        self._max = max_entries
        self._held: dict[tuple[TargetKey, str], Rejection] = {}
        #: Changes whenever what :meth:`errors` would say changes (renderings keyed on it).
        self.version = 0

    def reject(self, key: TargetKey, name: str, reason: str, *, now: float, hold: float) -> None:
        """Hold ``key``'s copy of archive ``name`` back until ``now + hold``."""
        self._held.pop((key, name), None)
        self._held[(key, name)] = Rejection(key, name, reason, now + hold)
        while len(self._held) > self._max:
            del self._held[next(iter(self._held))]
        self.version += 1

    def held(self) -> list[Rejection]:
        """Every rejection kept (some may have run out): what is kept across a restart
        (docs/http-api.md#what-the-tracker-learned)."""
        return list(self._held.values())

    def restore(self, held: Rejection) -> None:
        """Take a rejection made elsewhere (a previous run, another replica) unless one of
        the same copy is in force as long."""
        known = self._held.get((held.key, held.name))
        if known is None or known.until < held.until:
            self.reject(held.key, held.name, held.reason, now=held.until, hold=0.0)

    def rejected(self, key: TargetKey, name: str, now: float) -> Rejection | None:
        """The rejection in force of ``key``'s copy of ``name``, if any."""
        held = self._held.get((key, name))
        return held if held is not None and held.until > now else None

    def sweep(self, now: float) -> int:
        """Forget rejections that ran out; returns :attr:`version` (changed if any did)."""
        expired = [k for k, r in self._held.items() if r.until <= now]
        for k in expired:
            del self._held[k]
        if expired:
            self.version += 1
        return self.version

    def errors(self, now: float) -> dict[TargetKey, str]:
        """Each target with a rejection in force: its ``last_error`` (the latest reason)."""
        out: dict[TargetKey, str] = {}
        for held in self._held.values():
            if held.until > now:
                out[held.key] = PREFIX + held.reason
        return out
