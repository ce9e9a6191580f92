"""What the process may use of the machine, a container's limits included
(tracker.proof.accounts.machine): the parsers and the cgroup's directories as tables, the
limits read through a given reader. A real cgroup: tests/integration/test_cgroup_defaults.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracker.proof.accounts.budget import default_memory, limit_problem
from tracker.proof.accounts.machine import (
    MOUNTINFO_MOST,
    NO_LIMIT,
    cgroup_cores,
    cgroup_dirs,
    cgroup_memory,
    in_memory,
    memory_backed,
    parse_bytes_limit,
    parse_cpu_max,
    quota_cores,
    read_mountinfo,
    unescaped,
)

GIB = 1024**3


@pytest.mark.parametrize(
    ("quota", "period", "cores"),
    [
        (200_000, 100_000, 2),
        (150_000, 100_000, 2),  # 1.5 CPUs: two cores, each busy three quarters of the time
        (50_000, 100_000, 1),
        (1_000, 100_000, 1),  # never below one
        (1_600_000, 100_000, 16),
        (-1, 100_000, None),  # v1's "no quota"
        (0, 100_000, None),
        (100_000, 0, None),
    ],
)
def test_a_quota_is_worth_its_cores_rounded_up(quota: int, period: int, cores: int | None) -> None:
    assert quota_cores(quota, period) == cores


@pytest.mark.parametrize(
    ("text", "cores"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2),
        ("250000 100000", 3),
        ("", None),
        ("200000", None),
        ("x 100000", None),
        ("200000 100000 7", None),
    ],
)
def test_cpu_max(text: str, cores: int | None) -> None:
    assert parse_cpu_max(text) == cores


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("max\n", None),
        ("4294967296\n", 4 * GIB),
        ("9223372036854771712\n", None),  # v1's "no limit"
        (str(NO_LIMIT), None),
        ("0", None),
        ("-1", None),
        ("\uff11\uff12", None),  # not ASCII digits
        ("", None),
    ],
)
def test_memory_limits(text: str, limit: int | None) -> None:
    assert parse_bytes_limit(text) == limit


HOST_V1 = "4:memory:/user.slice/job\n3:cpu,cpuacct:/user.slice/job\n0::/user.slice/job\n"
MOUNTS_V1 = (
    "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "34 31 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
DOCKER_V1 = "5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n"
DOCKER_MOUNTS = (
    "40 30 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n"
    "41 30 0:30 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
)
V2 = "0::/system.slice/tracker.service\n"
V2_MOUNTS = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V2_NAMESPACED = "0::/\n"


@pytest.mark.parametrize(
    ("cgroups", "mounts", "controller", "dirs"),
    [
        # a host's process in nested cgroups: its own, then each parent's, up to the mount
        (
            HOST_V1,
            MOUNTS_V1,
            "cpu",
            [
                "/sys/fs/cgroup/cpu,cpuacct/user.slice/job",
                "/sys/fs/cgroup/cpu,cpuacct/user.slice",
                "/sys/fs/cgroup/cpu,cpuacct",
            ],
        ),
        (
            HOST_V1,
            MOUNTS_V1,
            "memory",
            [
                "/sys/fs/cgroup/memory/user.slice/job",
                "/sys/fs/cgroup/memory/user.slice",
                "/sys/fs/cgroup/memory",
            ],
        ),
        # a container's: the hierarchy mounted from its own cgroup, whose files are the mount's
        (DOCKER_V1, DOCKER_MOUNTS, "cpu", ["/sys/fs/cgroup/cpu,cpuacct"]),
        (DOCKER_V1, DOCKER_MOUNTS, "memory", ["/sys/fs/cgroup/memory"]),
        # cgroup v2 alone: one hierarchy for every controller
        (
            V2,
            V2_MOUNTS,
            "cpu",
            [
                "/sys/fs/cgroup/system.slice/tracker.service",
                "/sys/fs/cgroup/system.slice",
                "/sys/fs/cgroup",
            ],
        ),
        (V2_NAMESPACED, V2_MOUNTS, "memory", ["/sys/fs/cgroup"]),
        # no hierarchy of the controller, or no mount of it: none
        ("3:cpu,cpuacct:/x\n", MOUNTS_V1, "memory", []),
        (HOST_V1, "", "cpu", []),
        ("", V2_MOUNTS, "cpu", []),
        # a path that climbs out of its hierarchy is none
        ("0::/a/../../etc\n", V2_MOUNTS, "cpu", []),
        # malformed lines are skipped
        ("garbage\n0::relative\n", "nonsense\n1 2 3 - \n", "cpu", []),
    ],
)
def test_the_cgroup_directories(
    cgroups: str, mounts: str, controller: str, dirs: list[str]
) -> None:
    assert cgroup_dirs(cgroups, mounts, controller) == dirs


def test_the_least_quota_along_the_parents_bounds_the_cores() -> None:
    files = {
        "/proc/self/cgroup": V2,
        "/proc/self/mountinfo": V2_MOUNTS,
        "/sys/fs/cgroup/system.slice/tracker.service/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/system.slice/cpu.max": "300000 100000\n",
        "/sys/fs/cgroup/cpu.max": "max 100000\n",
    }
    assert cgroup_cores(files.get) == 3
    files["/sys/fs/cgroup/system.slice/tracker.service/cpu.max"] = "150000 100000\n"
    assert cgroup_cores(files.get) == 2
    del files["/sys/fs/cgroup/system.slice/cpu.max"]
    files["/sys/fs/cgroup/system.slice/tracker.service/cpu.max"] = "max 100000\n"
    assert cgroup_cores(files.get) is None


def test_v1_quota_and_memory_limit() -> None:
    files = {
        "/proc/self/cgroup": DOCKER_V1,
        "/proc/self/mountinfo": DOCKER_MOUNTS,
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": f"{6 * GIB}\n",
    }
    assert cgroup_cores(files.get) == 3
    assert cgroup_memory(files.get) == 6 * GIB
    files["/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"] = "-1\n"
    files["/sys/fs/cgroup/memory/memory.limit_in_bytes"] = "9223372036854771712\n"
    assert (cgroup_cores(files.get), cgroup_memory(files.get)) == (None, None)
    files["/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"] = "lots\n"
    assert cgroup_cores(files.get) is None


def test_nothing_readable_is_no_limit() -> None:
    assert (cgroup_cores(lambda _path: None), cgroup_memory(lambda _path: None)) == (None, None)


def test_the_least_memory_limit_along_the_parents() -> None:
    files = {
        "/proc/self/cgroup": V2,
        "/proc/self/mountinfo": V2_MOUNTS,
        "/sys/fs/cgroup/system.slice/tracker.service/memory.max": f"{8 * GIB}\n",
        "/sys/fs/cgroup/system.slice/memory.max": f"{5 * GIB}\n",
    }
    assert cgroup_memory(files.get) == 5 * GIB


@pytest.mark.parametrize(
    ("cores", "memory", "budget_mib"),
    [
        # a container given 2 CPUs and 4 GiB on a host of 16 cores: the 2-core default
        (2, 4 * GIB, 512),
        # the host itself: the 16-core default
        (16, 128 * GIB, 2656),
        # 16 cores but 8 GiB: an eighth of the limit, not of the host's memory
        (16, 8 * GIB, 1024),
    ],
)
def test_the_default_budget_follows_what_the_process_may_use(
    cores: int, memory: int, budget_mib: int
) -> None:
    assert default_memory(cores, memory) == budget_mib * 1024**2


@pytest.mark.parametrize(
    ("budget_mib", "limit_mib", "warned"),
    [
        (512, None, False),  # no limit
        (512, 768, False),  # 256 MiB left beside the proofs
        (512, 767, True),
        (2464, 4096, False),
        (2464, 2048, True),  # a budget over the limit itself
    ],
)
def test_a_budget_that_leaves_too_little_of_the_limit_is_said(
    budget_mib: int, limit_mib: int | None, warned: bool
) -> None:
    mib = 1024**2
    said = limit_problem(budget_mib * mib, limit_mib * mib if limit_mib is not None else None)
    assert bool(said) is warned
    if warned:
        assert said.startswith(f"{budget_mib} MiB leaves the tracker less than 256 MiB of its")
        assert f"cgroup's {limit_mib} MiB memory limit" in said


# -- whether the spill's directory is memory ---------------------------------------------

#: A host's mounts, as /proc/self/mountinfo lists them (fields 5: the mount point, after
#: " - ": the file system type): /tmp a tmpfs, the ledger on an NVMe, a tmpfs at a point
#: with a space (escaped), one mounted on top of another, a ramfs.
MOUNTS = "\n".join(
    [
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
        "24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,mode=755",
        "25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw",
        "60 27 0:40 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw,size=4g",
        "61 27 259:1 / /mnt/ledger rw,noatime - xfs /dev/nvme0n1 rw",
        r"62 27 0:41 / /mnt/fast\040scratch rw - tmpfs tmpfs rw",
        r"63 27 259:2 / /srv/back\134slash rw - ext4 /dev/nvme1n1 rw",
        "64 27 0:42 / /srv/stack rw - tmpfs tmpfs rw",
        "65 64 259:3 / /srv/stack rw - ext4 /dev/nvme2n1 rw",  # on top: ext4 is seen
        "66 27 0:43 / /var/ram rw - ramfs ramfs rw",
        "not a mountinfo line",
        "67 27 0:44 / relative rw - tmpfs tmpfs rw",  # no absolute point: skipped
    ]
)


@pytest.mark.parametrize(
    ("path", "memory"),
    [
        ("/tmp", True),
        ("/tmp/accounts", True),
        ("/tmpfoo", False),  # a prefix by whole components only
        ("/mnt/ledger/.accounts-proof", False),
        ("/mnt/ledger", False),
        ("/mnt", False),
        ("/", False),
        ("/dev/shm/x", True),
        ("/dev/null", True),  # devtmpfs
        ("/mnt/fast scratch/spill", True),  # \040: a space
        ("/mnt/fast", False),
        ("/srv/back\\slash/x", False),  # \134: a backslash
        ("/srv/stack/x", False),  # the mount on top, not the one below it
        ("/var/ram/x", True),
        ("relative/x", False),
    ],
)
def test_a_directory_is_memory_by_the_longest_mount_point_above_it(path: str, memory: bool) -> None:
    assert memory_backed(MOUNTS, path) is memory


@pytest.mark.parametrize(
    ("mountinfo", "memory"),
    [
        ("", False),
        ("garbage\n\n - \n", False),
        ("1 0 0:1 / / rw - tmpfs tmpfs rw", True),  # a container whose root is a tmpfs
        ("1 0 0:1 / /tmp rw - tmpfs tmpfs rw\n2 0 0:2 / /tmp rw - ext4 /dev/x rw", False),
        ("1 0 0:1 / /tmp rw - ext4 /dev/x rw\n2 0 0:2 / /tmp rw - tmpfs tmpfs rw", True),
        ("1 0 0:1 / /tmp rw -  tmpfs rw", False),  # no type: malformed
    ],
)
def test_malformed_and_stacked_mounts(mountinfo: str, memory: bool) -> None:
    assert memory_backed(mountinfo, "/tmp/spill") is memory


@pytest.mark.parametrize("odd", ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
@pytest.mark.parametrize(
    ("below", "above", "memory"), [("ext4", "tmpfs", True), ("tmpfs", "ext4", False)]
)
def test_a_mount_point_holding_a_character_the_kernel_leaves_unescaped(
    odd: str, below: str, above: str, memory: bool
) -> None:
    """The kernel escapes only a space, tab, newline and backslash in a mount point: a line
    is cut at "\n" alone, never where ``str.splitlines`` would also cut (a form feed, U+2028):
    the mount at ``/srv/a<odd>b`` is seen, not the one below it."""
    point = f"/srv/a{odd}b"
    mountinfo = "\n".join(
        [
            f"1 0 0:1 / / rw - {below} /dev/x rw",
            f"2 1 0:2 / {point} rw shared:3 - {above} {above} rw",
        ]
    )
    assert memory_backed(mountinfo, f"{point}/spill") is memory


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ("/plain", "/plain"),
        (r"/a\040b", "/a b"),
        (r"/tab\011x", "/tab\tx"),
        (r"/nl\012x", "/nl\nx"),
        (r"/back\134slash", "/back\\slash"),
        (r"/not\9escaped", r"/not\9escaped"),
        ("/caf\u00e9", "/caf\u00e9"),  # bytes past ASCII are not escaped by the kernel
    ],
)
def test_mount_points_are_unescaped(field: str, path: str) -> None:
    assert unescaped(field) == path


def test_whether_a_directory_is_memory_is_unknown_when_it_does_not_answer() -> None:
    # "" from the bounded look: a hung mount; None from the mounts: unreadable or too long
    assert in_memory("/tmp/x", real=lambda _path: "", mountinfo=lambda: MOUNTS) is None
    assert in_memory("/tmp/x", real=lambda path: path, mountinfo=lambda: None) is None
    assert in_memory("/tmp/x", real=lambda path: path, mountinfo=lambda: MOUNTS) is True
    # the real path is judged, not the name given: a link to the ledger is not /tmp's
    assert in_memory("/tmp/x", real=lambda _p: "/mnt/ledger/x", mountinfo=lambda: MOUNTS) is False


def test_the_mounts_are_read_bounded(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text(MOUNTS)
    assert read_mountinfo(str(short)) == MOUNTS
    long = tmp_path / "long"
    long.write_bytes(b"x" * (MOUNTINFO_MOST + 1))
    assert read_mountinfo(str(long)) is None  # its last lines (mounts on top) would be cut
    assert read_mountinfo(str(tmp_path / "missing")) is None


def test_this_machines_shared_memory_is_memory(tmp_path: Path, shm_dir: Path) -> None:
    """The executor over this process's own mounts: /dev/shm is a tmpfs on Linux."""
    assert in_memory(str(shm_dir), real=os.path.realpath) is True
    # a directory not made yet is judged by where it would be made
    assert in_memory(str(shm_dir / "not-made-yet" / "spill"), real=os.path.realpath) is True
    link = tmp_path / "to-shm"
    link.symlink_to(shm_dir)
    assert in_memory(str(link / "spill"), real=os.path.realpath) is True
