"""A plain file server listed as an HTTP target (``python3 -m http.server`` in a directory
of archives): it answers 404 to ``HEAD /snapshot.tar.bz2``, so it is up and lists nothing;
``/v1/targets`` and the status page say why (``note``), not an empty ``last_error``."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import trio
import yaml
from helpers_fileserver import file_server
from helpers_process import start_serve
from helpers_tls import client_tls

from tracker.discovery.roster import nothing_listed

ROOT = Path(__file__).resolve().parents[2]


async def test_a_plain_file_server_target_says_why_it_lists_nothing(tmp_path: Path) -> None:
    www = tmp_path / "www"
    shutil.copytree(ROOT / "examples" / "ledger", www)  # archives it serves, never listed
    with file_server(www) as base:
        config = {
            "scrape_interval": "1s",
            "listen": "127.0.0.1:0",
            "internal_listen": "127.0.0.1:0",
            "target_groups": [{"group": "files", "http_targets": {"targets": [base]}}],
        }
        path = tmp_path / "tracker.yml"
        path.write_text(yaml.safe_dump(config))
        serve = await start_serve("--config", str(path))
        try:
            async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
                with trio.fail_after(30):
                    while True:
                        [target] = (await client.get(f"{serve.base}/v1/targets")).json()
                        if target["health"] != "unknown":
                            break
                        await trio.sleep(0.05)
                page = (await client.get(f"{serve.internal}/?refresh=0")).text
        finally:
            serve.kill()
            await serve.proc.wait()
    assert (target["health"], target["snapshots"], target["last_error"]) == ("up", 0, "")
    assert "404" in target["note"] and "/snapshot.tar.bz2" in target["note"], target
    assert "plain file server" in target["note"]
    assert '<span class="note">lists no snapshot: HEAD /snapshot.tar.bz2' in page


def test_only_a_target_that_is_up_and_lists_nothing_has_a_note() -> None:
    assert nothing_listed("http", "up", 0).startswith("lists no snapshot: HEAD")
    assert nothing_listed("sidecar", "up", 0).startswith("lists no snapshot")
    assert nothing_listed("local", "up", 0).startswith("lists no snapshot")
    assert nothing_listed("http", "up", 2) == ""
    assert nothing_listed("http", "down", 0) == ""  # its last_error says why
    assert nothing_listed("cluster", "up", 0) == ""  # an RPC URL holds no snapshots
