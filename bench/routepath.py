"""The files and classes one proxied request passes (docs/architecture.md, "Following one
relay"): a cache miss (the first GET of the best full: its own refresh, read by its client)
and a cache hit (the next GET of it), each run through a real tracker and a real upstream on
127.0.0.1 with ``sys.setprofile`` on from the request to its last body byte. Every function
of ``tracker/`` entered counts its file; every class of ``tracker/`` among the arguments of
such a function counts as a type.

    .venv/bin/python bench/routepath.py                      # the tracker of this checkout
    PYTHONPATH=/tmp/other .venv/bin/python bench/routepath.py  # another copy of ``tracker``

Prints one JSON object: per request, its files and types, all of them and those of proxy/.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from tempfile import TemporaryDirectory
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(ROOT))  # after PYTHONPATH: another copy of ``tracker`` wins

import httpx  # noqa: E402
import trio  # noqa: E402
from helpers_proxy import proxy_tracker  # noqa: E402
from helpers_upstream import FakeUpstream, serving  # noqa: E402
from names import full_name  # noqa: E402

import tracker  # noqa: E402

PACKAGE = os.path.dirname(tracker.__file__)
Hook = Any


def tracer(files: set[str], types: set[str]) -> Hook:
    """A profile hook adding the files and argument classes of ``tracker/`` calls."""

    def hook(frame: FrameType, event: str, _arg: object) -> None:
        if event != "call" or not frame.f_code.co_filename.startswith(PACKAGE):
            return
        files.add(os.path.relpath(frame.f_code.co_filename, os.path.dirname(PACKAGE)))
        for value in list(frame.f_locals.values()):
            kind = type(value)
            if (kind.__module__ or "").startswith("tracker."):
                types.add(f"{kind.__module__}.{kind.__qualname__}")

    return hook


def summary(files: set[str], types: set[str]) -> dict[str, Any]:
    proxy_files = sorted(f for f in files if f.startswith("tracker/proxy/"))
    proxy_types = sorted(t for t in types if t.startswith("tracker.proxy."))
    return {
        "files": len(files),
        "types": len(types),
        "proxy_files": proxy_files,
        "proxy_types": proxy_types,
    }


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
            for label in ("miss", "hit"):
                files: set[str] = set()
                types: set[str] = set()
                sys.setprofile(tracer(files, types))
                try:
                    answer = await client.get(t.url(name))
                finally:
                    sys.setprofile(None)
                if answer.status_code != 200 or answer.content != data:
                    raise SystemExit(f"{label}: {answer.status_code}")
                out[label] = summary(files, types)
                with trio.fail_after(10):  # promoted, its pump ended: the next GET is a hit
                    while t.cached() != [name] or t.streamer.refreshes():
                        await trio.sleep(0.05)
                await trio.sleep(0.5)  # what ends after the pump (logs, the flowing rates)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    trio.run(main)
