"""Which targets a scrape round probes and in which order (docs/architecture.md, "Scrape
rounds"): the pure decisions as tables, then the scrape loop over them under trio's mock
clock, its probes replaced (no network): discovered nodes that hang are left for the next
round rather than holding it past its interval, and backed off while down."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import tracker.discovery.probing as probing
import tracker.discovery.targetset as targetset
from tracker.config.schema import ClusterDiscovery, Config, Egress, HttpTargets, TargetGroup
from tracker.core.snapshots import SnapshotInfo
from tracker.discovery.nodes import Node
from tracker.discovery.roster import GONE_KEPT, Roster, Target, TargetHealth
from tracker.discovery.schedule import backoff_rounds, due, round_plan
from tracker.discovery.scrape import Scraper
from tracker.ordering.index import Index, TargetKey
from tracker.web.wire import health_json

# -- the decisions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "max_failures", "rounds"),
    [
        (0, 3, 1),
        (2, 3, 1),  # not yet dropped: every round
        (3, 3, 2),  # dropped at the third failure: every 2nd round
        (4, 3, 4),
        (5, 3, 8),
        (6, 3, 16),
        (7, 3, 32),
        (8, 3, 32),  # at most every 32 rounds
        (10_000, 3, 32),
        (1, 1, 2),
        (0, 1, 1),
    ],
)
def test_backoff_rounds(failures: int, max_failures: int, rounds: int) -> None:
    assert backoff_rounds(failures, max_failures) == rounds


@pytest.mark.parametrize(
    ("failures", "max_failures", "since", "expected"),
    [
        (0, 3, None, True),  # never probed
        (0, 3, 1, True),
        (2, 3, 1, True),
        (3, 3, 1, False),
        (3, 3, 2, True),
        (5, 3, 7, False),
        (5, 3, 8, True),
        (9, 3, 31, False),
        (9, 3, 32, True),
        (9, 3, 100, True),
        (9, 3, None, True),
    ],
)
def test_due(failures: int, max_failures: int, since: int | None, expected: bool) -> None:
    assert due(failures, max_failures, since) is expected


def _health(name: str, *, discovered: bool, last: int | None = None, failures: int = 0) -> Any:
    key = TargetKey("g", name, discovered=discovered)
    return TargetHealth(Target(key, "http", name), failures=failures, probed_round=last)


def _plan(healths: list[TargetHealth], round_number: int = 10, max_failures: int = 3) -> str:
    return " ".join(h.target.key.target for h in round_plan(healths, round_number, max_failures))


@pytest.mark.parametrize(
    ("healths", "expected"),
    [
        # configured first, whatever their failures or last probe
        (
            [
                _health("n1", discovered=True, last=9),
                _health("c1", discovered=False, last=9, failures=50),
                _health("n2", discovered=True),
                _health("c2", discovered=False),
            ],
            "c1 c2 n2 n1",
        ),
        # never probed first, then the least recently probed; ties keep the given order
        (
            [
                _health("a", discovered=True, last=9),
                _health("b", discovered=True, last=7),
                _health("c", discovered=True),
                _health("d", discovered=True, last=7),
                _health("e", discovered=True),
            ],
            "c e b d a",
        ),
        # backed off: 4 failures (max 3) wait 4 rounds, 3 wait 2; a configured one never
        (
            [
                _health("late", discovered=True, last=7, failures=4),  # 3 rounds ago
                _health("due", discovered=True, last=6, failures=4),  # 4 rounds ago
                _health("off", discovered=True, last=9, failures=3),
                _health("on", discovered=True, last=8, failures=3),
                _health("mine", discovered=False, last=9, failures=40),
            ],
            "mine due on",
        ),
        ([], ""),
    ],
)
def test_round_plan(healths: list[TargetHealth], expected: str) -> None:
    assert _plan(healths) == expected


# -- the scrape loop -----------------------------------------------------------------------------

CONFIGURED = "http://127.0.0.1:1"
INTERVAL, TIMEOUT = 1.0, 0.4


def _config(concurrency: int, max_failures: int) -> Config:
    group = TargetGroup(
        group="g",
        http_targets=HttpTargets((CONFIGURED,)),
        cluster_discovery=ClusterDiscovery(rpc=("http://rpc.invalid",), interval=1e9),
    )
    return Config(
        target_groups=(group,),
        egress=Egress(allow=("127.0.0.0/8",)),
        scrape_interval=INTERVAL,
        scrape_timeout=TIMEOUT,
        scrape_concurrency=concurrency,
        max_target_failures=max_failures,
    )


class Run:
    """A scraper's rounds under the mock clock: every probe by round, each round's span."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, nodes: list[str]) -> None:
        self.answering: set[str] = {CONFIGURED}
        self.rounds = 0
        self.began = 0.0
        self.spans: list[float] = []
        self.probed: dict[str, list[int]] = defaultdict(list)
        #: Per target: its last_scrape as its last probe left it.
        self.scraped: dict[str, datetime | None] = {}
        self.done = trio.Event()
        self.count = 0

        async def found(*_args: Any, **_kwargs: Any) -> list[Node]:
            return [Node(url, "2.2.1") for url in nodes]

        async def probe(_probes: Any, target: Target, _group: Any) -> list[SnapshotInfo]:
            if target.location not in self.answering:
                await trio.sleep_forever()  # accepts and never answers
            return []

        monkeypatch.setattr(targetset, "cluster_targets", found)
        monkeypatch.setattr(probing.Probes, "probe", probe)

    def on_probe(self, health: TargetHealth) -> None:
        name = health.target.key.target
        self.probed[name].append(self.rounds + 1)
        self.scraped[name] = health.last_scrape

    def rounds_probed(self, name: str) -> list[int]:
        """The rounds that probed ``name``, up to the last one waited for (the next one
        may have begun before the test saw the last one end)."""
        return [r for r in self.probed[name] if r <= self.count]

    def on_round(self, _scraper: Scraper) -> None:
        self.rounds += 1
        now = trio.current_time()
        self.spans.append(now - self.began)
        self.began = now
        self.done.set()

    async def rounds_of(self, config: Config, count: int) -> Scraper:
        self.count = count
        scraper = Scraper(config, Index(), on_round=self.on_round, on_probe=self.on_probe)
        self.began = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scraper.run)
            while self.rounds < count:
                self.done = trio.Event()
                await self.done.wait()
                self.check(scraper)
            nursery.cancel_scope.cancel()
        await scraper.aclose()
        return scraper

    def check(self, scraper: Scraper) -> None:
        """What a round leaves: a target not probed shows what its last probe left."""
        for health in scraper.health.values():
            name = health.target.key.target
            assert health.last_scrape == self.scraped.get(name), name
            if name in self.answering:
                continue
            failures = len(self.probed[name])
            assert health.failures == failures, name  # nothing counted unless probed
            entry = health_json(health, 0)
            if failures:
                assert entry["health"] == "down", name
                assert entry["last_error"] == f"timed out after {TIMEOUT:g}s", name
                assert entry["consecutive_failures"] == failures, name
            else:
                assert (entry["health"], entry["last_scrape"]) == ("unknown", None), name


async def test_hanging_nodes_are_left_for_the_next_round_not_waited_for(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 discovered nodes that never answer, 4 probes at once, a 0.4 s timeout and a 1 s
    interval: all of them in one round took 4 s (40 / 4 x 0.4), and the configured target
    waited that long for its next probe. Those with no slot by the interval's end are left,
    nothing recorded of them, to the head of the next round."""
    nodes = [f"http://127.3.0.1:{1000 + n}" for n in range(40)]
    run = Run(monkeypatch, nodes)
    await run.rounds_of(_config(concurrency=4, max_failures=1000), 8)
    assert max(run.spans) <= INTERVAL + TIMEOUT
    assert run.rounds_probed(CONFIGURED) == list(range(1, 9))  # every round, first
    counts = [len(run.rounds_probed(n)) for n in nodes]
    assert max(counts) - min(counts) <= 1  # the least recently probed first
    assert min(counts) >= 1  # everyone's turn came
    assert sum(counts) < 40 * 8  # some were left each round


async def test_nodes_down_are_backed_off_until_they_answer(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Room for every probe: a node down twice (``max_target_failures`` 2, its snapshots
    dropped) is probed every 2nd, 4th, ... round, at most every 32nd; one that answers again
    is probed every round from then on. The configured target is probed every round."""
    dead, revived = "http://127.3.0.1:1001", "http://127.3.0.1:1002"
    run = Run(monkeypatch, [dead, revived])
    config = _config(concurrency=4, max_failures=2)

    def on_round(scraper: Scraper) -> None:
        Run.on_round(run, scraper)
        if run.rounds == 70:
            run.answering.add(revived)

    run.on_round = on_round  # type: ignore[method-assign]
    await run.rounds_of(config, 100)
    assert run.rounds_probed(dead) == [1, 2, 4, 8, 16, 32, 64, 96]
    assert run.rounds_probed(revived) == [1, 2, 4, 8, 16, 32, 64, 96, 97, 98, 99, 100]
    assert run.rounds_probed(CONFIGURED) == list(range(1, 101))


@pytest.mark.parametrize(
    ("now", "kept"),
    [
        (Target(TargetKey("g", "http://n", discovered=True), "http", "http://n", "2.3.1"), True),
        (Target(TargetKey("g", "http://n", discovered=True), "http", "http://m", "2.3.0"), False),
        (
            Target(TargetKey("g", "http://n", discovered=True), "sidecar", "http://n", "2.3.0"),
            False,
        ),
    ],
    ids=["another version", "another location", "another kind"],
)
def test_a_target_that_changed_keeps_its_record_only_for_a_version(now: Target, kept: bool) -> None:
    # An RPC flipping a failing node's version reset its back-off: probed every round again.
    roster = Roster()
    before = Target(TargetKey("g", "http://n", discovered=True), "http", "http://n", "2.3.0")
    roster.adopt([before])
    roster.health[before.key].failures = 7
    listed = roster.roster
    roster.adopt([now])
    assert roster.roster > listed  # the listings' key: a node's version shows at once
    assert roster.health[now.key].target == now
    assert roster.health[now.key].failures == (7 if kept else 0)


async def test_a_node_that_leaves_and_comes_back_stays_backed_off(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node down for good that ``getClusterNodes`` lists every other time (discovery
    asked every round): it came back each time as a node never probed, its failures at 0,
    and was probed every time it was listed, at the head of the round, never backed off. Its
    record waits for it: it is probed as if it had stayed, backed off while down (a node
    listed every round is probed at 1, 2, 4, 8, 16: here the rounds it is listed in)."""
    flapping = "http://127.3.0.1:1001"
    run = Run(monkeypatch, [])
    asked = 0

    async def found(*_args: Any, **_kwargs: Any) -> list[Node]:
        nonlocal asked
        asked += 1
        return [Node(flapping, "2.2.1")] if asked % 2 else []

    monkeypatch.setattr(targetset, "cluster_targets", found)
    group = TargetGroup(
        group="g",
        http_targets=HttpTargets((CONFIGURED,)),
        cluster_discovery=ClusterDiscovery(rpc=("http://rpc.invalid",), interval=INTERVAL / 2),
    )
    config = attrs.evolve(_config(concurrency=4, max_failures=2), target_groups=(group,))
    await run.rounds_of(config, 20)
    assert run.rounds_probed(flapping) == [1, 3, 5, 9, 17]
    assert run.rounds_probed(CONFIGURED) == list(range(1, 21))


def test_the_records_of_nodes_gone_are_kept_for_the_down_ones_and_bounded() -> None:
    """A node down that leaves the list gets its record back when listed again; one up, or
    one past the bound (the oldest first), starts afresh; a configured target never waits."""

    def node(n: int, *, discovered: bool = True) -> Target:
        url = f"http://127.3.{n // 250}.{n % 250 + 1}:8899"
        return Target(TargetKey("g", url, discovered=discovered), "http", url)

    roster = Roster()
    down, up, mine = node(0), node(1), node(2, discovered=False)
    roster.adopt([down, up, mine])
    for target in (down, mine):
        roster.health[target.key].failures = 5
    roster.adopt([])
    back = roster.roster
    roster.adopt([down, up, mine])
    assert roster.roster > back  # they came: the listings show them
    assert [roster.health[t.key].failures for t in (down, up, mine)] == [5, 0, 0]
    crowd = [node(n) for n in range(3, 3 + GONE_KEPT)]
    roster.adopt(crowd)  # down gone first, then 1,024 more down: down's record is the oldest
    for target in crowd:
        roster.health[target.key].failures = 5
    roster.adopt([])
    roster.adopt([down, *crowd])
    assert roster.health[down.key].failures == 0
    assert {roster.health[t.key].failures for t in crowd} == {5}
