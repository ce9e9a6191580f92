"""A forgery that two tar readers read two ways (docs/architecture.md, "One reading of the tar
stream") never reaches a client of the cache, a ``fetch`` ledger or a signed statement: the
shipped agave archive with its ``accounts/99.2`` hidden from tar-rs behind a GNU long name
while a pax path names it, and a forged storage tar-rs unpacks in its place
(tests/forgeries.py). Real tracker, real sources on 127.0.0.1, the real command line.
"""

from __future__ import annotations

import os
from pathlib import Path

from agave_storages import ARCHIVE
from forgeries import compressed, long_name_forgery
from helpers_statements import keypair_json
from helpers_tracker import wait_until
from helpers_upstream import FakeUpstream, sidecar_listing
from helpers_wire import raw_request
from test_fetch import fetch_command, ledger_of, run_cli, the_error_line
from test_fetch_sources import tracker_of
from test_verified import GROUP, _listed, fleet, left_nothing, shows_error

from tracker.cli import main
from tracker.ordering.sourcehistory import PREFIX as REJECTED

NAME = "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
FORGED = compressed(long_name_forgery())
REASON = "tar: '././@LongLink' at byte 11776 is a GNU long name; agave writes only regular"


def _key(tmp_path: Path) -> Path:
    key = tmp_path / "signer.json"
    key.write_bytes(keypair_json(bytes(range(32))))
    os.chmod(key, 0o600)
    return key


async def test_the_cache_never_hands_out_nor_signs_the_forgery(tmp_path: Path) -> None:
    good = ARCHIVE.read_bytes()
    attest = {"key": str(_key(tmp_path)), "valid_for": "1h"}
    async with fleet(tmp_path, NAME, FORGED, good, attest=attest) as f:
        await wait_until(lambda: _listed(f.public, NAME, 1))
        first = await raw_request(f.public, f"/v1/{GROUP}/{NAME}", idle=1.0)
        # a 502 naming the check (when it refused before the head went out: a whole answer,
        # the connection kept), or a head and a body that breaks short: never the forgery
        assert first.status in (200, 502)
        if first.status == 502:
            assert b"GNU long name" in first.body, first
        else:
            assert first.closed and len(first.body) < len(FORGED)
        await shows_error(f, lambda error: error.startswith(REJECTED + REASON))
        statement = await raw_request(f.public, f"/v1/{GROUP}/{NAME}.attestation")
        assert statement.status == 404  # nothing held, nothing signed
        await left_nothing(f.cache)
        # The honest copy comes from the other source, proven and signed.
        f.good.listing = sidecar_listing({NAME: good})
        # the rejected copy is held back, not listed: the good one is the one listed
        await wait_until(lambda: _listed(f.public, NAME, 1))
        again = await raw_request(f.public, f"/v1/{GROUP}/{NAME}")
        assert again.status == 200 and again.body == good
        # The last bytes go once the check passed; the copy is promoted and its proof held a
        # moment later (a loaded host: after this client read them), and a statement is
        # signed of a held copy only.
        signed = await raw_request(f.public, f"/v1/{GROUP}/{NAME}.attestation")

        async def statement_signed() -> bool:
            nonlocal signed
            signed = await raw_request(f.public, f"/v1/{GROUP}/{NAME}.attestation")
            return signed.status != 404

        await wait_until(statement_signed)
        assert signed.status == 200 and b'\\"level\\":\\"accounts\\"' in signed.body


async def test_fetch_never_puts_the_forgery_in_the_ledger(tmp_path: Path) -> None:
    ledger = ledger_of(tmp_path)
    async with tracker_of([FakeUpstream(files={NAME: FORGED})]) as tracker:
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true")
        done = await run_cli(*command)
    line = the_error_line(done)
    assert "no source delivered a good copy" in line and "GNU long name" in line, line
    assert list(ledger.iterdir()) == []


def test_attest_never_signs_the_forgery(tmp_path: Path) -> None:
    forged = tmp_path / NAME
    forged.write_bytes(FORGED)
    assert main(["attest", str(forged), "--key", str(_key(tmp_path))]) == 1
    assert not Path(f"{forged}.attestation").exists()
