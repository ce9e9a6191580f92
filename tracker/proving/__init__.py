"""The executors of proofs (docs/architecture.md, "Proven archives"): the reads that prove
sources' copies the tracker hands out without holding them (redirect mode's head reads).
The proofs themselves, pure, are :mod:`tracker.proof`'s."""
