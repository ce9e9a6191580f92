"""The check and proof of local files (docs/architecture.md, "Proven archives": "Local
files").

A ``local`` target's archives are on the tracker's own disk: :class:`LocalProofs` checks
each as the cache checks its copies (:func:`tracker.cache.checked.check_opened`: the archive
check with its proof, a full to ``accounts`` within the tracker's shared proof limits), in the
background, one after another, once per file identity (:mod:`tracker.proof.records.localcopies`
decides which and where each stands). What passed is held verified in the digests as that
file's own copy (its ``sha256`` and ``proof`` in the JSON, the ``.sha256`` route, a
statement signed with ``attest``, and the statement ``snapshot-tracker attest`` wrote beside
it, ``FILE.attestation``, once it is found valid for that very file: its name, size and
SHA-256, unexpired, signature checked); with ``rpc`` set the cluster's votes are asked of it
as of a cached copy (:func:`tracker.proof.cluster.lifting.lifted`). A file is never deleted (the
directory is the validator's). In a group that sets ``trust.require`` above ``structure`` a
file ranks only once proven there (the index's local gate, :func:`local_gated`, set by the
composition root before any result ranks), one that fails or falls short is kept out with
its reason, and the file served must be the one proven (:meth:`LocalProofs.admit`); a group
that sets none ranks its files as it did, but one whose check failed is kept out in every
group. The files are listed here
as the scrape lists them, every second.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import time
from collections.abc import Callable, Collection
from functools import partial
from typing import TYPE_CHECKING

import attrs
import trio

from tracker.cache.checked import check_opened, open_copy
from tracker.config.schema import Config, TargetGroup
from tracker.core.digests import Digests, Verified, repr_digest
from tracker.core.smallfiles import read_small_file
from tracker.core.snapshots import TargetKey
from tracker.discovery.local import readable_archives, scan_local
from tracker.errors import ArchiveInvalid, ProbeError, RequestError
from tracker.net.limits import exhausted
from tracker.observability.logs import log_event
from tracker.ordering.index import Index
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.background.rounds import CHECK_EVERY, RETRY_AFTER, Rounds
from tracker.proof.cluster.lifting import liftable, lifted
from tracker.proof.levels import Voters
from tracker.proof.records.localcopies import (
    Checked,
    FileIdentity,
    LocalCopy,
    admission,
    checks_due,
    gated,
    holder,
    identity_of,
    standing,
    still_said,
)
from tracker.serving.threads import DirectoryThreads

if TYPE_CHECKING:
    from tracker.proof.statements import Attestation

log = logging.getLogger("tracker.proof")

#: The statement ``snapshot-tracker attest`` writes beside an archive: ``{path}{suffix}``.
STATEMENT_SUFFIX = ".attestation"
#: The largest statement file read (:data:`tracker.proof.statements.MAX_DOCUMENT`, not
#: imported: that module loads cryptography, which a tracker without statements never needs).
MAX_STATEMENT = 16 * 1024
#: What is known of the statement file beside a checked local file: the identity it had
#: when read (None: there was none) and the statement taken of it (None: none, or refused).
Beside = tuple[FileIdentity | None, "Attestation | None"]


class LocalProofs(Rounds):
    """The checks of one tracker's local files; started by the service."""

    def __init__(
        self,
        config: Callable[[], Config],
        index: Index,
        digests: Digests,
        *,
        votes: Voters | None = None,
        accounts: Callable[[], AccountsLimits | None] | None = None,
        on_rejected: Callable[[str], None] | None = None,
        directories: DirectoryThreads | None = None,
        every: float = CHECK_EVERY,
        retry_after: float = RETRY_AFTER,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, index, every, retry_after)
        self._digests = digests
        self._votes = votes
        #: The limits of a full's accounts proof (the tracker's shared budget and workers);
        #: None: from the config alone.
        self._accounts = accounts
        #: Told the group of each file whose check failed (``archives_rejected_total``, as
        #: for a remote copy): once per file identity, as it is checked.
        self._on_rejected = on_rejected
        #: The threads the directories are read in: the scrape's (one read running per
        #: directory, whoever asked it); None: its own.
        self._directories = directories if directories is not None else DirectoryThreads()
        #: Wall-clock time: what statements are valid against, and when a file was checked.
        self._clock = clock
        #: When to retry a file that could not be read: monotonic, so that a step of the wall
        #: clock back does not keep it unchecked (and, under trust.require, unserved) for
        #: the size of the step (docs/architecture.md, "Proven archives": "Local files").
        self._monotonic = monotonic
        #: What the check of each file's current identity said, by path.
        self._checked: dict[str, Checked] = {}
        #: The copy each path was last listed as (its target and name), to undo its marks.
        self._copies: dict[str, LocalCopy] = {}
        #: When a check could not read a file, or proved it short for a cause of the
        #: tracker's own (on the monotonic clock), by path: tried again after retry_after.
        self._tried: dict[str, float] = {}
        #: How many checks in a row of each such file ended so (its wait grows with them).
        self._tries: dict[str, int] = {}
        #: The statement file beside each checked file, by the archive's path.
        self._beside: dict[str, Beside] = {}
        #: When a statement file refused for being checked ahead of this clock becomes
        #: acceptable, by the archive's path: read again then, though it did not change.
        self._ahead: dict[str, float] = {}
        #: The checks started (waiting for their turn) or running, by path: the identity
        #: each was started for and its cancel scope, cancelled once its file is no longer
        #: that one (:meth:`LocalProofs._stop_gone`). One check at a time: it reads a whole archive
        #: (as the cache's start-up check).
        self._running: dict[str, tuple[FileIdentity, trio.CancelScope]] = {}
        #: The paths whose marks may have changed since :meth:`_apply` last ran, and the
        #: config it ran with (another one: every path is marked again). Marking every
        #: path after every check cost O(files) each: a ledger of 19,000 archives held the
        #: event loop ~70 ms per check, seconds per round.
        self._dirty: set[str] = set()
        self._applied: Config | None = None
        # Each check in the background, one at a time: a long check (a mainnet full) never
        # holds back noticing that another file changed.
        self._one_at_a_time = trio.Lock()

    async def round(self, nursery: trio.Nursery | None = None) -> int:
        """Check every local file due now: in ``nursery`` (None: one after another,
        awaited); how many checks were due."""
        config = self._config()
        found: list[tuple[LocalCopy, FileIdentity | None]] = []
        deferred: set[TargetKey] = set()
        unlisted: set[TargetKey] = set()
        hung: set[TargetKey] = set()
        if config.verify_archives:
            found, deferred, unlisted, hung = await self._listed(config)
        now = {c.path: (c, i) for c, i in found}
        self._forget_changed(now, deferred, unlisted)
        self._stop_gone(now, deferred, hung)
        running = [(c, i) for c, i in found if c.path not in self._running]
        due = checks_due(
            running,
            self._checked,
            self._tried,
            now=self._monotonic(),
            retry_after=self._retry_after,
            tries=self._tries,
        )
        self._apply(config)  # a reload may have changed a group's level meanwhile
        for copy, identity in due:
            self._running[copy.path] = (identity, trio.CancelScope())
            if nursery is None:
                await self._check_one(copy, identity)
            else:
                nursery.start_soon(self._check_one, copy, identity)
        await self._lift()
        await self._read_statements()
        self._apply(self._config())
        self.rounds += 1
        return len(due)

    async def _listed(
        self, config: Config
    ) -> tuple[
        list[tuple[LocalCopy, FileIdentity | None]], set[TargetKey], set[TargetKey], set[TargetKey]
    ]:
        """Every archive in the local targets' directories, with the identity of its file
        now (None: gone meanwhile), in the config's order; the targets whose directory was
        not listed for a cause of this process's own (its want of descriptors or memory,
        :func:`tracker.net.limits.exhausted`, as the scrape defers them; or no answer
        within ``scrape_timeout``: a hung mount, which says nothing of its files either);
        those whose directory could not be listed otherwise (closed to the tracker's
        user, gone); and, among the first, those that gave no answer (hung). Each
        directory is listed in a thread of its own
        (:class:`tracker.serving.threads.DirectoryThreads`, shared with the scrape), all
        at once: one on a mount that hangs costs its own files, never the others' checks,
        and is abandoned at its bound and at the stop (docs/architecture.md, "Proven
        archives": "Local files")."""
        keys = [
            TargetKey(group.group, directory)
            for group in config.target_groups
            for directory in (group.local_targets.paths if group.local_targets else ())
        ]
        listed: dict[TargetKey, list[tuple[LocalCopy, FileIdentity | None]]] = {}
        deferred: set[TargetKey] = set()
        unlisted: set[TargetKey] = set()
        hung: set[TargetKey] = set()

        async def list_one(key: TargetKey) -> None:
            try:
                listed[key] = await self._directories.run(
                    key.target, partial(_listed_in, key), config.scrape_timeout
                )
            except trio.TooSlowError:
                deferred.add(key)  # its target shows why (the scrape's probe)
                hung.add(key)
            except ProbeError as exc:
                (deferred if exhausted(exc) else unlisted).add(key)

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(list_one, key)
        found = [entry for key in keys for entry in listed.get(key, ())]
        return found, deferred, unlisted, hung

    async def _check_one(self, copy: LocalCopy, identity: FileIdentity) -> None:
        """Check ``copy`` when no other check runs, then mark what it said; stopped (and
        nothing kept) once its file is gone or another one (:meth:`LocalProofs._stop_gone`)."""
        try:
            # (cancelled before its turn came: entered cancelled, nothing read)
            with self._running[copy.path][1]:
                async with self._one_at_a_time:
                    await self._check(self._config(), copy, identity)
            self._apply(self._config())
        finally:
            self._running.pop(copy.path, None)

    def _stop_gone(
        self,
        now: dict[str, tuple[LocalCopy, FileIdentity | None]],
        deferred: Collection[TargetKey],
        hung: Collection[TargetKey] = (),
    ) -> None:
        """Stop each started check whose file is no longer listed, or is another file now
        (``now``: by path). agave deletes its oldest archives as it writes new ones: a check
        left to run read a deleted full to its end (its accounts proof, its bytes held on
        the validator's disk by the descriptor) while every other check, the new full's
        among them, waited behind it; what it said would have been forgotten at once.
        Those of a directory in ``deferred`` (not listed for this process's own cause) run
        on, but for those of a directory in ``hung`` (no answer within ``scrape_timeout``),
        which give way: tried again after ``retry_after``."""
        for path, (identity, scope) in self._running.items():
            copy, listed = now.get(path, (None, None))
            was = self._copies.get(path)
            if copy is None and was is not None and was.key in hung:
                # Its mount does not answer: a check already reading a file there waits in
                # the kernel for as long as it hangs, holding the one-at-a-time lock, so
                # every other ledger's checks waited too. Cancelled, it gives the lock back
                # within FollowingCheck.stopped's bound; its thread stays parked until the
                # mount answers, then ends at its next read, so it reads nothing beside the
                # next check (docs/architecture.md, "Proven archives": "Local files").
                if not scope.cancel_called:
                    scope.cancel()
                    self._tried_short(path)
                    log_event(
                        log, "warning", "local_check_failed", path=path,
                        error="its directory did not answer (a hung mount?): given way",
                    )  # fmt: skip
                continue
            if copy is None and was is not None and was.key in deferred:
                continue
            if listed != identity:
                scope.cancel()

    def _forget_changed(
        self,
        now: dict[str, tuple[LocalCopy, FileIdentity | None]],
        deferred: Collection[TargetKey],
        unlisted: Collection[TargetKey] = (),
    ) -> None:
        """Forget what was said of each file that is gone or is another file now (another
        identity under its path): its digest goes, and it is neither proven nor refused
        until checked again. The files of a directory in ``deferred`` (not listed for a
        cause of this process's own) are kept as they were, and those whose check failed of
        a directory in ``unlisted`` (not listed otherwise) stay refused
        (:func:`tracker.proof.records.localcopies.still_said`)."""
        for path, copy in list(self._copies.items()):
            # deferred (not listed for want of a descriptor or memory): nothing says the file
            # went (the scrape keeps its target's files and health too), and forgetting it
            # read every archive again, a full's whole accounts proof. A file changed
            # meanwhile is still found at the next listing, and never served on this check
            # (admit compares the opened file's identity).
            listed, done = now.get(path, (None, None)), self._checked.get(path)
            if still_said(
                copy, listed, done, deferred=copy.key in deferred, unlisted=copy.key in unlisted
            ):
                continue
            self._checked.pop(path, None)
            self._tried.pop(path, None)
            self._tries.pop(path, None)
            self._beside.pop(path, None)
            self._ahead.pop(path, None)
            self._digests.drop(holder(path), copy.key.group, copy.name)
            self._index.prove(copy.key, copy.name, proven=False)
            self._index.disprove(copy.key, copy.name, None)
            del self._copies[path]
        for path, (copy, _identity) in now.items():
            if path not in self._copies:
                self._copies[path] = copy
                self._dirty.add(path)

    async def _check(self, config: Config, copy: LocalCopy, identity: FileIdentity) -> None:
        """Check ``copy`` (its file as ``identity``): what it said is kept for that identity
        (a file replaced while it was opened is checked again at the next round)."""
        group, name, path = copy.key.group, copy.name, copy.path
        if self._accounts is not None:
            bound = self._accounts()
        elif config.prove_accounts:
            bound = AccountsLimits(
                memory=config.prove_accounts_memory,
                max_accounts=config.prove_accounts_max,
                temp_dir=config.prove_accounts_temp_dir or None,
            )
        else:
            bound = None
        try:
            fd, st = await open_copy(path)
        except OSError as exc:  # gone, or replaced by something else: tried later
            self._tried_short(path)
            log_event(log, "warning", "local_check_failed", path=path, error=exc)
            return
        try:
            checked = await check_opened(fd, st, name, bound)
        except ArchiveInvalid as exc:
            self._checked[path] = Checked(identity_of(st), failed=exc.reason)
            self._dirty.add(path)
            # rejected (kept out, on the status page's list) in every group
            log_event(
                log, "warning", "archive_rejected", group=group, file=name, source=path,
                reason=exc.reason,
            )  # fmt: skip
            if self._on_rejected is not None:
                self._on_rejected(group)
            return
        except OSError as exc:  # unreadable (a descriptor short, a read error): tried later
            self._tried_short(path)
            log_event(log, "warning", "local_check_failed", path=path, error=exc)
            return
        if checked.proof.local_cause:
            # proven short for a cause of ours (a hashing process killed, no temporary space):
            # what it proved stands, and the file is checked again after retry_after
            self._tried_short(path)
        else:
            self._tried.pop(path, None)
            self._tries.pop(path, None)
        held = attrs.evolve(checked, size=st.st_size, checked_at=self._clock())
        self._checked[path] = Checked(identity_of(st), verified=held)
        self._dirty.add(path)
        # A proof stopped short says why beside its level (a hashing process killed by the
        # OOM killer, no temporary space): ``proven=manifest`` alone read as the file's
        # fault, and the operator's fix (memory, the spill's room) is in the note.
        log_event(
            log, "warning" if held.proof.local_cause else "info", "local_checked",
            group=group, file=name, sha256=held.sha256, proven=held.proof.level.label,
            note=held.proof.note,
        )  # fmt: skip

    def _tried_short(self, path: str) -> None:
        """The check of ``path`` ended short for a cause of the tracker's own (or could not
        read it): tried again after a wait that grows with such checks in a row."""
        self._tried[path] = self._monotonic()
        self._tries[path] = self._tries.get(path, 0) + 1

    async def _read_statements(self) -> None:
        """Read the statement file beside each checked file whose statement file is new or
        changed, and take it when it vouches for exactly that file (its name, size and
        SHA-256, unexpired, a valid signature: :func:`tracker.proof.records.attesting.of_copy`);
        one that does not is refused and logged once (``local_attestation_refused``)."""
        checked = {
            path: (copy.name, done.verified)
            for path, done in self._checked.items()
            if done.verified is not None and (copy := self._copies.get(path)) is not None
        }
        now = self._clock()
        known = {
            path: None
            if self._ahead.get(path, math.inf) <= now
            else self._beside.get(path, (None, None))[0]
            for path in checked
        }
        found = await self._statements_of(known)
        for path, (identity, raw, error) in found.items():
            name, verified = checked[path]
            taken: Attestation | None = None
            self._ahead.pop(path, None)
            if raw is not None:
                taken, error, valid_from = _statement_of(raw, name, verified, now)
                if valid_from is not None:
                    self._ahead[path] = valid_from
            if error:
                log_event(
                    log, "warning", "local_attestation_refused", file=path + STATEMENT_SUFFIX,
                    reason=error,
                )  # fmt: skip
            self._beside[path] = (identity, taken)
            self._dirty.add(path)

    async def _statements_of(
        self, known: dict[str, FileIdentity | None]
    ) -> dict[str, tuple[FileIdentity | None, bytes | None, str]]:
        """:func:`_statement_files` of ``known``, each directory's in a thread of its own
        as its listing is (they stat files of the same mounts): one that does not answer
        within ``scrape_timeout`` is read again at a later round, and holds back no other
        directory's."""
        by_directory: dict[str, dict[str, FileIdentity | None]] = {}
        for path, identity in known.items():
            by_directory.setdefault(self._copies[path].key.target, {})[path] = identity
        found: dict[str, tuple[FileIdentity | None, bytes | None, str]] = {}
        bound = self._config().scrape_timeout

        async def read_one(directory: str, paths: dict[str, FileIdentity | None]) -> None:
            with contextlib.suppress(trio.TooSlowError):
                found.update(
                    await self._directories.run(directory, partial(_statement_files, paths), bound)
                )

        async with trio.open_nursery() as nursery:
            for directory, paths in by_directory.items():
                nursery.start_soon(read_one, directory, paths)
        return found

    async def _lift(self) -> None:
        """Ask the cluster's votes of each checked file they may lift (with ``rpc`` set,
        as for a cached copy; the voter keeps its tallies and backs off a failure)."""
        voters = self._votes
        if voters is None:
            return
        for path, done in list(self._checked.items()):
            copy, verified = self._copies.get(path), done.verified
            if copy is None or verified is None or not liftable(verified.proof, copy.name):
                continue
            # asked of the file's group's own cluster (its rpc, else the top-level one)
            voter = voters.of(copy.key.group)
            if not voter.rpcs():
                continue
            proof = await lifted(voter, copy.name, verified.proof)
            if self._checked.get(path) is done:  # not replaced while the votes were asked
                lifted_copy = attrs.evolve(verified, proof=proof)
                self._checked[path] = attrs.evolve(done, verified=lifted_copy)
                self._dirty.add(path)

    def _apply(self, config: Config) -> None:
        """Mark each listed file in the index (proven for its group's gate, refused with
        its reason) and hold each that passed in the digests, as its own copy: those whose
        standing may have changed since the last time, every one under another config."""
        if config is self._applied:
            paths = [p for p in self._dirty if p in self._copies]
        else:
            paths = list(self._copies)
        self._dirty.clear()
        self._applied = config
        for path in paths:
            copy = self._copies[path]
            group = config.group_named(copy.key.group)
            if group is None:
                continue
            done = self._checked.get(path)
            trust = group.trust
            now = standing(done, gated(trust.asked), copy.name, trust.loadable_by)
            self._index.prove(copy.key, copy.name, proven=now.proven)
            self._index.disprove(copy.key, copy.name, now.refused or None)
            if done is not None and done.verified is not None:
                statement = self._beside.get(path, (None, None))[1]
                held = done.verified
                if statement is not None:  # served beside the file's own digest and proof
                    held = attrs.evolve(held, attestation=statement)
                self._digests.hold(holder(path), copy.key.group, copy.name, held)

    def admit(self, group: str, path: str, st: os.stat_result) -> dict[str, str]:
        """Whether the local file at ``path`` of ``group``, opened to be served as ``st``,
        may be served (:func:`tracker.proof.records.localcopies.admission`): RequestError(404) with
        the reason when not; its ``repr-digest`` when its check gave one."""
        config = self._config()
        found = config.group_named(group)
        if found is None or not config.verify_archives:
            return {}
        required, loadable_by = gated(found.trust.asked), found.trust.loadable_by
        name = os.path.basename(path)
        done = self._checked.get(path)
        refusal, sha256 = admission(done, identity_of(st), required, name, loadable_by)
        if refusal:
            raise RequestError(404, f"{name}: {refusal}")
        return {"repr-digest": repr_digest(sha256)} if sha256 else {}

    def of_target(self, key: TargetKey) -> list[tuple[str, Checked | None]]:
        """What the check of each file of the local target ``key`` said, by name (None: not
        checked yet)."""
        mine = [(c.name, self._checked.get(p)) for p, c in self._copies.items() if c.key == key]
        return sorted(mine, key=lambda pair: pair[0])


def local_gated(config: Config, group: TargetGroup) -> bool:
    """Whether ``group``'s local files rank only once their check proved them to its
    ``trust.require`` (in either mode; nothing is checked without ``verify_archives``, which
    a level above ``structure`` needs: check-config refuses it)."""
    return config.verify_archives and gated(group.trust.asked) is not None


def _listed_in(key: TargetKey) -> list[tuple[LocalCopy, FileIdentity | None]]:
    """Every archive in the directory of the local target ``key`` (as the scrape lists
    them: :func:`tracker.discovery.local.scan_local`, less what this process may not open:
    ``readable_archives``, which the scrape logs), with the identity of its file now (None:
    gone meanwhile). Raises ProbeError when the directory cannot be listed. Blocking."""
    infos = readable_archives(scan_local(key.target)).snapshots
    files = {f.path: f for info in infos for f in info.files}
    return [(LocalCopy(key, f.bare_name, p), _identity(p)) for p, f in files.items()]


def _statement_files(
    known: dict[str, FileIdentity | None],
) -> dict[str, tuple[FileIdentity | None, bytes | None, str]]:
    """The statement file beside each archive path of ``known`` whose identity is no longer
    the one known: its identity now (None: none there), its bytes (None: none, or unreadable)
    and why it could not be read (""). No link is followed; at most MAX_STATEMENT bytes.
    Blocking: in a worker thread."""
    changed: dict[str, tuple[FileIdentity | None, bytes | None, str]] = {}
    for path, was in known.items():
        beside = path + STATEMENT_SUFFIX
        now = _identity(beside)
        if now == was:
            continue
        if now is None:
            changed[path] = (None, None, "")
            continue
        try:
            raw, st = read_small_file(beside, MAX_STATEMENT)
        except OSError as exc:
            changed[path] = (now, None, f"unreadable: {exc.strerror or exc}")
            continue
        changed[path] = (identity_of(st), raw, "")
    return changed


def _statement_of(
    raw: bytes, name: str, verified: Verified, now: float
) -> tuple[Attestation | None, str, float | None]:
    """The statement ``raw`` when it vouches for exactly the checked file (``verified``: its
    SHA-256 and size), else None, why not, and when time alone makes it acceptable (None:
    never)."""
    from tracker.errors import StatementInvalid
    from tracker.proof.records.attesting import of_copy

    try:
        return of_copy(raw, name, verified.size, verified.sha256, now), "", None
    except StatementInvalid as exc:
        return None, str(exc), exc.valid_from


def _identity(path: str) -> FileIdentity | None:
    """The identity of the regular file at ``path`` (no link followed; None: gone or
    something else)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return identity_of(st) if stat.S_ISREG(st.st_mode) else None
