"""Which cached archives passed their check, and their digests.

With ``verify_archives`` a cached file is a hit only while its digest is known: from the
refresh that promoted it (its check ran as it was written), restored at start-up from the
``.{name}.sha256`` file beside it when that still describes it (:func:`digest_matches`), or
from checking it again (:meth:`CheckedFiles.recheck`); one that fails again is removed, one
whose check fell short for the tracker's own cause (:func:`recheck_verdict`) stays, unserved,
and is checked again later. A hit is only the file the check read (its identity,
:meth:`CheckedFiles.opened`): one replaced or written under its name since is checked again
first.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from math import inf
from typing import TYPE_CHECKING, Literal, NamedTuple

import attrs
import trio

from tracker.cache.disk import (
    PROOF,
    SIDES,
    STAKES,
    TEMP_PREFIX,
    digest_path,
    free_aside,
    is_archive_entry,
    read_digest,
    set_aside,
    unlink,
    write_digest,
    write_proof_files,
)
from tracker.core.digests import (
    CACHE,
    Digests,
    Verified,
    below_required,
    parse_sha256sum_line,
    sha256sum_line,
)
from tracker.core.smallfiles import read_small_file
from tracker.errors import ArchiveInvalid, RequestError
from tracker.observability.folding import log_folded
from tracker.observability.logs import log_event
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import FollowingCheck
from tracker.proof.levels import (
    MAX_EPOCH_STAKES_BYTES,
    STRUCTURE_ONLY,
    Level,
    Proof,
    checked_for,
    not_loadable,
    own_retry_after,
)
from tracker.proof.records.localcopies import FileIdentity, identity_of

if TYPE_CHECKING:
    from tracker.proof.levels import Voter, Voters

log = logging.getLogger("tracker.cache")


@attrs.frozen
class Checking:
    """How one archive of a group is checked as it is cached: at all (``verify_archives``),
    the level it must reach (its group's ``trust.require``), the limits of its ``accounts``
    proof (the shared memory budget, the temporary directory; None: fulls are not proven to
    ``accounts``), for a
    group that requires ``cluster``, who asks the cluster's votes before its readers get
    their last bytes (:mod:`tracker.proof.cluster.lifting`), and the validators that must be
    able to load it (its group's ``trust.loadable_by``; None: any)."""

    verify: bool = False
    require: Level = Level.STRUCTURE
    prove_accounts: AccountsLimits | None = None
    voter: Voter | None = None
    loadable_by: str | None = None


#: Archives not checked (``verify_archives: false``).
UNCHECKED = Checking()

#: Seconds after a check of a cached copy that ended short for the tracker's own cause (its
#: hashing process killed, its temporary space or memory short, the file unreadable) before
#: the copy is checked again: each try reads the whole archive, so not at once, and a
#: minute as a local file's (``proof.background.rounds.RETRY_AFTER``, a layer above this).
RETRY_AFTER = 60.0

#: What the check of a cached copy found unchecked does with it (:func:`recheck_verdict`).
RecheckVerdict = Literal["kept", "retried", "removed"]


def own_shortfall(checking: Checking, name: str, proof: Proof) -> str | None:
    """Why the copy ``name`` proven to ``proof`` falls short of its group's level for a cause
    of this tracker's own (``Proof.local_cause``: its temporary space, its memory, its
    hashing process), None otherwise: such a copy is not the source's fault, so the refresh
    ends as a local failure and its source is not held back, and a cached copy stays on disk
    (docs/architecture.md, "Bounded memory"). Pure."""
    if not proof.local_cause or not_loadable(proof, checking.loadable_by) is not None:
        return None  # what the group's validators cannot load is the archive's own fault
    below = below_required(proof, checked_for(checking.require), name)
    return None if below is None else f"archive not proven here: {below}"


def recheck_verdict(checking: Checking, name: str, proof: Proof) -> tuple[RecheckVerdict, str]:
    """What becomes of a cached copy of ``name`` checked again (found at start-up without a
    digest that still describes it, changed, or below a level a reload raised) once its
    check proved ``proof`` under its group's ``checking``: ``("kept", "")`` when it reaches
    what a check shows of the group's level; ``("retried", reason)`` when it falls short for
    the tracker's own cause (:func:`own_shortfall`): kept on disk, not served, checked again
    later, never a rejection (a mainnet full is ~100 GB to download again); ``("removed",
    reason)`` when it falls short for its own, like a copy that fails its check. Pure."""
    short = own_shortfall(checking, name, proof)
    if short is not None:
        return "retried", short
    required = checked_for(checking.require)  # what a check shows: the votes come later
    below = below_required(proof, required, name, loadable_by=checking.loadable_by)
    return ("kept", "") if below is None else ("removed", below)


class _Held(NamedTuple):
    """A cached file that passed its check: its digest, its identity when it was checked
    (None: not known, never matched by a file opened to be served) and what it proved."""

    sha256: str
    identity: FileIdentity | None
    proof: Proof

    @property
    def ino(self) -> int:
        """Its inode (0: not known)."""
        return self.identity[1] if self.identity is not None else 0


class CheckedFiles:
    """The digest of each cached archive that passed its check, told to ``digests``;
    ``on_rejected(group, name, reason)`` is told of every cached file that failed its check
    again and was removed. Without ``verify`` every cached file is servable. ``voter``
    (the cluster's votes, None: not asked) lifts held copies to ``cluster``
    (:mod:`tracker.proof.cluster.lifting`); ``loadable_by(group)``: the group's
    ``trust.loadable_by`` (None: any archive)."""

    def __init__(
        self,
        verify: bool = False,
        digests: Digests | None = None,
        on_rejected: Callable[[str, str, str], None] | None = None,
        required: Callable[[str], Level] | None = None,
        prove_accounts: AccountsLimits | None = None,
        voter: Voters | None = None,
        loadable_by: Callable[[str], str | None] | None = None,
        *,
        retry_after: float = RETRY_AFTER,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.verify = verify
        self.voter = voter
        self._required = required
        self._loadable_by = loadable_by
        #: The limits of the ``accounts`` proof of fulls (None: not proven).
        self.prove_accounts = prove_accounts
        self._digests = digests if digests is not None else Digests()
        self._on_rejected = on_rejected
        #: Each cached file that passed its check: its digest, identity and what the check
        #: (and the cluster's votes) proved.
        self._checked: dict[tuple[str, str], _Held] = {}
        #: Cached files to check again: found at start-up without a digest that still
        #: describes them, below their group's level, or changed since their check.
        self._unchecked: list[tuple[str, str]] = []
        #: When each cached file whose check ended short for the tracker's own cause may be
        #: checked again (on ``monotonic``: a step of the wall clock back does not hold it
        #: unserved for longer); it waits in ``_unchecked`` meanwhile.
        self._retry_at: dict[tuple[str, str], float] = {}
        #: How many checks in a row of each such file ended so (its wait grows with them:
        #: :func:`~tracker.proof.levels.own_retry_after`).
        self._tries: dict[tuple[str, str], int] = {}
        self._retry_after = retry_after
        self._monotonic = monotonic
        #: Whether a group is configured: the files of one that is not (an orphaned
        #: directory, docs/proxy.md, "Orphaned archives") wait for it to come back before
        #: their check (a whole archive read for nothing otherwise).
        self.configured: Callable[[str], bool] = _any_group
        #: Per group: what runs the changes of its directory and of this registry one at a
        #: time (:meth:`changing`).
        self._changing: dict[str, trio.Semaphore] = {}

    def changing(self, group: str) -> trio.Semaphore:
        """The lock that runs ``group``'s changes one at a time: a promotion (its rename,
        its evictions, what it tells this registry), the evictions that make room for a
        refresh, a recheck's digest and a removal of a copy that fell short, each deciding
        on the files and the entry the last one left (made on first use; the configured
        groups bound them)."""
        lock = self._changing.get(group)
        if lock is None:
            # a semaphore: a refresh that gave up on its room hands its turn over to the
            # thread still making it, which lets it go from the trio thread as it ends
            lock = self._changing[group] = trio.Semaphore(1, max_value=1)
        return lock

    def servable(self, group: str, name: str) -> bool:
        """True unless archives are verified and ``name``'s cached copy is not (yet), or is
        below its group's level now (a ``cluster`` its votes did not lift yet, a
        ``trust.require`` raised by a reload)."""
        if not self.verify:
            return True
        held = self._checked.get((group, name))
        if held is None:
            return False
        return self._below(held.proof, self.required(group), group, name) is None

    def opened(self, group: str, name: str, st: os.stat_result) -> str | None:
        """The hex SHA-256 of the cached copy of ``name`` opened to be served as ``st`` (its
        fstat; None: archives are not checked). RequestError(404) when that file is not the
        copy that passed its check (another inode, size, mtime or ctime: replaced or written
        under its name since; docs/http-api.md, "Verified archives"; its digest is then
        forgotten and it is checked again: :meth:`recheck`), or no copy of it is held."""
        if not self.verify:
            return None
        held = self._checked.get((group, name))
        if held is not None and held.identity == identity_of(st):
            return held.sha256
        if held is not None:
            self._changed(group, name)
        raise RequestError(404, f"{name}: the cached file is not the copy that passed its check")

    async def confirm(
        self, group: str, name: str, identity_at: Callable[[], Awaitable[FileIdentity | None]]
    ) -> None:
        """Before the digest of the cached copy of ``name`` is told: forget it when the file
        under its name is no longer that copy (as :meth:`opened` does; gone included), and
        have the file checked again (``identity_at()``: that file's identity now, None when
        there is none, looked at off the event loop; what it raises goes to the caller)."""
        held = self._checked.get((group, name))
        if held is None:
            return
        identity = await identity_at()
        # another copy promoted meanwhile is not taken for a replaced one
        if self._checked.get((group, name)) is held and identity != held.identity:
            self._changed(group, name)

    def confirmed(self, group: str, name: str, identity: FileIdentity | None) -> None:
        """:meth:`confirm` of what the file system said a moment ago (``identity``: of the
        file under ``name``, None when there is none), looked at in a worker thread."""
        held = self._checked.get((group, name))
        if held is not None and (identity is None or identity != held.identity):
            self._changed(group, name)

    async def confirm_held(
        self, identities: Callable[[str, list[str]], Awaitable[dict[str, FileIdentity | None]]]
    ) -> None:
        """:meth:`confirm` every held copy (``identities(group, names)``: the identity of
        the file under each name, None when there is none, a name left out when it may
        not be read; looked at off the event loop, RequestError when the directory cannot
        be: that group's copies are confirmed next round): one gone or replaced since its
        check (by hand, or while another directory was the cache's) is forgotten within a
        round, its digest no longer listed nor its statement renewed, not only once a
        request comes. Each group's files are looked at under its lock: a promotion's new
        file is never taken for a replaced one."""
        by_group: dict[str, list[tuple[str, _Held]]] = {}
        for (group, name), held in self._checked.items():
            by_group.setdefault(group, []).append((name, held))
        for group, copies in by_group.items():
            async with self.changing(group):
                try:
                    now = await identities(group, [name for name, _held in copies])
                except RequestError as exc:
                    log_folded(log, "warning", "cache_unreadable", group=group, reason=exc.reason)
                    continue
                for name, held in copies:
                    if name not in now or self._checked.get((group, name)) is not held:
                        continue
                    if now[name] != held.identity:
                        self._changed(group, name)

    def _changed(self, group: str, name: str) -> None:
        """The cached file of ``name`` is not the copy that passed its check: not served as
        checked from now on, and checked again (a hit again once it passes, removed if it
        fails)."""
        self._forget(group, name)
        if (group, name) not in self._unchecked:
            self._unchecked.append((group, name))
        log_event(log, "warning", "cache_copy_changed", group=group, file=name)

    def proof(self, group: str, name: str) -> Proof | None:
        """What was proven of the cached copy of ``name``, when it passed its check."""
        held = self._checked.get((group, name))
        return held.proof if held is not None else None

    def held(self) -> list[tuple[str, str, Proof]]:
        """Every cached copy that passed its check, with what it is proven to."""
        return [(g, n, held.proof) for (g, n), held in self._checked.items()]

    def digest(self, group: str, name: str) -> str | None:
        """The hex SHA-256 of the cached copy of ``name``, when it passed its check."""
        checked = self._checked.get((group, name))
        return checked.sha256 if checked is not None else None

    def required(self, group: str) -> Level:
        """The level an archive of ``group`` must be proven to before it is cached (its
        ``trust.require``; ``structure`` without archive checks)."""
        if not self.verify or self._required is None:
            return Level.STRUCTURE
        return self._required(group)

    def loadable_by(self, group: str) -> str | None:
        """The validators that must be able to load an archive of ``group`` before it is
        cached or served (its ``trust.loadable_by``; None without archive checks)."""
        if not self.verify or self._loadable_by is None:
            return None
        return self._loadable_by(group)

    def _below(self, proof: Proof, required: Level, group: str, name: str) -> str | None:
        """Why ``group`` refuses its copy of ``name`` proven to ``proof`` (below ``required``,
        or one its validators cannot load), None when it takes it."""
        return below_required(proof, required, name, loadable_by=self.loadable_by(group))

    def checking(self, group: str) -> Checking:
        """How an archive of ``group`` is checked as it is cached."""
        required = self.required(group)
        # the group's own cluster's votes: another cluster's prove nothing of its archives
        asks = required >= Level.CLUSTER
        voter = self.voter.of(group) if self.voter is not None and asks else None
        loadable_by = self.loadable_by(group)
        return Checking(self.verify, required, self.prove_accounts, voter, loadable_by)

    def promoted(
        self,
        group: str,
        name: str,
        checked: Verified | None,
        identity: FileIdentity | None,
        evicted: list[str],
    ) -> None:
        """A refresh of ``name`` (``identity``: its file's once in place, None when not
        known; ``checked``: what its check said, its size and when it ended, None when
        unchecked) was promoted and evicted ``evicted``: digests follow."""
        if checked is not None:
            self._checked[(group, name)] = _Held(checked.sha256, identity, checked.proof)
            self._digests.hold(CACHE, group, name, checked)
        else:
            self._forget(group, name)
        for other in evicted:
            self._forget(group, other)

    def removed(self, group: str, name: str) -> None:
        """The cached file ``name`` of ``group`` was removed (not by a promotion, which
        says what it evicted): its digest goes."""
        self._forget(group, name)

    def _forget(self, group: str, name: str) -> None:
        self._retry_at.pop((group, name), None)  # another file, or none, from now on
        self._tries.pop((group, name), None)
        if self._checked.pop((group, name), None) is not None:
            self._digests.drop(CACHE, group, name)

    def restore(self, group_dir: str, group: str, entries: list[os.DirEntry[str]]) -> None:
        """Take the digest of each cached archive of ``group`` (in ``group_dir``, listed as
        ``entries``) from the file beside it when that still describes it; list the others
        for :meth:`recheck`. Digest files of archives that are gone are removed."""
        archives = {e.name for e in entries if is_archive_entry(e)}
        for entry in entries:
            if _orphan_digest(entry.name, archives):
                unlink(entry.path)
        if not self.verify:
            return
        for name in sorted(archives):
            path = os.path.join(group_dir, name)
            restored = _restored_digest(path, name)
            # A file kept before proofs were (no proof file) proved its structure.
            proof = (_restored_proof(path) or STRUCTURE_ONLY) if restored is not None else None
            # What a check can show of the group's level: the votes are asked later.
            required = checked_for(self.required(group))
            if restored is None or proof is None or self._below(proof, required, group, name):
                # No digest or proof that still describes the file, or one below the
                # group's level (its trust.require was raised since): checked again.
                self._unchecked.append((group, name))
                continue
            hex_digest, identity, size, checked_at = restored
            self._checked[(group, name)] = _Held(hex_digest, identity, proof)
            held = Verified(hex_digest, proof, size=size, checked_at=checked_at)
            self._digests.hold(CACHE, group, name, held)

    def recheck_below(self) -> None:
        """List for :meth:`recheck` every held copy whose proof is below what a check can
        show of its group's level now (a reload raised its ``trust.require``): it is not
        served meanwhile, and is removed if its check does not reach it."""
        for group, name, proof in self.held():
            if self._below(proof, checked_for(self.required(group)), group, name) is not None:
                self._forget(group, name)
                self._unchecked.append((group, name))

    async def recheck(
        self,
        path_for: Callable[[str, str], Awaitable[str]],
        report_size: Callable[[], Awaitable[None]],
    ) -> None:
        """Check, one after another, the cached files start-up found without a digest that
        still describes them (``path_for(group, name)``: where each is, RequestError when
        it may not be read): a file that passes is a hit from then on (its digest file
        written), one that fails is removed (either then ``report_size()``: the index
        lists a copy once its check passed); one whose check ended
        short for the tracker's own cause (:func:`recheck_verdict`: its hashing process
        killed, its temporary space or memory short; or the file unreadable) stays, not
        served, and waits, listed again, ``retry_after`` seconds for a later call (doubled
        for each such check in a row, at most an hour:
        :func:`~tracker.proof.levels.own_retry_after`); those of a group not configured
        (:attr:`configured`) wait for it, listed again. Cancellation stops it (the rest stay
        unchecked)."""
        waiting: list[tuple[str, str]] = []
        try:
            while self._unchecked:
                group, name = key = self._unchecked.pop(0)
                if key in self._checked:
                    self._retry_at.pop(key, None)
                    self._tries.pop(key, None)
                    continue  # a refresh promoted a checked copy since it was listed
                if not self.configured(group):
                    waiting.append(key)  # checked if a reload configures it again
                    continue
                if self._retry_at.get(key, -inf) > self._monotonic():
                    waiting.append(key)  # its last check ended short for a cause of ours
                    continue
                try:
                    path = await path_for(group, name)
                except RequestError as exc:
                    if exc.status == 503:  # the directory hangs: checked once it answers
                        waiting.append(key)
                    continue
                ended = await self._recheck_one(group, name, path)
                if ended in ("removed", "passed"):
                    await report_size()  # the index lists a copy once its check passed
                elif ended == "later":
                    tries = self._tries[key] = self._tries.get(key, 0) + 1
                    wait = own_retry_after(tries, self._retry_after)
                    self._retry_at[key] = self._monotonic() + wait
                    waiting.append(key)
                else:
                    self._tries.pop(key, None)
        finally:
            self._unchecked.extend(w for w in waiting if w not in self._unchecked)

    async def _recheck_one(
        self, group: str, name: str, path: str
    ) -> Literal["passed", "removed", "gone", "later"]:
        """Check the cached file of ``name`` at ``path``: ``passed``; ``removed`` (it failed);
        ``gone`` (not there, or another copy promoted meanwhile); ``later``: its check ended
        short for the tracker's own cause, nothing removed, to be tried again."""
        try:
            fd, st = await open_copy(path)
        except OSError:
            return "gone"  # gone meanwhile
        try:
            checked = await check_opened(fd, st, name, self.prove_accounts)
            sha256, proof = checked.sha256, checked.proof
            verdict, reason = recheck_verdict(self.checking(group), name, proof)
            if verdict == "removed":  # the group's trust.require: not kept, like a bad copy
                raise ArchiveInvalid(reason)
        except OSError as exc:  # a descriptor short, a read error, a thread or memory short
            log_event(log, "warning", "cache_recheck_failed", path=path, error=exc)
            return "later"  # unreadable here: stays unchecked (never a hit), nothing removed
        except ArchiveInvalid as exc:
            # Not removed when a refresh promoted another copy meanwhile: the one that
            # failed is gone already, and not a rejection of the copy the cache holds.
            removed = await self.remove(group, name, path, st.st_ino, exc.reason)
            return "removed" if removed else "gone"
        if verdict == "retried" and (group, name) not in self._checked:
            # The tracker's own shortage (docs/architecture.md, "The accounts level"): worded as
            # a refresh's own shortfall, not a rejection; the copy stays, unserved.
            log_event(
                log, "warning", "cache_recheck_failed", group=group, file=name, path=path,
                reason=reason,
            )  # fmt: skip
            return "later"
        # Under the group's lock: a refresh promoting a copy of the name meanwhile would
        # find its digest overwritten by this one's, beside it and after a restart.
        async with self.changing(group):
            if (group, name) in self._checked:
                return "passed"  # a refresh promoted a copy meanwhile: its digest stands
            try:
                checked_now = Verified(sha256, proof)
                await trio.to_thread.run_sync(_write_checked_if_same, path, st, checked_now, name)
            except OSError as exc:
                log_event(log, "warning", "cache_digest_unwritable", path=path, error=exc)
            # The identity of the file as it was opened for the check: one written since is
            # not this copy (opened, confirm).
            self._checked[(group, name)] = _Held(sha256, identity_of(st), proof)
            held = Verified(sha256, proof, size=st.st_size, checked_at=time.time())
            self._digests.hold(CACHE, group, name, held)
        log_event(
            log,
            "info",
            "cache_rechecked",
            group=group,
            file=name,
            sha256=sha256,
            proven=proof.level.label,
        )
        return "passed"

    async def relevel(self, group: str, name: str, proof: Proof, path: str, was: Proof) -> bool:
        """The cached copy of ``name`` (at ``path``), held at ``was`` when the cluster's
        votes were asked, is proven to ``proof`` now: recorded, and kept beside its digest
        once a tally says it (or once the tally ``was`` carried no longer holds:
        :func:`tracker.proof.cluster.lifting.lifted`); False when that tally leaves it below
        its group's level (now: a reload may have raised it), then it is removed like a copy
        that failed its check.
        Nothing is done when another copy is held since (a refresh promoted one while the
        votes were asked): they were asked for the one before."""
        checked = self._checked.get((group, name))
        if checked is None or checked.proof != was:
            return True
        below = self._below(proof, self.required(group), group, name)
        if below is not None and proof.tallied:  # the votes say no, for good
            return not await self.remove(group, name, path, checked.ino, below)
        if checked.proof == proof:
            return True
        async with self.changing(group):
            if self._checked.get((group, name)) is not checked:
                return True  # promoted or removed while the lock was waited for
            self._checked[(group, name)] = checked._replace(proof=proof)
            self._digests.put(CACHE, group, name, checked.sha256, proof)
            # a tally, not a failure to read one; or a tally the migration took away since
            # (weighed again): its proof file must not restore it after a restart
            if proof.voted_stake is not None or was.voted_stake is not None:
                try:
                    await trio.to_thread.run_sync(write_proof, path, proof)
                except OSError as exc:
                    log_event(log, "warning", "cache_digest_unwritable", path=path, error=exc)
        return True

    async def remove(self, group: str, name: str, path: str, ino: int, reason: str) -> bool:
        """Remove the cached copy of ``name`` (at ``path``, inode ``ino``) that fell short
        for ``reason``, and say so as for any rejected archive; False (nothing done) when
        the copy held of ``name`` is another inode: a refresh promoted it while this one was
        checked, and its digest and file stand."""
        # Under the group's lock: a refresh promoting a copy of the name meanwhile would
        # lose the files beside it (or itself, between the inode's check and the unlink).
        async with self.changing(group):
            held = self._checked.get((group, name))
            if held is not None and held.ino != ino:
                return False
            self._forget(group, name)
            aside = await trio.to_thread.run_sync(_aside_if_same, path, ino)
        if aside:  # its bytes freed after the lock: a 100 GB unlink takes seconds
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(free_aside, [aside])
        log_event(
            log,
            "warning",
            "archive_rejected",
            group=group,
            file=name,
            source="cache",
            reason=reason,
        )
        if self._on_rejected is not None:
            self._on_rejected(group, name, reason)
        return True


async def open_copy(path: str) -> tuple[int, os.stat_result]:
    """A read-only descriptor of the regular file at ``path`` (no link followed) and its
    status, opened in a worker thread; OSError when it cannot be (gone, not a regular
    file). Cancellation abandons the open at once: an ``open`` on a hung NFS or FUSE mount
    waits in the kernel for as long as the mount hangs, and a check waiting for it held the
    one-at-a-time turn of local files (their checks gave way at a read, never at the open:
    docs/architecture.md, "Proven archives") and the stop. The descriptor such a thread
    opens once the mount answers is closed there (:class:`_Opening`), never leaked."""
    opening = _Opening(path)
    try:
        return await trio.to_thread.run_sync(opening.run, abandon_on_cancel=True)
    except BaseException:  # abandoned (cancelled), or the open failed: nobody owns its fd
        opening.abandon()
        raise


class _Opening:
    """One open of a copy in a worker thread that its caller may abandon: whichever of the
    two comes second closes the descriptor. The thread hands it over under the lock, or
    finds the open abandoned and closes it; the abandoner closes one handed over whose
    answer trio dropped (a cancellation that came as the thread ended)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._abandoned = False
        self._handed: int | None = None

    def run(self) -> tuple[int, os.stat_result]:
        """:func:`_open_regular` (in the worker thread); OSError once abandoned."""
        fd, st = _open_regular(self.path)
        with self._lock:
            if not self._abandoned:
                self._handed = fd
                return fd, st
        os.close(fd)  # opened after its caller gave way: nobody will read or close it
        raise OSError(errno.ECANCELED, "the open was abandoned", self.path)

    def abandon(self) -> None:
        """No answer is taken from now on: a descriptor handed over is closed here."""
        with self._lock:
            self._abandoned = True
            fd, self._handed = self._handed, None
        if fd is not None:
            os.close(fd)


async def check_opened(
    fd: int, st: os.stat_result, name: str, prove_accounts: AccountsLimits | None
) -> Verified:
    """Check the archive ``name`` held complete and open at ``fd`` (``st``: its status;
    closed here in every case), a full proven to ``accounts`` within ``prove_accounts``
    (its limits; None: not proven), in a worker thread. Raises ArchiveInvalid when the
    archive fails, OSError when it cannot be read (a descriptor short included);
    cancellation stops the check. The cache's start-up check and the check of local files
    (:mod:`tracker.proof.background.localfiles`) both use it."""
    try:
        check = FollowingCheck.start(fd, name, prove_accounts)
    finally:
        os.close(fd)  # the check reads through its own duplicate
    check.finish(st.st_size)
    try:
        return await check.result()
    finally:
        await check.stopped()  # at once once it ended; cancelled: its thread ends first


def digest_matches(archive: os.stat_result, digest: os.stat_result) -> bool:
    """True when a digest file still describes the archive beside it: it carries the
    archive's mtime, and it was changed (written) after the archive last was. A write,
    truncation or replacement of the archive moves its ctime past the digest file's, and
    ctime cannot be set back from user space."""
    return digest.st_mtime_ns == archive.st_mtime_ns and digest.st_ctime_ns >= archive.st_ctime_ns


def _restored_digest(path: str, name: str) -> tuple[str, FileIdentity, int, float] | None:
    """The digest, identity and size of the archive at ``path`` from its digest file, and
    when that was written (its check ended then), or None."""
    try:
        archive = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    found = read_digest(path)
    if found is None or not digest_matches(archive, found[1]) or not _own_file(found[1]):
        return None
    hex_digest = parse_sha256sum_line(found[0], name)
    if hex_digest is None:
        return None
    return hex_digest, identity_of(archive), archive.st_size, found[1].st_ctime


def _restored_proof(path: str) -> Proof | None:
    """What the check of the archive at ``path`` proved, from the proof file beside it when
    that still describes it (as its digest file), or None."""
    try:
        archive = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    found = read_digest(path, suffix=PROOF)
    if found is None or not digest_matches(archive, found[1]) or not _own_file(found[1]):
        return None
    try:
        proof = Proof.from_json(json.loads(found[0]))
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    if proof is None:
        return None
    try:
        stakes, st = read_small_file(digest_path(path, STAKES), MAX_EPOCH_STAKES_BYTES)
    except OSError:  # none (a manifest without them, a file another version wrote)
        return proof
    if not digest_matches(archive, st) or not _own_file(st):
        return proof
    return attrs.evolve(proof, epoch_stakes=stakes)


def write_checked(path: str, checked: Verified, name: str) -> None:
    """Write what the check of the cached archive at ``path`` said beside it: the proof file,
    then the digest file (start-up trusts the digest's ctime last)."""
    write_proof_files(path, checked.proof)
    write_digest(path, sha256sum_line(checked.sha256, name))


def write_proof(path: str, proof: Proof) -> None:
    """Write the proof file of the cached archive at ``path`` again (its digest and its
    epoch's stakes stand)."""
    write_digest(path, json.dumps(proof.to_json()) + "\n", PROOF)


def _own_file(st: os.stat_result) -> bool:
    """True when only the tracker's user can have written the file: it owns it, and it is
    not writable by group or others (anyone else could have written a digest that makes a
    changed archive a hit: docs/http-api.md, "Verified archives")."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """A read-only descriptor of the regular file at ``path`` (no symbolic link) and its
    status; opened non-blocking so that a FIFO put there since the scan cannot block the
    open (and the thread it runs in) until a writer comes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file: {path}")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _aside_if_same(path: str, ino: int) -> str | None:
    """Set the archive at ``path`` aside (:func:`~tracker.cache.disk.set_aside`: renamed,
    the files beside it removed) if it is still inode ``ino``; where it went."""
    try:
        if os.stat(path, follow_symlinks=False).st_ino != ino:
            return None
    except OSError:
        return None
    return set_aside(path)


def _write_checked_if_same(path: str, opened: os.stat_result, checked: Verified, name: str) -> None:
    """:func:`write_checked` beside the archive at ``path`` while it is still the file that
    was checked (``opened``'s identity): the files of another copy are not this one's."""
    if identity_of(os.stat(path, follow_symlinks=False)) == identity_of(opened):
        write_checked(path, checked, name)


def _any_group(_group: str) -> bool:
    return True


def _orphan_digest(file_name: str, archives: set[str]) -> bool:
    """True for a digest file (``.{name}.sha256``) whose archive is not in ``archives``."""
    if file_name.startswith(TEMP_PREFIX) or not file_name.startswith("."):
        return False
    for suffix in SIDES:
        if file_name.endswith(suffix) and file_name[1 : -len(suffix)] not in archives:
            return True
    return False
