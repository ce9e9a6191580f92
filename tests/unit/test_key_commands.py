"""``snapshot-tracker keygen`` and ``pubkey`` (issue 47, point 3; docs/http-api.md, "Signed
statements"): a key made here signs with ``attest`` what ``verify --trust-key`` of its public
key accepts, over agave's own archive (tests/data/agave-snapshot); a bad file or a taken
name is one line and exit 2. And the key loader's rules for a credential systemd passed
(systemd/README.md)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers_statements import keypair_json

from tracker.cli import main
from tracker.config.files import CREDENTIALS_ENV, key_file_problem, load_signer
from tracker.proof.statements import Signer

DATA = Path(__file__).parent.parent / "data" / "agave-snapshot"
ARCHIVE = (DATA / "test-snapshot-v4.2.0-beta.1.tar.zst").read_bytes()
NAME = "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
SHA = hashlib.sha256(ARCHIVE).hexdigest()


def keygen(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The public key ``keygen --out path`` printed (it must succeed)."""
    assert main(["keygen", "--out", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return out.strip()


def test_keygen_writes_solana_keygens_format_mode_0600(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "signing.json"
    public = keygen(key, capsys)
    assert key.stat().st_mode & 0o777 == 0o600
    raw = key.read_bytes()
    values = json.loads(raw)
    assert raw == json.dumps(values, separators=(",", ":")).encode()  # as solana-keygen
    assert len(values) == 64 and all(type(v) is int and 0 <= v <= 255 for v in values)
    # The public half is the seed's, and it is what was printed.
    assert Signer.from_keypair_json(raw).public_key == public
    assert raw == keypair_json(bytes(values[:32])).replace(b" ", b"")
    assert [p.name for p in tmp_path.iterdir()] == ["signing.json"]  # no temp file left
    other = tmp_path / "other.json"
    assert keygen(other, capsys) != public  # a new key each time


@pytest.mark.parametrize("taken", ["file", "link", "dangling link", "directory"])
def test_keygen_never_replaces_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], taken: str
) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"keep me")
    out = tmp_path / "signing.json"
    if taken == "file":
        out.write_bytes(b"keep me")
    elif taken == "link":
        out.symlink_to(target)
    elif taken == "dangling link":
        out.symlink_to(tmp_path / "nowhere")
    else:
        out.mkdir()
    assert main(["keygen", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"snapshot-tracker keygen: --out: {out} exists; not replaced\n"
    assert target.read_bytes() == b"keep me"
    assert not (tmp_path / "nowhere").exists()
    if taken == "file":
        assert out.read_bytes() == b"keep me"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["signing.json", "target"]  # the temp file is gone


def test_keygen_into_a_missing_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing" / "signing.json"
    assert main(["keygen", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"snapshot-tracker keygen: --out: cannot write {out}: No such file or directory\n"


def test_keygen_pubkey_attest_and_verify_trust_key_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "signing.json"
    public = keygen(key, capsys)
    assert main(["pubkey", str(key)]) == 0
    assert capsys.readouterr().out == f"{public}\n"
    archive = tmp_path / NAME
    archive.write_bytes(ARCHIVE)
    assert main(["attest", str(archive), "--key", str(key)]) == 0
    assert capsys.readouterr().out == f"signed accounts {SHA} {archive}.attestation\n"
    assert main(["verify", str(archive), "--trust-key", public]) == 0
    assert capsys.readouterr().out == f"ok accounts {SHA} {archive}\n"
    # Another key made here does not vouch for it: the statement is bound to its key.
    stranger = keygen(tmp_path / "stranger.json", capsys)
    assert main(["verify", str(archive), "--trust-key", stranger]) == 1
    assert capsys.readouterr().out.startswith(f"bad {archive}: statements: ")


@pytest.mark.parametrize(
    ("content", "mode", "reason"),
    [
        (None, 0o644, "has mode 0644; a signing key must be 0600"),
        (b"[1, 2, 3]", 0o600, "not a JSON array of 64 bytes"),
        (b"", 0o600, "not a JSON array of 64 bytes"),
    ],
)
def test_pubkey_of_a_bad_file_is_one_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    mode: int,
    reason: str,
) -> None:
    key = tmp_path / "key.json"
    key.write_bytes(keypair_json(bytes([7]) * 32) if content is None else content)
    key.chmod(mode)
    assert main(["pubkey", str(key)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("snapshot-tracker pubkey: ") and reason in captured.err
    assert captured.err.count("\n") == 1
    assert "[" not in captured.err.removeprefix("snapshot-tracker pubkey: ")  # no key bytes


def test_pubkey_of_a_missing_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pubkey", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    missing = f"cannot read '{tmp_path}/nope.json': No such file or directory"
    assert err == f"snapshot-tracker pubkey: {missing}\n"


CREDS = "/run/credentials/snapshot-tracker.service"


@pytest.mark.parametrize(
    ("path", "mode", "uid", "problem"),
    [
        # The operator's own key: 0600, owned by the reader.
        ("/etc/k.json", 0o100600, 1000, None),
        ("/etc/k.json", 0o100400, 1000, None),
        ("/etc/k.json", 0o100640, 1000, "has mode 0640; a signing key must be 0600"),
        ("/etc/k.json", 0o100600, 0, "owned by uid 0, not the tracker's user"),
        # What systemd makes of LoadCredential=: 0400 owned by the service's user (ramfs),
        # or 0440 (an ACL's mask) owned by root (tmpfs).
        (f"{CREDS}/signing-key", 0o100400, 1000, None),
        (f"{CREDS}/signing-key", 0o100440, 0, None),
        (f"{CREDS}/signing-key", 0o100444, 0, "has mode 0444; a credential holding"),
        (f"{CREDS}/signing-key", 0o100460, 0, "has mode 0460; a credential holding"),
        (f"{CREDS}/signing-key", 0o100400, 1001, "owned by uid 1001, not the tracker's user or"),
        # Only directly in the credentials directory: not below it, not beside it.
        (f"{CREDS}/sub/signing-key", 0o100440, 0, "has mode 0440; a signing key must be 0600"),
        ("/run/credentials/other/signing-key", 0o100400, 0, "owned by uid 0"),
    ],
)
def test_the_key_files_mode_and_owner(path: str, mode: int, uid: int, problem: str | None) -> None:
    found = key_file_problem(path, mode, uid, 1000, CREDS)
    assert (problem in found) if problem and found else found is problem
    if path.startswith(CREDS + "/signing"):
        # Without $CREDENTIALS_DIRECTORY (not under systemd), the usual rules hold.
        assert key_file_problem(path, 0o100440, 1000, 1000, "") is not None


def test_a_credential_0440_is_loaded_only_from_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    key = creds / "signing-key"
    key.write_bytes(keypair_json(bytes([3]) * 32))
    key.chmod(0o440)
    monkeypatch.delenv(CREDENTIALS_ENV, raising=False)
    with pytest.raises(ValueError, match="has mode 0440; a signing key must be 0600"):
        load_signer(str(key))
    monkeypatch.setenv(CREDENTIALS_ENV, str(creds))
    assert load_signer(str(key)).public_key == Signer.from_keypair_json(key.read_bytes()).public_key
    key.chmod(0o444)  # readable by anyone: refused there too
    with pytest.raises(ValueError, match="has mode 0444; a credential holding a signing key"):
        load_signer(str(key))
