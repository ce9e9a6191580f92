"""The ``download`` log line of a proxied transfer that SIGTERM's grace period cut: the
bytes that went to the client (a zero-copy piece cut short counts what went of it) and who
ended it (``outcome=shutdown``: the tracker, not ``client_gone``). Through the real daemon
(``serve`` as a subprocess) and a real upstream on 127.0.0.1 that stalls part way."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import httpx
import pytest
import trio
from helpers_bytes import MiB, archive_bytes
from helpers_process import start_serve
from helpers_proxy import GROUP
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving, sidecar_listing
from names import full_name

FULL = full_name(7300)
DATA = archive_bytes(8 * MiB, seed=73)


@pytest.mark.parametrize("forced", [False, True], ids=["grace ended", "second SIGTERM"])
async def test_a_transfer_the_grace_period_cut_logs_its_bytes_and_shutdown(
    tmp_path: Path, forced: bool
) -> None:
    # forced: a second SIGTERM ends a long grace at once; the line said client_gone
    stall = 3 * MiB // 2
    up = FakeUpstream(
        files={FULL: DATA},
        listing=sidecar_listing({FULL: DATA}),
        behaviour={FULL: Behaviour(pause_at=stall)},
    )
    async with serving(up):
        settings = {
            "listen": "127.0.0.1:0",
            "internal_listen": "",
            "scrape_interval": "30s",
            "proxy_snapshot_downloads": True,
            "verify_archives": False,  # an opaque blob
            "shutdown_grace": "60s" if forced else "1s",
            "target_groups": [
                {"group": GROUP, "static_targets": {"targets": [up.base.removeprefix("http://")]}}
            ],
        }
        path = tmp_path / "config.yml"
        path.write_text(json.dumps(settings))
        serve = await start_serve("--config", str(path))
        try:
            received, signalled = 0, False
            async with httpx.AsyncClient(
                verify=client_tls(), timeout=30, trust_env=False
            ) as client:
                with trio.fail_after(20):
                    while not (await client.get(f"{serve.base}/v1/snapshots")).json():
                        await trio.sleep(0.05)
                url = f"{serve.base}/v1/{GROUP}/{FULL}"
                async with client.stream("GET", url) as response:
                    assert response.status_code == 200
                    try:
                        async for chunk in response.aiter_raw():
                            received += len(chunk)
                            if received >= MiB and not signalled:
                                # the upstream stalled; the grace period (1 s) will cut it,
                                # or a second SIGTERM once the daemon is stopping
                                serve.proc.send_signal(signal.SIGTERM)
                                signalled = True
                                if forced:
                                    with trio.fail_after(20):
                                        while " stopping " not in serve.log:
                                            await trio.sleep(0.05)
                                    serve.proc.send_signal(signal.SIGTERM)
                    except httpx.HTTPError:
                        pass  # cut short: never a complete 200
            assert 0 < received < len(DATA)
            with trio.fail_after(30):
                assert await serve.proc.wait() == 0
            log = serve.log
        finally:
            serve.kill()
            await serve.proc.wait()
    lines = [line for line in log.splitlines() if " download " in line]
    assert len(lines) == 1, log
    [line] = lines
    assert "outcome=shutdown" in line, line
    logged = int(re.search(r" bytes=([0-9]+)", line)[1])  # type: ignore[index]
    assert received <= logged <= stall, (received, line)
