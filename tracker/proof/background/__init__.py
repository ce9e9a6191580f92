"""The proofs that run on their own (docs/architecture.md, "Proven archives").

Redirect mode's head reads (:mod:`~tracker.proof.background.heads`, which copies a head read
proves next in :mod:`~tracker.proof.background.headreads`): the reads that prove sources'
copies the tracker hands out without holding them; the checks of local files on the
tracker's own disk (:mod:`~tracker.proof.background.localfiles`); both run a round every
second (:mod:`~tracker.proof.background.rounds`).

May import everything below the web layer.
"""
