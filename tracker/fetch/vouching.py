"""The signed statements of one downloaded archive, gathered and weighed before its rename
into the ledger (``fetch --trust-key``; docs/http-api.md, "Signed statements").

The documents come from the tracker only: those its listing carried for the file
(:attr:`tracker.fetch.listing.RemoteFile.statements`) and, when those are not enough, the one
its ``.attestation`` route answers, read bounded (16 KiB) within ``statements_timeout``. A
route that fails, hangs or answers junk costs its own document only and is named in the
line; whether enough trusted keys vouch is :func:`tracker.fetch.trust.unvouched`'s decision.
"""

from __future__ import annotations

import time

import httpx
import trio

from tracker.errors import ProbeError
from tracker.fetch.listing import RemoteFile
from tracker.fetch.settings import FetchSettings
from tracker.fetch.trust import weighed
from tracker.net.limits import fetch_capped
from tracker.observability.redact import redact_userinfo


def mixing_problem(file: RemoteFile, settings: FetchSettings) -> str:
    """Why ``file``'s copy must come from one source, not from the pieces of several (one
    line); "" when what checks the copy vouches for every byte of it (docs/fetch.md,
    "How"): the tracker's ``sha256``, the statements of ``--trust-key``, or, for
    a full, the ``accounts`` proof with the bytes it does not bind asked again of the first
    source (:mod:`tracker.fetch.unbound`); or when nothing is checked (``--verify false``: every
    source's bytes are taken on its word either way). A copy of several sources is a file
    none of them may hold: a liar's pieces that keep the archive well formed pass every
    check that does not bind them. Pure."""
    if not settings.verify or file.sha256 or settings.trust.active:
        return ""
    if file.name.is_full and settings.prove_accounts is not None:
        return ""
    kind = "an incremental" if not file.name.is_full else "a full not proven to accounts"
    return f"{kind} without the tracker's sha256 or --trust-key: one source's copy"


async def statements_problem(
    client: httpx.AsyncClient, file: RemoteFile, size: int, sha256: str, settings: FetchSettings
) -> str | None:
    """None when ``settings.trust`` asks for no statements or enough of its keys vouch for
    ``file``'s checked copy (``size`` bytes, ``sha256``); else one line: how many vouched,
    why each other statement was not taken, which keys said nothing, what could not be read."""
    return (await vouched_for(client, file, size, sha256, settings))[0]


async def vouched_for(
    client: httpx.AsyncClient, file: RemoteFile, size: int, sha256: str, settings: FetchSettings
) -> tuple[str | None, tuple[str, ...]]:
    """:func:`statements_problem`'s answer, and the trusted keys whose statements vouch for
    the copy (sorted; none without ``--trust-key``)."""
    from tracker.proof.statements import Expected

    policy = settings.trust
    if not policy.active:
        return None, ()
    expected = Expected(
        name=file.name.file_name,
        size=size,
        sha256=sha256,
        required=settings.require,
        is_full=file.name.is_full,
        now=int(time.time()),  # statements expire on the wall clock
    )
    documents = list(file.statements)
    problem, keys = weighed(documents, policy, expected)
    if problem is None or not file.statements_url:
        return (None if problem is None else f"statements: {problem}"), keys
    # The listing's are not enough: the route may hold one it did not carry (a statement
    # signed since, or a listing from a tracker without ``attestations``).
    unread = ""
    try:
        documents.append(await _route_document(client, file.statements_url, settings))
    except ProbeError as exc:
        unread = f"; not read: {redact_userinfo(file.statements_url)}: {exc}"
    problem, keys = weighed(documents, policy, expected)
    return (None if problem is None else f"statements: {problem}{unread}"), keys


async def _route_document(client: httpx.AsyncClient, url: str, settings: FetchSettings) -> bytes:
    """The document the tracker's ``.attestation`` route answers; ProbeError (one line) for
    any other answer, one over 16 KiB, or none within ``statements_timeout``."""
    from tracker.proof.statements import MAX_DOCUMENT

    with trio.move_on_after(settings.statements_timeout):
        return bytes(await fetch_capped(client, url, headers={}, max_body=MAX_DOCUMENT))
    raise ProbeError(f"no answer within {settings.statements_timeout:g}s")
