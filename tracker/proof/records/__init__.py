"""What a copy is proven to and what is signed of it, with no event loop and no network.

Which local files are checked and where each stands
(:mod:`~tracker.proof.records.localcopies`), what a statement says of one checked copy, when
it is signed again and the check of one read beside a bucket object
(:mod:`~tracker.proof.records.attesting`), the statements the daemon signs of the copies it
holds and the documents it serves of an archive (:mod:`~tracker.proof.records.attestations`).

May import: :mod:`tracker.core`, :mod:`tracker.proof.statements`, :mod:`tracker.proof.levels`,
:mod:`tracker.errors`.
"""
