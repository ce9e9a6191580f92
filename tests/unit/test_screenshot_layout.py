"""The status page's screenshot (docs/status-page.png) keeps the layout of the page it shows
(helpers_browser.with_layout: a PNG text chunk), so the browser test can tell when it is
stale; made by that test, it carries one."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from helpers_browser import Dom, layout_of, with_layout

SHIPPED = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)  # 1x1, 8-bit grey
    pixels = zlib.compress(b"\0\0")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_a_layout_kept_in_a_png_reads_back_and_the_png_stays_valid() -> None:
    png = tiny_png()
    assert layout_of(png) is None
    kept = with_layout(png, "Best snapshots\nTargets (N, N not up)")
    assert layout_of(kept) == "Best snapshots\nTargets (N, N not up)"
    at = 8  # every chunk's CRC still holds, IEND last
    kinds = []
    while at < len(kept):
        (length,) = struct.unpack(">I", kept[at : at + 4])
        body = kept[at + 4 : at + 8 + length]
        assert struct.unpack(">I", kept[at + 8 + length : at + 12 + length])[0] == zlib.crc32(body)
        kinds.append(body[:4])
        at += 12 + length
    assert kinds == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]


def test_the_layout_is_the_headings_and_column_heads_without_numbers() -> None:
    dom = Dom(
        "<h1>Tracker</h1><h2>Targets (3, 1 not up)</h2><table><tr><th>health</th>"
        "<th>proven <b>to</b></th></tr><tr><td>up 12</td></tr></table>"
    )
    assert dom.layout == "Tracker\nTargets (N, N not up)\nhealth\nproven to"


def test_the_shipped_screenshot_was_made_by_the_browser_test() -> None:
    assert layout_of(SHIPPED.read_bytes()), (
        "docs/status-page.png keeps no layout: make it with the browser test "
        "(STATUS_PAGE_SCREENSHOT=docs/status-page.png, README.md 'The status page')"
    )
