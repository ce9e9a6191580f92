"""The status page's value: everything it shows, as plain values, and the decisions on them.

:class:`StatusView` is gathered from the running tracker (:mod:`tracker.web.statusgather`)
and rendered (:mod:`tracker.web.statuspage`); the decisions here (the order of targets, the
``refresh`` parameter, a refresh's progress) are pure functions of these values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

import attrs

from tracker.cache.store import RefreshProgress
from tracker.observability.logs import RecentEvent

#: Seconds between two refreshes of the page by default; ``?refresh=0`` turns it off.
DEFAULT_REFRESH = 10
MAX_REFRESH = 3600
#: A slot lasts about this long (Solana's target): the age of an archive whose file time
#: nobody reported is estimated from its age in slots.
SLOT_SECONDS = 0.4

#: A target's health as ``/v1/targets`` says it.
Health = Literal["up", "down", "unknown", "blocked"]


@attrs.frozen
class BestView:
    """A group's best full or incremental archive."""

    kind: Literal["full", "incremental"]
    name: str
    slot: int
    #: Slots behind the cluster's current slot (None: no ``rpc``, or it did not answer).
    age_slots: int | None
    #: Seconds since the archive's file time (None: unknown); ``estimated`` when derived
    #: from ``age_slots`` instead.
    age_seconds: float | None
    estimated: bool
    size: int  # 0: unknown
    sources: int
    sha256: str | None
    #: The level its held copy was proven to (docs/architecture.md, "Proven archives").
    level: str | None = None


@attrs.frozen
class GroupView:
    """One target group: its targets' health and its best archives (None: none yet)."""

    name: str
    targets: int
    up: int
    full: BestView | None
    incremental: BestView | None
    #: The predicted seconds to a running node of the pair handed out (None: the group
    #: ranks by slot; inf: it cannot be predicted), docs/ranking.md.
    predicted_seconds: float | None = None
    #: Its cluster ``rpc``'s URL and why its last ``getSlot`` failed (None: it answered, or
    #: the group has none): without it the ages say only "—".
    rpc_failure: tuple[str, str] | None = None


class TargetView(NamedTuple):
    """One target as ``/v1/targets`` shows it, plus its measured throughput.

    A named tuple, not an attrs class: thousands are made, hashed (remembered rows) and
    sorted for every page, and a tuple does that in C.
    """

    group: str
    target: str
    kind: str
    discovered: bool
    health: Health
    last_error: str
    latency: float | None  # seconds of the last probe
    throughput: float  # bytes per second measured on transfers; 0: not measured
    last_scrape: float | None  # Unix time
    snapshots: int
    #: What its speed tests read and what real transfers achieved (docs/ranking.md,
    #: "Probed and achieved"), bytes per second; 0: not measured.
    probed: float = 0.0
    achieved: float = 0.0
    #: Why a target that is up lists nothing ("": it lists some, or ``last_error`` says).
    note: str = ""
    #: How the latest refresh from several sources that asked it used it ("" none).
    refresh: str = ""


@attrs.frozen
class CachedView:
    """A complete archive in the disk cache."""

    group: str
    name: str
    size: int
    #: When the cache took it (Unix time), not the source file's mtime.
    cached_at: float
    sha256: str | None
    level: str | None = None


@attrs.frozen
class CacheView:
    """The disk cache: its directory, complete files and refreshes in flight."""

    directory: str
    files: tuple[CachedView, ...]
    refreshes: tuple[RefreshProgress, ...]
    #: (group, why its last refresh streamed uncached: too little room on the disk).
    uncached: tuple[tuple[str, str], ...] = ()
    #: Why the directory cannot be used now ("" while it can).
    problem: str = ""
    #: The accounts proofs running now (docs/architecture.md, "Bounded memory").
    proofs: tuple[ProofView, ...] = ()


@attrs.frozen
class ProofView:
    """One running accounts proof's progress: stored accounts and storage bytes read, the
    accounts its second read hashed, its spilled index on disk, what it holds of the memory
    budget, its busy worker processes."""

    records: int
    bytes: int
    spilled: int
    held: int
    workers_busy: int
    hashed: int = 0


@attrs.frozen
class BucketView:
    """The shared bucket as this replica sees it (``/v1/store``)."""

    endpoint: str
    bucket: str
    prefix: str
    up: bool
    last_error: str
    objects_known: int
    uploads_running: int


@attrs.frozen
class SigningView:
    """Whether this tracker signs statements of what it proved (docs/http-api.md, "Signed
    statements"): with which public key (None: no ``attest``), since when (Unix time), how
    many statements it holds, the last one signed (archive, level, when), and why nothing
    can be signed ("" when something can)."""

    public_key: str | None
    since: float | None = None
    held: int = 0
    last_name: str = ""
    last_level: str = ""
    last_at: float | None = None
    problem: str = ""


@attrs.frozen
class StatusView:
    """Everything the status page shows, gathered at ``now`` (Unix time)."""

    version: str
    now: float
    mode: str
    groups: tuple[GroupView, ...]
    targets: tuple[TargetView, ...]
    #: None: no disk cache configured.
    cache: CacheView | None
    #: None: no bucket configured.
    bucket: BucketView | None
    rejected: tuple[RecentEvent, ...] = ()
    failovers: tuple[RecentEvent, ...] = ()
    refresh: int = DEFAULT_REFRESH
    #: None: not known (a page built without the statements).
    signing: SigningView | None = None


# -- decisions -------------------------------------------------------------------------------

_HEALTH_ORDER = {"down": 0, "blocked": 1, "unknown": 2, "up": 3}


def target_order(target: TargetView) -> tuple[int, str, str]:
    """Unhealthy first (down, blocked, unknown, then up), then by group and target."""
    return (_HEALTH_ORDER.get(target.health, 0), target.group, target.target)


def parse_refresh(raw: str | None) -> int:
    """The ``refresh`` query parameter: seconds between reloads, 0 for none. Raises
    ValueError for anything but a whole number from 0 to :data:`MAX_REFRESH`."""
    if raw is None:
        return DEFAULT_REFRESH
    # Only ASCII digits: "²".isdigit() is True and int() refuses it.
    if not raw or len(raw) > 5 or not all("0" <= c <= "9" for c in raw):
        raise ValueError("refresh must be a whole number of seconds")
    seconds = int(raw)
    if seconds > MAX_REFRESH:
        raise ValueError(f"refresh must be at most {MAX_REFRESH} seconds")
    return seconds


def refresh_percent(progress: RefreshProgress) -> float | None:
    """How much of a refresh is written, in percent (None until its size is known)."""
    if progress.size <= 0:
        return None
    return min(100.0, 100.0 * progress.written / progress.size)


def refresh_rate(progress: RefreshProgress) -> float:
    """A refresh's mean rate so far, bytes per second (0 before its first second): over its
    monotonic ``elapsed``, not the wall clock, which can step."""
    elapsed = progress.elapsed
    return progress.written / elapsed if elapsed >= 1.0 else 0.0


def refresh_use(used: Mapping[str, object] | None) -> str:
    """A target's ``refresh`` of ``/v1/targets`` in words: the archive, how the refresh
    used the source, why ("" when no refresh from several sources asked it)."""
    if not used:
        return ""
    reason = f": {used['reason']}" if used.get("reason") else ""
    return f"refresh of {used.get('file')}: {used.get('used')}{reason}"


def source_shares(progress: RefreshProgress) -> list[tuple[str, float, float]]:
    """Each source of a refresh from several at once: its URL, its share of the bytes so far
    (per cent) and its rate since the refresh began (bytes per second, over its monotonic
    ``elapsed``)."""
    total = sum(sent for _url, sent in progress.sources)
    elapsed = max(1e-3, progress.elapsed)
    return [
        (url, 100.0 * sent / total if total else 0.0, sent / elapsed)
        for url, sent in progress.sources
    ]
