"""The executors of proofs (docs/architecture.md, "Proven archives"): the reads that prove
sources' copies the tracker hands out without holding them (redirect mode's head reads), the
checks of local files on the tracker's own disk (:mod:`tracker.proving.localfiles`), and
the cluster's votes asked of the RPCs (:mod:`tracker.proving.clustervotes`).
The proofs themselves, pure, are :mod:`tracker.proof`'s."""
