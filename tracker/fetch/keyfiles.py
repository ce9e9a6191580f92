"""Signing keys on disk: ``snapshot-tracker keygen --out FILE`` and ``snapshot-tracker pubkey
FILE`` (docs/http-api.md, "Signed statements"), so that a tracker host needs no
``solana-keygen`` to make the key ``attest`` signs with, and a fleet can read the public key
its ``--trust-key`` names.

``keygen`` writes ``solana-keygen``'s format (a JSON array of 64 bytes: seed, then public
key), mode 0600, and never replaces anything: the file appears whole or not at all, and a
name already taken (a file, a link, a directory) is refused. ``pubkey`` reads a key file with
the same loader as ``attest`` and the daemon (mode, owner and format checked; the secret
never shown) and prints its public key in base58.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from tracker.core.smallfiles import write_atomically

EXIT_OK, EXIT_USAGE = 0, 2


def add_key_parsers(commands: Any) -> None:
    """The ``keygen`` and ``pubkey`` subcommands."""
    keygen = commands.add_parser(
        "keygen",
        help="make a signing key for attest (solana-keygen's JSON, mode 0600)",
        description="Write a new ed25519 keypair in solana-keygen's format (a JSON array of "
        "64 bytes) to FILE, mode 0600, and print its public key (base58) on stdout. A FILE "
        "that exists is never replaced (exit 2).",
    )
    keygen.add_argument(
        "--out", required=True, metavar="FILE", help="the key file to create (must not exist)"
    )
    pubkey = commands.add_parser(
        "pubkey",
        help="print the public key (base58) of a key file, as --trust-key takes it",
        description="Print the base58 public key of a Solana keypair file (mode 0600, owned "
        "by you, as attest and the daemon require). A file that is not one: one line, exit 2.",
    )
    pubkey.add_argument("file", metavar="FILE", help="the keypair file")


def keygen_main(args: argparse.Namespace) -> int:
    """``keygen --out FILE``: 0 and the public key on stdout; 2 and one line on stderr when
    FILE exists or cannot be written."""
    from tracker.proof.statements import Signer

    path = os.path.abspath(args.out)
    data = Signer.new_keypair_json()
    try:
        # 0600 from the start (the temp file is created so): the secret is never readable
        # by another user, not even for a moment.
        write_atomically(path, data, mode=0o600, replace=False)
    except FileExistsError:
        print(f"snapshot-tracker keygen: --out: {args.out} exists; not replaced", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"snapshot-tracker keygen: --out: cannot write {args.out}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    try:
        print(Signer.from_keypair_json(data).public_key, flush=True)
    except BaseException:
        # The command failed (its output cannot be written, or it was interrupted): the key
        # goes with it, as nothing was said of it, and a rerun with the same --out works.
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return EXIT_OK


def pubkey_main(args: argparse.Namespace) -> int:
    """``pubkey FILE``: 0 and the base58 public key on stdout; 2 and one line on stderr for
    a file ``attest`` would refuse."""
    from tracker.fetch.statementfiles import load_key

    try:
        signer = load_key(args.file)
    except ValueError as exc:
        print(f"snapshot-tracker pubkey: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(signer.public_key, flush=True)
    return EXIT_OK
