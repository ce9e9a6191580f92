"""Find nginx and wrk; install them from Debian packages with apt-get when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PACKAGES = {"nginx": "nginx-light", "wrk": "wrk", "aria2c": "aria2", "curl": "curl"}
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
# invoke-rc.d asks this before starting a service; 101 = "not allowed". Installing nginx
# must not start a system nginx on port 80.
_POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


class ToolMissing(Exception):
    """A tool is not installed and could not be installed."""


def find(tool: str) -> str | None:
    """The tool's path (nginx lives in sbin, which a non-root PATH may lack)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    return shutil.which(tool, path=path)


def ensure(
    tools: list[str], *, install: bool = True, log: bool = True, timeout: float = 600.0
) -> dict[str, str]:
    """Paths of ``tools``; missing ones are installed with apt-get (``apt-get update`` once).

    Raises ToolMissing when a tool is missing and cannot be installed (not root, no apt-get,
    no network, ``install`` false, or apt-get taking longer than ``timeout`` per step).
    """
    missing = [t for t in tools if find(t) is None]
    if missing:
        if not install:
            raise ToolMissing(f"not installed: {', '.join(missing)}")
        _apt_install([PACKAGES[t] for t in missing], log=log, timeout=timeout)
    paths = {t: find(t) for t in tools}
    still = [t for t, p in paths.items() if p is None]
    if still:
        raise ToolMissing(f"still missing after apt-get install: {', '.join(still)}")
    return {t: p for t, p in paths.items() if p is not None}


def _apt_install(packages: list[str], *, log: bool, timeout: float) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ToolMissing(f"cannot install {' '.join(packages)}: needs root and apt-get")
    if log:
        print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wrote_policy = False
    try:
        if not _POLICY_RC_D.exists():
            _POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
            _POLICY_RC_D.chmod(0o755)
            wrote_policy = True
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        ):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
                raise ToolMissing(f"{' '.join(argv[:2])} failed: " + " | ".join(tail))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolMissing(f"apt-get failed: {exc}") from exc
    finally:
        if wrote_policy:
            _POLICY_RC_D.unlink(missing_ok=True)
