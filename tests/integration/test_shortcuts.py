"""The short redirects' fast path answers exactly as the Quart routes would (over HTTP).

The tracker serves its public app behind :class:`tracker.web.shortcuts.FastRedirects`; the
same components' Quart app, served on a second listener, is the reference. Every short
route, GET and HEAD, with and without a snapshot, in redirect and proxy mode, with the
``group`` query in its valid, blank, repeated, unknown and malformed forms: status, headers
(but the date) and body are identical, the fast path answered the ones it should, and the
request metrics count both the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from helpers_ports import REFUSED
from helpers_proxy import GROUP, advertise, make_config, proxy_tracker, running_tracker
from helpers_server import serve_app
from helpers_wire import raw_request
from names import full_name, incremental_name

from tracker.config.schema import TargetGroup
from tracker.web.shortcuts import SHORT_NAMES

FULL = full_name(1000)
INCR = incremental_name(1000, 1100)
EMPTY = "empty"

QUERIES = [
    "",
    f"?group={GROUP}",
    "?group=",
    f"?group={GROUP}&group={EMPTY}",
    f"?group={EMPTY}",
    "?group=nobody",
    "?group=..%2F..",
    "?group=a%00b",
    "?other=1",
]


def comparable(wire: object) -> tuple[int, list[tuple[str, str]], bytes]:
    status, headers, body = wire.status, wire.headers, wire.body  # type: ignore[attr-defined]
    return status, [(k.lower(), v) for k, v in headers if k.lower() != "date"], body


async def compare_every_route(ours_base: str, quart_base: str) -> int:
    """Ask every short route of both servers; the number of requests made to each."""
    count = 0
    for short in SHORT_NAMES:
        for path in (f"/v1/{short}", f"/{short}"):
            for query in QUERIES if path.startswith("/v1/") else ["", f"?group={EMPTY}"]:
                for method in ("GET", "HEAD"):
                    target = path + query
                    ours = await raw_request(ours_base, target, method=method, idle=0)
                    theirs = await raw_request(quart_base, target, method=method, idle=0)
                    assert comparable(ours) == comparable(theirs), (method, target)
                    count += 1
    return count


@pytest.mark.parametrize("proxy", [False, True], ids=["redirect", "proxy"])
async def test_the_fast_path_answers_as_quart_does(tmp_path: Path, proxy: bool) -> None:
    config = make_config(
        tmp_path / "cache" if proxy else None,
        proxy_snapshot_downloads=proxy,
        target_groups=(TargetGroup(group=GROUP), TargetGroup(group=EMPTY)),
    )
    async with running_tracker(config) as t, trio.open_nursery() as nursery:
        quart_base = await nursery.start(serve_app, t.parts.app)
        fast = t.parts.public
        answered = await compare_every_route(t.base, quart_base)  # nothing known yet
        files = [(FULL, f"http://{REFUSED}/{FULL}", 1000), (INCR, f"http://{REFUSED}/i", 10)]
        advertise(t.index, f"http://{REFUSED}", files)
        answered += await compare_every_route(t.base, quart_base)
        nursery.cancel_scope.cancel()
    # Quart answered the unknown and malformed groups (3 queries x 4 names x 2 methods, twice).
    assert fast.answered == answered - 2 * 3 * 4 * 2
    # Each request was counted once per server: the fast path's as Quart's would be.
    samples = t.metrics.http_requests.collect()[0].samples
    counted = sum(s.value for s in samples if s.name.endswith("_total"))
    assert counted == 2 * answered


async def test_quart_answers_other_methods(tmp_path: Path) -> None:
    async with proxy_tracker(proxy_snapshot_downloads=False) as t:
        wire = await raw_request(t.base, "/v1/snapshot.tar.bz2", method="POST", idle=0)
        assert wire.status == 405
        assert t.parts.public.answered == 0
