"""Sidecar probe: ``GET {base}/v1/snapshots`` and check every snapshot info it lists.

The answer is validated strictly (docs/http-api.md#snapshot-sources-json without
``target``/``group``/``updated_at``): one
invalid entry fails the whole probe, naming the entry and the field, e.g.
``entry 3: files[0].hash: not a base58 32-byte hash: 'abc'``. A sidecar that emits garbage
is broken and should be fixed; trusting the rest of its answer would send clients to it.
So is one that lists an archive at two sizes (a full on its own and as an incremental's
base): the later entry fails the probe, naming both.
Unknown keys are ignored so that newer sidecars (the Go one adds ``download_url``) still work.
A file's ``sha256`` (another tracker's listing carries the digest of its verified copy) is
kept as the source's published digest when it is 64 hex digits, else the entry is refused:
a refresh from several sources takes pieces only from sources that agree on it
(docs/http-api.md#trust).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

import httpx
import trio

from tracker.core.digests import is_sha256_hex
from tracker.core.snapshots import (
    U64_MAX,
    ArchiveName,
    SnapshotFile,
    SnapshotInfo,
    info_from_files,
    is_valid_hash,
    parse_archive_name,
)
from tracker.core.text import quoted
from tracker.errors import ProbeError
from tracker.net.limits import NO_HEADERS, decode_text, fetch_capped, iter_json_array

DEFAULT_MAX_BODY = 8 * 1024 * 1024
#: Redirects a probe follows, to the sidecar's own origin or its https upgrade only (a
#: proxy in front of it that moves its path; a loop ends here).
SAME_HOST_HOPS = 5
DEFAULT_MAX_ENTRIES = 10_000

# [0-9], not \d: \d also matches the digits of other scripts ("٣"), which no time uses.
_D = "[0-9]"
_RFC3339 = re.compile(
    rf"{_D}{{4}}-{_D}{{2}}-{_D}{{2}}T{_D}{{2}}:{_D}{{2}}:{_D}{{2}}(\.{_D}{{1,9}})?(Z|[+-]{_D}{{2}}:{_D}{{2}})"
)


async def probe_sidecar(
    client: httpx.AsyncClient,
    base_url: str,
    *,
    headers: Mapping[str, str] = NO_HEADERS,
    max_body: int = DEFAULT_MAX_BODY,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> list[SnapshotInfo]:
    """Every snapshot a sidecar at ``base_url`` (``{scheme}://{host}{api_path}``) holds.

    Each file gets ``url = {base_url}/v1/snapshot/{name}`` and its bare name as ``file_name``;
    each info's files are ordered newest first. An empty list means "up, no snapshots".
    Raises :class:`ProbeError` (one line) on any failure: transport, TLS, non-200 status
    (redirects are followed to the sidecar's own origin or its https upgrade only, at most
    :data:`SAME_HOST_HOPS`: as the Go tracker's probe follows them; its files' URLs stay
    under ``base_url``, whose downloads follow the same redirects), a body over
    ``max_body`` bytes, more than ``max_entries`` entries, invalid JSON or an invalid entry.
    Cancellation propagates untouched (a parse already running in its worker thread is
    finished first); the caller owns the timeout.
    """
    base = base_url.rstrip("/")
    body = await fetch_capped(
        client,
        f"{base}/v1/snapshots",
        headers=headers,
        max_body=max_body,
        same_host_hops=SAME_HOST_HOPS,
    )
    # Checking hashes is base58 in pure Python, ~90 us an entry: 10,000 entries would hold
    # the event loop for a second, so the parse runs in a worker thread (not abandoned on
    # cancellation: max_entries bounds the wait).
    return await trio.to_thread.run_sync(_parse_body, body, base, max_entries)


def _parse_body(body: bytearray, base_url: str, max_entries: int) -> list[SnapshotInfo]:
    return parse_snapshot_list(decode_text(body), base_url, max_entries=max_entries)


def parse_snapshot_list(text: str, base_url: str, *, max_entries: int) -> list[SnapshotInfo]:
    """Validate a sidecar's JSON answer into infos; :class:`ProbeError` names the bad entry."""
    infos = []
    sizes: dict[str, tuple[int, int]] = {}  # archive name: (size, entry that listed it)
    for index, raw in enumerate(iter_json_array(text, max_items=max_entries)):
        try:
            info = _info(raw, base_url)
            _same_sizes(info, index, sizes)
        except ProbeError as exc:  # one field of the entry: ``path: reason``
            raise ProbeError(f"entry {index}: {exc}") from None
        infos.append(info)
    return infos


def _same_sizes(info: SnapshotInfo, index: int, sizes: dict[str, tuple[int, int]]) -> None:
    """Refuse an archive ``info`` lists at another size than an earlier entry did (a full on
    its own and as an incremental's base): one answer stating two sizes of one file is a
    lie the tracker cannot tell from the truth, as any other invalid entry
    (docs/http-api.md#snapshot-sources-json). An unknown size (0) contradicts none. Records
    the sizes ``info`` lists in ``sizes``."""
    for f in info.files:
        if not f.size:
            continue
        size, first = sizes.setdefault(f.file_name, (f.size, index))
        if size != f.size:
            raise ProbeError(f"{f.file_name}: size {f.size}, entry {first} listed size {size}")


def _info(raw: object, base_url: str) -> SnapshotInfo:
    obj = _object(raw, "")
    slot = _u64(obj, "slot", "")
    base_slot = _u64(obj, "base_slot", "", required=False)
    hash_ = _hash(obj, "hash", "")
    _u64(obj, "size", "", required=False)  # type-checked only: recomputed from the files
    raw_files = obj.get("files")
    if not isinstance(raw_files, list) or not raw_files:
        raise ProbeError(f"files: not a non-empty array: {quoted(raw_files)}")
    if len(raw_files) > 2:
        raise ProbeError(f"files: {len(raw_files)} files, a chain has at most 2")
    files = [_file(f, f"files[{i}].", base_url) for i, f in enumerate(raw_files)]
    return _chain(files, slot, base_slot, hash_)


def _chain(files: list[SnapshotFile], slot: int, base_slot: int, hash_: str) -> SnapshotInfo:
    """The info whose head is the file the entry describes; the rest must be its full."""
    heads = [f for f in files if _is_head(f.name, slot, base_slot, hash_)]
    if len(heads) != 1:
        raise ProbeError("files: no file is the entry's snapshot (slot, base_slot, hash)")
    head = heads[0]
    rest = [f for f in files if f is not head]
    for other in rest:
        if head.name.is_full or not other.name.is_full or other.name.slot != head.name.base_slot:
            raise ProbeError(f"files: {other.file_name} is not the full snapshot at the base slot")
    return info_from_files([head, *rest])


def _is_head(name: ArchiveName, slot: int, base_slot: int, hash_: str) -> bool:
    # A full's info carries its own slot as base_slot (docs/http-api.md#snapshot-sources-json); 0
    # is accepted as well.
    base_ok = base_slot in (0, slot) if name.is_full else base_slot == name.base_slot
    return name.slot == slot and name.hash == hash_ and base_ok


def _file(raw: object, where: str, base_url: str) -> SnapshotFile:
    obj = _object(raw, where.rstrip("."))
    fields = ArchiveName(
        slot=_u64(obj, "slot", where),
        base_slot=_u64(obj, "base_slot", where, required=False),
        hash=_hash(obj, "hash", where),
        ext=_text(obj, "ext", where),
    )
    name_text = _text(obj, "file_name", where)
    name = parse_archive_name(name_text)
    if name is None:
        raise ProbeError(f"{where}file_name: not a snapshot archive name: {quoted(name_text)}")
    if name != fields:
        reason = f"{quoted(name_text)} disagrees with slot/base_slot/hash/ext"
        raise ProbeError(f"{where}file_name: {reason}")
    return SnapshotFile(
        name=name,
        file_name=name_text,
        size=_u64(obj, "size", where, required=False),
        mod_time=_time(obj, "mod_time", where),
        url=f"{base_url}/v1/snapshot/{name_text}",
        sha256=_sha256(obj, "sha256", where),
    )


def _object(value: object, label: str) -> dict[str, object]:
    if not isinstance(value, dict):
        prefix = f"{label}: " if label else ""
        raise ProbeError(f"{prefix}not a JSON object: {quoted(value)}")
    return value


def _u64(obj: dict[str, object], key: str, where: str, *, required: bool = True) -> int:
    value = obj.get(key)
    if value is None and not required:
        return 0
    # bool is a subclass of int: ``true`` must not pass as slot 1.
    if type(value) is not int or not 0 <= value <= U64_MAX:
        raise ProbeError(f"{where}{key}: not an unsigned 64-bit integer: {quoted(value)}")
    return value


def _text(obj: dict[str, object], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ProbeError(f"{where}{key}: not a string: {quoted(value)}")
    return value


def _hash(obj: dict[str, object], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not is_valid_hash(value):
        raise ProbeError(f"{where}{key}: not a base58 32-byte hash: {quoted(value)}")
    return value


def _sha256(obj: dict[str, object], key: str, where: str) -> str:
    """The published digest, lower-cased ("" when absent)."""
    value = obj.get(key)
    if value is None:
        return ""
    if isinstance(value, str) and is_sha256_hex(value.lower()):
        return value.lower()
    raise ProbeError(f"{where}{key}: not a SHA-256 (64 hex digits): {quoted(value)}")


def _time(obj: dict[str, object], key: str, where: str) -> datetime | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, str) and _RFC3339.fullmatch(value.upper()):
        try:
            return datetime.fromisoformat(value.upper()).astimezone(UTC)
        except (ValueError, OverflowError):
            pass  # well-formed but impossible: month 13, or past the calendar in UTC
    raise ProbeError(f"{where}{key}: not an RFC 3339 time: {quoted(value)}")
