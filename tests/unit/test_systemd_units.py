"""The systemd units: `systemd-analyze verify` accepts them, and they agree with the code; the
install steps of systemd/README.md give the config they install what it names.

verify checks that ExecStart's binary exists, and /usr/local/bin/snapshot-tracker does not on a
build machine: the units are copied to tmp_path with ExecStart pointing at /bin/true (the
arguments stay), so everything else in them is checked as installed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tracker.cli import main
from tracker.web.listeners import INTERNAL, PUBLIC

UNITS = Path(__file__).resolve().parents[2] / "systemd"
NAMES = ["snapshot-tracker.service", "snapshot-tracker.socket", "snapshot-tracker-internal.socket"]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
INSTALLED_BINARY = "/usr/local/bin/snapshot-tracker"


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with every value it was given (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    for name in NAMES:
        text = (UNITS / name).read_text()
        if name.endswith(".service"):
            assert f"ExecStart={INSTALLED_BINARY} " in text
            text = text.replace(f"ExecStart={INSTALLED_BINARY} ", "ExecStart=/bin/true ")
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *(str(tmp_path / name) for name in NAMES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on unknown keys and unparsable values, only printing them: no output is ok.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_socket_units_name_their_fds_as_listen_fds_expects() -> None:
    public = unit("snapshot-tracker.socket")["Socket"]
    internal = unit("snapshot-tracker-internal.socket")["Socket"]
    assert public["FileDescriptorName"] == [PUBLIC]
    assert public["ListenStream"] == ["8458"]
    assert internal["FileDescriptorName"] == [INTERNAL]
    assert internal["ListenStream"] == ["127.0.0.1:8457"]
    assert internal["Service"] == public["Service"] == ["snapshot-tracker.service"]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_service_settings_the_daemon_relies_on() -> None:
    service = unit("snapshot-tracker.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["ExecStart"] == [
        f"{INSTALLED_BINARY} serve --config /etc/snapshot-tracker/config.yml"
    ]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # Longer than the default shutdown_grace (30 s), the connections' last 2 s and the wait
    # for calls a hung mount holds, or systemd kills the stop before it says `stop_held`.
    from tracker.config.schema import Config
    from tracker.service import STOP_HELD_WAIT

    assert seconds(service["TimeoutStopSec"][0]) > Config().shutdown_grace + 2 + STOP_HELD_WAIT
    # The watchdog is pinged at half its period; systemd's notify socket must stay reachable.
    assert seconds(service["WatchdogSec"][0]) >= 10
    assert "AF_UNIX" in service["RestrictAddressFamilies"][0].split()
    # Exit code 2 (config error) must not restart in a loop.
    assert service["RestartPreventExitStatus"] == ["2"]


def syscalls_of(items: str) -> set[str]:
    """The system calls of a ``SystemCallFilter=`` list, its ``@groups`` expanded by
    ``systemd-analyze syscall-filter`` (groups nest: each line that is no comment and no
    group header is a call or another group)."""
    assert SYSTEMD_ANALYZE is not None
    calls: set[str] = set()
    for item in items.split():
        if not item.startswith("@"):
            calls.add(item)
            continue
        listed = subprocess.run(
            [SYSTEMD_ANALYZE, "syscall-filter", "--no-pager", item],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for line in listed.splitlines()[1:]:
            name = line.strip()
            if name and not name.startswith("#"):
                calls |= syscalls_of(name)
    return calls


def allowed_syscalls(filters: list[str]) -> set[str]:
    """What a unit's ``SystemCallFilter=`` lines allow, read as systemd does when the first
    is an allow list: each later ``~`` list takes calls out, each later plain list puts
    them back (systemd.exec(5))."""
    allowed: set[str] = set()
    for index, value in enumerate(filters):
        if value.startswith("~"):
            allowed -= syscalls_of(value[1:])
        else:
            assert index == 0 or allowed, "the first SystemCallFilter= is an allow list"
            allowed |= syscalls_of(value)
    return allowed


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_filter_lets_the_hashing_processes_lower_their_priority() -> None:
    """The accounts proof's hashing processes renice themselves below the tracker's
    (tracker/proof/accounts/hashworker.py): setpriority, one of @resources, is allowed back,
    while the rest of @privileged and @resources stays refused."""
    allowed = allowed_syscalls(unit("snapshot-tracker.service")["Service"]["SystemCallFilter"])
    assert "setpriority" in allowed
    assert {"setrlimit", "sched_setaffinity", "reboot", "setuid"}.isdisjoint(allowed)
    assert {"read", "sendfile", "splice", "openat"} <= allowed


#: Where systemd/README.md's install steps put the config.
CONFIG_DIR = "/etc/snapshot-tracker"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def test_the_install_steps_give_the_config_the_files_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """systemd/README.md's install steps as typed, from the repository root, into a scratch
    /etc/snapshot-tracker: the config they install passes the `check-config` they run next
    with no warning, so each file it names beside itself (examples/fleet.yml's
    ``file_targets``) is installed with it."""
    steps = SH_BLOCK.findall((UNITS / "README.md").read_text())[0]
    lines = [line.split("#", 1)[0].strip() for line in steps.splitlines()]
    scratch = str(tmp_path / "etc" / "snapshot-tracker")
    installs = [line for line in lines if line.startswith("install ") and CONFIG_DIR in line]
    assert len(installs) >= 2, steps  # the directory, then the config
    for line in installs:
        typed = line.replace(CONFIG_DIR, scratch)
        subprocess.run(["bash", "-c", typed], cwd=UNITS.parent, check=True, timeout=60)
    [check] = [line for line in lines if " check-config " in line]
    program, *args = shlex.split(check.replace(CONFIG_DIR, scratch))
    assert program == "snapshot-tracker"
    assert main(args) == 0
    assert "warning" not in capsys.readouterr().err
