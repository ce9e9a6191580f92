"""What the tracker learned survives a restart and is shared by replicas
(docs/http-api.md#what-the-tracker-learned): real trackers on 127.0.0.1, a real upstream,
a real S3 server (SeaweedFS)."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from helpers_bucket import store_config
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import GROUP, TrackerUnderTest, make_config, proxy_tracker, running_tracker
from helpers_s3 import Weed
from helpers_upstream import FakeUpstream, serving
from names import full_name

import tracker.learning.sync
from tracker.config.schema import Config, HttpTargets
from tracker.learning.sync import FILE_NAME
from tracker.objectstore.bucket import Bucket
from tracker.ordering.index import TargetKey

NAME = full_name(4000)
DATA = archive_bytes(2 * MiB, seed=7)


@asynccontextmanager
async def learning(config: Config, up: FakeUpstream) -> AsyncIterator[TrackerUnderTest]:
    """A tracker whose upstream advertises NAME, with its learning task running (as the
    service runs it); stopping it writes what it learned."""
    async with running_tracker(config, up) as t, trio.open_nursery() as nursery:
        await nursery.start(t.parts.learning.run)
        yield t
        nursery.cancel_scope.cancel()


def _learn(t: TrackerUnderTest, key: TargetKey) -> float:
    """Record a measured transfer and a rejected copy of NAME from ``key``; the speed."""
    t.index.record_transfer(key, 50 * MiB, 0.5, trio.current_time())
    t.streamer.rejections.reject(key, NAME, "tar truncated", now=trio.current_time(), hold=600)
    return t.index.throughput(key, trio.current_time())


async def test_a_restart_with_the_same_cache_dir_keeps_rejections_and_throughputs(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    config = make_config(tmp_path / "cache")
    async with serving(FakeUpstream(files={NAME: DATA})) as up:
        key = TargetKey(GROUP, up.base)
        async with learning(config, up) as first:
            speed = _learn(first, key)
        assert (tmp_path / "cache" / FILE_NAME).is_file()
        async with learning(config, up) as second:
            assert abs(second.index.throughput(key, trio.current_time()) - speed) < speed * 0.01
            # The rejection holds: the only source of NAME is not used, the request fails.
            answer = await client.get(second.url(NAME))
            assert answer.status_code == 502
            assert "tar truncated" in answer.text
            assert up.gets(NAME) == []


async def test_a_corrupt_state_file_costs_the_file_not_the_start(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / FILE_NAME).write_bytes(b'{"version": 1, "throughputs": [')
    up = FakeUpstream(files={NAME: DATA})
    async with serving(up), learning(make_config(tmp_path / "cache"), up) as t:
        answer = await client.get(t.url(NAME))
        assert answer.status_code == 200 and answer.content == DATA
    # Written anew at the stop: readable again.
    assert b'"version":1' in (tmp_path / "cache" / FILE_NAME).read_bytes()


async def test_a_state_document_is_decoded_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica's document is network input of up to 4 MiB, up to 64 of them at
    each sync: each decoded on the event loop held it for a quarter of a second."""
    config = make_config(tmp_path / "cache")
    async with serving(FakeUpstream(files={NAME: DATA})) as up:
        async with learning(config, up) as first:
            _learn(first, TargetKey(GROUP, up.base))
        threads: list[threading.Thread] = []
        decode = tracker.learning.sync.decode

        def recorded(data: bytes) -> object:
            threads.append(threading.current_thread())
            return decode(data)

        monkeypatch.setattr(tracker.learning.sync, "decode", recorded)
        async with learning(config, up):
            pass
    assert threads and threading.main_thread() not in threads


def _replicas(weed: Weed, tmp_path: Path) -> list[Config]:
    """Two replicas' configs: a cache each, one bucket prefix for both."""
    prefix = f"t-{secrets.token_hex(4)}/"
    return [
        make_config(
            tmp_path / f"cache{i}",
            object_store=store_config(weed, prefix=prefix, replica_url=f"http://r{i}"),
        )
        for i in range(2)
    ]


async def test_two_replicas_share_what_they_learned_through_the_bucket(
    weed: Weed, tmp_path: Path
) -> None:
    configs = _replicas(weed, tmp_path)
    async with serving(FakeUpstream(files={NAME: DATA})) as up:
        key = TargetKey(GROUP, up.base)
        async with learning(configs[0], up) as one, learning(configs[1], up) as two:
            assert two.index.throughput(key, trio.current_time()) == 0.0
            speed = _learn(one, key)
            await one.parts.learning.save()
            await two.parts.learning.restore()  # what its periodic sync does
            assert abs(two.index.throughput(key, trio.current_time()) - speed) < speed * 0.01
            assert two.streamer.rejections.rejected(key, NAME, trio.current_time()) is not None


async def test_the_documents_of_live_replicas_are_read_past_those_of_replicas_gone(
    weed: Weed, tmp_path: Path
) -> None:
    """A replica without ``replica_url`` whose container is made again writes a new
    document each time, and none is deleted: the 64 read were the first in key order, and
    past 64 documents of replicas gone a live replica's was never read again. The newest
    64 are read."""
    configs = _replicas(weed, tmp_path)
    prefix = configs[0].object_store.prefix if configs[0].object_store else ""
    async with serving(FakeUpstream(files={NAME: DATA})) as up:
        key = TargetKey(GROUP, up.base)
        async with learning(configs[0], up) as one, learning(configs[1], up) as two:
            await two.parts.learning.save()
            assert two.parts.objects is not None
            bucket = two.parts.objects.tier.bucket
            [own] = [o.key for o in await bucket.list_objects(f"{prefix}.learned/")]
            document = await bucket.get_small(own, 1 << 20)
            for i in range(64):  # before every live one in key order
                await bucket.put(f"{prefix}.learned/0000{i:012x}.json", document or b"")
            await trio.sleep(1.1)  # the store dates objects in whole seconds
            speed = _learn(one, key)
            await one.parts.learning.save()
            await two.parts.learning.restore()  # what its periodic sync does
            assert abs(two.index.throughput(key, trio.current_time()) - speed) < speed * 0.01


async def _learned_and_saved(
    t: TrackerUnderTest, config: Config, key: TargetKey
) -> tuple[Bucket, str, float]:
    """What ``t`` learned of ``key`` (:func:`_learn`) saved to its bucket: the bucket, the
    replicas' prefix there and the speed learned."""
    speed = _learn(t, key)
    await t.parts.learning.save()
    assert t.parts.objects is not None and config.object_store is not None
    return t.parts.objects.tier.bucket, config.object_store.prefix, speed


def _with_credentials(up: FakeUpstream) -> str:
    """``up``'s base URL with a password in its userinfo, as an operator configures it."""
    return up.base.replace("http://", "http://operator:pw-s3cret@")


def _naming(config: Config, target: str) -> Config:
    """``config`` whose group names ``target`` as an HTTP target."""
    group = attrs.evolve(config.target_groups[0], http_targets=HttpTargets(targets=(target,)))
    return attrs.evolve(config, target_groups=(group,))


async def test_a_sources_credentials_never_reach_the_file_and_its_history_outlives_a_restart(
    tmp_path: Path,
) -> None:
    """The file names a source without the password of its URL (anyone who reads the cache
    directory reads it), is the tracker's user's alone, and what was learned of the source
    is its own again at the next start, before any scrape lists it."""
    async with serving(FakeUpstream(files={NAME: DATA})) as up:
        target = _with_credentials(up)
        config, key = _naming(make_config(tmp_path / "cache"), target), TargetKey(GROUP, target)
        async with learning(config, up) as first:
            speed = _learn(first, key)
        state = tmp_path / "cache" / FILE_NAME
        assert b"pw-s3cret" not in state.read_bytes()
        assert b"http://***@127.0.0.1:" in state.read_bytes()
        assert state.stat().st_mode & 0o777 == 0o600
        async with running_tracker(config) as second, trio.open_nursery() as nursery:
            await nursery.start(second.parts.learning.run)  # the index lists nothing yet
            assert second.index.keys() == []
            now = trio.current_time()
            assert abs(second.index.throughput(key, now) - speed) < speed * 0.01
            assert second.streamer.rejections.rejected(key, NAME, now) is not None
            nursery.cancel_scope.cancel()


async def test_a_sources_credentials_never_reach_the_bucket(weed: Weed, tmp_path: Path) -> None:
    """Another replica's operators read the bucket: its objects name a source without the
    password of its URL, and a replica that names the source takes what was learned."""
    async with serving(FakeUpstream(files={NAME: DATA})) as up:
        target = _with_credentials(up)
        configs = [_naming(c, target) for c in _replicas(weed, tmp_path)]
        key = TargetKey(GROUP, target)
        async with learning(configs[0], up) as one, learning(configs[1], up) as two:
            bucket, prefix, speed = await _learned_and_saved(one, configs[0], key)
            listed = await bucket.list_objects(f"{prefix}.learned/")
            stored = [await bucket.get_small(o.key, 1 << 20) for o in listed]
            assert stored and all(b and b"pw-s3cret" not in b for b in stored)
            await two.parts.learning.restore()  # what its periodic sync does
            assert abs(two.index.throughput(key, trio.current_time()) - speed) < speed * 0.01


async def test_a_hostile_object_of_another_replica_costs_itself_or_its_entries(
    weed: Weed, tmp_path: Path
) -> None:
    """Every replica reads every replica's object: one with a 401-digit number, or no JSON
    at all, must cost that entry or that object, never the others nor the sync."""
    configs = _replicas(weed, tmp_path)
    async with serving(FakeUpstream(files={NAME: DATA})) as up:
        key = TargetKey(GROUP, up.base)
        async with learning(configs[0], up) as one, learning(configs[1], up) as two:
            bucket, prefix, speed = await _learned_and_saved(one, configs[0], key)
            entry = {"group": GROUP, "target": "http://evil", "discovered": False}
            huge = {"version": 1, "throughputs": [{**entry, "bps": 1.0, "at": 10**400}]}
            await bucket.put(f"{prefix}.learned/huge.json", json.dumps(huge).encode())
            await bucket.put(f"{prefix}.learned/junk.json", b'{"version": 1, "thr')
            await two.parts.learning.restore()  # what its periodic sync does
            assert abs(two.index.throughput(key, trio.current_time()) - speed) < speed * 0.01
            assert two.index.throughput(TargetKey(GROUP, "http://evil"), 0.0) == 0.0
            read = two.metrics.registry.get_sample_value
            name = "snapshot_tracker_learned_dropped_total"
            assert read(name, {"what": "entry"}) == 1
            assert read(name, {"what": "document"}) == 1


async def test_a_read_that_hangs_does_not_hold_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local read that never returns (a hung disk) is abandoned when the tracker stops."""
    entered, release = threading.Event(), threading.Event()

    def hangs(path: str, limit: int) -> bytes:
        entered.set()
        release.wait(60)
        raise OSError("released")

    monkeypatch.setattr(tracker.learning.sync, "read_small", hangs)
    up = FakeUpstream(files={NAME: DATA})
    try:
        async with serving(up), proxy_tracker(tmp_path / "cache") as t:
            with trio.fail_after(5), trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(t.parts.learning.run)
                    await trio.to_thread.run_sync(entered.wait, 10)
                    scope.cancel()
            # Stopped before it read the file: it wrote nothing over what it did not read.
            assert t.parts.learning.saved == 0
    finally:
        release.set()


async def test_a_restore_failing_as_no_rule_foresaw_still_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica's document that made the restore raise what no rule names stopped every
    save: no state file, no document for the other replicas. It costs that restore."""

    async def failing(self: object) -> None:
        raise ValueError("unforeseen")

    monkeypatch.setattr(tracker.learning.sync.Learning, "restore", failing)
    up = FakeUpstream(files={NAME: DATA})
    async with serving(up), proxy_tracker(tmp_path / "cache") as t:
        learning = attrs.evolve(t.parts.learning, every=0.01)
        with trio.fail_after(10), trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(learning.run)
                while learning.saved < 2:
                    await trio.sleep(0.01)
                scope.cancel()
