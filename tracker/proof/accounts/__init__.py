"""The accounts level (docs/architecture.md, "The accounts level", "Bounded memory").

The lattice hashes of many records at once (:mod:`~tracker.proof.accounts.accounthash`), the
index of every stored version, partitioned by pubkey, held in memory and spilled to run files
past the memory budget (:mod:`~tracker.proof.accounts.spill`), the budget
the daemon's proofs share and what a running proof reports
(:mod:`~tracker.proof.accounts.budget`), BLAKE3 in worker processes
(:mod:`~tracker.proof.accounts.hashworker`), the level itself
(:mod:`~tracker.proof.accounts.accountsproof`), the second read that hashes each newest version
once (:mod:`~tracker.proof.accounts.newest`) and its part in an archive's prover
(:mod:`~tracker.proof.accounts.accountsprover`). No event loop and no network; files only
in the spill directory its caller names.

May import: :mod:`tracker.proof.formats`, :mod:`tracker.proof.levels`, :mod:`tracker.errors`.
"""
