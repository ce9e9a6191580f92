"""What the tracker decides of its local files: which to check, and where each stands (pure;
docs/architecture.md, "Proven archives": "Local files"; docs/http-api.md, "Proven archives").

A ``local`` target's files are on the tracker's own disk, so they are checked and proven as
the cache's copies are, in the background: once per file identity (device, inode, size,
mtime, ctime), again when the file under a name changes or its check stopped short for the
tracker's own cause (:func:`own_cause`). A file that passes is held verified as
the holder :func:`holder` (its digest and proof in the JSON, signed with ``attest``); one
that fails shows why (``/v1/targets``, the log). In a group that sets ``trust.require``
above ``structure`` a local file is ranked only once its check proved it to that level, one
that fails or falls short is kept out with the reason (:func:`standing`); a group that sets
none ranks every file as it did (as in redirect mode: no level is enforced where none is
set) but one whose check failed, kept out in every group.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from math import inf

import attrs

from tracker.core.digests import LOCAL, Verified, below_required
from tracker.core.snapshots import TargetKey
from tracker.proof.levels import Level, own_retry_after

#: A file's identity: device, inode, size, mtime and ctime (ns). Another identity under the
#: same path is another file (a validator writes a new archive and renames it over the old
#: one). The ctime is there because anyone who may write the file can set its mtime back
#: (``touch -d``, ``os.utime``) after changing its bytes in place; no one can set the ctime
#: back (every write and every ``utime`` moves it to now).
FileIdentity = tuple[int, int, int, int, int]

#: Why a local file of a group that requires a level is out while its check runs.
NOT_YET = "not proven yet: ranked once its check proves it to trust.require"


def holder(path: str) -> str:
    """The holder of the local file at ``path`` (its digests and statements are that one
    copy's: two directories may hold different bytes under one name)."""
    return LOCAL + path


def identity_of(st: os.stat_result) -> FileIdentity:
    """The identity of a file from its status."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@attrs.frozen
class LocalCopy:
    """One local file as the index knows it: its target, archive name and path."""

    key: TargetKey
    name: str
    path: str


@attrs.frozen
class Checked:
    """What the check of one identity of a local file said: ``verified`` when it passed
    (its proof below what it could be for the tracker's own cause: checked again later,
    :func:`checks_due`), else ``failed`` (the one-line reason)."""

    identity: FileIdentity
    verified: Verified | None = None
    failed: str = ""


def checks_due(
    found: Iterable[tuple[LocalCopy, FileIdentity | None]],
    checked: Mapping[str, Checked],
    tried: Mapping[str, float],
    *,
    now: float,
    retry_after: float,
    tries: Mapping[str, int] | None = None,
) -> list[tuple[LocalCopy, FileIdentity]]:
    """The local files to check now, in the order ``found`` gives them (each with its
    identity now; None: gone or not a regular file, nothing to check): those whose identity
    was not checked yet (``checked``, by path), and those whose check ended short for the
    tracker's own cause (:func:`own_cause`: its hashing process killed, its temporary space
    or memory short; what it said stands meanwhile), unless a check that could not read the
    file or ended so (``tried``: when, by path) was less than ``retry_after`` seconds before
    ``now`` (doubled for each such check in a row, ``tries`` by path, at most an hour:
    :func:`~tracker.proof.levels.own_retry_after`). Each path once. ``tried`` and ``now``
    are read off a monotonic clock: on the wall clock, a step back would hold a retry off
    for the size of the step. Pure."""
    due: list[tuple[LocalCopy, FileIdentity]] = []
    seen: set[str] = set()
    for copy, identity in found:
        if identity is None or copy.path in seen:
            continue
        wait = own_retry_after((tries or {}).get(copy.path, 1), retry_after)
        if now - tried.get(copy.path, -inf) < wait:
            continue
        done = checked.get(copy.path)
        if done is None or done.identity != identity or own_cause(done):
            seen.add(copy.path)
            due.append((copy, identity))
    return due


def still_said(
    was: LocalCopy,
    listed: tuple[LocalCopy | None, FileIdentity | None],
    done: Checked | None,
    *,
    deferred: bool = False,
    unlisted: bool = False,
) -> bool:
    """Whether what was said of the local file ``was`` stands after a listing (``listed``:
    the copy and identity under its path now, ``(None, None)`` when not listed; ``done``:
    what its check said, None: not checked yet): the same file; any file of a directory not
    listed for a cause of this process's own (``deferred``: nothing says it changed); and a
    file whose check failed, of a directory that could not be listed otherwise
    (``unlisted``, closed to the tracker or gone): the scrape keeps that directory's last
    listing for ``max_target_failures`` rounds, and the refusal forgotten ranked that very
    file (an empty or corrupt full the best) meanwhile. What passed is forgotten there (read
    again once the directory is back). Pure."""
    if deferred:
        return True
    copy, identity = listed
    if copy == was and (done is None or identity == done.identity):
        return True
    return unlisted and copy is None and done is not None and done.verified is None


def own_cause(done: Checked) -> bool:
    """True when the check ``done`` stopped short for a cause of the tracker's own
    (``Proof.local_cause``), not the file's: the same file may prove more on a later try,
    once the machine has the memory, the temporary space or the process again (a file
    otherwise is checked once per identity, and would stay below a group's level until it
    changed or the tracker restarted). Pure."""
    return done.verified is not None and done.verified.proof.local_cause


@attrs.frozen
class Standing:
    """Where a local file stands in the ranking: ``proven`` (it reached its group's level:
    ranked in a group that requires one) and ``refused`` (why a group that requires one
    keeps it out: its check failed, or its proof is below the level; "": it is not)."""

    proven: bool
    refused: str = ""


def standing(
    done: Checked | None, required: Level | None, name: str, loadable_by: str | None = None
) -> Standing:
    """Where the local file of the archive ``name`` stands: ``done`` is what the check of its
    current identity said (None: not checked yet), ``required`` its group's
    ``trust.require`` when above ``structure`` (None: the group requires nothing and ranks
    every file its check did not refuse, one not checked yet included), ``loadable_by`` its
    ``trust.loadable_by``. A file whose check failed (an empty file, a corrupt one) is
    refused in every group: no level asked for makes it fit to hand out."""
    if done is None:
        return Standing(proven=False)
    if done.verified is None:
        return Standing(proven=False, refused=done.failed)
    if required is None:
        return Standing(proven=True)
    below = below_required(done.verified.proof, required, name, loadable_by=loadable_by)
    return Standing(proven=below is None, refused=below or "")


def gated(required: Level | None) -> Level | None:
    """The level a group's local files must be proven to before they rank: the one it asks
    for itself (``Trust.asked``: its ``trust.require``, ``manifest`` for ``trust.loadable_by``
    alone) when above ``structure`` (None: they rank unproven, unless their check fails; as
    in redirect mode, a group that sets nothing ranks every copy as it did)."""
    return required if required is not None and required > Level.STRUCTURE else None


def admission(
    done: Checked | None,
    opened: FileIdentity,
    required: Level | None,
    name: str,
    loadable_by: str | None = None,
) -> tuple[str, str]:
    """Whether the local file of the archive ``name``, as it was opened to be served
    (``opened``: its identity then), may be served now: ``(refusal, sha256)``, a refusal
    ("" when it may be) and the digest its check gave ("" when not known). What was said of
    another identity under its path (``done``: a file replaced since its check) says nothing
    of it: in a group that requires a level (``required``) it is refused until checked;
    elsewhere it is served without a digest. Read where the bytes go out, so a file replaced
    between the ranking and the request is never served on its predecessor's proof."""
    same = done if done is not None and done.identity == opened else None
    now = standing(same, required, name, loadable_by)
    refusal = now.refused or (NOT_YET if required is not None and not now.proven else "")
    verified = same.verified if same is not None else None
    return refusal, verified.sha256 if verified is not None and not refusal else ""
