"""Short texts for one-line reasons: what a log line, an error or a 502 body may quote."""

from __future__ import annotations

#: The User-Agent of the daemon's own requests (probes, proxy, refresh). Another replica
#: recognises it exactly: such a request wants bytes, never a redirect
#: (docs/http-api.md#with-an-object-store-object_store).
TRACKER_AGENT = "solana-snapshot-tracker"

#: The User-Agent of ``snapshot-tracker fetch``: a client like any other (it follows 303s).
FETCH_AGENT = "solana-snapshot-tracker-fetch"

#: The longest one-line reason.
MAX_REASON = 300


def one_line(text: str, limit: int = MAX_REASON) -> str:
    """Collapse whitespace (newlines included) and cut ``text`` to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def quoted(value: object, limit: int = 120) -> str:
    """``repr`` of a peer-supplied value, shortened: safe to put in a one-line reason."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def wants_bytes(user_agent: str, parts: tuple[str, ...]) -> bool:
    """True when ``user_agent`` contains one of ``parts`` (``serve_user_agents``): a client
    that cannot follow a redirect to another host, served by the tracker itself."""
    return any(part in user_agent for part in parts)
