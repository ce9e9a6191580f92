"""The status page of the internal listener (``GET /``): a plain value rendered as HTML.

:class:`StatusView` holds everything the page shows, as plain values gathered from the
running tracker (:mod:`tracker.web.statusgather`); :func:`render_status` turns it into one
self-contained HTML document: no external assets, no script (it refreshes itself with a
``<meta http-equiv="refresh">``), readable in any browser and in ``curl``.

Every text a source, a client or the network controls (archive and target names, errors,
URLs, log fields) goes through :func:`text`: URLs are masked as in every public output
(:func:`tracker.core.redact.redact_text`: userinfo and query become ``***``), characters
that do not print (controls, bidi overrides) are shown as ``\\xNN`` / ``\\uNNNN`` escapes,
and the result is HTML-escaped, quotes included. The response also carries a
``content-security-policy`` that allows no script at all, so a text that escaped all this
still could not run.
"""

from __future__ import annotations

import functools
import html
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NamedTuple

import attrs

from tracker.cache.store import RefreshProgress
from tracker.core.logs import RecentEvent
from tracker.core.redact import redact_text

#: Headers of the page: no script, no outside resource, not cached, not framed elsewhere.
PAGE_HEADERS = {
    "content-type": "text/html; charset=utf-8",
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
#: Seconds between two refreshes of the page by default; ``?refresh=0`` turns it off.
DEFAULT_REFRESH = 10
MAX_REFRESH = 3600
#: A slot lasts about this long (Solana's target): the age of an archive whose file time
#: nobody reported is estimated from its age in slots.
SLOT_SECONDS = 0.4
#: The longest text shown in a cell; longer ones are cut with "…".
MAX_TEXT = 400

Health = Literal["up", "down", "unknown", "blocked"]


@attrs.frozen
class BestView:
    """A group's best full or incremental archive."""

    kind: Literal["full", "incremental"]
    name: str
    slot: int
    #: Slots behind the cluster's current slot (None: no ``rpc``, or it did not answer).
    age_slots: int | None
    #: Seconds since the archive's file time (None: unknown); ``estimated`` when derived
    #: from ``age_slots`` instead.
    age_seconds: float | None
    estimated: bool
    size: int  # 0: unknown
    sources: int
    sha256: str | None


@attrs.frozen
class GroupView:
    """One target group: its targets' health and its best archives (None: none yet)."""

    name: str
    targets: int
    up: int
    full: BestView | None
    incremental: BestView | None


class TargetView(NamedTuple):
    """One target as ``/v1/targets`` shows it, plus its measured throughput.

    A named tuple, not an attrs class: thousands are made, hashed (remembered rows) and
    sorted for every page, and a tuple does that in C.
    """

    group: str
    target: str
    kind: str
    discovered: bool
    health: Health
    last_error: str
    latency: float | None  # seconds of the last probe
    throughput: float  # bytes per second measured on transfers; 0: not measured
    last_scrape: float | None  # Unix time
    snapshots: int


@attrs.frozen
class CachedView:
    """A complete archive in the disk cache."""

    group: str
    name: str
    size: int
    mtime: float
    sha256: str | None


@attrs.frozen
class CacheView:
    """The disk cache: its directory, complete files and refreshes in flight."""

    directory: str
    files: tuple[CachedView, ...]
    refreshes: tuple[RefreshProgress, ...]


@attrs.frozen
class BucketView:
    """The shared bucket as this replica sees it (``/v1/store``)."""

    endpoint: str
    bucket: str
    prefix: str
    up: bool
    last_error: str
    objects_known: int
    uploads_running: int


@attrs.frozen
class StatusView:
    """Everything the status page shows, gathered at ``now`` (Unix time)."""

    version: str
    now: float
    mode: str
    groups: tuple[GroupView, ...]
    targets: tuple[TargetView, ...]
    #: None: no disk cache configured.
    cache: CacheView | None
    #: None: no bucket configured.
    bucket: BucketView | None
    rejected: tuple[RecentEvent, ...] = ()
    failovers: tuple[RecentEvent, ...] = ()
    refresh: int = DEFAULT_REFRESH


# -- texts -----------------------------------------------------------------------------------


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


def _ago(now: float, then: float | None) -> str:
    if then is None:
        return "never"
    return f'<span title="{format_time(then)}">{format_age(now - then)} ago</span>'


# -- decisions -------------------------------------------------------------------------------

_HEALTH_ORDER = {"down": 0, "blocked": 1, "unknown": 2, "up": 3}


def target_order(target: TargetView) -> tuple[int, str, str]:
    """Unhealthy first (down, blocked, unknown, then up), then by group and target."""
    return (_HEALTH_ORDER.get(target.health, 0), target.group, target.target)


def parse_refresh(raw: str | None) -> int:
    """The ``refresh`` query parameter: seconds between reloads, 0 for none. Raises
    ValueError for anything but a whole number from 0 to :data:`MAX_REFRESH`."""
    if raw is None:
        return DEFAULT_REFRESH
    # Only ASCII digits: "²".isdigit() is True and int() refuses it.
    if not raw or len(raw) > 5 or not all("0" <= c <= "9" for c in raw):
        raise ValueError("refresh must be a whole number of seconds")
    seconds = int(raw)
    if seconds > MAX_REFRESH:
        raise ValueError(f"refresh must be at most {MAX_REFRESH} seconds")
    return seconds


def refresh_percent(progress: RefreshProgress) -> float | None:
    """How much of a refresh is written, in percent (None until its size is known)."""
    if progress.size <= 0:
        return None
    return min(100.0, 100.0 * progress.written / progress.size)


def refresh_rate(progress: RefreshProgress, now: float) -> float:
    """A refresh's mean rate so far, bytes per second (0 before its first second)."""
    elapsed = now - progress.started_at
    return progress.written / elapsed if elapsed >= 1.0 else 0.0


# -- the page --------------------------------------------------------------------------------

_STYLE = """
:root{color-scheme:light;--fg:#1d2330;--muted:#5d6678;--line:#d9dee8;--head:#f2f4f8;
--up:#17803d;--down:#c62828;--warn:#b25e00;--unknown:#6b7280;--accent:#2457c5}
*{box-sizing:border-box}
body{margin:0;padding:16px 24px 48px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:#fff}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:6px 18px;
border-bottom:2px solid var(--line);padding-bottom:8px;margin-bottom:12px}
h1{font-size:20px;margin:0}h2{font-size:16px;margin:22px 0 6px}
.meta{color:var(--muted);font-size:13px}
nav a{margin-right:12px;color:var(--accent);text-decoration:none}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0 4px}
.card{border:1px solid var(--line);border-radius:6px;padding:6px 12px;min-width:140px}
.card b{display:block;font-size:18px}.card span{color:var(--muted);font-size:12px}
table{border-collapse:collapse;width:100%;margin:4px 0 8px}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;
vertical-align:top}
th{background:var(--head);font-weight:600;font-size:13px;position:sticky;top:0}
td.nowrap{white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
overflow-wrap:anywhere}
.err{color:var(--down);overflow-wrap:anywhere}.none{color:var(--muted);font-style:italic}
.badge{display:inline-block;min-width:64px;text-align:center;border-radius:10px;
padding:0 8px;font-size:12px;font-weight:600;color:#fff}
.up{background:var(--up)}.down{background:var(--down)}.blocked{background:var(--warn)}
.unknown{background:var(--unknown)}.refreshing{background:var(--accent)}
.complete{background:var(--up)}
progress{width:140px;height:12px;vertical-align:middle}
.targets td:nth-child(5){color:var(--down);overflow-wrap:anywhere}
.targets td:nth-child(n+6){text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}
"""


def render_status(view: StatusView) -> str:
    """The whole page for ``view`` (a pure function: same view, same page)."""
    parts = [_head(view), _summary(view), _groups(view), _cache(view), _bucket(view)]
    parts += [_events(view), _targets(view), "</body></html>\n"]
    return "".join(parts)


def _head(view: StatusView) -> str:
    reload = f'<meta http-equiv="refresh" content="{view.refresh}">' if view.refresh else ""
    if view.refresh:
        every = f'reloads every {view.refresh} s (<a href="?refresh=0">stop</a>)'
    else:
        every = f'not reloading (<a href="?refresh={DEFAULT_REFRESH}">reload every '
        every += f"{DEFAULT_REFRESH} s</a>)"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{reload}<title>Snapshot tracker status</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>Snapshot tracker</h1><span class=meta>version {text(view.version)} · "
        f"{text(view.mode)} · {format_time(view.now)} · {every}</span>"
        '<nav><a href="#snapshots">snapshots</a><a href="#cache">cache</a>'
        '<a href="#bucket">bucket</a><a href="#events">events</a>'
        '<a href="#targets">targets</a></nav></header>'
    )


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{value}</b><span>{label}</span></div>'


def _summary(view: StatusView) -> str:
    up = sum(t.health == "up" for t in view.targets)
    cards = [_card(f"{up} / {len(view.targets)}", "targets up")]
    for group in view.groups:
        best = f"{group.full.slot:,}" if group.full is not None else "none"
        cards.append(_card(best, f"best full of {text(group.name)}"))
    if view.cache is None:
        cards.append(_card("off", "disk cache"))
    else:
        size = sum(f.size for f in view.cache.files)
        cards.append(_card(format_bytes(size) if size else "empty", "disk cache"))
        cards.append(_card(str(len(view.cache.refreshes)), "refreshes running"))
    if view.bucket is not None:
        cards.append(_card("up" if view.bucket.up else "DOWN", "bucket"))
    return f'<div class="cards">{"".join(cards)}</div>'


def _table(
    headers: Sequence[str], rows: Iterable[str], numeric: frozenset[int], css: str = ""
) -> str:
    cells = "".join(
        f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>"
        for i, h in enumerate(headers)
    )
    table = f'<table class="{css}">' if css else "<table>"
    return f"{table}<thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _none(message: str) -> str:
    return f'<p class="none">{message}</p>'


def _digest(sha256: str | None) -> str:
    if not sha256:
        return '<span class="none">unknown</span>'
    if len(sha256) <= 16:
        return f"<code>{text(sha256)}</code>"
    return f'<code title="{text(sha256)}">{text(sha256[:16])}…</code>'


def _groups(view: StatusView) -> str:
    out = ['<section id="snapshots"><h2>Best snapshots</h2>']
    if not view.groups:
        out.append(_none("No target group is configured."))
        return "".join(out) + "</section>"
    headers = ["group", "kind", "archive", "slot", "age (slots)", "age", "size", "sources"]
    headers += ["sha256"]
    rows = []
    for group in view.groups:
        name = text(group.name)
        health = f'<br><span class="meta">{group.up} / {group.targets} targets up</span>'
        if group.full is None and group.incremental is None:
            rows.append(
                f'<tr><td class="nowrap">{name}{health}</td>'
                '<td colspan="8" class="none">no snapshot yet</td></tr>'
            )
            continue
        for best in (group.full, group.incremental):
            if best is None:
                rows.append(
                    f'<tr><td class="nowrap">{name}{health}</td><td>incremental</td>'
                    '<td colspan="7" class="none">none on the best full</td></tr>'
                )
            else:
                rows.append(_best_row(name + health, best))
            health = ""
    numeric = frozenset({3, 4, 5, 6, 7})
    out.append(_table(headers, rows, numeric))
    return "".join(out) + "</section>"


def _best_row(group: str, best: BestView) -> str:
    slots = "—" if best.age_slots is None else f"{best.age_slots:,}"
    age = format_age(best.age_seconds)
    if best.estimated and best.age_seconds is not None:
        age = f'<span title="estimated from the age in slots">~{age}</span>'
    return (
        f'<tr><td class="nowrap">{group}</td><td>{text(best.kind)}</td>'
        f"<td><code>{text(best.name)}</code></td>"
        f'<td class="num">{best.slot:,}</td><td class="num">{slots}</td>'
        f'<td class="num">{age}</td><td class="num">{format_bytes(best.size)}</td>'
        f'<td class="num">{best.sources}</td><td>{_digest(best.sha256)}</td></tr>'
    )


def _cache(view: StatusView) -> str:
    out = ['<section id="cache"><h2>Disk cache</h2>']
    cache = view.cache
    if cache is None:
        out.append(_none("No disk cache is configured (proxy_snapshot_cache_dir)."))
        return "".join(out) + "</section>"
    out.append(f'<p class="meta">Directory <code>{text(cache.directory)}</code></p>')
    if not cache.files and not cache.refreshes:
        out.append(_none("The cache is empty: nothing cached, no refresh running."))
        return "".join(out) + "</section>"
    headers = ["group", "archive", "size", "state", "progress", "rate", "readers", "sha256"]
    rows = [_refresh_row(r, view.now) for r in cache.refreshes]
    rows += [
        f"<tr><td>{text(f.group)}</td><td><code>{text(f.name)}</code></td>"
        f'<td class="num">{format_bytes(f.size)}</td>'
        '<td><span class="badge complete">complete</span></td>'
        f'<td colspan="3" class="meta">cached {_ago(view.now, f.mtime)}</td>'
        f"<td>{_digest(f.sha256)}</td></tr>"
        for f in cache.files
    ]
    out.append(_table(headers, rows, frozenset({2, 5, 6})))
    return "".join(out) + "</section>"


def _refresh_row(progress: RefreshProgress, now: float) -> str:
    percent = refresh_percent(progress)
    if percent is None:
        bar = '<span class="none">waiting for the source</span>'
    else:
        bar = (
            f'<progress max="100" value="{percent:.1f}">{percent:.1f} %</progress> '
            f"{percent:.1f} % of {format_bytes(progress.size)}"
        )
    readers = "—" if progress.readers is None else str(progress.readers)
    return (
        f"<tr><td>{text(progress.group)}</td><td><code>{text(progress.name)}</code></td>"
        f'<td class="num">{format_bytes(progress.written)}</td>'
        '<td><span class="badge refreshing">refreshing</span></td>'
        f'<td>{bar}<br><span class="meta">started {_ago(now, progress.started_at)}</span></td>'
        f'<td class="num">{format_rate(refresh_rate(progress, now))}</td>'
        f'<td class="num">{readers}</td><td><span class="none">when complete</span></td></tr>'
    )


def _bucket(view: StatusView) -> str:
    out = ['<section id="bucket"><h2>Bucket</h2>']
    bucket = view.bucket
    if bucket is None:
        out.append(_none("No bucket is configured (object_store)."))
        return "".join(out) + "</section>"
    state = (
        '<span class="badge up">up</span>'
        if bucket.up
        else ('<span class="badge down">down</span>')
    )
    error = f'<span class="err">{text(bucket.last_error)}</span>' if bucket.last_error else "—"
    rows = [
        f"<tr><td>{state}</td><td><code>{text(bucket.endpoint)}</code></td>"
        f"<td><code>{text(bucket.bucket)}</code></td><td><code>{text(bucket.prefix)}</code></td>"
        f'<td class="num">{bucket.objects_known}</td>'
        f'<td class="num">{bucket.uploads_running}</td><td>{error}</td></tr>'
    ]
    headers = ["state", "endpoint", "bucket", "prefix", "objects", "uploads", "last error"]
    out.append(_table(headers, rows, frozenset({4, 5})))
    return "".join(out) + "</section>"


def _events(view: StatusView) -> str:
    out = ['<section id="events"><h2>Rejected archives</h2>']
    if view.rejected:
        headers = ["when", "group", "archive", "source", "reason"]
        rows = [_rejected_row(e, view.now) for e in view.rejected]
        out.append(_table(headers, rows, frozenset()))
    else:
        out.append(_none("No archive was rejected since the tracker started."))
    out.append("<h2>Failovers</h2>")
    if view.failovers:
        rows = [
            f'<tr><td class="nowrap">{_ago(view.now, e.time)}</td>'
            f'<td class="nowrap"><code>{text(e.event)}</code></td>'
            f"<td>{_fields(e.fields)}</td></tr>"
            for e in view.failovers
        ]
        out.append(_table(["when", "event", "details"], rows, frozenset()))
    else:
        out.append(_none("No failover since the tracker started."))
    return "".join(out) + "</section>"


def _rejected_row(event: RecentEvent, now: float) -> str:
    fields = dict(event.fields)
    named = [text(fields.pop(key, "")) for key in ("group", "file", "source", "reason")]
    group, name, source, reason = named
    rest = f"<br>{_fields(fields)}" if fields else ""
    return (
        f'<tr><td class="nowrap">{_ago(now, event.time)}</td><td>{group}</td>'
        f"<td><code>{name}</code></td>"
        f'<td><code>{source}</code></td><td><span class="err">{reason}</span>{rest}</td></tr>'
    )


def _fields(fields: Mapping[str, str]) -> str:
    return " ".join(f"<code>{text(k)}={text(v)}</code>" for k, v in fields.items())


_BADGES = {health: f'<span class="badge {health}">{health}</span>' for health in _HEALTH_ORDER}


def _health(health: str) -> str:
    return _BADGES.get(health, _BADGES["unknown"])


@functools.lru_cache(maxsize=1 << 13)
def _target_cells(t: TargetView) -> str:
    """A target's row up to its last scrape: the same from one page to the next while the
    target's state stays (most of thousands), so it is remembered."""
    return (
        f"<tr><td>{_health(t.health)}</td>"
        f"<td>{text(t.group)}</td><td><code>{text(t.target)}</code></td>"
        f"<td>{text(t.kind)}{' (discovered)' if t.discovered else ''}</td>"
        f"<td>{text(t.last_error)}</td><td>{format_latency(t.latency)}</td>"
        f"<td>{format_rate(t.throughput)}</td><td>{t.snapshots}</td>"
    )


def _scraped(now: float, then: float | None) -> str:
    return "<td>never</td>" if then is None else _scraped_cell(int(now - then))


@functools.lru_cache(maxsize=4096)
def _scraped_cell(seconds: int) -> str:
    return f"<td>{format_age(seconds)} ago</td>"


def _targets(view: StatusView) -> str:
    ordered = sorted(view.targets, key=target_order)
    unhealthy = sum(t.health != "up" for t in ordered)
    out = [
        f'<section id="targets"><h2>Targets ({len(ordered)}, {unhealthy} not up)</h2>',
    ]
    if not ordered:
        out.append(_none("No target yet."))
        return "".join(out) + "</section>"
    headers = ["health", "group", "target", "kind", "last error", "latency", "throughput"]
    headers += ["snapshots", "last scrape"]
    now = view.now
    # Thousands of rows: the cells' styles come from the table's CSS (.targets), not from
    # attributes repeated on every cell.
    rows = [f"{_target_cells(t)}{_scraped(now, t.last_scrape)}</tr>" for t in ordered]
    out.append(_table(headers, rows, frozenset({5, 6, 7, 8}), "targets"))
    return "".join(out) + "</section>"
