"""Which targets a reload's change of credentials leaves behind
(tracker.discovery.targetset.credentials_moved, left_behind): until the next round's discovery
tells whether a file's or Consul's target stays, it must not be sent the group's new
credentials; the targets the config names itself, and discovered nodes (never given any),
stay ranked."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trio

from tracker.config.schema import (
    BasicAuth,
    BearerAuth,
    Config,
    FileTargets,
    HttpTargets,
    StaticTargets,
    TargetGroup,
    TLSConfig,
)
from tracker.discovery.roster import Target, TargetHealth
from tracker.discovery.scrape import Scraper
from tracker.discovery.targetset import credentials_moved, left_behind
from tracker.errors import SourceFailed, UpstreamError
from tracker.ordering.index import Index, TargetKey
from tracker.proxy.upstream import group_asking, group_now

FROM_FILE = TargetKey("g", "http://10.0.0.9:8899")  # a file's (or Consul's) sidecar
STATIC = TargetKey("g", "http://10.0.0.1:8899")
HTTP = TargetKey("g", "http://10.0.0.2:8899/")
NODE = TargetKey("g", "http://10.0.0.3:8899", discovered=True)
OTHER = TargetKey("h", "http://10.0.0.9:8899")
KEYS = [FROM_FILE, STATIC, HTTP, NODE, OTHER]


def config(**credentials: object) -> Config:
    named = TargetGroup(
        group="g",
        static_targets=StaticTargets(("10.0.0.1:8899",)),
        http_targets=HttpTargets(("http://10.0.0.2:8899/",)),
        file_targets=FileTargets("/etc/targets.txt"),
        **credentials,  # type: ignore[arg-type]
    )
    return Config(target_groups=(named, TargetGroup(group="h")))


@pytest.mark.parametrize(
    ("old", "new", "left"),
    [
        # unchanged credentials: whoever had them before has them still
        ({"bearer_auth": BearerAuth(token="a")}, {"bearer_auth": BearerAuth(token="a")}, []),
        # a rotated token, a new password, new TLS settings: the file's target waits
        (
            {"bearer_auth": BearerAuth(token="a")},
            {"bearer_auth": BearerAuth(token="b")},
            [FROM_FILE],
        ),
        (
            {"basic_auth": BasicAuth(username="u", password="p")},
            {"basic_auth": BasicAuth(username="u", password="q")},
            [FROM_FILE],
        ),
        ({}, {"tls_config": TLSConfig(insecure_skip_verify=True)}, [FROM_FILE]),
        ({}, {"bearer_auth": BearerAuth(token="new")}, [FROM_FILE]),
    ],
)
def test_a_change_of_credentials_leaves_behind_what_the_config_does_not_name(
    old: dict[str, object], new: dict[str, object], left: list[TargetKey]
) -> None:
    moved = credentials_moved(config(**old), config(**new))
    assert [key for key in KEYS if left_behind(moved, key)] == left


def test_a_group_dropped_or_added_leaves_nothing_behind() -> None:
    token = {"bearer_auth": BearerAuth(token="a")}
    assert credentials_moved(Config(), config(**token)) == {}
    assert credentials_moved(config(**token), Config()) == {}


async def test_a_reload_rotating_a_token_drops_what_it_leaves_behind_at_once() -> None:
    # A removed file's target still ranked until the next round's discovery: a download
    # asked of it in that window carried the rotated token to a host no longer configured;
    # a result of it waiting for the round's next hand-over came back after the reload.
    index = Index()
    scraper = Scraper(config(bearer_auth=BearerAuth(token="a")), index)
    try:
        for key in KEYS[1:]:
            index.apply(key, [], datetime.now(UTC))
        scraper._results.batching = True  # a round going on: FROM_FILE's result waits
        scraper._results.add(FROM_FILE, [], datetime.now(UTC), 0.1)
        scraper.update_config(config(bearer_auth=BearerAuth(token="b")))
        scraper._results.flush()
        assert sorted(index.keys()) == sorted([STATIC, HTTP, NODE, OTHER])
    finally:
        await scraper.aclose()


async def test_a_probe_waiting_in_the_round_is_not_sent_the_new_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The round going on keeps the targets it read before the reload: a probe still waiting
    # for its turn went out with the group's new credentials to a target the reload may
    # have removed, and put it back in the index.
    scraper = Scraper(config(bearer_auth=BearerAuth(token="a")), Index())
    probed: list[str] = []

    async def probe(target: Target, _group: object) -> list[object]:
        probed.append(target.key.target)
        return []

    try:
        monkeypatch.setattr(scraper._probes, "probe", probe)
        scraper.update_config(config(bearer_auth=BearerAuth(token="b")))
        limiter = trio.CapacityLimiter(1)
        for key, kind in ((FROM_FILE, "sidecar"), (STATIC, "sidecar")):
            await scraper._probe_one(TargetHealth(Target(key, kind, key.target)), limiter)
        assert probed == [STATIC.target]
    finally:
        await scraper.aclose()


def test_what_outlives_a_reload_asks_with_the_group_of_now_and_only_what_it_lists() -> None:
    # A refresh, a speed-test round or a head read waiting its turn took its group once: after
    # a reload it sent the old credentials, to sources the reload may have removed.
    new = config(bearer_auth=BearerAuth(token="new"))
    assert group_asking(new, "g", listed=True) is new.group_named("g")
    with pytest.raises(UpstreamError, match="no longer listed"):
        group_asking(new, "g", listed=False)
    with pytest.raises(UpstreamError, match="group 'gone' was removed by a reload"):
        group_asking(new, "gone", listed=True)


def _removed(_key: TargetKey) -> TargetGroup:
    raise UpstreamError("group 'g' was removed by a reload")


@pytest.mark.parametrize(
    ("asking", "sent"),
    [
        (None, "old"),  # nothing outlives a reload: the group given
        (lambda _key: config(bearer_auth=BearerAuth(token="new")).group_named("g"), "new"),
        (_removed, "removed by a reload"),  # that source fails, the next one is asked
    ],
    ids=["given", "rotated", "removed"],
)
def test_a_request_that_waited_for_its_slot_is_sent_with_the_group_of_now(
    asking: object, sent: str
) -> None:
    # The group is read once the source's transfer slot is held: a request that waited in
    # its queue (up to busy_wait) or for its hedge sent the old credentials after a reload.
    old = config(bearer_auth=BearerAuth(token="old")).group_named("g")
    assert old is not None
    if sent == "removed by a reload":
        with pytest.raises(SourceFailed, match=sent):
            group_now(old, asking, STATIC)  # type: ignore[arg-type]
        return
    group = group_now(old, asking, STATIC)  # type: ignore[arg-type]
    assert group.bearer_auth is not None and group.bearer_auth.resolved_token == sent
