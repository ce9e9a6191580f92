"""The byte path of proxy mode as a table: docs/http-api.md against tracker/proxy/decisions.py
and the walk that orders them, tracker/proxy/walk.py.

No sockets, no event loop. Each row is one rule of docs/http-api.md ("Archive answers",
"With an object store", "Verified archives") as the decisions a request goes through:
:func:`walk` drives the very walk the streamer performs (:func:`tracker.proxy.walk.next_step`,
tracker/proxy/streamer.py), answering its lookups from the row's facts, every decision
answering the request except those the row says pass (the file turned out not to be there, a
URL could not be signed, a refresh ended).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest

from tracker.core.snapshots import SnapshotFile, SnapshotInfo, parse_archive_name
from tracker.core.text import TRACKER_AGENT
from tracker.ordering.index import SnapshotSource, TargetKey
from tracker.proxy import decisions as plan
from tracker.proxy import walk as walks
from tracker.proxy.decisions import (
    Asked,
    Bucket,
    CacheHit,
    Claim,
    Claimed,
    Copy,
    FromBucket,
    FromHolder,
    JoinBehind,
    JoinShared,
    Miss,
    Mode,
    Now,
    OwnRefresh,
    Redirect,
    Relay,
    Running,
    StartShared,
)

NAME = "snapshot-100-7jMmeXZSNcWPrB2RsTdeXfXrsyW5c1BfPjqoLW2X5T7V.tar.zst"
SIZE = 1000
FIREDANCER = "Firedancer/0.1"

GET = Asked("GET")
HEAD = Asked("HEAD")
RANGE = Asked("GET", range="bytes=0-99")
RANGE_AHEAD = Asked("GET", range="bytes=600-699")
RANGE_AT_EDGE = Asked("GET", range="bytes=500-")
IF_RANGE = Asked("GET", range="bytes=0-99", conditional=True)
IF_NONE_MATCH = Asked("GET", conditional=True)
FROM_FIREDANCER = Asked("GET", user_agent=FIREDANCER)
FROM_REPLICA = Asked("GET", user_agent=TRACKER_AGENT)

CACHE = Mode(serve_user_agents=("Firedancer",))
KEEP = Mode(keep=True)
SHARE = Mode(share=True)
BUCKET = Mode(bucket=Bucket(), serve_user_agents=("Firedancer",))
NO_DIRECT = Mode(bucket=Bucket(direct_serve=False))
DOWN = Mode(bucket=Bucket(usable=False))

BEST = Now(best=True)
OTHER = Now(best=False)
REFRESHING = Now(best=True, refreshing=True)
#: A registered refresh with 500 of its 1000 bytes written.
RUNNING = Now(best=True, running=Running(SIZE, 500), refreshing=True)

Step = object


def walk(
    asked: Asked,
    mode: Mode,
    *,
    copy: Copy = Copy.SERVABLE,
    passes: tuple[type, ...] = (),
    now: Now = BEST,
    after: Now | None = None,
    claim: Claimed = Claimed.LOCK,
    size: int = SIZE,
    promoted: bool = False,
    later: Copy = Copy.SERVABLE,
    relayable: bool = True,
) -> list[Step]:
    """The decisions a request goes through, in order, until one answers: the real walk
    driven with fake lookups. ``passes``: the kinds of decision that cannot answer; ``now``:
    what a miss finds, ``after``: what the fallback finds once a miss's decision passed
    (default: the same); ``promoted``: a refresh read that passed was promoted meanwhile,
    ``later``: the copy on disk then."""
    nows = [now, after or now]
    copies = [copy, later]
    answers: dict[type, walks.Reply] = {
        walks.NeedSize: size,
        walks.NeedPromoted: promoted,
        Claim: claim,
    }
    tried: list[Step] = []
    path, step = walks.next_step(walks.request_walk(asked, mode, relayable=relayable))
    while step is not None:
        reply: walks.Reply
        if isinstance(step, walks.NeedNow):
            reply = nows.pop(0) if len(nows) > 1 else nows[0]
        elif isinstance(step, walks.NeedCopy):
            reply = copies.pop(0) if len(copies) > 1 else copies[0]
        elif type(step) in answers:
            reply = answers[type(step)]
        else:
            reply = type(step) not in passes
        if not isinstance(step, walks.Lookup):
            tried.append(step)  # a decision, or the Claim that takes the lock
        path, step = walks.next_step(path, reply)
    return tried


ROWS = [
    # -- "Archive answers": the disk cache ----------------------------------------------------
    pytest.param(GET, CACHE, {"copy": Copy.NO_CACHE}, [Relay()], id="no cache: relayed"),
    pytest.param(
        GET, CACHE, {"copy": Copy.OUTSIDE}, [Relay()], id="a path out of the cache: relayed"
    ),
    pytest.param(GET, CACHE, {}, [CacheHit()], id="cached: GET from disk"),
    pytest.param(HEAD, CACHE, {}, [CacheHit()], id="cached: HEAD from disk"),
    pytest.param(RANGE, CACHE, {}, [CacheHit()], id="cached: Range from disk"),
    pytest.param(IF_NONE_MATCH, CACHE, {}, [CacheHit()], id="cached: conditional from disk"),
    pytest.param(
        GET,
        CACHE,
        {"passes": (CacheHit,)},
        [CacheHit(), Miss(), OwnRefresh(keep=False, early=SIZE)],
        id="plain GET of the best, not cached: its refresh, read by its client",
    ),
    pytest.param(
        GET,
        KEEP,
        {"passes": (CacheHit,)},
        [CacheHit(), Miss(), OwnRefresh(keep=True, early=SIZE)],
        id="cache_complete_on_disconnect: the refresh outlives its client",
    ),
    pytest.param(
        GET,
        CACHE,
        {"passes": (CacheHit,), "now": OTHER},
        [CacheHit(), Miss(), Relay()],
        id="not the group's best: relayed uncached",
    ),
    pytest.param(
        HEAD,
        CACHE,
        {"passes": (CacheHit,)},
        [CacheHit(), Miss(), Relay()],
        id="HEAD of the best, not cached: relayed",
    ),
    pytest.param(
        IF_NONE_MATCH,
        CACHE,
        {"passes": (CacheHit,)},
        [CacheHit(), Miss(), Relay()],
        id="conditional GET of the best, not cached: relayed (only the source answers it)",
    ),
    pytest.param(
        GET,
        CACHE,
        {"passes": (CacheHit,), "now": REFRESHING},
        [CacheHit(), Miss(), Relay()],
        id="a refresh runs, sharing off: other requests relayed uncached",
    ),
    pytest.param(
        GET,
        CACHE,
        {"passes": (CacheHit, OwnRefresh), "after": REFRESHING},
        [CacheHit(), Miss(), OwnRefresh(keep=False, early=SIZE), Relay()],
        id="a refresh began meanwhile: relayed",
    ),
    pytest.param(
        RANGE,
        CACHE,
        {"passes": (CacheHit,)},
        [CacheHit(), Miss(), Relay(interest=True)],
        id="Range of the best, nothing refreshes it: relayed, a background refresh starts",
    ),
    pytest.param(
        RANGE,
        CACHE,
        {"passes": (CacheHit,), "now": REFRESHING},
        [CacheHit(), Miss(), Relay()],
        id="Range of the best while a client's refresh runs: relayed, no second refresh",
    ),
    pytest.param(
        RANGE,
        CACHE,
        {"passes": (CacheHit,), "now": OTHER},
        [CacheHit(), Miss(), Relay()],
        id="Range of another file: relayed, nothing started",
    ),
    pytest.param(
        RANGE,
        CACHE,
        {"passes": (CacheHit,), "now": RUNNING},
        [CacheHit(), Miss(), JoinBehind()],
        id="Range whose first byte the background refresh wrote: read from its temp file",
    ),
    pytest.param(
        RANGE_AHEAD,
        CACHE,
        {"passes": (CacheHit,), "now": RUNNING},
        [CacheHit(), Miss(), Relay()],
        id="Range ahead of the background refresh: relayed in parallel",
    ),
    pytest.param(
        RANGE_AT_EDGE,
        CACHE,
        {"passes": (CacheHit,), "now": RUNNING},
        [CacheHit(), Miss(), Relay()],
        id="Range from the first byte not written yet: relayed",
    ),
    pytest.param(
        Asked("GET", range="bytes=499-"),
        CACHE,
        {"passes": (CacheHit,), "now": RUNNING},
        [CacheHit(), Miss(), JoinBehind()],
        id="Range from the last byte written: read from the temp file",
    ),
    pytest.param(
        IF_RANGE,
        CACHE,
        {"passes": (CacheHit,), "now": RUNNING},
        [CacheHit(), Miss(), Relay()],
        id="Range with If-Range: relayed, not read from a refresh",
    ),
    pytest.param(
        RANGE,
        CACHE,
        {"passes": (CacheHit, JoinBehind), "now": RUNNING, "after": BEST},
        [CacheHit(), Miss(), JoinBehind(), Relay(interest=True)],
        id="the background refresh ended unread: relayed, interest noted from what is now",
    ),
    # -- "Archive answers": cache_share_inflight -----------------------------------------------
    pytest.param(
        GET,
        SHARE,
        {"passes": (CacheHit,)},
        [CacheHit(), Miss(), StartShared(keep=False, early=SIZE)],
        id="shared: a plain GET of the best starts the refresh others join",
    ),
    pytest.param(
        GET,
        SHARE,
        {"passes": (CacheHit,), "now": RUNNING},
        [CacheHit(), Miss(), JoinShared()],
        id="shared: a GET while it runs reads the same temp file",
    ),
    pytest.param(
        RANGE_AHEAD,
        SHARE,
        {"passes": (CacheHit,), "now": RUNNING},
        [CacheHit(), Miss(), JoinShared()],
        id="shared: a Range GET too, wherever it starts",
    ),
    pytest.param(
        HEAD,
        SHARE,
        {"passes": (CacheHit,), "now": RUNNING},
        [CacheHit(), Miss(), Relay()],
        id="shared: a HEAD is relayed",
    ),
    pytest.param(
        IF_RANGE,
        SHARE,
        {"passes": (CacheHit,), "now": RUNNING},
        [CacheHit(), Miss(), Relay()],
        id="shared: a conditional GET is relayed",
    ),
    pytest.param(
        GET,
        SHARE,
        {"passes": (CacheHit, JoinShared), "now": RUNNING, "after": BEST},
        [CacheHit(), Miss(), JoinShared(), Relay()],
        id="shared: a refresh that ended unread: relayed",
    ),
    pytest.param(
        RANGE,
        SHARE,
        {"passes": (CacheHit,)},
        [CacheHit(), Miss(), Relay(interest=True)],
        id="shared: Range of the best, nothing refreshes it: relayed, a refresh starts",
    ),
    pytest.param(
        GET,
        SHARE,
        {"copy": Copy.UNCHECKED, "passes": (JoinShared,), "now": RUNNING, "promoted": True},
        [Miss(), JoinShared(), CacheHit()],
        id="shared: the refresh was promoted while joining it: a cache hit",
    ),
    pytest.param(
        GET,
        CACHE,
        {"copy": Copy.UNCHECKED, "passes": (OwnRefresh,), "promoted": True},
        [Miss(), OwnRefresh(keep=False, early=SIZE), CacheHit()],
        id="its own refresh promoted before it was read: a cache hit",
    ),
    pytest.param(
        GET,
        SHARE,
        {"passes": (CacheHit, JoinShared), "now": RUNNING, "promoted": True, "after": OTHER},
        [CacheHit(), Miss(), JoinShared(), CacheHit(), Relay()],
        id="shared: promoted, then gone from disk: relayed",
    ),
    pytest.param(
        GET,
        SHARE,
        {"copy": Copy.UNCHECKED, "passes": (JoinShared,), "now": RUNNING, "promoted": False},
        [Miss(), JoinShared(), Relay()],
        id="shared: the refresh failed while joining it: relayed",
    ),
    pytest.param(
        GET,
        SHARE,
        {
            "passes": (JoinShared,),
            "copy": Copy.UNCHECKED,
            "now": RUNNING,
            "promoted": True,
            "later": Copy.UNCHECKED,
        },
        [Miss(), JoinShared(), Relay()],
        id="shared: promoted but its copy not checked yet: relayed",
    ),
    pytest.param(
        RANGE,
        CACHE,
        {"copy": Copy.UNCHECKED, "passes": (JoinBehind,), "now": RUNNING, "promoted": True},
        [Miss(), JoinBehind(), Relay(interest=False)],
        id="a Range behind a background refresh that ended: relayed (no promotion asked)",
    ),
    pytest.param(
        GET,
        SHARE,
        {"passes": (CacheHit,), "now": OTHER},
        [CacheHit(), Miss(), Relay()],
        id="shared: another file is relayed",
    ),
    # -- "With an object store" ----------------------------------------------------------------
    pytest.param(GET, BUCKET, {}, [Redirect()], id="bucket: GET of a stored archive: 303"),
    pytest.param(
        GET,
        BUCKET,
        {"copy": Copy.OUTSIDE},
        [Redirect()],
        id="bucket: the 303 comes before any file system work",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Redirect,)},
        [Redirect(), CacheHit()],
        id="bucket: signing failed (or not there): bytes from the disk cache",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Redirect, CacheHit)},
        [Redirect(), CacheHit(), FromBucket(head=False)],
        id="bucket: not on disk: streamed from the bucket",
    ),
    pytest.param(
        FROM_FIREDANCER,
        BUCKET,
        {},
        [CacheHit()],
        id="bucket: serve_user_agents get bytes from the disk cache",
    ),
    pytest.param(
        FROM_FIREDANCER,
        BUCKET,
        {"passes": (CacheHit,)},
        [CacheHit(), FromBucket(head=False)],
        id="bucket: serve_user_agents, not on disk: streamed from the bucket",
    ),
    pytest.param(
        FROM_REPLICA,
        BUCKET,
        {"passes": (CacheHit,)},
        [CacheHit(), FromBucket(head=False)],
        id="bucket: another tracker gets bytes, never a redirect",
    ),
    pytest.param(
        GET,
        NO_DIRECT,
        {"passes": (CacheHit,)},
        [CacheHit(), FromBucket(head=False)],
        id="bucket: direct_serve false: streamed",
    ),
    pytest.param(
        GET,
        DOWN,
        {"passes": (CacheHit,)},
        [CacheHit(), FromBucket(head=False)],
        id="bucket: the store down: no 303, a known object still streamed",
    ),
    pytest.param(
        HEAD,
        BUCKET,
        {"passes": (CacheHit,)},
        [CacheHit(), FromBucket(head=True)],
        id="bucket: HEAD not on disk: from the object's metadata",
    ),
    pytest.param(
        HEAD,
        DOWN,
        {"passes": (CacheHit,), "now": OTHER},
        [CacheHit(), Miss(), Relay()],
        id="bucket: HEAD, the store down: relayed",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Redirect, CacheHit, FromBucket)},
        [
            Redirect(),
            CacheHit(),
            FromBucket(head=False),
            Miss(),
            Claim(),
            StartShared(True, True, early=SIZE),
        ],
        id="bucket: a miss: the replica with the lock refreshes, uploads, keeps it",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Redirect, CacheHit, FromBucket), "claim": Claimed.HOLDER},
        [Redirect(), CacheHit(), FromBucket(head=False), Miss(), Claim(), FromHolder(SIZE)],
        id="bucket: another replica holds the lock: proxied from its refresh",
    ),
    pytest.param(
        FROM_REPLICA,
        BUCKET,
        {"passes": (CacheHit, FromBucket), "claim": Claimed.HOLDER},
        [CacheHit(), FromBucket(head=False), Miss(), Claim(), Relay()],
        id="bucket: a replica's request is never sent on to a third one",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Redirect, CacheHit, FromBucket), "claim": Claimed.HOLDER, "size": 0},
        [Redirect(), CacheHit(), FromBucket(head=False), Miss(), Claim(), Relay()],
        id="bucket: the size unknown, the holder's answer cannot be checked: relayed",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Redirect, CacheHit, FromBucket, FromHolder), "claim": Claimed.HOLDER},
        [
            Redirect(),
            CacheHit(),
            FromBucket(head=False),
            Miss(),
            Claim(),
            FromHolder(SIZE),
            Relay(),
        ],
        id="bucket: the holder unreachable or not to be followed: relayed",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Redirect, CacheHit, FromBucket), "claim": Claimed.NONE},
        [
            Redirect(),
            CacheHit(),
            FromBucket(head=False),
            Miss(),
            Claim(),
            StartShared(False, early=SIZE),
        ],
        id="bucket: no lock to be had (store down): the disk cache alone",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Redirect, CacheHit, FromBucket), "now": RUNNING},
        [Redirect(), CacheHit(), FromBucket(head=False), Miss(), JoinShared()],
        id="bucket: every request on the refreshing replica reads the growing file",
    ),
    # -- "Verified archives" --------------------------------------------------------------------
    pytest.param(
        GET,
        CACHE,
        {"copy": Copy.UNCHECKED},
        [Miss(), OwnRefresh(keep=False, early=SIZE)],
        id="verified: a copy not checked yet is no hit",
    ),
    pytest.param(
        HEAD,
        CACHE,
        {"copy": Copy.UNCHECKED},
        [Miss(), Relay()],
        id="verified: nor is it for HEAD",
    ),
    pytest.param(
        FROM_FIREDANCER,
        BUCKET,
        {"copy": Copy.UNCHECKED},
        [FromBucket(head=False)],
        id="verified: the bucket's (checked) copy instead of an unchecked one on disk",
    ),
]


@pytest.mark.parametrize(
    ("copy", "passes", "expected"),
    [
        (Copy.SERVABLE, (), [CacheHit()]),
        (Copy.SERVABLE, (CacheHit,), [CacheHit(), Miss(), plan.Gone()]),
        (Copy.NO_CACHE, (), [plan.Gone()]),
    ],
)
def test_a_file_no_source_advertises_is_served_from_its_copy_or_gone(
    copy: Copy, passes: tuple[type, ...], expected: list[Step]
) -> None:
    """Only the tracker holds it (kept incrementals): its copy answers, else 404, never a
    relay from nowhere."""
    other = Now(best=False)
    assert walk(GET, CACHE, copy=copy, passes=passes, now=other, relayable=False) == expected


@pytest.mark.parametrize(("asked", "mode", "facts", "expected"), ROWS)
def test_the_byte_path_of_docs_http_api(
    asked: Asked, mode: Mode, facts: dict[str, object], expected: list[Step]
) -> None:
    assert walk(asked, mode, **facts) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("asked", "plain", "plain_get", "may_join"),
    [
        (GET, True, True, True),
        (HEAD, True, False, False),
        (RANGE, False, False, True),
        (IF_RANGE, False, False, False),
        (IF_NONE_MATCH, False, False, False),
        (Asked("GET", range=""), False, False, True),  # present though empty: not plain
    ],
)
def test_what_a_request_may_do(asked: Asked, plain: bool, plain_get: bool, may_join: bool) -> None:
    assert (asked.plain, asked.plain_get, asked.may_join) == (plain, plain_get, may_join)


@pytest.mark.parametrize(
    ("mode", "shares"),
    [(CACHE, False), (SHARE, True), (BUCKET, True), (DOWN, True), (KEEP, False)],
)
def test_the_bucket_shares_refreshes_whatever_cache_share_inflight_says(
    mode: Mode, shares: bool
) -> None:
    assert mode.shares is shares


# -- helpers: what the index found of a file ---------------------------------------------------


def _found(*sizes: int) -> plan.Found:
    name = parse_archive_name(NAME)
    assert name is not None
    out: plan.Found = []
    for i, size in enumerate(sizes):
        f = SnapshotFile(name=name, file_name=NAME, size=size, url=f"http://127.0.0.{i + 1}/x")
        info = SnapshotInfo(100, 100, name.hash, (f,))
        key = TargetKey("g", f"http://127.0.0.{i + 1}")
        out.append((f, SnapshotSource(info, key, datetime.now(UTC))))
    return out


def _hosts(found: plan.Found) -> list[str]:
    return [source.key.target for _f, source in found]


# -- prefetch ------------------------------------------------------------------------------------


def test_a_prefetch_refreshes_only_a_remote_best_file_not_cached() -> None:
    remote = _found(SIZE)
    local_file = SnapshotFile(
        name=remote[0][0].name, file_name=NAME, size=SIZE, url="", path="/srv/" + NAME
    )
    local = [(local_file, remote[0][1])]
    assert plan.prefetches(True, remote, False)
    assert not plan.prefetches(False, remote, False)  # no longer the best
    assert not plan.prefetches(True, [], False)  # nobody advertises it
    assert not plan.prefetches(True, remote + local, False)  # a local copy: served from it
    assert not plan.prefetches(True, remote, True)  # cached already


def prefetch_walk(
    bucket: bool, facts: walks.Prefetching, in_bucket: bool, claim: Claimed
) -> list[Step]:
    """The steps a prefetch goes through (the real walk, fake lookups): its Claim and its
    StartPrefetch, if any."""
    answers: dict[type, walks.Reply] = {
        walks.NeedFound: facts,
        walks.NeedInBucket: in_bucket,
        Claim: claim,
    }
    tried: list[Step] = []
    path, step = walks.next_step(walks.prefetch_walk(bucket))
    while step is not None:
        if not isinstance(step, walks.Lookup):
            tried.append(step)
        path, step = walks.next_step(path, answers.get(type(step), True))
    return tried


START = plan.StartPrefetch


@pytest.mark.parametrize(
    ("bucket", "best", "cached", "in_bucket", "claim", "expected"),
    [
        pytest.param(False, True, False, False, Claimed.LOCK, [START()], id="refreshed"),
        pytest.param(False, False, False, False, Claimed.LOCK, [], id="not the best: nothing"),
        pytest.param(False, True, True, False, Claimed.LOCK, [], id="cached: nothing"),
        pytest.param(
            True,
            True,
            False,
            False,
            Claimed.LOCK,
            [Claim(), START(locked=True)],
            id="bucket: its lock got: refreshed, uploaded",
        ),
        pytest.param(True, True, False, True, Claimed.LOCK, [], id="bucket: it has the file"),
        pytest.param(
            True,
            True,
            False,
            False,
            Claimed.HOLDER,
            [Claim()],
            id="bucket: another replica refreshes it",
        ),
        pytest.param(
            True,
            True,
            False,
            False,
            Claimed.NONE,
            [Claim(), START(locked=False)],
            id="bucket: no lock to be had: refreshed for the disk cache alone",
        ),
        pytest.param(True, False, False, False, Claimed.LOCK, [], id="bucket: not the best"),
    ],
)
def test_a_prefetch_asks_the_bucket_and_its_lock(
    bucket: bool, best: bool, cached: bool, in_bucket: bool, claim: Claimed, expected: list[Step]
) -> None:
    facts = walks.Prefetching(best, _found(SIZE), cached)
    assert prefetch_walk(bucket, facts, in_bucket, claim) == expected


def test_a_wrong_reply_is_refused() -> None:
    path, step = walks.next_step(walks.request_walk(GET, CACHE))
    assert isinstance(step, walks.NeedCopy)
    with pytest.raises(TypeError, match="Copy"):
        walks.next_step(path, True)


def test_the_plan_needs_no_event_loop_and_no_network() -> None:
    code = (
        "import sys, tracker.proxy.walk, tracker.proxy.decisions; "
        "print(sorted(m for m in ('trio', 'quart', 'httpx', 'httpcore', 'hypercorn') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# -- what a start carries: the executors perform it, they decide nothing --------------------------


@pytest.mark.parametrize(
    ("asked", "mode", "facts", "expected"),
    [
        pytest.param(
            GET,
            CACHE,
            {"passes": (CacheHit,), "size": 0},
            [CacheHit(), Miss(), OwnRefresh(keep=False)],
            id="size unknown: a refresh with no early head",
        ),
        pytest.param(
            GET,
            SHARE,
            {"passes": (CacheHit,), "size": 0},
            [CacheHit(), Miss(), StartShared(keep=False)],
            id="size unknown: a shared refresh with no early head",
        ),
        pytest.param(
            GET,
            BUCKET,
            {"passes": (Redirect, CacheHit, FromBucket), "size": 0},
            [
                Redirect(),
                CacheHit(),
                FromBucket(head=False),
                Miss(),
                Claim(),
                StartShared(True, True),
            ],
            id="size unknown: a locked refresh with no early head",
        ),
    ],
)
def test_a_start_carries_its_early_head(
    asked: Asked, mode: Mode, facts: dict[str, object], expected: list[Step]
) -> None:
    assert walk(asked, mode, **facts) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("asked", "size", "early"),
    [
        (GET, SIZE, SIZE),
        (GET, 0, 0),
        (HEAD, SIZE, SIZE),
        (RANGE, SIZE, 0),
        (IF_NONE_MATCH, SIZE, 0),
    ],
)
def test_an_early_head_promises_the_index_size_to_a_plain_request(
    asked: Asked, size: int, early: int
) -> None:
    assert plan.early_head(asked, size) == early


@pytest.mark.parametrize(
    ("step", "keep", "register", "origin", "client"),
    [
        pytest.param(StartShared(keep=False), False, True, "cache", True, id="shared"),
        pytest.param(StartShared(keep=True, locked=True), True, True, "cache", True, id="locked"),
        pytest.param(OwnRefresh(keep=True), True, False, "upstream", True, id="its own"),
        pytest.param(plan.StartPrefetch(), True, True, "cache", False, id="prefetch"),
    ],
)
def test_a_start_says_how_it_is_performed(
    step: plan.Start, keep: bool, register: bool, origin: str, client: bool
) -> None:
    """Registered for other readers or not, what its starting client's bytes count as, and
    whether a client waits (relayed uncached when the temp file cannot be opened)."""
    assert (step.keep, step.register, step.origin, step.client) == (keep, register, origin, client)


def test_the_walk_state_is_visible() -> None:
    """Each state names its stage and what the stages before learned."""
    path, step = walks.next_step(walks.request_walk(GET, SHARE))
    assert (path.stage, step) == (walks.Stage.COPY, walks.NeedCopy())
    path, step = walks.next_step(path, Copy.UNCHECKED)
    assert (path.stage, step) == (walks.Stage.MISS, Miss())
    path, step = walks.next_step(path, False)
    assert (path.stage, step) == (walks.Stage.ON_MISS, walks.NeedNow(settle=True))
    path, step = walks.next_step(path, BEST)
    assert (path.stage, step, path.decided) == (
        walks.Stage.SIZE,
        walks.NeedSize(),
        StartShared(keep=False),
    )
    path, step = walks.next_step(path, SIZE)
    assert step == path.decided == StartShared(keep=False, early=SIZE)
    path, step = walks.next_step(path, True)
    assert (path.stage, step) == (walks.Stage.DONE, None)
    assert walks.next_step(path, None) == (path, None)
