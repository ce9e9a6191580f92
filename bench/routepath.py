"""The files and classes one proxied request passes (docs/architecture.md, "Following one
relay"): a cache miss (the first GET of the best full: its own refresh, read by its client),
a cache hit (the next GET of it, which re-ranks the group: the miss measured its source),
another hit (the ranking current), and a miss refreshed from three sources at once (a real
archive, ``verify_archives`` on), each run through a real tracker and real upstreams on
127.0.0.1 with ``sys.setprofile`` on from the request to its last body byte. Every function
of ``tracker/`` entered counts its file; every class of ``tracker/`` among the arguments of
such a function counts as a type. What runs while a module is first imported (a lazy import
on the path) is not counted: it happens once per process, not per request.

    .venv/bin/python bench/routepath.py                      # the tracker of this checkout
    PYTHONPATH=/tmp/other .venv/bin/python bench/routepath.py  # another copy of ``tracker``

Prints one JSON object: per request, its files and types, all of them, those of the fenced
packages (``zerocopy``, ``clientwire``, ``h11patches``) and of ``proxy.decisions``, the rest,
and those of proxy/.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(ROOT))  # after PYTHONPATH: another copy of ``tracker`` wins

import httpx  # noqa: E402
import trio  # noqa: E402
from archives import build_archive  # noqa: E402
from helpers_proxy import advertise, proxy_tracker  # noqa: E402
from helpers_upstream import FakeUpstream, serving  # noqa: E402
from names import full_name  # noqa: E402

import tracker  # noqa: E402

PACKAGE = os.path.dirname(tracker.__file__)
Hook = Any


def _importing(frame: FrameType | None) -> bool:
    """True while ``frame`` runs as part of a module of ``tracker/`` being imported (its
    body, its class bodies, what they call)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "<module>" and code.co_filename.startswith(PACKAGE):
            return True
        frame = frame.f_back
    return False


def tracer(files: set[str], types: set[str]) -> Hook:
    """A profile hook adding the files and argument classes of ``tracker/`` calls."""

    def hook(frame: FrameType, event: str, _arg: object) -> None:
        code = frame.f_code
        if event != "call" or not code.co_filename.startswith(PACKAGE):
            return
        if _importing(frame):  # a module imported on first use: no room of the path
            return
        files.add(os.path.relpath(code.co_filename, os.path.dirname(PACKAGE)))
        for value in list(frame.f_locals.values()):
            kind = type(value)
            if (kind.__module__ or "").startswith("tracker."):
                types.add(f"{kind.__module__}.{kind.__qualname__}")

    return hook


#: The packages fenced around library internals (docs/architecture.md, "Packages and their
#: layers"; each assumption in tracker/zerocopy/README.md): the zero-copy server, the download
#: client's transport, h11's patches; and the route's decisions (``proxy.decisions``), one
#: table of pure functions, kept as it is.
FENCED = ("zerocopy", "clientwire", "h11patches")
KEPT = ("tracker/proxy/decisions.py", "tracker.proxy.decisions.")


def summary(files: set[str], types: set[str]) -> dict[str, Any]:
    """The counts of one request: all files and types, those of ``proxy/``, and those
    outside the fenced packages and the decisions (``rest_files``, ``rest_types``)."""
    proxy_files = sorted(f for f in files if f.startswith("tracker/proxy/"))
    proxy_types = sorted(t for t in types if t.startswith("tracker.proxy."))
    fenced_files = {f for f in files if f.split("/")[1] in FENCED}
    fenced_types = {t for t in types if t.split(".")[1] in FENCED}
    kept_files = {f for f in files if f == KEPT[0]}
    kept_types = {t for t in types if t.startswith(KEPT[1])}
    return {
        "files": len(files),
        "types": len(types),
        "fenced_files": len(fenced_files),
        "fenced_types": len(fenced_types),
        "decisions_types": len(kept_types),
        "rest_files": len(files - fenced_files - kept_files),
        "rest_types": len(types - fenced_types - kept_types),
        "proxy_files": proxy_files,
        "proxy_types": proxy_types,
    }


async def traced(client: httpx.AsyncClient, url: str, data: bytes) -> dict[str, Any]:
    """One GET of ``url`` (its body must be ``data``) with the profile hook on."""
    files: set[str] = set()
    types: set[str] = set()
    sys.setprofile(tracer(files, types))
    try:
        answer = await client.get(url)
    finally:
        sys.setprofile(None)
    if answer.status_code != 200 or answer.content != data:
        raise SystemExit(f"{url}: {answer.status_code}")
    return summary(files, types)


async def several_sources(out: dict[str, Any]) -> None:
    """A miss refreshed from three sources: a checked archive (several sources are asked
    only for one), advertised by three upstreams of the same size."""
    name, data = build_archive(9300, accounts=36, account_size=1024 * 1024, seed=3)
    with TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            ups = [
                await stack.enter_async_context(serving(FakeUpstream(files={name: data})))
                for _ in range(3)
            ]
            t = await stack.enter_async_context(
                proxy_tracker(Path(tmp) / "cache", verify_archives=True)
            )
            for age, up in enumerate(ups):
                advertise(t.index, up.base, [(name, up.url(name), len(data))], age=age)
            client = await stack.enter_async_context(httpx.AsyncClient(timeout=30, trust_env=False))
            out["miss_several_sources"] = await traced(client, t.url(name), data)
            asked = sum(1 for up in ups if any(seen.target.endswith(name) for seen in up.seen))
            if asked < 2:
                raise SystemExit(f"several sources: {asked} asked")


async def main() -> None:
    name = full_name(5000)
    data = os.urandom(4 * 1024 * 1024)
    out: dict[str, Any] = {"tracker": PACKAGE}
    with TemporaryDirectory() as tmp:
        async with (
            serving(FakeUpstream(files={name: data})) as upstream,
            proxy_tracker(Path(tmp) / "cache", upstream) as t,
            httpx.AsyncClient(timeout=20, trust_env=False) as client,
        ):
            # The first hit re-ranks the group (the miss's transfer measured its source);
            # the next one finds the ranking current, as most hits do.
            for label in ("miss", "hit", "hit_ranking_current"):
                out[label] = await traced(client, t.url(name), data)
                with trio.fail_after(10):  # promoted, its pump ended: the next GET is a hit
                    while t.cached() != [name] or t.streamer.refreshes():
                        await trio.sleep(0.05)
                await trio.sleep(0.5)  # what ends after the pump (logs, the flowing rates)
    await several_sources(out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    trio.run(main)
