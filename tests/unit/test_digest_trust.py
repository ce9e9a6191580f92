"""A restarted tracker trusts a cached archive's digest file (``.{name}.sha256``) only while
it describes the archive and only the tracker's user can have written it
(docs/http-api.md, "Verified archives"). No network."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from archives import build_archive

from tracker.cache.checked import CheckedFiles
from tracker.cache.disk import digest_path, write_digest
from tracker.core.digests import Digests, sha256sum_line

GROUP = "mainnet"


def restored(group_dir: Path, name: str) -> bool:
    checked = CheckedFiles(verify=True)
    with os.scandir(group_dir) as entries:
        checked.restore(str(group_dir), GROUP, list(entries))
    return checked.servable(GROUP, name)


@pytest.mark.parametrize(
    ("mode", "trusted"), [(0o644, True), (0o600, True), (0o664, False), (0o646, False)]
)
def test_a_digest_file_others_could_write_is_not_trusted(
    tmp_path: Path, mode: int, trusted: bool
) -> None:
    name, good = build_archive(1234)
    archive = tmp_path / name
    archive.write_bytes(good)
    write_digest(str(archive), sha256sum_line("ab" * 32, name))
    digest = Path(digest_path(str(archive)))
    assert restored(tmp_path, name)
    os.chmod(digest, mode)  # a chmod changes ctime only: the digest still describes the file
    assert restored(tmp_path, name) is trusted


def test_the_digest_file_is_written_0644_whatever_the_umask(tmp_path: Path) -> None:
    name, good = build_archive(1234)
    archive = tmp_path / name
    archive.write_bytes(good)
    old = os.umask(0)
    try:
        write_digest(str(archive), sha256sum_line("ab" * 32, name))
    finally:
        os.umask(old)
    st = os.stat(digest_path(str(archive)))
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.geteuid()


def test_a_restored_copy_carries_its_size_and_when_its_check_ended(tmp_path: Path) -> None:
    name, good = build_archive(1234)
    archive = tmp_path / name
    archive.write_bytes(good)
    write_digest(str(archive), sha256sum_line("ab" * 32, name))
    written = os.stat(digest_path(str(archive))).st_ctime
    digests = Digests()
    checked = CheckedFiles(verify=True, digests=digests)
    with os.scandir(tmp_path) as entries:
        checked.restore(str(tmp_path), GROUP, list(entries))
    # What a signed statement of it says (docs/http-api.md, "Signed statements").
    held = digests.verified(GROUP, name)
    assert held is not None and (held.size, held.checked_at) == (len(good), written)
