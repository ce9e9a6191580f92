"""curl as the client, the way users measure a download: one process, one fresh connection.

bench/client.py reads with 4 MiB ``recv_into`` so that the server is what is measured; the
figures of issue 16 instead measure what an operator sees with ``curl -o /dev/null URL``
(16 KiB reads, its own connection), where any pause of the server between pieces shows.
"""

from __future__ import annotations

import subprocess
import time

import attrs

from bench.procs import die_with_parent

#: What curl prints after a transfer: status, body bytes, seconds to the first byte, in total.
_WRITE_OUT = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"


class CurlError(Exception):
    """curl failed, or the answer was not the expected one."""


@attrs.frozen
class CurlGet:
    """One finished curl download."""

    status: int
    body_bytes: int
    first_byte: float
    seconds: float

    @property
    def rate(self) -> float:
        return self.body_bytes / self.seconds


def _argv(curl: str, url: str, timeout: float) -> list[str]:
    limit = f"{timeout:g}"
    return [curl, "-sS", "--http1.1", "--max-time", limit, "-o", "/dev/null", "-w", _WRITE_OUT, url]


def _parse(url: str, out: str, expect: int, size: int | None) -> CurlGet:
    fields = out.split()
    if len(fields) != 4:
        raise CurlError(f"{url}: unexpected curl output {out!r}")
    got = CurlGet(int(fields[0]), int(fields[1]), float(fields[2]), float(fields[3]))
    if got.status != expect or (size is not None and got.body_bytes != size):
        raise CurlError(f"{url}: status {got.status}, {got.body_bytes} bytes")
    return got


def curl_get(
    curl: str, url: str, *, expect: int = 200, size: int | None = None, timeout: float = 300
) -> CurlGet:
    """GET ``url`` with curl into /dev/null on a fresh connection."""
    done = subprocess.run(
        _argv(curl, url, timeout), capture_output=True, text=True, timeout=timeout + 30,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    if done.returncode != 0:
        raise CurlError(f"{url}: curl exit {done.returncode}: {done.stderr.strip()}")
    return _parse(url, done.stdout, expect, size)


def curl_many(
    curl: str, urls: list[str], *, size: int | None = None, timeout: float = 600
) -> float:
    """GET every URL at once, one curl each; the aggregate rate (bytes per second of wall
    time from the first start to the last end)."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            _argv(curl, url, timeout),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        for url in urls
    ]
    total = 0
    try:
        for url, proc in zip(urls, procs, strict=True):
            out, err = proc.communicate(timeout=timeout + 30)
            if proc.returncode != 0:
                raise CurlError(f"{url}: curl exit {proc.returncode}: {err.strip()}")
            total += _parse(url, out, 200, size).body_bytes
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return total / (time.perf_counter() - started)
