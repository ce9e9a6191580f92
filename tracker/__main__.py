"""``python -m tracker`` runs the command line (its signals held from the first line:
:mod:`tracker.launch`)."""

import sys

from tracker.launch import main

# Guarded: a process started from a forkserver (the accounts proof's scan processes,
# ``tracker.proof.accounts.scanprocs``) imports the parent's main module again, under
# another name, before it runs.
if __name__ == "__main__":
    sys.exit(main())
