"""What a replica keeps of the shared bucket stays bounded by what the bucket holds
(docs/replicas.md, "What a replica remembers"): what another replica's retention deleted is
forgotten at this one's next listing, side objects left beside a deleted archive are deleted
by retention, and misses do not outlive MISSED_FOR. Over a bucket in memory (the calls the
tier makes, dated by a clock of its own) and trio's mock clock: no waiting."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from helpers_statements import signer
from helpers_uploads import upload
from names import full_name, incremental_name

from tracker.config.schema import ObjectStore
from tracker.errors import StoreConflict
from tracker.objectstore import keys
from tracker.objectstore.known import KNOWN_FOR, MAX_MISSED, MISSED_FOR, Known
from tracker.objectstore.retainer import LIST_AGAIN
from tracker.objectstore.retention import gone, side_expired, stray_sides
from tracker.objectstore.sides import restate
from tracker.objectstore.storeanswers import ObjectInfo
from tracker.objectstore.storehealth import StoreHealth
from tracker.objectstore.tier import CHECK_EVERY, ObjectTier
from tracker.proof.levels import Level, Proof

G = "mainnet"
PREFIX = "p/"


class MemBucket:
    """A bucket in memory: the calls the tier makes, each object dated by ``now`` (the
    store's clock). Keys in ``unlisted`` are not in listings yet (a store whose listings lag
    behind its writes); with ``hold_listing`` set, the next listing is taken, then waits for
    ``release`` (a listing that takes its time)."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[ObjectInfo, bytes]] = {}
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.health = StoreHealth(reads_proven=True)
        self.unlisted: set[str] = set()
        self.hold_listing = False
        self.listing_taken = trio.Event()
        self.release = trio.Event()
        self._parts: dict[str, list[bytes]] = {}
        self._versions = 0

    def on_request_path(self) -> MemBucket:
        return self

    def later(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def names(self) -> set[str]:
        return set(self.objects)

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        found = [
            info
            for key, (info, _body) in sorted(self.objects.items())
            if key.startswith(prefix) and key not in self.unlisted
        ]
        if self.hold_listing:
            self.hold_listing = False
            self.listing_taken.set()
            await self.release.wait()
        return found

    async def put(self, key: str, data: bytes, **_extra: Any) -> None:
        self._versions += 1
        info = ObjectInfo(key, len(data), f"e{self._versions}", self.now)
        self.objects[key] = (info, data)

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    async def tidy(self, key: str) -> None:  # housekeeping's delete: nothing is refused here
        await self.delete(key)

    async def head(self, key: str) -> ObjectInfo | None:
        held = self.objects.get(key)
        return held[0] if held is not None else None

    async def head_dated(self, key: str) -> tuple[ObjectInfo | None, datetime]:
        return await self.head(key), self.now

    async def get_small(self, key: str, limit: int = 4096) -> bytes | None:
        held = self.objects.get(key)
        return held[1][:limit] if held is not None else None

    async def get_small_tagged(self, key: str, limit: int = 4096) -> tuple[bytes, str] | None:
        held = self.objects.get(key)
        return (held[1][:limit], held[0].etag) if held is not None else None

    async def read_first_byte(self, key: str) -> bool:
        return key in self.objects

    async def check(self) -> None:
        pass

    async def create_upload(self, key: str, _metadata: dict[str, str]) -> str:
        self._parts[key] = []
        return key

    async def upload_part(self, _key: str, upload_id: str, _number: int, data: bytes) -> str:
        self._parts[upload_id].append(data)
        return str(len(self._parts[upload_id]))

    async def complete_upload(
        self, key: str, upload_id: str, _etags: list[str], *, if_none_match: bool = False
    ) -> None:
        if if_none_match and key in self.objects:
            raise StoreConflict(f"{key}: an object is there")
        await self.put(key, b"".join(self._parts.pop(upload_id)))

    async def list_uploads(self, _prefix: str) -> list[Any]:
        return []

    async def abort_upload(self, _key: str, upload_id: str) -> None:
        self._parts.pop(upload_id, None)


def store(**overrides: Any) -> ObjectStore:
    settings: dict[str, Any] = {"endpoint": "http://127.0.0.1:9", "bucket": "b", "prefix": PREFIX}
    return ObjectStore(**{**settings, **overrides})


def replica(bucket: MemBucket, **overrides: Any) -> ObjectTier:
    tier = ObjectTier(store(**overrides), bucket)  # type: ignore[arg-type]
    tier.attestations.configure(signer(len(overrides) + 1), 3600.0, time.time())
    return tier


def archives(bucket: MemBucket) -> set[str]:
    return {k for k in bucket.objects if keys.archive_of(PREFIX, k) is not None}


def orphans(bucket: MemBucket) -> list[str]:
    """The side objects in the bucket whose archive is not."""
    return sorted(
        key
        for key in bucket.objects
        if (side := keys.side_of(PREFIX, key)) is not None
        and keys.archive_key(PREFIX, side.group, side.name) not in bucket.objects
    )


def bucket_copies(tier: ObjectTier) -> set[str]:
    """The archive keys of the bucket copies ``tier`` holds digests of."""
    held = tier.digests.held()
    return {keys.archive_key(PREFIX, g, n) for g, n, holder, _v in held if holder == "bucket"}


T0 = 1000.0


@pytest.mark.parametrize(
    ("seen", "listed", "forgotten"),
    [
        # listed: kept, however long ago it was seen
        ({"a": 0.0}, {"a"}, []),
        # not listed, seen long before the listing: gone
        ({"a": 0.0}, set(), ["a"]),
        # not listed, only its digest or URL known: gone
        ({"a": None}, set(), ["a"]),
        # seen (an upload of this replica completed) less than KNOWN_FOR before the
        # listing began: the listing may not show it yet
        ({"a": T0 - KNOWN_FOR + 1}, set(), []),
        ({"a": T0 - KNOWN_FOR}, set(), []),
        ({"a": T0 - KNOWN_FOR - 1}, set(), ["a"]),
        # seen after the listing began (completed while it ran): kept
        ({"a": T0 + 5}, set(), []),
        ({"a": 0.0, "b": None, "c": T0, "d": 0.0}, {"d"}, ["a", "b"]),
    ],
)
def test_what_a_listing_shows_gone(
    seen: dict[str, float | None], listed: set[str], forgotten: list[str]
) -> None:
    assert gone(seen, listed, before=T0 - KNOWN_FOR) == forgotten


INCR = [incremental_name(1000, 1100 + 100 * n) for n in range(6)]
F = full_name(1000)


@pytest.mark.parametrize(
    ("sides", "listed", "keep_previous", "strays"),
    [
        # the archive is there: no stray
        ({"s1": INCR[1]}, {INCR[1], INCR[2]}, 0, []),
        # gone, and older than what is kept: a stray
        ({"s1": INCR[1], "s1b": INCR[1]}, {INCR[2], INCR[3]}, 1, ["s1", "s1b"]),
        # gone but it would be kept (the newest: its upload is under way): no stray
        ({"s5": INCR[5]}, {INCR[2], INCR[3]}, 1, []),
        ({"s3": INCR[3]}, {INCR[2], INCR[4]}, 1, []),
        ({"s3": INCR[3]}, {INCR[2], INCR[4]}, 0, ["s3"]),
        # nothing listed: the newest 1 + keep_previous of the strays' archives are kept
        ({"s1": INCR[1], "s2": INCR[2], "s3": INCR[3]}, set(), 1, ["s1"]),
        # another kind's archive is not ranked here
        ({"sf": F}, {INCR[2]}, 0, []),
        ({}, {INCR[1]}, 0, []),
    ],
)
def test_which_side_objects_are_strays(
    sides: dict[str, str], listed: set[str], keep_previous: int, strays: list[str]
) -> None:
    assert stray_sides(sides, listed, full=False, keep_previous=keep_previous) == strays


@pytest.mark.parametrize(
    ("age", "archive_there", "deleted"),
    [
        (120.0, False, True),
        (60.0, False, True),
        # written less than lock_ttl ago: its upload may be about to complete
        (59.0, False, False),
        # there after all (it landed since the listing)
        (120.0, True, False),
    ],
)
def test_when_a_stray_side_object_goes(age: float, archive_there: bool, deleted: bool) -> None:
    assert side_expired(age, archive_there, settle=60.0) is deleted


async def test_replicas_taking_turns_forget_what_the_others_retention_deleted(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # A's uploads that B's retention deleted stayed in A's memory for good (its Known, its
    # "bucket" digests, its statements), and A wrote their statements back beside the
    # deleted archives each time it signed them again: 199 orphan objects after 600 rounds.
    bucket = MemBucket()
    a, b = replica(bucket, keep_previous=0), replica(bucket, keep_previous=0, lock_ttl=60.0)
    await upload(b, tmp_path, G, F)
    names = [incremental_name(1000, 1000 + 150 * n) for n in range(1, 61)]
    for n, name in enumerate(names):
        await upload(a if n % 3 == 0 else b, tmp_path, G, name)
        mock_clock.jump(60)  # an incremental a minute
        bucket.later(60)
    # A's next listing (its timer's: LIST_AGAIN after its last upload)
    await a.retain(G, full=False)
    there = archives(bucket)
    assert len(there) == 2
    for tier in (a, b):
        assert set(tier.known.seen()) <= there
        assert bucket_copies(tier) <= there
        tier.attestations.sync(time.time())
        uploaded = {keys.archive_key(PREFIX, g, n) for g, n, _s in tier.attestations.uploaded()}
        assert uploaded <= there
        # every statement it holds written again (as the health watcher does when they come
        # due): none beside an archive that is gone
        written = dict(tier._uploaded)
        await restate(bucket, PREFIX, tier.attestations, {}, written)  # type: ignore[arg-type]
    assert orphans(bucket) == []
    assert not a.known._missed and not b.known._missed  # a retired archive is no miss


async def test_an_upload_the_listing_does_not_show_yet_is_not_forgotten(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # Read-after-write: a store's listing may lag behind a completed upload; what this
    # replica just completed stays known (its digest and statement held) until a listing at
    # least KNOWN_FOR later does not show it.
    bucket = MemBucket()
    a = replica(bucket)
    key = a.object_key(G, INCR[1])
    bucket.unlisted.add(key)
    await upload(a, tmp_path, G, INCR[1])  # its own retention's listing does not show it
    mock_clock.jump(KNOWN_FOR - 1)
    await a.retain(G, full=False)
    assert key in a.known.seen() and bucket_copies(a) == {key}
    bucket.unlisted.clear()
    mock_clock.jump(KNOWN_FOR * 10)
    await a.retain(G, full=False)  # shown now: known for good
    assert key in a.known.seen() and bucket_copies(a) == {key}
    await bucket.delete(key)  # another replica's retention
    mock_clock.jump(KNOWN_FOR + 1)
    await a.retain(G, full=False)
    assert key not in a.known.seen() and bucket_copies(a) == set()


async def test_a_listing_begun_before_an_upload_completed_does_not_forget_it(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # The retention timer's listing was taken, then the upload completed (and its own
    # retention ran), then the first listing's answer came, long after: the archive it does
    # not show is newer than it.
    bucket = MemBucket()
    a = replica(bucket)
    key = a.object_key(G, INCR[1])
    bucket.hold_listing = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(a.retain, G, full=False))
        await bucket.listing_taken.wait()
        mock_clock.jump(KNOWN_FOR * 3)
        await upload(a, tmp_path, G, INCR[1])
        mock_clock.jump(KNOWN_FOR * 3)
        bucket.release.set()
    assert a.known.fresh(key) is None  # (seen more than KNOWN_FOR ago)
    assert key in a.known.seen() and bucket_copies(a) == {key}


async def test_a_replica_that_only_reads_lists_again_and_forgets(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # A replica that uploads nothing of a group (another wins every lock) learned of the
    # other's uploads through its lookups (objects, digests) and never ran retention there.
    bucket = MemBucket()
    a, b = replica(bucket, keep_previous=0), replica(bucket, keep_previous=0, lock_ttl=60.0)
    await upload(b, tmp_path, G, INCR[1])
    info = await a.lookup(G, INCR[1])
    assert info is not None and await a.digest(G, INCR[1], info) is not None
    await upload(b, tmp_path, G, INCR[2])  # B's retention deletes INCR[1]
    with trio.move_on_after(LIST_AGAIN + 1):
        await a.retire_when_due()  # the timer task: a listing due LIST_AGAIN after the lookup
    assert a.object_key(G, INCR[1]) not in a.known.seen() and bucket_copies(a) == set()


async def test_start_up_has_retention_delete_side_objects_whose_archive_is_gone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Left by an older version (its restate wrote statements beside archives another
    # replica deleted) or by a write racing a retention: retention lists them and never
    # deleted them (it counts archives only).
    bucket = MemBucket()
    tier = replica(bucket, keep_previous=1, lock_ttl=60.0)

    async def sides_of(group: str, name: str) -> list[str]:
        found = keys.side_keys(PREFIX, group, name)
        for key in found:
            await bucket.put(key, b"x")
        return found

    for name in (F, INCR[2], INCR[3]):
        await bucket.put(tier.object_key(G, name), b"archive")
        await sides_of(G, name)
    old = await sides_of(G, INCR[0])
    # a group whose archives are all gone: only side objects of it are left
    old += await sides_of("testnet", INCR[1])
    await sides_of("testnet", INCR[2])  # the newest two of it: may be uploads under way
    await sides_of("testnet", INCR[3])
    bucket.later(120)
    # written just now: an upload under way (the newest), and a statement written again
    # beside an archive deleted a moment ago (its turn comes at a later retention)
    await sides_of(G, INCR[5])
    await sides_of(G, INCR[1])
    before = bucket.names()
    await tier.startup()
    with trio.move_on_after(1):
        await tier.retire_when_due()  # the start-up's retention, due at once
    assert bucket.names() == before - set(old)


async def test_the_misses_of_retired_archives_do_not_pile_up(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Known._missed gained an entry for every archive retention deleted, for good: 19,998
    # after 20,000 incrementals. Here the others' uploads (this replica never looked them
    # up), each retired by this replica's retention; trio's clock stands still (MISSED_FOR
    # never passes).
    bucket = MemBucket()
    a = replica(bucket, keep_previous=0)
    for n in range(1, 301):
        await bucket.put(a.object_key(G, incremental_name(1000, 1000 + 10 * n)), b"x")
        await a.retain(G, full=False)
    assert len(archives(bucket)) == 1
    assert not a.known._missed  # nothing is missed of what retention itself deleted


async def test_misses_are_dropped_once_no_longer_believed_and_capped(
    mock_clock: trio.testing.MockClock,
) -> None:
    known = Known()
    for n in range(MAX_MISSED + 10):  # at one instant: the oldest dropped past the cap
        known.remember(f"k{n}", None)
    assert len(known._missed) == MAX_MISSED
    assert not known.missed_lately("k0") and known.missed_lately(f"k{MAX_MISSED + 9}")
    for n in range(1000):  # one new name a tenth of MISSED_FOR: only the last ten believed
        mock_clock.jump(MISSED_FOR / 10)
        known.remember(f"n{n}", None)
    assert len(known._missed) <= 11
    assert known.missed_lately("n999") and not known.missed_lately("n900")
    known.remember("n999", ObjectInfo("n999", 1, "e", datetime.now(UTC)))
    assert not known.missed_lately("n999")


# -- another replica's upload of a name this replica uploaded ---------------------------------

OTHER = b"other bytes of the name: another node's compression"


async def replaced_by_another(tmp_path: Path) -> tuple[MemBucket, ObjectTier, ObjectTier]:
    """A uploaded ``INCR[1]``; B's retention deleted it with what lay beside it and B
    uploaded the name again, other bytes (two nodes' archives of one slot and hash differ):
    the bucket, A, B."""
    bucket = MemBucket()
    a, b = replica(bucket), replica(bucket, lock_ttl=60.0)  # each its own key
    await upload(a, tmp_path, G, INCR[1])
    key = a.object_key(G, INCR[1])
    for gone_key in (key, *keys.side_keys(PREFIX, G, INCR[1])):
        await bucket.delete(gone_key)
    await upload(b, tmp_path, G, INCR[1], data=OTHER)
    return bucket, a, b


async def test_a_statement_signed_again_is_never_written_beside_another_upload_of_its_name(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # A signed its upload's statement again (the copy's proof lifted by the cluster's votes)
    # and wrote it over B's: a statement of other bytes beside the object, refused by every
    # replica, and B's own gone until B signed again.
    bucket, a, _b = await replaced_by_another(tmp_path)
    key = a.object_key(G, INCR[1])
    theirs = bucket.objects[key + keys.ATTESTATION_SUFFIX][1]
    held = a.digests.of("bucket", G, INCR[1])
    assert held is not None
    lifted = Proof(Level.CLUSTER, "s", "b", 0.9)
    a.digests.hold("bucket", G, INCR[1], attrs.evolve(held, proof=lifted))
    with trio.move_on_after(CHECK_EVERY / 2):  # one round of the health watcher
        await a.watch()
    assert bucket.objects[key + keys.ATTESTATION_SUFFIX][1] == theirs
    # and A forgets its copy: the next look at the object reads B's digest and statement
    assert bucket_copies(a) == set() and key not in a.known.seen()
    a.attestations.sync(time.time())
    assert a.attestations.uploaded() == []
    info = await a.lookup(G, INCR[1])
    assert info is not None
    assert await a.digest(G, INCR[1], info) == hashlib.sha256(OTHER).hexdigest()


async def test_a_listing_that_shows_another_object_under_a_name_forgets_the_one_known(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # Retention compared names only: A kept its upload's digest, proof and statement (listed,
    # served and signed again) for an object that was B's other bytes.
    _bucket, a, b = await replaced_by_another(tmp_path)
    mock_clock.jump(KNOWN_FOR + 1)
    await a.retain(G, full=False)
    assert bucket_copies(a) == set()
    await b.retain(G, full=False)  # the uploader's own listing keeps what it knows
    assert bucket_copies(b) == {b.object_key(G, INCR[1])}


def info_of(etag: str) -> ObjectInfo:
    return ObjectInfo("k", 1, etag, datetime(2026, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("seen", "summed", "listed", "outdated"),
    [
        # the object seen before the listing began, as listed: current
        (("e1", -1.0), None, "e1", False),
        # the same ETag as a HEAD gives it (quoted) and a listing may (bare, other case)
        (('"AB1"', -1.0), "ab1", '"ab1"', False),
        (('"ab1"', -1.0), None, "AB1", False),
        # another object listed under the key: outdated
        (("e1", -1.0), None, "e2", True),
        (None, "e1", "e2", True),  # only its digest known
        (("e2", -1.0), "e1", "e2", True),  # its digest read of an older object
        # seen since the listing began: newer than the listing, never judged by it
        (("e1", 0.0), "e1", "e2", False),
        (("e1", 5.0), None, "e2", False),
        # nothing known
        (None, None, "e1", False),
    ],
)
async def test_what_a_listing_shows_outdated(
    mock_clock: trio.testing.MockClock,
    seen: tuple[str, float] | None,
    summed: str | None,
    listed: str,
    outdated: bool,
) -> None:
    known = Known()
    listed_at = trio.current_time()
    if seen is not None:
        mock_clock.jump(100)  # seen at listed_at + seen[1]
        known.remember("k", info_of(seen[0]))
        known._objects["k"] = (known._objects["k"][0], listed_at + seen[1])
    if summed is not None:
        known.keep_sum("k", summed, "ab" * 32)
    assert known.outdated("k", listed, listed_at) is outdated
