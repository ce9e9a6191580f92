"""The pacer and the transfer slots of ``source_limits`` alone (tracker.net.sourcelimits), on
trio's autojump clock: no network, no real time (the byte paths that use them are tested
against real upstreams in tests/integration/test_source_limits.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from tracker.config.schema import SourceLimits
from tracker.errors import SourceBusy
from tracker.net.sourcelimits import BURST, Pacer, SourceLimiter, source_of

MiB = 1024 * 1024
URL = "http://127.0.0.1:8899/snapshot-100-abc.tar.zst"
#: Another file of the same source, and a file of another source.
SAME = "http://127.0.0.1:8899/incremental-snapshot-100-200-def.tar.zst"
OTHER = "http://127.0.0.2:8899/snapshot-100-abc.tar.zst"


async def _paced(pacer: Pacer, total: int, chunk: int) -> float:
    """Seconds (trio's clock) to receive ``total`` bytes in ``chunk``s through ``pacer``."""
    began = trio.current_time()
    for _ in range(total // chunk):
        await pacer.pace(chunk)
    return trio.current_time() - began


@pytest.mark.parametrize(
    ("rate", "total", "chunk"),
    [(MiB, 8 * MiB, 64 * 1024), (10 * MiB, 40 * MiB, 1024 * 1024), (100_000, 1_000_000, 1000)],
)
async def test_the_rate_is_honoured_after_a_burst(
    autojump_clock: trio.testing.MockClock, rate: int, total: int, chunk: int
) -> None:
    async with SourceLimiter().transfer(URL, SourceLimits(max_rate=rate), wait=0) as slot:
        took = await _paced(slot.pacer, total, chunk)
    # An idle source may send BURST seconds' worth at once; then it is held to ``rate``.
    assert took == pytest.approx(total / rate - BURST, rel=0.02)


async def test_no_cap_never_waits(autojump_clock: trio.testing.MockClock) -> None:
    limits = SourceLimiter()
    async with limits.transfer(URL, SourceLimits(), wait=0) as slot:
        assert slot.pacer.rate == 0
        assert await _paced(slot.pacer, 1024 * MiB, MiB) == 0.0
    assert Pacer(0).delay(10**12) == 0.0
    assert Pacer(0).slice(1.0, 4 * MiB) == 4 * MiB
    assert Pacer(MiB).slice(0.5, 4 * MiB) == MiB // 2


async def test_transfers_of_one_source_share_its_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = SourceLimiter()
    caps = SourceLimits(max_rate=MiB)
    took: list[float] = []

    async def one(url: str) -> None:
        async with limits.transfer(url, caps, wait=0) as slot:
            took.append(await _paced(slot.pacer, 4 * MiB, 64 * 1024))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, URL)
        nursery.start_soon(one, SAME)  # another file, the same source: the same budget
    assert max(took) == pytest.approx(8 - BURST, rel=0.03)
    took.clear()
    limits = SourceLimiter()  # idle sources again (the first one's budget is spent)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, URL)
        nursery.start_soon(one, OTHER)  # another source: a budget of its own
    assert max(took) == pytest.approx(4 - BURST, rel=0.03)


async def test_slots_are_counted_waited_for_and_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = SourceLimiter()
    caps = SourceLimits(max_transfers=2)
    release = trio.Event()

    async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with limits.transfer(URL, caps, wait=0):
            task_status.started()
            await release.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(hold)
        await nursery.start(hold)
        assert limits.running(SAME) == 2 and limits.running(OTHER) == 0
        began = trio.current_time()
        with pytest.raises(SourceBusy, match="2 transfers"):
            async with limits.transfer(URL, caps, wait=3.0):
                pass
        assert trio.current_time() - began == pytest.approx(3.0)  # waited, then refused
        async with limits.transfer(OTHER, caps, wait=0):  # another source is not counted
            assert limits.running(OTHER) == 1

        async def free_one_later() -> None:
            await trio.sleep(1.0)
            release.set()

        nursery.start_soon(free_one_later)
        began = trio.current_time()
        async with limits.transfer(URL, caps, wait=5.0):  # in as soon as a slot is free
            assert trio.current_time() - began == pytest.approx(1.0)
    assert limits.running(URL) == 0


async def test_a_cancelled_transfer_or_waiter_gives_its_slot_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = SourceLimiter()
    caps = SourceLimits(max_transfers=1)
    async with trio.open_nursery() as nursery:
        holder = trio.CancelScope()

        async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with holder:
                async with limits.transfer(URL, caps, wait=0):
                    task_status.started()
                    await trio.sleep_forever()

        await nursery.start(hold)
        assert limits.running(URL) == 1
        waiter = trio.CancelScope()

        async def wait_for_slot() -> None:
            with waiter:
                async with limits.transfer(URL, caps, wait=100.0):
                    raise AssertionError("the waiter was cancelled before a slot freed")

        nursery.start_soon(wait_for_slot)
        await trio.sleep(1.0)
        waiter.cancel()  # a waiter cancelled: it held no slot and takes none
        await trio.sleep(1.0)
        assert limits.running(URL) == 1
        holder.cancel()  # the transfer cancelled: its slot is free at once
        await trio.testing.wait_all_tasks_blocked()
        assert limits.running(URL) == 0
        async with limits.transfer(URL, caps, wait=0):
            assert limits.running(URL) == 1
    assert limits.running(URL) == 0


def test_a_source_is_its_scheme_host_and_port() -> None:
    assert source_of(URL) == source_of(SAME) == "http://127.0.0.1:8899"
    assert source_of("https://Node.Example/a") == "https://node.example:443"
    assert source_of("http://node.example/a") == source_of("http://node.example:80/b")
    assert source_of(OTHER) != source_of(URL)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("http://[2001:0db8::6]:8899/a", "http://[2001:db8::6]:8899/b"),
        ("http://[2001:db8:0:0::6]:8899", "http://[2001:DB8::6]:8899"),
        ("http://[::ffff:10.0.0.6]:8899", "http://10.0.0.6:8899"),
        ("http://[fe80:0::1%eth0]:8899", "http://[fe80::1%eth0]:8899"),
    ],
)
def test_one_source_however_its_host_is_spelled(one: str, other: str) -> None:
    """Two spellings of one machine's address share its transfers and its rate."""
    assert source_of(one) == source_of(other)


def test_one_link_local_address_on_two_links_is_two_sources() -> None:
    assert source_of("http://[fe80::1%eth0]:8899/a") != source_of("http://[fe80::1%eth1]:8899/a")


async def test_the_queue_is_bounded_in_length_and_time_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []
    limits = SourceLimiter(on_queue=events.append)
    caps = SourceLimits(max_transfers=1)
    release = trio.Event()
    got: list[float] = []

    async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with limits.transfer(URL, caps, wait=0) as slot:
            slot.ends_at = trio.current_time() + 7.5  # what the holder expects
            task_status.started()
            await release.wait()

    async def queued(wait: float) -> None:
        try:
            async with limits.transfer(URL, caps, wait=wait, queue=2):
                got.append(trio.current_time())
        except SourceBusy:
            got.append(-trio.current_time())  # refused: when, negative

    async with trio.open_nursery() as nursery:
        await nursery.start(hold)
        nursery.start_soon(queued, 10.0)
        nursery.start_soon(queued, 1.0)
        await trio.testing.wait_all_tasks_blocked()
        assert limits.waiting(URL) == 2
        with pytest.raises(SourceBusy, match="2 requests wait already") as full:
            async with limits.transfer(URL, caps, wait=5.0, queue=2):
                pass
        assert full.value.retry_after == pytest.approx(7.5)  # the holder's expected end
        with pytest.raises(SourceBusy) as at_once:  # wait 0: no queue, refused at once
            async with limits.transfer(URL, caps, wait=0, queue=2):
                pass
        assert at_once.value.retry_after == pytest.approx(7.5)
        await trio.sleep(2.0)  # the one that waits 1 s gave up
        assert got == [pytest.approx(-1.0)] and limits.waiting(URL) == 1
        release.set()  # a slot frees: the one still queued takes it at once
    assert got == [pytest.approx(-1.0), pytest.approx(2.0)]
    assert sorted(events) == sorted(["queued", "queued", "full", "timeout", "served"])


async def test_a_lower_cap_holds_the_transfers_running_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reload lowers ``max_rate`` while a transfer runs: each transfer kept the pacer of
    the cap it began under and a new one got a fresh budget on top (2 MiB/s and 0.5 MiB/s
    at once, against a cap of 0.5). The source has one pacer: both share the new cap."""
    limits = SourceLimiter()
    total = 8 * MiB
    took: list[float] = []

    async def one(cap: int) -> None:
        async with limits.transfer(URL, SourceLimits(max_rate=cap), wait=0) as slot:
            took.append(await _paced(slot.pacer, total, 64 * 1024))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 2 * MiB)
        await trio.sleep(0.1)
        nursery.start_soon(one, MiB // 2)  # the reload
    # 16 MiB at 0.5 MiB/s: about 32 s for both (they ended within a second of each other)
    assert min(took) > 2 * total / (MiB // 2) - 4
    assert limits.running(URL) == 0


async def test_two_groups_of_one_source_share_the_lower_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two groups list one source with other caps (1 and 2 MiB/s): each start swapped the
    source's pacer for a fresh one, and the group of the lower cap got 4 MiB/s from it. The
    source is held to the lower cap while transfers of both run."""
    limits = SourceLimiter()
    started = trio.current_time()

    async def one(cap: int) -> None:
        async with limits.transfer(
            SAME if cap > MiB else URL, SourceLimits(max_rate=cap), wait=0
        ) as slot:
            await _paced(slot.pacer, 4 * MiB, 64 * 1024)

    async with trio.open_nursery() as nursery:
        for cap in (MiB, 2 * MiB, MiB, 2 * MiB):
            nursery.start_soon(one, cap)
    # 16 MiB from the source at 1 MiB/s
    assert trio.current_time() - started > 16 - 1


async def test_a_freed_slot_goes_to_the_request_that_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One slot; a refresh's lane gives it back after each piece and asks again at once; a
    client waits for it meanwhile. Waking the waiter left the slot to whoever asked first:
    the lane took it eleven times, and the client was refused after its 5 s (a 503). The
    slot goes to the waiter, first come first."""
    limits = SourceLimiter()
    caps = SourceLimits(max_transfers=1)
    served: list[float] = []

    async def lane() -> None:
        for _ in range(20):
            async with limits.transfer(URL, caps, wait=5.0):
                await trio.sleep(0.5)  # one piece; then straight on to the next

    async def client() -> None:
        began = trio.current_time()
        async with limits.transfer(URL, caps, wait=5.0):
            served.append(trio.current_time() - began)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lane)
        await trio.sleep(0.1)
        nursery.start_soon(client)
    assert served and served[0] <= 0.5


async def test_requests_wait_their_turn_in_order(autojump_clock: trio.testing.MockClock) -> None:
    """Three requests queue for one slot: each freed slot goes to the first of them."""
    limits = SourceLimiter()
    caps = SourceLimits(max_transfers=1)
    order: list[int] = []

    async def one(n: int) -> None:
        async with limits.transfer(URL, caps, wait=60.0):
            order.append(n)
            await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(one, n)
            await trio.sleep(0.1)
    assert order == [0, 1, 2, 3]
    assert limits.running(URL) == 0 and limits.waiting(URL) == 0


async def test_waiting_requests_are_let_in_under_the_limits_in_force(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Limits given as a function (those of the config in force): a request waiting in the
    queue is held to the limit of the moment a slot frees, not the one it came under; a
    raised limit lets the queue in as soon as it is reconsidered (a reload)."""
    limits = SourceLimiter()
    now = [SourceLimits(max_transfers=2)]
    releases = [trio.Event() for _ in range(4)]
    admitted: list[int] = []

    async def one(n: int) -> None:
        async with limits.transfer(URL, lambda: now[0], wait=100.0):
            admitted.append(n)
            await releases[n].wait()

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(one, n)
            await trio.testing.wait_all_tasks_blocked()
        assert (admitted, limits.waiting(URL)) == ([0, 1], 2)
        now[0] = SourceLimits(max_transfers=1)  # lowered while 2 and 3 wait
        releases[0].set()
        await trio.testing.wait_all_tasks_blocked()
        assert (admitted, limits.running(URL), limits.waiting(URL)) == ([0, 1], 1, 2)
        now[0] = SourceLimits(max_transfers=3)  # raised: both in, no transfer ended
        limits.reconsider()
        await trio.testing.wait_all_tasks_blocked()
        # both woken at once: trio runs them in either order
        assert (sorted(admitted), limits.running(URL), limits.waiting(URL)) == ([0, 1, 2, 3], 3, 0)
        for release in releases:
            release.set()
    assert limits.running(URL) == 0


async def test_a_waiter_held_by_its_own_limit_holds_back_no_other_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two groups list one source, one at ``max_transfers: 1``, the other at 3 (a reload
    raises it to 4). With one transfer running, the first group's request waits (its limit
    is reached); the other group's requests, which their own limit admits, waited behind it
    (head of line) until the source was idle. They go at once, a newcomer and a waiter let
    in by a reload alike; the held one keeps its place and goes once the source has room
    under its own limit."""
    limits = SourceLimiter()
    strict = SourceLimits(max_transfers=1)
    loose = [SourceLimits(max_transfers=3)]
    releases = {name: trio.Event() for name in ("running", "b1", "b2", "b3", "a")}
    admitted: list[str] = []

    async def one(name: str, caps: SourceLimits | Callable[[], SourceLimits]) -> None:
        async with limits.transfer(URL, caps, wait=100.0):
            admitted.append(name)
            await releases[name].wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "running", lambda: loose[0])
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(one, "a", strict)  # its limit of 1 is reached: it waits
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(one, "b1", lambda: loose[0])
        nursery.start_soon(one, "b2", lambda: loose[0])
        await trio.testing.wait_all_tasks_blocked()
        # b1 and b2: 2 and 3 running of their 3, at once (trio starts them in either
        # order), a still waiting
        assert (sorted(admitted), limits.waiting(URL)) == (["b1", "b2", "running"], 1)
        nursery.start_soon(one, "b3", lambda: loose[0])  # 3 of 3: it waits behind a
        await trio.testing.wait_all_tasks_blocked()
        assert (sorted(admitted), limits.waiting(URL)) == (["b1", "b2", "running"], 2)
        loose[0] = SourceLimits(max_transfers=4)  # a reload raises the group's limit
        limits.reconsider()
        await trio.testing.wait_all_tasks_blocked()
        assert (admitted[-1], limits.running(URL), limits.waiting(URL)) == ("b3", 4, 1)
        for name in ("running", "b1", "b2", "b3"):
            releases[name].set()
        await trio.testing.wait_all_tasks_blocked()
        assert (admitted[-1], limits.running(URL), limits.waiting(URL)) == ("a", 1, 0)
        releases["a"].set()
    assert limits.running(URL) == 0
