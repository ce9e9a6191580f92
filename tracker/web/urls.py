"""The tracker's own base URL as clients see it (proxy mode rewrites JSON URLs with it)."""

from __future__ import annotations

from collections.abc import Mapping

from tracker.core.hosts import is_authority

# What may appear in a Host / X-Forwarded-Host value we echo back into URLs: a host name, an
# IPv4 or bracketed IPv6 address, and a port (core.hosts). Anything else falls back to the
# request's Host.


def public_base(public_url: str, headers: Mapping[str, str], scheme: str, host: str) -> str:
    """``public_url`` (trailing slash dropped), else X-Forwarded-Proto/Host, else the request."""
    if public_url:
        return public_url.rstrip("/")
    proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    fwd_host = headers.get("x-forwarded-host", "").split(",")[0].strip()
    if proto not in ("http", "https"):
        proto = scheme if scheme in ("http", "https") else "http"
    if not is_authority(fwd_host):
        fwd_host = host if is_authority(host) else "localhost"
    return f"{proto}://{fwd_host}"
