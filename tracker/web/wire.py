"""The wire form of what the public API lists (docs/http-api.md, "Snapshot sources (JSON)"): the
one place a file, a snapshot (its chain of files), a source and a target's health are written as
JSON; the JSON arrays of ``/v1/snapshots`` and ``/v1/best_snapshots``, and the targets' health
of ``/v1/targets``; each element kept between renderings (:class:`Fragments`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any

import attrs

from tracker.core.digests import Digests, Verified
from tracker.core.snapshots import SnapshotFile, SnapshotInfo
from tracker.discovery.roster import nothing_listed
from tracker.discovery.scrape import TargetHealth
from tracker.observability.redact import redact_text, redact_userinfo
from tracker.ordering.index import Index, SnapshotSource, TargetKey
from tracker.proof.records.attestations import Attestations
from tracker.proof.records.localcopies import Checked, holder
from tracker.web.delivery import tracker_path
from tracker.web.deps import ApiDeps
from tracker.web.listings import Fragments


@attrs.frozen
class HeldProofs:
    """What the tracker holds of a file of a group: its verified copy, the statements of it."""

    verified: Callable[[str, SnapshotFile], Verified | None]
    attested: Callable[[str, str, str], list[dict[str, str]]]


def held_copy(digests: Digests, group: str, f: SnapshotFile) -> Verified | None:
    """The tracker's verified copy of the file ``f`` of ``group``: a local file is its own
    copy (docs/architecture.md, "Proven archives": "Local files"), any other the cache's or
    the bucket's (a local file of the same name may be other bytes)."""
    if f.path:
        held = digests.of(holder(f.path), group, f.bare_name)
        # a file replaced since its check (agave renames a new archive over an old one):
        # until the next round forgets it, its listing's size tells the two apart
        return held if held is None or not f.size or held.size == f.size else None
    return digests.served(group, f.bare_name)


def wire_time(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``; microseconds kept when present."""
    text = value.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def statements_json(attestations: Attestations) -> dict[str, Any]:
    """``/v1/statements`` (docs/http-api.md, "Signed statements"): whether this tracker
    signs, the public key a fleet's ``--trust-key`` names, how long a statement holds, how
    many statements of its own it holds and the last one it signed (None: none since it
    started, or it signs nothing)."""
    last = attestations.last_signed
    signing = attestations.public_key is not None
    return {
        "signing": signing,
        "public_key": attestations.public_key,
        "valid_for_seconds": attestations.valid_for if signing else None,
        "statements": attestations.held,
        "last_signed": None
        if last is None
        else {
            "time": wire_time(datetime.fromtimestamp(last[0], UTC)),
            "group": last[1],
            "name": last[2],
        },
    }


def file_to_json(f: SnapshotFile, *, file_name: str | None = None) -> dict[str, Any]:
    """The wire form of a file (docs/http-api.md, "Snapshot sources (JSON)"): a zero
    ``base_slot``, an unknown ``mod_time`` or ``size`` is omitted."""
    out: dict[str, Any] = {"file_name": file_name if file_name is not None else f.file_name}
    out["slot"] = f.name.slot
    if f.name.base_slot:
        out["base_slot"] = f.name.base_slot
    out["hash"] = f.name.hash
    out["ext"] = f.name.ext
    if f.mod_time is not None:
        out["mod_time"] = wire_time(f.mod_time)
    if f.size:
        out["size"] = f.size
    return out


def info_to_json(info: SnapshotInfo, file_names: list[str] | None = None) -> dict[str, Any]:
    """The wire form of an info; ``file_names`` replaces each file's ``file_name`` in order."""
    names = file_names or [f.file_name for f in info.files]
    return {
        "slot": info.slot,
        "base_slot": info.base_slot,
        "hash": info.hash,
        "files": [file_to_json(f, file_name=n) for f, n in zip(info.files, names, strict=True)],
        "size": info.size,
    }


def health_json(health: TargetHealth, count: int, mismatch: str = "") -> dict[str, object]:
    """The ``/v1/targets`` entry of one target (secrets in URLs masked). ``mismatch``: why
    the index holds some of its snapshots back (a hash that lost, docs/http-api.md#trust),
    shown as its ``last_error`` when the probe itself succeeded."""
    last = health.last_scrape
    duration = health.last_duration
    error = health.last_error or mismatch
    out: dict[str, object] = {
        "group": health.target.key.group,
        "target": redact_text(health.target.key.target),
        "kind": health.target.kind,
        "source": "discovered" if health.target.key.discovered else "configured",
        "health": health.health,
        "last_error": redact_text(error),
        "last_scrape": wire_time(last) if last else None,
        "last_duration_ms": None if duration is None else math.ceil(duration * 1000),
        "snapshots": count,
        "consecutive_failures": health.failures,
        "note": nothing_listed(health.target.kind, health.health, count),
    }
    if health.target.version:  # a discovered node's (docs/http-api.md#trust)
        out["version"] = health.target.version
    return out


def source_json(
    source: SnapshotSource,
    base: str | None,
    *,
    files_base: str | None = None,
    here: str = "",
    held: HeldProofs | None = None,
    predicted: float | None = None,
    node_version: str = "",
) -> dict[str, Any]:
    """The wire form of a source (docs/http-api.md, "Snapshot sources (JSON)"); with
    ``base`` (proxy mode) URLs point at the tracker.

    ``files_base`` (a source the tracker proxies in redirect mode because it needs
    credentials) points only the files' URLs at the tracker. Userinfo and queries of the
    configured target are masked; file URLs keep their query (a link the source handed out).
    Each file carries ``url``, where this source's copy is fetched from (the source itself,
    or the tracker's ``here`` route for a copy the tracker serves: local, proxied,
    credentialed), and ``sha256`` and ``proof`` (docs/architecture.md, "Proven archives")
    when ``held`` knows the tracker's verified copy, with ``attestations`` (its signed
    statements, docs/http-api.md "Signed statements"; empty when none is held). ``predicted``: the
    seconds to a running node of the source's pair, in a group ranked by it
    (docs/ranking.md; infinite: ``null``, it never catches up).
    ``node_version``: a discovered node's version (shown as ``version``; "": unknown).
    """
    info, group = source.info, source.key.group
    files_base = base if base is not None else files_base
    if files_base is not None:
        names = [files_base + tracker_path(f.bare_name, group, alias=False) for f in info.files]
    else:
        names = [redact_userinfo(f.file_name) for f in info.files]
    out = info_to_json(info, names)
    for f, name, wire in zip(info.files, names, out["files"], strict=True):
        if files_base is not None:
            wire["url"] = name
        elif f.url:
            wire["url"] = redact_userinfo(f.url)
        elif here:
            wire["url"] = here + tracker_path(f.bare_name, group, alias=False)
        copy = held.verified(group, f) if held is not None else None
        if held is not None and copy is not None:
            wire["sha256"] = copy.sha256
            wire["proof"] = copy.proof.to_json()
            wire["attestations"] = held.attested(group, f.bare_name, copy.sha256)
    out["target"] = base if base is not None else redact_text(source.key.target)
    out["group"] = group
    out["updated_at"] = wire_time(source.updated_at)
    if node_version:  # a discovered node's, from getClusterNodes (docs/http-api.md#trust)
        out["version"] = node_version
    # Measurements behind the ranking (docs/http-api.md#trust), once there are some.
    if source.latency is not None:
        out["latency_ms"] = math.ceil(source.latency * 1000)
    if source.throughput > 0:
        out["throughput_bps"] = round(source.throughput)
    if predicted is not None:
        out["predicted_seconds"] = round(predicted, 1) if math.isfinite(predicted) else None
    return out


def listing_body(
    deps: ApiDeps,
    fragments: Fragments,
    sources: list[SnapshotSource],
    base: str | None,
    here: str,
) -> bytes:
    """The JSON array of ``sources``; the files of proxied sources point at the tracker.
    Each source's JSON is kept between renderings (:class:`Fragments`)."""
    proxied = deps.delivery.proxied
    parts = []
    version = (deps.digests.version, deps.attestations.version)
    health = deps.scraper.health
    for s in sources:
        files_base = here if proxied(s) else None
        predicted = deps.index.predicted(s)
        node = health.get(s.key)
        node_version = node.target.version if node is not None else ""
        render = partial(_source_bytes, deps, s, base, files_base, here, predicted, node_version)
        key = (base, files_base, here, version, predicted, node_version)
        parts.append(fragments.get(s, key, render))
    return b"[" + b",".join(parts) + b"]"


def _source_bytes(
    deps: ApiDeps,
    source: SnapshotSource,
    base: str | None,
    files_base: str | None,
    here: str,
    predicted: float | None,
    node_version: str,
) -> bytes:
    body = source_json(
        source,
        base,
        files_base=files_base,
        here=here,
        held=HeldProofs(partial(held_copy, deps.digests), deps.attestations.documents_json),
        predicted=predicted,
        node_version=node_version,
    )
    return json.dumps(body, separators=(",", ":")).encode()


def local_files_json(checks: list[tuple[str, Checked | None]]) -> list[dict[str, Any]]:
    """The ``local_files`` of a local target in ``/v1/targets`` (docs/http-api.md, "Public
    routes"): each file's name and ``state`` (``checking``: not checked yet; ``checked``, with
    its ``sha256`` and ``proof``; ``failed``, with the ``reason``)."""
    out: list[dict[str, Any]] = []
    for name, done in checks:
        entry: dict[str, Any] = {"file_name": name}
        if done is None:
            entry["state"] = "checking"
        elif done.verified is None:
            entry.update(state="failed", reason=done.failed)
        else:
            entry.update(
                state="checked", sha256=done.verified.sha256, proof=done.verified.proof.to_json()
            )
        out.append(entry)
    return out


def measured_time(at: float, now: float, wall: float) -> str:
    """The wall-clock time (RFC 3339, to the second) of ``at``, a reading of the monotonic
    clock whose reading is ``now`` at the wall-clock time ``wall`` (Unix seconds). To the
    second: a target's entry stays the same from one rendering to the next. Pure."""
    return _second_text(round(wall - (now - at)))


@lru_cache(maxsize=8192)  # each measured target's, at every rendering of a round
def _second_text(second: int) -> str:
    """:func:`wire_time` of the Unix time ``second``."""
    return wire_time(datetime.fromtimestamp(second, UTC))


def _health_head(
    health: TargetHealth,
    count: int,
    mismatch: str,
    checks: list[tuple[str, Checked | None]],
    used: Mapping[str, object] | None = None,
) -> bytes:
    """A target's ``/v1/targets`` entry up to its figures (:func:`_health_tail`), without
    its closing brace."""
    out = health_json(health, count, mismatch)
    if used:  # how the latest refresh from several sources that asked it used it
        out["refresh"] = dict(used)
    if health.target.kind == "local":  # its files' checks and proofs, on the tracker's disk
        out["local_files"] = local_files_json(checks)
    return json.dumps(out, separators=(",", ":")).encode()[:-1]


def _health_tail(speeds: tuple[int, int, int], uncached: str, measured_at: str = "") -> bytes:
    """The rest of a target's entry after :func:`_health_head`: its figures, which age every
    ``THROUGHPUT_SHOWN`` seconds while the rest stays (rendered alone, joined to the head
    kept), when they were measured, the cache's want of room; and the closing brace. As
    ``json.dumps`` writes them, without its cost per call (thousands of targets a tick)."""
    out = []
    # Measured (docs/http-api.md#speed-tests): the figure ranked, and the two it combines.
    for name, speed in zip(("throughput_bps", "probed_bps", "achieved_bps"), speeds, strict=True):
        if speed > 0:
            out.append(f',"{name}":{speed:d}')
    if measured_at:  # an old figure reads as the group's prior, not as measured
        out.append(f',"measured_at":{_json_string(measured_at)}')
    if uncached:  # the group's last refresh found too little room on the cache's disk
        out.append(f',"cache":{_json_string(uncached)}')
    out.append("}")
    return "".join(out).encode()


@lru_cache(maxsize=8192)  # a measured target's time, the same at every rendering of a round
def _json_string(text: str) -> str:
    """``text`` as a JSON string."""
    return json.dumps(text)


#: What ``/v1/targets`` shows as ``last_error`` of a target whose copy a proof refused.
DISPROVEN = "archive not proven: "


def disproven_errors(disproven: Mapping[TargetKey, Mapping[str, str]]) -> dict[TargetKey, str]:
    """Each target with a copy a proof kept out of the ranking (docs/architecture.md,
    "Proven archives"): its ``last_error``, naming the archive and the reason."""
    return {
        key: f"{DISPROVEN}{name}: {reason}"
        for key, refused in disproven.items()
        for name, reason in list(refused.items())[-1:]
    }


def target_errors(index: Index, rejected: Mapping[TargetKey, str]) -> dict[TargetKey, str]:
    """Each target's ``last_error`` from what the ranking knows of it, when its probe did
    not fail: a hash that lost, a copy a proof kept out (:func:`disproven_errors`), a copy
    that failed its check and is held back (``rejected``). One rule for ``/v1/targets``
    and the status page (the page left the failed check out)."""
    return {**index.mismatches(), **disproven_errors(index.disproven()), **rejected}


#: The figures of a target never measured.
_UNMEASURED = (0, 0, 0)


def targets_body(
    deps: ApiDeps,
    fragments: Fragments,
    group: str | None,
    now: float,
    shown_at: float,
) -> bytes:
    """The JSON array of every target's health (of ``group``), in display order. A target
    whose copy of an archive failed its check or a proof (``deps.rejections``,
    :func:`disproven_errors`) shows why unless its
    probe failed; a measured one its throughput as of ``shown_at`` (while bytes come from
    it, the rate they come at ``now``: ``deps.flowing``) and the probed and
    achieved figures it combines; the targets of a group whose last refresh
    streamed uncached for want of disk room show why (``deps.uncached``) as ``cache``; a
    target the latest refresh from several sources asked shows how it was used
    (``deps.sources_used``) as ``refresh``: in parallel, alone, left out or dropped, why.

    A target's JSON is rendered again only when what it shows changes (``fragments``): the
    same ``shown_at`` for several requests keeps the decaying throughputs, and with them the
    entries of thousands of discovered nodes, the same between them."""
    scraper, index = deps.scraper, deps.index
    # the figures of every measured target once (kept between renderings at one shown_at),
    # the live rates of the few sources bytes come from now
    shown = index.speeds.shown(shown_at)
    live = deps.flowing.rates(now)
    wall = deps.wall_clock()  # the measurements' monotonic times shown as wall-clock times
    rejected, uncached = deps.rejections.errors(now), deps.uncached()
    uses = deps.sources_used()
    parts = []
    fragments.sweep()  # every target is asked for below: the gone ones go
    mismatches = target_errors(index, rejected)
    for h in scraper.in_order():
        key = h.target.key
        if group is not None and key.group != group:
            continue
        if h.target.kind == "cluster":  # an RPC URL: no snapshots of its own
            count, mismatch = 0, ""
        else:
            count, mismatch = index.count(key), mismatches.get(key, "")
        # A target's entry changes only when its probe does: its JSON is kept until then
        # (thousands of discovered nodes, polled during a round).
        figure, probed, achieved = shown.get(key, _UNMEASURED)
        rate = live.get(key, 0.0)
        speeds = (round(rate) if rate else figure, probed, achieved)
        reason = uncached.get(key.group, "")
        checks = deps.local_checks(key) if h.target.kind == "local" else []
        used = uses.get(key)
        at = index.speeds.measured_at(key)
        measured = measured_time(at, now, wall) if at is not None else ""
        state = (
            *(h.health, h.last_error, h.last_scrape, h.last_duration),
            *(count, mismatch, tuple(checks)),
            tuple(used.items()) if used else (),
        )
        # its figures age every tick, the rest changes with its probe: a new tick joins new
        # figures to the head kept (the whole entry rendered cost ~5 µs more a target)
        head = partial(_health_head, h, count, mismatch, checks, used)
        tail = partial(_health_tail, speeds, reason, measured)
        parts.append(fragments.split(h, state, head, (speeds, reason, measured), tail))
    return b"[" + b",".join(parts) + b"]"
