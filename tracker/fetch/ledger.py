"""What ``fetch`` reads and tidies in the ledger directory itself.

Which archives it really holds (a file under an offered archive's name but of another size
than the listing's is a half copy until its check says otherwise), what stands in the way
of a rename into place, what an interrupted fetch leaves for the next run, and retention
(``--keep``, only once the new archives are in place).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable

from tracker.core.snapshots import SnapshotFile, SnapshotInfo, chains_from_files, parse_archive_name
from tracker.errors import ArchiveInvalid, FetchError
from tracker.fetch.listing import RemoteSnapshot
from tracker.fetch.state import load_state, remove_state
from tracker.observability.logs import log_event
from tracker.proof.accounts.budget import CACHE_TEMP, clean_leftovers
from tracker.proof.archive.archivecheck import check_file

log = logging.getLogger("tracker.fetch")


def listed_sizes(remote: list[RemoteSnapshot]) -> dict[str, int]:
    """The size the listing gives each archive it names (0: not given, as by ``--source``)."""
    return {
        f.file_name: f.size
        for snapshot in remote
        for f in (snapshot.full, snapshot.incremental)
        if f is not None
    }


def suspects(
    local: list[SnapshotInfo], listed: dict[str, int], *, checked: bool
) -> list[SnapshotFile]:
    """The ledger's archives under an offered name that may be half copies: of another size
    than the listed one, or, where the listing gives no size, every one when they are
    ``checked`` (the check alone can tell), none when not (the name is all there is to go
    by). Pure."""
    files = {f.file_name: f for info in local for f in info.files}
    return [
        f
        for name, f in files.items()
        if name in listed and (listed[name] != f.size if listed[name] else checked)
    ]


def without(local: list[SnapshotInfo], dropped: list[SnapshotFile]) -> list[SnapshotInfo]:
    """``local`` as if the files of ``dropped`` were not there. Pure."""
    names = {f.file_name for f in dropped}
    files = {f.file_name: f for info in local for f in info.files if f.file_name not in names}
    ordered = sorted(files.values(), key=lambda f: f.name.order_key(), reverse=True)
    return chains_from_files(ordered)


def passes_check(path: str, cancelled: Callable[[], bool] | None = None) -> bool:
    """True when the archive at ``path`` passes the archive check (blocking: a worker
    thread); an OSError reading it is raised. False, saying nothing, once ``cancelled()``
    (asked before each read: the fetch stopped waiting for it)."""
    try:
        check_file(path, cancelled=cancelled)
    except ArchiveInvalid as exc:
        if cancelled is None or not cancelled():
            log_event(log, "info", "fetch_local_copy_bad", file=path, reason=exc.reason)
        return False
    return True


def no_ledger(ledger: str) -> None:
    """FetchError when ``ledger`` is no directory (missing, a file), before its lock is
    taken: the line names the directory, not the lock file in it."""
    if not os.path.isdir(ledger):
        why = "No such file or directory" if not os.path.lexists(ledger) else "not a directory"
        raise FetchError(f"the ledger directory: {ledger}: {why}")


def in_the_way(ledger: str, names: list[str]) -> None:
    """FetchError when something that cannot be replaced by a rename (a directory) holds
    the name of an archive about to be fetched: said before the download, not after it."""
    for name in names:
        path = os.path.join(ledger, name)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            raise FetchError(f"{path} is a directory; move it away and run again")


def kept(ledger: str) -> tuple[int, int]:
    """Bytes on disk of the downloads in progress in ``ledger`` (their state files), and
    their sizes: what a next run resumes."""
    try:
        names = os.listdir(ledger)
    except OSError:
        return 0, 0
    done = total = 0
    for entry in names:
        if not (entry.startswith(".tmp-") and entry.endswith(".state")):
            continue
        state = load_state(ledger, entry.removeprefix(".tmp-").removesuffix(".state"))
        if state is not None:
            done += sum(end - start for start, end in state.done)
            total += state.identity.size
    return done, total


def stale_downloads(names: list[str], planned: set[str]) -> list[str]:
    """The archives whose interrupted downloads ``names`` (a ledger's entries) hold: a temp
    file ``.tmp-{name}``, its state or the state's ``.new``, of an archive not ``planned``
    now (the offer moved on: a newer full, a newer incremental). Nothing resumes them, and
    a preallocated temp file holds its whole archive's room. Pure."""
    stale = set()
    for entry in names:
        if not entry.startswith(".tmp-"):
            continue
        name = entry.removeprefix(".tmp-").removesuffix(".new").removesuffix(".state")
        if name not in planned and parse_archive_name(name) is not None:
            stale.add(name)
    return sorted(stale)


def remove_stale(ledger: str, planned: set[str]) -> None:
    """Remove what :func:`stale_downloads` names in ``ledger`` (the links among them are
    removed, never followed), one ``fetch_removed_stale`` line each with the bytes freed."""
    try:
        names = os.listdir(ledger)
    except OSError:
        return
    for name in stale_downloads(names, planned):
        freed = 0
        for entry in (f".tmp-{name}", f".tmp-{name}.state", f".tmp-{name}.state.new"):
            try:
                freed += os.lstat(os.path.join(ledger, entry)).st_blocks * 512
            except OSError:
                continue
        remove_state(ledger, name)
        log_event(log, "info", "fetch_removed_stale", file=name, bytes=freed)


def tidy_spill(ledger: str) -> None:
    """Remove what the accounts proofs of an earlier fetch left in ``ledger``'s
    ``.accounts-proof`` (killed mid-proof: ``clean_leftovers`` takes only this user's
    directories whose lock no running proof holds), then the directory itself once empty;
    a link planted under its name is removed, never followed (the proofs would write, and
    clean up, where it points). Called under the ledger's lock, at a fetch's start and end:
    a proof removes its own files however it ends (docs/fetch.md, "Safely")."""
    spill = os.path.join(ledger, CACHE_TEMP)
    if os.path.islink(spill):
        with contextlib.suppress(OSError):
            os.unlink(spill)
            log_event(log, "warning", "fetch_link_removed", path=spill)
        return
    removed = clean_leftovers(spill)
    if removed:
        log_event(log, "info", "fetch_removed_spill", path=spill, directories=removed)
    with contextlib.suppress(OSError):  # not empty (a proof running elsewhere), or gone
        os.rmdir(spill)


def retired(names: list[str], keep: int, fresh: set[str]) -> list[str]:
    """The archives of ``names`` that ``--keep keep`` removes: fulls and incrementals beyond
    the ``keep`` newest of each kind, never one of ``fresh`` (the names just put in place),
    nor the full an incremental that stays builds on (the pair handed out may sit on an
    older full than the ledger's newest: its base went, the incremental with nothing to
    load on). Pure."""
    if keep <= 0:
        return []
    archives = [(parsed, name) for name in names if (parsed := parse_archive_name(name))]
    fulls = sorted(((p.slot, n) for p, n in archives if p.is_full), reverse=True)
    incrementals = sorted(
        ((p.slot, n, p.base_slot) for p, n in archives if not p.is_full), reverse=True
    )
    staying = incrementals[:keep] + [i for i in incrementals[keep:] if i[1] in fresh]
    bases = {base for _slot, _name, base in staying}
    gone = [n for slot, n in fulls[keep:] if n not in fresh and slot not in bases]
    return gone + [n for _slot, n, _base in incrementals[keep:] if n not in fresh]


def retain(ledger: str, keep: int, fresh: set[str]) -> None:
    """Remove what :func:`retired` names (``fresh``: the paths just put in place); only
    regular files, no link followed."""
    try:
        names = os.listdir(ledger)
    except OSError:
        return
    for name in retired(names, keep, {os.path.basename(path) for path in fresh}):
        path = os.path.join(ledger, name)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        os.unlink(path)
        log_event(log, "info", "fetch_removed_old", file=name)
