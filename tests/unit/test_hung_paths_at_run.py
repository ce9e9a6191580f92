"""Paths on a hung mount while the daemon runs, the decisions and the threads without a
network: which TLS settings a config's clients are made of and the lines of those whose
files did not answer (tables); the TLS contexts loaded in threads within a bound, one thread
per setting however many reloads ask; ``serve``'s exit code when its start met a path that
did not answer (75, retried by systemd; 2 stays the config errors')."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

import tracker.net.httpclients as httpclients
from tracker.config.schema import (
    ClusterDiscovery,
    Config,
    StaticTargets,
    TargetGroup,
    TLSConfig,
)
from tracker.discovery.probing import tls_settings, unanswered_tls
from tracker.errors import ConfigError, ConfigNotReady
from tracker.net.httpclients import TlsContexts

CA = TLSConfig(ca_file="/m/ca.pem")
CLIENT = TLSConfig(ca_file="/m/ca.pem", cert_file="/m/c.pem", key_file="/m/c.key")
HELD = 30.0


def group(name: str, tls: TLSConfig | None, *, discovers: bool = False) -> TargetGroup:
    cluster = ClusterDiscovery(rpc=("http://127.0.0.1:8899",)) if discovers else None
    return TargetGroup(
        group=name,
        static_targets=StaticTargets(targets=("127.0.0.1:9",)),
        tls_config=tls,
        cluster_discovery=cluster,
    )


@pytest.mark.parametrize(
    ("groups", "settings"),
    [
        ((), {None}),  # the system's CAs: the clients of origins that are no group's own
        ((group("a", None),), {None}),
        ((group("a", CA),), {None, CA}),
        # a client certificate is its sources' credential: discovery is asked without it
        ((group("a", CLIENT, discovers=True),), {None, CLIENT, CA}),
        ((group("a", CA), group("b", CA)), {None, CA}),
    ],
    ids=["none", "no-tls", "ca", "client-certificate", "shared"],
)
def test_the_tls_settings_a_config_s_clients_are_made_of(
    groups: tuple[TargetGroup, ...], settings: set[TLSConfig | None]
) -> None:
    assert tls_settings(Config(target_groups=groups)) == settings


HUNG_CA = "target_groups[1].tls_config: '/m/ca.pem' did not answer within 3s (a hung mount?)"


@pytest.mark.parametrize(
    ("unanswered", "lines"),
    [
        (set(), []),
        ({CLIENT}, [HUNG_CA]),  # its probes' and downloads' setting
        ({CA}, [HUNG_CA]),  # its discovery's: the same files but the certificate
        ({None}, ["the system's CA files did not answer within 3s (a hung mount?)"]),
    ],
    ids=["none", "client", "discovery", "system"],
)
def test_the_lines_of_tls_files_that_did_not_answer(
    unanswered: set[TLSConfig | None], lines: list[str]
) -> None:
    config = Config(target_groups=(group("a", None), group("b", CLIENT, discovers=True)))
    assert unanswered_tls(config, unanswered, 3.0) == lines


async def test_tls_files_that_hang_cost_a_load_one_bound_and_one_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each setting is loaded in a thread of its own, all at once: the one whose files hang
    is told within the bound (the others loaded), and a load while it still hangs answers at
    once, starting no second thread there (the hang is the test's, at the load's seam)."""
    from helpers_tls import issue

    ca = TLSConfig(ca_file=str(issue(tmp_path, "test-ca").cert))
    hung = TLSConfig(ca_file=str(tmp_path / "mount" / "ca.pem"))
    answers, ended = threading.Event(), threading.Event()
    asked: list[TLSConfig | None] = []
    real = httpclients._load

    def load(tls: TLSConfig | None) -> Any:
        if tls != hung:
            return real(tls)
        asked.append(tls)
        answers.wait(HELD)  # the mount hangs
        ended.set()
        raise OSError("gone")

    monkeypatch.setattr(httpclients, "_load", load)
    contexts = TlsContexts()
    try:
        for _load in range(2):
            with trio.fail_after(HELD / 2):  # within the bound, not the mount's hang
                assert await contexts.load({None, ca, hung}, 0.2) == {hung}
        assert asked == [hung]  # one thread however many loads ask
        assert not ended.is_set()
        assert contexts.context(ca) is httpclients.ssl_context(ca)  # loaded, shared
    finally:
        answers.set()
    assert await trio.to_thread.run_sync(ended.wait, HELD)


def test_serve_exits_75_when_a_path_it_reads_at_its_start_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A path read again at the start (the cache directory's real path, the TLS files, the
    signing key) that does not answer: not ready, retried (75); a config error stays 2."""
    import tracker.service as service
    from tracker.cli import EXIT_NOT_READY, EXIT_USAGE, StartingSignals, serve

    args = argparse.Namespace(log_level="error", log_format="text")
    for raised, code in [
        (ConfigNotReady(["proxy_snapshot_cache_dir: hung"]), EXIT_NOT_READY),
        (ConfigError(["listen: bad"]), EXIT_USAGE),
    ]:

        async def run_tracker(*_args: Any, error: Exception = raised, **_kwargs: Any) -> None:
            raise error

        monkeypatch.setattr(service, "run_tracker", run_tracker)
        assert serve(args, Config(), StartingSignals(lambda *_: None)) == code
