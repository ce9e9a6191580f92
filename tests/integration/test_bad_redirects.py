"""An upstream redirect that cannot be followed is a failed source (502), never a 500: end to
end, for one of each kind (one the tracker refuses, one httpx refuses, one the connection
refuses, and hosts IDNA refuses); which Locations fail and why is
tests/unit/test_upstream_answers.py's table."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from helpers_proxy import advertise, proxy_tracker
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name

FULL = full_name(8800)


@pytest.mark.parametrize(
    "location",
    # No host: refused only where the connection is attempted. A host IDNA refuses: by
    # httpx as it reads the Location (``xn--zz``), or by the resolver (an empty label,
    # an over-long one); each was a 500 with a traceback.
    [
        "ftp://127.0.0.1/x",
        "http://[::1/x",
        "http:///no-host",
        "http://xn--zz/x",
        "http://a..b.example/x",
        "http://" + "a" * 64 + ".example/x",
    ],
)
async def test_an_unusable_redirect_answers_502(tmp_path: Path, location: str) -> None:
    up = FakeUpstream(files={FULL: b"x" * 100})
    up.behaviour[FULL] = Behaviour(redirect_to=location)
    async with serving(up), proxy_tracker() as t:
        advertise(t.index, up.base, [(FULL, up.url(FULL), 100)])
        async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
            got = await client.get(t.url(FULL))
        assert got.status_code == 502
        assert "\n" not in got.text.strip()
        assert "Traceback" not in got.text
