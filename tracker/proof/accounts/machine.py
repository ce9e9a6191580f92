"""What this process may use of the machine: its cores and its memory, a container's limits
included (docs/architecture.md, "The accounts level" → "Bounded memory").

A container sees the host's cores and memory (``os.sched_getaffinity``, ``SC_PHYS_PAGES``)
while its cgroup may give it a fraction of them: a CPU quota (``cpu.max`` in cgroup v2,
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1) and a memory limit (``memory.max``,
``memory.limit_in_bytes``). The proof's defaults are sized from what the process may use:
a proof sized for the host's 16 cores in a container of two runs 15 scan processes on two
cores, and a budget sized for the host's memory passes the container's limit, where the
kernel kills the tracker.

The parsers and the choice of the cgroup's directories are pure functions of the texts
(``/proc/self/cgroup``, ``/proc/self/mountinfo``, the limit files); :func:`cgroup_cores` and
:func:`cgroup_memory` read them. Anything unreadable or malformed is no limit.

Memory is also what a file on a memory-backed file system takes (tmpfs, ramfs): the proof's
spilled index there (``prove_accounts_temp_dir``; /tmp is a tmpfs on many hosts and in many
containers) counts against the same limit as shared memory, so :func:`memory_backed` tells
such a directory from the mounts (docs/architecture.md, "Bounded memory").
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable

#: A v1 memory limit at or above this is none (the kernel's "no limit" is ~2^63 rounded
#: down to a page).
NO_LIMIT = 1 << 60
#: The most read of one cgroup file (each holds one short line; mountinfo and the process's
#: cgroup list a line per mount and per hierarchy).
_MOST = 1 << 20


def quota_cores(quota: int, period: int) -> int | None:
    """The cores a CPU quota of ``quota`` µs every ``period`` µs is worth, rounded up
    (1.5 CPUs: two cores, each busy three quarters of the time); None for no quota
    (negative, or a period that is not positive)."""
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def parse_cpu_max(text: str) -> int | None:
    """The cores of a cgroup v2 ``cpu.max`` (``"$MAX $PERIOD"``, ``max`` for none)."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        return quota_cores(int(fields[0]), int(fields[1]))
    except ValueError:
        return None


def parse_bytes_limit(text: str) -> int | None:
    """The bytes of a memory limit file (v2 ``memory.max``: bytes or ``max``; v1
    ``memory.limit_in_bytes``: bytes, :data:`NO_LIMIT` or more for none)."""
    value = text.strip()
    if not value.isascii() or not value.isdigit():
        return None
    limit = int(value)
    return limit if 0 < limit < NO_LIMIT else None


def cgroup_dirs(cgroups: str, mountinfo: str, controller: str) -> list[str]:
    """The directories holding ``controller``'s files for this process, its own cgroup's
    first, then each parent's up to its hierarchy's mount (a parent's limit bounds its
    children). ``cgroups`` is ``/proc/self/cgroup`` (v1 lines ``N:cpu,cpuacct:/path``, the
    v2 line ``0::/path``), ``mountinfo`` is ``/proc/self/mountinfo``: a hierarchy mounted
    at ``/sys/fs/cgroup/cpu`` from its root ``/docker/abc`` holds ``/docker/abc/x``'s files in
    ``/sys/fs/cgroup/cpu/x``. A v1 hierarchy of the controller comes first; without one,
    the v2 hierarchy."""
    paths: dict[str, str] = {}  # "v1" or "v2": the process's cgroup path
    for line in cgroups.splitlines():
        number, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if not path.startswith("/"):
            continue
        if controller in names.split(","):
            paths.setdefault("v1", path)
        elif number == "0" and names == "":
            paths.setdefault("v2", path)
    mounts: dict[str, tuple[str, str]] = {}  # "v1" or "v2": (the mount's root, mount point)
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) < 3:
            continue
        kind, options = after[0], after[2].split(",")
        if kind == "cgroup" and controller in options:
            mounts.setdefault("v1", (fields[3], fields[4]))
        elif kind == "cgroup2":
            mounts.setdefault("v2", (fields[3], fields[4]))
    for version in ("v1", "v2"):
        if version in paths and version in mounts:
            return _up_to_root(paths[version], *mounts[version])
    return []


def _up_to_root(path: str, root: str, point: str) -> list[str]:
    """The directories of ``path`` (a cgroup path) and its parents within a hierarchy
    mounted at ``point`` from ``root``: the mount's own alone when the path is the root or
    outside it (a container's hierarchy mounted from its own cgroup); none when the path
    climbs out with ``..``."""
    root = root.rstrip("/")
    if root == "":
        relative = path
    elif path.startswith(root + "/"):
        relative = path[len(root) :]
    else:  # the mount's root itself, or outside it: the mount's own files are what it sees
        relative = "/"
    parts = [part for part in relative.split("/") if part]
    if any(part in (".", "..") for part in parts):
        return []
    return [os.path.join(point, *parts[:depth]) for depth in range(len(parts), -1, -1)]


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as file:
            return file.read(_MOST).decode("ascii", "replace")
    except OSError:
        return None


def _least(found: list[int | None]) -> int | None:
    limits = [each for each in found if each is not None]
    return min(limits) if limits else None


def cgroup_cores(read: Callable[[str], str | None] = _read) -> int | None:
    """The cores this process's CPU quota is worth, the least along its cgroup's parents
    (None: no quota, or none readable)."""
    dirs = cgroup_dirs(read("/proc/self/cgroup") or "", read("/proc/self/mountinfo") or "", "cpu")
    found: list[int | None] = []
    for directory in dirs:
        v2 = read(os.path.join(directory, "cpu.max"))
        if v2 is not None:
            found.append(parse_cpu_max(v2))
            continue
        quota = read(os.path.join(directory, "cpu.cfs_quota_us"))
        period = read(os.path.join(directory, "cpu.cfs_period_us"))
        if quota is not None and period is not None:
            try:
                found.append(quota_cores(int(quota), int(period)))
            except ValueError:
                continue
    return _least(found)


def cgroup_memory(read: Callable[[str], str | None] = _read) -> int | None:
    """This process's cgroup memory limit in bytes, the least along its cgroup's parents
    (None: no limit, or none readable)."""
    dirs = cgroup_dirs(
        read("/proc/self/cgroup") or "", read("/proc/self/mountinfo") or "", "memory"
    )
    found: list[int | None] = []
    for directory in dirs:
        text = read(os.path.join(directory, "memory.max"))
        if text is None:
            text = read(os.path.join(directory, "memory.limit_in_bytes"))
        if text is not None:
            found.append(parse_bytes_limit(text))
    return _least(found)


#: The file systems whose files live in memory (swap at best): written there, the spill
#: counts as the process's memory (its cgroup's ``shmem``), not as disk.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})
#: The most of ``/proc/self/mountinfo`` read (a line per mount: a host of many containers
#: lists thousands); one longer is not judged.
MOUNTINFO_MOST = 8 << 20
_ESCAPED = re.compile(rb"\\([0-7]{3})")


def unescaped(field: str) -> str:
    """A mount point as mountinfo writes it, with the kernel's octal escapes (``\\040`` a
    space, ``\\011`` a tab, ``\\012`` a newline, ``\\134`` a backslash) undone, bytewise
    (the text as ``os.fsdecode`` gives it). Pure."""
    raw = _ESCAPED.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), os.fsencode(field))
    return os.fsdecode(raw)


def _within(path: str, point: str) -> bool:
    """Whether ``path`` is ``point`` or below it, by whole components."""
    return point == "/" or path == point or path.startswith(point.rstrip("/") + "/")


def memory_backed(mountinfo: str, realpath: str) -> bool:
    """Whether ``realpath`` (absolute, links resolved) lies on a memory-backed file system
    (:data:`MEMORY_FILESYSTEMS`) by ``mountinfo`` (``/proc/self/mountinfo``'s text): the
    mount of the longest mount point it lies under, of several at one point the last
    listed (mounted on top). Malformed lines are skipped; no mount found: False. Pure."""
    best: tuple[int, str] | None = None
    # Lines end at "\n" only: the kernel escapes a space, tab, newline and backslash in a
    # mount point, no other character that str.splitlines breaks at (\f, \x1c, U+0085,
    # U+2028 ...), so a mount at such a point cut in two was missed, and one under it judged
    # by the mount below (docs/architecture.md, "Bounded memory")
    for line in mountinfo.split("\n"):
        fields = line.split(" ")
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split(" ")
        point = unescaped(fields[4])
        if not point.startswith("/") or not after[0] or not _within(realpath, point):
            continue
        if best is None or len(point) >= best[0]:
            best = (len(point), after[0])
    return best is not None and best[1] in MEMORY_FILESYSTEMS


def read_mountinfo(path: str = "/proc/self/mountinfo") -> str | None:
    """The text of ``path`` (mountinfo), None when unreadable or longer than
    :data:`MOUNTINFO_MOST` (its last mounts, those on top, would be missing)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MOUNTINFO_MOST + 1)
    except OSError:
        return None
    return None if len(data) > MOUNTINFO_MOST else os.fsdecode(data)


def in_memory(
    directory: str,
    real: Callable[[str], str],
    mountinfo: Callable[[], str | None] = read_mountinfo,
) -> bool | None:
    """Whether ``directory`` is on a memory-backed file system; None when that is not known:
    ``real`` (which gives its real path, links resolved, within a bound: a directory on a
    hung mount must not hold the caller; "" when it did not answer) gave none, or the mounts
    could not be read. A directory not made yet is judged by where it would be made."""
    resolved = real(directory)
    mounts = mountinfo() if resolved else None
    if not resolved or mounts is None:
        return None
    return memory_backed(mounts, resolved)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity's, at most its cgroup's quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cores()
    return max(1, min(cores, quota) if quota is not None else cores)


def usable_memory() -> int:
    """The memory this process may use in bytes: the machine's, at most its cgroup's limit
    (0 when neither is known)."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        memory = 0
    limit = cgroup_memory()
    if limit is None:
        return memory
    return min(memory, limit) if memory else limit
