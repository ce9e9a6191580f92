"""What the remote side offers: the tracker's JSON, or validators probed directly.

Each archive comes with the URLs it can be fetched from, best first: the tracker's own
query-free route ``{tracker}/v1/{group}/{name}`` (it redirects or serves), then the URL of
every source the JSON lists for that name (each file's ``url``; from an older tracker only
HTTP sources', whose ``file_name`` is their URL), so that a download can use every source in
every mode. :mod:`tracker.fetch.download` uses those together only after they proved to hold
the same bytes. From a tracker, each archive also comes with the signed statements its listing
carries and the URL of its ``.attestation`` route (docs/http-api.md, "Signed statements"),
read only when ``--trust-key`` asks for statements.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import attrs
import httpx
import trio

from tracker.core.digests import is_sha256_hex
from tracker.core.hosts import machine_of, voice_of
from tracker.core.snapshots import MAX_URL, ArchiveName, file_name_of, parse_archive_name
from tracker.discovery.http import probe_http
from tracker.errors import FetchError, ProbeError, TransportError
from tracker.fetch.statementfiles import SUFFIX
from tracker.fetch.trust import MAX_LISTED, listed_documents
from tracker.net.exchange import head
from tracker.net.limits import decode_text, fetch_capped, iter_json_array
from tracker.observability.redact import redact_userinfo
from tracker.ordering.pricing import priced_sizes

#: Bounds of what is read from the tracker.
MAX_BODY = 16 * 1024 * 1024
MAX_ENTRIES = 10_000


@attrs.frozen
class RemoteFile:
    """One archive and where it can be fetched, best URL first; ``size`` 0: unknown;
    ``sha256``: the digests the tracker lists for it (lower-case hex; it holds a verified
    copy), a good copy has one of them."""

    name: ArchiveName
    size: int
    urls: tuple[str, ...]
    sha256: frozenset[str] = frozenset()
    #: The fastest ``throughput_bps`` the tracker lists for a source of it (0: none).
    throughput: float = 0.0
    #: A source of it lists no ``throughput_bps`` (never measured): the tracker prices it at
    #: its group's ``assumed_throughput``, so it downloads at least that fast.
    unmeasured: bool = False
    #: The size a prediction prices it at, as the tracker does: the lower middle of the
    #: sizes its sources list, each machine one voice (:func:`_voice`, docs/ranking.md; 0:
    #: none listed).
    #: ``size`` is the best source's, the one its bytes are checked against.
    priced_size: int = 0
    #: The signed statements the tracker's listing carries for it (each file's
    #: ``attestations``, as bytes; unchecked), and its ``.attestation`` route ("": not from a
    #: tracker).
    statements: tuple[bytes, ...] = ()
    statements_url: str = ""

    @property
    def file_name(self) -> str:
        """The archive's bare name."""
        return self.name.file_name


@attrs.frozen
class RemoteSnapshot:
    """A snapshot on offer: its full archive and, for an incremental one, the archive itself."""

    full: RemoteFile | None
    incremental: RemoteFile | None = None
    #: The tracker's ``predicted_seconds`` of the pair (docs/ranking.md; None: not listed,
    #: the tracker ranks by slot; infinite: listed as null, it never catches up).
    predicted: float | None = None

    @property
    def slot(self) -> int:
        """The snapshot's slot (the incremental's when there is one)."""
        head = self.incremental if self.incremental is not None else self.full
        return head.name.slot if head is not None else 0


async def from_tracker(
    client: httpx.AsyncClient,
    tracker: str,
    group: str,
    *,
    slot: int | None = None,
    within: float = math.inf,
) -> list[RemoteSnapshot]:
    """The snapshots the tracker lists, best first: ``/v1/best_snapshots``, or the ones on
    top of the full at ``slot`` (``/v1/snapshots?slot=``). Raises FetchError."""
    base = tracker.rstrip("/")
    params = {"group": group} if group else {}
    if slot is not None:
        params["slot"] = str(slot)
    path = "/v1/snapshots" if slot is not None else "/v1/best_snapshots"
    return snapshots_from_json(base, await _listed(client, base, path, params, within))


async def default_group(client: httpx.AsyncClient, tracker: str, *, within: float) -> str:
    """The group the tracker answers a request naming none for (its ``default_group``), for
    a fetch given no ``--group``; "" when the tracker lists nothing, or names no group (a
    tracker that does not tell them apart: all of it is taken). A listing without a group
    names every group: fetch took the best pair of any of them, another cluster's archives
    into this node's ledger.

    Learned from the tracker's redirect to the best full (``/v1/snapshot.tar.bz2``,
    answered for the default group): a route of the tracker's own naming its group
    (``/v1/{group}/{name}``, or ``?group=``), else a source's URL (a file's ``url``, an
    absolute ``file_name``, a Go sidecar's route) listed in ``/v1/best_snapshots``, else in
    ``/v1/snapshots?slot=`` of that full (the 25 best of every group may be another's: a
    listing of every source outgrew any bound), else the one group listed, when the
    redirect says the default group holds a full. A 202 says it holds none: another group's
    are not taken. Raises FetchError when it cannot tell."""
    base = tracker.rstrip("/")
    entries = await _listed(client, base, "/v1/best_snapshots", {}, within)
    groups = _groups_of(entries)
    if not groups:
        return ""
    status, where = 0, ""
    with trio.move_on_after(within):
        try:
            response = await head(client, base + "/v1/snapshot.tar.bz2", {})
            status = response.status_code
            where = response.headers.get("location", "") if response.is_redirect else ""
        except TransportError:
            pass
    found = _found(groups, where)
    full = parse_archive_name(urlsplit(where).path.rsplit("/", 1)[-1]) if where else None
    if found is None and full is not None and full.is_full:
        more = _groups_of(
            await _listed(client, base, "/v1/snapshots", {"slot": str(full.slot)}, within)
        )
        found = _found(more, where)
        groups.update(more)
    if found is not None:
        return found
    named = set(groups.values())
    if len(named) == 1 and status != 202:  # with a redirect (or none at all): the one listed
        return named.pop()
    listed = ", ".join(sorted(named))
    why = "has no snapshot" if status == 202 else "is none of those it lists"
    raise FetchError(
        f"tracker {redact_userinfo(base)}: its default group {why} (it lists groups "
        f"{listed}); name one with --group"
    )


async def _listed(
    client: httpx.AsyncClient, base: str, path: str, params: dict[str, str], within: float
) -> list[Any]:
    """The entries of one of the tracker's JSON listings: its head within ``within``
    (``--request-timeout``, not the 30 s of a body's read), the body (megabytes for a
    cluster's group) at the client's read timeout. Raises FetchError."""
    try:
        body = await fetch_capped(
            client, base + path, headers={}, max_body=MAX_BODY, params=params, head_within=within
        )
        return list(iter_json_array(decode_text(body), max_items=MAX_ENTRIES))
    except (ProbeError, ValueError) as exc:
        raise FetchError(f"tracker {redact_userinfo(base)}: {exc}") from None


def _groups_of(entries: list[Any]) -> dict[str, str]:
    """Each group ``entries`` name, and each URL of a file they list, to its group."""
    groups: dict[str, str] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("group"), str):
            group, target = entry["group"], entry.get("target")
            groups.setdefault(group, group)
            for raw in entry.get("files") or ():
                if isinstance(raw, dict):
                    for url in (raw.get("url"), raw.get("file_name"), source_url(raw, target)):
                        if isinstance(url, str) and url:
                            groups.setdefault(redact_userinfo(url), group)
    return groups


def _found(groups: dict[str, str], where: str) -> str | None:
    """The group of the redirect's ``where`` among ``groups`` (:func:`_groups_of`): a
    source's URL first (a Go sidecar's route ``/v1/snapshot/{name}`` names no group), then
    the group a tracker's own route names."""
    if not where:
        return None
    return groups.get(redact_userinfo(where)) or groups.get(_group_named(where)) or None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _group_named(location: str) -> str:
    """The group a tracker's own route names: ``/v1/{group}/{name}`` (under any prefix),
    else its ``group=`` query; "" for another URL."""
    try:
        parts = urlsplit(location)
    except ValueError:
        return ""
    segments = parts.path.split("/")
    if len(segments) >= 3 and segments[-3] == "v1" and parse_archive_name(segments[-1]):
        return unquote(segments[-2])
    return parse_qs(parts.query).get("group", [""])[-1]


def snapshots_from_json(base: str, entries: list[Any]) -> list[RemoteSnapshot]:
    """The snapshots of the tracker at ``base`` from its JSON ``entries`` (best first), each
    archive with the tracker's route first, then the URL of each source listing it: the
    file's ``url`` (docs/http-api.md), else, from a tracker without it, an absolute
    ``file_name``; and the ``sha256`` digests listed for it; each pair with its
    ``predicted_seconds`` and each file with its sources' best ``throughput_bps``, its
    listed ``attestations`` and its tracker's ``.attestation`` route. Malformed entries,
    URLs, digests and figures are skipped."""
    # Each name's URLs in the listing's order, as the keys of a dict: a listing of 16 MiB
    # names one archive at some 180,000 URLs, and a list's ``in`` made that quadratic,
    # minutes of the event loop before the first byte (docs/fetch.md, "How").
    urls: dict[str, dict[str, None]] = {}
    documents: dict[str, dict[bytes, None]] = {}
    sizes: dict[str, int] = {}
    digests: dict[str, set[str]] = {}
    speeds: dict[str, float] = {}
    voiced: list[tuple[str, bool, int, str]] = []  # what priced_sizes weighs
    unmeasured: set[str] = set()
    order: list[tuple[str | None, str | None]] = []
    predicted: dict[tuple[str | None, str | None], float] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), list):
            continue
        group = entry.get("group", "")
        if not isinstance(group, str) or not _is_utf8(group):
            continue  # a group no URL can name (a lone surrogate of a JSON escape)
        names = []
        for raw in entry["files"]:
            if not isinstance(raw, dict) or not isinstance(raw.get("file_name"), str):
                continue
            name = file_name_of(raw["file_name"])
            if parse_archive_name(name) is None:
                continue
            names.append(name)
            found = urls.setdefault(name, {f"{base}/v1/{quote(group, safe='')}/{name}": None})
            url = source_url(raw, entry.get("target"))
            if url:
                found.setdefault(url, None)
            size = raw.get("size")
            if isinstance(size, int) and not isinstance(size, bool) and size > 0:
                sizes.setdefault(name, size)
            else:
                size = 0
            voiced.append((name, _parsed(name).is_full, size, _voice(entry.get("target"))))
            digest = raw.get("sha256")
            if is_sha256_hex(digest):
                digests.setdefault(name, set()).add(digest)
            listed = documents.setdefault(name, {})
            for document in listed_documents(raw.get("attestations")):
                if len(listed) < MAX_LISTED:
                    listed[document] = None
            speed = _figure(entry.get("throughput_bps"))
            if speed is None or speed <= 0:
                unmeasured.add(name)
            elif speed > speeds.get(name, 0.0):
                speeds[name] = speed
        fulls = [n for n in names if _parsed(n).is_full]
        heads = [n for n in names if not _parsed(n).is_full]
        if fulls or heads:  # an incremental whose source does not list its full: alone
            pair = (fulls[0] if fulls else None, heads[0] if heads else None)
            order.append(pair)
            if "predicted_seconds" in entry:
                raw_seconds = entry["predicted_seconds"]
                seconds = math.inf if raw_seconds is None else _figure(raw_seconds)
                if seconds is not None:
                    predicted.setdefault(pair, seconds)
    files = (sizes, urls, digests, speeds, priced_sizes(voiced), unmeasured)
    return [
        RemoteSnapshot(
            _signed(_file(full, *files), documents) if full is not None else None,
            _signed(_file(head, *files), documents) if head is not None else None,
            predicted.get((full, head)),
        )
        for full, head in dict.fromkeys(order)
    ]


def _signed(file: RemoteFile, documents: dict[str, dict[bytes, None]]) -> RemoteFile:
    """``file`` of a tracker's listing with its listed statements and its ``.attestation``
    route: the tracker's own route of the file (its first URL) and the suffix."""
    listed = tuple(documents.get(file.file_name, ()))
    return attrs.evolve(file, statements=listed, statements_url=file.urls[0] + SUFFIX)


def _figure(value: object) -> float | None:
    """A non-negative finite number from the tracker's JSON, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def source_url(file: dict[str, Any], target: object = None) -> str:
    """Where this source's copy of a file is fetched from: the file's ``url``, or with none
    (an older tracker, the Go tracker) its ``file_name`` when that is a URL (an HTTP
    source), else, for a bare name, the sidecar route of its entry's ``target`` when that
    is an http(s) URL (``{target}/v1/snapshot/{name}``, where the Go tracker's own fetch
    reads it: the Go tracker has no route of its own for the bytes, and every download from
    it failed); "" for a bare name with neither (the tracker's route is the only way
    there) or a URL that is not a plain http(s) URL of printable ASCII."""
    url = file.get("url")
    if url is None:
        url = file.get("file_name")
        if (
            isinstance(url, str)
            and parse_archive_name(url) is not None
            and isinstance(target, str)
            and target.startswith(("http://", "https://"))
        ):
            url = f"{target.rstrip('/')}/v1/snapshot/{quote(url, safe='')}"
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return ""
    if len(url) > MAX_URL or not url.isascii() or not url.isprintable() or " " in url:
        return ""
    return url


def _parsed(name: str) -> ArchiveName:
    parsed = parse_archive_name(name)
    assert parsed is not None
    return parsed


def _voice(target: object) -> str:
    """The voice of an entry's ``target`` in the pricing of sizes: one per machine, its host
    (:func:`tracker.core.hosts.voice_of`), an IPv6 address as its /64
    (:func:`tracker.core.hosts.machine_of`). The listing does not say which sources were
    discovered (a node's ``version`` shows only when it advertises a plain one), so every
    IPv6 address counts so: three addresses of one /64 outvoted two honest machines here,
    not in the tracker's ranking. Not as its /48, as the tracker counts a discovered node's
    (docs/ranking.md): an operator's own sources in its /48 would be one voice. A tracker
    serving the bytes lists itself as every entry's target, one voice."""
    return machine_of(voice_of(target)) if isinstance(target, str) else ""


def _file(
    name: str,
    sizes: dict[str, int],
    urls: Mapping[str, Iterable[str]],
    digests: dict[str, set[str]] | None = None,
    speeds: dict[str, float] | None = None,
    priced: dict[str, int] | None = None,
    unmeasured: set[str] | None = None,
) -> RemoteFile:
    digest = frozenset((digests or {}).get(name, ()))
    speed = (speeds or {}).get(name, 0.0)
    size = sizes.get(name, 0)
    return RemoteFile(
        _parsed(name),
        size,
        tuple(urls[name]),
        digest,
        speed,
        unmeasured=name in (unmeasured or ()),
        priced_size=(priced or {}).get(name, size),
    )


async def from_sources(
    client: httpx.AsyncClient,
    sources: list[str],
    within: float = math.inf,
    why: list[str] | None = None,
) -> list[RemoteSnapshot]:
    """The snapshots validators at ``sources`` redirect their aliases to, newest first; an
    archive several of them offer lists all their URLs; each source's answers within
    ``within`` seconds (``--request-timeout``); ``why`` gets a line for each source that
    failed or offers no full. Raises FetchError when none answered."""
    found: list[tuple[str, list[Any]]] = []
    failures: list[str] = []

    async def probe(url: str) -> None:
        try:
            with trio.fail_after(within):
                found.append((url, await probe_http(client, url)))
        except trio.TooSlowError:
            failures.append(f"{redact_userinfo(url)}: no answer within {within:g}s")
        except ProbeError as exc:
            failures.append(f"{redact_userinfo(url)}: {exc}")

    async with trio.open_nursery() as nursery:
        for url in sources:
            nursery.start_soon(probe, url)
    if not found:
        raise FetchError("no source answered: " + "; ".join(failures))
    if why is not None:
        why.extend(failures)
        why.extend(
            f"{redact_userinfo(url)}: its aliases lead to no archive (404 or 202: a plain "
            "file server has no such routes)"
            for url, infos in found
            if not infos
        )
    urls: dict[str, list[str]] = {}
    snapshots: dict[tuple[str | None, str | None], int] = {}
    for _url, infos in found:
        for info in infos:
            for f in info.files:
                urls.setdefault(f.bare_name, []).append(f.url)
            # An incremental whose validator offers no full (its full alias answered 404)
            # stands alone: never taken for the full (plan() wants one with a full).
            first, last = info.files[0], info.files[-1]
            full = last.bare_name if last.name.is_full else None
            head = first.bare_name if not first.name.is_full else None
            snapshots[(full, head)] = info.slot
    ranked = sorted(snapshots, key=lambda k: snapshots[k], reverse=True)
    return [
        RemoteSnapshot(
            _file(full, {}, urls) if full else None, _file(head, {}, urls) if head else None
        )
        for full, head in ranked
    ]
