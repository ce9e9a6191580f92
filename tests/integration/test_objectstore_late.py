"""A store that answers late (docs/replicas.md): the hand-out, the lock and its takeover
against a real SeaweedFS behind a relay that holds the requests a test names
(tests/helpers_heldstore.py). What a client waits for stays within ``request_timeout``; no
URL is handed out of an object retention deleted, nor one that outlives retention's hold;
a lock is never left behind by a request that went away. (That a takeover's abort asks the
store within ``request_timeout``: test_objectstore_keeping.py, whose takeover fails on the
request path's bucket.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio
from helpers_bucket import put, tier_of
from helpers_heldstore import Held, HeldStore
from helpers_proxy import GROUP
from helpers_s3 import Weed
from names import full_name

from tracker.objectstore.locks import Lock
from tracker.objectstore.tier import ObjectTier

FULL, NEWER = full_name(9000), full_name(9500)


@asynccontextmanager
async def behind_a_relay(weed: Weed, **store: Any) -> AsyncIterator[tuple[ObjectTier, HeldStore]]:
    """A tier whose store is ``weed`` behind a :class:`HeldStore`, and the relay."""
    relay = HeldStore(weed.endpoint)
    with trio.fail_after(60):  # a request a test waits for that never comes
        async with trio.open_nursery() as nursery:
            base = await nursery.start(relay.serve)
            yield tier_of(weed, endpoint=base, **store), relay
            for held in relay.holds:
                held.release.set()
            nursery.cancel_scope.cancel()


async def handed_out(
    tier: ObjectTier, held: Held, meanwhile: Callable[[], Awaitable[object]]
) -> str | None:
    """What ``tier`` hands out of FULL when ``meanwhile`` runs while the request ``held``
    names is held."""
    urls: list[str | None] = []
    async with trio.open_nursery() as nursery:

        async def hand_out() -> None:
            urls.append(await tier.handout(GROUP, FULL))

        nursery.start_soon(hand_out)
        await held.arrived.wait()
        await meanwhile()
        held.release.set()
    [url] = urls
    return url


def signed_for(url: str) -> int:
    """The seconds a presigned URL was signed to be valid."""
    return int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])


async def test_no_url_of_an_object_a_whole_retention_deleted_meanwhile(weed: Weed) -> None:
    """The hand-out looked at the object, then another replica's retention ran from start to
    end (retiring mark, delete, retiring mark gone) before the hand-out's mark: it found no
    retiring mark and handed out a URL of the deleted object (404 for the client)."""
    async with behind_a_relay(weed, keep_previous=0, request_timeout=10.0) as (a, relay):
        b = tier_of(weed, prefix=a.store.prefix, keep_previous=0)
        put(weed, a.object_key(GROUP, FULL), b"old archive")
        put(weed, a.object_key(GROUP, NEWER), b"newer archive")
        a.bucket.health.reads_proven = True  # as after the health watcher read a byte
        mark = relay.hold(lambda line: line.startswith("PUT") and ".handed/" in line)

        async def meanwhile() -> None:  # it saw the object; its mark is on its way
            await b.retain(GROUP, full=True)  # the other replica's retention, whole
            assert a.object_key(GROUP, FULL) not in weed.objects(a.store.prefix)

        url = await handed_out(a, mark, meanwhile)
    assert url is None


async def test_a_url_signed_after_a_late_answer_ends_within_retention_s_hold(
    weed: Weed,
) -> None:
    """The URL's life was fixed before the mark and the look for a retiring mark, and
    signed after them: an answer within ``request_timeout`` but late made it outlive
    ``mark + direct_serve_ttl``, after which retention deletes the object."""
    ttl, late = 60.0, 3.0
    async with behind_a_relay(weed, direct_serve_ttl=ttl, request_timeout=10.0) as (a, relay):
        put(weed, a.object_key(GROUP, FULL), b"archive")
        a.bucket.health.reads_proven = True
        retiring = relay.hold(lambda line: line.startswith("HEAD") and ".retiring " in line)
        url = await handed_out(a, retiring, partial(trio.sleep, late))  # the answer that late
    assert url is not None
    assert signed_for(url) <= ttl - late


async def test_a_request_gone_while_its_lock_was_taken_leaves_no_lock(weed: Weed) -> None:
    """Cancelled (the client left) while it looked whether the object had landed, the claim
    kept the lock: the other replicas were sent to a holder refreshing nothing for
    ``lock_ttl``."""
    async with behind_a_relay(weed, lock_ttl=60.0, replica_url="http://127.0.0.1:1") as (
        a,
        relay,
    ):
        b = tier_of(weed, prefix=a.store.prefix, lock_ttl=60.0)
        landed = relay.hold(lambda line: line.startswith("HEAD") and line.split()[1].endswith(FULL))
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.claim, GROUP, FULL)
                await landed.arrived.wait()
                scope.cancel()
        landed.release.set()
        got = await b.claim(GROUP, FULL)
    assert isinstance(got, Lock) and not got.took_over
