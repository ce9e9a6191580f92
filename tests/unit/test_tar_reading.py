"""One reading of the tar stream: the check reads every archive it passes exactly as agave
unpacks it (tests/tarrs.py, written from tar-rs's and agave's source), and refuses every header
agave's writer never emits, naming the member and the byte (docs/architecture.md, "One reading
of the tar stream").

Every archive here is built around the archive agave's own serializer wrote
(tests/data/agave-snapshot/), proven to ``accounts`` as it is. The forgeries of the hardening
round (a GNU long name beside a pax path, a ustar prefix without version ``00``, a sparse
member, a storage twice, the manifest after the storages) each make tar-rs unpack other
storages than the ones a looser reading would count; each is refused before any proof.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from forgeries import (
    AGAVE,
    AT,
    BLOCK,
    GNU,
    HONEST,
    NAME,
    OLD,
    PLAIN,
    STORAGE,
    USTAR,
    forged,
    header,
    long_name,
    long_name_forgery,
    member,
    offset,
    padded,
    pax,
    sparse,
    tar_of,
    with_parts,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tarrs import Refused, Unpacked, unpacked

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import check_stream
from tracker.proof.archive.reread import accounts_prover, proving
from tracker.proof.archive.tarwalk import Header
from tracker.proof.levels import Level


def check_reading(tar: bytes, tmp_path: Path) -> tuple[Level, list[Unpacked]]:
    """The level the check reaches on ``tar`` (accounts proven), and its reading of the
    members, as the comparison with tar-rs's wants it; ArchiveInvalid when it refuses."""
    path = tmp_path / NAME
    path.write_bytes(tar)
    reading: list[Unpacked] = []

    def seen(head: Header, at: int) -> None:
        kind = "directory" if head.directory else "file"
        reading.append(Unpacked(head.name, kind, head.size, at))

    with open(path, "rb", buffering=0) as file:
        limits = AccountsLimits(max_accounts=1000)
        accounts = accounts_prover(NAME, limits, f"/proc/self/fd/{file.fileno()}")
        with proving(accounts):
            verified = check_stream(file.read, NAME, accounts=accounts, seen=seen)
    return verified.proof.level, reading


def one_reading(tar: bytes, tmp_path: Path) -> str:
    """The check's answer on ``tar`` after asserting the rule: when it passes, tar-rs reads
    the same members, kinds, sizes and data offsets."""
    try:
        level, reading = check_reading(tar, tmp_path)
    except ArchiveInvalid as exc:
        return exc.reason
    assert unpacked(tar) == reading
    return f"ok {level.name.lower()}"


def test_the_shipped_archive_is_read_one_way_and_proven(tmp_path: Path) -> None:
    assert one_reading(tar_of(*PLAIN), tmp_path) == "ok accounts"
    assert [u.path for u in unpacked(tar_of(*PLAIN))] == [n for n, _ in AGAVE]


def _storage_at() -> int:
    return offset(AT[STORAGE])


# (row, the archive, what tar-rs unpacks as accounts/99.2 (None: refused or absent), the
# check's reason). The forgeries give tar-rs another accounts/99.2 than the honest one.
FORGERIES: list[tuple[str, Callable[[], bytes], str]] = [
    (
        "gnu long name beside a pax path",
        long_name_forgery,
        f"tar: '././@LongLink' at byte {_storage_at()} is a GNU long name; agave writes only "
        "regular files and directories",
    ),
    (
        "ustar prefix without version 00",
        lambda: with_parts(
            AT[STORAGE] + 1,
            member(STORAGE, forged(HONEST), magic=b"ustar\x00  ", prefix=b"zz"),
        ),
        f"tar: '{STORAGE}' at byte {offset(AT[STORAGE] + 1)} has a header format agave does "
        "not write (magic and version b'ustar\\x00  ')",
    ),
    (
        "ustar prefix with version 00",
        lambda: with_parts(AT[STORAGE] + 1, member("99.2", forged(HONEST), prefix=b"accounts")),
        f"tar: '99.2' at byte {offset(AT[STORAGE] + 1)} continues its name in the ustar "
        "prefix field (agave does not write it)",
    ),
    (
        "sparse member after the honest one",
        lambda: with_parts(AT[STORAGE] + 1, sparse(STORAGE, forged(HONEST))),
        f"tar: '{STORAGE}' at byte {offset(AT[STORAGE] + 1)} is a GNU sparse file; agave "
        "writes only regular files and directories",
    ),
    (
        "an honest storage stored only as sparse",
        lambda: with_parts(AT[STORAGE], sparse(STORAGE, HONEST), replace=True),
        f"tar: '{STORAGE}' at byte {_storage_at()} is a GNU sparse file; agave writes only "
        "regular files and directories",
    ),
    (
        "a storage twice",
        lambda: with_parts(AT[STORAGE] + 1, member(STORAGE, forged(HONEST))),
        f"tar: '{STORAGE}' twice in the archive (again at byte {offset(AT[STORAGE] + 1)})",
    ),
    (
        "a pax path only",
        lambda: with_parts(
            AT[STORAGE] + 1, pax({"path": STORAGE}), member("accounts/99.3", forged(HONEST))
        ),
        f"tar: '././@PaxHeader' at byte {offset(AT[STORAGE] + 1)} is a pax header; agave "
        "writes only regular files and directories",
    ),
    (
        "a pax global header",
        lambda: with_parts(
            AT[STORAGE],
            header(b"pax_global_header", 0, b"g"),
        ),
        f"tar: 'pax_global_header' at byte {_storage_at()} is a pax global header; agave "
        "writes only regular files and directories",
    ),
    (
        "a symbolic link",
        lambda: with_parts(AT[STORAGE], header(b"accounts/99.9", 0, b"2")),
        f"tar: 'accounts/99.9' at byte {_storage_at()} is a symbolic link; agave writes only "
        "regular files and directories",
    ),
    (
        "a hard link",
        lambda: with_parts(AT[STORAGE], header(b"accounts/99.9", 0, b"1")),
        f"tar: 'accounts/99.9' at byte {_storage_at()} is a hard link; agave writes only "
        "regular files and directories",
    ),
    (
        "a character device",
        lambda: with_parts(AT[STORAGE], header(b"accounts/99.9", 0, b"3")),
        f"tar: 'accounts/99.9' at byte {_storage_at()} is a character device; agave writes "
        "only regular files and directories",
    ),
    (
        "a FIFO",
        lambda: with_parts(AT[STORAGE], header(b"accounts/99.9", 0, b"6")),
        f"tar: 'accounts/99.9' at byte {_storage_at()} is a FIFO; agave writes only regular "
        "files and directories",
    ),
    (
        "a contiguous file",
        lambda: with_parts(AT[STORAGE], member("accounts/99.9", b"x", kind=b"7")),
        f"tar: 'accounts/99.9' at byte {_storage_at()} is a contiguous file; agave writes "
        "only regular files and directories",
    ),
    (
        "the manifest after the storages",
        lambda: tar_of(
            *[p for i, p in enumerate(PLAIN) if i != AT["snapshots/100/100"]],
            PLAIN[AT["snapshots/100/100"]],
        ),
        "tar: manifest after the account storages ('accounts/98.1' at byte "
        f"{offset(AT['accounts/98.1']) - len(PLAIN[AT['snapshots/100/100']])} comes before "
        "snapshots/100/100)",
    ),
    (
        "a storage with a leading zero beside the real one",
        lambda: with_parts(AT[STORAGE] + 1, member("accounts/099.2", forged(HONEST))),
        f"tar: file 'accounts/099.2' at byte {offset(AT[STORAGE] + 1)} is not an entry agave "
        "writes in this archive",
    ),
    (
        "a storage under ./",
        lambda: with_parts(AT[STORAGE] + 1, member("./" + STORAGE, forged(HONEST))),
        f"tar: file './{STORAGE}' at byte {offset(AT[STORAGE] + 1)} is not an entry agave "
        "writes in this archive",
    ),
    (
        "a storage under a doubled slash",
        lambda: with_parts(AT[STORAGE] + 1, member("accounts//99.2", forged(HONEST))),
        f"tar: file 'accounts//99.2' at byte {offset(AT[STORAGE] + 1)} is not an entry agave "
        "writes in this archive",
    ),
    (
        "a checksum over signed bytes",
        lambda: with_parts(
            AT[STORAGE] + 1, _signed_checksum(member("accounts/99.9", b"\xff" * 10))
        ),
        f"tar: bad header checksum at byte {offset(AT[STORAGE] + 1)}",
    ),
    (
        "a base-256 size past 64 bits",
        lambda: with_parts(AT[STORAGE] + 1, _huge_size(member("accounts/99.9", b""))),
        f"tar: bad size field at byte {offset(AT[STORAGE] + 1)}",
    ),
    *[
        (
            f"a directory's size field {label}",
            lambda blank=blank: with_parts(
                AT["accounts"], _with_field(PLAIN[AT["accounts"]], 124, blank), replace=True
            ),
            f"tar: bad size field at byte {offset(AT['accounts'])}",
        )
        for label, blank in [
            ("all NULs", bytes(12)),
            ("all spaces", b" " * 12),
            ("spaces then NUL", b" " * 11 + b"\0"),
            ("one space then NULs", b" " + bytes(11)),
        ]
    ],
    (
        "a blank checksum field",
        lambda: with_parts(AT["accounts"], _blank_checksum(PLAIN[AT["accounts"]]), replace=True),
        f"tar: bad header checksum at byte {offset(AT['accounts'])}",
    ),
]


def _with_field(part: bytes, at: int, value: bytes) -> bytes:
    """``part`` with the header field at ``at`` set to ``value``, its checksum made again."""
    block = bytearray(part[:BLOCK])
    block[at : at + len(value)] = value
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block) + part[BLOCK:]


def _blank_checksum(part: bytes) -> bytes:
    block = bytearray(part[:BLOCK])
    block[148:156] = b" " * 8
    return bytes(block) + part[BLOCK:]


def _signed_checksum(part: bytes) -> bytes:
    block = bytearray(part[:BLOCK])
    block[0:20] = b"accounts/99.9\xff\xff\xff\xff\xff\xff\xff"  # bytes over 127 in the name
    block[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in block)
    block[148:155] = b"%06o\0" % signed
    return bytes(block) + part[BLOCK:]


def _huge_size(part: bytes) -> bytes:
    block = bytearray(part[:BLOCK])
    block[124:136] = b"\x80\x01" + bytes(10)
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block) + part[BLOCK:]


@pytest.mark.parametrize(("row", "build", "reason"), FORGERIES, ids=[r[0] for r in FORGERIES])
def test_each_header_kind_is_refused_naming_the_member_and_the_byte(
    row: str, build: Callable[[], bytes], reason: str, tmp_path: Path
) -> None:
    assert one_reading(build(), tmp_path) == reason


@pytest.mark.parametrize(
    "row", ["gnu long name beside a pax path", "ustar prefix without version 00", "a storage twice"]
)
def test_the_forgeries_give_tar_rs_other_storages(row: str) -> None:
    # What made each forgery one: tar-rs unpacks a storage the honest reading never counts.
    build = next(b for r, b, _ in FORGERIES if r == row)
    tar = build()
    try:
        reading = unpacked(tar)
    except Refused:  # pragma: no cover - the rows above are ones agave unpacks
        pytest.fail(f"{row}: agave refuses it: not a forgery")
    datas = [tar[u.data_at : u.data_at + u.size] for u in reading if u.path == STORAGE]
    assert forged(HONEST) in datas


def test_agaves_own_headers_and_gnu_and_old_ones_are_read_one_way(tmp_path: Path) -> None:
    # Headers agave's writer emits (ustar "00"), and the GNU and old formats tar-rs reads
    # with the same name field (the test archives of tests/archives.py are GNU).
    for magic in (USTAR, GNU, OLD):
        parts = [member(n, d, magic=magic) for n, d in AGAVE]
        assert one_reading(tar_of(*parts), tmp_path) == "ok accounts"
    zeroed = [
        header(n.encode(), len(d), b"\0") + padded(d) if d is not None else member(n, d)
        for n, d in AGAVE
    ]
    assert one_reading(tar_of(*zeroed), tmp_path) == "ok accounts"


def test_a_base256_size_is_read_as_tar_rs_reads_it(tmp_path: Path) -> None:
    def base256(part: bytes) -> bytes:
        block = bytearray(part[:BLOCK])
        size = int(bytes(block[124:135]), 8)
        block[124:136] = b"\x80" + size.to_bytes(11, "big")
        block[148:156] = b" " * 8
        block[148:155] = b"%06o\0" % sum(block)
        return bytes(block) + part[BLOCK:]

    tar = tar_of(*[base256(p) if p[156:157] != b"5" else p for p in PLAIN])
    assert one_reading(tar, tmp_path) == "ok accounts"


# --- the property: the check never passes what tar-rs reads another way ----------------------

_NAMES = [
    "version",
    "snapshots/status_cache",
    "snapshots/100/100",
    "snapshots/101/101",
    STORAGE,
    "accounts/98.1",
    "accounts/99.3",
    "accounts/099.2",
    "./" + STORAGE,
    "accounts//99.2",
    "accounts/./99.2",
    STORAGE + "/",
    STORAGE + ".x",
    "/" + STORAGE,
    "99.2",
    "accounts",
    "snapshots",
    "junk",
]


# Size fields tar-rs's ``octal_from`` refuses (nothing left once trimmed) and, last, one it
# reads as 0.
_BLANKS = [bytes(12), b" " * 12, b" " * 11 + b"\0", b"   \0" + bytes(8), b"0" + bytes(11)]


def _mostly(usual: object, *others: object) -> st.SearchStrategy[object]:
    # The usual choice seven times in eight: archives the check passes come up often
    # enough for the rule to be asserted on them, not only on refusals.
    same = st.just(usual)
    return st.one_of(*[same] * 7, st.sampled_from(others)) if others else same


_INSERTED = st.fixed_dictionaries(
    {
        "at": st.integers(0, len(PLAIN)),
        "replace": st.booleans(),
        "name": st.sampled_from(_NAMES),
        "kind": st.sampled_from([b"0", b"\0", b"5", b"1", b"2", b"7", b"S", b"g", b"V"]),
        "magic": st.sampled_from([USTAR, GNU, OLD, b"ustar\x00  ", b"ustar \x0000"]),
        "prefix": st.sampled_from([b"", b"accounts", b"zz"]),
        "long_name": st.none() | st.sampled_from(_NAMES),
        "pax_path": st.none() | st.sampled_from(_NAMES),
        "pax_size": st.none() | st.integers(0, 2000),
        "data": st.sampled_from(["honest", "forged", "empty"]),
        "size_field": st.none() | st.sampled_from(_BLANKS),
    }
)
# One of the shipped members written again with other header features, its own name and data.
_REWRITTEN = st.fixed_dictionaries(
    {
        "at": st.integers(0, len(PLAIN) - 1),
        "replace": st.just(True),
        "name": st.none(),
        "kind": _mostly(b"0", b"\0", b"S", b"7"),
        "magic": _mostly(USTAR, GNU, OLD, b"ustar\x00  "),
        "prefix": _mostly(b"", b"zz"),
        "long_name": _mostly(None, *_NAMES),
        "pax_path": _mostly(None, *_NAMES),
        "pax_size": _mostly(None, 0, 152),
        "data": st.just("own"),
        "size_field": _mostly(None, *_BLANKS),
    }
)
_FEATURE = st.one_of(_REWRITTEN, _REWRITTEN, _REWRITTEN, _INSERTED)


def _mutated(features: list[dict[str, object]]) -> bytes:
    parts = list(PLAIN)
    for f in features:
        at = int(str(f["at"]))
        own_name, own_data = AGAVE[min(at, len(AGAVE) - 1)]
        choice = str(f["data"])
        data = {"honest": HONEST, "forged": forged(HONEST), "empty": b""}.get(choice, own_data)
        kind = f["kind"]
        assert isinstance(kind, bytes)
        if choice == "own" and own_data is None:
            kind = b"5"
        name = (own_name if f["name"] is None else str(f["name"])).encode()
        if kind == b"5" and f["name"] is None:
            name += b"/"
        size = 0 if kind == b"5" or data is None else len(data)
        body = b"" if kind == b"5" or data is None else padded(data)
        magic, prefix = f["magic"], f["prefix"]
        assert isinstance(magic, bytes) and isinstance(prefix, bytes)
        field = f["size_field"]
        assert field is None or isinstance(field, bytes)

        def size_field(block: bytearray, field: bytes | None = field) -> None:
            if field is not None:
                block[124:136] = field

        new = header(name, size, kind, magic, prefix, extra=size_field) + body
        before = b""
        if f["long_name"] is not None:
            before += long_name(str(f["long_name"]).encode())
        records = {}
        if f["pax_path"] is not None:
            records["path"] = str(f["pax_path"])
        if f["pax_size"] is not None:
            records["size"] = str(f["pax_size"])
        if records:
            before += pax(records)
        if f["replace"] and at < len(parts):
            parts[at] = before + new
        else:
            parts.insert(at, before + new)
    return tar_of(*parts)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(features=st.lists(_FEATURE, max_size=3))
def test_no_archive_the_check_passes_reads_another_way_in_tar_rs(
    features: list[dict[str, object]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("reading")
    try:
        one_reading(_mutated(features), tmp)  # asserts the rule whenever the check passes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
