"""The executors of proofs (docs/architecture.md, "Proven archives"): the reads that prove
sources' copies the tracker hands out without holding them (redirect mode's head reads), and
the cluster's votes asked of the RPCs (:mod:`tracker.proving.clustervotes`).
The proofs themselves, pure, are :mod:`tracker.proof`'s."""
