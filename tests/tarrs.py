"""A tar stream read as agave unpacks a snapshot archive, written from their source for the
tests: the check must read every archive it passes exactly this way (docs/architecture.md,
"One reading of the tar stream").

- tar-rs (the ``tar`` crate agave unpacks with): ``src/archive.rs`` ``next_entry`` and
  ``next_entry_raw`` (a zero block ends the archive; the checksum over unsigned bytes; GNU
  long names ``L``/``K`` and pax ``x`` headers consumed for the next member, two of one kind
  refused; a pax ``size`` overrides the header's; old GNU sparse extension blocks),
  ``src/entry.rs`` ``path_bytes`` (the GNU long name first, then the pax ``path``, then the
  header's), ``src/header.rs`` (``is_ustar``: magic ``ustar\\0`` and version ``00``; the ustar
  ``prefix`` joined only then; ``octal_from``; base-256 numbers), ``src/pax.rs``.
- agave's ``accounts-db/src/hardened_unpack.rs``: the path's components (``.`` kept at the
  start, ``/`` and ``..`` refused), a non-ustar name ending in ``/`` that is not a directory
  refused, and ``is_valid_snapshot_archive_entry`` (anything else is "extra entry found").

:func:`unpacked` returns what agave would unpack, in order, or raises :class:`Refused` where
tar-rs or agave would fail.
"""

from __future__ import annotations

import attrs

BLOCK = 512


class Refused(Exception):
    """tar-rs or agave's unpacker fails on the archive."""


@attrs.frozen
class Unpacked:
    """One entry as agave unpacks it: its path's parts joined by ``/``, its kind (``file``,
    ``directory``, ``sparse``), its size and where its data starts in the tar stream."""

    path: str
    kind: str
    size: int
    data_at: int


def _truncate(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _octal(field: bytes) -> int:
    # octal_from: the field up to its first NUL, trimmed, through u64::from_str_radix(_, 8):
    # an optional "+" then octal digits, nothing else (no "_", no "0o", not empty).
    text = _truncate(field)
    try:
        digits = text.decode("utf-8").strip().removeprefix("+")
    except UnicodeDecodeError:
        raise Refused("numeric field did not have utf-8 text") from None
    if not digits or digits.strip("01234567"):
        raise Refused("numeric field was not a number")
    value = int(digits, 8)
    if value >= 1 << 64:
        raise Refused("numeric field was not a number")
    return value


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # numeric_extended_from: the bytes after the first, in a u64
        value = 0
        for byte in field[1:]:
            value = (value << 8 | byte) & ((1 << 64) - 1)
        return value
    return _octal(field)


def _pax(data: bytes) -> list[tuple[bytes, bytes] | None]:
    """tar-rs's PaxExtensions: one item a line, None for a malformed one."""
    out: list[tuple[bytes, bytes] | None] = []
    for line in data.split(b"\n"):
        if not line:
            break
        space = line.find(b" ")
        try:
            reported = int(line[:space].decode()) if space > 0 else -1
        except (UnicodeDecodeError, ValueError):
            reported = -1
        if space < 0 or reported != len(line) + 1 or b"=" not in line[space + 1 :]:
            out.append(None)
            continue
        key, _, value = line[space + 1 :].partition(b"=")
        out.append((key, value))
    return out


def _pax_size(data: bytes) -> int | None:
    for item in _pax(data):
        if item is None:
            return None
        if item[0] == b"size":
            try:
                return int(item[1].decode()) if item[1].isdigit() else None
            except UnicodeDecodeError:
                return None
    return None


def _pax_path(data: bytes) -> bytes | None:
    for item in _pax(data):
        if item is not None and item[0] == b"path":
            return item[1]
    return None


class _Stream:
    def __init__(self, tar: bytes) -> None:
        self.tar = tar
        self.next = 0

    def raw(self, pax: bytes | None) -> tuple[bytes, int, int] | None:
        """next_entry_raw: (header, size, data offset), None at the end."""
        block = self.tar[self.next : self.next + BLOCK]
        if not block:
            return None
        if len(block) < BLOCK:
            raise Refused("failed to read entire block")
        if block == bytes(BLOCK):
            return None
        self.next += BLOCK
        total = sum(block[:148]) + sum(block[156:]) + 8 * 32
        if total != _octal(block[148:156]):
            raise Refused("archive header checksum mismatch")
        size = _number(block[124:136])
        if pax is not None and (override := _pax_size(pax)) is not None:
            size = override
        at = self.next
        self.next += -(-size // BLOCK) * BLOCK
        return block, size, at

    def data(self, at: int, size: int) -> bytes:
        data = self.tar[at : at + size]
        if len(data) != size:
            raise Refused("unexpected end of archive")
        return data


def _is_ustar(block: bytes) -> bool:
    return block[257:263] == b"ustar\0" and block[263:265] == b"00"


def _is_gnu(block: bytes) -> bool:
    return block[257:263] == b"ustar " and block[263:265] == b" \0"


def _header_path(block: bytes) -> bytes:
    if _is_ustar(block):
        name, prefix = _truncate(block[:100]), _truncate(block[345:500])
        if block[345] == 0 and b"\\" not in name:
            return name
        return (prefix + b"/" if prefix else b"") + name
    return _truncate(block[:100])


def entries(tar: bytes) -> list[tuple[bytes, bytes, int, int]]:
    """tar-rs's Archive::entries: (path bytes, header block, size, data offset) of each
    entry."""
    stream = _Stream(tar)
    out = []
    while True:
        long_name = long_link = pax = None
        processed = 0
        while True:
            processed += 1
            raw = stream.raw(pax)
            if raw is None:
                if processed > 1:
                    raise Refused("members found describing a future member but none found")
                return out
            block, size, at = raw
            kind = block[156:157]
            recognized = _is_gnu(block) or _is_ustar(block)
            if recognized and kind in (b"L", b"K", b"x"):
                data = stream.data(at, size)
                if kind == b"L":
                    if long_name is not None:
                        raise Refused("two long name entries describing the same member")
                    long_name = data
                elif kind == b"K":
                    if long_link is not None:
                        raise Refused("two long name entries describing the same member")
                    long_link = data
                else:
                    if pax is not None:
                        raise Refused("two pax extensions entries describing the same member")
                    pax = data
                continue
            if kind == b"S":
                if not _is_gnu(block):
                    raise Refused("sparse entry type listed but not GNU header")
                extended = block[482]
                while extended:
                    ext = stream.data(stream.next, BLOCK)
                    stream.next += BLOCK
                    extended = ext[504]
                at = stream.next
                stream.next = at + -(-size // BLOCK) * BLOCK
                size = _number(block[483:495])  # the real size, holes included
            if long_name is not None:
                path = long_name[:-1] if long_name.endswith(b"\0") else long_name
            elif pax is not None and (pax_path := _pax_path(pax)) is not None:
                path = pax_path
            else:
                path = _header_path(block)
            out.append((path, block, size, at))
            break


def _parts(path: bytes) -> list[str]:
    """agave's components of ``path`` (Rust's Path::components)."""
    pieces = path.split(b"/")
    parts: list[str] = []
    if path.startswith(b"/"):
        raise Refused(f"invalid path found: {path!r}")
    for i, piece in enumerate(pieces):
        if piece == b"" or (piece == b"." and i > 0):
            continue
        if piece == b"..":
            raise Refused(f"invalid path found: {path!r}")
        try:
            parts.append(piece.decode("utf-8"))
        except UnicodeDecodeError:
            raise Refused(f"invalid path found: {path!r}") from None
    return parts


def _digits(text: str) -> bool:
    return bool(text) and all(c in "0123456789" for c in text)


def _like_storage(text: str) -> bool:
    head, dot, tail = text.partition(".")
    return bool(dot) and _digits(head) and _digits(tail)


def _valid(parts: list[str], kind: str) -> bool:
    file = kind in ("file", "sparse")
    match parts:
        case ["version"]:
            return kind == "file"
        case ["accounts"] | ["snapshots"]:
            return kind == "directory"
        case ["accounts", name]:
            return file and _like_storage(name)
        case ["snapshots", "status_cache"]:
            return file
        case ["snapshots", slot]:
            return kind == "directory" and _digits(slot)
        case ["snapshots", slot, name]:
            return file and _digits(slot) and _digits(name)
    return False


_KIND = {b"0": "file", b"\0": "file", b"5": "directory", b"S": "sparse"}


def unpacked(tar: bytes) -> list[Unpacked]:
    """What agave unpacks of the tar stream ``tar``; Refused where it fails."""
    out = []
    for path, block, size, at in entries(tar):
        flag = block[156:157]
        kind = _KIND.get(flag, f"type {flag!r}")
        parts = _parts(path)
        if not _is_ustar(block) and path.endswith(b"/") and kind != "directory":
            raise Refused(f"invalid path found: {path!r}")
        if not _valid(parts, kind):
            raise Refused(f"extra entry found: {path!r} {kind}")
        out.append(Unpacked("/".join(parts), kind, size, at))
    return out
