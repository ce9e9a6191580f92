"""Headless Chromium for tests of the status page (Debian's ``chromium``; tests skip without).

Chromium runs as a subprocess (``trio.run_process``: the tracker under test keeps running in
the same event loop) with a profile of its own, no sandbox (tests run as root in CI), and
nothing that talks to the network by itself: every host name but 127.0.0.1 resolves to
nothing and every other connection goes to a proxy on a closed loopback port, so the browser
reaches only the tracker. JavaScript is off (the profile's content setting): the page must
read without it.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
import trio
from helpers_ports import REFUSED

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)"
)
#: The elements the status page is made of: any other came from a text that was not escaped.
PAGE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "span", "nav",
    "a", "div", "b", "section", "p", "table", "thead", "tbody", "tr", "th", "td", "code",
    "br", "progress",
}  # fmt: skip
#: Longest a browser run may take (start-up on a busy 2-core machine included).
BROWSER_TIMEOUT = 90


def _command(profile: Path, *args: str) -> list[str]:
    assert CHROMIUM is not None
    # Blocked for pages by a content setting: "--blink-settings=scriptEnabled=false" would
    # also stop what --dump-dom and --screenshot run themselves (they then print nothing).
    settings = profile / "Default" / "Preferences"
    if not settings.exists():
        settings.parent.mkdir(parents=True, exist_ok=True)
        blocked = {"profile": {"default_content_setting_values": {"javascript": 2}}}
        settings.write_text(json.dumps(blocked))
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--no-pings",
        f"--proxy-server=http://{REFUSED}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--hide-scrollbars",
        *args,
    ]


async def dump_dom(url: str, profile: Path) -> str:
    """The DOM of ``url`` once loaded, serialized."""
    with trio.fail_after(BROWSER_TIMEOUT):
        done = await trio.run_process(
            _command(profile, "--dump-dom", url),
            capture_stdout=True,
            capture_stderr=True,
        )
    return bytes(done.stdout).decode()


async def screenshot(url: str, path: Path, profile: Path, size: tuple[int, int]) -> None:
    """A PNG of ``url`` at ``size`` (width, height) saved at ``path``."""
    width, height = size
    args = [f"--window-size={width},{height}", f"--screenshot={path}", url]
    with trio.fail_after(BROWSER_TIMEOUT):
        await trio.run_process(_command(profile, *args), capture_stdout=True, capture_stderr=True)
    assert (await trio.Path(path).stat()).st_size > 10_000  # a page, not an empty frame


#: The elements whose text says what a page is made of (its sections and columns).
LAYOUT_TAGS = ("h1", "h2", "th")


class Dom(HTMLParser):
    """A page parsed back: its element names, attributes and text, as a browser sees them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.texts: list[str] = []
        #: The text of each heading and column head (LAYOUT_TAGS), in order.
        self.heads: list[str] = []
        self._head: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(attrs)
        if tag in LAYOUT_TAGS:
            self._head = []

    def handle_endtag(self, tag: str) -> None:
        if tag in LAYOUT_TAGS and self._head is not None:
            self.heads.append(" ".join("".join(self._head).split()))
            self._head = None

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._head is not None:
            self._head.append(data)

    @property
    def layout(self) -> str:
        """What the page is made of whatever it shows: its headings and column heads, one a
        line, numbers as ``N`` (``Targets (3, 1 not up)`` is ``Targets (N, N not up)``)."""
        return "\n".join(
            re.sub(r"(?<![A-Za-z])[0-9]+(?:[,.][0-9]+)*", "N", head) for head in self.heads
        )

    @property
    def text(self) -> str:
        """Every text node joined (what the page reads as)."""
        return "".join(self.texts)


#: The PNG text chunk's keyword under which a screenshot keeps the layout of its page.
LAYOUT_KEYWORD = b"status-page-layout"


def with_layout(png: bytes, layout: str) -> bytes:
    """``png`` with ``layout`` in a ``tEXt`` chunk after its header (PNG: 8 bytes of
    signature, then chunks of length, type, data and the CRC-32 of type and data)."""
    data = LAYOUT_KEYWORD + b"\0" + layout.encode("latin-1")
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + data))
    header_end = 8 + 4 + 4 + 13 + 4  # the signature, then IHDR (13 bytes of data)
    assert png[12:16] == b"IHDR"
    return png[:header_end] + chunk + png[header_end:]


def layout_of(png: bytes) -> str | None:
    """The layout a screenshot made by :func:`with_layout` keeps (None: none)."""
    at = 8
    while at + 8 <= len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        if kind == b"tEXt" and data.startswith(LAYOUT_KEYWORD + b"\0"):
            return data[len(LAYOUT_KEYWORD) + 1 :].decode("latin-1")
        at += 12 + length
    return None
