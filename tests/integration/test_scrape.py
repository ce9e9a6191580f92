"""The scrape loop against real upstreams: failures, timeouts, bad sidecars, credentials."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import quart
import trio
from fakes import Sidecar, Validator, sidecar_info
from helpers_ports import REFUSED
from helpers_server import serve_app
from helpers_sources import Answer, ScriptedApp
from helpers_tracker import start_tracker, wait_until, write_config
from names import full_name, incremental_name
from quart_trio import QuartTrio

from tracker.clientwire.transport import HeadClient
from tracker.config.schema import Config, HttpTargets, TargetGroup
from tracker.discovery.http import probe_http
from tracker.discovery.scrape import Scraper
from tracker.errors import ProbeError
from tracker.ordering.index import Index


async def targets(client: httpx.AsyncClient, base: str) -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in (await client.get(f"{base}/v1/targets")).json()}


def hanging_app(release: trio.Event) -> QuartTrio:
    app = QuartTrio(__name__)

    @app.get("/v1/snapshots")
    async def hang() -> quart.Response:
        await release.wait()
        return quart.Response(b"[]", content_type="application/json")

    return app


async def test_dead_target_dropped_after_max_failures(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    sidecar = Sidecar(body=[sidecar_info((full_name(100), 1))])
    up = await nursery.start(serve_app, sidecar.app())
    path = write_config(
        tmp_path,
        {
            "scrape_interval": "100ms",
            "max_target_failures": 3,
            "target_groups": [{"group": "g", "static_targets": {"targets": [up[7:]]}}],
        },
    )
    base = (await start_tracker(nursery, path))[0]

    async def listed() -> bool:
        return len((await client.get(f"{base}/v1/snapshots")).json()) == 1

    await wait_until(listed)
    sidecar.status = 500
    # The snapshot stays through failures 1 and 2, and is gone after the third in a row.
    seen_kept = False
    with trio.fail_after(10):
        while (await client.get(f"{base}/v1/snapshots")).json():
            t = (await targets(client, base))[up]
            seen_kept |= t["health"] == "down"
            await trio.sleep(0.01)
    assert seen_kept, "the snapshot must survive the first failures"
    t = (await targets(client, base))[up]
    assert t["health"] == "down" and t["snapshots"] == 0 and "500" in t["last_error"]
    assert t["consecutive_failures"] >= 3


async def test_hanging_target_delays_nobody(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    release = trio.Event()
    hang_up = await nursery.start(serve_app, hanging_app(release))
    good = Sidecar(body=[sidecar_info((full_name(100), 1))])
    good_up = await nursery.start(serve_app, good.app())
    path = write_config(
        tmp_path,
        {
            "scrape_interval": "10s",
            "scrape_timeout": "8s",
            "target_groups": [
                {"group": "g", "static_targets": {"targets": [hang_up[7:], good_up[7:]]}}
            ],
        },
    )
    base = (await start_tracker(nursery, path))[0]

    async def good_listed() -> bool:
        with trio.fail_after(4.0):  # no API answer may wait for the hanging probe (8 s)
            return len((await client.get(f"{base}/v1/snapshots")).json()) == 1

    await wait_until(good_listed, timeout=10)
    # Listed while the hanging probe still waits (not yet timed out, which a round that
    # published only once every probe ended would have to wait for), whatever the host's load.
    assert (await targets(client, base))[hang_up]["health"] != "down"

    async def hang_timed_out() -> bool:
        return (await targets(client, base))[hang_up]["health"] == "down"

    await wait_until(hang_timed_out, timeout=20)
    t = (await targets(client, base))[hang_up]
    assert "timed out" in t["last_error"]
    release.set()


def dated(info: dict[str, Any], mod_time: str) -> dict[str, Any]:
    """A sidecar's ``info`` with every file's ``mod_time`` set to ``mod_time``."""
    return {**info, "files": [{**f, "mod_time": mod_time} for f in info["files"]]}


BAD_BODIES: dict[str, Any] = {
    "invalid json": b"[{",
    "wrong types": [{"slot": "1", "base_slot": 1, "hash": "x", "files": [], "size": 0}],
    "invalid hash": [
        {
            **sidecar_info((full_name(100), 1)),
            "hash": "0OIl" * 10,
        }
    ],
    "a million entries": b"[" + b",".join([b"{}"] * 1_000_000) + b"]",
    "not a list": {"slot": 1},
    # OverflowError once in UTC: it ended the scrape loop, then the daemon.
    "a time past the calendar": [
        dated(sidecar_info((full_name(100), 1)), "0001-01-01T00:00:00+01:00")
    ],
}


async def test_bad_sidecars_are_down_and_isolated(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    good = Sidecar(body=[sidecar_info((full_name(100), 1))])
    ups = {"good": await nursery.start(serve_app, good.app())}
    for label, body in BAD_BODIES.items():
        ups[label] = await nursery.start(serve_app, Sidecar(body=body).app())
    huge_up = await nursery.start(serve_app, huge_body_app())
    ups["huge"] = huge_up
    path = write_config(
        tmp_path,
        {
            "scrape_interval": "1s",
            "target_groups": [
                {"group": "g", "static_targets": {"targets": [u[7:] for u in ups.values()]}}
            ],
        },
    )
    base = (await start_tracker(nursery, path))[0]

    async def all_scraped() -> bool:
        return all(t["health"] != "unknown" for t in (await targets(client, base)).values())

    await wait_until(all_scraped)
    state = await targets(client, base)
    assert state[ups["good"]]["health"] == "up" and state[ups["good"]]["snapshots"] == 1
    for label, up in ups.items():
        if label == "good":
            continue
        assert state[up]["health"] == "down", label
        assert state[up]["last_error"], label
        assert "\n" not in state[up]["last_error"]
    assert len((await client.get(f"{base}/v1/snapshots")).json()) == 1


async def test_a_probe_failing_as_no_rule_foresaw_costs_that_target_only(
    nursery: trio.Nursery,
    tmp_path: Path,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A discovered node's name the URL parser could not split again raised a ValueError
    # out of the probe: the scrape round's nursery, then the service, ended. What no rule
    # names is now that target's failure (the other targets scraped, the loop goes on).
    from tracker.discovery import probing

    good = Sidecar(body=[sidecar_info((full_name(100), 1))])
    good_up = await nursery.start(serve_app, good.app())
    bad_up = await nursery.start(serve_app, Sidecar(body=[]).app())
    probe = probing.Probes.probe

    def failing(self: probing.Probes, target: Any, group: TargetGroup) -> Any:
        if target.key.target == bad_up:
            raise ValueError("Invalid IPv6 URL")
        return probe(self, target, group)

    monkeypatch.setattr(probing.Probes, "probe", failing)
    path = write_config(
        tmp_path,
        {
            "scrape_interval": "100ms",
            "target_groups": [
                {"group": "g", "static_targets": {"targets": [good_up[7:], bad_up[7:]]}}
            ],
        },
    )
    base = (await start_tracker(nursery, path))[0]

    async def twice_failed() -> bool:
        return (await targets(client, base))[bad_up]["consecutive_failures"] >= 2

    await wait_until(twice_failed)
    state = await targets(client, base)
    assert state[bad_up]["health"] == "down"
    assert state[bad_up]["last_error"] == "not read: ValueError"
    assert state[good_up]["health"] == "up"


def huge_body_app() -> QuartTrio:
    """Claims and streams a 1 GB JSON body: must be cut off, not buffered."""
    app = QuartTrio(__name__)

    @app.get("/v1/snapshots")
    async def huge() -> quart.Response:
        async def body() -> Any:
            yield b"["
            for _ in range(1024):
                yield b" " * (1024 * 1024)

        response = quart.Response(body(), content_type="application/json")
        response.headers["content-length"] = str(1024 * 1024 * 1024 + 1)
        return response

    return app


async def test_file_targets_reread_every_scrape(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    a = await nursery.start(serve_app, Sidecar(body=[sidecar_info((full_name(100), 1))]).app())
    b = await nursery.start(serve_app, Sidecar(body=[sidecar_info((full_name(200), 1))]).app())
    listing = tmp_path / "targets.txt"
    listing.write_text(f"# fleet\n{a[7:]}\n\n")
    path = write_config(
        tmp_path,
        {
            "scrape_interval": "100ms",
            "target_groups": [{"group": "g", "file_targets": {"path": "targets.txt"}}],
        },
    )
    base = (await start_tracker(nursery, path))[0]

    async def slots(expected: list[int]) -> bool:
        got = [s["slot"] for s in (await client.get(f"{base}/v1/snapshots")).json()]
        return got == expected

    await wait_until(lambda: slots([100]))
    listing.write_text(f'["{b[7:]}"]')
    await wait_until(lambda: slots([200]))


async def test_a_new_group_on_a_retired_groups_missing_file_has_none_of_its_sidecars(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """A reload retires group a, whose file is deleted, and adds b (its own token) on that
    path, not written yet: b never probes a's sidecar with its token, lists or serves it,
    where it did until the file was written again (docs/configuration.md,
    ``file_targets.path``); once written, b reads it."""
    old = Sidecar(body=[sidecar_info((full_name(100), 1))])
    own = Sidecar(body=[])  # b's static sidecar: each probe of it is a round of b
    old_up = await nursery.start(serve_app, old.app())
    own_up = await nursery.start(serve_app, own.app())
    listing = tmp_path / "targets.txt"
    listing.write_text(f"{old_up[7:]}\n")
    a = {"group": "a", "file_targets": {"path": "targets.txt"}}
    b = {
        "group": "b",
        "bearer_auth": {"token": "secret-of-b"},
        "static_targets": {"targets": [own_up[7:]]},
        "file_targets": {"path": "targets.txt"},
    }

    def settings(group: dict[str, Any]) -> dict[str, Any]:
        return {
            "internal_listen": "127.0.0.1:0",
            "scrape_interval": "100ms",
            "target_groups": [group],
        }

    path = write_config(tmp_path, settings(a))
    public, internal = await start_tracker(nursery, path)

    async def slots(group: str) -> list[int]:
        answer = await client.get(f"{public}/v1/snapshots", params={"group": group})
        return [s["slot"] for s in answer.json()]

    async def a_lists() -> bool:
        return await slots("a") == [100]

    def sent_b(sidecar: Sidecar) -> int:
        return sum(r[2].get("authorization") == "Bearer secret-of-b" for r in sidecar.requests)

    async def rounds_of_b(count: int) -> bool:
        return sent_b(own) >= count

    await wait_until(a_lists)
    listing.unlink()
    write_config(tmp_path, settings(b))
    assert (await client.post(f"{internal}/reload")).status_code == 200
    # A round's discovery comes after the previous round's probes: from b's second round
    # on, the round before was one of the new config, with a's list if it were kept.
    await wait_until(lambda: rounds_of_b(2))
    second = sent_b(own)
    await wait_until(lambda: rounds_of_b(second + 1))
    listed = (await client.get(f"{public}/v1/targets")).json()
    assert [t["target"] for t in listed if t["group"] == "b"] == [own_up]
    assert await slots("b") == []
    assert sent_b(old) == 0
    listing.write_text(f"{old_up[7:]}\n")  # written now: b reads it, with its token

    async def b_reads_it() -> bool:
        return sent_b(old) > 0 and await slots("b") == [100]

    await wait_until(b_reads_it)


async def test_credentials_go_to_own_group_only(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    secret = Sidecar(body=[])
    other = Sidecar(body=[])
    validator = Validator(full=full_name(5), incremental=incremental_name(5, 6))
    seen: list[dict[str, str]] = []
    v_app = validator.app()

    @v_app.before_request
    async def record() -> None:
        seen.append({k.lower(): v for k, v in quart.request.headers.items()})

    s_up = await nursery.start(serve_app, secret.app())
    o_up = await nursery.start(serve_app, other.app())
    v_up = await nursery.start(serve_app, v_app)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    path = write_config(
        tmp_path,
        {
            "scrape_interval": "100ms",
            "target_groups": [
                {
                    "group": "a",
                    "bearer_auth": {"token_file": "token"},
                    "static_targets": {"targets": [s_up[7:]]},
                    "http_targets": {"targets": [v_up]},
                },
                {
                    "group": "b",
                    "basic_auth": {"username": "u", "password": "p"},
                    "static_targets": {"targets": [o_up[7:]]},
                },
            ],
        },
    )
    await start_tracker(nursery, path)

    async def scraped() -> bool:
        return bool(secret.requests and other.requests and seen)

    await wait_until(scraped)
    assert secret.requests[0][2].get("authorization") == "Bearer s3cret"
    assert seen[0].get("authorization") == "Bearer s3cret"
    assert other.requests[0][2].get("authorization") == "Basic dTpw"
    del client


async def test_configured_targets_are_never_paced(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """More configured targets than 8 x ``scrape_concurrency`` are all probed at once in a
    round: pacing (over 80 % of the interval) is for thousands of discovered nodes. Paced,
    these 12 would take 0.8 x 60 s / 12 = 4 s apart."""
    validator = Validator(full=full_name(100))
    up = await nursery.start(serve_app, validator.app())
    listed = [f"{up}/{n}" for n in range(12)]
    path = write_config(
        tmp_path,
        {
            "scrape_interval": "60s",
            "scrape_concurrency": 1,
            "target_groups": [{"group": "g", "http_targets": {"targets": listed}}],
        },
    )
    base = (await start_tracker(nursery, path))[0]

    async def all_scraped() -> bool:
        return all(t.get("last_scrape") for t in (await targets(client, base)).values())

    with trio.fail_after(10):
        await wait_until(all_scraped)


async def test_the_size_memo_has_room_for_every_url_of_a_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,100 HTTP targets name up to 2,200 archive URLs a round, and their successors: the
    memo of their sizes must hold them all, else each is forgotten before it is asked again
    and every round repeats every size HEAD. Shown at a hundredth of the scale, a memo of
    41 URLs made for 11 targets (the round of 1,100 refused targets took 5-12 s of the
    suite; the room made is four URLs a target whatever the memo's default)."""
    from tracker.discovery import probing

    monkeypatch.setattr(probing, "SizeMemo", partial(probing.SizeMemo, 41))
    targets = tuple(f"http://{REFUSED}/{n}" for n in range(11))  # refused
    group = TargetGroup(group="g", http_targets=HttpTargets(targets))
    scraper = Scraper(Config(target_groups=(group,), scrape_concurrency=256), Index())
    assert scraper.sizes.limit == 41  # the memo made smaller than a round's URLs
    try:
        with trio.fail_after(30):
            await scraper.scrape_round()
    finally:
        await scraper.aclose()
    assert scraper.sizes.limit >= 4 * len(targets)


@pytest.mark.parametrize(
    "host",
    # an empty label, an over-long one (the standard library's IDNA), a name IDNA 2008
    # refuses (trio's: idna.IDNAError), a port httpx parses and no socket has
    ["a..b.example", "a" * 64 + ".example", "xn--zz", "127.0.0.1:65536"],
)
async def test_a_location_no_host_could_have_costs_its_target_only(
    nursery: trio.Nursery, host: str
) -> None:
    """A target's alias redirects to a host that can be no host: that target is down with
    a one-line reason, the round goes on (the error was a UnicodeError or ValueError that
    ended the scrape loop, then the daemon)."""
    name = full_name(100)
    bad = ScriptedApp({"/snapshot.tar.bz2": Answer(302, (("location", f"http://{host}/{name}"),))})
    good = ScriptedApp({"/snapshot.tar.bz2": Answer(302, (("location", f"/{name}"),))})
    urls = [await nursery.start(serve_app, app) for app in (bad, good)]
    config = Config(target_groups=(TargetGroup(group="g", http_targets=HttpTargets(tuple(urls))),))
    index = Index()
    scraper = Scraper(config, index)
    try:
        await scraper.scrape_round()
    finally:
        await scraper.aclose()
    health = {key.target: h for key, h in scraper.health.items()}
    assert health[urls[0]].last_error and "\n" not in health[urls[0]].last_error
    assert health[urls[0]].health == "down" and health[urls[1]].health == "up"
    assert [s.key.target for s in index.sources("g")] == [urls[1]]


@pytest.mark.parametrize("location", ["http://xn--zz/{}", "http://xn--zz:8899/{}", "//xn--zz/{}"])
async def test_a_discovered_node_naming_a_host_idna_refuses_is_a_probe_error(
    nursery: trio.Nursery, location: str
) -> None:
    """The nodes of ``cluster_discovery`` are asked with the lean client, which never reads
    a ``Location``'s host: the probe read it, and httpx raised ``idna.IDNAError`` there,
    past the scrape loop, which ended ``serve`` (one node of the cluster could). It is a
    ProbeError of that node."""
    name = full_name(100)
    app = ScriptedApp({"/snapshot.tar.bz2": Answer(302, (("location", location.format(name)),))})
    url = await nursery.start(serve_app, app)
    with pytest.raises(ProbeError, match="Location"):
        await probe_http(HeadClient(5.0), url)
