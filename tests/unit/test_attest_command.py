"""``snapshot-tracker attest`` and ``verify --trust-key``: statements signed offline and
checked offline, over agave's own archive (tests/data/agave-snapshot)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import zstandard
from helpers_statements import keypair_json, signer, statement

from tracker.cli import main

DATA = Path(__file__).parent.parent / "data" / "agave-snapshot"
ARCHIVE = (DATA / "test-snapshot-v4.2.0-beta.1.tar.zst").read_bytes()
NAME = "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
SHA = hashlib.sha256(ARCHIVE).hexdigest()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / NAME
    path.write_bytes(ARCHIVE)
    return path


def _key(tmp_path: Path, seed: int = 1, mode: int = 0o600) -> Path:
    path = tmp_path / f"key{seed}.json"
    path.write_bytes(keypair_json(bytes([seed]) * 32))
    path.chmod(mode)
    return path


def test_attest_signs_what_the_check_proved_beside_the_archive(
    tmp_path: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["attest", str(archive), "--key", str(_key(tmp_path)), "--valid-for", "1d"]) == 0
    written = Path(f"{archive}.attestation")
    assert capsys.readouterr().out == f"signed accounts {SHA} {written}\n"
    statement_text = json.loads(written.read_bytes())["statement"]
    body = json.loads(statement_text)
    assert (body["name"], body["size"], body["sha256"], body["level"]) == (
        NAME,
        len(ARCHIVE),
        SHA,
        "accounts",
    )
    assert body["bank_hash"] == "FF2m56Z7VbuL5fhNTfNzzH41ZP45CYzxZGocL9RqmRck"
    assert body["expires"] - body["checked_at"] in range(86400 - 5, 86400 + 5)
    assert written.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("mode", "reason"), [(0o644, "has mode 0644"), (0o600, "not a JSON array of 64 bytes")]
)
def test_attest_with_an_unusable_key_is_one_line_and_exit_2(
    tmp_path: Path, archive: Path, capsys: pytest.CaptureFixture[str], mode: int, reason: str
) -> None:
    key = _key(tmp_path, mode=mode)
    if mode == 0o600:
        key.write_bytes(b"[1, 2, 3]")
    assert main(["attest", str(archive), "--key", str(key)]) == 2
    err = capsys.readouterr().err
    assert reason in err and err.count("\n") == 1 and "--key" in err
    assert not Path(f"{archive}.attestation").exists()


def test_attest_refuses_a_bad_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    forged = tmp_path / "snapshot-100-11111111111111111111111111111111.tar.zst"
    forged.write_bytes(ARCHIVE)
    assert main(["attest", str(forged), "--key", str(_key(tmp_path))]) == 1
    assert capsys.readouterr().out.startswith(f"bad {forged}: manifest: name hash")
    assert not Path(f"{forged}.attestation").exists()


def _verify(archive: Path, *flags: str) -> int:
    return main(["verify", str(archive), *flags])


def test_verify_takes_an_archive_its_trusted_keys_vouch_for(
    tmp_path: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["attest", str(archive), "--key", str(_key(tmp_path, 1))])
    capsys.readouterr()
    assert _verify(archive, "--trust-key", signer(1).public_key) == 0
    assert capsys.readouterr().out == f"ok accounts {SHA} {archive}\n"
    # Another key's statement vouches for nothing; two keys needed, one given: bad.
    for flags, reason in (
        (["--trust-key", signer(2).public_key], "not a trusted key"),
        (
            [
                *("--trust-key", signer(1).public_key),
                *("--trust-key", signer(2).public_key),
                *("--trust-min", "2"),
            ],
            "1 of the 2 trusted statements needed",
        ),
    ):
        assert _verify(archive, *flags) == 1
        out = capsys.readouterr().out
        assert out.startswith(f"bad {archive}: statements: ") and reason in out


def test_verify_refuses_a_statement_of_other_bytes_or_expired(
    tmp_path: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same snapshot compressed again: a valid archive, other bytes, another SHA-256.
    other = tmp_path / "other" / NAME
    other.parent.mkdir()
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(ARCHIVE)
    other.write_bytes(zstandard.ZstdCompressor(level=1).compress(plain))
    main(["attest", str(archive), "--key", str(_key(tmp_path, 1))])
    capsys.readouterr()
    statements = f"{archive}.attestation"
    key = signer(1).public_key
    assert _verify(other, "--trust-key", key, "--attestation", statements) == 1
    assert f"names size {len(ARCHIVE)}, the file has {other.stat().st_size}" in (
        capsys.readouterr().out
    )
    expired = tmp_path / "expired.attestation"
    expired.write_bytes(
        signer(1).sign(statement(size=len(ARCHIVE), sha256=SHA, checked_at=1, expires=2)).encode()
    )
    assert _verify(archive, "--trust-key", key, "--attestation", str(expired)) == 1
    assert "expired at 2" in capsys.readouterr().out


def test_verify_says_which_statement_file_it_could_not_read(
    tmp_path: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.attestation"
    assert _verify(archive, "--trust-key", signer(1).public_key, "--attestation", str(missing)) == 1
    out = capsys.readouterr().out
    assert "none found" in out and f"not read: {missing}" in out


@pytest.mark.parametrize("bad", ["abc", "0" * 44, "11111111"])
def test_a_bad_trust_key_is_a_usage_error(
    archive: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        _verify(archive, "--trust-key", bad)
    assert exited.value.code == 2
    assert "not a base58 public key" in capsys.readouterr().err
