"""A tracker to test in proxy mode, cache mode and fetch's tests: :func:`running_tracker`
runs the public app (``create_app``) on a real hypercorn with a :class:`ProxyStreamer` and
its :class:`Transfers` nursery, an index fed by the test (:func:`advertise`);
:func:`proxy_tracker` is the usual set-up: a tracker whose index has a fake upstream
(tests/helpers_upstream.py) advertise its files.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_upstream import FakeUpstream

from tracker.config.schema import BearerAuth, Config, TargetGroup
from tracker.core.snapshots import SnapshotFile, chains_from_files, parse_archive_name
from tracker.observability.metrics import Metrics
from tracker.ordering.index import Index, TargetKey
from tracker.proxy.streamer import CacheFactory, ProxyStreamer
from tracker.proxy.transfers import Transfers
from tracker.proxy.upstream import ProxySettings
from tracker.service import Components, Tracker, build
from tracker.zerocopy.connection import Connections

GROUP = "mainnet"
TOKEN = "s3cret-token"


@attrs.define
class TrackerUnderTest:
    """A running tracker: its base URL and everything a test may look at or change."""

    base: str
    parts: Components
    #: Zero-copy pieces sent (None: served by plain hypercorn, no zero-copy).
    connections: Connections | None = None

    @property
    def config(self) -> Config:
        return self.parts.tracker.config

    @config.setter
    def config(self, value: Config) -> None:
        self.parts.tracker.config = value

    @property
    def index(self) -> Index:
        return self.parts.tracker.index

    @property
    def metrics(self) -> Metrics:
        return self.parts.tracker.metrics

    @property
    def transfers(self) -> Transfers:
        return self.parts.transfers

    @property
    def streamer(self) -> ProxyStreamer:
        return self.parts.streamer

    @property
    def app(self) -> Any:
        return self.parts.app

    @property
    def cache_root(self) -> Path:
        return Path(self.config.proxy_snapshot_cache_dir)

    def group_dir(self, group: str = GROUP) -> Path:
        return self.cache_root / group

    def cached(self, group: str = GROUP) -> list[str]:
        """Names in the group's cache directory (temp files included), sorted."""
        directory = self.group_dir(group)
        return sorted(p.name for p in directory.iterdir()) if directory.exists() else []

    def holds(self, name: str, group: str = GROUP) -> bool:
        """Whether the index was told the tracker holds ``name`` (the cache's promotion
        reached the listings: its file on disk comes a moment before)."""
        return name in self.index.holdings.of(group)

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def outcome(self, outcome: str) -> float:
        return self.counter("snapshot_tracker_archive_requests_total", outcome=outcome)

    def url(self, name: str, group: str = GROUP) -> str:
        return f"{self.base}/v1/{name}?group={group}"


def make_config(cache_dir: Path | None, **overrides: Any) -> Config:
    group = TargetGroup(group=GROUP, bearer_auth=BearerAuth(token=TOKEN))
    settings: dict[str, Any] = {
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(cache_dir) if cache_dir is not None else "",
        "default_group": GROUP,
        "target_groups": (group,),
        "shutdown_grace": 1.0,
        # Opaque random blobs, not archives: stored unchecked (tests of the archive check
        # build real archives and turn it on).
        "verify_archives": False,
    }
    settings.update(overrides)
    return Config(**settings)


def advertise(
    index: Index,
    target: str,
    files: list[tuple[str, str, int]],
    *,
    group: str = GROUP,
    age: float = 0.0,
    discovered: bool = False,
) -> None:
    """Make ``target`` advertise ``files`` as (name, url, size); ``age`` seconds old;
    ``discovered``: a node cluster discovery found, not a configured target."""
    snapshot_files = []
    for name, url, size in files:
        parsed = parse_archive_name(name)
        assert parsed is not None, name
        snapshot_files.append(SnapshotFile(name=parsed, file_name=url, size=size, url=url))
    when = datetime.now(UTC) - timedelta(seconds=age)
    key = TargetKey(group, target, discovered=discovered)
    index.apply(key, chains_from_files(snapshot_files), when)


def advertise_files(index: Index, up: FakeUpstream, files: dict[str, bytes]) -> None:
    """``up`` advertises every one of ``files`` (name -> bytes) at its own URL."""
    advertise(index, up.base, [(name, up.url(name), len(data)) for name, data in files.items()])


#: The tests' proxy settings: short timeouts, and an early head only after 30 s, so that a
#: source that fails answers the client's 502 whatever the host's load (the product's early
#: head after 0.5 s rightly turns a failure that slow into a 200 whose body breaks, and on
#: a loaded host a refused redirect took that long). The tests of early heads take EARLY.
FAST = ProxySettings(
    connect_timeout=2.0, answer_timeout=5.0, read_timeout=10.0, early_head_after=30.0
)
#: FAST with the product's early head (``ProxySettings.early_head_after``).
EARLY = attrs.evolve(FAST, early_head_after=ProxySettings().early_head_after)


@attrs.frozen
class Serving:
    """How :func:`running_tracker` serves: the proxy's ``settings``, the cache the streamer
    builds (``cache_factory``), an ``index`` of the test's own, Quart's ``app_config``, and
    ``plain`` hypercorn (no sendfile or splice, every byte through Python: the path of
    HTTP/2 clients and TLS upstreams), the listener's ``max_connections``."""

    settings: ProxySettings = FAST
    cache_factory: CacheFactory | None = None
    index: Index | None = None
    app_config: dict[str, Any] | None = None
    plain: bool = False
    max_connections: int = 4096


@asynccontextmanager
async def running_tracker(
    config: Config, *advertised: FakeUpstream, **serving: Any
) -> AsyncIterator[TrackerUnderTest]:
    """The tracker's own components (:func:`tracker.service.build`, as the service builds
    them) serving the public app on 127.0.0.1:0, with an index the test feeds (no scrape
    loop) in which each of ``advertised`` advertises every file it serves; stopped
    (transfers cancelled) on exit. ``serving``: the fields of :class:`Serving`."""
    how = Serving(**serving)
    index = how.index or Index(clock=trio.current_time)
    tracker = Tracker(config, index=index, metrics=Metrics(process=False))
    async with httpx.AsyncClient(trust_env=False, verify=client_tls()) as rpc:
        parts = build(tracker, rpc, settings=how.settings, cache_factory=how.cache_factory)
        parts.app.config.update(how.app_config or {})
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(parts.transfers.run)
                parts.streamer.cache()  # start-up cleanup, as the service does
                connections = None if how.plain else Connections()
                serve = partial(
                    serve_app,
                    connections=connections,
                    plain=how.plain,
                    max_connections=how.max_connections,
                )
                base = await nursery.start(serve, parts.public)
                for up in advertised:
                    advertise_files(index, up, up.files)
                yield TrackerUnderTest(base, parts, connections)
                parts.transfers.close(0)
                nursery.cancel_scope.cancel()
        finally:
            await parts.aclose()


def proxy_tracker(
    cache_dir: Path | None = None, *advertised: FakeUpstream, **options: Any
) -> AbstractAsyncContextManager[TrackerUnderTest]:
    """The usual set-up: :func:`running_tracker` of :func:`make_config` with ``cache_dir``;
    ``options`` are :class:`Serving`'s fields, the rest the config's."""
    fields = attrs.fields_dict(Serving)
    serving = {k: v for k, v in options.items() if k in fields}
    overrides = {k: v for k, v in options.items() if k not in fields}
    return running_tracker(make_config(cache_dir, **overrides), *advertised, **serving)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 10 ms until true; fail after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
