"""Signed statements on disk: ``snapshot-tracker attest`` and ``verify --trust-key``
(docs/http-api.md, "Signed statements").

``attest FILE --key KEYFILE`` checks an operator's own archive as the tracker does and writes
what it proved, signed, beside it as ``FILE.attestation`` (0644, atomically). ``verify
--trust-key PUBKEY`` then takes an archive only when enough trusted keys vouch for its exact
size and SHA-256 in such files (``--attestation F``, repeatable; by default the one beside
each archive). Every statement file is read bounded, as a regular file only.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tracker.core.smallfiles import read_small, write_atomically
from tracker.core.snapshots import parse_archive_name

if TYPE_CHECKING:
    from tracker.core.digests import Verified
    from tracker.fetch.trust import TrustPolicy
    from tracker.proof.statements import Signer

# The signing and checking libraries (cryptography) are imported where they run: the
# command line's parser is built for every command, and ``verify`` starts fast.

#: What a statement file beside an archive is named after it.
SUFFIX = ".attestation"
#: A signature's life when ``--valid-for`` is not given (as ``attest.valid_for``).
DEFAULT_VALID_FOR = 7 * 24 * 3600.0


def add_trust_flags(verify: argparse.ArgumentParser, count: Any) -> None:
    """``verify``'s ``--trust-key``, ``--trust-min`` and ``--attestation`` (``count``: the
    command line's check of a whole number in a range)."""
    add_trust_key_flags(verify, count)
    verify.add_argument(
        "--attestation",
        action="append",
        default=[],
        metavar="FILE",
        help="a statement file to read, repeatable (default: each archive's FILE.attestation)",
    )


def add_trust_key_flags(command: argparse.ArgumentParser, count: Any) -> None:
    """``--trust-key`` and ``--trust-min``, as ``verify`` and ``fetch`` take them."""
    command.add_argument(
        "--trust-key",
        action="append",
        default=[],
        type=_public_key,
        metavar="PUBKEY",
        help="take an archive only with signed statements of this key (base58), repeatable "
        "(default: statements are not asked for)",
    )
    command.add_argument(
        "--trust-min",
        type=count(1, 100),
        default=1,
        metavar="N",
        help="distinct trusted keys that must vouch for each archive (default: %(default)s)",
    )


def add_archives_command(
    commands: Any, name: str, summary: str, description: str, files: str
) -> argparse.ArgumentParser:
    """A subcommand over local archives, one or more given as its positional arguments
    (``files``: their help): ``verify`` and ``attest`` take them alike."""
    command: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=description
    )
    command.add_argument("files", nargs="+", metavar="FILE", help=files)
    return command


def add_attest_parser(commands: Any, duration: Any) -> None:
    """The ``attest`` subcommand."""
    attest = add_archives_command(
        commands,
        "attest",
        "sign what the check proves of local archives (FILE.attestation)",
        "Check each archive as the tracker does and write a signed statement of "
        "what it proved beside it (FILE.attestation). One line per file: 'signed <level> "
        "<sha256> <statement file>' or 'bad <file>: <reason>'. Exit 0 when every file was "
        "signed, 1 otherwise, 2 for a bad key file.",
        "the archives to sign",
    )
    attest.add_argument(
        "--key",
        required=True,
        metavar="KEYFILE",
        help="a Solana keypair file (solana-keygen's JSON), mode 0600, owned by you",
    )
    attest.add_argument(
        "--valid-for",
        type=duration,
        default=DEFAULT_VALID_FOR,
        metavar="DURATION",
        help="how long each statement holds (default: 7d)",
    )


def _public_key(text: str) -> str:
    from tracker.fetch.trust import public_key

    try:
        return public_key(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def load_key(path: str) -> Signer:
    """The signer of ``--key``; ValueError with one line (the key never shown)."""
    from tracker.config.files import load_signer

    return load_signer(os.path.abspath(path))


def sign_file(path: str, checked: Verified, signer: Signer, valid_for: float) -> str:
    """Write the signed statement of the checked archive at ``path`` beside it; its path."""
    from tracker.proof.records.attesting import HeldCopy, statement_of

    name = parse_archive_name(os.path.basename(path))
    if name is None:
        raise ValueError("not a snapshot archive name")
    now = time.time()  # the check has just ended: signed at once
    held = HeldCopy(name, os.stat(path).st_size, checked.sha256, checked.proof, now)
    document = signer.sign(statement_of(held, now, valid_for)).encode()
    target = path + SUFFIX
    write_atomically(target, document, mode=0o644)
    return target


def trust_of(args: argparse.Namespace) -> TrustPolicy:
    """What ``verify``'s flags ask of statements."""
    from tracker.fetch.trust import TrustPolicy

    return TrustPolicy(frozenset(args.trust_key), args.trust_min)


def vouch_problem(
    path: str, checked: Verified, policy: TrustPolicy, files: Sequence[str]
) -> str | None:
    """None when ``policy`` asks nothing or enough trusted keys vouch for the archive at
    ``path`` in ``files`` (default: ``path`` + ``.attestation``); else one line."""
    if not policy.active:
        return None
    # Imported here: the statements' library (cryptography) only where a key is asked for.
    from tracker.fetch.trust import unvouched
    from tracker.proof.statements import MAX_DOCUMENT, Expected

    name = parse_archive_name(os.path.basename(path))
    documents: list[bytes] = []
    unread: list[str] = []
    for file in files or [path + SUFFIX]:
        try:
            documents.append(read_small(file, MAX_DOCUMENT, follow=True))
        except OSError as exc:
            unread.append(f"{file}: {exc.strerror or exc}")
    expected = Expected(
        name=os.path.basename(path),
        size=os.stat(path).st_size,
        sha256=checked.sha256,
        required=policy.required,
        is_full=name is None or name.is_full,
        now=int(time.time()),
    )
    problem = unvouched(documents, policy, expected)
    if problem is None:
        return None
    return f"statements: {problem}" + (f"; not read: {', '.join(unread)}" if unread else "")
