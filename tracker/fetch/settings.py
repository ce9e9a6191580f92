"""The tunables of one download of ``snapshot-tracker fetch`` (:mod:`tracker.fetch.download`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from tracker.fetch.trust import TrustPolicy
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.levels import Level

if TYPE_CHECKING:
    from tracker.proof.levels import Voter

MiB = 1024 * 1024


@attrs.frozen
class FetchSettings:
    """Tunables of a download (seconds, bytes, bytes per second)."""

    connections: int = 8
    #: The smallest piece handed out (bigger for big files: four per connection).
    piece_size: int = 8 * MiB
    #: Longest wait for a response head (connect included).
    request_timeout: float = 3.0
    #: Longest wait for one read of a body.
    read_timeout: float = 30.0
    #: A source slower than this (bytes/s, over ``speed_window``) is dropped when another is
    #: left; 0 turns the check off.
    min_speed: int = 10 * MiB
    speed_window: float = 5.0
    #: Ranges compared before two sources are used together, and their size.
    samples: int = 3
    sample_size: int = 64 * 1024
    #: Seconds between two saves of the state file.
    state_every: float = 0.25
    #: Bytes gathered per ``pwrite`` (per connection), and asked of the socket per read.
    write_size: int = 2 * MiB
    write_delay: float = 0.05
    read_size: int = 1 * MiB
    #: Failures in a row after which a source is dropped.
    max_failures: int = 3
    #: URLs of a file used at most (the best by the listing's order), and how many of them
    #: are asked (first byte, samples) at once.
    max_sources: int = 32
    checks_at_once: int = 16
    #: Check each downloaded archive (tracker.proof.archive.archivecheck) and compare its SHA-256
    #: with the tracker's before the rename into the ledger.
    verify: bool = True
    #: The level each archive must be proven to (``--require``; docs/architecture.md,
    #: "Proven archives"); with ``verify`` only.
    require: Level = Level.STRUCTURE
    #: The validators that must be able to load each archive (``--loadable-by``; None: any;
    #: docs/http-api.md, "Proven archives"); with ``verify`` only.
    loadable_by: str | None = None
    #: The limits of a full's ``accounts`` proof (``--prove-accounts-memory``, ``-temp-dir``,
    #: ``-max``; docs/architecture.md, "The accounts level"); None: fulls are not proven to
    #: ``accounts``. With ``verify`` only.
    prove_accounts: AccountsLimits | None = attrs.field(factory=AccountsLimits)
    #: The keys whose signed statements must vouch for each archive before its rename into
    #: the ledger, and how many (``--trust-key``, ``--trust-min``; its ``required`` is
    #: ``require``); with ``verify`` only: a statement names the SHA-256 the check computes.
    trust: TrustPolicy = attrs.field(factory=TrustPolicy)
    #: Longest wait for the whole answer of the tracker's ``.attestation`` route (a document
    #: of at most 16 KiB).
    statements_timeout: float = 10.0
    #: Who asks the cluster's votes of each checked archive (``--rpc``; docs/architecture.md,
    #: "The cluster level"); None: nobody, an archive stops where its check does. With
    #: ``verify`` only: the votes are for the bank hash the check reads.
    voter: Voter | None = attrs.field(default=None, eq=False)
