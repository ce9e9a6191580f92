"""Paths on a hung mount while the tracker runs: a real tracker on 127.0.0.1 keeps answering
(``/healthz``, an archive's bytes) while a path an operator may put on a network mount
hangs, since the event loop never waits on one (docs/configuration.md, "Paths on a hung
mount"). Each hang is the test's, at the executor seam of the call it holds (a stuck NFS or
FUSE server, without root), released at the end however the test ends; the real tracker,
its listeners and its upstream are real."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from helpers_tls import client_tls, issue
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_upstream import FakeUpstream, serving, sidecar_listing
from names import full_name

import tracker.discovery.targetset as targetset
import tracker.net.httpclients as httpclients
import tracker.service as service
from tracker.config.bounded import LOOK_BOUND, no_answer

#: How long a hung call is held unless released: far beyond every bound here, so a tracker
#: that answered before it did not wait for it.
HELD = 30.0
#: The clients' timeout: beyond the hold, so a tracker that waited for a hung call answers
#: late (after it ended), never with a timeout.
WAIT = 2 * HELD
NAME = full_name(100)
DATA = os.urandom(256 * 1024)


class Hang:
    """One call held as a hung mount holds it: :attr:`asked` once it is held, :attr:`ended`
    once it returned (released by :meth:`release`, or after :data:`HELD`)."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.answers = threading.Event()
        self.ended = threading.Event()
        #: How many calls it held: a thread each.
        self.calls = 0

    def holding(self, real: Callable[..., Any], held: Callable[..., bool]) -> Callable[..., Any]:
        """``real``, held on the arguments ``held`` says."""

        def call(*args: Any, **kwargs: Any) -> Any:
            if not held(*args):
                return real(*args, **kwargs)
            self.calls += 1
            self.asked.set()
            self.answers.wait(HELD)
            try:
                return real(*args, **kwargs)
            finally:
                self.ended.set()

        return call

    def release(self) -> None:
        self.answers.set()


@contextmanager
def hung() -> Iterator[Hang]:
    hang = Hang()
    try:
        yield hang
    finally:
        hang.release()  # the threads a hung call holds are let go, however the test ends


def ledger_config(tmp_path: Path, **group: Any) -> Path:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / NAME).write_bytes(DATA)
    settings = {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "300ms",
        "scrape_timeout": "200ms",
        "verify_archives": False,  # random bytes
        "target_groups": [{"group": "g", "local_targets": {"paths": [str(ledger)]}, **group}],
    }
    return write_config(tmp_path, settings)


async def answering(client: httpx.AsyncClient, public: str, internal: str, hang: Hang) -> None:
    """``/healthz`` and the archive's bytes answered while ``hang`` still holds its call."""
    assert await trio.to_thread.run_sync(hang.asked.wait, HELD)
    assert (await client.get(f"{internal}/healthz")).status_code == 200
    answer = await client.get(f"{public}/v1/g/{NAME}")
    assert answer.status_code == 200 and answer.content == DATA
    assert not hang.ended.is_set()  # answered while the call still hung


async def test_a_targets_file_that_hangs_never_holds_the_tracker(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scrape read ``file_targets`` on the event loop: a file on a hung mount froze the
    whole daemon at each round (every client, every download's event-loop side)."""
    targets = tmp_path / "mount" / "targets"
    targets.parent.mkdir()
    targets.write_text("127.0.0.1:9\n")
    path = ledger_config(tmp_path, file_targets={"path": str(targets)})
    public, internal = await start_tracker(nursery, path)
    async with httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client:

        async def listed() -> bool:
            return bool((await client.get(f"{public}/v1/snapshots")).json())

        await wait_until(listed)
        with hung() as hang:
            real = targetset.read_target_file
            monkeypatch.setattr(targetset, "read_target_file", hang.holding(real, lambda _p: True))
            await answering(client, public, internal, hang)
            await wait_until(listed)  # the rounds go on: the ledger's archive stays listed


async def test_a_reload_whose_tls_files_hang_is_refused_and_never_holds_the_tracker(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload made the groups' probe and discovery clients on the event loop, each
    stat and load of their TLS files with them: a CA file on a hung mount froze every
    request meanwhile. They are loaded in threads within the bound; one that does not
    answer refuses the reload with a line naming its key, the config in force kept."""
    ca = issue(tmp_path, "test-ca").cert
    path = ledger_config(tmp_path, tls_config={"ca_file": str(ca)})
    public, internal = await start_tracker(nursery, path)
    async with httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client:
        with hung() as hang:
            real = httpclients._file_state  # the stat of a TLS file
            held = hang.holding(real, lambda at: at == str(ca))
            monkeypatch.setattr(httpclients, "_file_state", held)
            reloaded: list[httpx.Response] = []

            async def reload() -> None:
                reloaded.append(await client.post(f"{internal}/reload"))

            async with trio.open_nursery() as requests:
                requests.start_soon(reload)
                await answering(client, public, internal, hang)
            await reload()  # while it still hangs: refused too, no second thread there
            assert not hang.ended.is_set()
            assert hang.calls == 1
        line = f"target_groups[0].tls_config: {no_answer(str(ca), LOOK_BOUND)}"
        for refused in reloaded:
            assert refused.status_code == 400
            assert refused.text == f"config refused:\n{line}\n"
        assert len(reloaded) == 2
        assert await trio.to_thread.run_sync(hang.ended.wait, HELD)
        monkeypatch.undo()
        assert (await client.post(f"{internal}/reload")).status_code == 200  # it answers


async def test_a_new_cache_directory_that_hangs_never_holds_the_tracker(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload to another cache directory opened it (its lock, its leftovers, its listing)
    on the event loop: one whose listing hung froze every request meanwhile. It is opened in
    a thread: the reload ends within its wait, requests stream uncached until the directory
    answers, and then it is the cache."""
    files = {NAME: DATA}
    async with serving(FakeUpstream(files=files, listing=sidecar_listing(files))) as sidecar:
        settings = {
            "internal_listen": "127.0.0.1:0",
            "proxy_snapshot_downloads": True,
            "proxy_snapshot_cache_dir": str(tmp_path / "cache"),
            "verify_archives": False,  # random bytes
            "target_groups": [
                {"group": "g", "static_targets": {"targets": [sidecar.base[len("http://") :]]}}
            ],
        }
        path = write_config(tmp_path, settings)
        public, internal = await start_tracker(nursery, path)
        moved = tmp_path / "mount" / "cache"
        write_config(tmp_path, {**settings, "proxy_snapshot_cache_dir": str(moved)})
        monkeypatch.setattr(service, "OPEN_WAIT", 0.5)
        async with httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client:

            async def listed() -> bool:
                return bool((await client.get(f"{public}/v1/snapshots")).json())

            await wait_until(listed)
            with hung() as hang:
                real = os.scandir
                held = hang.holding(real, lambda at=".": os.fspath(at) == str(moved))
                monkeypatch.setattr(os, "scandir", held)
                reloaded: list[httpx.Response] = []

                async def reload() -> None:
                    reloaded.append(await client.post(f"{internal}/reload"))

                async with trio.open_nursery() as requests:
                    requests.start_soon(reload)
                    await answering(client, public, internal, hang)
                await reload()  # while it still hangs: no second thread there
                assert [answer.status_code for answer in reloaded] == [200, 200]
                assert hang.calls == 1
                assert not (moved / "g").exists()  # streamed uncached: nothing written there
                hang.release()
                assert await trio.to_thread.run_sync(hang.ended.wait, HELD)
                monkeypatch.setattr(os, "scandir", real)

            async def cached() -> bool:  # the directory answered: it is the cache now
                await client.get(f"{public}/v1/g/{NAME}")
                return (moved / "g" / NAME).exists()

            await wait_until(cached)


async def test_a_cache_directory_that_hangs_at_the_start_ends_it_as_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start opened its cache (the directory's real path first) on the event loop: one
    whose mount hung after the config's look held the start for as long as it hung. Its
    real path is taken in a thread within the bound: the start ends as not ready (``serve``
    exits 75, which systemd retries), its listeners closed."""
    from tracker.config.loading import load_config
    from tracker.errors import ConfigNotReady

    cache = tmp_path / "mount" / "cache"
    path = write_config(
        tmp_path,
        {
            "proxy_snapshot_downloads": True,
            "proxy_snapshot_cache_dir": str(cache),
            "target_groups": [{"group": "g", "static_targets": {"targets": ["127.0.0.1:9"]}}],
        },
    )
    config = load_config(path)
    with hung() as hang:
        held = hang.holding(os.path.realpath, lambda at, *_: os.fspath(at) == str(cache))
        monkeypatch.setattr(os.path, "realpath", held)
        with pytest.raises(ConfigNotReady) as info:
            await service.run_tracker(config, lambda: config)
        assert not hang.ended.is_set()  # ended within the bound, the look still hung
    assert info.value.problems == [f"proxy_snapshot_cache_dir: {no_answer(str(cache), LOOK_BOUND)}"]


async def test_a_local_file_s_last_check_on_a_hung_mount_never_holds_the_tracker(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local file's download ends with a look at the file (its ``fstat``, its name's
    ``stat``: was it changed while sent?), which ran on the event loop: a ledger whose mount
    hung at that moment froze the daemon. It runs in a thread: the tracker answers, and the
    download ends once the look does."""
    import tracker.serving.fileresponse as fileresponse

    public, internal = await start_tracker(nursery, ledger_config(tmp_path))
    async with httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client:

        async def listed() -> bool:
            return bool((await client.get(f"{public}/v1/snapshots")).json())

        await wait_until(listed)
        downloaded: list[bytes] = []

        async def download() -> None:
            downloaded.append((await client.get(f"{public}/v1/g/{NAME}")).content)

        with hung() as hang:
            held = hang.holding(fileresponse.unchanged, lambda *_: True)
            monkeypatch.setattr(fileresponse, "unchanged", held)
            async with trio.open_nursery() as requests:
                requests.start_soon(download)
                assert await trio.to_thread.run_sync(hang.asked.wait, HELD)
                assert (await client.get(f"{internal}/healthz")).status_code == 200
                assert await listed()
                assert not hang.ended.is_set()  # answered while the look still hung
                hang.release()
        assert downloaded == [DATA]


async def test_a_local_file_whose_open_hung_gets_a_503_and_parks_no_thread_more(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local file's open on a hung mount is given up when its client leaves, its thread
    parked until the mount answers: every client that asked again parked one more, for as
    long as the mount hung. Once an open there has not answered for a while, the file's
    next requests get a 503 naming its directory at once, no thread started."""
    import tracker.serving.threads as threads

    public, _internal = await start_tracker(nursery, ledger_config(tmp_path))
    path = str(tmp_path / "ledger" / NAME)
    async with httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client:

        async def listed() -> bool:
            return bool((await client.get(f"{public}/v1/snapshots")).json())

        await wait_until(listed)
        with hung() as hang:
            held = hang.holding(os.open, lambda at, *_: os.fspath(at) == path)
            monkeypatch.setattr(os, "open", held)
            async with trio.open_nursery() as requests:
                gone = trio.CancelScope()

                async def download() -> None:
                    with gone:
                        await client.get(f"{public}/v1/g/{NAME}")

                requests.start_soon(download)
                assert await trio.to_thread.run_sync(hang.asked.wait, HELD)
                gone.cancel()  # its client leaves: the open still hangs
            monkeypatch.setattr(threads, "HUNG_AFTER", 0.0)  # it has hung a while
            for _again in range(3):
                again = await client.get(f"{public}/v1/g/{NAME}")
                assert again.status_code == 503
                assert again.text.startswith(f"cannot read {NAME} in its local directory: ")
                assert "(a hung mount?)" in again.text
            assert hang.calls == 1 and not hang.ended.is_set()  # one thread parked, no more
            hang.release()
            assert await trio.to_thread.run_sync(hang.ended.wait, HELD)
        monkeypatch.setattr(threads, "HUNG_AFTER", HELD)
        answer = await client.get(f"{public}/v1/g/{NAME}")  # the mount answers: served
        assert answer.status_code == 200 and answer.content == DATA


async def test_the_status_page_of_a_cache_on_a_hung_mount_answers(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status page listed the cache directory in one of trio's worker threads for as long
    as the listing took: on a hung mount each page (and the page reloads itself) held one
    for good, until the daemon's disk reads had none left; then within the bound, but still
    in one of trio's shared threads while it waited. It is listed in a thread of its own
    within the bound, one listing at a time: the page says the directory did not answer."""
    import tracker.cache.opening as opening

    cache = tmp_path / "cache"
    settings = {
        "internal_listen": "127.0.0.1:0",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(cache),
        "target_groups": [{"group": "g", "static_targets": {"targets": ["127.0.0.1:9"]}}],
    }
    _public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    async with httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client:
        with hung() as hang:
            held = hang.holding(opening._listed, lambda *_: True)
            monkeypatch.setattr(opening, "_listed", held)
            pages: list[httpx.Response] = []
            shared = trio.to_thread.current_default_thread_limiter()

            async def asked() -> bool:
                return hang.asked.is_set()

            async def page() -> None:
                pages.append(await client.get(f"{internal}/"))

            async with trio.open_nursery() as asking:
                asking.start_soon(page)
                await wait_until(asked)
                assert shared.borrowed_tokens == 0  # the hung listing holds no shared thread
            await page()
            for answer in pages:
                assert answer.status_code == 200
                said = no_answer(str(cache), LOOK_BOUND).replace("'", "&#x27;")
                assert f"The directory is unusable: {said}" in answer.text
            assert not hang.ended.is_set()  # answered while the listing still hung
            assert hang.calls == 1  # one listing however many pages ask


async def test_a_reload_s_listing_of_a_cache_on_a_hung_mount_ends_within_its_wait(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reload ends by listing the cache (the archives of the groups it names, the
    directories of those it no longer names), in a worker thread it waited for: a cache on
    a hung mount held the reload, and every reload after it (one at a time), for as long as
    the mount hung. The listing is waited for within its bound, one at a time."""
    import tracker.cache.opening as opening
    from tracker.cache.store import Cache

    settings = {
        "internal_listen": "127.0.0.1:0",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(tmp_path / "cache"),
        "target_groups": [{"group": "g", "static_targets": {"targets": ["127.0.0.1:9"]}}],
    }
    _public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    monkeypatch.setattr(opening, "OPEN_WAIT", 0.5)
    async with httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client:
        with hung() as hang:
            held = hang.holding(Cache.files, lambda *_: True)  # the listing of its archives
            monkeypatch.setattr(Cache, "files", held)
            for _reload in range(2):
                assert (await client.post(f"{internal}/reload")).status_code == 200
            assert (await client.get(f"{internal}/healthz")).status_code == 200
            assert not hang.ended.is_set()  # both ended while the listing still hung
            assert hang.calls == 1  # one listing however many reloads ask


@pytest.mark.parametrize("hung_in", ["realpath", "open"])
async def test_a_cache_hit_on_a_hung_mount_holds_only_its_own_request(
    hung_in: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache hit took its file's real path (a stat of each part of the path) on the event
    loop, then opened it in one of trio's shared worker threads that a cancelled request
    still waited for: a cache directory on a hung mount froze every request, then held the
    hung one's slot (and a shared thread) after its client left. The hit's look (real path,
    open, fstat) runs in one thread of its own: other requests are answered meanwhile, and
    the hung one ends when its client leaves; what the look opens once the mount answers is
    closed then. Once a look there has hung a while, no thread more is parked there: the
    file is streamed uncached until the mount answers (the tracker's own components on
    127.0.0.1; the hang is the test's, at the real path or the open of the cached file
    only)."""
    from helpers_fds import open_fds
    from helpers_proxy import proxy_tracker, wait_for

    import tracker.serving.threads as threads

    other = full_name(99)  # not the best: relayed, never cached
    files = {NAME: DATA, other: DATA[::-1]}
    async with (
        serving(FakeUpstream(files=files)) as up,
        proxy_tracker(tmp_path / "cache", up) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client,
    ):
        assert (await client.get(t.url(NAME))).content == DATA  # cached by its refresh
        await wait_for(lambda: t.cached() == [NAME])
        assert (await client.get(t.url(NAME))).content == DATA
        assert t.outcome("cache_hit") == 1
        cached = t.group_dir() / NAME
        slots = t.parts.delivery.slots
        with hung() as hang:
            where = os.path if hung_in == "realpath" else os
            real = getattr(where, hung_in)
            held = hang.holding(real, lambda at, *_: os.fspath(at) == str(cached))
            monkeypatch.setattr(where, hung_in, held)
            async with trio.open_nursery() as requests:
                gone = trio.CancelScope()

                async def hit() -> None:
                    with gone:
                        await client.get(t.url(NAME))
                    assert gone.cancelled_caught  # never answered: its client left first

                requests.start_soon(hit)
                assert await trio.to_thread.run_sync(hang.asked.wait, HELD)
                assert slots.taken == 1
                answer = await client.get(t.url(other))  # the cache's other files: answered
                assert answer.status_code == 200 and answer.content == files[other]
                assert (await client.get(f"{t.base}/v1/snapshots")).status_code == 200
                assert not hang.ended.is_set()  # answered while the hit's look still hung
                assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
                gone.cancel()  # the client leaves: its request ends, the look still hung
            await wait_for(lambda: slots.taken == 0)
            assert not hang.ended.is_set()
            assert t.outcome("cache_hit") == 1
            # Once the look has hung a while, the file's next requests park no thread
            # there: streamed from its source, uncached, while the mount hangs.
            monkeypatch.setattr(threads, "HUNG_AFTER", 0.0)
            for _again in range(3):
                again = await client.get(t.url(NAME))
                assert again.status_code == 200 and again.content == DATA
            assert hang.calls == 1 and not hang.ended.is_set()
            assert t.outcome("cache_hit") == 1
            hang.release()
            assert await trio.to_thread.run_sync(hang.ended.wait, HELD)
            await wait_for(lambda: open_fds(cached) == 0)  # what it opened since: closed
            assert hang.calls == 1


@pytest.mark.parametrize("hung_in", ["realpath", "stat"])
async def test_the_cache_s_upkeep_on_a_hung_mount_never_holds_the_tracker(
    hung_in: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every second the cache's upkeep looks whether each checked copy is still the file
    under its name, and a digest route (``.sha256``) looks before it tells the digest: both
    took the copy's real path (a stat of each part) and its status on the event loop, so a
    cache directory on a hung mount froze every request within a second, traffic or not.
    They look in a thread of the cache directory's own: the tracker answers meanwhile, one
    thread only is parked there, and the digest route answers 503 with the reason until
    the mount answers, then the digest (the tracker's own components on 127.0.0.1; the
    hang is the test's, at the real path or the status of the cached file only)."""
    import hashlib
    import math

    from archives import build_archive
    from helpers_proxy import proxy_tracker, wait_for

    import tracker.serving.threads as threads

    name, data = build_archive(9400, accounts=3, seed=4)  # a real archive: checked
    async with (
        serving(FakeUpstream(files={name: data})) as up,
        proxy_tracker(tmp_path / "cache", up, verify_archives=True) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client,
    ):
        assert (await client.get(t.url(name))).content == data  # cached by its refresh
        await wait_for(lambda: name in t.cached() and not t.streamer.refreshes())
        digest = t.url(f"{name}.sha256")
        line = f"{hashlib.sha256(data).hexdigest()}  {name}\n"
        assert (await client.get(digest)).text == line
        cache = t.streamer.cache()
        assert cache is not None
        cached, root = str(t.group_dir() / name), cache.root
        with hung() as hang:
            where = os.path if hung_in == "realpath" else os
            real = getattr(where, hung_in)
            held = hang.holding(real, lambda at, *_: os.fspath(at) == cached)
            monkeypatch.setattr(where, hung_in, held)
            assert await trio.to_thread.run_sync(hang.asked.wait, HELD)  # the upkeep's look
            assert (await client.get(f"{t.base}/v1/snapshots")).status_code == 200
            assert not hang.ended.is_set()  # answered while the look still hung
            monkeypatch.setattr(threads, "HUNG_AFTER", 0.0)  # it has hung a while
            refused = await client.get(digest)
            assert refused.status_code == 503
            assert "cannot read the cache directory" in refused.text
            assert "hung mount" in refused.text and "\n" not in refused.text.strip()
            assert not hang.ended.is_set() and hang.calls == 1  # no thread more parked
            hang.release()
            assert await trio.to_thread.run_sync(hang.ended.wait, HELD)
            monkeypatch.undo()
            await wait_for(lambda: threads.hung_for(root, math.inf) is None)  # its thread ended
            assert (await client.get(digest)).text == line  # the mount answers again


async def test_a_refresh_s_listing_of_a_cache_on_a_hung_mount_never_holds_the_tracker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh lists the cache when it opens its temp file and once it is promoted (what
    the index and the cache's size are told): that listing ran on the event loop, so a
    cache directory whose listing hung froze every request at the next miss. It runs in
    the directory's own thread within its bound: the tracker answers meanwhile, the miss's
    client gets its bytes, one thread only is parked there, and the index is told once the
    mount answers, not at the next change (the tracker's own components on 127.0.0.1; the
    hang is the test's, at the listing of the cache's root only)."""
    from helpers_proxy import proxy_tracker, wait_for

    import tracker.cache.disk as disk
    import tracker.cache.store as store

    # The cache directory's real bound (3 s), waited out: a shorter one would also bound
    # the refresh's own look before its temp file, which a loaded machine may answer late.
    async with (
        serving(FakeUpstream(files={NAME: DATA})) as up,
        proxy_tracker(tmp_path / "cache", up) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client,
    ):
        cache = t.streamer.cache()
        assert cache is not None
        with hung() as hang:
            held = hang.holding(disk.scan, lambda directory, *_: directory == cache.root)
            monkeypatch.setattr(store, "scan", held)
            async with trio.open_nursery() as nursery:
                got: list[httpx.Response] = []

                async def miss() -> None:
                    got.append(await client.get(t.url(NAME)))

                nursery.start_soon(miss)
                assert await trio.to_thread.run_sync(hang.asked.wait, HELD)  # open's listing
                assert (await client.get(f"{t.base}/v1/snapshots")).status_code == 200
                assert not hang.ended.is_set()  # answered while the listing still hung
            [answer] = got
            assert answer.status_code == 200 and answer.content == DATA
            await wait_for(lambda: NAME in t.cached() and not t.streamer.refreshes())
            assert not t.holds(NAME)  # the promotion's listing gave up: not told yet
            assert not hang.ended.is_set() and hang.calls == 1  # no second thread parked
            hang.release()
            await wait_for(lambda: t.holds(NAME))  # told once the mount answers


async def test_a_promotion_that_hangs_holds_no_other_refresh_of_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh's promotion (its rename, under its group's lock) on a mount that answers a
    look but hangs a rename (NFS answering lookups from its attribute cache): the group's
    next refresh, past its look, waited for the lock as long as the mount hung, its client
    with it. The promotion counts as a call in the cache directory: once it has hung past
    the bound, that refresh streams its file uncached, its group's reason saying why (the
    tracker's own components on 127.0.0.1; the hang is the test's, at the rename only)."""
    from helpers_proxy import GROUP, proxy_tracker, wait_for
    from names import incremental_name

    import tracker.cache.refresh as refresh_module

    # The cache directory's real bound (3 s), waited out once: a shorter one would also
    # bound the refreshes' own looks, which a loaded machine may answer late.
    other, other_data = incremental_name(100, 150), os.urandom(128 * 1024)
    async with (
        serving(FakeUpstream(files={NAME: DATA, other: other_data})) as up,
        proxy_tracker(tmp_path / "cache", up) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client,
    ):
        cache = t.streamer.cache()
        assert cache is not None
        with hung() as hang:
            renaming = hang.holding(
                refresh_module.rename_into_place, lambda _fd, _temp, final: final.endswith(NAME)
            )
            monkeypatch.setattr(refresh_module, "rename_into_place", renaming)
            async with trio.open_nursery() as nursery:

                async def miss() -> None:
                    answer = await client.get(t.url(NAME))
                    assert answer.status_code == 200 and answer.content == DATA

                nursery.start_soon(miss)
                assert await trio.to_thread.run_sync(hang.asked.wait, HELD)  # the rename
                answer = await client.get(t.url(other))
                assert answer.status_code == 200 and answer.content == other_data
                assert not hang.ended.is_set()  # answered while the rename still hung
                assert "has not ended (a hung mount?)" in cache.uncached[GROUP]
                assert other not in t.cached()
                hang.release()
            await wait_for(lambda: NAME in t.cached() and not t.streamer.refreshes())


async def test_a_refresh_whose_room_hangs_streams_uncached_and_holds_its_group_no_longer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh's room and temp file (evictions, the temp file's creation: under its
    group's lock) on a mount that answers a look but hangs a create (NFS answering lookups
    from its attribute cache) ran in one of trio's shared threads, waited for without a
    bound: the refresh's client, its early head sent, and every later refresh of the group
    waited as long as the mount hung. Past its bound the refresh streams the file uncached,
    the directory counts as hung so the group's next refresh does too, the call left
    running keeps the group's lock and, once the mount answers, removes the temp file it
    made and lets the lock go: the file is cached again (the tracker's own components on
    127.0.0.1; the hang is the test's, at the creation of one file's temp file only)."""
    from helpers_proxy import GROUP, proxy_tracker, wait_for
    from names import incremental_name

    import tracker.cache.refresh as refresh_module
    from tracker.cache.disk import TEMP_PREFIX

    # 30 s, shortened to the look's bound: a refresh's own room takes microseconds here
    monkeypatch.setattr(refresh_module, "ROOM_BOUND", LOOK_BOUND)
    other, other_data = incremental_name(100, 150), os.urandom(128 * 1024)
    root = tmp_path / "cache"

    def temp_files() -> list[str]:
        return [n for _d, _s, names in os.walk(root) for n in names if n.startswith(TEMP_PREFIX)]

    async with (
        serving(FakeUpstream(files={NAME: DATA, other: other_data})) as up,
        proxy_tracker(root, up) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client,
    ):
        cache = t.streamer.cache()
        assert cache is not None
        with hung() as hang:
            opening = hang.holding(refresh_module.open_temp, lambda final, *_: final.endswith(NAME))
            monkeypatch.setattr(refresh_module, "open_temp", opening)
            async with trio.open_nursery() as nursery:

                async def miss() -> None:
                    answer = await client.get(t.url(NAME))
                    assert answer.status_code == 200 and answer.content == DATA
                    assert not hang.ended.is_set()  # answered while the create still hung

                nursery.start_soon(miss)
                assert await trio.to_thread.run_sync(hang.asked.wait, HELD)  # the create
                answer = await client.get(t.url(other))  # waits for the group's lock, then not
                assert answer.status_code == 200 and answer.content == other_data
                assert not hang.ended.is_set()
                assert "has not ended (a hung mount?)" in cache.uncached[GROUP]
            assert t.cached() == [] and hang.calls == 1
            hang.release()
            assert await trio.to_thread.run_sync(hang.ended.wait, HELD)
            await wait_for(lambda: temp_files() == [])  # the late temp file: removed
            monkeypatch.undo()
            again = await client.get(t.url(NAME))  # the group's lock was let go
            assert again.status_code == 200 and again.content == DATA
            await wait_for(lambda: NAME in t.cached() and not t.streamer.refreshes())
            assert temp_files() == []


async def test_a_failed_refresh_s_temp_file_on_a_hung_mount_never_holds_the_tracker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh whose source broke off removes its temp file: on the event loop, a partial
    full's unlink (seconds) or a hung mount's (for ever) froze every request. It runs in a
    thread of its own, waited for within the bound: the tracker answers meanwhile, the
    refresh is counted failed and released after the bound, and the file goes once the
    mount answers (the tracker's own components on 127.0.0.1; the hang is the test's, at
    the temp file's removal only)."""
    import attrs
    from helpers_proxy import FAST, proxy_tracker, wait_for
    from helpers_upstream import Behaviour

    import tracker.cache.refresh as refresh_module
    from tracker.cache.disk import TEMP_PREFIX

    monkeypatch.setattr(refresh_module, "HUNG_AFTER", 0.5)  # 3 s, shortened: waited out
    broken = {NAME: Behaviour(drop_after=len(DATA) // 2)}
    no_resume = attrs.evolve(FAST, resume_delays=())
    root = tmp_path / "cache"

    def temp_files() -> list[str]:
        return [n for _d, _s, names in os.walk(root) for n in names if n.startswith(TEMP_PREFIX)]

    async with (
        serving(FakeUpstream(files={NAME: DATA}, behaviour=broken)) as up,
        proxy_tracker(root, up, settings=no_resume) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=WAIT, trust_env=False) as client,
    ):
        with hung() as hang:
            removing = partial(_is_temp_file, TEMP_PREFIX)
            monkeypatch.setattr(
                refresh_module, "unlink", hang.holding(refresh_module.unlink, removing)
            )
            async with trio.open_nursery() as nursery:

                async def miss() -> None:
                    with contextlib.suppress(httpx.HTTPError):  # its body breaks off
                        await client.get(t.url(NAME))

                nursery.start_soon(miss)
                assert await trio.to_thread.run_sync(hang.asked.wait, HELD)  # the removal
                assert (await client.get(f"{t.base}/v1/snapshots")).status_code == 200
                assert not hang.ended.is_set()  # answered while the removal still hung
            await wait_for(lambda: t.outcome("refresh_failed") == 1 and not t.streamer.refreshes())
            assert not hang.ended.is_set() and hang.calls == 1
            assert len(await trio.to_thread.run_sync(temp_files)) == 1  # not removed yet
            hang.release()
            await trio.to_thread.run_sync(hang.ended.wait, HELD)
            assert await trio.to_thread.run_sync(temp_files) == []


def _is_temp_file(prefix: str, path: str) -> bool:
    """Whether ``path`` is a refresh's temp file (named ``prefix``...)."""
    return os.path.basename(path).startswith(prefix)


async def test_a_stop_held_by_a_hung_mount_ends_the_process_soon_after_its_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM while a refresh's last fsync hangs on the cache's mount: a thread in a file
    system's call is no cancellation point, and the stop waited for it as long as the mount
    hung (until systemd's kill). Past the grace, everything cancelled, the stop waits a
    bounded time more, logs ``stop_held`` naming what the threads run and calls
    ``stop_held`` (``serve`` ends the process there). The tracker's own components on
    127.0.0.1; the hang is the test's, at the fsync only."""
    import signal

    import tracker.cache.refresh as refresh_module
    from tracker.config.loading import load_config

    monkeypatch.setattr(service, "STOP_HELD_WAIT", 0.5)  # 10 s, shortened: waited out
    listing = sidecar_listing({NAME: DATA})
    held_at: list[float] = []
    async with serving(FakeUpstream(files={NAME: DATA}, listing=listing)) as up:
        settings = {
            "scrape_interval": "30s",
            "proxy_snapshot_downloads": True,
            "verify_archives": False,  # random bytes
            "proxy_snapshot_cache_dir": str(tmp_path / "cache"),
            "shutdown_grace": "1s",
            "target_groups": [
                {"group": "g", "static_targets": {"targets": [up.base.removeprefix("http://")]}}
            ],
        }
        path = write_config(tmp_path, settings)
        with hung() as hang:
            fsync = hang.holding(refresh_module.sync_temp, lambda *_: True)
            monkeypatch.setattr(refresh_module, "sync_temp", fsync)

            def stop_held() -> None:
                held_at.append(trio.current_time())
                hang.release()  # the test's mount answers: the run ends

            with trio.fail_after(HELD):  # a stop held by the hang: never reached
                async with trio.open_nursery() as nursery:
                    run = partial(
                        service.run_tracker,
                        load_config(path),
                        partial(load_config, path),
                        stop_held=stop_held,
                    )
                    public, *_ = await nursery.start(run)
                    async with httpx.AsyncClient(
                        verify=client_tls(), timeout=WAIT, trust_env=False
                    ) as client:

                        async def listed() -> bool:
                            return bool((await client.get(f"{public}/v1/snapshots")).json())

                        await wait_until(listed)
                        answer = await client.get(f"{public}/v1/g/{NAME}")
                        assert answer.status_code == 200 and answer.content == DATA
                    assert await trio.to_thread.run_sync(hang.asked.wait, HELD)  # the fsync
                    asked = trio.current_time()
                    os.kill(os.getpid(), signal.SIGTERM)
    the_grace_and_the_wait = 1 + 2 + 0.5  # its connections' last 2 s between
    assert len(held_at) == 1 and the_grace_and_the_wait <= held_at[0] - asked < HELD / 2
    [line] = [r for r in caplog.records if r.getMessage() == "stop_held"]
    assert "cache sync" in line.tracker_fields["threads"], line.__dict__
