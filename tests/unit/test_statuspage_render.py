"""The status page as a pure function: StatusView in, HTML out (no network).

Every hostile text (a source's error, an archive or target name, a URL, a log field) must
come out as text, never as markup, with URLs' userinfo and queries masked; the page must
say what it lacks (no snapshot, no cache, no bucket, a bucket down).
"""

from __future__ import annotations

import math

import attrs
import pytest
from helpers_browser import PAGE_TAGS, Dom
from names import full_name, incremental_name

from tracker.cache.store import RefreshProgress
from tracker.observability.logs import RecentEvent
from tracker.web.statuspage import (
    DEFAULT_REFRESH,
    MAX_REFRESH,
    BestView,
    BucketView,
    CachedView,
    CacheView,
    GroupView,
    ProofView,
    StatusView,
    TargetView,
    format_age,
    format_bytes,
    format_rate,
    parse_refresh,
    render_status,
    target_order,
    text,
)
from tracker.web.statusview import SigningView

NOW = 1_800_000_000.0
FULL = full_name(1000)
INCR = incremental_name(1000, 1100)
GiB = 1024**3
MiB = 1024**2


def target(name: str, health: str = "up", error: str = "", group: str = "mainnet") -> TargetView:
    return TargetView(
        group=group,
        target=name,
        kind="sidecar",
        discovered=False,
        health=health,  # type: ignore[arg-type]
        last_error=error,
        latency=0.012,
        throughput=0.0,
        last_scrape=NOW - 3,
        snapshots=2,
    )


def best(name: str = FULL, kind: str = "full", sha256: str | None = None) -> BestView:
    return BestView(
        kind=kind,  # type: ignore[arg-type]
        name=name,
        slot=1000 if kind == "full" else 1100,
        age_slots=150,
        age_seconds=60.0,
        estimated=False,
        size=2 * GiB,
        sources=3,
        sha256=sha256,
    )


def view(**changes: object) -> StatusView:
    base = StatusView(
        version="1.2.3",
        now=NOW,
        mode="proxy mode with a disk cache",
        groups=(GroupView("mainnet", 2, 1, best(), best(INCR, "incremental")),),
        targets=(target("http://10.0.0.1:13080"), target("http://10.0.0.2:13080", "down")),
        cache=CacheView("/var/cache/tracker", (), ()),
        bucket=None,
    )
    return attrs.evolve(base, **changes)


SCRIPT = '<script>alert("x")</script>'
HOSTILE = f"{SCRIPT}\"'><img src=x onerror=alert(1)>"


def rejected(**fields: str) -> RecentEvent:
    return RecentEvent(NOW - 5, "WARNING", "archive_rejected", fields)


@pytest.mark.parametrize(
    ("where", "page_view"),
    [
        ("target", view(targets=(target(HOSTILE),))),
        ("target error", view(targets=(target("t", "down", HOSTILE),))),
        ("group", view(groups=(GroupView(HOSTILE, 0, 0, None, None),))),
        ("archive name", view(groups=(GroupView("g", 1, 1, best(HOSTILE), None),))),
        ("digest", view(groups=(GroupView("g", 1, 1, best(sha256=HOSTILE * 2), None),))),
        ("cache directory", view(cache=CacheView(HOSTILE, (), ()))),
        (
            "cached file",
            view(cache=CacheView("/c", (CachedView(HOSTILE, HOSTILE, 1, NOW, HOSTILE),), ())),
        ),
        (
            "refresh",
            view(cache=CacheView("/c", (), (RefreshProgress(HOSTILE, HOSTILE, 10, 5, NOW),))),
        ),
        ("bucket", view(bucket=BucketView(HOSTILE, HOSTILE, HOSTILE, False, HOSTILE, 0, 0))),
        (
            "rejected archive",
            view(rejected=(rejected(group=HOSTILE, file=HOSTILE, source=HOSTILE, reason=HOSTILE),)),
        ),
        (
            "failover",
            view(failovers=(RecentEvent(NOW, "WARNING", HOSTILE, {HOSTILE: HOSTILE}),)),
        ),
        ("version", view(version=HOSTILE)),
        (
            "cluster rpc failure",
            view(groups=(GroupView("g", 0, 0, None, None, rpc_failure=(HOSTILE, HOSTILE)),)),
        ),
        ("refresh use", view(targets=(target("t")._replace(refresh=HOSTILE),))),
        (
            "refresh source",
            view(
                cache=CacheView(
                    "/c",
                    (),
                    (
                        RefreshProgress(
                            "g", "n", 10, 5, NOW, sources=((HOSTILE, 1),), notes=(HOSTILE,)
                        ),
                    ),
                )
            ),
        ),
    ],
)
def test_hostile_text_renders_as_text_never_as_markup(where: str, page_view: StatusView) -> None:
    page = render_status(page_view)
    parsed = Dom(page)
    assert set(parsed.tags) <= PAGE_TAGS, where
    assert "script" not in parsed.tags and "img" not in parsed.tags, where
    assert not any(name.startswith("on") for name, _ in parsed.attributes), where
    # What a browser shows is the text itself (cut to a cell's length at most).
    assert SCRIPT in parsed.text or "…" in parsed.text, where
    assert "<script" not in page and "<img" not in page, where


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain", "plain"),
        ("<b>&amp;", "&lt;b&gt;&amp;amp;"),
        ("\"quoted\" 'single'", "&quot;quoted&quot; &#x27;single&#x27;"),
        ("bell\x07 escape\x1b[31m red", "bell\\x07 escape\\x1b[31m red"),
        ("line\nbreak\r\0nul", "line\\x0abreak\\x0d\\x00nul"),
        ("bidi \u202eevil", "bidi \\u202eevil"),
        ("http://user:pa55@host:1/p?api-key=K3Y", "http://***@host:1/p?***"),
        ("failed: https://u:p@h/x?t=1 refused", "failed: https://***@h/x?*** refused"),
        ("x" * 500, "x" * 399 + "…"),
        (1234, "1234"),
    ],
)
def test_text_masks_escapes_and_cuts(raw: object, shown: str) -> None:
    assert text(raw) == shown


SECRETS = ("pa55", "K3Y", "t0ken", "s3cret")


@pytest.mark.parametrize(
    "page_view",
    [
        view(targets=(target("http://user:pa55@10.0.0.1:8899/?api-key=K3Y"),)),
        view(targets=(target("t", "down", "GET https://x:t0ken@rpc.example/?key=K3Y: 401"),)),
        view(bucket=BucketView("http://k:s3cret@127.0.0.1:1/?X-Amz=K3Y", "b", "", True, "", 0, 0)),
        view(
            failovers=(RecentEvent(NOW, "WARNING", "upstream_failed", {"url": "http://a:pa55@h/"}),)
        ),
        view(rejected=(rejected(source="https://u:s3cret@node/?t=K3Y", reason="bad"),)),
        view(
            groups=(
                GroupView(
                    "g",
                    1,
                    1,
                    best(),
                    None,
                    rpc_failure=(
                        "https://u:s3cret@rpc.example/?api-key=K3Y",
                        "cannot connect to https://u:pa55@rpc.example/?key=t0ken",
                    ),
                ),
            )
        ),
    ],
)
def test_credentials_never_reach_the_page(page_view: StatusView) -> None:
    page = render_status(page_view)
    assert not [s for s in SECRETS if s in page]
    assert "***" in page


@pytest.mark.parametrize(
    "group",
    [
        GroupView("mainnet", 2, 1, best(), best(INCR, "incremental")),
        GroupView("mainnet", 2, 1, best(), None),
        GroupView("mainnet", 2, 0, None, None),
    ],
)
def test_a_group_whose_cluster_rpc_failed_says_so_and_why(group: GroupView) -> None:
    """The age columns said only "—" (or an age carried on) while the group's ``rpc``
    failed getSlot: one line under the group's archives names the RPC (masked) and the
    reason; none while it answers (docs/http-api.md, "The status page")."""
    failure = ("http://rpc.example:8899/?api-key=K3Y", "HTTP 503")
    page = section(
        render_status(view(groups=(attrs.evolve(group, rpc_failure=failure),))), "snapshots"
    )
    note = (
        '<td colspan="8" class="err">cluster rpc <code>http://rpc.example:8899/?***</code> '
        "failed its last getSlot: HTTP 503</td>"
    )
    # one row, under the group's archives
    assert page.count("failed its last getSlot") == 1
    assert page.endswith(f'<tr><td class="nowrap">mainnet</td>{note}</tr></tbody></table>')
    assert "failed its last getSlot" not in render_status(view(groups=(group,)))


def test_unhealthy_targets_come_first() -> None:
    targets = (
        target("http://a", "up"),
        target("http://b", "unknown"),
        target("http://c", "down"),
        target("http://d", "blocked", group="devnet"),
        target("http://e", "down", group="devnet"),
    )
    assert [t.target for t in sorted(targets, key=target_order)] == [
        "http://e",
        "http://c",
        "http://d",
        "http://b",
        "http://a",
    ]
    page = render_status(view(targets=targets))
    positions = [page.index(f"<code>http://{n}</code>") for n in "ecdba"]
    assert positions == sorted(positions)
    assert "Targets (5, 4 not up)" in page


@pytest.mark.parametrize(
    ("page_view", "says"),
    [
        (view(groups=(GroupView("mainnet", 3, 0, None, None),)), "no snapshot yet"),
        (view(groups=(GroupView("mainnet", 1, 1, best(), None),)), "none on the best full"),
        (view(groups=()), "No target group is configured."),
        (view(targets=()), "No target yet."),
        (view(cache=None), "No disk cache is configured"),
        (view(cache=CacheView("/c", (), ())), "The cache is empty"),
        (view(bucket=None), "No bucket is configured"),
        (
            view(bucket=BucketView("http://127.0.0.1:1", "b", "p/", False, "no answer", 0, 0)),
            '<span class="badge down">down</span>',
        ),
        (
            view(bucket=BucketView("http://127.0.0.1:1", "b", "p/", False, "no answer", 0, 0)),
            "no answer",
        ),
        (view(), "No archive was rejected since the tracker started."),
        (view(), "No failover since the tracker started."),
        (view(), f'<meta http-equiv="refresh" content="{DEFAULT_REFRESH}">'),
        (view(refresh=0), "not reloading"),
    ],
)
def test_the_page_says_what_it_lacks(page_view: StatusView, says: str) -> None:
    assert says in render_status(page_view)


def test_no_reload_without_refresh() -> None:
    assert "http-equiv" not in render_status(view(refresh=0))


@pytest.mark.parametrize(
    ("progress", "shown"),
    [
        # 512 MiB of 2 GiB in 8 s, 3 readers.
        (
            RefreshProgress("mainnet", FULL, 2 * GiB, GiB // 2, NOW - 8, 3, elapsed=8),
            ['value="25.0"', "25.0 % of 2.0 GiB", "64.0 MiB/s", '<td class="num">3</td>'],
        ),
        # Readers unknown; no second yet: no rate.
        (
            RefreshProgress("mainnet", FULL, 100, 50, NOW - 0.5, None, elapsed=0.5),
            ['value="50.0"', "—</td>"],
        ),
        # The source has not answered yet: no size.
        (RefreshProgress("mainnet", FULL, 0, 0, NOW, 1), ["waiting for the source"]),
        # Every byte served, the accounts level's second read running.
        (
            RefreshProgress("mainnet", FULL, 100, 100, NOW - 9, 2, proving=True, elapsed=9),
            [">proving<", "every byte served to its readers"],
        ),
    ],
)
def test_refreshes_show_percentage_rate_and_readers(
    progress: RefreshProgress, shown: list[str]
) -> None:
    page = render_status(view(cache=CacheView("/c", (), (progress,))))
    assert "refreshing" in page
    for part in shown:
        assert part in page


def test_the_sources_of_a_refresh_and_how_each_was_used_are_shown() -> None:
    """While a refresh from several sources runs, each source's share and how it is used;
    after it, under each target, how the latest one used it (``/v1/targets`` ``refresh``)."""
    from tracker.web.statusview import refresh_use

    sources = (("http://a/f", 40), ("http://b/f", 0))
    notes = ("", "left out: ignores Range (answered a Range request with the whole file)")
    progress = RefreshProgress(
        "mainnet", FULL, 100, 40, NOW - 5, 1, sources, notes=notes, elapsed=5
    )
    used = {"file": FULL, "used": "left out", "bytes": 0, "reason": "ignores Range"}
    row = target("http://b")._replace(refresh=refresh_use(used))
    page = render_status(view(cache=CacheView("/c", (), (progress,)), targets=(row,)))
    assert "http://a/f: 100 % at 8 B/s</span>" in page
    assert "http://b/f: 0 % at — (left out: ignores Range (answered a Range" in page
    assert f"refresh of {FULL}: left out: ignores Range</span>" in page
    assert refresh_use(None) == "" and "refresh of" not in render_status(view())


def test_cached_files_and_best_archives_show_their_digest_when_known() -> None:
    digest = "ab" * 32
    files = (CachedView("mainnet", FULL, 2 * GiB, NOW - 60, digest),)
    groups = (GroupView("mainnet", 1, 1, best(sha256=digest), best(INCR, "incremental")),)
    page = render_status(view(cache=CacheView("/c", files, ()), groups=groups))
    assert page.count(f'title="{digest}"') == 2  # the best full, and the cached file
    assert page.count(">unknown<") == 1  # the incremental's
    assert "complete" in page and "60 s ago</span>" in page


def test_best_archives_show_age_in_slots_and_time() -> None:
    estimated = attrs.evolve(best(), age_slots=9000, age_seconds=3600.0, estimated=True)
    unknown = attrs.evolve(best(INCR, "incremental"), age_slots=None, age_seconds=None)
    page = render_status(view(groups=(GroupView("g", 1, 1, estimated, unknown),)))
    assert "9,000" in page and "~60 min" in page
    assert "unknown</td>" in page


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(None, DEFAULT_REFRESH), ("0", 0), ("30", 30), (str(MAX_REFRESH), MAX_REFRESH)],
)
def test_refresh_parameter(raw: str | None, seconds: int) -> None:
    assert parse_refresh(raw) == seconds


@pytest.mark.parametrize("raw", ["", "-1", "abc", "1.5", "²", "99999", "3601", " 5"])
def test_malformed_refresh_parameter_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="refresh must be"):
        parse_refresh(raw)


@pytest.mark.parametrize(
    ("function", "value", "shown"),
    [
        (format_bytes, 0, "—"),
        (format_bytes, 512, "512 B"),
        (format_bytes, 1536, "1.5 KiB"),
        (format_bytes, 3 * GiB, "3.0 GiB"),
        (format_bytes, 5 * 1024 * GiB, "5.0 TiB"),
        (format_rate, 0.0, "—"),
        (format_rate, 64 * 1024 * 1024, "64.0 MiB/s"),
        (format_age, None, "unknown"),
        (format_age, -3.0, "0 s"),
        (format_age, 59.9, "59 s"),
        (format_age, 600.0, "10 min"),
        (format_age, 3 * 3600 + 300.0, "3 h 5 min"),
        (format_age, 50 * 3600.0, "2 d 2 h"),
    ],
)
def test_formats(function: object, value: object, shown: str) -> None:
    assert function(value) == shown  # type: ignore[operator]


def test_three_thousand_targets_all_on_the_page() -> None:
    targets = tuple(
        target(f"http://10.0.{n // 250}.{n % 250}:8899", "down" if n % 7 == 0 else "up")
        for n in range(3000)
    )
    page = render_status(view(targets=targets))
    assert page.count('<tr><td><span class="badge') == 3000
    assert "Targets (3000, 429 not up)" in page


@pytest.mark.parametrize(
    ("predicted", "says", "absent"),
    [
        (250.0, "running in ~4 min (predicted)", None),
        (45.0, "running in ~45 s (predicted)", None),
        (math.inf, "a node would never catch up (predicted)", "running in"),
        (None, None, "(predicted)"),  # ranked by slot: nothing predicted, nothing shown
    ],
)
def test_the_predicted_time_to_running_shows_under_the_group(
    predicted: float | None, says: str | None, absent: str | None
) -> None:
    group = GroupView("mainnet", 2, 1, best(), best(INCR, "incremental"), predicted)
    page = render_status(view(groups=(group,)))
    if says is not None:
        assert says in page
    if absent is not None:
        assert absent not in page


@pytest.mark.parametrize(
    ("probed", "achieved", "throughput", "shown", "absent"),
    [
        # Never measured: a dash, no figures.
        (0.0, 0.0, 0.0, ["<td>—</td>"], ["probed"]),
        # Speed tests only.
        (64 * MiB, 0.0, 64 * MiB, ["64.0 MiB/s<br>", "probed 64.0 MiB/s, achieved —"], []),
        # Probed fast, served slowly: the figure ranked, then both it combines.
        (
            512 * MiB,
            2 * MiB,
            2 * MiB,
            ["<td>2.0 MiB/s<br>", "probed 512.0 MiB/s, achieved 2.0 MiB/s"],
            [],
        ),
    ],
)
def test_a_targets_throughput_shows_the_probed_and_achieved_figures(
    probed: float, achieved: float, throughput: float, shown: list[str], absent: list[str]
) -> None:
    row = target("http://a")._replace(throughput=throughput, probed=probed, achieved=achieved)
    page = render_status(view(targets=(row,)))
    for part in shown:
        assert part in page
    for part in absent:
        assert part not in page


def test_running_accounts_proofs_show_their_progress() -> None:
    proof = ProofView(
        records=12_345_678,
        bytes=3 * 1024**3,
        spilled=2 * 1024**2,
        held=5,
        workers_busy=1,
        hashed=4_000_000,
    )
    page = render_status(view(cache=CacheView("/c", (), (), proofs=(proof,))))
    assert "Accounts proof running: 12,345,678 accounts, 3.0 GiB of storages read" in page
    assert "4,000,000 accounts hashed (their newest versions)" in page
    assert "spilled to disk" in page and "1 worker busy" in page


def section(page: str, anchor: str) -> str:
    start = page.index(f'id="{anchor}"')
    return page[start : page.index("</section>", start)]


def test_a_cached_file_shows_when_the_cache_took_it() -> None:
    """Not the source file's mtime (docs/http-api.md, "The status page")."""
    files = (CachedView("mainnet", FULL, 2 * GiB, NOW - 90, None),)
    page = render_status(view(cache=CacheView("/c", files, ())))
    assert f"cached {format_age(90)} ago" in Dom(page).text


@pytest.mark.parametrize(
    ("signing", "shown", "card"),
    [
        pytest.param(None, ["This tracker signs nothing"], None, id="not known"),
        pytest.param(
            SigningView(None), ["This tracker signs nothing (no attest"], "off", id="no attest"
        ),
        pytest.param(
            SigningView("PUBK3Y", NOW - 7200, 0),
            ["PUBK3Y", f"{format_age(7200)} ago", "none yet"],
            "0",
            id="signing, nothing yet",
        ),
        pytest.param(
            SigningView("PUBK3Y", NOW - 7200, 3, FULL, "accounts", NOW - 30),
            ["PUBK3Y", "3", FULL, "accounts", f"{format_age(30)} ago"],
            "3",
            id="signing: the last statement",
        ),
        pytest.param(
            SigningView("PUBK3Y", NOW, 0, problem="nothing can be signed: redirect mode"),
            ["PUBK3Y", "nothing can be signed: redirect mode"],
            "none",
            id="a key, nothing to sign",
        ),
    ],
)
def test_the_signing_card(signing: SigningView | None, shown: list[str], card: str | None) -> None:
    page = render_status(view(signing=signing))
    assert set(Dom(page).tags) <= PAGE_TAGS
    signed = Dom(section(page, "signing")).text
    for text_shown in shown:
        assert text_shown in signed, (text_shown, signed)
    summary = Dom(page[page.index('<div class="cards">') : page.index('id="snapshots"')]).text
    if card is None:
        assert "signing" not in summary and "statements signed" not in summary
    elif card == "off" or card == "none":
        assert f"{card}signing" in summary.replace(" ", "")
    else:
        assert f"{card}statements signed" in summary
