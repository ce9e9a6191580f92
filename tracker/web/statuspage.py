"""The status page of the internal listener (``GET /``): a plain value rendered as HTML.

:class:`~tracker.web.statusview.StatusView` holds everything the page shows, as plain
values gathered from the running tracker (:mod:`tracker.web.statusgather`), with the
decisions on them (:mod:`tracker.web.statusview`); :func:`render_status` here turns it into
one self-contained HTML document: no external assets, no script (it refreshes itself with a
``<meta http-equiv="refresh">``), readable in any browser and in ``curl``.

Every text a source, a client or the network controls (archive and target names, errors,
URLs, log fields) goes through :func:`~tracker.web.statusformat.text`
(:mod:`tracker.web.statusformat`, with the numbers, times and ages people read): URLs are
masked as in every public output (:func:`tracker.observability.redact.redact_text`: userinfo and
query become ``***``), characters that do not print (controls, bidi overrides) are shown as
``\\xNN`` / ``\\uNNNN`` escapes, and the result is HTML-escaped, quotes included. The
response also carries a ``content-security-policy`` that allows no script at all, so a text
that escaped all this still could not run.

The page's values, decisions and texts are importable from here too: the page and what it
is made of are used together.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import get_args

from tracker.cache.store import RefreshProgress
from tracker.observability.logs import RecentEvent
from tracker.web.statusformat import (
    ago,
    format_age,
    format_bytes,
    format_latency,
    format_rate,
    format_time,
    text,
)
from tracker.web.statusview import (
    DEFAULT_REFRESH,
    MAX_REFRESH,
    BestView,
    BucketView,
    CachedView,
    CacheView,
    GroupView,
    Health,
    ProofView,
    StatusView,
    TargetView,
    parse_refresh,
    refresh_percent,
    refresh_rate,
    source_shares,
    target_order,
)

__all__ = [
    "DEFAULT_REFRESH",
    "MAX_REFRESH",
    "PAGE_HEADERS",
    "BestView",
    "BucketView",
    "CacheView",
    "CachedView",
    "GroupView",
    "ProofView",
    "StatusView",
    "TargetView",
    "format_age",
    "format_bytes",
    "format_rate",
    "parse_refresh",
    "render_status",
    "target_order",
    "text",
]

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
.err{color:var(--down);overflow-wrap:anywhere}.none{color:var(--muted);font-style:italic}.note{color:var(--muted)}
.badge{display:inline-block;min-width:64px;text-align:center;border-radius:10px;
padding:0 8px;font-size:12px;font-weight:600;color:#fff}
.up{background:var(--up)}.down{background:var(--down)}.blocked{background:var(--warn)}p.warn{color:var(--warn)}
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
    parts += [_signing(view)]
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
        '<a href="#bucket">bucket</a><a href="#signing">signing</a><a href="#events">events</a>'
        '<a href="#targets">targets</a></nav></header>'
    )


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{value}</b><span>{label}</span></div>'


def _summary(view: StatusView) -> str:
    # The groups' counts: snapshot sources only, not the cluster RPC URLs the Targets table
    # also lists (as the metrics `snapshot_tracker_targets` / `_up` count them).
    up, total = sum(g.up for g in view.groups), sum(g.targets for g in view.groups)
    cards = [_card(f"{up} / {total}", "targets up")]
    for group in view.groups:
        best = f"{group.full.slot:,}" if group.full is not None else "none"
        cards.append(_card(best, f"best full of {text(group.name)}"))
    if view.cache is None:
        cards.append(_card("off", "disk cache"))
    else:
        size = sum(f.size for f in view.cache.files)
        shown = "unusable" if view.cache.problem else format_bytes(size) if size else "empty"
        cards.append(_card(shown, "disk cache"))
        cards.append(_card(str(len(view.cache.refreshes)), "refreshes running"))
    if view.bucket is not None:
        cards.append(_card("up" if view.bucket.up else "DOWN", "bucket"))
    signing = view.signing
    if signing is not None:
        signs = "off" if signing.public_key is None else "none" if signing.problem else "on"
        shown = f"{signing.held}" if signs == "on" else signs
        cards.append(_card(shown, "statements signed" if signs == "on" else "signing"))
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


def _digest(sha256: str | None, level: str | None = None) -> str:
    if not sha256:
        return '<span class="none">unknown</span>'
    proven = f' <span class="meta">{text(level)}</span>' if level else ""
    if len(sha256) <= 16:
        return f"<code>{text(sha256)}</code>{proven}"
    return f'<code title="{text(sha256)}">{text(sha256[:16])}…</code>{proven}'


def _section(ident: str, title: str, parts: list[str]) -> str:
    """A section of the page: its anchor, its heading and its parts. Every section is framed
    here, so that the anchors the docs link to and the headings stay of one form."""
    return f'<section id="{ident}"><h2>{title}</h2>{"".join(parts)}</section>'


def _groups(view: StatusView) -> str:
    if not view.groups:
        return _section("snapshots", "Best snapshots", [_none("No target group is configured.")])
    headers = ["group", "kind", "archive", "slot", "age (slots)", "age", "size", "sources"]
    headers += ["sha256, proven to"]
    rows = []
    for group in view.groups:
        name = text(group.name)
        health = f'<br><span class="meta">{group.up} / {group.targets} targets up</span>'
        health += _predicted(group.predicted_seconds)
        if group.full is None and group.incremental is None:
            rows.append(
                f'<tr><td class="nowrap">{name}{health}</td>'
                '<td colspan="8" class="none">no snapshot yet</td></tr>'
            )
        else:
            for best in (group.full, group.incremental):
                if best is None:
                    rows.append(
                        f'<tr><td class="nowrap">{name}{health}</td><td>incremental</td>'
                        '<td colspan="7" class="none">none on the best full</td></tr>'
                    )
                else:
                    rows.append(_best_row(name + health, best))
                health = ""
        rows.append(_rpc_failed(name, group.rpc_failure))
    numeric = frozenset({3, 4, 5, 6, 7})
    return _section("snapshots", "Best snapshots", [_table(headers, rows, numeric)])


def _rpc_failed(name: str, failure: tuple[str, str] | None) -> str:
    """A row under the group's archives naming its cluster ``rpc`` and why its last
    ``getSlot`` failed ("" while it answers): the age columns alone said only "—" (or an
    age carried on from its last answer), and nothing said why. URL and reason are masked
    and escaped as every error on the page is (:func:`text`)."""
    if failure is None:
        return ""
    url, reason = failure
    return (
        f'<tr><td class="nowrap">{name}</td><td colspan="8" class="err">cluster rpc '
        f"<code>{text(url)}</code> failed its last getSlot: {text(reason)}</td></tr>"
    )


def _predicted(seconds: float | None) -> str:
    """The predicted time to a running node of the pair handed out, under the group's name
    ("" when the group ranks by slot), docs/ranking.md."""
    if seconds is None:
        return ""
    if not math.isfinite(seconds):
        return '<br><span class="meta">a node would never catch up (predicted)</span>'
    return f'<br><span class="meta">running in ~{format_age(seconds)} (predicted)</span>'


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
        f'<td class="num">{best.sources}</td><td>{_digest(best.sha256, best.level)}</td></tr>'
    )


def _cache(view: StatusView) -> str:
    cache = view.cache
    if cache is None:
        return _section(
            "cache",
            "Disk cache",
            [_none("No disk cache is configured (proxy_snapshot_cache_dir).")],
        )
    out = [f'<p class="meta">Directory <code>{text(cache.directory)}</code></p>']
    out += [
        f'<p class="warn">{text(group)}: {text(reason)}</p>' for group, reason in cache.uncached
    ]
    if cache.problem:  # never "empty": nothing can be cached until it is fixed
        out.append(f'<p class="warn">The directory is unusable: {text(cache.problem)}</p>')
    out += [
        f'<p class="meta">Accounts proof running: {proof.records:,} accounts, '
        f"{format_bytes(proof.bytes)} of storages read, {proof.hashed:,} accounts hashed "
        f"(their newest versions), {format_bytes(proof.spilled)} "
        f"spilled to disk, {format_bytes(proof.held)} of memory held, "
        f"{proof.workers_busy} worker{'' if proof.workers_busy == 1 else 's'} busy</p>"
        for proof in cache.proofs
    ]
    if not cache.files and not cache.refreshes:
        if not cache.problem:
            out.append(_none("The cache is empty: nothing cached, no refresh running."))
        return _section("cache", "Disk cache", out)
    headers = ["group", "archive", "size", "state", "progress", "rate", "readers"]
    headers += ["sha256, proven to"]
    rows = [_refresh_row(r, view.now) for r in cache.refreshes]
    rows += [
        f"<tr><td>{text(f.group)}</td><td><code>{text(f.name)}</code></td>"
        f'<td class="num">{format_bytes(f.size)}</td>'
        '<td><span class="badge complete">complete</span></td>'
        f'<td colspan="3" class="meta">cached {ago(view.now, f.cached_at)}</td>'
        f"<td>{_digest(f.sha256, f.level)}</td></tr>"
        for f in cache.files
    ]
    out.append(_table(headers, rows, frozenset({2, 5, 6})))
    return _section("cache", "Disk cache", out)


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
    notes = progress.notes or ("",) * len(progress.sources)
    shares = "".join(
        f'<br><span class="meta">{text(url)}: {share:.0f} % at {format_rate(rate)}'
        f"{f' ({text(note)})' if note else ''}</span>"
        for (url, share, rate), note in zip(source_shares(progress), notes, strict=True)
    )
    state = "refreshing"
    if progress.proving:  # docs/architecture.md, "Two reads"
        state = "proving"
        shares += (
            '<br><span class="meta">every byte served to its readers; cached once its '
            "accounts are proven</span>"
        )
    return (
        f"<tr><td>{text(progress.group)}</td><td><code>{text(progress.name)}</code></td>"
        f'<td class="num">{format_bytes(progress.written)}</td>'
        f'<td><span class="badge refreshing">{state}</span></td>'
        f'<td>{bar}<br><span class="meta">started {ago(now, progress.started_at)}</span>'
        f"{shares}</td>"
        f'<td class="num">{format_rate(refresh_rate(progress))}</td>'
        f'<td class="num">{readers}</td><td><span class="none">when complete</span></td></tr>'
    )


def _bucket(view: StatusView) -> str:
    bucket = view.bucket
    if bucket is None:
        return _section("bucket", "Bucket", [_none("No bucket is configured (object_store).")])
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
    return _section("bucket", "Bucket", [_table(headers, rows, frozenset({4, 5}))])


def _signing(view: StatusView) -> str:
    """Whether this tracker signs, with which key, since when, how many statements it holds
    and the last one signed (docs/http-api.md, "The status page")."""
    signing = view.signing
    if signing is None or signing.public_key is None:
        return _section(
            "signing", "Signing", [_none("This tracker signs nothing (no attest in the config).")]
        )
    out: list[str] = []
    if signing.problem:
        out.append(f'<p class="warn">{text(signing.problem)}</p>')
    since = ago(view.now, signing.since) if signing.since is not None else "—"
    last = '<span class="none">none yet</span>'
    if signing.last_at is not None:
        level = f"{text(signing.last_level)}, " if signing.last_level else ""
        when = f"{level}{ago(view.now, signing.last_at)}"
        last = f'<code>{text(signing.last_name)}</code> <span class="meta">{when}</span>'
    rows = [
        f"<tr><td><code>{text(signing.public_key)}</code></td><td>{since}</td>"
        f'<td class="num">{signing.held}</td><td>{last}</td></tr>'
    ]
    headers = ["public key", "signing since", "statements held", "last signed"]
    out.append(_table(headers, rows, frozenset({2})))
    return _section("signing", "Signing", out)


def _events(view: StatusView) -> str:
    out: list[str] = []
    if view.rejected:
        headers = ["when", "group", "archive", "source", "reason"]
        rows = [_rejected_row(e, view.now) for e in view.rejected]
        out.append(_table(headers, rows, frozenset()))
    else:
        out.append(_none("No archive was rejected since the tracker started."))
    out.append("<h2>Failovers</h2>")
    if view.failovers:
        rows = [
            f'<tr><td class="nowrap">{ago(view.now, e.time)}</td>'
            f'<td class="nowrap"><code>{text(e.event)}</code></td>'
            f"<td>{_fields(e.fields)}</td></tr>"
            for e in view.failovers
        ]
        out.append(_table(["when", "event", "details"], rows, frozenset()))
    else:
        out.append(_none("No failover since the tracker started."))
    return _section("events", "Rejected archives", out)


def _rejected_row(event: RecentEvent, now: float) -> str:
    fields = dict(event.fields)
    named = [text(fields.pop(key, "")) for key in ("group", "file", "source", "reason")]
    group, name, source, reason = named
    rest = f"<br>{_fields(fields)}" if fields else ""
    return (
        f'<tr><td class="nowrap">{ago(now, event.time)}</td><td>{group}</td>'
        f"<td><code>{name}</code></td>"
        f'<td><code>{source}</code></td><td><span class="err">{reason}</span>{rest}</td></tr>'
    )


def _fields(fields: Mapping[str, str]) -> str:
    return " ".join(f"<code>{text(k)}={text(v)}</code>" for k, v in fields.items())


_BADGES = {health: f'<span class="badge {health}">{health}</span>' for health in get_args(Health)}


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
        f"<td>{_error_or_note(t)}{_used(t)}</td><td>{format_latency(t.latency)}</td>"
        f"<td>{format_rate(t.throughput)}{_figures(t)}</td><td>{t.snapshots}</td>"
    )


def _error_or_note(t: TargetView) -> str:
    """The last error, else why a target that is up lists nothing (as a note)."""
    if t.last_error or not t.note:
        return text(t.last_error)
    return f'<span class="note">{text(t.note)}</span>'


def _used(t: TargetView) -> str:
    """Under its error, how the latest refresh from several sources used the target."""
    return f'<br><span class="meta">{text(t.refresh)}</span>' if t.refresh else ""


def _figures(t: TargetView) -> str:
    """Under a measured throughput, the two figures it combines (docs/ranking.md)."""
    if t.probed <= 0 and t.achieved <= 0:
        return ""
    probed, achieved = format_rate(t.probed), format_rate(t.achieved)
    return f'<br><span class="meta">probed {probed}, achieved {achieved}</span>'


def _scraped(now: float, then: float | None) -> str:
    return "<td>never</td>" if then is None else _scraped_cell(int(now - then))


@functools.lru_cache(maxsize=4096)
def _scraped_cell(seconds: int) -> str:
    return f"<td>{format_age(seconds)} ago</td>"


def _targets(view: StatusView) -> str:
    ordered = sorted(view.targets, key=target_order)
    unhealthy = sum(t.health != "up" for t in ordered)
    title = f"Targets ({len(ordered)}, {unhealthy} not up)"
    if not ordered:
        return _section("targets", title, [_none("No target yet.")])
    headers = ["health", "group", "target", "kind", "last error", "latency", "throughput"]
    headers += ["snapshots", "last scrape"]
    now = view.now
    # Thousands of rows: the cells' styles come from the table's CSS (.targets), not from
    # attributes repeated on every cell.
    rows = [f"{_target_cells(t)}{_scraped(now, t.last_scrape)}</tr>" for t in ordered]
    return _section("targets", title, [_table(headers, rows, frozenset({5, 6, 7, 8}), "targets")])
