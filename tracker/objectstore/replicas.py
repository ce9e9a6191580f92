"""Which replica a lock names, and whether this replica may follow it there (pure logic).

A lock object's ``replica`` (the holder's ``replica_url``) is read from the bucket: anyone with
write access to the bucket can put any URL there, so it is network input, never authority.
:func:`holder_route` decides how it is used:

- with ``object_store.replicas`` (the base URLs of the fleet's replicas, as the operator typed
  them), only a holder whose ``replica_url`` is one of them is followed, and it is then trusted
  as typed (like a configured target);
- without it, the holder is reached as an address from the network: the egress policy
  (:mod:`tracker.net.egress`, ``egress.allow``/``deny``) is checked after resolution and before
  connecting, so a private replica network must be in ``egress.allow``.

What a holder then serves is checked like any source's bytes, and more strictly: its answer
must state a length equal to the archive's size in the index (the caller's job).
:func:`own_url_warning` tells an operator (``check-config``, the start-up log) when the other
replicas would refuse this one's own ``replica_url``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

import attrs

from tracker.config.schema import Config
from tracker.core.hosts import canonical_authority
from tracker.core.text import quoted
from tracker.net.egress import policy_of

#: Longest ``replica_url`` taken from a lock object.
MAX_URL = 2048


@attrs.frozen
class HolderRoute:
    """How to reach a lock's holder: its ``base`` URL, ``trusted`` when it is listed in
    ``object_store.replicas`` (else the egress policy applies to every connection)."""

    base: str
    trusted: bool


def base_url(text: str) -> str | None:
    """``text`` as a replica's base URL (http(s), a host, no credentials, query or fragment;
    scheme and host in lower case, the scheme's default port left out, no trailing slash);
    None when it is none."""
    if len(text) > MAX_URL or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in text):
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    if parts.query or parts.fragment or "?" in text or "#" in text:
        return None
    default = {"http": 80, "https": 443}[scheme]
    shown = f"[{host}]" if ":" in host else host
    netloc = shown if port in (None, default) else f"{shown}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def same_replica(url: str, replicas: Iterable[str]) -> bool:
    """Whether ``url`` is one of ``replicas`` as base URLs (:func:`base_url`), its host
    however it is spelled (``[2001:db8::a]``, ``[2001:db8:0::a]``:
    :func:`~tracker.core.hosts.canonical_host`); False when it is no base URL. Pure."""
    identity = _identity(url)
    return identity is not None and identity in {_identity(other) for other in replicas}


def _identity(url: str) -> str | None:
    base = base_url(url)
    if base is None:
        return None
    scheme, _sep, rest = base.partition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{canonical_authority(authority)}{slash}{path}"


def holder_route(replica_url: str, *, own: str, replicas: tuple[str, ...]) -> HolderRoute | str:
    """How to reach the holder a lock names by ``replica_url``, or why it is not followed
    (one line; "" when it is this replica itself). ``own``: this replica's ``replica_url``;
    ``replicas``: ``object_store.replicas``."""
    if not replica_url:
        return "the holder gives no replica_url"
    base = base_url(replica_url)
    if base is None:
        return f"replica_url {quoted(replica_url)} is not an http(s) base URL"
    if own and same_replica(base, (own,)):
        return ""
    if not replicas:
        return HolderRoute(base, trusted=False)
    if same_replica(base, replicas):
        return HolderRoute(base, trusted=True)
    return f"replica_url {quoted(replica_url)} is not in object_store.replicas"


def own_url_warning(config: Config) -> str | None:
    """Why the other replicas (with this config's ``replicas`` and ``egress``) would not
    follow this replica's own ``replica_url``; None when they would or it cannot be told
    (a host name: resolved only when contacted)."""
    store = config.object_store
    if store is None or not store.replica_url:
        return None
    if store.replicas:
        if same_replica(store.replica_url, store.replicas):
            return None
        return (
            "object_store.replica_url: not in object_store.replicas; other replicas with "
            "this list will not follow this one's refreshes"
        )
    host = urlsplit(store.replica_url).hostname or ""
    try:
        address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        return None
    reason = policy_of(config.egress).refusal(address)
    if reason is None:
        return None
    return (
        f"object_store.replica_url: the egress policy of other replicas refuses it ({reason});"
        " list the replicas in object_store.replicas or their network in egress.allow"
    )
