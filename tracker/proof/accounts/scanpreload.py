"""Imported by the forkserver the scan processes are forked from (:mod:`.scanprocs`; their
loop: :mod:`.scanprocess`), before it forks: numba and the compiled kernels loaded once,
and every module a scan process runs, their pages shared by every scan process
(docs/architecture.md, "The accounts level" → "Every core").

It also has the forkserver ignore SIGINT from here on. Each child the forkserver forks puts
back the handlers the forkserver had before it began serving (``multiprocessing``'s
``forkserver._serve_one``): with Python's own SIGINT handler, a Ctrl-C at a terminal (which
reaches the whole process group) between the fork and the scan process's own ``SIG_IGN``
would end it with KeyboardInterrupt. No other process imports this module.
"""

import signal

import tracker.proof.accounts.accounthash
import tracker.proof.accounts.scanprocess
import tracker.proof.accounts.sysvars
import tracker.proof.formats.storages  # noqa: F401
from tracker.proof.formats import kernels

signal.signal(signal.SIGINT, signal.SIG_IGN)
kernels.load()
kernels.warm_up()
