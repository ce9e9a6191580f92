"""agave's formats as the proof reads and writes them, with no event loop and no network.

The stream parsers' request protocol written once (:mod:`~tracker.proof.formats.parsing`) and
their driver over a stream's chunks (:mod:`~tracker.proof.formats.streamparse`: the archive
check's and the accounts proof's second read's),
bincode read as such a parser, every length bounded (:mod:`~tracker.proof.formats.bincode`),
the manifest decoded (:mod:`~tracker.proof.formats.manifest`), the bank hash recomputed
(:mod:`~tracker.proof.formats.bankhash`), the accounts lattice hash
(:mod:`~tracker.proof.formats.lattice`), the account storages read as they stream by
(:mod:`~tracker.proof.formats.storages`) with the per-record loops compiled by numba
(:mod:`~tracker.proof.formats.kernels`), vote instructions decoded
(:mod:`~tracker.proof.formats.votes`) and weighed by stake
(:mod:`~tracker.proof.formats.tally`), the per-archive prover the tar walk feeds
(:mod:`~tracker.proof.formats.prover`), and the writers of these formats for the examples and
the tests (:mod:`~tracker.proof.formats.writing`).

May import: :mod:`tracker.proof.levels`, :mod:`tracker.errors` and third-party libraries.
"""
