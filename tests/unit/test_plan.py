"""The byte path of proxy mode as a table: docs/http-api.md against tracker/proxy/decisions.py
and the route that asks them in order, tracker/proxy/streamer.py (:meth:`Route.answer`).

No sockets. Each row is one rule of docs/http-api.md ("Archive answers", "With an object
store", "Verified archives") as the decisions a request goes through: :func:`walk` runs the
very route the streamer runs (:meth:`tracker.proxy.streamer.Route.answer`), its lookups
answered from the row's facts, every decision answering the request except those the row
says pass (the file turned out not to be there, a URL could not be signed, a refresh ended).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import attrs
import pytest
import trio
from names import full_name, incremental_name

from tracker.core.snapshots import SnapshotFile, SnapshotInfo, parse_archive_name
from tracker.core.text import TRACKER_AGENT
from tracker.objectstore.locks import Holder, Lock
from tracker.ordering.index import SnapshotSource, TargetKey
from tracker.proxy import decisions as plan
from tracker.proxy.ask import Ask
from tracker.proxy.decisions import (
    Asked,
    Claimed,
    Copy,
    Decision,
    Mode,
    Now,
    Start,
    Step,
    own_refresh,
    start_shared,
)
from tracker.proxy.refreshing import Refreshes
from tracker.proxy.streamer import Route
from tracker.serving.httpanswer import Answer

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
# wget names its file after the last URL (``--trust-server-names``), a presigned URL's query
# and all: it gets the bytes, never the bucket's 303
FROM_WGET = Asked("GET", user_agent="Wget/1.21.3")

CACHE = Mode(serve_user_agents=("Firedancer",))
KEEP = Mode(keep=True)
SHARE = Mode(share=True)
BUCKET = Mode(bucket=True, serve_user_agents=("Firedancer",))
NO_DIRECT = Mode(bucket=True, direct_serve=False)
DOWN = Mode(bucket=True, store_up=False)
#: trust.require accounts (docs/architecture.md, "The release rule"), unshared and shared.
STRICT = Mode(strict=True)
STRICT_SHARE = Mode(strict=True, share=True)

BEST = Now(best=True)
OTHER = Now(best=False)
REFRESHING = Now(best=True, refreshing=True)
#: A registered refresh with 500 of its 1000 bytes written.
RUNNING = Now(best=True, running=(SIZE, 500), refreshing=True)
#: RUNNING, the archive checked and not passed yet: its ranges' ends are held.
CHECKED_RUNNING = attrs.evolve(RUNNING, ends_held=True)
#: A range that ends on the file's last byte, as aria2c's last segment asks.
RANGE_TO_LAST = Asked("GET", range=f"bytes=100-{SIZE - 1}")

#: What the table lists: a decision, or a holder followed as a source of the index's size.
Tried = Decision | tuple[Step, int]
#: The kinds of decision that pass: a :class:`Step`, or :class:`Start` for any start.
Passing = Step | type[Start]

LOCK = Lock(cast(Any, None), "lock", "me", "http://127.0.0.1:1", "etag")
HOLDER = Holder("other", "http://127.0.0.2:1", 0.0)
CLAIMS: dict[Claimed, Lock | Holder | None] = {"lock": LOCK, "holder": HOLDER, "none": None}


class Table(Route):
    """The route with its lookups answered from a row and its decisions recorded, not
    performed (see :func:`walk`)."""

    def __init__(
        self,
        asked: Asked,
        mode: Mode,
        *,
        facts: dict[str, Any],
        passes: tuple[Passing, ...],
        relayable: bool,
    ) -> None:
        self.ask, self.mode, self.lock, self.read, self.size = Ask(asked, {}), mode, None, None, 0
        self.nows = [facts["now"], facts["after"] or facts["now"]]
        self.copies = [facts["copy"], facts["later"]]
        self.facts, self.passes, self.relayable_ = facts, passes, relayable
        self.tried: list[Tried] = []

    @property
    def relayable(self) -> bool:
        return self.relayable_

    async def copy(self) -> Copy:
        copy: Copy = self.copies.pop(0) if len(self.copies) > 1 else self.copies[0]
        return copy

    def missed(self) -> None:
        self.tried.append(Step.MISS)

    async def now(self, *, settle: bool = False) -> Now:
        # Only the miss waits for another request claiming the lock; the fallback does not.
        assert settle is (self.mode.shares and len(self.nows) > 1)
        now: Now = self.nows.pop(0) if len(self.nows) > 1 else self.nows[0]
        return now

    async def claim(self) -> Claimed:
        self.tried.append(Step.CLAIM)
        self.lock = CLAIMS[self.facts["claim"]]
        return cast(Claimed, self.facts["claim"])

    def index_size(self) -> int:
        self.size = self.facts["size"]
        return self.size

    def promoted(self) -> bool:
        return bool(self.facts["promoted"])

    async def perform(self, decision: Decision) -> Answer | None:
        if decision is Step.GONE:
            self.tried.append(decision)
            return Answer(404, {})
        self.tried.append((decision, self.size) if decision is Step.FROM_HOLDER else decision)
        kind = Start if isinstance(decision, Start) else decision
        return None if kind in self.passes else Answer(200, {})


def walk(
    asked: Asked,
    mode: Mode,
    *,
    copy: Copy = "servable",
    passes: tuple[Passing, ...] = (),
    now: Now = BEST,
    after: Now | None = None,
    claim: Claimed = "lock",
    size: int = SIZE,
    promoted: bool = False,
    later: Copy = "servable",
    relayable: bool = True,
) -> list[Tried]:
    """The decisions a request goes through, in order, until one answers: the real route
    run with fake lookups. ``passes``: the kinds of decision that cannot answer; ``now``:
    what a miss finds, ``after``: what the fallback finds once a miss's decision passed
    (default: the same); ``promoted``: a refresh read that passed was promoted meanwhile,
    ``later``: the copy on disk then."""
    facts = {
        "copy": copy,
        "now": now,
        "after": after,
        "claim": claim,
        "size": size,
        "promoted": promoted,
        "later": later,
    }
    route = Table(asked, mode, facts=facts, passes=passes, relayable=relayable)
    trio.run(route.answer)
    return route.tried


ROWS = [
    # -- "Archive answers": the disk cache ----------------------------------------------------
    pytest.param(GET, CACHE, {"copy": "no_cache"}, [Step.RELAY], id="no cache: relayed"),
    pytest.param(
        GET, CACHE, {"copy": "outside"}, [Step.RELAY], id="a path out of the cache: relayed"
    ),
    pytest.param(GET, CACHE, {}, [Step.CACHE_HIT], id="cached: GET from disk"),
    pytest.param(HEAD, CACHE, {}, [Step.CACHE_HIT], id="cached: HEAD from disk"),
    pytest.param(RANGE, CACHE, {}, [Step.CACHE_HIT], id="cached: Range from disk"),
    pytest.param(IF_NONE_MATCH, CACHE, {}, [Step.CACHE_HIT], id="cached: conditional from disk"),
    pytest.param(
        GET,
        CACHE,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.MISS, own_refresh(keep=False, early=SIZE)],
        id="plain GET of the best, not cached: its refresh, read by its client",
    ),
    pytest.param(
        GET,
        KEEP,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.MISS, own_refresh(keep=True, early=SIZE)],
        id="cache_complete_on_disconnect: the refresh outlives its client",
    ),
    pytest.param(
        GET,
        CACHE,
        {"passes": (Step.CACHE_HIT,), "now": OTHER},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="not the group's best: relayed uncached",
    ),
    pytest.param(
        HEAD,
        CACHE,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="HEAD of the best, not cached: relayed",
    ),
    pytest.param(
        IF_NONE_MATCH,
        CACHE,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="conditional GET of the best, not cached: relayed (only the source answers it)",
    ),
    pytest.param(
        GET,
        CACHE,
        {"passes": (Step.CACHE_HIT,), "now": REFRESHING},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="a refresh runs, sharing off: other requests relayed uncached",
    ),
    pytest.param(
        GET,
        CACHE,
        {"passes": (Step.CACHE_HIT, Start), "after": REFRESHING},
        [Step.CACHE_HIT, Step.MISS, own_refresh(keep=False, early=SIZE), Step.RELAY],
        id="a refresh began meanwhile: relayed",
    ),
    pytest.param(
        RANGE,
        CACHE,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY_INTEREST],
        id="Range of the best, nothing refreshes it: relayed, a background refresh starts",
    ),
    pytest.param(
        RANGE,
        CACHE,
        {"passes": (Step.CACHE_HIT,), "now": REFRESHING},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="Range of the best while a client's refresh runs: relayed, no second refresh",
    ),
    pytest.param(
        RANGE,
        CACHE,
        {"passes": (Step.CACHE_HIT,), "now": OTHER},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="Range of another file: relayed, nothing started",
    ),
    pytest.param(
        RANGE,
        CACHE,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_BEHIND],
        id="Range whose first byte the background refresh wrote: read from its temp file",
    ),
    pytest.param(
        RANGE_AHEAD,
        CACHE,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="Range ahead of the background refresh: relayed in parallel",
    ),
    pytest.param(
        RANGE_AT_EDGE,
        CACHE,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="Range from the first byte not written yet: relayed",
    ),
    pytest.param(
        Asked("GET", range="bytes=499-"),
        CACHE,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_BEHIND],
        id="Range from the last byte written: read from the temp file",
    ),
    pytest.param(
        IF_RANGE,
        CACHE,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="Range with If-Range: relayed, not read from a refresh",
    ),
    pytest.param(
        RANGE,
        CACHE,
        {"passes": (Step.CACHE_HIT, Step.JOIN_BEHIND), "now": RUNNING, "after": BEST},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_BEHIND, Step.RELAY_INTEREST],
        id="the background refresh ended unread: relayed, interest noted from what is now",
    ),
    # -- "Archive answers": cache_share_inflight -----------------------------------------------
    pytest.param(
        GET,
        SHARE,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.MISS, start_shared(keep=False, early=SIZE)],
        id="shared: a plain GET of the best starts the refresh others join",
    ),
    pytest.param(
        GET,
        SHARE,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_SHARED],
        id="shared: a GET while it runs reads the same temp file",
    ),
    pytest.param(
        RANGE_AHEAD,
        SHARE,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_SHARED],
        id="shared: a Range GET too, wherever it starts",
    ),
    pytest.param(
        HEAD,
        SHARE,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="shared: a HEAD is relayed",
    ),
    pytest.param(
        IF_RANGE,
        SHARE,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="shared: a conditional GET is relayed",
    ),
    pytest.param(
        GET,
        SHARE,
        {"passes": (Step.CACHE_HIT, Step.JOIN_SHARED), "now": RUNNING, "after": BEST},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_SHARED, Step.RELAY],
        id="shared: a refresh that ended unread: relayed",
    ),
    pytest.param(
        RANGE,
        SHARE,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY_INTEREST],
        id="shared: Range of the best, nothing refreshes it: relayed, a refresh starts",
    ),
    pytest.param(
        GET,
        SHARE,
        {"copy": "unchecked", "passes": (Step.JOIN_SHARED,), "now": RUNNING, "promoted": True},
        [Step.MISS, Step.JOIN_SHARED, Step.CACHE_HIT],
        id="shared: the refresh was promoted while joining it: a cache hit",
    ),
    pytest.param(
        GET,
        CACHE,
        {"copy": "unchecked", "passes": (Start,), "promoted": True},
        [Step.MISS, own_refresh(keep=False, early=SIZE), Step.CACHE_HIT],
        id="its own refresh promoted before it was read: a cache hit",
    ),
    pytest.param(
        GET,
        SHARE,
        {
            "passes": (Step.CACHE_HIT, Step.JOIN_SHARED),
            "now": RUNNING,
            "promoted": True,
            "after": OTHER,
        },
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_SHARED, Step.CACHE_HIT, Step.RELAY],
        id="shared: promoted, then gone from disk: relayed",
    ),
    pytest.param(
        GET,
        SHARE,
        {"copy": "unchecked", "passes": (Step.JOIN_SHARED,), "now": RUNNING, "promoted": False},
        [Step.MISS, Step.JOIN_SHARED, Step.RELAY],
        id="shared: the refresh failed while joining it: relayed",
    ),
    pytest.param(
        GET,
        SHARE,
        {
            "passes": (Step.JOIN_SHARED,),
            "copy": "unchecked",
            "now": RUNNING,
            "promoted": True,
            "later": "unchecked",
        },
        [Step.MISS, Step.JOIN_SHARED, Step.RELAY],
        id="shared: promoted but its copy not checked yet: relayed",
    ),
    pytest.param(
        RANGE,
        CACHE,
        {"copy": "unchecked", "passes": (Step.JOIN_BEHIND,), "now": RUNNING, "promoted": True},
        [Step.MISS, Step.JOIN_BEHIND, Step.RELAY],
        id="a Range behind a background refresh that ended: relayed (no promotion asked)",
    ),
    pytest.param(
        GET,
        SHARE,
        {"passes": (Step.CACHE_HIT,), "now": OTHER},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="shared: another file is relayed",
    ),
    # -- "The release rule": ranges of a checked refresh -----------------------------------------
    pytest.param(
        RANGE,
        CACHE,
        {"passes": (Step.CACHE_HIT,), "now": CHECKED_RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="checked: a Range behind the refresh that ends before the file's: relayed",
    ),
    pytest.param(
        Asked("GET", range="bytes=499-"),
        CACHE,
        {"passes": (Step.CACHE_HIT,), "now": CHECKED_RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_BEHIND],
        id="checked: a Range behind the refresh to the file's end: read from the temp file",
    ),
    pytest.param(
        RANGE_TO_LAST,
        CACHE,
        {"passes": (Step.CACHE_HIT,), "now": CHECKED_RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_BEHIND],
        id="checked: a closed Range to the file's last byte: read from the temp file",
    ),
    pytest.param(
        RANGE,
        SHARE,
        {"passes": (Step.CACHE_HIT,), "now": CHECKED_RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="checked, shared: a Range that ends before the file's: relayed",
    ),
    pytest.param(
        RANGE_AT_EDGE,
        SHARE,
        {"passes": (Step.CACHE_HIT,), "now": CHECKED_RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_SHARED],
        id="checked, shared: a Range to the file's end reads the refresh",
    ),
    pytest.param(
        GET,
        SHARE,
        {"passes": (Step.CACHE_HIT,), "now": CHECKED_RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_SHARED],
        id="checked, shared: a plain GET reads the refresh",
    ),
    pytest.param(
        RANGE,
        STRICT,
        {"passes": (Step.CACHE_HIT,), "now": attrs.evolve(CHECKED_RUNNING, best=False)},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_BEHIND],
        id="accounts: a Range of another file during its refresh reads it, never relayed",
    ),
    # -- "The release rule": trust.require accounts --------------------------------------------
    pytest.param(
        RANGE,
        STRICT,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.CHECKING],
        id="accounts: a Range during the refresh: 503 until checked, never unchecked bytes",
    ),
    pytest.param(
        RANGE_AHEAD,
        STRICT,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.CHECKING],
        id="accounts: a Range ahead of the refresh: 503, never relayed",
    ),
    pytest.param(
        RANGE,
        STRICT,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.MISS, Step.CHECKING],
        id="accounts: a Range of the best nothing refreshes: 503 (a refresh started)",
    ),
    pytest.param(
        RANGE,
        STRICT_SHARE,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.CHECKING],
        id="accounts, shared: a Range during the refresh: 503 until checked",
    ),
    pytest.param(
        RANGE, STRICT, {}, [Step.CACHE_HIT], id="accounts: a checked copy: Range from disk"
    ),
    pytest.param(
        GET,
        STRICT,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_BEHIND],
        id="accounts: a GET while a client's refresh runs reads it, never the source's stream",
    ),
    pytest.param(
        GET,
        STRICT,
        {"passes": (Step.CACHE_HIT, Step.JOIN_BEHIND), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.JOIN_BEHIND, Step.JOIN_BEHIND],
        id="accounts: the refresh ended unread: read again, then a 503, never relayed",
    ),
    pytest.param(
        GET,
        STRICT,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.MISS, own_refresh(keep=False, early=SIZE)],
        id="accounts: a plain GET of the best nothing refreshes starts its refresh",
    ),
    pytest.param(
        IF_RANGE,
        STRICT,
        {"passes": (Step.CACHE_HIT,), "now": RUNNING},
        [Step.CACHE_HIT, Step.MISS, Step.CHECKING],
        id="accounts: If-Range during the refresh: 503, never a source's 206",
    ),
    pytest.param(
        RANGE,
        STRICT,
        {"passes": (Step.CACHE_HIT,), "now": OTHER},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="accounts: a Range of another file: relayed, nothing started",
    ),
    # -- "With an object store" ----------------------------------------------------------------
    pytest.param(GET, BUCKET, {}, [Step.REDIRECT], id="bucket: GET of a stored archive: 303"),
    pytest.param(
        GET,
        BUCKET,
        {"copy": "outside"},
        [Step.REDIRECT],
        id="bucket: the 303 comes before any file system work",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Step.REDIRECT,)},
        [Step.REDIRECT, Step.CACHE_HIT],
        id="bucket: signing failed (or not there): bytes from the disk cache",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Step.REDIRECT, Step.CACHE_HIT)},
        [Step.REDIRECT, Step.CACHE_HIT, Step.FROM_BUCKET],
        id="bucket: not on disk: streamed from the bucket",
    ),
    pytest.param(
        FROM_FIREDANCER,
        BUCKET,
        {},
        [Step.CACHE_HIT],
        id="bucket: serve_user_agents get bytes from the disk cache",
    ),
    pytest.param(
        FROM_WGET,
        BUCKET,
        {},
        [Step.CACHE_HIT],
        id="bucket: wget, naming its file after the URL, gets bytes from the disk cache",
    ),
    pytest.param(
        FROM_FIREDANCER,
        BUCKET,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.FROM_BUCKET],
        id="bucket: serve_user_agents, not on disk: streamed from the bucket",
    ),
    pytest.param(
        FROM_REPLICA,
        BUCKET,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.FROM_BUCKET],
        id="bucket: another tracker gets bytes, never a redirect",
    ),
    pytest.param(
        GET,
        NO_DIRECT,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.FROM_BUCKET],
        id="bucket: direct_serve false: streamed",
    ),
    pytest.param(
        GET,
        DOWN,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.FROM_BUCKET],
        id="bucket: the store down: no 303, a known object still streamed",
    ),
    pytest.param(
        HEAD,
        BUCKET,
        {"passes": (Step.CACHE_HIT,)},
        [Step.CACHE_HIT, Step.FROM_BUCKET],
        id="bucket: HEAD not on disk: from the object's metadata",
    ),
    pytest.param(
        HEAD,
        DOWN,
        {"passes": (Step.CACHE_HIT,), "now": OTHER},
        [Step.CACHE_HIT, Step.MISS, Step.RELAY],
        id="bucket: HEAD, the store down: relayed",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Step.REDIRECT, Step.CACHE_HIT, Step.FROM_BUCKET)},
        [
            Step.REDIRECT,
            Step.CACHE_HIT,
            Step.FROM_BUCKET,
            Step.MISS,
            Step.CLAIM,
            start_shared(True, True, early=SIZE),
        ],
        id="bucket: a miss: the replica with the lock refreshes, uploads, keeps it",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Step.REDIRECT, Step.CACHE_HIT, Step.FROM_BUCKET), "claim": "holder"},
        [
            Step.REDIRECT,
            Step.CACHE_HIT,
            Step.FROM_BUCKET,
            Step.MISS,
            Step.CLAIM,
            (Step.FROM_HOLDER, SIZE),
        ],
        id="bucket: another replica holds the lock: proxied from its refresh",
    ),
    pytest.param(
        FROM_REPLICA,
        BUCKET,
        {"passes": (Step.CACHE_HIT, Step.FROM_BUCKET), "claim": "holder"},
        [Step.CACHE_HIT, Step.FROM_BUCKET, Step.MISS, Step.CLAIM, Step.RELAY],
        id="bucket: a replica's request is never sent on to a third one",
    ),
    pytest.param(
        GET,
        BUCKET,
        {
            "passes": (Step.REDIRECT, Step.CACHE_HIT, Step.FROM_BUCKET),
            "claim": "holder",
            "size": 0,
        },
        [Step.REDIRECT, Step.CACHE_HIT, Step.FROM_BUCKET, Step.MISS, Step.CLAIM, Step.RELAY],
        id="bucket: the size unknown, the holder's answer cannot be checked: relayed",
    ),
    pytest.param(
        GET,
        BUCKET,
        {
            "passes": (Step.REDIRECT, Step.CACHE_HIT, Step.FROM_BUCKET, Step.FROM_HOLDER),
            "claim": "holder",
        },
        [
            Step.REDIRECT,
            Step.CACHE_HIT,
            Step.FROM_BUCKET,
            Step.MISS,
            Step.CLAIM,
            (Step.FROM_HOLDER, SIZE),
            Step.RELAY,
        ],
        id="bucket: the holder unreachable or not to be followed: relayed",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Step.REDIRECT, Step.CACHE_HIT, Step.FROM_BUCKET), "claim": "none"},
        [
            Step.REDIRECT,
            Step.CACHE_HIT,
            Step.FROM_BUCKET,
            Step.MISS,
            Step.CLAIM,
            start_shared(False, early=SIZE),
        ],
        id="bucket: no lock to be had (store down): the disk cache alone",
    ),
    pytest.param(
        GET,
        BUCKET,
        {"passes": (Step.REDIRECT, Step.CACHE_HIT, Step.FROM_BUCKET), "now": RUNNING},
        [Step.REDIRECT, Step.CACHE_HIT, Step.FROM_BUCKET, Step.MISS, Step.JOIN_SHARED],
        id="bucket: every request on the refreshing replica reads the growing file",
    ),
    # -- "Verified archives" --------------------------------------------------------------------
    pytest.param(
        GET,
        CACHE,
        {"copy": "unchecked"},
        [Step.MISS, own_refresh(keep=False, early=SIZE)],
        id="verified: a copy not checked yet is no hit",
    ),
    pytest.param(
        HEAD,
        CACHE,
        {"copy": "unchecked"},
        [Step.MISS, Step.RELAY],
        id="verified: nor is it for HEAD",
    ),
    pytest.param(
        FROM_FIREDANCER,
        BUCKET,
        {"copy": "unchecked"},
        [Step.FROM_BUCKET],
        id="verified: the bucket's (checked) copy instead of an unchecked one on disk",
    ),
]


@pytest.mark.parametrize(
    ("copy", "passes", "expected"),
    [
        ("servable", (), [Step.CACHE_HIT]),
        ("servable", (Step.CACHE_HIT,), [Step.CACHE_HIT, Step.MISS, Step.GONE]),
        ("no_cache", (), [Step.GONE]),
    ],
)
def test_a_file_no_source_advertises_is_served_from_its_copy_or_gone(
    copy: Copy, passes: tuple[Passing, ...], expected: list[Tried]
) -> None:
    """Only the tracker holds it (kept incrementals): its copy answers, else 404, never a
    relay from nowhere."""
    other = Now(best=False)
    assert walk(GET, CACHE, copy=copy, passes=passes, now=other, relayable=False) == expected


@pytest.mark.parametrize(("asked", "mode", "facts", "expected"), ROWS)
def test_the_byte_path_of_docs_http_api(
    asked: Asked, mode: Mode, facts: dict[str, object], expected: list[Tried]
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


_F100, _F200 = full_name(100), full_name(200)
_I150, _I180, _I250 = (
    incremental_name(100, 150),
    incremental_name(100, 180),
    incremental_name(200, 250),
)


@pytest.mark.parametrize(
    ("name", "listed", "best", "stopped"),
    [
        (_F100, False, [], False),  # unlisted for a round: its only source's scrape failed
        (_F200, False, [_F100], False),  # its source missed a round, an older full listed
        (_F200, True, [_F100], True),  # listed, outranked by an older full (time to running)
        (_F100, False, [_F200], True),  # a newer full is the best
        (_F100, False, [_F200, _I250], True),
        (_I180, False, [_F100], False),  # its full still the best, no incremental this round
        (_I180, False, [_F100, _I150], False),  # an older incremental best for a round
        (_I180, True, [_F100, _I150], True),  # listed and outranked
        (_I150, False, [_F100, _I180], True),  # a newer incremental on the same full
        (_I150, False, [_F200], True),  # a newer full: the incremental is on an old base
        ("not-an-archive", False, [], True),
    ],
)
def test_a_prefetch_is_stopped_when_outranked_or_superseded_not_when_unlisted(
    name: str, listed: bool, best: list[str], stopped: bool
) -> None:
    assert plan.prefetch_stopped(name, listed, best) is stopped


class Prefetching(Refreshes):
    """The prefetch's order (:meth:`Refreshes.prefetch`) with fake lookups: its claim and
    its start recorded, not performed."""

    def __init__(
        self, bucket: bool, best: bool, cached: bool, in_bucket: bool, claim: Claimed
    ) -> None:
        found = _found(SIZE)
        index = SimpleNamespace(find_file=lambda group, name: found)
        launcher = SimpleNamespace(is_best=lambda group, name: best, index=index)

        async def lookup(group: str, name: str) -> object:
            return object() if in_bucket else None

        objects = SimpleNamespace(tier=SimpleNamespace(lookup=lookup)) if bucket else None
        super().__init__(cast(Any, launcher), cast(Any, objects))

        async def has_copy(group: str, name: str) -> bool:
            return cached

        self.cache = SimpleNamespace(root="/cache", has_copy=has_copy)
        self.claimed = claim
        self.tried: list[Tried] = []

    async def claim(self, key: tuple[str, str, str]) -> Lock | Holder | None:
        self.tried.append(Step.CLAIM)
        return CLAIMS[self.claimed]

    async def start(self, group: Any, archive: Any, cache: Any, step: Start, lock: Any) -> None:
        assert (lock is not None) is step.locked
        self.tried.append(step)


def prefetch_walk(
    bucket: bool, best: bool, cached: bool, in_bucket: bool, claim: Claimed
) -> list[Tried]:
    """The steps a prefetch goes through (the real order, fake lookups): its claim and its
    start, if any."""
    prefetch = Prefetching(bucket, best, cached, in_bucket, claim)
    group, archive = SimpleNamespace(group="g"), parse_archive_name(NAME)
    assert archive is not None
    trio.run(prefetch.prefetch, cast(Any, group), cast(Any, prefetch.cache), archive)
    return prefetch.tried


START = plan.start_prefetch


@pytest.mark.parametrize(
    ("bucket", "best", "cached", "in_bucket", "claim", "expected"),
    [
        pytest.param(False, True, False, False, "lock", [START()], id="refreshed"),
        pytest.param(False, False, False, False, "lock", [], id="not the best: nothing"),
        pytest.param(False, True, True, False, "lock", [], id="cached: nothing"),
        pytest.param(
            True,
            True,
            False,
            False,
            "lock",
            [Step.CLAIM, START(locked=True)],
            id="bucket: its lock got: refreshed, uploaded",
        ),
        pytest.param(True, True, False, True, "lock", [], id="bucket: it has the file"),
        pytest.param(
            True,
            True,
            False,
            False,
            "holder",
            [Step.CLAIM],
            id="bucket: another replica refreshes it",
        ),
        pytest.param(
            True,
            True,
            False,
            False,
            "none",
            [Step.CLAIM, START(locked=False)],
            id="bucket: no lock to be had: refreshed for the disk cache alone",
        ),
        pytest.param(True, False, False, False, "lock", [], id="bucket: not the best"),
    ],
)
def test_a_prefetch_asks_the_bucket_and_its_lock(
    bucket: bool, best: bool, cached: bool, in_bucket: bool, claim: Claimed, expected: list[Tried]
) -> None:
    assert prefetch_walk(bucket, best, cached, in_bucket, claim) == expected


@pytest.mark.parametrize(
    ("asked", "mode", "step"),
    [
        (GET, BUCKET, Step.REDIRECT),  # a client that follows redirects: the bucket's 303
        (FROM_FIREDANCER, BUCKET, Step.FROM_BUCKET),  # one served the bytes: streamed
        (FROM_WGET, BUCKET, Step.FROM_BUCKET),  # one naming its file after the URL too
        (HEAD, BUCKET, Step.FROM_BUCKET),  # the object's metadata
    ],
)
def test_an_object_that_landed_as_its_lock_came_free_answers(
    asked: Asked, mode: Mode, step: Step
) -> None:
    # The lock was free because the replica that held it completed its upload, after this
    # request's lookup missed (a miss is remembered a second): the request pulled the file
    # from its source again and replaced the complete object (tests/integration/
    # test_replicas.py::test_a_lock_that_came_free_with_its_upload_done_pulls_nothing).
    assert plan.claimed(asked, mode, "stored", SIZE) is step


def test_the_plan_needs_no_event_loop_and_no_network() -> None:
    code = (
        "import sys, tracker.proxy.decisions; "
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
            {"passes": (Step.CACHE_HIT,), "size": 0},
            [Step.CACHE_HIT, Step.MISS, own_refresh(keep=False)],
            id="size unknown: a refresh with no early head",
        ),
        pytest.param(
            GET,
            SHARE,
            {"passes": (Step.CACHE_HIT,), "size": 0},
            [Step.CACHE_HIT, Step.MISS, start_shared(keep=False)],
            id="size unknown: a shared refresh with no early head",
        ),
        pytest.param(
            GET,
            BUCKET,
            {"passes": (Step.REDIRECT, Step.CACHE_HIT, Step.FROM_BUCKET), "size": 0},
            [
                Step.REDIRECT,
                Step.CACHE_HIT,
                Step.FROM_BUCKET,
                Step.MISS,
                Step.CLAIM,
                start_shared(True, True),
            ],
            id="size unknown: a locked refresh with no early head",
        ),
    ],
)
def test_a_start_carries_its_early_head(
    asked: Asked, mode: Mode, facts: dict[str, object], expected: list[Tried]
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
        pytest.param(start_shared(keep=False), False, True, "cache", True, id="shared"),
        pytest.param(start_shared(keep=True, locked=True), True, True, "cache", True, id="locked"),
        pytest.param(own_refresh(keep=True), True, False, "upstream", True, id="its own"),
        pytest.param(plan.start_prefetch(), True, True, "cache", False, id="prefetch"),
    ],
)
def test_a_start_says_how_it_is_performed(
    step: plan.Start, keep: bool, register: bool, origin: str, client: bool
) -> None:
    """Registered for other readers or not, what its starting client's bytes count as, and
    whether a client waits (relayed uncached when the temp file cannot be opened)."""
    assert (step.keep, step.register, step.origin, step.client) == (keep, register, origin, client)
