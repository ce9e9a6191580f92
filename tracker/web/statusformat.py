"""The status page's texts: what a source, a client or the network controls made safe as
HTML (:func:`text`), and numbers, times and ages as people read them."""

from __future__ import annotations

import functools
import html
import math
import time

from tracker.observability.redact import redact_text

#: The longest text shown in a cell; longer ones are cut with "…".
MAX_TEXT = 400


def text(value: object) -> str:
    """``value`` as HTML text: URLs masked, unprintable characters escaped, cut to
    :data:`MAX_TEXT` characters, HTML-escaped (quotes too, so it is safe in attributes)."""
    return _shown(value if isinstance(value, str) else str(value))


# Pages show the same names again and again (thousands of targets, every few seconds):
# remembered, a name costs a lookup instead of masking and escaping.
@functools.lru_cache(maxsize=1 << 15)
def _shown(raw: str) -> str:
    shown = redact_text(raw)
    if not shown.isprintable():
        shown = "".join(c if c.isprintable() else _escape_char(c) for c in shown)
    if len(shown) > MAX_TEXT:
        shown = shown[: MAX_TEXT - 1] + "…"
    return html.escape(shown, quote=True)


def _escape_char(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def format_bytes(count: int | float) -> str:
    """``1.5 GiB``; ``—`` for 0 (unknown)."""
    if count <= 0:
        return "—"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_rate(per_second: float) -> str:
    """``12.3 MiB/s``; ``—`` when not measured."""
    return "—" if per_second <= 0 else f"{format_bytes(per_second)}/s"


def format_age(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``; ``unknown`` for None."""
    if seconds is None or math.isnan(seconds):
        return "unknown"
    whole = max(0, int(seconds))
    if whole < 120:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def format_time(unix: float) -> str:
    """``2026-11-21 10:00:00 UTC``."""
    return _second(int(unix))


@functools.lru_cache(maxsize=4096)
def _second(unix: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))


def format_latency(seconds: float | None) -> str:
    """``12 ms``; ``—`` when not measured."""
    return "—" if seconds is None else f"{math.ceil(seconds * 1000)} ms"


def ago(now: float, then: float | None) -> str:
    """``12 min ago`` with the exact time as its tooltip (HTML); ``never`` for None."""
    if then is None:
        return "never"
    return f'<span title="{format_time(then)}">{format_age(now - then)} ago</span>'
