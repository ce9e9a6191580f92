"""Several replicas, one bucket (docs/http-api.md#with-an-object-store-object_store):
``snapshot-tracker serve`` subprocesses sharing a
real SeaweedFS bucket, a real upstream, real download clients."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_process import Serve, start_serve
from helpers_proxy import GROUP, wait_for
from helpers_s3 import (
    ACCESS_KEY,
    BUCKET,
    SECRET_KEY,
    Weed,
    free_ports,
    store_settings,
    uploaded_parts,
)
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving, sidecar_listing
from names import full_name
from prometheus_client.parser import text_string_to_metric_families
from test_clients_real import run, tool

#: Large enough that a replica holding the archive in memory goes past PEAK_RSS_BOUND (its
#: baseline is ~100 MiB), small enough to cost the suite no more CPU than that takes: a
#: replica's peak was the same at 64 and at 256 MiB (120-126 MB), its extra memory bounded
#: by the transfers, not the archive's size.
SIZE = 128 * MiB
FULL = full_name(12000)


@functools.cache
def data() -> bytes:
    """SIZE bytes, distinct (randbytes takes at most 2**31 bits at once), made on first
    use, not at import: every xdist worker imports every test module."""
    return b"".join(archive_bytes(16 * MiB, seed=120 + i) for i in range(SIZE // (16 * MiB)))


@functools.cache
def data_digest() -> str:
    return sha256(data())


LOCK_TTL = 2.0


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    files = {FULL: data()}
    up = FakeUpstream(files=files, listing=sidecar_listing(files), chunk=1024 * 1024)
    async with serving(up) as served:
        yield served


def write_config(
    tmp_path: Path, up: FakeUpstream, port: int, internal: int, store: dict[str, Any]
) -> Path:
    directory = tmp_path / str(port)
    directory.mkdir()
    settings = {
        "listen": f"127.0.0.1:{port}",
        "internal_listen": f"127.0.0.1:{internal}",  # /metrics
        "scrape_interval": "30s",
        "proxy_snapshot_downloads": True,
        "verify_archives": False,  # opaque blobs
        "proxy_snapshot_cache_dir": str(directory / "cache"),
        "shutdown_grace": "1s",
        "object_store": store,
        "target_groups": [
            {
                "group": GROUP,
                "static_targets": {"targets": [up.base.removeprefix("http://")]},
                # Upstream bytes are counted: no speed-test reads.
                "ranking": {"speed_test": {"top": 0}},
            }
        ],
    }
    path = directory / "config.yml"
    path.write_text(json.dumps(settings))
    return path


def cache_dir(tmp_path: Path, replica: Serve) -> Path:
    """The group's directory in ``replica``'s disk cache."""
    return tmp_path / replica.base.rsplit(":", 1)[1] / "cache" / GROUP


async def start_replicas(
    count: int,
    tmp_path: Path,
    up: FakeUpstream,
    weed: Weed,
    prefix: str,
    *,
    lock_ttl: float = LOCK_TTL,
    env_credentials: frozenset[int] = frozenset(),
) -> list[Serve]:
    """``count`` replicas sharing ``weed``'s bucket under ``prefix``; those numbered in
    ``env_credentials`` have no credentials in their config, only in their environment
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``: boto3's default chain)."""
    started: dict[int, Serve] = {}
    ports = free_ports(2 * count)
    # Loopback is no public address: the replicas follow each other because they are listed.
    fleet = [f"http://127.0.0.1:{ports[2 * i]}" for i in range(count)]
    configs: list[tuple[Path, dict[str, str] | None]] = []
    for i in range(count):
        port, internal = ports[2 * i], ports[2 * i + 1]
        store = store_settings(
            weed, prefix, replica_url=fleet[i], replicas=fleet, lock_ttl=f"{lock_ttl:g}s"
        )
        env = None
        if i in env_credentials:
            del store["access_key_id"], store["secret_access_key"]
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            }
        configs.append((write_config(tmp_path, up, port, internal, store), env))

    async def start(i: int) -> None:
        config, env = configs[i]
        started[i] = await start_serve("--config", str(config), env=env)

    # Started together: each start (a Python start-up, its imports) overlaps the others.
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(start, i)
    replicas = [started[i] for i in range(count)]
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        for replica in replicas:  # each has scraped the upstream
            with trio.fail_after(10):
                while not (await client.get(f"{replica.base}/v1/snapshots")).json():
                    await trio.sleep(0.05)
    return replicas


async def metric(client: httpx.AsyncClient, replica: Serve, name: str, **labels: str) -> float:
    """The sample ``name`` with ``labels`` of ``replica``'s /metrics (0 when absent)."""
    text = (await client.get(f"{replica.internal}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def outcome(client: httpx.AsyncClient, replica: Serve, name: str) -> float:
    return await metric(client, replica, "snapshot_tracker_archive_requests_total", outcome=name)


def upstream_bytes(up: FakeUpstream) -> int:
    return sum(seen.body_sent for seen in up.gets(FULL))


async def digest_of(client: httpx.AsyncClient, url: str) -> str:
    digest = hashlib.sha256()
    async with client.stream("GET", url) as response:
        assert response.status_code == 200, response.status_code
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
    return digest.hexdigest()


#: Peak RSS a replica may reach while refreshing, uploading and serving a SIZE archive to
#: 3 clients and 2 other replicas (measured 113-126 MB, from a baseline of ~101 MiB, with
#: archives of 64 and of 256 MiB): a replica holding the 128 MiB archive, or more than ~45 %
#: of it, in memory goes past it.
PEAK_RSS_BOUND = 160 * MiB


def peak_rss(replica: Serve) -> int:
    """The replica process's peak resident memory (``VmHWM``), bytes."""
    status = Path(f"/proc/{replica.proc.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def archive_requests(upstream: FakeUpstream) -> int:
    """The requests ``upstream`` got of the archive (any method; not its listing's)."""
    return sum(1 for seen in upstream.seen if seen.target.endswith(FULL))


async def test_three_replicas_pull_each_archive_from_upstream_once(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    prefix = "fleet-a/"
    key = f"{prefix}{GROUP}/{FULL}"
    upstream.behaviour[FULL] = Behaviour(rate=SIZE)  # a refresh lasts about a second
    # The third replica finds the store's credentials in its environment only.
    replicas = await start_replicas(
        3, tmp_path, upstream, weed, prefix, env_credentials=frozenset({2})
    )
    digests: list[str] = []
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=60) as client:
        async with trio.open_nursery() as nursery:
            for i in range(9):
                url = f"{replicas[i % 3].base}/v1/{GROUP}/{FULL}"
                nursery.start_soon(lambda url=url: _append(digests, digest_of(client, url)))
        assert digests == [data_digest()] * 9
        assert upstream_bytes(upstream) <= 1.1 * SIZE
        await wait_for(lambda: key in weed.objects(prefix), timeout=60)
        assert weed.objects(prefix)[key] == SIZE
        assert weed.uploads(prefix) == []

        # One replica refreshed and uploaded; the others served their clients from it.
        uploads = [
            await metric(client, r, "snapshot_tracker_object_uploads_total", outcome="ok")
            for r in replicas
        ]
        assert sorted(uploads) == [0, 0, 1], uploads
        # Memory per refresh is bounded (docs/http-api.md#with-an-object-store-object_store): the
        # holder staged the archive on disk and
        # uploaded it part by part, the others relayed it; none held it in memory.
        for replica in replicas:
            assert peak_rss(replica) < PEAK_RSS_BOUND, (replica.base, peak_rss(replica))
        for replica, uploaded in zip(replicas, uploads, strict=True):
            if uploaded:
                continue
            assert await outcome(client, replica, "replica") >= 1
            served = "snapshot_tracker_served_bytes_total"
            assert await metric(client, replica, served, source="replica") >= SIZE

        # Every replica now sends clients to the bucket.
        locations = []
        for replica in replicas:
            url = f"{replica.base}/v1/{GROUP}/{FULL}"
            with trio.fail_after(30):
                while (hit := await client.get(url)).status_code != 303:
                    await trio.sleep(0.1)  # a replica looks again after a miss (1 s)
            locations.append(hit.headers["location"])
        ranged = await client.get(locations[0], headers={"range": "bytes=1000-1999"})
        assert ranged.status_code == 206 and ranged.content == data()[1000:2000]
        metrics_free = upstream_bytes(upstream)

        # HEAD is each replica's own answer from the object's metadata: no disk copy, the
        # upstream failing the file (and not asked), the object not streamed from the store.
        for replica in replicas:  # (the holder's: the others proxied it, kept none)
            for path in cache_dir(tmp_path, replica).glob("*"):
                path.unlink()
        upstream.behaviour[FULL] = Behaviour(status=500)
        # The archive's requests only: the upstream is a sidecar too, and a scrape of its
        # listing may fall in the loop (a stress run's: 7 == 6, a GET /v1/snapshots).
        asked = archive_requests(upstream)
        s3_etag = weed.client().head_object(Bucket=BUCKET, Key=key)["ETag"]
        for replica in replicas:
            head = await client.head(f"{replica.base}/v1/{GROUP}/{FULL}")
            assert head.status_code == 200, replica.base
            assert head.headers["content-length"] == str(SIZE)
            assert head.headers["etag"] == s3_etag
            assert "location" not in head.headers
            assert await outcome(client, replica, "object_store") == 0
        assert archive_requests(upstream) == asked
    assert all(loc.startswith(weed.endpoint) for loc in locations)

    # Real clients follow each replica's 303s (the root alias, then the archive) to the
    # bucket; the name they save comes from the presigned URL's content-disposition (the URL
    # they were given ends in the alias); wget, naming its file after the last URL, gets the
    # bytes from the replica instead. One client a replica, each client once: every
    # replica's presigned URLs (the third's signed with the environment's credentials) and
    # every client's way of following them, without three downloads of the archive each.
    clients = [
        ("curl", ["-sSfOJL"]),
        # as solana-snapshot-finder runs it: the name of the last URL (a presigned URL's
        # query would be in it: wget gets the bytes from the replica, never the 303)
        ("wget", ["-q", "--trust-server-names"]),
        ("aria2c", ["-q", "-x4", "-s4", "--allow-overwrite=true"]),
    ]
    for (name, flags), replica in zip(clients, replicas, strict=True):
        where = tmp_path / name
        where.mkdir()
        await run(tool(name), *flags, f"{replica.base}/snapshot.tar.zst", cwd=where)
        assert [p.name for p in where.iterdir()] == [FULL], (name, replica.base)
        assert sha256((where / FULL).read_bytes()) == data_digest(), (name, replica.base)
        (where / FULL).unlink()
    assert upstream_bytes(upstream) == metrics_free  # nothing more from upstream
    for replica in replicas:
        assert await replica.stop() == 0
        assert "Traceback" not in replica.log
        assert SECRET_KEY not in replica.log  # the credentials are never logged


async def _append(out: list[str], value: Any) -> None:
    out.append(await value)


async def test_a_refresh_longer_than_lock_ttl_keeps_its_lock(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A refresh lasting 4 times lock_ttl: its holder renews the lock, so a replica asking after
    the lock would have gone stale follows the holder's transfer, never takes it over."""
    prefix = "fleet-c/"
    upstream.behaviour[FULL] = Behaviour(rate=SIZE / 4)  # 4 s
    first, second = await start_replicas(2, tmp_path, upstream, weed, prefix, lock_ttl=1.0)
    digests: list[str] = []
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=60) as client:
        async with trio.open_nursery() as nursery:
            url = f"{first.base}/v1/{GROUP}/{FULL}"
            nursery.start_soon(lambda: _append(digests, digest_of(client, url)))
            # ~3 s in: an unrenewed lock looks older than lock_ttl + 1 s (HTTP dates) now.
            await wait_for(lambda: upstream_bytes(upstream) >= SIZE * 3 // 4, timeout=20)
            other = f"{second.base}/v1/{GROUP}/{FULL}"
            nursery.start_soon(lambda: _append(digests, digest_of(client, other)))
        assert digests == [data_digest()] * 2
        assert upstream_bytes(upstream) <= 1.1 * SIZE
        assert await outcome(client, second, "replica") == 1
        for replica in (first, second):
            takeovers = "snapshot_tracker_object_lock_takeovers_total"
            assert await metric(client, replica, takeovers) == 0
    for replica in (first, second):
        assert await replica.stop() == 0
        assert "object_lock_taken_over" not in replica.log
        assert "object_lock_lost" not in replica.log


async def test_a_killed_refresher_is_taken_over_and_leaves_no_parts(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    prefix = "fleet-b/"
    key = f"{prefix}{GROUP}/{FULL}"
    paused = Behaviour(pause_at=SIZE // 2)
    upstream.behaviour[FULL] = paused
    first, second = await start_replicas(2, tmp_path, upstream, weed, prefix)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=60) as client:
        broken: list[str] = []

        async def doomed() -> None:
            try:
                await digest_of(client, f"{first.base}/v1/{GROUP}/{FULL}")
            except httpx.HTTPError as exc:
                broken.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(doomed)
            # Killed at 50 %, with parts of its upload in the bucket.
            await wait_for(
                lambda: upstream_bytes(upstream) >= SIZE // 2 and uploaded_parts(weed, prefix) > 0,
                timeout=30,
            )
            assert key not in weed.objects(prefix)  # nothing partial is ever an object
            first.proc.send_signal(signal.SIGKILL)
            await first.proc.wait()
        assert broken  # the killed replica's client saw a broken stream, not a short 200
        assert key not in weed.objects(prefix)
        assert uploaded_parts(weed, prefix) > 0  # the dead replica's parts, until a takeover
        upstream.behaviour[FULL] = Behaviour()
        paused.resume.set()

        # Within lock_ttl the lock is live but its holder gone: served from upstream.
        url = f"{second.base}/v1/{GROUP}/{FULL}"
        assert await digest_of(client, url) == data_digest()
        assert key not in weed.objects(prefix)
        # After lock_ttl the next request takes the lock over and fills the bucket.
        await trio.sleep(LOCK_TTL + 1)  # and a second: lock ages are whole seconds
        assert key not in weed.objects(prefix)
        assert await digest_of(client, url) == data_digest()
        await wait_for(lambda: key in weed.objects(prefix), timeout=60)
        await wait_for(lambda: weed.uploads(prefix) == [], timeout=30)
        assert uploaded_parts(weed, prefix) == 0
        assert weed.objects(prefix)[key] == SIZE
        presigned = (await client.get(url)).headers["location"]  # the object's own bytes
        assert await digest_of(client, presigned) == data_digest()
        takeovers = "snapshot_tracker_object_lock_takeovers_total"
        assert await metric(client, second, takeovers) == 1
    assert "object_lock_taken_over" in second.log
    assert await second.stop() == 0
