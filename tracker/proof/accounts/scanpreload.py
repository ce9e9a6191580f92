"""Imported by the forkserver the scan processes are forked from (:mod:`.scanprocs`), before
it forks: numba and the compiled kernels loaded once, and every module a scan process runs,
their pages shared by every scan process (docs/architecture.md, "The accounts level" →
"Every core")."""

import tracker.proof.accounts.accounthash
import tracker.proof.accounts.scanprocs
import tracker.proof.accounts.sysvars
import tracker.proof.formats.storages  # noqa: F401
from tracker.proof.formats import kernels

kernels.load()
kernels.warm_up()
