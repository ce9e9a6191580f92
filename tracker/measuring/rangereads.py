"""Speed tests: bounded Range reads of the leading candidates' archives.

The ranking can only trust a speed it measured. Every few seconds :class:`SpeedTests` asks
:func:`tracker.measuring.speedtests.probes_due` which of each group's leading sources have no
recent measurement, and reads the first ``speed_test.bytes`` of a full archive of each, one
read at a time (so never more than one per source), each bounded in bytes and in time, and
timed from the request to the last byte (connecting and the response head included: a
source that makes its answer wait is as slow as one that sends slowly). The bytes per second
it saw are the source's *probed* figure, which the index combines with what real transfers
achieved (:func:`tracker.ordering.sourcehistory.combined`). Every read goes through
:func:`speed_test`, the one place a speed test touches a source: the proxy's upstream client
path, so credentials reach only their origin and the egress policy applies
(docs/http-api.md#speed-tests). A read takes one of the source's transfer slots and is paced
at its rate like any transfer (``source_limits``, :mod:`tracker.net.sourcelimits`); a source
with no free slot is skipped this round, not
waited for: a speed test must never be what keeps a real transfer from a source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import trio

from tracker.config.schema import Config, TargetGroup
from tracker.errors import SourceBusy, SourceFailed, TransportError, UpstreamError
from tracker.measuring.speedtests import Probe, probes_due
from tracker.net.bodyreads import body_chunks
from tracker.net.sourcelimits import Pacer
from tracker.observability.logs import log_event
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.sourcehistory import KINDS
from tracker.proxy.upstream import DownloadClients, ask_source, group_asking, size_problem

log = logging.getLogger("tracker.speedtest")

#: How often the groups are looked at for sources due (cheap: the index keeps its ranking;
#: each source is probed at most once per ``speed_test.interval``).
CHECK_EVERY = 1.0
#: Longest a read goes on: a source slower than ``bytes`` per this is measured on what came.
READ_FOR = 20.0
#: Fewer bytes than this say nothing about a source's speed.
MIN_BYTES = 64 * 1024


class SpeedTests:
    """The speed-test loop of one tracker; started by the service (:meth:`run`).

    Its times are on the index's clock, the one its throughput measurements are kept on.
    """

    def __init__(
        self,
        config: Callable[[], Config],
        index: Index,
        clients: DownloadClients,
        *,
        every: float = CHECK_EVERY,
        read_for: float = READ_FOR,
    ) -> None:
        self._config = config
        self._index = index
        self._clients = clients
        self._clock = index.clock
        self._every = every
        self._read_for = read_for
        #: When each target was last probed (a failed probe waits its interval too).
        self._probed: dict[TargetKey, float] = {}
        #: Rounds completed (tests wait on it).
        self.rounds = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe what is due every :data:`CHECK_EVERY` seconds, until cancelled."""
        task_status.started()
        while True:
            await self.round()
            await trio.sleep(self._every)

    async def round(self) -> int:
        """Probe every source due now, one after another; how many were measured. The
        sources no longer listed are forgotten first (discovered nodes come and go)."""
        listed = set(self._index.keys())
        for key in [k for k in self._probed if k not in listed]:
            del self._probed[key]
        measured = 0
        for group in self._config().target_groups:
            for probe in self.due(group):
                measured += await self._measure(group.group, probe)
        self.rounds += 1
        return measured

    def due(self, group: TargetGroup) -> list[Probe]:
        """The speed tests of ``group`` due now."""
        if group.ranking is None:  # ranked by slot, as the Go tracker: no reads of their own
            return []
        test = group.ranking.speed_test
        if test.top <= 0:
            return []
        last = dict(self._probed)
        for kind in KINDS:  # by a speed test or by a real transfer
            for key, (_rate, at) in self._index.speeds.measurements(kind).items():
                last[key] = max(at, last.get(key, at))
        return probes_due(
            self._index.fulls(group.group),
            top=test.top,
            length=test.bytes,
            interval=test.interval,
            last=last,
            now=self._clock(),
        )

    async def _measure(self, name: str, probe: Probe) -> int:
        """Run ``probe`` of group ``name``; 1 when it measured the source, 0 when it failed
        (logged), the source had no free transfer slot (then it is due again next round) or
        a reload since the round began removed the group or the source (skipped).

        The round's reads come one after another, each up to :data:`READ_FOR` seconds: each
        asks with the group as the config has it when it starts, never as it was when the
        round began (docs/configuration.md: credentials go to the group's configured
        sources only)."""
        try:
            group = group_asking(self._config(), name, self._index.lists(probe.key))
        except UpstreamError as exc:
            log_event(log, "info", "speed_test_skipped", url=probe.file.url, reason=exc)
            return 0
        try:
            size, seconds = await speed_test(self._clients, group, probe, self._read_for)
        except SourceBusy as exc:
            log_event(log, "info", "speed_test_skipped", url=probe.file.url, reason=exc)
            return 0
        except (SourceFailed, TransportError) as exc:
            self._probed[probe.key] = self._clock()
            log_event(log, "warning", "speed_test_failed", url=probe.file.url, reason=exc)
            return 0
        except Exception as exc:
            # the last guard: what no rule foresaw costs this source's test (due again
            # after its interval), never the tests of the sources after it
            self._probed[probe.key] = self._clock()
            log_event(log, "error", "speed_test_error", url=probe.file.url, exc_info=exc)
            return 0
        if not self._index.lists(probe.key):
            # a reload removed it while it was read: a figure recorded now would outlive
            # the drop that forgot the target's figures (Index.drop)
            return 0
        self._probed[probe.key] = self._clock()
        self._index.record_transfer(probe.key, size, seconds, self._clock(), kind="probed")
        rate = round(size / seconds) if seconds > 0 else 0
        log_event(log, "info", "speed_test", url=probe.file.url, bytes=size, throughput_bps=rate)
        return 1


async def speed_test(
    clients: DownloadClients, group: TargetGroup, probe: Probe, read_for: float = READ_FOR
) -> tuple[int, float]:
    """Read the first ``probe.length`` bytes of ``probe.file`` (for at most ``read_for``
    seconds once the answer came) within the source's ``source_limits``: the bytes read and
    the seconds from sending the request to the last byte read. Raises SourceBusy at once
    when the source has no free transfer slot, SourceFailed (or TransportError) when it
    gives no usable answer."""
    headers = {"range": probe.range_header}
    # From the request on: a head held back counts (docs/http-api.md#speed-tests).
    began = trio.current_time()
    # with the serving origin's slot (after redirects), freed when the answer closes
    answer = await ask_source(clients, group, probe.file, probe.source, "GET", headers)
    response = answer.response
    try:
        problem = size_problem(response, probe.file.size)
        if response.status_code not in (200, 206):
            problem = f"answered {response.status_code} to a Range request"
        if problem is not None:
            raise SourceFailed(problem)
        got = await _read(response, probe.length, read_for, answer.pacer)
        seconds = trio.current_time() - began
    finally:
        await answer.aclose()
    if got < min(MIN_BYTES, probe.length):
        raise SourceFailed(f"only {got} bytes in {read_for:g}s")
    return got, seconds


async def _read(response: httpx.Response, length: int, read_for: float, pacer: Pacer) -> int:
    """Bytes of ``response``'s body read, up to ``length``, within ``read_for`` seconds,
    paced at the source's ``max_rate`` (a capped source is measured at most at its cap)."""
    got = 0
    with trio.move_on_after(read_for):
        async with body_chunks(response) as chunks:
            async for chunk in chunks:
                got += len(chunk)
                if got >= length:
                    pacer.delay(len(chunk))  # counted against the source's rate, no wait
                    break
                await pacer.pace(len(chunk))
    return min(got, length)
