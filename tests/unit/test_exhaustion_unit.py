"""Resource limits decided without a network: configs too large or with too many aliases are
refused before parsing (by ``check-config``), the descriptor budget split between connections,
downloads and a reserve, download slots given back, the share one client may keep when
nothing is free (the limits under real connections: tests/integration/test_exhaustion.py,
tests/integration/test_fair_share.py)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import subprocess
import sys
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import attrs
import pytest

from tracker.accounting.downloads import DownloadBody, DownloadSlots, outcome_of, reclaimable
from tracker.config.loading import load_config
from tracker.config.yamlfile import MAX_ALIASES, MAX_CONFIG_BYTES, MAX_DEPTH
from tracker.errors import ClientGone, ConfigError, RequestError, TrackerError
from tracker.serving.responsebodies import GeneratorBody
from tracker.zerocopy.connection import Connections, client_of
from tracker.zerocopy.limit import (
    DOWNLOAD_DESCRIPTORS,
    RESERVED_DESCRIPTORS,
    WAITING_AT_ONCE,
    ConnectionLimit,
    DescriptorBudget,
    descriptor_budget,
    fair_share,
    probes_within,
)


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tracker", "check-config", "--config", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_an_oversized_config_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "tracker.yml"
    with path.open("w") as file:
        file.write("target_groups: [{group: g}]\n")
        file.write("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    done = check_config(path)
    assert done.returncode == 2
    size = path.stat().st_size
    assert f"{path}: the config file is {size:,} bytes, more than the {MAX_CONFIG_BYTES}" in (
        done.stderr
    )


def test_a_config_with_too_many_aliases_is_refused(tmp_path: Path) -> None:
    """Nested aliases are a few lines that stand for billions of values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 12):
        lines.append(f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]")
    path = tmp_path / "tracker.yml"
    path.write_text("\n".join(lines) + "\ntarget_groups: [{group: g}]\n")
    done = check_config(path)
    assert done.returncode == 2
    assert f"more than {MAX_ALIASES} aliases" in done.stderr


@pytest.mark.parametrize(
    "nested",
    [
        "target_groups: " + "[" * 3000 + "]" * 3000,  # flow style
        "target_groups:\n" + "- " * 3000 + "x",  # block style, compact
    ],
)
def test_a_config_nested_too_deeply_is_one_line_not_a_recursion_error(
    nested: str, tmp_path: Path
) -> None:
    """Thousands of levels made the YAML library recurse past Python's limit: a traceback
    (``check-config``), the daemon ended by SIGHUP, a 500 from ``POST /reload``."""
    path = tmp_path / "tracker.yml"
    path.write_text(nested + "\n")
    done = check_config(path)
    assert done.returncode == 2, done.stderr
    assert f"values nested more than {MAX_DEPTH} levels deep" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_config_nested_as_deep_as_allowed_gets_its_checks(tmp_path: Path) -> None:
    """Up to the bound a config's nesting is judged by the checks, never by the bound."""
    nested = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)  # the top mapping is one level
    path = tmp_path / "tracker.yml"
    path.write_text(f"target_groups: {nested}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "target_groups[0]: expected a mapping, got a list" in str(refused.value)


@pytest.mark.parametrize(
    ("max_connections", "scrape_concurrency", "descriptors", "expected"),
    [
        # systemd's LimitNOFILE: max_connections holds, downloads are not the limit.
        (4096, 64, 65536, DescriptorBudget(4096, 32, 4096)),
        # ulimit -n 1024: a reserve of 288 (160 + 2 per probe), 736 left: half for
        # connections, half for what downloads hold on top of theirs (5 each).
        (4096, 64, 1024, DescriptorBudget(368, 32, 73)),
        (4096, 8, 1024, DescriptorBudget(424, 32, 84)),
        (100, 64, 1024, DescriptorBudget(100, 32, 100)),
        # A tiny limit: the reserve takes at most half.
        (4096, 64, 256, DescriptorBudget(64, 32, 12)),
        (4096, 64, 8, DescriptorBudget(2, 32, 1)),
        (10, 64, 8, DescriptorBudget(2, 10, 1)),
    ],
)
def test_descriptors_are_split_between_connections_downloads_and_a_reserve(
    max_connections: int, scrape_concurrency: int, descriptors: int, expected: DescriptorBudget
) -> None:
    budget = descriptor_budget(max_connections, scrape_concurrency, descriptors)
    assert budget == expected
    if budget.downloads > 1:  # (the least there is: one connection, one download)
        reserve = min(descriptors // 2, RESERVED_DESCRIPTORS + 2 * scrape_concurrency)
        held = budget.connections + DOWNLOAD_DESCRIPTORS * budget.downloads
        assert held <= descriptors - reserve


@pytest.mark.parametrize(
    ("max_connections", "started", "at_start", "wanted", "now", "expected"),
    [
        # Room to spare (systemd's LimitNOFILE): the split stays as it is with any value.
        (4096, 64, 65536, 1000, 65536, 1000),
        (4096, 64, 65536, 10000, 65536, 10000),
        # ulimit -n 1024: the start's split left no room beyond its own probes.
        (4096, 64, 1024, 400, 1024, 64),
        (4096, 8, 1024, 400, 1024, 8),
        (4096, 64, 1024, 65, 1024, 64),
        (4096, 64, 1024, 32, 1024, 32),  # fewer: always
        # max_connections below what the descriptors allow: the slack is the probes'.
        (100, 64, 1024, 300, 1024, 132),
        # The limit raised since the start (prlimit): read again, room for more.
        (4096, 64, 1024, 400, 65536, 400),
        # The limit lowered since the start: not even one fits; the least there is.
        (4096, 64, 65536, 64, 256, 1),
    ],
)
def test_a_reload_puts_in_force_only_the_probes_the_start_split_leaves_room_for(
    max_connections: int, started: int, at_start: int, wanted: int, now: int, expected: int
) -> None:
    split = descriptor_budget(max_connections, started, at_start)
    probes = probes_within(split, max_connections, wanted, now)
    assert probes == expected
    if 1 < probes < wanted:  # the most that fits: one more would not
        assert descriptor_budget(max_connections, probes, now) == split
        more = descriptor_budget(max_connections, probes + 1, now)
        assert more.connections < split.connections or more.downloads < split.downloads


def test_download_slots_are_given_back_once_released_or_dropped() -> None:
    slots = DownloadSlots(2)
    first, second = slots.take(), slots.take()
    with pytest.raises(RequestError, match="too many downloads at once") as refused:
        slots.take()
    assert (refused.value.status, slots.refused) == (503, 1)
    first.release()
    first.release()  # once only
    assert slots.taken == 1
    del second  # an answer dropped before its body started
    gc.collect()
    assert slots.taken == 0
    assert DownloadSlots(None).take() is not None  # no limit (tests, the library)


@pytest.mark.parametrize(
    ("stalls", "expected"),
    [
        ({}, None),  # nothing held by a connection that can tell
        ({1: 0.0, 2: 9.9}, None),  # every client took a byte within the last 10 s
        ({1: 10.0}, 1),  # exactly the threshold
        ({1: 12.0, 2: 30.0, 3: 11.0}, 2),  # the longest stalled first
    ],
)
def test_the_slot_reclaimed_is_the_longest_stalled_past_the_threshold(
    stalls: dict[int, float], expected: int | None
) -> None:
    assert reclaimable(stalls, 10.0) == expected


@attrs.define
class FakeHolder:
    """A connection of ``client`` whose client has taken nothing for ``stall`` seconds."""

    stall: float
    reclaimed: bool = False
    client: str | None = None

    def stalled(self) -> float:
        return self.stall

    def reclaim(self) -> None:
        self.reclaimed = True


def test_a_stalled_download_gives_its_slot_to_a_new_one_only_when_all_are_taken() -> None:
    slots = DownloadSlots(2, reclaim_after=5.0)
    reading, stalled = FakeHolder(1.0), FakeHolder(6.0)
    held = slots.take(reading)
    first = slots.take(stalled)
    assert not stalled.reclaimed  # slots were free: a stalled client keeps its own
    new = slots.take(FakeHolder(0.0))
    assert (stalled.reclaimed, reading.reclaimed, slots.reclaimed, slots.taken) == (
        True,
        False,
        1,
        2,
    )
    first.release()  # the reclaimed download ends later: its slot is not given back twice
    assert slots.taken == 2
    with pytest.raises(RequestError):  # the other client reads: nothing to reclaim
        slots.take(None)
    new.release()
    assert slots.taken == 1
    held.release()


@pytest.mark.parametrize(
    ("holders", "newcomer", "expected"),
    [
        ([], "b", None),  # nothing held
        (["a"] * 4, "a", None),  # the one holding everything asks for more: refused
        (["a"] * 4, "b", "a"),  # another client gets one of them
        (["a", "b"], "c", None),  # one each: as fair as it gets, the newcomer waits
        (["a", "a", "b"], "c", "a"),  # two against none
        (["a", "a", "b"], "b", None),  # 2 against 1: the swap would only turn the tables
        (["a", "a", "a", "b"], "b", "a"),  # 3 against 1: after the swap 2 and 2
        (["a", "b", "b", "c"], "c", None),  # the most is b's, one more than c's
        ([None] * 4, "b", None),  # held by nothing that names a client: none to weigh
        (["a", "a"], None, "a"),  # a newcomer of no known client holds nothing
        (["a", "a", "b", "b"], "c", "a"),  # a tie: the client listed first
    ],
)
def test_the_client_holding_the_most_gives_one_up_to_one_holding_two_fewer(
    holders: list[str | None], newcomer: str | None, expected: str | None
) -> None:
    assert fair_share(holders, newcomer) == expected


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        ("127.0.0.2", "127.0.0.2"),
        ("::ffff:10.0.0.6", "10.0.0.6"),  # a dual-stack listener's IPv4 client
        ("2001:db8::6", "2001:db8::/64"),  # a machine is routinely given its /64 whole
        ("2001:0db8:0:0:ffff::7", "2001:db8::/64"),
        ("2001:db8:0:1::6", "2001:db8:0:1::/64"),
    ],
)
def test_a_connection_counts_for_its_address_an_ipv6_one_as_its_64(peer: str, client: str) -> None:
    assert client_of((peer, 5000)) == client
    assert Connections().open(((peer, 5000), ("::", 8458))).client == client


def test_a_connection_given_up_on_is_ended_also_while_its_bytes_flow() -> None:
    # A slot taken from the client holding the most may be one whose bytes still move:
    # ending only a piece's wait for room left it sending, over the download limit.
    ended: list[str] = []
    key = (("127.0.0.2", 5000), ("127.0.0.1", 8458))
    connection = Connections().open(key, lambda: ended.append("shut down"))
    connection.reclaim()
    assert ended == ["shut down"]


@attrs.define(eq=False)
class FakeStream:
    """A connection of ``client`` as :class:`ConnectionLimit` sees it: idle until it asks
    for something (:meth:`request`), active last at ``last_active``."""

    client: str
    last_active: float = 0.0
    idle: bool = True
    ended: bool = False
    started: Callable[[], None] | None = None

    def on_first_request(self, started: Callable[[], None]) -> bool:
        self.started = started
        return True

    def request(self) -> None:
        self.idle = False
        started, self.started = self.started, None
        if started is not None:
            started()

    def shut_down(self) -> None:
        self.ended = True


def _admitted(limit: ConnectionLimit, stream: FakeStream) -> bool:
    return limit.admit(stream)  # type: ignore[arg-type]


def _answering(limit: ConnectionLimit, *streams: FakeStream) -> None:
    """Admit each of ``streams`` and start its first request: connections busy answering."""
    for stream in streams:
        assert _admitted(limit, stream)
        stream.request()


def test_a_connection_owed_a_busy_ones_place_takes_it_only_with_its_first_request() -> None:
    # A scanner's connection that asks nothing took the place of a download in progress at
    # once: every scanner that hit a full listener ended an aria2c's connection.
    limit = ConnectionLimit(3, clock=lambda: 0.0)
    hog = [FakeStream("a", last_active=t) for t in (2.0, 1.0, 3.0)]
    for stream in hog:
        assert _admitted(limit, stream)
        stream.request()  # downloading
    scanner = FakeStream("b")
    assert _admitted(limit, scanner)  # waits over the limit
    assert not any(s.ended for s in hog) and limit.open == 3
    other = FakeStream("b")
    assert _admitted(limit, other)  # its client's newest waits: the silent one makes way
    assert scanner.ended and not any(s.ended for s in hog)
    assert not _admitted(limit, FakeStream("a"))  # the hog's own: refused, nothing ends
    assert not other.ended
    other.request()  # now the hog's least recently active download makes room
    assert [s.ended for s in hog] == [False, True, False]
    assert (limit.open, limit.shared, limit.evicted, limit.refused) == (3, 1, 1, 1)


def test_a_client_connecting_again_and_again_replaces_only_its_own_waiting_connection() -> None:
    # One connection waited at a time, the newest: an address that connected again and
    # again, asking nothing, closed every other client's newcomer before its request.
    limit = ConnectionLimit(2, clock=lambda: 0.0)
    hog = [FakeStream("a", last_active=t) for t in (2.0, 1.0)]
    _answering(limit, *hog)
    silent = [FakeStream("s")]
    newcomer = FakeStream("b")
    assert _admitted(limit, silent[0]) and _admitted(limit, newcomer)
    for _ in range(5):
        silent.append(FakeStream("s"))
        assert _admitted(limit, silent[-1])
    assert [s.ended for s in silent] == [True] * 5 + [False]
    assert not newcomer.ended and limit.open == 2
    newcomer.request()  # it takes the hog's least recently active download's place
    assert [s.ended for s in hog] == [False, True] and not newcomer.ended
    assert (limit.open, limit.shared, limit.evicted) == (2, 1, 5)


def test_at_most_a_few_connections_wait_over_the_limit_the_longest_waiting_making_way() -> None:
    limit = ConnectionLimit(2, clock=lambda: 0.0)
    _answering(limit, FakeStream("a"), FakeStream("a"))
    waiting = [FakeStream(f"c{n}") for n in range(WAITING_AT_ONCE + 2)]
    for stream in waiting:
        assert _admitted(limit, stream)
    # the descriptors over the limit are bounded (RESERVED_DESCRIPTORS holds them)
    assert [s.ended for s in waiting] == [True, True] + [False] * WAITING_AT_ONCE
    assert limit.open == 2


def test_a_connection_waiting_over_the_limit_is_forgotten_when_it_closes() -> None:
    limit = ConnectionLimit(2, clock=lambda: 0.0)
    hog = [FakeStream("a"), FakeStream("a")]
    _answering(limit, *hog)
    waiting = FakeStream("b")
    assert _admitted(limit, waiting)
    limit.release(waiting)  # the keep-alive timeout closed it
    later = FakeStream("c")
    assert _admitted(limit, later) and not waiting.ended and not later.ended
    assert limit.open == 2


def test_a_connection_that_waited_is_refused_when_no_client_owes_it_a_place_any_more() -> None:
    limit = ConnectionLimit(2, clock=lambda: 0.0)
    first, second = FakeStream("a"), FakeStream("a")
    _answering(limit, first, second)
    waiting = FakeStream("b")
    assert _admitted(limit, waiting)
    limit.release(first)  # its download ended: room, taken by another of b's
    mine = FakeStream("b")
    assert _admitted(limit, mine)
    mine.request()
    waiting.request()  # a and b hold one each: nobody owes it a place
    assert waiting.ended and not second.ended and not mine.ended
    assert (limit.open, limit.shared, limit.refused) == (2, 0, 1)


def test_a_connection_that_waited_takes_the_room_made_meanwhile() -> None:
    limit = ConnectionLimit(2, clock=lambda: 0.0)
    first, second = FakeStream("a"), FakeStream("a")
    _answering(limit, first, second)
    waiting = FakeStream("b")
    assert _admitted(limit, waiting)
    limit.release(first)
    waiting.request()
    assert not second.ended and not waiting.ended
    assert (limit.open, limit.shared) == (2, 0)


def test_a_download_slot_goes_from_the_client_holding_the_most_to_another() -> None:
    slots = DownloadSlots(3, reclaim_after=10.0)
    moving, slowest = FakeHolder(0.0, client="a"), FakeHolder(2.0, client="a")
    kept = FakeHolder(5.0, client="b")
    held = [slots.take(holder) for holder in (moving, slowest, kept)]  # kept: not dropped
    with pytest.raises(RequestError, match="too many downloads at once"):
        slots.take(FakeHolder(0.0, client="a"))  # a holds the most already
    with pytest.raises(RequestError, match="too many downloads at once"):
        slots.take(FakeHolder(0.0, client="b"))  # 2 against 1: b waits
    held.append(slots.take(FakeHolder(0.0, client="c")))
    # a's slot whose client took nothing the longest goes, though none stalled 10 s
    assert (slowest.reclaimed, moving.reclaimed, kept.reclaimed) == (True, False, False)
    assert (slots.shared, slots.reclaimed, slots.taken) == (1, 0, 3)


@pytest.mark.parametrize(
    ("sent", "expected", "error", "cut", "outcome"),
    [
        (10, 10, None, None, "complete"),
        (10, None, None, None, "complete"),
        (5, 10, None, None, "error"),  # ended short without an error: never complete
        (5, 10, OSError("disk"), False, "error"),
        (5, 10, ClientGone("gone"), False, "client_gone"),
        # the server closed the body: its client left ("stream_failed" with no reason)
        (5, 10, GeneratorExit(), False, "client_gone"),
        (5, 10, ClientGone("gone"), True, "shutdown"),  # past the shutdown grace
        # the grace ended: the tracker closed the relay's upstream, which the piece read
        (5, 10, TrackerError("upstream connection closed"), True, "shutdown"),
    ],
)
def test_a_downloads_outcome_asks_who_cut_it_only_when_it_ended_with_an_error(
    sent: int, expected: int | None, error: BaseException | None, cut: bool | None, outcome: str
) -> None:
    asked: list[bool] = []

    def tracker_cut() -> bool:
        assert cut is not None, "asked who ended an answer that was not cancelled"
        asked.append(cut)
        return cut

    assert outcome_of(sent, expected, error, cut=tracker_cut) == outcome
    assert asked == ([] if cut is None else [cut])


class _CutConnection:
    """A client connection whose staged piece was cut short after ``went`` bytes, as
    tracker.zerocopy.connection.Connection tells it (once)."""

    def __init__(self, went: int | None) -> None:
        self.went = went
        #: set with a cut, as the real connection's (nothing more reaches the client)
        self.broken = False

    def take_cut(self) -> int | None:
        went, self.went = self.went, None
        return went


class _Pieces(GeneratorBody):
    def __init__(self, sizes: list[int], fails: bool) -> None:
        self.sizes, self.fails = sizes, fails

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        for size in self.sizes:
            yield b"\0" * size
        if self.fails:  # the relay's next step: the piece did not go whole
            raise TrackerError("upstream connection closed")


@pytest.mark.parametrize(
    ("went", "fails", "logged"),
    [
        (None, False, 3000),  # every piece went whole
        (500, True, 1500),  # the last came back as if whole (hypercorn kept the failure)
    ],
)
async def test_a_piece_cut_short_counts_what_went_of_it_once(
    went: int | None, fails: bool, logged: int, caplog: pytest.LogCaptureFixture
) -> None:
    connection = _CutConnection(None)
    body = DownloadBody(
        _Pieces([1000, 2000], fails),
        {"file": "x"},
        3000,
        None,
        connection=connection,  # type: ignore[arg-type]
    )
    caplog.set_level(logging.INFO, logger="tracker.download")
    with pytest.raises(TrackerError) if fails else contextlib.nullcontext():
        async with body as chunks:
            async for chunk in chunks:
                if len(chunk) == 2000:  # its send was cut after ``went`` bytes
                    connection.went, connection.broken = went, went is not None
    [record] = [r for r in caplog.records if r.getMessage() == "download"]
    fields = record.tracker_fields
    assert fields["bytes"] == logged
    assert fields["outcome"] == ("error" if fails else "complete")


def test_a_fifo_for_a_config_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO at the config's path held the read (and a reload with it: the daemon then
    could not be stopped); it is no regular file: one line, exit 2, at once."""
    path = tmp_path / "tracker.yml"
    os.mkfifo(path)
    done = check_config(path)
    assert done.returncode == 2
    assert "cannot read the config file: not a regular file: a FIFO" in done.stderr
