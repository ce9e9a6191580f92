"""Parsing of request parameters: groups, slots, ``max``, archive names. Pure functions.

Everything a client sends is validated here before it reaches the index or the file system;
failures raise :class:`RequestError` with a one-line reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tracker.config.schema import Config
from tracker.core.cachedirs import is_group_name
from tracker.core.snapshots import U64_MAX, ArchiveName, parse_archive_name
from tracker.errors import RequestError

_UINT_RE = re.compile(r"[0-9]{1,20}")
MAX_BEST = 25


def parse_slot(text: str | None) -> int | None:
    """``slot=N``: absent, empty or 0 → None (no filter: the Go tracker's reading, whose
    clients send ``slot=0`` for "all"); anything but a u64 → 400."""
    if text is None or text == "":
        return None
    if not _UINT_RE.fullmatch(text) or int(text) > U64_MAX:
        raise RequestError(400, f"slot must be an unsigned 64-bit integer, got {text[:40]!r}")
    return int(text) or None


def parse_max(text: str | None) -> int:
    """``max=N``: absent or outside 1 to 25 → 25; not an integer → 400."""
    if text is None or text == "":
        return MAX_BEST
    if not re.fullmatch(r"-?[0-9]{1,20}", text):
        raise RequestError(400, f"max must be an integer, got {text[:40]!r}")
    value = int(text)
    return value if 1 <= value <= MAX_BEST else MAX_BEST


def group_filter(config: Config, args: Mapping[str, str]) -> str | None:
    """The group a listing is restricted to (None: every group); unknown → 404."""
    name = args.get("group")
    if name is None or name == "":
        return None
    return known_group(config, name)


def resolve_group(config: Config, args: Mapping[str, str]) -> str:
    """The group a redirect or archive request is for: ``group=`` or the default group; ""
    when neither names one (no group configured: nothing is known, answered as "no
    snapshot", never as a malformed group the client did not send)."""
    name = args.get("group") or config.default_group
    if not name:
        return ""
    return known_group(config, name)


def known_group(config: Config, name: str) -> str:
    """``name`` if it is a configured group; malformed → 400, unknown → 404."""
    if not is_group_name(name):
        raise RequestError(400, "malformed group name")
    if config.group_named(name) is None:
        raise RequestError(404, f"unknown group {name!r}")
    return name


def archive_name(text: str) -> ArchiveName:
    """A concrete archive name from a request path; anything else → 404."""
    parsed = parse_archive_name(text)
    if parsed is None:
        raise RequestError(404, "not a snapshot archive name")
    return parsed
