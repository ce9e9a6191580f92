"""HTTP clients for a group's own sources: its TLS settings, bounded pools, explicit timeouts.

Credentials are not set on the client: callers add the group's ``authorization`` header per
request, and only to that group's own sources (redirects are never followed automatically, so
a header cannot leak to another origin).
"""

from __future__ import annotations

import ssl

import httpx

from tracker.config import TargetGroup, TLSConfig


def ssl_context(tls: TLSConfig | None) -> ssl.SSLContext:
    """A client TLS context for ``tls`` (system CAs when no ``ca_file``)."""
    ctx = ssl.create_default_context(cafile=tls.ca_file or None if tls else None)
    if tls is None:
        return ctx
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file or None)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def build_client(
    group: TargetGroup,
    *,
    connect_timeout: float,
    read_timeout: float | None,
    max_connections: int,
    tls: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """A client for ``group``'s sources. HTTP/1.1 only (HTTP/2 is far slower for bulk bodies).

    ``tls``: a context built by :func:`ssl_context` for this group, to share between clients
    (loading the system's CA store costs milliseconds each time).
    """
    return httpx.AsyncClient(
        verify=tls or ssl_context(group.tls_config),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(connect_timeout, read=read_timeout, pool=connect_timeout),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=min(64, max_connections)
        ),
        headers={"accept-encoding": "identity", "user-agent": "solana-snapshot-tracker"},
    )


def auth_headers(group: TargetGroup) -> dict[str, str]:
    """The group's credentials as request headers (empty when it has none)."""
    value = group.authorization
    return {"authorization": value} if value else {}
