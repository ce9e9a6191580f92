"""What the scrape loop tells the outside world: metrics, the systemd status line, events."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping

import trio

from tracker.config.schema import Config, rpc_identity
from tracker.discovery.scrape import Scraper, TargetHealth, Wakeup
from tracker.errors import RpcError
from tracker.notify import Notifier
from tracker.observability.logs import log_event
from tracker.observability.metrics import Metrics
from tracker.observability.redact import redact_url
from tracker.ordering.index import Index
from tracker.web.healthcheck import HealthChecker

log = logging.getLogger("tracker.reporting")


class ScrapeReporter:
    """Turns probe results and finished rounds into metrics and a ``STATUS=`` line."""

    def __init__(self, metrics: Metrics, notifier: Notifier) -> None:
        self.metrics = metrics
        self.notifier = notifier

    def probe_done(self, health: TargetHealth) -> None:
        """Record one probe's duration and outcome."""
        key = health.target.key
        ok = health.health == "up"
        seconds = health.last_duration or 0.0
        self.metrics.observe_scrape(
            key.group, key.target, seconds, ok=ok, discovered=key.discovered
        )

    def round_done(self, scraper: Scraper) -> None:
        """Refresh per-group gauges, drop series of retired targets, update the status line."""
        index, config = scraper.index, scraper.config
        # configured targets only: a discovered node's series are its group's (one URL
        # moved from the config to discovery leaves its own series behind otherwise)
        current = {(k.group, k.target) for k in scraper.health if not k.discovered}
        # every target with series, not only those probed: a share of a refresh from
        # several sources counted after its node left made series nobody removed
        for group_name, target in self.metrics.reported_targets() - current:
            self.metrics.remove_target(group_name, target)
        for group in config.target_groups:
            name = group.group
            states = [h for h in scraper.health.values() if h.target.key.group == name]
            up = sum(h.health == "up" for h in states)
            self.metrics.set_targets(name, up=up, total=len(states))
            full, incr = index.best_full(name), index.best_incremental(name)
            self.metrics.set_best_slots(
                name,
                full=full.info.slot if full else None,
                incremental=incr.info.slot if incr else None,
            )
        self.notifier.status(status_line(scraper, index))


def status_line(scraper: Scraper, index: Index) -> str:
    """One line for ``systemctl status``: targets up/total and each group's best full slot."""
    states = list(scraper.health.values())
    up = sum(h.health == "up" for h in states)
    parts = [f"{up}/{len(states)} targets up"]
    for group in scraper.config.target_groups:
        full = index.best_full(group.group)
        parts.append(f"{group.group}: best full {full.info.slot if full else 'none'}")
    return "; ".join(parts)


#: How long a cluster's slot is carried on past its RPC's last answer (an RPC down, slow
#: or gone): then the tracker screens its groups as without ``rpc``, rather than against a slot that
#: falls further behind every minute (every newer archive "too far ahead").
SLOT_KEPT_FOR = 300.0
#: The slot time the carried slot advances by (mainnet's target).
NOMINAL_SLOT_SECONDS = 0.4


def cluster_slot_now(
    answered: int | None, last: tuple[int, float] | None, now: float
) -> tuple[int | None, tuple[int, float] | None]:
    """The cluster's slot to screen archives with at ``now`` (monotonic seconds), and the
    last answer to keep: the RPC's ``answered`` slot; without one, the ``last`` answer
    carried on at :data:`NOMINAL_SLOT_SECONDS` a slot for up to :data:`SLOT_KEPT_FOR`
    seconds; past that, or with none, None (no slot known). Pure."""
    if answered is not None:
        return answered, (answered, now)
    if last is None or now - last[1] > SLOT_KEPT_FOR:
        return None, None
    slot, at = last
    return slot + int((now - at) / NOMINAL_SLOT_SECONDS), last


def group_slots(config: Config, by_url: Mapping[str, int | None]) -> dict[str, int | None]:
    """Each group's cluster slot: that of its own cluster's RPC (:meth:`Config.group_rpc`)
    in ``by_url``; None for a group without an RPC or whose RPC has no slot. A cluster's
    slot screens its own groups only: another cluster's is no bound on what they advertise
    (docs/http-api.md#trust). Pure."""
    return {g.group: by_url.get(config.group_rpc(g.group)) for g in config.target_groups}


#: A group's cluster ``rpc`` that failed its last ``getSlot``: its URL and why (one line).
RpcFailure = tuple[str, str]


def rpcs_up(
    config: Config, asked: Collection[str], answered: Mapping[str, int]
) -> dict[str, bool | None]:
    """Each group's ``rpc`` (:meth:`Config.group_rpc`): True when it answered the read of
    ``asked`` (``answered``), False when it failed, None for a group without one. A group
    whose ``rpc`` was not among those asked (a reload moved it during the read) is left out:
    not asked is not failed. Pure."""
    out: dict[str, bool | None] = {}
    for group in config.target_groups:
        url = config.group_rpc(group.group)
        if not url:
            out[group.group] = None
        elif url in asked:
            out[group.group] = url in answered
    return out


def rpc_failures(config: Config, failed: Mapping[str, str]) -> dict[str, RpcFailure]:
    """Each group whose ``rpc`` (:meth:`Config.group_rpc`) failed the read: its URL and the
    reason in ``failed`` (by URL). Exactly the groups :func:`rpcs_up` says are down, so the
    status page's note and ``snapshot_tracker_cluster_rpc_up`` never disagree. Pure."""
    out: dict[str, RpcFailure] = {}
    for group in config.target_groups:
        url = config.group_rpc(group.group)
        if url and url in failed:
            out[group.group] = (url, failed[url])
    return out


def slots_kept(old: Config, new: Config, slots: Mapping[str, int | None]) -> dict[str, int | None]:
    """The cluster slots (``slots``: by group, as the index holds them) that still screen the
    groups of ``new`` after a reload from ``old``: those of the groups whose RPC
    (:meth:`Config.group_rpc`) the reload left as it was; a group it moved to another RPC,
    or to none, has no slot known until that one answers: its old cluster's slot is no
    bound on what it advertises (docs/http-api.md, "Public routes": its own cluster's
    slot). Pure."""
    return {
        g.group: slots.get(g.group)
        for g in new.target_groups
        if old.group_named(g.group) is not None
        and rpc_identity(old.group_rpc(g.group)) == rpc_identity(new.group_rpc(g.group))
    }


async def read_slots(
    health: HealthChecker, urls: Iterable[str]
) -> tuple[dict[str, int], dict[str, str]]:
    """The finalized slot each RPC of ``urls`` answers, asked all at once (each within the
    health check's timeout: one slow cluster delays none of the others' reads), and why
    each RPC that failed did (a one-line reason, by URL)."""
    answered: dict[str, int] = {}
    failed: dict[str, str] = {}

    async def read(url: str) -> None:
        try:
            answered[url] = await health.current_slot(url)
        except RpcError as exc:
            failed[url] = str(exc) or type(exc).__name__
        except Exception as exc:
            # the last guard (docs/architecture.md, "Failures"): what no rule names costs
            # this answer, as a failed one: the carried slot stays (a restart of the
            # whole task would start without it)
            log_event(log, "error", "slot_read_error", rpc=redact_url(url), exc_info=exc)
            failed[url] = f"not read: {type(exc).__name__}"

    async with trio.open_nursery() as nursery:
        for url in urls:
            nursery.start_soon(read, url)
    return answered, failed


async def track_snapshot_age(
    health: HealthChecker,
    metrics: Metrics,
    config: Callable[[], Config],
    on_slot: Callable[[Mapping[str, int | None]], None] | None = None,
    wakeup: Wakeup | None = None,
    on_rpc: Callable[[Mapping[str, RpcFailure]], None] | None = None,
) -> None:
    """Every scrape interval, and at once when ``wakeup`` is set (a reload), read each
    group's cluster slot from its RPC (each distinct URL of :meth:`Config.slot_rpcs` once)
    and publish each group's snapshot age in slots against its own cluster's slot (as
    long as one is known), and whether its RPC answered (:func:`rpcs_up`); ``on_rpc`` is
    told, after every read, the groups whose RPC failed it and why (:func:`rpc_failures`:
    the status page's note).

    ``on_slot`` is told every group's cluster slot every interval (the index's
    ``max_slot_ahead`` check, :func:`group_slots`): its RPC's answer, carried on for a
    while when it fails (:func:`cluster_slot_now`), None without an RPC. Runs until
    cancelled. The age is against that same slot, the one the status page shows the ages
    against: a failed read carries it on as well, and once no slot is known the group's
    series is removed rather than kept at a stale age.
    """
    last: dict[str, tuple[int, float]] = {}
    while True:
        current = config()
        urls = current.slot_rpcs()
        answered, failed = await read_slots(health, urls)
        now = trio.current_time()
        screened: dict[str, int | None] = {}
        kept: dict[str, tuple[int, float]] = {}
        for url in urls:  # an RPC no group reads any more is forgotten with its slot
            screened[url], carried = cluster_slot_now(answered.get(url), last.get(url), now)
            if carried is not None:
                kept[url] = carried
        last = kept
        # by the groups' RPCs of now: a reload during the read moved a group to another
        # RPC, whose slot is not read yet (none: never the old cluster's, slots_kept)
        now_config = config()
        slots = group_slots(now_config, screened)
        if on_slot is not None:
            on_slot(slots)
        # whether each group's rpc answered, at every read: the age's series goes once
        # the carried slot ran out, and nothing else said why (docs/http-api.md,
        # "Internal routes")
        for name, up in rpcs_up(now_config, urls, answered).items():
            metrics.set_cluster_rpc_up(name, up)
        if on_rpc is not None:
            on_rpc(rpc_failures(now_config, failed))
        for group in now_config.target_groups:
            # the slot the index screens with and the status page ages against (carried
            # on when the RPC fails): the metric, its alert and the page never disagree
            slot = slots.get(group.group)
            newest = health.newest_slot(group.group)
            age = None if slot is None or newest is None else max(0, slot - newest)
            metrics.set_snapshot_age(group.group, age)
        if wakeup is None:
            await trio.sleep(current.scrape_interval)
        else:
            await wakeup.wait(current.scrape_interval)
