"""Verified archives end to end (docs/http-api.md, "Verified archives"): a real tracker
service, sidecars that are small real HTTP servers, real archives (tests/archives.py).

A bad copy of an archive (each variant has the good one's name and size) is never promoted,
never handed to a client as a complete 200, and its source is marked and skipped; a good
copy on another source is used next, and its digest then travels with it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from archives import bad_variants, build_archive, huge_pax_size_archive, huge_pax_size_reason
from helpers_proxy import wait_for
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_upstream import Behaviour, FakeUpstream, serving, sidecar_listing
from helpers_wire import Wire, raw_request

from tracker.cache.store import LOCK_FILE
from tracker.ordering.sourcehistory import PREFIX as REJECTED
from tracker.proof.archive import checklimits
from tracker.proof.archive.archivecheck import THREAD_NAME
from tracker.proof.formats.writing import write_status_cache

GROUP = "mainnet"
HOLD_BACK = 64 * 1024

#: Each bad variant with one compression, so that every compression is crossed.
CASES = [
    ("flipped_byte", "zst"),
    ("other_slot", "lz4"),
    ("not_tar", "bz2"),
    ("truncated_zero_padded", "gz"),
    ("trailing_bytes", "xz"),
    ("missing_status_cache", "zst"),
]


@attrs.define
class Fleet:
    """A tracker (public and internal base URLs) with two sidecars: ``bad`` and ``good``."""

    public: str
    internal: str
    bad: FakeUpstream
    good: FakeUpstream
    cache: Path


def _config(tmp_path: Path, hosts: list[str], **extra: Any) -> Path:
    """The tracker's config; ``trust`` (if given) is the group's trust section."""
    group: dict[str, Any] = {"group": GROUP, "static_targets": {"targets": hosts}}
    if "trust" in extra:
        group["trust"] = extra.pop("trust")
    settings: dict[str, Any] = {
        "scrape_interval": "200ms",
        "internal_listen": "127.0.0.1:0",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(tmp_path / "cache"),
        "target_groups": [group],
        **extra,
    }
    return write_config(tmp_path, settings)


@asynccontextmanager
async def fleet(
    tmp_path: Path,
    name: str,
    bad: bytes,
    good: bytes,
    *,
    how: Behaviour | None = None,
    **extra: Any,
) -> AsyncIterator[Fleet]:
    """The bad sidecar lists the archive at once (and answers it as ``how`` says, from the
    start); the good one only once the test says so (``good.listing = ...``): the first
    refresh must come from the bad one."""
    answers = {name: how} if how is not None else {}
    first = FakeUpstream(files={name: bad}, behaviour=answers, listing=sidecar_listing({name: bad}))
    async with (
        serving(first) as b,
        serving(FakeUpstream(files={name: good}, listing=[], host="127.0.0.2")) as g,
        trio.open_nursery() as nursery,
    ):
        hosts = [b.base.removeprefix("http://"), g.base.removeprefix("http://")]
        public, internal = await start_tracker(nursery, _config(tmp_path, hosts, **extra))
        yield Fleet(public, internal, b, g, tmp_path / "cache")
        nursery.cancel_scope.cancel()


async def sources_of(base: str, name: str) -> list[dict[str, Any]]:
    """The file objects of ``name`` in ``/v1/snapshots``, one per source."""
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        listing = (await client.get(f"{base}/v1/snapshots")).json()
    return [f for s in listing for f in s["files"] if f["file_name"].endswith(name)]


async def target(base: str, up: FakeUpstream) -> dict[str, Any]:
    """The ``/v1/targets`` entry of sidecar ``up``."""
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        listing = (await client.get(f"{base}/v1/targets")).json()
    [entry] = [t for t in listing if t["target"].endswith(up.base.removeprefix("http://"))]
    return dict(entry)


async def shows_error(f: Fleet, wanted: Callable[[str], bool], timeout: float = 10.0) -> None:
    """Wait until the bad sidecar's target shows a ``last_error`` that ``wanted`` accepts
    (``timeout`` seconds at most). A scrape that outlasts the fleet's 0.2 s timeout on a
    loaded host shows its own error instead for a round; the held-back source's reason shows
    again after."""
    last = ""

    async def accepted() -> bool:
        nonlocal last
        last = str((await target(f.public, f.bad))["last_error"])
        return wanted(last)

    try:
        await wait_until(accepted, timeout)
    except trio.TooSlowError:
        raise AssertionError(f"last_error is still {last!r}") from None


async def _digest_listed(base: str, name: str) -> bool:
    """Whether ``/v1/snapshots`` publishes a SHA-256 for ``name`` (its digest is held)."""
    return any("sha256" in f for f in await sources_of(base, name))


async def metric(internal: str, name: str) -> float:
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        text = (await client.get(f"{internal}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


async def _rejected(internal: str, count: int) -> bool:
    """Whether the tracker has counted ``count`` rejected archives: the count comes after
    the removal of a cached copy, so the file being gone is not yet the count."""
    return await metric(internal, "snapshot_tracker_archives_rejected_total") == count


def leftovers(cache: Path) -> list[str]:
    """Every file in the cache directory (temp files and digests included), but the lock
    the tracker holds on it while it runs."""
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and p.name != LOCK_FILE)


async def left_nothing(cache: Path) -> None:
    """Wait until the cache directory holds nothing (:func:`leftovers`): a refresh that
    failed has its readers learn it at once and its temp file removed in a thread of its
    own just after (docs/architecture.md, "One refresh, one owner")."""
    await wait_for(lambda: leftovers(cache) == [])


@pytest.mark.parametrize(("variant", "compression"), CASES)
async def test_a_bad_copy_is_never_handed_out_and_its_source_is_skipped(
    tmp_path: Path, variant: str, compression: str
) -> None:
    name, good = build_archive(500, compression=compression, seed=1)
    bad = bad_variants(name, good)[variant]
    assert len(bad) == len(good) and bad != good
    async with fleet(tmp_path, name, bad, good) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        # The first GET starts the refresh from the bad source and reads it as it grows.
        first = await raw_request(f.public, f"/v1/{GROUP}/{name}", idle=1.0)
        never_complete(first, len(good))
        # the count and the temp file's removal come a moment after the client's connection
        # broke (the refresh's end closes its upstream first)
        await wait_until(lambda: _rejected(f.internal, 1))
        await wait_for(lambda: leftovers(f.cache) == [])  # nothing promoted, the temp file gone
        await shows_error(f, lambda error: error.startswith(REJECTED))
        # The status page says it too, in the source's row (it left it out); as above, a
        # scrape past the 0.2 s timeout on a loaded host shows its own error for a round
        rows: list[str] = []

        async def on_page() -> bool:
            nonlocal rows
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                page = html.unescape((await client.get(f"{f.internal}/")).text)
            bad = f.bad.base.removeprefix("http://")
            rows = [row for row in page.split("<tr") if bad in row]
            return any(REJECTED in row for row in rows)

        try:
            await wait_until(on_page, 10)
        except trio.TooSlowError:
            raise AssertionError(rows) from None
        # Held back, the bad copy is not ranked nor listed (the alias must not point at it).
        assert await sources_of(f.public, name) == []
        # Now the good sidecar lists it too: the next request goes there, not to the bad one.
        f.good.listing = sidecar_listing({name: good})
        await wait_until(lambda: _listed(f.public, name, 1))
        second = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert second.status == 200 and second.body == good
        assert len(f.bad.gets(name)) == 1 and len(f.good.gets(name)) == 1
        digest_file = f.cache / GROUP / f".{name}.sha256"
        await wait_for(digest_file.exists)  # written just after the archive's rename
        assert (f.cache / GROUP / name).read_bytes() == good
        digest = hashlib.sha256(good).hexdigest()
        assert digest_file.read_text() == f"{digest}  {name}\n"


def never_complete(answer: Wire, size: int) -> None:
    """The answer of a request that started a refresh of a bad copy: its head went out and
    its body broke before the last HOLD_BACK bytes, or (the check failed before the head
    could go out, a small archive) a 502 naming the failed check."""
    if answer.status == 502:
        assert answer.body.decode().startswith(REJECTED), answer.body
        return
    assert answer.status == 200 and answer.header("content-length") == str(size)
    # An archive smaller than HOLD_BACK: not one byte of it.
    assert answer.closed and len(answer.body) <= max(size - HOLD_BACK, 0)


async def _listed(base: str, name: str, count: int) -> bool:
    return len(await sources_of(base, name)) >= count


async def test_with_every_source_rejected_the_answer_is_a_502_with_the_reason(
    tmp_path: Path,
) -> None:
    name, good = build_archive(501, compression="zst", seed=2)
    bad = bad_variants(name, good)["flipped_byte"]
    async with fleet(tmp_path, name, bad, good) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        first = await raw_request(f.public, f"/v1/{GROUP}/{name}", idle=1.0)
        never_complete(first, len(good))
        again = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert again.status == 502
        assert again.body.decode().startswith(REJECTED)
        assert len(f.bad.gets(name)) == 1  # held back: not asked again
        await left_nothing(f.cache)


async def test_reject_for_ends_and_the_source_is_used_again(tmp_path: Path) -> None:
    name, good = build_archive(502, compression="gz", seed=3)
    bad = bad_variants(name, good)["trailing_bytes"]
    # Long enough that the 502 below comes well within it on a loaded machine: the test
    # waits for the rejection to be recorded, then for its end, never on the clock.
    async with fleet(tmp_path, name, bad, good, reject_for="4s") as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        await raw_request(f.public, f"/v1/{GROUP}/{name}")

        async def held_back() -> bool:
            return "archive failed verification" in (await target(f.public, f.bad))["last_error"]

        await wait_until(held_back, timeout=10)
        assert (await raw_request(f.public, f"/v1/{GROUP}/{name}")).status == 502
        f.bad.files[name] = good  # the source was fixed meanwhile

        async def served() -> bool:
            answer = await raw_request(f.public, f"/v1/{GROUP}/{name}")
            return answer.status == 200 and answer.body == good

        await wait_until(served, timeout=15)
        await shows_error(f, lambda error: not error)


async def test_a_verified_copy_carries_its_digest_everywhere(tmp_path: Path) -> None:
    name, good = build_archive(600, compression="zst", seed=4)
    digest = hashlib.sha256(good).hexdigest()
    header = "sha-256=:" + base64.b64encode(bytes.fromhex(digest)).decode() + ":"
    async with fleet(tmp_path, name, good, good) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        [before] = await sources_of(f.public, name)
        assert "sha256" not in before  # nothing verified yet
        # The url key says where this source's copy is, in every mode (proxy mode here:
        # the tracker's own route).
        assert before["url"] == f"{f.public}/v1/{GROUP}/{name}"
        missing = await raw_request(f.public, f"/v1/{GROUP}/{name}.sha256")
        assert missing.status == 404
        fill = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert fill.status == 200 and fill.body == good
        await wait_for(lambda: (f.cache / GROUP / name).exists())
        hit = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        head = await raw_request(f.public, f"/v1/{GROUP}/{name}", method="HEAD")
        ranged = await raw_request(f.public, f"/{name}", headers=[("range", "bytes=0-9")])
        assert hit.header("repr-digest") == header and hit.body == good
        assert head.header("repr-digest") == header
        assert ranged.status == 206 and ranged.header("repr-digest") == header
        line = f"{digest}  {name}\n"
        for path in (f"/v1/{GROUP}/{name}.sha256", f"/v1/{name}.sha256", f"/{name}.sha256"):
            answer = await raw_request(f.public, path)
            assert (answer.status, answer.body.decode()) == (200, line), path
        [after] = await sources_of(f.public, name)
        assert after["sha256"] == digest
        # What sha256sum -c makes of the tracker's line and the bytes it served.
        if shutil.which("sha256sum") is not None:
            (tmp_path / name).write_bytes(hit.body)
            (tmp_path / "SUMS").write_text(line)
            checked = await trio.run_process(
                ["sha256sum", "-c", "SUMS"], cwd=tmp_path, capture_stdout=True, check=False
            )
            assert checked.returncode == 0, checked.stdout


async def test_start_up_trusts_a_digest_file_only_while_it_describes_the_file(
    tmp_path: Path,
) -> None:
    name, good = build_archive(700, compression="zst", seed=5)
    cache = tmp_path / "cache" / GROUP
    async with fleet(tmp_path, name, good, good) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        await raw_request(f.public, f"/v1/{GROUP}/{name}")
        await wait_for(lambda: (cache / f".{name}.sha256").exists())
    # Restarted with the file and its digest untouched: a hit at once, no upstream request.
    async with fleet(tmp_path, name, good, good) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        hit = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert hit.body == good and hit.header("repr-digest") is not None
        assert f.bad.gets(name) == []
    # The archive's bytes changed behind the tracker's back, its mtime set back: the digest
    # file no longer describes it, the file is checked again and, failing, removed.
    path = cache / name
    st = path.stat()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    async with fleet(tmp_path, name, good, good) as f:
        await wait_until(lambda: _rejected(f.internal, 1))  # counted once it is removed
        assert not path.exists()
        await wait_until(lambda: _listed(f.public, name, 1))
        again = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert again.body == good and len(f.bad.gets(name)) == 1  # fetched again


async def test_a_cached_file_without_digest_is_checked_before_it_is_a_hit(
    tmp_path: Path,
) -> None:
    name, good = build_archive(800, compression="lz4", seed=7)
    cache = tmp_path / "cache" / GROUP
    cache.mkdir(parents=True)
    (cache / name).write_bytes(good)  # left by an older version: no digest beside it
    async with fleet(tmp_path, name, good, good) as f:
        await wait_for(lambda: (cache / f".{name}.sha256").exists())
        # the digest file is written before the digest is held: wait for the listing's
        await wait_until(lambda: _digest_listed(f.public, name))
        hit = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert hit.body == good and hit.header("repr-digest") is not None
        assert f.bad.gets(name) == []


async def test_verify_archives_false_stores_opaque_bytes_unchecked(tmp_path: Path) -> None:
    name, good = build_archive(900, compression="zst", seed=8)
    blob = os.urandom(len(good))  # not an archive at all
    async with fleet(tmp_path, name, blob, blob, verify_archives=False) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        fill = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert fill.status == 200 and fill.body == blob
        await wait_for(lambda: (f.cache / GROUP / name).exists())
        hit = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert hit.body == blob and hit.header("repr-digest") is None
        assert not (f.cache / GROUP / f".{name}.sha256").exists()


# --- what the check cannot parse, and checks nobody waits for -----------------------------------


async def test_a_cached_copy_the_check_cannot_parse_is_removed_and_the_tracker_runs(
    tmp_path: Path,
) -> None:
    # A pax size of 5,000 digits (more than Python converts to an int), found at start-up
    # without a digest file: rejected and removed, not a crash at every start.
    name, bad = huge_pax_size_archive(810, compression="zst", seed=9)
    _, good = build_archive(810, compression="zst", seed=9)
    cache = tmp_path / "cache" / GROUP
    cache.mkdir(parents=True)
    (cache / name).write_bytes(bad)
    async with fleet(tmp_path, name, good, good) as f:
        await wait_until(lambda: _rejected(f.internal, 1))  # counted once it is removed
        assert not (cache / name).exists()
        await wait_until(lambda: _listed(f.public, name, 1))
        again = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert again.status == 200 and again.body == good


async def test_a_copy_the_check_cannot_parse_holds_its_source_back(tmp_path: Path) -> None:
    name, bad = huge_pax_size_archive(820, compression="zst", seed=10)
    _, good = build_archive(820, compression="zst", seed=10)
    async with fleet(tmp_path, name, bad, good) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        first = await raw_request(f.public, f"/v1/{GROUP}/{name}", idle=1.0)
        never_complete(first, len(bad))
        again = await raw_request(f.public, f"/v1/{GROUP}/{name}")
        assert again.status == 502 and again.body.decode().startswith(REJECTED)
        assert len(f.bad.gets(name)) == 1  # held back: not asked again
        reason = REJECTED + huge_pax_size_reason(good, "zst")
        await shows_error(f, lambda error: error == reason)
        await left_nothing(f.cache)


def checks_running() -> int:
    """Following checks whose worker thread is still decoding."""
    return sum(t.name == THREAD_NAME for t in threading.enumerate())


async def test_a_client_that_left_leaves_no_check_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 14 KB bz2 archive whose check decodes for ~10 s (the expansion limit raised for the
    # test, as for an archive big enough to be allowed that much): its only client leaves
    # with cache_complete_on_disconnect off, and the check stops with it.
    monkeypatch.setattr(checklimits, "DECODED_FLOOR", 64 << 30)
    name = build_archive(830, compression="bz2", seed=11)[0]
    bomb = _zeros_member_bz2(256 << 20, 830) * 8
    async with fleet(tmp_path, name, bomb, bomb, cache_complete_on_disconnect=False) as f:
        await wait_until(lambda: _listed(f.public, name, 1))
        assert checks_running() == 0
        with trio.move_on_after(1.0):  # reads what comes, then leaves
            await raw_request(f.public, f"/v1/{GROUP}/{name}", idle=5.0)
        assert len(f.bad.gets(name)) == 1
        # decoding all of it: ~10 s; the temp file goes once the check's thread has ended
        await wait_until(lambda: _none_running_nothing_left(f.cache), timeout=2.0)


async def _none_running_nothing_left(cache: Path) -> bool:
    return checks_running() == 0 and leftovers(cache) == []


def _zeros_member_bz2(size: int, slot: int) -> bytes:
    """One bz2 stream: a tar header of a status cache of ``size`` bytes, a valid start of one
    at ``slot`` (all that is read of it), then zeros."""
    import bz2
    import tarfile

    info = tarfile.TarInfo("snapshots/status_cache")
    info.size = size
    compressor = bz2.BZ2Compressor(1)
    zeros = bytes(16 << 20)
    head = info.tobuf(tarfile.GNU_FORMAT) + write_status_cache([slot])
    parts = [compressor.compress(head)]
    parts += [compressor.compress(zeros) for _ in range(size // len(zeros))]
    return b"".join([*parts, compressor.flush()])
