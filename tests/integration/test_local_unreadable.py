"""Local archives the tracker's user may not read (docs/http-api.md, "Snapshot sources";
"Archive answers"): agave run with systemd's ``UMask=0077`` writes its archives 0600, its own
user's; a tracker run as another user can list them, never open them.

Real parts: the ``serve`` command as a subprocess, on 127.0.0.1, its permission failures the
kernel's own. The tests run as root, who reads any file: the tracker is started without the
two capabilities that let it (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``, dropped with
``setpriv``), so a file of another user's, 0600, is as closed to it as to any other user;
as another user than root, a file of mode 0 is.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers_process import Serve, start_serve
from helpers_tracker import wait_until, write_config
from names import full_name

GROUP = "local"
READABLE, LOCKED = full_name(100), full_name(200)
#: ``nobody``: the validator's user, as far as the tracker can tell.
OTHER_USER = 65534
ROOT = os.geteuid() == 0
#: What starts the tracker as a user that file permissions hold (root less the capabilities
#: that pass them by).
AS_A_PLAIN_USER = (
    [
        "setpriv",
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
        "--",
    ]
    if ROOT
    else []
)

pytestmark = pytest.mark.skipif(
    ROOT and shutil.which("setpriv") is None, reason="setpriv is needed to drop root's bypass"
)


def lock(path: Path) -> None:
    """Make ``path`` unreadable to the tracker, as agave's ``UMask=0077`` leaves it."""
    if ROOT:
        os.chown(path, OTHER_USER, OTHER_USER)
        path.chmod(0o600)
    else:
        path.chmod(0)


def unlock(path: Path) -> None:
    """Make ``path`` readable to the tracker again."""
    path.chmod(0o644)


async def serve_ledger(tmp_path: Path, ledger: Path, scrape_interval: str) -> Serve:
    """``serve`` (as a plain user) with ``ledger`` its one local target; archives not checked
    (their bytes are not archives), so that every readable one is listed at once."""
    config = write_config(
        tmp_path,
        {
            "scrape_interval": scrape_interval,
            "verify_archives": False,
            "target_groups": [{"group": GROUP, "local_targets": {"paths": [str(ledger)]}}],
        },
    )
    return await start_serve("--config", str(config), prefix=AS_A_PLAIN_USER)


async def listed(client: httpx.AsyncClient, serve: Serve) -> set[str]:
    """The file names ``/v1/snapshots`` lists."""
    answer: list[dict[str, Any]] = (await client.get(f"{serve.base}/v1/snapshots")).json()
    return {f["file_name"] for source in answer for f in source["files"]}


async def test_an_archive_the_tracker_cannot_read_is_not_listed_and_logged_once(
    tmp_path: Path,
) -> None:
    """The newest archive, 0600 and another user's: listed and ranked best, its GET answered
    404 ``not a regular file any more``. It is not listed now; the log says why once
    (``local_archive_unreadable``, its path, ``Permission denied``), not every round; with
    none readable, the target's note points there (it said the directory held no archive
    name); once readable again they are listed."""
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / READABLE).write_bytes(b"readable")
    (ledger / LOCKED).write_bytes(b"locked")
    lock(ledger / LOCKED)
    serve = await serve_ledger(tmp_path, ledger, "100ms")
    async with httpx.AsyncClient(trust_env=False) as client:
        rounds: set[str] = set()

        async def three_rounds() -> bool:
            [target] = (await client.get(f"{serve.base}/v1/targets")).json()
            if target["last_scrape"] is not None:
                rounds.add(target["last_scrape"])
            return len(rounds) >= 3

        await wait_until(three_rounds)
        assert await listed(client, serve) == {READABLE}
        answer = await client.get(f"{serve.base}/v1/{GROUP}/{LOCKED}")
        assert answer.status_code == 404
        assert answer.text == f"no source of group {GROUP!r} advertises {LOCKED}\n"
        [line] = [li for li in serve.log.splitlines() if "local_archive_unreadable" in li]
        assert str(ledger / LOCKED) in line and "Permission denied" in line
        lock(ledger / READABLE)  # every archive closed: the target says where to look

        async def none() -> bool:
            return await listed(client, serve) == set()

        await wait_until(none)
        [target] = (await client.get(f"{serve.base}/v1/targets")).json()
        assert target["health"] == "up"
        assert "none that the tracker's user may read" in target["note"]
        assert "local_archive_unreadable" in target["note"]
        lines = [li for li in serve.log.splitlines() if "local_archive_unreadable" in li]
        assert [str(ledger / READABLE) in li for li in lines] == [False, True]
        unlock(ledger / READABLE)
        unlock(ledger / LOCKED)

        async def both() -> bool:
            return await listed(client, serve) == {READABLE, LOCKED}

        await wait_until(both)
        assert (await client.get(f"{serve.base}/v1/{GROUP}/{LOCKED}")).content == b"locked"
    assert await serve.stop() == 0


async def test_a_local_archive_closed_since_its_listing_is_answered_why(tmp_path: Path) -> None:
    """An archive listed readable, then closed to the tracker before the next scrape: its GET
    says that the tracker cannot read it (502), not that it is no regular file (404)."""
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / READABLE).write_bytes(b"readable")
    serve = await serve_ledger(tmp_path, ledger, "5m")
    async with httpx.AsyncClient(trust_env=False) as client:

        async def there() -> bool:
            return await listed(client, serve) == {READABLE}

        await wait_until(there)
        lock(ledger / READABLE)
        answer = await client.get(f"{serve.base}/v1/{GROUP}/{READABLE}")
        assert (answer.status_code, answer.text) == (
            502,
            f"cannot read {READABLE} in its local directory: Permission denied\n",
        )
    assert await serve.stop() == 0


async def test_a_failed_file_stays_refused_while_its_directory_cannot_be_listed(
    tmp_path: Path,
) -> None:
    """A ledger directory that cannot be listed (closed to the tracker's user; here renamed
    away, which root's listing cannot pass by: the same failure of the same probe) keeps its
    last listing for ``max_target_failures`` scrapes. The check of its corrupt full was
    forgotten at the next round of the local checks: the full was ranked best, and served
    where its file still opened, until the directory came back and it was checked again.
    Its refusal stands now, and the same file is not read again (no network: the daemon's
    own classes, a real archive)."""
    from archives import build_archive

    from tracker.config.loading import load_config
    from tracker.core.digests import Digests
    from tracker.discovery.scrape import Scraper
    from tracker.ordering.index import Index, TargetKey
    from tracker.proof.background.localfiles import LocalProofs

    ledger = tmp_path / "ledger"
    ledger.mkdir()
    name, data = build_archive(1100)
    (ledger / name).write_bytes(data[: len(data) // 2])
    config = load_config(
        write_config(
            tmp_path,
            {"target_groups": [{"group": GROUP, "local_targets": {"paths": [str(ledger)]}}]},
        )
    )
    index, key = Index(), TargetKey(GROUP, str(ledger))
    scraper = Scraper(config, index)
    proofs = LocalProofs(lambda: config, index, Digests())
    try:
        await scraper.scrape_round()
        assert await proofs.round() == 1
        assert index.best_full(GROUP) is None
        assert "truncated" in index.disproven()[key][name]
        ledger.rename(tmp_path / "away")
        await scraper.scrape_round()
        (health,) = scraper.health.values()
        assert health.last_error.startswith(f"cannot list {ledger}")
        assert index.count(key) == 1  # its listing kept (the refused full among it)
        assert await proofs.round() == 0
        assert index.best_full(GROUP) is None
        assert "truncated" in index.disproven()[key][name]
        (tmp_path / "away").rename(ledger)
        await scraper.scrape_round()
        assert await proofs.round() == 0  # the same file: its verdict stands, not read again
        assert index.best_full(GROUP) is None
        [(_name, done)] = proofs.of_target(key)
        assert done is not None and "truncated" in done.failed
    finally:
        await scraper.aclose()
